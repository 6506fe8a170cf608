//! `backup-prometheus`, `restore-prometheus`: the monitoring history as a file tree.
//!
//! The service takes the snapshot (the admin API of the server in its `[prometheus]` section),
//! backs it up, and removes it from the server's disk; unchanged blocks cost nothing the
//! second time, since their chunks are stored already. A restore refuses the data directory of
//! a running Prometheus (its lock file is held).

use std::path::PathBuf;

use clap::Args;

use cim_backup_contracts::commands::{BackupRef, BackupsQuery};
use cim_backup_contracts::files::{PrometheusBackup, RestoreTrees, TreePlacement};
use cim_backup_contracts::replies::Accepted;
use cim_backup_contracts::subjects::{QRY_BACKUPS, files_commands};
use cim_backup_contracts::views::CatalogEntry;

use super::Ctx;
use super::args::{idempotency_key, location};
use super::client::{CliError, Instance};
use super::follow::after_accept;
use super::models::{InstanceArgs, JobArgs, pick_for_path, place};

#[derive(Debug, Args)]
pub struct BackupPrometheusArgs {
    /// Where: a configured name, a directory or a URL (default: the service's default).
    #[arg(long)]
    pub destination: Option<String>,
    /// Encrypt the chunks to the service's recipients.
    #[arg(long)]
    pub encrypt: bool,
    #[command(flatten)]
    pub instance: InstanceArgs,
    #[command(flatten)]
    pub job: JobArgs,
}

/// `--instance`, else the instance on this host, else the only one.
async fn pick_any(ctx: &Ctx, a: &InstanceArgs) -> Result<Instance, CliError> {
    let all = ctx.client.instances().await?;
    if let Some(name) = &a.instance {
        return all.into_iter().find(|i| &i.name == name).ok_or_else(|| {
            CliError::Usage(format!("--instance {name}: no such instance answers"))
        });
    }
    let here = crate::config::host_name();
    match all.iter().find(|i| i.host == here) {
        Some(i) => Ok(i.clone()),
        None if all.len() == 1 => Ok(all[0].clone()),
        None => Err(CliError::Usage(format!(
            "{} instances answer and none is on this host; pick one with --instance",
            all.len()
        ))),
    }
}

pub async fn backup(ctx: &Ctx, a: &BackupPrometheusArgs) -> Result<(), CliError> {
    let instance = pick_any(ctx, &a.instance).await?;
    let body = PrometheusBackup {
        destination: a.destination.as_deref().map(location),
        encrypt: a.encrypt.then_some(true),
        idempotency_key: Some(idempotency_key(a.job.idempotency_key.as_deref())),
        correlation_id: None,
    };
    let accepted: Accepted = ctx
        .client
        .start(
            &format!("{}.prometheus", files_commands(&instance.name)),
            &body,
        )
        .await
        .map_err(|e| e.with_flags(&[("destination", "--destination"), ("encrypt", "--encrypt")]))?;
    after_accept(ctx, accepted, !a.job.no_wait).await
}

#[derive(Debug, Args)]
pub struct RestorePrometheusArgs {
    /// The backup: an id, or a location (its newest backup of Prometheus).
    #[arg(long)]
    pub backup: String,
    /// Where the backup is stored, when --backup is an id not in the catalog.
    #[arg(long)]
    pub source: Option<String>,
    /// The data directory to restore into (a Prometheus must not be running on it), inside a
    /// root of the instance.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Replace an existing data directory (kept until the restored one is in place).
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub instance: InstanceArgs,
    #[command(flatten)]
    pub job: JobArgs,
}

/// A Prometheus snapshot's tree: its path ends in `snapshots/<name>`.
fn is_snapshot(path: &str) -> bool {
    path.rsplit('/').nth(1) == Some("snapshots")
}

pub async fn restore(ctx: &Ctx, a: &RestorePrometheusArgs) -> Result<(), CliError> {
    let instance = pick_for_path(ctx, &a.instance, "--data-dir", &a.data_dir).await?;
    let (root, path) = place(&instance, Some(&a.data_dir), "prometheus", "--data-dir")?;
    let (backup, source) = match (a.backup.parse::<BackupRef>(), &a.source) {
        (Ok(BackupRef::Id(id)), source) => (BackupRef::Id(id), source.as_deref().map(location)),
        (Ok(BackupRef::Latest), Some(source)) => (BackupRef::Latest, Some(location(source))),
        (Ok(BackupRef::Latest), None) => (BackupRef::Latest, None),
        (Err(_), _) => (BackupRef::Latest, Some(location(&a.backup))),
    };
    let entries: Vec<CatalogEntry> = ctx
        .client
        .request(
            QRY_BACKUPS,
            &BackupsQuery {
                stream: None,
                destination: source.clone(),
            },
        )
        .await
        .map_err(|e| e.with_flags(&[("destination", "--backup")]))?;
    let entry = entries
        .iter()
        .filter(|e| e.trees.iter().any(|t| is_snapshot(&t.path)))
        .find(|e| match &backup {
            BackupRef::Id(id) => &e.backup_id == id,
            BackupRef::Latest => true,
        })
        .ok_or_else(|| {
            CliError::Usage(format!(
                "--backup {}: no backup of Prometheus there",
                a.backup
            ))
        })?;
    let tree = entry
        .trees
        .iter()
        .find(|t| is_snapshot(&t.path))
        .expect("filtered on it");
    let body = RestoreTrees {
        backup: BackupRef::Id(entry.backup_id),
        source: Some(entry.destination.clone()),
        trees: vec![TreePlacement {
            tree: tree.name.clone(),
            root: Some(root),
            path: Some(path),
        }],
        overwrite: a.overwrite,
        idempotency_key: Some(idempotency_key(a.job.idempotency_key.as_deref())),
        correlation_id: None,
    };
    let accepted: Accepted = ctx
        .client
        .start(
            &format!("{}.restore", files_commands(&instance.name)),
            &body,
        )
        .await
        .map_err(|e| {
            e.with_flags(&[
                ("root", "--data-dir"),
                ("path", "--data-dir"),
                ("overwrite", "--overwrite"),
            ])
        })?;
    after_accept(ctx, accepted, !a.job.no_wait).await
}
