//! Subject map of the service (DESIGN §4, §5). ARCHITECTURE.md repeats this table for humans.
//!
//! | subject | kind |
//! |---|---|
//! | `cim.backup.cmd.{start,restore,verify,check,repair,cancel,snapshot-projections,restore-projections,clear-projections,replay-events,rebuild-projections,import-domain-configs,restore-deleted}` | command, request/reply |
//! | `cim.backup.qry.{job,jobs,backups,domains,projection-snapshots,domain-configs}` | query, request/reply |
//! | `cim.backup.files.<instance>.cmd.{start,restore}` | one instance's file commands |
//! | `cim.backup.files.<instance>.qry.{models,check}` | one instance's file queries |
//! | `cim.backup.evt.<aggregate-type>.<aggregate-id>.<event-type>` | events, JetStream |

/// Name the service registers with the NATS micro-service API (`$SRV.PING.cim-backup`).
pub const SERVICE_NAME: &str = "cim-backup";

/// Prefix of every command subject.
pub const COMMAND_PREFIX: &str = "cim.backup.cmd";
/// Prefix of every query subject.
pub const QUERY_PREFIX: &str = "cim.backup.qry";
/// Prefix of every event subject.
pub const EVENT_PREFIX: &str = "cim.backup.evt";

pub const CMD_START: &str = "cim.backup.cmd.start";
pub const CMD_RESTORE: &str = "cim.backup.cmd.restore";
pub const CMD_VERIFY: &str = "cim.backup.cmd.verify";
pub const CMD_CHECK: &str = "cim.backup.cmd.check";
pub const CMD_REPAIR: &str = "cim.backup.cmd.repair";
pub const CMD_CANCEL: &str = "cim.backup.cmd.cancel";
/// A snapshot of domains' read models (`SnapshotProjections`).
pub const CMD_SNAPSHOT_PROJECTIONS: &str = "cim.backup.cmd.snapshot-projections";
/// A domain's read models cleared (`ClearProjections`).
pub const CMD_CLEAR_PROJECTIONS: &str = "cim.backup.cmd.clear-projections";
/// A projection snapshot restored into the live buckets (`RestoreProjectionSnapshot`).
pub const CMD_RESTORE_PROJECTIONS: &str = "cim.backup.cmd.restore-projections";
/// A domain's projectors moved back and followed until caught up (`ReplayEvents`).
pub const CMD_REPLAY_EVENTS: &str = "cim.backup.cmd.replay-events";
/// A domain's read models rebuilt from its first event (`RebuildProjections`).
pub const CMD_REBUILD_PROJECTIONS: &str = "cim.backup.cmd.rebuild-projections";
/// Domain configuration planned against the server, and applied (`ImportDomainConfigs`).
/// A read-model key brought back as of a time (`RestoreDeleted`).
pub const CMD_RESTORE_DELETED: &str = "cim.backup.cmd.restore-deleted";
pub const CMD_IMPORT_DOMAIN_CONFIGS: &str = "cim.backup.cmd.import-domain-configs";

pub const QRY_JOB: &str = "cim.backup.qry.job";
pub const QRY_JOBS: &str = "cim.backup.qry.jobs";
pub const QRY_BACKUPS: &str = "cim.backup.qry.backups";
/// Every domain and its parts (`DomainsQuery` → `[Domain]`).
pub const QRY_DOMAINS: &str = "cim.backup.qry.domains";
/// Projection snapshots in a destination (`ProjectionSnapshotsQuery` → `[SnapshotSummary]`).
pub const QRY_PROJECTION_SNAPSHOTS: &str = "cim.backup.qry.projection-snapshots";
/// The export document of domains' configuration (`DomainConfigsQuery` → `ConfigsDocument`).
pub const QRY_DOMAIN_CONFIGS: &str = "cim.backup.qry.domain-configs";

/// JetStream stream that holds every event of the service.
pub const EVENTS_STREAM: &str = "CIM_BACKUP_EVENTS";
/// Subjects captured by [`EVENTS_STREAM`].
pub const EVENTS_STREAM_SUBJECTS: &str = "cim.backup.evt.>";
/// KV bucket holding one job view per job id.
pub const JOBS_BUCKET: &str = "CIM_BACKUP_JOBS";
/// KV bucket holding one catalog entry per backup id.
pub const CATALOG_BUCKET: &str = "CIM_BACKUP_CATALOG";
/// Prefix of the durable consumer of each instance's projector (`<prefix>-<instance>`).
pub const PROJECTOR_DURABLE: &str = "cim-backup-projector";

/// The projector durable of one service instance: every instance folds every event in stream
/// order (writes are idempotent and compare-and-set), so no instance ever sees a job's events
/// out of order, which a shared consumer would cause.
pub fn projector_durable(instance: &str) -> String {
    format!("{PROJECTOR_DURABLE}-{}", instance_token(instance))
}

/// An instance name as one subject token (host names have dots): other characters than
/// letters, digits, `-` and `_` become `_`.
pub fn instance_token(instance: &str) -> String {
    instance
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Prefix of the subjects of one instance's file endpoints: files are on a host, so a file
/// request goes to the instance that serves the root, never to whichever instance the queue
/// group picks.
pub const FILES_PREFIX: &str = "cim.backup.files";

/// `cim.backup.files.<instance>.cmd`: file commands of one instance (`start`, `restore`).
pub fn files_commands(instance: &str) -> String {
    format!("{FILES_PREFIX}.{}.cmd", instance_token(instance))
}

/// `cim.backup.files.<instance>.qry`: file queries of one instance (`models`, `check`).
pub fn files_queries(instance: &str) -> String {
    format!("{FILES_PREFIX}.{}.qry", instance_token(instance))
}

/// The subject an event is published on.
pub fn event_subject(aggregate_type: &str, aggregate_id: &str, event_type: &str) -> String {
    format!("{EVENT_PREFIX}.{aggregate_type}.{aggregate_id}.{event_type}")
}

/// The wildcard covering every event of one aggregate. Optimistic concurrency is checked against
/// this wildcard (not one exact subject) because an aggregate's events span several subjects.
pub fn aggregate_wildcard(aggregate_type: &str, aggregate_id: &str) -> String {
    format!("{EVENT_PREFIX}.{aggregate_type}.{aggregate_id}.*")
}

/// Splits an event subject into `(aggregate_type, aggregate_id, event_type)`.
pub fn parse_event_subject(subject: &str) -> Option<(&str, &str, &str)> {
    let rest = subject.strip_prefix(EVENT_PREFIX)?.strip_prefix('.')?;
    let mut parts = rest.split('.');
    let (Some(kind), Some(id), Some(event), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    Some((kind, id, event))
}

/// Whether `token` can be one token of a NATS subject (no dots, wildcards or whitespace).
pub fn is_subject_token(token: &str) -> bool {
    !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'.' | b'*' | b'>'))
}

/// Whether `name` is a valid JetStream stream name (what the server accepts, plus printable).
pub fn is_stream_name(name: &str) -> bool {
    is_subject_token(name) && name.len() <= 255 && !name.contains(['/', '\\'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_subject_round_trips() {
        let s = event_subject("backup", "job-1", "BackupAccepted");
        assert_eq!(s, "cim.backup.evt.backup.job-1.BackupAccepted");
        assert_eq!(
            parse_event_subject(&s),
            Some(("backup", "job-1", "BackupAccepted"))
        );
        assert_eq!(
            aggregate_wildcard("backup", "job-1"),
            "cim.backup.evt.backup.job-1.*"
        );
    }

    #[test]
    fn malformed_event_subjects_are_rejected() {
        assert_eq!(parse_event_subject("cim.backup.evt.backup.job-1"), None);
        assert_eq!(parse_event_subject("cim.backup.evt.a.b.c.d"), None);
        assert_eq!(parse_event_subject("cim.backup.cmd.start"), None);
    }

    #[test]
    fn stream_names() {
        assert!(is_stream_name("EVENTS"));
        assert!(is_stream_name("KV_cim-index"));
        assert!(!is_stream_name("A.B"));
        assert!(!is_stream_name("A B"));
        assert!(!is_stream_name("A*"));
        assert!(!is_stream_name(""));
    }
}
