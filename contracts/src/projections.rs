//! Domains and their projections in the contract: what `list-domains` shows, the requests of
//! `snapshot-projections` and `restore-projection-snapshot`, and what their jobs record.
//!
//! A domain groups event streams, the read models (projections) folded from them, the projector
//! consumers that fold them, and where its configuration entries and agent definitions live.
//! Each part is either configured (`[domains.<name>]`) or discovered by CIM conventions
//! (docs/PROJECTIONS.md §1); [`Origin`] says which.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::cid::{Cid, link};
use crate::events::Admission;

/// Where a part of a domain comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// Named in `[domains.<name>]`.
    Configured,
    /// Found by the CIM naming conventions on the server.
    Discovered,
}

/// One read model of a domain: a whole KV bucket, or the keys of a bucket under a prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadModel {
    /// The name `--include` uses (the configured name, or the bucket for a discovered one).
    pub name: String,
    pub bucket: String,
    /// Only keys starting with this (ending with `.`); empty for the whole bucket.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    pub origin: Origin,
}

/// A durable consumer that folds a domain's events into its read models.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Projector {
    pub stream: String,
    pub consumer: String,
    pub origin: Origin,
}

/// A stream of a domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainStream {
    pub name: String,
    pub origin: Origin,
}

/// Keys of a KV bucket under a prefix: where a domain keeps configuration entries or agent
/// definitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRange {
    pub bucket: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    pub origin: Origin,
}

/// One domain and every part of it (`cim.backup.qry.domains`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    pub name: String,
    pub streams: Vec<DomainStream>,
    pub projections: Vec<ReadModel>,
    pub projectors: Vec<Projector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<KeyRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<KeyRange>,
}

/// `cim.backup.qry.domains`: every domain, or the ones named.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainsQuery {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
}

/// `cim.backup.cmd.snapshot-projections`: one snapshot per domain, each read model at one
/// pinned point.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotProjections {
    /// Domain names, or `["all"]` (also the default): every domain `list-domains` shows.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Only these read models (by name); empty for all of each domain's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// A configured destination name, a directory, or a URL (default: the service's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

/// `cim.backup.cmd.restore-projections`: a snapshot put back into the live buckets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreProjectionSnapshot {
    /// The snapshot id (its CID), or `latest` (the newest of the domain in `source`).
    pub snapshot: String,
    /// Where the snapshot is: a configured name, a directory or a URL (default: the service's
    /// default destination).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The domain whose read models are restored; must be the snapshot's.
    pub domain: String,
    /// After writing, read every restored read model back and compare it with the snapshot's
    /// root; the job fails (and says which keys differ) when they do not match.
    #[serde(default)]
    pub verify: bool,
    /// Restore a read model into another bucket: `name → bucket`. The target bucket must
    /// exist; keys keep their names.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub r#as: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

/// `cim.backup.cmd.clear-projections`: every key of a domain's read models deleted, after a
/// safety snapshot. With `dry_run` the reply is a [`ClearPlan`] and nothing is done; otherwise
/// `confirm` must be set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClearProjections {
    pub domain: String,
    /// Only these read models (default: all of the domain's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub confirm: bool,
    /// Delete without taking a safety snapshot first.
    #[serde(default)]
    pub no_safety_snapshot: bool,
    /// Where the safety snapshot goes (default: the service's default destination).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

/// What a clear would delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClearPlan {
    pub domain: String,
    pub models: Vec<PlannedClear>,
    /// Where the safety snapshot would be written; empty with `no_safety_snapshot`.
    pub safety_destination: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedClear {
    pub name: String,
    pub bucket: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// Live keys now.
    pub keys: u64,
}

/// `cim.backup.qry.projection-snapshots`: the snapshots stored in a destination.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectionSnapshotsQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Include the safety snapshots restores took (default: left out).
    #[serde(default)]
    pub safety: bool,
}

/// What a snapshot holds of one read model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSnapshot {
    pub name: String,
    pub bucket: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// The sequence of the bucket's stream the model was pinned at: every key holds its
    /// latest value as of this sequence.
    pub stream_seq: u64,
    pub keys: u64,
    /// Bytes of the values.
    pub bytes: u64,
    /// Hex of the model's entry digest (docs/PROJECTIONS.md §3): restores are verified
    /// against it.
    pub digest: String,
}

/// Where a projector was in its stream when the snapshot was taken (its ack floor): the read
/// model reflects at least every event up to `stream_seq`; catch-up starts after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectorPosition {
    pub stream: String,
    pub consumer: String,
    pub stream_seq: u64,
}

/// One stored projection snapshot (what the job records, and what listings show).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSummary {
    /// CID of the snapshot's manifest: its verifiable root.
    #[serde(with = "link")]
    pub id: Cid,
    pub domain: String,
    #[serde(with = "time::serde::rfc3339")]
    pub taken_at: OffsetDateTime,
    pub models: Vec<ModelSnapshot>,
    pub positions: Vec<ProjectorPosition>,
    /// Set on the snapshot a restore took of the live state before writing (the job's id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_for: Option<String>,
    /// The destination URL it is stored in (filled in by listings and job records).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub location: String,
}

impl SnapshotSummary {
    pub fn keys(&self) -> u64 {
        self.models.iter().map(|m| m.keys).sum()
    }
    pub fn bytes(&self) -> u64 {
        self.models.iter().map(|m| m.bytes).sum()
    }
}

/// What a projection job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProjectionOperation {
    Snapshot,
    Restore,
    Clear,
}

/// The first event of a projection job: everything it will do, decided at accept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionJobAccepted {
    pub operation: ProjectionOperation,
    /// Each domain with the read models the job covers.
    pub domains: Vec<Domain>,
    /// As the request named it, and resolved: where snapshots are written (snapshot) or read
    /// (restore; the safety snapshot is written there too).
    pub destination: String,
    pub destination_url: String,
    /// The snapshot a restore puts back.
    #[serde(
        default,
        with = "link::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub snapshot: Option<Cid>,
    #[serde(default)]
    pub verify: bool,
    /// A restore's read models written to other buckets (`name → bucket`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub r#as: std::collections::BTreeMap<String, String>,
    /// A clear asked to go without its safety snapshot (`--no-safety-snapshot`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_safety_snapshot: bool,
    pub admission: Admission,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionJobStarted {
    /// Keys expected (a restore: the snapshot's; a snapshot job: unknown, 0).
    pub keys: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionJobProgressed {
    pub keys_done: u64,
    pub bytes_done: u64,
}

/// A restore's outcome for one read model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRestored {
    pub name: String,
    /// The bucket written (the model's own, or its `--as` target).
    pub bucket: String,
    /// Keys written because their live value differed or was missing.
    pub restored: u64,
    /// Keys whose live value already was the snapshot's.
    pub unchanged: u64,
    /// Live keys the snapshot does not hold, deleted (a KV delete marker, not a purge).
    pub removed: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionJobCompleted {
    /// Snapshots written (a snapshot job: one per domain; a restore: its safety snapshot).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<SnapshotSummary>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restored: Vec<ModelRestored>,
    /// A restore with `verify`: every restored model read back matched the snapshot's digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
}
