//! Writing a tree back: into a temporary directory beside the target, every chunk checked
//! against its CID and every file against its sha256, then renamed into place. A reader of the
//! target sees the old tree or the whole new one, never half of it; an existing target is
//! replaced only when asked, and kept aside until the new one is in place.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::blob::{self, BlobShape};
use super::error::FilesError;
use super::pack::pack_key;
use super::tree::{ChunkRef, EntryKind, TopKind, TreeArchive, TreeEntry};
use crate::archive::{ArchiveError, ArchiveStore};
use crate::keys::Keys;

/// One ranged read fetches consecutive blobs of a pack up to this many bytes.
const READ_RUN: u64 = 32 * 1024 * 1024;

/// Calls `each` with every chunk of `refs`, in order, opened and checked (or with why it could
/// not be). Consecutive blobs of one pack are fetched with one ranged read.
pub async fn for_each_chunk(
    store: &ArchiveStore,
    keys: &Keys,
    refs: &[ChunkRef],
    encrypted: bool,
    mut each: impl FnMut(&ChunkRef, Result<Vec<u8>, ArchiveError>) -> Result<(), FilesError>,
) -> Result<(), FilesError> {
    let mut i = 0;
    while i < refs.len() {
        let first = &refs[i];
        let mut j = i + 1;
        let mut end = first.offset + first.stored_len;
        while j < refs.len()
            && refs[j].pack == first.pack
            && refs[j].offset == end
            && end + refs[j].stored_len - first.offset <= READ_RUN
        {
            end += refs[j].stored_len;
            j += 1;
        }
        let object = pack_key(&first.pack);
        match store.get_range(&object, first.offset..end).await {
            Ok(bytes) => {
                for r in &refs[i..j] {
                    let at = (r.offset - first.offset) as usize;
                    let stored = &bytes[at..at + r.stored_len as usize];
                    let shape = BlobShape {
                        cid: &r.cid,
                        raw_len: r.len,
                        zstd: r.zstd,
                        encrypted,
                    };
                    each(r, blob::open(stored, shape, keys, &object))?;
                }
            }
            Err(e) => {
                for r in &refs[i..j] {
                    let again = match &e {
                        ArchiveError::Missing { object } => ArchiveError::Missing {
                            object: object.clone(),
                        },
                        other => ArchiveError::corrupt(&object, other.to_string()),
                    };
                    each(r, Err(again))?;
                }
            }
        }
        i = j;
    }
    Ok(())
}

/// What a restore wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub files: u64,
    pub bytes: u64,
    /// An existing target was replaced.
    pub replaced: bool,
}

/// Where a restore writes.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The tree's new path; its parent must exist.
    pub path: &'a Path,
    /// Replace an existing tree there (kept aside until the new one is in place).
    pub overwrite: bool,
    /// Names the temporary and safety copies (the job id), so a rerun of the same job finds
    /// and replaces its own leftovers.
    pub tag: &'a str,
    /// Counts the bytes written and checked, for a job's progress.
    pub written: Option<&'a std::sync::atomic::AtomicU64>,
}

/// Restores `tree` to `target`.
pub async fn restore_tree(
    store: &ArchiveStore,
    keys: &Keys,
    tree: &TreeArchive,
    encrypted: bool,
    target: Target<'_>,
    cancel: &CancellationToken,
) -> Result<Restored, FilesError> {
    let Target {
        path: target,
        overwrite,
        tag,
        written: counter,
    } = target;
    tree.check_paths()?;
    let shown = target.display().to_string();
    if tree.top == TopKind::File && tree.entries.is_empty() {
        let why = tree.skipped.first().map_or("", |s| s.reason.as_str());
        return Err(FilesError::refused(
            &tree.name,
            format!("the backup holds no copy of it: it was left out when backed up ({why})"),
        ));
    }
    let (parent, name) = match (target.parent(), target.file_name().and_then(|n| n.to_str())) {
        (Some(p), Some(n)) => (p.to_owned(), n.to_owned()),
        _ => {
            return Err(FilesError::refused(
                &shown,
                "not a path a tree can be restored to",
            ));
        }
    };
    if !parent.is_dir() {
        return Err(FilesError::refused(
            &shown,
            format!("{} is not a directory", parent.display()),
        ));
    }
    let exists = std::fs::symlink_metadata(target).is_ok();
    if exists && !overwrite {
        return Err(FilesError::Exists { path: shown });
    }
    let temp = parent.join(format!(".{name}.cim-restore-{tag}"));
    remove_any(&temp).map_err(|e| FilesError::io(temp.display(), e))?;
    let written = write_all(store, keys, tree, encrypted, &temp, counter, cancel).await;
    let restored = match written {
        Ok(r) => r,
        Err(e) => {
            let _ = remove_any(&temp);
            // A single file's entry has the empty path: name it by its tree.
            return Err(match e {
                FilesError::Damaged { path, message } if path.is_empty() => FilesError::Damaged {
                    path: tree.name.clone(),
                    message,
                },
                other => other,
            });
        }
    };
    let safety = parent.join(format!(".{name}.cim-previous-{tag}"));
    if exists && let Some(why) = super::busy::target_in_use(target) {
        let _ = remove_any(&temp);
        return Err(FilesError::Busy {
            path: shown,
            message: format!("in use: {why}; stop it first (nothing was replaced)"),
        });
    }
    if exists {
        remove_any(&safety).map_err(|e| FilesError::io(safety.display(), e))?;
        std::fs::rename(target, &safety).map_err(|e| FilesError::io(&shown, e))?;
    }
    if let Err(e) = std::fs::rename(&temp, target) {
        if exists {
            let _ = std::fs::rename(&safety, target);
        }
        let _ = remove_any(&temp);
        return Err(FilesError::io(&shown, e));
    }
    sync_dir(&parent);
    if exists {
        // The new tree is in place and every file of it checked while written.
        if let Err(e) = remove_any(&safety) {
            tracing::warn!(path = %safety.display(), error = %e, "the replaced tree could not be removed");
        }
    }
    Ok(Restored {
        replaced: exists,
        ..restored
    })
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn time_of(ns: i64) -> SystemTime {
    if ns >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

async fn write_all(
    store: &ArchiveStore,
    keys: &Keys,
    tree: &TreeArchive,
    encrypted: bool,
    temp: &Path,
    counter: Option<&std::sync::atomic::AtomicU64>,
    cancel: &CancellationToken,
) -> Result<Restored, FilesError> {
    let mut restored = Restored {
        files: 0,
        bytes: 0,
        replaced: false,
    };
    if tree.top == TopKind::File {
        let entry = &tree.entries[0];
        write_file(store, keys, entry, encrypted, temp, counter, cancel).await?;
        restored.files = 1;
        restored.bytes = file_size(entry);
        return Ok(restored);
    }
    std::fs::create_dir(temp).map_err(|e| FilesError::io(temp.display(), e))?;
    let at = |e: &TreeEntry| -> PathBuf { temp.join(&e.path) };
    let mut links = Vec::new();
    for e in &tree.entries {
        match &e.kind {
            EntryKind::Dir => {
                std::fs::create_dir(at(e)).map_err(|x| FilesError::io(at(e).display(), x))?
            }
            EntryKind::File { .. } => {
                write_file(store, keys, e, encrypted, &at(e), counter, cancel).await?;
                restored.files += 1;
                restored.bytes += file_size(e);
            }
            // Links last: nothing is ever written through one.
            EntryKind::Symlink { target } => links.push((at(e), target.clone())),
        }
    }
    for (at, target) in links {
        std::os::unix::fs::symlink(&target, &at).map_err(|e| FilesError::io(at.display(), e))?;
    }
    // Directories' modes and times last, deepest first (writing into them changes mtime).
    for e in tree
        .entries
        .iter()
        .rev()
        .filter(|e| matches!(e.kind, EntryKind::Dir))
    {
        set_meta_path(&at(e), e)?;
    }
    sync_dir(temp);
    Ok(restored)
}

fn file_size(e: &TreeEntry) -> u64 {
    match &e.kind {
        EntryKind::File { size, .. } => *size,
        _ => 0,
    }
}

fn set_meta_path(path: &Path, e: &TreeEntry) -> Result<(), FilesError> {
    let shown = path.display().to_string();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(e.mode))
        .map_err(|x| FilesError::io(&shown, x))?;
    let f = std::fs::File::open(path).map_err(|x| FilesError::io(&shown, x))?;
    f.set_modified(time_of(e.mtime_ns))
        .map_err(|x| FilesError::io(&shown, x))
}

/// Writes one file, checking every chunk and the whole file's sha256 before it counts.
async fn write_file(
    store: &ArchiveStore,
    keys: &Keys,
    e: &TreeEntry,
    encrypted: bool,
    at: &Path,
    counter: Option<&std::sync::atomic::AtomicU64>,
    cancel: &CancellationToken,
) -> Result<(), FilesError> {
    use std::io::Write;
    let EntryKind::File {
        size,
        sha256,
        chunks,
    } = &e.kind
    else {
        unreachable!("write_file is called for files")
    };
    let shown = at.display().to_string();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(at)
        .map_err(|x| FilesError::io(&shown, x))?;
    let mut whole = Sha256::new();
    let mut written = 0u64;
    for_each_chunk(store, keys, chunks, encrypted, |r, chunk| {
        if cancel.is_cancelled() {
            return Err(FilesError::Cancelled);
        }
        let chunk = chunk.map_err(|x| FilesError::Damaged {
            path: e.path.clone(),
            message: format!("chunk {} at byte {written}: {x}", r.cid),
        })?;
        whole.update(&chunk);
        written += chunk.len() as u64;
        if let Some(c) = counter {
            c.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        file.write_all(&chunk)
            .map_err(|x| FilesError::io(&shown, x))
    })
    .await?;
    let got = format!("{:x}", whole.finalize());
    if written != *size || &got != sha256 {
        return Err(FilesError::Damaged {
            path: e.path.clone(),
            message: format!(
                "rebuilt {written} bytes with sha256 {got}; the backup says {size} bytes, {sha256}"
            ),
        });
    }
    file.set_permissions(std::fs::Permissions::from_mode(e.mode))
        .map_err(|x| FilesError::io(&shown, x))?;
    file.set_modified(time_of(e.mtime_ns))
        .map_err(|x| FilesError::io(&shown, x))?;
    file.sync_all().map_err(|x| FilesError::io(&shown, x))
}

/// Whether `target` holds exactly `tree` as a restore leaves it: the same entries, and files
/// with the same size, mode and mtime, links with the same target. A resumed job uses it to
/// tell its own finished rename from someone else's tree.
pub fn matches_tree(target: &Path, tree: &TreeArchive) -> bool {
    let Ok(found) = super::scan::scan(target) else {
        return false;
    };
    if found.entries.len() != tree.entries.len() || !found.skipped.is_empty() {
        return false;
    }
    found.entries.iter().zip(&tree.entries).all(|(f, e)| {
        f.path == e.path
            && match (&f.found, &e.kind) {
                (super::scan::Found::Dir, EntryKind::Dir) => f.mode == e.mode,
                (super::scan::Found::Symlink(a), EntryKind::Symlink { target }) => a == target,
                (super::scan::Found::File { size }, EntryKind::File { size: want, .. }) => {
                    size == want && f.mode == e.mode && f.mtime_ns == e.mtime_ns
                }
                _ => false,
            }
    })
}
