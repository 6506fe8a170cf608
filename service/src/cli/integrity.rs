//! `check-data-integrity`, `find-corruption-point`, `replay-corrupted-events`: the runbook's
//! corruption scenario. Each is a check job followed to its end; the verdict is the exit code
//! (0 clean, 5 corrupted, 1 could not check).

use clap::Args;

use cim_backup_contracts::commands::{BackupRef, CheckStream};
use cim_backup_contracts::integrity::IntegrityReport;
use cim_backup_contracts::replies::Accepted;
use cim_backup_contracts::subjects::CMD_CHECK;

use super::args::{PROFILE_FLAGS, ProfileArgs, idempotency_key, location};
use super::client::CliError;
use super::follow::finished;
use super::{Ctx, output};

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
    /// Where that backup is stored: a name, a directory or a URL.
    #[arg(long)]
    pub source: Option<String>,
    #[command(flatten)]
    pub profile: ProfileArgs,
    /// Findings listed per stream (all are counted; default 100).
    #[arg(long)]
    pub max_findings: Option<usize>,
}

#[derive(Debug, Args)]
pub struct FindArgs {
    /// The stream to search.
    #[arg(long)]
    pub stream: String,
    /// Where to start looking: a sequence before the suspected corruption (each chain's first
    /// event from there on is trusted as its anchor).
    #[arg(long)]
    pub start_seq: u64,
    #[command(flatten)]
    pub profile: ProfileArgs,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The stream (default: the one stream configured for integrity checks).
    #[arg(long)]
    pub stream: Option<String>,
    /// The first sequence to validate and replay.
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

/// The request fields of a check and their flags.
const CHECK_FLAGS: &[(&str, &str)] = &[
    ("streams", "--stream"),
    ("backup", "--backup"),
    ("source", "--source"),
    ("start_seq", "--start-seq"),
    ("deep", "--deep"),
    ("max_findings", "--max-findings"),
    ("replay_consumers", "--consumers"),
];

/// Starts a check and follows it to its end; returns its view and reports.
async fn run_check(
    ctx: &Ctx,
    mut body: CheckStream,
) -> Result<(cim_backup_contracts::views::JobView, Vec<IntegrityReport>), CliError> {
    body.idempotency_key = Some(idempotency_key(None));
    let accepted: Accepted = ctx.client.start(CMD_CHECK, &body).await.map_err(|e| {
        e.with_flags(CHECK_FLAGS)
            .with_flags(PROFILE_FLAGS)
            .with_flags(&[("from_seq", "--from-seq")])
    })?;
    let view = finished(ctx, &accepted.job_id).await?;
    let reports = view.reports.clone().unwrap_or_default();
    Ok((view, reports))
}

fn check_body(streams: Vec<String>, profile: &ProfileArgs) -> Result<CheckStream, CliError> {
    Ok(CheckStream {
        streams,
        backup: None,
        source: None,
        profile: profile.to_profile()?,
        start_seq: None,
        end_seq: None,
        deep: false,
        projections: vec![],
        max_findings: None,
        replay_consumers: None,
        idempotency_key: None,
        correlation_id: None,
    })
}

pub async fn check(ctx: &Ctx, a: &CheckArgs) -> Result<(), CliError> {
    let mut body = check_body(a.stream.clone(), &a.profile)?;
    body.backup = a
        .backup
        .as_deref()
        .map(|b| b.parse::<BackupRef>())
        .transpose()
        .map_err(|e| CliError::Usage(format!("--backup: {e}")))?;
    body.source = a.source.as_deref().map(location);
    body.deep = a.deep;
    body.max_findings = a.max_findings;
    let (view, reports) = run_check(ctx, body).await?;
    if ctx.json {
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

pub async fn find(ctx: &Ctx, a: &FindArgs) -> Result<(), CliError> {
    let mut body = check_body(vec![a.stream.clone()], &a.profile)?;
    body.start_seq = Some(a.start_seq);
    body.max_findings = Some(1);
    let (_, reports) = run_check(ctx, body).await?;
    if ctx.json {
        output::json(&reports);
    } else {
        for r in &reports {
            output::corruption_point(r);
        }
    }
    verdict(&reports)
}

pub async fn replay(ctx: &Ctx, a: &ReplayArgs) -> Result<(), CliError> {
    let mut body = check_body(a.stream.clone().into_iter().collect(), &a.profile)?;
    body.start_seq = Some(a.from_seq);
    body.max_findings = Some(1);
    body.replay_consumers = Some(a.consumers.clone());
    let (view, reports) = run_check(ctx, body).await?;
    if ctx.json {
        output::json(&view);
    } else {
        for r in &reports {
            match r.findings.first() {
                Some(f) => println!(
                    "{}: stopped at seq {} ({}: {}); no consumer was reset",
                    r.stream,
                    f.stream_seq,
                    output::name(&f.kind),
                    f.detail
                ),
                None => println!(
                    "{}: {} events valid in {}; consumers reset to replay them from seq {}: {}",
                    r.stream,
                    r.messages_checked,
                    r.range_text(),
                    a.from_seq,
                    view.replayed.join(", ")
                ),
            }
        }
    }
    verdict(&reports)
}

/// Clean → ok; findings → exit 5; a report of nothing → "could not check" (exit 1).
fn verdict(reports: &[IntegrityReport]) -> Result<(), CliError> {
    if let Some(r) = reports
        .iter()
        .find(|r| !r.is_clean() && !r.checked_nothing())
    {
        return Err(CliError::Corrupted(r.summary_lines().join("; ")));
    }
    if let Some(r) = reports.iter().find(|r| r.checked_nothing()) {
        return Err(CliError::NothingChecked(r.summary_lines().join("; ")));
    }
    Ok(())
}
