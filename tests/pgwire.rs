//! The Postgres wire protocol of a real `sluice query` process, driven by
//! real clients: Debian's `psql` and pgjdbc (DBeaver's and Metabase's
//! driver) and PyPI's `psycopg` (installed by `scripts/test`). Their rows are the HTTP endpoint's; a parameterized
//! query binds its parameters (a hostile one stays a string); DDL and a
//! wrong password are refused with Postgres errors; an oversized message
//! closes its connection.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{CommittedClicks, start_query_node};
use serde_json::{Value, json};
use sluice_testkit::net::{free_port, http_request_with};
use sluice_testkit::wait_until;

const USER: &str = "analyst";
const PASSWORD: &str = "a-long-enough-password";
const TOKEN: &str = "a-bearer-token-for-http-0123";

/// The HTTP endpoint's rows of `sql`, each value as text.
fn http_rows(addr: &str, sql: &str) -> Option<Vec<Vec<String>>> {
    let body = serde_json::to_vec(&json!({ "sql": sql })).unwrap();
    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    let (_, text) = http_request_with(addr, "POST", "/query/sql", &body, &bearer);
    let answer: Value = serde_json::from_str(&text).ok()?;
    let rows = answer["resultTable"]["rows"].as_array()?;
    Some(
        rows.iter()
            .map(|r| {
                r.as_array().unwrap().iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).collect()
            })
            .collect(),
    )
}

/// `sluice query` over `clicks`, with `USER`/`PASSWORD` and `TOKEN` on HTTP
/// and the Postgres port: its HTTP address, its Postgres port, the process.
fn start_authenticated_node(clicks: &CommittedClicks) -> (String, u16, sluice_testkit::GuardedChild) {
    let addr = format!("127.0.0.1:{}", free_port().unwrap());
    let pg_port = free_port().unwrap();
    let config = clicks.query_config(
        &addr,
        &format!(
            "[http.auth]\ntokens = [\"{TOKEN}\"]\n[[http.auth.users]]\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\n\
             [pgwire]\nlisten = \"127.0.0.1:{pg_port}\"\n"
        ),
    );
    let node = start_query_node(clicks.dir.path(), &config);
    (addr, pg_port, node)
}

fn psql(port: u16, password: &str, sql: &str) -> std::process::Output {
    Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            USER,
            "-d",
            "sluice",
            "-A",
            "-t",
            "-F",
            "|",
            "-c",
            sql,
        ])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_and_psycopg_answer_as_the_http_endpoint() {
    let statuses = [200, 404, 500];
    let clicks = CommittedClicks::start("pgwire", 300, |o| (format!("u-{}", o % 5), statuses[(o % 3) as usize])).await;
    let (addr, pg_port, _node) = start_authenticated_node(&clicks);
    let served = || async { http_rows(&addr, "SELECT COUNT(*) FROM clicks") == Some(vec![vec!["300".to_string()]]) };
    wait_until("the node serves the segment", Duration::from_secs(30), served).await.unwrap_or_else(|e| {
        panic!("{e}\n{}", std::fs::read_to_string(clicks.dir.path().join("query.log")).unwrap_or_default())
    });

    // psql, simple protocol.
    let query = "SELECT status, COUNT(*) FROM clicks GROUP BY 1 ORDER BY 1";
    let out = psql(pg_port, PASSWORD, query);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Vec<String>> =
        stdout.lines().filter(|l| !l.is_empty()).map(|l| l.split('|').map(str::to_string).collect()).collect();
    assert_eq!(Some(rows.clone()), http_rows(&addr, query));
    assert_eq!(rows, [["200", "100"], ["404", "100"], ["500", "100"]]);
    // Session statements clients send are answered; DDL is refused.
    let out = psql(pg_port, PASSWORD, "SET application_name = 'psql'; SHOW server_version");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = psql(pg_port, PASSWORD, "CREATE TABLE t (a INT)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("ERROR:"), "{stderr}");
    let out = psql(pg_port, "wrong-password", "SELECT 1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.to_lowercase().contains("password authentication failed"), "{stderr}");

    // psycopg, extended protocol with parameters; a hostile string stays one.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pgwire_psycopg.py");
    let run = |user_id: &str| {
        let port = pg_port.to_string();
        let out = Command::new("python3")
            .args([script, "127.0.0.1", &port, USER, PASSWORD, "404", user_id])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let seen = run("u-2");
    let expected = http_rows(
        &addr,
        "SELECT user_id, COUNT(*) AS hits FROM clicks WHERE status = 404 AND user_id <> 'u-2' GROUP BY user_id ORDER BY user_id",
    )
    .unwrap();
    assert_eq!(seen["columns"], json!(["user_id", "hits"]));
    assert_eq!(seen["rows"], json!(expected));
    assert_eq!(expected.len(), 4);
    let hostile = run("x' OR '1'='1");
    assert_eq!(hostile["rows"].as_array().unwrap().len(), 5, "the parameter is a string, not SQL: {hostile}");

    // What tools read about the catalog: psql's \dt and \d, and the
    // statements DBeaver, Metabase (pgjdbc) and Grafana send.
    let out = psql(pg_port, PASSWORD, "\\dt");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.trim(), "public|clicks|table|sluice");
    let out = psql(pg_port, PASSWORD, "\\d clicks");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("user_id|text") && stdout.contains("status|integer"), "{stdout}");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pgwire_catalog.py");
    let port = pg_port.to_string();
    let out = Command::new("python3").args([script, "127.0.0.1", &port, USER, PASSWORD]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let outcomes: serde_json::Map<String, Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(outcomes.len(), 20, "{outcomes:?}");
    let failed: Vec<_> = outcomes.iter().filter(|(_, o)| o.get("error").is_some()).collect();
    assert!(failed.is_empty(), "tool statements refused: {failed:#?}");
    let columns: Vec<&str> = outcomes["JDBC: getColumns (DBeaver, Metabase)"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[2].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["ts", "user_id", "status"]);
    let tables = &outcomes["JDBC: getTables (DBeaver, Metabase)"];
    assert_eq!(tables[0][2], "clicks");
    assert_eq!(tables[0][3], "TABLE");
    assert_eq!(outcomes["Grafana: table picker"], json!([["clicks"]]));
    let types = json!([["ts", "timestamp with time zone"], ["user_id", "text"], ["status", "integer"]]);
    assert_eq!(outcomes["Grafana: column picker"], types, "Postgres' type names, which Grafana's builder reads");
    assert!(outcomes["DBeaver: server version"][0][0].as_str().unwrap().starts_with("PostgreSQL 16"));
    // pgjdbc itself (Debian's libpostgresql-jdbc-java), as DBeaver and
    // Metabase drive it.
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pgwire_jdbc/JdbcCatalog.java");
    let out = Command::new("java")
        .args([
            "-cp",
            "/usr/share/java/postgresql.jar",
            source,
            &format!("127.0.0.1:{pg_port}"),
            USER,
            PASSWORD,
            "clicks",
        ])
        .args(["SELECT status, COUNT(*) AS n FROM clicks WHERE status = ? GROUP BY status", "404"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "product PostgreSQL 16",
            "schema information_schema",
            "schema pg_catalog",
            "schema public",
            "table clicks TABLE",
            "column ts timestamptz",
            "column user_id text",
            "column status int4",
            "row 404 100",
        ]
    );

    // A message claiming 512 MiB closes its connection before any of it is
    // buffered; the node goes on serving.
    use std::io::{Read, Write};
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", pg_port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let parameters = format!("user\0{USER}\0database\0sluice\0\0");
    let mut startup = ((8 + parameters.len()) as i32).to_be_bytes().to_vec();
    startup.extend(196_608i32.to_be_bytes());
    startup.extend(parameters.as_bytes());
    raw.write_all(&startup).unwrap();
    let _ = raw.write_all(b"Q").and_then(|()| raw.write_all(&(512i32 << 20).to_be_bytes()));
    let _ = raw.write_all(&[b'x'; 4096]);
    let mut received = Vec::new();
    assert!(raw.read_to_end(&mut received).is_ok(), "the connection is closed (not left waiting for 512 MiB)");
    let out = psql(pg_port, PASSWORD, "SELECT COUNT(*) FROM clicks");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "300");
    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    let (_, metrics) = http_request_with(&addr, "GET", "/metrics", b"", &bearer);
    assert!(metrics.contains("sluice_query_pgwire_connections"), "{metrics}");
}

/// An address that keeps guessing passwords waits, on the Postgres port and
/// on HTTP alike, and a wrong password answers as an unknown user does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_back_off_on_both_ports() {
    let clicks = CommittedClicks::start("pgwire-logins", 10, |o| (format!("u-{o}"), 200)).await;
    let (addr, pg_port, _node) = start_authenticated_node(&clicks);
    let served = || async { http_rows(&addr, "SELECT COUNT(*) FROM clicks") == Some(vec![vec!["10".to_string()]]) };
    wait_until("the node serves the segment", Duration::from_secs(30), served).await.unwrap();

    // Postgres: the same answer for an unknown user and a wrong password.
    let as_user = |user: &str, password: &str| {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &pg_port.to_string(), "-U", user, "-d", "sluice", "-c", "SELECT 1"])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).replace(user, "<user>"))
    };
    let (ok, unknown) = as_user("nobody", "guess");
    assert!(!ok);
    let (ok, wrong) = as_user(USER, "guess");
    assert!(!ok);
    assert!(wrong.contains("password authentication failed for user"), "{wrong}");
    assert_eq!(unknown, wrong, "an unknown user and a wrong password answer alike");
    // Five failures are free (two above); the sixth shuts the address out.
    for _ in 0..4 {
        let (ok, stderr) = as_user(USER, "guess");
        assert!(!ok && stderr.contains("password authentication failed"), "{stderr}");
    }
    let (ok, stderr) = as_user(USER, PASSWORD);
    assert!(!ok && stderr.contains("too many failed logins"), "even the right password waits: {stderr}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (ok, stderr) = as_user(USER, PASSWORD);
    assert!(ok, "after the backoff the right password logs in: {stderr}");

    // HTTP: the same backoff, answered 429 with Retry-After.
    let basic = |password: &str| {
        use std::io::Write;
        let mut encoded = Vec::new();
        let mut command = Command::new("base64")
            .args(["-w", "0"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        command.stdin.take().unwrap().write_all(format!("{USER}:{password}").as_bytes()).unwrap();
        encoded.extend(command.wait_with_output().unwrap().stdout);
        format!("Authorization: Basic {}\r\n", String::from_utf8(encoded).unwrap())
    };
    let body = serde_json::to_vec(&json!({ "sql": "SELECT 1" })).unwrap();
    let post = |password: &str| http_request_with(&addr, "POST", "/query/sql", &body, &basic(password));
    assert_eq!(post(PASSWORD).0, 200);
    for _ in 0..6 {
        assert_eq!(post("guess").0, 401);
    }
    // Raw, to read the headers too.
    let response = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let head = format!(
            "POST /query/sql HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n{}\
             Content-Length: {}\r\n\r\n",
            basic(PASSWORD),
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&body).unwrap();
        let mut response = String::new();
        let _ = s.read_to_string(&mut response);
        response
    };
    assert!(response.starts_with("HTTP/1.1 429"), "{response}");
    assert!(response.to_ascii_lowercase().contains("retry-after: 1"), "{response}");
    assert!(response.contains("too many failed logins"), "{response}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(post(PASSWORD).0, 200);
}
