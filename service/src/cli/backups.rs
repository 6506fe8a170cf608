//! `backup-event-streams`, `list-backups`, `verify-backup`: writing backups and looking at them.

use clap::Args;

use cim_backup_contracts::commands::{
    BackupRef, BackupsQuery, CompressionAlgorithm, StartBackup, VerifyBackup,
};
use cim_backup_contracts::events::{BackupMode, VerifyMode};
use cim_backup_contracts::replies::Accepted;
use cim_backup_contracts::subjects::{CMD_START, CMD_VERIFY, QRY_BACKUPS};
use cim_backup_contracts::views::CatalogEntry;

use super::args::{idempotency_key, location};
use super::client::CliError;
use super::follow::after_accept;
use super::{Ctx, output};

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Streams to back up, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub streams: Vec<String>,
    /// Where: a configured name, a directory, file:///dir, s3://bucket/prefix (default: the
    /// service's default destination).
    #[arg(long)]
    pub destination: Option<String>,
    /// Segment compression.
    #[arg(long, value_parser = ["zstd", "none"])]
    pub compress: Option<String>,
    /// zstd level 1..=19 (default: the service's).
    #[arg(long)]
    pub zstd_level: Option<i32>,
    /// Back up every stream in full (default: incremental where an earlier backup exists).
    #[arg(long)]
    pub full: bool,
    /// Encrypt segments to the recipients configured for the service (default: as the
    /// destination is configured, else as the streams' existing backups there are).
    #[arg(long, conflicts_with = "no_encrypt")]
    pub encrypt: bool,
    /// Do not encrypt (refused on a stream whose backups in the destination are encrypted,
    /// unless --full).
    #[arg(long)]
    pub no_encrypt: bool,
    /// Store the server's own snapshot (full-fidelity image, restored by the server).
    #[arg(long)]
    pub snapshot: bool,
    /// Repeating a request with the same key starts one job (default: a key for this run).
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Follow the job to its end (exit 1 if it fails).
    #[arg(long)]
    pub wait: bool,
}

const BACKUP_FLAGS: &[(&str, &str)] = &[
    ("streams", "--streams"),
    ("destination", "--destination"),
    ("compress", "--compress"),
    ("zstd_level", "--zstd-level"),
    ("full", "--full"),
    ("incremental", "--full"),
    ("encrypt", "--encrypt"),
    ("mode", "--snapshot"),
    ("idempotency_key", "--idempotency-key"),
];

pub async fn backup(ctx: &Ctx, a: &BackupArgs) -> Result<(), CliError> {
    let compress = match a.compress.as_deref() {
        Some("none") => Some(CompressionAlgorithm::None),
        Some(_) => Some(CompressionAlgorithm::Zstd),
        None => None,
    };
    let body = StartBackup {
        streams: a.streams.clone(),
        trees: Vec::new(),
        parallel: None,
        destination: a.destination.as_deref().map(location),
        compress,
        zstd_level: a.zstd_level,
        full: a.full,
        incremental: None,
        encrypt: match (a.encrypt, a.no_encrypt) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        mode: a.snapshot.then_some(BackupMode::Snapshot),
        idempotency_key: Some(idempotency_key(a.idempotency_key.as_deref())),
        correlation_id: None,
    };
    let accepted: Accepted = ctx
        .client
        .start(CMD_START, &body)
        .await
        .map_err(|e| e.with_flags(BACKUP_FLAGS))?;
    after_accept(ctx, accepted, a.wait).await
}

#[derive(Debug, Args)]
pub struct ListBackupsArgs {
    /// Only backups that hold this stream.
    #[arg(long)]
    pub stream: Option<String>,
    /// List what is stored in this destination (a name, a directory or a URL) instead of the
    /// catalog; finds backups written by other services too.
    #[arg(long)]
    pub destination: Option<String>,
}

pub async fn list(ctx: &Ctx, a: &ListBackupsArgs) -> Result<(), CliError> {
    let query = BackupsQuery {
        stream: a.stream.clone(),
        destination: a.destination.as_deref().map(location),
    };
    let entries: Vec<CatalogEntry> =
        ctx.client.request(QRY_BACKUPS, &query).await.map_err(|e| {
            e.with_flags(&[("stream", "--stream"), ("destination", "--destination")])
        })?;
    if ctx.json {
        output::json(&entries)
    } else {
        output::backups(&entries)
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Backup id, or `latest` (with --stream).
    #[arg(long, default_value = "latest")]
    pub backup: String,
    /// With `latest`: the stream whose newest backup is meant.
    #[arg(long)]
    pub stream: Option<String>,
    /// Where the backup is stored: a name, a directory or a URL (default: as the catalog says).
    #[arg(long)]
    pub source: Option<String>,
    /// Only check that every object exists with its size (fast; no key needed).
    #[arg(long)]
    pub structural: bool,
    /// Repeating a request with the same key starts one job (default: a key for this run).
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Follow the job to its end (exit 1 if the backup fails verification).
    #[arg(long)]
    pub wait: bool,
}

pub async fn verify(ctx: &Ctx, a: &VerifyArgs) -> Result<(), CliError> {
    let backup: BackupRef = a
        .backup
        .parse()
        .map_err(|e| CliError::Usage(format!("--backup: {e}")))?;
    let body = VerifyBackup {
        backup,
        stream: a.stream.clone(),
        source: a.source.as_deref().map(location),
        mode: a.structural.then_some(VerifyMode::Structural),
        idempotency_key: Some(idempotency_key(a.idempotency_key.as_deref())),
        correlation_id: None,
    };
    let accepted: Accepted = ctx.client.start(CMD_VERIFY, &body).await.map_err(|e| {
        e.with_flags(&[
            ("backup", "--backup"),
            ("stream", "--stream"),
            ("source", "--source"),
            ("mode", "--structural"),
        ])
    })?;
    after_accept(ctx, accepted, a.wait).await
}
