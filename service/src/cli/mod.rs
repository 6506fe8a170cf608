//! The `cim-backup` command line: `serve` runs the service; every other command is a thin
//! client of the NATS contract (the same requests `nats req` would send).
//!
//! # Layout
//! - [`client`] — request/reply and the error → exit-code mapping.
//! - [`output`] — JSON, tables and progress bars.

pub mod client;
pub mod output;
pub mod repair;

use std::path::PathBuf;
use std::time::Duration;

use cim_backup_contracts::JobId;
use cim_backup_contracts::commands::{
    BackupRef, BackupsQuery, CancelJob, CheckStream, CompressionAlgorithm, JobQuery, JobsQuery,
    RestoreBackup, StartBackup, VerifyBackup,
};
use cim_backup_contracts::events::{BackupMode, Placement, RestoreMethod, VerifyMode};
use cim_backup_contracts::integrity::{ChainBy, ChainProfile, ProfileKind};
use cim_backup_contracts::replies::{Accepted, CancelAccepted, RestorePlan};
use cim_backup_contracts::subjects::{
    CMD_CANCEL, CMD_CHECK, CMD_RESTORE, CMD_START, CMD_VERIFY, QRY_BACKUPS, QRY_JOB, QRY_JOBS,
};
use cim_backup_contracts::views::{CatalogEntry, JobKind, JobState, JobView};
use clap::{Args, Parser, Subcommand};

use crate::config::{Config, DestinationConfig, NatsConfig};
use client::{CliError, Client};

const EXIT_CODES: &str = "Exit codes: 0 ok (a check: clean) · 1 job failed or was cancelled (a check: \
could not check) · 2 usage error · 3 request rejected by the service (4xx) · 4 service unavailable or \
failed (5xx, no responders, timeout) · 5 a check found corruption";

/// Backup, restore and verify CIM event streams over NATS.
#[derive(Debug, Parser)]
#[command(name = "cim-backup", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// NATS server URL.
    #[arg(
        long,
        global = true,
        env = "CIM_BACKUP_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// NATS credentials file.
    #[arg(long, global = true, env = "CIM_BACKUP_NATS_CREDS")]
    pub creds: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for a reply.
    #[arg(long, global = true, default_value_t = 10)]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service.
    Serve(ServeArgs),
    /// Back up streams (runbook: `backup-event-streams --streams A,B --destination URL`).
    BackupEventStreams(BackupArgs),
    /// Show a job (`--watch` follows it to its end with a progress bar).
    BackupStatus(StatusArgs),
    /// List jobs, newest first.
    ListJobs(ListJobsArgs),
    /// List backups from the catalog, or from a destination.
    ListBackups(ListBackupsArgs),
    /// Re-read and check every object and record of a backup.
    VerifyBackup(VerifyArgs),
    /// Restore a stream from a backup into a new (or deleted) stream.
    RestoreEvents(RestoreArgs),
    /// Cancel a running job.
    CancelJob(CancelArgs),
    /// Walk CID chains of streams (or a backup) and report every break (runbook:
    /// `check-data-integrity --deep`).
    CheckDataIntegrity(CheckArgs),
    /// Find the exact sequence where a stream's chains break, from a suspected start.
    FindCorruptionPoint(FindArgs),
    /// Validate every event from a sequence on and, if all are valid, reset the projectors'
    /// durable consumers to it so they replay (runbook: `replay-corrupted-events --from-seq N
    /// --validate-cids`).
    ReplayCorruptedEvents(ReplayArgs),
    /// Rebuild a live stream so that from a sequence on it holds a backup's records (runbook:
    /// `restore-from-point --stream S --sequence N --source BACKUP`). Shows the plan first; runs
    /// with --confirm (or a typed confirmation on a terminal).
    RestoreFromPoint(RepairArgs),
}

#[derive(Debug, Args)]
pub struct RepairArgs {
    #[arg(long)]
    pub stream: String,
    /// The first sequence replaced by the backup's records (the corruption point, or before).
    #[arg(long)]
    pub sequence: u64,
    /// A backup id, `latest`, or where backups are stored (then the newest backup of the stream
    /// there, or --backup).
    #[arg(long, default_value = "latest")]
    pub source: String,
    /// A backup id inside --source.
    #[arg(long)]
    pub backup: Option<String>,
    /// Show exactly what would change; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Run without asking (the plan is what --dry-run shows).
    #[arg(long, alias = "yes")]
    pub confirm: bool,
    /// Keep live messages newer than the backup.
    #[arg(long)]
    pub keep_newer: bool,
    /// Delete the copy of the stream as it was once the repaired one checks clean.
    #[arg(long)]
    pub drop_safety_copy: bool,
    /// Return once the job is accepted instead of following it.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub profile: ProfileArgs,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The stream (default: the one stream configured for integrity checks).
    #[arg(long)]
    pub stream: Option<String>,
    #[arg(long)]
    pub from_seq: u64,
    /// Validate CIDs on the way (always done; accepted for the runbook's command line).
    #[arg(long)]
    pub validate_cids: bool,
    /// Durable consumers to reset (default: the stream's configured projectors).
    #[arg(long, value_delimiter = ',')]
    pub consumers: Vec<String>,
    #[command(flatten)]
    pub profile: ProfileArgs,
}

/// How a stream's messages chain (default: the service's configuration for the stream).
#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// native, cim-ipld, x-cid-headers or link-only.
    #[arg(long)]
    pub profile: Option<String>,
    /// What a chain is: `stream`, `subject:<token index>` or `field:<json path>`.
    #[arg(long)]
    pub chain_by: Option<String>,
    /// link-only: the JSON field of an event's CID.
    #[arg(long)]
    pub cid_field: Option<String>,
    /// link-only: the JSON field of the predecessor's CID.
    #[arg(long)]
    pub previous_field: Option<String>,
    /// link-only: a per-chain sequence field.
    #[arg(long)]
    pub sequence_field: Option<String>,
}

impl ProfileArgs {
    fn to_profile(&self) -> Result<Option<ChainProfile>, CliError> {
        let Some(profile) = &self.profile else {
            return match self.chain_by.is_some() || self.cid_field.is_some() {
                true => Err(CliError::Usage(
                    "--chain-by and the field options need --profile".into(),
                )),
                false => Ok(None),
            };
        };
        let kind: ProfileKind = serde_json::from_value(serde_json::Value::String(profile.clone()))
            .map_err(|e| CliError::Usage(format!("--profile: {e}")))?;
        let chain_by = self
            .chain_by
            .as_deref()
            .map(|c| match c.split_once(':') {
                None if c == "stream" => Ok(ChainBy::Stream),
                Some(("subject", i)) => i.parse().map(ChainBy::SubjectToken).map_err(|_| {
                    CliError::Usage(format!("--chain-by: {i:?} is not a token index"))
                }),
                Some(("field", f)) => Ok(ChainBy::Field(f.to_owned())),
                _ => Err(CliError::Usage(format!(
                    "--chain-by: {c:?}: use stream, subject:<n> or field:<path>"
                ))),
            })
            .transpose()?;
        Ok(Some(ChainProfile {
            profile: kind,
            chain_by,
            cid_field: self.cid_field.clone(),
            previous_field: self.previous_field.clone(),
            sequence_field: self.sequence_field.clone(),
        }))
    }
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Streams to check (comma-separated; default: every configured one).
    #[arg(long, value_delimiter = ',')]
    pub stream: Vec<String>,
    /// Also compare the configured KV projections with the chains.
    #[arg(long)]
    pub deep: bool,
    /// Check this stored backup (id or latest) of the stream instead of the live stream.
    #[arg(long)]
    pub backup: Option<String>,
    #[arg(long)]
    pub source: Option<String>,
    #[command(flatten)]
    pub profile: ProfileArgs,
    /// Findings listed per stream (all are counted).
    #[arg(long)]
    pub max_findings: Option<usize>,
}

#[derive(Debug, Args)]
pub struct FindArgs {
    #[arg(long)]
    pub stream: String,
    /// Where to start looking (a sequence before the suspected corruption).
    #[arg(long)]
    pub start_seq: u64,
    #[command(flatten)]
    pub profile: ProfileArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(long, env = "CIM_BACKUP_CONFIG")]
    pub config: Option<PathBuf>,
    /// Start a local nats-server (JetStream, store in DATA_DIR/nats) and use DATA_DIR/archive as
    /// the default destination `local`.
    #[arg(long)]
    pub embedded: bool,
    /// Data directory of the embedded mode.
    #[arg(long, env = "CIM_BACKUP_DATA_DIR", default_value = ".cim-backup")]
    pub data_dir: PathBuf,
    /// Client port of the embedded nats-server.
    #[arg(long, default_value_t = 4222)]
    pub nats_port: u16,
    /// Name of this instance (recorded as the runner of its jobs).
    #[arg(long, env = "CIM_BACKUP_INSTANCE")]
    pub instance: Option<String>,
    /// Default destination (configured name or URL).
    #[arg(long, env = "CIM_BACKUP_DESTINATION")]
    pub destination: Option<String>,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Comma-separated stream names.
    #[arg(long, value_delimiter = ',', required = true)]
    pub streams: Vec<String>,
    /// Destination: configured name, file:///dir, s3://bucket/prefix (default: the service's).
    #[arg(long)]
    pub destination: Option<String>,
    /// Segment compression.
    #[arg(long, value_parser = ["zstd", "none"])]
    pub compress: Option<String>,
    #[arg(long)]
    pub zstd_level: Option<i32>,
    /// Force a full backup (default: incremental where an earlier backup exists).
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
    /// Repeating a request with the same key starts one job.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Follow the job to its end (exit 1 if it fails).
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long)]
    pub job_id: JobId,
    /// Follow the job until it ends.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, Args)]
pub struct ListJobsArgs {
    #[arg(long)]
    pub kind: Option<String>,
    #[arg(long)]
    pub state: Option<String>,
    #[arg(long)]
    pub limit: Option<usize>,
}

#[derive(Debug, Args)]
pub struct ListBackupsArgs {
    #[arg(long)]
    pub stream: Option<String>,
    /// List what is stored in this destination instead of the catalog.
    #[arg(long)]
    pub destination: Option<String>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Backup id, or `latest` (with --stream).
    #[arg(long, default_value = "latest")]
    pub backup: String,
    #[arg(long)]
    pub stream: Option<String>,
    /// Where the backup is stored (default: as the catalog says).
    #[arg(long)]
    pub source: Option<String>,
    /// Only check that every object exists with its size (fast; no key needed).
    #[arg(long)]
    pub structural: bool,
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Stream inside the backup.
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
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    #[arg(long)]
    pub job_id: JobId,
    #[arg(long)]
    pub reason: Option<String>,
}

/// Runs the CLI; returns the process exit code.
pub async fn run(cli: Cli) -> u8 {
    let result = match cli.command {
        Command::Serve(ref args) => return serve(&cli, args).await,
        _ => client_command(&cli).await,
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            if cli.json {
                output::json(
                    &serde_json::json!({ "error": e.to_string(), "exit_code": e.exit_code() }),
                );
            } else {
                eprintln!("cim-backup: {e}");
            }
            e.exit_code()
        }
    }
}

fn nats_config(cli: &Cli) -> NatsConfig {
    NatsConfig {
        url: cli.nats_url.clone(),
        creds: cli.creds.clone(),
        ..NatsConfig::default()
    }
}

async fn serve(cli: &Cli, args: &ServeArgs) -> u8 {
    let mut config = match &args.config {
        Some(path) => match Config::from_file(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cim-backup: {e}");
                return 2;
            }
        },
        None => Config::default(),
    };
    // Flags and their environment variables override the file; the file overrides defaults.
    let url_from_flag = std::env::args().any(|a| a.starts_with("--nats-url"))
        || std::env::var_os("CIM_BACKUP_NATS_URL").is_some();
    if url_from_flag || args.config.is_none() {
        config.nats.url = cli.nats_url.clone();
    }
    if cli.creds.is_some() {
        config.nats.creds = cli.creds.clone();
    }
    if let Some(instance) = &args.instance {
        config.service.instance = instance.clone();
    }
    if let Some(destination) = &args.destination {
        config.defaults.destination = Some(destination.clone());
    }
    let _embedded = if args.embedded {
        let data_dir = match std::path::absolute(&args.data_dir) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("cim-backup: data dir {}: {e}", args.data_dir.display());
                return 2;
            }
        };
        let nats = match crate::embedded::EmbeddedNats::start(&data_dir, args.nats_port).await {
            Ok(n) => n,
            Err(e) => {
                eprintln!("cim-backup: {e}");
                return 4;
            }
        };
        config.nats.url = nats.url.clone();
        let archive = data_dir.join("archive");
        let url = format!("file://{}", archive.display());
        config
            .destinations
            .entry("local".into())
            .or_insert_with(|| DestinationConfig::url(&url));
        config
            .defaults
            .destination
            .get_or_insert_with(|| "local".into());
        eprintln!(
            "cim-backup: embedded nats-server at {} (store {}), default destination local = {url}",
            nats.url,
            data_dir.join("nats").display()
        );
        Some(nats)
    } else {
        None
    };
    eprintln!(
        "cim-backup: serving on {} as instance {:?}; Ctrl-C to stop",
        config.nats.url, config.service.instance
    );
    match crate::api::serve(config, crate::api::shutdown_signal()).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cim-backup: {e}");
            4
        }
    }
}

async fn client_command(cli: &Cli) -> Result<(), CliError> {
    let client = Client::connect(&nats_config(cli), Duration::from_secs(cli.timeout)).await?;
    match &cli.command {
        Command::Serve(_) => unreachable!("handled by serve"),
        Command::BackupEventStreams(a) => {
            let compress = match a.compress.as_deref() {
                Some("none") => Some(CompressionAlgorithm::None),
                Some(_) => Some(CompressionAlgorithm::Zstd),
                None => None,
            };
            let body = StartBackup {
                streams: a.streams.clone(),
                destination: a.destination.clone(),
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
                idempotency_key: a.idempotency_key.clone(),
                correlation_id: None,
            };
            let accepted: Accepted = client.request(CMD_START, &body).await?;
            after_accept(cli, &client, accepted, a.wait).await
        }
        Command::BackupStatus(a) => {
            if a.watch {
                let view = watch(cli, &client, &a.job_id, false).await?;
                return ended(&view);
            }
            let view: JobView = client
                .request(
                    QRY_JOB,
                    &JobQuery {
                        job_id: a.job_id.clone(),
                    },
                )
                .await?;
            if cli.json {
                output::json(&view)
            } else {
                output::job(&view)
            }
            Ok(())
        }
        Command::ListJobs(a) => {
            let kind = a
                .kind
                .as_deref()
                .map(|k| k.parse::<JobKind>())
                .transpose()
                .map_err(CliError::Usage)?;
            let state = a
                .state
                .as_deref()
                .map(|s| {
                    serde_json::from_value::<JobState>(serde_json::Value::String(s.to_owned()))
                })
                .transpose()
                .map_err(|e| CliError::Usage(format!("--state: {e}")))?;
            let views: Vec<JobView> = client
                .request(
                    QRY_JOBS,
                    &JobsQuery {
                        kind,
                        state,
                        limit: a.limit,
                    },
                )
                .await?;
            if cli.json {
                output::json(&views)
            } else {
                output::jobs(&views)
            }
            Ok(())
        }
        Command::ListBackups(a) => {
            let query = BackupsQuery {
                stream: a.stream.clone(),
                destination: a.destination.clone(),
            };
            let entries: Vec<CatalogEntry> = client.request(QRY_BACKUPS, &query).await?;
            if cli.json {
                output::json(&entries)
            } else {
                output::backups(&entries)
            }
            Ok(())
        }
        Command::VerifyBackup(a) => {
            let backup: BackupRef = a
                .backup
                .parse()
                .map_err(|e| CliError::Usage(format!("--backup: {e}")))?;
            let body = VerifyBackup {
                backup,
                stream: a.stream.clone(),
                source: a.source.as_deref().map(location),
                mode: a.structural.then_some(VerifyMode::Structural),
                idempotency_key: None,
                correlation_id: None,
            };
            let accepted: Accepted = client.request(CMD_VERIFY, &body).await?;
            after_accept(cli, &client, accepted, a.wait).await
        }
        Command::RestoreEvents(a) => {
            let (backup, source) = restore_source(&a.source, a.backup.as_deref())?;
            let time = |flag: &str, v: &Option<String>| {
                v.as_deref()
                    .map(|t| {
                        time::OffsetDateTime::parse(
                            t,
                            &time::format_description::well_known::Rfc3339,
                        )
                    })
                    .transpose()
                    .map_err(|e| CliError::Usage(format!("{flag}: not an RFC 3339 time: {e}")))
            };
            let method = a
                .method
                .as_deref()
                .map(|m| {
                    serde_json::from_value::<RestoreMethod>(serde_json::Value::String(m.to_owned()))
                })
                .transpose()
                .map_err(|e| CliError::Usage(format!("--method: {e}")))?;
            let placement = (a.cluster.is_some() || !a.tags.is_empty()).then(|| Placement {
                cluster: a.cluster.clone(),
                tags: a.tags.clone(),
            });
            let body = RestoreBackup {
                backup,
                stream: a.stream.clone(),
                as_stream: a.as_stream.clone(),
                source,
                start: time("--start", &a.start)?,
                end: time("--end", &a.end)?,
                start_seq: a.start_seq,
                end_seq: a.end_seq,
                subjects: a.subjects.clone(),
                replicas: a.replicas,
                placement,
                method,
                consumers: a.no_consumers.then_some(false),
                dry_run: a.dry_run,
                idempotency_key: None,
                correlation_id: None,
            };
            if a.dry_run {
                let plan: RestorePlan = client.request(CMD_RESTORE, &body).await?;
                if cli.json {
                    output::json(&plan)
                } else {
                    output::plan(&plan)
                }
                return Ok(());
            }
            let accepted: Accepted = client.request(CMD_RESTORE, &body).await?;
            after_accept(cli, &client, accepted, a.wait).await
        }
        Command::CheckDataIntegrity(a) => {
            let backup = a
                .backup
                .as_deref()
                .map(|b| b.parse::<BackupRef>())
                .transpose()
                .map_err(|e| CliError::Usage(format!("--backup: {e}")))?;
            let body = CheckStream {
                streams: a.stream.clone(),
                backup,
                source: a.source.as_deref().map(location),
                profile: a.profile.to_profile()?,
                start_seq: None,
                end_seq: None,
                deep: a.deep,
                projections: vec![],
                max_findings: a.max_findings,
                replay_consumers: None,
                idempotency_key: None,
                correlation_id: None,
            };
            let accepted: Accepted = client.request(CMD_CHECK, &body).await?;
            let view = finished(cli, &client, &accepted.job_id).await?;
            let reports = view.reports.clone().unwrap_or_default();
            if cli.json {
                output::json(&view);
            } else {
                for r in &reports {
                    println!("[{}]", r.stream);
                    for line in r.summary_lines() {
                        println!("{line}");
                    }
                    output::findings(r);
                }
            }
            verdict(&reports)
        }
        Command::FindCorruptionPoint(a) => {
            let body = CheckStream {
                streams: vec![a.stream.clone()],
                backup: None,
                source: None,
                profile: a.profile.to_profile()?,
                start_seq: Some(a.start_seq),
                end_seq: None,
                deep: false,
                projections: vec![],
                max_findings: Some(1),
                replay_consumers: None,
                idempotency_key: None,
                correlation_id: None,
            };
            let accepted: Accepted = client.request(CMD_CHECK, &body).await?;
            let view = finished(cli, &client, &accepted.job_id).await?;
            let reports = view.reports.clone().unwrap_or_default();
            if cli.json {
                output::json(&reports);
            } else {
                output::corruption_point(&reports[0], a.start_seq);
            }
            verdict(&reports)
        }
        Command::ReplayCorruptedEvents(a) => {
            let body = CheckStream {
                streams: a.stream.clone().into_iter().collect(),
                backup: None,
                source: None,
                profile: a.profile.to_profile()?,
                start_seq: Some(a.from_seq),
                end_seq: None,
                deep: false,
                projections: vec![],
                max_findings: Some(1),
                replay_consumers: Some(a.consumers.clone()),
                idempotency_key: None,
                correlation_id: None,
            };
            let accepted: Accepted = client.request(CMD_CHECK, &body).await?;
            let view = finished(cli, &client, &accepted.job_id).await?;
            let reports = view.reports.clone().unwrap_or_default();
            if cli.json {
                output::json(&view);
            } else {
                let r = &reports[0];
                match r.findings.first() {
                    Some(f) => println!(
                        "{}: stopped at seq {} ({:?}: {}); no consumer was reset",
                        r.stream, f.stream_seq, f.kind, f.detail
                    ),
                    None => println!(
                        "{}: {} events from seq {} valid; consumers reset to replay them: {}",
                        r.stream,
                        r.messages_checked,
                        a.from_seq,
                        view.replayed.join(", ")
                    ),
                }
            }
            verdict(&reports)
        }
        Command::RestoreFromPoint(a) => repair::restore_from_point(cli, &client, a).await,
        Command::CancelJob(a) => {
            let reply: CancelAccepted = client
                .request(
                    CMD_CANCEL,
                    &CancelJob {
                        job_id: a.job_id.clone(),
                        reason: a.reason.clone(),
                    },
                )
                .await?;
            if cli.json {
                output::json(&reply)
            } else if reply.requested {
                println!("cancellation of {} requested", reply.job_id)
            } else {
                println!("cancellation of {} was already requested", reply.job_id)
            }
            Ok(())
        }
    }
}

/// Waits for a job without drawing (for commands whose output is a report).
async fn finished(cli: &Cli, client: &Client, job_id: &JobId) -> Result<JobView, CliError> {
    let view = watch(cli, client, job_id, true).await?;
    ended(&view)?;
    Ok(view)
}

/// Clean → ok; findings → exit 5.
fn verdict(reports: &[cim_backup_contracts::integrity::IntegrityReport]) -> Result<(), CliError> {
    match reports.iter().find(|r| !r.is_clean()) {
        None => Ok(()),
        Some(r) => Err(CliError::Corrupted(r.summary_lines().join("; "))),
    }
}

/// `--source` of `restore-events`: a backup id, `latest`, or a location (directory, URL, name).
fn restore_source(
    source: &str,
    backup: Option<&str>,
) -> Result<(BackupRef, Option<String>), CliError> {
    let parse = |s: &str| {
        s.parse::<BackupRef>()
            .map_err(|e| CliError::Usage(format!("--backup: {e}")))
    };
    if let Ok(r) = source.parse::<BackupRef>() {
        if backup.is_some() {
            return Err(CliError::Usage(
                "--backup needs --source to be a location, not a backup id".into(),
            ));
        }
        return Ok((r, None));
    }
    let backup = match backup {
        Some(b) => parse(b)?,
        None => BackupRef::Latest,
    };
    Ok((backup, Some(location(source))))
}

/// A path (absolute, or starting with `./` or `../`) means a local directory; anything else is
/// a URL or a configured destination name, resolved by the service.
fn location(source: &str) -> String {
    let is_path = source.starts_with('/') || source.starts_with("./") || source.starts_with("../");
    match is_path.then(|| std::path::absolute(source)) {
        Some(Ok(path)) => format!("file://{}", path.display()),
        _ => source.to_owned(),
    }
}

async fn after_accept(
    cli: &Cli,
    client: &Client,
    accepted: Accepted,
    wait: bool,
) -> Result<(), CliError> {
    if !wait {
        if cli.json {
            output::json(&accepted);
        } else {
            let note = if accepted.duplicate {
                " (same idempotency key: existing job)"
            } else {
                ""
            };
            println!(
                "{} job {} {}{note}",
                accepted.kind, accepted.job_id, accepted.state
            );
        }
        return Ok(());
    }
    let view = watch(cli, client, &accepted.job_id, false).await?;
    ended(&view)
}

/// Polls the job view until the job ends, drawing progress (and showing the view unless
/// `quiet`, for callers that print their own report).
async fn watch(
    cli: &Cli,
    client: &Client,
    job_id: &JobId,
    quiet: bool,
) -> Result<JobView, CliError> {
    let mut progress = output::Progress::new(cli.json);
    loop {
        let view: JobView = client
            .request(
                QRY_JOB,
                &JobQuery {
                    job_id: job_id.clone(),
                },
            )
            .await?;
        progress.update(&view);
        if view.state.is_terminal() {
            progress.finish();
            if !quiet {
                if cli.json {
                    output::json(&view)
                } else {
                    output::job(&view)
                }
            }
            return Ok(view);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn ended(view: &JobView) -> Result<(), CliError> {
    match view.state {
        JobState::Completed => Ok(()),
        state => Err(CliError::JobDidNotComplete {
            job_id: view.job_id.to_string(),
            state: state.to_string(),
            message: view.error.as_ref().map(|e| e.message.clone()),
        }),
    }
}
