//! `restore-deleted --type projection`: one read-model key brought back to its value as of a
//! time, from the bucket's own history or else from the newest projection snapshot before that
//! time (docs/PROJECTIONS.md §9).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::cid::{Cid, link};
use crate::events::Admission;

/// `cim.backup.cmd.restore-deleted`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreDeleted {
    /// What is restored; only `projection` (a read-model key).
    pub r#type: String,
    /// The key, e.g. `graph.node42`.
    pub id: String,
    /// RFC 3339: the value the key had at this time.
    pub timestamp: String,
    /// The bucket, when the key's domain has read models in several that could hold it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Show what would be written and write nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Replace a live value that differs (without it, only a deleted or missing key is
    /// written).
    #[serde(default)]
    pub confirm: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

/// Where the value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ValueOrigin {
    /// The bucket still holds the revision.
    History {
        revision: u64,
        #[serde(with = "time::serde::rfc3339")]
        created: OffsetDateTime,
    },
    /// The newest projection snapshot before the time holds it.
    Snapshot {
        #[serde(with = "link")]
        id: Cid,
        #[serde(with = "time::serde::rfc3339")]
        taken_at: OffsetDateTime,
        location: String,
    },
}

/// The key as it is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LiveState {
    /// No entry at all (purged, or never written).
    Missing,
    /// Its last entry is a delete or purge marker.
    Deleted,
    /// It holds the value already.
    Same,
    /// It holds another value.
    Differs,
}

/// What `restore-deleted` would write, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRestorePlan {
    pub domain: String,
    pub model: String,
    pub bucket: String,
    pub key: String,
    #[serde(with = "time::serde::rfc3339")]
    pub as_of: OffsetDateTime,
    pub origin: ValueOrigin,
    pub live: LiveState,
    /// The live entry's revision the write expects (0: none), so nothing written meanwhile is
    /// overwritten.
    pub live_revision: u64,
    pub value_bytes: u64,
    /// The value as text, cut at 200 characters (empty when it is not UTF-8).
    pub preview: String,
}

/// The reply: the plan, and the job that writes it (none for a dry run or a key that holds the
/// value already).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreDeletedReply {
    pub plan: KeyRestorePlan,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

/// The first event of a `key-restore` job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRestoreAccepted {
    pub plan: KeyRestorePlan,
    /// The value to write, base64.
    pub value: String,
    pub admission: Admission,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRestoreStarted {}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRestoreCompleted {
    /// The revision the key got.
    pub revision: u64,
}
