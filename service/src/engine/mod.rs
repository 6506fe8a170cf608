//! The work behind jobs: each engine drives one aggregate through its lifecycle by issuing
//! commands (start, record progress, complete, fail, confirm cancel) as the work proceeds.
//!
//! The aggregate is the judge: an engine can only record what the domain accepts, so a bug here
//! shows up as a rejected command and a failed job — never as a false "completed".
//!
//! # Layout
//! - [`context`] — [`Context`]: the NATS handles, stores and settings engines share.
//! - [`runner`] — [`Runner`]: spawns jobs, routes cancellations, resumes unfinished jobs at start.
//! - [`error`] — [`EngineError`] and how it becomes a `*Failed` event.
//! - [`reader`] — reading a stream range in order, fast (ordered push consumer).
//! - [`snapshot`] — the server's own snapshot, and server-side stream copies built on it.
//! - [`backup`], [`restore`], [`verify`], [`check`], [`repair`] — one engine per job kind.

pub mod backup;
pub mod check;
pub mod context;
pub mod error;
pub mod projections;
pub mod reader;
pub mod repair;
pub mod restore;
pub mod runner;
pub mod snapshot;
pub mod tree_restore;
pub mod trees;
pub mod verify;

pub use context::Context;
pub use error::EngineError;
pub use runner::Runner;
