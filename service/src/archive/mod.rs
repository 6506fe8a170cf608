//! The portable archive: content-addressed segments and manifests (spec: `docs/ARCHIVE.md`).
//!
//! The persisted format is kept apart from the operations that use it (as in rustic_core):
//! engines call these modules; nothing here talks to NATS.
//!
//! # Layout
//! - [`record`] — the framing of one message inside a segment, and the header block codec.
//! - [`segment`] — building (compress + name) and opening (verify + decompress + iterate) segments.
//! - [`part`] — parts of a server snapshot (snapshot mode).
//! - [`manifest`] — the manifest: what a backup holds; its CID is the backup id.
//! - [`store`] — [`ArchiveStore`]: objects under a destination prefix, named by CID.
//! - [`error`] — [`ArchiveError`], which always names the object (and record) at fault.

pub mod error;
pub mod files;
pub mod manifest;
pub mod part;
pub mod projections;
pub mod record;
pub mod segment;
pub mod store;

pub use error::ArchiveError;
pub use manifest::Manifest;
pub use store::ArchiveStore;
