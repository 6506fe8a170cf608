//! File trees in the contract: what a request names (a declared root and a path inside it) and
//! what a backup records of each tree it stored. The tree itself (every file, its sha256 and
//! chunks) is an archive object, `trees/<cid>`; events and catalogs carry its summary and CID.

use serde::{Deserialize, Serialize};

use crate::cid::{Cid, link};

/// A tree to back up: `root` is a name the instance declares in `[files.roots]`, `path` is
/// inside it (`/`-separated, no `..`; empty for the whole root).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeRequest {
    pub root: String,
    #[serde(default)]
    pub path: String,
}

impl TreeRequest {
    /// The tree's name in a backup: `<root>/<path>`, or `<root>`.
    pub fn name(&self) -> String {
        if self.path.is_empty() {
            self.root.clone()
        } else {
            format!("{}/{}", self.root, self.path)
        }
    }
}

/// A file left out of a tree, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedFile {
    pub path: String,
    pub reason: String,
}

/// What a backup stored of one tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeSummary {
    /// `<root>/<path>`.
    pub name: String,
    pub root: String,
    pub path: String,
    /// The instance that read it, and where it was on that host.
    pub instance: String,
    pub host_path: String,
    /// The tree object `trees/<cid>` (DAG-CBOR).
    #[serde(with = "link")]
    pub tree: Cid,
    pub tree_bytes: u64,
    /// `dir` or `file`.
    pub top: String,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Sum of the files' sizes.
    pub bytes: u64,
    /// Bytes of packs this backup uploaded for the tree.
    pub stored_bytes: u64,
    pub chunks: u64,
    pub new_chunks: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedFile>,
}

/// One tree of a backup is stored (its packs, indexes and tree object are durable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeStored {
    pub tree: TreeSummary,
}

/// A root an instance declares, as announced in its micro-service metadata (`roots`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootInfo {
    pub name: String,
    pub path: String,
}

/// How far a backup is into its trees, recorded every few seconds while a tree is read so a
/// watcher sees a 70 GB model move. Totals are the job's: everything stored before plus the
/// tree being read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeProgressed {
    /// The tree being read.
    pub name: String,
    /// Bytes the job has read and hashed (streams' segments and trees' files).
    pub bytes_done: u64,
    /// Bytes the job has uploaded.
    pub stored_bytes: u64,
    /// Files of the current tree read so far.
    pub files_done: u64,
}

/// `cim.backup.files.<instance>.qry.models`: the models under a root of that instance. A model
/// is a directory or a file directly under the root (or under `path` inside it); its id is its
/// name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsQuery {
    /// Default `models`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// Only models with a file modified at or after this time.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub modified_since: Option<time::OffsetDateTime>,
}

/// One model as `list-gpu-models` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub id: String,
    pub root: String,
    /// Inside the root.
    pub path: String,
    /// `dir` or `file`.
    pub kind: String,
    pub files: u64,
    pub bytes: u64,
    /// Newest modification time of its files.
    #[serde(with = "time::serde::rfc3339")]
    pub modified: time::OffsetDateTime,
    /// Model files recognised, with what their headers say.
    pub formats: Vec<FileFormat>,
    /// The newest completed backup holding it, from the catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<LastBackup>,
    /// Whether it changed since that backup (newer files, another size or file count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_since_backup: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFormat {
    pub path: String,
    pub format: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastBackup {
    pub backup_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
    pub destination: String,
}
