//! Sealing rows taken from sealed segments: several adjacent segments of a
//! partition merged into one, or one cut down to the rows from an offset on.
//!
//! The query node's real-time tail uses both: it merges its small chunks as
//! they accumulate, and drops the rows a newly committed segment now holds.
//! Working from the sealed columns costs a fraction of decoding the records
//! again, and gives the same segment a consuming segment holding those rows
//! would have sealed into (same rows, stats, gaps and indexes).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use arrow::compute::kernels::cmp::gt_eq;
use arrow::compute::{concat, filter};
use arrow::datatypes::{DataType, Float32Type, Float64Type, Int32Type};
use sluice_config::ColumnType;

use crate::error::SegmentError;
use crate::seal::{SealInput, seal_input};
use crate::sealed::{Segment, SegmentImage, int64_values};
use crate::stats::{ColumnStats, LiveStats};
use crate::types::{KeyRef, f32_order_bits, f64_order_bits};

/// Seals the rows with offsets `>= from_offset` of `parts` — adjacent
/// segments of one partition, in offset order, of one schema — into one
/// segment called `name`. None when no offset of `parts` is `>= from_offset`.
pub fn reseal(
    parts: &[&Segment],
    from_offset: i64,
    name: &str,
    created_at_ms: i64,
) -> Result<Option<SegmentImage>, SegmentError> {
    let Some(first) = parts.first() else { return Ok(None) };
    let last = parts.last().expect("non-empty");
    let meta = first.meta();
    let end_offset = last.meta().end_offset;
    if end_offset < from_offset {
        return Ok(None);
    }
    for pair in parts.windows(2) {
        let (a, b) = (pair[0].meta(), pair[1].meta());
        if a.partition != b.partition || b.start_offset <= a.end_offset || a.schema != b.schema {
            return Err(SegmentError::Predicate(format!(
                "segments {} and {} are not adjacent segments of one partition",
                a.name, b.name
            )));
        }
    }
    let schema = Arc::new(meta.schema.clone());
    let width = schema.columns.len() + 1;
    let mut pieces: Vec<Vec<ArrayRef>> = vec![Vec::with_capacity(parts.len()); width];
    for part in parts {
        if part.meta().end_offset < from_offset {
            continue;
        }
        let batch = part.to_record_batch()?;
        let columns: Vec<ArrayRef> = if part.meta().start_offset >= from_offset {
            batch.columns().to_vec()
        } else {
            let offsets = batch.column(width - 1);
            let keep = gt_eq(offsets, &Int64Array::new_scalar(from_offset))?;
            batch.columns().iter().map(|c| filter(c.as_ref(), &keep)).collect::<Result<_, _>>()?
        };
        for (piece, column) in pieces.iter_mut().zip(columns) {
            piece.push(column);
        }
    }
    let arrays: Vec<ArrayRef> =
        pieces.iter().map(|p| concat(&p.iter().map(|a| a.as_ref()).collect::<Vec<_>>())).collect::<Result<_, _>>()?;
    let stats = schema.columns.iter().zip(&arrays).map(|(spec, a)| stats_of(a.as_ref(), spec.data_type)).collect();
    let gaps = parts
        .iter()
        .flat_map(|p| p.meta().offset_gaps.iter().copied())
        .filter(|&(_, to)| to >= from_offset)
        .map(|(from, to)| (from.max(from_offset), to))
        .collect();
    let input = SealInput {
        schema: schema.clone(),
        partition: meta.partition,
        start_offset: meta.start_offset.max(from_offset),
        end_offset,
        arrays,
        stats,
        gaps,
    };
    seal_input(input, name, created_at_ms).map(Some)
}

/// Min, max and NULL count of a logical column, in the order indexes use.
fn stats_of(array: &dyn Array, ty: ColumnType) -> ColumnStats {
    let mut live = LiveStats::default();
    let valid = |row: usize| !array.is_null(row);
    let rows = (0..array.len()).filter(|&r| valid(r));
    match array.data_type() {
        DataType::Utf8 => {
            let a = array.as_string::<i32>();
            rows.for_each(|r| live.observe(KeyRef::Str(a.value(r))));
        }
        DataType::Boolean => {
            let a = array.as_boolean();
            rows.for_each(|r| live.observe(KeyRef::Bool(a.value(r))));
        }
        DataType::Int32 => {
            let a = array.as_primitive::<Int32Type>();
            rows.for_each(|r| live.observe(KeyRef::Int(i64::from(a.value(r)))));
        }
        DataType::Float32 => {
            let a = array.as_primitive::<Float32Type>();
            rows.for_each(|r| live.observe(KeyRef::Float(f32_order_bits(a.value(r)))));
        }
        DataType::Float64 => {
            let a = array.as_primitive::<Float64Type>();
            rows.for_each(|r| live.observe(KeyRef::Float(f64_order_bits(a.value(r)))));
        }
        _ => {
            let values = int64_values(array);
            rows.for_each(|r| live.observe(KeyRef::Int(values[r])));
        }
    }
    live.to_stats(ty, array.null_count() as u64)
}
