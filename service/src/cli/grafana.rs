//! `backup-grafana`: Grafana's folders, dashboards (by uid), alert rules and, when asked, its
//! datasources, through its HTTP API, into the archive and as a tar.gz that `tar -xzf` reads.

use std::path::PathBuf;

use clap::Args;

use cim_backup_contracts::files::GrafanaBackup;
use cim_backup_contracts::replies::Accepted;
use cim_backup_contracts::subjects::files_commands;

use super::Ctx;
use super::args::{idempotency_key, location};
use super::client::CliError;
use super::follow::after_accept;
use super::models::{InstanceArgs, JobArgs, pick_for_path};

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
    let output = std::path::absolute(&a.output)
        .map_err(|e| CliError::Usage(format!("--output {}: {e}", a.output.display())))?;
    let instance = pick_for_path(ctx, &a.instance, "--output", &output).await?;
    let body = GrafanaBackup {
        output: output.display().to_string(),
        include_datasources: a.include_datasources,
        destination: a.destination.as_deref().map(location),
        idempotency_key: Some(idempotency_key(a.job.idempotency_key.as_deref())),
        correlation_id: None,
    };
    let accepted: Accepted = ctx
        .client
        .start(
            &format!("{}.grafana", files_commands(&instance.name)),
            &body,
        )
        .await
        .map_err(|e| {
            e.with_flags(&[
                ("output", "--output"),
                ("include_datasources", "--include-datasources"),
                ("destination", "--destination"),
            ])
        })?;
    after_accept(ctx, accepted, !a.job.no_wait).await
}
