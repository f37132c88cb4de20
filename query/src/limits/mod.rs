//! Every limit a query runs under, below the engine that applies them: the
//! statement's shape before it is planned ([`statement`]), the deadline
//! inside planning ([`deadline`]), time slices and yield points in every
//! operator that can run long ([`yielding`], [`bounds`]), guarded copies
//! of the operators DataFusion runs in one step or whose batches repeat
//! one value ([`guarded`]), and the output of functions that grow their
//! input ([`functions`], measured by [`sizes`]). Nothing here knows a
//! table or the cluster: these are DataFusion's operators and functions,
//! bounded.

pub(crate) mod bounds;
pub(crate) mod deadline;
pub(crate) mod functions;
pub(crate) mod guarded;
pub(crate) mod sizes;
pub mod statement;
pub(crate) mod yielding;
