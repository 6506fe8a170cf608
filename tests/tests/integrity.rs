//! Integrity checks of live streams and backups: clean is clean; a deleted event, a forged or
//! tampered event is found at its exact sequence; projections that disagree are named.

use std::time::Duration;

use cim_backup_contracts::integrity::{FindingKind, IntegrityReport, ProjectionSpec};
use cim_backup_contracts::subjects::CMD_CHECK;
use cim_backup_contracts::views::{JobState, JobView};
use cim_backup_tests::service::{Caller, TestService, ipld_chains_by_token_2, test_config};
use cim_backup_tests::streams::{create_stream, publish_chained, publish_tampered};
use cim_backup_tests::{NatsServer, init_tracing};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

async fn check(c: &Caller, body: Value) -> (JobView, Vec<IntegrityReport>) {
    let accepted = c.ok(CMD_CHECK, body).await;
    let view = c.wait_job(accepted["job_id"].as_str().unwrap(), WAIT).await;
    assert_eq!(
        view.state,
        JobState::Completed,
        "a check that could walk the stream completes: {view:?}"
    );
    let reports = view.reports.clone().expect("a completed check has reports");
    (view, reports)
}

#[tokio::test]
async fn checks_find_the_exact_corruption_point_and_inconsistent_projections() {
    init_tracing();
    let nats = NatsServer::start().await;
    let archive = tempfile::tempdir().unwrap();
    let client = nats.client().await;
    create_stream(&client, "GRAPH", &["cim.graph.>"]).await;
    let heads = publish_chained(&client, "cim.graph", 3_000, 50).await;
    // A projection that recorded the last event it applied per aggregate (the convention).
    let js = async_nats::jetstream::new(client.clone());
    let kv = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "GRAPH_VIEW".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    for (a, (cid, seq)) in heads.iter().enumerate() {
        kv.put(
            format!("node.{a}"),
            serde_json::to_vec(
                &json!({ "last_event_cid": cid, "last_event_seq": seq, "label": "x" }),
            )
            .unwrap()
            .into(),
        )
        .await
        .unwrap();
    }
    let mut config = test_config(&nats.url(), archive.path(), "node-a");
    config.integrity.streams.insert(
        "GRAPH".into(),
        ipld_chains_by_token_2(
            vec![ProjectionSpec {
                bucket: "GRAPH_VIEW".into(),
                key_prefix: "node.".into(),
                cid_field: None,
                seq_field: None,
            }],
            &["graph-projector"],
        ),
    );
    let service = TestService::start(config).await;
    let c = Caller::connect(&nats.url()).await;

    // Clean, projections included.
    let (_, reports) = check(&c, json!({ "deep": true })).await;
    let r = &reports[0];
    assert!(r.is_clean(), "{:?}", r.summary_lines());
    assert_eq!(
        (r.messages_checked, r.chains, r.first_seq, r.last_seq),
        (3_000, 50, 1, 3_000)
    );
    assert_eq!(r.projections.as_ref().unwrap().entries_checked, 50);
    assert!(
        r.summary_lines()[0].starts_with("Event Stream: OK"),
        "{:?}",
        r.summary_lines()
    );

    // A projector that is caught up: nothing left to deliver.
    use async_nats::jetstream::consumer;
    let stream = js.get_stream("GRAPH").await.unwrap();
    let _: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("graph-projector".into()),
            deliver_policy: consumer::DeliverPolicy::New,
            ack_policy: consumer::AckPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let pending = |name: &'static str| {
        let stream = stream.clone();
        async move {
            let mut c: consumer::PullConsumer = stream.get_consumer(name).await.unwrap();
            c.info().await.unwrap().num_pending
        }
    };
    assert_eq!(pending("graph-projector").await, 0);

    // Replay from 2,000: every event is valid, so the projector is reset to replay them.
    let (view, reports) = check(
        &c,
        json!({ "streams": ["GRAPH"], "start_seq": 2_000, "replay_consumers": [] }),
    )
    .await;
    assert!(reports[0].is_clean());
    assert_eq!(view.replayed, vec!["graph-projector".to_string()]);
    assert_eq!(pending("graph-projector").await, 1_001);

    // A backup of the clean stream, for later.
    let backup = c.backup(&["GRAPH"], WAIT).await;

    // Corruption: an event of aggregate 7 vanishes (seq 1_208 = its 25th event); a producer
    // writes an event whose content does not match its CID (aggregate 3); a projection lies.
    js.get_stream("GRAPH")
        .await
        .unwrap()
        .delete_message(1_208)
        .await
        .unwrap();
    let tampered_seq = publish_tampered(&client, "cim.graph", 3, &heads[3].0, 60).await;
    kv.put(
        "node.11",
        serde_json::to_vec(&json!({ "last_event_cid": "bafkwrong", "last_event_seq": 1 }))
            .unwrap()
            .into(),
    )
    .await
    .unwrap();

    let (_, reports) = check(&c, json!({ "streams": ["GRAPH"], "deep": true })).await;
    let r = &reports[0];
    assert!(!r.is_clean());
    let found: Vec<(FindingKind, u64)> =
        r.findings.iter().map(|f| (f.kind, f.stream_seq)).collect();
    assert_eq!(
        found,
        vec![
            (FindingKind::SequenceGap, 1_258),
            (FindingKind::CidMismatch, tampered_seq)
        ]
    );
    assert_eq!(r.findings[0].aggregate.as_deref(), Some("7"));
    assert_eq!(
        r.findings[0].last_good_seq,
        Some(1_158),
        "aggregate 7's event before the missing one"
    );
    assert!(r.findings[0].last_good_time.is_some());
    assert_eq!(
        r.summary_lines()[0].split(" (").next().unwrap(),
        "Event Stream: CORRUPTED - CID chain broken at seq 1258"
    );
    let p = r.projections.as_ref().unwrap();
    let mut aggregates: Vec<&str> = p.findings.iter().map(|f| f.aggregate.as_str()).collect();
    aggregates.sort();
    // 11 lies; 7 was built past the break in its chain. 3 is consistent: it applied the last
    // genuine event, not the tampered one that came after.
    assert_eq!(aggregates, ["11", "7"], "{:?}", p.findings);
    assert_eq!(
        r.summary_lines()[1],
        "Projections: INCONSISTENT - 2 aggregates affected"
    );

    // find-corruption-point: from a suspected start, the first break. Chains are anchored at
    // their first event in the range, so the start must precede the missing event's predecessor.
    let (_, reports) = check(
        &c,
        json!({ "streams": ["GRAPH"], "start_seq": 1_100, "max_findings": 1 }),
    )
    .await;
    let r = &reports[0];
    assert_eq!(r.first_seq, 1_100);
    assert_eq!(r.findings.len(), 1, "bounded");
    assert_eq!(
        (r.findings[0].kind, r.findings[0].stream_seq),
        (FindingKind::SequenceGap, 1_258)
    );
    assert_eq!(r.findings_total, 2, "all counted: {:?}", r.findings_by_kind);
    let (_, reports) = check(&c, json!({ "streams": ["GRAPH"], "start_seq": 1_260 })).await;
    assert_eq!(
        reports[0]
            .findings
            .iter()
            .map(|f| f.stream_seq)
            .collect::<Vec<_>>(),
        vec![tampered_seq],
        "past the gap only the tampered event"
    );

    // A replay across the corruption stops at the first invalid event and resets nothing.
    let (view, reports) = check(&c, json!({ "streams": ["GRAPH"], "start_seq": 1_100, "replay_consumers": ["graph-projector"] })).await;
    assert_eq!(
        (
            reports[0].findings[0].kind,
            reports[0].findings[0].stream_seq
        ),
        (FindingKind::SequenceGap, 1_258)
    );
    assert!(
        reports[0].last_seq == 1_258,
        "stopped there: {}",
        reports[0].last_seq
    );
    assert!(view.replayed.is_empty());
    assert_eq!(
        pending("graph-projector").await,
        1_002,
        "untouched: the 1,001 it had plus the tampered event"
    );

    // The backup taken before the corruption is clean.
    let (_, reports) = check(&c, json!({ "streams": ["GRAPH"], "backup": backup })).await;
    assert!(reports[0].is_clean(), "{:?}", reports[0].summary_lines());
    assert_eq!(reports[0].messages_checked, 3_000);
    service.stop().await;
}

/// "Clean" only means something for a stated range: a check of nothing is refused (past the
/// end, an empty stream, a server-snapshot backup whose messages we cannot read), and a clean
/// report says which range it covered and that a walk started mid-stream was anchored.
#[tokio::test]
async fn a_check_of_nothing_is_refused_and_clean_states_its_range() {
    init_tracing();
    let nats = NatsServer::start().await;
    let archive = tempfile::tempdir().unwrap();
    let client = nats.client().await;
    create_stream(&client, "GRAPH", &["cim.graph.>"]).await;
    publish_chained(&client, "cim.graph", 300, 10).await;
    create_stream(&client, "EMPTY", &["cim.empty.>"]).await;
    let mut config = test_config(&nats.url(), archive.path(), "node-a");
    config
        .integrity
        .streams
        .insert("GRAPH".into(), ipld_chains_by_token_2(vec![], &[]));
    config
        .integrity
        .streams
        .insert("EMPTY".into(), ipld_chains_by_token_2(vec![], &[]));
    let service = TestService::start(config).await;
    let c = Caller::connect(&nats.url()).await;

    let (status, message) = c
        .err(
            CMD_CHECK,
            json!({ "streams": ["GRAPH"], "start_seq": 5_000 }),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        message.contains("nothing to check: start_seq 5000 is after the last sequence 300"),
        "{message}"
    );
    let (status, message) = c.err(CMD_CHECK, json!({})).await;
    assert_eq!(status, 400, "every configured stream, one of them empty");
    assert!(
        message.contains("stream EMPTY holds no messages"),
        "{message}"
    );

    let (_, reports) = check(&c, json!({ "streams": ["GRAPH"], "start_seq": 101 })).await;
    let r = &reports[0];
    assert!(r.is_clean());
    assert_eq!((r.range_first, r.range_last, r.anchored), (101, 300, true));
    let line = &r.summary_lines()[0];
    assert!(
        line.contains("seq 101..=300") && line.contains("anchored"),
        "{line}"
    );
    let (_, reports) = check(&c, json!({ "streams": ["GRAPH"] })).await;
    assert!(
        !reports[0].anchored,
        "a walk from the start is not anchored"
    );
    // Checks delete their readers: nothing lingers on the stream (one left by a check once got
    // into a server snapshot and was restored with it).
    let api = cim_backup::jsapi::JsApi::new(client.clone());
    cim_backup_tests::eventually(Duration::from_secs(5), "the readers to be deleted", || {
        let api = api.clone();
        async move {
            let count = api
                .stream_info("GRAPH")
                .await
                .unwrap()
                .unwrap()
                .state
                .consumer_count;
            (count == 0).then_some(())
        }
    })
    .await;

    let snapshot = c
        .ok(
            cim_backup_contracts::subjects::CMD_START,
            json!({ "streams": ["GRAPH"], "mode": "snapshot" }),
        )
        .await;
    let view = c.wait_job(snapshot["job_id"].as_str().unwrap(), WAIT).await;
    let backup = view
        .backup_id
        .expect("the snapshot backup completed")
        .to_string();
    let (status, message) = c
        .err(CMD_CHECK, json!({ "streams": ["GRAPH"], "backup": backup }))
        .await;
    assert_eq!(status, 400);
    assert!(message.contains("server snapshot"), "{message}");
    service.stop().await;
}

/// One missing projection bucket used to fail the whole deep check (exit 1), losing the
/// verdict on the stream. Each part is reported on its own; the missing bucket is a finding.
#[tokio::test]
async fn a_missing_projection_bucket_is_a_finding_and_the_stream_verdict_stays() {
    init_tracing();
    let nats = NatsServer::start().await;
    let archive = tempfile::tempdir().unwrap();
    let client = nats.client().await;
    create_stream(&client, "GRAPH", &["cim.graph.>"]).await;
    let heads = publish_chained(&client, "cim.graph", 200, 5).await;
    publish_tampered(&client, "cim.graph", 1, &heads[1].0, 40).await;
    let spec = |bucket: &str| ProjectionSpec {
        bucket: bucket.into(),
        key_prefix: "node.".into(),
        cid_field: None,
        seq_field: None,
    };
    let js = async_nats::jetstream::new(client.clone());
    js.create_key_value(async_nats::jetstream::kv::Config {
        bucket: "GRAPH_VIEW".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut config = test_config(&nats.url(), archive.path(), "node-a");
    config.integrity.streams.insert(
        "GRAPH".into(),
        ipld_chains_by_token_2(vec![spec("GRAPH_VIEW"), spec("NO_SUCH_VIEW")], &[]),
    );
    let service = TestService::start(config).await;
    let c = Caller::connect(&nats.url()).await;
    let (_, reports) = check(&c, json!({ "deep": true })).await;
    let r = &reports[0];
    assert_eq!(
        r.findings_total, 1,
        "the stream's own verdict: {:?}",
        r.findings
    );
    assert_eq!(r.findings[0].kind, FindingKind::CidMismatch);
    let projections = r.projections.as_ref().expect("deep");
    assert_eq!(projections.missing_buckets, vec!["NO_SUCH_VIEW".to_owned()]);
    assert!(!r.is_clean());
    let lines = r.summary_lines();
    assert!(lines[0].starts_with("Event Stream: CORRUPTED"), "{lines:?}");
    assert!(
        lines[1].contains("bucket NO_SUCH_VIEW does not exist"),
        "{lines:?}"
    );
    service.stop().await;
}
