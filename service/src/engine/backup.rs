//! The backup engine: cut → segments → manifest → completed.
//!
//! Per stream, a reader task frames messages into segments while an uploader compresses
//! (off the async executor) and stores up to `upload_concurrency` segments at once; segments are
//! *recorded* strictly in order, each only after its object is stored. The manifest is written
//! last, and `BackupCompleted` only after it. A job that dies anywhere before that leaves no
//! backup, and on restart continues after the last recorded segment: what is stored is not
//! uploaded again (objects are named by content).

use cim_backup_contracts::ErrorCode;
use cim_backup_contracts::events::{BackupCompleted, BackupStarted, SegmentStored, StreamCut};
use cim_backup_contracts::views::JobState;
use cim_backup_domain::backup::{BackupCommand, BackupJob};
use futures::StreamExt;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::context::{Context, tool_version};
use super::error::EngineError;
use super::reader::RangeReader;
use crate::archive::manifest::{MANIFEST_FORMAT, Manifest, StreamArchive};
use crate::archive::record::{Record, encode_headers};
use crate::archive::segment::{SealedSegment, SegmentBuilder};
use crate::archive::ArchiveStore;
use crate::jobs::{Job, execute};

/// Runs a backup job to its end (completed, failed or cancelled).
pub async fn run(ctx: &Context, job: &mut Job<BackupJob>, cancel: &CancellationToken) -> Result<(), EngineError> {
    let spec = job.state.spec.clone().ok_or(EngineError::Rejected(cim_backup_domain::DomainError::NotCreated))?;
    let archive = ctx.destinations.open(&spec.destination_url)?;
    if job.state.lifecycle.state == Some(JobState::Accepted) {
        let started = take_cut(ctx, &spec.streams).await?;
        execute(&ctx.events, job, BackupCommand::Start(started), None).await?;
    }
    let cut = job.state.started.clone().expect("a running backup has a cut").cut;
    for stream_cut in &cut {
        archive_stream(ctx, job, &archive, stream_cut, cancel).await?;
    }
    if cancel.is_cancelled() {
        return Err(EngineError::Cancelled);
    }
    let manifest = build_manifest(job);
    let (manifest_cid, manifest_bytes) = archive.put_manifest(&manifest).await?;
    let completed = BackupCompleted {
        manifest: manifest_cid,
        manifest_bytes,
        streams: job.state.summaries(),
        compression: spec.compression,
        encrypted: false,
        created: manifest.created,
    };
    execute(&ctx.events, job, BackupCommand::Complete(completed), None).await?;
    tracing::info!(job = %job.id, backup = %manifest_cid, "backup completed");
    Ok(())
}

fn gone(stream: &str) -> EngineError {
    EngineError::precondition(ErrorCode::NotFound, format!("stream {stream} does not exist (any more)"))
}

/// The last sequence (and verbatim config) of every stream, read back to back: everything up
/// to it is backed up.
async fn take_cut(ctx: &Context, streams: &[String]) -> Result<BackupStarted, EngineError> {
    let taken_at = OffsetDateTime::now_utc();
    let mut cut = Vec::with_capacity(streams.len());
    let mut configs = Vec::with_capacity(streams.len());
    for stream in streams {
        let info = ctx.api.stream_info(stream).await?.ok_or_else(|| gone(stream))?;
        configs.push(info.config.to_string());
        let state = info.state;
        cut.push(StreamCut {
            stream: stream.clone(),
            first_seq: state.first_seq,
            last_seq: state.last_seq,
            messages: state.messages,
            bytes: state.bytes,
        });
    }
    Ok(BackupStarted { taken_at, cut, configs, tool: tool_version() })
}

/// Archives one stream from after its last recorded segment up to the cut.
async fn archive_stream(
    ctx: &Context,
    job: &mut Job<BackupJob>,
    archive: &ArchiveStore,
    cut: &StreamCut,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let from = job.state.stored_up_to(&cut.stream).map_or(cut.first_seq, |s| s + 1);
    if cut.messages == 0 || from > cut.last_seq {
        return Ok(());
    }
    let spec = job.state.spec.clone().expect("spec");
    let segment_bytes = spec.segment_bytes as usize;
    let concurrency = ctx.defaults.upload_concurrency;
    let (tx, rx) = mpsc::channel::<SegmentBuilder>(concurrency);
    let reader = read_segments(ctx, &cut.stream, from, cut.last_seq, segment_bytes, tx, cancel.clone());

    let compression = spec.compression;
    let sealed = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
        .map(|builder| {
            let archive = archive.clone();
            async move {
                let sealed = tokio::task::spawn_blocking(move || builder.seal(compression))
                    .await
                    .map_err(|e| EngineError::nats(format!("compression task failed: {e}")))??;
                archive.put_segment(&sealed).await?;
                Ok::<SealedSegment, EngineError>(sealed)
            }
        })
        .buffered(concurrency);
    let record = async {
        futures::pin_mut!(sealed);
        while let Some(result) = sealed.next().await {
            let sealed = result?;
            if cancel.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            let stored = SegmentStored { stream: cut.stream.clone(), segment: sealed.info };
            execute(&ctx.events, job, BackupCommand::RecordSegment(stored), None).await?;
        }
        Ok(())
    };
    // Both halves must finish; the first error wins and drops the other half.
    tokio::try_join!(reader, record)?;
    Ok(())
}

/// Reads `from..=until` and hands full segments to `tx`.
async fn read_segments(
    ctx: &Context,
    stream: &str,
    from: u64,
    until: u64,
    segment_bytes: usize,
    tx: mpsc::Sender<SegmentBuilder>,
    cancel: CancellationToken,
) -> Result<(), EngineError> {
    let mut reader = RangeReader::open(&ctx.js, stream, from, until).await?;
    let mut builder = SegmentBuilder::with_capacity(segment_bytes);
    let mut headers = Vec::with_capacity(256);
    let mut count = 0u64;
    while let Some(read) = reader.next().await {
        let read = read?;
        count += 1;
        if count % 1024 == 0 && cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let m = &read.message;
        encode_headers(m.headers.as_ref(), &mut headers);
        builder.push(&Record {
            seq: read.seq,
            time_ns: read.time_ns,
            subject: m.subject.as_str(),
            headers: &headers,
            payload: &m.payload,
        });
        if builder.raw_len() >= segment_bytes {
            let full = std::mem::replace(&mut builder, SegmentBuilder::with_capacity(segment_bytes));
            tx.send(full).await.map_err(|_| EngineError::Cancelled)?;
        }
    }
    if builder.records() > 0 {
        tx.send(builder).await.map_err(|_| EngineError::Cancelled)?;
    }
    Ok(())
}

/// The manifest, computed from the job's events only (see `BackupStarted::configs`).
fn build_manifest(job: &Job<BackupJob>) -> Manifest {
    let spec = job.state.spec.as_ref().expect("spec");
    let started = job.state.started.as_ref().expect("a running backup has a cut");
    let streams = started
        .cut
        .iter()
        .zip(&started.configs)
        .zip(job.state.summaries())
        .map(|((c, config), summary)| StreamArchive {
            name: c.stream.clone(),
            config: config.clone(),
            cut: c.clone(),
            first_seq: summary.first_seq,
            last_seq: summary.last_seq,
            messages: summary.messages,
            raw_bytes: summary.raw_bytes,
            stored_bytes: summary.stored_bytes,
            parent: None,
            consumers: Vec::new(),
            segments: job.state.segments_of(&c.stream).cloned().collect(),
        })
        .collect();
    Manifest {
        format: MANIFEST_FORMAT.to_owned(),
        tool: started.tool.clone(),
        job_id: job.id.to_string(),
        // The cut time, not "now": a job that crashes after writing the manifest and resumes
        // writes the same bytes again (same CID), instead of leaving an orphan manifest.
        created: started.taken_at,
        compression: spec.compression,
        encryption: None,
        streams,
    }
}
