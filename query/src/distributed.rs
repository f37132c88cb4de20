//! Queries across the cluster on DataFusion Distributed.
//!
//! A table spread over query nodes is scanned by a [`ClusterScanExec`]: one
//! task per node holding some of the table's segments, each reading only
//! the segments it serves. Where the plan is cut into stages and where the
//! tasks run is `boundaries`' business. Every query node is both: it plans
//! the queries it receives and runs the tasks others send it (its
//! [`Worker`] on the Flight port, [`serve`]).
//!
//! Invariants:
//! - A task reads exactly the segments the planner assigned it: named
//!   segments are resolved on the node that runs it, and a segment that node
//!   no longer serves fails the task ([`NOT_SERVED`]) rather than being
//!   skipped; the engine re-plans with a fresh view.
//! - The planner's own segments, tail included, are pinned for the query in
//!   its process ([`Pin`]) and read by its own task: the cut between
//!   committed segments and tail rows is the one it planned with.
//! - A tail the planner does not serve is read on a holder strictly above
//!   the planner's committed end of the partition ([`tail_rows`]); a holder
//!   whose tail begins later refuses. A task's segments are resolved once
//!   for all its partitions: a tail changes between two reads.
//! - Scan work runs on the query runtime of the node that holds the data
//!   (deep stacks, the node's memory pool and limits).

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::{SessionState, TaskContext};
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::{ChildrenPropertiesMode, ExecutionPlan, ReplaceChildrenOptions};
use datafusion_distributed::{DistributedExt, Worker, WorkerQueryContext, WorkerSessionBuilder};
use datafusion_proto::physical_plan::{
    PhysicalExtensionCodec, PhysicalPlanDecodeContext, PhysicalProtoConverterExtension,
};
use datafusion_proto::protobuf;
use prost::Message;

use crate::optimizer::dictionary_group::DictionaryGroupBy;
use crate::scan::read::Reader;
use crate::scan::read::ScanSpec;
use crate::scan::spread::ClusterScanExec;
use crate::scan::spread::{NodeTables, Spec};
use crate::stats::ScanStats;

/// (De)serializes [`ClusterScanExec`] for the tasks sent between nodes.
#[derive(Debug)]
pub struct ClusterCodec;

#[derive(Clone, PartialEq, prost::Message)]
struct ScanProto {
    #[prost(bytes = "vec", tag = "1")]
    spec: Vec<u8>,
    #[prost(message, optional, tag = "2")]
    schema: Option<protobuf::Schema>,
    #[prost(message, optional, tag = "3")]
    read_schema: Option<protobuf::Schema>,
    #[prost(message, optional, tag = "4")]
    residual: Option<protobuf::PhysicalExprNode>,
    /// Set instead of the scan's fields for a [`DictionaryGroupBy`]: its
    /// aggregation over a placeholder, the scan being the node's input. A
    /// node that predates the field ignores it and refuses the input.
    #[prost(message, optional, tag = "5")]
    dictionary_group: Option<protobuf::PhysicalPlanNode>,
    /// Set instead of the scan's fields for a [`crate::limits::bounds::YieldExec`]
    /// over the node's input.
    #[prost(bool, tag = "6")]
    yield_point: bool,
    /// Set instead of the scan's fields for a [`crate::limits::bounds::RecursionCap`]
    /// over the node's input: its most iterations.
    #[prost(uint32, tag = "7")]
    recursion_cap: u32,
}

fn decode_error(what: &str, e: impl fmt::Display) -> DataFusionError {
    DataFusionError::Internal(format!("decoding a distributed scan's {what}: {e}"))
}

impl PhysicalExtensionCodec for ClusterCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let proto = ScanProto::decode(buf).map_err(|e| decode_error("message", e))?;
        if proto.yield_point || proto.recursion_cap > 0 {
            let [input] = inputs else {
                return Err(decode_error("yield point or recursion cap", "not exactly one input"));
            };
            if proto.yield_point {
                return Ok(Arc::new(crate::limits::bounds::YieldExec::new(Arc::clone(input))));
            }
            return Ok(Arc::new(crate::limits::bounds::RecursionCap::new(Arc::clone(input), proto.recursion_cap)));
        }
        if let Some(aggregate) = &proto.dictionary_group {
            let [scan] = inputs else {
                return Err(decode_error("grouping", "not exactly one input"));
            };
            if !scan.is::<ClusterScanExec>() {
                return Err(decode_error("grouping", "its input is not a distributed scan"));
            }
            let decode = PhysicalPlanDecodeContext::new(ctx, self);
            let aggregate = proto_converter.proto_to_execution_plan(aggregate, &decode)?;
            let aggregate = aggregate.replace_children(
                vec![Arc::clone(scan)],
                ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
            )?;
            let replaced = aggregate
                .downcast_ref::<AggregateExec>()
                .and_then(DictionaryGroupBy::of_shape)
                .filter(DictionaryGroupBy::is_grouped)
                .ok_or_else(|| decode_error("grouping", "not a partial aggregation by one string column"))?;
            return Ok(Arc::new(replaced));
        }
        if !inputs.is_empty() {
            return Err(DataFusionError::Internal("ClusterScanExec has no inputs".into()));
        }
        let spec: Spec = serde_json::from_slice(&proto.spec).map_err(|e| decode_error("spec", e))?;
        let schema = proto.schema.as_ref().ok_or_else(|| decode_error("schema", "absent"))?;
        let schema: SchemaRef = Arc::new(Schema::try_from(schema)?);
        let read_schema = proto.read_schema.as_ref().ok_or_else(|| decode_error("read schema", "absent"))?;
        let read_schema: SchemaRef = Arc::new(Schema::try_from(read_schema)?);
        let residual = match &proto.residual {
            Some(node) => {
                let decode = PhysicalPlanDecodeContext::new(ctx, self);
                Some(proto_converter.proto_to_physical_expr(node, &read_schema, &decode)?)
            }
            None => None,
        };
        if spec.output.iter().any(|&i| i >= read_schema.fields().len()) {
            return Err(decode_error("output columns", "out of range"));
        }
        let reader = Reader { read_schema, residual, output: spec.output };
        let scan = ScanSpec {
            table: spec.table,
            schema,
            reader,
            predicate: spec.predicate,
            exact: spec.exact,
            limit: spec.limit,
        };
        Ok(Arc::new(ClusterScanExec::new(scan, spec.tasks, spec.partitions, None, ScanStats::default())))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        if let Some(group) = node.downcast_ref::<DictionaryGroupBy>() {
            // The scan travels as the node's input: the aggregation is sent
            // over a placeholder of the scan's schema, not a second copy.
            let aggregate = group.aggregate();
            let placeholder: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(aggregate.input().schema()));
            let aggregate = Arc::new(aggregate.clone())
                .replace_children(vec![placeholder], ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))?;
            let proto = ScanProto {
                dictionary_group: Some(proto_converter.execution_plan_to_proto(&aggregate, self)?),
                ..Default::default()
            };
            return proto
                .encode(buf)
                .map_err(|e| DataFusionError::Internal(format!("encoding a distributed grouping: {e}")));
        }
        let wrapper = if node.is::<crate::limits::bounds::YieldExec>() {
            Some(ScanProto { yield_point: true, ..Default::default() })
        } else {
            node.downcast_ref::<crate::limits::bounds::RecursionCap>()
                .map(|cap| ScanProto { recursion_cap: cap.max(), ..Default::default() })
        };
        if let Some(proto) = wrapper {
            return proto.encode(buf).map_err(|e| DataFusionError::Internal(format!("encoding a yield point: {e}")));
        }
        let Some(scan) = node.downcast_ref::<ClusterScanExec>() else {
            return Err(DataFusionError::Internal(format!("ClusterCodec cannot encode {}", node.name())));
        };
        let spec = Spec {
            table: scan.spec.table.clone(),
            tasks: scan.tasks.clone(),
            predicate: scan.spec.predicate.clone(),
            exact: scan.spec.exact,
            limit: scan.spec.limit,
            partitions: scan.partitions,
            output: scan.spec.reader.output.clone(),
        };
        let residual = match &scan.spec.reader.residual {
            Some(expr) => Some(proto_converter.physical_expr_to_proto(expr, self)?),
            None => None,
        };
        let proto = ScanProto {
            spec: serde_json::to_vec(&spec).map_err(|e| DataFusionError::Internal(e.to_string()))?,
            schema: Some(scan.spec.schema.as_ref().try_into()?),
            read_schema: Some(scan.spec.reader.read_schema.as_ref().try_into()?),
            residual,
            ..Default::default()
        };
        proto.encode(buf).map_err(|e| DataFusionError::Internal(format!("encoding a distributed scan: {e}")))
    }
}

/// The header a planner sets on the tasks of a plain selection: the
/// table's scan, its filter translated exactly into the segments' own
/// predicate, nothing left for an expression to evaluate. Such a task's
/// plan names no function, so its worker builds its session bare: a clone
/// of the template copies a few hundred functions' registries, and its
/// task context copies them again, for a plan that never looks one up.
/// A plan that did name a function would fail to decode ("no UDF named
/// ..."), never run differently.
const TASK_HEADER: &str = "x-sluice-task";
/// [`TASK_HEADER`]'s value for a plain selection.
const SELECTION_TASK: &str = "selection";

/// The headers a planner sends with a plain selection's tasks (see
/// [`TASK_HEADER`]).
pub(crate) fn selection_task_headers() -> tonic::codegen::http::HeaderMap {
    use tonic::codegen::http::{HeaderMap, HeaderName, HeaderValue};
    let mut headers = HeaderMap::new();
    headers.insert(HeaderName::from_static(TASK_HEADER), HeaderValue::from_static(SELECTION_TASK));
    headers
}

/// The session a node's worker runs others' tasks in: the node's tables,
/// functions and codec.
pub(crate) struct WorkerSessions {
    pub(crate) tables: crate::scan::table::Tables,
    /// This node's `limits.threads`.
    pub(crate) threads: usize,
    /// This node's `limits.max_function_output`.
    pub(crate) max_function_output: u64,
    /// Workers call each other too: with the cluster's token.
    pub(crate) channels: crate::channels::TokenChannels,
    /// Every task's session but its config. Building a session registers
    /// DataFusion's few hundred functions and ours one by one, which cost
    /// each task more than its plan's decoding; a clone copies the
    /// registries. Built with the worker's runtime (its memory pool) and
    /// the default options a task's session starts from, so the functions
    /// that read the config at registration see what they would.
    template: SessionState,
    /// The session of a plain selection's task (see [`TASK_HEADER`]): the
    /// worker's runtime, no functions.
    bare: SessionState,
}

impl WorkerSessions {
    pub(crate) fn new(
        tables: crate::scan::table::Tables,
        threads: usize,
        max_function_output: u64,
        channels: crate::channels::TokenChannels,
        runtime: Arc<datafusion::execution::runtime_env::RuntimeEnv>,
    ) -> Self {
        use datafusion::execution::SessionStateBuilder;
        let bare = SessionStateBuilder::new().with_runtime_env(runtime.clone()).build();
        let mut template = SessionStateBuilder::new().with_default_features().with_runtime_env(runtime).build();
        crate::limits::functions::register(&mut template, max_function_output);
        WorkerSessions { tables, threads, max_function_output, channels, template, bare }
    }
}

#[async_trait]
impl WorkerSessionBuilder for WorkerSessions {
    async fn build_session_state(&self, mut ctx: WorkerQueryContext) -> Result<SessionState> {
        // The task's config (its place in the stage, the options the
        // planner sent as headers), then this node's additions.
        let mut config = ctx.builder.config().take().unwrap_or_default();
        config.set_distributed_user_codec(ClusterCodec);
        config.set_distributed_channel_resolver(self.channels.clone());
        config.set_extension(Arc::new(NodeTables { tables: self.tables.clone(), threads: self.threads }));
        config.set_extension(Arc::new(crate::limits::guarded::OutputLimit(self.max_function_output)));
        let selection = ctx.headers.get(TASK_HEADER).is_some_and(|v| v == SELECTION_TASK);
        let mut state = if selection { self.bare.clone() } else { self.template.clone() };
        *state.config_mut() = config;
        Ok(state)
    }
}

/// Serves the node's worker on `listener` until `shutdown` turns true,
/// to callers presenting `token` when there is one.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    worker: Worker,
    token: Option<crate::flight_auth::ClusterToken>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let authenticate = move |request: tonic::Request<()>| match &token {
        Some(token) => token.check(request),
        None => Ok(request),
    };
    // Small messages (a plan, a partial aggregate) must not wait out
    // Nagle's algorithm against the peer's delayed acknowledgement (40 ms
    // a round trip): tonic sets TCP_NODELAY only on listeners it binds.
    let incoming = futures::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |conn| {
        if let Ok(stream) = &conn {
            let _ = stream.set_nodelay(true);
        }
        conn
    });
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    if let Err(e) = tonic::transport::Server::builder()
        // A plan or a batch a peer sends crosses in one frame (see
        // `channels`).
        .max_frame_size(crate::channels::MAX_FRAME)
        .layer(tonic::service::InterceptorLayer::new(authenticate))
        .add_service(worker.into_worker_server())
        .serve_with_incoming_shutdown(incoming, stop)
        .await
    {
        tracing::error!(error = %e, "the Flight server of distributed tasks stopped");
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::scan::spread::Task;
    use arrow::datatypes::{DataType, Field};
    use datafusion_proto::physical_plan::DefaultPhysicalProtoConverter;

    /// A task's session comes from the node's template: the config the
    /// task arrived with, this node's tables added, and the node's bounded
    /// functions; the template itself is left as it was.
    #[tokio::test]
    async fn a_task_session_keeps_its_config_and_gets_the_nodes_functions() {
        use datafusion::execution::SessionStateBuilder;
        use datafusion::execution::runtime_env::RuntimeEnv;
        use datafusion::prelude::SessionConfig;
        struct Mark;
        let sessions = WorkerSessions::new(
            crate::scan::table::Tables::default(),
            3,
            1024,
            crate::channels::TokenChannels::new(None),
            Arc::new(RuntimeEnv::default()),
        );
        let config = SessionConfig::new().with_batch_size(123).with_extension(Arc::new(Mark));
        let task =
            WorkerQueryContext { builder: SessionStateBuilder::new().with_config(config), headers: Default::default() };
        let state = sessions.build_session_state(task).await.unwrap();
        assert_eq!(state.config().batch_size(), 123);
        assert!(state.config().get_extension::<Mark>().is_some());
        assert_eq!(state.config().get_extension::<NodeTables>().map(|n| n.threads), Some(3));
        let repeat = state.scalar_functions().get("repeat").expect("repeat is registered");
        assert!(format!("{:?}", repeat.inner()).starts_with("Bounded"), "{repeat:?}");
        assert!(state.scalar_functions().len() > 100, "DataFusion's functions too");
        assert!(sessions.template.config().get_extension::<NodeTables>().is_none());
    }

    /// A plain selection's task (the header its planner sets) gets a bare
    /// session: the task's config and this node's tables, no function
    /// registries to copy.
    #[tokio::test]
    async fn a_selection_task_session_is_bare() {
        use datafusion::execution::SessionStateBuilder;
        use datafusion::execution::runtime_env::RuntimeEnv;
        use datafusion::prelude::SessionConfig;
        use tonic::codegen::http::{HeaderMap, HeaderName, HeaderValue};
        let sessions = WorkerSessions::new(
            crate::scan::table::Tables::default(),
            2,
            1024,
            crate::channels::TokenChannels::new(None),
            Arc::new(RuntimeEnv::default()),
        );
        let config = SessionConfig::new().with_batch_size(77);
        let task = WorkerQueryContext {
            builder: SessionStateBuilder::new().with_config(config),
            headers: selection_task_headers(),
        };
        let state = sessions.build_session_state(task).await.unwrap();
        assert_eq!(state.config().batch_size(), 77);
        assert_eq!(state.config().get_extension::<NodeTables>().map(|n| n.threads), Some(2));
        assert!(state.scalar_functions().is_empty() && state.aggregate_functions().is_empty());

        // Any other value is an ordinary task.
        let mut headers = HeaderMap::new();
        headers.insert(HeaderName::from_static(TASK_HEADER), HeaderValue::from_static("other"));
        let task = WorkerQueryContext { builder: SessionStateBuilder::new(), headers };
        let state = sessions.build_session_state(task).await.unwrap();
        assert!(state.scalar_functions().len() > 100);
    }

    fn scan(output: Vec<usize>) -> ScanProto {
        let schema = Schema::new(vec![Field::new("status", DataType::Int32, true)]);
        let spec = Spec {
            table: "clicks".into(),
            tasks: vec![Task {
                url: "http://127.0.0.1:1".into(),
                named: vec!["s".into()],
                pinned: None,
                tails: vec![],
            }],
            predicate: None,
            exact: true,
            limit: None,
            partitions: 2,
            output,
        };
        ScanProto {
            spec: serde_json::to_vec(&spec).unwrap(),
            schema: Some((&schema).try_into().unwrap()),
            read_schema: Some((&schema).try_into().unwrap()),
            residual: None,
            ..Default::default()
        }
    }

    /// The Flight port takes plans from the network: bytes that are not a
    /// scan, or a scan pointing outside its own columns, are refused with
    /// an error, never a panic or an out-of-bounds read later.
    #[test]
    fn hostile_scan_bytes_are_refused() {
        let (ctx, converter) = (TaskContext::default(), DefaultPhysicalProtoConverter {});
        let decode = |bytes: &[u8]| ClusterCodec.try_decode(bytes, &[], &ctx, &converter);
        let mut truncated = scan(vec![0]).encode_to_vec();
        truncated.truncate(truncated.len() / 2);
        let mut bad_spec = scan(vec![0]);
        bad_spec.spec = b"{\"table\": 7}".to_vec();
        let mut no_schema = scan(vec![0]);
        no_schema.schema = None;
        for bytes in [
            Vec::new(),
            vec![0xff; 64],
            truncated,
            bad_spec.encode_to_vec(),
            no_schema.encode_to_vec(),
            scan(vec![5]).encode_to_vec(),
        ] {
            assert!(decode(&bytes).is_err(), "{bytes:?}");
        }
        assert!(decode(&scan(vec![0]).encode_to_vec()).is_ok(), "a well-formed scan decodes");

        // A grouping: without its scan, over something else than a scan,
        // or carrying no aggregation, it is refused.
        let well_formed = decode(&scan(vec![0]).encode_to_vec()).unwrap();
        let grouping =
            ScanProto { dictionary_group: Some(protobuf::PhysicalPlanNode::default()), ..Default::default() }
                .encode_to_vec();
        let empty: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(well_formed.schema()));
        for inputs in [vec![], vec![empty], vec![well_formed.clone(), well_formed.clone()], vec![well_formed]] {
            let decoded = ClusterCodec.try_decode(&grouping, &inputs, &ctx, &converter);
            assert!(decoded.is_err(), "{} inputs", inputs.len());
        }
    }

    /// A stage sent to another node keeps its yield points and its
    /// recursion cap; either needs exactly one input.
    #[test]
    fn yield_points_and_recursion_caps_travel() {
        let (ctx, converter) = (TaskContext::default(), DefaultPhysicalProtoConverter {});
        let input: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(Arc::new(Schema::empty())));
        let round_trip = |node: Arc<dyn ExecutionPlan>, inputs: &[Arc<dyn ExecutionPlan>]| {
            let mut buf = Vec::new();
            ClusterCodec.try_encode(node, &mut buf, &converter).unwrap();
            ClusterCodec.try_decode(&buf, inputs, &ctx, &converter)
        };
        let yielding = Arc::new(crate::limits::bounds::YieldExec::new(input.clone()));
        let decoded = round_trip(yielding.clone(), std::slice::from_ref(&input)).unwrap();
        assert!(decoded.is::<crate::limits::bounds::YieldExec>());
        let capped = Arc::new(crate::limits::bounds::RecursionCap::new(input.clone(), 77));
        let decoded = round_trip(capped, std::slice::from_ref(&input)).unwrap();
        assert_eq!(decoded.downcast_ref::<crate::limits::bounds::RecursionCap>().map(|c| c.max()), Some(77));
        for inputs in [vec![], vec![input.clone(), input.clone()]] {
            assert!(round_trip(yielding.clone(), &inputs).is_err(), "{} inputs", inputs.len());
        }
    }
}
