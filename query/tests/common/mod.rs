//! Deterministic clickstream and users tables, as sealed segments for
//! sluice's provider and as plain Arrow batches built independently from
//! the same rows, for differential tests and benchmarks.
#![allow(dead_code)]

pub mod corpus;

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit as ArrowUnit};
use sluice_config::{ColumnType, TimeUnit};
use sluice_segments::{ColumnSpec, ConsumingSegment, Datum, Segment, SegmentImage, SegmentSchema, seal};

pub const COUNTRIES: [&str; 8] = ["DE", "FR", "US", "BR", "IN", "JP", "NG", "AU"];
pub const DEVICES: [&str; 3] = ["mobile", "desktop", "tablet"];
pub const BASE_TS: i64 = 1_764_000_000_000;

/// xorshift: the same rows on every run.
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

#[derive(Debug, Clone)]
pub struct Click {
    pub ts: i64,
    pub user_id: String,
    pub country: Option<&'static str>,
    pub device: Option<&'static str>,
    pub url: String,
    pub status: i32,
    pub latency_ms: Option<i32>,
    pub bytes: Option<i64>,
    pub score: Option<f64>,
    pub is_bot: Option<bool>,
}

pub fn clicks_schema() -> Arc<SegmentSchema> {
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
        col("url", ColumnType::String, false),
        col("status", ColumnType::Int32, false),
        col("latency_ms", ColumnType::Int32, true),
        col("bytes", ColumnType::Int64, true),
        col("score", ColumnType::Float64, true),
        col("is_bot", ColumnType::Bool, true),
    ];
    let at = |name: &str| columns.iter().position(|c| c.name == name).unwrap();
    Arc::new(SegmentSchema {
        table: "clicks".into(),
        time_column: 0,
        sorted: Some(at("ts")),
        inverted: vec![at("country"), at("device"), at("status")],
        range: vec![at("latency_ms")],
        bloom: vec![at("user_id")],
        star_trees: vec![],
        columns,
    })
}

/// `n` clicks with timestamps from `start_ts`, 10 ms apart; NULLs, NaN,
/// ±0.0 and infinities included.
pub fn clicks(n: usize, start_ts: i64, seed: u64, users: u64) -> Vec<Click> {
    let mut rng = Rng(seed | 1);
    (0..n)
        .map(|i| Click {
            ts: start_ts + i as i64 * 10,
            user_id: format!("u-{:05}", rng.below(users)),
            country: (rng.below(50) != 0).then(|| COUNTRIES[rng.below(8) as usize]),
            device: (rng.below(30) != 0).then(|| DEVICES[rng.below(3) as usize]),
            url: format!("/product/{}/view", rng.below(1000)),
            status: [200, 200, 200, 200, 301, 404, 500][rng.below(7) as usize],
            latency_ms: (rng.below(40) != 0).then(|| rng.below(2_000) as i32),
            bytes: (rng.below(25) != 0).then(|| rng.below(1 << 20) as i64),
            score: match rng.below(200) {
                0 => None,
                1 => Some(f64::NAN),
                2 => Some(-0.0),
                3 => Some(f64::INFINITY),
                _ => Some(rng.below(10_000) as f64 / 100.0),
            },
            is_bot: match rng.below(30) {
                0 => None,
                1 | 2 => Some(true),
                _ => Some(false),
            },
        })
        .collect()
}

pub fn click_datums(c: &Click) -> Vec<Datum<'_>> {
    let opt = |v: Option<Datum<'static>>| v.unwrap_or(Datum::Null);
    vec![
        Datum::Timestamp(c.ts),
        Datum::Str(&c.user_id),
        opt(c.country.map(Datum::Str)),
        opt(c.device.map(Datum::Str)),
        Datum::Str(&c.url),
        Datum::Int32(c.status),
        opt(c.latency_ms.map(Datum::Int32)),
        opt(c.bytes.map(Datum::Int64)),
        opt(c.score.map(Datum::Float64)),
        opt(c.is_bot.map(Datum::Bool)),
    ]
}

/// Seals `rows` as one segment of `schema`, in memory.
pub fn sealed<'a, R: 'a>(
    schema: &Arc<SegmentSchema>,
    name: &str,
    rows: &'a [R],
    datums: impl Fn(&'a R) -> Vec<Datum<'a>>,
) -> Segment {
    sealed_image(schema, name, rows, datums).open().expect("open")
}

/// The sealed file image of `rows` (what a worker uploads).
pub fn sealed_image<'a, R: 'a>(
    schema: &Arc<SegmentSchema>,
    name: &str,
    rows: &'a [R],
    datums: impl Fn(&'a R) -> Vec<Datum<'a>>,
) -> SegmentImage {
    let mut consuming = ConsumingSegment::new(schema.clone(), 0, 0);
    for (offset, row) in rows.iter().enumerate() {
        consuming.append(offset as i64, &datums(row)).expect("valid row");
    }
    seal(&consuming, name, 0).expect("seal")
}

pub fn click_segment(name: &str, rows: &[Click]) -> Segment {
    sealed(&clicks_schema(), name, rows, click_datums)
}

/// The clicks table schema as the provider exposes it (every column nullable).
pub fn clicks_arrow_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("ts", DataType::Timestamp(ArrowUnit::Millisecond, Some("UTC".into())), true),
        Field::new("user_id", DataType::Utf8, true),
        Field::new("country", DataType::Utf8, true),
        Field::new("device", DataType::Utf8, true),
        Field::new("url", DataType::Utf8, true),
        Field::new("status", DataType::Int32, true),
        Field::new("latency_ms", DataType::Int32, true),
        Field::new("bytes", DataType::Int64, true),
        Field::new("score", DataType::Float64, true),
        Field::new("is_bot", DataType::Boolean, true),
    ]))
}

/// The same rows built directly with Arrow, without any sluice code.
pub fn clicks_batch(rows: &[Click]) -> RecordBatch {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from_iter_values(rows.iter().map(|c| c.ts)).with_timezone("UTC")),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|c| c.user_id.as_str()))),
        Arc::new(rows.iter().map(|c| c.country).collect::<StringArray>()),
        Arc::new(rows.iter().map(|c| c.device).collect::<StringArray>()),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|c| c.url.as_str()))),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|c| c.status))),
        Arc::new(rows.iter().map(|c| c.latency_ms).collect::<Int32Array>()),
        Arc::new(rows.iter().map(|c| c.bytes).collect::<Int64Array>()),
        Arc::new(rows.iter().map(|c| c.score).collect::<Float64Array>()),
        Arc::new(rows.iter().map(|c| c.is_bot).collect::<BooleanArray>()),
    ];
    RecordBatch::try_new(clicks_arrow_schema(), columns).expect("batch")
}

#[derive(Debug, Clone)]
pub struct User {
    pub user_id: String,
    pub plan: Option<&'static str>,
    pub age: Option<i32>,
}

pub fn users_schema() -> Arc<SegmentSchema> {
    let col = |name: &str, data_type, nullable| ColumnSpec {
        name: name.into(),
        data_type,
        nullable,
        unit: TimeUnit::Milliseconds,
    };
    Arc::new(SegmentSchema {
        table: "users".into(),
        time_column: 0,
        sorted: None,
        inverted: vec![2],
        range: vec![],
        bloom: vec![1],
        star_trees: vec![],
        columns: vec![
            col("signup", ColumnType::Timestamp, false),
            col("user_id", ColumnType::String, false),
            col("plan", ColumnType::String, true),
            col("age", ColumnType::Int32, true),
        ],
    })
}

/// Users `u-00000`.. with every fifth one missing (so joins have misses).
pub fn users(n: u64, seed: u64) -> Vec<User> {
    let mut rng = Rng(seed | 1);
    (0..n)
        .filter(|i| i % 5 != 4)
        .map(|i| User {
            user_id: format!("u-{i:05}"),
            plan: match rng.below(10) {
                0 => None,
                1..=3 => Some("pro"),
                _ => Some("free"),
            },
            age: (rng.below(8) != 0).then(|| 18 + rng.below(60) as i32),
        })
        .collect()
}

pub fn user_datums(u: &User) -> Vec<Datum<'_>> {
    vec![
        Datum::Timestamp(BASE_TS),
        Datum::Str(&u.user_id),
        u.plan.map_or(Datum::Null, Datum::Str),
        u.age.map_or(Datum::Null, Datum::Int32),
    ]
}

pub fn user_segment(name: &str, rows: &[User]) -> Segment {
    sealed(&users_schema(), name, rows, user_datums)
}

pub fn users_batch(rows: &[User]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("signup", DataType::Timestamp(ArrowUnit::Millisecond, Some("UTC".into())), true),
        Field::new("user_id", DataType::Utf8, true),
        Field::new("plan", DataType::Utf8, true),
        Field::new("age", DataType::Int32, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from_iter_values(rows.iter().map(|_| BASE_TS)).with_timezone("UTC")),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|u| u.user_id.as_str()))),
        Arc::new(rows.iter().map(|u| u.plan).collect::<StringArray>()),
        Arc::new(rows.iter().map(|u| u.age).collect::<Int32Array>()),
    ];
    RecordBatch::try_new(schema, columns).expect("batch")
}

pub const SEGMENT_ROWS: [usize; 6] = [3000, 5000, 1, 2500, 4000, 7000];

/// The fixture's clicks, segment by segment: [`SEGMENT_ROWS`] rows each,
/// 10 ms apart, the first segment covering the first 30 s.
pub fn fixture_clicks() -> Vec<Vec<Click>> {
    let mut ts = BASE_TS;
    let mut segments = Vec::new();
    for (i, n) in SEGMENT_ROWS.into_iter().enumerate() {
        segments.push(clicks(n, ts, 1000 + i as u64, 2000));
        ts += n as i64 * 10;
    }
    segments
}

/// The fixture's users, as its two segments.
pub fn fixture_users() -> (Vec<User>, Vec<User>) {
    let mut people = users(1500, 7);
    let second = people.split_off(600);
    (people, second)
}

/// Serves `clicks` (six segments of [`SEGMENT_ROWS`], 10 ms apart, the
/// first one covering the first 30 s) and `users` (two segments) from
/// `engine`, and returns a plain DataFusion context holding the same rows
/// in `MemTable`s.
pub fn register_fixture(engine: &sluice_query::QueryEngine) -> datafusion::prelude::SessionContext {
    register_fixture_with(engine, |_| clicks_schema())
}

/// The fixture's clicks, segment `i` sealed with `schema_of(i)`, served from
/// `engine`, and the same rows registered with `reference` (with the users).
pub fn register_fixture_with(
    engine: &sluice_query::QueryEngine,
    schema_of: impl Fn(usize) -> Arc<SegmentSchema>,
) -> datafusion::prelude::SessionContext {
    use datafusion::datasource::MemTable;
    use datafusion::prelude::{SessionConfig, SessionContext};
    use sluice_query::SegmentTable;

    let reference = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(3));
    let mut segments = Vec::new();
    let mut batches = Vec::new();
    for (i, rows) in fixture_clicks().iter().enumerate() {
        segments.push(Arc::new(sealed(&schema_of(i), &format!("clicks__0__{i}"), rows, click_datums)));
        batches.push(served(&clicks_batch(rows)));
    }
    let table = SegmentTable::new("clicks", &clicks_arrow_schema());
    table.replace(segments);
    engine.register(Arc::new(table));
    let schema = batches[0].schema();
    reference.register_table("clicks", Arc::new(MemTable::try_new(schema, vec![batches]).unwrap())).unwrap();
    register_users(engine, &reference);
    reference
}

/// The clicks schema with two star-trees, the first split down to
/// `max_leaf_records` (1 makes star nodes at every level).
pub fn star_tree_clicks_schema(max_leaf_records: u32) -> Arc<SegmentSchema> {
    use sluice_config::MetricFunction::*;
    use sluice_segments::{StarMetric, StarTreeSpec};
    let mut schema = (*clicks_schema()).clone();
    let at = |name: &str| schema.column_index(name).unwrap();
    let metric = |function, column: Option<&str>| StarMetric { function, column: column.map(at) };
    schema.star_trees = vec![
        StarTreeSpec {
            dimensions: vec![at("country"), at("device"), at("status")],
            metrics: vec![
                metric(Count, None),
                metric(Sum, Some("bytes")),
                metric(Avg, Some("latency_ms")),
                metric(Min, Some("latency_ms")),
                metric(Max, Some("latency_ms")),
                metric(Count, Some("latency_ms")),
                metric(Min, Some("ts")),
                metric(Max, Some("ts")),
            ],
            max_leaf_records,
        },
        StarTreeSpec {
            dimensions: vec![at("is_bot"), at("device")],
            metrics: vec![metric(Count, None), metric(Sum, Some("bytes"))],
            max_leaf_records,
        },
    ];
    Arc::new(schema)
}

/// The fixture's clicks with star-trees — split to single records in the
/// first segment, into few leaves in the second, none in the third (a file
/// sealed before the trees were configured) — served from `engine`, and the
/// same rows registered with `reference` (with the users).
pub fn register_star_tree_fixture(engine: &sluice_query::QueryEngine) -> datafusion::prelude::SessionContext {
    register_fixture_with(engine, |i| match i % 3 {
        0 => star_tree_clicks_schema(1),
        1 => star_tree_clicks_schema(50),
        _ => clicks_schema(),
    })
}

/// Serves `users` (two segments) from `engine`, and registers the same rows
/// with `reference`.
pub fn register_users(engine: &sluice_query::QueryEngine, reference: &datafusion::prelude::SessionContext) {
    use datafusion::datasource::MemTable;
    use sluice_query::SegmentTable;

    let (first, second) = fixture_users();
    let (first, second) = (&first[..], &second[..]);
    let users_batches = vec![served(&users_batch(first)), served(&users_batch(second))];
    let schema = users_batches[0].schema();
    let table = SegmentTable::new("users", &users_batch(first).schema());
    table.replace(vec![Arc::new(user_segment("users__0__0", first)), Arc::new(user_segment("users__0__1", second))]);
    engine.register(Arc::new(table));
    reference.register_table("users", Arc::new(MemTable::try_new(schema, vec![users_batches]).unwrap())).unwrap();
}

/// `batch` with the column types sluice serves (strings as `Utf8View`), so
/// the reference table has exactly the provider's schema.
pub fn served(batch: &RecordBatch) -> RecordBatch {
    let fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_data_type(sluice_query::scan::table::served_type(f.data_type())))
        .collect();
    let columns =
        batch.columns().iter().zip(&fields).map(|(c, f)| arrow::compute::cast(c, f.data_type()).unwrap()).collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}

/// The pipeline config a worker of the clicks table would run: the same
/// schema and indexes as [`clicks_schema`].
pub const CLICKS_PIPELINE: &str = r#"
table = "clicks"
[source]
bootstrap_servers = "localhost:9092"
topic = "clicks"
[schema]
time_column = "ts"
columns = [
  { name = "ts", type = "timestamp", nullable = false, unit = "ms" },
  { name = "user_id", type = "string", nullable = false },
  { name = "country", type = "string" },
  { name = "device", type = "string" },
  { name = "url", type = "string", nullable = false },
  { name = "status", type = "int32", nullable = false },
  { name = "latency_ms", type = "int32" },
  { name = "bytes", type = "int64" },
  { name = "score", type = "float64" },
  { name = "is_bot", type = "bool" },
]
[indexes]
sorted = ["ts"]
inverted = ["country", "device", "status"]
range = ["latency_ms"]
bloom = ["user_id"]
"#;

/// A click as the JSON record a producer writes. JSON has no NaN or
/// infinities: those scores are written as the largest finite numbers, so
/// callers compare against [`json_click`]'s round trip, not the original.
pub fn json_click(c: &Click) -> (Click, Vec<u8>) {
    let mut c = c.clone();
    c.score = c.score.map(|s| {
        if s.is_nan() {
            f64::MAX
        } else if s.is_infinite() {
            f64::MIN
        } else {
            s
        }
    });
    let record = serde_json::json!({
        "ts": c.ts, "user_id": c.user_id, "country": c.country, "device": c.device, "url": c.url,
        "status": c.status, "latency_ms": c.latency_ms, "bytes": c.bytes, "score": c.score, "is_bot": c.is_bot,
    });
    (c, serde_json::to_vec(&record).expect("JSON"))
}

/// `rows` as the consuming segment of `partition` holding offsets from
/// `start`.
pub fn consuming<'a, R: 'a>(
    schema: &Arc<SegmentSchema>,
    partition: i32,
    start: i64,
    rows: &'a [R],
    datums: impl Fn(&'a R) -> Vec<Datum<'a>>,
) -> ConsumingSegment {
    let mut consuming = ConsumingSegment::new(schema.clone(), partition, start);
    for (i, row) in rows.iter().enumerate() {
        consuming.append(start + i as i64, &datums(row)).expect("valid row");
    }
    consuming
}

/// `rows` sealed as a committed segment of `partition` at offsets from `start`.
pub fn click_segment_at(name: &str, partition: i32, start: i64, rows: &[Click]) -> Segment {
    let consuming = consuming(&clicks_schema(), partition, start, rows, click_datums);
    seal(&consuming, name, 0).expect("seal").open().expect("open")
}

/// The pipeline config of the users table: the same schema and indexes as
/// [`users_schema`]; a small dimension table, served by three query nodes
/// in a cluster.
pub const USERS_PIPELINE: &str = r#"
table = "users"
replication = 3
[source]
bootstrap_servers = "localhost:9092"
topic = "users"
[schema]
time_column = "signup"
columns = [
  { name = "signup", type = "timestamp", nullable = false, unit = "ms" },
  { name = "user_id", type = "string", nullable = false },
  { name = "plan", type = "string" },
  { name = "age", type = "int32" },
]
[indexes]
inverted = ["plan"]
bloom = ["user_id"]
"#;
