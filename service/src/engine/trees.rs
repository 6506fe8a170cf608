//! Backing up file trees inside a backup job: after its streams, each requested tree in order
//! is read from a root this instance declares, its new chunks packed and uploaded, its tree
//! object written, and only then recorded (`TreeStored`). A job resumed after a crash goes on
//! with the first tree not recorded; chunks already in the destination (found through its pack
//! indexes) are not uploaded again.

use std::sync::atomic::Ordering;
use std::time::Duration;

use cim_backup_contracts::ErrorCode;
use cim_backup_contracts::events::BackupAccepted;
use cim_backup_contracts::files::{
    SkippedFile, TreeProgressed, TreeRequest, TreeStaging, TreeStored, TreeSummary,
};
use cim_backup_domain::backup::{BackupCommand, BackupJob};
use tokio_util::sync::CancellationToken;

use super::context::Context;
use super::error::EngineError;
use crate::archive::ArchiveStore;
use crate::archive::files::backup::{BackupSettings, FileBackup, TreeSource};
use crate::archive::files::tree::{TopKind, put_tree};
use crate::archive::files::{FilesError, scan};
use crate::jobs::{Job, execute};

/// How often a tree being read records its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Files read at once when the request does not say.
pub const DEFAULT_PARALLEL: u32 = 4;
/// The most a request may ask for.
pub const MAX_PARALLEL: u32 = 64;

impl From<FilesError> for EngineError {
    fn from(e: FilesError) -> Self {
        match e {
            FilesError::Archive(a) => EngineError::Archive(a),
            FilesError::Cancelled => EngineError::Cancelled,
            other => EngineError::precondition(other.code(), other.to_string()),
        }
    }
}

/// The source of a requested tree on this instance, or why it cannot be read here.
pub fn source(ctx: &Context, tree: &TreeRequest) -> Result<TreeSource, EngineError> {
    let root = ctx.root(&tree.root)?.clone();
    let top = root.resolve(&tree.path)?;
    // A staged tree is written by the job itself, just before it is read.
    if tree.stage.is_none() && std::fs::symlink_metadata(&top).is_err() {
        return Err(EngineError::precondition(
            ErrorCode::NotFound,
            format!(
                "{} does not exist on instance {} ({})",
                tree.name(),
                ctx.instance,
                top.display()
            ),
        ));
    }
    Ok(TreeSource {
        root,
        path: tree.path.clone(),
        instance: ctx.instance.clone(),
        complete_only: tree.complete_only,
        exclude: tree.exclude.clone(),
    })
}

/// Total size of the requested trees' files, for the job's estimate (a walk, nothing read).
pub async fn estimate_bytes(ctx: &Context, spec: &BackupAccepted) -> Result<u64, EngineError> {
    let mut tops = Vec::new();
    for tree in &spec.trees {
        let source = source(ctx, tree)?;
        tops.push(source.root.resolve(&source.path)?);
    }
    let total = tokio::task::spawn_blocking(move || {
        tops.iter()
            .filter_map(|top| scan::scan(top).ok())
            .flat_map(|s| s.entries)
            .map(|e| match e.found {
                scan::Found::File { size } => size,
                _ => 0,
            })
            .sum()
    })
    .await
    .expect("a walk does not panic");
    Ok(total)
}

/// Stores every tree the job has not recorded yet.
pub async fn store_trees(
    ctx: &Context,
    job: &mut Job<BackupJob>,
    archive: &ArchiveStore,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let spec = job.state.spec.clone().expect("a running backup has a spec");
    if job.state.next_tree().is_none() {
        return Ok(());
    }
    let settings = BackupSettings {
        parallel: spec
            .parallel
            .unwrap_or(DEFAULT_PARALLEL)
            .clamp(1, MAX_PARALLEL) as usize,
        zstd_level: (spec.compression.algorithm
            == cim_backup_contracts::commands::CompressionAlgorithm::Zstd)
            .then_some(spec.compression.level),
        encryption: spec.encryption.clone(),
    };
    let backup = FileBackup::open(archive.clone(), settings).await?;
    while let Some(request) = job.state.next_tree().cloned() {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        if let Some(stage) = &request.stage {
            write_stage(ctx, &request, stage).await?;
        }
        let source = source(ctx, &request)?;
        let (before_bytes, before_stored) = recorded(job);
        // The job's totals: what it recorded, plus what this tree has read and uploaded since
        // it began (the counters run over the whole job).
        let read_before = backup.counters.read.load(Ordering::Relaxed);
        let files_before = backup.counters.files.load(Ordering::Relaxed);
        let uploaded_before = backup.uploaded();
        let progress = |backup: &FileBackup, name: &str| TreeProgressed {
            name: name.to_owned(),
            bytes_done: before_bytes + backup.counters.read.load(Ordering::Relaxed) - read_before,
            stored_bytes: before_stored + backup.uploaded() - uploaded_before,
            files_done: backup.counters.files.load(Ordering::Relaxed) - files_before,
        };
        let stored = {
            let name = request.name();
            let work = backup.tree(&source, cancel);
            tokio::pin!(work);
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            tick.tick().await;
            loop {
                tokio::select! {
                    done = &mut work => break done?,
                    _ = tick.tick() => {
                        let p = progress(&backup, &name);
                        execute(&ctx.events, job, BackupCommand::RecordTreeProgress(p), None).await?;
                    }
                }
            }
        };
        let (cid, tree_bytes) = put_tree(archive, &stored).await?;
        let summary = TreeSummary {
            name: stored.name.clone(),
            root: stored.root.clone(),
            path: stored.path.clone(),
            instance: stored.instance.clone(),
            host_path: stored.host_path.clone(),
            tree: cid,
            tree_bytes,
            top: match stored.top {
                TopKind::Dir => "dir",
                TopKind::File => "file",
            }
            .into(),
            files: stored.files,
            dirs: stored.dirs,
            symlinks: stored.symlinks,
            bytes: stored.bytes,
            stored_bytes: stored.stored_bytes,
            chunks: stored.chunks,
            new_chunks: stored.new_chunks,
            skipped: stored
                .skipped
                .iter()
                .map(|s| SkippedFile {
                    path: s.path.clone(),
                    reason: s.reason.clone(),
                })
                .collect(),
        };
        let last = TreeProgressed {
            name: summary.name.clone(),
            bytes_done: before_bytes + summary.bytes,
            stored_bytes: before_stored + summary.stored_bytes,
            files_done: summary.files,
        };
        execute(
            &ctx.events,
            job,
            BackupCommand::RecordTreeProgress(last),
            None,
        )
        .await?;
        for s in &summary.skipped {
            tracing::warn!(job = %job.id, tree = %summary.name, file = %s.path, "left out: {}", s.reason);
        }
        tracing::info!(job = %job.id, tree = %summary.name, files = summary.files, bytes = summary.bytes, stored = summary.stored_bytes, "tree stored");
        execute(
            &ctx.events,
            job,
            BackupCommand::RecordTree(TreeStored { tree: summary }),
            None,
        )
        .await?;
        if request.remove_after {
            remove_snapshot(ctx, &source)?;
        }
        if let Some(export) = &request.export {
            let recipients = match export.encrypt {
                true => Some(ctx.keys.recipients().map_err(|e| {
                    EngineError::precondition(ErrorCode::BadRequest, format!("encrypt: {e}"))
                })?),
                false => None,
            };
            let tree = crate::archive::files::tree::get_tree(archive, &cid).await?;
            let written = crate::archive::files::export::write_tar_gz(
                archive,
                &ctx.keys,
                &tree,
                spec.encryption.is_some(),
                std::path::Path::new(&export.path),
                export.name.as_deref(),
                recipients.as_deref(),
            )
            .await?;
            tracing::info!(job = %job.id, output = %export.path, bytes = written, "tree written as tar.gz");
        }
    }
    Ok(())
}

/// Writes a staged tree's content into its directory, anew (a resumed job's partial export is
/// removed first: an export is only stored whole). Only ever inside `[grafana] staging_dir`.
async fn write_stage(
    ctx: &Context,
    request: &TreeRequest,
    stage: &TreeStaging,
) -> Result<(), EngineError> {
    let TreeStaging::Grafana {
        include_datasources,
    } = stage;
    let config = ctx.grafana.as_ref().ok_or_else(|| {
        EngineError::precondition(
            ErrorCode::NotFound,
            format!("instance {} has no [grafana] section", ctx.instance),
        )
    })?;
    let dir = ctx.root(&request.root)?.resolve(&request.path)?;
    if dir.parent() != Some(config.staging_dir.as_path()) {
        return Err(EngineError::precondition(
            ErrorCode::Forbidden,
            format!("{} is not in [grafana] staging_dir", dir.display()),
        ));
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| {
            EngineError::precondition(
                ErrorCode::Internal,
                format!("removing the partial export {}: {e}", dir.display()),
            )
        })?;
    }
    match crate::grafana::export(config, &dir, *include_datasources).await {
        Ok(_) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(EngineError::precondition(e.code(), e.to_string()))
        }
    }
}

/// After a backup failed or was cancelled: removes what the service staged for it (a Prometheus
/// snapshot, a Grafana export: trees with `remove_after`), which no later job will read (a new
/// backup takes a new snapshot). What is not a staging directory is left alone.
pub async fn abandon(ctx: &Context, job: &Job<BackupJob>) {
    let Some(spec) = &job.state.spec else { return };
    for tree in spec.trees.iter().filter(|t| t.remove_after) {
        let removed = source(ctx, tree).and_then(|source| remove_snapshot(ctx, &source));
        if let Err(e) = removed {
            tracing::debug!(job = %job.id, tree = %tree.name(), error = %e, "nothing staged to remove");
        }
    }
}

/// Removes a staged tree the job stored: only a directory directly under the configured
/// Prometheus server's `<data_dir>/snapshots/` or `[grafana] staging_dir`, never anything else
/// a request might name.
fn remove_snapshot(ctx: &Context, source: &TreeSource) -> Result<(), EngineError> {
    let dir = source.root.resolve(&source.path)?;
    let staging = [
        ctx.prometheus
            .as_ref()
            .map(|p| p.data_dir.join("snapshots")),
        ctx.grafana.as_ref().map(|g| g.staging_dir.clone()),
    ];
    let allowed = staging
        .iter()
        .flatten()
        .any(|parent| dir.parent() == Some(parent.as_path()));
    if !allowed {
        return Err(EngineError::precondition(
            ErrorCode::Forbidden,
            format!(
                "{} is neither a Prometheus snapshot of [prometheus] data_dir nor a Grafana export in [grafana] staging_dir; not removed",
                dir.display()
            ),
        ));
    }
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => tracing::info!(dir = %dir.display(), "removed the stored staging directory"),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove the stored staging directory")
        }
    }
    Ok(())
}

/// Bytes read and stored by what the job has recorded: its segments and its stored trees.
fn recorded(job: &Job<BackupJob>) -> (u64, u64) {
    let segments = job.state.segments.iter().map(|s| &s.segment);
    let trees = job.state.trees.iter();
    (
        segments.clone().map(|s| s.raw_bytes).sum::<u64>()
            + trees.clone().map(|t| t.bytes).sum::<u64>(),
        segments.map(|s| s.stored_bytes).sum::<u64>()
            + trees.map(|t| t.stored_bytes + t.tree_bytes).sum::<u64>(),
    )
}

/// Checks one stored tree: its object (CID), then in `structural` mode that every pack it uses
/// exists and is long enough, in `deep` mode every chunk and every file's sha256 (and
/// safetensors headers). The first findings fail the job, each naming the file and chunk.
pub async fn verify(
    archive: &ArchiveStore,
    keys: &crate::keys::Keys,
    summary: &TreeSummary,
    encrypted: bool,
    mode: cim_backup_contracts::events::VerifyMode,
) -> Result<(), EngineError> {
    use crate::archive::ArchiveError;
    use crate::archive::files::pack::pack_key;
    use cim_backup_contracts::events::VerifyMode;
    let tree = crate::archive::files::tree::get_tree(archive, &summary.tree).await?;
    if tree.name != summary.name || tree.bytes != summary.bytes || tree.files != summary.files {
        return Err(ArchiveError::corrupt(
            crate::archive::files::tree::tree_key(&summary.tree),
            format!(
                "holds {} ({} files, {} bytes), the manifest says {} ({} files, {} bytes)",
                tree.name, tree.files, tree.bytes, summary.name, summary.files, summary.bytes
            ),
        )
        .into());
    }
    match mode {
        VerifyMode::Structural => {
            let mut ends = std::collections::BTreeMap::new();
            for (_, c) in tree.chunk_refs() {
                let end = ends.entry(c.pack).or_insert(0u64);
                *end = (*end).max(c.offset + c.stored_len);
            }
            for (pack, end) in ends {
                let key = pack_key(&pack);
                match archive.size(&key).await? {
                    None => return Err(ArchiveError::Missing { object: key }.into()),
                    Some(size) if size < end => {
                        return Err(ArchiveError::corrupt(
                            &key,
                            format!("{size} bytes; tree {} needs {end}", tree.name),
                        )
                        .into());
                    }
                    Some(_) => {}
                }
            }
            Ok(())
        }
        VerifyMode::Deep => {
            let checked =
                crate::archive::files::verify::verify_tree(archive, keys, &tree, encrypted).await?;
            let Some(first) = checked.findings.first() else {
                return Ok(());
            };
            let more = match checked.findings.len() {
                1 => String::new(),
                n => format!(" (and {} more findings)", n - 1),
            };
            let place = match &first.chunk {
                Some(chunk) => format!("{}: {}: chunk {chunk}", first.tree, first.path),
                None => format!("{}: {}", first.tree, first.path),
            };
            Err(ArchiveError::corrupt(
                first
                    .object
                    .clone()
                    .unwrap_or_else(|| crate::archive::files::tree::tree_key(&summary.tree)),
                format!("{place}: {}{more}", first.problem),
            )
            .into())
        }
    }
}
