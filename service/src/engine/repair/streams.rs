//! The three streams of a repair and how each is configured.
//!
//! - The **live** stream is *frozen* while the repair runs: it keeps its content and consumers
//!   but answers only to its own name (no subjects), so producers get "no responders" instead of
//!   writing events the repair would lose. Its metadata carries [`FROZEN_BY`] = job id.
//! - The **safety copy** `<S>_PRE_REPAIR_<tag>` and the **staging** stream `<S>_REPAIR_<tag>` are
//!   quiet too (no subjects) and carry [`BUILT_BY`] = job id, so a failed, cancelled or resumed
//!   repair knows which streams it may delete — and never deletes anyone else's.

use cim_backup_contracts::JobId;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::engine::restore::target;

/// Metadata key on the live stream while a repair has it frozen.
pub const FROZEN_BY: &str = "cim-backup.repair-frozen";
/// Metadata key on the streams a repair creates (safety copy, staging, the rebuilt stream).
pub const BUILT_BY: &str = "cim-backup.repair-job";

/// The names of the safety copy and the staging stream for a repair of `stream` by `job`.
pub fn names(stream: &str, job: &JobId) -> (String, String) {
    let tag = tag(job);
    (
        format!("{stream}_PRE_REPAIR_{tag}"),
        format!("{stream}_REPAIR_{tag}"),
    )
}

/// A short, stream-name-safe tag for a job: the last eight alphanumerics of its id (upper
/// case), or `DRYRUN` for the placeholder id of a dry run.
fn tag(job: &JobId) -> String {
    if *job == JobId::dry_run() {
        return "DRYRUN".into();
    }
    let chars: Vec<char> = job
        .as_str()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    chars[chars.len().saturating_sub(8)..]
        .iter()
        .collect::<String>()
        .to_ascii_uppercase()
}

fn marked(config: &Value, key: &str, job: &JobId) -> bool {
    config
        .pointer(&format!("/metadata/{}", key.replace('/', "~1")))
        .and_then(Value::as_str)
        == Some(job.as_str())
}

/// Whether `config` is the live stream frozen by `job`.
pub fn frozen_by(config: &Value, job: &JobId) -> bool {
    marked(config, FROZEN_BY, job)
}

/// Whether `config` is a stream `job` created.
pub fn built_by(config: &Value, job: &JobId) -> bool {
    marked(config, BUILT_BY, job)
}

fn with_marker(config: &Value, key: &str, job: &JobId) -> Value {
    let mut c = config.clone();
    if c.get("metadata").is_none_or(Value::is_null) {
        c["metadata"] = json!({});
    }
    c["metadata"][key] = json!(job.as_str());
    c
}

/// The live stream's configuration while frozen: no subjects, the job's marker.
pub fn frozen(original: &Value, job: &JobId) -> Value {
    with_marker(&target::quiet(original), FROZEN_BY, job)
}

/// The configuration of a stream the repair builds under `name` from the live one's: renamed,
/// quiet, a plain stream (no mirror or sources), with the job's marker.
pub fn built(original: &Value, name: &str, job: &JobId) -> Value {
    let mut c = target::quiet(original);
    c["name"] = json!(name);
    if let Some(map) = c.as_object_mut() {
        for key in ["mirror", "sources", "created"] {
            map.remove(key);
        }
    }
    with_marker(&c, BUILT_BY, job)
}

/// Metadata key a rebuilt stream keeps: when the stream it continues was created (RFC 3339).
/// A rebuilt stream is a new stream to the server (new creation time); this is how backups of
/// the original are still recognised as its own.
pub const ORIGIN_CREATED: &str = "cim-backup.origin-created";

/// When the stream that `config` (created at `created`) continues was created.
pub fn origin(config: &Value, created: Option<OffsetDateTime>) -> Option<OffsetDateTime> {
    config
        .pointer(&format!("/metadata/{ORIGIN_CREATED}"))
        .and_then(Value::as_str)
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        .or(created)
}

/// The configuration a repaired stream gets back: the original one, carrying its origin.
pub fn given_back(original: &Value, origin: Option<OffsetDateTime>) -> Value {
    let mut c = original.clone();
    if let Some(t) = origin.and_then(|t| t.format(&Rfc3339).ok()) {
        if c.get("metadata").is_none_or(Value::is_null) {
            c["metadata"] = json!({});
        }
        c["metadata"][ORIGIN_CREATED] = json!(t);
    }
    c
}

/// Whether two stream configurations are the same, ignoring the fields the server fills in or
/// changes by itself (so a repair can tell whether someone changed the stream meanwhile).
pub fn same_config(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(map) = v.as_object_mut() {
            map.remove("created");
            if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.retain(|k, _| !k.starts_with("_nats"));
            }
        }
        v
    };
    strip(a) == strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_valid_stream_names() {
        let job: JobId = "0193a0b2-7c4e-7d1a-9f00-12ab34cd56ef".parse().unwrap();
        let (safety, staging) = names("ORDERS", &job);
        assert_eq!(safety, "ORDERS_PRE_REPAIR_34CD56EF");
        assert_eq!(staging, "ORDERS_REPAIR_34CD56EF");
        assert!(
            cim_backup_contracts::subjects::is_stream_name(&safety)
                && cim_backup_contracts::subjects::is_stream_name(&staging)
        );
        assert_eq!(names("ORDERS", &JobId::dry_run()).1, "ORDERS_REPAIR_DRYRUN");
    }

    #[test]
    fn a_rebuilt_stream_carries_its_origin() {
        let created = OffsetDateTime::parse("2026-01-02T03:04:05.123456789Z", &Rfc3339).unwrap();
        let later = OffsetDateTime::parse("2026-11-25T00:00:00Z", &Rfc3339).unwrap();
        let original = json!({ "name": "S", "subjects": ["s.>"] });
        assert_eq!(origin(&original, Some(created)), Some(created));
        let back = given_back(&original, Some(created));
        assert_eq!(
            origin(&back, Some(later)),
            Some(created),
            "the rebuilt stream's own creation time does not count"
        );
        assert_eq!(given_back(&original, None), original);
    }

    #[test]
    fn frozen_and_built_configs_are_quiet_and_marked() {
        let job: JobId = "j1".parse().unwrap();
        let other: JobId = "j2".parse().unwrap();
        let original = json!({ "name": "S", "subjects": ["s.>"], "sources": [{"name": "X"}], "metadata": { "team": "a", "_nats.level": "1" } });
        let f = frozen(&original, &job);
        assert_eq!(f["subjects"], json!([]));
        assert!(frozen_by(&f, &job) && !frozen_by(&f, &other) && !built_by(&f, &job));
        assert_eq!(f["metadata"]["team"], "a");
        let b = built(&original, "S_REPAIR_J1", &job);
        assert_eq!(b["name"], "S_REPAIR_J1");
        assert!(b.get("sources").is_none());
        assert!(built_by(&b, &job) && !frozen_by(&b, &job));
        let mut server_view = original.clone();
        server_view["metadata"]["_nats.req.level"] = json!("2");
        assert!(same_config(&original, &server_view));
        server_view["subjects"] = json!(["t.>"]);
        assert!(!same_config(&original, &server_view));
    }
}
