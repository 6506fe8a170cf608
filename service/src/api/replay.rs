//! Catch-up and rebuild endpoints: `cmd.replay-events` and `cmd.rebuild-projections`.
//! Everything a job needs is decided here, before anything is recorded: the domains and their
//! projectors (each must have its consumer), and where each projector starts (a stream
//! sequence, found from a time or a snapshot's recorded positions). A bad field is a 4xx that
//! names it, and no job.

use async_nats::service::Request;
use cim_backup_contracts::cid::Cid;
use cim_backup_contracts::projections::{Domain, PlannedClear, RestoreProjectionSnapshot};
use cim_backup_contracts::replay::{
    DEFAULT_CHECKPOINT_INTERVAL, DEFAULT_STALL_TIMEOUT_SECS, PlannedRebuild, PlannedReplay,
    RebuildPlan, RebuildProjections, ReplayEvents, ReplayJobAccepted, ReplayOperation,
    parse_timestamp,
};
use cim_backup_contracts::replies::Accepted;
use cim_backup_domain::replay::{Job as ReplayState, Kind, Rebuild, Replay, ReplayCommand};

use super::Api;
use super::commands::{Intake, parse};
use super::projections::{
    all_domains, locate_snapshot, refuse_other_domains_keys, require_buckets,
    require_keys_if_encrypted, require_projectors,
};
use super::reply::ApiError;
use crate::archive::projections::get_snapshot;
use crate::domains;
use crate::engine::projections::replay::consumer::first_seq_at;

/// Where the projectors start, as the request named it.
enum Start {
    Beginning,
    Timestamp(time::OffsetDateTime),
    /// A snapshot id, or `latest` (each domain's newest).
    Snapshot(String, Option<String>),
}

impl Start {
    fn describe(&self) -> String {
        match self {
            Start::Beginning => "beginning".to_owned(),
            Start::Timestamp(t) => t
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            Start::Snapshot(id, _) if id == "latest" => "latest snapshot".to_owned(),
            Start::Snapshot(id, _) => format!("snapshot {id}"),
        }
    }
}

/// The limits every replay request shares, checked and defaulted.
struct Limits {
    parallel: u32,
    checkpoint_interval: u64,
    stall_timeout_secs: u64,
}

fn limits(
    parallel: Option<u32>,
    checkpoint_interval: Option<u64>,
    stall_timeout_secs: Option<u64>,
) -> Result<Limits, ApiError> {
    let at_least_one = |field: &str, v: Option<u64>, default: u64| match v {
        Some(0) => Err(ApiError::bad_request(format!(
            "{field}: must be at least 1"
        ))),
        v => Ok(v.unwrap_or(default)),
    };
    Ok(Limits {
        parallel: at_least_one("parallel", parallel.map(u64::from), 1)? as u32,
        checkpoint_interval: at_least_one(
            "checkpoint_interval",
            checkpoint_interval,
            DEFAULT_CHECKPOINT_INTERVAL,
        )?,
        stall_timeout_secs: at_least_one(
            "stall_timeout_secs",
            stall_timeout_secs,
            DEFAULT_STALL_TIMEOUT_SECS,
        )?,
    })
}

/// The named domains that have projectors (`["all"]`: every one that has).
async fn domains_with_projectors(api: &Api, names: &[String]) -> Result<Vec<Domain>, ApiError> {
    if names.is_empty() {
        return Err(ApiError::bad_request(
            "domains: name the domains to replay, or [\"all\"]",
        ));
    }
    let all = all_domains(api).await?;
    let selected = domains::select(&all, names).map_err(ApiError::bad_request)?;
    let every = names.iter().any(|n| n == "all");
    let mut out = Vec::new();
    for d in selected {
        if d.projectors.is_empty() {
            if every {
                continue;
            }
            return Err(ApiError::bad_request(format!(
                "domains: {} has no projectors to replay to (configure [domains.{}] projectors, or give DOMAIN_{}_EVENTS a durable consumer)",
                d.name,
                d.name,
                d.name.to_uppercase()
            )));
        }
        out.push(d.clone());
    }
    if out.is_empty() {
        return Err(ApiError::bad_request(
            "domains: none has projectors (see list-domains)",
        ));
    }
    require_projectors(api, &out).await?;
    Ok(out)
}

/// Each projector's first stream sequence to deliver again.
async fn plan_starts(
    api: &Api,
    domains: &[Domain],
    start: &Start,
) -> Result<(Vec<PlannedReplay>, Option<Cid>), ApiError> {
    let ctx = api.runner.context();
    let mut planned = Vec::new();
    let mut snapshot_id = None;
    for d in domains {
        let positions = match start {
            Start::Snapshot(id, source) => {
                let (found, location) = locate_snapshot(
                    api,
                    &RestoreProjectionSnapshot {
                        snapshot: id.clone(),
                        source: source.clone(),
                        domain: d.name.clone(),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| ApiError {
                    message: e.message.replacen("snapshot:", "from_snapshot:", 1),
                    ..e
                })?;
                let store = ctx.destinations.open(&location.url)?;
                let manifest = get_snapshot(&store, &found).await?;
                if manifest.domain != d.name {
                    return Err(ApiError::bad_request(format!(
                        "from_snapshot: {found} is of domain {}, not {}",
                        manifest.domain, d.name
                    )));
                }
                snapshot_id = Some(found);
                Some((found, manifest.positions))
            }
            _ => None,
        };
        let floors = crate::engine::projections::take::positions(ctx, d)
            .await
            .map_err(super::commands::engine_error)?;
        for p in &d.projectors {
            let from_seq = match (start, &positions) {
                (Start::Snapshot(..), Some((id, positions))) => positions
                    .iter()
                    .find(|x| x.stream == p.stream && x.consumer == p.consumer)
                    .map(|x| x.stream_seq + 1)
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "from_snapshot: snapshot {id} recorded no position for projector {} on {}; replay it from a timestamp instead",
                            p.consumer, p.stream
                        ))
                    })?,
                (Start::Timestamp(at), _) => first_seq_at(&ctx.api, &p.stream, *at).await?,
                _ => ctx
                    .api
                    .stream_info(&p.stream)
                    .await?
                    .map(|s| s.state.first_seq.max(1))
                    .unwrap_or(1),
            };
            // Never past the first event the projector has not acknowledged: a catch-up
            // from a later time must not skip what it has not folded.
            let unacked = floors
                .iter()
                .find(|f| f.stream == p.stream && f.consumer == p.consumer)
                .map_or(u64::MAX, |f| f.stream_seq + 1);
            let from_seq = from_seq.min(unacked);
            planned.push(PlannedReplay {
                domain: d.name.clone(),
                stream: p.stream.clone(),
                consumer: p.consumer.clone(),
                from_seq,
            });
        }
    }
    Ok((planned, snapshot_id))
}

/// `cim.backup.cmd.replay-events`.
pub async fn replay(api: &Api, request: &Request) -> Result<Accepted, ApiError> {
    let cmd: ReplayEvents = parse(request)?;
    let start = match (cmd.from_beginning, &cmd.from_timestamp, &cmd.from_snapshot) {
        (true, None, None) => Start::Beginning,
        (false, Some(t), None) => Start::Timestamp(
            parse_timestamp(t)
                .map_err(|e| ApiError::bad_request(format!("from_timestamp: {e}")))?,
        ),
        (false, None, Some(id)) => Start::Snapshot(id.clone(), cmd.source.clone()),
        _ => {
            return Err(ApiError::bad_request(
                "from: name exactly one of from_beginning, from_timestamp and from_snapshot",
            ));
        }
    };
    if cmd.source.is_some() && !matches!(start, Start::Snapshot(..)) {
        return Err(ApiError::bad_request(
            "source: only a replay from a snapshot reads one",
        ));
    }
    let limits = limits(
        cmd.parallel,
        cmd.checkpoint_interval,
        cmd.stall_timeout_secs,
    )?;
    let domains = domains_with_projectors(api, &cmd.domains).await?;
    let (projectors, from_snapshot) = plan_starts(api, &domains, &start).await?;
    let intake = Intake::new(
        request,
        cmd.idempotency_key.clone(),
        cmd.correlation_id.clone(),
    )?;
    let admission = intake.admission(api, &(&projectors, &cmd));
    let digest = admission.request_digest.clone();
    let spec = ReplayJobAccepted {
        operation: ReplayOperation::Replay,
        domains,
        projectors,
        from: start.describe(),
        from_snapshot,
        batch_size: None,
        checkpoint_interval: limits.checkpoint_interval,
        parallel: limits.parallel,
        stall_timeout_secs: limits.stall_timeout_secs,
        destination: String::new(),
        destination_url: String::new(),
        no_safety_snapshot: false,
        admission,
    };
    accept_and_start::<Replay>(api, &intake, spec, &digest).await
}

/// What `cmd.rebuild-projections` answers: the plan (`dry_run`), or the accepted job.
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
pub enum RebuildReply {
    Plan(RebuildPlan),
    Accepted(Accepted),
}

/// `cim.backup.cmd.rebuild-projections`: with `dry_run`, what would be cleared and where each
/// projector starts (nothing is done); otherwise a `projection-rebuild` job, which needs
/// `confirm` when any read model holds keys.
pub async fn rebuild(api: &Api, request: &Request) -> Result<RebuildReply, ApiError> {
    let cmd: RebuildProjections = parse(request)?;
    let ctx = api.runner.context();
    if cmd.dry_run && cmd.confirm {
        return Err(ApiError::bad_request(
            "confirm: send dry_run to see what a rebuild would clear, or confirm to do it, not both",
        ));
    }
    if cmd.batch_size == Some(0) {
        return Err(ApiError::bad_request("batch_size: must be at least 1"));
    }
    let limits = limits(
        cmd.parallel,
        cmd.checkpoint_interval,
        cmd.stall_timeout_secs,
    )?;
    let domains = domains_with_projectors(api, &cmd.domains).await?;
    let all = all_domains(api).await?;
    for d in &domains {
        for m in &d.projections {
            refuse_other_domains_keys(&all, &d.name, m, "domains")?;
        }
    }
    require_buckets(api, domains.iter().flat_map(|d| &d.projections)).await?;
    let location = if cmd.no_safety_snapshot {
        None
    } else {
        let location = ctx.destinations.resolve(cmd.destination.as_deref())?;
        require_keys_if_encrypted(api, &location.url)?;
        Some(location)
    };
    let (projectors, _) = plan_starts(api, &domains, &Start::Beginning).await?;
    let mut planned = Vec::new();
    for d in &domains {
        let mut models = Vec::new();
        for m in &d.projections {
            let mut keys = 0u64;
            crate::engine::projections::read::scan_keys(
                &ctx.js,
                &m.bucket,
                &m.prefix,
                &Default::default(),
                |_| keys += 1,
            )
            .await
            .map_err(|e| ApiError::unavailable(format!("counting the keys of {}: {e}", m.name)))?;
            models.push(PlannedClear {
                name: m.name.clone(),
                bucket: m.bucket.clone(),
                prefix: m.prefix.clone(),
                keys,
            });
        }
        planned.push(PlannedRebuild {
            domain: d.name.clone(),
            models,
            projectors: projectors
                .iter()
                .filter(|p| p.domain == d.name)
                .cloned()
                .collect(),
        });
    }
    let keys: u64 = planned.iter().flat_map(|d| &d.models).map(|m| m.keys).sum();
    if cmd.dry_run {
        return Ok(RebuildReply::Plan(RebuildPlan {
            domains: planned,
            safety_destination: location.map(|l| l.url).unwrap_or_default(),
        }));
    }
    if keys > 0 && !cmd.confirm {
        return Err(ApiError::bad_request(format!(
            "confirm: a rebuild first deletes the {keys} keys the read models of {} hold; send dry_run to see which, or confirm to do it",
            planned
                .iter()
                .map(|d| d.domain.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let intake = Intake::new(
        request,
        cmd.idempotency_key.clone(),
        cmd.correlation_id.clone(),
    )?;
    let (given, url) = location.map(|l| (l.given, l.url)).unwrap_or_default();
    let admission = intake.admission(api, &(&projectors, &url, &cmd));
    let digest = admission.request_digest.clone();
    let spec = ReplayJobAccepted {
        operation: ReplayOperation::Rebuild,
        domains,
        projectors,
        from: Start::Beginning.describe(),
        from_snapshot: None,
        batch_size: cmd.batch_size,
        checkpoint_interval: limits.checkpoint_interval,
        parallel: limits.parallel,
        stall_timeout_secs: limits.stall_timeout_secs,
        destination: given,
        destination_url: url,
        no_safety_snapshot: cmd.no_safety_snapshot,
        admission,
    };
    Ok(RebuildReply::Accepted(
        accept_and_start::<Rebuild>(api, &intake, spec, &digest).await?,
    ))
}

async fn accept_and_start<K: Kind>(
    api: &Api,
    intake: &Intake,
    spec: ReplayJobAccepted,
    digest: &str,
) -> Result<Accepted, ApiError>
where
    ReplayState<K>: crate::engine::runner::Runs
        + cim_backup_domain::Aggregate<
            Command = ReplayCommand,
            Event = cim_backup_contracts::events::ReplayEvent,
        >,
{
    super::commands::accept_and_start::<ReplayState<K>>(
        api,
        intake,
        ReplayCommand::Accept(spec),
        |s| s.spec.as_ref().map(|s| &s.admission),
        digest,
    )
    .await
}
