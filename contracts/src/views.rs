//! Read models returned by the queries. The `projections` crate folds events into them; they are
//! plain JSON on the wire.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::events::StreamSummary;
use crate::ids::{BackupId, EventCid, JobId};

pub use crate::kinds::JobKind;

/// Lifecycle state of a job (DESIGN §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Accepted,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobState {
    /// Whether the job can no longer change.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Accepted => "accepted",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counters of a running or finished job. `*_total` is known once the job has started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub messages_done: u64,
    pub messages_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub objects_done: u64,
    pub objects_total: u64,
}

/// Why a job failed, as shown to users: exactly what its `*Failed` event says.
pub type JobError = crate::events::JobFailed;

/// The status view of one job (`cim.backup.qry.job`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    pub job_id: JobId,
    pub kind: JobKind,
    pub state: JobState,
    /// What the job works on: streams for a backup, `stream → target` for a restore, the backup
    /// id for a verify.
    pub subject: String,
    /// Destination of a backup, source of a restore or verify (URL, no credentials).
    pub location: String,
    pub instance: String,
    pub correlation_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub accepted_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    pub progress: Progress,
    /// Bytes a backup has stored in its destination (segments or parts as stored, compressed
    /// and encrypted, and the manifest): with `progress.bytes_done`, its compression ratio.
    #[serde(default)]
    pub stored_bytes: u64,
    /// The backup written (backup jobs) or read (restore, verify jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<BackupId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    #[serde(default)]
    pub cancel_requested: bool,
    /// Per-aggregate sequence of the last event folded into this view.
    pub version: u64,
    /// CID of the last event folded into this view: the head of the job's chain.
    pub head: EventCid,
    /// Stream sequence of that event in the events stream (0 if unknown): where a reader that
    /// finds the view behind the log continues folding.
    #[serde(default)]
    pub head_seq: u64,
    /// A finished check's reports (one per stream checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reports: Option<Vec<crate::integrity::IntegrityReport>>,
    /// A finished replay's consumers, reset to its start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replayed: Vec<String>,
    /// What the operator should know about a finished restore or repair (subjects left out,
    /// limits relaxed, the safety copy kept, messages replaced).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Projection snapshots the job wrote (a projection restore: its safety snapshot).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<crate::projections::SnapshotSummary>,
    /// A finished projection restore, per read model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restored: Vec<crate::projections::ModelRestored>,
    /// A finished projection restore with verify: whether every model matched its snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
}

/// One stored backup (`cim.backup.qry.backups`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEntry {
    pub backup_id: BackupId,
    pub job_id: JobId,
    /// Destination URL the backup is stored in.
    pub destination: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub streams: Vec<StreamSummary>,
    pub messages: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    /// Objects in the backup: segments plus the manifest.
    pub objects: u64,
    pub compression: String,
    pub encrypted: bool,
    /// The streams that back KV buckets (`KV_<bucket>`) or object stores (`OBJ_<bucket>`).
    #[serde(default)]
    pub buckets: Vec<BucketRef>,
    /// The file trees it holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trees: Vec<crate::files::TreeSummary>,
}

/// A stream that is the storage of a KV bucket or an object store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketRef {
    pub stream: String,
    /// `kv` or `object_store`.
    pub kind: String,
    pub name: String,
}

impl BucketRef {
    /// The bucket a stream backs, by the JetStream naming convention.
    pub fn of(stream: &str) -> Option<BucketRef> {
        let (kind, name) = if let Some(name) = stream.strip_prefix("KV_") {
            ("kv", name)
        } else if let Some(name) = stream.strip_prefix("OBJ_") {
            ("object_store", name)
        } else {
            return None;
        };
        Some(BucketRef {
            stream: stream.to_owned(),
            kind: kind.to_owned(),
            name: name.to_owned(),
        })
    }
}
