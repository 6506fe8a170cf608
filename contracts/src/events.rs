//! The event envelope and every event payload (DESIGN §5). This is the audit contract: other
//! agents decode these bytes, and golden vectors in the tests pin them.
//!
//! # Wire form
//! An event message's payload is one DAG-CBOR map (canonical key order):
//!
//! | key | type | meaning |
//! |---|---|---|
//! | `v` | int | envelope schema, [`ENVELOPE_VERSION`] |
//! | `id` | text | event id (UUID) |
//! | `type` | text | event type, e.g. `BackupAccepted`; also the last subject token |
//! | `version` | int | schema version of `data` for this event type |
//! | `aggregate_type` | text | `backup`, `restore`, `verify`, `check`, `repair` |
//! | `aggregate_id` | text | the job id |
//! | `sequence` | int | per-aggregate sequence, 1-based, no gaps |
//! | `time` | text | RFC 3339 UTC |
//! | `correlation_id` | text | the workflow the event belongs to |
//! | `causation_id` | text | the command or event that caused it |
//! | `prev` | link (tag 42) or null | CID of the aggregate's previous event |
//! | `data` | map | the payload of `type` |
//!
//! The event's CID is `dag_cbor_cid(payload bytes)`. Readers ignore keys they do not know, so
//! fields can be added; changing the meaning of a field bumps `version`.

use ipld_core::ipld::Ipld;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::cid::{Cid, dag_cbor_cid};
use crate::commands::CompressionAlgorithm;
use crate::errors::ErrorCode;
use crate::ids::{EventCid, JobId};
use crate::views::JobKind;

/// Current envelope schema.
pub const ENVELOPE_VERSION: u32 = 1;

/// Why an event payload could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum EventDecodeError {
    #[error("event payload is not DAG-CBOR: {0}")]
    Cbor(String),
    #[error("event envelope version {0} is newer than this reader understands")]
    EnvelopeVersion(u32),
    #[error("unknown aggregate type {0:?}")]
    AggregateType(String),
    #[error("unknown event type {event_type:?} for aggregate type {aggregate_type}")]
    EventType {
        aggregate_type: String,
        event_type: String,
    },
    #[error("event {event_type} data does not match its schema: {message}")]
    Data { event_type: String, message: String },
    #[error("bad field {field}: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
}

/// Metadata of one event that the caller decides (the domain has no clock and no randomness).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMeta {
    pub event_id: String,
    pub time: OffsetDateTime,
    pub correlation_id: String,
    pub causation_id: String,
}

/// A decoded event with everything the envelope says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventEnvelope {
    pub aggregate_type: JobKind,
    pub aggregate_id: JobId,
    pub sequence: u64,
    pub prev: Option<EventCid>,
    pub meta: EventMeta,
    pub event: JobEvent,
}

pub use crate::kinds::JobEvent;

#[derive(Serialize, Deserialize)]
struct WireEnvelope {
    v: u32,
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    version: u32,
    aggregate_type: String,
    aggregate_id: String,
    sequence: u64,
    time: String,
    correlation_id: String,
    causation_id: String,
    prev: Option<Cid>,
    data: Ipld,
}

/// The chain-placing fields of an envelope ([`EventEnvelope::decode_head`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EnvelopeHead<'a> {
    pub v: u32,
    #[serde(borrow)]
    pub aggregate_type: &'a str,
    #[serde(borrow)]
    pub aggregate_id: &'a str,
    pub sequence: u64,
    pub prev: Option<Cid>,
}

impl EventEnvelope {
    /// The exact payload bytes of this event: canonical DAG-CBOR.
    pub fn encode(&self) -> Vec<u8> {
        let wire = WireEnvelope {
            v: ENVELOPE_VERSION,
            id: self.meta.event_id.clone(),
            event_type: self.event.event_type().to_owned(),
            version: self.event.version(),
            aggregate_type: self.aggregate_type.as_str().to_owned(),
            aggregate_id: self.aggregate_id.to_string(),
            sequence: self.sequence,
            time: format_time(self.meta.time),
            correlation_id: self.meta.correlation_id.clone(),
            causation_id: self.meta.causation_id.clone(),
            prev: self.prev.map(|p| p.0),
            data: self.event.to_data(),
        };
        serde_ipld_dagcbor::to_vec(&wire).expect("event envelopes always encode")
    }

    /// The event and its CID, as published.
    pub fn encode_with_cid(&self) -> (Vec<u8>, EventCid) {
        let bytes = self.encode();
        let cid = EventCid(dag_cbor_cid(&bytes));
        (bytes, cid)
    }

    /// Decodes only what places an event in its chain (aggregate, sequence, `prev`), skipping
    /// its data: what a chain walk needs, at a fraction of the cost of [`Self::decode`].
    pub fn decode_head(bytes: &[u8]) -> Result<EnvelopeHead<'_>, EventDecodeError> {
        let head: EnvelopeHead<'_> = serde_ipld_dagcbor::from_slice(bytes)
            .map_err(|e| EventDecodeError::Cbor(e.to_string()))?;
        if head.v > ENVELOPE_VERSION {
            return Err(EventDecodeError::EnvelopeVersion(head.v));
        }
        Ok(head)
    }

    /// Decodes an event payload. Does not check the CID; see [`crate::cid::verifies`].
    pub fn decode(bytes: &[u8]) -> Result<EventEnvelope, EventDecodeError> {
        let wire: WireEnvelope = serde_ipld_dagcbor::from_slice(bytes)
            .map_err(|e| EventDecodeError::Cbor(e.to_string()))?;
        if wire.v > ENVELOPE_VERSION {
            return Err(EventDecodeError::EnvelopeVersion(wire.v));
        }
        let kind: JobKind = wire
            .aggregate_type
            .parse()
            .map_err(|_| EventDecodeError::AggregateType(wire.aggregate_type.clone()))?;
        let aggregate_id = wire
            .aggregate_id
            .parse()
            .map_err(|e: crate::ids::IdError| field("aggregate_id", e))?;
        let time = parse_time(&wire.time).map_err(|e| field("time", e))?;
        Ok(EventEnvelope {
            aggregate_type: kind,
            aggregate_id,
            sequence: wire.sequence,
            prev: wire.prev.map(EventCid),
            meta: EventMeta {
                event_id: wire.id,
                time,
                correlation_id: wire.correlation_id,
                causation_id: wire.causation_id,
            },
            event: JobEvent::from_data(kind, &wire.event_type, wire.version, wire.data)?,
        })
    }
}

fn field(field: &'static str, e: impl std::fmt::Display) -> EventDecodeError {
    EventDecodeError::Field {
        field,
        message: e.to_string(),
    }
}

/// RFC 3339 in UTC with as many fractional digits as needed: one value, one spelling, so the
/// bytes (and the CID) of an event are a function of its content.
pub fn format_time(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&time::format_description::well_known::Rfc3339)
        .expect("UTC times in range always format")
}

pub fn parse_time(s: &str) -> Result<OffsetDateTime, time::error::Parse> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
}

/// Declares an aggregate's event enum: variant name = event type name (never renamed), with the
/// schema version of its data.
macro_rules! event_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident($data:ty) = $version:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum $name {
            $($variant($data)),+
        }

        impl $name {
            /// All event type names of this aggregate, in catalogue order.
            pub const TYPES: &'static [(&'static str, u32)] = &[$((stringify!($variant), $version)),+];

            pub fn event_type(&self) -> &'static str {
                match self { $($name::$variant(_) => stringify!($variant)),+ }
            }

            pub fn version(&self) -> u32 {
                match self { $($name::$variant(_) => $version),+ }
            }

            pub(crate) fn to_data(&self) -> Ipld {
                let result = match self {
                    $($name::$variant(data) => ipld_core::serde::to_ipld(data)),+
                };
                result.expect("event data always converts to IPLD")
            }

            pub(crate) fn from_data(event_type: &str, version: u32, data: Ipld) -> Result<Self, EventDecodeError> {
                let bad = |e: ipld_core::serde::SerdeError| EventDecodeError::Data {
                    event_type: event_type.to_owned(),
                    message: e.to_string(),
                };
                match event_type {
                    $(stringify!($variant) if version > $version => Err(EventDecodeError::Data {
                        event_type: event_type.to_owned(),
                        message: format!("version {version} is newer than this reader understands ({})", $version),
                    }),
                    stringify!($variant) => ipld_core::serde::from_ipld(data).map($name::$variant).map_err(bad),)+
                    other => Err(EventDecodeError::EventType {
                        aggregate_type: stringify!($name).to_owned(),
                        event_type: other.to_owned(),
                    }),
                }
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Shared payloads

/// Why a job failed. `object` and `record` locate the failure inside an archive when known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFailed {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<u64>,
}

/// Someone asked to cancel the job; the job's runner confirms with a `*Cancelled` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRequested {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The runner stopped the job; nothing it wrote is visible as a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCancelled {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Compression of archive segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compression {
    pub algorithm: CompressionAlgorithm,
    /// zstd level; 0 when `algorithm` is `none`.
    pub level: i32,
}

impl Compression {
    /// Short label for listings: `zstd-3` or `none`.
    pub fn label(&self) -> String {
        match self.algorithm {
            CompressionAlgorithm::Zstd => format!("zstd-{}", self.level),
            CompressionAlgorithm::None => "none".to_owned(),
        }
    }
}

/// State of one stream when a job looked at it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamCut {
    pub stream: String,
    /// First and last sequence in the stream; `last_seq < first_seq` means empty.
    pub first_seq: u64,
    pub last_seq: u64,
    pub messages: u64,
    pub bytes: u64,
    /// When this stream's state was read. A multi-stream cut reads all streams back to back;
    /// the spread of these times is the cut's skew.
    #[serde(with = "time::serde::rfc3339")]
    pub taken_at: OffsetDateTime,
    /// When the stream was created (server time). An incremental backup continues a parent only
    /// if this is unchanged: a stream deleted and recreated restarts its sequences.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub created: Option<OffsetDateTime>,
}

/// Where an incremental backup of a stream continues from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentLink {
    /// The parent backup's id (manifest CID).
    pub backup: Cid,
    /// The parent's cut of this stream: this backup holds only messages after it.
    pub cut_last_seq: u64,
}

/// A durable consumer as it stood at the cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerPosition {
    pub name: String,
    /// The consumer configuration as the server reported it (JSON text, verbatim).
    pub config: String,
    pub delivered_consumer_seq: u64,
    pub delivered_stream_seq: u64,
    pub ack_floor_consumer_seq: u64,
    pub ack_floor_stream_seq: u64,
    /// Messages delivered but not acknowledged at the cut (they will be redelivered).
    pub num_ack_pending: u64,
}

/// One stream of a starting backup: what is cut, how it is configured, what it continues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStart {
    pub cut: StreamCut,
    /// The stream configuration at the cut (JSON text as the server reported it), so that the
    /// manifest is a pure function of the job's events: a job resumed after a crash writes the
    /// very same manifest bytes.
    pub config: String,
    /// Set for an incremental backup of this stream.
    pub parent: Option<ParentLink>,
    pub consumers: Vec<ConsumerPosition>,
}

impl StreamStart {
    /// The first sequence this backup holds for the stream: after the parent's cut, and never
    /// before the stream's first message.
    pub fn from_seq(&self) -> u64 {
        let after_parent = self.parent.as_ref().map_or(0, |p| p.cut_last_seq + 1);
        self.cut.first_seq.max(after_parent).max(1)
    }
}

/// Encryption of archive segments to public-key recipients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    /// `age`: each stored segment is an age file (X25519 recipients) of the compressed segment.
    pub scheme: String,
    /// The recipients' public keys (`age1…`); the service never needs the private key to write.
    pub recipients: Vec<String>,
}

/// The one encryption scheme this version writes and reads.
pub const ENCRYPTION_AGE: &str = "age";

/// One archive segment: a run of records of one stream, stored as one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentInfo {
    /// CID of the stored object (raw codec, sha2-256 of the stored bytes).
    pub cid: Cid,
    pub first_seq: u64,
    pub last_seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub first_time: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_time: OffsetDateTime,
    pub records: u64,
    /// Bytes of the uncompressed segment (framing included).
    pub raw_bytes: u64,
    /// Bytes of the stored object.
    pub stored_bytes: u64,
}

/// Totals of one stream inside a finished backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSummary {
    pub stream: String,
    /// Sequences held by this backup (not its parents); `last_seq < first_seq` means none.
    pub first_seq: u64,
    pub last_seq: u64,
    pub messages: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub segments: u64,
    /// The parent backup, for an incremental backup of this stream.
    #[serde(default, with = "crate::cid::link::option")]
    pub parent: Option<Cid>,
}

// ---------------------------------------------------------------------------------------------
// Backup aggregate

event_enum!(
    /// Events of the `backup` aggregate.
    BackupEvent {
        BackupAccepted(BackupAccepted) = 1,
        BackupStarted(BackupStarted) = 1,
        SegmentStored(SegmentStored) = 1,
        BackupCompleted(BackupCompleted) = 1,
        BackupFailed(JobFailed) = 1,
        BackupCancelRequested(CancelRequested) = 1,
        BackupCancelled(JobCancelled) = 1,
        SnapshotTaken(SnapshotTaken) = 1,
        SnapshotPartStored(SnapshotPartStored) = 1,
        TreeStored(crate::files::TreeStored) = 1,
        TreeProgressed(crate::files::TreeProgressed) = 1,
    }
);

/// What a backup stores of each stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupMode {
    /// The portable per-message archive (segments of records).
    #[default]
    Messages,
    /// The server's own snapshot, split into content-addressed parts.
    Snapshot,
}

/// The server took a snapshot of a stream (snapshot mode): its state is what the parts hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotTaken {
    pub stream: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub messages: u64,
    pub bytes: u64,
}

/// One stored part of a server snapshot (snapshot mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotPartStored {
    pub stream: String,
    pub part: PartInfo,
}

/// A stored run of a server snapshot's bytes: object `parts/<cid>` (raw codec, sha2-256 of the
/// stored bytes), in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartInfo {
    pub cid: Cid,
    /// Bytes of the snapshot in this part (before encryption).
    pub raw_bytes: u64,
    pub stored_bytes: u64,
}

/// Shared by every `*Accepted` event: who runs the job and how the request is recognised again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    /// The service instance that runs the job.
    pub instance: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// sha2-256 (hex) of the normalized request, to tell a retry from a key reused for a
    /// different request.
    pub request_digest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupAccepted {
    pub streams: Vec<String>,
    /// The destination as the caller named it (a configured name or a URL).
    pub destination: String,
    /// The URL it resolved to (credentials are never recorded).
    pub destination_url: String,
    pub compression: Compression,
    /// Target size of an uncompressed segment.
    pub segment_bytes: u64,
    /// Whether a stream that already has a backup in the destination gets an incremental one.
    pub incremental: bool,
    pub mode: BackupMode,
    /// Set when segments are encrypted.
    pub encryption: Option<Encryption>,
    pub admission: Admission,
    /// File trees to store, in order, after the streams (read by the admitting instance).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trees: Vec<crate::files::TreeRequest>,
    /// Files read and chunks sealed at once, for trees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupStarted {
    /// When the cut was taken: the point in time the backup represents.
    #[serde(with = "time::serde::rfc3339")]
    pub taken_at: OffsetDateTime,
    /// What will be backed up, per stream in request order: everything after the parent's cut
    /// (or from the first message) up to `cut.last_seq`.
    pub streams: Vec<StreamStart>,
    /// The writer, e.g. `cim-backup 0.1.0`.
    pub tool: String,
    /// What the operator should know: a stream backed up in full although the job is
    /// incremental, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// What the job expects to store, from the streams' states at the cut: the totals a
    /// progress view shows until the completion makes them exact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<Estimate>,
}

/// Expected totals of a job, known at its start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Estimate {
    pub messages: u64,
    /// Bytes in the unit the job's progress counts (a backup: uncompressed segment bytes).
    pub bytes: u64,
    /// Objects to store (a backup: segments or parts, and the manifest).
    pub objects: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentStored {
    pub stream: String,
    pub segment: SegmentInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupCompleted {
    /// CID of the manifest (dag-cbor), which is the backup id.
    pub manifest: Cid,
    pub manifest_bytes: u64,
    pub streams: Vec<StreamSummary>,
    pub compression: Compression,
    /// Whether segments are encrypted to recipients.
    pub encrypted: bool,
    /// The manifest's `created` time (the cut time), so catalogs agree with destinations.
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    /// The file trees stored, in request order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trees: Vec<crate::files::TreeSummary>,
}

// ---------------------------------------------------------------------------------------------
// Projection aggregates (`projection-snapshot`, `projection-restore`): one event set

event_enum!(
    /// Events of the projection jobs: snapshots of a domain's read models, and restores of one.
    ProjectionEvent {
        ProjectionJobAccepted(crate::projections::ProjectionJobAccepted) = 1,
        ProjectionJobStarted(crate::projections::ProjectionJobStarted) = 1,
        ProjectionJobProgressed(crate::projections::ProjectionJobProgressed) = 1,
        ProjectionSnapshotTaken(crate::projections::SnapshotSummary) = 1,
        ProjectionModelRestored(crate::projections::ModelRestored) = 1,
        ProjectionJobCompleted(crate::projections::ProjectionJobCompleted) = 1,
        ProjectionJobFailed(JobFailed) = 1,
        ProjectionJobCancelRequested(CancelRequested) = 1,
        ProjectionJobCancelled(JobCancelled) = 1,
    }
);

// ---------------------------------------------------------------------------------------------
// Replay aggregates (`projection-replay`, `projection-rebuild`): one event set

event_enum!(
    /// Events of the replay jobs: projectors moved back and followed until caught up, after
    /// their read models were cleared (a rebuild).
    ReplayEvent {
        ReplayJobAccepted(crate::replay::ReplayJobAccepted) = 1,
        ReplayJobStarted(crate::replay::ReplayJobStarted) = 1,
        ReplaySafetySnapshotTaken(crate::projections::SnapshotSummary) = 1,
        ReplayDomainCleared(crate::replay::DomainCleared) = 1,
        ReplayProjectorReset(crate::replay::ProjectorReset) = 1,
        ReplayCheckpointRecorded(crate::replay::ReplayCheckpoint) = 1,
        ReplayProjectorCaughtUp(crate::replay::ProjectorCaughtUp) = 1,
        ReplayJobProgressed(crate::replay::ReplayJobProgressed) = 1,
        ReplayJobCompleted(crate::replay::ReplayJobCompleted) = 1,
        ReplayJobFailed(JobFailed) = 1,
        ReplayJobCancelRequested(CancelRequested) = 1,
        ReplayJobCancelled(JobCancelled) = 1,
    }
);

// ---------------------------------------------------------------------------------------------
// Config import aggregate

event_enum!(
    /// Events of the `config-import` aggregate: a planned import of domain configuration.
    ConfigImportEvent {
        ConfigImportAccepted(crate::domain_configs::ConfigImportAccepted) = 1,
        ConfigImportStarted(crate::domain_configs::ConfigImportStarted) = 1,
        ConfigResourceApplied(crate::domain_configs::ResourceApplied) = 1,
        ConfigImportCompleted(crate::domain_configs::ConfigImportCompleted) = 1,
        ConfigImportFailed(JobFailed) = 1,
        ConfigImportCancelRequested(CancelRequested) = 1,
        ConfigImportCancelled(JobCancelled) = 1,
    }
);

// ---------------------------------------------------------------------------------------------
// Key restore aggregate

event_enum!(
    /// Events of the `key-restore` aggregate: one read-model key brought back as of a time.
    KeyRestoreEvent {
        KeyRestoreAccepted(crate::key_restore::KeyRestoreAccepted) = 1,
        KeyRestoreStarted(crate::key_restore::KeyRestoreStarted) = 1,
        KeyRestoreCompleted(crate::key_restore::KeyRestoreCompleted) = 1,
        KeyRestoreFailed(JobFailed) = 1,
        KeyRestoreCancelRequested(CancelRequested) = 1,
        KeyRestoreCancelled(JobCancelled) = 1,
    }
);

// ---------------------------------------------------------------------------------------------
// Tree restore aggregate

event_enum!(
    /// Events of the `tree-restore` aggregate: file trees of a backup put back on a host.
    TreeRestoreEvent {
        TreeRestoreAccepted(crate::files::TreeRestoreAccepted) = 1,
        TreeRestoreStarted(crate::files::TreeRestoreStarted) = 1,
        TreeRestoreProgressed(crate::files::TreeRestoreProgressed) = 1,
        TreeRestored(crate::files::TreeRestored) = 1,
        TreeRestoreCompleted(crate::files::TreeRestoreCompleted) = 1,
        TreeRestoreFailed(JobFailed) = 1,
        TreeRestoreCancelRequested(CancelRequested) = 1,
        TreeRestoreCancelled(JobCancelled) = 1,
    }
);

// ---------------------------------------------------------------------------------------------
// Restore aggregate

event_enum!(
    /// Events of the `restore` aggregate.
    RestoreEvent {
        RestoreAccepted(RestoreAccepted) = 1,
        RestoreStarted(RestoreStarted) = 1,
        RestoreProgressed(RestoreProgressed) = 1,
        RestoreCompleted(RestoreCompleted) = 1,
        RestoreFailed(JobFailed) = 1,
        RestoreCancelRequested(CancelRequested) = 1,
        RestoreCancelled(JobCancelled) = 1,
    }
);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreAccepted {
    /// Manifest CID of the backup being restored (an incremental one brings its chain).
    pub backup: Cid,
    pub source: String,
    pub source_url: String,
    /// Stream inside the backup.
    pub stream: String,
    /// Stream written to (equals `stream` unless restored under a new name).
    pub target: String,
    /// Which messages to restore.
    pub selection: Selection,
    /// How the target is placed and written.
    pub options: RestoreOptions,
    pub admission: Admission,
}

/// Which messages of a backup a restore writes. Every bound is inclusive except `end`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_seq: Option<u64>,
    /// Original timestamp at or after this.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub start: Option<OffsetDateTime>,
    /// Original timestamp strictly before this.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub end: Option<OffsetDateTime>,
    /// NATS subject filters (wildcards allowed); a message matching any is kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
}

impl Selection {
    /// Whether nothing is filtered out.
    pub fn is_everything(&self) -> bool {
        *self == Selection::default()
    }
}

/// How a restore writes its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreMethod {
    /// Pick the best the server supports: `server-archive` on nats-server 2.15+, else `publish`.
    #[default]
    Auto,
    /// Generate a per-message archive (ADR-63) and restore it through `$JS.API.STREAM.RESTORE`:
    /// original sequences, gaps, timestamps and headers exactly.
    ServerArchive,
    /// Publish every message into a new stream reproducing sequences (gaps via fillers);
    /// original timestamps travel in the `Cim-Original-Time` header.
    Publish,
    /// Publish after the last message of an existing stream: new sequence numbers.
    Append,
}

/// Placement of the restored stream (JetStream `placement`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// Target options of a restore.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreOptions {
    pub method: RestoreMethod,
    /// Replicas of the target (default: the original's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// Recreate the durable consumers saved with the backup.
    pub consumers: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreStarted {
    /// The method chosen (never `auto`).
    pub method: RestoreMethod,
    /// The backups read, oldest (the full one) first.
    pub chain: Vec<Cid>,
    /// Segments to read.
    pub segments: u64,
    /// Messages to write (exact).
    pub messages: u64,
    /// Uncompressed bytes of the segments to read.
    pub bytes: u64,
    /// Sequence range of the messages to write (0/0 when none).
    pub first_seq: u64,
    pub last_seq: u64,
    /// The target's last sequence when done: for a whole-stream restore the original's (gaps at
    /// the end kept, so the next message gets the sequence it would have had).
    pub target_last_seq: u64,
}

/// Cumulative progress after a segment was fully written to the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreProgressed {
    pub segments_done: u64,
    pub messages_done: u64,
    pub bytes_done: u64,
    pub last_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreCompleted {
    /// Segments read (all of the plan).
    pub segments: u64,
    /// Messages written to the target.
    pub messages: u64,
    pub bytes: u64,
    /// Sequence range of the written messages (0/0 when none).
    pub first_seq: u64,
    pub last_seq: u64,
    /// The consumers recreated, and which will see redeliveries.
    #[serde(default)]
    pub consumers: Vec<ConsumerRestored>,
    /// What the operator should know about the result (subjects left out, limits relaxed).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// A durable consumer recreated by a restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerRestored {
    pub name: String,
    /// The first stream sequence it will deliver (its ack floor + 1, clamped to what was
    /// restored).
    pub start_seq: u64,
    /// Messages it had delivered without an acknowledgement at the backup: it sees them again.
    pub redeliveries: u64,
}

// ---------------------------------------------------------------------------------------------
// Verify aggregate

event_enum!(
    /// Events of the `verify` aggregate.
    VerifyEvent {
        VerifyAccepted(VerifyAccepted) = 1,
        VerifyStarted(VerifyStarted) = 1,
        VerifyProgressed(VerifyProgressed) = 1,
        VerifyCompleted(VerifyCompleted) = 1,
        VerifyFailed(JobFailed) = 1,
        VerifyCancelRequested(CancelRequested) = 1,
        VerifyCancelled(JobCancelled) = 1,
    }
);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyAccepted {
    pub backup: Cid,
    pub source: String,
    pub source_url: String,
    pub mode: VerifyMode,
    pub admission: Admission,
}

/// How deep a verify looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyMode {
    /// Read, decrypt, decompress and check every record of every object of the chain.
    #[default]
    Deep,
    /// Every manifest of the chain read and checked; every segment present with its size.
    Structural,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyStarted {
    /// Objects to check, the manifest included.
    pub objects: u64,
    pub bytes: u64,
    pub records: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyProgressed {
    pub objects_done: u64,
    pub bytes_done: u64,
    pub records_done: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyCompleted {
    pub objects: u64,
    pub bytes: u64,
    pub records: u64,
}

// ---------------------------------------------------------------------------------------------
// Check aggregate

event_enum!(
    /// Events of the `check` aggregate.
    CheckEvent {
        CheckAccepted(CheckAccepted) = 1,
        CheckStarted(CheckStarted) = 1,
        CheckProgressed(CheckProgressed) = 1,
        CheckCompleted(CheckCompleted) = 1,
        CheckFailed(JobFailed) = 1,
        CheckCancelRequested(CancelRequested) = 1,
        CheckCancelled(JobCancelled) = 1,
    }
);

/// One stream a check walks, with how its chains are read and which projections follow it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckTarget {
    pub stream: String,
    pub profile: crate::integrity::ChainProfile,
    #[serde(default)]
    pub projections: Vec<crate::integrity::ProjectionSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckAccepted {
    pub targets: Vec<CheckTarget>,
    /// Set when a stored backup is checked instead of the live stream.
    #[serde(default, with = "crate::cid::link::option")]
    pub backup: Option<Cid>,
    #[serde(default)]
    pub source_url: Option<String>,
    #[serde(default)]
    pub start_seq: Option<u64>,
    #[serde(default)]
    pub end_seq: Option<u64>,
    pub deep: bool,
    pub max_findings: u64,
    /// Set for a replay: the consumers to reset to `start_seq` if every event from there is
    /// valid (the walk stops at the first invalid one).
    #[serde(default)]
    pub replay: Option<Vec<String>>,
    pub admission: Admission,
}

/// The range each target is walked over (its state when the check started).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckStarted {
    /// Per target, in order: (first, last) stream sequence to walk; last < first means empty.
    pub ranges: Vec<(u64, u64)>,
    /// Messages in those ranges as the streams reported them.
    pub messages: u64,
}

/// Cumulative progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckProgressed {
    pub messages_done: u64,
    pub findings: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckCompleted {
    /// One report per target, in order.
    pub reports: Vec<crate::integrity::IntegrityReport>,
    /// A replay's consumers reset to its start (empty when the walk found an invalid event).
    #[serde(default)]
    pub replayed: Vec<String>,
}

impl CheckCompleted {
    pub fn is_clean(&self) -> bool {
        self.reports.iter().all(|r| r.is_clean())
    }
}

// ---------------------------------------------------------------------------------------------
// Repair aggregate (restore from a point)

event_enum!(
    /// Events of the `repair` aggregate.
    RepairEvent {
        RepairAccepted(RepairAccepted) = 1,
        RepairStarted(RepairStarted) = 1,
        RepairStepDone(RepairStepDone) = 1,
        RepairProgressed(RepairProgressed) = 1,
        RepairCompleted(RepairCompleted) = 1,
        RepairFailed(JobFailed) = 1,
        RepairCancelRequested(CancelRequested) = 1,
        RepairCancelled(JobCancelled) = 1,
    }
);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairAccepted {
    /// The live stream repaired.
    pub stream: String,
    /// The first sequence replaced by the backup's records.
    pub from_seq: u64,
    /// Manifest CID of the backup read (an incremental one brings its chain).
    pub backup: Cid,
    pub source: String,
    pub source_url: String,
    /// The profile the repaired stream is checked with before it replaces the live one; `None`:
    /// counts only.
    #[serde(default)]
    pub profile: Option<crate::integrity::ChainProfile>,
    /// Live messages after the backup's last sequence are kept.
    pub keep_newer: bool,
    /// The copy of the stream as it was is kept after the repair.
    pub keep_safety_copy: bool,
    /// The live stream's configuration when the repair was accepted (JSON): what it gets back,
    /// and what it must still be when the repair starts (else someone changed it meanwhile).
    pub original_config: String,
    /// When the stream the live one continues was created (its own creation time, or the one a
    /// previous repair carried over): the rebuilt stream carries it on, so backups keep matching.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub origin_created: Option<time::OffsetDateTime>,
    pub admission: Admission,
}

/// What a repair does, decided before anything is written (also the dry-run answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairPlan {
    pub stream: String,
    pub from_seq: u64,
    /// The live stream when the plan was made (for a job: after writes to it were stopped).
    pub live_first_seq: u64,
    pub live_last_seq: u64,
    pub live_messages: u64,
    /// Live messages before `from_seq`: kept as they are.
    pub kept_live: u64,
    /// The backup's records from `from_seq` on, and their sequence range (0/0 when none).
    pub from_backup: u64,
    pub backup_first_seq: u64,
    pub backup_last_seq: u64,
    /// Live messages from `from_seq` on that the repaired stream no longer holds (they stay in
    /// the safety copy).
    pub replaced: u64,
    /// Live messages after the backup's last sequence that are kept (`keep_newer`).
    pub kept_newer: u64,
    /// The repaired stream's last sequence: never lower than the live one, so no sequence
    /// number a consumer has seen is used again.
    pub target_last_seq: u64,
    /// The copy of the stream as it was, and the stream the repaired content is built in.
    pub safety_copy: String,
    pub staging: String,
    /// Durable consumers carried over, with their positions.
    pub consumers: Vec<String>,
    /// Whether the repaired stream's chains are checked (a profile is known).
    pub chain_checked: bool,
    pub notes: Vec<String>,
}

impl RepairPlan {
    /// Messages the repaired stream holds.
    pub fn messages(&self) -> u64 {
        self.kept_live + self.from_backup + self.kept_newer
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairStarted {
    /// Made after the live stream stopped taking writes (it answers to no subject from here on
    /// until it is swapped, or the repair fails or is cancelled and gives it its subjects back).
    pub plan: RepairPlan,
    /// The backups read, the full one first.
    pub chain: Vec<Cid>,
}

/// The steps of a repair, in order. Each is recorded once done, so a restarted service resumes
/// after the last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RepairStep {
    /// The stream as it was is copied (server snapshot, restored under the safety name,
    /// without consumers: they stay with the live stream).
    SafetyCopied,
    /// The repaired content is written to the staging stream.
    Staged,
    /// The staging stream holds exactly the plan, and its chains are intact.
    Verified,
    /// The live stream is about to be deleted (no cancelling from here).
    Swapping,
    /// The live stream holds the repaired content and answers to its subjects again.
    Swapped,
}

crate::display_as_wire_name!(RepairStep, RestoreMethod, BackupMode, VerifyMode);

impl RepairStep {
    pub const ALL: [RepairStep; 5] = [
        RepairStep::SafetyCopied,
        RepairStep::Staged,
        RepairStep::Verified,
        RepairStep::Swapping,
        RepairStep::Swapped,
    ];
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairStepDone {
    pub step: RepairStep,
    /// The stream the step produced or changed, and what it holds.
    pub stream: String,
    pub messages: u64,
    pub last_seq: u64,
    /// `Swapping`: the live stream's durable consumers and positions, carried over.
    #[serde(default)]
    pub consumers: Vec<ConsumerPosition>,
}

/// Messages written to the staging stream so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairProgressed {
    pub messages_done: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairCompleted {
    /// What the repaired stream holds.
    pub messages: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The chain check of the repaired stream (when a profile is known); always clean.
    #[serde(default)]
    pub report: Option<crate::integrity::IntegrityReport>,
    /// The stream as it was, if kept.
    #[serde(default)]
    pub safety_copy: Option<String>,
    #[serde(default)]
    pub notes: Vec<String>,
}
