//! The tasks a query node runs for the others, on its Flight port: each
//! task's session is made from the node's template (its tables, threads,
//! functions and limits) by [`WorkerSessions`], and [`serve`] listens. A
//! selection task (the fast path's scan elsewhere) gets a bare session.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::Result;
use datafusion::execution::SessionState;
use datafusion_distributed::{DistributedExt, Worker, WorkerQueryContext, WorkerSessionBuilder};

use crate::cluster::codec::ClusterCodec;
use crate::scan::spread::NodeTables;

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
    pub(crate) channels: crate::cluster::channels::TokenChannels,
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
        channels: crate::cluster::channels::TokenChannels,
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
    token: Option<crate::cluster::auth::ClusterToken>,
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
        .max_frame_size(crate::cluster::channels::MAX_FRAME)
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
            crate::cluster::channels::TokenChannels::new(None),
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
            crate::cluster::channels::TokenChannels::new(None),
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
}
