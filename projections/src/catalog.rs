//! The backup catalog: one entry per completed backup, built from its job's view and its
//! `BackupCompleted` event.

use cim_backup_contracts::BackupId;
use cim_backup_contracts::events::{BackupCompleted, BackupEvent, EventEnvelope, JobEvent};
use cim_backup_contracts::views::{CatalogEntry, JobView};

/// The catalog entry an event creates, if any: only `BackupCompleted` creates one. `job` is the
/// job's view *after* folding the event.
pub fn entry_for(job: &JobView, envelope: &EventEnvelope) -> Option<CatalogEntry> {
    match &envelope.event {
        JobEvent::Backup(BackupEvent::BackupCompleted(done)) => Some(entry(job, done)),
        _ => None,
    }
}

fn entry(job: &JobView, done: &BackupCompleted) -> CatalogEntry {
    CatalogEntry {
        backup_id: BackupId(done.manifest),
        job_id: job.job_id.clone(),
        destination: job.location.clone(),
        created_at: done.created,
        messages: done.streams.iter().map(|s| s.messages).sum(),
        raw_bytes: done.streams.iter().map(|s| s.raw_bytes).sum::<u64>()
            + done.trees.iter().map(|t| t.bytes).sum::<u64>(),
        stored_bytes: done.streams.iter().map(|s| s.stored_bytes).sum::<u64>()
            + done
                .trees
                .iter()
                .map(|t| t.stored_bytes + t.tree_bytes)
                .sum::<u64>()
            + done.manifest_bytes,
        objects: done.streams.iter().map(|s| s.segments).sum::<u64>() + done.trees.len() as u64 + 1,
        streams: done.streams.clone(),
        compression: done.compression.label(),
        encrypted: done.encrypted,
        buckets: buckets(&done.streams),
        trees: done.trees.clone(),
    }
}

/// The KV buckets and object stores among a backup's streams.
pub fn buckets(
    streams: &[cim_backup_contracts::events::StreamSummary],
) -> Vec<cim_backup_contracts::views::BucketRef> {
    streams
        .iter()
        .filter_map(|s| cim_backup_contracts::views::BucketRef::of(&s.stream))
        .collect()
}

/// Orders entries newest first and keeps those holding `stream` (if given).
pub fn select(mut entries: Vec<CatalogEntry>, stream: Option<&str>) -> Vec<CatalogEntry> {
    if let Some(stream) = stream {
        entries.retain(|e| e.streams.iter().any(|s| s.stream == stream));
    }
    entries.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| a.backup_id.cmp(&b.backup_id))
    });
    entries
}
