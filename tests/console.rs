//! The web query console in a real headless browser (Debian's `chromium`
//! and `chromium-driver`, Python `selenium`, installed by `scripts/test`)
//! against a real `sluice query` following a real ZooKeeper catalog: the
//! page lists the table and its schema, renders a query's rows as the HTTP
//! endpoint answers them with their counters, draws a time series, shows
//! an error's reason, and is saved as a screenshot (its path is printed).
//! A value that is markup is shown as text, not run.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{CommittedClicks, start_query_node};
use serde_json::{Value, json};
use sluice_testkit::net::{free_port, http_get, http_post};
use sluice_testkit::{unique_name, wait_until};

/// A user id that is markup (and would run script if shown as such).
const HOSTILE: &str = "<img src=x onerror=\"document.title='owned'\">";

fn sql(addr: &str, sql: &str) -> Option<Value> {
    let (_, text) = http_post(addr, "/query/sql", &serde_json::to_vec(&json!({ "sql": sql })).unwrap());
    serde_json::from_str(&text).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_runs_a_query_in_headless_chromium() {
    let statuses = [200, 404, 500];
    let user = |o: i64| match o % 7 {
        0 => HOSTILE.to_string(),
        n => format!("u-{n}"),
    };
    let clicks = CommittedClicks::start("console", 300, |o| (user(o), statuses[(o % 3) as usize])).await;
    let addr = format!("127.0.0.1:{}", free_port().unwrap());
    let config = clicks.query_config(&addr, "");
    let _node = start_query_node(clicks.dir.path(), &config);
    let served =
        || async { sql(&addr, "SELECT COUNT(*) FROM clicks").is_some_and(|a| a["resultTable"]["rows"][0][0] == 300) };
    wait_until("the node serves the segment", Duration::from_secs(30), served).await.unwrap();
    let (status, page) = http_get(&addr, "/");
    assert_eq!(status, 200);
    assert!(page.contains("<script src=\"/console.js\">") && !page.contains("http://") && !page.contains("https://"));

    let query = "SELECT user_id, COUNT(*) AS hits FROM clicks GROUP BY user_id ORDER BY user_id";
    let series = "SELECT ts, status FROM clicks ORDER BY ts LIMIT 60";
    let screenshot = std::env::temp_dir().join(format!("{}.png", unique_name("sluice-console")));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/console_chromium.py");
    let out =
        Command::new("python3").args([script, &addr, query, series, screenshot.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the browser run failed:\n{stderr}");
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    eprintln!("console screenshot: {}", screenshot.display());
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 10_000, "a screenshot of the page");

    assert_eq!(seen["title"], "sluice query console");
    let schema: Vec<&str> = seen["schema"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(schema, ["ts", "TIMESTAMP", "user_id", "STRING", "status", "INT"], "{seen}");
    assert_eq!(seen["header"], json!(["user_id", "hits"]));
    // The rendered rows are the endpoint's.
    let answer = sql(&addr, query).unwrap();
    let expected: Vec<Vec<String>> = answer["resultTable"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array().unwrap().iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).collect()
        })
        .collect();
    assert_eq!(seen["rows"], json!(expected));
    assert_eq!(seen["rows"][0], json!([HOSTILE, "43"]), "markup shown as text");
    let stats = seen["stats"].as_str().unwrap();
    assert!(stats.starts_with("7 rows in ") && stats.contains("1 matched") && stats.contains("of 300"), "{stats}");
    assert_eq!(seen["chart_for_a_table"], false, "no chart for an answer that is no time series");
    assert_eq!(seen["series"], json!(["status"]));
    assert_eq!(seen["points"], json!([60]));
    assert!(seen["error"].as_str().unwrap().contains("nope"), "{seen}");
}
