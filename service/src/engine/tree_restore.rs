//! The tree restore engine: each planned tree of a backup, in order, written beside its target
//! on this instance's host, every chunk and file checked, renamed into place, and only then
//! recorded (`TreeRestored`). A resumed job goes on with the first tree not recorded; one whose
//! rename happened just before a crash is recognised in place (same entries, sizes, modes and
//! mtimes) rather than refused as an existing target.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cim_backup_contracts::files::{
    TreeRestoreCompleted, TreeRestoreProgressed, TreeRestoreStarted, TreeRestored,
};
use cim_backup_contracts::views::JobState;
use cim_backup_domain::tree_restore::{TreeRestoreCommand, TreeRestoreJob};
use tokio_util::sync::CancellationToken;

use super::context::Context;
use super::error::EngineError;
use crate::archive::files::restore::{Target, matches_tree, restore_tree};
use crate::archive::files::tree::get_tree;
use crate::jobs::{Job, execute};

/// How often a restore records its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

pub async fn run(
    ctx: &Context,
    job: &mut Job<TreeRestoreJob>,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let spec = job.state.spec.clone().ok_or(EngineError::Rejected(
        cim_backup_domain::DomainError::NotCreated,
    ))?;
    let resumed = job.state.lifecycle.state == Some(JobState::Running);
    if job.state.lifecycle.state == Some(JobState::Accepted) {
        let started = TreeRestoreStarted {
            files: spec.trees.iter().map(|t| t.files).sum(),
            bytes: spec.trees.iter().map(|t| t.bytes).sum(),
        };
        execute(&ctx.events, job, TreeRestoreCommand::Start(started), None).await?;
    }
    let archive = ctx.destinations.open(&spec.source_url)?;
    while let Some(planned) = job.state.next_tree().cloned() {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let root = ctx.root(&planned.root)?;
        let target = root.resolve(&planned.path)?;
        let tree = get_tree(&archive, &planned.tree).await?;
        // Parents made for this tree are removed again if it fails: a failure leaves the
        // host as it was.
        let made: Vec<std::path::PathBuf> = target
            .ancestors()
            .skip(1)
            .take_while(|a| !a.exists())
            .map(|a| a.to_owned())
            .collect();
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                EngineError::from(crate::archive::files::FilesError::io(parent.display(), e))
            })?;
        }
        let unmake = || {
            for dir in &made {
                let _ = std::fs::remove_dir(dir); // only if still empty
            }
        };
        let before = job.state.bytes_done;
        let restored = if resumed && matches_tree(&target, &tree) {
            TreeRestored {
                name: planned.name.clone(),
                host_path: target.display().to_string(),
                files: tree.files,
                bytes: tree.bytes,
                replaced: false,
                already: true,
            }
        } else {
            let written = AtomicU64::new(0);
            let tag = job.id.to_string();
            let work = restore_tree(
                &archive,
                &ctx.keys,
                &tree,
                spec.encrypted,
                Target {
                    path: &target,
                    overwrite: spec.overwrite,
                    tag: &tag,
                    written: Some(&written),
                },
                cancel,
            );
            tokio::pin!(work);
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            tick.tick().await;
            let done = loop {
                tokio::select! {
                    done = &mut work => match done {
                        Ok(done) => break done,
                        Err(e) => {
                            unmake();
                            return Err(e.into());
                        }
                    },
                    _ = tick.tick() => {
                        let p = TreeRestoreProgressed { bytes_done: before + written.load(Ordering::Relaxed) };
                        execute(&ctx.events, job, TreeRestoreCommand::Progress(p), None).await?;
                    }
                }
            };
            TreeRestored {
                name: planned.name.clone(),
                host_path: target.display().to_string(),
                files: done.files,
                bytes: done.bytes,
                replaced: done.replaced,
                already: false,
            }
        };
        let p = TreeRestoreProgressed {
            bytes_done: before + restored.bytes,
        };
        execute(&ctx.events, job, TreeRestoreCommand::Progress(p), None).await?;
        tracing::info!(job = %job.id, tree = %restored.name, at = %restored.host_path, files = restored.files, "tree restored");
        execute(
            &ctx.events,
            job,
            TreeRestoreCommand::RecordTree(restored),
            None,
        )
        .await?;
    }
    let done = TreeRestoreCompleted {
        trees: job.state.restored.clone(),
    };
    execute(&ctx.events, job, TreeRestoreCommand::Complete(done), None).await?;
    Ok(())
}
