//! The catalog side of the end-to-end fixtures, shared with `bench/`: the
//! `clicks` pipeline, and sealing a segment into a `file://` deep store
//! with the catalog record a worker would commit.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sluice_coordinator::{Lease, SegmentRecord};
use sluice_segments::{ConsumingSegment, Datum, SegmentSchema, seal};
use sluice_storage::{DeepStore, file_uri};

pub const PIPELINE: &str = r#"
table = "clicks"
[source]
bootstrap_servers = "localhost:9092"
topic = "clicks"
[schema]
time_column = "ts"
[[schema.columns]]
name = "ts"
type = "timestamp"
unit = "ms"
nullable = false
[[schema.columns]]
name = "user_id"
type = "string"
[[schema.columns]]
name = "status"
type = "int32"
[indexes]
inverted = ["status"]
"#;

/// The segment schema of [`PIPELINE`].
pub fn schema() -> Arc<SegmentSchema> {
    let config = sluice_config::parse_pipeline(PIPELINE, Path::new("clicks.toml"), &sluice_config::ProcessEnv).unwrap();
    Arc::new(SegmentSchema::from_pipeline(&config))
}

/// Seals offsets `first..first + rows` of `partition` (row `o`: time
/// `1_764_000_000_000 + o`, and the user and status `row(o)` gives) into
/// `store`, under `lease`; returns the file, its bytes and the catalog
/// record a worker would commit.
pub fn seal_segment(
    store: &Path,
    schema: &Arc<SegmentSchema>,
    lease: &Lease,
    partition: i32,
    first: i64,
    rows: i64,
    row: impl Fn(i64) -> (String, i32),
) -> (PathBuf, Vec<u8>, SegmentRecord) {
    let mut segment = ConsumingSegment::new(schema.clone(), partition, first);
    for offset in first..first + rows {
        let (user, status) = row(offset);
        let datums = [Datum::Timestamp(1_764_000_000_000 + offset), Datum::Str(&user), Datum::Int32(status)];
        segment.append(offset, &datums).unwrap();
    }
    let created = 1_764_000_000_000 + first;
    store_segment(store, "clicks", lease, &segment, created)
}

/// Seals `segment` into `store` as the next segment of `table` under
/// `lease`; returns the file, its bytes and the catalog record a worker
/// would commit.
pub fn store_segment(
    store: &Path,
    table: &str,
    lease: &Lease,
    segment: &ConsumingSegment,
    created: i64,
) -> (PathBuf, Vec<u8>, SegmentRecord) {
    let name = SegmentRecord::segment_name(table, segment.partition(), lease.checkpoint.next_seq, created);
    let image = seal(segment, &name, created).unwrap();
    let path = store.join(table).join(DeepStore::segment_name(&name, lease.epoch()));
    image.write_file(&path).unwrap();
    let record = SegmentRecord {
        name,
        partition: segment.partition(),
        seq: lease.checkpoint.next_seq,
        start_offset: segment.start_offset(),
        end_offset: segment.next_offset() - 1,
        row_count: u64::from(segment.row_count()),
        uri: file_uri(&path),
        size_bytes: image.bytes.len() as u64,
        crc32c: crc32c::crc32c(&image.bytes),
        time_range: image.meta.time_range,
        created_at_ms: created,
        offset_gaps: 0,
    };
    (path, image.bytes.to_vec(), record)
}
