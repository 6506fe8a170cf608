//! Catch-up and rebuild in the contract: the requests of `replay-events` and
//! `rebuild-projections`, and what their jobs record (docs/PROJECTIONS.md §8).
//!
//! Both move a domain's projector consumers back to an earlier event and follow them until they
//! have caught up. A rebuild first stops them (a consumer pause), clears the domain's read
//! models after a safety snapshot, and then moves them to the first event. cim-backup never
//! folds events itself: the domain's own projector processes do, and the job watches their
//! consumers.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::cid::{Cid, link};
use crate::events::Admission;
use crate::projections::{Domain, ModelRestored, SnapshotSummary};

/// Seconds without a single acknowledgement, with events waiting, after which a replay decides
/// that no projector is consuming and fails (`stall_timeout_secs`).
pub const DEFAULT_STALL_TIMEOUT_SECS: u64 = 30;
/// Events between two checkpoints of a rebuild (`checkpoint_interval`).
pub const DEFAULT_CHECKPOINT_INTERVAL: u64 = 100_000;

/// `cim.backup.cmd.replay-events`: a domain's projectors moved back and followed until caught
/// up. Exactly one of `from_beginning`, `from_timestamp` and `from_snapshot` says where to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayEvents {
    /// Domain names, or `["all"]`: every domain with projectors.
    pub domains: Vec<String>,
    #[serde(default)]
    pub from_beginning: bool,
    /// RFC 3339: each projector is moved to the first event of its stream at or after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_timestamp: Option<String>,
    /// A projection snapshot id: each projector is moved to the event after the position the
    /// snapshot recorded for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_snapshot: Option<String>,
    /// Where that snapshot is (default: the catalog).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Domains replayed at once (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall_timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_interval: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

/// `cim.backup.cmd.rebuild-projections`: a domain's read models rebuilt from its first event.
/// With `dry_run` the reply is a [`RebuildPlan`]; a domain whose read models hold keys needs
/// `confirm` (they are cleared).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebuildProjections {
    /// Domain names, or `["all"]`: every domain with projectors.
    pub domains: Vec<String>,
    /// Accepted for the runbook's spelling; a rebuild always starts at the first event.
    #[serde(default)]
    pub from_beginning: bool,
    /// The most events a projector may hold unacknowledged during the rebuild (its consumer's
    /// `max_ack_pending`, put back when it has caught up). Default: the consumer's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_interval: Option<u64>,
    /// Domains rebuilt at once (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall_timeout_secs: Option<u64>,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub confirm: bool,
    #[serde(default)]
    pub no_safety_snapshot: bool,
    /// Where the safety snapshots go (default: the service's default destination).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

/// What a rebuild would do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildPlan {
    pub domains: Vec<PlannedRebuild>,
    /// Where the safety snapshots would be written; empty with `no_safety_snapshot`.
    pub safety_destination: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedRebuild {
    pub domain: String,
    /// Read models and their live keys, all of which the rebuild deletes first.
    pub models: Vec<crate::projections::PlannedClear>,
    pub projectors: Vec<PlannedReplay>,
}

/// Where one projector is moved to, decided at accept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedReplay {
    pub domain: String,
    pub stream: String,
    pub consumer: String,
    /// The first stream sequence delivered again.
    pub from_seq: u64,
}

/// What a replay job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplayOperation {
    /// Catch-up: projectors moved back, read models left as they are.
    Replay,
    /// Projectors stopped, read models cleared, projectors moved to the first event.
    Rebuild,
}

/// The first event of a replay job: everything it will do, decided at accept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayJobAccepted {
    pub operation: ReplayOperation,
    /// Each domain, with its read models (cleared by a rebuild) and projectors.
    pub domains: Vec<Domain>,
    pub projectors: Vec<PlannedReplay>,
    /// How the start was named, for the report: `beginning`, an RFC 3339 time, or a snapshot.
    pub from: String,
    #[serde(
        default,
        with = "link::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub from_snapshot: Option<Cid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u64>,
    pub checkpoint_interval: u64,
    pub parallel: u32,
    pub stall_timeout_secs: u64,
    /// A rebuild: where its safety snapshots go (empty with `no_safety_snapshot`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub destination: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub destination_url: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_safety_snapshot: bool,
    pub admission: Admission,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayJobStarted {}

/// A rebuild's read models of one domain emptied (after its safety snapshot, if any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainCleared {
    pub domain: String,
    pub models: Vec<ModelRestored>,
}

/// How a projector was moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResetMethod {
    /// `$JS.API.CONSUMER.RESET` (nats-server 2.14 and later): the consumer keeps its config
    /// and identity.
    Reset,
    /// Deleted and created again with `deliver_policy: by_start_sequence` (older servers).
    Recreated,
}

/// A projector's consumer moved to `from_seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectorReset {
    pub domain: String,
    pub stream: String,
    pub consumer: String,
    pub from_seq: u64,
    /// Events the consumer had to deliver right after the move (its `num_pending`).
    pub pending: u64,
    /// Events acknowledged before this move (a move back to a checkpoint keeps counting).
    #[serde(default)]
    pub events_before: u64,
    pub method: ResetMethod,
    /// The consumer's config before the job changed it (JSON), so a consumer lost mid-job can
    /// be created again and `max_ack_pending` put back.
    pub config_json: String,
}

/// Every `checkpoint_interval` events: where a projector was. A resumed job whose consumer has
/// fallen behind it (or is gone) moves it back here, not to the start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayCheckpoint {
    pub stream: String,
    pub consumer: String,
    /// The consumer's ack floor: every event up to it is folded.
    pub stream_seq: u64,
    pub events: u64,
}

/// A projector with nothing left to deliver and nothing unacknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectorCaughtUp {
    pub domain: String,
    pub stream: String,
    pub consumer: String,
    pub stream_seq: u64,
    pub events: u64,
    pub millis: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayJobProgressed {
    pub events_done: u64,
    pub events_total: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayJobCompleted {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub safety_snapshots: Vec<SnapshotSummary>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cleared: Vec<DomainCleared>,
    pub projectors: Vec<ProjectorCaughtUp>,
}

impl ReplayJobCompleted {
    pub fn events(&self) -> u64 {
        self.projectors.iter().map(|p| p.events).sum()
    }
}

/// Parses an RFC 3339 time (the `from_timestamp` field).
pub fn parse_timestamp(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{text:?} is not an RFC 3339 time ({e}); e.g. 2024-01-15T12:00:00Z"))
}
