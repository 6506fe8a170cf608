//! The backup engine: cut → segments → manifest → completed.
//!
//! Per stream, a reader task frames messages into segments while an uploader compresses
//! (off the async executor) and stores up to `upload_concurrency` segments at once; segments are
//! *recorded* strictly in order, each only after its object is stored. The manifest is written
//! last, and `BackupCompleted` only after it. A job that dies anywhere before that leaves no
//! backup, and on restart continues after the last recorded segment: what is stored is not
//! uploaded again (objects are named by content).

use cim_backup_contracts::ErrorCode;
use cim_backup_contracts::events::{
    BackupAccepted, BackupCompleted, BackupMode, BackupStarted, ConsumerPosition, Estimate,
    ParentLink, SegmentStored, SnapshotPartStored, SnapshotTaken, StreamCut, StreamStart,
};
use cim_backup_contracts::views::JobState;
use cim_backup_domain::backup::{BackupCommand, BackupJob};
use futures::StreamExt;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::context::{Context, tool_version};
use super::error::EngineError;
use super::reader::RangeReader;
use super::snapshot::ServerSnapshot;
use crate::archive::ArchiveStore;
use crate::archive::manifest::{
    MANIFEST_FORMAT, MANIFEST_FORMAT_TREES, Manifest, SnapshotArchive, StreamArchive,
};
use crate::archive::record::{Record, encode_headers};
use crate::archive::segment::{SealedSegment, SegmentBuilder};
use crate::jobs::{Job, execute};

/// Runs a backup job to its end (completed, failed or cancelled).
pub async fn run(
    ctx: &Context,
    job: &mut Job<BackupJob>,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let spec = job.state.spec.clone().ok_or(EngineError::Rejected(
        cim_backup_domain::DomainError::NotCreated,
    ))?;
    let archive = ctx.destinations.create(&spec.destination_url)?;
    let resumed = job.state.lifecycle.state == Some(JobState::Running);
    if job.state.lifecycle.state == Some(JobState::Accepted) {
        let started = take_cut(ctx, &spec, &archive).await?;
        execute(&ctx.events, job, BackupCommand::Start(started), None).await?;
    }
    let streams = job
        .state
        .started
        .clone()
        .expect("a running backup has a cut")
        .streams;
    for start in &streams {
        match spec.mode {
            BackupMode::Messages => archive_stream(ctx, job, &archive, &start.cut, cancel).await?,
            BackupMode::Snapshot => {
                if resumed && job.state.snapshot_of(&start.cut.stream).is_some() {
                    // A server snapshot is one byte stream; a new one would not continue it.
                    return Err(EngineError::precondition(
                        ErrorCode::Conflict,
                        format!(
                            "the snapshot of {} was interrupted and cannot resume; start a new backup",
                            start.cut.stream
                        ),
                    ));
                }
                snapshot_stream(ctx, job, &archive, &start.cut.stream, cancel).await?
            }
        }
    }
    super::trees::store_trees(ctx, job, &archive, cancel).await?;
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
        encrypted: spec.encryption.is_some(),
        created: manifest.created,
        trees: job.state.trees.clone(),
    };
    execute(&ctx.events, job, BackupCommand::Complete(completed), None).await?;
    tracing::info!(job = %job.id, backup = %manifest_cid, "backup completed");
    Ok(())
}

fn gone(stream: &str) -> EngineError {
    EngineError::precondition(
        ErrorCode::NotFound,
        format!("stream {stream} does not exist (any more)"),
    )
}

/// The cut: every stream's state, config and durable consumers, read back to back, and for an
/// incremental backup each stream's parent. Everything up to `cut.last_seq` is backed up.
async fn take_cut(
    ctx: &Context,
    spec: &BackupAccepted,
    archive: &ArchiveStore,
) -> Result<BackupStarted, EngineError> {
    let taken_at = OffsetDateTime::now_utc();
    let mut streams = Vec::with_capacity(spec.streams.len());
    for stream in &spec.streams {
        let info = ctx
            .api
            .stream_info(stream)
            .await?
            .ok_or_else(|| gone(stream))?;
        let cut = StreamCut {
            stream: stream.clone(),
            first_seq: info.state.first_seq,
            last_seq: info.state.last_seq,
            messages: info.state.messages,
            bytes: info.state.bytes,
            taken_at: OffsetDateTime::now_utc(),
            created: info.created,
        };
        streams.push(StreamStart {
            config: info.config.to_string(),
            cut,
            parent: None,
            consumers: Vec::new(),
        });
    }
    // Consumers and parents after all the states, so the states are as close in time as the API
    // allows (the cut's skew is the spread of the `taken_at`s).
    let mut notes = Vec::new();
    for start in &mut streams {
        let stream = start.cut.stream.clone();
        start.consumers = ctx
            .api
            .durable_consumers(&stream)
            .await?
            .into_iter()
            .map(|c| ConsumerPosition {
                name: c.name,
                config: c.config.to_string(),
                delivered_consumer_seq: c.delivered_consumer_seq,
                delivered_stream_seq: c.delivered_stream_seq,
                ack_floor_consumer_seq: c.ack_floor_consumer_seq,
                ack_floor_stream_seq: c.ack_floor_stream_seq,
                num_ack_pending: c.num_ack_pending,
            })
            .collect();
        if spec.incremental && spec.mode == BackupMode::Messages {
            match find_parent(ctx, archive, spec, &start.cut).await? {
                Parent::Continue(link) => start.parent = Some(link),
                Parent::None => {}
                Parent::Full(why) => {
                    tracing::warn!(stream = %start.cut.stream, "{why}; taking a full backup");
                    notes.push(format!(
                        "{}: full backup, not incremental: {why}",
                        start.cut.stream
                    ));
                }
            }
        }
    }
    let mut estimate = estimate(spec, &streams);
    if !spec.trees.is_empty() {
        estimate.bytes += super::trees::estimate_bytes(ctx, spec).await?;
        estimate.objects += spec.trees.len() as u64;
    }
    Ok(BackupStarted {
        taken_at,
        streams,
        tool: tool_version(),
        notes,
        estimate: Some(estimate),
    })
}

/// Per-record bytes a segment frames beyond subject, headers and payload, and those the server's
/// file store counts in a stream's `bytes`: a stream's bytes convert to segment bytes by them.
const RECORD_OVERHEAD: u64 = 34;
const FILE_STORE_OVERHEAD: u64 = 30;

/// What a backup will store, from the cut: per stream the messages after its parent's cut (all
/// of them in a full backup; at most the sequences in the range), their share of the stream's
/// bytes in segment bytes, the segments those fill, and the manifest.
fn estimate(spec: &BackupAccepted, streams: &[StreamStart]) -> Estimate {
    let mut total = Estimate {
        objects: 1,
        ..Estimate::default()
    };
    for start in streams {
        let cut = &start.cut;
        if cut.messages == 0 {
            continue;
        }
        let from = start.from_seq();
        let messages = if from <= cut.first_seq {
            cut.messages
        } else {
            (cut.last_seq + 1).saturating_sub(from).min(cut.messages)
        };
        let share = (cut.bytes as u128 * messages as u128 / cut.messages as u128) as u64;
        let bytes = match spec.mode {
            BackupMode::Snapshot => share,
            BackupMode::Messages => {
                (share + messages * RECORD_OVERHEAD).saturating_sub(messages * FILE_STORE_OVERHEAD)
            }
        };
        total.messages += messages;
        total.bytes += bytes;
        total.objects += bytes.div_ceil(spec.segment_bytes.max(1));
    }
    total
}

/// What an incremental backup of one stream builds on.
enum Parent {
    /// The newest backup of the stream here, continued.
    Continue(ParentLink),
    /// No backup of the stream here yet: a full one is the first of its chain.
    None,
    /// There is one, but it cannot be continued (said why): this backup is full.
    Full(String),
}

/// How long reading the catalog may keep failing before the backup fails: an unreadable
/// catalog must not silently turn an incremental backup into a full one.
const CATALOG_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// The newest completed backup of the same stream in the same destination, if an incremental
/// backup can continue it: its manifest must read back, the stream must be the same one (same
/// creation time, sequences not gone backwards), it must hold messages (not a server snapshot),
/// and it must be encrypted exactly when this backup is (a chain never mixes plaintext and
/// ciphertext). Anything else means a full backup, with the reason as a note.
async fn find_parent(
    ctx: &Context,
    archive: &ArchiveStore,
    spec: &BackupAccepted,
    cut: &StreamCut,
) -> Result<Parent, EngineError> {
    let deadline = tokio::time::Instant::now() + CATALOG_RETRY_FOR;
    let entries = loop {
        match ctx.views.catalog().await {
            Ok(entries) => break entries,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(stream = %cut.stream, error = %e, "cannot read the catalog yet; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(EngineError::precondition(
                    ErrorCode::Unavailable,
                    format!(
                        "cannot read the catalog to find the previous backup of {}: {e}; retry, or back up in full",
                        cut.stream
                    ),
                ));
            }
        }
    };
    let Some(newest) = cim_backup_projections::catalog::select(entries, Some(&cut.stream))
        .into_iter()
        .find(|e| e.destination == spec.destination_url)
    else {
        return Ok(Parent::None);
    };
    let full = |why: String| {
        Ok(Parent::Full(format!(
            "{why} (previous backup {})",
            newest.backup_id
        )))
    };
    let manifest = match archive.get_manifest(&newest.backup_id.0).await {
        Ok((manifest, _)) => manifest,
        Err(e) => return full(format!("the previous backup cannot be read ({e})")),
    };
    let Some(entry) = manifest.stream(&cut.stream) else {
        return Ok(Parent::None);
    };
    if entry.snapshot.is_some() {
        return full(
            "the previous backup is a server snapshot, which an incremental cannot continue".into(),
        );
    }
    if entry.cut.created != cut.created {
        return full("the stream was recreated since the previous backup".into());
    }
    if cut.last_seq < entry.cut.last_seq {
        return full(format!(
            "the stream's last sequence {} is below the previous cut {}",
            cut.last_seq, entry.cut.last_seq
        ));
    }
    match (manifest.encryption.is_some(), spec.encryption.is_some()) {
        (true, false) => {
            return full("the previous backup is encrypted and this one is not".into());
        }
        (false, true) => {
            return full("the previous backup is not encrypted and this one is".into());
        }
        _ => {}
    }
    Ok(Parent::Continue(ParentLink {
        backup: newest.backup_id.0,
        cut_last_seq: entry.cut.last_seq,
    }))
}

/// Archives one stream from after its last recorded segment up to the cut.
async fn archive_stream(
    ctx: &Context,
    job: &mut Job<BackupJob>,
    archive: &ArchiveStore,
    cut: &StreamCut,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let from = job
        .state
        .resume_from(&cut.stream)
        .expect("the stream is part of the cut");
    if cut.messages == 0 || from > cut.last_seq {
        return Ok(());
    }
    let spec = job.state.spec.clone().expect("spec");
    let segment_bytes = spec.segment_bytes as usize;
    let concurrency = ctx.defaults.upload_concurrency;
    let (tx, rx) = mpsc::channel::<SegmentBuilder>(concurrency);
    let reader = read_segments(
        ctx,
        &cut.stream,
        from,
        cut.last_seq,
        segment_bytes,
        tx,
        cancel.clone(),
    );

    let compression = spec.compression;
    let recipients = spec.encryption.as_ref().map(|e| e.recipients.clone());
    let sealed =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
            .map(|builder| {
                let archive = archive.clone();
                let recipients = recipients.clone();
                async move {
                    let sealed = tokio::task::spawn_blocking(move || {
                        builder.seal(compression, recipients.as_deref())
                    })
                    .await
                    .map_err(|e| EngineError::task("compression", e))??;
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
            let stored = SegmentStored {
                stream: cut.stream.clone(),
                segment: sealed.info,
            };
            execute(&ctx.events, job, BackupCommand::RecordSegment(stored), None).await?;
        }
        Ok(())
    };
    // Both halves must finish; the first error wins and drops the other half.
    tokio::try_join!(reader, record)?;
    Ok(())
}

/// Snapshot mode: takes the server's own snapshot of `stream` (consumers included) and stores
/// it in parts of `segment_bytes`, each recorded once it is stored.
async fn snapshot_stream(
    ctx: &Context,
    job: &mut Job<BackupJob>,
    archive: &ArchiveStore,
    stream: &str,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let spec = job.state.spec.clone().expect("spec");
    let recipients = spec.encryption.as_ref().map(|e| e.recipients.clone());
    let mut snapshot = ServerSnapshot::start(ctx, stream, true).await?;
    let state = snapshot.state;
    let taken = SnapshotTaken {
        stream: stream.to_owned(),
        first_seq: state.first_seq,
        last_seq: state.last_seq,
        messages: state.messages,
        bytes: state.bytes,
    };
    execute(&ctx.events, job, BackupCommand::RecordSnapshot(taken), None).await?;
    let part_bytes = spec.segment_bytes as usize;
    let mut buffer = Vec::with_capacity(part_bytes + 128 * 1024);
    loop {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let chunk = snapshot.next_chunk().await?;
        let last = chunk.is_none();
        if let Some(chunk) = chunk {
            buffer.extend_from_slice(&chunk);
        }
        if (last && !buffer.is_empty()) || buffer.len() >= part_bytes {
            let raw = std::mem::replace(&mut buffer, Vec::with_capacity(part_bytes + 128 * 1024));
            let recipients = recipients.clone();
            let (stored, info) = tokio::task::spawn_blocking(move || {
                crate::archive::part::seal(raw, recipients.as_deref())
            })
            .await
            .map_err(|e| EngineError::task("sealing", e))??;
            archive
                .put_if_absent(&crate::archive::part::key(&info), stored)
                .await?;
            execute(
                &ctx.events,
                job,
                BackupCommand::RecordPart(SnapshotPartStored {
                    stream: stream.to_owned(),
                    part: info,
                }),
                None,
            )
            .await?;
        }
        if last {
            return Ok(());
        }
    }
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
        if count.is_multiple_of(1024) && cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let m = &read.message;
        if let Some(count) = async_nats::connection::malformed_header_lines(m) {
            // The client could not read every header line: archived, the message would come
            // back with a different header block. Say so rather than store it altered.
            return Err(EngineError::precondition(
                cim_backup_contracts::ErrorCode::Corrupt,
                format!(
                    "message {} of {stream} has a malformed header block ({} line(s) are not `Name: value`) that cannot be archived faithfully",
                    read.seq, count
                ),
            ));
        }
        encode_headers(m.headers.as_ref(), &mut headers);
        builder.push(&Record {
            seq: read.seq,
            time_ns: read.time_ns,
            subject: m.subject.as_str(),
            headers: &headers,
            payload: &m.payload,
        });
        if builder.raw_len() >= segment_bytes {
            let full =
                std::mem::replace(&mut builder, SegmentBuilder::with_capacity(segment_bytes));
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
    let started = job
        .state
        .started
        .as_ref()
        .expect("a running backup has a cut");
    let streams = started
        .streams
        .iter()
        .zip(job.state.summaries())
        .map(|(start, summary)| StreamArchive {
            name: start.cut.stream.clone(),
            config: start.config.clone(),
            cut: start.cut.clone(),
            first_seq: summary.first_seq,
            last_seq: summary.last_seq,
            messages: summary.messages,
            raw_bytes: summary.raw_bytes,
            stored_bytes: summary.stored_bytes,
            parent: start.parent.as_ref().map(|p| p.backup),
            consumers: start.consumers.clone(),
            segments: job.state.segments_of(&start.cut.stream).cloned().collect(),
            snapshot: (spec.mode == BackupMode::Snapshot).then(|| SnapshotArchive {
                parts: job.state.parts_of(&start.cut.stream).cloned().collect(),
            }),
        })
        .collect();
    let trees = job.state.trees.clone();
    Manifest {
        format: if trees.is_empty() {
            MANIFEST_FORMAT
        } else {
            MANIFEST_FORMAT_TREES
        }
        .to_owned(),
        tool: started.tool.clone(),
        job_id: job.id.to_string(),
        // The cut time, not "now": a job that crashes after writing the manifest and resumes
        // writes the same bytes again (same CID), instead of leaving an orphan manifest.
        created: started.taken_at,
        compression: spec.compression,
        encryption: spec.encryption.clone(),
        streams,
        trees,
    }
}
