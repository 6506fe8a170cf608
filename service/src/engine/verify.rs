//! The verify engine: checks a backup and every backup its streams build on (the chain of
//! incremental parents), end to end.
//!
//! Every mode: each manifest present, hashing to its id, decoding; per-stream totals and bounds
//! agreeing with the segments and the cut; each link of a chain sound (an incremental holds only
//! sequences after its parent's cut, of the same stream).
//! - `structural` then checks that every segment object exists with its recorded size (no
//!   reading: fast, and needs no key for encrypted backups);
//! - `deep` reads every segment: size, CID, decryption (authenticated), zstd frame and checksum,
//!   plaintext length, magic, every record's CRC, header block and sequence, and sequence
//!   continuity across segments.
//!
//! The first failure names the object (and record) and fails the job.

use std::collections::{BTreeMap, HashSet};

use cim_backup_contracts::ErrorCode;
use cim_backup_contracts::cid::Cid;
use cim_backup_contracts::events::{VerifyCompleted, VerifyMode, VerifyProgressed, VerifyStarted};
use cim_backup_contracts::views::JobState;
use cim_backup_domain::verify::{VerifyCommand, VerifyJob};
use tokio_util::sync::CancellationToken;

use super::context::Context;
use super::error::EngineError;
use super::restore::plan::Chain;
use crate::archive::manifest::{self, Manifest};
use crate::archive::segment::{self, Codec};
use crate::archive::{ArchiveError, ArchiveStore};
use crate::jobs::{Job, execute};

/// Minimum time between two progress events of one verify job.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// The manifests a backup reaches through its streams' parents, each once.
struct Reach {
    /// Manifests by id, with their stored size.
    manifests: BTreeMap<Cid, (Manifest, u64)>,
    /// Read order: the backup itself first.
    order: Vec<Cid>,
}

async fn reach(archive: &ArchiveStore, backup: Cid) -> Result<Reach, EngineError> {
    let mut reach = Reach {
        manifests: BTreeMap::new(),
        order: Vec::new(),
    };
    let mut queue = vec![backup];
    while let Some(cid) = queue.pop() {
        if reach.manifests.contains_key(&cid) {
            continue;
        }
        let (manifest, size) = archive.get_manifest(&cid).await?;
        check_manifest_totals(&manifest, &cid)?;
        queue.extend(manifest.streams.iter().filter_map(|s| s.parent));
        reach.order.push(cid);
        reach.manifests.insert(cid, (manifest, size));
    }
    Ok(reach)
}

pub async fn run(
    ctx: &Context,
    job: &mut Job<VerifyJob>,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let spec = job.state.spec.clone().ok_or(EngineError::Rejected(
        cim_backup_domain::DomainError::NotCreated,
    ))?;
    let archive = ctx.destinations.open(&spec.source_url)?;
    let reach = reach(&archive, spec.backup).await?;
    // Every stream's chain links are sound.
    let (root, _) = &reach.manifests[&spec.backup];
    for stream in &root.streams {
        Chain::resolve(&archive, spec.backup, &stream.name)
            .await?
            .check_links()?;
    }
    // Segments and snapshot parts, each once (identical objects are shared between backups).
    let mut seen = HashSet::new();
    let objects: Vec<(&Manifest, Object<'_>)> = reach
        .order
        .iter()
        .flat_map(|cid| {
            let m = &reach.manifests[cid].0;
            m.streams.iter().flat_map(move |s| {
                let segments = s.segments.iter().map(move |g| (m, Object::Segment(g)));
                let parts = s
                    .snapshot
                    .iter()
                    .flat_map(|x| x.parts.iter())
                    .map(move |p| (m, Object::Part(p)));
                segments.chain(parts)
            })
        })
        .filter(|(_, o)| seen.insert(o.cid()))
        .collect();
    let manifest_bytes: u64 = reach.manifests.values().map(|(_, size)| size).sum();
    let trees = &root.trees;
    let plan = VerifyStarted {
        objects: reach.manifests.len() as u64 + objects.len() as u64 + trees.len() as u64,
        bytes: manifest_bytes
            + objects.iter().map(|(_, o)| o.stored_bytes()).sum::<u64>()
            + trees.iter().map(|t| t.tree_bytes).sum::<u64>(),
        records: objects.iter().map(|(_, o)| o.records()).sum(),
    };
    match job.state.lifecycle.state {
        Some(JobState::Accepted) => {
            execute(&ctx.events, job, VerifyCommand::Start(plan.clone()), None).await?;
        }
        // A verify restarted after a crash starts over; its plan must not have changed.
        _ if job.state.plan.as_ref() != Some(&plan) => {
            return Err(EngineError::precondition(
                ErrorCode::Corrupt,
                "the backup changed since this verify started",
            ));
        }
        _ => {}
    }
    let mut done = (reach.manifests.len() as u64, manifest_bytes, 0u64); // objects, bytes, records
    let already = job.state.progress.as_ref().map_or(0, |p| p.objects_done);
    let mut last_progress = tokio::time::Instant::now();
    let mut prev: Option<(&Manifest, &str, u64)> = None;
    for (manifest, object) in &objects {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let keys = manifest.encryption.as_ref().map(|_| &ctx.keys);
        let info = match object {
            Object::Part(part) => {
                let key = crate::archive::part::key(part);
                match spec.mode {
                    VerifyMode::Structural => structural(&archive, &key, part.stored_bytes).await?,
                    VerifyMode::Deep => {
                        crate::archive::part::open(&archive.get(&key).await?, part, keys)?;
                    }
                }
                done.0 += 1;
                done.1 += part.stored_bytes;
                record_progress(
                    ctx,
                    job,
                    &mut done,
                    already,
                    plan.objects,
                    &mut last_progress,
                )
                .await?;
                continue;
            }
            Object::Segment(info) => *info,
        };
        let key = segment::key(info);
        match spec.mode {
            VerifyMode::Structural => {
                structural(&archive, &key, info.stored_bytes).await?;
                done.2 += info.records;
            }
            VerifyMode::Deep => {
                let stream = manifest
                    .streams
                    .iter()
                    .find(|s| s.segments.iter().any(|g| g.cid == info.cid))
                    .map_or("", |s| s.name.as_str());
                if let Some((pm, ps, last)) = prev
                    && std::ptr::eq(pm, *manifest)
                    && ps == stream
                    && info.first_seq <= last
                {
                    return Err(ArchiveError::corrupt(
                        &key,
                        format!(
                            "starts at seq {} but the previous segment ends at {last}",
                            info.first_seq
                        ),
                    )
                    .into());
                }
                prev = Some((manifest, stream, info.last_seq));
                let stored = archive.get(&key).await?;
                let codec = Codec {
                    compression: manifest.compression.algorithm,
                    keys,
                };
                let plain = segment::open(&stored, info, codec)?;
                done.2 += segment::check_records(&plain, info)?;
            }
        }
        done.0 += 1;
        done.1 += info.stored_bytes;
        record_progress(
            ctx,
            job,
            &mut done,
            already,
            plan.objects,
            &mut last_progress,
        )
        .await?;
    }
    for summary in trees {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let encrypted = root.encryption.is_some();
        super::trees::verify(&archive, &ctx.keys, summary, encrypted, spec.mode).await?;
        done.0 += 1;
        done.1 += summary.tree_bytes;
        record_progress(
            ctx,
            job,
            &mut done,
            already,
            plan.objects,
            &mut last_progress,
        )
        .await?;
    }
    let completed = VerifyCompleted {
        objects: done.0,
        bytes: done.1,
        records: done.2,
    };
    execute(&ctx.events, job, VerifyCommand::Complete(completed), None).await?;
    tracing::info!(job = %job.id, backup = %spec.backup, mode = ?spec.mode, objects = done.0, records = done.2, "verify completed");
    Ok(())
}

/// One stored object of a backup.
#[derive(Clone, Copy)]
enum Object<'a> {
    Segment(&'a cim_backup_contracts::events::SegmentInfo),
    /// A part of a server snapshot: checked as an object (size, CID, decryption); its records
    /// are in the server's format.
    Part(&'a cim_backup_contracts::events::PartInfo),
}

impl Object<'_> {
    fn cid(&self) -> Cid {
        match self {
            Object::Segment(s) => s.cid,
            Object::Part(p) => p.cid,
        }
    }
    fn stored_bytes(&self) -> u64 {
        match self {
            Object::Segment(s) => s.stored_bytes,
            Object::Part(p) => p.stored_bytes,
        }
    }
    fn records(&self) -> u64 {
        match self {
            Object::Segment(s) => s.records,
            Object::Part(_) => 0,
        }
    }
}

/// The object exists with the recorded size (one HEAD request).
async fn structural(archive: &ArchiveStore, key: &str, size: u64) -> Result<(), EngineError> {
    match archive.size(key).await? {
        None => Err(ArchiveError::Missing {
            object: key.to_owned(),
        }
        .into()),
        Some(found) if found != size => Err(ArchiveError::corrupt(
            key,
            format!("size is {found} bytes, the manifest says {size}"),
        )
        .into()),
        Some(_) => Ok(()),
    }
}

/// Records progress at most every [`PROGRESS_EVERY`] (and for the last object), once past what a
/// previous run of the job already recorded.
async fn record_progress(
    ctx: &Context,
    job: &mut Job<VerifyJob>,
    done: &mut (u64, u64, u64),
    already: u64,
    total: u64,
    last: &mut tokio::time::Instant,
) -> Result<(), EngineError> {
    let finished = done.0 == total;
    if done.0 > already && (finished || last.elapsed() >= PROGRESS_EVERY) {
        let progress = VerifyProgressed {
            objects_done: done.0,
            bytes_done: done.1,
            records_done: done.2,
        };
        execute(&ctx.events, job, VerifyCommand::Progress(progress), None).await?;
        *last = tokio::time::Instant::now();
    }
    Ok(())
}

/// Per-stream totals and bounds in a manifest must agree with its segments and its cut.
fn check_manifest_totals(manifest: &Manifest, backup: &Cid) -> Result<(), EngineError> {
    let bad = |message: String| -> EngineError {
        ArchiveError::corrupt(manifest::key(backup), message).into()
    };
    for s in &manifest.streams {
        if let Some(snapshot) = &s.snapshot {
            let stored: u64 = snapshot.parts.iter().map(|p| p.stored_bytes).sum();
            let raw: u64 = snapshot.parts.iter().map(|p| p.raw_bytes).sum();
            if (stored, raw) != (s.stored_bytes, s.raw_bytes) || !s.segments.is_empty() {
                return Err(bad(format!(
                    "stream {}: snapshot parts do not add up ({stored}/{raw})",
                    s.name
                )));
            }
            continue;
        }
        match (s.segments.first(), s.segments.last()) {
            (Some(first), Some(last))
                if (first.first_seq, last.last_seq) != (s.first_seq, s.last_seq) =>
            {
                return Err(bad(format!(
                    "stream {}: says {}..={}, its segments cover {}..={}",
                    s.name, s.first_seq, s.last_seq, first.first_seq, last.last_seq
                )));
            }
            (None, None) if s.messages != 0 => {
                return Err(bad(format!(
                    "stream {}: {} messages but no segments",
                    s.name, s.messages
                )));
            }
            _ => {}
        }
        if s.messages > 0 && s.last_seq > s.cut.last_seq {
            return Err(bad(format!(
                "stream {}: ends at {} beyond its cut at {}",
                s.name, s.last_seq, s.cut.last_seq
            )));
        }
        let messages: u64 = s.segments.iter().map(|g| g.records).sum();
        let stored: u64 = s.segments.iter().map(|g| g.stored_bytes).sum();
        let raw: u64 = s.segments.iter().map(|g| g.raw_bytes).sum();
        if (messages, stored, raw) != (s.messages, s.stored_bytes, s.raw_bytes) {
            return Err(bad(format!(
                "stream {}: totals {}/{}/{} do not add up from its segments ({messages}/{stored}/{raw})",
                s.name, s.messages, s.stored_bytes, s.raw_bytes
            )));
        }
    }
    Ok(())
}
