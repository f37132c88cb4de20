//! A pipeline's table: the set of sealed segments currently served, as a
//! DataFusion [`TableProvider`], and the scan that reads them.
//!
//! Planning does the index work: filters are translated once
//! ([`crate::scan::pushdown`]), segments that cannot match are pruned from their
//! statistics and bloom filters, and the rest are evaluated to bitmaps of
//! matching rows ([`crate::scan::selection`]). The scan then only materializes
//! those rows of the projected columns. Because the bitmaps exist before
//! execution, the scan knows its exact row count when every filter was
//! exact, and DataFusion answers `COUNT(*)` from that statistic without
//! reading a column. The one exception: a scan a star-tree may answer
//! defers its bitmaps to first use (the trees never read them), and until
//! then reports its candidates' rows as an inexact bound.

use std::fmt;
use std::sync::{Arc, RwLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use sluice_segments::{OFFSET_COLUMN, Predicate, Segment, time_range_can_match};

use crate::scan::pushdown;
use crate::scan::read::{Reader, ScanSpec, SegmentScanExec};
use crate::scan::selection::{Selection, evaluate, matched, prune, truncate};
use crate::stats::QUERY_STATS;
use crate::stats::ScanStats;
use crate::topology::Elsewhere;
use std::collections::BTreeMap;

/// The type a column is served as. Strings are served as `Utf8View`:
/// dictionary-encoded segment columns convert to views without copying a
/// byte of string data, short strings (≤ 12 bytes, typical of ids and
/// codes) live inline in the view, and DataFusion's hashing, grouping and
/// comparisons have fast paths for views.
pub fn served_type(stored: &DataType) -> DataType {
    match stored {
        DataType::Utf8 | DataType::LargeUtf8 => DataType::Utf8View,
        DataType::Dictionary(_, values) => served_type(values),
        other => other.clone(),
    }
}

/// The columns a table serves for segments of `segment_schema`: the hidden
/// offset column left out, every column nullable (a segment written under
/// a stricter or looser nullability of a column is served the same way),
/// strings as views.
fn served_schema(segment_schema: &Schema) -> Schema {
    let fields: Vec<Field> = segment_schema
        .fields()
        .iter()
        .filter(|f| f.name() != OFFSET_COLUMN)
        .map(|f| f.as_ref().clone().with_nullable(true).with_data_type(served_type(f.data_type())))
        .collect();
    Schema::new(fields)
}

/// The tables a query node serves, by name.
pub(crate) type Tables = Arc<RwLock<BTreeMap<String, Arc<SegmentTable>>>>;

/// Plans the scan of a table part of which other query nodes hold
/// (`crate::scan::spread`). The table takes its snapshot and prunes its
/// own segments; the planner spreads the rest over the nodes serving them
/// and says what the scan counts.
pub(crate) trait SpreadPlanner: Send + Sync {
    fn plan(
        &self,
        spec: ScanSpec,
        own: (Vec<Arc<Segment>>, ScanStats),
        elsewhere: &Elsewhere,
        partitions: usize,
        tails_excluded: u64,
    ) -> Result<(Arc<dyn ExecutionPlan>, ScanStats)>;
}

/// The [`SpreadPlanner`] of a node in a cluster, in its sessions' config:
/// a session without one cannot scan a spread table.
pub(crate) struct SpreadScans(pub Arc<dyn SpreadPlanner>);

/// One snapshot of a table: what this node holds, and what it does not.
type Snapshot = (Arc<Vec<Arc<Segment>>>, Arc<Elsewhere>);

/// The segments of one table. The set is swapped whole, so a query sees one
/// consistent snapshot from planning to its last row.
pub struct SegmentTable {
    name: String,
    /// Grows as the pipeline gains columns ([`crate::scan::evolution`]); a query
    /// plans against one version of it.
    schema: RwLock<SchemaRef>,
    segments: RwLock<Snapshot>,
    /// Partitions whose real-time tail is left out (over the node's tail
    /// memory): their answers come from committed data only.
    tails_excluded: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for SegmentTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentTable").field("name", &self.name).field("segments", &self.snapshot().len()).finish()
    }
}

impl SegmentTable {
    /// A table over segments with `segment_schema` (a segment's logical
    /// schema), served as [`served_schema`] says.
    pub fn new(name: &str, segment_schema: &Schema) -> Self {
        SegmentTable {
            name: name.to_string(),
            schema: RwLock::new(Arc::new(served_schema(segment_schema))),
            segments: RwLock::default(),
            tails_excluded: Default::default(),
        }
    }

    pub fn set_tails_excluded(&self, partitions: u64) {
        self.tails_excluded.store(partitions, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn tails_excluded(&self) -> u64 {
        self.tails_excluded.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The table's columns now.
    pub(crate) fn schema_ref(&self) -> SchemaRef {
        self.schema.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Grows the table's columns to the pipeline's `segment_schema` (see
    /// [`crate::scan::evolution::evolve`]); true when they changed.
    pub fn evolve(&self, segment_schema: &Schema) -> Result<bool, String> {
        let next = served_schema(segment_schema);
        let mut schema = self.schema.write().unwrap_or_else(|e| e.into_inner());
        match crate::scan::evolution::evolve(&schema, &next)? {
            Some(grown) => {
                *schema = Arc::new(grown);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Whether this table can serve a segment: every column they share has
    /// the table's type. A column the segment lacks (added to the pipeline
    /// since) is answered with its default; one the table lacks is not
    /// served.
    pub fn accepts(&self, segment: &Segment) -> Result<(), String> {
        let ours = self.schema_ref();
        let clashes: Vec<String> = segment
            .schema()
            .fields()
            .iter()
            .filter_map(|theirs| {
                let ours = ours.field_with_name(theirs.name()).ok()?;
                let served = served_type(theirs.data_type());
                (&served != ours.data_type()).then(|| {
                    format!("column `{}` is {served} in the segment, {} in the table", theirs.name(), ours.data_type())
                })
            })
            .collect();
        if clashes.is_empty() {
            Ok(())
        } else {
            Err(format!("segment columns differ from table `{}`: {}", self.name, clashes.join("; ")))
        }
    }

    /// The segments this node holds (committed and tail).
    pub fn snapshot(&self) -> Arc<Vec<Arc<Segment>>> {
        self.segments.read().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    /// What this node holds and what other nodes serve, read together.
    pub fn cluster_snapshot(&self) -> (Arc<Vec<Arc<Segment>>>, Arc<Elsewhere>) {
        self.segments.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The snapshot a query filtered by `predicate` reads: without the
    /// other nodes' segments whose time range (their catalog records')
    /// rules it out, as Pinot's broker prunes segments by time before it
    /// routes. A query whose filter keeps only this node's segments runs
    /// here alone, fast path included.
    pub fn cluster_snapshot_for(&self, predicate: Option<&Predicate>) -> Snapshot {
        let (local, elsewhere) = self.cluster_snapshot();
        let Some(predicate) = predicate else { return (local, elsewhere) };
        let kept: Vec<bool> = elsewhere
            .remote
            .iter()
            .map(|r| r.time.as_ref().is_none_or(|t| time_range_can_match(predicate, &t.column, (t.from, t.to))))
            .collect();
        if kept.iter().all(|k| *k) {
            return (local, elsewhere);
        }
        let mut pruned = (*elsewhere).clone();
        let mut kept = kept.into_iter();
        pruned.remote.retain(|_| kept.next().unwrap_or(true));
        (local, Arc::new(pruned))
    }

    pub fn replace(&self, segments: Vec<Arc<Segment>>) {
        self.replace_with(segments, Elsewhere::default());
    }

    pub fn replace_with(&self, segments: Vec<Arc<Segment>>, elsewhere: Elsewhere) {
        *self.segments.write().unwrap_or_else(|e| e.into_inner()) = (Arc::new(segments), Arc::new(elsewhere));
    }

    pub fn row_count(&self) -> u64 {
        self.snapshot().iter().map(|s| u64::from(s.num_rows())).sum()
    }
}

#[async_trait]
impl TableProvider for SegmentTable {
    fn schema(&self) -> SchemaRef {
        self.schema_ref()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters.iter().map(|f| pushdown::classify(f, &self.schema_ref())).collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // One version of the columns for the whole scan (they only grow, so
        // the planner's projection indexes stay valid).
        let table = self.schema_ref();
        let schema = match projection {
            Some(p) => Arc::new(table.project(p)?),
            None => table.clone(),
        };
        // DataFusion may rewrite a filter after asking about it (say, an IN
        // list holding a NULL into an OR), so a filter promised Exact can
        // arrive in a form that no longer translates exactly. Whatever is not
        // exact is evaluated here as well: a promise is never silently broken.
        let (predicate, residual) = pushdown::translate_all(filters, &table);
        let exact = residual.is_empty();
        let read = Reader::new(state, &table, &schema, residual)?;
        let threads = state.config().target_partitions().max(1);
        let (segments, elsewhere) = self.cluster_snapshot_for(predicate.as_ref());
        if !elsewhere.is_empty() {
            // Part of the table is on other query nodes: the scan runs there
            // too, next to the data (DataFusion Distributed).
            let Some(spread) = state.config().get_extension::<SpreadScans>() else {
                return Err(DataFusionError::Execution(format!(
                    "table `{}` is spread over the cluster, and this session cannot reach it",
                    self.name
                )));
            };
            let limit = if exact { limit.map(|l| l as u64) } else { None };
            // This node's own segments the filter rules out (by time, by
            // min/max) are left out now: a query whose rows are all
            // elsewhere then runs no task here.
            let own = prune(&segments, predicate.as_ref(), &table);
            let spec = ScanSpec { table: self.name.clone(), schema, reader: read, predicate, exact, limit };
            // Two partitions at least: over one, DataFusion plans an
            // aggregation as one step above the network boundary, and every
            // node would ship its raw rows to this one.
            let (scan, stats) = spread.0.plan(spec, own, &elsewhere, threads.max(2), self.tails_excluded())?;
            let _ = QUERY_STATS.try_with(|s| s.lock().unwrap_or_else(|e| e.into_inner()).add(&stats));
            return Ok(scan);
        }
        let (candidates, mut stats) = prune(&segments, predicate.as_ref(), &table);
        stats.tails_excluded += self.tails_excluded();
        let sink = QUERY_STATS.try_with(Arc::clone).ok();
        // DataFusion passes a limit only when every filter was pushed
        // exactly; cutting at it needs the rows now.
        let limit = limit.filter(|_| exact);
        let selection = if limit.is_none() && star_trees_may_answer(&candidates, predicate.as_ref(), &schema) {
            Selection::deferred(candidates, predicate.clone(), table, threads, sink.clone())
        } else {
            let predicate = predicate.clone();
            let mut parts =
                tokio::task::spawn_blocking(move || evaluate(&candidates, predicate.as_ref(), &table, threads))
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))??;
            if let Some(limit) = limit {
                truncate(&mut parts, limit as u64);
            }
            stats.add(&matched(&parts));
            Selection::selected(parts, threads)
        };
        if let Some(sink) = sink {
            sink.lock().unwrap_or_else(|e| e.into_inner()).add(&stats);
        }
        Ok(Arc::new(SegmentScanExec::new(self.name.clone(), schema, read, selection, predicate, exact)))
    }
}

/// Whether a star-tree of one of `segments` has every column the scan
/// filters on and reads among its dimensions and metrics: only then may an
/// aggregation above be answered from trees (for those segments), and the
/// rows the scan would select there never be read.
fn star_trees_may_answer(segments: &[Arc<Segment>], predicate: Option<&Predicate>, output: &Schema) -> bool {
    let filtered = predicate.map(Predicate::columns).unwrap_or_default();
    segments.iter().any(|segment| {
        let schema = &segment.meta().schema;
        segment.star_trees().iter().any(|tree| {
            let spec = tree.spec();
            let dimension = |name: &str| schema.column_index(name).is_some_and(|c| spec.dimensions.contains(&c));
            let metric = |name: &str| {
                schema.column_index(name).is_some_and(|c| spec.metrics.iter().any(|m| m.column == Some(c)))
            };
            filtered.iter().all(|c| dimension(c))
                && output.fields().iter().all(|f| dimension(f.name()) || metric(f.name()))
        })
    })
}
