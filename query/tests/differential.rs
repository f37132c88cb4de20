//! Differential tests: every query of the corpus gives the same rows from
//! sluice's segment provider (indexes, pruning, pushdown) as from a plain
//! DataFusion `MemTable` holding the same rows built directly with Arrow.

mod common;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use common::corpus::CORPUS;
use common::*;
use datafusion::prelude::SessionContext;
use sluice_config::QueryLimits;
use sluice_query::QueryEngine;

struct Fixture {
    engine: QueryEngine,
    reference: SessionContext,
}

fn fixture() -> Fixture {
    let engine = QueryEngine::new(QueryLimits::default()).unwrap();
    let reference = register_fixture(&engine);
    Fixture { engine, reference }
}

/// Rows as strings, floats to 7 significant digits (summation order
/// differs between plans), sorted unless the order is part of the answer.
fn normalize(batches: &[RecordBatch], keep_order: bool) -> Vec<String> {
    let options = FormatOptions::new().with_null("NULL");
    let mut rows = Vec::new();
    for batch in batches {
        let mut cells: Vec<Vec<String>> = vec![Vec::new(); batch.num_rows()];
        for column in batch.columns() {
            let formatted: Vec<String> = match column.data_type() {
                DataType::Float64 | DataType::Float32 => {
                    let c = arrow::compute::cast(column, &DataType::Float64).unwrap();
                    let c = c.as_primitive::<Float64Type>();
                    (0..c.len())
                        .map(|i| if c.is_null(i) { "NULL".into() } else { format!("{:.6e}", c.value(i)) })
                        .collect()
                }
                _ => {
                    let f = ArrayFormatter::try_new(column.as_ref(), &options).unwrap();
                    (0..column.len()).map(|i| f.value(i).to_string()).collect()
                }
            };
            for (row, cell) in cells.iter_mut().zip(formatted) {
                row.push(cell);
            }
        }
        rows.extend(cells.into_iter().map(|c| c.join(" | ")));
    }
    if !keep_order {
        rows.sort();
    }
    rows
}

/// How `sql`'s answer from `engine` differs from `reference`'s, if it does.
async fn difference(engine: &QueryEngine, reference: &SessionContext, sql: &str) -> Option<String> {
    let ours = engine.context().sql(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let ours = ours.collect().await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let theirs = reference.sql(sql).await.unwrap().collect().await.unwrap();
    let ordered = sql.contains("ORDER BY") && !sql.contains("OVER");
    let (a, b) = (normalize(&ours, ordered), normalize(&theirs, ordered));
    (a != b).then(|| format!("{sql}\n  sluice:    {:?}\n  datafusion: {:?}", head(&a), head(&b)))
}

/// Every corpus query whose answer from `engine` differs from `reference`'s.
async fn differences(engine: &QueryEngine, reference: &SessionContext) -> Vec<String> {
    let mut failures = Vec::new();
    for sql in CORPUS {
        failures.extend(difference(engine, reference, sql).await);
    }
    failures
}

/// Fails when `sql`'s answer differs from the reference's.
async fn assert_answers_as_reference(f: &Fixture, sql: &str) {
    if let Some(failure) = difference(&f.engine, &f.reference, sql).await {
        panic!("{failure}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_matches_plain_datafusion() {
    assert!(CORPUS.len() >= 60, "the corpus has {} queries", CORPUS.len());
    let f = fixture();
    let failures = differences(&f.engine, &f.reference).await;
    assert!(failures.is_empty(), "{} of {} queries differ:\n{}", failures.len(), CORPUS.len(), failures.join("\n"));
}

/// Plain DataFusion over `rows` as the clicks table (and the users table).
fn reference_over(engine: &QueryEngine, rows: &[Click]) -> SessionContext {
    use datafusion::datasource::MemTable;
    let reference =
        SessionContext::new_with_config(datafusion::prelude::SessionConfig::new().with_target_partitions(3));
    let batch = served(&clicks_batch(rows));
    let table = MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap();
    reference.register_table("clicks", std::sync::Arc::new(table)).unwrap();
    register_users(engine, &reference);
    reference
}

/// `rows` served as sealed segments of `per_segment` rows each, and plain
/// DataFusion over the same rows.
fn fixture_over(rows: &[Click], per_segment: usize) -> Fixture {
    use std::sync::Arc;
    let engine = QueryEngine::new(QueryLimits::default()).unwrap();
    let table = sluice_query::SegmentTable::new("clicks", &clicks_arrow_schema());
    let schema = clicks_schema();
    let segments = rows.chunks(per_segment).enumerate();
    table.replace(
        segments.map(|(i, c)| Arc::new(sealed(&schema, &format!("clicks__0__{i}"), c, click_datums))).collect(),
    );
    engine.register(Arc::new(table));
    Fixture { reference: reference_over(&engine, rows), engine }
}

/// The corpus over a table served partly from committed segments and partly
/// from the real-time tail — chunks sealed as records arrive, merged in the
/// background, cut when a segment commits — equals plain DataFusion over
/// the same rows, at each step (merges running or settled, before and after
/// a commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_over_the_tail_matches_plain_datafusion() {
    use sluice_query::tail::{TableView, TailBudget};
    use std::sync::Arc;

    let engine = QueryEngine::new(QueryLimits::default()).unwrap();
    let config =
        sluice_config::parse_pipeline(CLICKS_PIPELINE, std::path::Path::new("clicks.toml"), &|_: &str| None).unwrap();
    let table = Arc::new(sluice_query::SegmentTable::new("clicks", &clicks_arrow_schema()));
    let view = TableView::new(table.clone(), TailBudget::new(1 << 30));
    view.set_decoding(&config);
    engine.register(table);

    // Partition 0: offsets 0..8000 committed in two segments, 8000..14000
    // in the tail. Partition 1: offsets 0..7000, all in the tail.
    let all = clicks(21_000, BASE_TS, 99, 2000);
    let (committed_rows, rest) = all.split_at(8_000);
    let mut committed = vec![
        Arc::new(click_segment_at("clicks__0__0", 0, 0, &committed_rows[..3_000])),
        Arc::new(click_segment_at("clicks__0__3000", 0, 3_000, &committed_rows[3_000..])),
    ];
    view.set_committed(committed.clone());
    let tail_rows: Vec<(Click, Vec<u8>)> = rest.iter().map(json_click).collect();
    let (p0, p1) = tail_rows.split_at(6_000);
    for (partition, rows, start) in [(0, p0, 8_000i64), (1, p1, 0)] {
        for (n, batch) in rows.chunks(700).enumerate() {
            for (i, (click, record)) in batch.iter().enumerate() {
                view.append(partition, start + (n * 700 + i) as i64, click.ts, record);
            }
            view.publish_dirty();
        }
    }
    // A bad record in the tail is skipped, as workers classify it.
    view.append(1, 7_000, BASE_TS, b"{\"ts\": \"not a time\"");
    view.publish_dirty();
    let mut rows: Vec<Click> = committed_rows.to_vec();
    rows.extend(tail_rows.iter().map(|(c, _)| c.clone()));
    let check = |step: &'static str, rows: Vec<Click>| {
        let engine = &engine;
        async move {
            let failures = differences(engine, &reference_over(engine, &rows)).await;
            assert!(failures.is_empty(), "{step}: {} queries differ:\n{}", failures.len(), failures.join("\n"));
        }
    };
    check("tail, merges may be running", rows.clone()).await;
    view.settle().await;
    check("tail, merges settled", rows.clone()).await;

    // Partition 0 commits 8000..11000: its tail is cut to 11000..14000 in
    // the same swap that adds the segment.
    let tail_committed: Vec<Click> = p0[..3_000].iter().map(|(c, _)| c.clone()).collect();
    committed.push(Arc::new(click_segment_at("clicks__0__8000", 0, 8_000, &tail_committed)));
    view.set_committed(committed);
    check("after a commit", rows).await;
}

fn head(rows: &[String]) -> Vec<&String> {
    rows.iter().take(5).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approximate_percentiles_are_close_to_exact() {
    let f = fixture();
    let sql = "SELECT approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms), median(latency_ms) FROM clicks";
    let batches = f.engine.context().sql(sql).await.unwrap().collect().await.unwrap();
    let row = normalize(&batches, true);
    let cells: Vec<f64> = row[0].split(" | ").map(|c| c.parse().unwrap()).collect();
    assert!((cells[0] - cells[1]).abs() <= 20.0, "approx {} vs exact {}", cells[0], cells[1]);
}

async fn plan(f: &Fixture, sql: &str) -> String {
    f.engine.explain(sql).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_filters_are_pushed_into_the_scan_with_no_filter_above() {
    let f = fixture();
    for sql in [
        "SELECT user_id FROM clicks WHERE country = 'FR'",
        "SELECT user_id FROM clicks WHERE status IN (404, 500) AND latency_ms BETWEEN 10 AND 20",
        "SELECT user_id FROM clicks WHERE country IS NULL OR NOT (device = 'mobile')",
        "SELECT url FROM clicks WHERE url LIKE '/product/7%'",
        "SELECT ts FROM clicks WHERE is_bot",
    ] {
        let plan = plan(&f, sql).await;
        assert!(plan.contains("SegmentScanExec"), "{sql}\n{plan}");
        assert!(plan.contains("exact=true"), "{sql}\n{plan}");
        assert!(!plan.contains("FilterExec"), "{sql}: an exact filter was re-applied\n{plan}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inexact_and_unsupported_filters_stay_above_the_scan() {
    let f = fixture();
    // A conjunct the indexes cannot answer inside an OR: pushed as a superset.
    let plan = plan(&f, "SELECT user_id FROM clicks WHERE (country = 'US' AND length(url) > 15) OR status = 301").await;
    assert!(plan.contains("FilterExec") && plan.contains("exact=false"), "{plan}");
    // A function of a column: not pushed at all.
    let plan = plan_of(&f, "SELECT user_id FROM clicks WHERE length(url) > 15").await;
    assert!(plan.contains("FilterExec") && !plan.contains("predicate="), "{plan}");
}

async fn plan_of(f: &Fixture, sql: &str) -> String {
    plan(f, sql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_star_is_answered_from_statistics() {
    let f = fixture();
    for sql in ["SELECT COUNT(*) FROM clicks", "SELECT COUNT(*) FROM clicks WHERE country = 'FR' AND status = 200"] {
        let plan = plan(&f, sql).await;
        assert!(!plan.contains("SegmentScanExec") && !plan.contains("AggregateExec"), "{sql}\n{plan}");
        assert_answers_as_reference(&f, sql).await;
    }
    let response = f.engine.query("SELECT COUNT(*) FROM clicks").await.unwrap();
    let total: usize = SEGMENT_ROWS.iter().sum();
    assert_eq!(response.result_table.unwrap().rows[0][0], serde_json::json!(total));
}

/// MIN and MAX of integer, timestamp and string columns, and COUNT of a
/// column, come from the segments' statistics when no filter selects rows
/// (Pinot's metadata-based aggregation); floats and filtered rows are read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_max_and_column_counts_are_answered_from_statistics() {
    let f = fixture();
    for sql in [
        "SELECT MIN(ts), MAX(ts) FROM clicks",
        "SELECT MAX(status), MIN(latency_ms), MAX(bytes), COUNT(latency_ms) FROM clicks",
        "SELECT MIN(user_id), MAX(url), MIN(country), MAX(device) FROM clicks",
    ] {
        let plan = plan(&f, sql).await;
        assert!(!plan.contains("SegmentScanExec") && !plan.contains("AggregateExec"), "{sql}\n{plan}");
        assert_answers_as_reference(&f, sql).await;
    }
    for sql in ["SELECT MAX(score) FROM clicks", "SELECT MAX(ts) FROM clicks WHERE latency_ms > 5"] {
        let plan = plan(&f, sql).await;
        assert!(plan.contains("SegmentScanExec"), "{sql}\n{plan}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_counts_segments_and_docs() {
    let f = fixture();
    let total: u64 = SEGMENT_ROWS.iter().sum::<usize>() as u64;
    // The first segment covers the first 30 s; the time filter prunes the rest.
    let r = f.engine.query("SELECT COUNT(*) FROM clicks WHERE ts < to_timestamp_millis(1764000010000)").await.unwrap();
    assert_eq!(r.num_segments_queried, 6);
    assert_eq!(r.total_docs, total);
    assert_eq!(r.num_segments_processed, 1, "{r:?}");
    assert_eq!(r.num_segments_matched, 1);
    assert_eq!(r.num_docs_scanned, 1000);
    let r = f.engine.query("SELECT COUNT(*) FROM clicks WHERE user_id = 'nobody'").await.unwrap();
    assert_eq!(r.num_segments_matched, 0);
    assert_eq!(r.num_docs_scanned, 0);
}

/// Selection queries the fast path must take; each must answer as plain
/// DataFusion over a `MemTable` does, with the same column names and types.
const FAST_CORPUS: &[&str] = &[
    "SELECT * FROM clicks",
    "SELECT ts, user_id, status FROM clicks WHERE country = 'FR'",
    "SELECT user_id, status FROM clicks WHERE ts BETWEEN '2025-11-24T16:01:00Z' AND '2025-11-24T16:02:00Z'",
    "SELECT ts FROM clicks WHERE ts > '2025-11-24 16:01:00'",
    "SELECT ts, status FROM clicks WHERE ts >= '2025-11-24T17:01:30+01:00' AND ts < '2025-11-24T16:02:00.500Z'",
    "select URL, Device from CLICKS where STATUS in (301, 404) and not IS_BOT",
    "SELECT score FROM clicks WHERE score = 0",
    "SELECT score FROM clicks WHERE score <= -0.0 OR score > 1e2",
    "SELECT score, latency_ms FROM clicks WHERE score BETWEEN -1 AND 0.5 AND latency_ms <> 5",
    "SELECT latency_ms FROM clicks WHERE latency_ms NOT BETWEEN -3 AND 100",
    "SELECT bytes FROM clicks WHERE bytes >= 100000 AND bytes < 9000000000",
    "SELECT user_id, url FROM clicks WHERE url LIKE '/product/1%'",
    "SELECT country, device FROM clicks WHERE country IS NULL OR device IS NOT NULL AND NOT (status = 200)",
    "SELECT * FROM clicks WHERE user_id = 'nobody'",
    "SELECT \"country\" FROM \"clicks\" WHERE NOT (status >= 400) AND (is_bot = false OR is_bot IS NULL)",
    "SELECT is_bot FROM clicks WHERE is_bot",
    "SELECT user_id FROM clicks WHERE country NOT IN ('FR', 'DE', 'US') AND 404 = status",
    "SELECT plan, age FROM users WHERE age > 30",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_answers_as_datafusion_does() {
    let f = fixture();
    let mut failures = Vec::new();
    // Every filter of the main corpus, as a selection: those that translate
    // exactly take the fast path, the rest go to DataFusion, and both must
    // agree with the reference.
    let derived: Vec<String> = CORPUS
        .iter()
        .filter_map(|q| q.strip_prefix("SELECT COUNT(*) FROM clicks WHERE "))
        .filter(|filter| !filter.contains("SELECT"))
        .map(|filter| format!("SELECT ts, user_id, score FROM clicks WHERE {filter}"))
        .collect();
    let mut fast = 0;
    for sql in FAST_CORPUS.iter().copied().chain(derived.iter().map(String::as_str)) {
        let is_fast = f.engine.is_fast_path(sql);
        if FAST_CORPUS.contains(&sql) {
            assert!(is_fast, "expected the fast path: {sql}");
        }
        fast += usize::from(is_fast);
        let (schema, ours) = f.engine.execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        let (planned, _) = f.engine.execute_datafusion(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(schema, planned, "{sql}: the fast path's schema differs from DataFusion's");
        let theirs = f.reference.sql(sql).await.unwrap().collect().await.unwrap();
        let (a, b) = (normalize(&ours, false), normalize(&theirs, false));
        if a != b {
            failures.push(format!(
                "{sql}\n  sluice:    {} rows {:?}\n  datafusion: {} rows {:?}",
                a.len(),
                head(&a),
                b.len(),
                head(&b)
            ));
        }
    }
    assert!(failures.is_empty(), "{} queries differ:\n{}", failures.len(), failures.join("\n"));
    assert!(fast >= FAST_CORPUS.len() + 20, "only {fast} queries took the fast path");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_limits_and_counters() {
    let f = fixture();
    let sql = "SELECT user_id, status FROM clicks WHERE country = 'DE' LIMIT 7";
    assert!(f.engine.is_fast_path(sql));
    let (_, limited) = f.engine.execute(sql).await.unwrap();
    let limited = normalize(&limited, false);
    assert_eq!(limited.len(), 7);
    let (_, all) = f.engine.execute("SELECT user_id, status FROM clicks WHERE country = 'DE'").await.unwrap();
    let all = normalize(&all, false);
    assert!(limited.iter().all(|row| all.contains(row)), "LIMIT returned rows outside the filter");

    let r = f.engine.query("SELECT ts FROM clicks WHERE ts < '2025-11-24T16:00:10Z'").await.unwrap();
    let total: u64 = SEGMENT_ROWS.iter().sum::<usize>() as u64;
    assert_eq!((r.num_segments_queried, r.num_segments_processed, r.num_segments_matched), (6, 1, 1), "{r:?}");
    assert_eq!(r.total_docs, total);
    assert_eq!(r.num_docs_scanned, 1000);

    let small = QueryEngine::new(QueryLimits { max_result_rows: 10, ..QueryLimits::default() }).unwrap();
    register_fixture(&small);
    let err = small.query("SELECT * FROM clicks WHERE country = 'FR'").await.unwrap_err();
    assert_eq!(err.status(), 413, "{err}");
    assert!(small.query("SELECT * FROM clicks WHERE country = 'FR' LIMIT 10").await.is_ok());
}

/// A partial aggregation grouped by one string column of the segments runs
/// on dictionary ids, and its answers are the reference's: few and many
/// groups (8 countries, 1,000 URLs), NULL groups, exact filters, every
/// aggregate kind it takes,
/// and over the tail too (`corpus_over_the_tail_matches_plain_datafusion`).
/// What it does not take stays DataFusion's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouping_by_a_string_column_runs_on_dictionary_ids() {
    let f = fixture();
    for sql in [
        "SELECT country, COUNT(*), SUM(bytes), AVG(latency_ms), MIN(ts), MAX(status) FROM clicks GROUP BY country",
        "SELECT device, COUNT(latency_ms) FROM clicks WHERE status = 404 GROUP BY device",
        "SELECT url, COUNT(*) AS c FROM clicks GROUP BY url ORDER BY c DESC, url LIMIT 5",
        "SELECT country, MIN(url), MAX(device) FROM clicks WHERE country IS NULL OR country = 'FR' GROUP BY country",
        // MIN/MAX of dictionary columns on their keys: NULL values, filters
        // that leave groups without a value, several per query.
        "SELECT device, MIN(country), MAX(country), MIN(url), MAX(url), COUNT(*) FROM clicks GROUP BY device",
        "SELECT country, MAX(device), MIN(device) FROM clicks WHERE status = 404 GROUP BY country",
        "SELECT url, MIN(country), MAX(device) FROM clicks WHERE latency_ms < 40 GROUP BY url ORDER BY url LIMIT 20",
        // COUNT(DISTINCT) groups by the column first.
        "SELECT COUNT(DISTINCT url) FROM clicks WHERE status = 500",
        // Without groups, when every aggregate is a MIN/MAX of a
        // dictionary column: NULL values, no row matching, one column twice.
        "SELECT MIN(country), MAX(device), MIN(url), MAX(url) FROM clicks WHERE status = 404",
        "SELECT MIN(device) FROM clicks WHERE country IS NULL",
        // One user's rows: few segments, partitions without parts.
        "SELECT MAX(country), MIN(device) FROM clicks WHERE user_id = 'u-00042'",
    ] {
        let plan = plan(&f, sql).await;
        assert!(plan.contains("DictionaryGroupBy"), "{sql}\n{plan}");
        assert_answers_as_reference(&f, sql).await;
    }
    // MIN/MAX of dictionary columns without groups, and when no row
    // matches: one row, of NULLs and zeros.
    for sql in [
        "SELECT MIN(country), MAX(device), COUNT(*), SUM(bytes) FROM clicks WHERE status = 404",
        "SELECT MIN(device) FROM clicks WHERE country IS NULL",
        "SELECT MAX(country), MIN(device), COUNT(*) FROM clicks WHERE status = 999",
        "SELECT MAX(country), MIN(country) FROM clicks WHERE status = 999",
        "SELECT MAX(country), MIN(device), COUNT(*) FROM clicks WHERE status = 404 AND latency_ms = 3 AND bytes = 17",
    ] {
        assert_answers_as_reference(&f, sql).await;
    }
    for sql in [
        "SELECT country, COUNT(DISTINCT device) FROM clicks GROUP BY country",
        "SELECT country, device, COUNT(*) FROM clicks GROUP BY country, device",
        "SELECT status, COUNT(*) FROM clicks GROUP BY status",
        "SELECT country, COUNT(*) FROM clicks WHERE length(url) > 15 GROUP BY country",
        // Without groups, with an aggregate that is not a MIN/MAX of a
        // dictionary column: DataFusion's ungrouped accumulators.
        "SELECT MIN(country), MAX(device), COUNT(*) FROM clicks WHERE status = 404",
        "SELECT MIN(country), MAX(score) FROM clicks WHERE status = 404",
        "SELECT COUNT(*), SUM(bytes) FROM clicks WHERE status = 404",
        "SELECT MIN(ts) FROM clicks WHERE status = 404",
    ] {
        let plan = plan(&f, sql).await;
        assert!(!plan.contains("DictionaryGroupBy"), "{sql}\n{plan}");
    }
}

/// A column with a large dictionary whose values repeat (5,000 users, about
/// five rows each per segment) groups per segment: each segment's keys are
/// its groups, emitted unmerged when it ends, and the final aggregation
/// merges them. Answers are the reference's, with filters, NULL-free and
/// NULL aggregate arguments, MIN/MAX on keys, and COUNT(DISTINCT).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouping_by_a_large_repeated_dictionary_emits_each_segments_keys() {
    let f = fixture_over(&clicks(72_000, BASE_TS, 7, 5_000), 24_000);
    for sql in [
        "SELECT COUNT(DISTINCT user_id) FROM clicks",
        "SELECT user_id, SUM(bytes) AS b FROM clicks GROUP BY user_id ORDER BY b DESC, user_id LIMIT 10",
        "SELECT user_id, COUNT(*), AVG(latency_ms), MIN(country), MAX(url), COUNT(bytes) FROM clicks GROUP BY user_id",
        "SELECT user_id, COUNT(*), MAX(device) FROM clicks WHERE status = 404 GROUP BY user_id",
        "SELECT user_id, MIN(ts), MAX(ts) FROM clicks WHERE country IS NULL GROUP BY user_id",
    ] {
        let plan = plan(&f, sql).await;
        assert!(plan.contains("DictionaryGroupBy") && plan.contains("per segment"), "{sql}\n{plan}");
        assert_answers_as_reference(&f, sql).await;
    }
    // No segment left: one partition, planned without a partial step.
    assert_answers_as_reference(&f, "SELECT COUNT(DISTINCT user_id) FROM clicks WHERE status = 999").await;
    let failures = differences(&f.engine, &f.reference).await;
    assert!(failures.is_empty(), "{} of {} queries differ:\n{}", failures.len(), CORPUS.len(), failures.join("\n"));
}

/// Many groups (about 70,000 users per segment, each seen about once) are
/// hashed by their keys before the partial step, so each of its tables holds
/// a share of the keys: the partial step reads a hash repartition of the
/// scan, and answers are the reference's, for one key and two, with
/// filters and NULL aggregate arguments. A grouping with few groups, or
/// with a limit on its groups, is planned as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_groups_are_hashed_into_smaller_tables() {
    let f = fixture_over(&clicks(140_000, BASE_TS, 13, 100_000_000), 70_000);
    for sql in [
        "SELECT COUNT(DISTINCT user_id) FROM clicks",
        "SELECT user_id, SUM(bytes) AS b FROM clicks GROUP BY user_id ORDER BY b DESC, user_id LIMIT 10",
        "SELECT user_id, COUNT(*), AVG(latency_ms), MIN(country), MAX(url), COUNT(bytes) FROM clicks GROUP BY user_id",
        "SELECT user_id, country, COUNT(*) FROM clicks WHERE status = 404 GROUP BY user_id, country",
        "SELECT COUNT(*) FROM (SELECT user_id, MIN(ts) FROM clicks WHERE country IS NULL GROUP BY user_id)",
    ] {
        let plan = plan(&f, sql).await;
        let partial = plan.find("AggregateExec: mode=Partial, gby=[user_id").unwrap_or_else(|| panic!("{sql}\n{plan}"));
        assert!(plan[partial..].contains("RepartitionExec: partitioning=Hash([user_id@"), "{sql}\n{plan}");
        assert_answers_as_reference(&f, sql).await;
    }
    for sql in
        ["SELECT country, COUNT(*) FROM clicks GROUP BY country", "SELECT user_id FROM clicks GROUP BY user_id LIMIT 5"]
    {
        let plan = plan(&f, sql).await;
        let lines: Vec<&str> = plan.lines().collect();
        let scan = lines.iter().position(|l| l.contains("SegmentScanExec")).unwrap_or_else(|| panic!("{sql}\n{plan}"));
        assert!(!lines[scan - 1].contains("RepartitionExec"), "{sql}\n{plan}");
    }
    // Any five users: as many as asked, each once.
    let five = f.engine.query("SELECT user_id FROM clicks GROUP BY user_id LIMIT 5").await.unwrap();
    let five = five.result_table.unwrap().rows;
    let users: std::collections::HashSet<String> = five.iter().map(|r| r[0].to_string()).collect();
    assert_eq!(users.len(), 5, "{five:?}");
    assert_answers_as_reference(&f, "SELECT country, COUNT(*) FROM clicks GROUP BY country").await;
    // Aggregates that need their rows in order keep them in order.
    let ordered =
        "SELECT user_id, ARRAY_AGG(latency_ms ORDER BY ts DESC) FROM clicks GROUP BY user_id ORDER BY user_id";
    let plan = plan(&f, ordered).await;
    let lines: Vec<&str> = plan.lines().collect();
    let partial = lines.iter().position(|l| l.contains("mode=Partial")).unwrap_or_else(|| panic!("{plan}"));
    assert!(lines[partial + 1].contains("SortExec: expr=[ts@"), "{plan}");
    assert_answers_as_reference(&f, ordered).await;
    let failures = differences(&f.engine, &f.reference).await;
    assert!(failures.is_empty(), "{} of {} queries differ:\n{}", failures.len(), CORPUS.len(), failures.join("\n"));
}

/// Segments written before a column was added answer its default for their
/// rows — NULL without one — in every corpus query: read, filtered (pruning
/// and the indexes bind the absent column to its value), grouped, counted
/// and in the statistics that answer `MIN`/`MAX`/`COUNT` without rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_without_a_later_column_answer_its_default() {
    use std::collections::HashMap;
    use std::sync::Arc;
    for default in [None, Some(true)] {
        let engine = QueryEngine::new(QueryLimits::default()).unwrap();
        let mut rows = clicks(6_000, BASE_TS, 11, 500);
        // The first half was written before `is_bot`, the last column.
        let mut narrow = (*clicks_schema()).clone();
        narrow.columns.pop();
        let (narrow, wide) = (Arc::new(narrow), clicks_schema());
        let mut segments = Vec::new();
        for (i, chunk) in rows.chunks(1_000).enumerate() {
            let name = format!("clicks__0__{i}");
            segments.push(Arc::new(if i < 3 {
                sealed(&narrow, &name, chunk, |c| {
                    let mut datums = click_datums(c);
                    datums.pop();
                    datums
                })
            } else {
                sealed(&wide, &name, chunk, click_datums)
            }));
        }
        let fields: Vec<arrow::datatypes::Field> = clicks_arrow_schema()
            .fields()
            .iter()
            .map(|f| match (f.name().as_str(), default) {
                ("is_bot", Some(value)) => f.as_ref().clone().with_metadata(HashMap::from([(
                    sluice_query::scan::evolution::DEFAULT_KEY.to_string(),
                    serde_json::to_string(&sluice_segments::Scalar::Bool(value)).unwrap(),
                )])),
                _ => f.as_ref().clone(),
            })
            .collect();
        let table = sluice_query::SegmentTable::new("clicks", &arrow::datatypes::Schema::new(fields));
        for segment in &segments {
            table.accepts(segment).unwrap();
        }
        // A column of another type than the table's is refused, named.
        let retyped: Vec<arrow::datatypes::Field> = clicks_arrow_schema()
            .fields()
            .iter()
            .map(|f| match f.name().as_str() {
                "status" => f.as_ref().clone().with_data_type(arrow::datatypes::DataType::Utf8),
                _ => f.as_ref().clone(),
            })
            .collect();
        let other = sluice_query::SegmentTable::new("clicks", &arrow::datatypes::Schema::new(retyped));
        let refused = other.accepts(&segments[0]).unwrap_err();
        assert!(refused.contains("column `status` is Int32 in the segment, Utf8View in the table"), "{refused}");
        table.replace(segments);
        engine.register(Arc::new(table));
        for click in &mut rows[..3_000] {
            click.is_bot = default;
        }
        let reference = reference_over(&engine, &rows);
        let failures = differences(&engine, &reference).await;
        assert!(
            failures.is_empty(),
            "default {default:?}: {} queries differ:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}

/// Star-trees answer aggregations exactly: random queries grouping and
/// filtering on a tree's dimensions with the aggregates it holds give the
/// reference's rows — over segments split to single records, into a few
/// leaves, and without a tree (answered from rows in the same plan) — and
/// the corpus does too. What a tree does not hold stays DataFusion's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn star_trees_answer_as_the_rows_do() {
    let engine = sluice_query::QueryEngine::new(QueryLimits::default()).unwrap();
    let reference = register_star_tree_fixture(&engine);
    let f = Fixture { engine, reference };
    const FILTERS: [&str; 9] = [
        "country = 'FR'",
        "country IN ('DE', 'US', 'JP')",
        "country IS NULL",
        "NOT (device = 'mobile')",
        "status BETWEEN 300 AND 500",
        "status > 200 AND device IS NOT NULL",
        "device <> 'tablet' OR country = 'JP'",
        "country IS NOT NULL AND status = 404",
        "device IS NULL",
    ];
    const AGGREGATES: [&str; 8] = [
        "COUNT(*)",
        "SUM(bytes)",
        "AVG(latency_ms)",
        "MIN(latency_ms)",
        "MAX(latency_ms)",
        "COUNT(latency_ms)",
        "MIN(ts)",
        "MAX(ts)",
    ];
    let mut rng = Rng(2026);
    let mut from_trees = 0;
    let queries = 160;
    for _ in 0..queries {
        let groups: Vec<&str> = ["country", "device", "status"].into_iter().filter(|_| rng.below(2) == 0).collect();
        let mut aggregates: Vec<&str> = AGGREGATES.into_iter().filter(|_| rng.below(3) == 0).collect();
        if aggregates.is_empty() {
            aggregates.push(AGGREGATES[rng.below(8) as usize]);
        }
        let mut sql =
            format!("SELECT {} FROM clicks", groups.iter().chain(&aggregates).cloned().collect::<Vec<_>>().join(", "));
        if rng.below(3) != 0 {
            sql += &format!(" WHERE {}", FILTERS[rng.below(FILTERS.len() as u64) as usize]);
        }
        if !groups.is_empty() {
            sql += &format!(" GROUP BY {}", groups.join(", "));
        }
        if plan(&f, &sql).await.contains("StarTreeExec") {
            from_trees += 1;
        }
        assert_answers_as_reference(&f, &sql).await;
    }
    // Ungrouped aggregations may be answered from statistics instead.
    assert!(from_trees * 4 >= queries * 3, "only {from_trees} of {queries} queries used a star-tree");
    for sql in [
        "SELECT is_bot, device, SUM(bytes), COUNT(*) FROM clicks WHERE device = 'mobile' GROUP BY is_bot, device",
        "SELECT is_bot, COUNT(*) FROM clicks GROUP BY is_bot",
        // DataFusion groups by both columns first: the tree lists the pairs.
        "SELECT country, COUNT(DISTINCT device) FROM clicks GROUP BY country",
    ] {
        assert!(plan(&f, sql).await.contains("StarTreeExec"), "{sql}");
        assert_answers_as_reference(&f, sql).await;
    }
    for sql in [
        // Not a metric of any tree, a filter or group on a column that is no
        // dimension, a float sum, a dimension of another tree.
        "SELECT country, SUM(status) FROM clicks GROUP BY country",
        "SELECT country, COUNT(*) FROM clicks WHERE url = '/product/1/view' GROUP BY country",
        "SELECT url, COUNT(*) FROM clicks GROUP BY url",
        "SELECT device, SUM(score) FROM clicks GROUP BY device",
        "SELECT is_bot, country, COUNT(*) FROM clicks GROUP BY is_bot, country",
        "SELECT is_bot, AVG(latency_ms) FROM clicks GROUP BY is_bot",
    ] {
        assert!(!plan(&f, sql).await.contains("StarTreeExec"), "{sql}");
        assert_answers_as_reference(&f, sql).await;
    }
    let failures = differences(&f.engine, &f.reference).await;
    assert!(failures.is_empty(), "{} of {} queries differ:\n{}", failures.len(), CORPUS.len(), failures.join("\n"));
}

/// A scan whose segments have a star-tree that may answer defers its
/// bitmaps to first use: an aggregation the trees answer never evaluates
/// them and counts the records it read; a query that does read rows (a
/// plain selection, the segment without a tree, the corpus) evaluates them
/// then, with the same answers and counters as selection while planning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_that_a_star_tree_may_answer_select_their_rows_on_first_read() {
    let engine = sluice_query::QueryEngine::new(QueryLimits::default()).unwrap();
    let reference = register_star_tree_fixture(&engine);
    let f = Fixture { engine, reference };
    let count = |sql: &'static str| {
        let reference = f.reference.clone();
        async move {
            let batches = reference.sql(sql).await.unwrap().collect().await.unwrap();
            let column = batches[0].column(0).as_primitive::<arrow::datatypes::Int64Type>().clone();
            column.value(0) as u64
        }
    };

    let star = "SELECT country, COUNT(*), SUM(bytes) FROM clicks WHERE device = 'mobile' GROUP BY country";
    let explained = plan(&f, star).await;
    assert!(explained.contains("StarTreeExec"), "{explained}");
    assert_answers_as_reference(&f, star).await;
    let r = f.engine.query(star).await.unwrap();
    // Tree records for the segments with trees, rows for the one without.
    let rows = count("SELECT COUNT(*) FROM clicks WHERE device = 'mobile'").await;
    assert!(r.num_docs_scanned > 0 && r.num_docs_scanned < rows, "{r:?}");
    assert_eq!(r.num_segments_queried, 6);

    // Every column a dimension: deferred, then read by the scan itself.
    let select = "SELECT country, device FROM clicks WHERE status = 404";
    assert!(plan(&f, select).await.contains("rows=(selected on first read)"));
    assert_answers_as_reference(&f, select).await;
    let r = f.engine.query(select).await.unwrap();
    assert_eq!(r.num_docs_scanned, count("SELECT COUNT(*) FROM clicks WHERE status = 404").await, "{r:?}");
    assert_eq!(r.result_table.map(|t| t.rows.len() as u64), Some(r.num_docs_scanned));

    // A column no tree has, or a limit, selects while planning as before.
    for sql in ["SELECT url FROM clicks WHERE status = 404", "SELECT country FROM clicks WHERE status = 404 LIMIT 3"] {
        assert!(!plan(&f, sql).await.contains("selected on first read"), "{sql}");
    }

    let failures = differences(&f.engine, &f.reference).await;
    assert!(failures.is_empty(), "{} of {} queries differ:\n{}", failures.len(), CORPUS.len(), failures.join("\n"));
}
