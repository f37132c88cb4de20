//! Star-tree index configuration (Pinot's `starTreeIndexConfigs`): which
//! dimensions a segment pre-aggregates over and which aggregates it keeps.
//!
//! ```toml
//! [[indexes.star_tree]]
//! dimensions = ["country", "device", "status"]
//! metrics = ["COUNT(*)", "SUM(bytes)", "AVG(latency_ms)", "MAX(latency_ms)"]
//! max_leaf_records = 10000
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Problems;
use crate::schema::{ColumnType, Schema};

/// At most this many dimensions: a star-tree is as deep as its dimensions.
pub const MAX_DIMENSIONS: usize = 16;

/// One star-tree of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StarTreeConfig {
    /// Split order of the tree: the first dimension is split first.
    pub dimensions: Vec<String>,
    /// `COUNT(*)`, or `FUNCTION(column)` with `COUNT`, `SUM`, `AVG`, `MIN`,
    /// `MAX`.
    pub metrics: Vec<String>,
    /// A node holding more pre-aggregated records than this is split on the
    /// next dimension (and gets a star child).
    #[serde(default = "StarTreeConfig::default_max_leaf_records")]
    pub max_leaf_records: u32,
}

impl StarTreeConfig {
    fn default_max_leaf_records() -> u32 {
        10_000
    }

    /// The metrics parsed; an unparsable one is skipped (validation names it).
    pub fn parsed_metrics(&self) -> Vec<MetricSpec> {
        self.metrics.iter().filter_map(|m| m.parse().ok()).collect()
    }

    /// Every problem of this tree, named under `field` (`indexes.star_tree[0]`).
    pub(crate) fn validate(&self, field: &str, schema: &Schema, p: &mut Problems) {
        if self.dimensions.is_empty() || self.dimensions.len() > MAX_DIMENSIONS {
            p.push(
                format!("{field}.dimensions"),
                format!("{} dimensions", self.dimensions.len()),
                format!("1 to {MAX_DIMENSIONS} column names"),
            );
        }
        let mut seen = BTreeSet::new();
        for (i, name) in self.dimensions.iter().enumerate() {
            let at = format!("{field}.dimensions[{i}]");
            if schema.column(name).is_none() {
                p.push(at.clone(), format!("{name:?}, which is not a column of the schema"), "a column name");
            }
            if !seen.insert(name) {
                p.push(at, format!("{name:?} listed twice"), "each dimension once");
            }
        }
        if self.metrics.is_empty() {
            p.push(format!("{field}.metrics"), "no metrics", "at least one, such as \"COUNT(*)\"");
        }
        let mut seen = BTreeSet::new();
        for (i, text) in self.metrics.iter().enumerate() {
            let at = format!("{field}.metrics[{i}]");
            let metric = match text.parse::<MetricSpec>() {
                Ok(metric) => metric,
                Err(expected) => {
                    p.push(at, format!("{text:?}"), expected);
                    continue;
                }
            };
            if !seen.insert(metric.clone()) {
                p.push(at.clone(), format!("{text:?} listed twice"), "each metric once");
            }
            let Some(column) = &metric.column else { continue };
            match schema.column(column) {
                None => p.push(at, format!("{column:?}, which is not a column of the schema"), "a column name"),
                Some(c) if !metric.function.accepts(c.data_type) => p.push(
                    at,
                    format!("{} of {column:?}, a column of type {}", metric.function, c.data_type),
                    metric.function.expected_types(),
                ),
                Some(_) => {}
            }
        }
        if self.max_leaf_records == 0 {
            p.push(format!("{field}.max_leaf_records"), "0", "a number of records greater than zero");
        }
    }
}

/// An aggregate function a star-tree can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricFunction {
    Count,
    Sum,
    Avg,
    Min,
    Max,
}

impl MetricFunction {
    /// Whether the function's pre-aggregated value is exact for a column of
    /// `ty`. Sums are kept as 64-bit integers (DataFusion's own wrapping
    /// sum), so floating-point columns, whose sums depend on the order of
    /// additions, are not taken.
    pub fn accepts(self, ty: ColumnType) -> bool {
        match self {
            MetricFunction::Count => true,
            MetricFunction::Sum | MetricFunction::Avg => matches!(ty, ColumnType::Int32 | ColumnType::Int64),
            MetricFunction::Min | MetricFunction::Max => {
                matches!(ty, ColumnType::Int32 | ColumnType::Int64 | ColumnType::Timestamp)
            }
        }
    }

    fn expected_types(self) -> &'static str {
        match self {
            MetricFunction::Count => "any column",
            MetricFunction::Sum | MetricFunction::Avg => "an int32 or int64 column",
            MetricFunction::Min | MetricFunction::Max => "an int32, int64 or timestamp column",
        }
    }
}

impl fmt::Display for MetricFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MetricFunction::Count => "COUNT",
            MetricFunction::Sum => "SUM",
            MetricFunction::Avg => "AVG",
            MetricFunction::Min => "MIN",
            MetricFunction::Max => "MAX",
        })
    }
}

/// `FUNCTION(column)`, or `COUNT(*)` (no column).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MetricSpec {
    pub function: MetricFunction,
    pub column: Option<String>,
}

impl FromStr for MetricSpec {
    /// What was expected instead.
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let expected = || "COUNT(*) or FUNCTION(column) with one of COUNT, SUM, AVG, MIN, MAX".to_string();
        let (name, rest) = text.trim().split_once('(').ok_or_else(expected)?;
        let argument = rest.strip_suffix(')').ok_or_else(expected)?.trim();
        let function = match name.trim().to_ascii_uppercase().as_str() {
            "COUNT" => MetricFunction::Count,
            "SUM" => MetricFunction::Sum,
            "AVG" => MetricFunction::Avg,
            "MIN" => MetricFunction::Min,
            "MAX" => MetricFunction::Max,
            _ => return Err(expected()),
        };
        let column = match argument {
            "*" if function == MetricFunction::Count => None,
            "" | "*" => return Err(expected()),
            name if name.contains(['(', ')', ',']) => return Err(expected()),
            name => Some(name.to_string()),
        };
        Ok(MetricSpec { function, column })
    }
}

impl fmt::Display for MetricSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.function, self.column.as_deref().unwrap_or("*"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_parse_and_print() {
        for (text, printed) in [
            ("COUNT(*)", "COUNT(*)"),
            ("count( * )", "COUNT(*)"),
            ("SUM(bytes)", "SUM(bytes)"),
            (" avg(latency_ms) ", "AVG(latency_ms)"),
            ("COUNT(url)", "COUNT(url)"),
        ] {
            assert_eq!(text.parse::<MetricSpec>().unwrap().to_string(), printed);
        }
        for bad in ["SUM(*)", "MEDIAN(x)", "SUM bytes", "SUM()", "SUM(a, b)", "SUM(f(x))", ""] {
            assert!(bad.parse::<MetricSpec>().is_err(), "{bad}");
        }
    }
}
