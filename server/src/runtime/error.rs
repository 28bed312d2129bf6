//! The runtime's closed set of errors; the gRPC layer maps each to a status
//! code in one place.

use crate::engine::EngineError;
use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    #[error("{field}: {message}")]
    InvalidArgument {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    NotFound(String),
    /// Never says whether the agent or gateway exists.
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    /// A watch asked for history that is gone.
    #[error("{message}")]
    OutOfRange {
        message: String,
        oldest_revision: u64,
    },
    /// A watch asked to start after a revision not yet written (a revision
    /// from another service's history, say).
    #[error("{message}")]
    RevisionAhead {
        message: String,
        current_revision: u64,
    },
    /// A watcher fell too far behind; it may resume from `resume_revision`.
    #[error("{message}")]
    ResourceExhausted {
        message: String,
        resume_revision: u64,
    },
    /// A per-agent budget is spent; the caller may retry after the delay.
    #[error("{message}")]
    Throttled {
        message: String,
        retry_after: std::time::Duration,
    },
    /// A per-server limit on open streams was reached.
    #[error("{0}")]
    TooManyStreams(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl LifecycleError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            message: message.into(),
        }
    }

    /// The writer's queue is full: shed, and let the caller retry.
    pub fn overloaded() -> Self {
        Self::Unavailable(
            "the service is overloaded (the writer's queue is full); retry shortly".into(),
        )
    }

    pub fn shutting_down() -> Self {
        Self::Unavailable("the server is shutting down".into())
    }
}

impl From<EngineError> for LifecycleError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::AgentNotFound(_) | EngineError::GatewayNotFound(_) => {
                Self::NotFound(e.to_string())
            }
            EngineError::Unauthenticated => Self::Unauthenticated(e.to_string()),
            EngineError::FailedPrecondition(message) => Self::FailedPrecondition(message),
        }
    }
}

impl From<StoreError> for LifecycleError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_)
            | StoreError::Refused(_)
            | StoreError::Conflict(_)
            | StoreError::NotLeader(_) => Self::Unavailable(e.to_string()),
            StoreError::Corrupt(_) | StoreError::Other(_) => Self::Internal(e.to_string()),
        }
    }
}
