//! Restore from a point, end to end: a stream corrupted at a known sequence is found, then
//! rebuilt from a clean backup with its sequence numbers, consumers and subjects; the stream as
//! it was stays in a safety copy; a repair that would not end clean changes nothing.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use cim_backup::jsapi::JsApi;
use cim_backup_contracts::integrity::{FindingKind, IntegrityReport};
use cim_backup_contracts::subjects::{CMD_CANCEL, CMD_CHECK, CMD_REPAIR};
use cim_backup_contracts::views::{JobKind, JobState, JobView};
use cim_backup_tests::service::{Caller, TestService, ipld_chains_by_token_2, test_config};
use cim_backup_tests::streams::{
    api_level, assert_same_messages, create_stream, publish_chained, publish_tampered, read_all,
    state,
};
use cim_backup_tests::{NatsServer, init_tracing};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);

async fn check(c: &Caller) -> IntegrityReport {
    let accepted = c.ok(CMD_CHECK, json!({ "streams": ["GRAPH"] })).await;
    let view = c.wait_job(accepted["job_id"].as_str().unwrap(), WAIT).await;
    assert_eq!(view.state, JobState::Completed, "{view:?}");
    view.reports.unwrap().remove(0)
}

async fn stream_names(api: &JsApi) -> Vec<String> {
    let reply = api
        .raw("$JS.API.STREAM.NAMES".into(), json!({}))
        .await
        .unwrap();
    let mut names: Vec<String> = reply["streams"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

async fn repair(c: &Caller, body: Value) -> JobView {
    let accepted = c.ok(CMD_REPAIR, body).await;
    assert_eq!(accepted["kind"], "repair");
    c.wait_job(accepted["job_id"].as_str().unwrap(), WAIT).await
}

#[tokio::test]
async fn restore_from_point_rebuilds_a_corrupted_stream_from_a_clean_backup() {
    init_tracing();
    let nats = NatsServer::start().await;
    let archive = tempfile::tempdir().unwrap();
    let client = nats.client().await;
    let api = JsApi::new(client.clone());
    let js = jetstream::new(client.clone());
    create_stream(&client, "GRAPH", &["cim.graph.>"]).await;
    let heads = publish_chained(&client, "cim.graph", 3_000, 50).await;
    let stream = js.get_stream("GRAPH").await.unwrap();
    let mut config = test_config(&nats.url(), archive.path(), "node-a");
    config.integrity.streams.insert(
        "GRAPH".into(),
        ipld_chains_by_token_2(vec![], &["graph-projector"]),
    );
    let service = TestService::start(config).await;
    let c = Caller::connect(&nats.url()).await;

    if api_level(&client).await < 5 {
        // Older servers cannot restore per-message archives: refused up front, nothing changes.
        let (code, message) = c
            .err(
                CMD_REPAIR,
                json!({ "stream": "GRAPH", "sequence": 1, "backup": "latest", "dry_run": true }),
            )
            .await;
        assert_eq!(code, 400);
        assert!(message.contains("2.15"), "{message}");
        service.stop().await;
        return;
    }

    // A projector that has processed up to seq 2,500 (past the corruption to come).
    let mut projector: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("graph-projector".into()),
            ack_policy: consumer::AckPolicy::All,
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: 2_501,
            },
            ..Default::default()
        })
        .await
        .unwrap();
    let position = projector.info().await.unwrap().ack_floor.stream_sequence;
    assert_eq!(position, 2_500);
    let backup = c.backup(&["GRAPH"], WAIT).await;
    let clean = read_all(&client, "GRAPH").await;

    // Corruption: aggregate 7 loses seq 1,208; a tampered event of aggregate 3 arrives at 3,001.
    stream.delete_message(1_208).await.unwrap();
    assert_eq!(
        publish_tampered(&client, "cim.graph", 3, &heads[3].0, 60).await,
        3_001
    );
    let found = check(&c).await;
    assert_eq!(
        found
            .findings
            .iter()
            .map(|f| (f.kind, f.stream_seq))
            .collect::<Vec<_>>(),
        vec![
            (FindingKind::SequenceGap, 1_258),
            (FindingKind::CidMismatch, 3_001)
        ]
    );
    let corrupted = read_all(&client, "GRAPH").await;
    // A stream created without subjects takes messages on its name: it cannot be frozen.
    create_stream(&client, "SOLO", &[]).await;
    let streams_before = stream_names(&api).await;

    // Bad requests change nothing.
    for (body, code, needle) in [
        (
            json!({ "stream": "GRAPH", "sequence": 0, "backup": backup }),
            400,
            "sequence",
        ),
        (
            json!({ "stream": "NOPE", "sequence": 5, "backup": backup }),
            404,
            "NOPE",
        ),
        (
            json!({ "stream": "GRAPH", "sequence": 5_000, "backup": backup, "dry_run": true }),
            400,
            "5000",
        ),
        (
            json!({ "stream": "GRAPH", "sequence": 1_200, "backup": backup }),
            400,
            "confirm",
        ),
        (
            json!({ "stream": "GRAPH", "sequence": 1_200, "backup": backup, "confirm": true, "keep": 1 }),
            400,
            "keep",
        ),
        (
            json!({ "stream": "SOLO", "sequence": 1, "backup": backup, "dry_run": true }),
            400,
            "own name",
        ),
    ] {
        let (got, message) = c.err(CMD_REPAIR, body.clone()).await;
        assert_eq!(got, code, "{body}: {message}");
        assert!(message.contains(needle), "{body}: {message}");
    }

    // The dry run is exact and changes nothing.
    let preview = c
        .ok(
            CMD_REPAIR,
            json!({ "stream": "GRAPH", "sequence": 1_200, "backup": backup, "dry_run": true }),
        )
        .await;
    assert_eq!(preview["dry_run"], true);
    let counts: Vec<u64> = [
        "kept_live",
        "from_backup",
        "replaced",
        "kept_newer",
        "target_last_seq",
        "live_last_seq",
    ]
    .iter()
    .map(|k| preview[k].as_u64().unwrap())
    .collect();
    assert_eq!(counts, [1_199, 1_801, 1_801, 0, 3_001, 3_001], "{preview}");
    assert_eq!(preview["consumers"], json!(["graph-projector"]));
    assert!(
        preview["notes"]
            .to_string()
            .contains("newer than the backup"),
        "the tampered event is newer than the backup: {preview}"
    );
    assert_eq!(stream_names(&api).await, streams_before);
    assert_same_messages(&read_all(&client, "GRAPH").await, &corrupted);

    // A repair point after the break cannot end clean: it fails, and the stream is as it was.
    let failed = repair(
        &c,
        json!({ "stream": "GRAPH", "sequence": 2_000, "backup": backup, "confirm": true }),
    )
    .await;
    assert_eq!(failed.state, JobState::Failed, "{failed:?}");
    let error = failed.error.unwrap().message;
    assert!(
        error.contains("seq 1258") && error.contains("earlier sequence"),
        "{error}"
    );
    assert_eq!(
        stream_names(&api).await,
        streams_before,
        "safety copy and staging removed"
    );
    assert_same_messages(&read_all(&client, "GRAPH").await, &corrupted);
    let info = api.stream_info("GRAPH").await.unwrap().unwrap();
    assert_eq!(
        info.config["subjects"],
        json!(["cim.graph.>"]),
        "subjects given back"
    );
    assert!(
        info.config["metadata"]
            .get("cim-backup.repair-frozen")
            .is_none()
    );

    // The real repair, from before the break.
    let done = repair(
        &c,
        json!({ "stream": "GRAPH", "sequence": 1_200, "backup": backup, "confirm": true }),
    )
    .await;
    assert_eq!(done.state, JobState::Completed, "{done:?}");
    assert_eq!(done.kind, JobKind::Repair);
    assert_eq!(
        (done.progress.messages_done, done.progress.messages_total),
        (3_000, 3_000)
    );
    let report = &done.reports.as_ref().expect("the repaired stream's check")[0];
    assert!(
        report.is_clean() && report.messages_checked == 3_000,
        "{:?}",
        report.summary_lines()
    );

    // Every message back with its sequence; the tampered one's sequence is not reused.
    assert_same_messages(&read_all(&client, "GRAPH").await, &clean);
    let after = state(&client, "GRAPH").await;
    assert_eq!(
        (after.messages, after.first_seq, after.last_seq),
        (3_000, 1, 3_001)
    );
    let info = api.stream_info("GRAPH").await.unwrap().unwrap();
    assert_eq!(info.config["subjects"], json!(["cim.graph.>"]));
    let metadata = info.config["metadata"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert!(
        metadata.keys().all(|k| !k.starts_with("cim-backup.repair")),
        "no job markers left: {metadata:?}"
    );
    assert!(
        metadata.contains_key("cim-backup.origin-created"),
        "the rebuilt stream remembers which stream it continues: {metadata:?}"
    );
    assert!(check(&c).await.is_clean());
    assert_eq!(
        js.publish("cim.graph.9", "{}".into())
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence,
        3_002,
        "producers write again"
    );

    // The projector kept its position.
    let mut projector: consumer::PullConsumer = js
        .get_stream("GRAPH")
        .await
        .unwrap()
        .get_consumer("graph-projector")
        .await
        .unwrap();
    assert_eq!(
        projector.info().await.unwrap().ack_floor.stream_sequence,
        position
    );

    // The stream as it was is kept, with the corruption, until the operator deletes it.
    let names = stream_names(&api).await;
    let safety: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("GRAPH_PRE_REPAIR_"))
        .collect();
    assert_eq!(safety.len(), 1, "{names:?}");
    assert!(
        !names.iter().any(|n| n.starts_with("GRAPH_REPAIR_")),
        "staging removed: {names:?}"
    );
    assert_same_messages(&read_all(&client, safety[0]).await, &corrupted);
    assert!(
        done.notes.iter().any(|n| n.contains(safety[0].as_str())),
        "{:?}",
        done.notes
    );

    // A finished repair cannot be cancelled.
    let (code, _) = c.err(CMD_CANCEL, json!({ "job_id": done.job_id })).await;
    assert_eq!(code, 409);
    service.stop().await;
}

/// A cancelled repair gives the stream back untouched; a repair whose service crashes resumes
/// after its last recorded step and still ends with exactly the backup's records.
#[tokio::test]
async fn a_cancelled_repair_changes_nothing_and_a_crashed_one_resumes() {
    init_tracing();
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let archive = tempfile::tempdir().unwrap();
    if api_level(&client).await < 5 {
        // Refused before anything is recorded (the first test checks the message).
        let service = TestService::start(test_config(&nats.url(), archive.path(), "node-a")).await;
        let c = Caller::connect(&nats.url()).await;
        create_stream(&client, "GRAPH", &["cim.graph.>"]).await;
        let (code, _) = c
            .err(
                CMD_REPAIR,
                json!({ "stream": "GRAPH", "sequence": 1, "backup": "latest", "confirm": true }),
            )
            .await;
        assert_eq!(code, 400);
        service.stop().await;
        return;
    }
    let api = JsApi::new(client.clone());
    create_stream(&client, "GRAPH", &["cim.graph.>"]).await;
    publish_chained(&client, "cim.graph", 150_000, 100).await;
    let mut config = test_config(&nats.url(), archive.path(), "node-a");
    config
        .integrity
        .streams
        .insert("GRAPH".into(), ipld_chains_by_token_2(vec![], &[]));
    let service = TestService::start(config.clone()).await;
    let c = Caller::connect(&nats.url()).await;
    let backup = c.backup(&["GRAPH"], WAIT).await;
    let clean = read_all(&client, "GRAPH").await;
    js_delete(&client, 10_050).await;
    let corrupted = read_all(&client, "GRAPH").await;
    let streams_before = stream_names(&api).await;
    let body = json!({ "stream": "GRAPH", "sequence": 10_000, "backup": backup, "confirm": true });

    // Cancel while it stages.
    let accepted = c.ok(CMD_REPAIR, body.clone()).await;
    let job_id = accepted["job_id"].as_str().unwrap().to_owned();
    let running = |c: Caller, id: String| async move {
        let v = c.job(&id).await;
        (v.progress.objects_done >= 1 || v.state.is_terminal()).then_some(v)
    };
    let seen = cim_backup_tests::eventually(WAIT, "the safety copy", || {
        running(c.clone(), job_id.clone())
    })
    .await;
    assert!(!seen.state.is_terminal(), "too fast to cancel: {seen:?}");
    c.ok(CMD_CANCEL, json!({ "job_id": job_id })).await;
    let view = c.wait_job(&job_id, WAIT).await;
    assert_eq!(view.state, JobState::Cancelled, "{view:?}");
    assert_eq!(
        stream_names(&api).await,
        streams_before,
        "nothing left behind"
    );
    assert_same_messages(&read_all(&client, "GRAPH").await, &corrupted);
    let info = api.stream_info("GRAPH").await.unwrap().unwrap();
    assert_eq!(info.config["subjects"], json!(["cim.graph.>"]));

    // Crash mid-way, restart: it resumes and completes with the backup's records.
    let accepted = c.ok(CMD_REPAIR, json!({ "stream": "GRAPH", "sequence": 10_000, "backup": backup, "confirm": true, "idempotency_key": "second" })).await;
    let job_id = accepted["job_id"].as_str().unwrap().to_owned();
    let seen = cim_backup_tests::eventually(WAIT, "the safety copy", || {
        running(c.clone(), job_id.clone())
    })
    .await;
    assert!(!seen.state.is_terminal(), "too fast to crash: {seen:?}");
    service.crash().await;
    let service = TestService::start(config.clone()).await;
    let view = c.wait_job(&job_id, WAIT).await;
    assert_eq!(view.state, JobState::Completed, "{view:?}");
    assert_same_messages(&read_all(&client, "GRAPH").await, &clean);
    assert!(check(&c).await.is_clean());
    let names = stream_names(&api).await;
    assert_eq!(
        names.len(),
        streams_before.len() + 1,
        "the safety copy only: {names:?}"
    );

    // Crash while the live stream is being replaced (it is gone for a moment): the restarted
    // service finishes the swap from the staging stream.
    js_delete(&client, 20_050).await;
    let body = json!({ "stream": "GRAPH", "sequence": 20_000, "backup": backup, "confirm": true, "keep_safety_copy": false });
    let job_id = c.ok(CMD_REPAIR, body).await["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let swapping = |c: Caller, id: String| async move {
        let v = c.job(&id).await;
        (v.progress.objects_done >= 4 || v.state.is_terminal()).then_some(v)
    };
    let seen =
        cim_backup_tests::eventually(WAIT, "the swap", || swapping(c.clone(), job_id.clone()))
            .await;
    assert!(!seen.state.is_terminal(), "too fast to crash: {seen:?}");
    service.crash().await;
    let service = TestService::start(config).await;
    // Swapping, or already done: either way no cancelling.
    let (code, message) = c.err(CMD_CANCEL, json!({ "job_id": job_id })).await;
    assert_eq!(code, 409, "{message}");
    let view = c.wait_job(&job_id, WAIT).await;
    assert_eq!(view.state, JobState::Completed, "{view:?}");
    assert_same_messages(&read_all(&client, "GRAPH").await, &clean);
    assert_eq!(
        stream_names(&api).await,
        names,
        "staging and this repair's safety copy removed"
    );

    // A stream deleted and created again under the same name is another stream: its
    // sequences do not continue the backup's, so the backup is refused.
    api.delete_stream("GRAPH").await.unwrap();
    create_stream(&client, "GRAPH", &["cim.graph.>"]).await;
    publish_chained(&client, "cim.graph", 100, 10).await;
    let (code, message) = c
        .err(
            CMD_REPAIR,
            json!({ "stream": "GRAPH", "sequence": 50, "backup": backup, "dry_run": true }),
        )
        .await;
    assert_eq!(code, 400);
    assert!(message.contains("another stream named GRAPH"), "{message}");
    service.stop().await;
}

async fn js_delete(client: &async_nats::Client, seq: u64) {
    jetstream::new(client.clone())
        .get_stream("GRAPH")
        .await
        .unwrap()
        .delete_message(seq)
        .await
        .unwrap();
}
