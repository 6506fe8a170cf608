//! `backup-checkpoint`, `restore-checkpoint`: training checkpoints as single-file trees under an
//! instance's roots (normally `checkpoints`).
//!
//! A checkpoint still being written (open for writing, or modified in the last seconds) is left
//! out with a note rather than stored half-written. `--resume-training` asks the training agent
//! on `cim.training.resume` to pick the restored checkpoint up, and says whether anyone answered.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde_json::json;

use cim_backup_contracts::commands::{BackupRef, CompressionAlgorithm, StartBackup};
use cim_backup_contracts::files::{RestoreTrees, TreePlacement, TreeRequest};
use cim_backup_contracts::replies::Accepted;
use cim_backup_contracts::subjects::files_commands;

use super::args::{idempotency_key, location};
use super::client::CliError;
use super::follow::{ended, watch};
use super::models::{InstanceArgs, JobArgs, pick_for_path, place};
use super::{Ctx, output};

/// The subject `--resume-training` asks, with `{checkpoint_id, path, backup_id}`; a training
/// agent answers with anything (its reply is shown).
pub const RESUME_TRAINING: &str = "cim.training.resume";
/// How long `--resume-training` waits for the training agent.
const RESUME_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub struct BackupCheckpointArgs {
    /// The checkpoint file, on the instance's host, inside one of its roots.
    #[arg(long)]
    pub file: PathBuf,
    /// Compress its chunks with zstd where that pays (default: stored as they are).
    #[arg(long)]
    pub compress: bool,
    /// Where: a configured name, a directory or a URL (default: the service's default).
    #[arg(long)]
    pub destination: Option<String>,
    #[command(flatten)]
    pub instance: InstanceArgs,
    #[command(flatten)]
    pub job: JobArgs,
}

pub async fn backup(ctx: &Ctx, a: &BackupCheckpointArgs) -> Result<(), CliError> {
    let instance = pick_for_path(ctx, &a.instance, "--file", &a.file).await?;
    let (root, path) = place(&instance, Some(&a.file), "checkpoints", "--file")?;
    if path.is_empty() {
        return Err(CliError::Usage(format!(
            "--file {}: is a root, not a file",
            a.file.display()
        )));
    }
    let body = StartBackup {
        streams: Vec::new(),
        trees: vec![TreeRequest {
            root,
            path,
            complete_only: true,
            remove_after: false,
            exclude: Vec::new(),
            export: None,
            stage: None,
        }],
        parallel: None,
        destination: a.destination.as_deref().map(location),
        compress: Some(if a.compress {
            CompressionAlgorithm::Zstd
        } else {
            CompressionAlgorithm::None
        }),
        zstd_level: None,
        full: false,
        incremental: None,
        encrypt: None,
        mode: None,
        idempotency_key: Some(idempotency_key(a.job.idempotency_key.as_deref())),
        correlation_id: None,
    };
    let accepted: Accepted = ctx
        .client
        .start(&format!("{}.start", files_commands(&instance.name)), &body)
        .await
        .map_err(|e| e.with_flags(&[("trees", "--file"), ("destination", "--destination")]))?;
    if a.job.no_wait {
        return super::follow::after_accept(ctx, accepted, false).await;
    }
    let view = watch(ctx, &accepted.job_id, false).await?;
    ended(&view)?;
    // A checkpoint left out says why (the backup completed, holding no copy of it).
    if !ctx.json
        && let Some(id) = &view.backup_id
    {
        let entries: Vec<cim_backup_contracts::views::CatalogEntry> = ctx
            .client
            .request(
                cim_backup_contracts::subjects::QRY_BACKUPS,
                &cim_backup_contracts::commands::BackupsQuery::default(),
            )
            .await?;
        for t in entries
            .iter()
            .filter(|e| &e.backup_id == id)
            .flat_map(|e| &e.trees)
        {
            for s in &t.skipped {
                eprintln!("cim-backup: {} left out: {}", a.file.display(), s.reason);
            }
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct RestoreCheckpointArgs {
    /// The checkpoint: its file name, or its tree name in the backup (`checkpoints/run-7/step-100.ckpt`).
    #[arg(long)]
    pub checkpoint_id: String,
    /// The backup: an id, or a location (its newest backup) (default: the newest backup in
    /// the catalog that holds the checkpoint).
    #[arg(long)]
    pub source: Option<String>,
    /// The directory to restore it into (default: its original path).
    #[arg(long)]
    pub destination: Option<PathBuf>,
    /// Replace a file already there (kept until the restored one is in place).
    #[arg(long)]
    pub overwrite: bool,
    /// Then ask the training agent (cim.training.resume) to resume from it.
    #[arg(long)]
    pub resume_training: bool,
    #[command(flatten)]
    pub instance: InstanceArgs,
    /// Repeating a request with the same key starts one job (default: a key for this run).
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

pub async fn restore(ctx: &Ctx, a: &RestoreCheckpointArgs) -> Result<(), CliError> {
    let instance = match &a.destination {
        Some(dir) => pick_for_path(ctx, &a.instance, "--destination", dir).await?,
        None => super::models::pick(ctx, &a.instance, "checkpoints").await?,
    };
    let (backup, source) = match &a.source {
        Some(s) => super::args::restore_source(s.strip_suffix("/latest").unwrap_or(s), None)?,
        None => (BackupRef::Latest, None),
    };
    let name = a
        .checkpoint_id
        .rsplit('/')
        .next()
        .unwrap_or(&a.checkpoint_id)
        .to_owned();
    let (root, path) = match &a.destination {
        Some(dir) => {
            let (root, path) = place(&instance, Some(dir), "checkpoints", "--destination")?;
            (
                Some(root),
                Some(if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}/{name}")
                }),
            )
        }
        None => (None, None),
    };
    let body = RestoreTrees {
        backup,
        source,
        trees: vec![TreePlacement {
            tree: a.checkpoint_id.clone(),
            root: root.clone(),
            path: path.clone(),
        }],
        overwrite: a.overwrite,
        idempotency_key: Some(idempotency_key(a.idempotency_key.as_deref())),
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
                ("trees", "--checkpoint-id"),
                ("backup", "--source"),
                ("source", "--source"),
                ("root", "--destination"),
                ("path", "--destination"),
            ])
        })?;
    let view = watch(ctx, &accepted.job_id, a.resume_training && ctx.json).await?;
    ended(&view)?;
    if !a.resume_training {
        return Ok(());
    }
    // Where it is now: the job's note says "<tree> restored to <path>".
    let restored_to = view
        .notes
        .iter()
        .find_map(|n| n.split_once(" to ").map(|(_, p)| p.to_owned()))
        .or_else(|| {
            view.notes
                .iter()
                .find_map(|n| n.split_once(" at ").map(|(_, p)| p.to_owned()))
        })
        .unwrap_or_default();
    let request = json!({
        "checkpoint_id": a.checkpoint_id,
        "path": restored_to,
        "backup_id": view.backup_id.as_ref().map(|b| b.to_string()),
    });
    let answer = ctx.client.ask(RESUME_TRAINING, &request, RESUME_WAIT).await;
    let report = match &answer {
        Ok(reply) => {
            json!({ "resume_training": { "answered": true, "subject": RESUME_TRAINING, "reply": reply } })
        }
        Err(why) => {
            json!({ "resume_training": { "answered": false, "subject": RESUME_TRAINING, "why": why } })
        }
    };
    if ctx.json {
        output::json(&json!({ "job": view, "resume_training": report["resume_training"] }));
    } else {
        match answer {
            Ok(reply) => println!("training agent answered on {RESUME_TRAINING}: {reply}"),
            Err(why) => println!("no training agent answered on {RESUME_TRAINING}: {why}"),
        }
    }
    Ok(())
}
