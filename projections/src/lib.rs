//! Folds from cim-backup event envelopes to read models.
//!
//! Views are disposable: the service can delete its view buckets and rebuild them from the event
//! stream, and gets the same views — so every fold here is a pure function of the events, using
//! only times and values carried by the events themselves.
//!
//! # Layout
//! - [`job_view`] — one [`JobView`] per job: state, timestamps, progress counters, error.
//! - [`catalog`] — one [`CatalogEntry`] per completed backup.
//! - [`error`] — [`ProjectionError`]: an event that cannot be folded *yet* (gap) or at all.

pub mod catalog;
pub mod error;
pub mod job_view;

pub use cim_backup_contracts::views::{CatalogEntry, JobView};
pub use error::ProjectionError;
