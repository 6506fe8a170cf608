//! Storing trees: files are read once, cut into chunks, and only chunks the destination does
//! not hold yet are sealed and packed. Reading, sealing and uploading overlap: `parallel` files
//! are read at once, `parallel` chunks are sealed at once, and one pack uploads while the next
//! fills, so memory stays bounded (windows, a few chunks, two packs) whatever the file sizes.
//!
//! A file is read between two looks at its metadata; if its size, mtime, ctime or inode moved,
//! it is read again (up to [`READ_TRIES`] times) and otherwise left out with a note. A torn
//! file is never stored.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cim_backup_contracts::cid::Cid;
use cim_backup_contracts::events::Encryption;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::blob;
use super::chunker::Chunker;
use super::error::FilesError;
use super::pack::{self, KnownChunks, PackBuilder, PackIndex};
use super::scan::{self, Found, Root};
use super::tree::{ChunkRef, EntryKind, Skipped, TreeArchive, TreeEntry};
use crate::archive::ArchiveStore;

/// Reads of a file that keeps changing before it is left out.
pub const READ_TRIES: usize = 3;

/// How a backup stores chunks.
#[derive(Debug, Clone)]
pub struct BackupSettings {
    /// Files read, and chunks sealed, at once.
    pub parallel: usize,
    /// zstd level for chunks that compress; `None` stores every chunk as it is.
    pub zstd_level: Option<i32>,
    /// Recipients and the scheme recorded in pack indexes, when the destination encrypts.
    pub encryption: Option<Encryption>,
}

/// What a tree backup reads.
#[derive(Debug, Clone)]
pub struct TreeSource {
    pub root: Root,
    /// Inside the root; empty for the whole root.
    pub path: String,
    pub instance: String,
    /// Leave out files still being written ([`super::busy`]).
    pub complete_only: bool,
    /// Leave out what these glob patterns match ([`scan::matches_glob`]), with a note.
    pub exclude: Vec<String>,
}

impl TreeSource {
    pub fn name(&self) -> String {
        if self.path.is_empty() {
            self.root.name.clone()
        } else {
            format!("{}/{}", self.root.name, self.path)
        }
    }
}

#[derive(Debug, Default)]
struct Claims {
    known: KnownChunks,
    /// Chunks some reader is sending to the packer now.
    pending: HashSet<Cid>,
}

/// Counters a job reads for its progress.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes of files read and hashed.
    pub read: AtomicU64,
    /// Bytes of packs uploaded.
    pub uploaded: AtomicU64,
    pub files: AtomicU64,
}

/// One job's file backups: what the destination holds is learnt once, and chunks are shared
/// by every tree the job stores.
pub struct FileBackup {
    store: ArchiveStore,
    settings: BackupSettings,
    claims: Arc<Mutex<Claims>>,
    pub counters: Arc<Counters>,
}

/// One file as read.
enum FileRead {
    Stored {
        size: u64,
        mode: u32,
        mtime_ns: i64,
        sha256: String,
        chunks: Vec<(Cid, u64)>,
        new_chunks: u64,
    },
    Skipped(String),
}

impl FileBackup {
    pub async fn open(store: ArchiveStore, settings: BackupSettings) -> Result<Self, FilesError> {
        let known = KnownChunks::load(&store, settings.encryption.as_ref()).await?;
        tracing::info!(
            destination = store.url(),
            chunks = known.len(),
            "chunks already stored"
        );
        Ok(FileBackup {
            store,
            settings,
            claims: Arc::new(Mutex::new(Claims {
                known,
                pending: HashSet::new(),
            })),
            counters: Arc::default(),
        })
    }

    /// Stores one tree; returns it as the manifest will hold it.
    pub async fn tree(
        &self,
        source: &TreeSource,
        cancel: &CancellationToken,
    ) -> Result<TreeArchive, FilesError> {
        let top = source.root.resolve(&source.path)?;
        let scanned = {
            let top = top.clone();
            let exclude = source.exclude.clone();
            tokio::task::spawn_blocking(move || scan::scan_excluding(&top, &exclude))
                .await
                .expect("scan does not panic")?
        };
        let uploaded_before = self.uploaded();
        let parallel = self.settings.parallel.max(1);
        let (tx, rx) = mpsc::channel::<(Cid, Vec<u8>)>(parallel);
        let packer = tokio::spawn(pack_chunks(
            self.store.clone(),
            self.settings.clone(),
            self.claims.clone(),
            self.counters.clone(),
            rx,
        ));

        let files: Vec<(String, PathBuf)> = scanned
            .entries
            .iter()
            .filter(|e| matches!(e.found, Found::File { .. }))
            .map(|e| (e.path.clone(), e.abs.clone()))
            .collect();
        let reads = futures::stream::iter(files)
            .map(|(path, abs)| {
                let tx = tx.clone();
                let claims = self.claims.clone();
                let counters = self.counters.clone();
                let cancel = cancel.clone();
                let complete_only = source.complete_only;
                async move {
                    let shown = abs.display().to_string();
                    let read = tokio::task::spawn_blocking(move || {
                        if complete_only && let Some(why) = super::busy::still_being_written(&abs) {
                            return Ok(FileRead::Skipped(why));
                        }
                        read_file(&abs, &tx, &claims, &counters, &cancel)
                    })
                    .await
                    .map_err(|e| FilesError::Io {
                        path: shown,
                        message: format!("reader stopped: {e}"),
                    })??;
                    Ok::<_, FilesError>((path, read))
                }
            })
            .buffer_unordered(parallel)
            .collect::<Vec<_>>()
            .await;
        drop(tx);
        let packed = packer.await.expect("the packer does not panic");
        let mut by_path = HashMap::new();
        for r in reads {
            match r {
                Ok((path, read)) => {
                    by_path.insert(path, read);
                }
                // The packer's error (a store that failed) explains a reader's "packer stopped".
                Err(e) => return Err(packed.err().unwrap_or(e)),
            }
        }
        packed?;
        let mut tree = self.assemble(source, &top, scanned, by_path)?;
        // The tree's packs are all uploaded once the packer ends, so the difference is exact.
        tree.stored_bytes = self.uploaded() - uploaded_before;
        Ok(tree)
    }

    fn assemble(
        &self,
        source: &TreeSource,
        top: &std::path::Path,
        scanned: scan::Scanned,
        mut reads: HashMap<String, FileRead>,
    ) -> Result<TreeArchive, FilesError> {
        let claims = self.claims.lock().expect("claims lock");
        let mut tree = TreeArchive {
            name: source.name(),
            root: source.root.name.clone(),
            path: source.path.clone(),
            host_path: top.display().to_string(),
            instance: source.instance.clone(),
            top: scanned.top,
            files: 0,
            dirs: 0,
            symlinks: 0,
            bytes: 0,
            stored_bytes: 0,
            chunks: 0,
            new_chunks: 0,
            entries: Vec::with_capacity(scanned.entries.len()),
            skipped: scanned
                .skipped
                .into_iter()
                .map(|(path, reason)| Skipped { path, reason })
                .collect(),
        };
        for e in scanned.entries {
            let kind = match e.found {
                Found::Dir => {
                    tree.dirs += 1;
                    EntryKind::Dir
                }
                Found::Symlink(target) => {
                    tree.symlinks += 1;
                    EntryKind::Symlink { target }
                }
                Found::File { .. } => match reads.remove(&e.path) {
                    Some(FileRead::Stored {
                        size,
                        mode,
                        mtime_ns,
                        sha256,
                        chunks,
                        new_chunks,
                    }) => {
                        let chunks = chunks
                            .iter()
                            .map(|(cid, _)| {
                                claims
                                    .known
                                    .get(cid)
                                    .cloned()
                                    .ok_or_else(|| FilesError::Io {
                                        path: e.abs.display().to_string(),
                                        message: format!("chunk {cid} was not stored"),
                                    })
                            })
                            .collect::<Result<Vec<ChunkRef>, _>>()?;
                        tree.files += 1;
                        tree.bytes += size;
                        tree.chunks += chunks.len() as u64;
                        tree.new_chunks += new_chunks;
                        tree.entries.push(TreeEntry {
                            path: e.path,
                            mode,
                            mtime_ns,
                            kind: EntryKind::File {
                                size,
                                sha256,
                                chunks,
                            },
                        });
                        continue;
                    }
                    Some(FileRead::Skipped(reason)) => {
                        tree.skipped.push(Skipped {
                            path: e.path,
                            reason,
                        });
                        continue;
                    }
                    None => continue,
                },
            };
            tree.entries.push(TreeEntry {
                path: e.path,
                mode: e.mode,
                mtime_ns: e.mtime_ns,
                kind,
            });
        }
        Ok(tree)
    }

    /// Bytes of packs this job uploaded so far.
    pub fn uploaded(&self) -> u64 {
        self.counters.uploaded.load(Ordering::Relaxed)
    }
}

/// The identity of a file's content as the file system sees it: if any of these moved while
/// the file was read, the bytes read may be torn.
fn fingerprint(m: &std::fs::Metadata) -> (u64, u64, i64, i64, u64) {
    (
        m.len(),
        m.ino(),
        scan::mtime_ns(m),
        m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        m.dev(),
    )
}

/// Why reading a file stopped before its end.
enum Stop {
    Io(std::io::Error),
    PackerStopped,
    Files(FilesError),
}

impl From<std::io::Error> for Stop {
    fn from(e: std::io::Error) -> Self {
        Stop::Io(e)
    }
}

fn read_file(
    abs: &std::path::Path,
    tx: &mpsc::Sender<(Cid, Vec<u8>)>,
    claims: &Mutex<Claims>,
    counters: &Counters,
    cancel: &CancellationToken,
) -> Result<FileRead, FilesError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let shown = || abs.display().to_string();
    let mut chunker = Chunker::new();
    let mut last_change = String::new();
    for _ in 0..READ_TRIES {
        let before = std::fs::symlink_metadata(abs).map_err(|e| FilesError::io(shown(), e))?;
        if !before.is_file() {
            return Ok(FileRead::Skipped("no longer a regular file".into()));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(abs)
            .map_err(|e| FilesError::io(shown(), e))?;
        let mut whole = Sha256::new();
        let mut chunks = Vec::new();
        let mut new_chunks = 0;
        let read = chunker.chunks(&file, |chunk: &[u8]| {
            if cancel.is_cancelled() {
                return Err(Stop::Files(FilesError::Cancelled));
            }
            whole.update(chunk);
            let cid = blob::chunk_cid(chunk);
            chunks.push((cid, chunk.len() as u64));
            let new = {
                let mut c = claims.lock().expect("claims lock");
                !c.known.contains(&cid) && c.pending.insert(cid)
            };
            if new {
                new_chunks += 1;
                tx.blocking_send((cid, chunk.to_vec()))
                    .map_err(|_| Stop::PackerStopped)?;
            }
            counters
                .read
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            Ok(())
        });
        let read = read.map_err(|e| match e {
            Stop::Io(e) => FilesError::io(shown(), e),
            Stop::PackerStopped => FilesError::Io {
                path: shown(),
                message: "the packer stopped".into(),
            },
            Stop::Files(e) => e,
        })?;
        let during = file.metadata().map_err(|e| FilesError::io(shown(), e))?;
        let after = std::fs::symlink_metadata(abs).map_err(|e| FilesError::io(shown(), e))?;
        let same = fingerprint(&before) == fingerprint(&during)
            && fingerprint(&before) == fingerprint(&after)
            && read == before.len();
        if same {
            counters.files.fetch_add(1, Ordering::Relaxed);
            return Ok(FileRead::Stored {
                size: read,
                mode: before.permissions().mode() & 0o7777,
                mtime_ns: scan::mtime_ns(&before),
                sha256: format!("{:x}", whole.finalize()),
                chunks,
                new_chunks,
            });
        }
        last_change = format!(
            "changed while being read ({} bytes before, {} read, {} after)",
            before.len(),
            read,
            after.len()
        );
        tracing::warn!(file = %abs.display(), "{last_change}; reading it again");
    }
    Ok(FileRead::Skipped(format!(
        "{last_change}, {READ_TRIES} times: left out"
    )))
}

/// Seals new chunks (in parallel) into packs and uploads them, one pack in flight while the
/// next fills. Uploaded packs' chunks become known, so later trees and files reuse them.
async fn pack_chunks(
    store: ArchiveStore,
    settings: BackupSettings,
    claims: Arc<Mutex<Claims>>,
    counters: Arc<Counters>,
    mut rx: mpsc::Receiver<(Cid, Vec<u8>)>,
) -> Result<(), FilesError> {
    let recipients: Option<Arc<Vec<String>>> = settings
        .encryption
        .as_ref()
        .map(|e| Arc::new(e.recipients.clone()));
    let level = settings.zstd_level;
    let mut sealed = futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .map(|(cid, data)| {
            let recipients = recipients.clone();
            tokio::task::spawn_blocking(move || {
                blob::seal(&data, cid, level, recipients.as_deref().map(Vec::as_slice))
            })
        })
        .buffer_unordered(settings.parallel.max(1));
    let mut builder = PackBuilder::default();
    let mut uploading: Option<tokio::task::JoinHandle<Result<PackIndex, FilesError>>> = None;
    let finish = |index: PackIndex| {
        let mut c = claims.lock().expect("claims lock");
        for b in &index.blobs {
            c.pending.remove(&b.cid);
        }
        c.known.add(&index);
    };
    loop {
        let next = sealed.next().await;
        let end = next.is_none();
        if let Some(blob) = next {
            builder.push(blob.expect("sealing does not panic")?);
        }
        if (end || builder.is_full())
            && let Some(pack) = builder.seal(settings.encryption.clone())
        {
            if let Some(previous) = uploading.take() {
                finish(previous.await.expect("uploads do not panic")?);
            }
            let store = store.clone();
            let counters = counters.clone();
            uploading = Some(tokio::spawn(async move {
                let bytes = pack::upload(&store, &pack).await?;
                counters.uploaded.fetch_add(bytes, Ordering::Relaxed);
                Ok(pack.index)
            }));
        }
        if end {
            break;
        }
    }
    if let Some(last) = uploading.take() {
        finish(last.await.expect("uploads do not panic")?);
    }
    Ok(())
}
