//! `sluice quickstart` end to end: the real binary, its SQL endpoint, rows
//! arriving, an example query answering, and a clean exit on SIGINT.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use sluice_testkit::net::{free_port, http_post};
use sluice_testkit::{GuardedChild, wait_until_blocking};

fn query(addr: &str, sql: &str) -> Option<Value> {
    let (status, text) = http_post(addr, "/query/sql", &serde_json::to_vec(&json!({ "sql": sql })).unwrap());
    (status == 200).then(|| serde_json::from_str(&text).ok()).flatten()
}

fn count(addr: &str) -> Option<i64> {
    query(addr, "SELECT COUNT(*) FROM clickstream")?["resultTable"]["rows"][0][0].as_i64()
}

#[test]
fn quickstart_ingests_answers_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let data = dir.path().join("data");
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(["quickstart", "--rate", "2000", "--port", &port.to_string(), "--pg-port"])
        .arg(free_port().unwrap().to_string())
        .arg("--data-dir")
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap());
    let mut child = GuardedChild::spawn(command).unwrap();
    let log = || {
        let out = std::fs::read_to_string(dir.path().join("stdout")).unwrap_or_default();
        let err = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
        format!("stdout:\n{out}\nstderr:\n{err}")
    };

    wait_until_blocking("the first rows to be queryable", Duration::from_secs(60), || count(&addr).unwrap_or(0) > 0)
        .unwrap_or_else(|e| panic!("{e}\n{}", log()));
    let first = count(&addr).unwrap();
    wait_until_blocking("COUNT(*) to grow", Duration::from_secs(30), || count(&addr).unwrap_or(0) > first)
        .unwrap_or_else(|e| panic!("{e}\n{}", log()));

    let answer = query(&addr, "SELECT device, COUNT(*) AS errors FROM clickstream WHERE status >= 500 GROUP BY device")
        .expect("an example query answers");
    assert!(!answer["resultTable"]["rows"].as_array().unwrap().is_empty(), "{answer}");
    wait_until_blocking("the examples to be printed", Duration::from_secs(10), || log().contains("curl -s -X POST"))
        .unwrap_or_else(|e| panic!("{e}\n{}", log()));

    child.signal(libc::SIGINT).unwrap();
    let status = child.wait_timeout(Duration::from_secs(30)).unwrap().unwrap_or_else(|| panic!("no exit\n{}", log()));
    assert!(status.success(), "{status:?}\n{}", log());
    assert!(log().contains("committed exactly once"), "{}", log());
    assert!(data.join("deep-store/clickstream").read_dir().unwrap().next().is_some(), "segments in the deep store");
}
