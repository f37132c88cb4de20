#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoordError {
    /// The operation may succeed if retried (connection loss, timeout).
    #[error("{operation}: transient coordination error: {reason}")]
    Transient { operation: String, reason: String },
    /// The session ended; everything it held is gone.
    #[error("{operation}: the coordination session expired")]
    SessionExpired { operation: String },
    #[error("{operation}: malformed data at {path}: {reason}")]
    Malformed { operation: String, path: String, reason: String },
    /// Another live session registered this worker id (for example the
    /// previous incarnation of a restarted worker, until its session expires).
    #[error("worker id {id} is registered by another live session")]
    WorkerIdTaken { id: String },
    /// The same for a query node id.
    #[error("query node id {id} is registered by another live session")]
    QueryNodeIdTaken { id: String },
    #[error("{operation}: {reason}")]
    Unexpected { operation: String, reason: String },
}

impl CoordError {
    pub fn is_transient(&self) -> bool {
        matches!(self, CoordError::Transient { .. })
    }
}
