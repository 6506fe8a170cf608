//! Engine errors. Rules: every error becomes a `*Failed` event with a code and a message a
//! human can act on; archive errors keep the object (and record) they concern.

use cim_backup_contracts::ErrorCode;
use cim_backup_contracts::events::JobFailed;
use cim_backup_domain::DomainError;

use crate::archive::ArchiveError;
use crate::destination::DestinationError;
use crate::event_store::EventStoreError;
use crate::jobs::ExecuteError;
use crate::jsapi::JsApiError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The job was cancelled; not a failure.
    #[error("cancelled")]
    Cancelled,
    /// The service is going down under the job (its runtime cancelled a task the job waited
    /// for): not the job's fault, nothing is recorded, and the job resumes on restart.
    #[error("interrupted: the service is stopping")]
    Interrupted,
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Destination(#[from] DestinationError),
    #[error("NATS: {0}")]
    Nats(String),
    #[error(transparent)]
    JetStream(#[from] JsApiError),
    /// The domain refused what the engine tried to record: an engine bug or a lost race.
    #[error("the job refused the step: {0}")]
    Rejected(#[from] DomainError),
    #[error("event store: {0}")]
    Events(#[from] EventStoreError),
    /// The situation makes the job impossible (stream gone, target not empty, …).
    #[error("{message}")]
    Precondition { code: ErrorCode, message: String },
}

impl From<ExecuteError> for EngineError {
    fn from(e: ExecuteError) -> Self {
        match e {
            ExecuteError::Rejected(d) => EngineError::Rejected(d),
            ExecuteError::Store(s) => EngineError::Events(s),
        }
    }
}

impl EngineError {
    /// A blocking helper task ended without a result: cancelled means the runtime is shutting
    /// down (interrupted); a panic is an internal error.
    pub fn task(what: &str, e: tokio::task::JoinError) -> Self {
        if e.is_cancelled() {
            EngineError::Interrupted
        } else {
            EngineError::precondition(ErrorCode::Internal, format!("{what} task failed: {e}"))
        }
    }

    pub fn nats(e: impl std::fmt::Display) -> Self {
        EngineError::Nats(e.to_string())
    }

    pub fn precondition(code: ErrorCode, message: impl Into<String>) -> Self {
        EngineError::Precondition {
            code,
            message: message.into(),
        }
    }

    /// NATS itself went away under the job (connection lost, server restarted, no
    /// acknowledgement): the job can resume from what it recorded once NATS is back. Archive
    /// errors are not among them: object stores retry within their own bound.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            EngineError::Nats(_)
                | EngineError::JetStream(JsApiError::Transport { .. })
                | EngineError::Events(
                    EventStoreError::Nats(_) | EventStoreError::Unconfirmed { .. }
                )
        )
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            EngineError::Cancelled => ErrorCode::Conflict,
            EngineError::Interrupted => ErrorCode::Unavailable,
            EngineError::Archive(a) => a.code(),
            EngineError::Destination(d) => d.code(),
            EngineError::Nats(_) | EngineError::JetStream(_) | EngineError::Events(_) => {
                ErrorCode::Unavailable
            }
            EngineError::Rejected(_) => ErrorCode::Internal,
            EngineError::Precondition { code, .. } => *code,
        }
    }

    /// The `*Failed` event payload for this error.
    pub fn to_failure(&self) -> JobFailed {
        let (object, record) = match self {
            EngineError::Archive(a) => (Some(a.object().to_owned()), a.record()),
            _ => (None, None),
        };
        JobFailed {
            code: self.code(),
            message: self.to_string(),
            object,
            record,
        }
    }
}
