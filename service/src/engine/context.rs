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
    /// The file-tree roots this instance serves (`[files.roots]`), resolved at start.
    pub roots: Vec<crate::archive::files::scan::Root>,
    /// The Prometheus `backup-prometheus` snapshots (`[prometheus]`).
    pub prometheus: Option<crate::config::PrometheusConfig>,
    /// What backup-nixos-config reads and leaves out (`[nixos]`).
    pub nixos: crate::config::NixosConfig,
    /// The Grafana `backup-grafana` exports (`[grafana]`).
    pub grafana: Option<crate::config::GrafanaConfig>,
    /// The domains' configured parts (`[domains.<name>]`); discovery adds the rest.
    pub domains: std::collections::BTreeMap<String, crate::config::DomainConfig>,
}

impl Context {
    /// The declared root that holds `path`, and `path` inside it (`/`-separated).
    pub fn place(
        &self,
        path: &std::path::Path,
    ) -> Option<(&crate::archive::files::scan::Root, String)> {
        self.roots.iter().find_map(|r| {
            let rel = path.strip_prefix(&r.dir).ok()?;
            Some((r, rel.to_str()?.to_owned()))
        })
    }

    /// The root named `name`, or why not (a 404 that lists the roots this instance has).
    pub fn root(
        &self,
        name: &str,
    ) -> Result<&crate::archive::files::scan::Root, super::error::EngineError> {
        self.roots.iter().find(|r| r.name == name).ok_or_else(|| {
            super::error::EngineError::precondition(
                cim_backup_contracts::ErrorCode::NotFound,
                format!(
                    "instance {} has no root {}; it serves: {}",
                    self.instance,
                    cim_backup_contracts::text::echo(name),
                    if self.roots.is_empty() {
                        "none ([files.roots] or serve --root NAME=DIR)".to_owned()
                    } else {
                        self.roots
                            .iter()
                            .map(|r| r.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            )
        })
    }
}

/// `cim-backup <version>`: written into manifests so a reader knows the writer.
pub fn tool_version() -> String {
    format!("cim-backup {}", env!("CARGO_PKG_VERSION"))
}
