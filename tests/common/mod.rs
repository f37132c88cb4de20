//! What the end-to-end tests that play the workers' part share: the
//! `clicks` pipeline, sealing a segment into a `file://` deep store with
//! the catalog record a worker would commit, and starting `sluice query`.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};

use sluice_testkit::GuardedChild;

pub mod catalog;
pub use catalog::*;

/// `sluice query --config <config>`, logging to `dir/query.log`.
pub fn start_query_node(dir: &Path, config: &Path) -> GuardedChild {
    let log = std::fs::File::options().create(true).append(true).open(dir.join("query.log")).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.args(["query", "--config"]).arg(config).stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
    GuardedChild::spawn(command).unwrap()
}

/// A real ZooKeeper with the `clicks` pipeline applied and one committed
/// segment of partition 0 (offsets `0..rows`; `row(o)` gives each row's
/// user and status) in a `file://` deep store: what a query node serves.
pub struct CommittedClicks {
    pub zk: sluice_testkit::ZooKeeper,
    pub dir: tempfile::TempDir,
    pub root: String,
}

impl CommittedClicks {
    pub async fn start(name: &str, rows: i64, row: impl Fn(i64) -> (String, i32)) -> Self {
        use sluice_coordinator::{Coordinator, ZooKeeperCoordinator, ZooKeeperOptions};
        let zk = sluice_testkit::ZooKeeper::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = format!("/{}", sluice_testkit::unique_name(name));
        let options = ZooKeeperOptions::plain(zk.connect_string(), &root, std::time::Duration::from_secs(4));
        let coordinator = ZooKeeperCoordinator::connect(options).await.unwrap();
        coordinator.apply_pipeline("clicks", PIPELINE).await.unwrap();
        let mut lease = coordinator.acquire("clicks", 0, "test-writer").await.unwrap().expect("free partition");
        let (_, _, record) = seal_segment(&dir.path().join("deep"), &schema(), &lease, 0, 0, rows, row);
        coordinator.commit(&mut lease, &record).await.unwrap();
        CommittedClicks { zk, dir, root }
    }

    /// Writes the config of query node `q1` following this catalog, with
    /// HTTP on `addr` and `extra` appended; returns its path.
    pub fn query_config(&self, addr: &str, extra: &str) -> std::path::PathBuf {
        query_config(self.dir.path(), &self.zk.connect_string(), &self.root, addr, extra)
    }
}

/// Writes `dir/query.toml`, the config of query node `q1` following the
/// catalog at `root` on ZooKeeper `connect`, with HTTP on `addr` and
/// `extra` appended; returns its path.
pub fn query_config(dir: &Path, connect: &str, root: &str, addr: &str, extra: &str) -> std::path::PathBuf {
    let path = dir.join("query.toml");
    let text = format!(
        "node_id = \"q1\"\ncache_dir = \"{}\"\n[coordinator]\nconnect = \"{connect}\"\nroot = \"{root}\"\n[http]\nlisten = \"{addr}\"\n{extra}",
        dir.join("cache").display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}
