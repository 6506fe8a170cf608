//! The restore engine: one stream of a backup (and of its chain of incremental parents) into a
//! new stream — or appended to an existing one — with the selection the caller asked for.
//!
//! # Methods
//! - `server-archive` (nats-server 2.15+, chosen by `auto`): the records become a per-message
//!   archive the server restores itself, keeping original sequences, gaps, timestamps and
//!   headers exactly, and recreating consumers with their positions ([`server_archive`]).
//! - `publish` (older servers): every message is published into a new stream that reproduces
//!   sequences and gaps; the original timestamp travels in a header ([`publish`]).
//! - `append`: messages are published after the last one of an existing stream, on their
//!   original subjects; sequences are new.
//!
//! # Layout
//! - [`plan`] — the chain, the segments a selection needs, the record filter, exact tallies.
//! - [`target`] — the restored stream's configuration and the job marker.
//! - [`server_archive`], [`publish`] — the two writers.
//! - [`progress`] — progress events.

pub mod plan;
pub mod progress;
pub mod publish;
pub mod server_archive;
pub mod target;

use std::time::Duration;

use cim_backup_contracts::cid::Cid;
use cim_backup_contracts::events::{
    ConsumerRestored, RestoreCompleted, RestoreMethod, RestoreOptions, RestoreStarted, Selection,
};
use cim_backup_contracts::replies::RestorePlan;
use cim_backup_contracts::views::JobState;
use cim_backup_contracts::{ErrorCode, JobId};
use cim_backup_domain::restore::{RestoreCommand, RestoreJob};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use self::plan::{Chain, Plan, Tally};
use self::progress::Progress;
use super::context::Context;
use super::error::EngineError;
use crate::archive::manifest::StreamArchive;
use crate::archive::{ArchiveStore, segment};
use crate::jobs::{Job, execute};

pub use self::plan::stream_entry;

/// Runs a restore to its end. On an error the runner decides whether the job resumes (NATS
/// went away) or ends; only then, through [`abandon`], is a partial target removed.
pub async fn run(
    ctx: &Context,
    job: &mut Job<RestoreJob>,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    restore(ctx, job, cancel).await
}

/// A failed or cancelled restore deletes the target it created (it carries the job's
/// marker), so no half-restored stream is left that someone could mistake for the real thing.
/// A restore interrupted by a crash or shutdown, or resuming after NATS came back, keeps it.
pub async fn abandon(ctx: &Context, job: &Job<RestoreJob>) {
    let Some(spec) = &job.state.spec else { return };
    // The log, not the caller's copy, says whether the restore completed after all (its end
    // may have been recorded although the caller saw an error).
    match crate::jobs::load::<RestoreJob>(&ctx.events, &job.id).await {
        Ok(Some(fresh)) if fresh.state.lifecycle.state == Some(JobState::Completed) => return,
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(job = %job.id, error = %e, "cannot tell whether the restore completed; keeping its target");
            return;
        }
    }
    match ctx.api.stream_info(&spec.target).await {
        // Ours, and not yet checked and given its final configuration: a partial restore.
        Ok(Some(info))
            if target::owned_by(&info.config, &job.id)
                && !target::checked_by(&info.config, &job.id) => {}
        _ => return, // absent, checked (the restored stream), or not ours
    }
    match ctx.api.delete_stream(&spec.target).await {
        Ok(()) => {
            tracing::info!(job = %job.id, target = %spec.target, "removed the partially restored target")
        }
        Err(e) => {
            tracing::warn!(job = %job.id, target = %spec.target, error = %e, "could not remove the partially restored target")
        }
    }
}

/// Everything decided before writing.
struct Prepared {
    archive: ArchiveStore,
    chain: Chain,
    plan: Plan,
    latest: StreamArchive,
    original: Value,
}

async fn prepare(
    ctx: &Context,
    source_url: &str,
    backup: Cid,
    stream: &str,
    selection: &Selection,
) -> Result<Prepared, EngineError> {
    let archive = ctx.destinations.open(source_url)?;
    let chain = Chain::resolve(&archive, backup, stream).await?;
    chain.check_links()?;
    let plan = Plan::new(&chain, selection);
    let latest = chain.latest().clone();
    let original: Value = serde_json::from_str(&latest.config).map_err(|e| {
        EngineError::precondition(
            ErrorCode::Corrupt,
            format!("stream config in the manifest is not JSON: {e}"),
        )
    })?;
    Ok(Prepared {
        archive,
        chain,
        plan,
        latest,
        original,
    })
}

/// A selection that keeps nothing is refused before anything is created: a restore that
/// "completes" with an empty stream would look like a restore of nothing that went well.
/// `kept` is the exact count when it is known (after a tally), else the planned segments decide.
fn refuse_empty_selection(
    p: &Prepared,
    selection: &Selection,
    kept: Option<u64>,
) -> Result<(), EngineError> {
    let nothing = match kept {
        Some(messages) => messages == 0,
        None => p.plan.segments.is_empty(),
    };
    if selection.is_everything() || !nothing {
        return Ok(());
    }
    let segments: Vec<_> = p
        .chain
        .manifests
        .iter()
        .filter_map(|(_, m)| m.stream(&p.chain.stream))
        .flat_map(|s| s.segments.iter())
        .collect();
    let holds = match (segments.first(), segments.last()) {
        (Some(first), Some(last)) => format!(
            "it holds seq {}..={}, {} .. {}",
            first.first_seq,
            last.last_seq,
            cim_backup_contracts::events::format_time(first.first_time),
            cim_backup_contracts::events::format_time(last.last_time)
        ),
        _ => "it holds no messages".to_owned(),
    };
    Err(EngineError::precondition(
        ErrorCode::NotFound,
        format!(
            "the selection matches no message of {} in backup {} ({holds}); nothing was restored",
            p.chain.stream,
            p.chain.ids().last().expect("a chain is never empty")
        ),
    ))
}

/// Checks a restore request against its backup before it is accepted: the chain resolves and
/// links, and the selection keeps at least one segment.
pub async fn check_request(
    ctx: &Context,
    source_url: &str,
    backup: Cid,
    stream: &str,
    selection: &Selection,
) -> Result<(), EngineError> {
    let p = prepare(ctx, source_url, backup, stream, selection).await?;
    refuse_empty_selection(&p, selection, None)
}

/// The method a restore uses, given what was asked and what the server and target are.
async fn choose_method(
    ctx: &Context,
    asked: RestoreMethod,
    target: &str,
) -> Result<RestoreMethod, EngineError> {
    let exists = ctx.api.stream_info(target).await?.map(|i| i.state.messages);
    let level = ctx.api.api_level().await?;
    match (asked, exists) {
        (RestoreMethod::Append, Some(_)) => Ok(RestoreMethod::Append),
        (RestoreMethod::Append, None) => Err(EngineError::precondition(
            ErrorCode::NotFound,
            format!("append needs an existing stream {target}"),
        )),
        (_, Some(messages)) => Err(EngineError::precondition(
            ErrorCode::Conflict,
            format!(
                "target stream {target} already exists ({messages} messages); restore never overwrites: delete it, restore under another name with \"as\", or use \"method\": \"append\""
            ),
        )),
        (RestoreMethod::ServerArchive, None) if level < 5 => Err(EngineError::precondition(
            ErrorCode::BadRequest,
            format!(
                "method server-archive needs nats-server 2.15+ (JetStream API level 5); this server has level {level}"
            ),
        )),
        (RestoreMethod::Auto, None) if level >= 5 => Ok(RestoreMethod::ServerArchive),
        (RestoreMethod::Auto, None) => Ok(RestoreMethod::Publish),
        (method, None) => Ok(method),
    }
}

/// Exactly what the selection keeps: from the manifests when whole segments are kept, else by
/// reading the planned segments.
async fn bounds(ctx: &Context, p: &Prepared) -> Result<Tally, EngineError> {
    if p.plan.keeps_whole_segments(&p.chain) {
        let mut tally = Tally {
            messages: p.plan.records,
            ..Tally::default()
        };
        if let (Some(first), Some(last)) = (p.plan.segments.first(), p.plan.segments.last()) {
            tally.first = Some((
                first.info.first_seq,
                segment::nanos_of(first.info.first_time),
            ));
            tally.last = Some((last.info.last_seq, segment::nanos_of(last.info.last_time)));
        }
        // `bytes` (subject + headers + payload) is only known by reading; the plan reports raw.
        return Ok(tally);
    }
    plan::tally(&p.archive, &p.chain, &p.plan, &ctx.keys).await
}

/// An append's exact tally, read with every kept record's subject checked against what the
/// target captures: an append that would publish where the target does not listen is refused
/// before its first message (and in its dry run).
async fn append_tally(ctx: &Context, p: &Prepared, target: &str) -> Result<Tally, EngineError> {
    let captures = publish::Captures::of(ctx, target).await?;
    plan::tally_checked(&p.archive, &p.chain, &p.plan, &ctx.keys, |r| {
        captures.check(r.subject)
    })
    .await
}

/// The target's last sequence: for a whole-stream restore the original's (trailing gaps
/// kept, so new messages get the sequences they would have had); else the last one written.
fn target_last_seq(selection: &Selection, latest: &StreamArchive, tally: &Tally) -> u64 {
    let written = tally.last_seq().unwrap_or(0);
    if selection.is_everything() {
        latest.cut.last_seq.max(written)
    } else {
        written
    }
}

async fn restore(
    ctx: &Context,
    job: &mut Job<RestoreJob>,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let spec = job.state.spec.clone().ok_or(EngineError::Rejected(
        cim_backup_domain::DomainError::NotCreated,
    ))?;
    let p = prepare(
        ctx,
        &spec.source_url,
        spec.backup,
        &spec.stream,
        &spec.selection,
    )
    .await?;
    if let Some(snapshot) = p.latest.snapshot.clone() {
        return restore_snapshot(ctx, job, &p, &snapshot, cancel).await;
    }
    if job.state.lifecycle.state == Some(JobState::Accepted) {
        let method = choose_method(ctx, spec.options.method, &spec.target).await?;
        let tally = match method {
            RestoreMethod::Append => append_tally(ctx, &p, &spec.target).await?,
            _ => bounds(ctx, &p).await?,
        };
        refuse_empty_selection(&p, &spec.selection, Some(tally.messages))?;
        let started = RestoreStarted {
            method,
            chain: p.chain.ids(),
            segments: p.plan.segments.len() as u64,
            messages: tally.messages,
            bytes: p.plan.raw_bytes,
            first_seq: tally.first_seq().unwrap_or(0),
            last_seq: tally.last_seq().unwrap_or(0),
            target_last_seq: target_last_seq(&spec.selection, &p.latest, &tally),
        };
        execute(&ctx.events, job, RestoreCommand::Start(started), None).await?;
    }
    let started = job
        .state
        .plan
        .clone()
        .expect("a running restore has a plan");
    let new_target = started.method != RestoreMethod::Append;
    let (mut final_config, mut notes) = if new_target {
        let owned = target::subjects_owned_elsewhere(&ctx.api, &p.original, &spec.target).await?;
        target::final_config(&p.original, &spec.target, &spec.options, &owned, &job.id)
    } else {
        (Value::Null, Vec::new())
    };
    if started.method == RestoreMethod::ServerArchive {
        relax_max_age(&mut final_config, &p.plan, &p.chain, &mut notes);
    }
    let consumers = if new_target && spec.options.consumers {
        plan::consumer_starts(&p.latest, started.target_last_seq)
    } else {
        Vec::new()
    };
    let first_seq = if started.messages > 0 {
        started.first_seq
    } else {
        started.target_last_seq + 1
    };

    // Checked and given its final configuration before the job stopped (its completion was not
    // recorded): the target is the restored stream now, written to by its producers; only the
    // completion is left to record, with the exact tally of what was restored.
    let checked_before = new_target
        && ctx
            .api
            .stream_info(&spec.target)
            .await?
            .is_some_and(|i| target::checked_by(&i.config, &job.id));
    let mut progress = Progress::new(job, p.plan.segments.len() as u64);
    if started.method == RestoreMethod::Append {
        progress = progress.every_segment();
    }
    let tally = match started.method {
        _ if checked_before => plan::tally(&p.archive, &p.chain, &p.plan, &ctx.keys).await?,
        RestoreMethod::ServerArchive => {
            let saved: Vec<_> = p.latest.consumers.iter().zip(&consumers).collect();
            write_server_archive(
                ctx,
                &spec.target,
                &p,
                &final_config,
                first_seq,
                started.target_last_seq,
                &saved,
                &mut progress,
                cancel,
            )
            .await?
        }
        RestoreMethod::Publish => {
            let into = publish::Into::New {
                final_config: &final_config,
                first_seq,
                last_seq: started.target_last_seq,
            };
            let job_id = progress.job().id.clone();
            let tally = publish::write(
                ctx,
                &job_id,
                &spec.target,
                &p.chain,
                &p.plan,
                into,
                &p.archive,
                &mut progress,
                cancel,
            )
            .await?;
            publish::create_consumers(ctx, &spec.target, &p.latest.consumers, &consumers).await?;
            tally
        }
        RestoreMethod::Append | RestoreMethod::Auto => {
            let job_id = progress.job().id.clone();
            publish::write(
                ctx,
                &job_id,
                &spec.target,
                &p.chain,
                &p.plan,
                publish::Into::Existing,
                &p.archive,
                &mut progress,
                cancel,
            )
            .await?
        }
    };
    let segments = progress.segments_done().max(p.plan.segments.len() as u64);
    notes.extend(progress.take_notes());
    drop(progress);
    if new_target && !checked_before {
        // Checked while nobody else can write to it; then it gets its subjects (and the mark
        // that it checked: from here no failure deletes it).
        check_target(ctx, &spec.target, &tally, started.target_last_seq).await?;
        ctx.api
            .update_stream(&target::checked(&final_config, &job.id))
            .await?;
    }
    let completed = RestoreCompleted {
        segments,
        messages: tally.messages,
        bytes: tally.bytes,
        first_seq: tally.first_seq().unwrap_or(0),
        last_seq: tally.last_seq().unwrap_or(0),
        consumers,
        notes,
    };
    execute(&ctx.events, job, RestoreCommand::Complete(completed), None).await?;
    if new_target && let Err(e) = clear_marker(ctx, &spec.target, &p.original).await {
        tracing::warn!(target = %spec.target, error = %e, "restore completed; could not remove the {} metadata", target::RESTORE_JOB_METADATA);
    }
    tracing::info!(job = %job.id, target = %spec.target, messages = tally.messages, method = ?started.method, "restore completed");
    Ok(())
}

/// Request checks that depend on the backup: a server snapshot restores whole, by the server.
pub fn validate_request(
    latest: &StreamArchive,
    selection: &Selection,
    options: &RestoreOptions,
) -> Result<(), EngineError> {
    if latest.snapshot.is_some() {
        if !selection.is_everything() {
            return Err(EngineError::precondition(
                ErrorCode::BadRequest,
                "a snapshot backup restores whole: no time, sequence or subject selection",
            ));
        }
        if !matches!(
            options.method,
            RestoreMethod::Auto | RestoreMethod::ServerArchive
        ) {
            return Err(EngineError::precondition(
                ErrorCode::BadRequest,
                "a snapshot backup is restored by the server (method auto or server-archive)",
            ));
        }
    }
    Ok(())
}

/// Restores a snapshot-mode backup: the server's own snapshot, passed back to its restore API
/// (whole, with its consumers; under a new name on servers that restore per-message archives).
async fn restore_snapshot(
    ctx: &Context,
    job: &mut Job<RestoreJob>,
    p: &Prepared,
    snapshot: &crate::archive::manifest::SnapshotArchive,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let spec = job.state.spec.clone().expect("spec");
    if job.state.lifecycle.state == Some(JobState::Accepted) {
        validate_request(&p.latest, &spec.selection, &spec.options)?;
        if let Some(info) = ctx.api.stream_info(&spec.target).await? {
            return Err(EngineError::precondition(
                ErrorCode::Conflict,
                format!(
                    "target stream {} already exists ({} messages)",
                    spec.target, info.state.messages
                ),
            ));
        }
        let started = RestoreStarted {
            method: RestoreMethod::ServerArchive,
            chain: p.chain.ids(),
            segments: snapshot.parts.len() as u64,
            messages: p.latest.messages,
            bytes: snapshot.parts.iter().map(|x| x.raw_bytes).sum(),
            first_seq: if p.latest.messages > 0 {
                p.latest.first_seq
            } else {
                0
            },
            last_seq: if p.latest.messages > 0 {
                p.latest.last_seq
            } else {
                0
            },
            target_last_seq: p.latest.last_seq,
        };
        execute(&ctx.events, job, RestoreCommand::Start(started), None).await?;
    }
    let started = job
        .state
        .plan
        .clone()
        .expect("a running restore has a plan");
    let owned = target::subjects_owned_elsewhere(&ctx.api, &p.original, &spec.target).await?;
    let (final_config, notes) =
        target::final_config(&p.original, &spec.target, &spec.options, &owned, &job.id);
    let keys = p.chain.manifests[0]
        .1
        .encryption
        .as_ref()
        .map(|_| &ctx.keys);
    let already = ctx.api.stream_info(&spec.target).await?;
    match already {
        Some(info) if target::owned_by(&info.config, &job.id) => {} // the server finished before a crash
        Some(_) => {
            return Err(EngineError::precondition(
                ErrorCode::Conflict,
                format!(
                    "target stream {} was created by someone else during the restore",
                    spec.target
                ),
            ));
        }
        None => {
            let mut upload =
                server_archive::Upload::passthrough(&ctx.api, &target::quiet(&final_config))
                    .await?;
            let mut progress = Progress::new(job, snapshot.parts.len() as u64);
            // Fetch one part ahead: the server gives up after 5 s without data.
            let fetch = |i: usize| {
                let archive = p.archive.clone();
                let key = crate::archive::part::key(&snapshot.parts[i]);
                tokio::spawn(async move { archive.get(&key).await })
            };
            let mut next = (!snapshot.parts.is_empty()).then(|| fetch(0));
            let mut tally = Tally::default();
            for (i, info) in snapshot.parts.iter().enumerate() {
                if cancel.is_cancelled() {
                    return Err(EngineError::Cancelled);
                }
                let stored = next
                    .take()
                    .expect("fetched ahead")
                    .await
                    .map_err(|e| EngineError::task("fetching a part", e))??;
                if i + 1 < snapshot.parts.len() {
                    next = Some(fetch(i + 1));
                }
                let raw = crate::archive::part::open(&stored, info, keys)?;
                upload.raw(&raw).await?;
                tally.bytes += info.raw_bytes;
                progress
                    .segment_done(ctx, &tally, info.raw_bytes, started.last_seq)
                    .await?;
            }
            upload.finish().await?;
        }
    }
    let written = Tally {
        messages: p.latest.messages,
        bytes: started.bytes,
        first: (p.latest.messages > 0).then_some((p.latest.first_seq, 0)),
        last: (p.latest.messages > 0).then_some((p.latest.last_seq, 0)),
    };
    let checked_before = ctx
        .api
        .stream_info(&spec.target)
        .await?
        .is_some_and(|i| target::checked_by(&i.config, &job.id));
    if !checked_before {
        check_target(ctx, &spec.target, &written, started.target_last_seq).await?;
        ctx.api
            .update_stream(&target::checked(&final_config, &job.id))
            .await?;
    }
    // The server restored the consumers as they were in the snapshot.
    let consumers = if spec.options.consumers {
        p.latest
            .consumers
            .iter()
            .map(|c| ConsumerRestored {
                name: c.name.clone(),
                start_seq: c.ack_floor_stream_seq + 1,
                redeliveries: c.num_ack_pending,
            })
            .collect()
    } else {
        for c in &p.latest.consumers {
            let deleted = ctx
                .api
                .raw(
                    format!("$JS.API.CONSUMER.DELETE.{}.{}", spec.target, c.name),
                    json!({}),
                )
                .await;
            match deleted {
                // Gone already: deleted by this job before it was interrupted.
                Err(e) if e.err_code() == Some(crate::jsapi::CONSUMER_NOT_FOUND) => {}
                other => {
                    other?;
                }
            }
        }
        Vec::new()
    };
    let completed = RestoreCompleted {
        segments: snapshot.parts.len() as u64,
        messages: written.messages,
        bytes: written.bytes,
        first_seq: started.first_seq,
        last_seq: started.last_seq,
        consumers,
        notes,
    };
    execute(&ctx.events, job, RestoreCommand::Complete(completed), None).await?;
    if let Err(e) = clear_marker(ctx, &spec.target, &p.original).await {
        tracing::warn!(target = %spec.target, error = %e, "restore completed; could not remove the {} metadata", target::RESTORE_JOB_METADATA);
    }
    Ok(())
}

/// With original timestamps, the server would expire at once every restored message older
/// than the stream's `max_age`: an operator restoring old data wants it back, so the restored
/// stream gets no `max_age` then, and a note says so.
fn relax_max_age(config: &mut Value, plan: &Plan, chain: &Chain, notes: &mut Vec<String>) {
    let max_age_ns = config.get("max_age").and_then(Value::as_i64).unwrap_or(0);
    let Some(oldest) = plan.segments.first().map(|s| s.info.first_time) else {
        return;
    };
    if max_age_ns > 0
        && oldest < time::OffsetDateTime::now_utc() - time::Duration::nanoseconds(max_age_ns)
    {
        config["max_age"] = json!(0);
        notes.push(format!(
            "max_age ({}s) not applied: restored messages of {} are older and would expire at once; set it back when done",
            max_age_ns / 1_000_000_000,
            chain.stream
        ));
    }
}

#[allow(clippy::too_many_arguments)]
async fn write_server_archive(
    ctx: &Context,
    target: &str,
    p: &Prepared,
    final_config: &Value,
    first_seq: u64,
    last_seq: u64,
    consumers: &[(
        &cim_backup_contracts::events::ConsumerPosition,
        &ConsumerRestored,
    )],
    progress: &mut Progress<'_>,
    cancel: &CancellationToken,
) -> Result<Tally, EngineError> {
    let job_id = progress.job().id.clone();
    if let Some(info) = ctx.api.stream_info(target).await? {
        if !target::owned_by(&info.config, &job_id) {
            return Err(EngineError::precondition(
                ErrorCode::Conflict,
                format!("target stream {target} was created by someone else during the restore"),
            ));
        }
        // Ours, from before a crash: complete if the server finished, else a partial upload the
        // server kept. Count what should be there and compare; if it falls short, start over.
        let tally = plan::tally(&p.archive, &p.chain, &p.plan, &ctx.keys).await?;
        if check_target(ctx, target, &tally, last_seq).await.is_ok() {
            return Ok(tally);
        }
        tracing::warn!(
            target,
            "a partial server restore from before a restart; deleting it and uploading again"
        );
        ctx.api.delete_stream(target).await?;
    }
    let entries = consumers
        .iter()
        .map(|(saved, start)| {
            server_archive::consumer_entry(
                &saved.config,
                start.start_seq - 1,
                saved.ack_floor_consumer_seq,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut upload = server_archive::Upload::begin(
        &ctx.api,
        &target::quiet(final_config),
        first_seq,
        last_seq,
        &entries,
    )
    .await?;
    let mut tally = Tally::default();
    for planned in &p.plan.segments {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let object = segment::key(&planned.info);
        let fetch = p.archive.get(&object);
        tokio::pin!(fetch);
        let stored = loop {
            tokio::select! {
                stored = &mut fetch => break stored?,
                _ = tokio::time::sleep(Duration::from_secs(1)) => upload.keepalive().await?,
            }
        };
        let plain = plan::open_planned(&p.chain, planned, &stored, &ctx.keys)?;
        for record in plan::kept_records(&p.plan, planned, &plain) {
            let record = record?;
            tally.add(&record);
            upload.message(&record).await?;
        }
        progress
            .segment_done(ctx, &tally, planned.info.raw_bytes, planned.info.last_seq)
            .await?;
    }
    upload.finish().await?;
    Ok(tally)
}

/// The restored stream must hold exactly what was written, on every replica: "completed"
/// means a reader anywhere in the cluster sees the whole restore.
async fn check_target(
    ctx: &Context,
    target: &str,
    tally: &Tally,
    last_seq: u64,
) -> Result<(), EngineError> {
    let state = settled_info(ctx, target).await?.state;
    let first_ok = tally.messages == 0 || Some(state.first_seq) == tally.first_seq();
    if state.messages != tally.messages || state.last_seq != last_seq || !first_ok {
        return Err(EngineError::precondition(
            ErrorCode::Internal,
            format!(
                "restored stream {target} holds {} messages {}..={}, the restore wrote {} messages {}..={} (last sequence {last_seq})",
                state.messages,
                state.first_seq,
                state.last_seq,
                tally.messages,
                tally.first_seq().unwrap_or(0),
                tally.last_seq().unwrap_or(0)
            ),
        ));
    }
    Ok(())
}

/// The stream's info once every replica has caught up (two minutes at most).
pub(crate) async fn settled_info(
    ctx: &Context,
    stream: &str,
) -> Result<crate::jsapi::StreamInfo, EngineError> {
    let vanished =
        || EngineError::precondition(ErrorCode::Conflict, format!("stream {stream} vanished"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut info = ctx.api.stream_info(stream).await?.ok_or_else(vanished)?;
    while !info.replicas_current {
        if tokio::time::Instant::now() > deadline {
            return Err(EngineError::precondition(
                ErrorCode::Unavailable,
                format!("replicas of {stream} did not catch up within 2 minutes"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        info = ctx.api.stream_info(stream).await?.ok_or_else(vanished)?;
    }
    Ok(info)
}

/// Puts the original metadata back, dropping the job's marker.
async fn clear_marker(ctx: &Context, target: &str, original: &Value) -> Result<(), EngineError> {
    let current = ctx
        .api
        .stream_info(target)
        .await?
        .ok_or_else(|| {
            EngineError::precondition(
                ErrorCode::Conflict,
                format!("target stream {target} vanished"),
            )
        })?
        .config;
    ctx.api
        .update_stream(&target::without_marker(&current, original))
        .await?;
    Ok(())
}

/// What a restore request would do, computed exactly (reading the needed segments) and
/// without writing anything.
pub struct DryRun<'a> {
    pub source_url: &'a str,
    pub backup: Cid,
    pub stream: &'a str,
    pub target: &'a str,
    pub selection: &'a Selection,
    pub options: &'a RestoreOptions,
}

pub async fn dry_run(ctx: &Context, r: DryRun<'_>) -> Result<RestorePlan, EngineError> {
    let p = prepare(ctx, r.source_url, r.backup, r.stream, r.selection).await?;
    validate_request(&p.latest, r.selection, r.options)?;
    let method = choose_method(ctx, r.options.method, r.target).await?;
    let tally = match &p.latest.snapshot {
        // A server snapshot is restored whole; its totals are in the manifest.
        Some(_) => Tally {
            messages: p.latest.messages,
            bytes: p.latest.raw_bytes,
            first: (p.latest.messages > 0).then_some((p.latest.first_seq, 0)),
            last: (p.latest.messages > 0).then_some((p.latest.last_seq, 0)),
        },
        None if method == RestoreMethod::Append => append_tally(ctx, &p, r.target).await?,
        None => plan::tally(&p.archive, &p.chain, &p.plan, &ctx.keys).await?,
    };
    refuse_empty_selection(&p, r.selection, Some(tally.messages))?;
    let last_seq = target_last_seq(r.selection, &p.latest, &tally);
    let mut notes = Vec::new();
    if method != RestoreMethod::Append {
        let owned = target::subjects_owned_elsewhere(&ctx.api, &p.original, r.target).await?;
        let (mut config, more) =
            target::final_config(&p.original, r.target, r.options, &owned, &JobId::dry_run());
        notes.extend(more);
        if method == RestoreMethod::ServerArchive {
            relax_max_age(&mut config, &p.plan, &p.chain, &mut notes);
        }
    }
    let consumers = if method != RestoreMethod::Append && r.options.consumers {
        plan::consumer_starts(&p.latest, last_seq)
    } else {
        Vec::new()
    };
    Ok(RestorePlan {
        dry_run: true,
        backup: r.backup.into(),
        chain: p.chain.ids().into_iter().map(Into::into).collect(),
        stream: r.stream.to_owned(),
        target: r.target.to_owned(),
        method,
        segments: p.plan.segments.len() as u64,
        messages: tally.messages,
        bytes: tally.bytes,
        first_seq: tally.first_seq(),
        last_seq: tally.last_seq(),
        // A snapshot's message times are inside the server's format: unknown here.
        first_time: tally.first_time().filter(|_| p.latest.snapshot.is_none()),
        last_time: tally.last_time().filter(|_| p.latest.snapshot.is_none()),
        consumers,
        notes,
    })
}
