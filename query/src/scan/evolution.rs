//! Schema evolution on the query side: a table's columns only grow.
//!
//! A pipeline may gain columns while it runs (`sluice pipeline apply`). Its
//! committed segments keep the columns they were written with, so a table
//! serves segments of several schemas at once: a column a segment lacks is
//! answered, for every row of it, with the column's default from the
//! pipeline (NULL without one) — when read ([`absent_array`]) and when
//! filtered on ([`absent_value`], which the selection binds into the
//! predicate). The default travels in the column's Arrow field metadata
//! ([`DEFAULT_KEY`]), so a scan sent to another query node carries it.
//!
//! Columns are never dropped from a served table, and a column never
//! changes type: a pipeline that drops a nullable column keeps it served
//! (NULL in new segments), and one that changes a type is refused by
//! `sluice validate` and `pipeline apply`, and ignored here with a warning.

use std::collections::HashMap;

use arrow::array::ArrayRef;
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::{Result, ScalarValue};
use sluice_config::{ColumnType, PipelineConfig};
use sluice_segments::{OFFSET_COLUMN, Scalar, SegmentSchema};

/// The field metadata key holding a column's default, as a JSON [`Scalar`].
pub const DEFAULT_KEY: &str = "sluice.default";

/// The schema of the segments a pipeline writes (the hidden offset column
/// left out), each column's default in its field's metadata.
pub fn pipeline_schema(config: &PipelineConfig) -> Schema {
    let defaults: HashMap<&str, Scalar> = config
        .schema
        .columns
        .iter()
        .zip(sluice_decode::Decoder::new(config).defaults())
        .filter_map(|(column, default)| Some((column.name.as_str(), default?)))
        .collect();
    let arrow = SegmentSchema::from_pipeline(config).arrow_schema();
    let fields: Vec<Field> = arrow
        .fields()
        .iter()
        .filter(|f| f.name() != OFFSET_COLUMN)
        .map(|f| {
            let field = f.as_ref().clone();
            match defaults.get(f.name().as_str()).and_then(|d| serde_json::to_string(d).ok()) {
                Some(json) => field.with_metadata(HashMap::from([(DEFAULT_KEY.to_string(), json)])),
                None => field,
            }
        })
        .collect();
    Schema::new(fields)
}

/// `current` grown by `next`: `current`'s columns in their order, each with
/// `next`'s default where `next` has it, then `next`'s new columns. None
/// when nothing changes; an error naming each column whose type changed.
pub fn evolve(current: &Schema, next: &Schema) -> Result<Option<Schema>, String> {
    let mut changed_types = Vec::new();
    let mut fields: Vec<Field> = Vec::new();
    for ours in current.fields() {
        match next.field_with_name(ours.name()) {
            Ok(theirs) if theirs.data_type() != ours.data_type() => changed_types.push(format!(
                "column `{}` would change type from {} to {}",
                ours.name(),
                ours.data_type(),
                theirs.data_type()
            )),
            Ok(theirs) => fields.push(ours.as_ref().clone().with_metadata(theirs.metadata().clone())),
            Err(_) => fields.push(ours.as_ref().clone()),
        }
    }
    if !changed_types.is_empty() {
        return Err(changed_types.join("; "));
    }
    fields.extend(
        next.fields().iter().filter(|f| current.field_with_name(f.name()).is_err()).map(|f| f.as_ref().clone()),
    );
    let grown = Schema::new(fields);
    Ok((grown != *current).then_some(grown))
}

/// The value every row of a segment without `column` holds: the column's
/// default, else NULL; None for a column `table` does not have.
pub fn absent_value(table: &Schema, column: &str) -> Option<(ColumnType, Scalar)> {
    let field = table.field_with_name(column).ok()?;
    Some((column_type(field.data_type())?, default_of(field)))
}

/// `rows` rows of `field`'s value in a segment without it.
pub fn absent_array(field: &Field, rows: usize) -> Result<ArrayRef> {
    let target = field.data_type();
    let value = match default_of(field) {
        Scalar::Bool(v) => ScalarValue::Boolean(Some(v)),
        Scalar::Int32(v) => ScalarValue::Int32(Some(v)),
        Scalar::Int64(v) | Scalar::Timestamp(v) => ScalarValue::Int64(Some(v)),
        Scalar::Float32(v) => ScalarValue::Float32(Some(v)),
        Scalar::Float64(v) => ScalarValue::Float64(Some(v)),
        Scalar::Utf8(v) => ScalarValue::Utf8View(Some(v)),
        _ => ScalarValue::try_from(target)?,
    };
    let value = if value.data_type() == *target { value } else { value.cast_to(target)? };
    value.to_array_of_size(rows)
}

fn default_of(field: &Field) -> Scalar {
    field.metadata().get(DEFAULT_KEY).and_then(|json| serde_json::from_str(json).ok()).unwrap_or(Scalar::Null)
}

/// The segment column type of a served Arrow type.
fn column_type(served: &DataType) -> Option<ColumnType> {
    Some(match served {
        DataType::Boolean => ColumnType::Bool,
        DataType::Int32 => ColumnType::Int32,
        DataType::Int64 => ColumnType::Int64,
        DataType::Float32 => ColumnType::Float32,
        DataType::Float64 => ColumnType::Float64,
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => ColumnType::String,
        DataType::Dictionary(_, values) => return column_type(values),
        DataType::Timestamp(..) => ColumnType::Timestamp,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, ty: DataType, default: Option<&Scalar>) -> Field {
        let field = Field::new(name, ty, true);
        match default {
            Some(d) => field.with_metadata(HashMap::from([(DEFAULT_KEY.into(), serde_json::to_string(d).unwrap())])),
            None => field,
        }
    }

    #[test]
    fn a_schema_grows_by_appending_and_refuses_type_changes() {
        let a = Schema::new(vec![field("ts", DataType::Int64, None), field("x", DataType::Utf8View, None)]);
        assert_eq!(evolve(&a, &a).unwrap(), None);
        let plan = Scalar::Utf8("free".into());
        let b = Schema::new(vec![field("ts", DataType::Int64, None), field("plan", DataType::Utf8View, Some(&plan))]);
        let grown = evolve(&a, &b).unwrap().unwrap();
        let names: Vec<&str> = grown.fields().iter().map(|f| f.name().as_str()).collect();
        // `x` left the pipeline and stays served; `plan` is appended.
        assert_eq!(names, ["ts", "x", "plan"]);
        assert_eq!(absent_value(&grown, "plan"), Some((ColumnType::String, plan)));
        assert_eq!(absent_value(&grown, "x"), Some((ColumnType::String, Scalar::Null)));
        let c = Schema::new(vec![field("ts", DataType::Utf8View, None)]);
        assert!(evolve(&a, &c).unwrap_err().contains("column `ts` would change type"));
    }

    #[test]
    fn absent_columns_read_as_their_default_or_null() {
        let plan = field("plan", DataType::Utf8View, Some(&Scalar::Utf8("free".into())));
        let array = absent_array(&plan, 3).unwrap();
        assert_eq!(array.len(), 3);
        assert_eq!(arrow::array::AsArray::as_string_view(&array).value(2), "free");
        let ts = DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None);
        let at = absent_array(&field("at", ts.clone(), Some(&Scalar::Timestamp(5))), 2).unwrap();
        assert_eq!(at.data_type(), &ts);
        let none = absent_array(&field("n", DataType::Int32, None), 4).unwrap();
        assert_eq!(none.null_count(), 4);
    }
}
