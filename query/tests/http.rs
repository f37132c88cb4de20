//! The HTTP endpoint: Pinot's response shape, errors with their status and
//! code, limits, the real `pinotdb` client, and a fuzz run.

mod common;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_config::{HttpConfig, QueryLimits};
use sluice_query::QueryEngine;
use sluice_testkit::net::{http_get, http_post};
use tokio::sync::watch;

struct Server {
    addr: String,
    _stop: watch::Sender<bool>,
}

async fn server(limits: QueryLimits) -> Server {
    server_with(limits, HttpConfig::on("127.0.0.1:0".parse().unwrap())).await
}

async fn server_with(limits: QueryLimits, http: HttpConfig) -> Server {
    let engine = Arc::new(QueryEngine::new(limits).unwrap());
    common::register_fixture(&engine);
    let (stop, rx) = watch::channel(false);
    let health = Arc::new(sluice_query::catalog::NodeHealth::default());
    let (addr, _) = sluice_query::frontends::http::serve(&http, engine, None, health, rx).await.unwrap();
    Server { addr: addr.to_string(), _stop: stop }
}

async fn post(addr: &str, body: Vec<u8>) -> (u16, Value) {
    let addr = addr.to_string();
    let (status, text) = tokio::task::spawn_blocking(move || http_post(&addr, "/query/sql", &body)).await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("status {status}: not JSON ({e}): {text}"));
    (status, value)
}

async fn sql(addr: &str, sql: &str) -> (u16, Value) {
    post(addr, serde_json::to_vec(&json!({ "sql": sql })).unwrap()).await
}

async fn get(addr: &str, path: &str) -> (u16, Value) {
    let (addr, path) = (addr.to_string(), path.to_string());
    let (status, text) = tokio::task::spawn_blocking(move || http_get(&addr, &path)).await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn error_code(body: &Value) -> i64 {
    body["exceptions"][0]["errorCode"].as_i64().unwrap_or_else(|| panic!("no exception in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_in_pinot_shape() {
    let s = server(QueryLimits::default()).await;
    let (status, body) = sql(
        &s.addr,
        "SELECT country, COUNT(*) AS n FROM clicks WHERE status = 404 GROUP BY country ORDER BY n DESC LIMIT 3",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["resultTable"]["dataSchema"]["columnNames"], json!(["country", "n"]));
    assert_eq!(body["resultTable"]["dataSchema"]["columnDataTypes"], json!(["STRING", "LONG"]));
    assert_eq!(body["resultTable"]["rows"].as_array().unwrap().len(), 3);
    assert_eq!(body["exceptions"], json!([]));
    for field in ["numServersQueried", "numServersResponded"] {
        assert_eq!(body[field], 1, "{field}");
    }
    assert_eq!(body["numSegmentsQueried"], 6);
    assert_eq!(body["totalDocs"], common::SEGMENT_ROWS.iter().sum::<usize>());
    assert!(body["numDocsScanned"].as_u64().unwrap() > 0);
    assert!(body["timeUsedMs"].is_u64());

    let (status, body) = sql(&s.addr, "SELECT ts, score, is_bot FROM clicks ORDER BY ts LIMIT 1").await;
    assert_eq!(status, 200);
    assert_eq!(body["resultTable"]["dataSchema"]["columnDataTypes"], json!(["TIMESTAMP", "DOUBLE", "BOOLEAN"]));
    assert_eq!(body["resultTable"]["rows"][0][0], "2025-11-24 16:00:00.000");

    let (status, body) = get(&s.addr, "/tables").await;
    assert_eq!((status, body), (200, json!({"tables": ["clicks", "users"]})));
    let (status, body) = get(&s.addr, "/tables/clicks/schema").await;
    assert_eq!(status, 200);
    assert_eq!(body["dateTimeFieldSpecs"][0]["name"], "ts");
    assert_eq!(body["dimensionFieldSpecs"].as_array().unwrap().len(), 9);
    assert_eq!(get(&s.addr, "/tables/nope/schema").await.0, 404);
    let (status, mut health) = get(&s.addr, "/health").await;
    assert_eq!(status, 200);
    // What the node serves: every segment, with its file's bytes.
    let served = health.as_object_mut().unwrap().remove("served").unwrap();
    assert_eq!(served["segments"], 8, "{served}");
    assert!(served["bytes"].as_u64().unwrap() > 0, "{served}");
    assert_eq!(health, json!({"status": "ok", "corruptSegments": [], "tailConsumers": [], "tails": []}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queries_get_a_400_with_the_reason() {
    let s = server(QueryLimits::default()).await;
    let (status, body) = sql(&s.addr, "SELEC * FROM clicks").await;
    assert_eq!((status, error_code(&body)), (400, 150), "{body}");
    let (status, body) = sql(&s.addr, "SELECT * FROM nope").await;
    assert_eq!((status, error_code(&body)), (400, 190), "{body}");
    assert!(body["exceptions"][0]["message"].as_str().unwrap().contains("nope"));
    let (status, body) = sql(&s.addr, "SELECT no_such_column FROM clicks").await;
    assert_eq!((status, error_code(&body)), (400, 700), "{body}");
    let (status, body) = sql(&s.addr, "SELECT CAST(url AS INT) FROM clicks").await;
    assert_eq!((status, error_code(&body)), (400, 200), "{body}");
    for (body, what) in [
        (b"not json".to_vec(), "garbage"),
        (b"[1,2]".to_vec(), "an array"),
        (br#"{"pql": "SELECT 1"}"#.to_vec(), "no sql"),
        (br#"{"sql": 42}"#.to_vec(), "a number"),
        (br#"{"sql": "  "}"#.to_vec(), "blank"),
    ] {
        let (status, answer) = post(&s.addr, body).await;
        assert_eq!((status, error_code(&answer)), (400, 150), "{what}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anything_that_writes_is_refused() {
    let s = server(QueryLimits::default()).await;
    for statement in [
        "CREATE TABLE t (a INT)",
        "CREATE TABLE t AS SELECT * FROM clicks",
        "INSERT INTO clicks SELECT * FROM clicks",
        "DROP TABLE clicks",
        "DELETE FROM clicks WHERE status = 200",
        "CREATE VIEW v AS SELECT 1",
        "COPY (SELECT * FROM clicks) TO '/tmp/sluice-copy.csv'",
        "CREATE EXTERNAL TABLE e STORED AS CSV LOCATION '/etc/passwd'",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let (status, body) = sql(&s.addr, statement).await;
        assert_eq!(status, 400, "{statement}: {body}");
        let message = body["exceptions"][0]["message"].as_str().unwrap();
        assert!(message.contains("read-only") || message.contains("not supported"), "{statement}: {message}");
    }
    assert!(!std::path::Path::new("/tmp/sluice-copy.csv").exists());
    let (status, body) = get(&s.addr, "/tables").await;
    assert_eq!((status, body), (200, json!({"tables": ["clicks", "users"]})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_413_504_and_503() {
    let limits = QueryLimits {
        max_result_rows: 100,
        query_timeout: Duration::from_millis(500),
        max_concurrent_queries: 1,
        ..QueryLimits::default()
    };
    let s = server(limits).await;
    let (status, body) = sql(&s.addr, "SELECT * FROM clicks").await;
    assert_eq!((status, error_code(&body)), (413, 240), "{body}");
    assert_eq!(sql(&s.addr, "SELECT * FROM clicks LIMIT 100").await.0, 200);

    let slow = "SELECT COUNT(*) FROM clicks a, clicks b WHERE a.latency_ms + b.latency_ms = 7";
    let (status, body) = sql(&s.addr, slow).await;
    assert_eq!((status, error_code(&body)), (504, 250), "{body}");

    // One slot and four waiting places: of 12 at once, some are refused.
    let answers = futures::future::join_all((0..12).map(|_| sql(&s.addr, slow))).await;
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    assert!(statuses.iter().all(|s| *s == 503 || *s == 504), "{statuses:?}");
    assert!(statuses.contains(&503), "{statuses:?}");
    // The node recovers once the load is gone (cancelled work stops at
    // its next yield).
    let mut recovered = false;
    for _ in 0..120 {
        if sql(&s.addr, "SELECT COUNT(*) FROM users").await.0 == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(recovered, "the node answers again once the load is gone");
}

/// Statements as deep as the limits admit are planned and answered — on the
/// engine's large-stack threads, not by overflowing a worker's stack — and
/// one level deeper they get a 400 naming the limit, before any parsing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deepest_admitted_statements_answer_and_deeper_ones_are_refused() {
    for depth in [1000u32, 2000] {
        let limits = QueryLimits {
            max_expression_depth: depth,
            query_timeout: Duration::from_secs(60),
            ..QueryLimits::default()
        };
        let s = server(limits).await;
        let terms = depth as usize;
        let sum = format!("SELECT 1{}", "+1".repeat(terms - 1));
        let (status, body) = sql(&s.addr, &sum).await;
        assert_eq!(status, 200, "depth {depth}: {body}");
        assert_eq!(body["resultTable"]["rows"][0][0], terms);
        let ors: Vec<String> = (0..terms / 2).map(|i| format!("status = {i}")).collect();
        let or_chain = format!("SELECT status FROM clicks WHERE {} LIMIT 1", ors.join(" OR "));
        let (status, body) = sql(&s.addr, &or_chain).await;
        assert_eq!(status, 200, "depth {depth}: {body}");
        // Nesting (parentheses, calls, subqueries) is bounded tighter, by
        // the SQL parser's own recursion limit (DataFusion's default, 50).
        let nested = format!("SELECT {}status{} FROM clicks LIMIT 1", "abs(".repeat(45), ")".repeat(45));
        let (status, body) = sql(&s.addr, &nested).await;
        assert_eq!(status, 200, "depth {depth}: {body}");
        let nested = format!("SELECT {}status{} FROM clicks LIMIT 1", "abs(".repeat(60), ")".repeat(60));
        let (status, body) = sql(&s.addr, &nested).await;
        assert_eq!(status, 400, "depth {depth}: {body}");
        let deeper = format!("SELECT 1{}", "+1".repeat(terms));
        let (status, body) = sql(&s.addr, &deeper).await;
        assert_eq!((status, error_code(&body)), (400, 700), "{body}");
        assert!(body["exceptions"][0]["message"].as_str().unwrap().contains("limits.max_expression_depth"));
    }
}

/// HTTP limits: a body announced too large is refused before it is read, a
/// body that does not arrive in time is a 408, idle connections are closed
/// after the idle timeout, and at the connection cap the oldest idle
/// connection makes room for a new one. Every answer is Pinot-shaped JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_limits_bound_slow_large_and_idle_clients() {
    use std::io::{Read, Write};
    let mut http = HttpConfig::on("127.0.0.1:0".parse().unwrap());
    http.body_read_timeout = Duration::from_millis(500);
    http.idle_timeout = Duration::from_secs(1);
    http.max_connections = 8;
    http.max_body_size = sluice_config::ByteSize::kib(64);
    let s = server_with(QueryLimits::default(), http).await;
    let exchange = |request: Vec<u8>| {
        let addr = s.addr.clone();
        tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(&addr).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            stream.write_all(&request).unwrap();
            let mut response = String::new();
            let _ = stream.read_to_string(&mut response);
            response
        })
    };
    let head = |length: u64| {
        format!(
            "POST /query/sql HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {length}\r\n\r\n"
        )
    };
    let too_large = exchange(head(1 << 20).into_bytes()).await.unwrap();
    assert!(too_large.starts_with("HTTP/1.1 413"), "{too_large}");
    assert!(too_large.contains("\"errorCode\":413"), "{too_large}");
    let mut slow = head(100).into_bytes();
    slow.extend_from_slice(b"{\"sql\":");
    let started = std::time::Instant::now();
    let timed_out = exchange(slow).await.unwrap();
    assert!(timed_out.starts_with("HTTP/1.1 408"), "{timed_out}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let (status, body) = post(&s.addr, vec![b' '; 70 * 1024]).await;
    assert_eq!((status, error_code(&body)), (413, 413));

    // Idle connections: more than the cap, and all still get served.
    let addr = s.addr.clone();
    let closed = tokio::task::spawn_blocking(move || {
        let idle: Vec<std::net::TcpStream> = (0..20).map(|_| std::net::TcpStream::connect(&addr).unwrap()).collect();
        let (status, _) = http_get(&addr, "/health");
        assert_eq!(status, 200, "served at the cap");
        // Past the idle timeout every idle connection was closed by the node.
        std::thread::sleep(Duration::from_millis(2500));
        idle.into_iter()
            .filter(|s| {
                let mut s = s.try_clone().unwrap();
                s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
                matches!(s.read(&mut [0u8; 1]), Ok(0))
            })
            .count()
    })
    .await
    .unwrap();
    assert_eq!(closed, 20, "idle connections are closed");
}

fn below(rng: &mut common::Rng, n: usize) -> usize {
    rng.below(n as u64) as usize
}

fn pick<'a>(rng: &mut common::Rng, items: &[&'a str]) -> &'a str {
    items[below(rng, items.len())]
}

const TOKENS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "GROUP BY",
    "ORDER BY",
    "LIMIT",
    "HAVING",
    "JOIN",
    "ON",
    "AND",
    "OR",
    "NOT",
    "IN",
    "IS",
    "NULL",
    "BETWEEN",
    "LIKE",
    "(",
    ")",
    ",",
    "*",
    "=",
    "<>",
    "<",
    ">=",
    "+",
    "-",
    "/",
    "%",
    "'FR'",
    "''",
    "'%'",
    "0",
    "-1",
    "1e308",
    "9223372036854775807",
    "0.0",
    "NaN",
    "clicks",
    "users",
    "c",
    "country",
    "status",
    "score",
    "ts",
    "user_id",
    "latency_ms",
    "COUNT(*)",
    "COUNT(DISTINCT",
    "SUM(",
    "AVG(",
    "date_trunc('hour',",
    "CAST(",
    "AS",
    "INT",
    "TIMESTAMP",
    "'2025-11-24'",
    "WITH",
    "x",
    "UNION",
    "SELECT 1",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "OVER",
    "DISTINCT",
    "approx_distinct(",
    "EXPLAIN",
    "INSERT",
    "DROP",
    "CREATE",
    ";",
    "\"",
    "\\",
    "`",
    "\u{0}",
    "é",
    "🦀",
    "--",
    "/*",
    "*/",
    "ARRAY[",
    "]",
    "::",
    "[1,2]",
    "regexp_like(url, '(a*)*b')",
    "repeat('x', 100000)",
];

/// Statements built to overflow a stack or exhaust memory: long operator
/// chains, deep nesting, growing string functions.
fn hostile_sql(rng: &mut common::Rng) -> String {
    let n = below(rng, 6000);
    match below(rng, 6) {
        0 => format!("SELECT 1{}", pick(rng, &["+1", "*1", "||'x'", " - 1"]).repeat(n)),
        1 => {
            let terms: Vec<String> = (0..n).map(|i| format!("status = {i}")).collect();
            format!("SELECT status FROM clicks WHERE {} LIMIT 1", terms.join(pick(rng, &[" OR ", " AND "])))
        }
        2 => format!("SELECT {}status{} FROM clicks LIMIT 1", "abs(".repeat(n / 4), ")".repeat(n / 4)),
        3 => format!("SELECT country FROM clicks WHERE {}is_bot{} LIMIT 1", "NOT ".repeat(n), ""),
        4 => format!(
            "SELECT COUNT(*) FROM clicks WHERE status IN ({})",
            (0..n * 4).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
        ),
        _ => pick(
            rng,
            &[
                "SELECT length(lpad('x', 2147483647))",
                "SELECT length(rpad(url, 100000000)) FROM clicks",
                "SELECT length(repeat(url, 1000000)) FROM clicks",
                "SELECT length(string_agg(repeat(url, 1000), ',')) FROM clicks",
                "SELECT length(replace(url, '', repeat('y', 100000))) FROM clicks",
                "SELECT repeat(url, 1000) FROM clicks",
                "SELECT regexp_like(url, 'a{1000}{1000}') FROM clicks",
            ],
        )
        .to_string(),
    }
}

fn random_sql(rng: &mut common::Rng) -> String {
    match below(rng, 6) {
        4 | 5 => hostile_sql(rng),
        0 => (0..below(rng, 40)).map(|_| pick(rng, TOKENS)).collect::<Vec<_>>().join(" "),
        1 => {
            // A valid-looking query with one mutation.
            let base = format!(
                "SELECT {} FROM {} WHERE {} {} {} GROUP BY 1 ORDER BY 1 LIMIT {}",
                pick(rng, &["country", "COUNT(*)", "status, COUNT(*)", "*", "SUM(bytes)", "date_trunc('minute', ts)"]),
                pick(rng, &["clicks", "users", "clicks c JOIN users u ON c.user_id = u.user_id"]),
                pick(rng, &["country", "status", "score", "ts", "url", "is_bot"]),
                pick(rng, &["=", "IN", "<", "LIKE", "IS", "BETWEEN"]),
                pick(rng, &["'FR'", "(1, 2)", "NULL", "0.0", "'a%'", "1 AND 2", "NOT NULL", "TIMESTAMP '2025-11-24'"]),
                below(rng, 5),
            );
            let mut chars: Vec<char> = base.chars().collect();
            let at = below(rng, chars.len());
            match below(rng, 3) {
                0 => {
                    chars.remove(at);
                }
                1 => chars.insert(at, pick(rng, TOKENS).chars().next().unwrap_or('x')),
                _ => chars.truncate(at),
            }
            chars.into_iter().collect()
        }
        2 => (0..below(rng, 200)).map(|_| char::from_u32(below(rng, 0x250) as u32).unwrap_or('?')).collect(),
        _ => "(".repeat(below(rng, 3000)) + "1" + &")".repeat(below(rng, 3000)),
    }
}

fn random_body(rng: &mut common::Rng) -> Vec<u8> {
    match below(rng, 6) {
        0 => serde_json::to_vec(&json!({ "sql": random_sql(rng) })).unwrap(),
        1 => serde_json::to_vec(&json!({ "sql": random_sql(rng), "queryOptions": "timeoutMs=10" })).unwrap(),
        2 => (0..below(rng, 100)).map(|_| rng.next() as u8).collect(),
        3 => pick(rng, &["{}", "null", "[]", "{\"sql\":null}", "{\"sql\":[\"SELECT 1\"]}", "\"SELECT 1\"", "{\"sql\""])
            .into(),
        4 => format!("{}{}", "[".repeat(below(rng, 10_000)), "]".repeat(below(rng, 10_000))).into_bytes(),
        _ => serde_json::to_vec(&json!({ "sql": random_sql(rng), "sql2": {"nested": [1, 2, {"a": null}]} })).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzz_never_panics_or_fails_with_a_5xx() {
    let limits = QueryLimits { query_timeout: Duration::from_secs(2), max_result_rows: 1000, ..QueryLimits::default() };
    let s = server(limits).await;
    let mut rng = common::Rng(0x5eed_cafe);
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    for i in 0..10_000 {
        let body = random_body(&mut rng);
        let addr = s.addr.clone();
        let shown = String::from_utf8_lossy(&body[..body.len().min(300)]).to_string();
        let (status, text) = tokio::task::spawn_blocking(move || http_post(&addr, "/query/sql", &body)).await.unwrap();
        *by_status.entry(status).or_default() += 1;
        let allowed = matches!(status, 200 | 400 | 413 | 503 | 504);
        assert!(allowed, "input {i} got {status}: {shown}\n{text}");
        let parsed: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("input {i}: {e}: {text}"));
        assert_eq!(parsed["numServersQueried"], 1, "input {i}");
    }
    eprintln!("fuzz statuses: {by_status:?}");
    assert_eq!(sql(&s.addr, "SELECT COUNT(*) FROM clicks").await.0, 200, "the node still answers");
}

/// The real Pinot Python client (PyPI `pinotdb`, installed by
/// `scripts/test`) queries the endpoint as it would a Pinot broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinotdb_client_works() {
    let s = server(QueryLimits::default()).await;
    let (host, port) = s.addr.rsplit_once(':').unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pinotdb_client.py");
    let output =
        tokio::process::Command::new("python3").args([script, host, port]).output().await.expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "pinotdb client failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("pinotdb ok"), "{stdout}");
}
