//! What every engine needs, built once per service.

use async_nats::Client;
use async_nats::jetstream;

use crate::config::Defaults;
use crate::destination::Destinations;
use crate::event_store::EventStore;
use crate::jsapi::JsApi;
use crate::keys::Keys;
use crate::projector::Views;

pub struct Context {
    pub client: Client,
    pub js: jetstream::Context,
    pub api: JsApi,
    pub events: EventStore,
    pub destinations: Destinations,
    pub defaults: Defaults,
    /// Name of this instance; jobs record it as their runner.
    pub instance: String,
    /// Encryption recipients and identities.
    pub keys: Keys,
    /// The views (an incremental backup finds its parent in the catalog).
    pub views: Views,
    /// Chain profiles and projections per stream, for integrity checks.
    pub integrity: crate::config::IntegrityConfig,
}

/// `cim-backup <version>`: written into manifests so a reader knows the writer.
pub fn tool_version() -> String {
    format!("cim-backup {}", env!("CARGO_PKG_VERSION"))
}
