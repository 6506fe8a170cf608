//! Domain configuration export and import (docs/DOMAIN-CONFIGS.md).
//!
//! # Layout
//! - [`export`] — the export document of domains, read from the server: stream, consumer, KV
//!   and object-store configs without server-assigned fields, and the configuration and agent
//!   entries.
//! - [`plan`] — a document against the live server: create, update (with the field diff),
//!   unchanged, conflict (the rules the server enforces), and what `prune` would delete.
//! - [`apply`] — the `config-import` job: the plan's changes in dependency order.
//! - [`text`] — the document as YAML or JSON, and parse errors with line and column.

pub mod apply;
pub mod export;
pub mod plan;
pub mod text;

use serde_json::Value;

/// A config as the server reports it, without what the server assigns itself: metadata keys
/// starting with `_nats.` (its version and API level), and a metadata map left empty by that.
pub fn without_server_fields(config: &Value) -> Value {
    let mut config = config.clone();
    if let Value::Object(map) = &mut config {
        if let Some(Value::Object(meta)) = map.get_mut("metadata") {
            meta.retain(|k, _| !k.starts_with("_nats."));
        }
        if map
            .get("metadata")
            .is_some_and(|m| m.as_object().is_some_and(|m| m.is_empty()))
        {
            map.remove("metadata");
        }
    }
    config
}

/// Whether two subject patterns (with `*` and `>`) can match one subject.
pub fn subjects_overlap(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('.'), b.split('.'));
    loop {
        match (a.next(), b.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == y || x == "*" || y == "*" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_assigned_metadata_is_left_out() {
        let config = json!({"name": "S", "metadata": {"_nats.ver": "2.15.1", "team": "graph"}});
        assert_eq!(
            without_server_fields(&config),
            json!({"name": "S", "metadata": {"team": "graph"}})
        );
        let only_server = json!({"name": "S", "metadata": {"_nats.level": "5"}});
        assert_eq!(without_server_fields(&only_server), json!({"name": "S"}));
    }

    #[test]
    fn subject_patterns_overlap_when_one_subject_matches_both() {
        assert!(subjects_overlap("graph.>", "graph.events.x"));
        assert!(subjects_overlap("graph.*.x", "graph.events.*"));
        assert!(subjects_overlap("a.b", "a.b"));
        assert!(!subjects_overlap("graph.events.>", "billing.>"));
        assert!(!subjects_overlap("a.*", "a.b.c"));
        assert!(!subjects_overlap("a.b", "a.b.c"));
        assert!(subjects_overlap(">", "anything.at.all"));
    }
}
