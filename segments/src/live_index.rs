//! The consuming segment's live index: value → rows, ordered, so that it
//! answers equality and ranges while rows are appended.
//!
//! One map per column type, keyed by the column's own value type, so that
//! appending a row looks its value up without building a [`Key`] (no
//! allocation for a string) and compares values directly, not through an
//! enum or a trait object.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::ops::Bound;

use roaring::RoaringBitmap;
use sluice_config::ColumnType;

use crate::types::{Key, KeyRef};

/// Estimated cost of a map entry beyond key and bitmap contents.
pub(crate) const ENTRY_OVERHEAD: usize = std::mem::size_of::<Key>() + std::mem::size_of::<RoaringBitmap>() + 16;

#[derive(Debug)]
pub(crate) enum LiveIndex {
    Bool(BTreeMap<bool, RoaringBitmap>),
    Int(BTreeMap<i64, RoaringBitmap>),
    Float(BTreeMap<u64, RoaringBitmap>),
    Str(BTreeMap<Box<str>, RoaringBitmap>),
}

/// Adds `row` to the rows of `value`; returns the heap bytes of a new key.
fn add<K, Q>(map: &mut BTreeMap<K, RoaringBitmap>, value: &Q, row: u32, key: impl FnOnce() -> K) -> Option<usize>
where
    K: Ord + Borrow<Q>,
    Q: Ord + ?Sized,
{
    if let Some(rows) = map.get_mut(value) {
        // Row ids only grow, so `try_push` appends without a search.
        if rows.try_push(row).is_err() {
            rows.insert(row);
        }
        return None;
    }
    let mut rows = RoaringBitmap::new();
    rows.insert(row);
    map.insert(key(), rows);
    Some(0)
}

/// The union of the rows of every value within the bounds. `typed` is the
/// map's own value inside a [`Key`], None for a key of another type (then
/// nothing in this index can match).
fn union<'k, K: Ord + 'k>(
    map: &BTreeMap<K, RoaringBitmap>,
    low: Bound<&'k Key>,
    high: Bound<&'k Key>,
    typed: impl Fn(&'k Key) -> Option<&'k K>,
) -> RoaringBitmap {
    let bound = |bound: Bound<&'k Key>| {
        Some(match bound {
            Bound::Included(k) => Bound::Included(typed(k)?),
            Bound::Excluded(k) => Bound::Excluded(typed(k)?),
            Bound::Unbounded => Bound::Unbounded,
        })
    };
    let mut rows = RoaringBitmap::new();
    if let (Some(low), Some(high)) = (bound(low), bound(high)) {
        for (_, bitmap) in map.range((low, high)) {
            rows |= bitmap;
        }
    }
    rows
}

impl LiveIndex {
    pub(crate) fn new(ty: ColumnType) -> Self {
        match ty {
            ColumnType::Bool => LiveIndex::Bool(BTreeMap::new()),
            ColumnType::Int32 | ColumnType::Int64 | ColumnType::Timestamp => LiveIndex::Int(BTreeMap::new()),
            ColumnType::Float32 | ColumnType::Float64 => LiveIndex::Float(BTreeMap::new()),
            ColumnType::String => LiveIndex::Str(BTreeMap::new()),
        }
    }

    /// Adds `row` under `key`; returns the estimated bytes a new entry costs
    /// (None when the value was already indexed). A key of another type than
    /// the column's cannot occur (the segment checked the row) and is ignored.
    pub(crate) fn add(&mut self, key: KeyRef<'_>, row: u32) -> Option<usize> {
        let heap = match (self, key) {
            (LiveIndex::Bool(m), KeyRef::Bool(v)) => add(m, &v, row, || v),
            (LiveIndex::Int(m), KeyRef::Int(v)) => add(m, &v, row, || v),
            (LiveIndex::Float(m), KeyRef::Float(v)) => add(m, &v, row, || v),
            (LiveIndex::Str(m), KeyRef::Str(s)) => add(m, s, row, || s.into()).map(|_| s.len()),
            _ => None,
        }?;
        Some(ENTRY_OVERHEAD + heap)
    }

    pub(crate) fn get(&self, key: &Key) -> Option<&RoaringBitmap> {
        match (self, key) {
            (LiveIndex::Bool(m), Key::Bool(v)) => m.get(v),
            (LiveIndex::Int(m), Key::Int(v)) => m.get(v),
            (LiveIndex::Float(m), Key::Float(v)) => m.get(v),
            (LiveIndex::Str(m), Key::Str(s)) => m.get(s),
            _ => None,
        }
    }

    /// Rows whose value lies within the bounds.
    pub(crate) fn range(&self, low: Bound<&Key>, high: Bound<&Key>) -> RoaringBitmap {
        match self {
            LiveIndex::Bool(m) => union(m, low, high, |k| if let Key::Bool(v) = k { Some(v) } else { None }),
            LiveIndex::Int(m) => union(m, low, high, |k| if let Key::Int(v) = k { Some(v) } else { None }),
            LiveIndex::Float(m) => union(m, low, high, |k| if let Key::Float(v) = k { Some(v) } else { None }),
            LiveIndex::Str(m) => union(m, low, high, |k| if let Key::Str(s) = k { Some(s) } else { None }),
        }
    }

    /// Exact bytes: entries, key bytes and serialized bitmaps.
    pub(crate) fn memory_bytes(&self) -> usize {
        fn sum<K>(map: &BTreeMap<K, RoaringBitmap>, heap: impl Fn(&K) -> usize) -> usize {
            map.iter().map(|(k, rows)| ENTRY_OVERHEAD + heap(k) + rows.serialized_size()).sum()
        }
        match self {
            LiveIndex::Bool(m) => sum(m, |_| 0),
            LiveIndex::Int(m) => sum(m, |_| 0),
            LiveIndex::Float(m) => sum(m, |_| 0),
            LiveIndex::Str(m) => sum(m, |s| s.len()),
        }
    }
}
