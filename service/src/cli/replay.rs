//! `replay-events`, `replay-all-events`, `rebuild-projections`, `rebuild-all-projections`:
//! a domain's projectors moved back and followed until caught up, after their read models were
//! cleared for a rebuild (docs/PROJECTIONS.md §8).

use clap::Args;

use cim_backup_contracts::replay::{RebuildPlan, RebuildProjections, ReplayEvents};
use cim_backup_contracts::replies::Accepted;
use cim_backup_contracts::subjects::{CMD_REBUILD_PROJECTIONS, CMD_REPLAY_EVENTS};

use super::args::{idempotency_key, location};
use super::client::CliError;
use super::follow::after_accept;
use super::projections::{print_planned_model, print_safety_destination};
use super::{Ctx, output};

/// What every replay and rebuild shares.
#[derive(Debug, Args)]
pub struct FollowArgs {
    /// Seconds without one acknowledgement, with events waiting, before the job decides no
    /// projector is consuming and fails (default 30).
    #[arg(long, value_name = "SECONDS")]
    pub stall_timeout: Option<u64>,
    /// Record a checkpoint every N events per projector; an interrupted job resumes from the
    /// last one (default 100000).
    #[arg(long, value_name = "N")]
    pub checkpoint_interval: Option<u64>,
    /// Repeating a request with the same key starts one job (default: a key for this run).
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Return once the job is accepted instead of following it.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Replay every event each projector's stream holds.
    #[arg(long, conflicts_with_all = ["from_timestamp", "from_snapshot"])]
    pub from_beginning: bool,
    /// Replay from the first event at or after this RFC 3339 time (e.g. 2024-01-15T12:00:00Z).
    #[arg(long, value_name = "TIME", conflicts_with = "from_snapshot")]
    pub from_timestamp: Option<String>,
    /// Replay from the event after the position a projection snapshot recorded (an id, or
    /// `latest`: each domain's newest).
    #[arg(long, value_name = "ID")]
    pub from_snapshot: Option<String>,
    /// Where that snapshot is: a destination name, a directory or a URL (default: the catalog).
    #[arg(long, requires = "from_snapshot")]
    pub source: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The domain whose projectors catch up (comma-separated for several).
    #[arg(long, value_delimiter = ',', required = true)]
    pub domain: Vec<String>,
    #[command(flatten)]
    pub start: StartArgs,
    #[command(flatten)]
    pub follow: FollowArgs,
}

#[derive(Debug, Args)]
pub struct ReplayAllArgs {
    /// Domains replayed at once.
    #[arg(long, default_value_t = 1)]
    pub parallel: u32,
    #[command(flatten)]
    pub start: StartArgs,
    #[command(flatten)]
    pub follow: FollowArgs,
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// Accepted as the runbook spells it: a rebuild always starts at the first event.
    #[arg(long)]
    pub from_beginning: bool,
    /// The most events a projector may hold unacknowledged during the rebuild (its consumer's
    /// max_ack_pending, put back when it has caught up).
    #[arg(long, value_name = "N")]
    pub batch_size: Option<u64>,
    /// Clear read models that hold keys. Without it, a rebuild of empty read models runs and
    /// one of read models with keys only shows what it would delete.
    #[arg(long)]
    pub confirm: bool,
    /// Do not take a safety snapshot before clearing.
    #[arg(long)]
    pub no_safety_snapshot: bool,
    /// Where the safety snapshots go (default: the service's default destination).
    #[arg(long)]
    pub destination: Option<String>,
    #[command(flatten)]
    pub follow: FollowArgs,
}

#[derive(Debug, Args)]
pub struct RebuildOneArgs {
    /// The domain whose read models are rebuilt (comma-separated for several).
    #[arg(long, value_delimiter = ',', required = true)]
    pub domain: Vec<String>,
    #[command(flatten)]
    pub rebuild: RebuildArgs,
}

#[derive(Debug, Args)]
pub struct RebuildAllArgs {
    /// Domains rebuilt at once; `--parallel` alone means 8.
    #[arg(long, num_args = 0..=1, default_value_t = 1, default_missing_value = "8")]
    pub parallel: u32,
    #[command(flatten)]
    pub rebuild: RebuildArgs,
}

const FLAGS: &[(&str, &str)] = &[
    ("domains", "--domain"),
    ("from_beginning", "--from-beginning"),
    ("from_timestamp", "--from-timestamp"),
    ("from_snapshot", "--from-snapshot"),
    (
        "from",
        "--from-beginning, --from-timestamp or --from-snapshot",
    ),
    ("source", "--source"),
    ("parallel", "--parallel"),
    ("stall_timeout_secs", "--stall-timeout"),
    ("checkpoint_interval", "--checkpoint-interval"),
    ("batch_size", "--batch-size"),
    ("destination", "--destination"),
    ("confirm", "--confirm"),
];

pub async fn replay_events(ctx: &Ctx, a: &ReplayArgs) -> Result<(), CliError> {
    replay(ctx, a.domain.clone(), None, &a.start, &a.follow, false).await
}

/// Every domain with projectors; from the beginning unless told otherwise.
pub async fn replay_all_events(ctx: &Ctx, a: &ReplayAllArgs) -> Result<(), CliError> {
    replay(
        ctx,
        vec!["all".to_owned()],
        Some(a.parallel),
        &a.start,
        &a.follow,
        true,
    )
    .await
}

async fn replay(
    ctx: &Ctx,
    domains: Vec<String>,
    parallel: Option<u32>,
    s: &StartArgs,
    f: &FollowArgs,
    beginning_by_default: bool,
) -> Result<(), CliError> {
    let named = s.from_timestamp.is_some() || s.from_snapshot.is_some();
    let body = ReplayEvents {
        domains,
        from_beginning: s.from_beginning || (beginning_by_default && !named),
        from_timestamp: s.from_timestamp.clone(),
        from_snapshot: s.from_snapshot.clone(),
        source: s.source.as_deref().map(location),
        parallel,
        stall_timeout_secs: f.stall_timeout,
        checkpoint_interval: f.checkpoint_interval,
        idempotency_key: Some(idempotency_key(f.idempotency_key.as_deref())),
        correlation_id: None,
    };
    let accepted: Accepted = ctx
        .client
        .start(CMD_REPLAY_EVENTS, &body)
        .await
        .map_err(|e| e.with_flags(FLAGS))?;
    after_accept(ctx, accepted, !f.no_wait).await
}

pub async fn rebuild_projections(ctx: &Ctx, a: &RebuildOneArgs) -> Result<(), CliError> {
    rebuild(ctx, a.domain.clone(), None, &a.rebuild).await
}

pub async fn rebuild_all_projections(ctx: &Ctx, a: &RebuildAllArgs) -> Result<(), CliError> {
    rebuild(ctx, vec!["all".to_owned()], Some(a.parallel), &a.rebuild).await
}

/// Shows the plan first; read models with keys are cleared only with --confirm.
async fn rebuild(
    ctx: &Ctx,
    domains: Vec<String>,
    parallel: Option<u32>,
    a: &RebuildArgs,
) -> Result<(), CliError> {
    let mut body = RebuildProjections {
        domains,
        from_beginning: true,
        batch_size: a.batch_size,
        checkpoint_interval: a.follow.checkpoint_interval,
        parallel,
        stall_timeout_secs: a.follow.stall_timeout,
        dry_run: true,
        confirm: false,
        no_safety_snapshot: a.no_safety_snapshot,
        destination: a.destination.as_deref().map(location),
        idempotency_key: None,
        correlation_id: None,
    };
    let plan: RebuildPlan = ctx
        .client
        .request(CMD_REBUILD_PROJECTIONS, &body)
        .await
        .map_err(|e| e.with_flags(FLAGS))?;
    let keys: u64 = plan
        .domains
        .iter()
        .flat_map(|d| &d.models)
        .map(|m| m.keys)
        .sum();
    if keys > 0 && !a.confirm {
        if ctx.json {
            output::json(&plan);
        } else {
            print_plan(&plan, "would delete");
            println!("nothing was done: run again with --confirm to clear and rebuild");
        }
        return Ok(());
    }
    if !ctx.json {
        print_plan(&plan, "deleting");
    }
    body.dry_run = false;
    body.confirm = a.confirm;
    body.idempotency_key = Some(idempotency_key(a.follow.idempotency_key.as_deref()));
    let accepted: Accepted = ctx
        .client
        .start(CMD_REBUILD_PROJECTIONS, &body)
        .await
        .map_err(|e| e.with_flags(FLAGS))?;
    after_accept(ctx, accepted, !a.follow.no_wait).await
}

fn print_plan(plan: &RebuildPlan, verb: &str) {
    for d in &plan.domains {
        let keys: u64 = d.models.iter().map(|m| m.keys).sum();
        println!(
            "domain {}: {verb} {keys} keys, then replay from the first event",
            d.domain
        );
        for m in &d.models {
            print_planned_model(m);
        }
        for p in &d.projectors {
            println!(
                "    projector {} on {} from seq {}",
                p.consumer, p.stream, p.from_seq
            );
        }
    }
    print_safety_destination(
        &plan.safety_destination,
        "a safety snapshot of each domain is taken first",
    );
}
