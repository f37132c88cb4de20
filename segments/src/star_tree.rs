//! Star-tree index (Pinot's star-tree): pre-aggregated records of a sealed
//! segment over a few dimensions, and the tree that finds the fewest records
//! answering a query.
//!
//! The records are the segment's rows aggregated by every dimension, sorted
//! by the dimensions in their configured order. A node at level `L` covers a
//! run of records that share the values of the first `L` dimensions; a node
//! with more than `max_leaf_records` records is split on dimension `L` into
//! one child per value, plus a *star* child: the node's records aggregated
//! over dimension `L` (its value is then `*`, stored as NULL). A query that
//! neither filters nor groups by dimension `L` takes the star child and
//! reads a fraction of the records.
//!
//! Exactness: from any node, either its star child or all of its children
//! cover the node's rows exactly once, and a leaf's records are disjoint;
//! so a walk that takes the star child only for dimensions the query does
//! not use yields records that cover every row of the segment exactly once,
//! each with a real value in every dimension the query uses.
//!
//! Stored as one index entry per tree (`IndexKind::StarTree`, numbered by the
//! tree's position in the schema): `u32 node count`, the nodes as
//! `6 × u32` (level, start, end, first child, child count, star child or
//! `u32::MAX`), then the records as an Arrow IPC file: the dimension columns
//! (NULL for `*` and for NULL), then per metric an `Int64` value (NULL when
//! the metric saw no value) and an `Int64` count of the values it saw.

use std::collections::HashSet;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::buffer::Buffer;
use arrow::compute::take;
use roaring::RoaringBitmap;
use sluice_config::ColumnType;
use std::ops::Bound;

use crate::error::SegmentError;
use crate::index::{Corrupt, Reader};
use crate::predicate::{self, Columns, Predicate};
use crate::schema::{SegmentSchema, StarMetric, StarTreeSpec};
use crate::types::Key;

/// A node's "no star child".
pub(crate) const NO_STAR: u32 = u32::MAX;
pub(crate) const NODE_LEN: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Node {
    /// Which dimension this node's children split on (its depth).
    pub level: u32,
    pub start: u32,
    pub end: u32,
    pub first_child: u32,
    pub child_count: u32,
    pub star: u32,
}

impl Node {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        for v in [self.level, self.start, self.end, self.first_child, self.child_count, self.star] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// A sealed segment's star-tree, validated when the segment is opened.
#[derive(Debug)]
pub struct StarTree {
    spec: StarTreeSpec,
    dimension_types: Vec<ColumnType>,
    nodes: Vec<Node>,
    records: RecordBatch,
}

impl StarTree {
    /// Parses and checks a stored tree. `payload` is the index entry, as a
    /// slice of the file's buffer (the records are read in place).
    pub(crate) fn parse(payload: Buffer, spec: &StarTreeSpec, schema: &SegmentSchema) -> Result<StarTree, Corrupt> {
        let reader = Reader::new(payload.as_slice());
        let count = reader.u32(0)? as usize;
        let nodes_end = count
            .checked_mul(NODE_LEN)
            .and_then(|n| n.checked_add(4))
            .filter(|&end| end <= payload.len())
            .ok_or_else(|| format!("star-tree: {count} nodes do not fit its {} bytes", payload.len()))?;
        let nodes = (0..count)
            .map(|i| {
                let at = 4 + i * NODE_LEN;
                let field = |k: usize| reader.u32(at + 4 * k);
                Ok(Node {
                    level: field(0)?,
                    start: field(1)?,
                    end: field(2)?,
                    first_child: field(3)?,
                    child_count: field(4)?,
                    star: field(5)?,
                })
            })
            .collect::<Result<Vec<_>, Corrupt>>()?;
        let ipc = payload.slice_with_length(nodes_end, payload.len() - nodes_end);
        let decoded = std::panic::catch_unwind(|| crate::ipc::read_ipc(&ipc, true))
            .unwrap_or_else(|_| Err("malformed Arrow data".to_string()));
        let records = decoded.map_err(|e| format!("star-tree records: {e}"))?;
        let expected = spec.records_schema(schema);
        if records.schema().fields() != expected.fields() {
            return Err("star-tree records do not have the tree's columns".into());
        }
        check_nodes(&nodes, spec.dimensions.len(), records.num_rows())?;
        let dimension_types = spec.dimensions.iter().map(|&d| schema.columns[d].data_type).collect();
        Ok(StarTree { spec: spec.clone(), dimension_types, nodes, records })
    }

    pub fn spec(&self) -> &StarTreeSpec {
        &self.spec
    }

    /// How many pre-aggregated records the tree holds.
    pub fn num_records(&self) -> usize {
        self.records.num_rows()
    }

    /// The records that answer a query using the dimensions `used` (schema
    /// positions, filtered or grouped on): each row of the segment is in
    /// exactly one of them, and `predicate` (over those dimensions) is TRUE
    /// for each. Columns as in the stored records: the dimensions, then the
    /// value and count of each metric.
    pub fn select(&self, used: &[usize], predicate: Option<&Predicate>) -> Result<RecordBatch, SegmentError> {
        let ids = UInt32Array::from(self.cover(used)?);
        let columns =
            self.records.columns().iter().map(|c| take(c.as_ref(), &ids, None)).collect::<Result<Vec<_>, _>>()?;
        let records = RecordBatch::try_new(self.records.schema(), columns)?;
        let Some(predicate) = predicate else { return Ok(records) };
        let rows = predicate::evaluate(&RecordColumns { tree: self, records: &records }, predicate)?;
        let ids = UInt32Array::from_iter_values(rows);
        let columns = records.columns().iter().map(|c| take(c.as_ref(), &ids, None)).collect::<Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new(records.schema(), columns)?)
    }

    /// The walk described in the module docs: record ids covering every row
    /// once, real in every `used` dimension.
    fn cover(&self, used: &[usize]) -> Result<Vec<u32>, SegmentError> {
        let mut out = Vec::new();
        let mut stack = if self.nodes.is_empty() { Vec::new() } else { vec![0u32] };
        while let Some(i) = stack.pop() {
            let node = self.nodes[i as usize];
            if node.child_count == 0 {
                out.extend(node.start..node.end);
                // A checked tree never yields a record twice; a crafted one
                // must not make the walk grow without bound.
                if out.len() > self.records.num_rows() {
                    return Err(SegmentError::Predicate("star-tree leaves overlap".into()));
                }
                continue;
            }
            let dimension = self.spec.dimensions[node.level as usize];
            if node.star != NO_STAR && !used.contains(&dimension) {
                stack.push(node.star);
            } else {
                stack.extend(node.first_child..node.first_child + node.child_count);
            }
        }
        Ok(out)
    }

    /// The value and count columns of `metric` in [`StarTree::select`]'s records.
    pub fn metric_columns(&self, metric: &StarMetric) -> Option<(usize, usize)> {
        let i = self.spec.metrics.iter().position(|m| m == metric)?;
        let at = self.spec.dimensions.len() + 2 * i;
        Some((at, at + 1))
    }

    /// The column of dimension `column` (schema position) in the records.
    pub fn dimension_column(&self, column: usize) -> Option<usize> {
        self.spec.dimensions.iter().position(|&d| d == column)
    }
}

/// Structure checks, so a walk over a crafted tree stays in bounds and
/// terminates: children and star children come after their parent and have
/// one parent each, ranges lie within the records, levels within the
/// dimensions.
fn check_nodes(nodes: &[Node], dimensions: usize, records: usize) -> Result<(), Corrupt> {
    if nodes.is_empty() {
        return Err("star-tree without a root".into());
    }
    let mut referenced = HashSet::new();
    for (i, node) in nodes.iter().enumerate() {
        let bad = |what: &str| Err(format!("star-tree node {i}: {what}"));
        if node.start > node.end || node.end as usize > records {
            return bad("record range outside the records");
        }
        if node.child_count > 0 {
            if node.level as usize >= dimensions {
                return bad("splits on a dimension the tree does not have");
            }
            let children = node.first_child as u64..node.first_child as u64 + node.child_count as u64;
            if children.start <= i as u64 || children.end > nodes.len() as u64 {
                return bad("children out of order");
            }
            let star = (node.star != NO_STAR).then_some(node.star as u64);
            if star.is_some_and(|s| s <= i as u64 || s >= nodes.len() as u64) {
                return bad("star child out of order");
            }
            for child in children.chain(star) {
                if !referenced.insert(child) {
                    return bad("a node with two parents");
                }
            }
        } else if node.star != NO_STAR {
            return bad("a leaf with a star child");
        }
    }
    Ok(())
}

/// The selected records as columns a predicate is evaluated over (scans
/// only: the records are few).
struct RecordColumns<'a> {
    tree: &'a StarTree,
    records: &'a RecordBatch,
}

impl Columns for RecordColumns<'_> {
    fn num_rows(&self) -> u32 {
        self.records.num_rows() as u32
    }

    fn resolve(&self, column: &str) -> Option<(usize, ColumnType)> {
        let i = self.records.schema().fields().iter().position(|f| f.name() == column)?;
        Some((i, *self.tree.dimension_types.get(i)?))
    }

    fn array(&self, column: usize) -> Result<ArrayRef, SegmentError> {
        Ok(self.records.column(column).clone())
    }

    fn lookup_eq(&self, _: usize, _: &Key) -> Result<Option<RoaringBitmap>, SegmentError> {
        Ok(None)
    }

    fn lookup_range(&self, _: usize, _: Bound<&Key>, _: Bound<&Key>) -> Result<Option<RoaringBitmap>, SegmentError> {
        Ok(None)
    }

    fn nulls(&self, column: usize) -> Result<RoaringBitmap, SegmentError> {
        Ok(predicate::null_rows(self.records.column(column).as_ref()))
    }
}
