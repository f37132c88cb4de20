//! The Pinot broker response: what `pinotdb`, Superset and Pinot's own
//! tools parse. Column types use Pinot's names; values are JSON scalars, with
//! timestamps as `yyyy-MM-dd HH:mm:ss.SSS` strings in UTC (as Pinot returns
//! them), NaN and infinities as strings (JSON has no such numbers), and
//! anything without a Pinot counterpart rendered as a string.

use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, SchemaRef, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde::Serialize;
use serde_json::{Number, Value};

use crate::stats::ScanStats;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PinotResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_table: Option<ResultTable>,
    pub exceptions: Vec<PinotException>,
    /// `pinotdb` refuses answers without these two: one node answers.
    pub num_servers_queried: u32,
    pub num_servers_responded: u32,
    pub num_segments_queried: u64,
    pub num_segments_processed: u64,
    pub num_segments_matched: u64,
    pub num_consuming_segments_queried: u64,
    /// Pinot's meaning: the oldest among the consuming segments queried of
    /// their newest record's time (ms since the epoch); 0 without any.
    pub min_consuming_freshness_time_ms: i64,
    pub num_docs_scanned: u64,
    pub num_entries_scanned_in_filter: u64,
    pub num_entries_scanned_post_filter: u64,
    pub num_groups_limit_reached: bool,
    pub total_docs: u64,
    pub time_used_ms: u64,
    /// sluice's own field: offsets the segments queried cover without
    /// records (see `sluice status`). Absent when there are none.
    #[serde(skip_serializing_if = "is_zero")]
    pub num_offset_gaps: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultTable {
    pub data_schema: DataSchema,
    pub rows: Vec<Vec<Value>>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DataSchema {
    pub column_names: Vec<String>,
    pub column_data_types: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PinotException {
    pub error_code: i32,
    pub message: String,
}

impl PinotResponse {
    fn empty(stats: &ScanStats, elapsed: Duration) -> Self {
        PinotResponse {
            result_table: None,
            exceptions: Vec::new(),
            num_servers_queried: stats.servers_queried.max(1) as u32,
            num_servers_responded: stats.servers_responded.max(1) as u32,
            num_segments_queried: stats.segments_queried,
            num_segments_processed: stats.segments_processed,
            num_segments_matched: stats.segments_matched,
            num_consuming_segments_queried: stats.consuming_segments,
            min_consuming_freshness_time_ms: stats.min_consuming_freshness_ms,
            num_docs_scanned: stats.docs_scanned,
            num_entries_scanned_in_filter: 0,
            num_entries_scanned_post_filter: 0,
            num_groups_limit_reached: false,
            total_docs: stats.total_docs,
            time_used_ms: elapsed.as_millis() as u64,
            num_offset_gaps: stats.offset_gaps,
        }
    }

    /// An error answer: no result table, one exception.
    pub fn error(code: i32, message: String, elapsed: Duration) -> Self {
        let mut response = PinotResponse::empty(&ScanStats::default(), elapsed);
        response.exceptions.push(PinotException { error_code: code, message });
        response
    }
}

/// The response for a query's result.
pub fn build(
    result: &(SchemaRef, Vec<RecordBatch>),
    stats: &ScanStats,
    elapsed: Duration,
) -> Result<PinotResponse, String> {
    let (schema, batches) = result;
    let column_names = schema.fields().iter().map(|f| f.name().clone()).collect();
    let column_data_types = schema.fields().iter().map(|f| pinot_type(f.data_type())).collect();
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut rows: Vec<Vec<Value>> = Vec::with_capacity(total);
    for batch in batches {
        let start = rows.len();
        rows.extend((0..batch.num_rows()).map(|_| Vec::with_capacity(batch.num_columns())));
        for column in batch.columns() {
            let values = json_values(column.as_ref())?;
            for (row, value) in rows[start..].iter_mut().zip(values) {
                row.push(value);
            }
        }
    }
    let mut response = PinotResponse::empty(stats, elapsed);
    response.result_table = Some(ResultTable { data_schema: DataSchema { column_names, column_data_types }, rows });
    if stats.segments_missing > 0 {
        // Pinot's BROKER_SEGMENT_UNAVAILABLE: never a silently short total.
        response.exceptions.push(PinotException {
            error_code: 305,
            message: format!(
                "{} segment(s) unavailable: no live query node serves them; this answer leaves their rows out",
                stats.segments_missing
            ),
        });
    }
    if stats.tails_unavailable > 0 {
        response.exceptions.push(PinotException {
            error_code: 305,
            message: format!(
                "{} partition tail(s) unavailable: no live query node has caught up on them; this answer leaves \
                 their rows not yet committed out",
                stats.tails_unavailable
            ),
        });
    }
    if stats.tails_excluded > 0 {
        // A partial answer, as Pinot gives one with an exception: the rows
        // are right for the data included, and the caller is told what is not.
        response.exceptions.push(PinotException {
            error_code: 211,
            message: format!(
                "{} partition tail(s) exceed the node's limits.tail_memory: their rows not yet committed are not in \
                 this answer (committed data is)",
                stats.tails_excluded
            ),
        });
    }
    Ok(response)
}

/// Pinot's name for an Arrow type.
pub fn pinot_type(ty: &DataType) -> String {
    match ty {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::UInt8 | DataType::UInt16 => "INT".into(),
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => "LONG".into(),
        DataType::Float16 | DataType::Float32 => "FLOAT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Decimal32(..) | DataType::Decimal64(..) | DataType::Decimal128(..) | DataType::Decimal256(..) => {
            "BIG_DECIMAL".into()
        }
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Timestamp(..) => "TIMESTAMP".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => {
            "BYTES".into()
        }
        DataType::Dictionary(_, values) => pinot_type(values),
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            format!("{}_ARRAY", pinot_type(f.data_type()))
        }
        _ => "STRING".into(),
    }
}

fn float(v: f64) -> Value {
    match Number::from_f64(v) {
        Some(n) => Value::Number(n),
        None if v.is_nan() => Value::String("NaN".into()),
        None if v > 0.0 => Value::String("Infinity".into()),
        None => Value::String("-Infinity".into()),
    }
}

/// One JSON value per row of `array`.
fn json_values(array: &dyn Array) -> Result<Vec<Value>, String> {
    macro_rules! each {
        ($typed:expr, $f:expr) => {{
            let typed = $typed;
            (0..array.len()).map(|i| if typed.is_null(i) { Value::Null } else { $f(typed.value(i)) }).collect()
        }};
    }
    Ok(match array.data_type() {
        DataType::Boolean => each!(array.as_boolean(), Value::Bool),
        DataType::Int8 => each!(array.as_primitive::<Int8Type>(), |v: i8| Value::from(v)),
        DataType::Int16 => each!(array.as_primitive::<Int16Type>(), |v: i16| Value::from(v)),
        DataType::Int32 => each!(array.as_primitive::<Int32Type>(), |v: i32| Value::from(v)),
        DataType::Int64 => each!(array.as_primitive::<Int64Type>(), |v: i64| Value::from(v)),
        DataType::UInt8 => each!(array.as_primitive::<UInt8Type>(), |v: u8| Value::from(v)),
        DataType::UInt16 => each!(array.as_primitive::<UInt16Type>(), |v: u16| Value::from(v)),
        DataType::UInt32 => each!(array.as_primitive::<UInt32Type>(), |v: u32| Value::from(v)),
        DataType::UInt64 => each!(array.as_primitive::<UInt64Type>(), |v: u64| Value::from(v)),
        DataType::Float16 => {
            let wide = arrow::compute::cast(array, &DataType::Float64).map_err(|e| e.to_string())?;
            json_values(wide.as_ref())?
        }
        DataType::Float32 => each!(array.as_primitive::<Float32Type>(), |v: f32| float(f64::from(v))),
        DataType::Float64 => each!(array.as_primitive::<Float64Type>(), float),
        DataType::Utf8 => each!(array.as_string::<i32>(), |v: &str| Value::String(v.to_string())),
        DataType::LargeUtf8 => each!(array.as_string::<i64>(), |v: &str| Value::String(v.to_string())),
        DataType::Utf8View => each!(array.as_string_view(), |v: &str| Value::String(v.to_string())),
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..) => {
            let mut out = Vec::with_capacity(array.len());
            for i in 0..array.len() {
                if array.is_null(i) {
                    out.push(Value::Null);
                    continue;
                }
                let item = match array.data_type() {
                    DataType::List(_) => array.as_list::<i32>().value(i),
                    DataType::LargeList(_) => array.as_list::<i64>().value(i),
                    _ => array.as_fixed_size_list().value(i),
                };
                out.push(Value::Array(json_values(item.as_ref())?));
            }
            out
        }
        DataType::Dictionary(_, values) => {
            let plain = arrow::compute::cast(array, values).map_err(|e| e.to_string())?;
            json_values(plain.as_ref())?
        }
        _ => {
            let options = FormatOptions::new()
                .with_timestamp_format(Some("%Y-%m-%d %H:%M:%S%.3f"))
                .with_timestamp_tz_format(Some("%Y-%m-%d %H:%M:%S%.3f"));
            let normalized = match array.data_type() {
                // Pinot reports instants in UTC.
                DataType::Timestamp(unit, Some(_)) => {
                    arrow::compute::cast(array, &DataType::Timestamp(*unit, None)).map_err(|e| e.to_string())?
                }
                _ => arrow::array::make_array(array.to_data()),
            };
            let formatter = ArrayFormatter::try_new(normalized.as_ref(), &options).map_err(|e| e.to_string())?;
            (0..array.len())
                .map(|i| if array.is_null(i) { Value::Null } else { Value::String(formatter.value(i).to_string()) })
                .collect()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{Field, Schema, TimeUnit};
    use std::sync::Arc;

    #[test]
    fn values_and_types_follow_pinot() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("x", DataType::Float64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![Some(1), None])),
                Arc::new(Float64Array::from(vec![1.5, f64::NAN])),
                Arc::new(StringArray::from(vec![Some("a"), None])),
                Arc::new(TimestampMillisecondArray::from(vec![Some(1_700_000_000_123), None]).with_timezone("UTC")),
            ],
        )
        .unwrap();
        let r = build(&(schema, vec![batch]), &ScanStats::default(), Duration::from_millis(3)).unwrap();
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json["resultTable"]["dataSchema"]["columnDataTypes"],
            serde_json::json!(["LONG", "DOUBLE", "STRING", "TIMESTAMP"])
        );
        assert_eq!(
            json["resultTable"]["rows"],
            serde_json::json!([[1, 1.5, "a", "2023-11-14 22:13:20.123"], [null, "NaN", null, null]])
        );
        assert_eq!(json["numServersQueried"], 1);
        assert_eq!(json["numServersResponded"], 1);
        assert_eq!(json["timeUsedMs"], 3);
    }
}
