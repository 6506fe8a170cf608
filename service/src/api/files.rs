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
    let located = match (cmd.backup, cmd.source.as_deref(), cmd.trees.first()) {
        // The newest backup in the catalog that holds the (first) named tree.
        (cim_backup_contracts::commands::BackupRef::Latest, None, Some(first)) => {
            let entry =
                newest_holding(api.views.catalog().await?, &first.tree).ok_or_else(|| {
                    ApiError::not_found(format!(
                        "no backup in the catalog holds {}; name the backup or its source",
                        cim_backup_contracts::text::echo(&first.tree)
                    ))
                })?;
            super::resolve::Located {
                backup: entry.backup_id.0,
                location: crate::destination::Resolved {
                    given: entry.destination.clone(),
                    url: entry.destination,
                },
            }
        }
        // The newest backup in that location holding the (first) named tree.
        (cim_backup_contracts::commands::BackupRef::Latest, Some(source), Some(first)) => {
            let location = ctx.destinations.resolve(Some(source))?;
            let entries = super::resolve::list_location(api, &location, None).await?;
            let entry = newest_holding(entries, &first.tree).ok_or_else(|| {
                ApiError::not_found(format!(
                    "no backup in {} holds {}",
                    location.url,
                    cim_backup_contracts::text::echo(&first.tree)
                ))
            })?;
            super::resolve::Located {
                backup: entry.backup_id.0,
                location,
            }
        }
        // Every tree of the newest backup there that holds trees.
        (cim_backup_contracts::commands::BackupRef::Latest, Some(source), None) => {
            let location = ctx.destinations.resolve(Some(source))?;
            let entries = super::resolve::list_location(api, &location, None).await?;
            let entry = entries
                .into_iter()
                .filter(|e| !e.trees.is_empty())
                .max_by_key(|e| e.created_at)
                .ok_or_else(|| {
                    ApiError::not_found(format!("no backup of file trees in {}", location.url))
                })?;
            super::resolve::Located {
                backup: entry.backup_id.0,
                location,
            }
        }
        (backup, source, _) => super::resolve::locate(api, backup, None, source).await?,
    };
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
                .filter(|t| names(t, &p.tree))
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
        if tree.top == "file" && tree.files == 0 {
            return Err(ApiError::not_found(format!(
                "{}: backup {} holds no copy of it: it was left out when backed up ({})",
                tree.name,
                located.backup,
                tree.skipped.first().map_or("", |s| s.reason.as_str())
            )));
        }
        let r = ctx.root(&root).map_err(engine_error)?;
        if path.is_empty() {
            return Err(ApiError::bad_request(format!(
                "trees: {} would replace the whole root {root}; name a path inside it",
                tree.name
            )));
        }
        let target = r.resolve(&path).map_err(|e| engine_error(e.into()))?;
        if let Some(file) = target
            .ancestors()
            .skip(1)
            .take_while(|a| a.starts_with(&r.dir))
            .find(|a| a.exists() && !a.is_dir())
        {
            return Err(ApiError::bad_request(format!(
                "trees: {} cannot go to {}: {} is a file, not a directory",
                tree.name,
                target.display(),
                file.display()
            )));
        }
        if let Some(why) = crate::archive::files::busy::target_in_use(&target) {
            return Err(ApiError::conflict(format!(
                "{} is in use: {why} (a Prometheus on its data directory?); stop it first, nothing was written",
                target.display()
            )));
        }
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
        api.runner.start(job);
    }
    Ok(reply)
}

/// `cim.backup.files.<instance>.qry.check`: a file against a checksum, or a file or tree
/// against the tree a backup holds of it. Reads only inside the named root.
pub async fn check(
    api: &Api,
    request: &Request,
) -> Result<cim_backup_contracts::files::PathChecked, ApiError> {
    use cim_backup_contracts::files::{CheckPathQuery, PathChecked};
    let q: CheckPathQuery = parse(request)?;
    let ctx = api.runner.context();
    let root = ctx.root(&q.root).map_err(engine_error)?;
    let host = root.resolve(&q.path).map_err(|e| engine_error(e.into()))?;
    let meta = std::fs::symlink_metadata(&host).map_err(|_| {
        ApiError::not_found(format!(
            "{} does not exist on instance {}",
            host.display(),
            ctx.instance
        ))
    })?;
    let name = if q.path.is_empty() {
        q.root.clone()
    } else {
        format!("{}/{}", q.root, q.path)
    };
    if let Some(checksum) = &q.checksum {
        let want = checksum
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "checksum: {} is not sha256:<64 hex digits>",
                    cim_backup_contracts::text::echo(checksum)
                ))
            })?
            .to_ascii_lowercase();
        if !meta.is_file() {
            return Err(ApiError::bad_request(format!(
                "checksum: {} is a directory; a directory is checked against its backup (leave checksum out)",
                host.display()
            )));
        }
        let path = host.clone();
        let got = tokio::task::spawn_blocking(move || sha256_file(&path))
            .await
            .map_err(|e| ApiError::internal(format!("hashing stopped: {e}")))?
            .map_err(|e| ApiError::internal(format!("{}: {e}", host.display())))?;
        let differences = if got == want {
            Vec::new()
        } else {
            vec![cim_backup_contracts::files::SkippedFile {
                path: String::new(),
                reason: format!("sha256 is {got}, expected {want}"),
            }]
        };
        return Ok(PathChecked {
            host_path: host.display().to_string(),
            against: format!("sha256:{want}"),
            files: 1,
            bytes: meta.len(),
            sha256: Some(got),
            differences,
        });
    }
    // Against a backup's tree of it.
    let (backup, location, summary) = match (&q.backup, &q.source) {
        (None, None) => {
            let catalog = api.views.catalog().await?;
            let newest = catalog
                .iter()
                .filter_map(|e| {
                    e.trees
                        .iter()
                        .find(|t| t.name == name && t.instance == ctx.instance)
                        .map(|t| (e, t))
                })
                .max_by_key(|(e, _)| e.created_at)
                .ok_or_else(|| ApiError::not_found(format!(
                    "no backup of {name} from instance {} in the catalog; give a checksum, or the backup and its source",
                    ctx.instance
                )))?;
            (
                newest.0.backup_id.0,
                newest.0.destination.clone(),
                newest.1.clone(),
            )
        }
        (&backup, source) => {
            let located = super::resolve::locate(
                api,
                backup.unwrap_or(cim_backup_contracts::commands::BackupRef::Latest),
                None,
                source.as_deref(),
            )
            .await?;
            let manifest = super::resolve::manifest_at(api, &located).await?;
            let tree = manifest
                .trees
                .iter()
                .find(|t| t.name == name)
                .cloned()
                .ok_or_else(|| {
                    ApiError::not_found(format!("backup {} holds no tree {name}", located.backup))
                })?;
            (located.backup, located.location.url, tree)
        }
    };
    let store = ctx.destinations.open(&location)?;
    let tree = crate::archive::files::tree::get_tree(&store, &summary.tree).await?;
    let path = host.clone();
    let differences = tokio::task::spawn_blocking(move || compare(&path, &tree))
        .await
        .map_err(|e| ApiError::internal(format!("comparing stopped: {e}")))?;
    Ok(PathChecked {
        host_path: host.display().to_string(),
        against: format!("backup {backup} ({name})"),
        files: summary.files,
        bytes: summary.bytes,
        sha256: None,
        differences,
    })
}

fn sha256_file(path: &std::path::Path) -> std::io::Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Every difference between the tree on disk at `top` and `tree`: sizes and whole-file sha256
/// of files, link targets, entries missing on either side.
fn compare(
    top: &std::path::Path,
    tree: &crate::archive::files::TreeArchive,
) -> Vec<cim_backup_contracts::files::SkippedFile> {
    use crate::archive::files::EntryKind;
    let diff = |path: &str, reason: String| cim_backup_contracts::files::SkippedFile {
        path: path.to_owned(),
        reason,
    };
    let on_disk = match scan::scan(top) {
        Ok(s) => s,
        Err(e) => return vec![diff("", e.to_string())],
    };
    let found: BTreeMap<&str, &scan::ScannedEntry> = on_disk
        .entries
        .iter()
        .map(|e| (e.path.as_str(), e))
        .collect();
    let mut out = Vec::new();
    for e in &tree.entries {
        let Some(f) = found.get(e.path.as_str()) else {
            out.push(diff(&e.path, "missing".into()));
            continue;
        };
        match (&e.kind, &f.found) {
            (EntryKind::Dir, Found::Dir) => {}
            (EntryKind::Symlink { target }, Found::Symlink(t)) if t == target => {}
            (EntryKind::Symlink { target }, Found::Symlink(t)) => out.push(diff(
                &e.path,
                format!("links to {t}, the backup has {target}"),
            )),
            (EntryKind::File { size, sha256, .. }, Found::File { size: got }) => {
                if got != size {
                    out.push(diff(&e.path, format!("{got} bytes, the backup has {size}")));
                    continue;
                }
                match sha256_file(&f.abs) {
                    Ok(h) if &h == sha256 => {}
                    Ok(h) => out.push(diff(
                        &e.path,
                        format!("sha256 is {h}, the backup has {sha256}"),
                    )),
                    Err(x) => out.push(diff(&e.path, format!("unreadable: {x}"))),
                }
            }
            _ => out.push(diff(&e.path, "of another kind than in the backup".into())),
        }
    }
    let known: std::collections::HashSet<&str> =
        tree.entries.iter().map(|e| e.path.as_str()).collect();
    for e in &on_disk.entries {
        if !known.contains(e.path.as_str()) {
            out.push(diff(&e.path, "not in the backup".into()));
        }
    }
    out
}

/// Whether `given` names `tree`: its full name (`models/llama-3-8b`), or its last path
/// component (a model or checkpoint id).
fn names(tree: &cim_backup_contracts::files::TreeSummary, given: &str) -> bool {
    tree.name == given || tree.path.rsplit('/').next() == Some(given)
}

/// The newest of `entries` that holds the tree `given` names.
fn newest_holding(
    entries: Vec<cim_backup_contracts::views::CatalogEntry>,
    given: &str,
) -> Option<cim_backup_contracts::views::CatalogEntry> {
    entries
        .into_iter()
        .filter(|e| e.trees.iter().any(|t| names(t, given)))
        .max_by_key(|e| e.created_at)
}
