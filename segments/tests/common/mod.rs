//! A 10-column clickstream schema and row generator shared by tests and benchmarks.
#![allow(dead_code)]

use std::sync::Arc;

use sluice_config::{ColumnType, MetricFunction, TimeUnit};
use sluice_segments::{ColumnSpec, ConsumingSegment, Datum, SegmentSchema, StarMetric, StarTreeSpec};

pub const COUNTRIES: [&str; 8] = ["DE", "FR", "US", "BR", "IN", "JP", "NG", "AU"];
pub const DEVICES: [&str; 3] = ["mobile", "desktop", "tablet"];

pub fn clickstream_schema(sorted: Option<&str>) -> Arc<SegmentSchema> {
    let col = |name: &str, data_type, nullable| ColumnSpec {
        name: name.into(),
        data_type,
        nullable,
        unit: TimeUnit::Milliseconds,
    };
    let columns = vec![
        col("ts", ColumnType::Timestamp, false),
        col("user_id", ColumnType::String, false),
        col("country", ColumnType::String, true),
        col("device", ColumnType::String, true),
        col("url", ColumnType::String, true),
        col("status", ColumnType::Int32, false),
        col("latency_ms", ColumnType::Int32, true),
        col("bytes", ColumnType::Int64, true),
        col("score", ColumnType::Float64, true),
        col("is_bot", ColumnType::Bool, true),
    ];
    let position = |name: &str| columns.iter().position(|c| c.name == name).unwrap();
    Arc::new(SegmentSchema {
        table: "clicks".into(),
        time_column: 0,
        sorted: sorted.map(position),
        inverted: vec![position("country"), position("device"), position("status")],
        range: vec![position("latency_ms")],
        bloom: vec![position("user_id")],
        star_trees: vec![],
        columns,
    })
}

/// The dimensions of [`star_tree_schema`]'s tree.
pub const STAR_DIMENSIONS: [&str; 3] = ["country", "device", "status"];

/// The clickstream schema, sorted by time, with one star-tree over
/// [`STAR_DIMENSIONS`] holding every kind of metric.
pub fn star_tree_schema(max_leaf_records: u32) -> Arc<SegmentSchema> {
    let mut schema = (*clickstream_schema(Some("ts"))).clone();
    let at = |name: &str| schema.column_index(name).unwrap();
    let metric = |function, column: Option<&str>| StarMetric { function, column: column.map(at) };
    schema.star_trees = vec![StarTreeSpec {
        dimensions: STAR_DIMENSIONS.iter().map(|d| at(d)).collect(),
        metrics: vec![
            metric(MetricFunction::Count, None),
            metric(MetricFunction::Sum, Some("bytes")),
            metric(MetricFunction::Min, Some("latency_ms")),
            metric(MetricFunction::Max, Some("latency_ms")),
            metric(MetricFunction::Count, Some("country")),
            metric(MetricFunction::Avg, Some("latency_ms")),
        ],
        max_leaf_records,
    }];
    Arc::new(schema)
}

/// Deterministic pseudo-random numbers (xorshift), so runs are comparable.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Appends `rows` clickstream rows with offsets 0..rows.
pub fn fill(segment: &mut ConsumingSegment, rows: u32, seed: u64) {
    let mut rng = Rng(seed | 1);
    let mut user = String::new();
    let mut url = String::new();
    for i in 0..rows {
        use std::fmt::Write;
        user.clear();
        write!(user, "u-{:06}", rng.below(200_000)).unwrap();
        url.clear();
        write!(url, "/product/{}/view", rng.below(5_000)).unwrap();
        let row = [
            Datum::Timestamp(1_764_000_000_000 + i64::from(i) * 10),
            Datum::Str(&user),
            if rng.below(50) == 0 { Datum::Null } else { Datum::Str(COUNTRIES[rng.below(8) as usize]) },
            Datum::Str(DEVICES[rng.below(3) as usize]),
            Datum::Str(&url),
            Datum::Int32([200, 200, 200, 200, 301, 404, 500][rng.below(7) as usize]),
            Datum::Int32(rng.below(2_000) as i32),
            Datum::Int64(rng.below(1 << 20) as i64),
            Datum::Float64(rng.below(10_000) as f64 / 100.0),
            Datum::Bool(rng.below(20) == 0),
        ];
        segment.append(i64::from(i), &row).unwrap();
    }
}
