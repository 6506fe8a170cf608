//! A file tree as a manifest holds it (see `docs/ARCHIVE.md` § File trees): enough to put every
//! file back byte for byte, with its mode and mtime, and to check it without the original.

use bytes::Bytes;
use cim_backup_contracts::cid::{Cid, dag_cbor_cid, link, verifies};
use serde::{Deserialize, Serialize};

use super::error::FilesError;
use crate::archive::{ArchiveError, ArchiveStore};

/// Format of tree objects written: chunks named by BLAKE3 CIDs.
pub const TREE_FORMAT: &str = "cim-backup-tree/2";
/// The format before it, still read: chunks named by sha2-256 CIDs.
pub const TREE_FORMAT_1: &str = "cim-backup-tree/1";

/// Object key of a tree: `trees/<cid>` (DAG-CBOR, named by its CID like a manifest).
pub fn tree_key(cid: &Cid) -> String {
    format!("trees/{cid}")
}

/// Stores a tree object; returns its CID and size.
pub async fn put_tree(
    store: &ArchiveStore,
    tree: &TreeArchive,
) -> Result<(Cid, u64), ArchiveError> {
    let bytes = serde_ipld_dagcbor::to_vec(&Stored {
        format: TREE_FORMAT.into(),
        tree: tree.clone(),
    })
    .expect("trees always encode");
    let cid = dag_cbor_cid(&bytes);
    let size = bytes.len() as u64;
    store
        .put_if_absent(&tree_key(&cid), Bytes::from(bytes))
        .await?;
    Ok((cid, size))
}

/// Reads a tree object and checks it is the one `cid` names.
pub async fn get_tree(store: &ArchiveStore, cid: &Cid) -> Result<TreeArchive, ArchiveError> {
    let object = tree_key(cid);
    let bytes = store.get(&object).await?;
    if !verifies(cid, &bytes) {
        return Err(ArchiveError::corrupt(
            &object,
            "content does not match its CID (tampered or damaged)",
        ));
    }
    let stored: Stored = serde_ipld_dagcbor::from_slice(&bytes)
        .map_err(|e| ArchiveError::corrupt(&object, format!("not a tree: {e}")))?;
    let chunk_hash = match stored.format.as_str() {
        TREE_FORMAT => cim_backup_contracts::cid::BLAKE3,
        TREE_FORMAT_1 => cim_backup_contracts::cid::SHA2_256,
        other => {
            return Err(ArchiveError::corrupt(
                &object,
                format!("format {other:?} is neither {TREE_FORMAT} nor {TREE_FORMAT_1}"),
            ));
        }
    };
    // Each format names its chunks by one hash: a chunk named by another is a forgery.
    for e in &stored.tree.entries {
        if let EntryKind::File { chunks, .. } = &e.kind
            && let Some(c) = chunks.iter().find(|c| c.cid.hash().code() != chunk_hash)
        {
            return Err(ArchiveError::corrupt(
                &object,
                format!(
                    "{}: chunk {} is not named as {} names chunks",
                    e.path, c.cid, stored.format
                ),
            ));
        }
    }
    Ok(stored.tree)
}

#[derive(Serialize, Deserialize)]
struct Stored {
    format: String,
    tree: TreeArchive,
}

/// One tree inside a backup: a directory (or a single file) under a declared root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeArchive {
    /// The tree's name in the backup: `<root>/<path>`, or `<root>` for the whole root.
    pub name: String,
    /// The declared root it was read from (`[files.roots]`), e.g. `models`.
    pub root: String,
    /// Its path inside the root, `/`-separated; empty for the whole root.
    pub path: String,
    /// Where it was on the host that read it (shown to operators; restores never write there
    /// unless asked).
    pub host_path: String,
    /// The service instance that read it.
    pub instance: String,
    /// Whether the top is a directory (entries are relative to it) or one file (one entry,
    /// with the empty path).
    pub top: TopKind,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Sum of the files' sizes.
    pub bytes: u64,
    /// Bytes this backup uploaded for the tree (new blobs); the rest was already stored.
    pub stored_bytes: u64,
    /// Chunks the files are made of, and how many of them were new to the destination.
    pub chunks: u64,
    pub new_chunks: u64,
    /// Sorted by path, each directory before what it holds.
    pub entries: Vec<TreeEntry>,
    /// Files left out, with why (changed while being read, unreadable).
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopKind {
    Dir,
    File,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeEntry {
    /// Relative to the tree's top, `/`-separated, no `.` or `..` components.
    pub path: String,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    pub kind: EntryKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Dir,
    /// Stored as the link it is; never followed when reading, recreated as a link.
    Symlink {
        target: String,
    },
    File {
        size: u64,
        /// Hex sha256 of the whole file, as `sha256sum` prints it.
        sha256: String,
        chunks: Vec<ChunkRef>,
    },
}

/// One chunk of a file and where its blob is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    #[serde(with = "link")]
    pub cid: Cid,
    /// Plaintext length.
    pub len: u64,
    #[serde(with = "link")]
    pub pack: Cid,
    pub offset: u64,
    pub stored_len: u64,
    pub zstd: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

impl TreeArchive {
    /// Checks what a reader must be able to trust before writing anything: every path is
    /// relative and stays inside the tree, paths are unique and sorted, and a file top has one
    /// entry. A manifest is CID-verified, but a manifest written by someone else is only as
    /// careful as its writer.
    pub fn check_paths(&self) -> Result<(), FilesError> {
        if self.top == TopKind::File {
            return match self.entries.as_slice() {
                [e] if e.path.is_empty() && matches!(e.kind, EntryKind::File { .. }) => Ok(()),
                // The file was left out when it was backed up (still being written, say).
                [] if !self.skipped.is_empty() => Ok(()),
                _ => Err(FilesError::refused(
                    &self.name,
                    "a single-file tree must hold exactly one file entry with an empty path",
                )),
            };
        }
        let mut previous: Option<&str> = None;
        for e in &self.entries {
            check_relative(&e.path).map_err(|m| FilesError::refused(&self.name, m))?;
            if previous.is_some_and(|p| p >= e.path.as_str()) {
                return Err(FilesError::refused(
                    &self.name,
                    format!("entry {:?} is out of order or repeated", e.path),
                ));
            }
            previous = Some(&e.path);
        }
        Ok(())
    }

    /// The single file of a file-top tree, or the entry at `path`.
    pub fn entry(&self, path: &str) -> Option<&TreeEntry> {
        self.entries.iter().find(|e| e.path == path)
    }

    /// Every chunk reference, in file order.
    pub fn chunk_refs(&self) -> impl Iterator<Item = (&TreeEntry, &ChunkRef)> {
        self.entries.iter().flat_map(|e| match &e.kind {
            EntryKind::File { chunks, .. } => chunks.iter().map(move |c| (e, c)).collect(),
            _ => Vec::new(),
        })
    }
}

/// A relative `/`-separated path with no empty, `.` or `..` component.
pub fn check_relative(path: &str) -> Result<(), String> {
    if path.is_empty() || path.starts_with('/') {
        return Err(format!("path {path:?} is not relative"));
    }
    if path.contains('\0') || path.contains('\\') {
        return Err(format!("path {path:?} holds a NUL or a backslash"));
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!("path {path:?} has an empty, . or .. component"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(paths: &[&str]) -> TreeArchive {
        TreeArchive {
            name: "models/m".into(),
            root: "models".into(),
            path: "m".into(),
            host_path: "/x".into(),
            instance: "a".into(),
            top: TopKind::Dir,
            files: 0,
            dirs: paths.len() as u64,
            symlinks: 0,
            bytes: 0,
            stored_bytes: 0,
            chunks: 0,
            new_chunks: 0,
            entries: paths
                .iter()
                .map(|p| TreeEntry {
                    path: (*p).into(),
                    mode: 0o755,
                    mtime_ns: 0,
                    kind: EntryKind::Dir,
                })
                .collect(),
            skipped: vec![],
        }
    }

    #[test]
    fn escaping_or_unsorted_paths_are_refused() {
        assert!(tree(&["a", "a/b", "c"]).check_paths().is_ok());
        for bad in [
            &["../x"][..],
            &["/etc"],
            &["a//b"],
            &["a/./b"],
            &["b", "a"],
            &["a", "a"],
        ] {
            assert!(tree(bad).check_paths().is_err(), "{bad:?}");
        }
    }

    /// A tree with one file of one chunk named `chunk`, stored as `format`.
    async fn stored_as(format: &str, chunk: Cid) -> Result<TreeArchive, ArchiveError> {
        let store = ArchiveStore::new(
            std::sync::Arc::new(object_store::memory::InMemory::new()),
            object_store::path::Path::from("t"),
            "memory://t".into(),
        );
        let mut t = tree(&[]);
        t.entries.push(TreeEntry {
            path: "w.bin".into(),
            mode: 0o644,
            mtime_ns: 0,
            kind: EntryKind::File {
                size: 5,
                sha256: String::new(),
                chunks: vec![ChunkRef {
                    cid: chunk,
                    len: 5,
                    pack: chunk,
                    offset: 0,
                    stored_len: 5,
                    zstd: false,
                }],
            },
        });
        let bytes = serde_ipld_dagcbor::to_vec(&Stored {
            format: format.into(),
            tree: t,
        })
        .unwrap();
        let cid = dag_cbor_cid(&bytes);
        store
            .put_if_absent(&tree_key(&cid), Bytes::from(bytes))
            .await?;
        get_tree(&store, &cid).await
    }

    #[tokio::test]
    async fn each_tree_format_reads_only_its_own_chunk_ids() {
        use cim_backup_contracts::cid::{chunk_cid, raw_cid};
        let (blake3, sha2) = (chunk_cid(b"hello"), raw_cid(b"hello"));
        assert!(stored_as(TREE_FORMAT, blake3).await.is_ok());
        assert!(
            stored_as(TREE_FORMAT_1, sha2).await.is_ok(),
            "old trees still read"
        );
        for (format, chunk) in [(TREE_FORMAT, sha2), (TREE_FORMAT_1, blake3)] {
            let e = stored_as(format, chunk).await.unwrap_err().to_string();
            assert!(e.contains("is not named as"), "{format}: {e}");
        }
        let e = stored_as("cim-backup-tree/9", blake3)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("neither"), "{e}");
    }
}
