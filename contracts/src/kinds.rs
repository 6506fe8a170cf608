//! Every job kind in one list: its name (the aggregate type in event subjects and job views)
//! and the type of its events. [`JobKind`] and [`JobEvent`], with every `match` over them that
//! only forwards to the kind's own type, are generated from it, so adding a kind is one line
//! here (plus its aggregate in `domain`, and the service's `with_job_type!` arm).

use std::fmt;
use std::str::FromStr;

use ipld_core::ipld::Ipld;
use serde::{Deserialize, Serialize};

use crate::events::{
    BackupEvent, CheckEvent, ConfigImportEvent, EventDecodeError, KeyRestoreEvent, ProjectionEvent,
    RepairEvent, ReplayEvent, RestoreEvent, TreeRestoreEvent, VerifyEvent,
};

macro_rules! job_kinds {
    ($( $(#[$doc:meta])* $kind:ident = $name:literal, $event:ident; )*) => {
        /// Kind of job; also the aggregate type in event subjects.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum JobKind {
            $( $(#[$doc])* #[serde(rename = $name)] $kind, )*
        }

        impl JobKind {
            /// Every kind, in the order of the list.
            pub const ALL: &[JobKind] = &[$(JobKind::$kind),*];

            pub fn as_str(self) -> &'static str {
                match self { $(JobKind::$kind => $name,)* }
            }
        }

        impl FromStr for JobKind {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok(JobKind::$kind),)*
                    other => Err(format!("unknown job kind {other:?}")),
                }
            }
        }

        /// One event of any aggregate of this service.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum JobEvent {
            $($kind($event),)*
        }

        impl JobEvent {
            pub fn event_type(&self) -> &'static str {
                match self { $(JobEvent::$kind(e) => e.event_type(),)* }
            }

            pub fn version(&self) -> u32 {
                match self { $(JobEvent::$kind(e) => e.version(),)* }
            }

            pub fn aggregate_type(&self) -> JobKind {
                match self { $(JobEvent::$kind(_) => JobKind::$kind,)* }
            }

            pub(crate) fn to_data(&self) -> Ipld {
                match self { $(JobEvent::$kind(e) => e.to_data(),)* }
            }

            pub(crate) fn from_data(
                kind: JobKind,
                event_type: &str,
                version: u32,
                data: Ipld,
            ) -> Result<Self, EventDecodeError> {
                Ok(match kind {
                    $(JobKind::$kind => JobEvent::$kind($event::from_data(event_type, version, data)?),)*
                })
            }
        }
    };
}

job_kinds! {
    Backup = "backup", BackupEvent;
    Restore = "restore", RestoreEvent;
    Verify = "verify", VerifyEvent;
    Check = "check", CheckEvent;
    /// Restore from a point: part of a live stream replaced by a backup's records.
    Repair = "repair", RepairEvent;
    /// File trees of a backup put back on a host (models, checkpoints, configuration).
    TreeRestore = "tree-restore", TreeRestoreEvent;
    /// A domain's read models captured at one pinned point each.
    ProjectionSnapshot = "projection-snapshot", ProjectionEvent;
    /// A projection snapshot put back into the live buckets, after a safety snapshot.
    ProjectionRestore = "projection-restore", ProjectionEvent;
    /// Every key of a domain's read models deleted, after a safety snapshot.
    ProjectionClear = "projection-clear", ProjectionEvent;
    /// A domain's projectors moved back to an earlier event and followed until caught up.
    ProjectionReplay = "projection-replay", ReplayEvent;
    /// A domain's projectors stopped, its read models cleared, then replayed from the start.
    ProjectionRebuild = "projection-rebuild", ReplayEvent;
    /// Domain configuration (streams, consumers, buckets, entries) imported from an export.
    ConfigImport = "config-import", ConfigImportEvent;
    /// One read-model key brought back to its value as of a time.
    KeyRestore = "key-restore", KeyRestoreEvent;
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_by_name_and_in_json() {
        for kind in JobKind::ALL {
            assert_eq!(kind.as_str().parse::<JobKind>(), Ok(*kind));
            let json = serde_json::to_string(kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<JobKind>(&json).unwrap(), *kind);
        }
        assert!("nope".parse::<JobKind>().is_err());
    }
}
