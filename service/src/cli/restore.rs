//! `restore-events`: a stream of a backup into a new stream, or appended to an existing one.

use clap::Args;

use cim_backup_contracts::commands::RestoreBackup;
use cim_backup_contracts::events::Placement;
use cim_backup_contracts::replies::{Accepted, RestorePlan};
use cim_backup_contracts::subjects::CMD_RESTORE;

use super::args::{choice, idempotency_key, restore_source, time};
use super::client::CliError;
use super::follow::after_accept;
use super::{Ctx, output};

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The stream inside the backup.
    #[arg(long)]
    pub stream: String,
    /// Restore under this name.
    #[arg(long = "as")]
    pub as_stream: Option<String>,
    /// A backup id, `latest`, or where backups are stored (a directory, URL or configured name;
    /// then the newest backup of the stream there is used, or --backup).
    #[arg(long, default_value = "latest")]
    pub source: String,
    /// A backup id inside --source.
    #[arg(long)]
    pub backup: Option<String>,
    /// Only messages with original time at or after this (RFC 3339).
    #[arg(long)]
    pub start: Option<String>,
    /// Only messages with original time before this (RFC 3339).
    #[arg(long)]
    pub end: Option<String>,
    /// Only messages from this sequence on.
    #[arg(long)]
    pub start_seq: Option<u64>,
    /// Only messages up to this sequence.
    #[arg(long)]
    pub end_seq: Option<u64>,
    /// Only messages on these subjects (comma-separated, wildcards allowed).
    #[arg(long, value_delimiter = ',')]
    pub subjects: Vec<String>,
    /// Replicas of the restored stream.
    #[arg(long)]
    pub replicas: Option<u64>,
    /// Place the restored stream in this cluster.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Placement tags (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub tags: Vec<String>,
    /// auto, server-archive, publish, or append (into an existing stream).
    #[arg(long)]
    pub method: Option<String>,
    /// Do not recreate the saved durable consumers.
    #[arg(long)]
    pub no_consumers: bool,
    /// Show exactly what would be written; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Repeating a request with the same key starts one job (default: a key for this run).
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Follow the job to its end (exit 1 if it fails).
    #[arg(long)]
    pub wait: bool,
}

const RESTORE_FLAGS: &[(&str, &str)] = &[
    ("stream", "--stream"),
    ("as", "--as"),
    ("source", "--source"),
    ("backup", "--backup"),
    ("start_seq", "--start-seq"),
    ("end_seq", "--end-seq"),
    ("start", "--start"),
    ("end", "--end"),
    ("subjects", "--subjects"),
    ("replicas", "--replicas"),
    ("placement", "--cluster/--tags"),
    ("method", "--method"),
    ("consumers", "--no-consumers"),
    ("dry_run", "--dry-run"),
];

pub async fn restore(ctx: &Ctx, a: &RestoreArgs) -> Result<(), CliError> {
    let (backup, source) = restore_source(&a.source, a.backup.as_deref())?;
    let (start, end) = (
        time("--start", a.start.as_deref())?,
        time("--end", a.end.as_deref())?,
    );
    if let (Some(s), Some(e)) = (start, end)
        && s >= e
    {
        return Err(CliError::Usage(format!(
            "--start {} is not before --end {}",
            output::time(s),
            output::time(e)
        )));
    }
    if let (Some(s), Some(e)) = (a.start_seq, a.end_seq)
        && s > e
    {
        return Err(CliError::Usage(format!(
            "--start-seq {s} is after --end-seq {e}"
        )));
    }
    let placement = (a.cluster.is_some() || !a.tags.is_empty()).then(|| Placement {
        cluster: a.cluster.clone(),
        tags: a.tags.clone(),
    });
    let body = RestoreBackup {
        backup,
        stream: a.stream.clone(),
        as_stream: a.as_stream.clone(),
        source,
        start,
        end,
        start_seq: a.start_seq,
        end_seq: a.end_seq,
        subjects: a.subjects.clone(),
        replicas: a.replicas,
        placement,
        method: choice("--method", a.method.as_deref())?,
        consumers: a.no_consumers.then_some(false),
        dry_run: a.dry_run,
        idempotency_key: Some(idempotency_key(a.idempotency_key.as_deref())),
        correlation_id: None,
    };
    if a.dry_run {
        let plan: RestorePlan = ctx
            .client
            .request(CMD_RESTORE, &body)
            .await
            .map_err(|e| e.with_flags(RESTORE_FLAGS))?;
        if ctx.json {
            output::json(&plan)
        } else {
            output::plan(&plan)
        }
        return Ok(());
    }
    let accepted: Accepted = ctx
        .client
        .start(CMD_RESTORE, &body)
        .await
        .map_err(|e| e.with_flags(RESTORE_FLAGS))?;
    after_accept(ctx, accepted, a.wait).await
}
