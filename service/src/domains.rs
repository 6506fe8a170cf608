//! Domains: what `[domains.<name>]` names and what the CIM conventions find on the server,
//! merged into one list (docs/PROJECTIONS.md §1). `--domains all` means exactly this list.
//!
//! Conventions (from the CIM modules, `CIM-FORMATS`):
//! - streams `DOMAIN_<D>_EVENTS`, `DOMAIN_<D>_COMMANDS`, `DOMAIN_<D>_SNAPSHOTS` belong to domain
//!   `<d>` (lower case);
//! - keys `<d>.<id>` of the KV bucket `CIM_PROJECTIONS` are domain `<d>`'s read model
//!   `CIM_PROJECTIONS` (prefix `<d>.`);
//! - the durable consumers of a domain's `_EVENTS` streams (and of its configured streams) are
//!   its projectors;
//! - keys `<d>.…` of `CIM_DOMAIN_CONFIG` are its configuration entries, of `CIM_AGENTS` its
//!   agent definitions.

use std::collections::BTreeMap;

use cim_backup_contracts::projections::{
    Domain, DomainStream, KeyRange, Origin, Projector, ReadModel,
};
use cim_backup_contracts::subjects::{is_stream_name, is_subject_token};

use crate::config::{DomainConfig, KeyRangeConfig};
use crate::jsapi::{JsApi, JsApiError};

/// The shared projections bucket of the CIM conventions.
pub const PROJECTIONS_BUCKET: &str = "CIM_PROJECTIONS";
/// Where configuration entries are by convention (keys `<domain>.…`).
pub const CONFIG_BUCKET: &str = "CIM_DOMAIN_CONFIG";
/// Where agent definitions are by convention (keys `<domain>.…`).
pub const AGENTS_BUCKET: &str = "CIM_AGENTS";
/// Keys of a shared bucket discovery looks at, at most (beyond that, configure the domain).
const DISCOVERY_KEYS: usize = 200_000;
const STREAM_KINDS: [&str; 3] = ["_EVENTS", "_COMMANDS", "_SNAPSHOTS"];

/// Whether `name` can name a domain: lower-case letters, digits, `-` and `_`.
pub fn is_domain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// A bucket name as nats-server accepts it.
pub fn is_bucket_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A key prefix: empty, or subject tokens each followed by `.`.
pub fn is_key_prefix(prefix: &str) -> bool {
    prefix.is_empty()
        || prefix
            .strip_suffix('.')
            .is_some_and(|p| p.split('.').all(is_subject_token))
}

/// Checks one `[domains.<name>]` section; the message names the field.
pub fn check_config(name: &str, domain: &DomainConfig) -> Result<(), String> {
    if !is_domain_name(name) {
        return Err(format!(
            "domains: {name:?} is not a domain name (lower-case letters, digits, - and _)"
        ));
    }
    for stream in &domain.streams {
        if !is_stream_name(stream) {
            return Err(format!(
                "domains.{name}.streams: {stream:?} is not a stream name"
            ));
        }
    }
    let range = |field: &str, r: &KeyRangeConfig| {
        if !is_bucket_name(&r.bucket) {
            return Err(format!(
                "domains.{name}.{field}.bucket: {:?} is not a bucket name",
                r.bucket
            ));
        }
        if !is_key_prefix(&r.prefix) {
            return Err(format!(
                "domains.{name}.{field}.prefix: {:?} must be empty or end with '.' (e.g. \"graph.\")",
                r.prefix
            ));
        }
        Ok(())
    };
    for (model, r) in &domain.projections {
        range(&format!("projections.{model}"), r)?;
    }
    let models: Vec<_> = domain.projections.iter().collect();
    for (i, (a, ra)) in models.iter().enumerate() {
        for (b, rb) in &models[i + 1..] {
            if ra.bucket == rb.bucket && overlap(&ra.prefix, &rb.prefix) {
                return Err(format!(
                    "domains.{name}.projections: {a} and {b} share keys of bucket {} (prefixes {:?} and {:?}); a snapshot would hold them twice and a restore could not put both back",
                    ra.bucket, ra.prefix, rb.prefix
                ));
            }
        }
    }
    for p in &domain.projectors {
        if !is_stream_name(&p.stream) || !is_stream_name(&p.consumer) {
            return Err(format!(
                "domains.{name}.projectors: {:?} on {:?} is not a consumer on a stream",
                p.consumer, p.stream
            ));
        }
    }
    if let Some(r) = &domain.config {
        range("config", r)?;
    }
    if let Some(r) = &domain.agents {
        range("agents", r)?;
    }
    Ok(())
}

/// Every domain: configured ones and discovered ones, merged, sorted by name.
pub async fn list(
    api: &JsApi,
    configured: &BTreeMap<String, DomainConfig>,
) -> Result<Vec<Domain>, JsApiError> {
    let mut domains: BTreeMap<String, Domain> = BTreeMap::new();
    let empty = |name: &str| Domain {
        name: name.to_owned(),
        streams: Vec::new(),
        projections: Vec::new(),
        projectors: Vec::new(),
        config: None,
        agents: None,
    };
    for (name, c) in configured {
        let d = domains.entry(name.clone()).or_insert_with(|| empty(name));
        for stream in &c.streams {
            d.streams.push(DomainStream {
                name: stream.clone(),
                origin: Origin::Configured,
            });
        }
        for (model, r) in &c.projections {
            d.projections.push(ReadModel {
                name: model.clone(),
                bucket: r.bucket.clone(),
                prefix: r.prefix.clone(),
                origin: Origin::Configured,
            });
        }
        for p in &c.projectors {
            d.projectors.push(Projector {
                stream: p.stream.clone(),
                consumer: p.consumer.clone(),
                origin: Origin::Configured,
            });
        }
        d.config = c.config.as_ref().map(configured_range);
        d.agents = c.agents.as_ref().map(configured_range);
    }
    let streams = api.stream_names().await?;
    for stream in &streams {
        let Some(name) = domain_of_stream(stream) else {
            continue;
        };
        let d = domains.entry(name.clone()).or_insert_with(|| empty(&name));
        if !d.streams.iter().any(|s| &s.name == stream) {
            d.streams.push(DomainStream {
                name: stream.clone(),
                origin: Origin::Discovered,
            });
        }
    }
    for (name, _) in prefixed_domains(api, &streams, PROJECTIONS_BUCKET).await? {
        let d = domains.entry(name.clone()).or_insert_with(|| empty(&name));
        let prefix = format!("{name}.");
        // A configured model of the same bucket that shares any of these keys takes them
        // over: the discovered one would hold them twice.
        let covered = d
            .projections
            .iter()
            .any(|m| m.bucket == PROJECTIONS_BUCKET && overlap(&prefix, &m.prefix));
        if !covered {
            d.projections.push(ReadModel {
                name: PROJECTIONS_BUCKET.to_owned(),
                bucket: PROJECTIONS_BUCKET.to_owned(),
                prefix,
                origin: Origin::Discovered,
            });
        }
    }
    for (bucket, slot) in [(CONFIG_BUCKET, 0), (AGENTS_BUCKET, 1)] {
        for (name, _) in prefixed_domains(api, &streams, bucket).await? {
            let Some(d) = domains.get_mut(&name) else {
                continue; // keys of a domain with nothing else are not a domain
            };
            let place = if slot == 0 {
                &mut d.config
            } else {
                &mut d.agents
            };
            if place.is_none() {
                *place = Some(KeyRange {
                    bucket: bucket.to_owned(),
                    prefix: format!("{name}."),
                    origin: Origin::Discovered,
                });
            }
        }
    }
    for d in domains.values_mut() {
        let on: Vec<String> = d
            .streams
            .iter()
            .filter(|s| s.origin == Origin::Configured || s.name.ends_with("_EVENTS"))
            .map(|s| s.name.clone())
            .collect();
        for stream in on {
            if !streams.contains(&stream) {
                continue;
            }
            for c in api.durable_consumers(&stream).await? {
                if !d
                    .projectors
                    .iter()
                    .any(|p| p.stream == stream && p.consumer == c.name)
                {
                    d.projectors.push(Projector {
                        stream: stream.clone(),
                        consumer: c.name,
                        origin: Origin::Discovered,
                    });
                }
            }
        }
    }
    Ok(domains.into_values().collect())
}

fn configured_range(r: &KeyRangeConfig) -> KeyRange {
    KeyRange {
        bucket: r.bucket.clone(),
        prefix: r.prefix.clone(),
        origin: Origin::Configured,
    }
}

/// `DOMAIN_GRAPH_EVENTS` → `graph`.
pub fn domain_of_stream(stream: &str) -> Option<String> {
    let rest = stream.strip_prefix("DOMAIN_")?;
    let name = STREAM_KINDS.iter().find_map(|k| rest.strip_suffix(k))?;
    let name = name.to_ascii_lowercase();
    is_domain_name(&name).then_some(name)
}

/// The domains with keys `<domain>.…` in a shared bucket, and how many keys each.
async fn prefixed_domains(
    api: &JsApi,
    streams: &[String],
    bucket: &str,
) -> Result<BTreeMap<String, u64>, JsApiError> {
    let stream = format!("KV_{bucket}");
    let mut found = BTreeMap::new();
    if !streams.contains(&stream) {
        return Ok(found);
    }
    let prefix = format!("$KV.{bucket}.");
    let subjects = api
        .subjects(&stream, &format!("{prefix}*.>"), DISCOVERY_KEYS)
        .await?;
    if subjects.len() >= DISCOVERY_KEYS {
        tracing::warn!(%bucket, "discovery looked at the first {DISCOVERY_KEYS} keys of {bucket} only: name the domains' read models in [domains.<name>.projections]");
    }
    for subject in subjects {
        let Some(domain) = subject
            .strip_prefix(&prefix)
            .and_then(|k| k.split('.').next())
        else {
            continue;
        };
        if is_domain_name(domain) {
            *found.entry(domain.to_owned()).or_insert(0) += 1;
        }
    }
    Ok(found)
}

/// Whether two key prefixes of one bucket share keys (one is a prefix of the other).
pub fn overlap(a: &str, b: &str) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// The first read model of a domain other than `domain` whose keys overlap `prefix` of
/// `bucket`: writing or deleting there would touch another domain's keys.
pub fn owned_elsewhere<'a>(
    all: &'a [Domain],
    domain: &str,
    bucket: &str,
    prefix: &str,
) -> Option<(&'a Domain, &'a ReadModel)> {
    all.iter().filter(|d| d.name != domain).find_map(|d| {
        d.projections
            .iter()
            .find(|m| m.bucket == bucket && overlap(&m.prefix, prefix))
            .map(|m| (d, m))
    })
}

/// The domains a request names: `all` (or nothing) is every one; a name that is not a domain
/// is an error that lists the known ones.
pub fn select<'a>(all: &'a [Domain], names: &[String]) -> Result<Vec<&'a Domain>, String> {
    if names.is_empty() || names.iter().any(|n| n == "all") {
        if names.len() > 1 {
            return Err("domains: \"all\" cannot be combined with names".to_owned());
        }
        return Ok(all.iter().collect());
    }
    let mut out = Vec::new();
    for name in names {
        match all.iter().find(|d| &d.name == name) {
            Some(d) if !out.iter().any(|o: &&Domain| o.name == d.name) => out.push(d),
            Some(_) => return Err(format!("domains: {name} is named twice")),
            None if all.iter().any(|d| d.name.eq_ignore_ascii_case(name)) => {
                return Err(format!(
                    "domains: no domain {}; domain names are lower case: {}",
                    cim_backup_contracts::text::echo(name),
                    name.to_ascii_lowercase()
                ));
            }
            None => {
                return Err(format!(
                    "domains: no domain {}; known: {}",
                    cim_backup_contracts::text::echo(name),
                    if all.is_empty() {
                        "none (configure [domains.<name>] or create DOMAIN_<NAME>_EVENTS)"
                            .to_owned()
                    } else {
                        all.iter()
                            .map(|d| d.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_map_to_domains_by_convention() {
        assert_eq!(
            domain_of_stream("DOMAIN_GRAPH_EVENTS").as_deref(),
            Some("graph")
        );
        assert_eq!(
            domain_of_stream("DOMAIN_PERSON_DATA_SNAPSHOTS").as_deref(),
            Some("person_data")
        );
        assert_eq!(domain_of_stream("DOMAIN_GRAPH_OTHER"), None);
        assert_eq!(domain_of_stream("EVENTS"), None);
        assert_eq!(domain_of_stream("DOMAIN__EVENTS"), None);
    }

    #[test]
    fn a_config_section_names_its_bad_field() {
        let mut c = DomainConfig::default();
        c.projections.insert(
            "NodeIndex".into(),
            KeyRangeConfig {
                bucket: "CIM_PROJECTIONS".into(),
                prefix: "graph".into(),
            },
        );
        let e = check_config("graph", &c).unwrap_err();
        assert!(
            e.contains("domains.graph.projections.NodeIndex.prefix"),
            "{e}"
        );
        assert!(check_config("Graph", &DomainConfig::default()).is_err());
        c.projections.get_mut("NodeIndex").unwrap().prefix = "graph.node.".into();
        assert_eq!(check_config("graph", &c), Ok(()));
        // Two models over the same keys could not both be put back.
        c.projections.insert(
            "All".into(),
            KeyRangeConfig {
                bucket: "CIM_PROJECTIONS".into(),
                prefix: "graph.".into(),
            },
        );
        let e = check_config("graph", &c).unwrap_err();
        assert!(e.contains("All and NodeIndex share keys"), "{e}");
    }

    #[test]
    fn keys_of_another_domain_are_found_in_a_shared_bucket() {
        let model = |name: &str, prefix: &str| ReadModel {
            name: name.into(),
            bucket: PROJECTIONS_BUCKET.into(),
            prefix: prefix.into(),
            origin: Origin::Discovered,
        };
        let domain = |name: &str, prefix: &str| Domain {
            name: name.into(),
            streams: vec![],
            projections: vec![model(PROJECTIONS_BUCKET, prefix)],
            projectors: vec![],
            config: None,
            agents: None,
        };
        let all = [domain("billing", "billing."), domain("graph", "graph.")];
        assert!(owned_elsewhere(&all, "graph", PROJECTIONS_BUCKET, "graph.node.").is_none());
        let (d, _) = owned_elsewhere(&all, "graph", PROJECTIONS_BUCKET, "").unwrap();
        assert_eq!(d.name, "billing");
        assert!(owned_elsewhere(&all, "graph", "OTHER", "").is_none());
        let upper = select(&all, &["GRAPH".to_owned()]).unwrap_err();
        assert!(upper.contains("lower case: graph"), "{upper}");
        let unknown = select(&all, &["nope".to_owned()]).unwrap_err();
        assert!(unknown.contains("known: billing, graph"), "{unknown}");
    }
}
