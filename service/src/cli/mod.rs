//! The `cim-backup` command line: `serve` runs the service; every other command is a thin
//! client of the NATS contract (the same requests `nats req` would send).
//!
//! # Layout
//! - [`client`] — request/reply, repeating a job's start after a lost reply, errors and their
//!   exit codes, JSON field names told as flags.
//! - [`output`] — one JSON document per invocation, tables, times, sizes, rates, progress.
//! - [`follow`] — following a job: its id at once, progress, Ctrl-C, the closing summary.
//! - [`args`] — what several commands parse: locations, times, sources, chain profiles.
//! - One module per command group, each owning its arguments, request and output:
//!   [`serve`]; [`backups`] (backup-event-streams, list-backups, verify-backup); [`restore`]
//!   (restore-events); [`jobs`] (backup-status, list-jobs, cancel-job); [`integrity`]
//!   (check-data-integrity, find-corruption-point, replay-corrupted-events); [`repair`]
//!   (restore-from-point); [`models`] (list-gpu-models, backup-gpu-models,
//!   verify-model-backup, restore-gpu-model, restore-all-models, verify-model);
//!   [`checkpoints`] (backup-checkpoint, restore-checkpoint); [`prometheus`]
//!   (backup-prometheus, restore-prometheus); [`nixos`] (backup-nixos-config); [`grafana`]
//!   (backup-grafana); [`projections`] (list-domains, snapshot-projections,
//!   list-projection-snapshots, restore-projection-snapshot, clear-projections); [`replay`]
//!   (replay-events, replay-all-events, rebuild-projections, rebuild-all-projections);
//!   [`domain_configs`] (export-domain-configs, import-domain-configs, restore-all-configs);
//!   [`key_restore`] (restore-deleted).

pub mod args;
pub mod backups;
pub mod checkpoints;
pub mod client;
pub mod domain_configs;
pub mod follow;
pub mod grafana;
pub mod integrity;
pub mod jobs;
pub mod key_restore;
pub mod models;
pub mod nixos;
pub mod output;
pub mod projections;
pub mod prometheus;
pub mod repair;
pub mod replay;
pub mod restore;
pub mod serve;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::NatsConfig;
use client::{CliError, Client};

const EXIT_CODES: &str = "Exit codes: 0 ok (a check: clean) · 1 job failed or was cancelled (a check: \
could not check, or checked nothing) · 2 usage error · 3 request rejected by the service (4xx) · \
4 service unavailable or failed (5xx, no responders, timeout) · 5 a check found corruption · \
130 stopped following a job with Ctrl-C (the job goes on)";

/// The NATS URL when neither `--nats-url` nor `CIM_BACKUP_NATS_URL` says.
const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// Backup, restore, verify and check CIM event streams over NATS.
#[derive(Debug, Parser)]
#[command(name = "cim-backup", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// NATS server URL [default: nats://127.0.0.1:4222].
    #[arg(
        long,
        global = true,
        env = "CIM_BACKUP_NATS_URL",
        help_heading = "Global options"
    )]
    pub nats_url: Option<String>,
    /// NATS credentials file.
    #[arg(
        long,
        global = true,
        env = "CIM_BACKUP_NATS_CREDS",
        help_heading = "Global options"
    )]
    pub creds: Option<PathBuf>,
    /// Print one machine-readable JSON document (errors as {"error":{code,kind,message}}).
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,
    /// Seconds to wait for each reply.
    #[arg(
        long,
        global = true,
        default_value_t = 10,
        help_heading = "Global options"
    )]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service.
    Serve(serve::ServeArgs),
    /// Back up streams (runbook: `backup-event-streams --streams A,B --destination URL`).
    BackupEventStreams(backups::BackupArgs),
    /// Show a job (`--watch` follows it to its end with a progress bar).
    BackupStatus(jobs::StatusArgs),
    /// List jobs, newest first.
    ListJobs(jobs::ListJobsArgs),
    /// List backups from the catalog, or from a destination.
    ListBackups(backups::ListBackupsArgs),
    /// Re-read and check every object and record of a backup.
    VerifyBackup(backups::VerifyArgs),
    /// Restore a stream from a backup into a new (or deleted) stream.
    RestoreEvents(restore::RestoreArgs),
    /// Cancel a running job.
    CancelJob(jobs::CancelArgs),
    /// Walk CID chains of streams (or a backup) and report every break (runbook:
    /// `check-data-integrity --deep`).
    CheckDataIntegrity(integrity::CheckArgs),
    /// Find the exact sequence where a stream's chains break, from a suspected start.
    FindCorruptionPoint(integrity::FindArgs),
    /// Validate every event from a sequence on and, if all are valid, reset the projectors'
    /// durable consumers to it so they replay (runbook: `replay-corrupted-events --from-seq N
    /// --validate-cids`).
    ReplayCorruptedEvents(integrity::ReplayArgs),
    /// Rebuild a live stream so that from a sequence on it holds a backup's records (runbook:
    /// `restore-from-point --stream S --sequence N --source BACKUP`). Shows the plan first; runs
    /// with --confirm (or a typed confirmation on a terminal).
    RestoreFromPoint(repair::RepairArgs),
    /// List the models under an instance's models root: format (safetensors tensors, dtypes and
    /// parameters; GGUF; PyTorch zip; ONNX), size, modified time, last backup, changed since.
    ListGpuModels(models::ListModelsArgs),
    /// Back up models (each a directory or file under --source) as deduplicated file trees
    /// (runbook: `backup-gpu-models --source DIR --destination URL --parallel 4`).
    BackupGpuModels(models::BackupModelsArgs),
    /// Check a model backup deeply: every chunk, every file's sha256, safetensors headers
    /// against file sizes (runbook: `verify-model-backup --backup-path URL`).
    VerifyModelBackup(models::VerifyModelBackupArgs),
    /// Restore one model from a backup: written beside its target, every file checked against
    /// its sha256, then renamed into place; an existing model only with --overwrite (runbook:
    /// `restore-gpu-model --model-id ID --source URL --destination DIR`).
    RestoreGpuModel(models::RestoreModelArgs),
    /// Restore every model of a backup (runbook: `restore-all-models --source …/latest`).
    RestoreAllModels(models::RestoreAllModelsArgs),
    /// Check a model on its host: a file against --checksum sha256:HEX (the whole file's), or a
    /// file or directory against its backup; exit 5 on a mismatch (runbook: `verify-model --path
    /// P --checksum sha256:…`).
    VerifyModel(models::VerifyModelArgs),
    /// Back up one training checkpoint (runbook: `backup-checkpoint --file F --compress`); a
    /// file still being written is left out with a note.
    BackupCheckpoint(checkpoints::BackupCheckpointArgs),
    /// Restore a checkpoint to its original path or --destination; --resume-training then asks
    /// the training agent on cim.training.resume and says whether anyone answered.
    RestoreCheckpoint(checkpoints::RestoreCheckpointArgs),
    /// Snapshot Prometheus through its admin API, back the snapshot up as a file tree (blocks
    /// already stored cost nothing), then remove it from the server's disk.
    BackupPrometheus(prometheus::BackupPrometheusArgs),
    /// Restore Prometheus data into --data-dir; refused while a Prometheus runs on it.
    RestorePrometheus(prometheus::RestorePrometheusArgs),
    /// Back up the NixOS configuration and write it as a tar.gz (runbook: `backup-nixos-config
    /// --output FILE.tar.gz`); secrets left out unless --include-secrets (then encrypted only).
    BackupNixosConfig(nixos::BackupNixosArgs),
    /// Export Grafana through its HTTP API (folders, dashboards by uid, alert rules, and with
    /// --include-datasources its datasources) into the archive and as a tar.gz (runbook:
    /// `backup-grafana --include-datasources --output FILE.tar.gz`).
    BackupGrafana(grafana::BackupGrafanaArgs),
    /// List every domain (configured in [domains.<name>] or found by the CIM conventions) with
    /// its streams, read models, projectors, configuration and agent definitions, each marked
    /// configured or discovered.
    ListDomains(projections::ListDomainsArgs),
    /// Snapshot domains' read models, each at one pinned point, with the projectors' positions
    /// (runbook: `snapshot-projections --domains all --output DIR`).
    SnapshotProjections(projections::SnapshotArgs),
    /// List projection snapshots: id, time, read models, keys, bytes, event positions.
    ListProjectionSnapshots(projections::ListSnapshotsArgs),
    /// Put a projection snapshot back into the live buckets, after a safety snapshot of what is
    /// there (runbook: `restore-projection-snapshot --snapshot DIR|ID --domain D --verify`).
    RestoreProjectionSnapshot(projections::RestoreSnapshotArgs),
    /// Delete every key of a domain's read models, after a safety snapshot (runbook:
    /// `clear-projections --domain D --confirm`); without --confirm shows what it would delete.
    ClearProjections(projections::ClearArgs),
    /// Catch a domain's projectors up: move their consumers back to the first event at or
    /// after a time (or after a snapshot's positions) and follow until caught up (runbook:
    /// `replay-events --domain D --from-timestamp T`).
    ReplayEvents(replay::ReplayArgs),
    /// Replay every domain's events to its projectors, from the beginning unless told
    /// otherwise, at most --parallel domains at once (runbook: `replay-all-events --parallel 8`).
    ReplayAllEvents(replay::ReplayAllArgs),
    /// Rebuild a domain's read models: stop its projectors, clear the read models after a
    /// safety snapshot, replay from the first event and follow until caught up (runbook:
    /// `rebuild-projections --domain D --from-beginning`).
    RebuildProjections(replay::RebuildOneArgs),
    /// Rebuild every domain's read models (runbook: `rebuild-all-projections --parallel`).
    RebuildAllProjections(replay::RebuildAllArgs),
    /// Write every domain's NATS topology, configuration entries and agent definitions to a
    /// deterministic YAML or JSON file (runbook: `export-domain-configs --format yaml --output F`).
    ExportDomainConfigs(domain_configs::ExportArgs),
    /// Plan an export against the server (create, update, unchanged, conflict) and, with
    /// --apply, carry it out; exit 0 no change, 2 changes, 1 error (runbook:
    /// `import-domain-configs --source F --validate --dry-run`, then `--apply`).
    ImportDomainConfigs(domain_configs::ImportArgs),
    /// Import and apply the newest export in a directory (runbook: `restore-all-configs`).
    RestoreAllConfigs(domain_configs::RestoreAllArgs),
    /// Bring back a read-model key's value as of a time, from the bucket's history or the
    /// newest snapshot before it; shows what it writes, then writes it (runbook:
    /// `restore-deleted --type projection --id KEY --timestamp T`).
    RestoreDeleted(key_restore::RestoreDeletedArgs),
}

/// What every client command works with.
pub struct Ctx {
    pub client: Client,
    pub json: bool,
}

/// Runs the CLI; returns the process exit code.
pub async fn run(cli: Cli) -> u8 {
    let result = match &cli.command {
        Command::Serve(args) => return serve::serve(&cli, args).await,
        command => client_command(&cli, command).await,
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            if cli.json {
                // One document per invocation: a report or view already printed says it.
                if !output::printed() {
                    output::json(&e.to_json());
                }
            } else if !e.to_string().is_empty() {
                eprintln!("cim-backup: {e}");
            }
            e.exit_code()
        }
    }
}

async fn client_command(cli: &Cli, command: &Command) -> Result<(), CliError> {
    let config = NatsConfig {
        url: cli
            .nats_url
            .clone()
            .unwrap_or_else(|| DEFAULT_NATS_URL.to_owned()),
        creds: cli.creds.clone(),
        ..NatsConfig::default()
    };
    let ctx = Ctx {
        client: Client::connect(&config, Duration::from_secs(cli.timeout)).await?,
        json: cli.json,
    };
    match command {
        Command::Serve(_) => unreachable!("handled by run"),
        Command::BackupEventStreams(a) => backups::backup(&ctx, a).await,
        Command::ListBackups(a) => backups::list(&ctx, a).await,
        Command::VerifyBackup(a) => backups::verify(&ctx, a).await,
        Command::RestoreEvents(a) => restore::restore(&ctx, a).await,
        Command::BackupStatus(a) => jobs::status(&ctx, a).await,
        Command::ListJobs(a) => jobs::list(&ctx, a).await,
        Command::CancelJob(a) => jobs::cancel(&ctx, a).await,
        Command::CheckDataIntegrity(a) => integrity::check(&ctx, a).await,
        Command::FindCorruptionPoint(a) => integrity::find(&ctx, a).await,
        Command::ReplayCorruptedEvents(a) => integrity::replay(&ctx, a).await,
        Command::RestoreFromPoint(a) => repair::restore_from_point(&ctx, a).await,
        Command::ListGpuModels(a) => models::list(&ctx, a).await,
        Command::BackupGpuModels(a) => models::backup(&ctx, a).await,
        Command::VerifyModelBackup(a) => models::verify(&ctx, a).await,
        Command::RestoreGpuModel(a) => models::restore_model(&ctx, a).await,
        Command::RestoreAllModels(a) => models::restore_all_models(&ctx, a).await,
        Command::VerifyModel(a) => models::verify_model(&ctx, a).await,
        Command::BackupCheckpoint(a) => checkpoints::backup(&ctx, a).await,
        Command::RestoreCheckpoint(a) => checkpoints::restore(&ctx, a).await,
        Command::BackupPrometheus(a) => prometheus::backup(&ctx, a).await,
        Command::RestorePrometheus(a) => prometheus::restore(&ctx, a).await,
        Command::BackupNixosConfig(a) => nixos::backup(&ctx, a).await,
        Command::BackupGrafana(a) => grafana::backup(&ctx, a).await,
        Command::ListDomains(a) => projections::list_domains(&ctx, a).await,
        Command::SnapshotProjections(a) => projections::snapshot(&ctx, a).await,
        Command::ListProjectionSnapshots(a) => projections::list_snapshots(&ctx, a).await,
        Command::RestoreProjectionSnapshot(a) => projections::restore(&ctx, a).await,
        Command::ClearProjections(a) => projections::clear(&ctx, a).await,
        Command::ReplayEvents(a) => replay::replay_events(&ctx, a).await,
        Command::ReplayAllEvents(a) => replay::replay_all_events(&ctx, a).await,
        Command::RebuildProjections(a) => replay::rebuild_projections(&ctx, a).await,
        Command::RebuildAllProjections(a) => replay::rebuild_all_projections(&ctx, a).await,
        Command::ExportDomainConfigs(a) => domain_configs::export(&ctx, a).await,
        Command::ImportDomainConfigs(a) => domain_configs::import(&ctx, a).await,
        Command::RestoreAllConfigs(a) => domain_configs::restore_all(&ctx, a).await,
        Command::RestoreDeleted(a) => key_restore::restore_deleted(&ctx, a).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `--help` is where an operator learns a flag in the middle of an incident.
    #[test]
    fn every_option_of_every_command_has_a_line_of_help() {
        Cli::command().debug_assert();
        let root = Cli::command();
        let mut missing = Vec::new();
        for command in std::iter::once(&root).chain(root.get_subcommands()) {
            for arg in command.get_arguments() {
                if arg.get_help().is_none() && !["help", "version"].contains(&arg.get_id().as_str())
                {
                    missing.push(format!("{} --{}", command.get_name(), arg.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "options without help: {missing:?}");
    }

    #[test]
    fn global_options_are_listed_apart() {
        let root = Cli::command();
        for id in ["nats_url", "creds", "json", "timeout"] {
            let arg = root.get_arguments().find(|a| a.get_id() == id).unwrap();
            assert_eq!(arg.get_help_heading(), Some("Global options"), "{id}");
        }
    }
}
