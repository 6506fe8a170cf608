//! The job view and catalog folds over realistic histories.

use cim_backup_contracts::cid::{dag_cbor_cid, raw_cid};
use cim_backup_contracts::commands::CompressionAlgorithm;
use cim_backup_contracts::errors::ErrorCode;
use cim_backup_contracts::events::*;
use cim_backup_contracts::views::{JobKind, JobState};
use cim_backup_contracts::{BackupId, EventCid};
use cim_backup_projections::ProjectionError;
use cim_backup_projections::catalog;
use cim_backup_projections::job_view::{Fold, fold, fold_all};
use time::{Duration, OffsetDateTime};

fn envelopes(events: Vec<BackupEvent>) -> Vec<(EventEnvelope, EventCid)> {
    let mut prev = None;
    events
        .into_iter()
        .enumerate()
        .map(|(i, event)| {
            let env = EventEnvelope {
                aggregate_type: JobKind::Backup,
                aggregate_id: "job-7".parse().unwrap(),
                sequence: i as u64 + 1,
                prev,
                meta: EventMeta {
                    event_id: format!("e{i}"),
                    time: OffsetDateTime::UNIX_EPOCH + Duration::seconds(i as i64),
                    correlation_id: "corr".into(),
                    causation_id: "cause".into(),
                },
                event: JobEvent::Backup(event),
            };
            let cid = env.encode_with_cid().1;
            prev = Some(cid);
            (env, cid)
        })
        .collect()
}

fn segment(first: u64, last: u64) -> SegmentInfo {
    SegmentInfo {
        cid: raw_cid(&first.to_be_bytes()),
        first_seq: first,
        last_seq: last,
        first_time: OffsetDateTime::UNIX_EPOCH,
        last_time: OffsetDateTime::UNIX_EPOCH,
        records: last - first + 1,
        raw_bytes: 100,
        stored_bytes: 30,
    }
}

fn history() -> Vec<BackupEvent> {
    let compression = Compression {
        algorithm: CompressionAlgorithm::Zstd,
        level: 3,
    };
    vec![
        BackupEvent::BackupAccepted(BackupAccepted {
            trees: Vec::new(),
            parallel: None,
            streams: vec!["EVENTS".into()],
            destination: "local".into(),
            destination_url: "file:///b".into(),
            compression,
            segment_bytes: 1024,
            incremental: true,
            mode: BackupMode::Messages,
            encryption: None,
            admission: Admission {
                instance: "i1".into(),
                idempotency_key: None,
                request_digest: "d".into(),
            },
        }),
        BackupEvent::BackupStarted(BackupStarted {
            taken_at: OffsetDateTime::UNIX_EPOCH,
            streams: vec![StreamStart {
                cut: StreamCut {
                    stream: "EVENTS".into(),
                    first_seq: 1,
                    last_seq: 20,
                    messages: 20,
                    bytes: 999,
                    taken_at: OffsetDateTime::UNIX_EPOCH,
                    created: None,
                },
                config: r#"{"name":"EVENTS"}"#.into(),
                parent: None,
                consumers: vec![],
            }],
            tool: "test".into(),
            notes: vec![],
            estimate: None,
        }),
        BackupEvent::SegmentStored(SegmentStored {
            stream: "EVENTS".into(),
            segment: segment(1, 10),
        }),
        BackupEvent::SegmentStored(SegmentStored {
            stream: "EVENTS".into(),
            segment: segment(11, 20),
        }),
        BackupEvent::BackupCompleted(BackupCompleted {
            trees: Vec::new(),
            manifest: dag_cbor_cid(b"\xa0"),
            manifest_bytes: 50,
            streams: vec![StreamSummary {
                stream: "EVENTS".into(),
                first_seq: 1,
                last_seq: 20,
                messages: 20,
                raw_bytes: 200,
                stored_bytes: 60,
                segments: 2,
                parent: None,
            }],
            compression,
            encrypted: false,
            created: OffsetDateTime::UNIX_EPOCH + Duration::seconds(1),
        }),
    ]
}

/// The runbook walk saw objects_total always equal to objects_done while a backup ran, and
/// bytes_done above bytes_total. With the job's estimate the totals lead while it runs, never
/// fall behind what is done, and equal it once it is completed.
#[test]
fn progress_totals_lead_while_running_and_add_up_when_done() {
    let mut events = history();
    let BackupEvent::BackupStarted(started) = &mut events[1] else {
        unreachable!()
    };
    started.estimate = Some(Estimate {
        messages: 20,
        bytes: 150, // low: the segments will hold 200
        objects: 3,
    });
    let events = envelopes(events);
    for n in 2..events.len() {
        let view = fold_all(events[..n].iter().map(|(e, c)| (e, *c)))
            .unwrap()
            .unwrap();
        let p = &view.progress;
        assert!(p.messages_done <= p.messages_total, "{n}: {p:?}");
        assert!(p.bytes_done <= p.bytes_total, "{n}: {p:?}");
        assert!(
            p.objects_done < p.objects_total,
            "{n}: the manifest is still to come: {p:?}"
        );
    }
    let done = fold_all(events.iter().map(|(e, c)| (e, *c)))
        .unwrap()
        .unwrap();
    let p = &done.progress;
    assert_eq!(
        (p.messages_done, p.bytes_done, p.objects_done),
        (p.messages_total, p.bytes_total, p.objects_total),
        "{p:?}"
    );
    assert_eq!(
        (p.messages_done, p.bytes_done, p.objects_done),
        (20, 200, 3)
    );
}

#[test]
fn a_running_backup_shows_progress_and_a_completed_one_its_backup_id() {
    let events = envelopes(history());
    let running = fold_all(events[..3].iter().map(|(e, c)| (e, *c)))
        .unwrap()
        .unwrap();
    assert_eq!(running.state, JobState::Running);
    assert_eq!(
        (
            running.progress.messages_done,
            running.progress.messages_total
        ),
        (10, 20)
    );
    assert_eq!(running.progress.objects_done, 1);
    assert_eq!(running.backup_id, None);
    assert_eq!(
        running.started_at,
        Some(OffsetDateTime::UNIX_EPOCH + Duration::seconds(1))
    );

    let done = fold_all(events.iter().map(|(e, c)| (e, *c)))
        .unwrap()
        .unwrap();
    assert_eq!(done.state, JobState::Completed);
    assert_eq!(done.backup_id, Some(BackupId(dag_cbor_cid(b"\xa0"))));
    assert_eq!(
        done.progress.objects_done, 3,
        "two segments and the manifest"
    );
    assert_eq!(done.version, 5);
    assert_eq!(done.head, events[4].1);
    assert_eq!(
        done.finished_at,
        Some(OffsetDateTime::UNIX_EPOCH + Duration::seconds(4))
    );
}

#[test]
fn redelivered_events_are_ignored_and_gaps_are_refused() {
    let events = envelopes(history());
    let view = fold_all(events[..2].iter().map(|(e, c)| (e, *c)))
        .unwrap()
        .unwrap();
    assert_eq!(
        fold(Some(&view), &events[1].0, events[1].1).unwrap(),
        Fold::AlreadyApplied
    );
    let err = fold(Some(&view), &events[3].0, events[3].1).unwrap_err();
    assert_eq!(
        err,
        ProjectionError::Gap {
            job: "job-7".into(),
            version: 2,
            got: 4
        }
    );
    let err = fold(None, &events[1].0, events[1].1).unwrap_err();
    assert!(matches!(err, ProjectionError::Gap { .. }));
}

#[test]
fn a_failure_is_shown_with_its_object() {
    let mut events = history();
    events.truncate(3);
    events.push(BackupEvent::BackupFailed(JobFailed {
        code: ErrorCode::Unavailable,
        message: "object store down".into(),
        object: Some("segments/x".into()),
        record: None,
    }));
    let envs = envelopes(events);
    let view = fold_all(envs.iter().map(|(e, c)| (e, *c)))
        .unwrap()
        .unwrap();
    assert_eq!(view.state, JobState::Failed);
    let error = view.error.unwrap();
    assert_eq!(error.message, "object store down");
    assert_eq!(error.object.as_deref(), Some("segments/x"));
}

#[test]
fn only_a_completed_backup_enters_the_catalog() {
    let events = envelopes(history());
    let mut view = None;
    let mut entries = Vec::new();
    for (env, cid) in &events {
        if let Fold::Updated(next) = fold(view.as_ref(), env, *cid).unwrap() {
            entries.extend(catalog::entry_for(&next, env));
            view = Some(next);
        }
    }
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    assert_eq!(entry.destination, "file:///b");
    assert_eq!(
        (entry.messages, entry.objects, entry.stored_bytes),
        (20, 3, 110)
    );
    assert_eq!(entry.compression, "zstd-3");
    assert_eq!(
        entry.created_at,
        OffsetDateTime::UNIX_EPOCH + Duration::seconds(1),
        "the cut time, as in the manifest"
    );
    assert_eq!(catalog::select(entries.clone(), Some("OTHER")).len(), 0);
    assert_eq!(catalog::select(entries, Some("EVENTS")).len(), 1);
}
