//! Follows the segment catalog: every committed segment of every pipeline is
//! copied from the deep store into the local cache, verified, memory-mapped
//! and served; segments removed from the catalog stop being served and
//! leave the cache.
//!
//! A segment is served only after two checks: the whole file's CRC32C and
//! size equal what its catalog entry recorded at commit, and every section
//! passes its own checksum when the file is opened. A file failing either is
//! never served: it is counted, logged, deleted from the cache and fetched
//! again later with backoff (the deep store may be repaired). A cached file
//! that passes both checks is served without downloading again, which is how
//! a restarted node comes back without re-reading the deep store.
//!
//! Opening validates the Arrow data too (offsets, lengths, dictionary keys),
//! because checksums prove only that a file is what some writer wrote. A
//! file that fails to open is moved to `cache_dir/.quarantine/` (so it is
//! never reloaded from the cache, on this run or after a restart), counted,
//! and fetched again; a segment that keeps failing is reported as corrupt
//! ([`NodeHealth`], `/health`, `sluice_query_segments_corrupt`) and never
//! served, while every other segment is.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use sluice_coordinator::{Coordinator, SegmentRecord};
use sluice_segments::Segment;
use sluice_storage::Resolver;
use tokio::sync::watch;

use crate::engine::QueryEngine;
use crate::scan::table::SegmentTable;
use crate::tail::{self, TableView, TailBudget};
use crate::topology::{RemoteSegment, TimeRange, UnservedSegment};

/// Resync even without a watch firing, in case a notification was missed
/// across a session change.
const RESYNC: Duration = Duration::from_secs(30);
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

struct Loaded {
    uri: String,
    segment: Arc<Segment>,
    cached: PathBuf,
}

struct Failure {
    attempts: u32,
    retry_at: Instant,
}

/// What the node reports about the segments it refuses.
#[derive(Default)]
pub struct NodeHealth {
    corrupt: std::sync::Mutex<BTreeMap<(String, String), String>>,
    views: std::sync::Mutex<BTreeMap<String, Arc<TableView>>>,
}

/// A segment the node refused more than once, with the last reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CorruptSegment {
    pub table: String,
    pub segment: String,
    pub reason: String,
}

impl NodeHealth {
    /// The tail consumer of every served table that follows its tail.
    pub fn tail_consumers(&self) -> Vec<crate::tail::ConsumerStatus> {
        let views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        views.values().filter_map(|v| v.consumer_status()).collect()
    }

    /// The real-time tail of every served table, by partition.
    pub fn tails(&self) -> Vec<crate::tail::TailStatus> {
        let views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        views.values().flat_map(|v| v.status()).collect()
    }

    pub fn corrupt(&self) -> Vec<CorruptSegment> {
        let corrupt = self.corrupt.lock().unwrap_or_else(|e| e.into_inner());
        corrupt
            .iter()
            .map(|((table, segment), reason)| CorruptSegment {
                table: table.clone(),
                segment: segment.clone(),
                reason: reason.clone(),
            })
            .collect()
    }

    fn set(&self, table: &str, segment: &str, reason: Option<&str>) {
        let mut corrupt = self.corrupt.lock().unwrap_or_else(|e| e.into_inner());
        let key = (table.to_string(), segment.to_string());
        match reason {
            Some(reason) => {
                corrupt.insert(key, reason.to_string());
            }
            None => {
                corrupt.remove(&key);
            }
        }
        let count = corrupt.keys().filter(|(t, _)| t == table).count();
        metrics::gauge!("sluice_query_segments_corrupt", "table" => table.to_string()).set(count as f64);
    }

    fn retain(&self, table: &str, keep: impl Fn(&str) -> bool) {
        let gone: Vec<String> = {
            let corrupt = self.corrupt.lock().unwrap_or_else(|e| e.into_inner());
            corrupt.keys().filter(|(t, s)| t == table && !keep(s)).map(|(_, s)| s.clone()).collect()
        };
        for segment in gone {
            self.set(table, &segment, None);
        }
    }
}

/// A refused segment is reported corrupt from its second failed attempt:
/// the first may be a cached copy damaged locally, healed by a fresh fetch.
const CORRUPT_AFTER: u32 = 2;

#[derive(Default)]
struct TableState {
    table: Option<Arc<SegmentTable>>,
    /// The table's committed segments and real-time tail, published together.
    view: Option<Arc<TableView>>,
    segments: BTreeMap<String, Loaded>,
    failures: HashMap<String, Failure>,
}

pub struct CatalogFollower {
    coordinator: Arc<dyn Coordinator>,
    engine: Arc<QueryEngine>,
    cache_dir: PathBuf,
    /// Reaches the deep stores the catalog's URIs name.
    resolver: Resolver,
    tables: BTreeMap<String, TableState>,
    health: Arc<NodeHealth>,
    /// The node's tail memory; disabled (committed segments only) unless set.
    tails: Arc<TailBudget>,
    shutdown: Option<watch::Receiver<bool>>,
    /// In a cluster: the other query nodes, and where this node publishes
    /// what it serves.
    cluster: Option<(Arc<crate::membership::Cluster>, Arc<watch::Sender<sluice_coordinator::NodeInfo>>)>,
}

impl CatalogFollower {
    pub fn new(
        coordinator: Arc<dyn Coordinator>,
        engine: Arc<QueryEngine>,
        cache_dir: PathBuf,
        health: Arc<NodeHealth>,
    ) -> Self {
        CatalogFollower {
            coordinator,
            engine,
            cache_dir,
            resolver: Resolver::new(Default::default()),
            tables: BTreeMap::new(),
            health,
            tails: TailBudget::new(0),
            shutdown: None,
            cluster: None,
        }
    }

    /// Serves only this node's share of the segments of `cluster`, and
    /// publishes what it serves through `registration`.
    pub fn in_cluster(
        mut self,
        cluster: Arc<crate::membership::Cluster>,
        registration: watch::Sender<sluice_coordinator::NodeInfo>,
    ) -> Self {
        self.cluster = Some((cluster, Arc::new(registration)));
        self
    }

    /// Reaches deep stores with `resolver` (the node's object-store options).
    pub fn with_resolver(mut self, resolver: Resolver) -> Self {
        self.resolver = resolver;
        self
    }

    /// Also serves the real-time tail of every table whose applied config
    /// parses on this node, within `budget`.
    pub fn with_tails(mut self, budget: Arc<TailBudget>) -> Self {
        self.tails = budget;
        self
    }

    /// Follows the catalog until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        self.shutdown = Some(shutdown.clone());
        loop {
            let mut watches: Vec<BoxFuture<'static, ()>> = Vec::new();
            let wait = match self.sync(&mut watches).await {
                Ok(next_retry) => next_retry.map_or(RESYNC, |at| at.saturating_duration_since(Instant::now())),
                Err(e) => {
                    tracing::warn!(error = %e, "reading the segment catalog failed; retrying");
                    RETRY_MIN
                }
            };
            watches.push(tokio::time::sleep(wait.max(Duration::from_millis(50))).boxed());
            if let Some((cluster, _)) = &self.cluster {
                let cluster = cluster.clone();
                watches.push(async move { cluster.changed.notified().await }.boxed());
            }
            tokio::select! {
                _ = futures::future::select_all(watches) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// One pass over the catalog. Returns when a failed segment is due for
    /// another try, if any.
    pub async fn sync(
        &mut self,
        watches: &mut Vec<BoxFuture<'static, ()>>,
    ) -> Result<Option<Instant>, sluice_coordinator::CoordError> {
        let (configs, change) = self.coordinator.pipelines().await?;
        watches.push(change);
        let names = self.coordinator.known_pipelines().await?;
        let mut next_retry: Option<Instant> = None;
        for name in &names {
            let (records, change) = self.coordinator.segments(name).await?;
            watches.push(change);
            let config = configs.iter().find(|(n, _)| n == name).map(|(_, text)| text.as_str());
            if let Some(at) = self.sync_table(name, config, records).await {
                next_retry = Some(next_retry.map_or(at, |t| t.min(at)));
            }
        }
        self.publish_serving();
        let gone: Vec<String> = self.tables.keys().filter(|t| !names.contains(t)).cloned().collect();
        for name in gone {
            if let Some(state) = self.tables.remove(&name) {
                tracing::info!(table = %name, "pipeline removed; no longer served");
                self.engine.deregister(&name);
                if let Some(view) = &state.view {
                    view.close();
                    self.health.views.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
                }
                for loaded in state.segments.values() {
                    let _ = std::fs::remove_file(&loaded.cached);
                }
                set_gauges(&name, &TableState::default());
                self.health.retain(&name, |_| false);
            }
        }
        Ok(next_retry)
    }

    /// Publishes the segments this node serves, when they changed.
    fn publish_serving(&self) {
        let Some((_, registration)) = &self.cluster else { return };
        let serving: BTreeMap<String, Vec<String>> = self
            .tables
            .iter()
            .filter(|(_, state)| !state.segments.is_empty())
            .map(|(table, state)| (table.clone(), state.segments.keys().cloned().collect()))
            .collect();
        registration.send_if_modified(|info| {
            let changed = info.serving != serving;
            info.serving = serving;
            changed
        });
    }

    async fn sync_table(&mut self, name: &str, config: Option<&str>, records: Vec<SegmentRecord>) -> Option<Instant> {
        let state = self.tables.entry(name.to_string()).or_default();
        let parsed = config.and_then(|text| parse_config(name, text));
        if let Some(config) = &parsed {
            let schema = crate::scan::evolution::pipeline_schema(config);
            match &state.table {
                None => state.table = Some(Arc::new(SegmentTable::new(name, &schema))),
                // A pipeline applied with new columns: served from now on,
                // by the segments written before as their defaults.
                Some(table) => match table.evolve(&schema) {
                    Ok(true) => tracing::info!(table = %name, "the pipeline's columns changed; serving them"),
                    Ok(false) => {}
                    Err(reason) => {
                        tracing::warn!(table = %name, %reason, "the pipeline's new columns are not compatible; keeping the served ones")
                    }
                },
            }
        }
        let wanted: HashMap<&str, &SegmentRecord> = records.iter().map(|r| (r.name.as_str(), r)).collect();
        // In a cluster, the segments this node should serve; a segment it
        // no longer should is dropped only once its assignees serve it.
        let cluster = self.cluster.as_ref().map(|(c, _)| c.clone());
        let replication = parsed.as_ref().and_then(|c| c.replication);
        let assignment = cluster.as_ref().map(|c| {
            let names: Vec<String> = records.iter().map(|r| r.name.clone()).collect();
            c.assignment(name, &names, replication)
        });
        let mine = |segment: &str| match (&assignment, &cluster) {
            (Some(a), Some(c)) => a.get(segment).is_some_and(|holders| holders.iter().any(|h| h == c.self_id())),
            _ => true,
        };
        let mut changed = false;
        state.segments.retain(|segment, loaded| {
            let in_catalog = wanted.get(segment.as_str()).is_some_and(|r| r.uri == loaded.uri);
            let handed_over = in_catalog
                && !mine(segment)
                && match (&assignment, &cluster) {
                    (Some(a), Some(c)) => c.served_by_assignees(name, segment, &a[segment.as_str()]),
                    _ => false,
                };
            let keep = in_catalog && !handed_over;
            if !keep {
                if handed_over {
                    tracing::info!(table = %name, segment = %segment, "segment served by its new holders; dropped here");
                } else {
                    tracing::info!(table = %name, segment = %segment, "segment left the catalog; no longer served");
                }
                let _ = std::fs::remove_file(&loaded.cached);
                changed = true;
            }
            keep
        });
        state.failures.retain(|segment, _| wanted.contains_key(segment.as_str()));
        self.health.retain(name, |segment| wanted.contains_key(segment));
        let now = Instant::now();
        let mut next_retry: Option<Instant> = None;
        for record in &records {
            if state.segments.contains_key(&record.name) || !mine(&record.name) {
                continue;
            }
            if let Some(f) = state.failures.get(&record.name)
                && f.retry_at > now
            {
                next_retry = Some(next_retry.map_or(f.retry_at, |t| t.min(f.retry_at)));
                continue;
            }
            let loaded = load(&self.resolver, self.cache_dir.join(name), self.cache_dir.join(QUARANTINE), record).await;
            let accepted = loaded.and_then(|loaded| {
                let table = state
                    .table
                    .get_or_insert_with(|| Arc::new(SegmentTable::new(name, loaded.segment.schema())))
                    .clone();
                match table.accepts(&loaded.segment) {
                    Ok(()) => Ok(loaded),
                    Err(reason) => {
                        let _ = std::fs::remove_file(&loaded.cached);
                        Err(reason)
                    }
                }
            });
            match accepted {
                Ok(loaded) => {
                    tracing::debug!(table = %name, segment = %record.name, rows = record.row_count, "segment loaded");
                    state.failures.remove(&record.name);
                    self.health.set(name, &record.name, None);
                    state.segments.insert(record.name.clone(), loaded);
                    changed = true;
                }
                Err(reason) => {
                    metrics::counter!("sluice_query_segment_load_failures_total", "table" => name.to_string())
                        .increment(1);
                    let failure =
                        state.failures.entry(record.name.clone()).or_insert(Failure { attempts: 0, retry_at: now });
                    failure.attempts += 1;
                    if failure.attempts >= CORRUPT_AFTER {
                        self.health.set(name, &record.name, Some(&reason));
                    }
                    let backoff = crate::retry::backoff(RETRY_MIN, RETRY_MAX, failure.attempts);
                    failure.retry_at = now + backoff;
                    next_retry = Some(next_retry.map_or(failure.retry_at, |t| t.min(failure.retry_at)));
                    tracing::warn!(
                        table = %name, segment = %record.name, uri = %record.uri, attempts = failure.attempts,
                        retry_in = ?backoff, reason = %reason, "segment refused; not served"
                    );
                }
            }
        }
        if let Some(table) = &state.table {
            let view = state
                .view
                .get_or_insert_with(|| {
                    let view = TableView::new(table.clone(), self.tails.clone());
                    if let Some((cluster, registration)) = &self.cluster {
                        view.join_cluster(cluster.clone(), registration.clone());
                    }
                    self.health.views.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), view.clone());
                    view
                })
                .clone();
            let registered = self.engine.table(name).is_some();
            let local: Vec<Arc<Segment>> = state.segments.values().map(|l| l.segment.clone()).collect();
            match &cluster {
                Some(cluster) => {
                    let time_column = parsed.as_ref().map(|c| c.schema.time_column.as_str());
                    let (remote, unserved) = elsewhere(cluster, name, time_column, &records, &state.segments);
                    view.set_committed_with(local, remote, unserved);
                }
                None if changed || !registered => view.set_committed(local),
                None => {}
            }
            if !registered {
                self.engine.register(table.clone());
            }
            if let (Some(config), Some(shutdown)) = (parsed, &self.shutdown) {
                tail::follow(view, Arc::new(config), self.coordinator.clone(), shutdown.clone());
            }
        }
        set_gauges(name, state);
        next_retry
    }
}

/// The committed segments of `table` this node does not hold: served by
/// other live nodes (remote), and by none (the view tells missing from
/// pending, [`TableView::set_committed_with`]). Remote segments carry their
/// records' time ranges of the table's `time_column`, for pruning.
fn elsewhere(
    cluster: &crate::membership::Cluster,
    table: &str,
    time_column: Option<&str>,
    records: &[SegmentRecord],
    loaded: &BTreeMap<String, Loaded>,
) -> (Vec<RemoteSegment>, Vec<UnservedSegment>) {
    let (mut remote, mut unserved) = (Vec::new(), Vec::new());
    let time_column: Option<Arc<str>> = time_column.map(Arc::from);
    for record in records.iter().filter(|r| !loaded.contains_key(&r.name)) {
        if cluster.holders(table, &record.name).is_empty() {
            unserved.push(UnservedSegment {
                name: record.name.clone(),
                partition: record.partition,
                start_offset: record.start_offset,
            });
        } else {
            remote.push(RemoteSegment {
                name: record.name.clone(),
                partition: record.partition,
                end_offset: record.end_offset,
                rows: record.row_count,
                time: record.time_range.zip(time_column.clone()).map(|((from, to), column)| TimeRange {
                    column,
                    from,
                    to,
                }),
            });
        }
    }
    (remote, unserved)
}

fn set_gauges(table: &str, state: &TableState) {
    let bytes: usize = state.segments.values().map(|l| l.segment.size_bytes()).sum();
    metrics::gauge!("sluice_query_segments_loaded", "table" => table.to_string()).set(state.segments.len() as f64);
    metrics::gauge!("sluice_query_bytes_mapped", "table" => table.to_string()).set(bytes as f64);
}

/// An applied pipeline config, when it parses here (its `${VAR}`s may only
/// resolve on workers; the segments then decide the schema, and the table
/// has no tail).
fn parse_config(name: &str, text: &str) -> Option<sluice_config::PipelineConfig> {
    let origin = PathBuf::from(format!("zookeeper:/pipelines/{name}/config"));
    sluice_config::parse_pipeline(text, &origin, &sluice_config::ProcessEnv).ok()
}

/// Where refused files go, under the cache directory (a dot name: never a
/// table's directory).
const QUARANTINE: &str = ".quarantine";

/// Moves a file that failed to open out of the cache, keeping it for a
/// post-mortem (the newest copy of each name).
fn quarantine(file: &Path, quarantine: &Path, reason: &str) {
    metrics::counter!("sluice_query_segments_quarantined_total").increment(1);
    let moved = std::fs::create_dir_all(quarantine)
        .and_then(|()| std::fs::rename(file, quarantine.join(file.file_name().unwrap_or_default())));
    match moved {
        Ok(()) => tracing::warn!(file = %file.display(), %reason, "segment file quarantined"),
        Err(e) => {
            tracing::warn!(file = %file.display(), %reason, error = %e, "cannot quarantine; deleting the file");
            let _ = std::fs::remove_file(file);
        }
    }
}

/// A verified, memory-mapped copy of the record's file in `cache`: the
/// cached copy when it is intact, else a fresh one from the deep store.
async fn load(
    resolver: &Resolver,
    cache: PathBuf,
    quarantine_dir: PathBuf,
    record: &SegmentRecord,
) -> Result<Loaded, String> {
    let file_name = record
        .uri
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .ok_or_else(|| format!("deep-store URI `{}` names no file", record.uri))?
        .to_string();
    let cached = cache.join(&file_name);
    let owned = (cached.clone(), quarantine_dir.clone(), record.clone());
    let from_cache = tokio::task::spawn_blocking(move || open_cached(&owned.0, &owned.1, &owned.2))
        .await
        .map_err(|e| format!("loader panicked: {e}"))?;
    if let Some(loaded) = from_cache {
        return Ok(loaded);
    }
    let fetched = cache.join(format!(".{file_name}.fetched"));
    resolver.download(&record.uri, &fetched).await.map_err(|e| e.to_string())?;
    let record = record.clone();
    tokio::task::spawn_blocking(move || accept_download(&fetched, &cached, &quarantine_dir, &record))
        .await
        .map_err(|e| format!("loader panicked: {e}"))?
}

fn intact(bytes: &[u8], record: &SegmentRecord) -> bool {
    bytes.len() as u64 == record.size_bytes && crc32c::crc32c(bytes) == record.crc32c
}

/// The cached copy of the record's file, when it is there and intact.
fn open_cached(cached: &Path, quarantine_dir: &Path, record: &SegmentRecord) -> Option<Loaded> {
    let bytes = std::fs::read(cached).ok()?;
    if !intact(&bytes, record) {
        // An older or partial copy: not this record's file.
        let _ = std::fs::remove_file(cached);
        return None;
    }
    match Segment::open(cached) {
        Ok(segment) => {
            Some(Loaded { uri: record.uri.clone(), segment: Arc::new(segment), cached: cached.to_path_buf() })
        }
        Err(e) => {
            quarantine(cached, quarantine_dir, &e.to_string());
            None
        }
    }
}

/// Checks a downloaded copy against the catalog's size and checksum, moves
/// it into the cache and opens it.
fn accept_download(
    fetched: &Path,
    cached: &Path,
    quarantine_dir: &Path,
    record: &SegmentRecord,
) -> Result<Loaded, String> {
    let bytes = std::fs::read(fetched).map_err(|e| format!("reading {}: {e}", fetched.display()))?;
    if !intact(&bytes, record) {
        let _ = std::fs::remove_file(fetched);
        return Err(format!(
            "{}: checksum mismatch: the catalog recorded {} bytes with CRC32C {:08x}, the file has {} bytes with {:08x}",
            record.uri,
            record.size_bytes,
            record.crc32c,
            bytes.len(),
            crc32c::crc32c(&bytes)
        ));
    }
    std::fs::rename(fetched, cached).map_err(|e| format!("moving {} into place: {e}", cached.display()))?;
    metrics::counter!("sluice_query_segments_downloaded_total").increment(1);
    match Segment::open(cached) {
        Ok(segment) => Ok(Loaded { uri: record.uri.clone(), segment: Arc::new(segment), cached: cached.to_path_buf() }),
        Err(e) => {
            let reason = e.to_string();
            quarantine(cached, quarantine_dir, &reason);
            Err(reason)
        }
    }
}
