//! `list-gpu-models`, `backup-gpu-models`, `verify-model-backup`: model weights as file trees.
//!
//! Models live on a host, so these commands talk to one instance: `--instance`, else the one on
//! this host, else the only one that serves the root.

use std::path::{Path, PathBuf};

use clap::Args;

use cim_backup_contracts::commands::{BackupRef, StartBackup, VerifyBackup};
use cim_backup_contracts::events::VerifyMode;
use cim_backup_contracts::files::{ModelInfo, ModelsQuery, TreeRequest};
use cim_backup_contracts::replies::Accepted;
use cim_backup_contracts::subjects::{CMD_VERIFY, files_commands, files_queries};

use super::args::{idempotency_key, location};
use super::client::{CliError, Instance};
use super::follow::after_accept;
use super::{Ctx, output};

/// The root models live in unless `--source` says otherwise.
pub const MODELS_ROOT: &str = "models";

/// How a command that starts a job is asked again and followed.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// Repeating a request with the same key starts one job (default: a key for this run).
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Return once the job is accepted (default: follow it to its end).
    #[arg(long)]
    pub no_wait: bool,
}

/// Which instance, for commands on a host's files.
#[derive(Debug, Args)]
pub struct InstanceArgs {
    /// The service instance whose host has the files (default: the one on this host, else the
    /// only one that serves the root).
    #[arg(long)]
    pub instance: Option<String>,
}

/// Picks the instance that serves `root` (and `dir`, when given as a path on its host).
pub async fn pick(ctx: &Ctx, a: &InstanceArgs, root: &str) -> Result<Instance, CliError> {
    let all = ctx.client.instances().await?;
    if all.is_empty() {
        return Err(CliError::Unavailable(
            "no cim-backup instance answers (is `cim-backup serve` running?)".into(),
        ));
    }
    let serving: Vec<&Instance> = all
        .iter()
        .filter(|i| i.roots.iter().any(|r| r.name == root))
        .collect();
    let listed = || {
        all.iter()
            .map(|i| {
                format!(
                    "{} on {} (roots: {})",
                    i.name,
                    i.host,
                    i.roots
                        .iter()
                        .map(|r| r.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    if let Some(name) = &a.instance {
        return all
            .iter()
            .find(|i| &i.name == name)
            .cloned()
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "--instance {name}: no such instance answers; running: {}",
                    listed()
                ))
            });
    }
    let here = crate::config::host_name();
    if let Some(local) = serving.iter().find(|i| i.host == here) {
        return Ok((*local).clone());
    }
    match serving.as_slice() {
        [only] => Ok((*only).clone()),
        [] => Err(CliError::Usage(format!(
            "no instance serves a root named {root} ([files.roots] or serve --root {root}=DIR); running: {}",
            listed()
        ))),
        _ => Err(CliError::Usage(format!(
            "several instances serve {root}; pick one with --instance: {}",
            listed()
        ))),
    }
}

/// A directory given as a path on the instance's host, as (root, path inside it). Without a
/// directory: the root named `default_root`.
pub fn place(
    instance: &Instance,
    dir: Option<&Path>,
    default_root: &str,
    flag: &str,
) -> Result<(String, String), CliError> {
    let Some(dir) = dir else {
        return Ok((default_root.to_owned(), String::new()));
    };
    let dir = std::path::absolute(dir)
        .map_err(|e| CliError::Usage(format!("{flag} {}: {e}", dir.display())))?;
    for root in &instance.roots {
        if let Ok(rest) = dir.strip_prefix(&root.path) {
            let rest = rest
                .to_str()
                .ok_or_else(|| CliError::Usage(format!("{flag} {}: not UTF-8", dir.display())))?;
            return Ok((root.name.clone(), rest.trim_end_matches('/').to_owned()));
        }
    }
    Err(CliError::Usage(format!(
        "{flag} {}: not inside a root of instance {} (its roots: {}); a file request names a declared root, never an arbitrary path",
        dir.display(),
        instance.name,
        instance
            .roots
            .iter()
            .map(|r| format!("{}={}", r.name, r.path))
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

#[derive(Debug, Args)]
pub struct ListModelsArgs {
    /// Only models with a file modified within this long (like 24h, 7d, 30m), or since an
    /// RFC 3339 time.
    #[arg(long)]
    pub modified_since: Option<String>,
    /// The models directory on the instance's host (default: its `models` root).
    #[arg(long)]
    pub source: Option<PathBuf>,
    #[command(flatten)]
    pub instance: InstanceArgs,
}

/// `24h`, `7d`, `30m`, `90s`, or an RFC 3339 time.
pub fn since(value: &str) -> Result<time::OffsetDateTime, CliError> {
    let bad = || {
        CliError::Usage(format!(
            "--modified-since: {} is neither a duration (24h, 7d, 30m) nor an RFC 3339 time",
            cim_backup_contracts::text::echo(value)
        ))
    };
    if let Some(t) = super::args::time("--modified-since", Some(value))
        .ok()
        .flatten()
    {
        return Ok(t);
    }
    let (number, unit) = value.split_at(value.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: i64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        "w" => n * 7 * 86_400,
        _ => return Err(bad()),
    };
    Ok(time::OffsetDateTime::now_utc() - time::Duration::seconds(seconds))
}

pub async fn list(ctx: &Ctx, a: &ListModelsArgs) -> Result<(), CliError> {
    let modified_since = a.modified_since.as_deref().map(since).transpose()?;
    let root_hint = MODELS_ROOT;
    let instance = pick(ctx, &a.instance, root_hint).await?;
    let (root, path) = place(&instance, a.source.as_deref(), MODELS_ROOT, "--source")?;
    let query = ModelsQuery {
        root: Some(root),
        path,
        modified_since,
    };
    let models: Vec<ModelInfo> = ctx
        .client
        .request(&format!("{}.models", files_queries(&instance.name)), &query)
        .await
        .map_err(|e| {
            e.with_flags(&[
                ("root", "--source"),
                ("path", "--source"),
                ("modified_since", "--modified-since"),
            ])
        })?;
    if ctx.json {
        output::json(&models);
    } else {
        output::models(&instance.name, &models);
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct BackupModelsArgs {
    /// The models directory on the instance's host: a root or a directory inside one
    /// (default: its `models` root). Each entry in it is a model.
    #[arg(long)]
    pub source: Option<PathBuf>,
    /// Where: a configured name, a directory, file:///dir, s3://bucket/prefix (default: the
    /// service's default destination).
    #[arg(long)]
    pub destination: Option<String>,
    /// Only these models (names in --source), comma-separated (default: all of them).
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Files read and chunks sealed at once (default 4).
    #[arg(long)]
    pub parallel: Option<u32>,
    /// Encrypt chunks to the recipients configured for the service.
    #[arg(long, conflicts_with = "no_encrypt")]
    pub encrypt: bool,
    /// Do not encrypt, whatever the destination's setting.
    #[arg(long)]
    pub no_encrypt: bool,
    /// zstd level for chunks that compress (weights mostly do not, and are stored as they are).
    #[arg(long)]
    pub zstd_level: Option<i32>,
    #[command(flatten)]
    pub instance: InstanceArgs,
    /// Repeating a request with the same key starts one job (default: a key for this run).
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Follow the job to its end (exit 1 if it fails).
    #[arg(long)]
    pub wait: bool,
}

pub async fn backup(ctx: &Ctx, a: &BackupModelsArgs) -> Result<(), CliError> {
    let instance = pick(ctx, &a.instance, MODELS_ROOT).await?;
    let (root, path) = place(&instance, a.source.as_deref(), MODELS_ROOT, "--source")?;
    let models: Vec<String> = if a.models.is_empty() {
        let listed: Vec<ModelInfo> = ctx
            .client
            .request(
                &format!("{}.models", files_queries(&instance.name)),
                &ModelsQuery {
                    root: Some(root.clone()),
                    path: path.clone(),
                    modified_since: None,
                },
            )
            .await
            .map_err(|e| e.with_flags(&[("root", "--source"), ("path", "--source")]))?;
        listed.into_iter().map(|m| m.id).collect()
    } else {
        a.models.clone()
    };
    if models.is_empty() {
        return Err(CliError::Usage(format!(
            "no models in {root}/{path} on instance {}: nothing to back up",
            instance.name
        )));
    }
    let trees = models
        .iter()
        .map(|m| TreeRequest {
            complete_only: false,
            remove_after: false,
            exclude: Vec::new(),
            export: None,
            stage: None,
            root: root.clone(),
            path: if path.is_empty() {
                m.clone()
            } else {
                format!("{path}/{m}")
            },
        })
        .collect();
    let body = StartBackup {
        streams: Vec::new(),
        trees,
        parallel: a.parallel,
        destination: a.destination.as_deref().map(location),
        compress: None,
        zstd_level: a.zstd_level,
        full: false,
        incremental: None,
        encrypt: match (a.encrypt, a.no_encrypt) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        mode: None,
        idempotency_key: Some(idempotency_key(a.idempotency_key.as_deref())),
        correlation_id: None,
    };
    let accepted: Accepted = ctx
        .client
        .start(&format!("{}.start", files_commands(&instance.name)), &body)
        .await
        .map_err(|e| {
            e.with_flags(&[
                ("trees", "--models"),
                ("parallel", "--parallel"),
                ("destination", "--destination"),
                ("zstd_level", "--zstd-level"),
                ("encrypt", "--encrypt"),
                ("idempotency_key", "--idempotency-key"),
            ])
        })?;
    after_accept(ctx, accepted, a.wait).await
}

#[derive(Debug, Args)]
pub struct VerifyModelBackupArgs {
    /// The backup: its location (directory or URL: the newest backup there), or a backup id.
    #[arg(long)]
    pub backup_path: String,
    /// Only check that every object exists (fast; reads nothing).
    #[arg(long)]
    pub structural: bool,
    #[command(flatten)]
    pub job: JobArgs,
}

pub async fn verify(ctx: &Ctx, a: &VerifyModelBackupArgs) -> Result<(), CliError> {
    let (backup, source) = super::args::restore_source(&a.backup_path, None)?;
    let body = VerifyBackup {
        backup: if source.is_some() {
            BackupRef::Latest
        } else {
            backup
        },
        stream: None,
        source,
        mode: Some(if a.structural {
            VerifyMode::Structural
        } else {
            VerifyMode::Deep
        }),
        idempotency_key: Some(idempotency_key(a.job.idempotency_key.as_deref())),
        correlation_id: None,
    };
    let accepted: Accepted =
        ctx.client.start(CMD_VERIFY, &body).await.map_err(|e| {
            e.with_flags(&[("backup", "--backup-path"), ("source", "--backup-path")])
        })?;
    after_accept(ctx, accepted, !a.job.no_wait).await
}

#[derive(Debug, Args)]
pub struct RestoreModelArgs {
    /// The model: its id (its name under the models root) or its tree name in the backup
    /// (`models/llama-3-8b`).
    #[arg(long)]
    pub model_id: String,
    /// The backup: a backup id, or a location (directory, URL, name; `…/latest` or the
    /// location alone mean its newest backup).
    #[arg(long)]
    pub source: String,
    /// The models directory on the instance's host the model goes into, as DIR/<model id>
    /// (default: where it was backed up from).
    #[arg(long)]
    pub destination: Option<PathBuf>,
    /// Replace a model already there (it is kept until the restored one is in place).
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub instance: InstanceArgs,
    #[command(flatten)]
    pub job: JobArgs,
}

#[derive(Debug, Args)]
pub struct RestoreAllModelsArgs {
    /// The backup: a backup id, or a location (`…/latest` or the location alone mean its
    /// newest backup).
    #[arg(long)]
    pub source: String,
    /// The models directory the models go into, each as DIR/<model id> (default: where each
    /// was backed up from).
    #[arg(long)]
    pub destination: Option<PathBuf>,
    /// Replace models already there (each kept until its restored one is in place).
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub instance: InstanceArgs,
    #[command(flatten)]
    pub job: JobArgs,
}

/// `--source` of a tree restore: a backup id, or a location whose newest backup is meant
/// (`…/latest` says so explicitly, as the runbook writes it).
fn tree_source(source: &str) -> Result<(BackupRef, Option<String>), CliError> {
    let source = source.strip_suffix("/latest").unwrap_or(source);
    super::args::restore_source(source, None)
}

const RESTORE_FLAGS: &[(&str, &str)] = &[
    ("backup", "--source"),
    ("source", "--source"),
    ("trees", "--model-id"),
    ("root", "--destination"),
    ("path", "--destination"),
    ("overwrite", "--overwrite"),
    ("idempotency_key", "--idempotency-key"),
];

async fn restore_trees(
    ctx: &Ctx,
    instance: &Instance,
    body: &cim_backup_contracts::files::RestoreTrees,
    wait: bool,
    flags: &[(&str, &str)],
) -> Result<(), CliError> {
    let accepted: Accepted = ctx
        .client
        .start(&format!("{}.restore", files_commands(&instance.name)), body)
        .await
        .map_err(|e| e.with_flags(flags))?;
    after_accept(ctx, accepted, wait).await
}

pub async fn restore_model(ctx: &Ctx, a: &RestoreModelArgs) -> Result<(), CliError> {
    let instance = pick(ctx, &a.instance, MODELS_ROOT).await?;
    let (backup, source) = tree_source(&a.source)?;
    let id = a
        .model_id
        .rsplit('/')
        .next()
        .unwrap_or(&a.model_id)
        .to_owned();
    let (root, path) = match &a.destination {
        Some(dir) => {
            let (root, path) = place(&instance, Some(dir), MODELS_ROOT, "--destination")?;
            (
                Some(root),
                Some(if path.is_empty() {
                    id
                } else {
                    format!("{path}/{id}")
                }),
            )
        }
        None => (None, None),
    };
    let body = cim_backup_contracts::files::RestoreTrees {
        backup,
        source,
        trees: vec![cim_backup_contracts::files::TreePlacement {
            tree: a.model_id.clone(),
            root,
            path,
        }],
        overwrite: a.overwrite,
        idempotency_key: Some(idempotency_key(a.job.idempotency_key.as_deref())),
        correlation_id: None,
    };
    restore_trees(ctx, &instance, &body, !a.job.no_wait, RESTORE_FLAGS).await
}

/// restore-all-models has no --model-id: the trees are the backup's.
const RESTORE_ALL_FLAGS: &[(&str, &str)] = &[
    ("backup", "--source"),
    ("source", "--source"),
    ("trees", "--source"),
    ("root", "--destination"),
    ("path", "--destination"),
    ("overwrite", "--overwrite"),
    ("idempotency_key", "--idempotency-key"),
];

pub async fn restore_all_models(ctx: &Ctx, a: &RestoreAllModelsArgs) -> Result<(), CliError> {
    let instance = pick(ctx, &a.instance, MODELS_ROOT).await?;
    let (backup, source) = tree_source(&a.source)?;
    let trees = match &a.destination {
        None => Vec::new(),
        Some(dir) => {
            // Each tree of the backup into DIR: the listing says which trees there are.
            let (root, path) = place(&instance, Some(dir), MODELS_ROOT, "--destination")?;
            let query = cim_backup_contracts::commands::BackupsQuery {
                stream: None,
                destination: source.clone(),
            };
            let entries: Vec<cim_backup_contracts::views::CatalogEntry> = ctx
                .client
                .request(cim_backup_contracts::subjects::QRY_BACKUPS, &query)
                .await
                .map_err(|e| e.with_flags(RESTORE_ALL_FLAGS))?;
            let entry = match &backup {
                BackupRef::Id(id) => entries.iter().find(|e| &e.backup_id == id),
                BackupRef::Latest => entries.iter().find(|e| !e.trees.is_empty()),
            }
            .ok_or_else(|| {
                CliError::Usage(format!("--source {}: no backup of models there", a.source))
            })?;
            entry
                .trees
                .iter()
                .map(|t| {
                    let id = t.path.rsplit('/').next().unwrap_or(&t.path).to_owned();
                    cim_backup_contracts::files::TreePlacement {
                        tree: t.name.clone(),
                        root: Some(root.clone()),
                        path: Some(if path.is_empty() {
                            id
                        } else {
                            format!("{path}/{id}")
                        }),
                    }
                })
                .collect()
        }
    };
    let body = cim_backup_contracts::files::RestoreTrees {
        backup,
        source,
        trees,
        overwrite: a.overwrite,
        idempotency_key: Some(idempotency_key(a.job.idempotency_key.as_deref())),
        correlation_id: None,
    };
    restore_trees(ctx, &instance, &body, !a.job.no_wait, RESTORE_ALL_FLAGS).await
}

#[derive(Debug, Args)]
pub struct VerifyModelArgs {
    /// The model on the instance's host: a file or directory inside one of its roots.
    #[arg(long)]
    pub path: PathBuf,
    /// The whole file's expected sha256, as sha256:HEX (a file only). Without it the model is
    /// checked against its backup.
    #[arg(long)]
    pub checksum: Option<String>,
    /// The backup to check against (default: the newest backup of this model in the catalog).
    #[arg(long)]
    pub backup: Option<String>,
    /// Where that backup is stored (a name, directory or URL).
    #[arg(long)]
    pub source: Option<String>,
    #[command(flatten)]
    pub instance: InstanceArgs,
}

/// How long hashing a model may take before the CLI stops waiting.
const HASHING_FOR: std::time::Duration = std::time::Duration::from_secs(3600);

/// The instance whose root holds `path` (`--instance` if given; else the one on this host).
/// Starts a job that writes a tar.gz at `output` (backup-nixos-config, backup-grafana) on the
/// instance whose root holds it, with the body `body` builds from the absolute output path and
/// the idempotency key, and follows it. `flags` names the command's own JSON fields as flags,
/// besides `output` and `destination`.
pub async fn start_tar_job<B: serde::Serialize>(
    ctx: &Ctx,
    instance: &InstanceArgs,
    job: &JobArgs,
    output: &Path,
    verb: &str,
    flags: &[(&str, &str)],
    body: impl FnOnce(String, String) -> B,
) -> Result<(), CliError> {
    let output = std::path::absolute(output)
        .map_err(|e| CliError::Usage(format!("--output {}: {e}", output.display())))?;
    let instance = pick_for_path(ctx, instance, "--output", &output).await?;
    let body = body(
        output.display().to_string(),
        super::args::idempotency_key(job.idempotency_key.as_deref()),
    );
    let subject = format!(
        "{}.{verb}",
        cim_backup_contracts::subjects::files_commands(&instance.name)
    );
    let accepted: cim_backup_contracts::replies::Accepted =
        ctx.client.start(&subject, &body).await.map_err(|e| {
            let mut named = vec![("output", "--output"), ("destination", "--destination")];
            named.extend_from_slice(flags);
            e.with_flags(&named)
        })?;
    super::follow::after_accept(ctx, accepted, !job.no_wait).await
}

pub async fn pick_for_path(
    ctx: &Ctx,
    a: &InstanceArgs,
    flag: &str,
    path: &Path,
) -> Result<Instance, CliError> {
    let all = ctx.client.instances().await?;
    if let Some(name) = &a.instance {
        return all
            .iter()
            .find(|i| &i.name == name)
            .cloned()
            .ok_or_else(|| {
                CliError::Usage(format!("--instance {name}: no such instance answers"))
            });
    }
    let p = std::path::absolute(path).unwrap_or_default();
    let here = crate::config::host_name();
    let holder = |i: &&Instance| i.roots.iter().any(|r| p.starts_with(&r.path));
    all.iter()
        .filter(holder)
        .find(|i| i.host == here)
        .or_else(|| all.iter().find(holder))
        .cloned()
        .ok_or_else(|| {
            CliError::Usage(format!(
                "{flag} {}: no instance serves a root that holds it (roots: {})",
                path.display(),
                all.iter()
                    .flat_map(|i| i
                        .roots
                        .iter()
                        .map(move |r| format!("{}:{}={}", i.name, r.name, r.path)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

pub async fn verify_model(ctx: &Ctx, a: &VerifyModelArgs) -> Result<(), CliError> {
    let instance = pick_for_path(ctx, &a.instance, "--path", &a.path).await?;
    let (root, path) = place(&instance, Some(&a.path), MODELS_ROOT, "--path")?;
    let backup = a
        .backup
        .as_deref()
        .map(|b| {
            b.parse::<BackupRef>()
                .map_err(|e| CliError::Usage(format!("--backup: {e}")))
        })
        .transpose()?;
    let query = cim_backup_contracts::files::CheckPathQuery {
        root,
        path,
        checksum: a.checksum.clone(),
        backup,
        source: a.source.as_deref().map(location),
    };
    let checked: cim_backup_contracts::files::PathChecked = ctx
        .client
        .request_slow(
            &format!("{}.check", files_queries(&instance.name)),
            &query,
            HASHING_FOR,
        )
        .await
        .map_err(|e| {
            e.with_flags(&[
                ("checksum", "--checksum"),
                ("backup", "--backup"),
                ("source", "--source"),
                ("root", "--path"),
                ("path", "--path"),
            ])
        })?;
    if ctx.json {
        output::json(&checked);
    } else {
        match checked.differences.is_empty() {
            true => println!(
                "{}: OK - {} file(s), {} match {}",
                checked.host_path,
                checked.files,
                output::bytes(checked.bytes),
                checked.against
            ),
            false => {
                println!(
                    "{}: MISMATCH - {} difference(s) from {}",
                    checked.host_path,
                    checked.differences.len(),
                    checked.against
                );
                for d in &checked.differences {
                    println!(
                        "    {}: {}",
                        if d.path.is_empty() {
                            "(the file)"
                        } else {
                            &d.path
                        },
                        d.reason
                    );
                }
            }
        }
    }
    if checked.differences.is_empty() {
        Ok(())
    } else {
        Err(CliError::Corrupted(format!(
            "{} does not match {}",
            checked.host_path, checked.against
        )))
    }
}
