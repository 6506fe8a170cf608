//! Integrity checks (DESIGN §7): how a stream's messages form CID chains (profiles), what a
//! break looks like (findings), and the report a check job produces.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How messages of a stream carry their chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProfileKind {
    /// This service's own envelope: DAG-CBOR, `prev` link, CID in `Cim-Cid`.
    Native,
    /// cim-ipld `ChainedContent`: JSON `{content, cid, previous_cid, sequence, timestamp}`, CID =
    /// CIDv1 over BLAKE3-256 of the serde_json bytes of `{"content","previous_cid","sequence"}`.
    CimIpld,
    /// cim-events: headers `X-CID` / `X-Parent-CID`; CID = CIDv1 raw sha2-256 over the stored
    /// event's JSON with `"cid":null` (as cim-events hashes it before filling the CID in).
    XCidHeaders,
    /// Only the links: JSON fields naming the event's CID and its predecessor's.
    LinkOnly,
}

/// What identifies one chain (one aggregate) among a stream's messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainBy {
    /// The whole stream is one chain.
    Stream,
    /// The subject token at this 0-based index (e.g. `events.<aggregate>.>` → 1).
    SubjectToken(usize),
    /// A JSON field of the payload (dotted path for nested fields, e.g. `event.aggregate_id`).
    Field(String),
    /// The profile knows (native: the envelope's aggregate type and id).
    Envelope,
}

/// A chain profile with its options. Field names are JSON paths (dotted for nested fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainProfile {
    pub profile: ProfileKind,
    /// Default: `envelope` for native, `stream` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_by: Option<ChainBy>,
    /// link-only: the event's CID (default `cid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid_field: Option<String>,
    /// link-only: the predecessor's CID (default `previous_cid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_field: Option<String>,
    /// link-only: an optional per-chain sequence number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence_field: Option<String>,
}

impl ChainProfile {
    pub fn native() -> Self {
        ChainProfile {
            profile: ProfileKind::Native,
            chain_by: None,
            cid_field: None,
            previous_field: None,
            sequence_field: None,
        }
    }

    pub fn chain_by(&self) -> ChainBy {
        self.chain_by.clone().unwrap_or(match self.profile {
            ProfileKind::Native => ChainBy::Envelope,
            _ => ChainBy::Stream,
        })
    }
}

/// What is wrong at one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// The payload does not hash to the CID the message claims. Reported once per damaged
    /// event: its successor may link to the place it claims.
    CidMismatch,
    /// The link to the predecessor does not name the chain's previous event.
    BrokenLink,
    /// The first event seen of a chain is not its first event.
    MissingPredecessor,
    /// The chain's sequence skips numbers (an event is missing).
    SequenceGap,
    /// The same event appears again.
    Duplicate,
    /// The chain's sequence goes backwards.
    OutOfOrder,
    /// The message is not an event of the profile (cannot be read).
    Undecodable,
}

crate::display_as_wire_name!(FindingKind, ProfileKind);

/// A break in a chain, located precisely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub stream_seq: u64,
    pub subject: String,
    /// The chain (aggregate) it belongs to, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<String>,
    pub kind: FindingKind,
    pub detail: String,
    /// Stream sequence and original time of the chain's last good event before this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_good_seq: Option<u64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub last_good_time: Option<time::OffsetDateTime>,
}

/// A KV projection that records, per aggregate, the last event it applied (the convention in
/// docs/INTEGRITY.md): the entry's JSON holds the event's CID and/or stream sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectionSpec {
    pub bucket: String,
    /// Key = `<key_prefix><aggregate>` (default: no prefix).
    #[serde(default)]
    pub key_prefix: String,
    /// JSON field with the CID of the last applied event (default `last_event_cid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid_field: Option<String>,
    /// JSON field with its stream sequence (default `last_event_seq`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq_field: Option<String>,
}

/// One projection entry that disagrees with the chains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionFinding {
    pub bucket: String,
    pub key: String,
    pub aggregate: String,
    pub detail: String,
}

/// The projections part of a deep check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionReport {
    pub entries_checked: u64,
    /// Aggregates whose projection disagrees with their chain.
    pub inconsistent: u64,
    /// The first of them (bounded).
    pub findings: Vec<ProjectionFinding>,
    /// Configured projection buckets that do not exist: a finding too (nothing of theirs could
    /// be compared), reported without stopping the rest of the check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_buckets: Vec<String>,
}

impl ProjectionReport {
    pub fn is_consistent(&self) -> bool {
        self.inconsistent == 0 && self.missing_buckets.is_empty()
    }
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntegrityReport {
    pub stream: String,
    pub profile: ProfileKind,
    /// The range the check was asked to cover (stream sequences, inclusive): what "clean" is
    /// about.
    #[serde(default)]
    pub range_first: u64,
    #[serde(default)]
    pub range_last: u64,
    /// The walk started after the stream's first message: each chain's first event in the range
    /// was trusted as its anchor, so breaks before it are not visible.
    #[serde(default)]
    pub anchored: bool,
    /// Stream sequences of the first and last message checked (0/0 when none).
    pub first_seq: u64,
    pub last_seq: u64,
    pub messages_checked: u64,
    pub chains: u64,
    /// Chains with at least one finding.
    pub chains_broken: u64,
    pub findings_total: u64,
    pub findings_by_kind: BTreeMap<FindingKind, u64>,
    /// The first findings in stream order (at most the request's bound).
    pub findings: Vec<Finding>,
    /// Set by a deep check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projections: Option<ProjectionReport>,
}

impl IntegrityReport {
    /// No finding in a range that held messages. A check of nothing is not clean.
    pub fn is_clean(&self) -> bool {
        self.findings_total == 0
            && self.messages_checked > 0
            && self
                .projections
                .as_ref()
                .is_none_or(ProjectionReport::is_consistent)
    }

    /// Nothing was checked: the range held no messages when it was walked.
    pub fn checked_nothing(&self) -> bool {
        self.messages_checked == 0 && self.findings_total == 0
    }

    /// `seq a..=b`, and how it was anchored: what the verdict covers.
    pub fn range_text(&self) -> String {
        let range = format!("seq {}..={}", self.range_first, self.range_last);
        if self.anchored {
            format!(
                "{range}, anchored at each chain's first event in it (links into the range are not checked; start earlier to cover them)"
            )
        } else {
            range
        }
    }

    /// The human summary the runbook shows (`Event Stream: CORRUPTED - CID chain broken at seq
    /// 1234567`, `Projections: INCONSISTENT - 42 aggregates affected`).
    pub fn summary_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        match self.findings.first() {
            None if self.checked_nothing() => lines.push(format!(
                "Event Stream: NOT CHECKED - no messages in {}",
                self.range_text()
            )),
            None => lines.push(format!(
                "Event Stream: OK - {} messages in {} chains verified ({})",
                self.messages_checked,
                self.chains,
                self.range_text()
            )),
            Some(first) => lines.push(format!(
                "Event Stream: CORRUPTED - CID chain broken at seq {} ({}, {} findings in {} chains)",
                first.stream_seq,
                serde_json::to_value(first.kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
                self.findings_total,
                self.chains_broken
            )),
        }
        if let Some(p) = &self.projections {
            let missing = match p.missing_buckets.as_slice() {
                [] => String::new(),
                [one] => format!("bucket {one} does not exist; "),
                many => format!("buckets {} do not exist; ", many.join(", ")),
            };
            if p.is_consistent() {
                lines.push(format!(
                    "Projections: OK - {} entries consistent",
                    p.entries_checked
                ));
            } else {
                lines.push(format!(
                    "Projections: INCONSISTENT - {missing}{} aggregates affected",
                    p.inconsistent
                ));
            }
        }
        lines
    }
}
