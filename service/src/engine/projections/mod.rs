//! The projection engines: snapshots of a domain's read models, and restores of one.
//!
//! # Layout
//! - [`read`] — one read model at one pinned point (base and overlay), into blocks or only
//!   into an index and digest.
//! - [`take`] — one domain's snapshot: projector positions, then every model, then the manifest.
//! - [`snapshot`] — the `projection-snapshot` job: one snapshot per domain.
//! - [`write`] — puts and deletes into a live bucket, acknowledged in a pipeline.
//! - [`restore`] — the `projection-restore` job: safety snapshot, then each model made equal
//!   to the snapshot's, then the optional verification.
//! - [`clear`] — the `projection-clear` job: safety snapshot (unless declined), then every key
//!   of each model deleted.
//! - [`key_restore`] — `restore-deleted --type projection`: a key's value as of a time, from the
//!   bucket's history or the newest snapshot before it, and the `key-restore` job.
//! - [`replay`] — the `projection-replay` and `projection-rebuild` jobs: projectors moved back
//!   (after their read models were cleared, for a rebuild) and followed until caught up.

pub mod clear;
pub mod key_restore;
pub mod read;
pub mod replay;
pub mod restore;
pub mod snapshot;
pub mod take;
pub mod write;

use std::time::Duration;

/// How often a projection job records its progress.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(2);
