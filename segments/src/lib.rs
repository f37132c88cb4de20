//! sluice's columnar core: the consuming segment rows are appended to, the
//! immutable segment file it is sealed into, their indexes, and predicate
//! evaluation to roaring bitmaps. No network, no ZooKeeper.
//!
//! Invariants:
//! - A failed append changes nothing: every value of a row is checked before
//!   any is written, so a bad record never leaves a partial row behind.
//! - Offsets only grow within a segment, and a segment covers exactly the
//!   offsets from its start offset to its last consumed offset (rows and
//!   skipped records alike), which is what the checkpoint advances by.
//!   Offsets within that range that held no record are recorded as gaps.
//! - Index, scan and pruning share one total order of values (see [`types`]),
//!   and every index answers exactly what a scan answers, NULLs included: the
//!   choice of access path never changes a result.
//! - A segment file is verified (every byte under a CRC32C, magic, version)
//!   and its Arrow data validated before any of it is interpreted; a corrupt
//!   or crafted file is an error naming the file and the section, never a
//!   panic, an out-of-bounds read or wrong rows.
//! - A star-tree's walk yields records that cover every row of the segment
//!   exactly once, real in every dimension the query uses; a stored tree is
//!   structure-checked when opened, so a forged one is refused or bounded.
//! - Files of every format version from `OLDEST_FORMAT_VERSION` on are
//!   read; newer ones are refused by number.
//! - A sealed segment is immutable: its file is written under a temporary
//!   name and renamed into place, then only ever memory-mapped for reading.

mod builder;
mod consuming;
mod error;
mod format;
mod index;
mod ipc;
mod live_index;
mod predicate;
mod reseal;
mod schema;
mod seal;
mod sealed;
mod star_tree;
mod star_tree_build;
mod stats;
pub mod types;

pub use consuming::{ConsumingSegment, SegmentSize};
pub use error::{RowError, Section, SegmentError};
pub use format::{FORMAT_VERSION, MAGIC, OLDEST_FORMAT_VERSION};
pub use index::IndexKind;
pub use predicate::{CmpOp, Predicate, time_range_can_match};
pub use reseal::reseal;
pub use schema::{ColumnSpec, SegmentSchema};
pub use schema::{StarMetric, StarTreeSpec};
pub use seal::seal;
pub use sealed::{ColumnMeta, Encoding, IndexMeta, Segment, SegmentImage, SegmentMeta};
pub use star_tree::StarTree;
pub use stats::ColumnStats;
pub use types::{Datum, Key, OFFSET_COLUMN, Scalar};
