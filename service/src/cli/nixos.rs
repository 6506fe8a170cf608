//! `backup-nixos-config`: the NixOS configuration into the archive, and as a tar.gz that
//! `tar -xzf` reads (secrets left out; with --include-secrets only ever written encrypted).

use std::path::PathBuf;

use clap::Args;

use cim_backup_contracts::files::NixosBackup;
use cim_backup_contracts::replies::Accepted;
use cim_backup_contracts::subjects::files_commands;

use super::Ctx;
use super::args::{idempotency_key, location};
use super::client::CliError;
use super::follow::after_accept;
use super::models::{InstanceArgs, JobArgs, pick_for_path};

#[derive(Debug, Args)]
pub struct BackupNixosArgs {
    /// The tar.gz to write on the instance's host, inside one of its roots (with
    /// --include-secrets it must end in .tar.gz.age).
    #[arg(long)]
    pub output: PathBuf,
    /// Keep secrets ([nixos] secret_patterns: sops and agenix files, host keys); the output and
    /// the backup are then encrypted to the service's recipients, never plaintext.
    #[arg(long)]
    pub include_secrets: bool,
    /// Where the backup goes: a configured name, a directory or a URL (default: the service's).
    #[arg(long)]
    pub destination: Option<String>,
    #[command(flatten)]
    pub instance: InstanceArgs,
    #[command(flatten)]
    pub job: JobArgs,
}

pub async fn backup(ctx: &Ctx, a: &BackupNixosArgs) -> Result<(), CliError> {
    let output = std::path::absolute(&a.output)
        .map_err(|e| CliError::Usage(format!("--output {}: {e}", a.output.display())))?;
    let instance = pick_for_path(ctx, &a.instance, "--output", &output).await?;
    let body = NixosBackup {
        output: output.display().to_string(),
        include_secrets: a.include_secrets,
        destination: a.destination.as_deref().map(location),
        idempotency_key: Some(idempotency_key(a.job.idempotency_key.as_deref())),
        correlation_id: None,
    };
    let accepted: Accepted = ctx
        .client
        .start(&format!("{}.nixos", files_commands(&instance.name)), &body)
        .await
        .map_err(|e| {
            e.with_flags(&[
                ("output", "--output"),
                ("include_secrets", "--include-secrets"),
                ("destination", "--destination"),
            ])
        })?;
    after_accept(ctx, accepted, !a.job.no_wait).await
}
