//! Query benchmark: N rows of the clickstream schema as sealed, memory-mapped
//! segment files served by sluice's query engine, against DuckDB (PyPI
//! `duckdb`) holding the same rows in memory, in the same run. Each query is
//! timed warm (median of repeats); then p50/p99 of the filter queries at 16
//! concurrent clients.
//!
//! ```text
//! pip install duckdb pyarrow
//! cargo build --release -p sluice-bench
//! ./target/release/query-bench [rows=10000000] [segments=10] [repeats=10]
//! ```

#[path = "../../query/tests/common/mod.rs"]
mod common;
mod queries;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::*;
use queries::{Kind, QUERIES, median};
use sluice_config::{ByteSize, QueryLimits};
use sluice_query::{QueryEngine, SegmentTable};
use sluice_segments::Segment;

/// DuckDB's spelling of the queries it writes differently (the result is
/// the same question; only row counts are compared).
const DUCKDB_DIALECT: [(&str, &str); 1] =
    [("p95_by_country", "SELECT country, approx_quantile(latency_ms, 0.95) AS p95 FROM clicks GROUP BY country")];

/// jemalloc, as in the `sluice` binary, so that the query engine allocates as it does in the `sluice` binary.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse()).collect::<Result<_, _>>()?;
    let rows = args.first().copied().unwrap_or(10_000_000);
    let segments = args.get(1).copied().unwrap_or(10).max(1);
    let repeats = args.get(2).copied().unwrap_or(10).max(1);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let dir = tempfile::tempdir()?;

    eprintln!("generating and sealing {rows} rows into {segments} segments...");
    let started = Instant::now();
    let served = build(dir.path(), rows, segments)?;
    let build_s = started.elapsed().as_secs_f64();
    let bytes: usize = served.iter().map(|s| s.size_bytes()).sum();

    eprintln!("DuckDB baseline...");
    let mut duck_sql: BTreeMap<&str, &str> = QUERIES.iter().map(|(n, q, _)| (*n, *q)).collect();
    duck_sql.extend(DUCKDB_DIALECT);
    let queries_path = dir.path().join("queries.json");
    std::fs::write(&queries_path, serde_json::to_vec(&duck_sql)?)?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/duckdb_bench.py");
    let output = std::process::Command::new("python3")
        .arg(script)
        .arg(dir.path().join("clicks.arrow"))
        .arg(&queries_path)
        .arg(repeats.to_string())
        .arg(threads.to_string())
        .output()
        .context("run python3 (pip install duckdb pyarrow)")?;
    if !output.status.success() {
        bail!("the DuckDB baseline failed (pip install duckdb pyarrow):\n{}", String::from_utf8_lossy(&output.stderr));
    }
    let duck: serde_json::Value = serde_json::from_slice(&output.stdout)?;

    eprintln!("sluice...");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?;
    let limits = QueryLimits {
        query_timeout: Duration::from_secs(600),
        max_result_rows: u64::MAX,
        max_concurrent_queries: 16,
        memory: ByteSize::gib(8),
        max_result_bytes: ByteSize::gib(8),
        ..QueryLimits::default()
    };
    let engine = Arc::new(QueryEngine::new(limits)?);
    let table = SegmentTable::new("clicks", &clicks_arrow_schema());
    table.replace(served);
    engine.register(Arc::new(table));

    println!(
        "Query benchmark: {rows} rows in {segments} segments ({:.0} MiB of segment files, built in {build_s:.1} s); DuckDB loaded in {:.1} s; {threads} threads each; median of {repeats} warm runs.\n",
        bytes as f64 / 1048576.0,
        duck["load_s"].as_f64().unwrap_or(0.0)
    );
    println!(
        "| query | rows out | sluice path | sluice ms | same query through DataFusion's planner, ms | DuckDB ms | DuckDB / sluice | target |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---|");
    let mut fast_medians = BTreeMap::new();
    for (name, sql, kind) in QUERIES {
        let fast = engine.is_fast_path(sql);
        let (ours, out) = runtime.block_on(time_query(&engine, sql, repeats, false))?;
        let planned = if fast {
            format!("{:.2}", runtime.block_on(time_query(&engine, sql, repeats, true))?.0)
        } else {
            "(same)".to_string()
        };
        let theirs = duck["queries"][name]["median_ms"].as_f64().unwrap_or(f64::NAN);
        let their_rows = duck["queries"][name]["rows"].as_u64().unwrap_or(0);
        if their_rows != out as u64 {
            bail!("{name}: sluice returned {out} rows, DuckDB {their_rows}");
        }
        let target = match kind {
            Kind::Filter => "sluice ≥ 5× faster",
            Kind::Scan => "sluice ≤ 1.0× DuckDB's time",
            Kind::StarTree => "sluice ≥ 20× faster",
        };
        if fast {
            fast_medians.insert(name, ours);
        }
        let path = if fast { "fast path" } else { "DataFusion" };
        println!(
            "| {name} | {out} | {path} | {ours:.2} | {planned} | {theirs:.2} | {:.2}× | {target} |",
            theirs / ours
        );
    }

    println!("\nThe fast path's own planning (parse, recognize, translate the filter), median of {repeats}:\n");
    println!("| query | fast plan ms | everything else (prune, evaluate, read) ms |");
    println!("|---|---:|---:|");
    for (name, sql, _) in QUERIES {
        if let Some(total) = fast_medians.get(name) {
            let plan = median(
                (0..repeats + 2)
                    .map(|_| {
                        let t = Instant::now();
                        std::hint::black_box(engine.is_fast_path(sql));
                        t.elapsed().as_secs_f64() * 1000.0
                    })
                    .collect(),
            );
            println!("| {name} | {plan:.3} | {:.3} |", total - plan);
        }
    }

    star_tree_cost(rows.min(1_000_000))?;

    let plan = runtime.block_on(engine.explain(QUERIES[2].1))?;
    eprintln!("range plan:\n{plan}");
    println!(
        "\nWhere the time of a small indexed or star-tree query goes through DataFusion's planner (median of {repeats}, ms):\n"
    );
    println!("| query | SQL → logical plan | optimize + physical plan (incl. index evaluation) | execute + collect |");
    println!("|---|---:|---:|---:|");
    for (name, sql, kind) in QUERIES {
        if matches!(kind, Kind::Filter | Kind::StarTree) {
            let [a, b, c] = runtime.block_on(phases(&engine, sql, repeats))?;
            println!("| {name} | {a:.3} | {b:.3} | {c:.3} |");
        }
    }

    println!("\nFilter queries at 16 concurrent clients (full path: plan, scan, Pinot JSON response):\n");
    println!("| query | p50 ms | p99 ms |");
    println!("|---|---:|---:|");
    let latencies = runtime.block_on(concurrent(&engine, 16, 25));
    for (name, mut samples) in latencies {
        samples.sort_by(f64::total_cmp);
        let pick = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
        println!("| {name} | {:.2} | {:.2} |", pick(0.5), pick(0.99));
    }
    Ok(())
}

/// The star-tree the benchmark's segments carry: a dashboard's breakdowns.
fn star_tree() -> sluice_segments::StarTreeSpec {
    use sluice_config::MetricFunction::*;
    use sluice_segments::StarMetric;
    let schema = clicks_schema();
    let at = |name: &str| schema.column_index(name).expect("column");
    let metric = |function, column: Option<&str>| StarMetric { function, column: column.map(at) };
    sluice_segments::StarTreeSpec {
        dimensions: vec![at("country"), at("device"), at("status")],
        metrics: vec![metric(Count, None), metric(Sum, Some("bytes")), metric(Max, Some("latency_ms"))],
        max_leaf_records: 10_000,
    }
}

/// Seal time and file size of one segment of `rows` rows, with the
/// star-tree and without (best of three seals each).
fn star_tree_cost(rows: usize) -> anyhow::Result<()> {
    let generated = clicks(rows, BASE_TS, 7, 200_000);
    println!("\nOne segment of {rows} rows sealed with and without the star-tree (best of 3 seals):\n");
    println!("| star-tree | seal ms | file MiB | star-tree records |");
    println!("|---|---:|---:|---:|");
    for with_tree in [false, true] {
        let mut schema = (*clicks_schema()).clone();
        if with_tree {
            schema.star_trees.push(star_tree());
        }
        let mut consuming = sluice_segments::ConsumingSegment::new(Arc::new(schema), 0, 0);
        for (offset, click) in generated.iter().enumerate() {
            consuming.append(offset as i64, &click_datums(click)).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let mut best = f64::INFINITY;
        let mut image = None;
        for _ in 0..3 {
            let t = Instant::now();
            let sealed = sluice_segments::seal(&consuming, "clicks__0__0", 0)?;
            best = best.min(t.elapsed().as_secs_f64() * 1000.0);
            image = Some(sealed);
        }
        let image = image.expect("sealed");
        let bytes = image.bytes.len();
        let segment = image.open()?;
        let records: usize = segment.star_trees().iter().map(|t| t.num_records()).sum();
        let label = if with_tree { "on" } else { "off" };
        println!("| {label} | {best:.1} | {:.2} | {records} |", bytes as f64 / 1048576.0);
    }
    Ok(())
}

/// Seals `rows` clickstream rows into files and writes the same rows to an
/// Arrow IPC file for DuckDB.
fn build(dir: &Path, rows: usize, segments: usize) -> anyhow::Result<Vec<Arc<Segment>>> {
    let mut schema = (*clicks_schema()).clone();
    let url = schema.columns.iter().position(|c| c.name == "url").expect("url column");
    schema.inverted.push(url);
    schema.star_trees.push(star_tree());
    let schema = Arc::new(schema);
    let file = std::fs::File::create(dir.join("clicks.arrow"))?;
    let mut ipc = arrow::ipc::writer::FileWriter::try_new(file, &clicks_arrow_schema())?;
    let per = rows.div_ceil(segments);
    let mut ts = BASE_TS;
    let mut served = Vec::new();
    for i in 0..segments {
        let n = per.min(rows - per * i);
        let generated = clicks(n, ts, 42 + i as u64, 200_000);
        ts += n as i64 * 10;
        let path = dir.join(format!("clicks__0__{i}.seg"));
        sealed_image(&schema, &format!("clicks__0__{i}"), &generated, click_datums).write_file(&path)?;
        served.push(Arc::new(Segment::open(&path)?));
        let batch = clicks_batch(&generated);
        for start in (0..n).step_by(65_536) {
            ipc.write(&batch.slice(start, 65_536.min(n - start)))?;
        }
    }
    ipc.finish()?;
    Ok(served)
}

async fn phases(engine: &QueryEngine, sql: &str, repeats: usize) -> anyhow::Result<[f64; 3]> {
    let ctx = engine.context();
    let mut samples: [Vec<f64>; 3] = Default::default();
    for _ in 0..repeats + 2 {
        let t0 = Instant::now();
        let plan = ctx.state().create_logical_plan(sql).await?;
        let t1 = Instant::now();
        let physical = ctx.execute_logical_plan(plan).await?.create_physical_plan().await?;
        let t2 = Instant::now();
        datafusion::physical_plan::collect(physical, ctx.task_ctx()).await?;
        let t3 = Instant::now();
        for (i, d) in [t1 - t0, t2 - t1, t3 - t2].into_iter().enumerate() {
            samples[i].push(d.as_secs_f64() * 1000.0);
        }
    }
    Ok(samples.map(median))
}

/// The median time of `sql` to Arrow batches: by the engine's own choice of
/// path, or forced through DataFusion's planner.
async fn time_query(
    engine: &QueryEngine,
    sql: &str,
    repeats: usize,
    through_datafusion: bool,
) -> anyhow::Result<(f64, usize)> {
    let run = || async {
        let (_, batches) =
            if through_datafusion { engine.execute_datafusion(sql).await? } else { engine.execute(sql).await? };
        anyhow::Ok(batches.iter().map(|b| b.num_rows()).sum::<usize>())
    };
    run().await?;
    run().await?;
    let mut times = Vec::with_capacity(repeats);
    let mut rows = 0;
    for _ in 0..repeats {
        let t = Instant::now();
        rows = run().await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok((median(times), rows))
}

async fn concurrent(engine: &Arc<QueryEngine>, clients: usize, rounds: usize) -> BTreeMap<&'static str, Vec<f64>> {
    let filters: Vec<(&'static str, &'static str)> =
        QUERIES.iter().filter(|(_, _, k)| *k == Kind::Filter).map(|(n, q, _)| (*n, *q)).collect();
    let tasks = (0..clients).map(|c| {
        let engine = engine.clone();
        let filters = filters.clone();
        tokio::spawn(async move {
            let mut out = Vec::new();
            for r in 0..rounds {
                let (name, sql) = filters[(c + r) % filters.len()];
                let t = Instant::now();
                let ok = engine.query(sql).await.is_ok();
                out.push((name, ok, t.elapsed().as_secs_f64() * 1000.0));
            }
            out
        })
    });
    let mut by_query: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for task in futures::future::join_all(tasks).await {
        for (name, ok, ms) in task.expect("client task") {
            assert!(ok, "{name} failed under concurrency");
            by_query.entry(name).or_default().push(ms);
        }
    }
    by_query
}
