//! A real `sluice quickstart` process (ingestion and a query node in one
//! process) under hostile requests: statements that used to overflow the
//! stack or exhaust memory get a 4xx/5xx answer while `SELECT 1` keeps
//! answering, the process stays alive with its peak RSS under the memory
//! pool plus an allowance, ingestion keeps going, and 2,000 half-open
//! connections do not lock anyone out.
//!
//! The probes of an attacker with only the documented ports: planning that
//! outgrew every limit (thousands of chained CTEs, a 2,000-way join),
//! expressions, windows and recursive CTEs that built gigabytes, timed-out
//! work that ran on for minutes, stalled Postgres startups that locked
//! clients out, unbounded prepared statements, cross-site requests. Each
//! gets a 4xx/5xx (or a SQLSTATE) with its reason while `SELECT 1` keeps
//! answering within a second, the peak RSS stays under the pool plus an
//! allowance, and the query threads are idle soon after the answer.

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
    pg_port: u16,
    log: std::path::PathBuf,
}

impl Quickstart {
    fn start() -> Quickstart {
        raise_open_files_limit();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port().unwrap();
        let log = dir.path().join("log");
        let pg_port = free_port().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command
            .args(["quickstart", "--rate", "2000", "--port", &port.to_string(), "--data-dir"])
            .arg(dir.path().join("data"))
            // Not the default Postgres port: the tests of this file run at
            // once, each with its own quickstart.
            .arg("--pg-port")
            .arg(pg_port.to_string())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).create(true).open(&log).unwrap());
        let child = GuardedChild::spawn(command).unwrap();
        let q = Quickstart { _dir: dir, child, addr: format!("127.0.0.1:{port}"), pg_port, log };
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

    fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Peak resident memory of the process (`VmHWM`).
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    }

    /// CPU time (user + system, in clock ticks) of the threads that run
    /// queries (the engine's runtime, `sluice-query`), from `/proc`.
    fn query_thread_ticks(&self) -> u64 {
        let mut ticks = 0;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else { return 0 };
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if !comm.starts_with("sluice-query") {
                continue;
            }
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            // Fields after the command (which may hold spaces): state is
            // field 3; utime and stime are fields 14 and 15.
            let Some((_, rest)) = stat.rsplit_once(')') else { continue };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            ticks += fields.get(11).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
            ticks += fields.get(12).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
        }
        ticks
    }

    /// Open descriptors of the process.
    fn descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map(|d| d.count()).unwrap_or(0)
    }

    /// Runs `sql` with psql (read from standard input: a statement may be
    /// longer than an argument may).
    fn psql(&self, sql: &str) -> std::process::Output {
        let mut child = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &self.pg_port.to_string(), "-U", "sluice", "-d", "sluice"])
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"])
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("psql (postgresql-client)");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(sql.as_bytes()).unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    }
}

/// Answers `SELECT 1` every 50 ms until stopped; returns the answers and
/// the slowest.
fn select_1_probe(addr: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(usize, Duration)> {
    std::thread::spawn(move || {
        let body = serde_json::to_vec(&json!({"sql": "SELECT 1"})).unwrap();
        let mut slowest = Duration::ZERO;
        let mut answers = 0;
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let (status, text) = http_post(&addr, "/query/sql", &body);
            assert_eq!(status, 200, "SELECT 1: {text}");
            if started.elapsed() > Duration::from_millis(500) {
                // Matched against the statements' own times in the output.
                eprintln!("SELECT 1 took {:?}, answered at {}", started.elapsed(), clock());
            }
            slowest = slowest.max(started.elapsed());
            answers += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        (answers, slowest)
    })
}

/// Seconds since the epoch, to line up the probe's and the test's output.
fn clock() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{:.3}", now.as_secs_f64())
}

/// `n` CTEs, each reading the one before.
fn chained_ctes(n: usize) -> String {
    let ctes: Vec<String> = (1..n).map(|i| format!("c{i} AS (SELECT x FROM c{})", i - 1)).collect();
    format!("WITH c0 AS (SELECT 1 AS x), {} SELECT x FROM c{}", ctes.join(", "), n - 1)
}

/// A chain of `n` joins of the table with itself.
fn join_chain(n: usize) -> String {
    let joins: Vec<String> = (1..n).map(|i| format!("JOIN clickstream t{i} ON t{i}.country = t0.country")).collect();
    format!("SELECT count(*) FROM clickstream t0 {}", joins.join(" "))
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
        // Planning: 7,000 and 3,000 chained CTEs (222 KB and 93 KB), CTEs
        // that double at each step, a 2,000-way join.
        chained_ctes(7000),
        chained_ctes(3000),
        {
            let ctes: Vec<String> = (1..30)
                .map(|i| format!("c{i} AS (SELECT * FROM c{p} UNION ALL SELECT * FROM c{p})", p = i - 1))
                .collect();
            format!("WITH c0 AS (SELECT 1 AS x), {} SELECT count(*) FROM c29", ctes.join(", "))
        },
        join_chain(2000),
        // Expressions, windows and recursive CTEs.
        "WITH RECURSIVE r(n,s) AS (SELECT 1,'x' UNION ALL SELECT n+1,s||s FROM r) SELECT max(length(s)) FROM r"
            .to_string(),
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM r) SELECT count(*) FROM r".to_string(),
        format!("SELECT length(concat({})) FROM clickstream", vec!["repeat(url, 20)"; 64].join(", ")),
        // 300 large arguments, all held before the call runs (19 GB at 64 MB
        // each).
        format!(
            "SELECT length(concat({})) FROM clickstream",
            (0..300).map(|i| format!("repeat(url, {})", 100 + i)).collect::<Vec<_>>().join(", ")
        ),
        "SELECT max(length(s)) FROM (SELECT string_agg(url, ',') OVER (ORDER BY ts) AS s FROM clickstream)".to_string(),
        // Windows over all rows, and cross joins: one value repeated into
        // every row.
        "SELECT max(length(s)) FROM (SELECT string_agg(url, ',') OVER () AS s FROM clickstream)".to_string(),
        "SELECT max(length(s)) FROM (SELECT first_value(CASE WHEN status = 500 THEN repeat(url, 10000) END) \
         OVER (ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS s FROM clickstream)"
            .to_string(),
        "SELECT length(string_agg(a.url, ',')) FROM clickstream a CROSS JOIN clickstream b".to_string(),
        // A 1 MB build row met by every probe row of its country, copied;
        // and a running window repeating a 600 KB value into every later
        // row (both 8,192 copies per batch in DataFusion).
        "SELECT max(arrow_cast(a.v, 'LargeUtf8')) FROM (SELECT country, repeat(url, 100000) v FROM clickstream \
         LIMIT 3) a JOIN clickstream b ON a.country = b.country"
            .to_string(),
        "SELECT max(length(w)) FROM (SELECT max(CASE WHEN status = 500 AND latency_ms > 1000 THEN repeat(url, 50000) \
         END) OVER (ORDER BY ts) AS w FROM clickstream)"
            .to_string(),
        "SELECT max(length(a.s)) FROM (SELECT string_agg(url, ',') s FROM clickstream) a CROSS JOIN clickstream b"
            .to_string(),
    ]
}

#[test]
fn hostile_statements_get_answers_while_select_1_keeps_answering() {
    let q = Quickstart::start();
    let before = q.count().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let probe = select_1_probe(q.addr.clone(), stop.clone());
    for sql in hostile() {
        let started = Instant::now();
        let (status, body) = q.sql(&sql);
        let shown = &sql[..sql.len().min(80)];
        eprintln!("{status} in {:?}: {shown}…", started.elapsed());
        assert!(matches!(status, 400 | 413 | 503 | 504), "{shown}… answered {status}: {body}\n{}", q.log());
        assert!(body["exceptions"][0]["message"].is_string(), "a Pinot error body: {body}");
        // No panic text, ever.
        assert!(!body.to_string().contains("panicked"), "{body}");
        settles(&q, &sql);
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
        format!(
            "POST /query/sql HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n",
            q.addr
        )
        .as_bytes(),
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

/// How long after its answer a query's work may still run, in the debug
/// build the tests run: operators yield every 5 ms, but planning (up to
/// `limits.max_relations` joins) cannot be interrupted.
const SETTLE: Duration = Duration::from_secs(6);

/// Asserts the query threads fall idle within [`SETTLE`] of an answer:
/// less than 10% of a core over half a second.
fn settles(q: &Quickstart, sql: &str) {
    let answered = Instant::now();
    loop {
        let before = q.query_thread_ticks();
        std::thread::sleep(Duration::from_millis(500));
        let spent = q.query_thread_ticks() - before;
        if spent <= 5 {
            eprintln!("  idle {:?} after the answer", answered.elapsed());
            return;
        }
        assert!(
            answered.elapsed() < SETTLE,
            "the query threads still spent {spent} ticks per 500 ms {:?} after answering {}…",
            answered.elapsed(),
            &sql[..sql.len().min(80)]
        );
    }
}

#[test]
fn timed_out_work_stops_and_gives_its_slot_back() {
    let q = Quickstart::start();
    let stop = Arc::new(AtomicBool::new(false));
    let probe = select_1_probe(q.addr.clone(), stop.clone());
    // Billions of rows from a few thousand: each probe batch of the joins
    // answers with millions, long past the quickstart's 10 s timeout.
    let explosion = "SELECT count(*) FROM clickstream a JOIN clickstream b ON a.country = b.country \
                     JOIN clickstream c ON b.country = c.country JOIN clickstream d ON c.country = d.country";
    for _ in 0..2 {
        let started = Instant::now();
        let (status, body) = q.sql(explosion);
        eprintln!("{status} in {:?}", started.elapsed());
        // The deadline, or the pool when the build side outgrows it first.
        assert!(matches!(status, 503 | 504), "{status}: {body}");
        settles(&q, explosion);
    }
    stop.store(true, Ordering::Relaxed);
    let (_, slowest) = probe.join().expect("SELECT 1 always answered 200");
    assert!(slowest < Duration::from_secs(1), "SELECT 1 took {slowest:?} beside the join");
    // Every slot is free again: as many queries as slots answer at once.
    let answers: Vec<_> = (0..8)
        .map(|_| {
            let addr = q.addr.clone();
            std::thread::spawn(move || {
                let body = serde_json::to_vec(&json!({"sql": "SELECT COUNT(*) FROM clickstream"})).unwrap();
                http_post(&addr, "/query/sql", &body).0
            })
        })
        .collect();
    for answer in answers {
        assert_eq!(answer.join().unwrap(), 200);
    }
    assert!(q.peak_rss() < RSS_LIMIT_BYTES, "peak RSS {}", q.peak_rss());
}

#[test]
fn the_postgres_port_bounds_startups_statements_and_hostile_queries() {
    let q = Quickstart::start();
    // The probes over the wire: refused with their SQLSTATE class, the
    // process alive.
    let probes = [
        (chained_ctes(7000), "limits.max_ctes"),
        (join_chain(2000), "limits."),
        (
            "WITH RECURSIVE r(n,s) AS (SELECT 1,'x' UNION ALL SELECT n+1,s||s FROM r) SELECT max(length(s)) FROM r"
                .to_string(),
            "max_function_output",
        ),
    ];
    for (sql, reason) in &probes {
        let out = q.psql(sql);
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("psql: {}", stderr.trim());
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(reason), "{stderr}");
        settles(&q, sql);
    }

    // 1,000 stalled startups (two bytes each), then psql within a second.
    let baseline = q.descriptors();
    let stalled: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", q.pg_port)).unwrap();
            let _ = s.write_all(&[0, 0]);
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let out = q.psql("SELECT 1;");
    let took = started.elapsed();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("psql beside 1,000 stalled startups: {took:?}");
    assert!(took < Duration::from_secs(1), "psql took {took:?}");
    drop(stalled);
    wait_until_blocking("descriptors back to their baseline", Duration::from_secs(20), || {
        q.descriptors() <= baseline + 16
    })
    .unwrap_or_else(|e| panic!("{e}: {} open, {baseline} before", q.descriptors()));

    // A connection's prepared statements are bounded (1,000 by default),
    // and a Bind with too many values is a protocol violation.
    let mut pg = RawPg::connect(q.pg_port);
    pg.send(b'P', &[b"one\0SELECT $1\0".as_slice(), &0u16.to_be_bytes()].concat());
    let bind = [
        b"\0one\0".as_slice(),
        &0u16.to_be_bytes(),
        &2u16.to_be_bytes(),
        &[0, 0, 0, 1, b'1', 0, 0, 0, 1, b'2'],
        &0u16.to_be_bytes(),
    ]
    .concat();
    pg.send(b'B', &bind);
    pg.send(b'E', b"\0\0\0\0\0");
    pg.send(b'S', b"");
    assert_eq!(pg.error_until_ready().as_deref(), Some("08P01"));
    for i in 0..1001 {
        pg.send(b'P', &[format!("s{i}\0SELECT {i}\0").as_bytes(), &0u16.to_be_bytes()].concat());
    }
    pg.send(b'S', b"");
    assert_eq!(pg.error_until_ready().as_deref(), Some("54000"));
}

/// A bare Postgres protocol client: what a hostile one sends.
struct RawPg(TcpStream);

impl RawPg {
    fn connect(port: u16) -> RawPg {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let params = b"user\0sluice\0database\0sluice\0\0";
        let mut startup = ((8 + params.len()) as i32).to_be_bytes().to_vec();
        startup.extend_from_slice(&196_608i32.to_be_bytes());
        startup.extend_from_slice(params);
        s.write_all(&startup).unwrap();
        let mut pg = RawPg(s);
        assert_eq!(pg.error_until_ready(), None, "logged in");
        pg
    }

    fn send(&mut self, tag: u8, body: &[u8]) {
        let mut message = vec![tag];
        message.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        message.extend_from_slice(body);
        let _ = self.0.write_all(&message);
    }

    /// Reads messages until `ReadyForQuery` or the end of the connection;
    /// returns the SQLSTATE of the first error.
    fn error_until_ready(&mut self) -> Option<String> {
        let mut error = None;
        loop {
            let mut head = [0u8; 5];
            if self.0.read_exact(&mut head).is_err() {
                return error;
            }
            let mut body = vec![0u8; i32::from_be_bytes(head[1..].try_into().unwrap()) as usize - 4];
            self.0.read_exact(&mut body).unwrap();
            match head[0] {
                b'Z' => return error,
                b'E' if error.is_none() => {
                    let code = body.split(|b| *b == 0).find_map(|f| f.strip_prefix(b"C"));
                    error = code.map(|c| String::from_utf8_lossy(c).into_owned());
                }
                _ => {}
            }
        }
    }
}

#[test]
fn cross_site_requests_and_rebound_names_are_refused() {
    let q = Quickstart::start();
    let raw = |request: String| {
        let mut s = TcpStream::connect(&q.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        let _ = s.read_to_string(&mut response);
        let status: u16 = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (status, response)
    };
    let post = |content_type: &str, extra: &str| {
        let body = r#"{"sql":"SELECT 1"}"#;
        raw(format!(
            "POST /query/sql HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{content_type}{extra}Content-Length: {}\r\n\r\n{body}",
            q.addr,
            body.len()
        ))
    };
    // What a form or a no-cors fetch can send: refused.
    for content_type in ["Content-Type: text/plain\r\n", "Content-Type: application/x-www-form-urlencoded\r\n", ""] {
        let (status, response) = post(content_type, "");
        assert_eq!(status, 415, "{response}");
        assert!(response.contains("application/json"), "{response}");
    }
    // Another site's page, even with JSON (after a preflight it never got).
    let (status, response) = post("Content-Type: application/json\r\n", "Origin: https://evil.example\r\n");
    assert_eq!(status, 403, "{response}");
    // The node's own page is welcome.
    let own = format!("Origin: http://{}\r\n", q.addr);
    let (status, response) = post("Content-Type: application/json\r\n", &own);
    assert_eq!(status, 200, "{response}");
    // A name rebound to 127.0.0.1 reads nothing.
    let (status, response) =
        raw("GET /tables HTTP/1.1\r\nHost: rebound.evil.example:8099\r\nConnection: close\r\n\r\n".to_string());
    assert_eq!(status, 403, "{response}");
    let (status, _) = raw(format!(
        "GET /tables HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
        q.addr.rsplit(':').next().unwrap()
    ));
    assert_eq!(status, 200);
}

/// A seeded generator of statement shapes that have outgrown limits
/// before: CTE chains (plain and doubling), join chains, recursive CTEs,
/// string builders, windows over growing frames and groupings.
struct Shapes(u64);

impl Shapes {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn statement(&mut self) -> String {
        match self.below(8) {
            0 => chained_ctes(1 + self.below(200) as usize),
            1 => {
                let n = 2 + self.below(20);
                let ctes: Vec<String> = (1..n)
                    .map(|i| format!("c{i} AS (SELECT * FROM c{p} UNION ALL SELECT * FROM c{p})", p = i - 1))
                    .collect();
                format!("WITH c0 AS (SELECT 1 AS x), {} SELECT count(*) FROM c{}", ctes.join(", "), n - 1)
            }
            2 => {
                // Keys that do not multiply the rows, or the first few that do.
                let n = 2 + self.below(300) as usize;
                let key = if n > 3 { "session_id" } else { "country" };
                let joins: Vec<String> =
                    (1..n).map(|i| format!("JOIN clickstream t{i} ON t{i}.{key} = t0.{key}")).collect();
                format!("SELECT count(*) FROM clickstream t0 {}", joins.join(" "))
            }
            3 => {
                let step = ["n + 1", "n * 2", "n + n"][self.below(3) as usize];
                let grow = ["s", "s || s", "s || 'x'", "repeat(s, 2)", "concat(s, s, s)"][self.below(5) as usize];
                let stop = ["", " WHERE n < 100", " WHERE n < 100000"][self.below(3) as usize];
                format!(
                    "WITH RECURSIVE r(n, s) AS (SELECT 1, 'x' UNION ALL SELECT {step}, {grow} FROM r{stop}) \
                     SELECT count(*), max(length(s)) FROM r"
                )
            }
            4 => {
                let size = 10u64.pow(1 + self.below(9) as u32);
                let builder = [
                    format!("repeat(url, {size})"),
                    format!("lpad(url, {size})"),
                    format!("replace(url, '/', repeat('y', {size}))"),
                    format!("concat(url, repeat(url, {size}), url)"),
                    format!("url || repeat(url, {size})"),
                    format!("array_repeat(url, {size})"),
                ][self.below(6) as usize]
                    .clone();
                format!("SELECT max(length(CAST({builder} AS VARCHAR))) FROM clickstream")
            }
            5 => {
                let function =
                    ["string_agg(url, ',')", "array_agg(url)", "count(*)", "sum(latency_ms)", "first_value(url)"]
                        [self.below(5) as usize];
                // Running frames, sliding ones, and whole partitions (which
                // repeat one value into every row).
                let window = [
                    "ORDER BY ts",
                    "ORDER BY session_id",
                    "ORDER BY country, ts",
                    "ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW",
                    "ORDER BY ts ROWS BETWEEN 10 PRECEDING AND CURRENT ROW",
                    "",
                    "PARTITION BY country",
                    "PARTITION BY session_id",
                    "ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING",
                ][self.below(9) as usize];
                format!(
                    "SELECT max(length(CAST(w AS VARCHAR))) FROM (SELECT {function} OVER ({window}) AS w FROM clickstream)"
                )
            }
            6 => {
                // Cross and equi-joins repeating each build row into every
                // probe row it meets, read as they are or copied (a cast).
                let build = [
                    "SELECT country, string_agg(url, ',') AS v FROM clickstream GROUP BY country",
                    "SELECT country, url AS v FROM clickstream LIMIT 100",
                    "SELECT country, repeat(url, 8000) AS v FROM clickstream LIMIT 10",
                ][self.below(3) as usize];
                let probe = ["clickstream", "(SELECT * FROM clickstream LIMIT 1000)"][self.below(2) as usize];
                let join = ["CROSS JOIN", "JOIN"][self.below(2) as usize];
                let on = if join == "JOIN" { " ON a.country = b.country" } else { "" };
                let read = ["length(a.v)", "length(arrow_cast(a.v, 'LargeUtf8'))"][self.below(2) as usize];
                format!("SELECT max({read}), count(*) FROM ({build}) a {join} {probe} b{on}")
            }
            _ => {
                let key = ["country", "url", "session_id", "country, url"][self.below(4) as usize];
                let aggregate = ["count(*)", "string_agg(url, ',')", "array_agg(url)", "count(DISTINCT url)"]
                    [self.below(4) as usize];
                format!("SELECT {key}, {aggregate} FROM clickstream GROUP BY {key} ORDER BY 1 LIMIT 10")
            }
        }
    }
}

/// Seeded statement shapes, for a bounded time: every one gets an answer,
/// `SELECT 1` stays under a second, the peak RSS under the pool plus the
/// allowance, and the query threads fall idle after each answer.
#[test]
fn seeded_statement_shapes_keep_every_limit() {
    let q = Quickstart::start();
    let stop = Arc::new(AtomicBool::new(false));
    let probe = select_1_probe(q.addr.clone(), stop.clone());
    let seed = std::env::var("SLUICE_SHAPES_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_5a9e);
    eprintln!("seed {seed} (SLUICE_SHAPES_SEED)");
    let mut shapes = Shapes(seed);
    let started = Instant::now();
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    while started.elapsed() < Duration::from_secs(90) {
        let sql = shapes.statement();
        let sent = clock();
        let (status, body) = q.sql(&sql);
        let shown = &sql[..sql.len().min(100)];
        eprintln!("{status} ({sent} to {}): {shown}", clock());
        *by_status.entry(status).or_default() += 1;
        assert!(matches!(status, 200 | 400 | 413 | 503 | 504), "{shown}… answered {status}: {body}\n{}", q.log());
        assert!(!body.to_string().contains("panicked"), "{body}");
        settles(&q, &sql);
    }
    eprintln!("statuses: {by_status:?}");
    stop.store(true, Ordering::Relaxed);
    let (_, slowest) = probe.join().expect("SELECT 1 always answered 200");
    assert!(slowest < Duration::from_secs(1), "SELECT 1 took {slowest:?}");
    assert!(q.peak_rss() < RSS_LIMIT_BYTES, "peak RSS {}", q.peak_rss());
    assert!(!q.log().contains("panicked"), "{}", q.log());
}
