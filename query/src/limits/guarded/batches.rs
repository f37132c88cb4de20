//! What the guarded copies share: the bound on the repeated bytes one
//! batch may hold, the node's function-output limit, and [`BatchMap`], an
//! operator that passes its input's batches through a function (measured,
//! cut) without changing its rows or properties.

use std::fmt;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;

/// The most bytes of repeated build-side values one slice of a join's
/// probe side may draw: large enough that ordinary joins keep their batches whole
/// (8,192 rows of a 2 KB row), small enough that a batch is a moment's
/// copy.
pub(crate) const REPEATED_BATCH_BYTES: usize = 16 << 20;

/// The node's `limits.max_function_output`, carried in the session config
/// of its queries and of the tasks it runs for other nodes.
#[derive(Debug)]
pub(crate) struct OutputLimit(pub u64);

/// `limits.max_function_output`'s default, for a session that lacks the
/// node's setting.
pub(super) const DEFAULT_LIMIT: u64 = 64 << 20;

/// `batch` in batches of at most `rows` rows (views of it, no copy).
pub(super) fn slices(batch: RecordBatch, rows: usize) -> Vec<RecordBatch> {
    if batch.num_rows() <= rows {
        return vec![batch];
    }
    (0..batch.num_rows()).step_by(rows).map(|at| batch.slice(at, rows.min(batch.num_rows() - at))).collect()
}

/// What a stream does to each batch it reads.
pub(super) type Map = Box<dyn FnMut(RecordBatch) -> Result<Vec<RecordBatch>> + Send>;

/// Its input's batches, each passed through a function (counted, measured,
/// cut) made for each of its streams: the same rows, the same properties.
pub(super) struct BatchMap {
    input: Arc<dyn ExecutionPlan>,
    name: &'static str,
    map: Arc<dyn Fn() -> Map + Send + Sync>,
}

impl BatchMap {
    pub(super) fn new(
        input: Arc<dyn ExecutionPlan>,
        name: &'static str,
        map: impl Fn() -> Map + Send + Sync + 'static,
    ) -> Self {
        BatchMap { input, name, map: Arc::new(map) }
    }
}

impl fmt::Debug for BatchMap {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("BatchMap").field("name", &self.name).finish()
    }
}

impl DisplayAs for BatchMap {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.name)
    }
}

impl ExecutionPlan for BatchMap {
    fn name(&self) -> &str {
        self.name
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal(format!("{} takes one input", self.name)))?;
        Ok(Arc::new(BatchMap { input, name: self.name, map: self.map.clone() }))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let inner = self.input.execute(partition, context)?;
        let schema = inner.schema();
        let mut map = (self.map)();
        let batches = inner.flat_map(move |batch| {
            let out: Vec<Result<RecordBatch>> = match batch.and_then(&mut map) {
                Ok(batches) => batches.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(out)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }
}

#[cfg(test)]
pub(super) mod testing {
    use std::sync::Arc;

    use arrow::array::AsArray;
    use arrow::datatypes::{DataType, Int64Type};
    use arrow::record_batch::RecordBatch;
    use datafusion::common::Result;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::OutputLimit;

    /// A session whose windows and joins are contained, with `limit` bytes
    /// of function output.
    pub(in crate::limits::guarded) fn context(limit: u64) -> SessionContext {
        let config = SessionConfig::new().with_target_partitions(2).with_extension(Arc::new(OutputLimit(limit)));
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_config(config)
            .with_physical_optimizer_rule(Arc::new(crate::limits::bounds::ContainWork { max_recursive_iterations: 10 }))
            .build();
        SessionContext::new_with_state(state)
    }

    pub(in crate::limits::guarded) async fn longs(ctx: &SessionContext, sql: &str) -> Result<Vec<i64>> {
        let batches = ctx.sql(sql).await?.collect().await?;
        let column = |b: &RecordBatch| arrow::compute::cast(b.column(0), &DataType::Int64);
        let columns = batches.iter().map(column).collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(columns.iter().flat_map(|c| c.as_primitive::<Int64Type>().values().to_vec()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch(rows: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(0..rows as i64))]).unwrap()
    }
    #[test]
    fn slices_keep_every_row_in_order() {
        let cut = slices(batch(10), 3);
        assert_eq!(cut.iter().map(|b| b.num_rows()).collect::<Vec<_>>(), vec![3, 3, 3, 1]);
        let joined = arrow::compute::concat_batches(&cut[0].schema(), &cut).unwrap();
        assert_eq!(joined, batch(10));
        assert_eq!(slices(batch(3), 3).len(), 1);
    }
}
