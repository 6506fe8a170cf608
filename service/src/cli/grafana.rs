//! `backup-grafana`: Grafana's folders, dashboards (by uid), alert rules and, when asked, its
//! datasources, through its HTTP API, into the archive and as a tar.gz that `tar -xzf` reads.

use std::path::PathBuf;

use clap::Args;

use cim_backup_contracts::files::GrafanaBackup;

use super::Ctx;
use super::args::location;
use super::client::CliError;
use super::models::{InstanceArgs, JobArgs, start_tar_job};

#[derive(Debug, Args)]
pub struct BackupGrafanaArgs {
    /// The tar.gz to write on the instance's host, inside one of its roots (a name ending in
    /// .tar.gz.age is written encrypted to the service's recipients).
    #[arg(long)]
    pub output: PathBuf,
    /// Also export datasources: their settings, never their secrets (Grafana does not return
    /// passwords or keys; `secureJsonFields` says which were set).
    #[arg(long)]
    pub include_datasources: bool,
    /// Where the backup goes: a configured name, a directory or a URL (default: the service's).
    #[arg(long)]
    pub destination: Option<String>,
    #[command(flatten)]
    pub instance: InstanceArgs,
    #[command(flatten)]
    pub job: JobArgs,
}

pub async fn backup(ctx: &Ctx, a: &BackupGrafanaArgs) -> Result<(), CliError> {
    start_tar_job(
        ctx,
        &a.instance,
        &a.job,
        &a.output,
        "grafana",
        &[("include_datasources", "--include-datasources")],
        |output, key| GrafanaBackup {
            output,
            include_datasources: a.include_datasources,
            destination: a.destination.as_deref().map(location),
            idempotency_key: Some(key),
            correlation_id: None,
        },
    )
    .await
}
