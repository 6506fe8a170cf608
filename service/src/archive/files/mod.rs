//! File trees in the archive: model weights, checkpoints, configuration, Prometheus blocks
//! (spec: `docs/ARCHIVE.md` § File trees).
//!
//! A file is cut into content-defined chunks ([`chunker`]); a chunk is named by the CID of its
//! plaintext, so the same bytes are stored once whatever file, version or backup holds them.
//! Chunks are stored as blobs ([`blob`]: zstd where it pays, age when the destination
//! encrypts) packed into pack objects of tens of MiB ([`pack`]): a 70 GB model is a few
//! thousand objects, not millions. Each pack has an index object, so a later backup (or a
//! resumed one) knows every chunk the destination already holds without reading packs.
//!
//! A backup's manifest lists each tree ([`tree`]): every file's size, mode, mtime, whole-file
//! sha256 and chunks with their pack locations; directories; symlinks as links, never followed.
//! [`scan`] reads a tree from disk, [`backup`] stores it, [`restore`] writes it back beside its
//! target and renames it into place, [`verify`] checks every chunk and every file's sha256, and
//! [`formats`] recognises model formats (safetensors, GGUF, PyTorch zip, ONNX).
//!
//! Nothing here talks to NATS: engines drive these modules, as for streams.

pub mod backup;
pub mod blob;
pub mod busy;
pub mod chunker;
pub mod error;
pub mod export;
pub mod formats;
pub mod pack;
pub mod restore;
pub mod scan;
pub mod tree;
pub mod verify;

pub use error::FilesError;
pub use tree::{EntryKind, TreeArchive, TreeEntry};
