//! The `projection-clear` job: the safety snapshot (unless the request went without one), then
//! every live key of each planned read model deleted with a KV delete marker (not a purge: a
//! bucket with history keeps the values before it), so a rebuild starts from empty read
//! models.

use cim_backup_contracts::projections::{
    ModelRestored, ProjectionJobCompleted, ProjectionJobProgressed, ProjectionJobStarted,
};
use cim_backup_contracts::views::JobState;
use cim_backup_domain::projection::{ClearJob, ProjectionCommand};
use tokio_util::sync::CancellationToken;

use super::restore::{delete_keys, take_safety_snapshot};
use crate::engine::context::Context;
use crate::engine::error::EngineError;
use crate::jobs::{Job, execute};

pub async fn run(
    ctx: &Context,
    job: &mut Job<ClearJob>,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let spec = job.state.spec.clone().ok_or(EngineError::Rejected(
        cim_backup_domain::DomainError::NotCreated,
    ))?;
    if job.state.lifecycle.state == Some(JobState::Accepted) {
        let start = ProjectionCommand::Start(ProjectionJobStarted::default());
        execute(&ctx.events, job, start, None).await?;
    }
    if !job.state.skips_safety_snapshot() {
        let store = ctx.destinations.create(&spec.destination_url)?;
        take_safety_snapshot(ctx, job, &store, cancel).await?;
    }
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
        let removed = delete_keys(ctx, &target.bucket, &target.prefix, |_| false, cancel).await?;
        keys_done += removed;
        let p = ProjectionJobProgressed {
            keys_done,
            bytes_done: 0,
        };
        execute(&ctx.events, job, ProjectionCommand::Progress(p), None).await?;
        tracing::info!(job = %job.id, model = %target.name, bucket = %target.bucket, removed, "read model cleared");
        let done = ModelRestored {
            name: target.name.clone(),
            bucket: target.bucket.clone(),
            restored: 0,
            unchanged: 0,
            removed,
        };
        execute(&ctx.events, job, ProjectionCommand::RecordModel(done), None).await?;
    }
    let done = ProjectionJobCompleted {
        snapshots: job.state.snapshots.clone(),
        restored: job.state.restored.clone(),
        verified: None,
    };
    execute(&ctx.events, job, ProjectionCommand::Complete(done), None).await?;
    Ok(())
}
