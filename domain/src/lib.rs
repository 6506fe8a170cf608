//! Pure aggregates of **cim-backup**: backup, restore, verify and integrity-check jobs.
//!
//! Everything here is synchronous and deterministic: `handle(&state, command)` decides which
//! events a command produces (or why it is rejected) and `apply(state, &event)` folds an event
//! into the state. Time, ids and anything read from the outside world arrive inside commands, so
//! the same history and command always give the same decision — which is what makes the event
//! log replayable and the tests given/when/then.
//!
//! # Layout
//! - [`aggregate`] — the [`Aggregate`] trait, folding a history, and the given/when/then harness.
//! - [`lifecycle`] — the job lifecycle every aggregate shares (accepted → running → terminal,
//!   cancellation).
//! - [`backup`], [`restore`], [`verify`], [`check`], [`repair`] — one module per aggregate.
//! - [`chain`] — pure CID-chain verification with a profile per message format.
//! - [`error`] — [`DomainError`]: why a command was rejected.

pub mod aggregate;
pub mod backup;
pub mod chain;
pub mod check;
pub mod config_import;
pub mod error;
pub mod key_restore;
pub mod lifecycle;
pub mod projection;
pub mod repair;
pub mod replay;
pub mod restore;
pub mod tree_restore;
pub mod verify;

#[cfg(test)]
mod test_support;

pub use aggregate::{Aggregate, JobLifecycle};
pub use error::DomainError;
