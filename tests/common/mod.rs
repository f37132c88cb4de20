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
