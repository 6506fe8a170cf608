//! Domain configuration in the contract: the export document (`export-domain-configs`), the
//! import request and its plan (`import-domain-configs`), and what an applying job records
//! (docs/DOMAIN-CONFIGS.md).
//!
//! The document is deterministic: every map is sorted and it carries no time, so two exports
//! of the same state are byte-identical and `git diff` between two shows only what changed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::events::Admission;

/// `format` of an export document.
pub const CONFIGS_FORMAT: &str = "cim-backup-domain-configs/1";

/// The export document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigsDocument {
    pub format: String,
    pub domains: BTreeMap<String, DomainTopology>,
}

/// One domain's NATS topology and entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainTopology {
    /// The domain's streams, each with its config and its durable consumers' configs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub streams: BTreeMap<String, StreamExport>,
    /// KV buckets (read models, configuration, agents): the config of the stream behind each
    /// (`KV_<bucket>`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub key_value: BTreeMap<String, Value>,
    /// Object stores: the config of the stream behind each (`OBJ_<bucket>`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub object_stores: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_entries: Option<EntriesExport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<EntriesExport>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamExport {
    /// The stream's config without server-assigned fields.
    pub config: Value,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub consumers: BTreeMap<String, Value>,
}

/// The keys of a bucket under a prefix, with their values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntriesExport {
    pub bucket: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    pub entries: BTreeMap<String, EntryValue>,
}

/// A value as text when it is UTF-8, else base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EntryValue {
    Text(String),
    Binary { base64: String },
}

/// `cim.backup.qry.domain-configs`: the export document of the named domains (all by default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConfigsQuery {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
}

/// `cim.backup.cmd.import-domain-configs`: a document checked against the server and planned;
/// with `apply`, a `config-import` job carries out the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportDomainConfigs {
    pub document: ConfigsDocument,
    /// Only these domains of the document (default: all of it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    #[serde(default)]
    pub apply: bool,
    /// Also delete consumers and entries of the document's domains that it does not hold.
    #[serde(default)]
    pub prune: bool,
    /// Where the document came from, for the job's record.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

/// What an import does to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Create,
    Update,
    Unchanged,
    /// The server would refuse it, or it collides with something else: nothing can be applied.
    Conflict,
    /// On the server, not in the document: deleted with `prune`.
    Delete,
    /// On the server, not in the document, and kept (no `prune`, or not prunable).
    Extra,
}

/// What kind of resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResourceKind {
    Stream,
    KeyValue,
    ObjectStore,
    Consumer,
    Entry,
}

/// One field that differs: the live value against the document's, each as JSON text (`null`
/// when absent). Text, not JSON values: events are DAG-CBOR, which has no `null` to carry an
/// absent value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChange {
    pub field: String,
    pub live: String,
    pub document: String,
}

/// One resource in the plan, in the order an apply takes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedResource {
    pub kind: ResourceKind,
    /// Stream, bucket or store name; `stream/consumer`; `bucket/key`.
    pub name: String,
    pub domain: String,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<FieldChange>,
    /// Why a conflict, and flags that can never be undone once applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The reply of `import-domain-configs`: the plan, and the job when it was applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportPlan {
    pub resources: Vec<PlannedResource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

impl ImportPlan {
    pub fn count(&self, action: Action) -> usize {
        self.resources.iter().filter(|r| r.action == action).count()
    }

    /// Whether applying would change anything.
    pub fn changes(&self) -> bool {
        self.resources
            .iter()
            .any(|r| matches!(r.action, Action::Create | Action::Update | Action::Delete))
    }
}

/// The first event of a `config-import` job: the plan it carries out (only its changes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigImportAccepted {
    pub source: String,
    pub resources: Vec<PlannedResource>,
    /// The document's configs and values for each resource to create or update, by
    /// `kind:name`, as JSON text (what the job writes).
    pub payloads: BTreeMap<String, String>,
    pub admission: Admission,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigImportStarted {}

/// One resource applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceApplied {
    pub kind: ResourceKind,
    pub name: String,
    pub action: Action,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigImportCompleted {
    pub applied: Vec<ResourceApplied>,
}

/// The key a plan's payload is stored under.
pub fn payload_key(kind: ResourceKind, name: &str) -> String {
    format!(
        "{}:{name}",
        serde_json::to_value(kind).unwrap().as_str().unwrap()
    )
}
