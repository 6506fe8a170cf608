//! A document against the live server: what an import would do to each resource.
//!
//! - A resource missing on the server is **created**; one that exists is compared field by
//!   field, over the fields the document gives (a field it leaves out keeps the live value),
//!   and is **unchanged** or **updated** with that diff.
//! - **Conflict**, where the server would refuse or something collides: subjects that overlap
//!   another stream's; a change of a field the server never changes on an existing stream
//!   (`storage`, `retention`, `mirror`) or consumer (its delivery and ack policies, start,
//!   replay policy, group); unsetting `sealed`, `deny_delete` or `deny_purge`; an entry whose
//!   bucket neither exists nor is created; a resource given twice with different configs.
//! - Flags that can never be undone once set (`sealed`, `deny_delete`, `deny_purge`) are called
//!   out in the notes of the resource that sets them.
//! - Consumers and entries of the document's domains that the server has and the document
//!   lacks are **extra** (kept), or **delete** with `prune`. Streams and buckets are never
//!   deleted: they hold data.
//!
//! Resources come in dependency order: streams (a stream after the streams it mirrors or
//! sources), KV buckets and object stores, then consumers, then entries, then deletions.

use std::collections::{BTreeMap, BTreeSet};

use cim_backup_contracts::domain_configs::{
    Action, ConfigsDocument, EntriesExport, FieldChange, PlannedResource, ResourceKind, payload_key,
};
use serde_json::{Value, json};

use super::export::live_entries;
use super::{subjects_overlap, without_server_fields};
use crate::engine::context::Context;
use crate::engine::error::EngineError;

/// Stream fields the server does not change on an existing stream.
const STREAM_FIXED: &[&str] = &["storage", "retention", "mirror"];
/// Consumer fields the server does not change on an existing consumer.
const CONSUMER_FIXED: &[&str] = &[
    "deliver_policy",
    "opt_start_seq",
    "opt_start_time",
    "ack_policy",
    "replay_policy",
    "deliver_group",
    "durable_name",
];
/// Stream config fields of nats-server (2.15): a field the file gives that is neither here nor
/// in the live config is a typo, not an update.
const STREAM_FIELDS: &[&str] = &[
    "name",
    "description",
    "subjects",
    "retention",
    "max_consumers",
    "max_msgs",
    "max_bytes",
    "max_age",
    "max_msgs_per_subject",
    "max_msg_size",
    "discard",
    "storage",
    "num_replicas",
    "no_ack",
    "template_owner",
    "duplicate_window",
    "placement",
    "mirror",
    "sources",
    "compression",
    "first_seq",
    "subject_transform",
    "republish",
    "allow_direct",
    "mirror_direct",
    "consumer_limits",
    "sealed",
    "deny_delete",
    "deny_purge",
    "allow_rollup_hdrs",
    "discard_new_per_subject",
    "metadata",
    "allow_msg_ttl",
    "subject_delete_marker_ttl",
    "allow_msg_counter",
    "allow_atomic",
    "allow_msg_schedules",
    "persist_mode",
];
/// Consumer config fields of nats-server (2.15).
const CONSUMER_FIELDS: &[&str] = &[
    "durable_name",
    "name",
    "description",
    "deliver_policy",
    "opt_start_seq",
    "opt_start_time",
    "ack_policy",
    "ack_wait",
    "max_deliver",
    "backoff",
    "filter_subject",
    "filter_subjects",
    "replay_policy",
    "rate_limit_bps",
    "sample_freq",
    "max_waiting",
    "max_ack_pending",
    "flow_control",
    "idle_heartbeat",
    "headers_only",
    "max_batch",
    "max_expires",
    "max_bytes",
    "inactive_threshold",
    "num_replicas",
    "mem_storage",
    "metadata",
    "deliver_subject",
    "deliver_group",
    "direct",
    "pause_until",
    "priority_groups",
    "priority_policy",
    "priority_timeout",
    "pinned_ttl",
];

/// What is wrong with the fields the file gives: a field no config of this kind has (unless
/// the live one has it: a newer server's field), or a value of another JSON type than the
/// live one.
fn field_problems(doc: &Value, live: Option<&Value>, known: &[&str], what: &str) -> Vec<String> {
    let kind_of = |v: &Value| match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "map",
    };
    let Some(doc) = doc.as_object() else {
        return vec![format!("the {what} config is not a map")];
    };
    let mut out = Vec::new();
    for (k, v) in doc {
        match live.and_then(|l| l.get(k.as_str())) {
            Some(l) if !l.is_null() && !v.is_null() && kind_of(l) != kind_of(v) => {
                out.push(format!(
                    "{k}: the server holds a {}, the file a {}",
                    kind_of(l),
                    kind_of(v)
                ))
            }
            Some(_) => {}
            None if !known.contains(&k.as_str()) => {
                out.push(format!("{k} is not a field of a {what} config"))
            }
            None => {}
        }
    }
    out
}

/// Flags that, once true, can never be set back.
const ONE_WAY: &[&str] = &["sealed", "deny_delete", "deny_purge"];

/// The plan, and for every create and update what it writes (by [`payload_key`]).
pub struct Plan {
    pub resources: Vec<PlannedResource>,
    pub payloads: BTreeMap<String, String>,
}

/// One stream-like resource of the document: a stream, a KV bucket or an object store.
struct StreamLike<'a> {
    kind: ResourceKind,
    /// The name in the document (bucket name for KV and object stores).
    name: String,
    /// The JetStream stream behind it.
    stream: String,
    domain: &'a str,
    config: Value,
}

/// `live_streams_not_in_file`: streams the server has for the document's domains that the
/// document lacks (planned as `extra`).
pub async fn plan(
    ctx: &Context,
    doc: &ConfigsDocument,
    live_streams_not_in_file: &[(String, String)],
    prune: bool,
) -> Result<Plan, EngineError> {
    let mut plan = Plan {
        resources: Vec::new(),
        payloads: BTreeMap::new(),
    };
    let mut streams: Vec<StreamLike> = Vec::new();
    let mut seen: BTreeMap<(ResourceKind, String), Value> = BTreeMap::new();
    for (domain, t) in &doc.domains {
        let all = t
            .streams
            .iter()
            .map(|(n, s)| (ResourceKind::Stream, n.clone(), n.clone(), &s.config))
            .chain(
                t.key_value
                    .iter()
                    .map(|(b, c)| (ResourceKind::KeyValue, b.clone(), format!("KV_{b}"), c)),
            )
            .chain(
                t.object_stores
                    .iter()
                    .map(|(b, c)| (ResourceKind::ObjectStore, b.clone(), format!("OBJ_{b}"), c)),
            );
        for (kind, name, stream, config) in all {
            let config = with_name(&without_server_fields(config), &stream);
            match seen.get(&(kind, name.clone())) {
                Some(earlier) if *earlier == config => continue,
                Some(_) => {
                    plan.resources.push(conflict(
                        kind,
                        &name,
                        domain,
                        "given twice in the document with different configs",
                    ));
                    continue;
                }
                None => {}
            }
            seen.insert((kind, name.clone()), config.clone());
            streams.push(StreamLike {
                kind,
                name,
                stream,
                domain,
                config,
            });
        }
    }
    order_by_sources(&mut streams);
    let live_streams = ctx.api.stream_names().await?;
    // Every live stream's config, read once: for the overlap checks and the comparisons.
    let mut live_configs: BTreeMap<String, Value> = BTreeMap::new();
    for name in &live_streams {
        if let Some(info) = ctx.api.stream_info(name).await? {
            live_configs.insert(name.clone(), info.config);
        }
    }
    let mut creatable = BTreeSet::new();
    for (i, s) in streams.iter().enumerate() {
        let mut r = stream_resource(s, live_configs.get(&s.stream), &mut plan.payloads);
        for earlier in &streams[..i] {
            for mine in subjects_of(&s.config) {
                if let Some(theirs) = subjects_of(&earlier.config)
                    .into_iter()
                    .find(|t| subjects_overlap(&mine, t))
                {
                    r.action = Action::Conflict;
                    r.notes.push(format!(
                        "subject {mine} overlaps subject {theirs} of stream {} in the same file",
                        earlier.stream
                    ));
                }
            }
        }
        for (other, config) in &live_configs {
            if *other == s.stream {
                continue;
            }
            let subjects = subjects_of(config);
            for mine in subjects_of(&s.config) {
                if let Some(theirs) = subjects.iter().find(|t| subjects_overlap(&mine, t)) {
                    r.action = Action::Conflict;
                    r.notes.push(format!(
                        "subject {mine} overlaps subject {theirs} of stream {other}"
                    ));
                }
            }
        }
        if r.action != Action::Conflict && s.kind == ResourceKind::KeyValue {
            creatable.insert(s.name.clone());
        }
        plan.resources.push(r);
    }
    for (domain, stream) in live_streams_not_in_file {
        plan.resources.push(PlannedResource {
            kind: ResourceKind::Stream,
            name: stream.clone(),
            domain: domain.clone(),
            action: Action::Extra,
            changes: Vec::new(),
            notes: vec![
                "on the server, not in the document: kept (streams hold data and are never deleted)"
                    .to_owned(),
            ],
        });
    }
    for (domain, t) in &doc.domains {
        for (stream, s) in &t.streams {
            consumers(ctx, domain, stream, s, prune, &mut plan).await?;
        }
    }
    for (domain, t) in &doc.domains {
        for entries in [&t.config_entries, &t.agents].into_iter().flatten() {
            entry_resources(ctx, domain, entries, &creatable, prune, &mut plan).await?;
        }
    }
    // Deletions last: nothing planned before them depends on what they remove.
    plan.resources.sort_by_key(|r| r.action == Action::Delete);
    Ok(plan)
}

fn with_name(config: &Value, name: &str) -> Value {
    let mut config = config.clone();
    if let Value::Object(map) = &mut config {
        map.insert("name".into(), json!(name));
    }
    config
}

fn subjects_of(config: &Value) -> Vec<String> {
    config
        .get("subjects")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Streams that mirror or source others come after them (the document's own only).
fn order_by_sources(streams: &mut Vec<StreamLike>) {
    let upstream = |s: &StreamLike| -> Vec<String> {
        let mut names: Vec<String> = s
            .config
            .get("sources")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.get("name").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(m) = s.config.pointer("/mirror/name").and_then(Value::as_str) {
            names.push(m.to_owned());
        }
        names
    };
    let mut ordered: Vec<StreamLike> = Vec::new();
    let mut left = std::mem::take(streams);
    while !left.is_empty() {
        let ready = left.iter().position(|s| {
            upstream(s).iter().all(|u| {
                ordered.iter().any(|o| &o.stream == u) || !left.iter().any(|l| &l.stream == u)
            })
        });
        // A cycle cannot be created in any order: take the rest as they come.
        let at = ready.unwrap_or(0);
        ordered.push(left.remove(at));
    }
    *streams = ordered;
}

fn stream_resource(
    s: &StreamLike,
    live: Option<&Value>,
    payloads: &mut BTreeMap<String, String>,
) -> PlannedResource {
    let mut r = PlannedResource {
        kind: s.kind,
        name: s.name.clone(),
        domain: s.domain.to_owned(),
        action: Action::Create,
        changes: Vec::new(),
        notes: Vec::new(),
    };
    let problems = field_problems(&s.config, live, STREAM_FIELDS, "stream");
    if !problems.is_empty() {
        r.action = Action::Conflict;
        r.notes = problems;
        return r;
    }
    let Some(live) = live else {
        one_way_notes(&s.config, &Value::Null, &mut r.notes);
        payloads.insert(payload_key(s.kind, &s.name), s.config.to_string());
        return r;
    };
    let live = without_server_fields(live);
    r.changes = diff(&live, &s.config);
    if r.changes.is_empty() {
        r.action = Action::Unchanged;
        return r;
    }
    r.action = Action::Update;
    for c in &r.changes {
        if STREAM_FIXED.contains(&c.field.as_str()) {
            r.action = Action::Conflict;
            r.notes.push(format!(
                "the server does not change {} of an existing stream ({} → {})",
                c.field, c.live, c.document
            ));
        }
        if ONE_WAY.contains(&c.field.as_str()) && c.live == "true" {
            r.action = Action::Conflict;
            r.notes
                .push(format!("{} is set and can never be unset", c.field));
        }
    }
    one_way_notes(&s.config, &live, &mut r.notes);
    if r.action == Action::Update {
        payloads.insert(
            payload_key(s.kind, &s.name),
            merged(&live, &s.config).to_string(),
        );
    }
    r
}

/// The document's fields that differ from the live config (a field the document leaves out
/// is not compared).
fn diff(live: &Value, doc: &Value) -> Vec<FieldChange> {
    let Some(doc) = doc.as_object() else {
        return Vec::new();
    };
    doc.iter()
        .filter(|(k, v)| live.get(k.as_str()) != Some(v))
        .map(|(k, v)| FieldChange {
            field: k.clone(),
            live: live.get(k.as_str()).unwrap_or(&Value::Null).to_string(),
            document: v.to_string(),
        })
        .collect()
}

fn merged(live: &Value, doc: &Value) -> Value {
    let mut out = live.clone();
    if let (Value::Object(out), Some(doc)) = (&mut out, doc.as_object()) {
        for (k, v) in doc {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

fn one_way_notes(doc: &Value, live: &Value, notes: &mut Vec<String>) {
    for flag in ONE_WAY {
        if doc.get(*flag) == Some(&json!(true)) && live.get(*flag) != Some(&json!(true)) {
            notes.push(format!("sets {flag}: this can never be undone"));
        }
    }
}

fn conflict(kind: ResourceKind, name: &str, domain: &str, why: &str) -> PlannedResource {
    PlannedResource {
        kind,
        name: name.to_owned(),
        domain: domain.to_owned(),
        action: Action::Conflict,
        changes: Vec::new(),
        notes: vec![why.to_owned()],
    }
}

async fn consumers(
    ctx: &Context,
    domain: &str,
    stream: &str,
    s: &cim_backup_contracts::domain_configs::StreamExport,
    prune: bool,
    plan: &mut Plan,
) -> Result<(), EngineError> {
    let live: BTreeMap<String, Value> = match ctx.api.durable_consumers(stream).await {
        Ok(list) => list
            .into_iter()
            .map(|c| (c.name, without_server_fields(&c.config)))
            .collect(),
        Err(e) if e.err_code() == Some(crate::jsapi::STREAM_NOT_FOUND) => BTreeMap::new(),
        Err(e) => return Err(e.into()),
    };
    for (name, config) in &s.consumers {
        let mut config = without_server_fields(config);
        if let Value::Object(map) = &mut config {
            map.insert("durable_name".into(), json!(name));
        }
        let full = format!("{stream}/{name}");
        let mut r = PlannedResource {
            kind: ResourceKind::Consumer,
            name: full.clone(),
            domain: domain.to_owned(),
            action: Action::Create,
            changes: Vec::new(),
            notes: Vec::new(),
        };
        let problems = field_problems(&config, live.get(name), CONSUMER_FIELDS, "consumer");
        if !problems.is_empty() {
            r.action = Action::Conflict;
            r.notes = problems;
            plan.resources.push(r);
            continue;
        }
        match live.get(name) {
            None => {
                plan.payloads
                    .insert(payload_key(r.kind, &full), config.to_string());
            }
            Some(existing) => {
                r.changes = diff(existing, &config)
                    .into_iter()
                    .filter(|c| c.field != "name")
                    .collect();
                if r.changes.is_empty() {
                    r.action = Action::Unchanged;
                } else {
                    r.action = Action::Update;
                    for c in &r.changes {
                        if CONSUMER_FIXED.contains(&c.field.as_str()) {
                            r.action = Action::Conflict;
                            r.notes.push(format!(
                                "the server does not change {} of an existing consumer ({} → {})",
                                c.field, c.live, c.document
                            ));
                        }
                    }
                    if r.action == Action::Update {
                        plan.payloads.insert(
                            payload_key(r.kind, &full),
                            merged(existing, &config).to_string(),
                        );
                    }
                }
            }
        }
        plan.resources.push(r);
    }
    for name in live.keys().filter(|n| !s.consumers.contains_key(*n)) {
        plan.resources.push(extra(
            ResourceKind::Consumer,
            &format!("{stream}/{name}"),
            domain,
            prune,
        ));
    }
    Ok(())
}

fn extra(kind: ResourceKind, name: &str, domain: &str, prune: bool) -> PlannedResource {
    PlannedResource {
        kind,
        name: name.to_owned(),
        domain: domain.to_owned(),
        action: if prune { Action::Delete } else { Action::Extra },
        changes: Vec::new(),
        notes: if prune {
            Vec::new()
        } else {
            vec!["on the server, not in the document: kept (prune deletes it)".to_owned()]
        },
    }
}

async fn entry_resources(
    ctx: &Context,
    domain: &str,
    e: &EntriesExport,
    creatable: &BTreeSet<String>,
    prune: bool,
    plan: &mut Plan,
) -> Result<(), EngineError> {
    let exists = ctx
        .api
        .stream_info(&format!("KV_{}", e.bucket))
        .await?
        .is_some();
    if !exists && !creatable.contains(&e.bucket) {
        for key in e.entries.keys() {
            plan.resources.push(conflict(
                ResourceKind::Entry,
                &format!("{}/{key}", e.bucket),
                domain,
                &format!(
                    "bucket {} does not exist and the document does not create it",
                    e.bucket
                ),
            ));
        }
        return Ok(());
    }
    let live = if exists {
        live_entries(ctx, &e.bucket, &e.prefix).await?
    } else {
        BTreeMap::new()
    };
    for (key, value) in &e.entries {
        let name = format!("{}/{key}", e.bucket);
        if !key.starts_with(&e.prefix) {
            plan.resources.push(conflict(
                ResourceKind::Entry,
                &name,
                domain,
                &format!("key {key} is outside the range's prefix {}", e.prefix),
            ));
            continue;
        }
        let doc = serde_json::to_value(value).expect("entries serialize");
        let action = match live.get(key) {
            None => Action::Create,
            Some(v) if v == value => Action::Unchanged,
            Some(_) => Action::Update,
        };
        let changes = match (action, live.get(key)) {
            (Action::Update, Some(v)) => vec![FieldChange {
                field: "value".into(),
                live: serde_json::to_string(v).expect("entries serialize"),
                document: doc.to_string(),
            }],
            _ => Vec::new(),
        };
        if matches!(action, Action::Create | Action::Update) {
            plan.payloads
                .insert(payload_key(ResourceKind::Entry, &name), doc.to_string());
        }
        plan.resources.push(PlannedResource {
            kind: ResourceKind::Entry,
            name,
            domain: domain.to_owned(),
            action,
            changes,
            notes: Vec::new(),
        });
    }
    for key in live.keys().filter(|k| !e.entries.contains_key(*k)) {
        plan.resources.push(extra(
            ResourceKind::Entry,
            &format!("{}/{key}", e.bucket),
            domain,
            prune,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_the_document_leaves_out_keeps_the_live_value() {
        let live = json!({"name": "S", "max_msgs": -1, "subjects": ["a.>"]});
        let doc = json!({"name": "S", "subjects": ["a.>", "b.>"]});
        let changes = diff(&live, &doc);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].field, "subjects");
        assert_eq!(
            merged(&live, &doc),
            json!({"name": "S", "max_msgs": -1, "subjects": ["a.>", "b.>"]})
        );
    }

    #[test]
    fn a_change_of_storage_or_unsetting_a_one_way_flag_is_a_conflict() {
        let s = StreamLike {
            kind: ResourceKind::Stream,
            name: "S".into(),
            stream: "S".into(),
            domain: "g",
            config: json!({"name": "S", "storage": "memory", "deny_delete": false}),
        };
        let live = json!({"name": "S", "storage": "file", "deny_delete": true});
        let mut payloads = BTreeMap::new();
        let r = stream_resource(&s, Some(&live), &mut payloads);
        assert_eq!(r.action, Action::Conflict);
        assert!(
            r.notes.iter().any(|n| n.contains("storage")),
            "{:?}",
            r.notes
        );
        assert!(
            r.notes.iter().any(|n| n.contains("deny_delete is set")),
            "{:?}",
            r.notes
        );
        assert!(payloads.is_empty(), "a conflict writes nothing");
    }

    #[test]
    fn setting_a_one_way_flag_is_called_out() {
        let s = StreamLike {
            kind: ResourceKind::Stream,
            name: "S".into(),
            stream: "S".into(),
            domain: "g",
            config: json!({"name": "S", "sealed": true}),
        };
        let r = stream_resource(&s, None, &mut BTreeMap::new());
        assert_eq!(r.action, Action::Create);
        assert_eq!(r.notes, vec!["sets sealed: this can never be undone"]);
    }

    #[test]
    fn a_stream_comes_after_the_streams_it_sources() {
        let mk = |name: &str, config: Value| StreamLike {
            kind: ResourceKind::Stream,
            name: name.into(),
            stream: name.into(),
            domain: "g",
            config,
        };
        let mut streams = vec![
            mk("AGG", json!({"sources": [{"name": "A"}, {"name": "B"}]})),
            mk("MIRROR", json!({"mirror": {"name": "AGG"}})),
            mk("A", json!({})),
            mk("B", json!({})),
        ];
        order_by_sources(&mut streams);
        let order: Vec<&str> = streams.iter().map(|s| s.stream.as_str()).collect();
        assert_eq!(order, vec!["A", "B", "AGG", "MIRROR"]);
    }
}
