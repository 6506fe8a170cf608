//! The check engine: walks streams (or a stored backup) through their chain profile and reports
//! every break; a deep check also compares KV projections with the chains.
//!
//! Reading is the same fast path as a backup's (ordered push consumer), and the walker keeps one
//! head per chain, so memory follows the number of aggregates, not the stream's length.

use std::collections::{BTreeMap, HashMap};

use cim_backup_contracts::ErrorCode;
use cim_backup_contracts::events::{
    CheckCompleted, CheckProgressed, CheckStarted, CheckTarget, Selection,
};
use cim_backup_contracts::integrity::{
    ChainProfile, Finding, IntegrityReport, ProjectionFinding, ProjectionReport, ProjectionSpec,
};
use cim_backup_contracts::views::JobState;
use cim_backup_domain::chain::{ChainItem, ChainState, ChainWalker, profile};
use cim_backup_domain::check::{CheckCommand, CheckJob};
use tokio_util::sync::CancellationToken;

use super::context::Context;
use super::error::EngineError;
use super::reader::{ReadAhead, header};
use super::restore::plan::{Chain, Plan, kept_records, open_planned};
use crate::archive::record::{Record, decode_headers};
use crate::archive::segment;
use crate::jobs::{Job, execute};

const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

pub async fn run(
    ctx: &Context,
    job: &mut Job<CheckJob>,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let spec = job.state.spec.clone().ok_or(EngineError::Rejected(
        cim_backup_domain::DomainError::NotCreated,
    ))?;
    if job.state.lifecycle.state == Some(JobState::Accepted) {
        let mut ranges = Vec::new();
        let mut messages = 0;
        for target in &spec.targets {
            let backup = spec.backup.zip(spec.source_url.as_deref());
            let range =
                target_range(ctx, &target.stream, backup, spec.start_seq, spec.end_seq).await?;
            messages += range.messages;
            ranges.push((range.first, range.last));
        }
        execute(
            &ctx.events,
            job,
            CheckCommand::Start(CheckStarted { ranges, messages }),
            None,
        )
        .await?;
    }
    let plan = job.state.plan.clone().expect("a running check has ranges");
    let mut progress = ProgressLog {
        done: 0,
        findings: 0,
        last: tokio::time::Instant::now(),
    };
    let mut reports = Vec::with_capacity(spec.targets.len());
    for (target, &(first, last)) in spec.targets.iter().zip(&plan.ranges) {
        let anchored = spec.start_seq.is_some_and(|s| s > 1);
        let mut walk = Walk::new(target, spec.max_findings as usize, (first, last), anchored);
        walk.stop_at_first = spec.replay.is_some();
        match (&spec.backup, &spec.source_url) {
            (Some(backup), Some(url)) => {
                walk_backup(
                    ctx,
                    job,
                    &mut walk,
                    url,
                    *backup,
                    first,
                    last,
                    &mut progress,
                    cancel,
                )
                .await?
            }
            _ => {
                walk_live(
                    ctx,
                    Some((&mut *job, &mut progress)),
                    &mut walk,
                    first,
                    last,
                    cancel,
                )
                .await?
            }
        }
        let projections = if spec.deep && !target.projections.is_empty() {
            Some(
                check_projections(
                    ctx,
                    &target.projections,
                    &walk.walker,
                    spec.max_findings as usize,
                )
                .await?,
            )
        } else {
            None
        };
        reports.push(walk.report(projections));
    }
    let mut replayed = Vec::new();
    if let (Some(consumers), Some(from)) = (&spec.replay, spec.start_seq)
        && reports.iter().all(|r| r.is_clean())
    {
        for name in consumers {
            reset_consumer(ctx, &spec.targets[0].stream, name, from).await?;
            replayed.push(name.clone());
        }
    }
    execute(
        &ctx.events,
        job,
        CheckCommand::Complete(CheckCompleted { reports, replayed }),
        None,
    )
    .await?;
    tracing::info!(job = %job.id, "check completed");
    Ok(())
}

/// What one target of a check covers: sequences `first..=last` and (an estimate of) the
/// messages in them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetRange {
    pub first: u64,
    pub last: u64,
    pub messages: u64,
}

/// The range a check of `stream` covers (live, or in a stored backup), clipped to `start_seq`
/// / `end_seq`. A range without messages is refused (400, saying why): a check of nothing must
/// not read as "clean". A server-snapshot backup is refused too: its messages are in the
/// server's own format.
pub async fn target_range(
    ctx: &Context,
    stream: &str,
    backup: Option<(cim_backup_contracts::cid::Cid, &str)>,
    start_seq: Option<u64>,
    end_seq: Option<u64>,
) -> Result<TargetRange, EngineError> {
    let (first, last, count, what) = match backup {
        Some((backup, url)) => {
            let archive = ctx.destinations.open(url)?;
            let chain = Chain::resolve(&archive, backup, stream).await?;
            let latest = chain.latest();
            if latest.snapshot.is_some() {
                return Err(EngineError::precondition(
                    ErrorCode::BadRequest,
                    format!(
                        "backup {backup} holds a server snapshot of {stream}, whose messages only nats-server reads: restore it under another name (restore-events --stream {stream} --as {stream}_CHECK) and check that stream"
                    ),
                ));
            }
            let messages: u64 = chain
                .manifests
                .iter()
                .filter_map(|(_, m)| m.stream(stream))
                .map(|s| s.messages)
                .sum();
            (
                chain.floor().max(1),
                latest.cut.last_seq.max(latest.last_seq),
                messages,
                format!("backup {backup} of {stream}"),
            )
        }
        None => {
            let state = ctx
                .api
                .stream_info(stream)
                .await?
                .ok_or_else(|| {
                    EngineError::precondition(
                        ErrorCode::NotFound,
                        format!("stream {stream} does not exist"),
                    )
                })?
                .state;
            (
                state.first_seq,
                state.last_seq,
                state.messages,
                format!("stream {stream}"),
            )
        }
    };
    let nothing = |why: String| {
        Err(EngineError::precondition(
            ErrorCode::BadRequest,
            format!("nothing to check: {why}"),
        ))
    };
    if count == 0 {
        return nothing(format!("{what} holds no messages"));
    }
    let from = start_seq.map_or(first, |s| s.max(first));
    let to = end_seq.map_or(last, |e| e.min(last));
    if start_seq.is_some_and(|s| s > last) {
        return nothing(format!(
            "start_seq {} is after the last sequence {last} of {what}",
            start_seq.unwrap_or_default()
        ));
    }
    if end_seq.is_some_and(|e| e < first) {
        return nothing(format!(
            "end_seq {} is before the first sequence {first} of {what}",
            end_seq.unwrap_or_default()
        ));
    }
    let messages = if from == first && to == last {
        count
    } else {
        // Sequences in the range, at most the messages held: exact unless some were deleted.
        (to + 1 - from).min(count)
    };
    Ok(TargetRange {
        first: from,
        last: to,
        messages,
    })
}

/// One target's walk: the walker and the (bounded) findings.
struct Walk {
    stream: String,
    /// The range asked for, and whether chains are anchored in it.
    range: (u64, u64),
    anchored: bool,
    walker: ChainWalker,
    findings: Vec<Finding>,
    total: u64,
    by_kind: BTreeMap<cim_backup_contracts::integrity::FindingKind, u64>,
    max: usize,
    first_seq: Option<u64>,
    last_seq: u64,
    /// A replay stops at the first invalid event.
    stop_at_first: bool,
}

impl Walk {
    fn done(&self) -> bool {
        self.stop_at_first && self.total > 0
    }

    fn new(target: &CheckTarget, max: usize, range: (u64, u64), anchored: bool) -> Walk {
        let profile = profile(&target.profile);
        Walk {
            stream: target.stream.clone(),
            range,
            anchored,
            walker: if anchored {
                ChainWalker::anchored(profile)
            } else {
                ChainWalker::new(profile)
            },
            findings: Vec::new(),
            total: 0,
            by_kind: BTreeMap::new(),
            max,
            first_seq: None,
            last_seq: 0,
            stop_at_first: false,
        }
    }

    fn check(&mut self, item: ChainItem<'_>) -> u64 {
        let seq = item.stream_seq;
        let found = self.walker.check(item);
        self.note(seq, found)
    }

    fn check_record(&mut self, record: &Record<'_>) -> u64 {
        let found = check_record(&mut self.walker, record);
        self.note(record.seq, found)
    }

    /// Counts what checking the message at `seq` found; keeps the first `max` findings.
    fn note(&mut self, seq: u64, found: Vec<Finding>) -> u64 {
        self.first_seq.get_or_insert(seq);
        self.last_seq = seq;
        let n = found.len() as u64;
        for f in found {
            self.total += 1;
            *self.by_kind.entry(f.kind).or_default() += 1;
            if self.findings.len() < self.max {
                self.findings.push(f);
            }
        }
        n
    }

    fn report(self, projections: Option<ProjectionReport>) -> IntegrityReport {
        IntegrityReport {
            stream: self.stream,
            profile: self.walker.kind(),
            range_first: self.range.0,
            range_last: self.range.1,
            anchored: self.anchored,
            first_seq: self.first_seq.unwrap_or(0),
            last_seq: self.last_seq,
            messages_checked: self.walker.checked(),
            chains: self.walker.chains() as u64,
            chains_broken: self.walker.chains_broken() as u64,
            findings_total: self.total,
            findings_by_kind: self.by_kind,
            findings: self.findings,
            projections,
        }
    }
}

struct ProgressLog {
    done: u64,
    findings: u64,
    last: tokio::time::Instant,
}

impl ProgressLog {
    async fn tick(
        &mut self,
        ctx: &Context,
        job: &mut Job<CheckJob>,
        findings: u64,
    ) -> Result<(), EngineError> {
        self.done += 1;
        self.findings += findings;
        // Reading the clock per message shows in profiles; every 256th is often enough.
        if self.done.is_multiple_of(256)
            && self.last.elapsed() >= PROGRESS_EVERY
            && job
                .state
                .progress
                .as_ref()
                .is_none_or(|p| p.messages_done < self.done)
        {
            execute(
                &ctx.events,
                job,
                CheckCommand::Progress(CheckProgressed {
                    messages_done: self.done,
                    findings: self.findings,
                }),
                None,
            )
            .await?;
            self.last = tokio::time::Instant::now();
        }
        Ok(())
    }
}

/// Walks `first..=last` of a live stream with `profile`, outside a check job (no progress
/// events): how a repair checks the stream it built before and after it replaces the live one.
pub async fn walk_stream(
    ctx: &Context,
    stream: &str,
    profile: &ChainProfile,
    (first, last): (u64, u64),
    max_findings: usize,
    cancel: &CancellationToken,
) -> Result<IntegrityReport, EngineError> {
    let target = CheckTarget {
        stream: stream.to_owned(),
        profile: profile.clone(),
        projections: Vec::new(),
    };
    let mut walk = Walk::new(&target, max_findings, (first, last), first > 1);
    walk_live(ctx, None, &mut walk, first, last, cancel).await?;
    Ok(walk.report(None))
}

async fn walk_live(
    ctx: &Context,
    mut job: Option<(&mut Job<CheckJob>, &mut ProgressLog)>,
    walk: &mut Walk,
    first: u64,
    last: u64,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    if first > last {
        return Ok(());
    }
    let mut reader = ReadAhead::spawn(&ctx.js, &walk.stream, first, last);
    while let Some(batch) = reader.next_batch().await {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        for read in batch? {
            let headers = read.message.headers.as_ref();
            let lookup = |name: &str| header(headers, name);
            let item = ChainItem {
                stream_seq: read.seq,
                time_ns: read.time_ns,
                subject: read.message.subject.as_str(),
                headers: &lookup,
                payload: &read.message.payload,
            };
            let found = walk.check(item);
            if let Some((job, progress)) = job.as_mut() {
                progress.tick(ctx, job, found).await?;
            }
            if walk.done() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Replays a stream to a projector from `from`: its durable consumer is moved so that `from`
/// is the next event it delivers (the consumer-reset call, or recreated with the same config
/// on servers before 2.14; `engine::projections::replay::consumer`). The events are not
/// republished: the log keeps one copy of each event, and the projector reads them where it
/// always does.
async fn reset_consumer(
    ctx: &Context,
    stream: &str,
    name: &str,
    from: u64,
) -> Result<(), EngineError> {
    use super::projections::replay::consumer::{Consumer, has_reset};
    let consumer = Consumer {
        api: &ctx.api,
        stream,
        name,
    };
    let Some((config, _)) = consumer.info().await? else {
        return Err(EngineError::precondition(
            ErrorCode::NotFound,
            format!("stream {stream} has no durable consumer {name}"),
        ));
    };
    let method = consumer
        .move_to(from, &config, has_reset(&ctx.client.server_info().version))
        .await?;
    tracing::info!(
        stream,
        consumer = name,
        from,
        ?method,
        "consumer reset for replay"
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn walk_backup(
    ctx: &Context,
    job: &mut Job<CheckJob>,
    walk: &mut Walk,
    url: &str,
    backup: cim_backup_contracts::cid::Cid,
    first: u64,
    last: u64,
    progress: &mut ProgressLog,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let archive = ctx.destinations.open(url)?;
    let chain = Chain::resolve(&archive, backup, &walk.stream).await?;
    let plan = Plan::new(
        &chain,
        &Selection {
            start_seq: Some(first),
            end_seq: Some(last),
            ..Selection::default()
        },
    );
    for planned in &plan.segments {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let stored = archive.get(&segment::key(&planned.info)).await?;
        let plain = open_planned(&chain, planned, &stored, &ctx.keys)?;
        for record in kept_records(&plan, planned, &plain) {
            let found = walk.check_record(&record?);
            progress.tick(ctx, job, found).await?;
        }
    }
    Ok(())
}

/// Checks one archived record, with the headers decoded from its stored block.
pub(crate) fn check_record(walker: &mut ChainWalker, record: &Record<'_>) -> Vec<Finding> {
    let headers = decode_headers(record.headers).ok().flatten();
    let lookup = |name: &str| header(headers.as_ref(), name);
    walker.check(ChainItem {
        stream_seq: record.seq,
        time_ns: record.time_ns,
        subject: record.subject,
        headers: &lookup,
        payload: record.payload,
    })
}

/// The current value of every key of `bucket` that starts with `prefix`, read without leaving a
/// consumer on the bucket (a key's newest revision wins; deleted and purged keys are left out).
async fn current_entries(
    ctx: &Context,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<(String, bytes::Bytes)>, EngineError> {
    let stream = format!("KV_{bucket}");
    let subjects = format!("$KV.{bucket}.");
    // A prefix of whole tokens narrows the read on the server; any other is applied here.
    let filter = match prefix.is_empty() || prefix.ends_with('.') {
        true => format!("{subjects}{prefix}>"),
        false => format!("{subjects}>"),
    };
    let revisions = crate::lookup::Lookup::of(&ctx.api, &stream)
        .await?
        .all(&filter, 1)
        .await?;
    let mut current: BTreeMap<String, Option<bytes::Bytes>> = BTreeMap::new();
    for m in revisions {
        let Some(key) = m
            .subject
            .strip_prefix(&subjects)
            .filter(|k| k.starts_with(prefix))
        else {
            continue;
        };
        let live = m.header("KV-Operation").is_none();
        current.insert(key.to_owned(), live.then(|| m.payload.clone()));
    }
    Ok(current
        .into_iter()
        .filter_map(|(key, value)| value.map(|v| (key, v)))
        .collect())
}

/// Compares KV projections with the chains (the convention of docs/INTEGRITY.md): an entry
/// `<key_prefix><aggregate>` holds the CID and/or stream sequence of the last event it applied.
/// It is inconsistent if that is not its chain's head, if its chain does not exist, or if its
/// chain breaks at or before the event it applied (it was built from corrupt history).
async fn check_projections(
    ctx: &Context,
    specs: &[ProjectionSpec],
    walker: &ChainWalker,
    max: usize,
) -> Result<ProjectionReport, EngineError> {
    let states: HashMap<&str, ChainState> = walker.chain_states().collect();
    let mut report = ProjectionReport::default();
    for spec in specs {
        // A missing bucket is a finding about the projections, not a reason to lose the
        // verdict on the stream: report it and go on with the others.
        if ctx
            .api
            .stream_info(&format!("KV_{}", spec.bucket))
            .await?
            .is_none()
        {
            if !report.missing_buckets.contains(&spec.bucket) {
                report.missing_buckets.push(spec.bucket.clone());
            }
            continue;
        }
        let cid_field = spec.cid_field.as_deref().unwrap_or("last_event_cid");
        let seq_field = spec.seq_field.as_deref().unwrap_or("last_event_seq");
        for (key, value) in current_entries(ctx, &spec.bucket, &spec.key_prefix).await? {
            report.entries_checked += 1;
            let aggregate = key[spec.key_prefix.len()..].to_owned();
            let json: serde_json::Value =
                serde_json::from_slice(&value).unwrap_or(serde_json::Value::Null);
            let cid = json.get(cid_field).and_then(|v| v.as_str());
            let seq = json.get(seq_field).and_then(|v| v.as_u64());
            let problem = match (states.get(aggregate.as_str()), cid, seq) {
                (_, None, None) => Some(format!("has neither {cid_field} nor {seq_field}")),
                (None, _, _) => Some("no chain of this aggregate in the stream".to_owned()),
                (Some(state), _, _)
                    if state
                        .first_break
                        .is_some_and(|b| seq.is_none_or(|s| s >= b)) =>
                {
                    Some(format!(
                        "its chain breaks at seq {}, and the projection is built from events up to there or beyond",
                        state.first_break.unwrap()
                    ))
                }
                (Some(state), Some(cid), _) if cid != state.head_cid => Some(format!(
                    "applied {cid}, the chain's head is {} (seq {})",
                    state.head_cid, state.head_seq
                )),
                (Some(state), _, Some(seq)) if seq != state.head_seq => Some(format!(
                    "applied seq {seq}, the chain's head is seq {}",
                    state.head_seq
                )),
                _ => None,
            };
            if let Some(detail) = problem {
                report.inconsistent += 1;
                if report.findings.len() < max {
                    report.findings.push(ProjectionFinding {
                        bucket: spec.bucket.clone(),
                        key,
                        aggregate,
                        detail,
                    });
                }
            }
        }
    }
    Ok(report)
}
