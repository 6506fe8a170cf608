//! `backup-status`, `list-jobs`, `cancel-job`: looking at jobs and stopping them.

use clap::Args;

use cim_backup_contracts::JobId;
use cim_backup_contracts::commands::{CancelJob, JobsQuery};
use cim_backup_contracts::replies::CancelAccepted;
use cim_backup_contracts::subjects::{CMD_CANCEL, QRY_JOBS};
use cim_backup_contracts::views::{JobKind, JobState, JobView};

use super::args::choice;
use super::client::CliError;
use super::follow::{ended, view, watch};
use super::{Ctx, output};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The job (its id is printed when it is accepted; `list-jobs` shows them all).
    #[arg(long)]
    pub job_id: JobId,
    /// Follow the job until it ends, with a progress bar on a terminal (exit 1 if it fails).
    #[arg(long)]
    pub watch: bool,
}

pub async fn status(ctx: &Ctx, a: &StatusArgs) -> Result<(), CliError> {
    if a.watch {
        let view = watch(ctx, &a.job_id, false).await?;
        return ended(&view);
    }
    let view = view(&ctx.client, &a.job_id)
        .await
        .map_err(|e| e.with_flags(&[("job_id", "--job-id")]))?;
    if ctx.json {
        output::json(&view)
    } else {
        output::job(&view)
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct ListJobsArgs {
    /// Only jobs of this kind: backup, restore, verify, check or repair.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only jobs in this state: accepted, running, completed, failed or cancelled.
    #[arg(long)]
    pub state: Option<String>,
    /// At most this many, newest first (default 100, at most 1000).
    #[arg(long)]
    pub limit: Option<usize>,
}

pub async fn list(ctx: &Ctx, a: &ListJobsArgs) -> Result<(), CliError> {
    let query = JobsQuery {
        kind: choice::<JobKind>("--kind", a.kind.as_deref())?,
        state: choice::<JobState>("--state", a.state.as_deref())?,
        limit: a.limit,
    };
    let views: Vec<JobView> = ctx
        .client
        .request(QRY_JOBS, &query)
        .await
        .map_err(|e| e.with_flags(&[("limit", "--limit")]))?;
    if ctx.json {
        output::json(&views)
    } else {
        output::jobs(&views)
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The job to stop.
    #[arg(long)]
    pub job_id: JobId,
    /// Why (recorded with the cancel request).
    #[arg(long)]
    pub reason: Option<String>,
}

pub async fn cancel(ctx: &Ctx, a: &CancelArgs) -> Result<(), CliError> {
    let reply: CancelAccepted = ctx
        .client
        .request(
            CMD_CANCEL,
            &CancelJob {
                job_id: a.job_id.clone(),
                reason: a.reason.clone(),
            },
        )
        .await
        .map_err(|e| e.with_flags(&[("job_id", "--job-id"), ("reason", "--reason")]))?;
    if ctx.json {
        output::json(&reply)
    } else if reply.requested {
        println!(
            "cancellation of {} requested; see it end: cim-backup backup-status --job-id {} --watch",
            reply.job_id, reply.job_id
        )
    } else {
        println!("cancellation of {} was already requested", reply.job_id)
    }
    Ok(())
}
