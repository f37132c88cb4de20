//! The README's deployment files are valid, and every `sluice` command it
//! shows names a real subcommand: what a new user copies works.

use std::path::Path;
use std::process::Command;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// `(name, text)` of every ```toml block preceded by `<!-- file: name -->`.
fn named_files(readme: &str) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.trim().strip_prefix("<!-- file: ").and_then(|l| l.strip_suffix(" -->")) else {
            continue;
        };
        assert_eq!(lines.next().map(str::trim), Some("```toml"), "{name}: a ```toml block must follow");
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        files.push((name.to_string(), body.join("\n") + "\n"));
    }
    files
}

#[test]
fn deployment_files_validate() {
    let files = named_files(&readme());
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["clickstream.toml", "worker.toml", "query.toml", "orders_avro.toml"]);
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in &files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("validate")
        .args(&names)
        // The one variable the files use without a default: a secret.
        .env("KAFKA_PASSWORD", "from-the-environment")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout.matches("OK ").count(), names.len(), "{stdout}");
}

#[test]
fn every_sluice_command_shown_exists() {
    let readme = readme();
    let mut in_shell = false;
    let mut checked = 0;
    for line in readme.lines() {
        match line.trim() {
            "```sh" => in_shell = true,
            "```" => in_shell = false,
            command if in_shell => {
                let words: Vec<&str> = command.split_whitespace().collect();
                let sub: Vec<&str> = match words.as_slice() {
                    ["sluice", "pipeline", sub, ..] => vec!["pipeline", sub],
                    ["sluice", sub, ..] => vec![sub],
                    ["cargo", "run", rest @ ..] => match rest.iter().position(|w| *w == "--") {
                        Some(i) => rest[i + 1..].iter().take(1).copied().collect(),
                        None => continue,
                    },
                    _ => continue,
                };
                let status = Command::new(env!("CARGO_BIN_EXE_sluice"))
                    .args(&sub)
                    .arg("--help")
                    .stdout(std::process::Stdio::null())
                    .status()
                    .unwrap();
                assert!(status.success(), "README command `{command}`: `sluice {}` does not exist", sub.join(" "));
                checked += 1;
            }
            _ => {}
        }
    }
    assert!(checked >= 8, "only {checked} commands found");
}
