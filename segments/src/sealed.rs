//! Sealing a consuming segment, and the immutable segment read from a file.

use std::cmp::Ordering;
use std::io::Write;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int32Array, RecordBatch, StringArray, StringViewArray, UInt32Array};
use arrow::buffer::Buffer;
use arrow::compute::{cast, take};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int32Type, Int64Type, Schema, SchemaRef, TimeUnit as ArrowTimeUnit,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use arrow::error::ArrowError;
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};
use sluice_config::ColumnType;

use crate::error::{Section, SegmentError};
use crate::format::{self, FORMAT_VERSION};
use crate::index::{self, IndexEntry, IndexKind, Inverted};
use crate::ipc::read_ipc;
use crate::predicate::{self, Columns, Predicate, StatsSource};
use crate::schema::SegmentSchema;
use crate::star_tree::StarTree;
use crate::stats::ColumnStats;
use crate::types::{Key, f32_order_bits, f64_order_bits};

/// How a column's values are stored in the data section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Plain,
    /// Int32 keys into a sorted dictionary of the distinct values.
    Dictionary,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnMeta {
    pub name: String,
    pub encoding: Encoding,
    pub stats: ColumnStats,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexMeta {
    pub column: String,
    pub kind: IndexKind,
}

/// Everything known about a sealed segment without reading its data: what
/// the catalog stores and what pruning decides from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentMeta {
    pub format_version: u32,
    pub name: String,
    pub schema: SegmentSchema,
    pub partition: i32,
    /// First offset the segment covers (the checkpoint it started from).
    pub start_offset: i64,
    /// Last offset it covers (inclusive); the checkpoint moves to `end + 1`.
    pub end_offset: i64,
    pub row_count: u64,
    /// Min and max of the time column, in its unit.
    pub time_range: Option<(i64, i64)>,
    pub created_at_ms: i64,
    pub columns: Vec<ColumnMeta>,
    pub indexes: Vec<IndexMeta>,
    /// Offset ranges (inclusive) within `start_offset..=end_offset` that
    /// held no record when consumed (compaction, transaction markers, a
    /// broker skipping records). Absent in files written before it existed,
    /// which read as none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offset_gaps: Vec<(i64, i64)>,
}

impl SegmentMeta {
    pub fn column(&self, name: &str) -> Option<&ColumnMeta> {
        self.columns.iter().find(|c| c.name == name)
    }

    pub fn column_stats(&self, name: &str) -> Option<&ColumnStats> {
        self.column(name).map(|c| &c.stats)
    }
}

/// A sealed segment as bytes, ready to be written or opened.
pub struct SegmentImage {
    pub bytes: Vec<u8>,
    pub meta: SegmentMeta,
}

impl SegmentImage {
    /// Writes the image to `path` atomically: a temporary file in the same
    /// directory, fsync, rename, fsync of the directory.
    pub fn write_file(&self, path: &Path) -> Result<(), SegmentError> {
        let io = |source| SegmentError::Io { file: path.display().to_string(), source };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(&self.bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// The segment these bytes describe, read from memory.
    pub fn open(self) -> Result<Segment, SegmentError> {
        Segment::from_buffer(&self.meta.name.clone(), Buffer::from_vec(self.bytes))
    }
}

/// The i64 values of an Int64 or timestamp array.
pub(crate) fn int64_values(array: &dyn Array) -> &[i64] {
    match array.data_type() {
        DataType::Timestamp(ArrowTimeUnit::Second, _) => array.as_primitive::<TimestampSecondType>().values(),
        DataType::Timestamp(ArrowTimeUnit::Millisecond, _) => array.as_primitive::<TimestampMillisecondType>().values(),
        DataType::Timestamp(ArrowTimeUnit::Microsecond, _) => array.as_primitive::<TimestampMicrosecondType>().values(),
        DataType::Timestamp(ArrowTimeUnit::Nanosecond, _) => array.as_primitive::<TimestampNanosecondType>().values(),
        _ => array.as_primitive::<Int64Type>().values(),
    }
}

/// The key of a non-null row (None for NULL).
pub(crate) fn key_at(array: &dyn Array, row: usize) -> Option<Key> {
    if array.is_null(row) {
        return None;
    }
    Some(match array.data_type() {
        DataType::Utf8 => Key::Str(array.as_string::<i32>().value(row).into()),
        DataType::Dictionary(..) => {
            let dict = array.as_dictionary::<Int32Type>();
            let k = dict.keys().value(row) as usize;
            Key::Str(dict.values().as_string::<i32>().value(k).into())
        }
        DataType::Boolean => Key::Bool(array.as_boolean().value(row)),
        DataType::Int32 => Key::Int(i64::from(array.as_primitive::<Int32Type>().value(row))),
        DataType::Float32 => Key::Float(f32_order_bits(array.as_primitive::<Float32Type>().value(row))),
        DataType::Float64 => Key::Float(f64_order_bits(array.as_primitive::<Float64Type>().value(row))),
        _ => Key::Int(int64_values(array)[row]),
    })
}

/// Compares a non-null row's value with `key` without allocating.
pub(crate) fn cmp_at(array: &dyn Array, row: usize, key: &Key) -> Ordering {
    match (array.data_type(), key) {
        (DataType::Utf8, Key::Str(s)) => array.as_string::<i32>().value(row).as_bytes().cmp(s.as_bytes()),
        (DataType::Dictionary(..), Key::Str(s)) => {
            let dict = array.as_dictionary::<Int32Type>();
            let k = dict.keys().value(row) as usize;
            dict.values().as_string::<i32>().value(k).as_bytes().cmp(s.as_bytes())
        }
        _ => key_at(array, row).map_or(Ordering::Less, |k| k.cmp(key)),
    }
}

/// An immutable segment read from a file (memory-mapped) or from memory.
pub struct Segment {
    file: String,
    bytes: Buffer,
    meta: SegmentMeta,
    batch: RecordBatch,
    index_range: std::ops::Range<usize>,
    indexes: Vec<IndexEntry>,
    logical_schema: SchemaRef,
    /// Per column: a dictionary's values as `Utf8View`, built on first use.
    /// A batch of the column served as views is then a gather of these
    /// 16-byte views by key, where a cast would build every row's view
    /// again from its string bytes.
    value_views: Box<[std::sync::OnceLock<Option<StringViewArray>>]>,
    star_trees: Vec<StarTree>,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment").field("file", &self.file).field("rows", &self.meta.row_count).finish()
    }
}

impl Segment {
    /// Memory-maps and verifies a segment file.
    pub fn open(path: &Path) -> Result<Segment, SegmentError> {
        let name = path.display().to_string();
        let io = |source| SegmentError::Io { file: name.clone(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: segment files are immutable once renamed into place; nothing
        // writes to a file after it has been published.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let buffer = Buffer::from(bytes::Bytes::from_owner(mmap));
        Segment::from_buffer(&name, buffer)
    }

    /// Memory-maps a segment file whose every byte was verified before (for
    /// example by [`Segment::open`] right after it arrived), checking only
    /// the footer, header and metadata checksums. Opening then costs about
    /// the same for any segment size, where [`Segment::open`] checksums every
    /// byte.
    ///
    /// # Safety
    /// The data and index sections are not checksummed and the Arrow data is
    /// not validated. The caller guarantees the file is exactly as this crate
    /// wrote it and as it was verified, unchanged since. A damaged data
    /// section opened this way can make later reads misbehave (undefined
    /// behaviour); a damaged index gives errors or wrong rows.
    pub unsafe fn open_trusted(path: &Path) -> Result<Segment, SegmentError> {
        let name = path.display().to_string();
        let io = |source| SegmentError::Io { file: name.clone(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: as in `open`: published segment files are never written.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Segment::read(&name, Buffer::from(bytes::Bytes::from_owner(mmap)), false)
    }

    /// Verifies and reads a segment held in `bytes`; `file` names it in errors.
    pub fn from_buffer(file: &str, bytes: Buffer) -> Result<Segment, SegmentError> {
        Segment::read(file, bytes, true)
    }

    fn read(file: &str, bytes: Buffer, check_bulk: bool) -> Result<Segment, SegmentError> {
        let layout = format::verify(file, bytes.as_slice(), check_bulk)?;
        let meta: SegmentMeta = serde_json::from_slice(&bytes.as_slice()[layout.metadata.clone()])
            .map_err(|e| SegmentError::corrupt(file, Section::Metadata, format!("malformed: {e}")))?;
        if !(format::OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&meta.format_version) {
            return Err(SegmentError::UnsupportedVersion {
                file: file.to_string(),
                found: meta.format_version,
                supported: FORMAT_VERSION,
            });
        }
        let columns = meta.schema.columns.len();
        let trees = meta.schema.star_trees.len();
        let indexes = index::parse_directory(&bytes.as_slice()[layout.index.clone()], columns, trees)
            .map_err(|e| SegmentError::corrupt(file, Section::Index, e))?;
        let star_trees = Segment::read_star_trees(&bytes, &layout.index, &indexes, &meta.schema)
            .map_err(|e| SegmentError::corrupt(file, Section::Index, e))?;
        let data = bytes.slice_with_length(layout.data.start, layout.data.len());
        // Arrow's IPC decoder asserts on some malformed buffers (a panic,
        // not an error) before validation runs: a crafted data section must
        // be refused, not unwind through the caller.
        let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_ipc(&data, check_bulk)))
            .unwrap_or_else(|panic| {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(format!("malformed Arrow data: {why}"))
            });
        let batch = decoded.map_err(|e| SegmentError::corrupt(file, Section::Data, e))?;
        if batch.num_rows() as u64 != meta.row_count || batch.num_columns() != columns + 1 {
            return Err(SegmentError::corrupt(file, Section::Data, "row or column count disagrees with the metadata"));
        }
        let logical_schema = meta.schema.arrow_schema();
        let value_views = (0..batch.num_columns()).map(|_| std::sync::OnceLock::new()).collect();
        Ok(Segment {
            file: file.to_string(),
            bytes,
            meta,
            batch,
            index_range: layout.index,
            indexes,
            logical_schema,
            value_views,
            star_trees,
        })
    }

    /// The star-trees the schema names, each from its index entry.
    fn read_star_trees(
        bytes: &Buffer,
        section: &std::ops::Range<usize>,
        indexes: &[IndexEntry],
        schema: &SegmentSchema,
    ) -> Result<Vec<StarTree>, String> {
        let columns = schema.columns.len();
        (0..schema.star_trees.len())
            .map(|i| {
                let spec = &schema.star_trees[i];
                let in_schema = spec.dimensions.iter().chain(spec.metrics.iter().filter_map(|m| m.column.as_ref()));
                if spec.dimensions.is_empty() || in_schema.clone().any(|&c| c >= columns) {
                    return Err(format!("star-tree {i} names columns the schema does not have"));
                }
                let entry = indexes
                    .iter()
                    .find(|e| e.kind == IndexKind::StarTree && e.column == i)
                    .ok_or_else(|| format!("star-tree {i} is missing"))?;
                let payload = bytes.slice_with_length(section.start + entry.payload.start, entry.payload.len());
                StarTree::parse(payload, spec, schema)
            })
            .collect()
    }

    /// The segment's star-trees, in the order of its schema's.
    pub fn star_trees(&self) -> &[StarTree] {
        &self.star_trees
    }

    pub fn meta(&self) -> &SegmentMeta {
        &self.meta
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    pub fn num_rows(&self) -> u32 {
        self.batch.num_rows() as u32
    }

    /// Bytes of the file (mapped, not necessarily resident).
    pub fn size_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The table's logical schema (dictionary columns as plain strings),
    /// with the offset column last.
    pub fn schema(&self) -> &SchemaRef {
        &self.logical_schema
    }

    /// Rows of the segment for which `predicate` is TRUE.
    pub fn evaluate(&self, predicate: &Predicate) -> Result<RoaringBitmap, SegmentError> {
        predicate::evaluate(self, predicate)
    }

    /// False when no row can satisfy `predicate`, from metadata and bloom
    /// filters only.
    pub fn can_match(&self, predicate: &Predicate) -> bool {
        predicate::can_match(self, predicate)
    }

    /// The selected rows of the projected columns, in logical types.
    pub fn materialize(&self, rows: &RoaringBitmap, projection: &[&str]) -> Result<RecordBatch, SegmentError> {
        take_rows(&self.logical_schema, self.batch.columns(), rows, projection)
    }

    /// The selected rows of the projected columns, each cast to its type in
    /// `types` straight from the stored encoding (a dictionary column goes to
    /// `Utf8View` without first being expanded to `Utf8`).
    pub fn materialize_as(
        &self,
        rows: &RoaringBitmap,
        projection: &[&str],
        types: &[DataType],
    ) -> Result<Vec<ArrayRef>, SegmentError> {
        let convert = |column: usize, array: &ArrayRef, target: &DataType| -> Result<ArrayRef, ArrowError> {
            let keys = array.as_dictionary_opt::<Int32Type>().map(|d| d.keys());
            let views = match (keys, target) {
                (Some(_), DataType::Utf8View) => self.value_views(column),
                _ => None,
            };
            match (keys, views) {
                (Some(keys), Some(views)) => Ok(gather_views(keys, views)),
                _ => cast(array, target),
            }
        };
        Ok(take_columns(&self.logical_schema, self.batch.columns(), rows, projection, Some((types, &convert)))?.1)
    }

    /// The selected rows of a dictionary-encoded string column as keys into
    /// its values (`None` for a column stored otherwise): what grouping by
    /// dictionary ids reads instead of the strings.
    pub fn dictionary_keys(&self, column: &str, rows: &RoaringBitmap) -> Option<(Int32Array, &StringArray)> {
        let (i, _) = self.logical_schema.column_with_name(column)?;
        let dictionary = self.batch.column(i).as_dictionary_opt::<Int32Type>()?;
        let values = dictionary.values().as_string_opt::<i32>()?;
        let selected = Selection::of(rows).apply(dictionary.keys()).ok()?;
        let selected = selected.as_primitive_opt::<Int32Type>()?.clone();
        Some((selected, values))
    }

    /// The values of dictionary column `column` as views, when they are
    /// strings without nulls (the dictionaries sealing writes).
    fn value_views(&self, column: usize) -> Option<&StringViewArray> {
        let cell = self.value_views.get(column)?;
        cell.get_or_init(|| {
            let dictionary = self.batch.column(column).as_dictionary_opt::<Int32Type>()?;
            let values = dictionary.values();
            if values.null_count() > 0 || !matches!(values.data_type(), DataType::Utf8) {
                return None;
            }
            cast(values, &DataType::Utf8View).ok().map(|v| v.as_string_view().clone())
        })
        .as_ref()
    }

    /// Every row, in logical types.
    pub fn to_record_batch(&self) -> Result<RecordBatch, SegmentError> {
        let names: Vec<&str> = self.logical_schema.fields().iter().map(|f| f.name().as_str()).collect();
        let mut all = RoaringBitmap::new();
        all.insert_range(0..self.num_rows());
        self.materialize(&all, &names)
    }

    fn index(&self, column: usize, kind: IndexKind) -> Option<&IndexEntry> {
        self.indexes.iter().find(|e| e.column == column && e.kind == kind)
    }

    fn payload(&self, entry: &IndexEntry) -> &[u8] {
        let section = &self.bytes.as_slice()[self.index_range.clone()];
        &section[entry.payload.clone()]
    }

    fn is_sorted_by(&self, column: usize) -> bool {
        self.meta.schema.sorted == Some(column)
    }

    fn corrupt_index(&self, reason: String) -> SegmentError {
        SegmentError::corrupt(&self.file, Section::Index, reason)
    }
}

/// Selected rows of projected columns, converted to the logical schema.
pub(crate) fn take_rows(
    logical: &SchemaRef,
    arrays: &[ArrayRef],
    rows: &RoaringBitmap,
    projection: &[&str],
) -> Result<RecordBatch, SegmentError> {
    let (fields, columns) = take_columns(logical, arrays, rows, projection, None)?;
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.len() as usize));
    Ok(RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), columns, &options)?)
}

/// How a column's selected rows become the type asked for: (column index,
/// the rows in their stored type, the type asked for).
pub(crate) type Convert<'a> = dyn Fn(usize, &ArrayRef, &DataType) -> Result<ArrayRef, ArrowError> + 'a;

/// The views of `values` at `keys`. A null key (or one out of range, which
/// a dictionary may hold under a null) gets the empty view.
fn gather_views(keys: &Int32Array, values: &StringViewArray) -> ArrayRef {
    let all = values.views();
    let views: arrow::buffer::ScalarBuffer<u128> =
        keys.values().iter().map(|&k| all.get(k as usize).copied().unwrap_or(0)).collect();
    // SAFETY: every view is one of `values`' own views (valid over its data
    // buffers, which go along) or 0, the inline empty string; the null
    // buffer has the keys' length.
    Arc::new(unsafe { StringViewArray::new_unchecked(views, values.data_buffers().to_vec(), keys.nulls().cloned()) })
}

/// Which rows of a column to read. A contiguous run of rows (a whole
/// segment, a sorted-column range) is a zero-copy slice; anything else is
/// gathered.
enum Selection {
    Run { offset: usize, len: usize },
    Gather(UInt32Array),
}

impl Selection {
    fn of(rows: &RoaringBitmap) -> Self {
        match (rows.min(), rows.max()) {
            (Some(lo), Some(hi)) if u64::from(hi - lo) + 1 == rows.len() => {
                Selection::Run { offset: lo as usize, len: rows.len() as usize }
            }
            _ => Selection::Gather(UInt32Array::from_iter_values(rows.iter())),
        }
    }

    fn apply(&self, array: &dyn Array) -> Result<ArrayRef, ArrowError> {
        match self {
            Selection::Run { offset, len } => Ok(array.slice(*offset, *len)),
            Selection::Gather(indices) => take(array, indices, None),
        }
    }
}

/// Selected rows of projected columns, each cast to its type in `types`
/// (the logical type when `types` is None).
pub(crate) fn take_columns(
    logical: &SchemaRef,
    arrays: &[ArrayRef],
    rows: &RoaringBitmap,
    projection: &[&str],
    types: Option<(&[DataType], &Convert<'_>)>,
) -> Result<(Vec<arrow::datatypes::FieldRef>, Vec<ArrayRef>), SegmentError> {
    // No column (a `COUNT(*)`): the row count is all the caller needs, and
    // listing the selected rows' indices would be the whole cost.
    if projection.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let selection = Selection::of(rows);
    let mut fields = Vec::with_capacity(projection.len());
    let mut columns = Vec::with_capacity(projection.len());
    for (n, name) in projection.iter().enumerate() {
        let (i, field) = logical
            .column_with_name(name)
            .ok_or_else(|| SegmentError::Predicate(format!("unknown column `{name}`")))?;
        let mut column = selection.apply(arrays[i].as_ref())?;
        let target = types.and_then(|(t, _)| t.get(n)).unwrap_or(field.data_type());
        if column.data_type() != target {
            column = match types {
                Some((_, convert)) => convert(i, &column, target)?,
                None => cast(&column, target)?,
            };
        }
        fields.push(Arc::new(field.as_ref().clone().with_data_type(target.clone())));
        columns.push(column);
    }
    Ok((fields, columns))
}

impl Columns for Segment {
    fn num_rows(&self) -> u32 {
        self.num_rows()
    }

    fn resolve(&self, column: &str) -> Option<(usize, ColumnType)> {
        let i = self.meta.schema.column_index(column)?;
        Some((i, self.meta.schema.columns[i].data_type))
    }

    fn array(&self, column: usize) -> Result<ArrayRef, SegmentError> {
        Ok(self.batch.column(column).clone())
    }

    fn lookup_eq(&self, column: usize, key: &Key) -> Result<Option<RoaringBitmap>, SegmentError> {
        self.lookup_range(column, Bound::Included(key), Bound::Included(key))
    }

    fn lookup_range(
        &self,
        column: usize,
        low: Bound<&Key>,
        high: Bound<&Key>,
    ) -> Result<Option<RoaringBitmap>, SegmentError> {
        let array = self.batch.column(column).as_ref();
        if self.is_sorted_by(column) {
            // NULLs sort first; the non-null rows are ordered by value.
            let nulls = array.null_count();
            let range = index::bounds_range(array.len() - nulls, |i, k| Ok(cmp_at(array, nulls + i, k)), low, high)
                .map_err(|e| self.corrupt_index(e))?;
            let mut rows = RoaringBitmap::new();
            rows.insert_range((nulls + range.start) as u32..(nulls + range.end) as u32);
            return Ok(Some(rows));
        }
        if let Some(entry) = self.index(column, IndexKind::Inverted) {
            let inverted = Inverted::parse(self.payload(entry)).map_err(|e| self.corrupt_index(e))?;
            return inverted.rows_in(low, high).map(Some).map_err(|e| self.corrupt_index(e));
        }
        if let Some(entry) = self.index(column, IndexKind::Range) {
            let rows = index::range_rows(
                self.payload(entry),
                self.num_rows(),
                |row, k| cmp_at(array, row as usize, k),
                low,
                high,
            )
            .map_err(|e| self.corrupt_index(e))?;
            return Ok(Some(rows));
        }
        Ok(None)
    }

    fn nulls(&self, column: usize) -> Result<RoaringBitmap, SegmentError> {
        Ok(predicate::null_rows(self.batch.column(column).as_ref()))
    }
}

impl StatsSource for Segment {
    fn row_count(&self) -> u64 {
        self.meta.row_count
    }

    fn column_stats(&self, column: &str) -> Option<(ColumnType, &ColumnStats)> {
        let i = self.meta.schema.column_index(column)?;
        Some((self.meta.schema.columns[i].data_type, &self.meta.columns[i].stats))
    }

    fn may_contain(&self, column: &str, key: &Key) -> bool {
        let Some(i) = self.meta.schema.column_index(column) else { return true };
        match self.index(i, IndexKind::Bloom) {
            Some(entry) => index::bloom_may_contain(self.payload(entry), key).unwrap_or(true),
            None => true,
        }
    }
}
