//! Append-only column buffers of a consuming segment.
//!
//! Plain `Vec`s rather than Arrow builders, for one reason: memory
//! accounting. The worker's memory budget needs a truthful figure, so buffers
//! grow by a quarter at a time (not double), which keeps allocated bytes
//! within 1.25× of used bytes, and `Vec::capacity` reports exactly what is
//! allocated. Turning them into Arrow arrays copies nothing but the
//! final, exact-size buffers.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array, PrimitiveArray, StringArray,
};
use arrow::buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{
    ArrowTimestampType, DataType, TimeUnit as ArrowTimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use sluice_config::ColumnType;

use crate::types::{Datum, Key, f32_order_bits, f64_order_bits};

/// Grows `v` by a quarter (at least 1024 elements) when full.
fn reserve_one<T>(v: &mut Vec<T>) {
    if v.len() == v.capacity() {
        v.reserve_exact((v.capacity() / 4).max(1024));
    }
}

fn reserve_bytes(v: &mut Vec<u8>, extra: usize) {
    if v.len() + extra > v.capacity() {
        v.reserve_exact((v.capacity() / 4).max(extra).max(4096));
    }
}

/// Validity bits, one per row, packed like Arrow's.
#[derive(Debug, Default, Clone)]
struct Validity {
    bits: Vec<u8>,
    len: usize,
    nulls: usize,
}

impl Validity {
    fn push(&mut self, valid: bool) {
        if self.len.is_multiple_of(8) {
            reserve_one(&mut self.bits);
            self.bits.push(0);
        }
        if valid {
            self.bits[self.len / 8] |= 1 << (self.len % 8);
        } else {
            self.nulls += 1;
        }
        self.len += 1;
    }

    fn is_valid(&self, row: usize) -> bool {
        self.bits[row / 8] & (1 << (row % 8)) != 0
    }

    fn null_buffer(&self) -> Option<NullBuffer> {
        (self.nulls > 0).then(|| NullBuffer::new(BooleanBuffer::new(Buffer::from(self.bits.clone()), 0, self.len)))
    }

    fn allocated(&self) -> usize {
        self.bits.capacity()
    }
}

#[derive(Debug, Clone)]
enum Values {
    Bool { bits: Vec<u8> },
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Float32(Vec<f32>),
    Float64(Vec<f64>),
    Str { offsets: Vec<i32>, data: Vec<u8> },
}

/// One column's buffers.
#[derive(Debug, Clone)]
pub(crate) struct ColumnBuilder {
    values: Values,
    validity: Validity,
    data_type: DataType,
}

impl ColumnBuilder {
    pub fn new(ty: ColumnType, data_type: DataType) -> Self {
        let values = match ty {
            ColumnType::Bool => Values::Bool { bits: Vec::new() },
            ColumnType::Int32 => Values::Int32(Vec::new()),
            ColumnType::Int64 | ColumnType::Timestamp => Values::Int64(Vec::new()),
            ColumnType::Float32 => Values::Float32(Vec::new()),
            ColumnType::Float64 => Values::Float64(Vec::new()),
            ColumnType::String => Values::Str { offsets: vec![0], data: Vec::new() },
        };
        Self { values, validity: Validity::default(), data_type }
    }

    pub fn len(&self) -> usize {
        self.validity.len
    }

    pub fn null_count(&self) -> usize {
        self.validity.nulls
    }

    /// Whether `datum` can be appended: right type, and for strings, room left
    /// under Arrow's 2 GiB i32 offsets.
    pub fn accepts(&self, datum: &Datum<'_>) -> Result<(), &'static str> {
        match (&self.values, datum) {
            (_, Datum::Null)
            | (Values::Bool { .. }, Datum::Bool(_))
            | (Values::Int32(_), Datum::Int32(_))
            | (Values::Float32(_), Datum::Float32(_))
            | (Values::Float64(_), Datum::Float64(_)) => Ok(()),
            (Values::Int64(_), Datum::Int64(_)) if !matches!(self.data_type, DataType::Timestamp(..)) => Ok(()),
            (Values::Int64(_), Datum::Timestamp(_)) if matches!(self.data_type, DataType::Timestamp(..)) => Ok(()),
            (Values::Str { data, .. }, Datum::Str(s)) => {
                if data.len() + s.len() > i32::MAX as usize {
                    Err("full")
                } else {
                    Ok(())
                }
            }
            (_, other) => Err(other.kind()),
        }
    }

    /// Appends a datum already checked by [`ColumnBuilder::accepts`].
    pub fn push(&mut self, datum: &Datum<'_>) {
        let valid = !matches!(datum, Datum::Null);
        let row = self.validity.len;
        match (&mut self.values, datum) {
            (Values::Bool { bits }, d) => {
                if row.is_multiple_of(8) {
                    reserve_one(bits);
                    bits.push(0);
                }
                if let Datum::Bool(true) = d {
                    bits[row / 8] |= 1 << (row % 8);
                }
            }
            (Values::Int32(v), d) => {
                reserve_one(v);
                v.push(if let Datum::Int32(x) = d { *x } else { 0 });
            }
            (Values::Int64(v), d) => {
                reserve_one(v);
                v.push(match d {
                    Datum::Int64(x) | Datum::Timestamp(x) => *x,
                    _ => 0,
                });
            }
            (Values::Float32(v), d) => {
                reserve_one(v);
                v.push(if let Datum::Float32(x) = d { *x } else { 0.0 });
            }
            (Values::Float64(v), d) => {
                reserve_one(v);
                v.push(if let Datum::Float64(x) = d { *x } else { 0.0 });
            }
            (Values::Str { offsets, data }, d) => {
                if let Datum::Str(s) = d {
                    reserve_bytes(data, s.len());
                    data.extend_from_slice(s.as_bytes());
                }
                reserve_one(offsets);
                offsets.push(data.len() as i32);
            }
        }
        self.validity.push(valid);
    }

    /// Bytes of string data held (0 for other types).
    pub fn data_bytes(&self) -> usize {
        match &self.values {
            Values::Str { data, .. } => data.len(),
            _ => 0,
        }
    }

    /// Reserves room for `rows` rows and, in a string column, `bytes` bytes.
    pub fn reserve(&mut self, rows: usize, bytes: usize) {
        self.validity.bits.reserve_exact(rows.div_ceil(8));
        match &mut self.values {
            Values::Bool { bits } => bits.reserve_exact(rows.div_ceil(8)),
            Values::Int32(v) => v.reserve_exact(rows),
            Values::Int64(v) => v.reserve_exact(rows),
            Values::Float32(v) => v.reserve_exact(rows),
            Values::Float64(v) => v.reserve_exact(rows),
            Values::Str { offsets, data } => {
                offsets.reserve_exact(rows);
                data.reserve_exact(bytes);
            }
        }
    }

    pub fn is_valid(&self, row: usize) -> bool {
        self.validity.is_valid(row)
    }

    /// Bytes allocated by this column's buffers.
    pub fn allocated_bytes(&self) -> usize {
        let values = match &self.values {
            Values::Bool { bits } => bits.capacity(),
            Values::Int32(v) => v.capacity() * 4,
            Values::Int64(v) => v.capacity() * 8,
            Values::Float32(v) => v.capacity() * 4,
            Values::Float64(v) => v.capacity() * 8,
            Values::Str { offsets, data } => offsets.capacity() * 4 + data.capacity(),
        };
        values + self.validity.allocated()
    }

    /// The smallest and largest non-null value, in key order (as
    /// `LiveStats` would have observed them one by one), from one pass over
    /// the buffers: a tight loop per type instead of a comparison per row
    /// and column while consuming.
    pub fn min_max(&self) -> Option<(Key, Key)> {
        let valid = |row: usize| self.validity.nulls == 0 || self.validity.is_valid(row);
        fn range<K: Ord + Copy>(keys: impl Iterator<Item = K>, valid: impl Fn(usize) -> bool) -> Option<(K, K)> {
            keys.enumerate()
                .filter(|(row, _)| valid(*row))
                .fold(None, |range, (_, k)| Some(range.map_or((k, k), |(lo, hi): (K, K)| (lo.min(k), hi.max(k)))))
        }
        let rows = 0..self.validity.len;
        match &self.values {
            Values::Bool { bits } => range(rows.map(|r| bits[r / 8] & (1 << (r % 8)) != 0), valid)
                .map(|(lo, hi)| (Key::Bool(lo), Key::Bool(hi))),
            Values::Int32(v) => {
                range(v.iter().map(|x| i64::from(*x)), valid).map(|(lo, hi)| (Key::Int(lo), Key::Int(hi)))
            }
            Values::Int64(v) => range(v.iter().copied(), valid).map(|(lo, hi)| (Key::Int(lo), Key::Int(hi))),
            Values::Float32(v) => {
                range(v.iter().map(|x| f32_order_bits(*x)), valid).map(|(lo, hi)| (Key::Float(lo), Key::Float(hi)))
            }
            Values::Float64(v) => {
                range(v.iter().map(|x| f64_order_bits(*x)), valid).map(|(lo, hi)| (Key::Float(lo), Key::Float(hi)))
            }
            Values::Str { offsets, data } => {
                let slices = rows.map(|r| &data[offsets[r] as usize..offsets[r + 1] as usize]);
                // SAFETY: `data` holds whole `&str`s, cut at their offsets.
                let text = |b: &[u8]| Key::Str(unsafe { std::str::from_utf8_unchecked(b) }.into());
                range(slices, valid).map(|(lo, hi)| (text(lo), text(hi)))
            }
        }
    }

    /// An Arrow array of the rows appended so far (a copy: the builder keeps
    /// accepting rows).
    pub fn to_array(&self) -> ArrayRef {
        let nulls = self.validity.null_buffer();
        let len = self.validity.len;
        match &self.values {
            Values::Bool { bits } => {
                Arc::new(BooleanArray::new(BooleanBuffer::new(Buffer::from(bits.clone()), 0, len), nulls))
            }
            Values::Int32(v) => Arc::new(Int32Array::new(ScalarBuffer::from(v.clone()), nulls)),
            Values::Int64(v) => match &self.data_type {
                DataType::Timestamp(unit, tz) => match unit {
                    ArrowTimeUnit::Second => timestamp::<TimestampSecondType>(v, nulls, tz),
                    ArrowTimeUnit::Millisecond => timestamp::<TimestampMillisecondType>(v, nulls, tz),
                    ArrowTimeUnit::Microsecond => timestamp::<TimestampMicrosecondType>(v, nulls, tz),
                    ArrowTimeUnit::Nanosecond => timestamp::<TimestampNanosecondType>(v, nulls, tz),
                },
                _ => Arc::new(Int64Array::new(ScalarBuffer::from(v.clone()), nulls)),
            },
            Values::Float32(v) => Arc::new(Float32Array::new(ScalarBuffer::from(v.clone()), nulls)),
            Values::Float64(v) => Arc::new(Float64Array::new(ScalarBuffer::from(v.clone()), nulls)),
            Values::Str { offsets, data } => {
                let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets.clone()));
                // SAFETY: offsets are monotonic and end at data.len(); data is
                // the concatenation of `&str`s, so every slice is valid UTF-8.
                Arc::new(unsafe { StringArray::new_unchecked(offsets, Buffer::from(data.clone()), nulls) })
            }
        }
    }
}

fn timestamp<T: ArrowTimestampType>(values: &[i64], nulls: Option<NullBuffer>, tz: &Option<Arc<str>>) -> ArrayRef {
    Arc::new(PrimitiveArray::<T>::new(ScalarBuffer::from(values.to_vec()), nulls).with_timezone_opt(tz.clone()))
}
