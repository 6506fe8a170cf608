//! The **cim-backup** service and CLI.
//!
//! # Layout
//! - [`config`] — configuration from file, environment and flags.
//! - [`destination`] — destinations (`file://`, `s3://`, `memory://`, names) → [`archive::ArchiveStore`].
//! - [`archive`] — the portable archive format: records, segments, manifests, the object store view.
//! - [`event_store`] — the JetStream event store with per-aggregate optimistic concurrency.
//! - [`jobs`] — load → handle → append for the pure aggregates of `cim-backup-domain`.
//! - [`keys`] — age recipients and identities for encrypted backups.
//! - [`lookup`] — consistent reads of stored messages that leave no consumer behind: lookups and views.
//! - [`jsapi`] — raw JetStream API calls where async-nats has no typed helper (verbatim configs).
//! - [`engine`] — the work of backup, restore and verify jobs, and the runner that owns them.
//! - [`projector`] — folds events into the job and catalog KV views; rebuilds them.
//! - [`api`] — the NATS micro-service: command and query endpoints, error replies.
//! - [`prometheus`], [`grafana`] — the HTTP APIs of the host services backed up as trees.
//! - [`embedded`] — a local nats-server for `serve --embedded`.
//! - [`cli`] — the `cim-backup` command line, a thin client of the NATS contract.

pub mod api;
pub mod archive;
pub mod cli;
pub mod config;
pub mod destination;
pub mod domain_configs;
pub mod domains;
pub mod embedded;
pub mod engine;
pub mod event_store;
pub mod grafana;
pub mod jobs;
pub mod jsapi;
pub mod keys;
pub mod lookup;
pub mod projector;
pub mod prometheus;
