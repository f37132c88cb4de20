use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use sluice_config::{ColumnType, MetricFunction, PipelineConfig, TimeUnit};

use crate::types::{OFFSET_COLUMN, logical_arrow_type};

/// One column as a segment sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: ColumnType,
    pub nullable: bool,
    /// Unit of timestamp columns (ms for others, unused).
    pub unit: TimeUnit,
}

impl ColumnSpec {
    pub fn arrow_type(&self) -> DataType {
        logical_arrow_type(self.data_type, self.unit)
    }
}

/// The columns and index configuration of a table's segments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentSchema {
    pub table: String,
    pub columns: Vec<ColumnSpec>,
    pub time_column: usize,
    pub sorted: Option<usize>,
    pub inverted: Vec<usize>,
    pub range: Vec<usize>,
    pub bloom: Vec<usize>,
    /// Pre-aggregations built at seal; absent in files written before them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub star_trees: Vec<StarTreeSpec>,
}

impl SegmentSchema {
    /// From a validated pipeline config (see `sluice_config`'s invariants:
    /// every referenced column exists).
    pub fn from_pipeline(config: &PipelineConfig) -> Self {
        let columns: Vec<ColumnSpec> = config
            .schema
            .columns
            .iter()
            .map(|c| ColumnSpec {
                name: c.name.clone(),
                data_type: c.data_type,
                nullable: c.nullable,
                unit: c.time_unit(),
            })
            .collect();
        let position = |name: &String| columns.iter().position(|c| &c.name == name);
        let positions = |names: &[String]| names.iter().filter_map(position).collect::<Vec<_>>();
        Self {
            table: config.table.clone(),
            time_column: position(&config.schema.time_column).unwrap_or(0),
            sorted: config.indexes.sorted.first().and_then(position),
            inverted: positions(&config.indexes.inverted),
            range: positions(&config.indexes.range),
            bloom: positions(&config.indexes.bloom),
            star_trees: config
                .indexes
                .star_tree
                .iter()
                .map(|tree| StarTreeSpec {
                    dimensions: positions(&tree.dimensions),
                    metrics: tree
                        .parsed_metrics()
                        .into_iter()
                        .map(|m| StarMetric { function: m.function, column: m.column.as_ref().and_then(position) })
                        .collect(),
                    max_leaf_records: tree.max_leaf_records,
                })
                .collect(),
            columns,
        }
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// Columns with a live (consuming) index: inverted or range.
    pub(crate) fn live_indexed(&self, column: usize) -> bool {
        self.inverted.contains(&column) || self.range.contains(&column)
    }

    /// The logical Arrow schema of the table, with the hidden offset column last.
    pub fn arrow_schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> =
            self.columns.iter().map(|c| Field::new(&c.name, c.arrow_type(), c.nullable)).collect();
        fields.push(Field::new(OFFSET_COLUMN, DataType::Int64, false));
        Arc::new(Schema::new(fields))
    }
}

/// One star-tree of a table, with columns by position in the schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StarTreeSpec {
    pub dimensions: Vec<usize>,
    pub metrics: Vec<StarMetric>,
    pub max_leaf_records: u32,
}

/// An aggregate a star-tree holds: `function(column)`, `COUNT(*)` without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StarMetric {
    pub function: MetricFunction,
    pub column: Option<usize>,
}

impl StarTreeSpec {
    /// The records' Arrow schema: dimensions, then value and count per metric.
    pub(crate) fn records_schema(&self, schema: &SegmentSchema) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .dimensions
            .iter()
            .map(|&d| {
                let column = &schema.columns[d];
                Field::new(&column.name, column.arrow_type(), true)
            })
            .collect();
        for (i, _) in self.metrics.iter().enumerate() {
            fields.push(Field::new(format!("metric{i}"), DataType::Int64, true));
            fields.push(Field::new(format!("metric{i}_count"), DataType::Int64, false));
        }
        Arc::new(Schema::new(fields))
    }
}
