//! End to end over plain NATS requests: a real backup of a real stream, verified, restored under
//! a new name and under the original name, message for message.

use std::time::Duration;

use cim_backup_contracts::subjects::{CMD_RESTORE, CMD_START, CMD_VERIFY, QRY_BACKUPS};
use cim_backup_contracts::views::JobState;
use cim_backup_tests::service::{Caller, TestService, test_config};
use cim_backup_tests::streams::{
    api_level, assert_restored, assert_same_messages, create_stream, publish_events, read_all,
    state,
};
use cim_backup_tests::{NatsServer, init_tracing};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn backup_verify_and_restore_reproduce_every_message() {
    init_tracing();
    let nats = NatsServer::start().await;
    let archive = tempfile::tempdir().unwrap();
    let client = nats.client().await;
    create_stream(&client, "EVENTS", &["cim.graph.>"]).await;
    publish_events(&client, "cim.graph.node", 0, 2_000, 50).await;
    // Sequence gaps: deleted messages must stay gaps after the restore.
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream("EVENTS").await.unwrap();
    for seq in [1u64, 7, 8, 9, 1_000, 2_000] {
        stream.delete_message(seq).await.unwrap();
    }
    let original = read_all(&client, "EVENTS").await;
    assert_eq!(original.len(), 1_994);

    let service = TestService::start(test_config(&nats.url(), archive.path(), "node-a")).await;
    let caller = Caller::connect(&nats.url()).await;

    let accepted = caller
        .ok(
            CMD_START,
            json!({ "streams": ["EVENTS"], "destination": "local" }),
        )
        .await;
    assert_eq!(accepted["state"], "accepted");
    let job_id = accepted["job_id"].as_str().unwrap().to_owned();
    let view = caller.wait_job(&job_id, WAIT).await;
    assert_eq!(view.state, JobState::Completed, "{view:?}");
    assert_eq!(view.progress.messages_done, 1_994);
    assert!(
        view.progress.objects_done > 2,
        "small segments: several objects, got {}",
        view.progress.objects_done
    );
    let backup_id = view
        .backup_id
        .expect("completed backup has an id")
        .to_string();

    let catalog = caller.ok(QRY_BACKUPS, json!({ "stream": "EVENTS" })).await;
    assert_eq!(catalog[0]["backup_id"], json!(backup_id));
    assert_eq!(catalog[0]["streams"][0]["messages"], json!(1_994));
    assert_eq!(catalog[0]["streams"][0]["first_seq"], json!(2));
    assert_eq!(catalog[0]["streams"][0]["last_seq"], json!(1_999));
    // The same backup is found by listing the destination itself.
    let listed = caller
        .ok(QRY_BACKUPS, json!({ "destination": "local" }))
        .await;
    assert_eq!(listed[0]["backup_id"], json!(backup_id));

    let verify = caller.ok(CMD_VERIFY, json!({ "backup": backup_id })).await;
    let verified = caller
        .wait_job(verify["job_id"].as_str().unwrap(), WAIT)
        .await;
    assert_eq!(verified.state, JobState::Completed, "{verified:?}");
    assert_eq!(verified.progress.messages_done, 1_994);

    // Under a new name while the original still exists (its subjects stay with the original).
    let restore = caller
        .ok(
            CMD_RESTORE,
            json!({ "backup": backup_id, "stream": "EVENTS", "as": "EVENTS_COPY" }),
        )
        .await;
    let restored = caller
        .wait_job(restore["job_id"].as_str().unwrap(), WAIT)
        .await;
    assert_eq!(restored.state, JobState::Completed, "{restored:?}");
    assert_restored(&read_all(&client, "EVENTS_COPY").await, &original);
    let copy_state = state(&client, "EVENTS_COPY").await;
    assert_eq!(
        (
            copy_state.first_seq,
            copy_state.last_seq,
            copy_state.messages
        ),
        (2, 2_000, 1_994)
    );

    // Under the original name after it was deleted: same subjects, and new messages continue
    // at the sequence the original would have given them.
    js.delete_stream("EVENTS").await.unwrap();
    let restore = caller
        .ok(
            CMD_RESTORE,
            json!({ "backup": "latest", "stream": "EVENTS" }),
        )
        .await;
    let restored = caller
        .wait_job(restore["job_id"].as_str().unwrap(), WAIT)
        .await;
    assert_eq!(restored.state, JobState::Completed, "{restored:?}");
    assert_restored(&read_all(&client, "EVENTS").await, &original);
    let ack = js
        .publish("cim.graph.node.1", "after restore".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!((ack.stream.as_str(), ack.sequence), ("EVENTS", 2_001));

    service.stop().await;
}

#[tokio::test]
async fn publish_preconditions_do_not_break_a_restore_and_kv_buckets_round_trip() {
    init_tracing();
    let nats = NatsServer::start().await;
    let archive = tempfile::tempdir().unwrap();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());

    // An event store that appends with per-subject optimistic concurrency, as CIM modules do.
    create_stream(&client, "ORDERS", &["orders.>"]).await;
    let mut last = 0u64;
    for i in 0..20u64 {
        let mut h = async_nats::HeaderMap::new();
        h.insert(
            "Nats-Expected-Last-Subject-Sequence",
            last.to_string().as_str(),
        );
        h.insert("Nats-Expected-Stream", "ORDERS");
        h.insert("Cim-Event-Type", "OrderUpdated");
        last = js
            .publish_with_headers("orders.o1", h, format!("v{i}").into())
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence;
    }
    // Message 10 is gone; message 11 still says it expected 10 to be the last one.
    js.get_stream("ORDERS")
        .await
        .unwrap()
        .delete_message(10)
        .await
        .unwrap();

    // A KV bucket with overwritten keys (history 1 leaves sequence gaps) and a deleted key.
    let kv = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "profiles".into(),
            history: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    for round in 0..3 {
        for key in ["alice", "bob", "carol"] {
            kv.put(key, format!("{key}-{round}").into()).await.unwrap();
        }
    }
    kv.delete("bob").await.unwrap();
    let kv_before: Vec<_> = read_all(&client, "KV_profiles").await;

    let service = TestService::start(test_config(&nats.url(), archive.path(), "node-a")).await;
    let c = Caller::connect(&nats.url()).await;
    let job = c
        .ok(CMD_START, json!({ "streams": ["ORDERS", "KV_profiles"] }))
        .await;
    let view = c.wait_job(job["job_id"].as_str().unwrap(), WAIT).await;
    assert_eq!(view.state, JobState::Completed, "{view:?}");
    let backup_id = view.backup_id.unwrap().to_string();

    // The server archive keeps every header byte for byte, preconditions included (nats-server
    // 2.15+; older servers refuse the method by name).
    let orders = read_all(&client, "ORDERS").await;
    let server_archive = json!({ "backup": backup_id, "stream": "ORDERS", "as": "ORDERS_A", "method": "server-archive" });
    if api_level(&client).await >= 5 {
        let restore = c.ok(CMD_RESTORE, server_archive).await;
        let restored = c.wait_job(restore["job_id"].as_str().unwrap(), WAIT).await;
        assert_eq!(restored.state, JobState::Completed, "{restored:?}");
        assert_same_messages(&read_all(&client, "ORDERS_A").await, &orders);
    } else {
        let (status, message) = c.err(CMD_RESTORE, server_archive).await;
        assert_eq!(status, 400);
        assert!(message.contains("needs nats-server 2.15"), "{message}");
    }

    // Publishing cannot re-send preconditions (they would be checked again); everything else is
    // identical, and the original time travels in a header.
    let restore = c.ok(CMD_RESTORE, json!({ "backup": backup_id, "stream": "ORDERS", "as": "ORDERS_P", "method": "publish" })).await;
    let restored = c.wait_job(restore["job_id"].as_str().unwrap(), WAIT).await;
    assert_eq!(restored.state, JobState::Completed, "{restored:?}");
    let published = read_all(&client, "ORDERS_P").await;
    assert_eq!(published.len(), orders.len());
    for (p, o) in published.iter().zip(&orders) {
        assert_eq!(
            (p.seq, &p.subject, &p.payload),
            (o.seq, &o.subject, &o.payload)
        );
        let mut expected = o.headers.clone();
        expected.retain(|(name, _)| !name.starts_with("Nats-Expected"));
        let mut got = p.headers.clone();
        let original_time = got
            .iter()
            .position(|(n, _)| n == "Cim-Original-Time")
            .expect("original time header");
        got.remove(original_time);
        assert_eq!(got, expected);
    }

    js.delete_key_value("profiles").await.unwrap();
    let restore = c
        .ok(
            CMD_RESTORE,
            json!({ "backup": backup_id, "stream": "KV_profiles" }),
        )
        .await;
    let restored = c.wait_job(restore["job_id"].as_str().unwrap(), WAIT).await;
    assert_eq!(restored.state, JobState::Completed, "{restored:?}");
    assert_restored(&read_all(&client, "KV_profiles").await, &kv_before);
    let kv = js.get_key_value("profiles").await.unwrap();
    assert_eq!(kv.get("alice").await.unwrap().unwrap(), "alice-2");
    assert_eq!(
        kv.get("bob").await.unwrap(),
        None,
        "the delete marker was restored too"
    );
    let carol = kv.entry("carol").await.unwrap().unwrap();
    assert_eq!(
        carol.revision,
        kv_before
            .iter()
            .find(|m| m.subject.ends_with(".carol"))
            .unwrap()
            .seq
    );
    service.stop().await;
}
