//! Encrypted backups: written with public keys only, read with the identity, openable by the
//! stock `age` tool, and a missing or wrong key is a clear error, never garbage.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cim_backup::config::Config;
use cim_backup_contracts::ErrorCode;
use cim_backup_contracts::subjects::{CMD_RESTORE, CMD_START, CMD_VERIFY, QRY_BACKUPS};
use cim_backup_contracts::views::{JobState, JobView};
use cim_backup_tests::service::{Caller, TestService, test_config};
use cim_backup_tests::streams::{assert_same_messages, create_stream, publish_events, read_all};
use cim_backup_tests::{NatsServer, init_tracing};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// An age identity made by the stock `age-keygen`: (public key, identity file).
fn keygen(dir: &Path, name: &str) -> (String, std::path::PathBuf) {
    let path = dir.join(name);
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&path)
        .output()
        .expect("age-keygen (Debian package age; scripts/install-tools --tests)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let public = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("public key line")
        .to_owned();
    (public, path)
}

fn config(
    url: &str,
    archive: &Path,
    recipients: Vec<String>,
    identities: Vec<std::path::PathBuf>,
) -> Config {
    let mut c = test_config(url, archive, "node-a");
    c.encryption.recipients = recipients;
    c.encryption.identity_files = identities;
    c
}

async fn job(c: &Caller, subject: &str, body: Value) -> JobView {
    let accepted = c.ok(subject, body).await;
    c.wait_job(accepted["job_id"].as_str().unwrap(), WAIT).await
}

#[tokio::test]
async fn encrypted_backups_round_trip_and_refuse_the_wrong_key() {
    init_tracing();
    let nats = NatsServer::start().await;
    let archive = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (public, identity) = keygen(keys.path(), "backup.key");
    let (_, stranger) = keygen(keys.path(), "stranger.key");
    let client = nats.client().await;
    create_stream(&client, "EVENTS", &["events.>"]).await;
    publish_events(&client, "events.node", 0, 1_000, 10).await;

    // A writer that holds only the public key.
    let writer = TestService::start(config(
        &nats.url(),
        archive.path(),
        vec![public.clone()],
        vec![],
    ))
    .await;
    let c = Caller::connect(&nats.url()).await;
    let view = job(
        &c,
        CMD_START,
        json!({ "streams": ["EVENTS"], "encrypt": true }),
    )
    .await;
    assert_eq!(view.state, JobState::Completed, "{view:?}");
    let backup_id = view.backup_id.unwrap().to_string();
    assert_eq!(c.ok(QRY_BACKUPS, json!({})).await[0]["encrypted"], true);
    // It cannot read its own backup back.
    let failed = job(&c, CMD_VERIFY, json!({ "backup": backup_id })).await;
    assert_eq!(failed.state, JobState::Failed);
    let error = failed.error.unwrap();
    assert_eq!(error.code, ErrorCode::Forbidden);
    assert!(error.message.contains("no identity"), "{}", error.message);
    assert!(error.object.unwrap().starts_with("segments/"));
    // Structural verify needs no key.
    let structural = job(
        &c,
        CMD_VERIFY,
        json!({ "backup": backup_id, "mode": "structural" }),
    )
    .await;
    assert_eq!(structural.state, JobState::Completed, "{structural:?}");
    writer.stop().await;

    // The stock age tool opens a segment with the identity: age file of a zstd frame of a segment.
    let segment = std::fs::read_dir(archive.path().join("segments"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let plain = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "age -d -i {} {} | zstd -d -c",
            identity.display(),
            segment.display()
        ))
        .output()
        .unwrap();
    assert!(
        plain.status.success(),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    assert_eq!(&plain.stdout[..8], b"CIMSEG\x00\x01");
    let bytes = std::fs::read(&segment).unwrap();
    assert!(
        !bytes.windows(12).any(|w| w == b"events.node."),
        "subjects are not readable in the stored object"
    );

    // A wrong key is refused by name; the right one restores everything.
    let wrong =
        TestService::start(config(&nats.url(), archive.path(), vec![], vec![stranger])).await;
    let failed = job(&c, CMD_VERIFY, json!({ "backup": backup_id })).await;
    let error = failed.error.unwrap();
    assert_eq!(error.code, ErrorCode::Forbidden);
    assert!(error.message.contains("wrong key"), "{}", error.message);
    let failed = job(
        &c,
        CMD_RESTORE,
        json!({ "backup": backup_id, "stream": "EVENTS", "as": "EVENTS_X" }),
    )
    .await;
    assert_eq!(failed.state, JobState::Failed);
    assert!(
        async_nats::jetstream::new(client.clone())
            .get_stream("EVENTS_X")
            .await
            .is_err(),
        "nothing half-restored"
    );
    wrong.stop().await;

    let reader =
        TestService::start(config(&nats.url(), archive.path(), vec![], vec![identity])).await;
    assert_eq!(
        job(&c, CMD_VERIFY, json!({ "backup": backup_id }))
            .await
            .state,
        JobState::Completed
    );
    let restored = job(
        &c,
        CMD_RESTORE,
        json!({ "backup": backup_id, "stream": "EVENTS", "as": "EVENTS_R" }),
    )
    .await;
    assert_eq!(restored.state, JobState::Completed, "{restored:?}");
    assert_same_messages(
        &read_all(&client, "EVENTS_R").await,
        &read_all(&client, "EVENTS").await,
    );
    // Encrypting without configured recipients is refused up front.
    let (status, message) = c
        .err(CMD_START, json!({ "streams": ["EVENTS"], "encrypt": true }))
        .await;
    assert_eq!(status, 400);
    assert!(message.contains("no recipients"), "{message}");
    reader.stop().await;
}

#[tokio::test]
async fn memory_destinations_work_within_one_service() {
    init_tracing();
    let nats = NatsServer::start().await;
    let archive = tempfile::tempdir().unwrap();
    let client = nats.client().await;
    create_stream(&client, "EVENTS", &["events.>"]).await;
    publish_events(&client, "events.node", 0, 500, 10).await;
    let service = TestService::start(test_config(&nats.url(), archive.path(), "node-a")).await;
    let c = Caller::connect(&nats.url()).await;
    let view = job(
        &c,
        CMD_START,
        json!({ "streams": ["EVENTS"], "destination": "memory://scratch" }),
    )
    .await;
    assert_eq!(view.state, JobState::Completed, "{view:?}");
    assert_eq!(view.location, "memory://scratch");
    let backup_id = view.backup_id.unwrap().to_string();
    assert_eq!(
        job(&c, CMD_VERIFY, json!({ "backup": backup_id }))
            .await
            .state,
        JobState::Completed
    );
    let restored = job(
        &c,
        CMD_RESTORE,
        json!({ "backup": backup_id, "stream": "EVENTS", "as": "EVENTS_M" }),
    )
    .await;
    assert_eq!(restored.state, JobState::Completed);
    assert_same_messages(
        &read_all(&client, "EVENTS_M").await,
        &read_all(&client, "EVENTS").await,
    );
    assert!(
        std::fs::read_dir(archive.path())
            .map(|mut d| d.next().is_none())
            .unwrap_or(true),
        "nothing written to disk"
    );
    service.stop().await;
}

/// An increment written without a word on an encrypted chain used to be stored in plaintext.
/// Now it continues its chain's encryption; an explicit unencrypted increment is refused; a
/// full backup may start a plaintext chain; a destination can make encryption its default; and
/// an encrypted backup never continues a plaintext chain (it starts a new one, and says so).
#[tokio::test]
async fn increments_continue_their_chains_encryption_and_never_mix() {
    init_tracing();
    let nats = NatsServer::start().await;
    let archive = tempfile::tempdir().unwrap();
    let sealed = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (public, identity) = keygen(keys.path(), "backup.key");
    let client = nats.client().await;
    create_stream(&client, "EVENTS", &["events.>"]).await;
    publish_events(&client, "events.node", 0, 300, 10).await;
    let mut cfg = config(&nats.url(), archive.path(), vec![public], vec![identity]);
    let mut always =
        cim_backup::config::DestinationConfig::url(&format!("file://{}", sealed.path().display()));
    always.encrypt = Some(true);
    cfg.destinations.insert("sealed".into(), always);
    let service = TestService::start(cfg).await;
    let c = Caller::connect(&nats.url()).await;
    let newest = |c: &Caller| {
        let c = c.clone();
        async move { c.ok(QRY_BACKUPS, json!({ "stream": "EVENTS" })).await[0].clone() }
    };

    let first = job(
        &c,
        CMD_START,
        json!({ "streams": ["EVENTS"], "encrypt": true }),
    )
    .await;
    assert_eq!(first.state, JobState::Completed, "{first:?}");
    publish_events(&client, "events.node", 300, 50, 10).await;
    let second = job(&c, CMD_START, json!({ "streams": ["EVENTS"] })).await;
    assert_eq!(second.state, JobState::Completed, "{second:?}");
    let entry = newest(&c).await;
    assert_eq!(entry["encrypted"], true, "the increment inherits: {entry}");
    assert_eq!(
        entry["streams"][0]["parent"],
        json!(first.backup_id.unwrap().to_string())
    );

    publish_events(&client, "events.node", 350, 50, 10).await;
    let (status, message) = c
        .err(
            CMD_START,
            json!({ "streams": ["EVENTS"], "encrypt": false }),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        message.contains("are encrypted") && message.contains("\"full\""),
        "{message}"
    );
    let plain = job(
        &c,
        CMD_START,
        json!({ "streams": ["EVENTS"], "encrypt": false, "full": true }),
    )
    .await;
    assert_eq!(plain.state, JobState::Completed, "{plain:?}");
    let entry = newest(&c).await;
    assert_eq!(
        (
            entry["encrypted"].clone(),
            entry["streams"][0]["parent"].clone()
        ),
        (json!(false), Value::Null)
    );

    // Now the chain is plaintext: an encrypted backup starts its own chain, with a note.
    let sealed_again = job(
        &c,
        CMD_START,
        json!({ "streams": ["EVENTS"], "encrypt": true }),
    )
    .await;
    assert_eq!(sealed_again.state, JobState::Completed, "{sealed_again:?}");
    assert!(
        sealed_again
            .notes
            .iter()
            .any(|n| n.contains("full backup, not incremental") && n.contains("not encrypted")),
        "{:?}",
        sealed_again.notes
    );
    assert_eq!(newest(&c).await["streams"][0]["parent"], Value::Null);

    // A destination configured to encrypt does so when the request does not say.
    let view = job(
        &c,
        CMD_START,
        json!({ "streams": ["EVENTS"], "destination": "sealed" }),
    )
    .await;
    assert_eq!(view.state, JobState::Completed, "{view:?}");
    let listed = c.ok(QRY_BACKUPS, json!({ "destination": "sealed" })).await;
    assert_eq!(listed[0]["encrypted"], true, "{listed}");
    service.stop().await;
}
