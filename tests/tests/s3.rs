//! The same backup → verify → restore against a real S3 API (moto_server on 127.0.0.1).

use std::time::Duration;

use cim_backup::config::DestinationConfig;
use cim_backup_contracts::subjects::{CMD_RESTORE, CMD_START, CMD_VERIFY, QRY_BACKUPS};
use cim_backup_contracts::views::JobState;
use cim_backup_tests::s3::{ACCESS_KEY, REGION, SECRET_KEY};
use cim_backup_tests::service::{Caller, TestService, test_config};
use cim_backup_tests::streams::{assert_same_messages, create_stream, publish_events, read_all};
use cim_backup_tests::{MotoServer, NatsServer, init_tracing};
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn backups_to_s3_verify_restore_and_detect_tampering() {
    init_tracing();
    let (nats, moto) = tokio::join!(NatsServer::start(), MotoServer::start());
    moto.create_bucket("cim-backups").await;
    let archive = tempfile::tempdir().unwrap();
    let client = nats.client().await;
    create_stream(&client, "EVENTS", &["events.>"]).await;
    publish_events(&client, "events.node", 0, 1_200, 9).await;

    let mut config = test_config(&nats.url(), archive.path(), "node-a");
    let on_moto = |url: &str| DestinationConfig {
        url: url.into(),
        endpoint: Some(moto.endpoint()),
        region: Some(REGION.into()),
        access_key_id: Some(ACCESS_KEY.into()),
        secret_access_key: Some(SECRET_KEY.into()),
        allow_http: true,
        retry_timeout_secs: Some(5),
        ..DestinationConfig::url(url)
    };
    config
        .destinations
        .insert("offsite".into(), on_moto("s3://cim-backups/events"));
    config
        .destinations
        .insert("ghost".into(), on_moto("s3://no-such-bucket/x"));
    let mut keyless = on_moto("s3://cim-models");
    keyless.access_key_id = None;
    keyless.secret_access_key = None;
    config.destinations.insert("keyless".into(), keyless);
    let service = TestService::start(config).await;
    let c = Caller::connect(&nats.url()).await;

    let job = c
        .ok(
            CMD_START,
            json!({ "streams": ["EVENTS"], "destination": "offsite" }),
        )
        .await;
    let view = c.wait_job(job["job_id"].as_str().unwrap(), WAIT).await;
    assert_eq!(view.state, JobState::Completed, "{view:?}");
    assert_eq!(view.location, "s3://cim-backups/events");
    let backup_id = view.backup_id.unwrap().to_string();

    // The objects really are in the bucket, under the prefix, named by CID.
    let bucket = moto.store("cim-backups");
    let keys: Vec<String> = bucket
        .list(None)
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    assert!(
        keys.contains(&format!("events/manifests/{backup_id}")),
        "{keys:?}"
    );
    let segments: Vec<&String> = keys
        .iter()
        .filter(|k| k.starts_with("events/segments/"))
        .collect();
    assert_eq!(segments.len() as u64, view.progress.objects_done - 1);

    // Listing the destination finds it; the catalog too. Both say the same.
    let listed = c.ok(QRY_BACKUPS, json!({ "destination": "offsite" })).await;
    let catalog = c.ok(QRY_BACKUPS, json!({})).await;
    assert_eq!(listed, catalog);

    let verify = c.ok(CMD_VERIFY, json!({ "backup": backup_id })).await;
    assert_eq!(
        c.wait_job(verify["job_id"].as_str().unwrap(), WAIT)
            .await
            .state,
        JobState::Completed
    );

    let restore = c.ok(CMD_RESTORE, json!({ "backup": "latest", "stream": "EVENTS", "as": "EVENTS_S3", "source": "offsite" })).await;
    let restored = c.wait_job(restore["job_id"].as_str().unwrap(), WAIT).await;
    assert_eq!(restored.state, JobState::Completed, "{restored:?}");
    assert_same_messages(
        &read_all(&client, "EVENTS_S3").await,
        &read_all(&client, "EVENTS").await,
    );

    // Tamper with one object in the bucket: verify names it.
    let victim = object_store::path::Path::from(segments[0].as_str());
    let mut bytes = bucket
        .get(&victim)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    bytes[10] ^= 0xff;
    bucket.put(&victim, PutPayload::from(bytes)).await.unwrap();
    let verify = c.ok(CMD_VERIFY, json!({ "backup": backup_id })).await;
    let failed = c.wait_job(verify["job_id"].as_str().unwrap(), WAIT).await;
    assert_eq!(failed.state, JobState::Failed);
    let object = failed.error.unwrap().object.unwrap();
    assert_eq!(format!("events/{object}"), *segments[0]);

    // A bucket that does not exist is refused up front, naming the destination and the bucket,
    // for a backup and for a listing; so is an S3 destination without credentials (it used to
    // end in an instance-metadata timeout).
    for (subject, body) in [
        (
            CMD_START,
            json!({ "streams": ["EVENTS"], "destination": "ghost" }),
        ),
        (QRY_BACKUPS, json!({ "destination": "ghost" })),
    ] {
        let (status, message) = c.err(subject, body).await;
        assert_eq!(status, 404, "{message}");
        assert!(
            message.contains("s3://no-such-bucket/x: the bucket no-such-bucket does not exist"),
            "{message}"
        );
        assert!(!message.contains('<'), "no raw XML: {message}");
    }
    let (status, message) = c
        .err(
            CMD_START,
            json!({ "streams": ["EVENTS"], "destination": "keyless" }),
        )
        .await;
    assert_eq!(status, 400, "{message}");
    assert!(
        message.contains("no credentials for s3://cim-models"),
        "{message}"
    );
    assert!(!message.contains("169.254"), "{message}");
    service.stop().await;
}

#[tokio::test]
async fn an_object_store_that_goes_down_fails_the_backup_clearly() {
    init_tracing();
    let (nats, moto) = tokio::join!(NatsServer::start(), MotoServer::start());
    moto.create_bucket("cim-backups").await;
    let archive = tempfile::tempdir().unwrap();
    let client = nats.client().await;
    create_stream(&client, "BIG", &["big.>"]).await;
    publish_events(&client, "big.node", 0, 20_000, 50).await;
    let mut config = test_config(&nats.url(), archive.path(), "node-a");
    config.defaults.segment_bytes = 4096;
    config.defaults.upload_concurrency = 1;
    config.destinations.insert(
        "offsite".into(),
        DestinationConfig {
            url: "s3://cim-backups/big".into(),
            endpoint: Some(moto.endpoint()),
            region: Some(REGION.into()),
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(SECRET_KEY.into()),
            allow_http: true,
            retry_timeout_secs: Some(3),
            ..DestinationConfig::url("s3://cim-backups/big")
        },
    );
    let service = TestService::start(config).await;
    let c = Caller::connect(&nats.url()).await;
    let job = c
        .ok(
            CMD_START,
            json!({ "streams": ["BIG"], "destination": "offsite" }),
        )
        .await;
    let job_id = job["job_id"].as_str().unwrap().to_owned();
    cim_backup_tests::eventually(WAIT, "segments to be stored", || async {
        let v = c.job(&job_id).await;
        assert!(!v.state.is_terminal(), "ended too early: {v:?}");
        (v.progress.objects_done >= 2).then_some(())
    })
    .await;
    drop(moto); // the S3 server is gone
    let view = c.wait_job(&job_id, Duration::from_secs(120)).await;
    assert_eq!(view.state, JobState::Failed, "{view:?}");
    let error = view.error.unwrap();
    assert_eq!(error.code, cim_backup_contracts::ErrorCode::Unavailable);
    assert!(
        error.message.contains("object store failed"),
        "{}",
        error.message
    );
    assert_eq!(
        c.ok(QRY_BACKUPS, json!({})).await,
        json!([]),
        "no backup in the catalog"
    );
    service.stop().await;
}
