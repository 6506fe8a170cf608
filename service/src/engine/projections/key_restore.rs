//! `restore-deleted --type projection`: where a key's value as of a time is found, and the
//! `key-restore` job that writes it back (docs/PROJECTIONS.md §9).
//!
//! - **The bucket's own history** first: its newest revision created at or before the time. A
//!   put there is the value. A delete or purge marker there means the key had no value then
//!   (nothing to restore). A KV delete keeps earlier revisions (as many as the bucket's history
//!   setting); a purge removes them.
//! - **Else the newest projection snapshot** taken at or before the time that holds the key's
//!   read model (in the catalog). If that snapshot lacks the key, the key had no value then
//!   either: an older snapshot's value would not be the value as of the time.
//! - The write expects the key's live revision seen when planning (a KV update with the
//!   expected revision, a create when there was none): anything written to the key since
//!   makes the job fail without writing.

use base64::Engine;
use bytes::Bytes;
use cim_backup_contracts::ErrorCode;
use cim_backup_contracts::key_restore::{
    KeyRestoreCompleted, KeyRestorePlan, KeyRestoreStarted, LiveState, ValueOrigin,
};
use cim_backup_contracts::projections::{Domain, ReadModel, SnapshotSummary};
use cim_backup_contracts::views::JobState;
use cim_backup_domain::key_restore::{KeyRestoreCommand, KeyRestoreJob};
use futures::StreamExt;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::archive::projections::{ModelEntries, get_snapshot};
use crate::engine::context::Context;
use crate::engine::error::EngineError;
use crate::jobs::{Job, execute};

fn refused(code: ErrorCode, message: String) -> EngineError {
    EngineError::precondition(code, message)
}

/// The read model that holds `key`: of the domains', the one with the longest prefix of it
/// (in `bucket` when named). Several buckets that could hold it need `bucket`.
pub fn model_of<'a>(
    domains: &'a [Domain],
    key: &str,
    bucket: Option<&str>,
) -> Result<(&'a Domain, &'a ReadModel), EngineError> {
    let mut fits: Vec<(&Domain, &ReadModel)> = domains
        .iter()
        .flat_map(|d| d.projections.iter().map(move |m| (d, m)))
        .filter(|(_, m)| key.starts_with(&m.prefix) && bucket.is_none_or(|b| b == m.bucket))
        .collect();
    fits.sort_by_key(|(_, m)| std::cmp::Reverse(m.prefix.len()));
    let Some(&best) = fits.first() else {
        return Err(refused(
            ErrorCode::NotFound,
            format!(
                "id: no read model holds keys like {key}{} (see list-domains)",
                bucket
                    .map(|b| format!(" in bucket {b}"))
                    .unwrap_or_default()
            ),
        ));
    };
    let buckets: std::collections::BTreeSet<&str> = fits
        .iter()
        .filter(|(_, m)| m.prefix.len() == best.1.prefix.len())
        .map(|(_, m)| m.bucket.as_str())
        .collect();
    if buckets.len() > 1 {
        return Err(refused(
            ErrorCode::BadRequest,
            format!(
                "bucket: {key} could be a key of {}; name the bucket",
                buckets.into_iter().collect::<Vec<_>>().join(" or ")
            ),
        ));
    }
    Ok(best)
}

/// The plan and the value to write.
pub async fn plan(
    ctx: &Context,
    domain: &Domain,
    model: &ReadModel,
    key: &str,
    as_of: OffsetDateTime,
    catalog: &[SnapshotSummary],
) -> Result<(KeyRestorePlan, Bytes), EngineError> {
    let kv = ctx
        .js
        .get_key_value(&model.bucket)
        .await
        .map_err(|e| refused(ErrorCode::NotFound, format!("bucket {}: {e}", model.bucket)))?;
    let history = revisions(&kv, key).await?;
    let live = history.last();
    let at_time = history.iter().rev().find(|e| e.created <= as_of);
    let (origin, value) = match at_time {
        Some(e) if e.operation == async_nats::jetstream::kv::Operation::Put => (
            ValueOrigin::History {
                revision: e.revision,
                created: e.created,
            },
            e.value.clone(),
        ),
        Some(e) => {
            return Err(refused(
                ErrorCode::NotFound,
                format!(
                    "id: {key} was deleted at {} (revision {}), so it had no value at {}; nothing to restore",
                    rfc3339(e.created),
                    e.revision,
                    rfc3339(as_of)
                ),
            ));
        }
        None => from_snapshot(ctx, domain, model, key, as_of, catalog).await?,
    };
    let (state, live_revision) = match live {
        None => (LiveState::Missing, 0),
        Some(e) if e.operation != async_nats::jetstream::kv::Operation::Put => {
            (LiveState::Deleted, e.revision)
        }
        Some(e) if e.value == value => (LiveState::Same, e.revision),
        Some(e) => (LiveState::Differs, e.revision),
    };
    let preview: String = std::str::from_utf8(&value)
        .map(|t| t.chars().take(200).collect())
        .unwrap_or_default();
    Ok((
        KeyRestorePlan {
            domain: domain.name.clone(),
            model: model.name.clone(),
            bucket: model.bucket.clone(),
            key: key.to_owned(),
            as_of,
            origin,
            live: state,
            live_revision,
            value_bytes: value.len() as u64,
            preview,
        },
        value,
    ))
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Every revision of `key` the bucket still holds, oldest first.
async fn revisions(
    kv: &async_nats::jetstream::kv::Store,
    key: &str,
) -> Result<Vec<async_nats::jetstream::kv::Entry>, EngineError> {
    let read = async {
        let mut out = Vec::new();
        let mut history = kv
            .history(key)
            .await
            .map_err(|e| refused(ErrorCode::BadRequest, format!("id: {key}: {e}")))?;
        while let Some(entry) = history.next().await {
            out.push(entry.map_err(|e| EngineError::Nats(format!("history of {key}: {e}")))?);
        }
        Ok::<_, EngineError>(out)
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), read)
        .await
        .map_err(|_| EngineError::Nats(format!("history of {key}: no end within 30 s")))?
}

async fn from_snapshot(
    ctx: &Context,
    domain: &Domain,
    model: &ReadModel,
    key: &str,
    as_of: OffsetDateTime,
    catalog: &[SnapshotSummary],
) -> Result<(ValueOrigin, Bytes), EngineError> {
    let newest = catalog
        .iter()
        .filter(|s| {
            s.domain == domain.name
                && s.taken_at <= as_of
                && s.models
                    .iter()
                    .any(|m| m.name == model.name && m.bucket == model.bucket)
        })
        .max_by_key(|s| s.taken_at);
    let Some(snapshot) = newest else {
        return Err(refused(
            ErrorCode::NotFound,
            format!(
                "id: bucket {} no longer holds a revision of {key} from before {}, and no snapshot of read model {} was taken before then",
                model.bucket,
                rfc3339(as_of),
                model.name
            ),
        ));
    };
    let store = ctx.destinations.open(&snapshot.location)?;
    let manifest = get_snapshot(&store, &snapshot.id).await?;
    let m = manifest
        .models
        .iter()
        .find(|m| m.name == model.name)
        .ok_or_else(|| {
            EngineError::Nats(format!(
                "snapshot {} lost model {}",
                snapshot.id, model.name
            ))
        })?;
    let mut entries = ModelEntries::open(&store, &ctx.keys, m, manifest.encrypted).await?;
    while let Some(batch) = entries.next_batch().await? {
        if let Some(e) = batch.into_iter().find(|e| e.key == key) {
            return Ok((
                ValueOrigin::Snapshot {
                    id: snapshot.id,
                    taken_at: snapshot.taken_at,
                    location: snapshot.location.clone(),
                },
                e.value,
            ));
        }
    }
    Err(refused(
        ErrorCode::NotFound,
        format!(
            "id: {key} is not in the bucket's history from before {}, and the newest snapshot before then ({}, {}) does not hold it: it had no value then",
            rfc3339(as_of),
            snapshot.id,
            rfc3339(snapshot.taken_at)
        ),
    ))
}

/// The `key-restore` job: the value written, expecting the live revision of the plan.
pub async fn run(
    ctx: &Context,
    job: &mut Job<KeyRestoreJob>,
    _cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let spec = job.state.spec.clone().ok_or(EngineError::Rejected(
        cim_backup_domain::DomainError::NotCreated,
    ))?;
    if job.state.lifecycle.state == Some(JobState::Accepted) {
        let start = KeyRestoreCommand::Start(KeyRestoreStarted::default());
        execute(&ctx.events, job, start, None).await?;
    }
    let plan = &spec.plan;
    let value = Bytes::from(
        base64::engine::general_purpose::STANDARD
            .decode(&spec.value)
            .map_err(|e| refused(ErrorCode::Internal, format!("the recorded value: {e}")))?,
    );
    let kv = ctx
        .js
        .get_key_value(&plan.bucket)
        .await
        .map_err(|e| EngineError::Nats(format!("bucket {}: {e}", plan.bucket)))?;
    let written = if plan.live_revision == 0 {
        kv.create(&plan.key, value.clone())
            .await
            .map_err(|e| e.to_string())
    } else {
        kv.update(&plan.key, value.clone(), plan.live_revision)
            .await
            .map_err(|e| e.to_string())
    };
    let revision = match written {
        Ok(revision) => revision,
        Err(e) => {
            // Written by this job before it was interrupted: the key holds exactly the value.
            match kv.entry(&plan.key).await {
                Ok(Some(now))
                    if now.value == value
                        && now.operation == async_nats::jetstream::kv::Operation::Put
                        && now.revision > plan.live_revision =>
                {
                    now.revision
                }
                _ => {
                    return Err(refused(
                        ErrorCode::Conflict,
                        format!(
                            "{} of bucket {} changed since the plan (it expected revision {}): nothing was written ({e}); run restore-deleted again",
                            plan.key, plan.bucket, plan.live_revision
                        ),
                    ));
                }
            }
        }
    };
    tracing::info!(job = %job.id, bucket = %plan.bucket, key = %plan.key, revision, origin = ?plan.origin, "key restored");
    execute(
        &ctx.events,
        job,
        KeyRestoreCommand::Complete(KeyRestoreCompleted { revision }),
        None,
    )
    .await?;
    Ok(())
}
