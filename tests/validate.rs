//! `sluice validate` as a user runs it: exit codes and messages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `sluice <args>` with the secrets the examples read from the environment.
fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env("SLUICE_FLIGHT_TOKEN", "a-cluster-secret-from-the-environment")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_validates() {
    let files = examples();
    assert!(files.len() >= 4, "examples/ holds pipelines, a worker and a query node");
    let args: Vec<&str> = std::iter::once("validate").chain(files.iter().map(|p| p.to_str().unwrap())).collect();
    let out = sluice(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.lines().filter(|l| l.starts_with("OK")).count(), files.len(), "{stdout}");
    let pipelines = stdout.lines().filter(|l| l.contains(": pipeline for table")).count();
    assert!(pipelines >= 2, "at least two example pipelines: {stdout}");
}

#[test]
fn invalid_files_fail_with_file_field_found_and_expected() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/clickstream.toml");
    let text = std::fs::read_to_string(&good)
        .unwrap()
        .replace("type = \"int32\"\nnullable = false", "type = \"int128\"\nnullable = false");
    std::fs::write(&bad, text).unwrap();
    let out = sluice(&["validate", good.to_str().unwrap(), bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().next().unwrap();
    assert!(
        line.starts_with(&format!("{}: schema.columns[6].type: found unknown variant `int128`", bad.display())),
        "{stderr}"
    );
    assert!(line.contains("expected one of `string`"), "{stderr}");
    assert!(stderr.contains("1 of 2 file(s) invalid"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK"));
}

#[test]
fn syntax_errors_give_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.toml");
    std::fs::write(&bad, "table = \"t\"\n[source\nbootstrap_servers = \"k:1\"\n").unwrap();
    let out = sluice(&["validate", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with(&format!("{}:2:", bad.display())), "{stderr}");
    assert!(stderr.contains("TOML syntax error"), "{stderr}");
}

#[test]
fn a_worker_file_checks_the_pipeline_files_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let worker = dir.path().join("worker.toml");
    std::fs::write(&worker, "[coordinator]\nconnect = \"embedded\"\n[pipelines]\nfiles = [\"missing.toml\"]\n")
        .unwrap();
    let out = sluice(&["validate", "--kind", "worker", worker.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pipelines.files[0]: found \"missing.toml\", which does not exist"), "{stderr}");
}

#[test]
fn unrecognisable_and_unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("odd.toml");
    std::fs::write(&odd, "[coordinator]\nconnect = \"embedded\"\n").unwrap();
    let out = sluice(&["validate", odd.to_str().unwrap(), "/nonexistent/x.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot tell whether this is a pipeline, worker or query-node config"), "{stderr}");
    assert!(stderr.contains("/nonexistent/x.toml: cannot read the file"), "{stderr}");
    let out = sluice(&["validate", "--kind", "query", odd.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `--previous` checks a pipeline as a change of the running one: an added
/// column with a default passes; a column that changes type, a non-null
/// column removed and a non-null column added without a default fail, each
/// named.
#[test]
fn a_schema_change_is_checked_against_the_running_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let running = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/clickstream.toml");
    let text = std::fs::read_to_string(&running).unwrap();
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let added = write(
        "added.toml",
        format!(
            "{text}\n[[schema.columns]]\nname = \"plan\"\ntype = \"string\"\nnullable = false\ndefault = \"free\"\n"
        ),
    );
    let out = sluice(&["validate", "--previous", running.to_str().unwrap(), added.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let changed = text.replace("name = \"status\"\ntype = \"int32\"", "name = \"status\"\ntype = \"int64\"")
        + "\n[[schema.columns]]\nname = \"plan\"\ntype = \"string\"\nnullable = false\n";
    let changed = write("changed.toml", changed);
    let out = sluice(&["validate", "--previous", running.to_str().unwrap(), changed.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a compatible change of the running pipeline"), "{stderr}");
    assert!(stderr.contains("schema.columns.status.type: found int64 (the live table's is int32)"), "{stderr}");
    assert!(stderr.contains("schema.columns.plan: found added as not nullable without a default"), "{stderr}");
}
