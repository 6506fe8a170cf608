//! Request bodies of `cim.backup.cmd.*` and `cim.backup.qry.*` (DESIGN §4).
//!
//! Every body rejects unknown fields: a misspelt option must be an error the caller sees, not a
//! silently ignored flag during an incident. Optional fields have documented defaults.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::{BackupId, IdError, JobId};
use crate::views::{JobKind, JobState};

/// How segments are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionAlgorithm {
    #[default]
    Zstd,
    None,
}

/// `cim.backup.cmd.start`: back up one or more streams to one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartBackup {
    /// Stream names. Every stream must exist. Order is kept; duplicates are rejected. May be
    /// empty when `trees` is not.
    #[serde(default)]
    pub streams: Vec<String>,
    /// File trees under roots the receiving instance declares. Only on an instance's own
    /// subject (`cim.backup.files.<instance>.cmd.start`), since the files are on its host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trees: Vec<crate::files::TreeRequest>,
    /// Files read, and chunks sealed, at once (trees); default 4, at most 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel: Option<u32>,
    /// A named destination from the service config, or a URL: `file:///abs/dir`,
    /// `s3://bucket/prefix`, `memory://name`. Defaults to the service's default destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// Segment compression; default `zstd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compress: Option<CompressionAlgorithm>,
    /// zstd level 1..=19; default from the service config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zstd_level: Option<i32>,
    /// `true` forces a full backup of every stream even where an earlier backup exists.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full: bool,
    /// Incremental where possible (the default): a stream that already has a backup in the
    /// destination stores only what came after it. `false` means full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<bool>,
    /// Encrypt segments to the recipients configured for the service (`[encryption]`).
    /// Absent: the destination's `encrypt` setting, else `[defaults] encrypt`, else what the
    /// streams' existing chains in the destination are (an increment continues its chain's
    /// encryption). `false` on an encrypted chain is refused unless `full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypt: Option<bool>,
    /// `messages` (default): the portable per-message archive. `snapshot`: the server's own
    /// snapshot (`$JS.API.STREAM.SNAPSHOT`), stored content-addressed — a full-fidelity image
    /// restored through the server's restore API (always full, no selections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<crate::events::BackupMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

/// Which backup a restore or verify refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackupRef {
    /// The newest completed backup that holds the stream in question.
    Latest,
    Id(BackupId),
}

impl FromStr for BackupRef {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "latest" {
            Ok(BackupRef::Latest)
        } else {
            s.parse().map(BackupRef::Id)
        }
    }
}

impl fmt::Display for BackupRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackupRef::Latest => f.write_str("latest"),
            BackupRef::Id(id) => id.fmt(f),
        }
    }
}

impl Serialize for BackupRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BackupRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// `cim.backup.cmd.restore`: restore one stream of a backup into an empty stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreBackup {
    /// Backup id, or `latest` (newest backup holding `stream`).
    pub backup: BackupRef,
    /// The stream inside the backup to restore.
    pub stream: String,
    /// Restore under this name instead of `stream`.
    #[serde(default, rename = "as", skip_serializing_if = "Option::is_none")]
    pub as_stream: Option<String>,
    /// Where the backup is stored (named destination or URL). Default: the destination the
    /// catalog recorded for the backup; for `latest`, the catalog's newest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Only messages with original timestamp at or after this (RFC 3339).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339_option"
    )]
    pub start: Option<time::OffsetDateTime>,
    /// Only messages with original timestamp before this (RFC 3339, exclusive).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339_option"
    )]
    pub end: Option<time::OffsetDateTime>,
    /// Only messages from this stream sequence on (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_seq: Option<u64>,
    /// Only messages up to this stream sequence (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_seq: Option<u64>,
    /// Only messages on these subjects (NATS wildcards allowed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    /// Replicas of the restored stream (default: as the original).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u64>,
    /// Placement of the restored stream (cluster, tags).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<crate::events::Placement>,
    /// `auto` (default), `server-archive`, `publish`, or `append` — the only method that
    /// writes into an existing, non-empty stream (after its last message, new sequences).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<crate::events::RestoreMethod>,
    /// Recreate the durable consumers saved with the backup (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers: Option<bool>,
    /// Report exactly what would be written, and write nothing (no job, no events).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

/// `cim.backup.cmd.verify`: re-read, re-hash, decompress and check every record of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyBackup {
    pub backup: BackupRef,
    /// Needed with `latest`: the stream whose newest backup is meant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `deep` (default) or `structural`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<crate::events::VerifyMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

/// `cim.backup.cmd.check`: walk the CID chains of a live stream (integrity issue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckStream {
    /// Streams to check (live). Empty: every stream with a configured chain profile.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<String>,
    /// Check a stored backup of the (single) stream instead of the live stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The chain profile (default: the stream's configured one; native for the service's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<crate::integrity::ChainProfile>,
    /// Only stream sequences from here (where a corruption is suspected to start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_seq: Option<u64>,
    /// Also compare KV projections with the chains.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deep: bool,
    /// The projections to compare (default: the stream's configured ones).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub projections: Vec<crate::integrity::ProjectionSpec>,
    /// Findings kept in the report per stream (default 100, at most 10,000); all are counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_findings: Option<usize>,
    /// Replay: validate CIDs from `start_seq` on, stop at the first invalid event, and only if
    /// all are valid reset these durable consumers (the stream's projectors) to `start_seq`.
    /// Empty list: the stream's configured projectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_consumers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

/// `cim.backup.cmd.repair`: restore a live stream from a point (integrity issue). The stream
/// keeps its messages before `sequence`; from `sequence` on it holds the backup's records, with
/// their original sequence numbers. It rewrites a live stream, so it runs only with `confirm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepairStream {
    /// The live stream to repair (it must also be in the backup).
    pub stream: String,
    /// The first sequence replaced by the backup's records (the corruption point).
    pub sequence: u64,
    /// Backup id, or `latest` (newest backup holding `stream`).
    pub backup: BackupRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The chain profile the repaired stream is checked with before it replaces the live one
    /// (default: the stream's configured one; without either, counts are checked only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<crate::integrity::ChainProfile>,
    /// Keep live messages written after the backup's last sequence (default false: everything
    /// from `sequence` on is the backup's; the replaced messages stay in the safety copy).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_newer: bool,
    /// Keep the copy of the stream as it was before the repair (default true). `false` deletes
    /// it once the repaired stream has been checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_safety_copy: Option<bool>,
    /// Report exactly what would change, and change nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Required to run: the caller has seen what it changes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub confirm: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

/// `cim.backup.cmd.cancel`: stop a running job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelJob {
    pub job_id: JobId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `cim.backup.qry.job`: one job view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobQuery {
    pub job_id: JobId,
}

/// `cim.backup.qry.jobs`: job views, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<JobKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<JobState>,
    /// At most this many views (default 100, max 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// `cim.backup.qry.backups`: the catalog, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupsQuery {
    /// Only backups that hold this stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// List what is stored in this destination (named or URL) instead of the catalog view; this
    /// finds backups written by other services too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
}

/// Most bytes a request body may have. Every field is small; a larger body is a mistake (and
/// would make events and echoed errors exceed the server's payload limit).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Why a request body was refused. The message names the field at fault (`start: "yesterday"
/// is not an RFC 3339 time …`), never a Rust type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(pub String);

/// Parses a JSON request body: one JSON object (an empty body is `{}`, for queries that take no
/// fields), at most [`MAX_REQUEST_BYTES`]. Arrays and other values are refused rather than read
/// as positional fields.
pub fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, BodyError> {
    if body.len() > MAX_REQUEST_BYTES {
        return Err(BodyError(format!(
            "the request body is {} bytes; at most {MAX_REQUEST_BYTES} are accepted",
            body.len()
        )));
    }
    let trimmed = body.trim_ascii();
    let json: &[u8] = if trimmed.is_empty() { b"{}" } else { trimmed };
    if json[0] != b'{' {
        let what = match json[0] {
            b'[' => "an array",
            b'"' => "a string",
            b't' | b'f' => "a boolean",
            b'n' => "null",
            b'-' | b'0'..=b'9' => "a number",
            _ => "not JSON",
        };
        return Err(BodyError(format!(
            "the request body must be a JSON object ({{\"field\": value, …}}); this one is {what}"
        )));
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        describe(&path, e.into_inner())
    })?;
    de.end().map_err(|e| describe(".", e))?;
    Ok(value)
}

/// `field: what is wrong` for a value that does not fit its field; `invalid JSON: …` for text
/// that is not JSON (with its position, which helps there).
fn describe(path: &str, e: serde_json::Error) -> BodyError {
    let text = e.to_string();
    let message = match e.classify() {
        serde_json::error::Category::Data => {
            let bare = text
                .rfind(" at line ")
                .map_or(text.as_str(), |at| &text[..at]);
            // An unknown field's path is the field itself, which the message names already.
            if path == "." || bare.starts_with("unknown field") {
                bare.to_owned()
            } else {
                format!("{path}: {bare}")
            }
        }
        _ => format!("invalid JSON: {text}"),
    };
    // Unknown field names and values are the caller's and may be huge: keep the message short.
    BodyError(match message.char_indices().nth(512) {
        Some((cut, _)) => format!("{}…", &message[..cut]),
        None => message,
    })
}

/// RFC 3339 times in requests, with an error that shows the value and an example.
mod rfc3339_option {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    pub fn serialize<S: Serializer>(
        value: &Option<OffsetDateTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        time::serde::rfc3339::option::serialize(value, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<OffsetDateTime>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| {
                OffsetDateTime::parse(&text, &Rfc3339).map_err(|_| {
                    D::Error::custom(format!(
                        "{} is not an RFC 3339 time (like 2026-11-25T11:00:00Z)",
                        crate::text::echo(&text)
                    ))
                })
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_start_request_from_the_design_parses() {
        let cmd: StartBackup =
            parse_body(br#"{"streams":["EVENTS"],"destination":"file:///srv/backups"}"#).unwrap();
        assert_eq!(cmd.streams, vec!["EVENTS"]);
        assert_eq!(cmd.destination.as_deref(), Some("file:///srv/backups"));
        assert_eq!(cmd.compress, None);
    }

    #[test]
    fn unknown_fields_are_named_in_the_error() {
        let err = parse_body::<StartBackup>(br#"{"streams":["A"],"destinaton":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("destinaton"), "{err}");
    }

    #[test]
    fn restore_accepts_latest_and_as() {
        let cmd: RestoreBackup =
            parse_body(br#"{"backup":"latest","stream":"EVENTS","as":"EVENTS_COPY"}"#).unwrap();
        assert_eq!(cmd.backup, BackupRef::Latest);
        assert_eq!(cmd.as_stream.as_deref(), Some("EVENTS_COPY"));
        let bad = parse_body::<RestoreBackup>(br#"{"backup":"nope","stream":"E"}"#).unwrap_err();
        assert!(bad.to_string().contains("nope"), "{bad}");
    }

    #[test]
    fn errors_name_the_field_and_arrays_are_refused() {
        let err =
            parse_body::<RestoreBackup>(br#"{"backup":"latest","stream":"E","start":"yesterday"}"#)
                .unwrap_err();
        assert!(
            err.0
                .starts_with("start: \"yesterday\" is not an RFC 3339 time"),
            "{err}"
        );
        let err = parse_body::<StartBackup>(br#"[["S"],"file:///x"]"#).unwrap_err();
        assert!(err.0.contains("must be a JSON object"), "{err}");
        assert!(err.0.contains("array"), "{err}");
        let err = parse_body::<StartBackup>(br#"{"streams":"S"}"#).unwrap_err();
        assert!(err.0.starts_with("streams: invalid type"), "{err}");
        let err = parse_body::<StartBackup>(br#"{"streams":["S"]} x"#).unwrap_err();
        assert!(err.0.starts_with("invalid JSON"), "{err}");
        let huge = format!(
            r#"{{"streams":["S"],"correlation_id":"{}"}}"#,
            "c".repeat(70_000)
        );
        assert!(
            parse_body::<StartBackup>(huge.as_bytes())
                .unwrap_err()
                .0
                .contains("at most")
        );
        let field = format!(r#"{{"{}":1}}"#, "f".repeat(5000));
        assert!(
            parse_body::<StartBackup>(field.as_bytes())
                .unwrap_err()
                .0
                .len()
                < 600
        );
    }

    #[test]
    fn empty_body_is_an_empty_query() {
        let q: JobsQuery = parse_body(b"").unwrap();
        assert_eq!(q, JobsQuery::default());
        assert!(parse_body::<JobQuery>(b"").is_err());
    }
}
