//! `backup-nixos-config`: the NixOS configuration into the archive, and as a tar.gz that
//! `tar -xzf` reads (secrets left out; with --include-secrets only ever written encrypted).

use std::path::PathBuf;

use clap::Args;

use cim_backup_contracts::files::NixosBackup;

use super::Ctx;
use super::args::location;
use super::client::CliError;
use super::models::{InstanceArgs, JobArgs, start_tar_job};

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
    start_tar_job(
        ctx,
        &a.instance,
        &a.job,
        &a.output,
        "nixos",
        &[("include_secrets", "--include-secrets")],
        |output, key| NixosBackup {
            output,
            include_secrets: a.include_secrets,
            destination: a.destination.as_deref().map(location),
            idempotency_key: Some(key),
            correlation_id: None,
        },
    )
    .await
}
