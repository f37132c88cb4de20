//! Superset connects to a query node the way it connects to Pinot: with
//! pinotdb's SQLAlchemy dialect (PyPI's `pinotdb` and `sqlalchemy`,
//! installed by `scripts/test`). Its inspector lists the tables and their
//! columns from the controller API, and its queries answer as `/query/sql`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{CommittedClicks, start_query_node};
use serde_json::{Value, json};
use sluice_testkit::net::{free_port, http_request_with};
use sluice_testkit::wait_until;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinotdbs_sqlalchemy_dialect_lists_and_queries_tables() {
    let statuses = [200, 404, 500];
    let clicks = CommittedClicks::start("superset", 90, |o| (format!("u-{}", o % 5), statuses[(o % 3) as usize])).await;
    let addr = format!("127.0.0.1:{}", free_port().unwrap());
    let auth = "[http.auth]\n[[http.auth.users]]\nusername = \"analyst\"\npassword = \"a-long-enough-password\"\n";
    let config = clicks.query_config(&addr, auth);
    let _node = start_query_node(clicks.dir.path(), &config);
    let basic = "Authorization: Basic YW5hbHlzdDphLWxvbmctZW5vdWdoLXBhc3N3b3Jk\r\n";
    let body = serde_json::to_vec(&json!({ "sql": "SELECT COUNT(*) FROM clicks" })).unwrap();
    let served = || async { http_request_with(&addr, "POST", "/query/sql", &body, basic).1.contains("[[90]]") };
    wait_until("the node serves the segment", Duration::from_secs(30), served).await.unwrap_or_else(|e| {
        panic!("{e}\n{}", std::fs::read_to_string(clicks.dir.path().join("query.log")).unwrap_or_default())
    });

    let (host, port) = addr.split_once(':').unwrap();
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pinotdb_sqlalchemy.py"))
        .args([host, port, "analyst", "a-long-enough-password", "clicks"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["tables"], json!(["clicks"]));
    let columns = seen["columns"].as_object().unwrap();
    assert_eq!(columns.keys().collect::<Vec<_>>(), ["status", "ts", "user_id"], "{columns:?}");
    assert_eq!(seen["rows"], json!([["200", "30"], ["404", "30"], ["500", "30"]]));
}
