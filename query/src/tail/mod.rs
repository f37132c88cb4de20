//! The real-time tail: rows not yet committed, read by the query node
//! itself from Kafka, served with the committed segments.
//!
//! Invariants:
//! - Every snapshot a query sees is a consistent cut per partition: the
//!   committed segments this node has loaded, up to the largest end offset E
//!   among them, plus the tail rows with offsets above E — never a row twice.
//!   Loading a segment and trimming the tail to the rows above its end happen
//!   under one lock and are published as one swap ([`TableView::set_committed`]),
//!   so an answer never counts a row twice and never loses one it had
//!   (the rows above E stay in the tail until a segment holds them).
//! - A merge of chunks replaces exactly the chunks it read, in one swap, and
//!   only if they are all still there: a trim that happened meanwhile wins.
//! - The tail never commits anything and never counts or dead-letters bad
//!   records: it classifies them with the workers' decoder and skips them.
//! - Tail memory is bounded by `limits.tail_memory` for the whole node; a
//!   partition whose tail would exceed it is answered from committed data
//!   only — the response says so — until its next segment loads.
//! - The consumer never stops for good while the table is served: a failure
//!   or panic is counted, shown in `/health` and retried with backoff, and
//!   the tail it built is kept (reading resumes after its last offset).
//!
//! How: a consumer per table (`follow`) appends each record to the
//! partition's consuming segment (the workers' `ConsumingSegment`: live
//! indexes, min/max); every 200 ms the changed tails seal just their new rows
//! in memory into a regular `Segment` named `<table>__<p>__CONSUMING`, so
//! indexes, pruning and the fast path serve the tail exactly as they serve
//! committed segments. Chunks are merged off the consumer's path
//! (log-structured, each at least four times the size of the next), from
//! their sealed columns ([`sluice_segments::reseal`]); a trim reseals only the
//! chunk the committed end cuts through.

mod consumer;
mod status;
mod view;

pub use consumer::follow;
pub use status::{ConsumerStatus, TailBudget, TailStatus};
pub use view::TableView;
