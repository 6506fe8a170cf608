//! On a 3-node JetStream cluster with two service instances: replicated event stream and
//! views, one job per idempotency key whichever instance answers, cancellation routed to the
//! instance that runs the job, and a restore with the original replication.

use std::time::Duration;

use cim_backup_contracts::subjects::{CMD_CANCEL, CMD_RESTORE, CMD_START, EVENTS_STREAM, QRY_JOBS};
use cim_backup_contracts::views::JobState;
use cim_backup_tests::service::{Caller, TestService, test_config};
use cim_backup_tests::streams::{assert_same_messages, publish_events, read_all};
use cim_backup_tests::{NatsCluster, eventually, init_tracing};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn two_instances_on_a_cluster_share_the_work_safely() {
    init_tracing();
    let cluster = NatsCluster::start().await;
    let archive = tempfile::tempdir().unwrap();
    let client = async_nats::connect(cluster.url()).await.unwrap();
    let api = cim_backup::jsapi::JsApi::new(client.clone());
    api.create_stream(&json!({ "name": "EVENTS", "subjects": ["events.>"], "storage": "file", "num_replicas": 3 }))
        .await
        .unwrap();
    publish_events(&client, "events.node", 0, 20_000, 50).await;

    let mut configs = Vec::new();
    for (i, port) in cluster.client_ports.iter().take(2).enumerate() {
        let mut config = test_config(
            &format!("nats://127.0.0.1:{port}"),
            archive.path(),
            &format!("node-{i}"),
        );
        config.service.events_replicas = 3;
        config.defaults.segment_bytes = 4096;
        config.defaults.upload_concurrency = 1;
        configs.push(config);
    }
    let a = TestService::start(configs[0].clone()).await;
    let b = TestService::start(configs[1].clone()).await;
    let events = api.stream_info(EVENTS_STREAM).await.unwrap().unwrap();
    assert_eq!(
        events.config["num_replicas"], 3,
        "the event log is replicated"
    );

    // Concurrent duplicates, spread over both instances by the queue group: one job.
    let c = Caller::connect(&cluster.url()).await;
    let request = json!({ "streams": ["EVENTS"], "idempotency_key": "cluster-key" });
    let replies = futures::future::join_all((0..8).map(|_| c.ok(CMD_START, request.clone()))).await;
    let ids: std::collections::HashSet<&str> = replies
        .iter()
        .map(|r| r["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "{replies:?}");
    let job_id = ids.into_iter().next().unwrap().to_owned();
    assert_eq!(
        replies.iter().filter(|r| r["duplicate"] == false).count(),
        1
    );

    // Cancel through whichever instance answers; the runner stops wherever it runs.
    eventually(WAIT, "the backup to store segments", || async {
        let v = c.job(&job_id).await;
        assert!(!v.state.is_terminal(), "ended before cancel: {v:?}");
        (v.progress.objects_done >= 2).then_some(())
    })
    .await;
    c.ok(CMD_CANCEL, json!({ "job_id": job_id })).await;
    assert_eq!(c.wait_job(&job_id, WAIT).await.state, JobState::Cancelled);

    // A full backup and a restore with the original replicas.
    let job = c.ok(CMD_START, json!({ "streams": ["EVENTS"] })).await;
    let view = c.wait_job(job["job_id"].as_str().unwrap(), WAIT).await;
    assert_eq!(view.state, JobState::Completed, "{view:?}");
    let restore = c.ok(CMD_RESTORE, json!({ "backup": view.backup_id.unwrap().to_string(), "stream": "EVENTS", "as": "EVENTS_R" })).await;
    assert_eq!(
        c.wait_job(restore["job_id"].as_str().unwrap(), WAIT)
            .await
            .state,
        JobState::Completed
    );
    assert_same_messages(
        &read_all(&client, "EVENTS_R").await,
        &read_all(&client, "EVENTS").await,
    );
    let restored = api.stream_info("EVENTS_R").await.unwrap().unwrap();
    assert_eq!(restored.config["num_replicas"], 3);

    let jobs: Vec<Value> = serde_json::from_value(c.ok(QRY_JOBS, json!({})).await).unwrap();
    assert_eq!(jobs.len(), 3);
    a.stop().await;
    b.stop().await;
}
