//! Whether each partition a worker is assigned makes progress.
//!
//! A partition is *stalled* when it has not progressed for longer than the
//! worker's `stall_timeout` while it has work: records waiting in Kafka
//! beyond what it consumed, a failure it has not recovered from, or no
//! lease at all. Progress is consuming past the highest offset this worker
//! ever consumed of the partition, or committing a segment; re-reading the
//! same records after a restart is not progress. A quiet topic is never
//! stalled. `/health` turns unhealthy while any partition is stalled and
//! names each with its reason; `sluice status` shows them.
//!
//! A whole pipeline can fail before it has partitions: it could not start
//! (a deep store or Kafka client its config cannot make), or its Kafka
//! source cannot be read (a wrong password, an untrusted certificate,
//! unreachable brokers), so not even the topic's partitions are known. Such
//! a pipeline is *failing* once that lasted `stall_timeout`, and shown the
//! same way.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// What the worker knows about one assigned partition.
#[derive(Debug, Clone)]
struct State {
    owned: bool,
    /// When progress was last made (or the partition became this worker's).
    progress_at: Instant,
    /// The highest offset consumed by this worker.
    consumed: Option<i64>,
    /// Records in Kafka beyond the consumed offset, when last measured.
    lag: Option<i64>,
    /// The last failure since the last commit.
    failure: Option<String>,
}

/// A stalled partition, as `/health` and `sluice status` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stall {
    pub table: String,
    pub partition: i32,
    /// Seconds since the partition last made progress.
    pub stalled_for_s: u64,
    pub reason: String,
}

/// A pipeline that cannot run on this worker, as `/health` and `sluice
/// status` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PipelineFailure {
    pub table: String,
    /// Seconds since the failure began.
    pub failing_for_s: u64,
    pub reason: String,
}

/// The worker's view of its partitions' progress, shared by the
/// supervisors, the partition tasks and the HTTP endpoint.
#[derive(Debug, Default)]
pub struct PartitionHealth {
    /// By table, then partition: a report (after every consumed batch) finds
    /// its entry by the borrowed table name, without allocating.
    tables: Mutex<BTreeMap<String, BTreeMap<i32, State>>>,
    /// Failing pipelines: since when, and the latest reason.
    pipelines: Mutex<BTreeMap<String, (Instant, String)>>,
}

impl PartitionHealth {
    fn update(&self, table: &str, partition: i32, f: impl FnOnce(&mut State)) {
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        let partitions = match tables.get_mut(table) {
            Some(partitions) => partitions,
            None => tables.entry(table.to_string()).or_default(),
        };
        let state = partitions.entry(partition).or_insert_with(|| State {
            owned: false,
            progress_at: Instant::now(),
            consumed: None,
            lag: None,
            failure: None,
        });
        f(state);
    }

    /// The partitions of `table` assigned to this worker now; the others
    /// are forgotten.
    pub fn assigned(&self, table: &str, partitions: &[i32]) {
        {
            let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(states) = tables.get_mut(table) {
                states.retain(|p, _| partitions.contains(p));
            }
        }
        for &p in partitions {
            self.update(table, p, |_| {});
        }
    }

    /// Whether a task holds the partition's lease and runs.
    pub fn owned(&self, table: &str, partition: i32, owned: bool) {
        self.update(table, partition, |s| s.owned = owned);
    }

    /// Records up to `offset` were consumed.
    pub fn consumed(&self, table: &str, partition: i32, offset: i64) {
        self.update(table, partition, |s| {
            if s.consumed.is_none_or(|c| offset > c) {
                s.consumed = Some(offset);
                s.progress_at = Instant::now();
            }
        });
    }

    /// The highest offset this worker consumed of the partition.
    pub fn consumed_offset(&self, table: &str, partition: i32) -> Option<i64> {
        let tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        tables.get(table).and_then(|p| p.get(&partition)).and_then(|s| s.consumed)
    }

    pub fn lag(&self, table: &str, partition: i32, lag: i64) {
        self.update(table, partition, |s| s.lag = Some(lag));
    }

    /// A segment was committed: progress, and any failure is over.
    pub fn committed(&self, table: &str, partition: i32) {
        self.update(table, partition, |s| {
            s.progress_at = Instant::now();
            s.failure = None;
        });
    }

    pub fn failed(&self, table: &str, partition: i32, reason: String) {
        self.update(table, partition, |s| s.failure = Some(reason));
    }

    /// The pipeline of `table` cannot run: `reason` says why. The failure
    /// dates from the first report since the pipeline last ran.
    pub fn pipeline_failing(&self, table: &str, reason: String) {
        let mut pipelines = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        match pipelines.get_mut(table) {
            Some((_, latest)) => *latest = reason,
            None => {
                pipelines.insert(table.to_string(), (Instant::now(), reason));
            }
        }
    }

    /// The pipeline of `table` runs (or is no longer run here).
    pub fn pipeline_running(&self, table: &str) {
        self.pipelines.lock().unwrap_or_else(|e| e.into_inner()).remove(table);
    }

    /// Every pipeline failing for longer than `timeout`.
    pub fn failing_pipelines(&self, timeout: Duration) -> Vec<PipelineFailure> {
        let pipelines = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        pipelines
            .iter()
            .filter(|(_, (since, _))| since.elapsed() > timeout)
            .map(|(table, (since, reason))| PipelineFailure {
                table: table.clone(),
                failing_for_s: since.elapsed().as_secs(),
                reason: reason.clone(),
            })
            .collect()
    }

    /// Every partition without progress for longer than `timeout` while it
    /// has work.
    pub fn stalled(&self, timeout: Duration) -> Vec<Stall> {
        let tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        tables
            .iter()
            .flat_map(|(table, partitions)| partitions.iter().map(move |(partition, s)| (table, partition, s)))
            .filter_map(|(table, partition, s)| {
                let idle = s.progress_at.elapsed();
                if idle <= timeout {
                    return None;
                }
                let reason = if let Some(failure) = &s.failure {
                    format!("failing: {failure}")
                } else if !s.owned {
                    "assigned to this worker but not owned: its lease could not be acquired".to_string()
                } else if let Some(lag) = s.lag.filter(|l| *l > 0) {
                    format!("{lag} records waiting in Kafka, none consumed")
                } else {
                    return None;
                };
                Some(Stall { table: table.clone(), partition: *partition, stalled_for_s: idle.as_secs(), reason })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_partitions_with_work_stall() {
        let h = PartitionHealth::default();
        h.assigned("t", &[0, 1, 2, 3]);
        for p in 0..3 {
            h.owned("t", p, true);
        }
        h.lag("t", 0, 0); // quiet
        h.lag("t", 1, 10); // waiting records
        h.failed("t", 2, "upload: disk full".into());
        // 3: assigned, never owned
        std::thread::sleep(Duration::from_millis(30));
        let stalled = h.stalled(Duration::from_millis(10));
        let parts: Vec<i32> = stalled.iter().map(|s| s.partition).collect();
        assert_eq!(parts, vec![1, 2, 3], "{stalled:?}");
        assert!(stalled[1].reason.contains("disk full"));
        // Progress clears it; re-reading old offsets is not progress.
        h.consumed("t", 1, 5);
        h.committed("t", 2);
        let parts: Vec<i32> = h.stalled(Duration::from_millis(20)).iter().map(|s| s.partition).collect();
        assert_eq!(parts, vec![3]);
        std::thread::sleep(Duration::from_millis(30));
        h.consumed("t", 1, 3);
        let parts: Vec<i32> = h.stalled(Duration::from_millis(20)).iter().map(|s| s.partition).collect();
        assert_eq!(parts, vec![1, 3], "re-reading offsets already consumed is not progress");
        h.assigned("t", &[0]);
        assert!(h.stalled(Duration::ZERO).is_empty());
    }

    #[test]
    fn a_pipeline_fails_from_its_first_report_until_it_runs() {
        let h = PartitionHealth::default();
        h.pipeline_failing("t", "SASL authentication error".into());
        assert!(h.failing_pipelines(Duration::from_secs(60)).is_empty(), "not yet for long");
        std::thread::sleep(Duration::from_millis(30));
        h.pipeline_failing("t", "still failing".into());
        let failing = h.failing_pipelines(Duration::from_millis(20));
        assert_eq!(failing.len(), 1, "{failing:?}");
        assert_eq!(failing[0].reason, "still failing", "the latest reason, the first report's age");
        h.pipeline_running("t");
        assert!(h.failing_pipelines(Duration::ZERO).is_empty());
    }
}
