//! Sealing: the rows a consuming segment gathered (or a reseal took from
//! sealed segments) become one immutable segment image — columns encoded,
//! indexes and star-trees built, metadata and checksums written. The reader
//! of that image is `sealed.rs`.

use std::cmp::Ordering;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, DictionaryArray, Int32Array, RecordBatch, StringArray, UInt32Array};
use arrow::compute::{SortColumn, SortOptions, lexsort_to_indices, sort_to_indices, take};
use arrow::datatypes::{DataType, Field, Float32Type, Float64Type, Int32Type, Schema};
use arrow::ipc::writer::FileWriter;
use roaring::RoaringBitmap;
use sluice_config::ColumnType;

use crate::consuming::ConsumingSegment;
use crate::error::SegmentError;
use crate::format::{self, FORMAT_VERSION};
use crate::index::{self, BloomBuilder, IndexKind, SectionWriter};
use crate::schema::SegmentSchema;
use crate::sealed::{ColumnMeta, Encoding, IndexMeta, SegmentImage, SegmentMeta, cmp_at, int64_values, key_at};
use crate::stats::ColumnStats;
use crate::types::{Key, OFFSET_COLUMN, f32_order_bits, f64_order_bits};

/// What sealing needs: the rows as logical arrays (the offset column last)
/// and what was known about them while they were gathered.
pub(crate) struct SealInput {
    pub schema: Arc<SegmentSchema>,
    pub partition: i32,
    pub start_offset: i64,
    /// The last offset covered (a row or a skipped record).
    pub end_offset: i64,
    pub arrays: Vec<ArrayRef>,
    /// Per column, without distinct counts (sealing counts them).
    pub stats: Vec<ColumnStats>,
    pub gaps: Vec<(i64, i64)>,
}

/// Seals `segment` into an immutable segment image called `name`.
pub fn seal(segment: &ConsumingSegment, name: &str, created_at_ms: i64) -> Result<SegmentImage, SegmentError> {
    let end_offset = segment
        .last_offset()
        .ok_or_else(|| SegmentError::Predicate("cannot seal a segment that consumed nothing".into()))?;
    let input = SealInput {
        schema: segment.schema().clone(),
        partition: segment.partition(),
        start_offset: segment.start_offset(),
        end_offset,
        arrays: segment.arrays(),
        stats: (0..segment.schema().columns.len()).map(|i| segment.column_stats(i)).collect(),
        gaps: segment.gaps().to_vec(),
    };
    seal_input(input, name, created_at_ms)
}

/// Seals rows gathered by a consuming segment or taken from sealed ones.
pub(crate) fn seal_input(input: SealInput, name: &str, created_at_ms: i64) -> Result<SegmentImage, SegmentError> {
    let SealInput { schema, partition, start_offset, end_offset, mut arrays, stats: known, gaps } = input;
    let rows = arrays.last().map_or(0, |a| a.len());
    let rows = u32::try_from(rows).map_err(|_| SegmentError::Predicate(format!("{rows} rows do not fit a segment")))?;
    // Rows usually arrive in time order already; then the sort by (column,
    // offset) is the identity and is skipped. Rows in offset order (a
    // consuming segment's) are sorted by counting their value groups, which
    // leaves each value one run of rows: its inverted bitmap, if it has one.
    let mut runs = None;
    if let Some(sorted) = schema.sorted.filter(|&s| !non_decreasing(arrays[s].as_ref())) {
        let order = if non_decreasing(arrays[arrays.len() - 1].as_ref()) {
            let (order, groups) = sort_by_groups(arrays[sorted].as_ref())?;
            runs = Some(groups);
            order
        } else {
            let options = Some(SortOptions { descending: false, nulls_first: true });
            lexsort_to_indices(
                &[
                    SortColumn { values: arrays[sorted].clone(), options },
                    SortColumn { values: arrays[arrays.len() - 1].clone(), options },
                ],
                None,
            )?
        };
        arrays = arrays.iter().map(|a| take(a.as_ref(), &order, None)).collect::<Result<_, _>>()?;
    }
    let mut fields: Vec<Field> = Vec::new();
    let mut physical: Vec<ArrayRef> = Vec::new();
    let mut columns = Vec::new();
    let mut index_meta = Vec::new();
    let mut section = SectionWriter::default();
    for (i, spec) in schema.columns.iter().enumerate() {
        let array = &arrays[i];
        let inverted = schema.inverted.contains(&i);
        let bloom = schema.bloom.contains(&i);
        let strings = (spec.data_type == ColumnType::String).then(|| array.as_string::<i32>());
        // Bitmaps per value only where an inverted index needs them. The
        // distinct values only where a dictionary or a bloom filter may be
        // built from them: a string column's borrowed from its array, other
        // bloom columns' as keys. Every other column needs just their count,
        // for its stats.
        let groups = match runs.take_if(|_| schema.sorted == Some(i)) {
            Some(runs) if inverted => runs,
            _ if inverted => group_rows(array.as_ref())?,
            _ => Vec::new(),
        };
        // A range index's rows in (value, row) order; for integer columns
        // sorted as pairs, which also counts their distinct values.
        let range = schema.range.contains(&i) && schema.sorted != Some(i);
        let (range_ids, range_distinct) = match range.then(|| int_range_ids(array.as_ref())).flatten() {
            Some((ids, distinct)) => (Some(ids), Some(distinct)),
            None if range => (Some(range_ids(array.as_ref())?), None),
            None => (None, None),
        };
        let mut strs: Vec<&str> = Vec::new();
        let mut keys: Vec<Key> = Vec::new();
        let distinct = if let Some(distinct) = range_distinct {
            if bloom {
                keys = distinct_keys(array.as_ref())?;
            }
            distinct
        } else if inverted {
            if strings.is_some() {
                strs = groups
                    .iter()
                    .filter_map(|(k, _)| if let Key::Str(s) = k { Some(s.as_ref()) } else { None })
                    .collect();
            } else if bloom {
                keys = groups.iter().map(|(k, _)| k.clone()).collect();
            }
            groups.len() as u64
        } else if let Some(array) = strings {
            strs = distinct_strs(array);
            strs.len() as u64
        } else if bloom {
            keys = distinct_keys(array.as_ref())?;
            keys.len() as u64
        } else {
            distinct_count(array.as_ref())?
        };
        let mut encoding = Encoding::Plain;
        let mut stored = array.clone();
        if let Some(array) = strings
            && dictionary_is_smaller(array, &strs)
        {
            strs.sort_unstable();
            stored = dictionary_encode(array, &strs)?;
            encoding = Encoding::Dictionary;
        }
        fields.push(Field::new(&spec.name, stored.data_type().clone(), spec.nullable));
        physical.push(stored);
        let mut stats = known[i].clone();
        stats.distinct_count = Some(distinct);
        columns.push(ColumnMeta { name: spec.name.clone(), encoding, stats });
        let mut add = |kind: IndexKind, payload: Option<Vec<u8>>| {
            if let Some(payload) = payload {
                section.add(kind, i, payload);
            }
            index_meta.push(IndexMeta { column: spec.name.clone(), kind });
        };
        if schema.sorted == Some(i) {
            add(IndexKind::Sorted, None);
        }
        if schema.inverted.contains(&i) {
            add(IndexKind::Inverted, Some(index::encode_inverted(&groups)));
        }
        if let Some(ids) = range_ids {
            add(IndexKind::Range, Some(index::encode_range(&ids)));
        }
        if bloom {
            let payload = if strings.is_some() {
                // A string key's hash bytes are its UTF-8.
                let mut filter = BloomBuilder::new(strs.len());
                strs.iter().for_each(|s| filter.add(s.as_bytes()));
                filter.finish()
            } else {
                index::encode_bloom(keys.iter())
            };
            add(IndexKind::Bloom, Some(payload));
        }
    }
    for (i, tree) in schema.star_trees.iter().enumerate() {
        section.add(IndexKind::StarTree, i, crate::star_tree_build::build(tree, &schema, &arrays)?);
    }
    fields.push(Field::new(OFFSET_COLUMN, DataType::Int64, false));
    physical.push(arrays[arrays.len() - 1].clone());
    let physical_schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(physical_schema.clone(), physical)?;
    let mut writer = FileWriter::try_new(Vec::new(), &physical_schema)?;
    writer.write(&batch)?;
    writer.finish()?;
    let data = writer.into_inner()?;

    let time_range =
        columns[schema.time_column].stats.key_range(ColumnType::Timestamp).and_then(|(lo, hi)| match (lo, hi) {
            (Key::Int(lo), Key::Int(hi)) => Some((lo, hi)),
            _ => None,
        });
    let meta = SegmentMeta {
        format_version: FORMAT_VERSION,
        name: name.to_string(),
        schema: (*schema).clone(),
        partition,
        start_offset,
        end_offset,
        row_count: u64::from(rows),
        time_range,
        created_at_ms,
        columns,
        indexes: index_meta,
        offset_gaps: gaps,
    };
    let metadata = serde_json::to_vec(&meta).map_err(|e| SegmentError::Predicate(format!("metadata: {e}")))?;
    let bytes = format::assemble(&data, &section.finish(), &metadata);
    Ok(SegmentImage { bytes, meta })
}

/// A range index's rows: non-null rows in (value, row) order.
fn range_ids(array: &dyn Array) -> Result<Vec<u32>, SegmentError> {
    let options = SortOptions { descending: false, nulls_first: true };
    let order = sort_to_indices(array, Some(options), None)?;
    let nulls = array.null_count();
    let mut ids: Vec<u32> = order.values()[nulls..].to_vec();
    stable_ties(&mut ids, array);
    Ok(ids)
}

/// [`range_ids`] of an integer or timestamp column, sorted as (value, row)
/// pairs, with the count of distinct values; None for other types.
fn int_range_ids(array: &dyn Array) -> Option<(Vec<u32>, u64)> {
    fn sorted<T: Ord + Copy>(values: &[T], array: &dyn Array) -> (Vec<u32>, u64) {
        let mut pairs: Vec<(T, u32)> =
            (0..values.len()).filter(|&r| array.is_valid(r)).map(|r| (values[r], r as u32)).collect();
        pairs.sort_unstable();
        let distinct = count_runs(pairs.iter().map(|(value, _)| value));
        (pairs.into_iter().map(|(_, row)| row).collect(), distinct)
    }
    match array.data_type() {
        DataType::Int32 => Some(sorted(array.as_primitive::<Int32Type>().values(), array)),
        DataType::Int64 | DataType::Timestamp(..) => Some(sorted(int64_values(array), array)),
        _ => None,
    }
}

/// Orders ids of equal values by row id, so the range index is deterministic.
fn stable_ties(ids: &mut [u32], array: &dyn Array) {
    let mut start = 0;
    while start < ids.len() {
        let mut end = start + 1;
        while end < ids.len() && cmp_rows(array, ids[start] as usize, ids[end] as usize) == Ordering::Equal {
            end += 1;
        }
        ids[start..end].sort_unstable();
        start = end;
    }
}

fn cmp_rows(array: &dyn Array, a: usize, b: usize) -> Ordering {
    match key_at(array, b) {
        Some(kb) => cmp_at(array, a, &kb),
        None => Ordering::Equal,
    }
}

fn dictionary_is_smaller(array: &StringArray, distinct: &[&str]) -> bool {
    let distinct_bytes: usize = distinct.iter().map(|s| s.len()).sum();
    let dictionary = distinct_bytes + 4 * (distinct.len() + 1) + 4 * array.len();
    let plain = array.value_data().len() + 4 * (array.len() + 1);
    dictionary < plain
}

/// Int32 keys into `distinct` (sorted, so key order is value order).
fn dictionary_encode(array: &StringArray, distinct: &[&str]) -> Result<ArrayRef, SegmentError> {
    let ids: foldhash::HashMap<&str, i32> = distinct.iter().enumerate().map(|(i, s)| (*s, i as i32)).collect();
    let keys: Vec<i32> = (0..array.len())
        .map(|r| if array.is_valid(r) { ids.get(array.value(r)).copied().unwrap_or(0) } else { 0 })
        .collect();
    let keys = Int32Array::new(keys.into(), array.nulls().cloned());
    let values: StringArray = distinct.iter().map(Some).collect();
    Ok(Arc::new(DictionaryArray::<Int32Type>::try_new(keys, Arc::new(values))?))
}

/// A string column's distinct non-null values, borrowed from it, in no
/// particular order.
fn distinct_strs(array: &StringArray) -> Vec<&str> {
    distinct_set(array.iter().flatten(), array.len()).into_iter().collect()
}

/// The order that sorts `array`'s rows by value, NULLs first, ties in row
/// order; and each value's rows after that sort, which are one run. A
/// counting sort over the value groups: linear where a comparison sort of
/// the rows is not, and the groups are the sorted column's inverted index.
fn sort_by_groups(array: &dyn Array) -> Result<(UInt32Array, Vec<(Key, RoaringBitmap)>), SegmentError> {
    let groups = group_rows(array)?;
    let mut order: Vec<u32> = Vec::with_capacity(array.len());
    if let Some(nulls) = array.nulls() {
        order.extend(nulls.iter().enumerate().filter(|(_, valid)| !valid).map(|(row, _)| row as u32));
    }
    let mut start = order.len() as u32;
    let runs = groups
        .into_iter()
        .map(|(key, rows)| {
            order.extend(rows.iter());
            let end = start + rows.len() as u32;
            let mut run = RoaringBitmap::new();
            run.insert_range(start..end);
            start = end;
            (key, run)
        })
        .collect();
    Ok((UInt32Array::from(order), runs))
}

/// Something computed over a column's non-null values through a hashable
/// stand-in `K` of each value, mapped to [`Key`] only once per distinct value.
trait KeyVisitor {
    type Out;
    fn visit<K: std::hash::Hash + Eq>(self, rows: impl Iterator<Item = (u32, K)>, key: impl Fn(K) -> Key) -> Self::Out;
}

fn visit_keys<V: KeyVisitor>(array: &dyn Array, visitor: V) -> Result<V::Out, SegmentError> {
    let rows = (0..array.len()).filter(|r| array.is_valid(*r));
    Ok(match array.data_type() {
        DataType::Utf8 => {
            let a = array.as_string::<i32>();
            visitor.visit(rows.map(|r| (r as u32, a.value(r))), |s| Key::Str(s.into()))
        }
        DataType::Boolean => {
            let a = array.as_boolean();
            visitor.visit(rows.map(|r| (r as u32, a.value(r))), Key::Bool)
        }
        DataType::Int32 => {
            let a = array.as_primitive::<Int32Type>();
            visitor.visit(rows.map(|r| (r as u32, a.value(r))), |v| Key::Int(i64::from(v)))
        }
        DataType::Int64 | DataType::Timestamp(..) => {
            let a = int64_values(array);
            visitor.visit(rows.map(|r| (r as u32, a[r])), Key::Int)
        }
        DataType::Float32 => {
            let a = array.as_primitive::<Float32Type>();
            visitor.visit(rows.map(|r| (r as u32, f32_order_bits(a.value(r)))), Key::Float)
        }
        DataType::Float64 => {
            let a = array.as_primitive::<Float64Type>();
            visitor.visit(rows.map(|r| (r as u32, f64_order_bits(a.value(r)))), Key::Float)
        }
        other => return Err(SegmentError::Predicate(format!("unsupported column type {other}"))),
    })
}

/// Distinct non-null values with their rows, in key order.
fn group_rows(array: &dyn Array) -> Result<Vec<(Key, RoaringBitmap)>, SegmentError> {
    struct Groups;
    impl KeyVisitor for Groups {
        type Out = Vec<(Key, RoaringBitmap)>;
        fn visit<K: std::hash::Hash + Eq>(
            self,
            rows: impl Iterator<Item = (u32, K)>,
            key: impl Fn(K) -> Key,
        ) -> Self::Out {
            // Row lists, then bitmaps built from them: rows come in
            // ascending order, and a sorted build is much cheaper than an
            // insert per row.
            let mut groups: foldhash::HashMap<K, Vec<u32>> = foldhash::HashMap::default();
            for (row, value) in rows {
                groups.entry(value).or_default().push(row);
            }
            let mut out: Vec<(Key, RoaringBitmap)> = groups
                .into_iter()
                .map(|(k, rows)| (key(k), RoaringBitmap::from_sorted_iter(rows).expect("rows are visited in order")))
                .collect();
            out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            out
        }
    }
    visit_keys(array, Groups)
}

/// Distinct non-null values, in no particular order.
fn distinct_keys(array: &dyn Array) -> Result<Vec<Key>, SegmentError> {
    struct Distinct;
    impl KeyVisitor for Distinct {
        type Out = Vec<Key>;
        fn visit<K: std::hash::Hash + Eq>(
            self,
            rows: impl Iterator<Item = (u32, K)>,
            key: impl Fn(K) -> Key,
        ) -> Self::Out {
            let capacity = rows.size_hint().1.unwrap_or(0);
            distinct_set(rows.map(|(_, v)| v), capacity).into_iter().map(key).collect()
        }
    }
    visit_keys(array, Distinct)
}

/// The distinct values among `values`, the set sized for `capacity` (all of
/// them) up front: growing it rehashes every value again.
fn distinct_set<K: std::hash::Hash + Eq>(values: impl Iterator<Item = K>, capacity: usize) -> foldhash::HashSet<K> {
    let mut set = foldhash::HashSet::with_capacity_and_hasher(capacity, Default::default());
    set.extend(values);
    set
}

/// How many runs of equal values `values` holds: its distinct values, when
/// it is sorted.
fn count_runs<T: PartialEq>(values: impl IntoIterator<Item = T>) -> u64 {
    let mut values = values.into_iter();
    let Some(mut last) = values.next() else { return 0 };
    let mut runs = 1;
    for value in values {
        if value != last {
            runs += 1;
            last = value;
        }
    }
    runs
}

/// How many distinct non-null values the column holds: counted as runs
/// where the values never decrease (a time column, usually), else hashed.
fn distinct_count(array: &dyn Array) -> Result<u64, SegmentError> {
    if non_decreasing(array) {
        return Ok(match array.data_type() {
            DataType::Int32 => count_runs(array.as_primitive::<Int32Type>().values()),
            _ => count_runs(int64_values(array)),
        });
    }
    struct Count;
    impl KeyVisitor for Count {
        type Out = u64;
        fn visit<K: std::hash::Hash + Eq>(self, rows: impl Iterator<Item = (u32, K)>, _: impl Fn(K) -> Key) -> u64 {
            let capacity = rows.size_hint().1.unwrap_or(0);
            distinct_set(rows.map(|(_, v)| v), capacity).len() as u64
        }
    }
    visit_keys(array, Count)
}

/// Whether a column without NULLs never decreases (integers and
/// timestamps; other types are not checked and report false).
fn non_decreasing(array: &dyn Array) -> bool {
    if array.null_count() > 0 {
        return false;
    }
    match array.data_type() {
        DataType::Int64 | DataType::Timestamp(..) => int64_values(array).is_sorted(),
        DataType::Int32 => array.as_primitive::<Int32Type>().values().is_sorted(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{BooleanArray, Float64Array, Int64Array};

    use super::*;

    /// A few columns of every kind the sorted column may have, NULLs,
    /// NaNs and signed zeros included, from a fixed pseudo-random sequence.
    fn columns(rows: usize) -> Vec<ArrayRef> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut draws = |n: u64| (0..rows).map(|_| next(n)).collect::<Vec<u64>>();
        let floats = [f64::NAN, -0.0, 0.0, -1.5, 2.25, f64::INFINITY, f64::NEG_INFINITY];
        vec![
            Arc::new(draws(9).into_iter().map(|v| (v > 0).then(|| format!("v{}", v % 5))).collect::<StringArray>()),
            Arc::new(draws(8).into_iter().map(|v| floats.get(v as usize).copied()).collect::<Float64Array>()),
            Arc::new(draws(4).into_iter().map(|v| (v < 3).then_some(v == 1)).collect::<BooleanArray>()),
            Arc::new(draws(6).into_iter().map(|v| (v < 5).then_some(v as i32 - 2)).collect::<Int32Array>()),
        ]
    }

    #[test]
    fn sorting_by_groups_is_the_lexsort_by_value_then_offset() {
        for rows in [0, 1, 7, 1000] {
            let offsets: ArrayRef = Arc::new(Int64Array::from_iter_values(0..rows as i64));
            for column in columns(rows) {
                let options = Some(SortOptions { descending: false, nulls_first: true });
                let expected = lexsort_to_indices(
                    &[SortColumn { values: column.clone(), options }, SortColumn { values: offsets.clone(), options }],
                    None,
                )
                .unwrap();
                let (order, runs) = sort_by_groups(column.as_ref()).unwrap();
                assert_eq!(order, expected, "{} rows of {}", rows, column.data_type());
                let sorted = take(column.as_ref(), &order, None).unwrap();
                assert_eq!(runs, group_rows(sorted.as_ref()).unwrap(), "each value's rows are its run after the sort");
            }
        }
    }

    #[test]
    fn integer_range_rows_are_the_sorted_rows() {
        for rows in [0, 1, 7, 1000] {
            for column in columns(rows).into_iter().skip(3) {
                let (ids, distinct) = int_range_ids(column.as_ref()).expect("an integer column");
                assert_eq!(ids, range_ids(column.as_ref()).unwrap());
                assert_eq!(distinct, distinct_count(column.as_ref()).unwrap());
            }
        }
    }

    #[test]
    fn distinct_counts_of_sorted_and_unsorted_columns() {
        let sorted = Int64Array::from(vec![1, 1, 2, 5, 5, 5, 9]);
        let unsorted = Int64Array::from(vec![5, 1, 9, 1, 2, 5, 5]);
        assert_eq!(distinct_count(&sorted).unwrap(), 4);
        assert_eq!(distinct_count(&unsorted).unwrap(), 4);
        assert_eq!(distinct_count(&Int32Array::from(Vec::<i32>::new())).unwrap(), 0);
    }
}
