//! Which rows of which segments a scan reads: pruning by metadata and
//! bloom filters, then evaluating the predicate to a bitmap per segment,
//! on several threads when there are several segments — while planning, or
//! on first use where a star-tree may answer without the bitmaps
//! ([`Selection`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use arrow::datatypes::{Schema, SchemaRef};

use datafusion::common::{DataFusionError, Result};
use roaring::RoaringBitmap;
use sluice_segments::{Predicate, Segment};

use crate::stats::ScanStats;

/// The rows of one segment a scan reads.
#[derive(Clone)]
pub(crate) struct Part {
    pub(crate) segment: Arc<Segment>,
    pub(crate) rows: Arc<RoaringBitmap>,
}

/// Prunes, then evaluates the segments left, spreading them over `threads`
/// when there is more than one: pruning is a few comparisons per segment,
/// while a thread costs tens of microseconds, more than a point or range
/// lookup on one segment.
pub(crate) fn select(
    segments: &[Arc<Segment>],
    predicate: Option<&Predicate>,
    table: &Schema,
    threads: usize,
) -> Result<(Vec<Part>, ScanStats)> {
    let (candidates, mut stats) = prune(segments, predicate, table);
    let parts = evaluate(&candidates, predicate, table, threads)?;
    stats.add(&matched(&parts));
    Ok((parts, stats))
}

/// The segments of `segments` that may hold a row `predicate` selects
/// (from metadata and bloom filters), and the counters known from that.
pub(crate) fn prune(
    segments: &[Arc<Segment>],
    predicate: Option<&Predicate>,
    table: &Schema,
) -> (Vec<Arc<Segment>>, ScanStats) {
    let candidates: Vec<Arc<Segment>> = match predicate {
        Some(p) => segments.iter().filter(|s| s.can_match(&bound(p, s, table))).cloned().collect(),
        None => segments.to_vec(),
    };
    let mut stats = ScanStats {
        segments_queried: segments.len() as u64,
        segments_processed: candidates.len() as u64,
        total_docs: segments.iter().map(|s| u64::from(s.num_rows())).sum(),
        offset_gaps: segments.iter().flat_map(|s| &s.meta().offset_gaps).map(|(from, to)| (to - from + 1) as u64).sum(),
        ..ScanStats::default()
    };
    stats.add(&consuming_stats(segments));
    (candidates, stats)
}

/// The rows `predicate` selects in each of `segments`, in order, leaving
/// out the segments where it selects none.
pub(crate) fn evaluate(
    segments: &[Arc<Segment>],
    predicate: Option<&Predicate>,
    table: &Schema,
    threads: usize,
) -> Result<Vec<Part>> {
    let mut parts = Vec::new();
    for part in par_map(segments, threads, |segment| evaluate_one(segment, predicate, table)) {
        let part = part?;
        if !part.rows.is_empty() {
            parts.push(part);
        }
    }
    Ok(parts)
}

fn evaluate_one(segment: &Arc<Segment>, predicate: Option<&Predicate>, table: &Schema) -> Result<Part> {
    let rows = match predicate {
        Some(p) => segment.evaluate(&bound(p, segment, table)).map_err(|e| DataFusionError::External(Box::new(e)))?,
        None => {
            let mut all = RoaringBitmap::new();
            all.insert_range(0..segment.num_rows());
            all
        }
    };
    Ok(Part { segment: Arc::clone(segment), rows: Arc::new(rows) })
}

/// `predicate` as `segment` answers it: a column of `table` the segment
/// lacks (added since it was written) holds the column's default in every
/// row ([`crate::scan::evolution`]).
fn bound<'p>(predicate: &'p Predicate, segment: &Segment, table: &Schema) -> Cow<'p, Predicate> {
    let schema = &segment.meta().schema;
    if predicate.columns().iter().all(|c| schema.column_index(c).is_some()) {
        return Cow::Borrowed(predicate);
    }
    Cow::Owned(predicate.bind(&|column| match schema.column_index(column) {
        Some(_) => None,
        None => crate::scan::evolution::absent_value(table, column),
    }))
}

/// The counters of evaluated parts: segments matched, rows selected.
pub(crate) fn matched(parts: &[Part]) -> ScanStats {
    ScanStats {
        segments_matched: parts.len() as u64,
        docs_scanned: parts.iter().map(|p| p.rows.len()).sum(),
        ..ScanStats::default()
    }
}

/// A scan's rows, per output partition: selected while planning, or
/// deferred to first use.
///
/// Deferred is for a scan a star-tree may answer: the aggregation that
/// replaces it reads the trees with the predicate, never these bitmaps,
/// and evaluating them while planning was half of such a query's time.
/// Whatever does read the rows (the scan when it runs, the part of a plan
/// no tree answers, a grouping on dictionary ids) evaluates them then,
/// once, and reports the counters to the query that planned the scan.
/// Until then statistics and `EXPLAIN` use the candidates, unevaluated.
pub(crate) enum Selection {
    Selected(Vec<Vec<Part>>),
    Deferred(Deferred),
}

pub(crate) struct Deferred {
    /// The candidate segments (pruned), per partition.
    segments: Vec<Vec<Arc<Segment>>>,
    predicate: Option<Predicate>,
    /// The table's columns as planned (defaults of columns segments lack).
    table: SchemaRef,
    threads: usize,
    /// The planning query's counters.
    stats: Option<Arc<Mutex<ScanStats>>>,
    selected: OnceLock<std::result::Result<Vec<Vec<Part>>, Arc<DataFusionError>>>,
}

impl Selection {
    /// `parts` spread over `target` partitions at most, each about as many
    /// rows as the others.
    pub(crate) fn selected(parts: Vec<Part>, target: usize) -> Self {
        Selection::Selected(spread(parts, target, |p| p.rows.len()))
    }

    /// `segments` spread over `target` partitions at most by their row
    /// counts, to be evaluated on first use.
    pub(crate) fn deferred(
        segments: Vec<Arc<Segment>>,
        predicate: Option<Predicate>,
        table: SchemaRef,
        target: usize,
        stats: Option<Arc<Mutex<ScanStats>>>,
    ) -> Self {
        Selection::Deferred(Deferred {
            segments: spread(segments, target, |s| u64::from(s.num_rows())),
            predicate,
            table,
            threads: target,
            stats,
            selected: OnceLock::new(),
        })
    }

    pub(crate) fn partition_count(&self) -> usize {
        match self {
            Selection::Selected(partitions) => partitions.len(),
            Selection::Deferred(d) => d.segments.len(),
        }
    }

    /// The segments of each partition, without evaluating anything.
    pub(crate) fn segments(&self) -> Vec<Vec<Arc<Segment>>> {
        match self {
            Selection::Selected(partitions) => {
                partitions.iter().map(|parts| parts.iter().map(|p| p.segment.clone()).collect()).collect()
            }
            Selection::Deferred(d) => d.segments.clone(),
        }
    }

    /// Each partition's parts, evaluated now if they were deferred.
    pub(crate) fn partitions(&self) -> Result<&[Vec<Part>]> {
        let d = match self {
            Selection::Selected(partitions) => return Ok(partitions),
            Selection::Deferred(d) => d,
        };
        let selected = d.selected.get_or_init(|| {
            // Each segment stays in the partition it was planned in (the
            // partition count is part of the plan).
            let flat: Vec<(usize, &Arc<Segment>)> =
                d.segments.iter().enumerate().flat_map(|(i, segments)| segments.iter().map(move |s| (i, s))).collect();
            let evaluated = par_map(&flat, d.threads, |(i, segment)| {
                Ok((*i, evaluate_one(segment, d.predicate.as_ref(), &d.table)?))
            });
            let mut partitions: Vec<Vec<Part>> = vec![Vec::new(); d.segments.len()];
            for result in evaluated {
                let (i, part) = result.map_err(Arc::new)?;
                if !part.rows.is_empty() {
                    partitions[i].push(part);
                }
            }
            if let Some(stats) = &d.stats {
                let parts: Vec<Part> = partitions.iter().flatten().cloned().collect();
                stats.lock().unwrap_or_else(|e| e.into_inner()).add(&matched(&parts));
            }
            Ok(partitions)
        });
        selected.as_deref().map_err(|e| DataFusionError::Shared(e.clone()))
    }

    /// Whether the rows are known yet.
    pub(crate) fn is_selected(&self) -> bool {
        match self {
            Selection::Selected(_) => true,
            Selection::Deferred(d) => d.selected.get().is_some(),
        }
    }

    /// The same selection of the segments `keep` keeps, over as many
    /// partitions at most.
    pub(crate) fn retain(&self, keep: impl Fn(&Segment) -> bool) -> Result<Self> {
        let target = self.partition_count();
        Ok(match self {
            Selection::Deferred(d) if !self.is_selected() => {
                let segments = d.segments.iter().flatten().filter(|s| keep(s)).cloned().collect();
                Selection::deferred(segments, d.predicate.clone(), d.table.clone(), target, d.stats.clone())
            }
            _ => {
                let parts = self.partitions()?.iter().flatten().filter(|p| keep(&p.segment)).cloned().collect();
                Selection::selected(parts, target)
            }
        })
    }
}

/// `items` over `target` partitions at most (one at least), the heaviest
/// first into the lightest partition.
fn spread<T>(items: Vec<T>, target: usize, weight: impl Fn(&T) -> u64) -> Vec<Vec<T>> {
    let n = target.min(items.len()).max(1);
    let mut partitions: Vec<Vec<T>> = (0..n).map(|_| Vec::new()).collect();
    let mut load = vec![0u64; n];
    let mut by_weight = items;
    by_weight.sort_by_key(|item| std::cmp::Reverse(weight(item)));
    for item in by_weight {
        let lightest = (0..n).min_by_key(|&i| load[i]).expect("n >= 1");
        load[lightest] += weight(&item);
        partitions[lightest].push(item);
    }
    partitions
}

/// The consuming segments among `segments`, and their freshness. A
/// partition's tail is one consuming segment in Pinot's terms, however many
/// chunks hold it; each chunk carries its newest record's timestamp as
/// creation time.
pub(crate) fn consuming_stats(segments: &[Arc<Segment>]) -> ScanStats {
    let mut newest: BTreeMap<&str, i64> = BTreeMap::new();
    for tail in segments.iter().filter(|s| s.meta().name.ends_with(crate::topology::CONSUMING_SUFFIX)) {
        let at = newest.entry(tail.meta().name.as_str()).or_insert(i64::MIN);
        *at = (*at).max(tail.meta().created_at_ms);
    }
    let mut stats = ScanStats::default();
    for (_, newest_ms) in newest {
        stats.add(&ScanStats { consuming_segments: 1, min_consuming_freshness_ms: newest_ms, ..ScanStats::default() });
    }
    stats
}

/// `f` over `items` in order, on up to `threads` scoped threads of
/// contiguous chunks (inline for one). A panic in `f` is resumed here.
pub(crate) fn par_map<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if threads <= 1 || items.len() <= 1 {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        // The query runtime's stack size: predicates nest as deep as the
        // statement limits admit (see `crate::limits::statement`).
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|c| {
                std::thread::Builder::new()
                    .stack_size(crate::limits::statement::QUERY_STACK_SIZE)
                    .spawn_scoped(scope, move || c.iter().map(f).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h {
                Ok(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                Err(e) => panic!("cannot start a query thread: {e}"),
            })
            .collect()
    })
}

/// Keeps the first `limit` selected rows.
pub(crate) fn truncate(parts: &mut Vec<Part>, limit: u64) {
    let mut left = limit;
    parts.retain_mut(|part| {
        if left == 0 {
            return false;
        }
        let n = part.rows.len();
        if n > left {
            let cut = part.rows.select(left as u32).expect("left < len");
            let mut rows = (*part.rows).clone();
            rows.remove_range(cut..);
            part.rows = Arc::new(rows);
            left = 0;
        } else {
            left -= n;
        }
        true
    });
}
