//! A real `sluice quickstart` process (ingestion and a query node in one
//! process) under hostile requests: statements that used to overflow the
//! stack or exhaust memory get a 4xx/5xx answer while `SELECT 1` keeps
//! answering, the process stays alive with its peak RSS under the memory
//! pool plus an allowance, ingestion keeps going, and 2,000 half-open
//! connections do not lock anyone out.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_testkit::net::{free_port, http_get, http_post};
use sluice_testkit::{GuardedChild, wait_until_blocking};

/// The quickstart's query memory pool (`limits.memory`, its default) plus
/// what ingestion, the caches and the allocator hold besides it.
const RSS_LIMIT_BYTES: u64 = (2 << 30) + (768 << 20);

struct Quickstart {
    _dir: tempfile::TempDir,
    child: GuardedChild,
    addr: String,
    log: std::path::PathBuf,
}

impl Quickstart {
    fn start() -> Quickstart {
        raise_open_files_limit();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port().unwrap();
        let log = dir.path().join("log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command
            .args(["quickstart", "--rate", "2000", "--port", &port.to_string(), "--data-dir"])
            .arg(dir.path().join("data"))
            // Not the default Postgres port: the tests of this file run at
            // once, each with its own quickstart.
            .arg("--pg-port")
            .arg(free_port().unwrap().to_string())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).create(true).open(&log).unwrap());
        let child = GuardedChild::spawn(command).unwrap();
        let q = Quickstart { _dir: dir, child, addr: format!("127.0.0.1:{port}"), log };
        // Enough rows that the growing functions below exceed their limits.
        wait_until_blocking("rows to be queryable", Duration::from_secs(90), || q.count().unwrap_or(0) > 4_000)
            .unwrap_or_else(|e| panic!("{e}\n{}", q.log()));
        q
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn sql(&self, sql: &str) -> (u16, Value) {
        let (status, text) = http_post(&self.addr, "/query/sql", &serde_json::to_vec(&json!({ "sql": sql })).unwrap());
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    fn count(&self) -> Option<i64> {
        let (status, body) = self.sql("SELECT COUNT(*) FROM clickstream");
        (status == 200).then(|| body["resultTable"]["rows"][0][0].as_i64()).flatten()
    }

    /// Peak resident memory of the process (`VmHWM`).
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id().expect("running"))).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    }
}

/// The test opens thousands of sockets; the quickstart inherits the limit.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain struct in, plain struct out.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Statements that aborted the process, ran past the deadline or grew it to
/// gigabytes before these limits existed.
fn hostile() -> Vec<String> {
    let ors: Vec<String> = (0..3000).map(|i| format!("status = {i}")).collect();
    vec![
        format!("SELECT 1{}", "+1".repeat(2999)),
        format!("SELECT status FROM clickstream WHERE {} LIMIT 1", ors.join(" OR ")),
        format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000)),
        format!("SELECT {}status{} FROM clickstream LIMIT 1", "abs(".repeat(3000), ")".repeat(3000)),
        "SELECT length(lpad('x', 2147483647))".to_string(),
        "SELECT length(repeat(url, 1000000)) FROM clickstream".to_string(),
        "SELECT length(string_agg(repeat(url, 100000), ',')) FROM clickstream".to_string(),
        "SELECT repeat(url, 10000) FROM clickstream".to_string(),
        "SELECT length(replace(url, '', repeat('y', 100000))) FROM clickstream".to_string(),
        format!("SELECT '{}'", "x".repeat(300 * 1024)),
    ]
}

#[test]
fn hostile_statements_get_answers_while_select_1_keeps_answering() {
    let q = Quickstart::start();
    let before = q.count().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let probe = {
        let (addr, stop) = (q.addr.clone(), stop.clone());
        std::thread::spawn(move || {
            let body = serde_json::to_vec(&json!({"sql": "SELECT 1"})).unwrap();
            let mut slowest = Duration::ZERO;
            let mut answers = 0;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let (status, text) = http_post(&addr, "/query/sql", &body);
                assert_eq!(status, 200, "SELECT 1: {text}");
                slowest = slowest.max(started.elapsed());
                answers += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            (answers, slowest)
        })
    };
    for sql in hostile() {
        let started = Instant::now();
        let (status, body) = q.sql(&sql);
        let shown = &sql[..sql.len().min(80)];
        eprintln!("{status} in {:?}: {shown}…", started.elapsed());
        assert!(matches!(status, 400 | 413 | 503 | 504), "{shown}… answered {status}: {body}\n{}", q.log());
        assert!(body["exceptions"][0]["message"].is_string(), "a Pinot error body: {body}");
    }
    stop.store(true, Ordering::Relaxed);
    let (answers, slowest) = probe.join().expect("SELECT 1 always answered 200");
    eprintln!("SELECT 1: {answers} answers, slowest {slowest:?}");
    assert!(answers > 0);
    assert!(slowest < Duration::from_secs(1), "SELECT 1 took {slowest:?} while hostile statements ran");

    let peak = q.peak_rss();
    eprintln!("peak RSS {} MiB", peak >> 20);
    assert!(peak < RSS_LIMIT_BYTES, "peak RSS {peak} bytes over {RSS_LIMIT_BYTES}");
    // Alive, and still ingesting.
    wait_until_blocking("ingestion to go on", Duration::from_secs(30), || q.count().unwrap_or(0) > before)
        .unwrap_or_else(|e| panic!("{e}\n{}", q.log()));
    assert!(!q.log().contains("panicked"), "{}", q.log());
}

#[test]
fn half_open_connections_and_bad_requests_get_bounded_answers() {
    let q = Quickstart::start();
    // 2,000 connections that send half a header and wait: more than the
    // default cap of 1,024, so the oldest idle ones are closed to make room.
    let mut idle = Vec::new();
    for _ in 0..2000 {
        match TcpStream::connect(&q.addr) {
            Ok(mut s) => {
                let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n");
                idle.push(s);
            }
            Err(e) => panic!("connect #{}: {e}", idle.len()),
        }
    }
    let started = Instant::now();
    let (status, body) = http_get(&q.addr, "/health");
    assert_eq!(status, 200, "{body}");
    let (status, body) = q.sql("SELECT 1");
    assert_eq!(status, 200, "{body}");
    eprintln!("answered beside 2,000 half-open connections in {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(idle);

    // A body announced larger than the cap: 413 at once, Pinot-shaped.
    let mut s = TcpStream::connect(&q.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"POST /query/sql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n",
    )
    .unwrap();
    let mut response = String::new();
    let _ = s.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    let body: Value = serde_json::from_str(response.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["exceptions"][0]["errorCode"], 413, "{body}");

    // Wrong method, unknown path: Pinot-shaped JSON too.
    let (status, text) = http_get(&q.addr, "/query/sql");
    assert_eq!(status, 405);
    let body: Value = serde_json::from_str(&text).unwrap();
    assert!(body["exceptions"][0]["message"].as_str().unwrap().contains("not allowed"), "{body}");
    let (status, text) = http_get(&q.addr, "/nope");
    assert_eq!(status, 404);
    assert!(serde_json::from_str::<Value>(&text).is_ok(), "{text}");
    // A bad regex is the query's fault.
    let (status, body) = q.sql("SELECT COUNT(*) FROM clickstream WHERE regexp_like(url, 'a{1000}{1000}')");
    assert_eq!(status, 400, "{body}");
}
