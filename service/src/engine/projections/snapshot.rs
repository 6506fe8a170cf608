//! The `projection-snapshot` job: one snapshot per planned domain, in order, each recorded
//! (`ProjectionSnapshotTaken`) once its manifest is stored. A resumed job takes the domain it
//! was on again: blocks already stored are not stored twice (they are named by CID).

use cim_backup_contracts::projections::{
    ProjectionJobCompleted, ProjectionJobProgressed, ProjectionJobStarted,
};
use cim_backup_contracts::views::JobState;
use cim_backup_domain::projection::{ProjectionCommand, SnapshotJob};
use tokio_util::sync::CancellationToken;

use super::PROGRESS_EVERY;
use super::take::{Counter, recipients_for, take};
use crate::engine::context::Context;
use crate::engine::error::EngineError;
use crate::jobs::{Job, execute};

pub async fn run(
    ctx: &Context,
    job: &mut Job<SnapshotJob>,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let spec = job.state.spec.clone().ok_or(EngineError::Rejected(
        cim_backup_domain::DomainError::NotCreated,
    ))?;
    if job.state.lifecycle.state == Some(JobState::Accepted) {
        let start = ProjectionCommand::Start(ProjectionJobStarted::default());
        execute(&ctx.events, job, start, None).await?;
    }
    let store = ctx.destinations.create(&spec.destination_url)?;
    let recipients = recipients_for(ctx, &spec.destination_url)?;
    let counter = Counter::default();
    while let Some(domain) = job.state.next_domain().cloned() {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let work = take(
            ctx,
            &store,
            &domain,
            recipients.clone(),
            None,
            cancel,
            &counter,
        );
        tokio::pin!(work);
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        tick.tick().await;
        let taken = loop {
            tokio::select! {
                done = &mut work => break done?,
                _ = tick.tick() => {
                    let (keys_done, bytes_done) = counter.get();
                    let p = ProjectionJobProgressed { keys_done: keys_done.max(job.state.progress.keys_done), bytes_done };
                    execute(&ctx.events, job, ProjectionCommand::Progress(p), None).await?;
                }
            }
        };
        let (keys_done, bytes_done) = counter.get();
        let p = ProjectionJobProgressed {
            keys_done: keys_done.max(job.state.progress.keys_done),
            bytes_done,
        };
        execute(&ctx.events, job, ProjectionCommand::Progress(p), None).await?;
        let summary = taken.manifest.summary(taken.id, &spec.destination_url);
        tracing::info!(job = %job.id, domain = %domain.name, snapshot = %taken.id, keys = summary.keys(), "projection snapshot stored");
        execute(
            &ctx.events,
            job,
            ProjectionCommand::RecordSnapshot(summary),
            None,
        )
        .await?;
    }
    let done = ProjectionJobCompleted {
        snapshots: job.state.snapshots.clone(),
        ..Default::default()
    };
    execute(&ctx.events, job, ProjectionCommand::Complete(done), None).await?;
    Ok(())
}
