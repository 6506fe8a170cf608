//! Views are disposable (rebuilt from the log they are equal), and the service's own event log
//! is a set of valid CID chains any agent can check.

use std::time::Duration;

use async_nats::jetstream::consumer;
use cim_backup_contracts::cid::dag_cbor_cid;
use cim_backup_contracts::events::EventEnvelope;
use cim_backup_contracts::integrity::ChainProfile;
use cim_backup_contracts::subjects::{
    CATALOG_BUCKET, CMD_START, CMD_VERIFY, EVENTS_STREAM, JOBS_BUCKET, QRY_BACKUPS, QRY_JOBS,
};
use cim_backup_contracts::views::JobState;
use cim_backup_domain::chain::{ChainItem, ChainWalker, profile};
use cim_backup_tests::service::{Caller, TestService, test_config};
use cim_backup_tests::streams::{create_stream, publish_events};
use cim_backup_tests::{NatsServer, eventually, init_tracing};
use futures::StreamExt;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn deleting_the_view_buckets_and_rebuilding_gives_the_same_views() {
    init_tracing();
    let nats = NatsServer::start().await;
    let archive = tempfile::tempdir().unwrap();
    let client = nats.client().await;
    create_stream(&client, "EVENTS", &["events.>"]).await;
    publish_events(&client, "events.node", 0, 500, 5).await;
    let config = test_config(&nats.url(), archive.path(), "node-a");
    let service = TestService::start(config.clone()).await;
    let c = Caller::connect(&nats.url()).await;
    let mut backups = Vec::new();
    for _ in 0..2 {
        let job = c.ok(CMD_START, json!({ "streams": ["EVENTS"] })).await;
        let view = c.wait_job(job["job_id"].as_str().unwrap(), WAIT).await;
        backups.push(view.backup_id.unwrap().to_string());
    }
    let verify = c.ok(CMD_VERIFY, json!({ "backup": backups[0] })).await;
    c.wait_job(verify["job_id"].as_str().unwrap(), WAIT).await;
    c.err(CMD_START, json!({ "streams": ["NOPE"] })).await;
    // Views are written by the projector; wait until they show every job as finished.
    let jobs_before = eventually(WAIT, "views to settle", || async {
        let jobs = c.ok(QRY_JOBS, json!({})).await;
        let all_done = jobs
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["state"] == "completed");
        (jobs.as_array().unwrap().len() == 3 && all_done).then_some(jobs)
    })
    .await;
    let catalog_before = c.ok(QRY_BACKUPS, json!({})).await;
    assert_eq!(catalog_before.as_array().unwrap().len(), 2);
    service.stop().await;

    let js = async_nats::jetstream::new(client.clone());
    js.delete_key_value(JOBS_BUCKET).await.unwrap();
    js.delete_key_value(CATALOG_BUCKET).await.unwrap();

    let service = TestService::start(config).await;
    let jobs_after = eventually(WAIT, "views to be rebuilt", || async {
        let jobs = c.ok(QRY_JOBS, json!({})).await;
        (jobs == jobs_before).then_some(jobs)
    })
    .await;
    assert_eq!(jobs_after, jobs_before);
    assert_eq!(c.ok(QRY_BACKUPS, json!({})).await, catalog_before);
    service.stop().await;
}

#[tokio::test]
async fn the_service_event_log_is_a_set_of_valid_cid_chains() {
    init_tracing();
    let nats = NatsServer::start().await;
    let archive = tempfile::tempdir().unwrap();
    let client = nats.client().await;
    create_stream(&client, "EVENTS", &["events.>"]).await;
    publish_events(&client, "events.node", 0, 300, 5).await;
    let service = TestService::start(test_config(&nats.url(), archive.path(), "node-a")).await;
    let c = Caller::connect(&nats.url()).await;
    for _ in 0..3 {
        let job = c.ok(CMD_START, json!({ "streams": ["EVENTS"] })).await;
        let view = c.wait_job(job["job_id"].as_str().unwrap(), WAIT).await;
        assert_eq!(view.state, JobState::Completed);
        let verify = c
            .ok(
                CMD_VERIFY,
                json!({ "backup": view.backup_id.unwrap().to_string() }),
            )
            .await;
        c.wait_job(verify["job_id"].as_str().unwrap(), WAIT).await;
    }
    service.stop().await;

    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(EVENTS_STREAM).await.unwrap();
    let consumer = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            ..Default::default()
        })
        .await
        .unwrap();
    let total = consumer.cached_info().num_pending;
    assert!(
        total >= 6 * 3,
        "every job leaves several events, got {total}"
    );
    let mut messages = consumer.messages().await.unwrap();
    let mut walker = ChainWalker::new(profile(&ChainProfile::native()));
    let mut findings = Vec::new();
    for _ in 0..total {
        let m = messages.next().await.unwrap().unwrap();
        let seq = m.info().unwrap().stream_sequence;
        let headers = m.headers.clone().expect("events carry headers");
        let cid = dag_cbor_cid(&m.payload).to_string();
        let header = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(
            header("Cim-Cid").as_deref(),
            Some(cid.as_str()),
            "Cim-Cid at {seq}"
        );
        assert_eq!(
            header("Nats-Msg-Id").as_deref(),
            Some(cid.as_str()),
            "Nats-Msg-Id at {seq}"
        );
        let envelope = EventEnvelope::decode(&m.payload).unwrap();
        assert_eq!(
            header("Cim-Prev-Cid"),
            envelope.prev.map(|p| p.to_string()),
            "Cim-Prev-Cid at {seq}"
        );
        assert_eq!(
            header("Cim-Event-Type").as_deref(),
            Some(envelope.event.event_type())
        );
        assert!(
            m.subject.ends_with(envelope.event.event_type()),
            "subject {} names the event type",
            m.subject
        );
        let lookup = |name: &str| headers.get(name).map(|v| v.as_str());
        findings.extend(walker.check(ChainItem {
            stream_seq: seq,
            time_ns: 0,
            subject: m.subject.as_str(),
            headers: &lookup,
            payload: &m.payload,
        }));
    }
    assert_eq!(findings, vec![], "the service's own chains are intact");
    assert_eq!(walker.chains(), 6, "three backups and three verifies");
}

/// The job view lagged the event log by several segments (6,563 shown while 16,358 were
/// recorded). A query now folds in whatever its job recorded since the view was written: each
/// time a segment is recorded, a query right after it shows at least that much.
#[tokio::test]
async fn a_job_query_is_never_behind_what_the_job_recorded() {
    use cim_backup_contracts::events::{BackupEvent, JobEvent};
    init_tracing();
    let nats = NatsServer::start().await;
    let archive = tempfile::tempdir().unwrap();
    let client = nats.client().await;
    create_stream(&client, "BIG", &["big.>"]).await;
    publish_events(&client, "big.node", 0, 20_000, 50).await;
    let mut config = test_config(&nats.url(), archive.path(), "node-a");
    config.defaults.segment_bytes = 4096;
    let service = TestService::start(config).await;
    let c = Caller::connect(&nats.url()).await;
    let job = c.ok(CMD_START, json!({ "streams": ["BIG"] })).await;
    let job_id = job["job_id"].as_str().unwrap().to_owned();
    // The job's events as they are stored (a consumer sees only what the stream holds).
    let js = async_nats::jetstream::new(client.clone());
    let mut recorded = js
        .get_stream(EVENTS_STREAM)
        .await
        .unwrap()
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: format!("cim.backup.evt.backup.{job_id}.*"),
            ..Default::default()
        })
        .await
        .unwrap()
        .messages()
        .await
        .unwrap();
    let mut messages = 0u64;
    let mut checked = 0;
    while let Some(message) = recorded.next().await {
        let envelope = EventEnvelope::decode(&message.unwrap().payload).unwrap();
        match envelope.event {
            JobEvent::Backup(BackupEvent::SegmentStored(s)) => {
                messages += s.segment.records;
                let view = c.job(&job_id).await;
                assert!(
                    view.progress.messages_done >= messages,
                    "the view shows {} while {messages} were recorded",
                    view.progress.messages_done
                );
                checked += 1;
            }
            JobEvent::Backup(BackupEvent::BackupCompleted(_)) => break,
            _ => {}
        }
    }
    assert!(checked > 10, "the backup recorded {checked} segments");
    let view = c.wait_job(&job_id, WAIT).await;
    assert_eq!(view.progress.messages_done, 20_000);
    service.stop().await;
}
