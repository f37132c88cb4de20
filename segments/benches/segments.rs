//! Segment kernels: append+seal throughput, index vs scan filters, load time.
//!
//! `cargo bench -p sluice-segments --bench segments`; figures go to
//! docs/PERFORMANCE.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sluice_config::{ColumnType, TimeUnit};
use sluice_segments::{CmpOp, ColumnSpec, ConsumingSegment, Datum, Predicate, Scalar, Segment, SegmentSchema, seal};

const ROWS: u32 = 1_000_000;

fn append_seal(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_seal");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    let rows = 200_000;
    group.throughput(Throughput::Elements(u64::from(rows)));
    group.bench_function("append_10_columns", |b| {
        b.iter(|| {
            let mut segment = ConsumingSegment::new(common::clickstream_schema(None), 0, 0);
            common::fill(&mut segment, rows, 1);
            black_box(segment.row_count())
        })
    });
    group.bench_function("append_and_seal_10_columns", |b| {
        b.iter(|| {
            let mut segment = ConsumingSegment::new(common::clickstream_schema(Some("country")), 0, 0);
            common::fill(&mut segment, rows, 1);
            black_box(seal(&segment, "bench", 0).unwrap().bytes.len())
        })
    });
    group.finish();
}

/// 1M rows; `k_*` hold the same values (0..1000, so `= v` selects 0.1%),
/// indexed differently: inverted, none, sorted.
fn filter_segment() -> Segment {
    let col = |name: &str, data_type| ColumnSpec {
        name: name.into(),
        data_type,
        nullable: true,
        unit: TimeUnit::Milliseconds,
    };
    let schema = Arc::new(SegmentSchema {
        table: "bench".into(),
        columns: vec![
            col("ts", ColumnType::Timestamp),
            col("k_inverted", ColumnType::Int32),
            col("k_plain", ColumnType::Int32),
            col("k_sorted", ColumnType::Int32),
            col("s_inverted", ColumnType::String),
            col("s_plain", ColumnType::String),
        ],
        time_column: 0,
        sorted: Some(3),
        inverted: vec![1, 4],
        range: vec![],
        bloom: vec![],
        star_trees: vec![],
    });
    let mut segment = ConsumingSegment::new(schema, 0, 0);
    let mut rng = common::Rng(42);
    let names: Vec<String> = (0..1000).map(|i| format!("value-{i:04}")).collect();
    for i in 0..ROWS {
        let k = rng.below(1000) as i32;
        let s = names[k as usize].as_str();
        let row = [
            Datum::Timestamp(i64::from(i)),
            Datum::Int32(k),
            Datum::Int32(k),
            Datum::Int32(k),
            Datum::Str(s),
            Datum::Str(s),
        ];
        segment.append(i64::from(i), &row).unwrap();
    }
    seal(&segment, "bench", 0).unwrap().open().unwrap()
}

fn filters(c: &mut Criterion) {
    let segment = filter_segment();
    let mut group = c.benchmark_group("filter_1m_rows");
    group.sample_size(30);
    for column in ["k_inverted", "k_sorted", "k_plain"] {
        let predicate = Predicate::compare(column, CmpOp::Eq, Scalar::Int32(7));
        assert!((800..1200).contains(&segment.evaluate(&predicate).unwrap().len()));
        group.bench_function(BenchmarkId::new("eq_0.1pct", column), |b| {
            b.iter(|| black_box(segment.evaluate(&predicate).unwrap().len()))
        });
    }
    for column in ["s_inverted", "s_plain"] {
        let predicate = Predicate::compare(column, CmpOp::Eq, Scalar::Utf8("value-0007".into()));
        group.bench_function(BenchmarkId::new("eq_0.1pct", column), |b| {
            b.iter(|| black_box(segment.evaluate(&predicate).unwrap().len()))
        });
    }
    for column in ["k_sorted", "k_inverted", "k_plain"] {
        let predicate = Predicate::Between {
            column: column.into(),
            low: Scalar::Int32(100),
            high: Scalar::Int32(199),
            negated: false,
        };
        group.bench_function(BenchmarkId::new("between_10pct", column), |b| {
            b.iter(|| black_box(segment.evaluate(&predicate).unwrap().len()))
        });
    }
    group.finish();
}

fn load(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("open_segment_file");
    group.sample_size(30);
    for rows in [10_000u32, 100_000, 1_000_000] {
        let mut segment = ConsumingSegment::new(common::clickstream_schema(Some("country")), 0, 0);
        common::fill(&mut segment, rows, 3);
        let path = dir.path().join(format!("seg-{rows}"));
        seal(&segment, "bench", 0).unwrap().write_file(&path).unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        group.throughput(Throughput::Bytes(size));
        let label = format!("{rows}_rows_{}MiB", size >> 20);
        group.bench_function(BenchmarkId::new("verify_and_map", &label), |b| {
            b.iter(|| black_box(Segment::open(&path).unwrap().num_rows()))
        });
        // SAFETY: written just above by this crate, and verified by `open`.
        group.bench_function(BenchmarkId::new("trusted_map", &label), |b| {
            b.iter(|| black_box(unsafe { Segment::open_trusted(&path) }.unwrap().num_rows()))
        });
    }
    group.finish();
}

criterion_group!(benches, append_seal, filters, load);
criterion_main!(benches);
