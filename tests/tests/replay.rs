//! Catch-up and rebuild against a real nats-server and a real projector process
//! (`test_projector`, which folds a domain's events into `CIM_PROJECTIONS`):
//! - a rebuild clears the read models after a safety snapshot and produces exactly the bucket
//!   that existed before, leaving other domains' keys alone, and puts back the consumer's
//!   `max_ack_pending`;
//! - a replay from a time moves the projector to the first event at or after it; with no
//!   projector consuming, it fails within its stall bound and says so;
//! - a rebuild interrupted like `kill -9`, whose projector's consumer was lost meanwhile,
//!   resumes from its last checkpoint, not from the start.
//!
//! The suite runs on the newest server (the consumer-reset call) and on the minimum one
//! (consumers are recreated instead); each test asserts the method its server must get.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use cim_backup_contracts::events::{JobEvent, ReplayEvent};
use cim_backup_contracts::subjects::{CMD_REBUILD_PROJECTIONS, CMD_REPLAY_EVENTS};
use cim_backup_contracts::views::JobState;
use cim_backup_tests::service::{Caller, TestService, test_config};
use cim_backup_tests::{NatsServer, eventually, init_tracing};
use futures::StreamExt;
use serde_json::{Value, json};

const STREAM: &str = "DOMAIN_GRAPH_EVENTS";
const PROJECTOR: &str = "graph-projector";
const BUCKET: &str = "CIM_PROJECTIONS";

/// The projector process; killed on drop.
struct Projector(Child);

impl Projector {
    fn start(url: &str, extra: &[&str]) -> Projector {
        let mut child = Command::new(env!("CARGO_BIN_EXE_test_projector"))
            .args([
                "--server",
                url,
                "--stream",
                STREAM,
                "--consumer",
                PROJECTOR,
                "--bucket",
                BUCKET,
                "--prefix",
                "graph.",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start test_projector");
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "test_projector starts");
        Projector(child)
    }
}

impl Drop for Projector {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A domain by convention: its events stream with `events` events over `aggregates`
/// aggregates, a durable projector consumer, and the shared read-model bucket (which also
/// holds a key of another domain).
async fn domain(js: &jetstream::Context, events: u64, aggregates: u64) -> kv::Store {
    js.create_stream(jetstream::stream::Config {
        name: STREAM.into(),
        subjects: vec!["graph.events.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    publish(js, 0, events, aggregates).await;
    js.get_stream(STREAM)
        .await
        .unwrap()
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(PROJECTOR.into()),
            max_ack_pending: 5000,
            ..Default::default()
        })
        .await
        .unwrap();
    let store = js
        .create_key_value(kv::Config {
            bucket: BUCKET.into(),
            history: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    store
        .put("billing.acct1", "{\"owner\":\"other domain\"}".into())
        .await
        .unwrap();
    store
}

async fn publish(js: &jetstream::Context, from: u64, count: u64, aggregates: u64) {
    let mut acks = Vec::new();
    for i in from..from + count {
        let event = json!({ "aggregate": format!("n{}", i % aggregates), "amount": i % 7 });
        acks.push(
            js.publish(
                format!("graph.events.n{}", i % aggregates),
                event.to_string().into(),
            )
            .await
            .unwrap(),
        );
        if acks.len() >= 1000 {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
        }
    }
    for a in acks {
        a.await.unwrap();
    }
}

/// Every live key and value under `prefix`.
async fn contents(store: &kv::Store, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    cim_backup_tests::kv_contents(store, prefix).await
}

async fn consumer_info(client: &async_nats::Client) -> Option<Value> {
    let reply = client
        .request(
            format!("$JS.API.CONSUMER.INFO.{STREAM}.{PROJECTOR}"),
            "".into(),
        )
        .await
        .unwrap();
    let info: Value = serde_json::from_slice(&reply.payload).unwrap();
    info.get("error").is_none().then_some(info)
}

async fn wait_caught_up(client: &async_nats::Client) {
    eventually(
        Duration::from_secs(60),
        "the projector to catch up",
        || async {
            let info = consumer_info(client).await?;
            (info["num_pending"] == 0 && info["num_ack_pending"] == 0).then_some(())
        },
    )
    .await;
}

/// The job's events, in order: (event type, data as JSON).
async fn job_events(js: &jetstream::Context, kind: &str, job: &str) -> Vec<(String, Value)> {
    let stream = js.get_stream("CIM_BACKUP_EVENTS").await.unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: format!("cim.backup.evt.{kind}.{job}.>"),
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut messages = consumer
        .fetch()
        .max_messages(10_000)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .unwrap();
    while let Some(m) = messages.next().await {
        let m = m.unwrap();
        let envelope = cim_backup_contracts::events::EventEnvelope::decode(&m.payload)
            .expect("an event envelope");
        out.push((
            envelope.event.event_type().to_owned(),
            replay_data(&envelope.event),
        ));
    }
    out
}

/// The data of the replay events the tests look into, as JSON.
fn replay_data(event: &JobEvent) -> Value {
    let (JobEvent::ProjectionReplay(e) | JobEvent::ProjectionRebuild(e)) = event else {
        panic!("not a replay event: {event:?}");
    };
    match e {
        ReplayEvent::ReplayProjectorReset(r) => serde_json::to_value(r).unwrap(),
        ReplayEvent::ReplayCheckpointRecorded(c) => serde_json::to_value(c).unwrap(),
        ReplayEvent::ReplayProjectorCaughtUp(c) => serde_json::to_value(c).unwrap(),
        _ => Value::Null,
    }
}

fn events_of<'a>(events: &'a [(String, Value)], event_type: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|(t, _)| t == event_type)
        .map(|(_, d)| d)
        .collect()
}

/// The method a server of this version must get.
fn expected_method(client: &async_nats::Client) -> &'static str {
    if cim_backup::engine::projections::replay::consumer::has_reset(&client.server_info().version) {
        "reset"
    } else {
        "recreated"
    }
}

#[tokio::test]
async fn a_rebuild_produces_exactly_the_bucket_that_existed_before() {
    init_tracing();
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    let store = domain(&js, 3000, 50).await;
    let _projector = Projector::start(&nats.url(), &[]);
    wait_caught_up(&client).await;
    let before = contents(&store, "graph.").await;
    assert_eq!(before.len(), 50, "one key per aggregate");
    let other = contents(&store, "billing.").await;

    let archive = tempfile::tempdir().unwrap();
    let service = TestService::start(test_config(&nats.url(), archive.path(), "rebuild-1")).await;
    let caller = Caller::connect(&nats.url()).await;

    // Read models with keys are cleared only with confirm; a dry run shows the plan.
    let (status, message) = caller
        .err(CMD_REBUILD_PROJECTIONS, json!({ "domains": ["graph"] }))
        .await;
    assert_eq!(status, 400);
    assert!(
        message.starts_with("confirm:") && message.contains("50 keys"),
        "{message}"
    );
    let (status, message) = caller
        .err(
            CMD_REBUILD_PROJECTIONS,
            json!({ "domains": ["graph"], "batch_size": 0, "confirm": true }),
        )
        .await;
    assert_eq!(
        (status, message.as_str()),
        (400, "batch_size: must be at least 1")
    );
    let plan = caller
        .ok(
            CMD_REBUILD_PROJECTIONS,
            json!({ "domains": ["graph"], "dry_run": true }),
        )
        .await;
    assert_eq!(plan["domains"][0]["models"][0]["keys"], 50, "{plan}");
    assert_eq!(plan["domains"][0]["projectors"][0]["from_seq"], 1, "{plan}");
    assert_eq!(contents(&store, "graph.").await, before, "nothing was done");

    let accepted = caller
        .ok(
            CMD_REBUILD_PROJECTIONS,
            json!({
                "domains": ["graph"], "from_beginning": true, "confirm": true,
                "batch_size": 100, "checkpoint_interval": 500,
            }),
        )
        .await;
    let job = accepted["job_id"].as_str().unwrap();
    let view = caller.wait_job(job, Duration::from_secs(120)).await;
    assert_eq!(view.state, JobState::Completed, "{view:?}");
    assert_eq!(
        view.progress.messages_done, 3000,
        "every event replayed: {view:?}"
    );
    assert_eq!(view.snapshots.len(), 1, "one safety snapshot: {view:?}");
    assert_eq!(view.restored[0].removed, 50, "{view:?}");

    assert_eq!(
        contents(&store, "graph.").await,
        before,
        "the rebuilt read model is the one that existed before"
    );
    assert_eq!(
        contents(&store, "billing.").await,
        other,
        "another domain's keys are untouched"
    );
    let info = consumer_info(&client).await.unwrap();
    assert_eq!(
        info["config"]["max_ack_pending"], 5000,
        "max_ack_pending put back: {info}"
    );
    assert!(
        info.get("paused").is_none_or(|p| p == false),
        "not left paused: {info}"
    );

    let listed = caller
        .ok(
            "cim.backup.qry.projection-snapshots",
            json!({ "domain": "graph", "safety": true }),
        )
        .await;
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == json!(view.snapshots[0].id.to_string())),
        "the rebuild's safety snapshot is in the catalog: {listed}"
    );
    let events = job_events(&js, "projection-rebuild", job).await;
    let order: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    let at = |t: &str| {
        order
            .iter()
            .position(|x| *x == t)
            .unwrap_or_else(|| panic!("{t} in {order:?}"))
    };
    assert!(
        at("ReplaySafetySnapshotTaken") < at("ReplayDomainCleared")
            && at("ReplayDomainCleared") < at("ReplayProjectorReset"),
        "safety snapshot, then clear, then move: {order:?}"
    );
    let resets = events_of(&events, "ReplayProjectorReset");
    assert_eq!(resets.len(), 1);
    assert_eq!(resets[0]["from_seq"], 1);
    assert_eq!(resets[0]["pending"], 3000);
    assert_eq!(resets[0]["method"], expected_method(&client));
    let checkpoints = events_of(&events, "ReplayCheckpointRecorded");
    assert!(
        !checkpoints.is_empty(),
        "checkpoints every 500 events: {order:?}"
    );
    for pair in checkpoints.windows(2) {
        assert!(pair[0]["events"].as_u64() < pair[1]["events"].as_u64());
    }
    service.stop().await;
}

#[tokio::test]
async fn a_replay_catches_up_from_a_time_and_fails_when_no_projector_consumes() {
    init_tracing();
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    let store = domain(&js, 100, 10).await;
    let projector = Projector::start(&nats.url(), &[]);
    wait_caught_up(&client).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let since = time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(50)).await;
    publish(&js, 100, 40, 10).await;
    wait_caught_up(&client).await;
    let folded = contents(&store, "graph.").await;

    let archive = tempfile::tempdir().unwrap();
    let service = TestService::start(test_config(&nats.url(), archive.path(), "replay-1")).await;
    let caller = Caller::connect(&nats.url()).await;
    for (body, field) in [
        (
            json!({ "domains": ["graph"], "from_timestamp": "yesterday" }),
            "from_timestamp:",
        ),
        (json!({ "domains": ["graph"] }), "from:"),
        (
            json!({ "domains": ["graph"], "from_beginning": true, "from_timestamp": "2024-01-15T12:00:00Z" }),
            "from:",
        ),
        (
            json!({ "domains": ["nope"], "from_beginning": true }),
            "domains:",
        ),
        (
            json!({ "domains": ["graph"], "from_beginning": true, "parallel": 0 }),
            "parallel:",
        ),
    ] {
        let (status, message) = caller.err(CMD_REPLAY_EVENTS, body.clone()).await;
        assert_eq!(status, 400, "{body}: {message}");
        assert!(message.starts_with(field), "{body}: {message}");
    }

    let t = since
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let accepted = caller
        .ok(
            CMD_REPLAY_EVENTS,
            json!({ "domains": ["graph"], "from_timestamp": t }),
        )
        .await;
    let job = accepted["job_id"].as_str().unwrap();
    let view = caller.wait_job(job, Duration::from_secs(60)).await;
    assert_eq!(view.state, JobState::Completed, "{view:?}");
    assert_eq!(
        view.progress.messages_done, 40,
        "only the events since T: {view:?}"
    );
    let events = job_events(&js, "projection-replay", job).await;
    let resets = events_of(&events, "ReplayProjectorReset");
    assert_eq!(resets[0]["from_seq"], 101, "the first event at or after T");
    assert_eq!(resets[0]["method"], expected_method(&client));
    assert_eq!(
        contents(&store, "graph.").await,
        folded,
        "events folded twice change nothing (last_event_seq)"
    );

    // A catch-up from a time after the projector's ack floor starts at its ack floor: the
    // events it has not folded are not skipped.
    drop(projector);
    publish(&js, 140, 10, 10).await;
    let accepted = caller
        .ok(
            CMD_REPLAY_EVENTS,
            json!({ "domains": ["graph"], "from_timestamp": "2099-01-01T00:00:00Z" }),
        )
        .await;
    let projector = Projector::start(&nats.url(), &[]);
    let job = accepted["job_id"].as_str().unwrap();
    let view = caller.wait_job(job, Duration::from_secs(60)).await;
    assert_eq!(view.state, JobState::Completed, "{view:?}");
    let events = job_events(&js, "projection-replay", job).await;
    assert_eq!(
        events_of(&events, "ReplayProjectorReset")[0]["from_seq"],
        141,
        "not past the ack floor"
    );
    assert_eq!(view.progress.messages_done, 10, "{view:?}");

    // Nobody consuming: the job fails within its stall bound and says why.
    drop(projector);
    let started = Instant::now();
    let accepted = caller
        .ok(
            CMD_REPLAY_EVENTS,
            json!({ "domains": ["graph"], "from_beginning": true, "stall_timeout_secs": 2 }),
        )
        .await;
    let view = caller
        .wait_job(
            accepted["job_id"].as_str().unwrap(),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(view.state, JobState::Failed, "{view:?}");
    let error = view.error.unwrap().message;
    assert!(
        error.contains("no projector is consuming graph-projector on stream DOMAIN_GRAPH_EVENTS")
            && error.contains("150 events to deliver"),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "failed within the bound"
    );
    service.stop().await;
}

#[tokio::test]
async fn an_interrupted_rebuild_resumes_from_its_last_checkpoint() {
    init_tracing();
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    let total = 8000;
    let store = domain(&js, total, 200).await;
    let projector = Projector::start(&nats.url(), &[]);
    wait_caught_up(&client).await;
    let before = contents(&store, "graph.").await;
    drop(projector);

    let archive = tempfile::tempdir().unwrap();
    let config = test_config(&nats.url(), archive.path(), "rebuild-2");
    let service = TestService::start(config.clone()).await;
    let caller = Caller::connect(&nats.url()).await;
    // A slow projector: 100 events per 50 ms.
    let slow = Projector::start(&nats.url(), &["--batch", "100", "--delay-ms", "50"]);
    let accepted = caller
        .ok(
            CMD_REBUILD_PROJECTIONS,
            json!({ "domains": ["graph"], "confirm": true, "checkpoint_interval": 1000,
                    "no_safety_snapshot": true }),
        )
        .await;
    let job = accepted["job_id"].as_str().unwrap().to_owned();
    let checkpoint = eventually(Duration::from_secs(60), "two checkpoints", || {
        let (js, job) = (&js, &job);
        async move {
            let events = job_events(js, "projection-rebuild", job).await;
            let checkpoints = events_of(&events, "ReplayCheckpointRecorded");
            (checkpoints.len() >= 2).then(|| checkpoints.last().copied().unwrap().clone())
        }
    })
    .await;
    // kill -9 of the service, the projector gone, and its consumer lost with them.
    service.crash().await;
    drop(slow);
    client
        .request(
            format!("$JS.API.CONSUMER.DELETE.{STREAM}.{PROJECTOR}"),
            "".into(),
        )
        .await
        .unwrap();
    let events = job_events(&js, "projection-rebuild", &job).await;
    let last = events_of(&events, "ReplayCheckpointRecorded")
        .last()
        .copied()
        .unwrap()
        .clone();
    assert!(last["events"].as_u64() >= checkpoint["events"].as_u64());
    assert!(
        last["stream_seq"].as_u64().unwrap() < total,
        "interrupted midway: {last}"
    );

    let _projector = Projector::start(&nats.url(), &[]);
    let service = TestService::start(config).await;
    let view = caller.wait_job(&job, Duration::from_secs(120)).await;
    assert_eq!(view.state, JobState::Completed, "{view:?}");
    let events = job_events(&js, "projection-rebuild", &job).await;
    let resets = events_of(&events, "ReplayProjectorReset");
    assert_eq!(resets.len(), 2, "moved at the start and again on resume");
    assert_eq!(resets[0]["from_seq"], 1);
    assert_eq!(
        resets[1]["from_seq"].as_u64(),
        Some(last["stream_seq"].as_u64().unwrap() + 1),
        "resumed at the event after the last checkpoint, not the start"
    );
    assert_eq!(
        resets[1]["method"], "recreated",
        "the lost consumer is created again"
    );
    assert_eq!(resets[1]["events_before"], last["events"]);
    let caught = events_of(&events, "ReplayProjectorCaughtUp");
    assert_eq!(caught[0]["events"], total, "counted across the resume");
    assert_eq!(
        contents(&store, "graph.").await,
        before,
        "the resumed rebuild still produces the bucket that existed before"
    );
    let info = consumer_info(&client)
        .await
        .expect("the consumer exists again");
    assert_eq!(
        info["config"]["max_ack_pending"], 5000,
        "its own config: {info}"
    );
    service.stop().await;
}
