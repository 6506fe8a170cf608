//! The `projection-restore` job (docs/PROJECTIONS.md §5):
//!
//! 1. a **safety snapshot** of the live buckets it will write (recorded before anything is
//!    written; it stays in the destination, and the job names it);
//! 2. for each read model, the live state made equal to the snapshot's: a key whose live value
//!    differs (or is missing) is written, one whose value is the snapshot's is left alone, and a
//!    live key the snapshot does not hold is deleted (a KV delete marker, not a purge: the bucket keeps what its history setting keeps);
//! 3. with `verify`, every model read back at a pinned point and its digest compared with the
//!    snapshot's. A mismatch fails the job, naming the model and the safety snapshot to go
//!    back to.
//!
//! A resumed job keeps its safety snapshot and goes on with the first model not recorded;
//! restoring a model again is harmless (equal keys are left alone).

use cim_backup_contracts::ErrorCode;
use cim_backup_contracts::projections::{
    ModelRestored, ProjectionJobCompleted, ProjectionJobProgressed, ProjectionJobStarted, ReadModel,
};
use cim_backup_contracts::views::JobState;
use cim_backup_domain::projection::{ProjectionCommand, RestoreJob};
use tokio_util::sync::CancellationToken;

use super::read::{read_model, scan_keys};
use super::take::{Counter, recipients_for, take};
use super::write::BucketWriter;
use crate::archive::ArchiveStore;
use crate::archive::projections::{
    ModelEntries, ModelManifest, SnapshotManifest, get_snapshot, key_hash,
};
use crate::engine::context::Context;
use crate::engine::error::EngineError;
use crate::jobs::{Job, execute};

pub async fn run(
    ctx: &Context,
    job: &mut Job<RestoreJob>,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let spec = job.state.spec.clone().ok_or(EngineError::Rejected(
        cim_backup_domain::DomainError::NotCreated,
    ))?;
    let snapshot_id = spec.snapshot.ok_or(EngineError::Rejected(
        cim_backup_domain::DomainError::NotCreated,
    ))?;
    let store = ctx.destinations.create(&spec.destination_url)?;
    let snapshot = get_snapshot(&store, &snapshot_id).await?;
    if job.state.lifecycle.state == Some(JobState::Accepted) {
        let keys = snapshot.models.iter().map(|m| m.keys).sum();
        let start = ProjectionCommand::Start(ProjectionJobStarted { keys });
        execute(&ctx.events, job, start, None).await?;
    }
    let domain = spec.domains[0].clone();
    if job.state.safety_snapshot().is_none() {
        // The whole snapshot is checked before anything is written: a damaged or missing block
        // found halfway would leave the buckets part old, part new.
        check_snapshot(ctx, &store, &snapshot, cancel).await?;
    }
    take_safety_snapshot(ctx, job, &store, cancel).await?;
    let mut keys_done = job.state.progress.keys_done;
    for target in job
        .state
        .models_left()
        .into_iter()
        .cloned()
        .collect::<Vec<_>>()
    {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let model = model_of(&snapshot, &target.name)?;
        let restored = restore_model(ctx, &store, &snapshot, model, &target, cancel).await?;
        keys_done += model.keys;
        let p = ProjectionJobProgressed {
            keys_done,
            bytes_done: 0,
        };
        execute(&ctx.events, job, ProjectionCommand::Progress(p), None).await?;
        tracing::info!(job = %job.id, model = %restored.name, bucket = %restored.bucket, restored = restored.restored, unchanged = restored.unchanged, removed = restored.removed, "read model restored");
        execute(
            &ctx.events,
            job,
            ProjectionCommand::RecordModel(restored),
            None,
        )
        .await?;
    }
    let verified = if spec.verify {
        verify(ctx, &snapshot, &domain.projections, job, cancel).await?;
        Some(true)
    } else {
        None
    };
    let done = ProjectionJobCompleted {
        snapshots: job.state.snapshots.clone(),
        restored: job.state.restored.clone(),
        verified,
    };
    execute(&ctx.events, job, ProjectionCommand::Complete(done), None).await?;
    Ok(())
}

/// Takes and records the safety snapshot of what a restore or clear will write, once: the
/// live keys of every bucket (and prefix) of the job's domain.
pub async fn take_safety_snapshot<K: cim_backup_domain::projection::Kind>(
    ctx: &Context,
    job: &mut Job<cim_backup_domain::projection::ProjectionJob<K>>,
    store: &ArchiveStore,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    if job.state.safety_snapshot().is_some() || job.state.skips_safety_snapshot() {
        return Ok(());
    }
    let spec = job.state.spec.clone().ok_or(EngineError::Rejected(
        cim_backup_domain::DomainError::NotCreated,
    ))?;
    let recipients = recipients_for(ctx, &spec.destination_url)?;
    let safety = take(
        ctx,
        store,
        &spec.domains[0],
        recipients,
        Some(job.id.to_string()),
        cancel,
        &Counter::default(),
    )
    .await?;
    let summary = safety.manifest.summary(safety.id, &spec.destination_url);
    tracing::info!(job = %job.id, safety = %safety.id, keys = summary.keys(), "safety snapshot of the live read models stored");
    execute(
        &ctx.events,
        job,
        ProjectionCommand::RecordSnapshot(summary),
        None,
    )
    .await?;
    Ok(())
}

/// Deletes every live key under `prefix` of `bucket` that `keep` does not keep (KV delete
/// markers, not purges: the bucket keeps what its history setting keeps); returns how many.
pub async fn delete_keys(
    ctx: &Context,
    bucket: &str,
    prefix: &str,
    keep: impl Fn(&str) -> bool,
    cancel: &CancellationToken,
) -> Result<u64, EngineError> {
    let mut gone = Vec::new();
    scan_keys(&ctx.js, bucket, prefix, cancel, |key| {
        if !keep(key) {
            gone.push(key.to_owned());
        }
    })
    .await?;
    let mut writer = BucketWriter::new(&ctx.js, bucket);
    for key in &gone {
        writer.delete(key).await?;
    }
    writer.finish().await?;
    Ok(gone.len() as u64)
}

/// Reads every block of every model of the snapshot (each checked against its CID, opened,
/// its entry count checked) and compares each model's entries with its key count and digest.
async fn check_snapshot(
    ctx: &Context,
    store: &ArchiveStore,
    snapshot: &SnapshotManifest,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    for model in &snapshot.models {
        let mut entries = ModelEntries::open(store, &ctx.keys, model, snapshot.encrypted).await?;
        let (mut keys, mut digest) = (0u64, crate::archive::projections::Digest::default());
        while let Some(batch) = entries.next_batch().await? {
            if cancel.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            for e in batch {
                keys += 1;
                digest.add(e.hash());
            }
        }
        if keys != model.keys || digest.hex() != model.digest {
            return Err(EngineError::precondition(
                ErrorCode::Corrupt,
                format!(
                    "the snapshot's read model {} holds {keys} keys with digest {} where its manifest records {} keys with digest {}; nothing was written",
                    model.name,
                    digest.hex(),
                    model.keys,
                    model.digest
                ),
            ));
        }
    }
    Ok(())
}

fn model_of<'a>(
    snapshot: &'a SnapshotManifest,
    name: &str,
) -> Result<&'a ModelManifest, EngineError> {
    snapshot
        .models
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| {
            EngineError::precondition(
                ErrorCode::NotFound,
                format!("the snapshot holds no read model {name}"),
            )
        })
}

/// Makes `target` (bucket, and the model's prefix) hold exactly the snapshot's entries.
async fn restore_model(
    ctx: &Context,
    store: &ArchiveStore,
    snapshot: &SnapshotManifest,
    model: &ModelManifest,
    target: &ReadModel,
    cancel: &CancellationToken,
) -> Result<ModelRestored, EngineError> {
    let live = read_model(
        &ctx.js,
        &ctx.api,
        &target.bucket,
        &model.prefix,
        None,
        cancel,
        |_, _| {},
    )
    .await?;
    let mut writer = BucketWriter::new(&ctx.js, &target.bucket);
    let (mut restored, mut unchanged) = (0u64, 0u64);
    let mut held: Vec<u64> = Vec::with_capacity(model.keys as usize);
    let mut entries = ModelEntries::open(store, &ctx.keys, model, snapshot.encrypted).await?;
    while let Some(batch) = entries.next_batch().await? {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        for entry in batch {
            let key = key_hash(&entry.key);
            held.push(key);
            let same = live
                .find(key)
                .is_some_and(|at| live.index[at].entry == entry.hash());
            if same {
                unchanged += 1;
            } else {
                writer.put(&entry.key, entry.value).await?;
                restored += 1;
            }
        }
    }
    writer.finish().await?;
    held.sort_unstable();
    // Live keys the snapshot does not hold: only if there are any (the counts tell).
    let mut removed = 0u64;
    let matched = held.iter().filter(|k| live.find(**k).is_some()).count() as u64;
    if live.keys > matched {
        let keep = |key: &str| held.binary_search(&key_hash(key)).is_ok();
        removed = delete_keys(ctx, &target.bucket, &model.prefix, keep, cancel).await?;
    }
    Ok(ModelRestored {
        name: model.name.clone(),
        bucket: target.bucket.clone(),
        restored,
        unchanged,
        removed,
    })
}

/// Reads every restored model back and compares it with the snapshot's digest and key count.
async fn verify(
    ctx: &Context,
    snapshot: &SnapshotManifest,
    targets: &[ReadModel],
    job: &Job<RestoreJob>,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    for target in targets {
        let model = model_of(snapshot, &target.name)?;
        let live = read_model(
            &ctx.js,
            &ctx.api,
            &target.bucket,
            &model.prefix,
            None,
            cancel,
            |_, _| {},
        )
        .await?;
        if live.digest.hex() != model.digest || live.keys != model.keys {
            let safety = job
                .state
                .safety_snapshot()
                .map(|s| s.id.to_string())
                .unwrap_or_default();
            return Err(EngineError::precondition(
                ErrorCode::Corrupt,
                format!(
                    "verification failed: {} in bucket {} holds {} keys with digest {} after the restore, where the snapshot has {} keys with digest {} (was it written to during the restore?); the state before the restore is safety snapshot {safety}",
                    model.name,
                    target.bucket,
                    live.keys,
                    live.digest.hex(),
                    model.keys,
                    model.digest
                ),
            ));
        }
    }
    Ok(())
}
