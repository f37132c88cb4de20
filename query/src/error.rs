//! Why a query did not answer: [`QueryError`], the HTTP status and Pinot
//! error code each maps to, and how DataFusion's errors are sorted into
//! them. The prefixes of the refusals raised inside execution (a function's
//! output, a recursion's iterations) are defined here, so the layers that
//! raise them and the engine that sorts them share one word.

use std::time::Duration;

use datafusion::error::DataFusionError;

/// The prefix of a refusal by a function's output bound
/// (`crate::limits::functions`): the query is too expensive (413).
pub(crate) const REFUSED: &str = "function output limit";

/// The prefix of a refusal by a recursive query's iteration cap
/// (`crate::limits::bounds`): too expensive (413).
pub(crate) const RECURSION_REFUSED: &str = "recursion limit";

/// Why a query did not answer. Each maps to an HTTP status and a Pinot
/// error code ([`QueryError::status`], [`QueryError::pinot_code`]).
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("SQL syntax error: {message}")]
    Syntax { message: String },
    #[error("{message}")]
    UnknownTable { message: String },
    #[error("sluice is read-only, the statement was refused: {message}")]
    ReadOnly { message: String },
    #[error("invalid query: {message}")]
    Invalid { message: String },
    #[error("query failed: {message}")]
    Execution { message: String },
    #[error("query exceeded the memory limit: {message}")]
    OutOfMemory { message: String },
    #[error("query timed out after {limit:?}")]
    Timeout { limit: Duration },
    #[error("the result has more than {limit} rows (the node's max_result_rows); add a LIMIT or aggregate")]
    TooManyRows { limit: u64 },
    #[error(
        "the result is larger than {limit} bytes (the node's limits.max_result_bytes); select fewer or smaller values"
    )]
    ResultTooLarge { limit: u64 },
    #[error("the query is too expensive: {message}")]
    TooExpensive { message: String },
    #[error("the statement exceeds {limit}: {message}")]
    TooComplex { limit: &'static str, message: String },
    #[error("the query node is overloaded ({running} queries running, {queued} waiting); retry later")]
    Overloaded { running: usize, queued: usize },
    #[error("internal error: {message}")]
    Internal { message: String },
    /// A task on another query node failed in a way a retry may fix; never
    /// returned to a client (after the last attempt it is `Internal`).
    #[error("a distributed task failed: {message}")]
    Remote { message: String, node: Option<String> },
}

impl QueryError {
    pub fn status(&self) -> u16 {
        match self {
            QueryError::Syntax { .. }
            | QueryError::UnknownTable { .. }
            | QueryError::ReadOnly { .. }
            | QueryError::Invalid { .. }
            | QueryError::TooComplex { .. }
            | QueryError::Execution { .. } => 400,
            QueryError::TooManyRows { .. } | QueryError::ResultTooLarge { .. } | QueryError::TooExpensive { .. } => 413,
            QueryError::Timeout { .. } => 504,
            QueryError::Overloaded { .. } | QueryError::OutOfMemory { .. } => 503,
            QueryError::Internal { .. } | QueryError::Remote { .. } => 500,
        }
    }

    /// Pinot's `QueryErrorCode` numbers, so clients recognise the class.
    pub fn pinot_code(&self) -> i32 {
        match self {
            QueryError::Syntax { .. } => 150,
            QueryError::UnknownTable { .. } => 190,
            QueryError::ReadOnly { .. } | QueryError::Invalid { .. } | QueryError::TooComplex { .. } => 700,
            QueryError::Execution { .. } | QueryError::Internal { .. } | QueryError::Remote { .. } => 200,
            QueryError::OutOfMemory { .. } => 211,
            QueryError::Timeout { .. } => 250,
            QueryError::TooManyRows { .. } | QueryError::ResultTooLarge { .. } | QueryError::TooExpensive { .. } => 240,
            QueryError::Overloaded { .. } => 503,
        }
    }

    /// The metric label of the outcome.
    pub fn outcome(&self) -> &'static str {
        match self {
            QueryError::Syntax { .. }
            | QueryError::UnknownTable { .. }
            | QueryError::ReadOnly { .. }
            | QueryError::Invalid { .. }
            | QueryError::Execution { .. } => "bad_query",
            QueryError::TooComplex { .. } => "too_complex",
            QueryError::TooManyRows { .. } | QueryError::ResultTooLarge { .. } => "too_large",
            QueryError::TooExpensive { .. } => "too_expensive",
            QueryError::Timeout { .. } => "timeout",
            QueryError::Overloaded { .. } => "overloaded",
            QueryError::OutOfMemory { .. } => "out_of_memory",
            QueryError::Internal { .. } | QueryError::Remote { .. } => "error",
        }
    }

    /// A failure while planning: DataFusion reports some type errors of the
    /// query as internal ones (for example `ts BETWEEN 1 AND 2` on a
    /// timestamp), and a query that cannot be planned is the query's fault.
    pub(crate) fn from_planning(e: DataFusionError) -> QueryError {
        match e.find_root() {
            DataFusionError::Internal(m) => {
                QueryError::Invalid { message: format!("the query cannot be planned: {m}") }
            }
            _ => QueryError::from_datafusion(e),
        }
    }

    pub(crate) fn from_datafusion(e: DataFusionError) -> QueryError {
        let root = e.find_root();
        let message = root.to_string();
        match root {
            DataFusionError::SQL(..) => QueryError::Syntax { message },
            DataFusionError::Plan(m) if m.starts_with("table '") && m.ends_with("not found") => {
                QueryError::UnknownTable { message: format!("unknown table: {m}") }
            }
            DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_)
            | DataFusionError::Configuration(_) => QueryError::Invalid { message },
            // Runtime failures caused by the data and the query: a failed
            // cast, a division by zero, an overflow.
            DataFusionError::ArrowError(..) | DataFusionError::Execution(_) => QueryError::Execution { message },
            // Kernels report bad user input (a regex that does not compile,
            // a failed cast) as Arrow compute errors, which DataFusion's
            // function wrappers sometimes label internal.
            DataFusionError::Internal(m) if m.contains("Compute error") || m.contains("did not compile") => {
                QueryError::Execution { message }
            }
            DataFusionError::ResourcesExhausted(m) if m.starts_with(REFUSED) || m.starts_with(RECURSION_REFUSED) => {
                QueryError::TooExpensive { message }
            }
            // A task of DataFusion's that panicked (its text stays in the log).
            DataFusionError::ExecutionJoin(join) => crashed(&join.to_string()),
            DataFusionError::ResourcesExhausted(_) => QueryError::OutOfMemory { message },
            _ => QueryError::Internal { message },
        }
    }
}

/// A panic in a query's work: a 500 that says no more than that (its text
/// may name the node's internals), counted and logged with the text.
pub(crate) fn crashed(panic: &str) -> QueryError {
    metrics::counter!("sluice_query_panics_total").increment(1);
    tracing::error!(panic = %panic, "a query panicked");
    QueryError::Internal { message: "the query failed unexpectedly; the node logged the cause".into() }
}
