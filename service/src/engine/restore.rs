//! The restore engine: one stream of a backup into a new stream, with its original sequence
//! numbers (gaps included), subjects, headers and payloads.
//!
//! # How sequences are reproduced
//! JetStream assigns sequences itself, so the engine makes the server assign the right ones:
//! 1. the target is created with `first_seq` = the first archived sequence;
//! 2. records are published in order; for every sequence missing from the archive (a message
//!    deleted before the backup) a *filler* is published on `_CIM_BACKUP.fill`; each publish
//!    ack must carry exactly the expected sequence, otherwise someone else wrote to the target
//!    and the restore fails;
//! 3. fillers are purged by subject, leaving exactly the original gaps.
//!
//! While it runs, the target listens only on `_CIM_BACKUP.restore.<job>.>` with a subject
//! transform that strips that prefix, so messages are stored under their original subjects but
//! live producers cannot interleave with the restore, and a restore under a new name can run
//! beside the original stream. At the end the original subjects (or, if another stream owns
//! them, none) and limits are put back.
//!
//! A restore that dies midway resumes from the target's last sequence.

use std::collections::VecDeque;

use async_nats::jetstream::context::PublishAckFuture;
use cim_backup_contracts::ErrorCode;
use cim_backup_contracts::JobId;
use cim_backup_contracts::events::{RestoreCompleted, RestoreProgressed, RestoreStarted};
use cim_backup_contracts::views::JobState;
use cim_backup_domain::restore::{RestoreCommand, RestoreJob};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::context::Context;
use super::error::EngineError;
use crate::archive::manifest::{Manifest, StreamArchive};
use crate::archive::record::decode_headers;
use crate::archive::segment;
use crate::jobs::{Job, execute};

/// Prefix of the subjects a target listens on while a restore writes it.
pub const RESTORE_PREFIX: &str = "_CIM_BACKUP.restore";
/// Subject of the placeholder messages that reproduce sequence gaps; purged before the end.
pub const FILLER_SUBJECT: &str = "_CIM_BACKUP.fill";
/// Publishes awaiting their ack at once.
const ACK_WINDOW: usize = 4096;
/// Minimum time between two progress events of one restore job.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

pub async fn run(ctx: &Context, job: &mut Job<RestoreJob>, cancel: &CancellationToken) -> Result<(), EngineError> {
    let result = restore(ctx, job, cancel).await;
    if result.is_err() {
        remove_partial_target(ctx, job).await;
    }
    result
}

/// A failed or cancelled restore deletes the target it created, so no half-restored stream is
/// left that someone could mistake for the real thing. (A restore interrupted by a crash or
/// shutdown keeps it and resumes.)
async fn remove_partial_target(ctx: &Context, job: &Job<RestoreJob>) {
    let Some(spec) = &job.state.spec else { return };
    match ctx.api.stream_info(&spec.target).await {
        Ok(Some(info)) if owned_by(&info.config, &job.id) => {}
        _ => return, // absent, finished, or not ours
    }
    match ctx.api.delete_stream(&spec.target).await {
        Ok(()) => tracing::info!(job = %job.id, target = %spec.target, "removed the partially restored target"),
        Err(e) => tracing::warn!(job = %job.id, target = %spec.target, error = %e, "could not remove the partially restored target"),
    }
}

async fn restore(ctx: &Context, job: &mut Job<RestoreJob>, cancel: &CancellationToken) -> Result<(), EngineError> {
    let spec = job.state.spec.clone().ok_or(EngineError::Rejected(cim_backup_domain::DomainError::NotCreated))?;
    let archive = ctx.destinations.open(&spec.source_url)?;
    let (manifest, _) = archive.get_manifest(&spec.backup).await?;
    let entry = stream_entry(&manifest, &spec.stream)?.clone();
    let original: Value = serde_json::from_str(&entry.config)
        .map_err(|e| EngineError::precondition(ErrorCode::Corrupt, format!("stream config in the manifest is not JSON: {e}")))?;

    if job.state.lifecycle.state == Some(JobState::Accepted) {
        if let Some(info) = ctx.api.stream_info(&spec.target).await? {
            return Err(EngineError::precondition(
                ErrorCode::Conflict,
                format!("target stream {} already exists ({} messages); restore creates it, so it must not exist", spec.target, info.state.messages),
            ));
        }
        let plan = RestoreStarted {
            segments: entry.segments.len() as u64,
            messages: entry.messages,
            bytes: entry.raw_bytes,
            first_seq: entry.first_seq,
            last_seq: entry.last_seq,
        };
        execute(&ctx.events, job, RestoreCommand::Start(plan), None).await?;
    }
    // Running from here on. The target carries this job's id in its metadata until the end, so
    // a resumed job recognises its own half-written target and never touches anybody else's.
    let target_state = match ctx.api.stream_info(&spec.target).await? {
        None => {
            ctx.api.create_stream(&staging_config(&original, &spec.target, &job.id, &entry)).await?;
            ctx.api.stream_info(&spec.target).await?.map(|i| i.state).unwrap_or_default()
        }
        Some(info) if owned_by(&info.config, &job.id) => info.state,
        Some(_) => {
            return Err(EngineError::precondition(
                ErrorCode::Conflict,
                format!("target stream {} was created by someone else during the restore", spec.target),
            ));
        }
    };
    let mut writer = Writer {
        ctx,
        prefix: format!("{RESTORE_PREFIX}.{}", job.id),
        next_seq: target_state.last_seq + 1,
        in_flight: VecDeque::new(),
    };
    let done = job.state.progress.clone();
    let (mut segments_done, mut messages_done, mut bytes_done) =
        done.as_ref().map_or((0, 0, 0), |p| (p.segments_done, p.messages_done, p.bytes_done));
    let mut last_progress = tokio::time::Instant::now();
    for info in entry.segments.iter().skip(segments_done as usize) {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let stored = archive.get(&segment::key(info)).await?;
        let plain = segment::open(&stored, info, manifest.compression.algorithm)?;
        for rec in segment::records(&plain) {
            let rec = rec.map_err(|e| crate::archive::ArchiveError::Corrupt {
                object: segment::key(info),
                record: e.seq,
                message: e.to_string(),
            })?;
            messages_done += 1;
            if rec.seq < writer.next_seq {
                continue; // written before a restart
            }
            writer.fill_to(rec.seq).await?;
            let headers = decode_headers(rec.headers).map_err(|message| crate::archive::ArchiveError::Corrupt {
                object: segment::key(info),
                record: Some(rec.seq),
                message,
            })?;
            writer.publish(rec.subject, headers, bytes::Bytes::copy_from_slice(rec.payload)).await?;
        }
        writer.drain().await?;
        segments_done += 1;
        bytes_done += info.raw_bytes;
        // Progress is also the resume point, but resuming needs no exact checkpoint (it skips
        // what the target already holds), so record it at most every PROGRESS_EVERY.
        if last_progress.elapsed() >= PROGRESS_EVERY || segments_done == entry.segments.len() as u64 {
            let progress = RestoreProgressed { segments_done, messages_done, bytes_done, last_seq: info.last_seq };
            execute(&ctx.events, job, RestoreCommand::Progress(progress), None).await?;
            last_progress = tokio::time::Instant::now();
        }
    }
    // Reproduce trailing gaps up to the cut, so the next message gets the sequence it would have.
    writer.fill_to(entry.cut.last_seq.max(entry.last_seq) + 1).await?;
    writer.drain().await?;

    // Order matters: the target keeps this job's marker until the completion is recorded, so
    // a failed check or a crash before it still finds (and can remove or resume) its target.
    finish_target(ctx, &original, &spec.target, &job.id).await?;
    check_target(ctx, &spec.target, &entry).await?;
    let completed = RestoreCompleted { messages: messages_done, bytes: bytes_done, first_seq: entry.first_seq, last_seq: entry.last_seq };
    execute(&ctx.events, job, RestoreCommand::Complete(completed), None).await?;
    if let Err(e) = clear_marker(ctx, &original, &spec.target).await {
        tracing::warn!(target = %spec.target, error = %e, "restore completed; could not remove the {RESTORE_JOB_METADATA} metadata");
    }
    tracing::info!(job = %job.id, target = %spec.target, messages = messages_done, "restore completed");
    Ok(())
}

pub fn stream_entry<'m>(manifest: &'m Manifest, stream: &str) -> Result<&'m StreamArchive, EngineError> {
    manifest.stream(stream).ok_or_else(|| {
        let names: Vec<&str> = manifest.streams.iter().map(|s| s.name.as_str()).collect();
        EngineError::precondition(ErrorCode::NotFound, format!("the backup holds no stream {stream} (it holds {names:?})"))
    })
}

/// Stream metadata key that marks a target as being written by a restore job.
pub const RESTORE_JOB_METADATA: &str = "cim-backup.restore-job";

fn owned_by(config: &Value, job: &JobId) -> bool {
    config.pointer(&format!("/metadata/{RESTORE_JOB_METADATA}")).and_then(Value::as_str) == Some(job.as_str())
}

/// Publish preconditions (`Nats-Expected-*`) held when the message was first stored; checking
/// them again against the restored stream is meaningless and can fail (they may name the
/// original stream, or a message deleted before the backup). They are not re-sent: this is the
/// one way a restored message's headers differ from the original's.
fn is_publish_precondition(name: &str) -> bool {
    name.len() >= 13 && name[..13].eq_ignore_ascii_case("Nats-Expected")
}

/// Publishes records and fillers with pipelined acks, checking every assigned sequence.
struct Writer<'a> {
    ctx: &'a Context,
    prefix: String,
    next_seq: u64,
    in_flight: VecDeque<(u64, PublishAckFuture)>,
}

impl Writer<'_> {
    async fn fill_to(&mut self, seq: u64) -> Result<(), EngineError> {
        while self.next_seq < seq {
            self.send(FILLER_SUBJECT, None, bytes::Bytes::new()).await?;
        }
        Ok(())
    }

    async fn publish(&mut self, subject: &str, mut headers: Option<async_nats::HeaderMap>, payload: bytes::Bytes) -> Result<(), EngineError> {
        if let Some(h) = headers.as_mut().filter(|h| h.iter().any(|(name, _)| is_publish_precondition(name.as_ref()))) {
            *h = h
                .iter()
                .filter(|(name, _)| !is_publish_precondition(name.as_ref()))
                .flat_map(|(name, values)| values.iter().map(move |v| (name.clone(), v.clone())))
                .collect();
        }
        self.send(subject, headers, payload).await
    }

    async fn send(&mut self, subject: &str, headers: Option<async_nats::HeaderMap>, payload: bytes::Bytes) -> Result<(), EngineError> {
        if self.in_flight.len() >= ACK_WINDOW {
            self.settle_one().await?;
        }
        let subject = format!("{}.{subject}", self.prefix);
        let js = &self.ctx.js;
        let ack = match headers {
            Some(h) if !h.is_empty() => js.publish_with_headers(subject, h, payload).await,
            _ => js.publish(subject, payload).await,
        }
        .map_err(EngineError::nats)?;
        self.in_flight.push_back((self.next_seq, ack));
        self.next_seq += 1;
        Ok(())
    }

    async fn settle_one(&mut self) -> Result<(), EngineError> {
        let Some((expected, ack)) = self.in_flight.pop_front() else { return Ok(()) };
        let ack = ack.await.map_err(EngineError::nats)?;
        if ack.duplicate {
            return Err(EngineError::precondition(
                ErrorCode::Conflict,
                format!("the server dropped the message for sequence {expected} as a duplicate (its Nats-Msg-Id repeats an earlier one)"),
            ));
        }
        if ack.sequence != expected {
            return Err(EngineError::precondition(
                ErrorCode::Conflict,
                format!("target got sequence {} where {expected} was expected: something else wrote to it during the restore", ack.sequence),
            ));
        }
        Ok(())
    }

    async fn drain(&mut self) -> Result<(), EngineError> {
        while !self.in_flight.is_empty() {
            self.settle_one().await?;
        }
        Ok(())
    }
}

/// The config the target is created with: the original, renamed, listening only on the restore
/// prefix, without limits that could evict restored messages or fillers, and with a minimal
/// duplicate window (restored messages may legitimately repeat a `Nats-Msg-Id` from outside the
/// original window).
fn staging_config(original: &Value, target: &str, job: &JobId, entry: &StreamArchive) -> Value {
    let mut c = original.clone();
    let prefix = format!("{RESTORE_PREFIX}.{job}.>");
    let first_seq = if entry.messages > 0 { entry.first_seq } else { entry.cut.last_seq + 1 };
    if let Some(map) = c.as_object_mut() {
        for drop in ["mirror", "sources", "created"] {
            map.remove(drop);
        }
    }
    c["name"] = json!(target);
    c["subjects"] = json!([prefix]);
    c["subject_transform"] = json!({ "src": prefix, "dest": ">" });
    c["first_seq"] = json!(first_seq.max(1));
    c["sealed"] = json!(false);
    c["deny_purge"] = json!(false);
    c["deny_delete"] = json!(false);
    c["max_msgs"] = json!(-1);
    c["max_bytes"] = json!(-1);
    c["max_age"] = json!(0);
    c["max_msgs_per_subject"] = json!(-1);
    c["duplicate_window"] = json!(100_000_000u64);
    c["metadata"][RESTORE_JOB_METADATA] = json!(job.as_str());
    c
}

/// Purges fillers and puts the original subjects, transform, limits and protections back
/// (the job's marker stays until the completion is recorded).
async fn finish_target(ctx: &Context, original: &Value, target: &str, job: &JobId) -> Result<(), EngineError> {
    ctx.api.purge(target, Some(FILLER_SUBJECT)).await?;
    let mut current = ctx
        .api
        .stream_info(target)
        .await?
        .ok_or_else(|| EngineError::precondition(ErrorCode::Conflict, format!("target stream {target} vanished")))?
        .config;
    let subjects = original.get("subjects").cloned().unwrap_or_else(|| json!([]));
    let mut owned_elsewhere = Vec::new();
    for subject in subjects.as_array().into_iter().flatten().filter_map(Value::as_str) {
        for owner in ctx.api.streams_for_subject(subject).await? {
            if owner != target {
                owned_elsewhere.push(format!("{subject} (stream {owner})"));
            }
        }
    }
    if owned_elsewhere.is_empty() {
        current["subjects"] = subjects;
    } else {
        tracing::warn!(target, ?owned_elsewhere, "original subjects are owned by other streams; the restored stream gets none");
        current["subjects"] = json!([]);
    }
    match original.get("subject_transform") {
        Some(t) => current["subject_transform"] = t.clone(),
        None => {
            current.as_object_mut().map(|m| m.remove("subject_transform"));
        }
    }
    for key in ["max_msgs", "max_bytes", "max_age", "max_msgs_per_subject", "duplicate_window", "deny_purge", "deny_delete", "sealed"] {
        if let Some(v) = original.get(key) {
            current[key] = v.clone();
        }
    }
    current["metadata"] = original.get("metadata").cloned().unwrap_or_else(|| json!({}));
    current["metadata"][RESTORE_JOB_METADATA] = json!(job.as_str());
    ctx.api.update_stream(&current).await?;
    Ok(())
}

/// Puts the original metadata back, dropping this job's marker.
async fn clear_marker(ctx: &Context, original: &Value, target: &str) -> Result<(), EngineError> {
    let mut current = ctx
        .api
        .stream_info(target)
        .await?
        .ok_or_else(|| EngineError::precondition(ErrorCode::Conflict, format!("target stream {target} vanished")))?
        .config;
    current["metadata"] = original.get("metadata").cloned().unwrap_or_else(|| json!({}));
    ctx.api.update_stream(&current).await?;
    Ok(())
}

/// The restored stream must hold exactly what the archive holds.
async fn check_target(ctx: &Context, target: &str, entry: &StreamArchive) -> Result<(), EngineError> {
    let state = ctx
        .api
        .stream_info(target)
        .await?
        .ok_or_else(|| EngineError::precondition(ErrorCode::Conflict, format!("target stream {target} vanished")))?
        .state;
    let expected_last = entry.cut.last_seq.max(entry.last_seq);
    let first_ok = entry.messages == 0 || state.first_seq == entry.first_seq;
    if state.messages != entry.messages || state.last_seq != expected_last || !first_ok {
        return Err(EngineError::precondition(
            ErrorCode::Internal,
            format!(
                "restored stream {target} holds {} messages {}..={}, the backup holds {} messages {}..={} (last sequence {expected_last})",
                state.messages, state.first_seq, state.last_seq, entry.messages, entry.first_seq, entry.last_seq
            ),
        ));
    }
    Ok(())
}
