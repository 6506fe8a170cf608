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

/// Reply to a restore with `"dry_run": true`: exactly what would be written. Nothing was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePlan {
    pub dry_run: bool,
    pub backup: crate::BackupId,
    /// The backups that would be read, the full one first.
    pub chain: Vec<crate::BackupId>,
    pub stream: String,
    pub target: String,
    pub method: crate::events::RestoreMethod,
    /// Segments that would be fetched (only those the selection needs).
    pub segments: u64,
    /// Messages that would be written, and their bytes (subject + headers + payload).
    pub messages: u64,
    pub bytes: u64,
    /// Sequence and original-time range of those messages (absent when none).
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub first_time: Option<time::OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_time: Option<time::OffsetDateTime>,
    /// Consumers that would be recreated.
    pub consumers: Vec<crate::events::ConsumerRestored>,
    /// Anything the operator should know (subjects owned elsewhere, max_age expiry, …).
    pub notes: Vec<String>,
}

/// Reply to a repair with `"dry_run": true`: exactly what would change. Nothing did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairPreview {
    pub dry_run: bool,
    pub backup: crate::BackupId,
    /// The backups that would be read, the full one first.
    pub chain: Vec<crate::BackupId>,
    #[serde(flatten)]
    pub plan: crate::events::RepairPlan,
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
        ErrorReply {
            error: ErrorDetail {
                code: kind.status(),
                kind,
                message: message.into(),
            },
        }
    }
}
