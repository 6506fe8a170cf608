//! The verify engine: re-reads every object of a backup and checks it end to end.
//!
//! Manifest: present, hashes to the backup id, decodes. Each segment: present, size as recorded,
//! hashes to its CID, zstd frame and checksum, plaintext length, magic, every record's CRC,
//! sequences strictly increasing inside the recorded range, record count and boundary times.
//! Across segments: sequences ascend without overlap, and per-stream totals match the manifest.
//! The first failure names the object (and record) and fails the job.

use cim_backup_contracts::ErrorCode;
use cim_backup_contracts::events::{VerifyCompleted, VerifyProgressed, VerifyStarted};
use cim_backup_contracts::views::JobState;
use cim_backup_domain::verify::{VerifyCommand, VerifyJob};
use tokio_util::sync::CancellationToken;

use super::context::Context;
use super::error::EngineError;
use crate::archive::manifest::{self, Manifest};
use crate::archive::{ArchiveError, segment};
use crate::jobs::{Job, execute};

/// Minimum time between two progress events of one verify job.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

pub async fn run(ctx: &Context, job: &mut Job<VerifyJob>, cancel: &CancellationToken) -> Result<(), EngineError> {
    let spec = job.state.spec.clone().ok_or(EngineError::Rejected(cim_backup_domain::DomainError::NotCreated))?;
    let archive = ctx.destinations.open(&spec.source_url)?;
    let (manifest, manifest_bytes) = archive.get_manifest(&spec.backup).await?;
    check_manifest_totals(&manifest, &spec.backup)?;
    let (objects, segment_bytes) = manifest.objects();
    let records: u64 = manifest.streams.iter().map(|s| s.messages).sum();
    let plan = VerifyStarted { objects, bytes: segment_bytes + manifest_bytes, records };
    match job.state.lifecycle.state {
        Some(JobState::Accepted) => {
            execute(&ctx.events, job, VerifyCommand::Start(plan), None).await?;
        }
        // A verify restarted after a crash starts over; its plan must not have changed.
        _ if job.state.plan.as_ref() != Some(&plan) => {
            return Err(EngineError::precondition(ErrorCode::Corrupt, "the backup changed since this verify started"));
        }
        _ => {}
    }
    let mut done = (1u64, manifest_bytes, 0u64); // objects, bytes, records — the manifest is checked
    let already = job.state.progress.as_ref().map_or(0, |p| p.objects_done);
    let mut last_progress = tokio::time::Instant::now();
    for stream in &manifest.streams {
        let mut prev_last: Option<u64> = None;
        for info in &stream.segments {
            if cancel.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            let key = segment::key(info);
            if let Some(prev) = prev_last {
                if info.first_seq <= prev {
                    return Err(ArchiveError::corrupt(&key, format!("starts at seq {} but the previous segment ends at {prev}", info.first_seq)).into());
                }
            }
            prev_last = Some(info.last_seq);
            let stored = archive.get(&key).await?;
            let plain = segment::open(&stored, info, manifest.compression.algorithm)?;
            done.2 += segment::check_records(&plain, info)?;
            done.0 += 1;
            done.1 += info.stored_bytes;
            let finished = done.0 == objects;
            if done.0 > already && (finished || last_progress.elapsed() >= PROGRESS_EVERY) {
                let progress = VerifyProgressed { objects_done: done.0, bytes_done: done.1, records_done: done.2 };
                execute(&ctx.events, job, VerifyCommand::Progress(progress), None).await?;
                last_progress = tokio::time::Instant::now();
            }
        }
    }
    let completed = VerifyCompleted { objects: done.0, bytes: done.1, records: done.2 };
    execute(&ctx.events, job, VerifyCommand::Complete(completed), None).await?;
    tracing::info!(job = %job.id, backup = %spec.backup, objects = done.0, records = done.2, "verify completed");
    Ok(())
}

/// Per-stream totals and bounds in the manifest must agree with its segments and its cut.
fn check_manifest_totals(manifest: &Manifest, backup: &cim_backup_contracts::cid::Cid) -> Result<(), EngineError> {
    let bad = |message: String| -> EngineError { ArchiveError::corrupt(manifest::key(backup), message).into() };
    for s in &manifest.streams {
        match (s.segments.first(), s.segments.last()) {
            (Some(first), Some(last)) if (first.first_seq, last.last_seq) != (s.first_seq, s.last_seq) => {
                return Err(bad(format!(
                    "stream {}: says {}..={}, its segments cover {}..={}",
                    s.name, s.first_seq, s.last_seq, first.first_seq, last.last_seq
                )));
            }
            (None, None) if s.messages != 0 => return Err(bad(format!("stream {}: {} messages but no segments", s.name, s.messages))),
            _ => {}
        }
        if s.messages > 0 && s.last_seq > s.cut.last_seq {
            return Err(bad(format!("stream {}: ends at {} beyond its cut at {}", s.name, s.last_seq, s.cut.last_seq)));
        }
        let messages: u64 = s.segments.iter().map(|g| g.records).sum();
        let stored: u64 = s.segments.iter().map(|g| g.stored_bytes).sum();
        let raw: u64 = s.segments.iter().map(|g| g.raw_bytes).sum();
        if (messages, stored, raw) != (s.messages, s.stored_bytes, s.raw_bytes) {
            return Err(ArchiveError::corrupt(
                manifest::key(backup),
                format!("stream {}: totals {}/{}/{} do not add up from its segments ({messages}/{stored}/{raw})", s.name, s.messages, s.stored_bytes, s.raw_bytes),
            )
            .into());
        }
    }
    Ok(())
}
