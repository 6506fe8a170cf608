//! The public wire contract of **cim-backup**.
//!
//! Other CIM agents compile against this crate to talk to the service: it names every subject,
//! every command and reply body, every event, the CID rules that make the event log a Merkle
//! chain, and the error codes. It deliberately has no async runtime and no NATS client, so that
//! anything — a CLI, a test, another language's code generator — can depend on it cheaply.
//!
//! # Layout
//! - [`subjects`] — subject names for commands, queries and events; stream and bucket names.
//! - [`ids`] — one newtype per kind of id: [`JobId`], [`BackupId`], [`EventCid`].
//! - [`cid`] — how a CID is computed from bytes (CIDv1, dag-cbor, sha2-256).
//! - [`commands`] — request bodies of `cim.backup.cmd.*` and `cim.backup.qry.*`.
//! - [`replies`] — reply bodies, including the error body.
//! - [`errors`] — wire error codes and the `Nats-Service-Error*` header names.
//! - [`events`] — the event envelope and every event payload, with versions.
//! - [`views`] — the read models the queries return (job view, catalog entry).
//! - [`integrity`] — chain profiles, findings and the integrity report.
//! - [`headers`] — the `Cim-*` header names carried by every event message.
//! - [`text`] — caller values echoed in messages and headers: cut, quoted, one line.

/// `Display` by the serde (wire) name, so that messages say `cid_mismatch` or `server-archive`,
/// never the Rust name.
macro_rules! display_as_wire_name {
    ($($ty:ty),+ $(,)?) => {
        $(impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match serde_json::to_value(self) {
                    Ok(serde_json::Value::String(name)) => f.write_str(&name),
                    _ => Err(std::fmt::Error),
                }
            }
        })+
    };
}
pub(crate) use display_as_wire_name;

pub mod cid;
pub mod commands;
pub mod domain_configs;
pub mod errors;
pub mod events;
pub mod files;
pub mod headers;
pub mod ids;
pub mod integrity;
pub mod key_restore;
pub mod kinds;
pub mod projections;
pub mod replay;
pub mod replies;
pub mod subjects;
pub mod text;
pub mod views;

pub use errors::ErrorCode;
pub use ids::{BackupId, EventCid, JobId};
