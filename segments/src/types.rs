//! Values: [`Datum`] for rows being appended (borrowed, no allocation per
//! row), [`Scalar`] for predicate literals and statistics, and [`Key`], the
//! total order every index and every comparison uses.
//!
//! The order is Arrow's: integers and timestamps numerically, strings by
//! bytes, floats by IEEE 754 `totalOrder` (so `-0.0 < 0.0` and NaN sorts above
//! every number, and NaN equals NaN), `false < true`. Indexes, pruning and scans
//! all use it, so the answer never depends on which of them was used.

use std::cmp::Ordering;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray,
    TimestampMillisecondArray, TimestampNanosecondArray, TimestampSecondArray,
};
use arrow::datatypes::{DataType, Field, TimeUnit as ArrowTimeUnit};
use serde::{Deserialize, Serialize};
use sluice_config::{Column, ColumnType, TimeUnit};

/// The name of the hidden column holding each row's Kafka offset.
pub const OFFSET_COLUMN: &str = "__offset";

/// One value of a row being appended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Datum<'a> {
    Null,
    Bool(bool),
    Int32(i32),
    Int64(i64),
    Float32(f32),
    Float64(f64),
    Str(&'a str),
    /// In the column's unit.
    Timestamp(i64),
}

impl Datum<'_> {
    pub fn kind(&self) -> &'static str {
        match self {
            Datum::Null => "null",
            Datum::Bool(_) => "bool",
            Datum::Int32(_) => "int32",
            Datum::Int64(_) => "int64",
            Datum::Float32(_) => "float32",
            Datum::Float64(_) => "float64",
            Datum::Str(_) => "string",
            Datum::Timestamp(_) => "timestamp",
        }
    }

    pub fn to_scalar(&self) -> Scalar {
        match *self {
            Datum::Null => Scalar::Null,
            Datum::Bool(v) => Scalar::Bool(v),
            Datum::Int32(v) => Scalar::Int32(v),
            Datum::Int64(v) => Scalar::Int64(v),
            Datum::Float32(v) => Scalar::Float32(v),
            Datum::Float64(v) => Scalar::Float64(v),
            Datum::Str(v) => Scalar::Utf8(v.to_string()),
            Datum::Timestamp(v) => Scalar::Timestamp(v),
        }
    }
}

/// An owned value: a predicate literal or a column statistic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Scalar {
    Null,
    Bool(bool),
    Int32(i32),
    Int64(i64),
    Float32(#[serde(with = "float32_json")] f32),
    Float64(#[serde(with = "float64_json")] f64),
    Utf8(String),
    /// In the column's unit.
    Timestamp(i64),
}

/// JSON has no NaN or infinities: finite floats are written as numbers
/// (serde_json round-trips them exactly, `-0.0` included), others as the hex
/// of their bits, so statistics survive the metadata section bit for bit.
macro_rules! float_json {
    ($module:ident, $float:ty, $bits:ty) => {
        mod $module {
            use serde::de::{self, Visitor};
            use serde::{Deserializer, Serializer};

            pub fn serialize<S: Serializer>(v: &$float, s: S) -> Result<S::Ok, S::Error> {
                if v.is_finite() {
                    s.serialize_f64(f64::from(*v))
                } else {
                    s.serialize_str(&format!("0x{:x}", v.to_bits()))
                }
            }

            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<$float, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $float;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("a number or the hex bits of a non-finite float")
                    }
                    fn visit_f64<E: de::Error>(self, v: f64) -> Result<$float, E> {
                        Ok(v as $float)
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$float, E> {
                        Ok(v as $float)
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$float, E> {
                        Ok(v as $float)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$float, E> {
                        let hex = v.strip_prefix("0x").ok_or_else(|| E::custom("expected 0x<hex bits>"))?;
                        <$bits>::from_str_radix(hex, 16).map(<$float>::from_bits).map_err(E::custom)
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}
float_json!(float32_json, f32, u32);
float_json!(float64_json, f64, u64);

impl Scalar {
    pub fn is_null(&self) -> bool {
        matches!(self, Scalar::Null)
    }

    /// The index key of this literal for a column of type `ty`, or an error
    /// when the literal does not have the column's type. `Null` has no key.
    pub fn key_for(&self, ty: ColumnType) -> Result<Option<Key>, String> {
        let key = match (ty, self) {
            (_, Scalar::Null) => return Ok(None),
            (ColumnType::Bool, Scalar::Bool(v)) => Key::Bool(*v),
            (ColumnType::Int32, Scalar::Int32(v)) => Key::Int(i64::from(*v)),
            (ColumnType::Int64, Scalar::Int64(v)) => Key::Int(*v),
            (ColumnType::Timestamp, Scalar::Timestamp(v)) => Key::Int(*v),
            (ColumnType::Float32, Scalar::Float32(v)) => Key::Float(f32_order_bits(*v)),
            (ColumnType::Float64, Scalar::Float64(v)) => Key::Float(f64_order_bits(*v)),
            (ColumnType::String, Scalar::Utf8(v)) => Key::Str(v.as_str().into()),
            (ty, other) => return Err(format!("a {ty} column cannot be compared with {other:?}")),
        };
        Ok(Some(key))
    }

    /// The scalar a key stands for in a column of type `ty`.
    pub fn from_key(key: &Key, ty: ColumnType) -> Scalar {
        match (ty, key) {
            (ColumnType::Bool, Key::Bool(v)) => Scalar::Bool(*v),
            (ColumnType::Int32, Key::Int(v)) => Scalar::Int32(*v as i32),
            (ColumnType::Int64, Key::Int(v)) => Scalar::Int64(*v),
            (ColumnType::Timestamp, Key::Int(v)) => Scalar::Timestamp(*v),
            (ColumnType::Float32, Key::Float(bits)) => Scalar::Float32(f32_from_order_bits(*bits)),
            (ColumnType::Float64, Key::Float(bits)) => Scalar::Float64(f64_from_order_bits(*bits)),
            (ColumnType::String, Key::Str(s)) => Scalar::Utf8(s.to_string()),
            _ => Scalar::Null,
        }
    }
}

/// A non-null value in the total order described in the module docs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Bool(bool),
    Int(i64),
    /// `totalOrder` bits: comparing them as integers is IEEE `totalOrder`.
    Float(u64),
    Str(Box<str>),
}

impl Key {
    /// The key of a non-null datum.
    pub fn of(datum: &Datum<'_>) -> Option<Key> {
        KeyRef::of(datum).map(KeyRef::to_key)
    }

    /// Bytes that identify the key, for hashing into bloom filters.
    pub fn hash_bytes(&self, out: &mut Vec<u8>) {
        out.clear();
        match self {
            Key::Bool(v) => out.push(u8::from(*v)),
            Key::Int(v) => out.extend_from_slice(&v.to_le_bytes()),
            Key::Float(v) => out.extend_from_slice(&v.to_le_bytes()),
            Key::Str(v) => out.extend_from_slice(v.as_bytes()),
        }
    }

    /// Heap bytes owned by the key (for memory accounting).
    pub fn heap_size(&self) -> usize {
        match self {
            Key::Str(s) => s.len(),
            _ => 0,
        }
    }

    pub fn as_key_ref(&self) -> KeyRef<'_> {
        match self {
            Key::Bool(v) => KeyRef::Bool(*v),
            Key::Int(v) => KeyRef::Int(*v),
            Key::Float(v) => KeyRef::Float(*v),
            Key::Str(s) => KeyRef::Str(s),
        }
    }
}

/// A [`Key`] that borrows its string: what appending a row compares and
/// looks up, so that a row costs no allocation per string column. Its
/// variants and their order are [`Key`]'s, so both order alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyRef<'a> {
    Bool(bool),
    Int(i64),
    Float(u64),
    Str(&'a str),
}

impl<'a> KeyRef<'a> {
    /// The key of a non-null datum.
    pub fn of(datum: &Datum<'a>) -> Option<KeyRef<'a>> {
        Some(match *datum {
            Datum::Null => return None,
            Datum::Bool(v) => KeyRef::Bool(v),
            Datum::Int32(v) => KeyRef::Int(i64::from(v)),
            Datum::Int64(v) | Datum::Timestamp(v) => KeyRef::Int(v),
            Datum::Float32(v) => KeyRef::Float(f32_order_bits(v)),
            Datum::Float64(v) => KeyRef::Float(f64_order_bits(v)),
            Datum::Str(v) => KeyRef::Str(v),
        })
    }

    pub fn to_key(self) -> Key {
        match self {
            KeyRef::Bool(v) => Key::Bool(v),
            KeyRef::Int(v) => Key::Int(v),
            KeyRef::Float(v) => Key::Float(v),
            KeyRef::Str(s) => Key::Str(s.into()),
        }
    }
}

pub use sluice_hash::{finish_stable_hash, stable_hash};
pub(crate) use sluice_hash::{fnv1a_step, stable_hash_start};

/// Maps an f64 to bits whose unsigned order is IEEE 754 `totalOrder`.
pub fn f64_order_bits(v: f64) -> u64 {
    let bits = v.to_bits();
    if bits >> 63 == 1 { !bits } else { bits | (1 << 63) }
}

pub fn f64_from_order_bits(bits: u64) -> f64 {
    f64::from_bits(if bits >> 63 == 1 { bits & !(1 << 63) } else { !bits })
}

/// f32 keys are the f64 keys of the widened value: widening is exact and
/// keeps `totalOrder`.
pub fn f32_order_bits(v: f32) -> u64 {
    f64_order_bits(f64::from(v))
}

pub fn f32_from_order_bits(bits: u64) -> f32 {
    f64_from_order_bits(bits) as f32
}

/// Compares two floats the way Arrow's kernels do.
pub fn total_cmp_f64(a: f64, b: f64) -> Ordering {
    a.total_cmp(&b)
}

pub(crate) fn arrow_time_unit(unit: TimeUnit) -> ArrowTimeUnit {
    match unit {
        TimeUnit::Seconds => ArrowTimeUnit::Second,
        TimeUnit::Milliseconds => ArrowTimeUnit::Millisecond,
        TimeUnit::Microseconds => ArrowTimeUnit::Microsecond,
        TimeUnit::Nanoseconds => ArrowTimeUnit::Nanosecond,
    }
}

/// The logical Arrow type of a schema column.
pub fn arrow_type(column: &Column) -> DataType {
    logical_arrow_type(column.data_type, column.time_unit())
}

pub fn logical_arrow_type(ty: ColumnType, unit: TimeUnit) -> DataType {
    match ty {
        ColumnType::String => DataType::Utf8,
        ColumnType::Bool => DataType::Boolean,
        ColumnType::Int32 => DataType::Int32,
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float32 => DataType::Float32,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Timestamp => DataType::Timestamp(arrow_time_unit(unit), Some("UTC".into())),
    }
}

pub fn arrow_field(column: &Column) -> Field {
    Field::new(&column.name, arrow_type(column), column.nullable)
}

/// A one-element array holding `key`, typed like the column, for Arrow's
/// comparison kernels.
pub(crate) fn key_array(key: &Key, data_type: &DataType) -> ArrayRef {
    match (data_type, key) {
        (DataType::Boolean, Key::Bool(v)) => Arc::new(BooleanArray::from(vec![*v])),
        (DataType::Int32, Key::Int(v)) => Arc::new(Int32Array::from(vec![*v as i32])),
        (DataType::Int64, Key::Int(v)) => Arc::new(Int64Array::from(vec![*v])),
        (DataType::Float32, Key::Float(b)) => Arc::new(Float32Array::from(vec![f32_from_order_bits(*b)])),
        (DataType::Float64, Key::Float(b)) => Arc::new(Float64Array::from(vec![f64_from_order_bits(*b)])),
        (DataType::Utf8, Key::Str(s)) => Arc::new(StringArray::from(vec![s.as_ref()])),
        (DataType::Timestamp(unit, tz), Key::Int(v)) => match unit {
            ArrowTimeUnit::Second => Arc::new(TimestampSecondArray::from(vec![*v]).with_timezone_opt(tz.clone())),
            ArrowTimeUnit::Millisecond => {
                Arc::new(TimestampMillisecondArray::from(vec![*v]).with_timezone_opt(tz.clone()))
            }
            ArrowTimeUnit::Microsecond => {
                Arc::new(TimestampMicrosecondArray::from(vec![*v]).with_timezone_opt(tz.clone()))
            }
            ArrowTimeUnit::Nanosecond => {
                Arc::new(TimestampNanosecondArray::from(vec![*v]).with_timezone_opt(tz.clone()))
            }
        },
        (DataType::Dictionary(_, values), key) => key_array(key, values),
        (ty, key) => panic!("internal: key {key:?} does not fit type {ty}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_keys_follow_total_order() {
        let values = [f64::NEG_INFINITY, -1.5, -0.0, 0.0, 1e-300, 2.0, f64::INFINITY, f64::NAN];
        for pair in values.windows(2) {
            assert_eq!(f64_order_bits(pair[0]).cmp(&f64_order_bits(pair[1])), total_cmp_f64(pair[0], pair[1]));
        }
        for v in values {
            assert_eq!(f64_from_order_bits(f64_order_bits(v)).to_bits(), v.to_bits());
        }
        assert_eq!(f32_from_order_bits(f32_order_bits(-3.25f32)), -3.25f32);
    }

    #[test]
    fn borrowed_keys_order_as_owned_keys_do() {
        let keys = [
            Key::Bool(false),
            Key::Bool(true),
            Key::Int(-5),
            Key::Int(7),
            Key::Float(f64_order_bits(-0.0)),
            Key::Float(f64_order_bits(0.0)),
            Key::Str("".into()),
            Key::Str("a".into()),
            Key::Str("ab".into()),
            Key::Str("b".into()),
        ];
        for a in &keys {
            for b in &keys {
                assert_eq!(a.as_key_ref().cmp(&b.as_key_ref()), a.cmp(b), "{a:?} vs {b:?}");
            }
            assert_eq!(&a.as_key_ref().to_key(), a);
        }
    }
}
