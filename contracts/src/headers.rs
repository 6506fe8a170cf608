//! Header names carried by every event message (DESIGN §5).
//!
//! They repeat envelope fields for subscribers that do not decode DAG-CBOR. The envelope is the
//! source of truth; a header that disagrees with it is a finding, not a fact.

/// CID of the payload (also sent as `Nats-Msg-Id` so a retried publish is deduplicated).
pub const CIM_CID: &str = "Cim-Cid";
/// CID of the aggregate's previous event; absent on an aggregate's first event.
pub const CIM_PREV_CID: &str = "Cim-Prev-Cid";
/// Event type, e.g. `BackupAccepted`.
pub const CIM_EVENT_TYPE: &str = "Cim-Event-Type";
/// Correlation id of the command that caused the event (whole workflow).
pub const CIM_CORRELATION_ID: &str = "Cim-Correlation-Id";
/// Causation id: the id of the command or event that directly caused this event.
pub const CIM_CAUSATION_ID: &str = "Cim-Causation-Id";
/// Per-aggregate sequence number, 1-based.
pub const CIM_SEQUENCE: &str = "Cim-Sequence";

/// Client-supplied idempotency key on a command request (alternative to the body field).
pub const IDEMPOTENCY_KEY: &str = "Cim-Idempotency-Key";
/// Correlation id a client may set on a command request; echoed into the job's events.
pub const REQUEST_CORRELATION_ID: &str = "Cim-Correlation-Id";
