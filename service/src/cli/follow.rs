//! Following a job: the job id as soon as it is accepted (with the command that follows it), a
//! progress bar or lines while it runs, a closing summary, and Ctrl-C that stops following
//! without stopping the job.

use std::time::Duration;

use cim_backup_contracts::JobId;
use cim_backup_contracts::commands::JobQuery;
use cim_backup_contracts::replies::Accepted;
use cim_backup_contracts::subjects::QRY_JOB;
use cim_backup_contracts::views::{JobState, JobView};

use super::client::{CliError, Client};
use super::{Ctx, output};

/// How often a followed job's view is asked for.
const POLL: Duration = Duration::from_millis(250);

/// What a command does once its job is accepted: say so and return, or follow it to its end.
/// [`after_accept`] for a reply that names only its job's id (a plan with the job it started).
pub async fn after_job_id(
    ctx: &Ctx,
    job_id: &str,
    kind: cim_backup_contracts::views::JobKind,
    wait: bool,
) -> Result<(), CliError> {
    let accepted = Accepted {
        job_id: job_id.parse().map_err(|e| {
            CliError::Unavailable(format!("the service sent job id {job_id:?}: {e}"))
        })?,
        kind,
        state: cim_backup_contracts::views::JobState::Accepted,
        duplicate: false,
    };
    after_accept(ctx, accepted, wait).await
}

pub async fn after_accept(ctx: &Ctx, accepted: Accepted, wait: bool) -> Result<(), CliError> {
    let note = if accepted.duplicate {
        " (same idempotency key: the existing job)"
    } else {
        ""
    };
    if !wait {
        if ctx.json {
            output::json(&accepted);
        } else {
            println!(
                "{} job {} {}{note}",
                accepted.kind, accepted.job_id, accepted.state
            );
            println!(
                "follow it: cim-backup backup-status --job-id {} --watch",
                accepted.job_id
            );
        }
        return Ok(());
    }
    if !ctx.json {
        eprintln!(
            "{} job {} {}{note}; following it (Ctrl-C stops following, not the job)",
            accepted.kind, accepted.job_id, accepted.state
        );
    }
    let view = watch(ctx, &accepted.job_id, false).await?;
    ended(&view)
}

/// Follows a job until it ends, drawing progress; prints its view (unless `quiet`: the caller
/// prints its own report) and, on a terminal's text output, the closing summary.
pub async fn watch(ctx: &Ctx, job_id: &JobId, quiet: bool) -> Result<JobView, CliError> {
    let mut progress = output::Progress::new(ctx.json);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let view = view(&ctx.client, job_id).await?;
        progress.update(&view);
        if view.state.is_terminal() {
            progress.finish();
            if !quiet {
                if ctx.json {
                    output::json(&view)
                } else {
                    output::job(&view);
                    if let Some(line) = output::summary(&view) {
                        println!("{line}");
                    }
                }
            }
            return Ok(view);
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = &mut interrupted => {
                progress.finish();
                return Err(CliError::StoppedFollowing { job_id: job_id.to_string() });
            }
        }
    }
}

/// Waits for a job without printing its view (for commands whose output is a report).
pub async fn finished(ctx: &Ctx, job_id: &JobId) -> Result<JobView, CliError> {
    let view = watch(ctx, job_id, true).await?;
    ended(&view)?;
    Ok(view)
}

pub async fn view(client: &Client, job_id: &JobId) -> Result<JobView, CliError> {
    client
        .request(
            QRY_JOB,
            &JobQuery {
                job_id: job_id.clone(),
            },
        )
        .await
}

/// A job that did not complete is exit code 1.
pub fn ended(view: &JobView) -> Result<(), CliError> {
    match view.state {
        JobState::Completed => Ok(()),
        state => Err(CliError::JobDidNotComplete {
            job_id: view.job_id.to_string(),
            state: state.to_string(),
            message: view.error.as_ref().map(|e| e.message.clone()),
        }),
    }
}
