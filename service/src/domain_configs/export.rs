//! The export document of domains, read from the server.
//!
//! Per domain: its streams (each with its durable consumers), the KV buckets it uses (its read
//! models', configuration's and agents' buckets), the object stores `[domains.<name>]` names,
//! and the keys and values of its configuration entries and agent definitions. Configs are as
//! the server reports them minus server-assigned fields ([`super::without_server_fields`]);
//! maps are sorted, so the same state always gives the same bytes.

use std::collections::BTreeMap;

use base64::Engine;
use cim_backup_contracts::domain_configs::{
    CONFIGS_FORMAT, ConfigsDocument, DomainTopology, EntriesExport, EntryValue, StreamExport,
};
use cim_backup_contracts::projections::{Domain, KeyRange};
use tokio_util::sync::CancellationToken;

use super::without_server_fields;
use crate::engine::context::Context;
use crate::engine::error::EngineError;
use crate::engine::projections::read::scan_keys;

/// The document of `domains` (already selected).
pub async fn document(ctx: &Context, domains: &[Domain]) -> Result<ConfigsDocument, EngineError> {
    let mut out = BTreeMap::new();
    for d in domains {
        out.insert(d.name.clone(), topology(ctx, d).await?);
    }
    Ok(ConfigsDocument {
        format: CONFIGS_FORMAT.to_owned(),
        domains: out,
    })
}

async fn topology(ctx: &Context, d: &Domain) -> Result<DomainTopology, EngineError> {
    let mut t = DomainTopology::default();
    for s in &d.streams {
        let Some(info) = ctx.api.stream_info(&s.name).await? else {
            continue;
        };
        let consumers = ctx
            .api
            .durable_consumers(&s.name)
            .await?
            .into_iter()
            .map(|c| (c.name, without_server_fields(&c.config)))
            .collect();
        t.streams.insert(
            s.name.clone(),
            StreamExport {
                config: without_server_fields(&info.config),
                consumers,
            },
        );
    }
    let buckets = d
        .projections
        .iter()
        .map(|m| m.bucket.as_str())
        .chain(d.config.iter().map(|r| r.bucket.as_str()))
        .chain(d.agents.iter().map(|r| r.bucket.as_str()));
    for bucket in buckets {
        if let Some(info) = ctx.api.stream_info(&format!("KV_{bucket}")).await? {
            t.key_value
                .insert(bucket.to_owned(), without_server_fields(&info.config));
        }
    }
    let stores = ctx
        .domains
        .get(&d.name)
        .map(|c| c.object_stores.clone())
        .unwrap_or_default();
    for store in stores {
        if let Some(info) = ctx.api.stream_info(&format!("OBJ_{store}")).await? {
            t.object_stores
                .insert(store, without_server_fields(&info.config));
        }
    }
    t.config_entries = entries(ctx, d.config.as_ref()).await?;
    t.agents = entries(ctx, d.agents.as_ref()).await?;
    Ok(t)
}

/// The keys of a range with their values; `None` when its bucket does not exist.
pub async fn entries(
    ctx: &Context,
    range: Option<&KeyRange>,
) -> Result<Option<EntriesExport>, EngineError> {
    let Some(range) = range else {
        return Ok(None);
    };
    if ctx
        .api
        .stream_info(&format!("KV_{}", range.bucket))
        .await?
        .is_none()
    {
        return Ok(None);
    }
    Ok(Some(EntriesExport {
        bucket: range.bucket.clone(),
        prefix: range.prefix.clone(),
        entries: live_entries(ctx, &range.bucket, &range.prefix).await?,
    }))
}

/// Every live key under `prefix` of `bucket`, with its value.
pub async fn live_entries(
    ctx: &Context,
    bucket: &str,
    prefix: &str,
) -> Result<BTreeMap<String, EntryValue>, EngineError> {
    let mut keys = Vec::new();
    scan_keys(&ctx.js, bucket, prefix, &CancellationToken::new(), |k| {
        keys.push(k.to_owned())
    })
    .await?;
    let kv = ctx
        .js
        .get_key_value(bucket)
        .await
        .map_err(|e| EngineError::Nats(format!("bucket {bucket}: {e}")))?;
    let mut out = BTreeMap::new();
    for key in keys {
        let value = kv
            .get(&key)
            .await
            .map_err(|e| EngineError::Nats(format!("{bucket}/{key}: {e}")))?;
        if let Some(value) = value {
            out.insert(key, entry_value(&value));
        }
    }
    Ok(out)
}

/// A value as text when it is UTF-8, else base64.
pub fn entry_value(bytes: &[u8]) -> EntryValue {
    match std::str::from_utf8(bytes) {
        Ok(text) => EntryValue::Text(text.to_owned()),
        Err(_) => EntryValue::Binary {
            base64: base64::engine::general_purpose::STANDARD.encode(bytes),
        },
    }
}

/// The bytes of an entry value (`None`: base64 that does not decode).
pub fn entry_bytes(value: &EntryValue) -> Option<Vec<u8>> {
    match value {
        EntryValue::Text(text) => Some(text.as_bytes().to_vec()),
        EntryValue::Binary { base64 } => base64::engine::general_purpose::STANDARD
            .decode(base64)
            .ok(),
    }
}
