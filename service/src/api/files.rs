//! One instance's file endpoints (`cim.backup.files.<instance>.*`): the models under its roots.
//! Backups of trees go through [`super::commands::start`] on the instance's own subject.

use std::collections::BTreeMap;

use async_nats::service::Request;
use cim_backup_contracts::files::{FileFormat, LastBackup, ModelInfo, ModelsQuery};
use time::OffsetDateTime;

use super::Api;
use super::commands::{engine_error, parse};
use super::reply::ApiError;
use crate::archive::files::formats::{self, ModelFormat};
use crate::archive::files::scan::{self, Found};

/// File names whose headers are worth reading to tell a model's format.
const MODEL_FILES: &[&str] = &[
    ".safetensors",
    ".gguf",
    ".pt",
    ".pth",
    ".bin",
    ".ckpt",
    ".onnx",
];

pub async fn models(api: &Api, request: &Request) -> Result<Vec<ModelInfo>, ApiError> {
    let q: ModelsQuery = parse(request)?;
    let ctx = api.runner.context();
    let root_name = q.root.clone().unwrap_or_else(|| "models".to_owned());
    let root = ctx.root(&root_name).map_err(engine_error)?.clone();
    let top = root.resolve(&q.path).map_err(|e| engine_error(e.into()))?;
    let catalog = api.views.catalog().await?;
    let prefix = q.path.clone();
    let since = q.modified_since;
    let mut models = tokio::task::spawn_blocking(move || list(&root, &top, &prefix, since))
        .await
        .map_err(|e| ApiError::internal(format!("listing models stopped: {e}")))?
        .map_err(|e| engine_error(e.into()))?;
    // The newest completed backup of each model, by tree name.
    let mut newest: BTreeMap<
        &str,
        (
            &cim_backup_contracts::views::CatalogEntry,
            &cim_backup_contracts::files::TreeSummary,
        ),
    > = BTreeMap::new();
    for entry in &catalog {
        for tree in &entry.trees {
            if tree.instance != ctx.instance {
                continue;
            }
            let slot = newest.entry(tree.name.as_str()).or_insert((entry, tree));
            if entry.created_at > slot.0.created_at {
                *slot = (entry, tree);
            }
        }
    }
    for m in &mut models {
        let name = format!("{}/{}", m.root, m.path);
        if let Some((entry, tree)) = newest.get(name.as_str()) {
            m.changed_since_backup = Some(
                m.modified > entry.created_at || m.bytes != tree.bytes || m.files != tree.files,
            );
            m.last_backup = Some(LastBackup {
                backup_id: entry.backup_id.to_string(),
                created_at: entry.created_at,
                destination: entry.destination.clone(),
            });
        }
    }
    Ok(models)
}

fn list(
    root: &scan::Root,
    top: &std::path::Path,
    prefix: &str,
    since: Option<OffsetDateTime>,
) -> Result<Vec<ModelInfo>, crate::archive::files::FilesError> {
    let shown = |e: std::io::Error| crate::archive::files::FilesError::io(top.display(), e);
    let mut names: Vec<String> = std::fs::read_dir(top)
        .map_err(shown)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for id in names {
        let path = if prefix.is_empty() {
            id.clone()
        } else {
            format!("{prefix}/{id}")
        };
        let Ok(abs) = root.resolve(&path) else {
            continue;
        }; // a link: not a model of this root
        let Ok(scanned) = scan::scan(&abs) else {
            continue;
        };
        let mut files = 0;
        let mut bytes = 0;
        let mut newest = i64::MIN;
        let mut found = Vec::new();
        for e in &scanned.entries {
            if let Found::File { size } = e.found {
                files += 1;
                bytes += size;
                newest = newest.max(e.mtime_ns);
                let name = e
                    .abs
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                if MODEL_FILES.iter().any(|x| name.ends_with(x)) {
                    let format = match formats::detect_path(&e.abs) {
                        Ok(ModelFormat::Unknown) => continue,
                        Ok(f) => f.label(),
                        Err(problem) => format!("damaged: {problem}"),
                    };
                    found.push(FileFormat {
                        path: if e.path.is_empty() {
                            id.clone()
                        } else {
                            e.path.clone()
                        },
                        format,
                    });
                }
            }
        }
        let modified = OffsetDateTime::from_unix_timestamp_nanos(newest.max(0) as i128)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        if since.is_some_and(|s| modified < s) {
            continue;
        }
        out.push(ModelInfo {
            id,
            root: root.name.clone(),
            path,
            kind: match scanned.top {
                crate::archive::files::tree::TopKind::Dir => "dir",
                crate::archive::files::tree::TopKind::File => "file",
            }
            .into(),
            files,
            bytes,
            modified,
            formats: found,
            last_backup: None,
            changed_since_backup: None,
        });
    }
    Ok(out)
}

/// `cim.backup.files.<instance>.cmd.restore`: plans which trees go where (refusing unknown
/// trees, roots this instance lacks, paths that leave a root, and existing targets without
/// `overwrite`) before anything is recorded, then starts the job.
pub async fn restore(
    api: &Api,
    request: &Request,
) -> Result<cim_backup_contracts::replies::Accepted, ApiError> {
    use cim_backup_contracts::files::{PlannedTree, RestoreTrees, TreeRestoreAccepted};
    use cim_backup_domain::tree_restore::{TreeRestoreCommand, TreeRestoreJob};
    let cmd: RestoreTrees = parse(request)?;
    let ctx = api.runner.context();
    let located = super::resolve::locate(api, cmd.backup, None, cmd.source.as_deref()).await?;
    let manifest = super::resolve::manifest_at(api, &located).await?;
    if manifest.trees.is_empty() {
        return Err(ApiError::bad_request(format!(
            "backup: {} holds no file trees (it is a backup of streams: restore-events)",
            located.backup
        )));
    }
    let placements: Vec<_> = if cmd.trees.is_empty() {
        manifest
            .trees
            .iter()
            .map(|t| (t, t.root.clone(), t.path.clone()))
            .collect()
    } else {
        let mut out = Vec::new();
        for p in &cmd.trees {
            let matching: Vec<_> = manifest
                .trees
                .iter()
                .filter(|t| t.name == p.tree || t.path.rsplit('/').next() == Some(p.tree.as_str()))
                .collect();
            let tree = match matching.as_slice() {
                [one] => *one,
                [] => {
                    return Err(ApiError::not_found(format!(
                        "trees: backup {} holds no tree {}; it holds: {}",
                        located.backup,
                        cim_backup_contracts::text::echo(&p.tree),
                        manifest
                            .trees
                            .iter()
                            .map(|t| t.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "trees: {} names several trees of the backup ({}); give the full name",
                        cim_backup_contracts::text::echo(&p.tree),
                        matching
                            .iter()
                            .map(|t| t.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            };
            out.push((
                tree,
                p.root.clone().unwrap_or_else(|| tree.root.clone()),
                p.path.clone().unwrap_or_else(|| tree.path.clone()),
            ));
        }
        out
    };
    let mut trees = Vec::new();
    for (tree, root, path) in placements {
        let r = ctx.root(&root).map_err(engine_error)?;
        if path.is_empty() {
            return Err(ApiError::bad_request(format!(
                "trees: {} would replace the whole root {root}; name a path inside it",
                tree.name
            )));
        }
        let target = r.resolve(&path).map_err(|e| engine_error(e.into()))?;
        if !cmd.overwrite && std::fs::symlink_metadata(&target).is_ok() {
            return Err(ApiError::conflict(format!(
                "{} already exists on instance {}; nothing was written (ask for overwrite to replace it: it is kept until the restored tree is in place)",
                target.display(),
                ctx.instance
            )));
        }
        trees.push(PlannedTree {
            name: tree.name.clone(),
            tree: tree.tree,
            files: tree.files,
            bytes: tree.bytes,
            root,
            path,
        });
    }
    let intake = super::commands::Intake::new(
        request,
        cmd.idempotency_key.clone(),
        cmd.correlation_id.clone(),
    )?;
    let admission = intake.admission(
        api,
        &(
            located.backup.to_string(),
            &located.location.url,
            &trees,
            cmd.overwrite,
        ),
    );
    let digest = admission.request_digest.clone();
    let spec = TreeRestoreAccepted {
        backup: located.backup,
        source: located.location.given,
        source_url: located.location.url,
        trees,
        overwrite: cmd.overwrite,
        encrypted: manifest.encryption.is_some(),
        admission,
    };
    let (reply, job) = super::commands::accept::<TreeRestoreJob>(
        api,
        &intake,
        TreeRestoreCommand::Accept(spec),
        |s| s.spec.as_ref().map(|s| &s.admission),
        &digest,
    )
    .await?;
    if let Some(job) = job {
        api.runner.spawn_tree_restore(job);
    }
    Ok(reply)
}
