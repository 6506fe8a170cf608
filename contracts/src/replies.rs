//! Reply bodies of commands and queries.

use serde::{Deserialize, Serialize};

use crate::errors::ErrorCode;
use crate::ids::JobId;
use crate::views::{JobKind, JobState};

/// Reply to an accepted command: the job exists and its first event is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accepted {
    pub job_id: JobId,
    pub kind: JobKind,
    /// State of the job when the reply was sent (`accepted` for a new job; for a duplicate
    /// idempotency key, whatever state the existing job is in).
    pub state: JobState,
    /// True when the idempotency key matched an existing job and no new job was started.
    #[serde(default)]
    pub duplicate: bool,
}

/// Reply to a cancel command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelAccepted {
    pub job_id: JobId,
    /// `true` if this request recorded the cancellation, `false` if one was already pending.
    pub requested: bool,
}

/// The JSON body of every error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorReply {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorDetail {
    /// Numeric code, same as the `Nats-Service-Error-Code` header.
    pub code: u16,
    /// Machine-readable kind.
    pub kind: ErrorCode,
    /// Human-readable message naming what was wrong.
    pub message: String,
}

impl ErrorReply {
    pub fn new(kind: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply { error: ErrorDetail { code: kind.status(), kind, message: message.into() } }
    }
}
