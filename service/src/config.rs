//! Service configuration: a TOML file, then environment variables, then command-line flags, each
//! overriding the one before (flags and their `CIM_BACKUP_*` variables are declared in the CLI).
//!
//! ```toml
//! [nats]
//! url = "nats://127.0.0.1:4222"
//! creds = "/etc/cim/backup.creds"     # optional; or token / user + password
//!
//! [service]
//! instance = "backup-1"               # names the runner of jobs; default: host name
//! events_replicas = 3                 # replicas of the event stream and view buckets
//! file_roots = ["/backup"]            # file:// places a request may name (besides destinations)
//!
//! [defaults]
//! destination = "local"
//! compress = "zstd"
//! zstd_level = 3
//! segment_bytes = 8388608
//! encrypt = false                     # for backups that do not say
//!
//! [destinations.local]
//! url = "file:///var/lib/cim-backup/archive"
//!
//! [destinations.offsite]
//! url = "s3://cim-backups/events"
//! endpoint = "https://s3.eu-central-1.amazonaws.com"   # optional for AWS
//! region = "eu-central-1"
//! access_key_id = "..."                                # or AWS_ACCESS_KEY_ID
//! secret_access_key = "..."
//! encrypt = true                                       # backups here are encrypted unless told
//!
//! [encryption]
//! recipients = ["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"]  # to write
//! identity_files = ["/etc/cim/backup.agekey"]                                  # to read
//!
//! [domains.graph]                     # parts the CIM conventions do not find (docs/PROJECTIONS.md)
//! projectors = [{ stream = "DOMAIN_GRAPH_EVENTS", consumer = "graph-projector" }]
//! object_stores = ["cim-graphs"]       # exported by export-domain-configs (docs/DOMAIN-CONFIGS.md)
//! [domains.graph.projections]         # read models by name (what --include takes)
//! GraphReadModel = { bucket = "GRAPH_READ_MODEL" }
//! NodeIndex = { bucket = "CIM_PROJECTIONS", prefix = "graph.node." }
//!
//! [files.roots]                       # trees this instance backs up and restores (its host's)
//! models = "/var/lib/cim/models"
//! checkpoints = "/var/lib/cim/checkpoints"
//! grafana = "/var/lib/cim/grafana"
//!
//! [prometheus]                        # what backup-prometheus snapshots
//! url = "http://127.0.0.1:9090"       # with --web.enable-admin-api
//! data_dir = "/var/lib/prometheus/metrics2"   # inside a [files.roots] entry
//!
//! [grafana]                           # what backup-grafana exports through the HTTP API
//! url = "http://127.0.0.1:3000"
//! token_file = "/etc/cim/grafana.token"   # a service-account token (optional)
//! staging_dir = "/var/lib/cim/grafana"    # inside a root: exports wait here until stored
//!
//! [nixos]                             # what backup-nixos-config reads (inside a root)
//! config_dir = "/etc/nixos"
//! secret_patterns = ["secrets/**", "**/*.age", "**/*.sops.*", "**/ssh_host_*_key"]
//!
//! [integrity.streams.EVENTS]          # how checks walk this stream (docs/INTEGRITY.md)
//! profile = "cim-ipld"                # native | cim-ipld | x-cid-headers | link-only
//! chain_by = { subject_token = 1 }    # or { field = "aggregate_id" }, or "stream"
//! projections = [{ bucket = "EVENTS_VIEW", key_prefix = "order." }]
//! projectors = ["orders-projector"]   # durable consumers replay-corrupted-events resets
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cim_backup_contracts::commands::CompressionAlgorithm;
use object_store::aws::AmazonS3Builder;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("config file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub nats: NatsConfig,
    #[serde(default)]
    pub service: ServiceConfig,
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub destinations: BTreeMap<String, DestinationConfig>,
    #[serde(default)]
    pub encryption: crate::keys::EncryptionConfig,
    #[serde(default)]
    pub integrity: IntegrityConfig,
    #[serde(default)]
    pub files: FilesConfig,
    #[serde(default)]
    pub prometheus: Option<PrometheusConfig>,
    #[serde(default)]
    pub nixos: NixosConfig,
    #[serde(default)]
    pub grafana: Option<GrafanaConfig>,
    /// `[domains.<name>]`: parts of domains that the CIM conventions do not find, or that are
    /// named differently (docs/PROJECTIONS.md §1).
    #[serde(default)]
    pub domains: BTreeMap<String, DomainConfig>,
}

/// `[domains.<name>]`: a domain's parts, in addition to what discovery finds.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConfig {
    /// Its event streams (besides `DOMAIN_<NAME>_EVENTS`, `_COMMANDS`, `_SNAPSHOTS`).
    #[serde(default)]
    pub streams: Vec<String>,
    /// Its read models by name: `Name = { bucket = "B" }` or `{ bucket = "B", prefix = "p." }`.
    #[serde(default)]
    pub projections: BTreeMap<String, KeyRangeConfig>,
    /// Its projectors: durable consumers `{ stream = "S", consumer = "C" }`.
    #[serde(default)]
    pub projectors: Vec<ProjectorConfig>,
    /// Where its configuration entries are (default: `CIM_DOMAIN_CONFIG`, prefix `<name>.`).
    #[serde(default)]
    pub config: Option<KeyRangeConfig>,
    /// Where its agent definitions are (default: `CIM_AGENTS`, prefix `<name>.`).
    #[serde(default)]
    pub agents: Option<KeyRangeConfig>,
    /// Object stores of the domain that `export-domain-configs` includes (there is no naming
    /// convention to discover them by).
    #[serde(default)]
    pub object_stores: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRangeConfig {
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectorConfig {
    pub stream: String,
    pub consumer: String,
}

/// `[grafana]`: the server `backup-grafana` exports. Requests never name a URL, so they cannot
/// point the service at another host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrafanaConfig {
    /// `http(s)://host:port[/sub/path]` of the server.
    pub url: String,
    /// A file holding a service-account token, sent as `Authorization: Bearer` (Viewer reads
    /// folders and dashboards; datasources and alert-rule provisioning need Admin).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Where an export is written before it is stored (inside a `[files.roots]` entry); each
    /// export is a new directory here, removed once the backup holds it.
    pub staging_dir: PathBuf,
}

/// `[nixos]`: what backup-nixos-config reads, and what it leaves out as secrets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NixosConfig {
    /// The configuration directory (inside a `[files.roots]` entry).
    #[serde(default = "default_nixos_dir")]
    pub config_dir: PathBuf,
    /// Paths inside it left out unless --include-secrets: sops and agenix files, and the keys
    /// that decrypt them (`*` within a name, `**` across names).
    #[serde(default = "default_secret_patterns")]
    pub secret_patterns: Vec<String>,
}

impl Default for NixosConfig {
    fn default() -> Self {
        NixosConfig {
            config_dir: default_nixos_dir(),
            secret_patterns: default_secret_patterns(),
        }
    }
}

fn default_nixos_dir() -> PathBuf {
    PathBuf::from("/etc/nixos")
}

/// sops-nix and agenix files, and private keys (SSH host keys decrypt agenix secrets).
pub fn default_secret_patterns() -> Vec<String> {
    [
        "secrets/**",
        "**/secrets/**",
        "**/*.age",
        "**/*.sops.*",
        "**/ssh_host_*_key",
        "**/*.key",
        "**/id_rsa",
        "**/id_ed25519",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// `[prometheus]`: the server `backup-prometheus` snapshots. Its data directory must be inside
/// one of `[files.roots]` (the snapshot is read there, and removed once stored).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusConfig {
    /// `http://host:port` of the server (its admin API must be on: --web.enable-admin-api).
    pub url: String,
    /// Its `--storage.tsdb.path`.
    pub data_dir: PathBuf,
}

/// `[files]`: the file-system roots this instance serves. A file request names a root and a
/// path inside it; nothing outside these is ever read or written for one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    /// Root name → directory on this host.
    #[serde(default)]
    pub roots: BTreeMap<String, PathBuf>,
}

/// Whether `name` can name a root: it is a token of the instance's subjects and metadata.
pub fn is_root_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// `[integrity.streams.<STREAM>]`: how each stream's messages chain, and which KV projections
/// follow it (see docs/INTEGRITY.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrityConfig {
    #[serde(default)]
    pub streams: BTreeMap<String, StreamIntegrity>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamIntegrity {
    pub profile: cim_backup_contracts::integrity::ProfileKind,
    #[serde(default)]
    pub chain_by: Option<cim_backup_contracts::integrity::ChainBy>,
    #[serde(default)]
    pub cid_field: Option<String>,
    #[serde(default)]
    pub previous_field: Option<String>,
    #[serde(default)]
    pub sequence_field: Option<String>,
    #[serde(default)]
    pub projections: Vec<cim_backup_contracts::integrity::ProjectionSpec>,
    /// Durable consumers that project this stream (reset by `replay-corrupted-events`).
    #[serde(default)]
    pub projectors: Vec<String>,
}

impl StreamIntegrity {
    pub fn chain_profile(&self) -> cim_backup_contracts::integrity::ChainProfile {
        cim_backup_contracts::integrity::ChainProfile {
            profile: self.profile,
            chain_by: self.chain_by.clone(),
            cid_field: self.cid_field.clone(),
            previous_field: self.previous_field.clone(),
            sequence_field: self.sequence_field.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    #[serde(default = "default_nats_url")]
    pub url: String,
    pub creds: Option<PathBuf>,
    pub token: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
}

fn default_nats_url() -> String {
    "nats://127.0.0.1:4222".to_owned()
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: default_nats_url(),
            creds: None,
            token: None,
            user: None,
            password: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Name of this instance; recorded as the runner of the jobs it accepts.
    #[serde(default = "default_instance")]
    pub instance: String,
    /// Replicas of the event stream and the view buckets (3 on a cluster).
    #[serde(default = "one")]
    pub events_replicas: usize,
    /// Directories a request may name as a `file://` destination or source (below them, after
    /// following symlinks). The directories of configured `file://` destinations are always
    /// allowed; anything else is refused (403), so no request reads or writes an arbitrary path.
    #[serde(default)]
    pub file_roots: Vec<PathBuf>,
}

fn default_instance() -> String {
    host_name()
}

/// This host's name (`$HOSTNAME`, else `/etc/hostname`), or `cim-backup` when neither says.
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "cim-backup".to_owned())
}

fn one() -> usize {
    1
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            instance: default_instance(),
            events_replicas: 1,
            file_roots: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    pub destination: Option<String>,
    #[serde(default)]
    pub compress: CompressionAlgorithm,
    #[serde(default = "default_level")]
    pub zstd_level: i32,
    /// Target size of an uncompressed segment.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// Segments compressed and uploaded at once per job.
    #[serde(default = "default_upload_concurrency")]
    pub upload_concurrency: usize,
    /// Encrypt backups that do not say (`encrypt` absent), unless their destination says
    /// otherwise (default false).
    #[serde(default)]
    pub encrypt: bool,
}

fn default_level() -> i32 {
    3
}
fn default_segment_bytes() -> u64 {
    8 << 20
}
fn default_upload_concurrency() -> usize {
    4
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            destination: None,
            compress: CompressionAlgorithm::Zstd,
            zstd_level: default_level(),
            segment_bytes: default_segment_bytes(),
            upload_concurrency: default_upload_concurrency(),
            encrypt: false,
        }
    }
}

/// A named destination and, for S3, how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    pub url: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Allow plain-HTTP endpoints (local S3 servers).
    #[serde(default)]
    pub allow_http: bool,
    /// How long one object request may keep retrying before the job fails with the store's
    /// error (default 60 s): an unreachable store ends a job clearly, not never.
    #[serde(default)]
    pub retry_timeout_secs: Option<u64>,
    /// S3 without keys: take credentials from the instance metadata service (EC2). Without
    /// keys and without this, a request is refused with a clear "no credentials" error.
    #[serde(default)]
    pub instance_credentials: bool,
    /// Encrypt backups written here that do not say (`encrypt` absent); overrides
    /// `[defaults] encrypt`.
    #[serde(default)]
    pub encrypt: Option<bool>,
}

impl DestinationConfig {
    pub fn url(url: &str) -> Self {
        DestinationConfig {
            url: url.to_owned(),
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            retry_timeout_secs: None,
            instance_credentials: false,
            encrypt: None,
        }
    }

    /// Applies this destination's S3 settings to a builder.
    pub fn apply_s3(&self, mut b: AmazonS3Builder) -> AmazonS3Builder {
        if let Some(endpoint) = &self.endpoint {
            // A custom endpoint (MinIO, moto, Ceph) almost always wants path-style requests.
            b = b
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        if let Some(region) = &self.region {
            b = b.with_region(region);
        }
        if let Some(key) = &self.access_key_id {
            b = b.with_access_key_id(key);
        }
        if let Some(secret) = &self.secret_access_key {
            b = b.with_secret_access_key(secret);
        }
        b.with_allow_http(self.allow_http)
            .with_retry(retry_config(self.retry_timeout_secs))
    }
}

/// Retries of object requests: a few, with backoff, within `timeout_secs` (default 60 s).
pub fn retry_config(timeout_secs: Option<u64>) -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 5,
        retry_timeout: std::time::Duration::from_secs(timeout_secs.unwrap_or(60)),
        ..Default::default()
    }
}

impl Config {
    /// Reads a TOML config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks cross-field rules that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(default) = &self.defaults.destination
            && !default.contains("://")
            && !self.destinations.contains_key(default)
        {
            return Err(ConfigError::Invalid(format!(
                "defaults.destination {default:?} is not a URL nor one of [destinations.*]"
            )));
        }
        for (name, domain) in &self.domains {
            crate::domains::check_config(name, domain).map_err(ConfigError::Invalid)?;
        }
        if self.defaults.segment_bytes < 4096 {
            return Err(ConfigError::Invalid(
                "defaults.segment_bytes must be at least 4096".into(),
            ));
        }
        for (name, dir) in &self.files.roots {
            if !is_root_name(name) {
                return Err(ConfigError::Invalid(format!(
                    "files.roots: {name:?} is not a root name (letters, digits, - and _)"
                )));
            }
            if !dir.is_absolute() {
                return Err(ConfigError::Invalid(format!(
                    "files.roots.{name}: {} is not an absolute path",
                    dir.display()
                )));
            }
        }
        if let Some(p) = &self.prometheus
            && !p.data_dir.is_absolute()
        {
            return Err(ConfigError::Invalid(format!(
                "prometheus.data_dir: {} is not an absolute path",
                p.data_dir.display()
            )));
        }
        if let Some(g) = &self.grafana {
            if !g.staging_dir.is_absolute() {
                return Err(ConfigError::Invalid(format!(
                    "grafana.staging_dir: {} is not an absolute path",
                    g.staging_dir.display()
                )));
            }
            crate::grafana::base_url(&g.url)
                .map_err(|e| ConfigError::Invalid(format!("grafana.url: {e}")))?;
            if !self
                .files
                .roots
                .values()
                .any(|r| g.staging_dir.starts_with(r))
            {
                return Err(ConfigError::Invalid(format!(
                    "grafana.staging_dir: {} is not inside any [files.roots] entry",
                    g.staging_dir.display()
                )));
            }
        }
        if self.defaults.upload_concurrency == 0 {
            return Err(ConfigError::Invalid(
                "defaults.upload_concurrency must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let doc = include_str!("config.rs");
        let example: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start_matches(' '))
            .collect::<Vec<_>>()
            .join("\n");
        let config = Config::from_toml(&example).unwrap();
        config.validate().unwrap();
        assert_eq!(config.service.events_replicas, 3);
        assert_eq!(
            config.destinations["offsite"].region.as_deref(),
            Some("eu-central-1")
        );
        let events = &config.integrity.streams["EVENTS"];
        assert_eq!(
            events.chain_by,
            Some(cim_backup_contracts::integrity::ChainBy::SubjectToken(1))
        );
        assert_eq!(events.projections[0].key_prefix, "order.");
        assert_eq!(events.projectors, ["orders-projector"]);
        let graph = &config.domains["graph"];
        assert_eq!(graph.projections["NodeIndex"].prefix, "graph.node.");
        assert_eq!(graph.projectors[0].consumer, "graph-projector");
    }

    #[test]
    fn unknown_keys_and_bad_defaults_are_errors() {
        assert!(
            Config::from_toml("[nats]\nurll = \"x\"")
                .unwrap_err()
                .contains("urll")
        );
        let config = Config::from_toml("[defaults]\ndestination = \"nowhere\"").unwrap();
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("nowhere")
        );
    }
}
