//! Stream backups users can bet an incident on: incremental chains, consistent cuts under load,
//! consumers, point-in-time and filtered restores, dry runs, append, and fetching only what a
//! range needs.

use std::time::Duration;

use cim_backup_contracts::subjects::{CMD_RESTORE, CMD_START, CMD_VERIFY, QRY_BACKUPS};
use cim_backup_contracts::views::{JobState, JobView};
use cim_backup_tests::service::{Caller, TestService, test_config};
use cim_backup_tests::streams::{
    StoredMessage, assert_same_messages, create_stream, publish_events, read_all, state,
};
use cim_backup_tests::{NatsServer, init_tracing};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(120);

async fn job(c: &Caller, subject: &str, body: Value) -> JobView {
    let accepted = c.ok(subject, body).await;
    c.wait_job(accepted["job_id"].as_str().unwrap(), WAIT).await
}

async fn completed(c: &Caller, subject: &str, body: Value) -> JobView {
    let view = job(c, subject, body).await;
    assert_eq!(view.state, JobState::Completed, "{view:?}");
    view
}

struct Env {
    nats: NatsServer,
    archive: tempfile::TempDir,
    service: TestService,
    c: Caller,
    client: async_nats::Client,
}

async fn env() -> Env {
    init_tracing();
    let nats = NatsServer::start().await;
    let archive = tempfile::tempdir().unwrap();
    let client = nats.client().await;
    let service = TestService::start(test_config(&nats.url(), archive.path(), "node-a")).await;
    let c = Caller::connect(&nats.url()).await;
    Env {
        nats,
        archive,
        service,
        c,
        client,
    }
}

#[tokio::test]
async fn incremental_backups_store_only_new_messages_and_restore_as_a_chain() {
    let e = env().await;
    create_stream(&e.client, "EVENTS", &["events.>"]).await;
    publish_events(&e.client, "events.node", 0, 3_000, 20).await;
    let full = completed(&e.c, CMD_START, json!({ "streams": ["EVENTS"] })).await;
    let full_id = full.backup_id.unwrap().to_string();

    publish_events(&e.client, "events.node", 3_000, 30, 20).await; // 1% more
    let inc = completed(&e.c, CMD_START, json!({ "streams": ["EVENTS"] })).await;
    let inc_id = inc.backup_id.unwrap().to_string();
    assert_eq!(
        inc.progress.messages_done, 30,
        "only the new messages are stored"
    );

    let catalog = e.c.ok(QRY_BACKUPS, json!({ "stream": "EVENTS" })).await;
    assert_eq!(catalog[0]["backup_id"], json!(inc_id));
    assert_eq!(catalog[0]["streams"][0]["parent"], json!(full_id));
    assert_eq!(catalog[0]["streams"][0]["first_seq"], json!(3_001));
    assert_eq!(catalog[1]["streams"][0]["parent"], Value::Null);
    assert!(
        catalog[0]["stored_bytes"].as_u64().unwrap() * 20
            < catalog[1]["stored_bytes"].as_u64().unwrap()
    );

    // Verify walks the chain; restore of the incremental brings the whole stream back.
    let verified = completed(&e.c, CMD_VERIFY, json!({ "backup": inc_id })).await;
    assert_eq!(
        verified.progress.messages_done, 3_030,
        "records of both backups checked"
    );
    completed(
        &e.c,
        CMD_RESTORE,
        json!({ "backup": inc_id, "stream": "EVENTS", "as": "EVENTS_R" }),
    )
    .await;
    assert_same_messages(
        &read_all(&e.client, "EVENTS_R").await,
        &read_all(&e.client, "EVENTS").await,
    );

    // An explicit full backup has no parent; a recreated stream starts a new chain.
    let forced = completed(
        &e.c,
        CMD_START,
        json!({ "streams": ["EVENTS"], "full": true }),
    )
    .await;
    assert_eq!(forced.progress.messages_done, 3_030);
    let js = async_nats::jetstream::new(e.client.clone());
    js.delete_stream("EVENTS").await.unwrap();
    create_stream(&e.client, "EVENTS", &["events.>"]).await;
    publish_events(&e.client, "events.node", 0, 5_000, 20).await;
    let renewed = completed(&e.c, CMD_START, json!({ "streams": ["EVENTS"] })).await;
    assert_eq!(
        renewed.progress.messages_done, 5_000,
        "recreated stream: full backup"
    );
    let catalog = e.c.ok(QRY_BACKUPS, json!({ "stream": "EVENTS" })).await;
    assert_eq!(catalog[0]["streams"][0]["parent"], Value::Null);
    let _ = (&e.nats, &e.archive);
    e.service.stop().await;
}

#[tokio::test]
async fn a_multi_stream_cut_holds_while_producers_keep_publishing() {
    let e = env().await;
    create_stream(&e.client, "ORDERS", &["orders.>"]).await;
    create_stream(&e.client, "PAYMENTS", &["payments.>"]).await;
    publish_events(&e.client, "orders.o", 0, 2_000, 10).await;
    publish_events(&e.client, "payments.p", 0, 2_000, 10).await;
    let producer_client = e.client.clone();
    let stop = tokio_util_stop();
    let producer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 10_000;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                publish_events(&producer_client, "orders.o", i, 50, 10).await;
                publish_events(&producer_client, "payments.p", i, 50, 10).await;
                i += 50;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let view = completed(
        &e.c,
        CMD_START,
        json!({ "streams": ["ORDERS", "PAYMENTS"] }),
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    producer.await.unwrap();
    let backup_id = view.backup_id.unwrap().to_string();
    let catalog = e.c.ok(QRY_BACKUPS, json!({})).await;
    for (i, stream) in ["ORDERS", "PAYMENTS"].iter().enumerate() {
        let summary = &catalog[0]["streams"][i];
        assert_eq!(summary["stream"], *stream);
        let last = summary["last_seq"].as_u64().unwrap();
        assert!(
            state(&e.client, stream).await.last_seq > last,
            "{stream} grew past the cut during the backup"
        );
        // Exactly the prefix up to the cut: restore and compare with the live stream's prefix.
        let target = format!("{stream}_CUT");
        completed(
            &e.c,
            CMD_RESTORE,
            json!({ "backup": backup_id, "stream": stream, "as": target }),
        )
        .await;
        let live: Vec<StoredMessage> = read_all(&e.client, stream)
            .await
            .into_iter()
            .filter(|m| m.seq <= last)
            .collect();
        assert_eq!(summary["messages"].as_u64().unwrap(), live.len() as u64);
        assert_same_messages(&read_all(&e.client, &target).await, &live);
    }
    e.service.stop().await;
}

fn tokio_util_stop() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false))
}

#[tokio::test]
async fn consumers_are_saved_and_restored_at_their_ack_floor() {
    use async_nats::jetstream::consumer::{self, AckPolicy};
    use futures::StreamExt;
    let e = env().await;
    create_stream(&e.client, "EVENTS", &["events.>"]).await;
    publish_events(&e.client, "events.node", 0, 100, 5).await;
    let js = async_nats::jetstream::new(e.client.clone());
    let stream = js.get_stream("EVENTS").await.unwrap();
    let projector: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("projector".into()),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    // Ack 40, receive 10 more without acking them.
    let mut batch = projector.fetch().max_messages(50).messages().await.unwrap();
    let mut n = 0;
    while let Some(m) = batch.next().await {
        let m = m.unwrap();
        n += 1;
        if n <= 40 {
            m.double_ack().await.unwrap();
        }
    }
    assert_eq!(n, 50);
    let view = completed(&e.c, CMD_START, json!({ "streams": ["EVENTS"] })).await;
    let backup_id = view.backup_id.unwrap().to_string();

    for method in ["server-archive", "publish"] {
        let target = format!("EVENTS_{}", method.replace('-', "_").to_uppercase());
        let restore = completed(
            &e.c,
            CMD_RESTORE,
            json!({ "backup": backup_id, "stream": "EVENTS", "as": target, "method": method }),
        )
        .await;
        let _ = restore;
        let restored = js.get_stream(&target).await.unwrap();
        let mut c: consumer::PullConsumer = restored
            .get_consumer("projector")
            .await
            .unwrap_or_else(|e| panic!("{method}: consumer missing: {e}"));
        let info = c.info().await.unwrap().clone();
        assert_eq!(
            info.num_pending + info.num_ack_pending as u64,
            60,
            "{method}: everything after the ack floor is to be delivered: {info:?}"
        );
        let mut first = c.fetch().max_messages(1).messages().await.unwrap();
        let m = first.next().await.unwrap().unwrap();
        assert_eq!(
            m.info().unwrap().stream_sequence,
            41,
            "{method}: starts after the ack floor"
        );
    }
    e.service.stop().await;
}

#[tokio::test]
async fn restores_select_by_time_sequence_and_subject_fetching_only_needed_segments() {
    let e = env().await;
    create_stream(&e.client, "EVENTS", &["events.>"]).await;
    publish_events(&e.client, "events.node", 0, 1_000, 10).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let middle = time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(50)).await;
    publish_events(&e.client, "events.node", 1_000, 1_000, 10).await;
    let view = completed(&e.c, CMD_START, json!({ "streams": ["EVENTS"] })).await;
    let backup_id = view.backup_id.unwrap().to_string();
    let all = read_all(&e.client, "EVENTS").await;
    let rfc = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };

    // Dry run: exact numbers, nothing written (no job, no stream).
    let plan = e.c.ok(CMD_RESTORE, json!({ "backup": backup_id, "stream": "EVENTS", "as": "EVENTS_T", "end": rfc(middle), "dry_run": true })).await;
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["messages"], 1_000);
    assert_eq!(
        (plan["first_seq"].as_u64(), plan["last_seq"].as_u64()),
        (Some(1), Some(1_000))
    );
    assert!(
        plan["segments"].as_u64().unwrap() < view.progress.objects_done - 1,
        "fewer segments than the backup has"
    );
    let js = async_nats::jetstream::new(e.client.clone());
    assert!(
        js.get_stream("EVENTS_T").await.is_err(),
        "a dry run writes nothing"
    );
    assert_eq!(
        e.c.ok("cim.backup.qry.jobs", json!({ "kind": "restore" }))
            .await,
        json!([])
    );

    // Only the needed segments are fetched: remove every segment that starts at or after the
    // end of the range (found in the manifest), and the restore still completes.
    let store = cim_backup::archive::ArchiveStore::new(
        std::sync::Arc::new(
            object_store::local::LocalFileSystem::new_with_prefix(e.archive.path()).unwrap(),
        ),
        object_store::path::Path::default(),
        "test".into(),
    );
    let (manifest, _) = store
        .get_manifest(
            &backup_id
                .parse::<cim_backup_contracts::BackupId>()
                .unwrap()
                .0,
        )
        .await
        .unwrap();
    let unneeded: Vec<_> = manifest.streams[0]
        .segments
        .iter()
        .filter(|s| s.first_time >= middle)
        .collect();
    assert!(!unneeded.is_empty());
    assert_eq!(
        plan["segments"].as_u64().unwrap() as usize,
        manifest.streams[0].segments.len() - unneeded.len()
    );
    let moved: Vec<_> = unneeded
        .iter()
        .map(|s| {
            let path = e.archive.path().join("segments").join(s.cid.to_string());
            let bytes = std::fs::read(&path).unwrap();
            std::fs::remove_file(&path).unwrap();
            (path, bytes)
        })
        .collect();
    completed(
        &e.c,
        CMD_RESTORE,
        json!({ "backup": backup_id, "stream": "EVENTS", "as": "EVENTS_T", "end": rfc(middle) }),
    )
    .await;
    assert_same_messages(&read_all(&e.client, "EVENTS_T").await, &all[..1_000]);
    for (p, bytes) in moved {
        std::fs::write(p, bytes).unwrap();
    }

    // Time range from the middle on; sequence range; subject filter.
    completed(&e.c, CMD_RESTORE, json!({ "backup": backup_id, "stream": "EVENTS", "as": "EVENTS_LATE", "start": rfc(middle) })).await;
    assert_same_messages(&read_all(&e.client, "EVENTS_LATE").await, &all[1_000..]);
    completed(&e.c, CMD_RESTORE, json!({ "backup": backup_id, "stream": "EVENTS", "as": "EVENTS_SEQ", "start_seq": 500, "end_seq": 1_499 })).await;
    assert_same_messages(&read_all(&e.client, "EVENTS_SEQ").await, &all[499..1_499]);
    let node3: Vec<StoredMessage> = all
        .iter()
        .filter(|m| m.subject == "events.node.3")
        .cloned()
        .collect();
    completed(&e.c, CMD_RESTORE, json!({ "backup": backup_id, "stream": "EVENTS", "as": "EVENTS_N3", "subjects": ["events.node.3"], "method": "publish" })).await;
    let got: Vec<StoredMessage> = read_all(&e.client, "EVENTS_N3")
        .await
        .into_iter()
        .map(|mut m| {
            m.headers.retain(|(n, _)| n != "Cim-Original-Time");
            m
        })
        .collect();
    assert_same_messages(&got, &node3);

    // The runbook's restore-events: time window from a location.
    let s = state(&e.client, "EVENTS_N3").await;
    assert_eq!(
        (s.first_seq, s.last_seq, s.messages),
        (node3[0].seq, node3.last().unwrap().seq, node3.len() as u64)
    );
    e.service.stop().await;
}

#[tokio::test]
async fn a_non_empty_target_is_refused_unless_appending() {
    let e = env().await;
    create_stream(&e.client, "EVENTS", &["events.>"]).await;
    publish_events(&e.client, "events.node", 0, 200, 5).await;
    let view = completed(&e.c, CMD_START, json!({ "streams": ["EVENTS"] })).await;
    let backup_id = view.backup_id.unwrap().to_string();
    let original = read_all(&e.client, "EVENTS").await;
    create_stream(&e.client, "ARCHIVE", &["archive.>"]).await;
    let (status, message) =
        e.c.err(
            CMD_RESTORE,
            json!({ "backup": backup_id, "stream": "EVENTS", "as": "ARCHIVE" }),
        )
        .await;
    assert_eq!(status, 409);
    assert!(message.contains("append"), "{message}");
    // After losing the stream: a new EVENTS has taken new messages; append the backup after
    // them (new sequence numbers; its duplicate window is short, so nothing is deduplicated).
    let js = async_nats::jetstream::new(e.client.clone());
    js.delete_stream("EVENTS").await.unwrap();
    cim_backup::jsapi::JsApi::new(e.client.clone())
        .create_stream(&json!({ "name": "EVENTS", "subjects": ["events.>"], "storage": "file", "duplicate_window": 100_000_000u64 }))
        .await
        .unwrap();
    publish_events(&e.client, "events.node", 500, 3, 5).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let appended = completed(
        &e.c,
        CMD_RESTORE,
        json!({ "backup": backup_id, "stream": "EVENTS", "method": "append" }),
    )
    .await;
    assert_eq!(appended.progress.messages_done, 200);
    let s = state(&e.client, "EVENTS").await;
    assert_eq!(
        (s.messages, s.first_seq, s.last_seq),
        (203, 1, 203),
        "the 3 new messages kept, the 200 appended after them"
    );
    let after = read_all(&e.client, "EVENTS").await;
    assert_eq!(after[3].payload, original[0].payload);
    assert!(
        after[3]
            .headers
            .iter()
            .any(|(n, _)| n == "Cim-Original-Time")
    );
    e.service.stop().await;
}

#[tokio::test]
async fn server_snapshot_mode_stores_and_restores_a_full_fidelity_image() {
    use async_nats::jetstream::consumer::{self, AckPolicy};
    let e = env().await;
    create_stream(&e.client, "EVENTS", &["events.>"]).await;
    publish_events(&e.client, "events.node", 0, 3_000, 10).await;
    let js = async_nats::jetstream::new(e.client.clone());
    let stream = js.get_stream("EVENTS").await.unwrap();
    stream.delete_message(17).await.unwrap();
    let _: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("audit".into()),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let view = completed(
        &e.c,
        CMD_START,
        json!({ "streams": ["EVENTS"], "mode": "snapshot" }),
    )
    .await;
    let backup_id = view.backup_id.unwrap().to_string();
    assert!(
        std::fs::read_dir(e.archive.path().join("parts"))
            .unwrap()
            .count()
            > 1,
        "stored as several parts"
    );
    assert!(
        !e.archive.path().join("segments").exists(),
        "no per-message segments"
    );
    let catalog = e.c.ok(QRY_BACKUPS, json!({})).await;
    assert_eq!(catalog[0]["streams"][0]["messages"], 2_999);
    assert_eq!(
        completed(&e.c, CMD_VERIFY, json!({ "backup": backup_id }))
            .await
            .progress
            .objects_done,
        view.progress.objects_done
    );
    completed(
        &e.c,
        CMD_VERIFY,
        json!({ "backup": backup_id, "mode": "structural" }),
    )
    .await;

    // Selections make no sense for an image: refused by name.
    let (status, message) =
        e.c.err(
            CMD_RESTORE,
            json!({ "backup": backup_id, "stream": "EVENTS", "as": "X", "start_seq": 5 }),
        )
        .await;
    assert_eq!(status, 400);
    assert!(message.contains("restores whole"), "{message}");

    // Under a new name (nats-server 2.15 restores per-message archives) and under its own.
    completed(
        &e.c,
        CMD_RESTORE,
        json!({ "backup": backup_id, "stream": "EVENTS", "as": "EVENTS_IMG" }),
    )
    .await;
    let original = read_all(&e.client, "EVENTS").await;
    assert_same_messages(&read_all(&e.client, "EVENTS_IMG").await, &original);
    let times = |name: &'static str| {
        let js = js.clone();
        async move {
            let s = js.get_stream(name).await.unwrap();
            let mut out = Vec::new();
            for seq in [1u64, 1_500, 3_000] {
                out.push(s.get_raw_message(seq).await.unwrap().time);
            }
            out
        }
    };
    assert_eq!(
        times("EVENTS_IMG").await,
        times("EVENTS").await,
        "original timestamps"
    );
    js.delete_stream("EVENTS").await.unwrap();
    completed(
        &e.c,
        CMD_RESTORE,
        json!({ "backup": backup_id, "stream": "EVENTS" }),
    )
    .await;
    assert_same_messages(&read_all(&e.client, "EVENTS").await, &original);
    let restored = js.get_stream("EVENTS").await.unwrap();
    assert!(
        restored
            .get_consumer::<consumer::pull::Config>("audit")
            .await
            .is_ok(),
        "the consumer came back with the image"
    );
    e.service.stop().await;
}

#[tokio::test]
async fn object_stores_round_trip_and_the_catalog_names_buckets() {
    let e = env().await;
    let js = async_nats::jetstream::new(e.client.clone());
    let models = js
        .create_object_store(async_nats::jetstream::object_store::Config {
            bucket: "models".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // A 600 KiB "model" spans several chunks; bytes vary so compression cannot hide a mistake.
    let weights: Vec<u8> = (0..600 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    models
        .put("llama3-fine-tuned-v2", &mut weights.as_slice())
        .await
        .unwrap();
    let view = completed(&e.c, CMD_START, json!({ "streams": ["OBJ_models"] })).await;
    let backup_id = view.backup_id.unwrap().to_string();
    let catalog = e.c.ok(QRY_BACKUPS, json!({})).await;
    assert_eq!(
        catalog[0]["buckets"],
        json!([{ "stream": "OBJ_models", "kind": "object_store", "name": "models" }])
    );

    js.delete_object_store("models").await.unwrap();
    completed(
        &e.c,
        CMD_RESTORE,
        json!({ "backup": backup_id, "stream": "OBJ_models" }),
    )
    .await;
    let models = js.get_object_store("models").await.unwrap();
    let mut object = models.get("llama3-fine-tuned-v2").await.unwrap();
    let mut restored = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut object, &mut restored)
        .await
        .unwrap();
    assert_eq!(
        restored, weights,
        "the object's bytes (and digest check) came back"
    );
    e.service.stop().await;
}

/// The defect from the runbook walk: a copy restored under a new name gets no subjects (the
/// original owns them); appending to the copy must not publish on the original subjects, which
/// would put duplicates into the live stream. Refused in the dry run and before the first
/// message, and the live stream is untouched.
#[tokio::test]
async fn an_append_never_publishes_where_the_target_does_not_listen() {
    let e = env().await;
    create_stream(&e.client, "EVENTS", &["events.>"]).await;
    publish_events(&e.client, "events.node", 0, 300, 5).await;
    let view = completed(&e.c, CMD_START, json!({ "streams": ["EVENTS"] })).await;
    let backup_id = view.backup_id.unwrap().to_string();
    let copy = completed(
        &e.c,
        CMD_RESTORE,
        json!({ "backup": backup_id, "stream": "EVENTS", "as": "COPY" }),
    )
    .await;
    assert!(
        copy.notes.iter().any(|n| n.contains("subjects")),
        "the copy says it has no subjects: {:?}",
        copy.notes
    );
    let live_before = state(&e.client, "EVENTS").await;
    let copy_before = state(&e.client, "COPY").await;
    let append = json!({
        "backup": backup_id, "stream": "EVENTS", "as": "COPY", "method": "append",
        "start_seq": 1, "end_seq": 5,
    });
    let mut dry = append.clone();
    dry["dry_run"] = json!(true);
    let (status, message) = e.c.err(CMD_RESTORE, dry).await;
    assert_eq!(status, 409, "{message}");
    assert!(
        message.contains("COPY does not capture events.node"),
        "{message}"
    );
    let failed = job(&e.c, CMD_RESTORE, append).await;
    assert_eq!(failed.state, JobState::Failed, "{failed:?}");
    assert!(
        failed
            .error
            .as_ref()
            .is_some_and(|f| f.message.contains("does not capture")),
        "{failed:?}"
    );
    let live_after = state(&e.client, "EVENTS").await;
    assert_eq!(
        (live_after.messages, live_after.last_seq),
        (live_before.messages, live_before.last_seq),
        "nothing was published into the live stream"
    );
    let copy_after = state(&e.client, "COPY").await;
    assert_eq!(copy_after.messages, copy_before.messages);
    e.service.stop().await;
}

/// A restore whose selection keeps nothing "completed" with an empty stream before: now it is
/// refused at once (and its dry run too), and no stream is created.
#[tokio::test]
async fn a_selection_that_matches_nothing_is_refused_and_creates_nothing() {
    let e = env().await;
    create_stream(&e.client, "EVENTS", &["events.>"]).await;
    publish_events(&e.client, "events.node", 0, 200, 5).await;
    let view = completed(&e.c, CMD_START, json!({ "streams": ["EVENTS"] })).await;
    let backup_id = view.backup_id.unwrap().to_string();
    for selection in [
        json!({ "start_seq": 5_000 }),
        json!({ "start": "2001-01-01T00:00:00Z", "end": "2001-01-02T00:00:00Z" }),
        json!({ "subjects": ["nothing.here.>"] }),
    ] {
        for dry_run in [true, false] {
            let mut body = json!({ "backup": backup_id, "stream": "EVENTS", "as": "EMPTY", "dry_run": dry_run });
            for (k, v) in selection.as_object().unwrap() {
                body[k] = v.clone();
            }
            let reply = e.c.request(CMD_RESTORE, &body).await.unwrap();
            let message = reply.body["error"]["message"].as_str().unwrap_or_default();
            if reply.status.is_none() {
                // A subject filter is only known to match nothing by reading: the job fails
                // before it creates anything.
                let failed =
                    e.c.wait_job(reply.body["job_id"].as_str().unwrap(), WAIT)
                        .await;
                assert_eq!(failed.state, JobState::Failed, "{selection}: {failed:?}");
                assert!(
                    failed.error.unwrap().message.contains("matches no message"),
                    "{selection}"
                );
            } else {
                assert_eq!(reply.status, Some(404), "{selection}: {message}");
                assert!(
                    message.contains("matches no message of EVENTS"),
                    "{selection}: {message}"
                );
            }
            assert!(
                async_nats::jetstream::new(e.client.clone())
                    .get_stream("EMPTY")
                    .await
                    .is_err(),
                "{selection}: no stream was created"
            );
        }
    }
    e.service.stop().await;
}
