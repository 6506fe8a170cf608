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
    /// Only complete files: one that a process has open for writing, or that was modified in
    /// the last seconds, is left out with a note (training checkpoints being written).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub complete_only: bool,
    /// Remove the tree from the host once it is stored: set by the service for the Prometheus
    /// snapshot it took (refused from a client).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remove_after: bool,
    /// Paths left out (glob patterns on the path inside the tree: `*` within a name, `**`
    /// across names): set by the service for secrets (backup-nixos-config).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Also write the stored tree as a tar.gz on the host (set by the service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<TarExport>,
    /// What the job writes into the tree's (new) directory before reading it: set by the
    /// service for backup-grafana's export, refused from a client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<TreeStaging>,
}

/// Content the backup job itself produces for a tree, when it runs (so a slow source delays
/// the job, never the reply to its request).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TreeStaging {
    /// The configured Grafana (`[grafana]`) exported through its HTTP API.
    Grafana { include_datasources: bool },
}

/// A tar.gz of a stored tree, written from the archive (so it holds exactly what was stored),
/// entries named by their host path without the leading `/` (`etc/nixos/flake.nix`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TarExport {
    /// The host path to write (inside a root).
    pub path: String,
    /// age-encrypt the tar.gz to the service's recipients (`.tar.gz.age`).
    pub encrypt: bool,
    /// Name the entries under this relative path instead of the host path (`grafana/…` for
    /// an export staged in a temporary directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `cim.backup.files.<instance>.cmd.nixos`: back up the NixOS configuration (`[nixos]
/// config_dir`) and write it as a tar.gz. Secrets (`[nixos] secret_patterns`) are left out
/// unless `include_secrets`, and then the output is only ever written encrypted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NixosBackup {
    /// Host path of the tar.gz (`.tar.gz`; with secrets `.tar.gz.age`), inside a root.
    pub output: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub include_secrets: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

/// `cim.backup.files.<instance>.cmd.grafana`: export the configured Grafana (`[grafana]`)
/// through its HTTP API (folders, dashboards by uid, alert rules, and datasources when asked),
/// back the export up as a tree and write it as a tar.gz (`.tar.gz`, or `.tar.gz.age`
/// encrypted to the service's recipients) at `output`, inside a root.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrafanaBackup {
    /// Host path of the tar.gz, inside a root.
    pub output: String,
    /// Also export datasources (their settings; Grafana never returns their secrets).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub include_datasources: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

/// `cim.backup.files.<instance>.cmd.prometheus`: snapshot the configured Prometheus
/// (`[prometheus]`), back the snapshot up as a tree, then remove it from the server's disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusBackup {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypt: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
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

/// `cim.backup.files.<instance>.cmd.restore`: put trees of a backup back on this instance's
/// host. Each is written beside its target, checked, then renamed into place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreTrees {
    pub backup: crate::commands::BackupRef,
    /// Where the backup is stored (a name or URL); with `latest`: the newest backup there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// What to restore, each a tree of the backup and where it goes. Empty: every tree of the
    /// backup, each to where it was (its root and path).
    #[serde(default)]
    pub trees: Vec<TreePlacement>,
    /// Replace an existing target (kept aside until the new tree is in place).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overwrite: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

/// One tree of a backup and its target: a root of the instance and a path inside it (default:
/// where it was backed up from).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreePlacement {
    /// The tree's name in the backup (`models/llama-3-8b`), or its last path component (a
    /// model id) when that is unique in the backup.
    pub tree: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// A tree restore job was accepted: what goes where, decided at accept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeRestoreAccepted {
    #[serde(with = "link")]
    pub backup: Cid,
    pub source: String,
    pub source_url: String,
    /// In order; each tree's name in the backup, its tree object, and its target.
    pub trees: Vec<PlannedTree>,
    pub overwrite: bool,
    pub encrypted: bool,
    pub admission: crate::events::Admission,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedTree {
    pub name: String,
    #[serde(with = "link")]
    pub tree: Cid,
    pub files: u64,
    pub bytes: u64,
    /// The target: a root of the running instance and a path inside it.
    pub root: String,
    pub path: String,
}

/// The job began writing (totals from the plan).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeRestoreStarted {
    pub files: u64,
    pub bytes: u64,
}

/// Cumulative bytes written and checked, every few seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeRestoreProgressed {
    pub bytes_done: u64,
}

/// One tree is in place, every file checked against its sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeRestored {
    pub name: String,
    /// Where it is now on the instance's host.
    pub host_path: String,
    pub files: u64,
    pub bytes: u64,
    /// An existing tree was replaced.
    pub replaced: bool,
    /// It was already in place (a resumed job whose rename happened before a crash).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub already: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeRestoreCompleted {
    pub trees: Vec<TreeRestored>,
}

/// `cim.backup.files.<instance>.qry.check`: is a file or tree on the instance's host what it
/// should be? A file against `checksum` (`sha256:<hex>`, the whole file's); anything against
/// the tree of a backup (`backup`, default: the newest backup holding `<root>/<path>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckPathQuery {
    pub root: String,
    #[serde(default)]
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<crate::commands::BackupRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// What a path check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathChecked {
    /// The host path checked.
    pub host_path: String,
    /// What it was compared with: the given checksum, or a backup's tree.
    pub against: String,
    pub files: u64,
    pub bytes: u64,
    /// The whole file's sha256 (a single file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Every difference: a file whose sha256 or size differs, one missing, one not in the
    /// backup, a link that points elsewhere. Empty = it matches.
    pub differences: Vec<SkippedFile>,
}
