//! One domain's snapshot: where its projectors are, then each read model at its pinned point,
//! then the manifest that names them all (its CID is the snapshot id).
//!
//! Projector positions are read *before* the models: a model then reflects at least every
//! event up to its projector's ack floor (and perhaps some after it), so catch-up from the
//! position replays nothing too late. Projectors must be idempotent for the events replayed
//! twice (keeping `last_event_seq` per key and skipping older events makes them so; docs/PROJECTIONS.md §2).

use std::sync::atomic::{AtomicU64, Ordering};

use cim_backup_contracts::cid::Cid;
use cim_backup_contracts::projections::{Domain, ProjectorPosition};

use super::read::{PinnedModel, Sinks, read_model};
use crate::archive::ArchiveStore;
use crate::archive::projections::{
    BlockWriter, ModelManifest, SNAPSHOT_FORMAT, SnapshotManifest, put_snapshot,
};
use crate::engine::context::{Context, tool_version};
use crate::engine::error::EngineError;
use tokio_util::sync::CancellationToken;

/// Keys and value bytes read so far, shared with the task that records progress.
#[derive(Debug, Default)]
pub struct Counter {
    pub keys: AtomicU64,
    pub bytes: AtomicU64,
}

impl Counter {
    pub fn get(&self) -> (u64, u64) {
        (
            self.keys.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

/// What [`take`] wrote.
pub struct Taken {
    pub id: Cid,
    pub manifest: SnapshotManifest,
    pub models: Vec<PinnedModel>,
}

/// Snapshots every read model of `domain` into `store`.
pub async fn take(
    ctx: &Context,
    store: &ArchiveStore,
    domain: &Domain,
    recipients: Option<Vec<String>>,
    safety_for: Option<String>,
    cancel: &CancellationToken,
    counter: &Counter,
) -> Result<Taken, EngineError> {
    let positions = positions(ctx, domain).await?;
    let taken_at = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("0 ns");
    let mut models = Vec::new();
    let mut pinned = Vec::new();
    for model in &domain.projections {
        let (keys_before, bytes_before) = counter.get();
        let mut base = BlockWriter::new(store, recipients.clone());
        let mut overlay = BlockWriter::new(store, recipients.clone());
        let read = read_model(
            &ctx.js,
            &ctx.api,
            &model.bucket,
            &model.prefix,
            Some(Sinks {
                base: &mut base,
                overlay: &mut overlay,
            }),
            cancel,
            |keys, bytes| {
                counter.keys.store(keys_before + keys, Ordering::Relaxed);
                counter.bytes.store(bytes_before + bytes, Ordering::Relaxed);
            },
        )
        .await?;
        let (blocks, _) = base.finish().await?;
        let (overlay, _) = overlay.finish().await?;
        tracing::info!(domain = %domain.name, model = %model.name, bucket = %model.bucket, keys = read.keys, pinned_at = read.stream_seq, "read model captured");
        models.push(ModelManifest {
            name: model.name.clone(),
            bucket: model.bucket.clone(),
            prefix: model.prefix.clone(),
            stream_seq: read.stream_seq,
            keys: read.keys,
            bytes: read.bytes,
            digest: read.digest.hex(),
            blocks,
            overlay,
        });
        pinned.push(read);
    }
    let manifest = SnapshotManifest {
        format: SNAPSHOT_FORMAT.to_owned(),
        domain: domain.name.clone(),
        taken_at,
        models,
        positions,
        encrypted: recipients.is_some(),
        safety_for,
        tool: tool_version(),
    };
    let id = put_snapshot(store, &manifest).await?;
    Ok(Taken {
        id,
        manifest,
        models: pinned,
    })
}

/// Each projector's ack floor. A projector whose consumer (or stream) is missing is an error
/// (the snapshot could not say where catch-up starts). Also the check at accept.
pub async fn positions(
    ctx: &Context,
    domain: &Domain,
) -> Result<Vec<ProjectorPosition>, EngineError> {
    let mut out = Vec::new();
    let mut streams: Vec<&str> = domain
        .projectors
        .iter()
        .map(|p| p.stream.as_str())
        .collect();
    streams.sort_unstable();
    streams.dedup();
    for stream in streams {
        let consumers = match ctx.api.durable_consumers(stream).await {
            Ok(consumers) => consumers,
            Err(e) if e.err_code() == Some(crate::jsapi::STREAM_NOT_FOUND) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        for p in domain.projectors.iter().filter(|p| p.stream == stream) {
            match consumers.iter().find(|c| c.name == p.consumer) {
                Some(c) => out.push(ProjectorPosition {
                    stream: p.stream.clone(),
                    consumer: p.consumer.clone(),
                    stream_seq: c.ack_floor_stream_seq,
                }),
                None => {
                    return Err(EngineError::precondition(
                        cim_backup_contracts::ErrorCode::NotFound,
                        format!(
                            "domains: projector {} of domain {} has no consumer on stream {} (see [domains.{}] projectors)",
                            p.consumer, domain.name, p.stream, domain.name
                        ),
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// The age recipients for a destination whose snapshots are encrypted, else `None`.
pub fn recipients_for(ctx: &Context, url: &str) -> Result<Option<Vec<String>>, EngineError> {
    let encrypt = ctx
        .destinations
        .encrypt_setting(url)
        .unwrap_or(ctx.defaults.encrypt);
    if !encrypt {
        return Ok(None);
    }
    ctx.keys.recipients().map(Some).map_err(|e| {
        EngineError::precondition(
            cim_backup_contracts::ErrorCode::BadRequest,
            format!("snapshots to {url} are encrypted, but: {e}"),
        )
    })
}
