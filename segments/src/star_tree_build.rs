//! Builds a star-tree at seal (the layout and why it is exact are in
//! [`crate::star_tree`]).

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, UInt32Array, make_comparator};
use arrow::compute::{SortOptions, cast, sort_to_indices, take};
use arrow::datatypes::{DataType, Int64Type};
use arrow::ipc::writer::FileWriter;
use sluice_config::MetricFunction;

use crate::error::SegmentError;
use crate::schema::SegmentSchema;
use crate::schema::StarTreeSpec;
use crate::star_tree::{NO_STAR, Node};

/// A dimension of a record aggregated over (`*`).
const STAR: u32 = u32::MAX;

/// Builds the tree of `spec` over a segment's columns (in schema order, as
/// sealed: strings plain) and returns its index payload.
pub(crate) fn build(spec: &StarTreeSpec, schema: &SegmentSchema, arrays: &[ArrayRef]) -> Result<Vec<u8>, SegmentError> {
    let rows = arrays.first().map_or(0, |a| a.len());
    let ranked: Vec<(Vec<u32>, ArrayRef)> =
        spec.dimensions.iter().map(|&d| rank(arrays[d].as_ref())).collect::<Result<_, _>>()?;
    let metrics: Vec<MetricInput> = spec
        .metrics
        .iter()
        .map(|m| MetricInput::new(m.function, m.column.map(|c| &arrays[c])))
        .collect::<Result<_, _>>()?;

    // Base records: the rows aggregated by every dimension.
    let k = spec.dimensions.len();
    let mut order: Vec<u32> = (0..rows as u32).collect();
    order.sort_unstable_by(|&a, &b| {
        ranked.iter().map(|(r, _)| r[a as usize].cmp(&r[b as usize])).find(|o| o.is_ne()).unwrap_or(Ordering::Equal)
    });
    let mut records = Records { k, m: metrics.len(), dims: Vec::new(), states: Vec::new() };
    let mut previous: Option<u32> = None;
    for &row in &order {
        let same = previous.is_some_and(|p| ranked.iter().all(|(r, _)| r[p as usize] == r[row as usize]));
        if !same {
            records.dims.extend(ranked.iter().map(|(r, _)| r[row as usize]));
            records.states.extend(metrics.iter().map(|m| m.empty()));
        }
        let at = records.states.len() - metrics.len();
        for (state, metric) in records.states[at..].iter_mut().zip(&metrics) {
            metric.add(state, row as usize);
        }
        previous = Some(row);
    }

    // The tree, breadth first so that a node's children are adjacent.
    let mut nodes =
        vec![Node { level: 0, start: 0, end: records.len(), first_child: 0, child_count: 0, star: NO_STAR }];
    let mut queue = VecDeque::from([0usize]);
    while let Some(i) = queue.pop_front() {
        let Node { level, start, end, .. } = nodes[i];
        if (end - start) <= spec.max_leaf_records || level as usize >= k {
            continue;
        }
        let first_child = nodes.len() as u32;
        let mut from = start;
        while from < end {
            let value = records.dim(from, level);
            let mut to = from + 1;
            while to < end && records.dim(to, level) == value {
                to += 1;
            }
            nodes.push(Node { level: level + 1, start: from, end: to, first_child: 0, child_count: 0, star: NO_STAR });
            from = to;
        }
        let child_count = nodes.len() as u32 - first_child;
        nodes[i].first_child = first_child;
        nodes[i].child_count = child_count;
        queue.extend(first_child as usize..nodes.len());
        // One child covers what a star child would: no star then.
        if child_count > 1 {
            let (star_start, star_end) = records.append_star(start, end, level, &metrics)?;
            nodes[i].star = nodes.len() as u32;
            queue.push_back(nodes.len());
            nodes.push(Node {
                level: level + 1,
                start: star_start,
                end: star_end,
                first_child: 0,
                child_count: 0,
                star: NO_STAR,
            });
        }
    }

    let mut payload = Vec::new();
    payload.extend_from_slice(&(nodes.len() as u32).to_le_bytes());
    for node in &nodes {
        node.encode(&mut payload);
    }
    let batch = records.to_batch(spec, schema, &ranked, &metrics)?;
    let mut writer = FileWriter::try_new(payload, &batch.schema())?;
    writer.write(&batch)?;
    writer.finish()?;
    Ok(writer.into_inner()?)
}

/// Each row's rank among the column's distinct values (NULL first), and the
/// distinct values by rank.
fn rank(array: &dyn Array) -> Result<(Vec<u32>, ArrayRef), SegmentError> {
    let options = SortOptions { descending: false, nulls_first: true };
    let order = sort_to_indices(array, Some(options), None)?;
    let compare = make_comparator(array, array, options)?;
    let mut ranks = vec![0u32; array.len()];
    let mut firsts: Vec<u32> = Vec::new();
    let mut previous: Option<usize> = None;
    for &row in order.values() {
        let row = row as usize;
        if previous.is_none_or(|p| compare(p, row).is_ne()) {
            firsts.push(row as u32);
        }
        ranks[row] = firsts.len() as u32 - 1;
        previous = Some(row);
    }
    let values = take(array, &UInt32Array::from(firsts), None)?;
    Ok((ranks, values))
}

/// A metric's input column as 64-bit integers (absent for `COUNT(*)`).
struct MetricInput {
    function: MetricFunction,
    column: Option<ArrayRef>,
}

/// A metric's state in one record: the value (sum, min or max) and how many
/// values it saw.
type State = (i64, i64);

impl MetricInput {
    fn new(function: MetricFunction, column: Option<&ArrayRef>) -> Result<Self, SegmentError> {
        let column = match (function, column) {
            (_, None) => None,
            // A count needs only the column's NULLs.
            (MetricFunction::Count, Some(c)) => Some(c.clone()),
            (_, Some(c)) => Some(cast(c.as_ref(), &DataType::Int64)?),
        };
        Ok(MetricInput { function, column })
    }

    fn empty(&self) -> State {
        match self.function {
            MetricFunction::Min => (i64::MAX, 0),
            MetricFunction::Max => (i64::MIN, 0),
            _ => (0, 0),
        }
    }

    fn add(&self, state: &mut State, row: usize) {
        let Some(column) = &self.column else {
            state.1 += 1;
            return;
        };
        if column.is_null(row) {
            return;
        }
        state.1 += 1;
        if self.function != MetricFunction::Count {
            let value = column.as_primitive::<Int64Type>().value(row);
            state.0 = self.combine(state.0, value);
        }
    }

    fn merge(&self, state: &mut State, other: State) {
        state.0 = self.combine(state.0, other.0);
        state.1 += other.1;
    }

    /// Sums wrap on overflow, as DataFusion's integer `SUM` does.
    fn combine(&self, a: i64, b: i64) -> i64 {
        match self.function {
            MetricFunction::Min => a.min(b),
            MetricFunction::Max => a.max(b),
            MetricFunction::Sum | MetricFunction::Avg => a.wrapping_add(b),
            MetricFunction::Count => 0,
        }
    }
}

/// Records under construction: `k` dimension ranks and `m` states each.
struct Records {
    k: usize,
    m: usize,
    dims: Vec<u32>,
    states: Vec<State>,
}

impl Records {
    fn len(&self) -> u32 {
        (self.dims.len() / self.k.max(1)) as u32
    }

    fn dim(&self, record: u32, level: u32) -> u32 {
        self.dims[record as usize * self.k + level as usize]
    }

    /// Appends the records `start..end` aggregated over dimension `level`
    /// (set to `*`), sorted by the dimensions after it, and returns their range.
    fn append_star(
        &mut self,
        start: u32,
        end: u32,
        level: u32,
        metrics: &[MetricInput],
    ) -> Result<(u32, u32), SegmentError> {
        let (k, level) = (self.k, level as usize);
        let mut ids: Vec<u32> = (start..end).collect();
        ids.sort_by(|&a, &b| {
            let (a, b) = (a as usize * k, b as usize * k);
            self.dims[a + level + 1..a + k].cmp(&self.dims[b + level + 1..b + k])
        });
        let first = self.len();
        let mut previous: Option<u32> = None;
        for id in ids {
            let row = id as usize;
            let same = previous.is_some_and(|p| {
                let p = p as usize * k;
                self.dims[p + level + 1..p + k] == self.dims[row * k + level + 1..row * k + k]
            });
            if !same {
                let mut dims = self.dims[row * k..row * k + k].to_vec();
                dims[level] = STAR;
                self.dims.extend(dims);
                self.states.extend(metrics.iter().map(MetricInput::empty));
            }
            let at = self.states.len() - self.m;
            for (j, metric) in metrics.iter().enumerate() {
                let other = self.states[row * self.m + j];
                metric.merge(&mut self.states[at + j], other);
            }
            previous = Some(id);
        }
        if self.dims.len() / k > u32::MAX as usize {
            return Err(SegmentError::Predicate("a star-tree of more than 2^32 records".into()));
        }
        Ok((first, self.len()))
    }

    fn to_batch(
        &self,
        spec: &StarTreeSpec,
        schema: &SegmentSchema,
        ranked: &[(Vec<u32>, ArrayRef)],
        metrics: &[MetricInput],
    ) -> Result<RecordBatch, SegmentError> {
        let n = self.len() as usize;
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.k + 2 * self.m);
        for (level, (_, values)) in ranked.iter().enumerate() {
            let ids: UInt32Array =
                (0..n).map(|r| Some(self.dims[r * self.k + level]).filter(|&id| id != STAR)).collect();
            columns.push(take(values.as_ref(), &ids, None)?);
        }
        for (j, metric) in metrics.iter().enumerate() {
            let states = (0..n).map(|r| self.states[r * self.m + j]);
            let values: Int64Array = states
                .clone()
                .map(|(value, seen)| match metric.function {
                    MetricFunction::Count => Some(seen),
                    _ => (seen > 0).then_some(value),
                })
                .collect();
            columns.push(Arc::new(values));
            columns.push(Arc::new(states.map(|(_, seen)| seen).collect::<Int64Array>()));
        }
        Ok(RecordBatch::try_new(spec.records_schema(schema), columns)?)
    }
}
