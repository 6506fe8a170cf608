//! Faults end in a clear error or a correct resume, never a false "completed": tampered and
//! missing objects, cancellation, a crashed service, a killed nats-server.

use std::path::Path;
use std::time::Duration;

use cim_backup_contracts::ErrorCode;
use cim_backup_contracts::subjects::{CMD_CANCEL, CMD_RESTORE, CMD_START, CMD_VERIFY, QRY_BACKUPS};
use cim_backup_contracts::views::{JobState, JobView};
use cim_backup_tests::service::{Caller, TestService, stored_view, test_config};
use cim_backup_tests::streams::{
    api_level, assert_restored, create_stream, publish_events, read_all,
};
use cim_backup_tests::{NatsServer, eventually, init_tracing};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);

async fn backup(caller: &Caller, stream: &str) -> JobView {
    let job = caller.ok(CMD_START, json!({ "streams": [stream] })).await;
    let view = caller.wait_job(job["job_id"].as_str().unwrap(), WAIT).await;
    assert_eq!(view.state, JobState::Completed, "{view:?}");
    view
}

async fn verify(caller: &Caller, backup_id: &str) -> JobView {
    let job = caller.ok(CMD_VERIFY, json!({ "backup": backup_id })).await;
    caller.wait_job(job["job_id"].as_str().unwrap(), WAIT).await
}

fn segment_files(archive: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(archive.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn tampered_missing_and_forged_objects_fail_verify_naming_the_object() {
    init_tracing();
    let nats = NatsServer::start().await;
    let archive = tempfile::tempdir().unwrap();
    let client = nats.client().await;
    create_stream(&client, "EVENTS", &["events.>"]).await;
    publish_events(&client, "events.node", 0, 1_500, 10).await;
    let service = TestService::start(test_config(&nats.url(), archive.path(), "node-a")).await;
    let c = Caller::connect(&nats.url()).await;
    let view = backup(&c, "EVENTS").await;
    let backup_id = view.backup_id.unwrap().to_string();
    assert_eq!(verify(&c, &backup_id).await.state, JobState::Completed);

    // One flipped byte in the middle of a segment.
    let files = segment_files(archive.path());
    assert!(
        files.len() >= 3,
        "need several segments, got {}",
        files.len()
    );
    let victim = &files[1];
    let original = std::fs::read(victim).unwrap();
    let mut tampered = original.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x01;
    std::fs::write(victim, &tampered).unwrap();
    let name = format!("segments/{}", victim.file_name().unwrap().to_str().unwrap());
    let failed = verify(&c, &backup_id).await;
    assert_eq!(failed.state, JobState::Failed);
    let error = failed.error.unwrap();
    assert_eq!(error.code, ErrorCode::Corrupt);
    assert_eq!(
        error.object.as_deref(),
        Some(name.as_str()),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("does not match its CID"),
        "{}",
        error.message
    );

    // A restore of the tampered backup fails too, and leaves no half-restored stream.
    let restore = c
        .ok(
            CMD_RESTORE,
            json!({ "backup": backup_id, "stream": "EVENTS", "as": "EVENTS_R" }),
        )
        .await;
    let restored = c.wait_job(restore["job_id"].as_str().unwrap(), WAIT).await;
    assert_eq!(restored.state, JobState::Failed);
    assert_eq!(
        restored.error.unwrap().object.as_deref(),
        Some(name.as_str())
    );
    let js = async_nats::jetstream::new(client.clone());
    assert!(
        js.get_stream("EVENTS_R").await.is_err(),
        "partial target removed"
    );

    // The object gone altogether.
    std::fs::remove_file(victim).unwrap();
    let failed = verify(&c, &backup_id).await;
    let error = failed.error.unwrap();
    assert_eq!(error.object.as_deref(), Some(name.as_str()));
    assert!(error.message.contains("missing"), "{}", error.message);
    std::fs::write(victim, &original).unwrap();
    assert_eq!(
        verify(&c, &backup_id).await.state,
        JobState::Completed,
        "repaired backup verifies again"
    );

    // A manifest whose bytes changed no longer matches the backup id.
    let manifest = archive.path().join("manifests").join(&backup_id);
    let mut bytes = std::fs::read(&manifest).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&manifest, &bytes).unwrap();
    let failed = verify(&c, &backup_id).await;
    assert_eq!(failed.state, JobState::Failed);
    assert_eq!(
        failed.error.unwrap().object,
        Some(format!("manifests/{backup_id}"))
    );
    service.stop().await;
}

/// A stream big enough, with segments small enough, that a backup takes seconds.
async fn slow_setup() -> (NatsServer, tempfile::TempDir, cim_backup::config::Config) {
    init_tracing();
    let nats = NatsServer::start().await;
    let archive = tempfile::tempdir().unwrap();
    let client = nats.client().await;
    create_stream(&client, "BIG", &["big.>"]).await;
    publish_events(&client, "big.node", 0, 40_000, 100).await;
    let mut config = test_config(&nats.url(), archive.path(), "node-a");
    config.defaults.segment_bytes = 4096;
    config.defaults.upload_concurrency = 1;
    (nats, archive, config)
}

/// A completed backup of BIG (the slow setup's 40,000 messages) is whole: every stored segment
/// belongs to its manifest (nothing uploaded twice under new names), it verifies, and it
/// restores message for message.
async fn assert_whole_and_restorable(
    c: &Caller,
    client: &async_nats::Client,
    archive: &Path,
    view: &JobView,
) {
    assert_eq!(view.progress.messages_done, 40_000);
    assert_eq!(
        segment_files(archive).len() as u64,
        view.progress.objects_done - 1,
        "no segment was stored twice under another name"
    );
    let backup_id = view.backup_id.expect("completed").to_string();
    assert_eq!(verify(c, &backup_id).await.state, JobState::Completed);
    let restore = c
        .ok(
            CMD_RESTORE,
            json!({ "backup": backup_id, "stream": "BIG", "as": "BIG_R" }),
        )
        .await;
    assert_eq!(
        c.wait_job(restore["job_id"].as_str().unwrap(), WAIT)
            .await
            .state,
        JobState::Completed
    );
    assert_restored(
        &read_all(client, "BIG_R").await,
        &read_all(client, "BIG").await,
    );
}

async fn wait_for_segments(c: &Caller, job_id: &str, n: u64) {
    eventually(WAIT, "segments to be stored", || async move {
        let view = c.job(job_id).await;
        assert!(
            !view.state.is_terminal(),
            "job ended before the fault was injected: {view:?}"
        );
        (view.progress.objects_done >= n).then_some(())
    })
    .await;
}

#[tokio::test]
async fn cancel_stops_a_running_backup_and_leaves_no_backup() {
    let (nats, archive, config) = slow_setup().await;
    let service = TestService::start(config).await;
    let c = Caller::connect(&nats.url()).await;
    let job = c.ok(CMD_START, json!({ "streams": ["BIG"] })).await;
    let job_id = job["job_id"].as_str().unwrap();
    wait_for_segments(&c, job_id, 2).await;
    let reply = c
        .ok(
            CMD_CANCEL,
            json!({ "job_id": job_id, "reason": "operator" }),
        )
        .await;
    assert_eq!(reply["requested"], true);
    let view = c.wait_job(job_id, WAIT).await;
    assert_eq!(view.state, JobState::Cancelled, "{view:?}");
    assert!(
        view.progress.messages_done < 40_000,
        "stopped early: {view:?}"
    );
    assert_eq!(view.backup_id, None);
    assert!(
        !archive.path().join("manifests").exists(),
        "no manifest written"
    );
    assert_eq!(c.ok(QRY_BACKUPS, json!({})).await, json!([]));
    let (status, _) = c.err(CMD_CANCEL, json!({ "job_id": job_id })).await;
    assert_eq!(status, 409);
    service.stop().await;
}

#[tokio::test]
async fn a_crashed_service_resumes_its_backup_without_losing_or_repeating_data() {
    let (nats, archive, config) = slow_setup().await;
    let client = nats.client().await;
    let service = TestService::start(config.clone()).await;
    let c = Caller::connect(&nats.url()).await;
    let job = c.ok(CMD_START, json!({ "streams": ["BIG"] })).await;
    let job_id = job["job_id"].as_str().unwrap().to_owned();
    wait_for_segments(&c, &job_id, 3).await;
    service.crash().await;
    let before_restart = stored_view(&client, &job_id).await.expect("view exists");
    assert_eq!(before_restart.state, JobState::Running);

    let service = TestService::start(config).await;
    let view = c.wait_job(&job_id, WAIT).await;
    assert_eq!(view.state, JobState::Completed, "{view:?}");
    assert_whole_and_restorable(&c, &client, archive.path(), &view).await;
    service.stop().await;
}

/// A nats-server killed and restarted under a backup used to fail the job every time. The job
/// now waits for NATS to come back (up to 2 minutes), then resumes from its last recorded
/// segment, as after a service restart: the backup completes whole, verifies and restores.
#[tokio::test]
async fn a_backup_resumes_when_its_killed_nats_server_comes_back() {
    let (mut nats, archive, config) = slow_setup().await;
    let service = TestService::start(config).await;
    let c = Caller::connect(&nats.url()).await;
    let job = c.ok(CMD_START, json!({ "streams": ["BIG"] })).await;
    let job_id = job["job_id"].as_str().unwrap().to_owned();
    wait_for_segments(&c, &job_id, 2).await;
    nats.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.restart().await;
    let c = Caller::connect(&nats.url()).await;
    let view = c.wait_job(&job_id, WAIT).await;
    assert_eq!(view.state, JobState::Completed, "resumed: {view:?}");
    let client = nats.client().await;
    assert_whole_and_restorable(&c, &client, archive.path(), &view).await;
    service.stop().await;
}

/// A source stream deleted under its backup ended in "missed idle heartbeat". The failure now
/// says what happened, and no backup is recorded.
#[tokio::test]
async fn a_stream_deleted_under_its_backup_fails_it_saying_so() {
    let (nats, _archive, config) = slow_setup().await;
    let client = nats.client().await;
    let service = TestService::start(config).await;
    let c = Caller::connect(&nats.url()).await;
    let job = c.ok(CMD_START, json!({ "streams": ["BIG"] })).await;
    let job_id = job["job_id"].as_str().unwrap().to_owned();
    wait_for_segments(&c, &job_id, 2).await;
    async_nats::jetstream::new(client.clone())
        .delete_stream("BIG")
        .await
        .unwrap();
    let view = c.wait_job(&job_id, WAIT).await;
    assert_eq!(view.state, JobState::Failed, "{view:?}");
    let error = view.error.unwrap();
    assert_eq!(error.code, ErrorCode::NotFound, "{error:?}");
    assert!(
        error
            .message
            .contains("stream BIG was deleted while it was being read")
            || error.message.contains("stream BIG does not exist"),
        "{}",
        error.message
    );
    assert_eq!(c.ok(QRY_BACKUPS, json!({})).await, json!([]));
    service.stop().await;
}

#[tokio::test]
async fn a_crashed_service_resumes_its_restore_with_either_method() {
    let (nats, _archive, mut config) = slow_setup().await;
    config.defaults.segment_bytes = 64 * 1024;
    let client = nats.client().await;
    let service = TestService::start(config.clone()).await;
    let c = Caller::connect(&nats.url()).await;
    let backup = backup(&c, "BIG").await.backup_id.unwrap().to_string();
    let mut service = Some(service);
    let methods: &[&str] = if api_level(&client).await >= 5 {
        &["server-archive", "publish"]
    } else {
        &["publish"]
    };
    for method in methods {
        let target = format!("BIG_{}", method.replace('-', "_").to_uppercase());
        let job = c
            .ok(
                CMD_RESTORE,
                json!({ "backup": backup, "stream": "BIG", "as": target, "method": method }),
            )
            .await;
        let job_id = job["job_id"].as_str().unwrap().to_owned();
        // Crash as soon as the restore is under way.
        eventually(WAIT, "the restore to start", || async {
            let v = c.job(&job_id).await;
            (v.state == JobState::Running || v.state.is_terminal()).then_some(())
        })
        .await;
        service.take().unwrap().crash().await;
        service = Some(TestService::start(config.clone()).await);
        let view = c.wait_job(&job_id, WAIT).await;
        assert_eq!(view.state, JobState::Completed, "{method}: {view:?}");
        assert_restored(
            &read_all(&client, &target).await,
            &read_all(&client, "BIG").await,
        );
    }
    service.unwrap().stop().await;
}

/// A server that stalls between storing an event and acknowledging it made the caller see a
/// failure for an event that was stored. The event store now sends the identical event again
/// (its Nats-Msg-Id makes the retry a duplicate) until one is acknowledged: an append that
/// returns Ok stored exactly one event; one that returns an error stored none or says so.
#[tokio::test]
async fn an_append_whose_acknowledgement_is_late_is_confirmed_not_lost() {
    use cim_backup::event_store::{EventStore, EventStreamSettings};
    use cim_backup_contracts::events::{CancelRequested, EventMeta, JobEvent};
    init_tracing();
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let store = EventStore::open(
        async_nats::jetstream::new(client.clone()),
        &EventStreamSettings::default(),
    )
    .await
    .unwrap();
    let id: cim_backup_contracts::JobId = "paused-ack".parse().unwrap();
    let event = JobEvent::Backup(
        cim_backup_contracts::events::BackupEvent::BackupCancelRequested(CancelRequested {
            reason: Some("test".into()),
        }),
    );
    let meta = EventMeta {
        event_id: "e1".into(),
        time: time::OffsetDateTime::now_utc(),
        correlation_id: "c".into(),
        causation_id: "c".into(),
    };
    // Stall the server with the publish on its way, past a whole acknowledgement wait (the
    // client's default is 5 s; the event store waits 2 s, then sends the event again).
    nats.pause();
    let append = {
        let store = store.clone();
        let id = id.clone();
        tokio::spawn(async move {
            store
                .append(
                    cim_backup_contracts::views::JobKind::Backup,
                    &id,
                    &Default::default(),
                    vec![(event, meta)],
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(6_000)).await;
    nats.resume();
    let result = append.await.unwrap();
    let stored = store
        .load(cim_backup_contracts::views::JobKind::Backup, &id)
        .await
        .unwrap();
    match result {
        Ok((version, _)) => {
            assert_eq!(stored.len(), 1, "exactly one event, the retry deduplicated");
            assert_eq!(version.last_stream_seq, stored[0].stream_seq);
        }
        Err(e) => panic!(
            "the append was stored ({} events) but reported {e}",
            stored.len()
        ),
    }
}

/// An accept that was stored although its caller never heard of it (the acknowledgement was
/// lost) must still run: the runner finds unfinished jobs of its instance that do not run and
/// starts them (at start, and every 30 s).
#[tokio::test]
async fn an_accepted_job_nobody_started_is_run_by_its_instance() {
    use cim_backup::event_store::{EventStore, EventStreamSettings};
    use cim_backup::jobs::{Job, execute};
    use cim_backup_contracts::events::*;
    use cim_backup_domain::backup::{BackupCommand, BackupJob};
    init_tracing();
    let nats = NatsServer::start().await;
    let archive = tempfile::tempdir().unwrap();
    let client = nats.client().await;
    create_stream(&client, "EVENTS", &["events.>"]).await;
    publish_events(&client, "events.node", 0, 100, 5).await;
    let service = TestService::start(test_config(&nats.url(), archive.path(), "node-a")).await;
    let c = Caller::connect(&nats.url()).await;
    // What the service records when it accepts a backup, recorded as if its reply was lost.
    let store = EventStore::open(
        async_nats::jetstream::new(client.clone()),
        &EventStreamSettings::default(),
    )
    .await
    .unwrap();
    let id: cim_backup_contracts::JobId = "orphaned-accept".parse().unwrap();
    let mut job = Job::<BackupJob>::new(id.clone(), "c".into());
    let url = format!("file://{}", archive.path().display());
    let accepted = BackupAccepted {
        trees: Vec::new(),
        parallel: None,
        streams: vec!["EVENTS".into()],
        destination: "local".into(),
        destination_url: url,
        compression: Compression {
            algorithm: cim_backup_contracts::commands::CompressionAlgorithm::Zstd,
            level: 3,
        },
        segment_bytes: 64 * 1024,
        incremental: true,
        mode: BackupMode::Messages,
        encryption: None,
        admission: Admission {
            instance: "node-a".into(),
            idempotency_key: None,
            request_digest: "0".repeat(64),
        },
    };
    execute(&store, &mut job, BackupCommand::Accept(accepted), None)
        .await
        .unwrap();
    let view = c.wait_job(id.as_str(), Duration::from_secs(90)).await;
    assert_eq!(view.state, JobState::Completed, "{view:?}");
    assert_eq!(view.progress.messages_done, 100);
    service.stop().await;
}

/// A restore that had checked its target and given it its subjects, but stopped before its
/// completion was recorded, used to run its writer and check again on resume: with producers
/// writing to the restored stream by then, the check failed and the failure deleted the
/// restored stream. Now a checked target is the restored stream: the resumed job only records
/// its completion, and nothing is deleted.
#[tokio::test]
async fn a_restore_resumed_after_its_target_went_live_completes_and_keeps_it() {
    use cim_backup::event_store::{EventStore, EventStreamSettings};
    use cim_backup::jobs::{Job, execute};
    use cim_backup_contracts::events::{JobEvent, RestoreEvent};
    use cim_backup_domain::restore::{RestoreCommand, RestoreJob};
    init_tracing();
    let nats = NatsServer::start().await;
    let archive = tempfile::tempdir().unwrap();
    let client = nats.client().await;
    create_stream(&client, "EVENTS", &["events.>"]).await;
    publish_events(&client, "events.node", 0, 300, 5).await;
    let config = test_config(&nats.url(), archive.path(), "node-a");
    let service = TestService::start(config.clone()).await;
    let c = Caller::connect(&nats.url()).await;
    let backup_id = backup(&c, "EVENTS").await.backup_id.unwrap().to_string();
    let first = c
        .ok(
            CMD_RESTORE,
            json!({ "backup": backup_id, "stream": "EVENTS", "as": "COPY" }),
        )
        .await;
    let first_id = first["job_id"].as_str().unwrap().to_owned();
    assert_eq!(c.wait_job(&first_id, WAIT).await.state, JobState::Completed);
    service.stop().await;

    // The state a crash leaves between "checked and live" and "completed": a restore job that
    // started, and its target COPY with both markers, taking new messages on its subjects.
    let store = EventStore::open(
        async_nats::jetstream::new(client.clone()),
        &EventStreamSettings::default(),
    )
    .await
    .unwrap();
    let recorded = store
        .load(
            cim_backup_contracts::views::JobKind::Restore,
            &first_id.parse().unwrap(),
        )
        .await
        .unwrap();
    let (mut accepted, started) = match (&recorded[0].envelope.event, &recorded[1].envelope.event) {
        (
            JobEvent::Restore(RestoreEvent::RestoreAccepted(a)),
            JobEvent::Restore(RestoreEvent::RestoreStarted(s)),
        ) => (a.clone(), s.clone()),
        other => panic!("{other:?}"),
    };
    let id: cim_backup_contracts::JobId = "resumed-restore".parse().unwrap();
    accepted.admission.idempotency_key = None;
    let mut job = Job::<RestoreJob>::new(id.clone(), "c".into());
    execute(&store, &mut job, RestoreCommand::Accept(accepted), None)
        .await
        .unwrap();
    execute(&store, &mut job, RestoreCommand::Start(started), None)
        .await
        .unwrap();
    let api = cim_backup::jsapi::JsApi::new(client.clone());
    let mut live = api.stream_info("COPY").await.unwrap().unwrap().config;
    live["subjects"] = json!(["copy.>"]);
    live["metadata"]["cim-backup.restore-job"] = json!(id.as_str());
    live["metadata"]["cim-backup.restore-checked"] = json!(id.as_str());
    api.update_stream(&live).await.unwrap();
    // New message ids: the restored stream keeps the original's duplicate window, so ids
    // evt-0.. would be dropped as duplicates.
    publish_events(&client, "copy.node", 300, 3, 1).await;

    let service = TestService::start(config).await;
    let view = c.wait_job(id.as_str(), WAIT).await;
    assert_eq!(view.state, JobState::Completed, "{view:?}");
    assert_eq!(view.progress.messages_done, 300);
    let copy = api
        .stream_info("COPY")
        .await
        .unwrap()
        .expect("the restored stream is kept");
    assert_eq!(copy.state.messages, 303, "with what its producers wrote");
    assert!(
        copy.config["metadata"]
            .get("cim-backup.restore-job")
            .is_none()
            && copy.config["metadata"]
                .get("cim-backup.restore-checked")
                .is_none(),
        "the markers are gone: {}",
        copy.config["metadata"]
    );
    service.stop().await;
}
