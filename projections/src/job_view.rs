//! The job-status view: what `cim.backup.qry.job` returns and the CLI draws progress from.

use cim_backup_contracts::events::RepairStep;
use cim_backup_contracts::events::{
    BackupEvent, CheckEvent, ConfigImportEvent, Estimate, EventEnvelope, JobEvent, JobFailed,
    KeyRestoreEvent, ProjectionEvent, RepairEvent, ReplayEvent, RestoreEvent, TreeRestoreEvent,
    VerifyEvent,
};
use cim_backup_contracts::replay::ResetMethod;
use cim_backup_contracts::views::{JobState, JobView, Progress};
use cim_backup_contracts::{BackupId, EventCid};

use crate::error::ProjectionError;

/// Result of folding one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fold {
    /// The view changed; store it.
    Updated(JobView),
    /// The view already contains this event (redelivery); nothing to store.
    AlreadyApplied,
}

/// Folds `envelope` (whose CID is `cid`) into `view`.
///
/// Idempotent: an event at or below the view's version is [`Fold::AlreadyApplied`]. An event
/// beyond `version + 1` is a [`ProjectionError::Gap`], so a projector that sees events out of
/// order waits instead of skipping one.
pub fn fold(
    view: Option<&JobView>,
    envelope: &EventEnvelope,
    cid: EventCid,
) -> Result<Fold, ProjectionError> {
    let job = envelope.aggregate_id.to_string();
    let version = view.map_or(0, |v| v.version);
    if envelope.sequence <= version {
        return Ok(Fold::AlreadyApplied);
    }
    if envelope.sequence != version + 1 {
        return Err(ProjectionError::Gap {
            job,
            version,
            got: envelope.sequence,
        });
    }
    let time = envelope.meta.time;
    let mut next = match view {
        Some(v) => v.clone(),
        None => new_view(envelope, cid).ok_or_else(|| ProjectionError::NoAcceptedEvent {
            job: job.clone(),
            event_type: envelope.event.event_type().to_owned(),
        })?,
    };
    next.version = envelope.sequence;
    next.head = cid;
    next.updated_at = time;
    let p = &mut next.progress;
    match &envelope.event {
        JobEvent::Backup(e) => match e {
            BackupEvent::BackupAccepted(_) => {}
            BackupEvent::BackupStarted(s) => {
                next.state = JobState::Running;
                next.started_at = Some(time);
                // The job's own estimate (what it will store); older events carry none, and
                // then the streams' states at the cut stand in.
                let estimate = s.estimate.unwrap_or(Estimate {
                    messages: s.streams.iter().map(|c| c.cut.messages).sum(),
                    bytes: s.streams.iter().map(|c| c.cut.bytes).sum(),
                    objects: 1,
                });
                p.messages_total = estimate.messages;
                p.bytes_total = estimate.bytes;
                p.objects_total = estimate.objects;
                next.notes = s.notes.clone();
            }
            BackupEvent::SegmentStored(s) => {
                next.stored_bytes += s.segment.stored_bytes;
                p.messages_done += s.segment.records;
                p.bytes_done += s.segment.raw_bytes;
                p.objects_done += 1;
                keep_ahead(p);
            }
            BackupEvent::SnapshotTaken(_) => {}
            BackupEvent::SnapshotPartStored(s) => {
                next.stored_bytes += s.part.stored_bytes;
                p.bytes_done += s.part.raw_bytes;
                p.objects_done += 1;
                keep_ahead(p);
            }
            BackupEvent::TreeProgressed(t) => {
                next.stored_bytes = next.stored_bytes.max(t.stored_bytes);
                p.bytes_done = p.bytes_done.max(t.bytes_done);
                keep_ahead(p);
            }
            // The job records a TreeProgressed (cumulative) before each TreeStored; the tree
            // object itself is written after it.
            BackupEvent::TreeStored(t) => {
                next.stored_bytes += t.tree.tree_bytes;
                // A file left out is said where the operator looks: the job's view.
                for s in &t.tree.skipped {
                    next.notes.push(format!(
                        "{}: {} left out: {}",
                        t.tree.name,
                        if s.path.is_empty() {
                            "the file"
                        } else {
                            s.path.as_str()
                        },
                        s.reason
                    ));
                }
                p.objects_done += 1;
                keep_ahead(p);
            }
            BackupEvent::BackupCompleted(c) => {
                finish(&mut next, JobState::Completed, time);
                next.stored_bytes += c.manifest_bytes;
                next.progress.messages_done = c.streams.iter().map(|s| s.messages).sum();
                next.backup_id = Some(BackupId(c.manifest));
                // The manifest is an object too; the totals are now what was stored.
                next.progress.objects_done += 1;
                settle(&mut next.progress);
            }
            BackupEvent::BackupFailed(f) => fail(&mut next, f, time),
            BackupEvent::BackupCancelRequested(_) => next.cancel_requested = true,
            BackupEvent::BackupCancelled(_) => finish(&mut next, JobState::Cancelled, time),
        },
        JobEvent::Restore(e) => match e {
            RestoreEvent::RestoreAccepted(_) => {}
            RestoreEvent::RestoreStarted(s) => {
                next.state = JobState::Running;
                next.started_at = Some(time);
                *p = Progress {
                    messages_total: s.messages,
                    bytes_total: s.bytes,
                    objects_total: s.segments,
                    ..Progress::default()
                };
            }
            RestoreEvent::RestoreProgressed(s) => {
                p.messages_done = s.messages_done;
                p.bytes_done = s.bytes_done;
                p.objects_done = s.segments_done;
            }
            RestoreEvent::RestoreCompleted(c) => {
                // Bytes count the segments read, as the progress did: all of them by now.
                p.messages_done = c.messages;
                p.bytes_done = p.bytes_total;
                p.objects_done = c.segments;
                settle(p);
                next.notes = c.notes.clone();
                finish(&mut next, JobState::Completed, time);
            }
            RestoreEvent::RestoreFailed(f) => fail(&mut next, f, time),
            RestoreEvent::RestoreCancelRequested(_) => next.cancel_requested = true,
            RestoreEvent::RestoreCancelled(_) => finish(&mut next, JobState::Cancelled, time),
        },
        JobEvent::Verify(e) => match e {
            VerifyEvent::VerifyAccepted(_) => {}
            VerifyEvent::VerifyStarted(s) => {
                next.state = JobState::Running;
                next.started_at = Some(time);
                *p = Progress {
                    messages_total: s.records,
                    bytes_total: s.bytes,
                    objects_total: s.objects,
                    ..Progress::default()
                };
            }
            VerifyEvent::VerifyProgressed(s) => {
                p.messages_done = s.records_done;
                p.bytes_done = s.bytes_done;
                p.objects_done = s.objects_done;
            }
            VerifyEvent::VerifyCompleted(c) => {
                p.messages_done = c.records;
                p.bytes_done = c.bytes;
                p.objects_done = c.objects;
                settle(p);
                finish(&mut next, JobState::Completed, time);
            }
            VerifyEvent::VerifyFailed(f) => fail(&mut next, f, time),
            VerifyEvent::VerifyCancelRequested(_) => next.cancel_requested = true,
            VerifyEvent::VerifyCancelled(_) => finish(&mut next, JobState::Cancelled, time),
        },
        JobEvent::Check(e) => match e {
            CheckEvent::CheckAccepted(_) => {}
            CheckEvent::CheckStarted(s) => {
                next.state = JobState::Running;
                next.started_at = Some(time);
                *p = Progress {
                    messages_total: s.messages,
                    objects_total: s.ranges.len() as u64,
                    ..Progress::default()
                };
            }
            CheckEvent::CheckProgressed(s) => {
                p.messages_done = s.messages_done;
                keep_ahead(p);
            }
            CheckEvent::CheckCompleted(c) => {
                // The totals were estimates (deleted messages, a replay that stops at the first
                // invalid event); the reports say what was walked, in which range.
                p.messages_done = c.reports.iter().map(|r| r.messages_checked).sum();
                p.objects_done = c.reports.len() as u64;
                settle(p);
                next.reports = Some(c.reports.clone());
                next.replayed = c.replayed.clone();
                finish(&mut next, JobState::Completed, time);
            }
            CheckEvent::CheckFailed(f) => fail(&mut next, f, time),
            CheckEvent::CheckCancelRequested(_) => next.cancel_requested = true,
            CheckEvent::CheckCancelled(_) => finish(&mut next, JobState::Cancelled, time),
        },
        // Messages are those written to the staging stream; objects are the repair's steps.
        JobEvent::Repair(e) => match e {
            RepairEvent::RepairAccepted(_) => {}
            RepairEvent::RepairStarted(s) => {
                next.state = JobState::Running;
                next.started_at = Some(time);
                *p = Progress {
                    messages_total: s.plan.messages(),
                    objects_total: RepairStep::ALL.len() as u64,
                    ..Progress::default()
                };
            }
            RepairEvent::RepairStepDone(_) => p.objects_done += 1,
            RepairEvent::RepairProgressed(s) => {
                p.messages_done = s.messages_done;
                keep_ahead(p);
            }
            RepairEvent::RepairCompleted(c) => {
                p.messages_done = c.messages;
                settle(p);
                next.reports = c.report.clone().map(|r| vec![r]);
                next.notes = c.notes.clone();
                finish(&mut next, JobState::Completed, time);
            }
            RepairEvent::RepairFailed(f) => fail(&mut next, f, time),
            RepairEvent::RepairCancelRequested(_) => next.cancel_requested = true,
            RepairEvent::RepairCancelled(_) => finish(&mut next, JobState::Cancelled, time),
        },
        // Messages are files, objects are trees, bytes are file bytes written and checked.
        JobEvent::TreeRestore(e) => match e {
            TreeRestoreEvent::TreeRestoreAccepted(a) => p.objects_total = a.trees.len() as u64,
            TreeRestoreEvent::TreeRestoreStarted(s) => {
                next.state = JobState::Running;
                next.started_at = Some(time);
                p.messages_total = s.files;
                p.bytes_total = s.bytes;
            }
            TreeRestoreEvent::TreeRestoreProgressed(s) => {
                p.bytes_done = p.bytes_done.max(s.bytes_done);
                keep_ahead(p);
            }
            TreeRestoreEvent::TreeRestored(t) => {
                p.objects_done += 1;
                p.messages_done += t.files;
                keep_ahead(p);
            }
            TreeRestoreEvent::TreeRestoreCompleted(c) => {
                p.bytes_done = c.trees.iter().map(|t| t.bytes).sum();
                settle(p);
                next.notes = c
                    .trees
                    .iter()
                    .map(|t| match (t.already, t.replaced) {
                        (true, _) => format!("{} was already in place at {}", t.name, t.host_path),
                        (_, true) => format!("{} replaced the tree at {}", t.name, t.host_path),
                        _ => format!("{} restored to {}", t.name, t.host_path),
                    })
                    .collect();
                finish(&mut next, JobState::Completed, time);
            }
            TreeRestoreEvent::TreeRestoreFailed(f) => fail(&mut next, f, time),
            TreeRestoreEvent::TreeRestoreCancelRequested(_) => next.cancel_requested = true,
            TreeRestoreEvent::TreeRestoreCancelled(_) => {
                finish(&mut next, JobState::Cancelled, time)
            }
        },
        // Messages are keys, objects are snapshots written.
        JobEvent::ProjectionSnapshot(e)
        | JobEvent::ProjectionRestore(e)
        | JobEvent::ProjectionClear(e) => fold_projection(&mut next, e, time),
        // Messages are events the projectors acknowledged; objects are projectors caught up.
        JobEvent::ProjectionReplay(e) | JobEvent::ProjectionRebuild(e) => {
            fold_replay(&mut next, e, time)
        }
        // One object: the key.
        JobEvent::KeyRestore(e) => {
            let p = &mut next.progress;
            match e {
                KeyRestoreEvent::KeyRestoreAccepted(_) => p.objects_total = 1,
                KeyRestoreEvent::KeyRestoreStarted(_) => {
                    next.state = JobState::Running;
                    next.started_at = Some(time);
                }
                KeyRestoreEvent::KeyRestoreCompleted(c) => {
                    p.objects_done = 1;
                    next.notes
                        .push(format!("written as revision {}", c.revision));
                    settle(p);
                    finish(&mut next, JobState::Completed, time);
                }
                KeyRestoreEvent::KeyRestoreFailed(f) => fail(&mut next, f, time),
                KeyRestoreEvent::KeyRestoreCancelRequested(_) => next.cancel_requested = true,
                KeyRestoreEvent::KeyRestoreCancelled(_) => {
                    finish(&mut next, JobState::Cancelled, time)
                }
            }
        }
        // Objects are resources applied.
        JobEvent::ConfigImport(e) => {
            let p = &mut next.progress;
            match e {
                ConfigImportEvent::ConfigImportAccepted(a) => {
                    p.objects_total = a.resources.len() as u64
                }
                ConfigImportEvent::ConfigImportStarted(_) => {
                    next.state = JobState::Running;
                    next.started_at = Some(time);
                }
                ConfigImportEvent::ConfigResourceApplied(a) => {
                    p.objects_done += 1;
                    next.notes.push(format!(
                        "{} {}: {}",
                        serde_json::to_value(a.kind)
                            .unwrap_or_default()
                            .as_str()
                            .unwrap_or(""),
                        a.name,
                        serde_json::to_value(a.action)
                            .unwrap_or_default()
                            .as_str()
                            .unwrap_or(""),
                    ));
                }
                ConfigImportEvent::ConfigImportCompleted(_) => {
                    settle(p);
                    finish(&mut next, JobState::Completed, time);
                }
                ConfigImportEvent::ConfigImportFailed(f) => fail(&mut next, f, time),
                ConfigImportEvent::ConfigImportCancelRequested(_) => next.cancel_requested = true,
                ConfigImportEvent::ConfigImportCancelled(_) => {
                    finish(&mut next, JobState::Cancelled, time)
                }
            }
        }
    }
    Ok(Fold::Updated(next))
}

fn fold_replay(next: &mut JobView, e: &ReplayEvent, time: time::OffsetDateTime) {
    let p = &mut next.progress;
    match e {
        ReplayEvent::ReplayJobAccepted(a) => p.objects_total = a.projectors.len() as u64,
        ReplayEvent::ReplayJobStarted(_) => {
            next.state = JobState::Running;
            next.started_at = Some(time);
        }
        ReplayEvent::ReplaySafetySnapshotTaken(s) => next.snapshots.push(s.clone()),
        ReplayEvent::ReplayDomainCleared(c) => {
            for m in &c.models {
                next.notes.push(format!(
                    "{} ({}): {} keys cleared",
                    m.name, m.bucket, m.removed
                ));
            }
            next.restored.extend(c.models.iter().cloned());
        }
        ReplayEvent::ReplayProjectorReset(r) => next.notes.push(format!(
            "{} on {}: moved to seq {} ({}, {} events to deliver)",
            r.consumer,
            r.stream,
            r.from_seq,
            match r.method {
                ResetMethod::Reset => "consumer reset",
                ResetMethod::Recreated => "consumer recreated",
            },
            r.pending
        )),
        ReplayEvent::ReplayCheckpointRecorded(_) => {}
        ReplayEvent::ReplayJobProgressed(s) => {
            p.messages_done = p.messages_done.max(s.events_done);
            p.messages_total = p.messages_total.max(s.events_total);
            keep_ahead(p);
        }
        ReplayEvent::ReplayProjectorCaughtUp(c) => {
            p.objects_done += 1;
            next.notes.push(format!(
                "{} on {}: caught up at seq {} after {} events in {:.1} s",
                c.consumer,
                c.stream,
                c.stream_seq,
                c.events,
                c.millis as f64 / 1000.0
            ));
        }
        ReplayEvent::ReplayJobCompleted(c) => {
            p.messages_done = p.messages_done.max(c.events());
            settle(p);
            finish(next, JobState::Completed, time);
        }
        ReplayEvent::ReplayJobFailed(f) => fail(next, f, time),
        ReplayEvent::ReplayJobCancelRequested(_) => next.cancel_requested = true,
        ReplayEvent::ReplayJobCancelled(_) => finish(next, JobState::Cancelled, time),
    }
}

fn fold_projection(next: &mut JobView, e: &ProjectionEvent, time: time::OffsetDateTime) {
    let p = &mut next.progress;
    match e {
        ProjectionEvent::ProjectionJobAccepted(_) => {}
        ProjectionEvent::ProjectionJobStarted(s) => {
            next.state = JobState::Running;
            next.started_at = Some(time);
            p.messages_total = s.keys;
        }
        ProjectionEvent::ProjectionJobProgressed(s) => {
            p.messages_done = p.messages_done.max(s.keys_done);
            p.bytes_done = p.bytes_done.max(s.bytes_done);
            keep_ahead(p);
        }
        ProjectionEvent::ProjectionSnapshotTaken(s) => {
            p.objects_done += 1;
            next.snapshots.push(s.clone());
        }
        ProjectionEvent::ProjectionModelRestored(m) => {
            next.notes.push(format!(
                "{} ({}): {} restored, {} unchanged, {} removed",
                m.name, m.bucket, m.restored, m.unchanged, m.removed
            ));
        }
        ProjectionEvent::ProjectionJobCompleted(c) => {
            p.objects_total = p.objects_done;
            settle(p);
            next.restored = c.restored.clone();
            next.verified = c.verified;
            finish(next, JobState::Completed, time);
        }
        ProjectionEvent::ProjectionJobFailed(f) => fail(next, f, time),
        ProjectionEvent::ProjectionJobCancelRequested(_) => next.cancel_requested = true,
        ProjectionEvent::ProjectionJobCancelled(_) => finish(next, JobState::Cancelled, time),
    }
}

/// Folds a whole history (for example one job's events read straight from the stream).
pub fn fold_all<'a>(
    events: impl IntoIterator<Item = (&'a EventEnvelope, EventCid)>,
) -> Result<Option<JobView>, ProjectionError> {
    let mut view: Option<JobView> = None;
    for (envelope, cid) in events {
        if let Fold::Updated(next) = fold(view.as_ref(), envelope, cid)? {
            view = Some(next);
        }
    }
    Ok(view)
}

/// While a job runs, a total never falls behind what is done (estimates can be low), and one
/// object is always still to come until the end (a backup's manifest, say).
fn keep_ahead(p: &mut Progress) {
    p.messages_total = p.messages_total.max(p.messages_done);
    p.bytes_total = p.bytes_total.max(p.bytes_done);
    p.objects_total = p.objects_total.max(p.objects_done + 1);
}

/// At completion the totals are what was done: a finished view adds up.
fn settle(p: &mut Progress) {
    p.messages_total = p.messages_done;
    p.bytes_total = p.bytes_done;
    p.objects_total = p.objects_done;
}

fn finish(view: &mut JobView, state: JobState, time: time::OffsetDateTime) {
    view.state = state;
    view.finished_at = Some(time);
}

fn fail(view: &mut JobView, failure: &JobFailed, time: time::OffsetDateTime) {
    finish(view, JobState::Failed, time);
    view.error = Some(failure.clone());
}

/// The view created by a job's `*Accepted` event; `None` for any other event.
fn new_view(envelope: &EventEnvelope, cid: EventCid) -> Option<JobView> {
    let (subject, location, instance, backup_id) = match &envelope.event {
        JobEvent::Backup(BackupEvent::BackupAccepted(a)) => (
            a.streams
                .iter()
                .cloned()
                .chain(a.trees.iter().map(|t| t.name()))
                .collect::<Vec<_>>()
                .join(","),
            a.destination_url.clone(),
            a.admission.instance.clone(),
            None,
        ),
        JobEvent::Restore(RestoreEvent::RestoreAccepted(a)) => (
            format!("{} -> {}", a.stream, a.target),
            a.source_url.clone(),
            a.admission.instance.clone(),
            Some(BackupId(a.backup)),
        ),
        JobEvent::Verify(VerifyEvent::VerifyAccepted(a)) => (
            a.backup.to_string(),
            a.source_url.clone(),
            a.admission.instance.clone(),
            Some(BackupId(a.backup)),
        ),
        JobEvent::Check(CheckEvent::CheckAccepted(a)) => (
            a.targets
                .iter()
                .map(|t| t.stream.as_str())
                .collect::<Vec<_>>()
                .join(","),
            a.source_url.clone().unwrap_or_else(|| "live".to_owned()),
            a.admission.instance.clone(),
            a.backup.map(BackupId),
        ),
        JobEvent::Repair(RepairEvent::RepairAccepted(a)) => (
            format!("{} from seq {}", a.stream, a.from_seq),
            a.source_url.clone(),
            a.admission.instance.clone(),
            Some(BackupId(a.backup)),
        ),
        JobEvent::TreeRestore(TreeRestoreEvent::TreeRestoreAccepted(a)) => (
            a.trees
                .iter()
                .map(|t| format!("{} -> {}/{}", t.name, t.root, t.path))
                .collect::<Vec<_>>()
                .join(","),
            a.source_url.clone(),
            a.admission.instance.clone(),
            Some(BackupId(a.backup)),
        ),
        JobEvent::ProjectionSnapshot(ProjectionEvent::ProjectionJobAccepted(a))
        | JobEvent::ProjectionRestore(ProjectionEvent::ProjectionJobAccepted(a))
        | JobEvent::ProjectionClear(ProjectionEvent::ProjectionJobAccepted(a)) => (
            projection_subject(a),
            a.destination_url.clone(),
            a.admission.instance.clone(),
            None,
        ),
        JobEvent::KeyRestore(KeyRestoreEvent::KeyRestoreAccepted(a)) => (
            format!("{}/{} as of {}", a.plan.bucket, a.plan.key, a.plan.as_of),
            String::new(),
            a.admission.instance.clone(),
            None,
        ),
        JobEvent::ConfigImport(ConfigImportEvent::ConfigImportAccepted(a)) => (
            a.source.clone(),
            String::new(),
            a.admission.instance.clone(),
            None,
        ),
        JobEvent::ProjectionReplay(ReplayEvent::ReplayJobAccepted(a))
        | JobEvent::ProjectionRebuild(ReplayEvent::ReplayJobAccepted(a)) => (
            format!(
                "{} from {}",
                a.domains
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                a.from
            ),
            a.destination_url.clone(),
            a.admission.instance.clone(),
            None,
        ),
        _ => return None,
    };
    Some(JobView {
        job_id: envelope.aggregate_id.clone(),
        kind: envelope.aggregate_type,
        state: JobState::Accepted,
        subject,
        location,
        instance,
        correlation_id: envelope.meta.correlation_id.clone(),
        accepted_at: envelope.meta.time,
        started_at: None,
        finished_at: None,
        updated_at: envelope.meta.time,
        progress: Progress::default(),
        stored_bytes: 0,
        backup_id,
        error: None,
        cancel_requested: false,
        version: 0,
        head: cid,
        head_seq: 0,
        reports: None,
        replayed: Vec::new(),
        notes: Vec::new(),
        snapshots: Vec::new(),
        restored: Vec::new(),
        verified: None,
    })
}

/// `graph,billing` for a snapshot; `graph <- <snapshot id>` for a restore.
fn projection_subject(a: &cim_backup_contracts::projections::ProjectionJobAccepted) -> String {
    let domains = a
        .domains
        .iter()
        .map(|d| d.name.as_str())
        .collect::<Vec<_>>()
        .join(",");
    match a.snapshot {
        Some(snapshot) => format!("{domains} <- {snapshot}"),
        None => domains,
    }
}
