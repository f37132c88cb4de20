use super::*;

use crate::engine::QueryEngine;
use crate::tail::consumer::catch_up_target;
use sluice_config::QueryLimits;

const PIPELINE: &str = r#"
table = "events"
[source]
bootstrap_servers = "localhost:9092"
topic = "events"
[schema]
time_column = "ts"
[[schema.columns]]
name = "ts"
type = "timestamp"
nullable = false
[[schema.columns]]
name = "id"
type = "int64"
nullable = false
[[schema.columns]]
name = "status"
type = "int32"
[indexes]
inverted = ["status"]
"#;

fn record(id: i64) -> Vec<u8> {
    format!("{{\"ts\": {id}, \"id\": {id}, \"status\": {}}}", if id % 10 == 0 { 404 } else { 200 }).into_bytes()
}

struct Fixture {
    engine: Arc<QueryEngine>,
    view: Arc<TableView>,
    decoding: Arc<Decoding>,
}

fn fixture(budget: u64) -> Fixture {
    let config = sluice_config::parse_pipeline(PIPELINE, std::path::Path::new("events.toml"), &|_: &str| None).unwrap();
    let decoding =
        Arc::new(Decoding { schema: Arc::new(SegmentSchema::from_pipeline(&config)), decoder: Decoder::new(&config) });
    let table = Arc::new(SegmentTable::new("events", decoding.schema.arrow_schema().as_ref()));
    let view = TableView::new(table.clone(), TailBudget::new(budget));
    view.lock().decoding = Some(decoding.clone());
    let engine = Arc::new(QueryEngine::new(QueryLimits::default()).unwrap());
    engine.register(table);
    Fixture { engine, view, decoding }
}

/// A committed segment of `partition` holding `ids` at offsets = ids.
fn committed(f: &Fixture, partition: i32, ids: std::ops::Range<i64>) -> Arc<Segment> {
    let mut builder = ConsumingSegment::new(f.decoding.schema.clone(), partition, ids.start);
    for id in ids.clone() {
        append(&mut builder, &f.decoding.decoder, id, &record(id));
    }
    let name = format!("events__{partition}__{}__20261201T0000Z", ids.start);
    Arc::new(seal(&builder, &name, 0).unwrap().open().unwrap())
}

async fn answer(f: &Fixture, sql: &str) -> Vec<String> {
    let (_, batches) = f.engine.execute(sql).await.unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string();
    text.lines().map(str::to_string).collect()
}

/// What plain DataFusion answers over exactly the rows with `ids`.
async fn expected(sql: &str, ids: impl Iterator<Item = i64>) -> Vec<String> {
    let ctx = datafusion::prelude::SessionContext::new();
    let ids: Vec<i64> = ids.collect();
    let status: Vec<i32> = ids.iter().map(|id| if id % 10 == 0 { 404 } else { 200 }).collect();
    let batch = arrow::record_batch::RecordBatch::try_from_iter([
        ("id", Arc::new(arrow::array::Int64Array::from(ids)) as arrow::array::ArrayRef),
        ("status", Arc::new(arrow::array::Int32Array::from(status)) as arrow::array::ArrayRef),
    ])
    .unwrap();
    ctx.register_batch("events", batch).unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string();
    text.lines().map(str::to_string).collect()
}

const QUERIES: [&str; 5] = [
    "SELECT COUNT(*) AS n, COUNT(DISTINCT id) AS d, SUM(id) AS s FROM events",
    "SELECT COUNT(*) AS n FROM events WHERE status = 404",
    "SELECT status, COUNT(*) AS n, MIN(id) AS lo, MAX(id) AS hi FROM events GROUP BY status ORDER BY status",
    "SELECT id FROM events WHERE status = 404 AND id > 150 ORDER BY id",
    "SELECT id FROM events WHERE id BETWEEN 55 AND 65 ORDER BY id",
];

async fn assert_rows(f: &Fixture, ids: std::ops::Range<i64>) {
    for sql in QUERIES {
        assert_eq!(answer(f, sql).await, expected(sql, ids.clone()).await, "{sql}");
    }
}

/// Tail + committed segments answer as DataFusion does over the same
/// rows, at every step: tail only, a segment loaded below the tail's
/// end (trimmed in the same swap), a segment loaded beyond it (the tail
/// starts over after it), and the tail growing again.
#[tokio::test]
async fn tail_and_segments_answer_as_datafusion_over_the_same_rows() {
    let f = fixture(1 << 30);
    for id in 0..100 {
        f.view.append(0, id, 1_000 + id, &record(id));
    }
    f.view.append(0, 100, 1_100, b"not json"); // skipped, as a worker classifies it
    f.view.publish_dirty();
    assert_rows(&f, 0..100).await;
    let plan = f.engine.explain("SELECT id FROM events WHERE status = 404").await.unwrap();
    assert!(plan.contains("segments=1 (consuming=1)") && plan.contains("predicate="), "{plan}");

    // A worker commits offsets 0..=59: the tail keeps 60..=100.
    f.view.set_committed(vec![committed(&f, 0, 0..60)]);
    assert_rows(&f, 0..100).await;
    assert_eq!(f.engine.table("events").unwrap().snapshot().len(), 2);

    // A segment beyond what the tail read: the tail holds nothing below
    // its end, and records it reads later below the end are ignored.
    f.view.set_committed(vec![committed(&f, 0, 0..60), committed(&f, 0, 60..150)]);
    assert_rows(&f, 0..150).await;
    for id in 100..200 {
        f.view.append(0, id, 1_000 + id, &record(id));
    }
    f.view.publish_dirty();
    assert_rows(&f, 0..200).await;

    // Publishes seal only the new rows; chunks merge as they pile up.
    for batch in 0..20 {
        for id in 200 + batch * 10..210 + batch * 10 {
            f.view.append(0, id, 1_000 + id, &record(id));
        }
        f.view.publish_dirty();
        assert_rows(&f, 0..210 + batch * 10).await;
    }
    f.view.settle().await;
    let chunks = f.engine.table("events").unwrap().snapshot().len() - 2;
    assert!((1..=5).contains(&chunks), "{chunks} chunks for 20 publishes");
    let response = f.engine.query("SELECT COUNT(*) FROM events").await.unwrap();
    assert_eq!(response.num_consuming_segments_queried, 1, "one consuming segment per partition");
}

#[test]
fn a_tail_has_nothing_to_catch_up_on_an_empty_partition_or_at_its_end() {
    assert_eq!(catch_up_target(Offset::Beginning, Some((0, 0))), None, "empty");
    assert_eq!(catch_up_target(Offset::Beginning, Some((40, 40))), None, "emptied by retention");
    assert_eq!(catch_up_target(Offset::Offset(90), Some((0, 90))), None, "starting at the end");
    assert_eq!(catch_up_target(Offset::End, Some((0, 90))), None);
    assert_eq!(catch_up_target(Offset::Offset(10), Some((0, 90))), Some(90));
    assert_eq!(catch_up_target(Offset::Beginning, Some((0, 90))), Some(90));
    assert_eq!(catch_up_target(Offset::Beginning, None), Some(i64::MAX), "unknown: the position decides");
}

/// In a cluster a node serves the tails it follows to others, above
/// the planner's committed end; a tail cut past that end, or one it
/// does not follow, is refused rather than answered short.
#[tokio::test]
async fn a_tail_is_served_to_other_nodes_above_their_cut_only() {
    use crate::scan::spread::tail_rows;
    let f = fixture(1 << 30);
    let cluster = crate::membership::Cluster::new("q1".into(), url::Url::parse("http://127.0.0.1:1").unwrap(), None);
    let (registration, published) = watch::channel(NodeInfo::default());
    f.view.join_cluster(cluster, Arc::new(registration));
    // Partition 0 reaches its watermark with records a minute old: not
    // caught up until the consumer's position is at the current one.
    f.view.following(0, Some(100));
    for id in 0..100 {
        f.view.append(0, id, now_ms() - 60_000, &record(id));
    }
    f.view.publish_dirty();
    assert_eq!(published.borrow().tails.get("events"), None, "at the watermark, but a minute behind");
    f.view.position(0, 100, 100);
    assert_eq!(published.borrow().tails.get("events"), Some(&vec![0]), "at the current watermark: published");
    // Partition 1 reaches its watermark with fresh records: caught up.
    f.view.following(1, Some(10));
    for offset in 0..10 {
        f.view.append(1, offset, now_ms(), &record(1_000 + offset));
    }
    f.view.publish_dirty();
    assert_eq!(published.borrow().tails.get("events"), Some(&vec![0, 1]), "fresh at the watermark");
    f.view.set_committed(vec![committed(&f, 0, 0..60)]);
    let (snapshot, elsewhere) = f.engine.table("events").unwrap().cluster_snapshot();
    let rows = |after: Option<i64>, partition: i32| {
        tail_rows("events", &snapshot, &elsewhere, RemoteTail { partition, after })
            .map(|segments| segments.iter().map(|s| s.num_rows()).sum::<u32>())
            .map_err(|e| e.to_string())
    };
    assert_eq!(rows(Some(59), 0), Ok(40), "the planner's cut is this node's");
    assert_eq!(rows(Some(79), 0), Ok(20), "a planner that saw a later commit: the chunk is cut");
    assert_eq!(rows(Some(i64::MAX), 0), Ok(0), "a cut past every offset (from the network): nothing, no overflow");
    let refused = [rows(Some(49), 0), rows(None, 0), rows(Some(59), 2)];
    for refusal in refused {
        assert!(refusal.as_ref().is_err_and(|e| e.contains(crate::scan::spread::NOT_SERVED)), "{refusal:?}");
    }

    // Handed over: the tail goes, and a record still in flight for the
    // partition does not start a new one (it would claim the partition
    // from its beginning, and overlap the committed rows).
    f.view.stop_following(0);
    f.view.append(0, 100, 1_100, &record(100));
    f.view.publish_dirty();
    assert_eq!(published.borrow().tails.get("events"), Some(&vec![1]), "partition 0 no longer served");
    let (snapshot, elsewhere) = f.engine.table("events").unwrap().cluster_snapshot();
    assert!(snapshot.iter().all(|s| s.meta().partition != 0 || !s.meta().name.ends_with(CONSUMING_SUFFIX)));
    assert_eq!(elsewhere.tails_from.keys().collect::<Vec<_>>(), [&1]);
}

/// Over the tail memory the partition is answered from committed data
/// only, the answer says so, and the next segment restarts the tail
/// from its end.
#[tokio::test]
async fn an_over_budget_tail_is_left_out_and_reported() {
    let f = fixture(4 * 1024);
    for id in 0..1_000 {
        f.view.append(0, id, 1_000 + id, &record(id));
    }
    f.view.publish_dirty();
    let table = f.engine.table("events").unwrap();
    assert_eq!(table.tails_excluded(), 1);
    let response = f.engine.query("SELECT COUNT(*) FROM events").await.unwrap();
    assert!(response.exceptions[0].message.contains("limits.tail_memory"), "{:?}", response.exceptions);
    f.view.set_committed(vec![committed(&f, 0, 0..10)]);
    assert_eq!(table.tails_excluded(), 0);
    assert_eq!(f.view.take_reseeks(), vec![(0, 10)], "the consumer reads the partition again after the segment");
    assert_eq!(f.view.budget.used.load(Ordering::SeqCst), 0, "the dropped tail gave its memory back");
}
