//! End to end over plain NATS requests: a real backup of a real stream, verified, restored under
//! a new name and under the original name, message for message.

use std::time::Duration;

use cim_backup_contracts::subjects::{CMD_RESTORE, CMD_START, CMD_VERIFY, QRY_BACKUPS};
use cim_backup_contracts::views::JobState;
use cim_backup_tests::service::{Caller, TestService, test_config};
use cim_backup_tests::streams::{create_stream, publish_events, read_all, state};
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

    let accepted = caller.ok(CMD_START, json!({ "streams": ["EVENTS"], "destination": "local" })).await;
    assert_eq!(accepted["state"], "accepted");
    let job_id = accepted["job_id"].as_str().unwrap().to_owned();
    let view = caller.wait_job(&job_id, WAIT).await;
    assert_eq!(view.state, JobState::Completed, "{view:?}");
    assert_eq!(view.progress.messages_done, 1_994);
    assert!(view.progress.objects_done > 2, "small segments: several objects, got {}", view.progress.objects_done);
    let backup_id = view.backup_id.expect("completed backup has an id").to_string();

    let catalog = caller.ok(QRY_BACKUPS, json!({ "stream": "EVENTS" })).await;
    assert_eq!(catalog[0]["backup_id"], json!(backup_id));
    assert_eq!(catalog[0]["streams"][0]["messages"], json!(1_994));
    assert_eq!(catalog[0]["streams"][0]["first_seq"], json!(2));
    assert_eq!(catalog[0]["streams"][0]["last_seq"], json!(1_999));
    // The same backup is found by listing the destination itself.
    let listed = caller.ok(QRY_BACKUPS, json!({ "destination": "local" })).await;
    assert_eq!(listed[0]["backup_id"], json!(backup_id));

    let verify = caller.ok(CMD_VERIFY, json!({ "backup": backup_id })).await;
    let verified = caller.wait_job(verify["job_id"].as_str().unwrap(), WAIT).await;
    assert_eq!(verified.state, JobState::Completed, "{verified:?}");
    assert_eq!(verified.progress.messages_done, 1_994);

    // Under a new name while the original still exists (its subjects stay with the original).
    let restore = caller.ok(CMD_RESTORE, json!({ "backup": backup_id, "stream": "EVENTS", "as": "EVENTS_COPY" })).await;
    let restored = caller.wait_job(restore["job_id"].as_str().unwrap(), WAIT).await;
    assert_eq!(restored.state, JobState::Completed, "{restored:?}");
    assert_eq!(read_all(&client, "EVENTS_COPY").await, original);
    let copy_state = state(&client, "EVENTS_COPY").await;
    assert_eq!((copy_state.first_seq, copy_state.last_seq, copy_state.messages), (2, 2_000, 1_994));

    // Under the original name after it was deleted: same subjects, and new messages continue
    // at the sequence the original would have given them.
    js.delete_stream("EVENTS").await.unwrap();
    let restore = caller.ok(CMD_RESTORE, json!({ "backup": "latest", "stream": "EVENTS" })).await;
    let restored = caller.wait_job(restore["job_id"].as_str().unwrap(), WAIT).await;
    assert_eq!(restored.state, JobState::Completed, "{restored:?}");
    assert_eq!(read_all(&client, "EVENTS").await, original);
    let ack = js.publish("cim.graph.node.1", "after restore".into()).await.unwrap().await.unwrap();
    assert_eq!((ack.stream.as_str(), ack.sequence), ("EVENTS", 2_001));

    service.stop().await;
}
