//! Domains and projection snapshots as the runbook uses them, through the CLI, against a real
//! nats-server: `list-domains` (configured and discovered parts), `snapshot-projections`
//! (pinned reads, projector positions, also while the bucket is written to),
//! `list-projection-snapshots`, and `restore-projection-snapshot --verify` (safety snapshot,
//! restored / unchanged / removed counts, the live bucket equal to the snapshot again).

use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use cim_backup::config::{DomainConfig, KeyRangeConfig};
use cim_backup_tests::files::ok;
use cim_backup_tests::service::{TestService, test_config};
use cim_backup_tests::{NatsServer, init_tracing};
use futures::StreamExt;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cim-backup");

async fn cli(url: &str, args: &[&str]) -> Output {
    cim_backup_tests::files::cli(BIN, url, args).await
}

fn json(out: &Output) -> Value {
    serde_json::from_str(&ok(out)).expect("one JSON document")
}

async fn bucket(js: &jetstream::Context, name: &str, history: i64) -> kv::Store {
    js.create_key_value(kv::Config {
        bucket: name.into(),
        history,
        ..Default::default()
    })
    .await
    .expect("create bucket")
}

/// Every live key and value of a bucket (under `prefix`).
async fn contents(store: &kv::Store, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    cim_backup_tests::kv_contents(store, prefix).await
}

/// The state of a bucket as of stream sequence `pin`, folded from its stream (the bucket keeps
/// enough history for that).
async fn state_at(js: &jetstream::Context, bucket: &str, pin: u64) -> BTreeMap<String, Vec<u8>> {
    let stream = js.get_stream(format!("KV_{bucket}")).await.unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut state = BTreeMap::new();
    let prefix = format!("$KV.{bucket}.");
    while let Some(m) = messages.next().await {
        let m = m.unwrap();
        let info = m.info().unwrap();
        if info.stream_sequence > pin {
            break;
        }
        let key = m.subject.as_str().strip_prefix(&prefix).unwrap().to_owned();
        let deleted = m
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .is_some();
        if deleted {
            state.remove(&key);
        } else {
            state.insert(key, m.payload.to_vec());
        }
        if info.stream_sequence == pin || info.pending == 0 {
            break;
        }
    }
    state
}

#[tokio::test]
async fn domains_are_listed_snapshotted_and_restored_with_verification() {
    init_tracing();
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let js = jetstream::new(client.clone());

    // A domain by convention: its events stream, a projector that has processed 7 of 10
    // events, keys graph.<id> in CIM_PROJECTIONS; another domain only by its keys.
    js.create_stream(jetstream::stream::Config {
        name: "DOMAIN_GRAPH_EVENTS".into(),
        subjects: vec!["graph.events.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    for i in 0..10 {
        js.publish(
            format!("graph.events.node.{i}"),
            format!("{{\"n\":{i}}}").into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let stream = js.get_stream("DOMAIN_GRAPH_EVENTS").await.unwrap();
    let projector = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("graph-projector".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut batch = projector.fetch().max_messages(7).messages().await.unwrap();
    while let Some(m) = batch.next().await {
        m.unwrap().double_ack().await.unwrap();
    }
    let shared = bucket(&js, "CIM_PROJECTIONS", 1).await;
    for i in 0..50 {
        shared
            .put(
                format!("graph.node{i}"),
                format!("{{\"id\":{i},\"v\":1}}").into(),
            )
            .await
            .unwrap();
    }
    for i in 0..5 {
        shared
            .put(format!("billing.inv{i}"), "{}".into())
            .await
            .unwrap();
    }
    // A configured read model in its own bucket, with history enough to fold it at any point.
    let model = bucket(&js, "GRAPH_READ_MODEL", 64).await;
    for i in 0..3000 {
        model
            .put(
                format!("n.{i}"),
                format!("{{\"node\":{i},\"edges\":[]}}").into(),
            )
            .await
            .unwrap();
    }
    bucket(&js, "GRAPH_SCRATCH", 1).await;
    bucket(&js, "GHOST_MODEL", 1).await;

    let host = tempfile::tempdir().unwrap();
    let archive = tempfile::tempdir().unwrap();
    let mut config = test_config(&nats.url(), archive.path(), "p-1");
    config.service.file_roots = vec![host.path().to_owned()];
    let mut graph = DomainConfig::default();
    graph.projections.insert(
        "GraphReadModel".into(),
        KeyRangeConfig {
            bucket: "GRAPH_READ_MODEL".into(),
            prefix: String::new(),
        },
    );
    config.domains.insert("graph".into(), graph);
    // A domain whose configured projector has no consumer.
    let mut ghost = DomainConfig::default();
    ghost.projections.insert(
        "M".into(),
        KeyRangeConfig {
            bucket: "GHOST_MODEL".into(),
            prefix: String::new(),
        },
    );
    ghost.projectors.push(cim_backup::config::ProjectorConfig {
        stream: "DOMAIN_GRAPH_EVENTS".into(),
        consumer: "ghost-projector".into(),
    });
    config.domains.insert("ghost".into(), ghost);
    let service = TestService::start(config).await;
    let url = nats.url();

    // list-domains: what is configured and what was found, each said.
    let domains = json(&cli(&url, &["--json", "list-domains"]).await);
    let names: Vec<&str> = domains
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["billing", "ghost", "graph"]);
    let g = &domains[2];
    assert_eq!(g["streams"][0]["name"], "DOMAIN_GRAPH_EVENTS");
    assert_eq!(g["streams"][0]["origin"], "discovered");
    let models: Vec<(&str, &str, &str)> = g["projections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap(),
                m["prefix"].as_str().unwrap_or(""),
                m["origin"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        models,
        [
            ("GraphReadModel", "", "configured"),
            ("CIM_PROJECTIONS", "graph.", "discovered")
        ]
    );
    assert_eq!(g["projectors"][0]["consumer"], "graph-projector");
    let text = ok(&cli(&url, &["list-domains", "--domains", "graph"]).await);
    assert!(
        text.contains("projector   graph-projector on DOMAIN_GRAPH_EVENTS"),
        "{text}"
    );

    // Bad input names the flag and starts nothing.
    let out = cli(
        &url,
        &["snapshot-projections", "--domains", "grph", "--wait"],
    )
    .await;
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--domains") && err.contains("known: billing, ghost, graph"),
        "{err}"
    );
    let out = cli(
        &url,
        &[
            "snapshot-projections",
            "--domains",
            "graph",
            "--include",
            "NodeIdx",
        ],
    )
    .await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("--include"));

    // A snapshot while the configured model is being written to: every key's value is the
    // one it had at the snapshot's pinned sequence, not a mix.
    let dir = host.path().join("projections/20261202-120000");
    let writer = {
        let model = model.clone();
        tokio::spawn(async move {
            for round in 0..40 {
                for i in (0..3000).step_by(97) {
                    model
                        .put(
                            format!("n.{i}"),
                            format!("{{\"node\":{i},\"round\":{round}}}").into(),
                        )
                        .await
                        .unwrap();
                }
                model.delete(format!("n.{}", 1 + round)).await.unwrap();
            }
        })
    };
    let view = json(
        &cli(
            &url,
            &[
                "--json",
                "snapshot-projections",
                "--domains",
                "graph",
                "--output",
                dir.to_str().unwrap(),
                "--wait",
            ],
        )
        .await,
    );
    writer.await.unwrap();
    assert_eq!(view["state"], "completed", "{view}");
    let snap = &view["snapshots"][0];
    assert_eq!(snap["domain"], "graph");
    assert_eq!(snap["positions"][0]["stream_seq"], 7, "{snap}");
    let read_model = &snap["models"][0];
    assert_eq!(read_model["name"], "GraphReadModel");
    let pin = read_model["stream_seq"].as_u64().unwrap();
    let expected_at_pin = state_at(&js, "GRAPH_READ_MODEL", pin).await;
    assert_eq!(read_model["keys"], expected_at_pin.len() as u64);
    assert_eq!(snap["models"][1]["keys"], 50);
    let snapshot_id = snap["id"].as_str().unwrap().to_owned();

    // Listed from the catalog and from the directory.
    let listed = json(
        &cli(
            &url,
            &["--json", "list-projection-snapshots", "--domain", "graph"],
        )
        .await,
    );
    assert_eq!(listed[0]["id"], snapshot_id.as_str());
    let text = ok(&cli(
        &url,
        &[
            "list-projection-snapshots",
            "--source",
            dir.to_str().unwrap(),
        ],
    )
    .await);
    assert!(
        text.contains(&snapshot_id)
            && text.contains("graph-projector on DOMAIN_GRAPH_EVENTS at seq 7"),
        "{text}"
    );

    // The configured model restored into another bucket is the bucket's state at the pin.
    let view = json(
        &cli(
            &url,
            &[
                "--json",
                "restore-projection-snapshot",
                "--snapshot",
                &snapshot_id,
                "--domain",
                "graph",
                "--as",
                "GraphReadModel=GRAPH_SCRATCH",
                "--verify",
                "--wait",
            ],
        )
        .await,
    );
    assert_eq!(view["state"], "completed", "{view}");
    let out = cli(
        &url,
        &[
            "restore-projection-snapshot",
            "--snapshot",
            &snapshot_id,
            "--domain",
            "graph",
            "--as",
            "GraphReadModel=GRAPH_SCRATCH",
            "--as",
            "CIM_PROJECTIONS=GRAPH_SCRATCH",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("would both be restored"));
    // Into the shared bucket, a whole-bucket model would write over (and delete) another
    // domain's keys: refused, nothing done.
    let out = cli(
        &url,
        &[
            "restore-projection-snapshot",
            "--snapshot",
            &snapshot_id,
            "--domain",
            "graph",
            "--as",
            "GraphReadModel=CIM_PROJECTIONS",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--as") && err.contains("of domain billing"),
        "{err}"
    );
    // A projector without its consumer is refused at accept: no job, no directory.
    let ghost_dir = host.path().join("projections/ghost");
    let out = cli(
        &url,
        &[
            "snapshot-projections",
            "--domains",
            "ghost",
            "--output",
            ghost_dir.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ghost-projector"));
    assert!(!ghost_dir.exists());
    let scratch = js.get_key_value("GRAPH_SCRATCH").await.unwrap();
    assert_eq!(contents(&scratch, "n.").await, expected_at_pin);

    // Damage the live graph keys: 3 changed, 2 deleted, 4 added.
    let before = contents(&shared, "graph.").await;
    for i in 0..3 {
        shared
            .put(format!("graph.node{i}"), "{\"v\":2}".into())
            .await
            .unwrap();
    }
    shared.delete("graph.node10").await.unwrap();
    shared.purge("graph.node11").await.unwrap();
    for i in 0..4 {
        shared
            .put(format!("graph.extra{i}"), "{}".into())
            .await
            .unwrap();
    }
    let damaged = contents(&shared, "graph.").await;
    let billing = contents(&shared, "billing.").await;

    // Restore from the runbook's directory, verified: counts, and the bucket as it was.
    let view = json(
        &cli(
            &url,
            &[
                "--json",
                "restore-projection-snapshot",
                "--snapshot",
                dir.to_str().unwrap(),
                "--domain",
                "graph",
                "--verify",
                "--wait",
            ],
        )
        .await,
    );
    assert_eq!(view["state"], "completed", "{view}");
    assert_eq!(view["verified"], true);
    let shared_model = view["restored"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "CIM_PROJECTIONS")
        .unwrap()
        .clone();
    assert_eq!(shared_model["restored"], 5, "{shared_model}");
    assert_eq!(shared_model["unchanged"], 45);
    assert_eq!(shared_model["removed"], 4);
    assert_eq!(contents(&shared, "graph.").await, before);
    assert_eq!(
        contents(&shared, "billing.").await,
        billing,
        "another domain's keys untouched"
    );

    // The safety snapshot holds the damaged state, and is listed as such.
    let safety_id = view["snapshots"][0]["id"].as_str().unwrap().to_owned();
    assert!(view["snapshots"][0]["safety_for"].is_string());
    let listed = json(
        &cli(
            &url,
            &["--json", "list-projection-snapshots", "--domain", "graph"],
        )
        .await,
    );
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["id"] != safety_id.as_str())
    );
    let listed = json(
        &cli(
            &url,
            &[
                "--json",
                "list-projection-snapshots",
                "--domain",
                "graph",
                "--safety",
            ],
        )
        .await,
    );
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == safety_id.as_str())
    );
    let view = json(
        &cli(
            &url,
            &[
                "--json",
                "restore-projection-snapshot",
                "--snapshot",
                &safety_id,
                "--domain",
                "graph",
                "--verify",
                "--wait",
            ],
        )
        .await,
    );
    assert_eq!(view["state"], "completed", "{view}");
    assert_eq!(contents(&shared, "graph.").await, damaged);

    // clear-projections: without --confirm it shows what it would delete and deletes nothing;
    // with it, the keys go (delete markers), the other domain's stay, and its safety snapshot
    // puts them back.
    let text = ok(&cli(
        &url,
        &[
            "clear-projections",
            "--domain",
            "graph",
            "--include",
            "CIM_PROJECTIONS",
        ],
    )
    .await);
    assert!(
        text.contains(&format!(
            "would delete {} keys of domain graph",
            damaged.len()
        )),
        "{text}"
    );
    assert!(text.contains("nothing was deleted"), "{text}");
    assert_eq!(contents(&shared, "graph.").await, damaged);
    let view = json(
        &cli(
            &url,
            &[
                "--json",
                "clear-projections",
                "--domain",
                "graph",
                "--include",
                "CIM_PROJECTIONS",
                "--confirm",
            ],
        )
        .await,
    );
    assert_eq!(view["state"], "completed", "{view}");
    assert_eq!(view["restored"][0]["removed"], damaged.len() as u64);
    assert!(contents(&shared, "graph.").await.is_empty());
    assert_eq!(contents(&shared, "billing.").await, billing);
    // A delete marker, not a purge: the bucket keeps whatever history it keeps (here 1).
    let mut history = shared.history("graph.node20").await.unwrap();
    let last = history.next().await.unwrap().unwrap();
    assert_eq!(last.operation, kv::Operation::Delete);
    let cleared_safety = view["snapshots"][0]["id"].as_str().unwrap().to_owned();
    let view = json(
        &cli(
            &url,
            &[
                "--json",
                "restore-projection-snapshot",
                "--snapshot",
                &cleared_safety,
                "--domain",
                "graph",
                "--verify",
                "--wait",
            ],
        )
        .await,
    );
    assert_eq!(view["state"], "completed", "{view}");
    assert_eq!(contents(&shared, "graph.").await, damaged);
    let out = cli(
        &url,
        &[
            "clear-projections",
            "--domain",
            "graph",
            "--include",
            "Nope",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--include"));

    // A snapshot of another domain is refused for this one; a bad id names --snapshot.
    let out = cli(
        &url,
        &[
            "restore-projection-snapshot",
            "--snapshot",
            "nope",
            "--domain",
            "graph",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--snapshot"));
    let out = cli(
        &url,
        &[
            "restore-projection-snapshot",
            "--snapshot",
            &snapshot_id,
            "--domain",
            "billing",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is of domain graph"));

    // A damaged snapshot is found before anything is written: the job fails, the buckets are
    // as they were, and no safety snapshot was needed.
    let dir2 = host.path().join("projections/damaged");
    let view = json(
        &cli(
            &url,
            &[
                "--json",
                "snapshot-projections",
                "--domains",
                "graph",
                "--output",
                dir2.to_str().unwrap(),
                "--wait",
            ],
        )
        .await,
    );
    assert_eq!(view["state"], "completed", "{view}");
    let mut blocks: Vec<_> = std::fs::read_dir(dir2.join("projections/blocks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    blocks.sort();
    let victim = blocks.last().unwrap();
    let mut bytes = std::fs::read(victim).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    std::fs::write(victim, bytes).unwrap();
    for i in 0..5 {
        shared
            .put(format!("graph.node{i}"), "{\"v\":3}".into())
            .await
            .unwrap();
    }
    let before_restore = (
        contents(&shared, "graph.").await,
        contents(&model, "").await,
    );
    let out = cli(
        &url,
        &[
            "--json",
            "restore-projection-snapshot",
            "--snapshot",
            dir2.to_str().unwrap(),
            "--domain",
            "graph",
            "--wait",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let view: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(view["state"], "failed", "{view}");
    assert!(
        view["error"]["message"]
            .as_str()
            .unwrap()
            .contains("corrupt"),
        "{view}"
    );
    assert!(
        view["snapshots"].is_null(),
        "no safety snapshot was taken: {view}"
    );
    assert_eq!(
        (
            contents(&shared, "graph.").await,
            contents(&model, "").await
        ),
        before_restore,
        "nothing was written"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    service.stop().await;
}

/// The pinned read under concurrent writes, looked at directly: its entries (base blocks with
/// the overlay applied) are exactly the bucket's state at the pinned sequence, and its digest
/// is theirs. Repeated until a read actually saw writes land while it ran (an overlay), so
/// the test cannot pass without exercising that path.
#[tokio::test]
async fn a_pinned_read_is_the_state_at_one_sequence_while_the_bucket_is_written() {
    use cim_backup::archive::ArchiveStore;
    use cim_backup::archive::projections::{BlockWriter, Digest, ModelEntries, ModelManifest};
    use cim_backup::engine::projections::read::{Sinks, read_model};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    init_tracing();
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    let api = cim_backup::jsapi::JsApi::new(client.clone());
    let store = bucket(&js, "HOT", 64).await;
    for i in 0..20_000 {
        store
            .put(
                format!("k.{i}"),
                format!("{{\"v\":0,\"pad\":\"{}\"}}", "x".repeat(64)).into(),
            )
            .await
            .unwrap();
    }
    let archive = ArchiveStore::new(
        Arc::new(object_store::memory::InMemory::new()),
        object_store::path::Path::from("a"),
        "memory:///".into(),
    );
    let keys = cim_backup::keys::Keys::load(&Default::default()).unwrap();
    let mut saw_overlay = false;
    for attempt in 0..20 {
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("k.{}", (n * 7919) % 20_000);
                    if n % 5 == 4 {
                        store.delete(&key).await.unwrap();
                    } else {
                        store
                            .put(&key, format!("{{\"v\":{n}}}").into())
                            .await
                            .unwrap();
                    }
                    n += 1;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut base = BlockWriter::new(&archive, None);
        let mut overlay = BlockWriter::new(&archive, None);
        let read = read_model(
            &js,
            &api,
            "HOT",
            "",
            Some(Sinks {
                base: &mut base,
                overlay: &mut overlay,
            }),
            &Default::default(),
            |_, _| {},
        )
        .await
        .unwrap();
        stop.store(true, Ordering::Relaxed);
        writer.await.unwrap();
        let model = ModelManifest {
            name: "HOT".into(),
            bucket: "HOT".into(),
            prefix: String::new(),
            stream_seq: read.stream_seq,
            keys: read.keys,
            bytes: read.bytes,
            digest: read.digest.hex(),
            blocks: base.finish().await.unwrap().0,
            overlay: overlay.finish().await.unwrap().0,
        };
        let expected = state_at(&js, "HOT", read.stream_seq).await;
        let mut got = BTreeMap::new();
        let mut entries = ModelEntries::open(&archive, &keys, &model, false)
            .await
            .unwrap();
        while let Some(batch) = entries.next_batch().await.unwrap() {
            for e in batch {
                assert!(
                    got.insert(e.key.clone(), e.value.to_vec()).is_none(),
                    "{} twice",
                    e.key
                );
            }
        }
        assert_eq!(
            got.len(),
            expected.len(),
            "attempt {attempt}: keys at seq {}",
            read.stream_seq
        );
        assert!(
            got == expected,
            "attempt {attempt}: values differ from the state at seq {}",
            read.stream_seq
        );
        let mut digest = Digest::default();
        for (k, v) in &expected {
            digest.add(cim_backup::archive::projections::entry_hash(k, v));
        }
        assert_eq!(read.digest, digest);
        assert_eq!(read.keys, expected.len() as u64);
        if read.overlaid > 0 {
            saw_overlay = true;
            break;
        }
    }
    assert!(
        saw_overlay,
        "no read saw a write land while it ran in 20 attempts"
    );
}

/// replay-events and rebuild-projections through the CLI, with no projector running: flags
/// named in refusals, a rebuild of read models with keys only shows its plan without
/// --confirm, and a replay or rebuild nobody consumes fails within --stall-timeout and says
/// so (the rebuild before it clears anything, leaving the projector unpaused). The runs with a
/// real projector are in tests/tests/replay.rs.
#[tokio::test]
async fn replays_and_rebuilds_refuse_bad_flags_and_fail_when_no_projector_consumes() {
    init_tracing();
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    js.create_stream(jetstream::stream::Config {
        name: "DOMAIN_GRAPH_EVENTS".into(),
        subjects: vec!["graph.events.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    for i in 0..10 {
        js.publish(format!("graph.events.n{i}"), "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    js.get_stream("DOMAIN_GRAPH_EVENTS")
        .await
        .unwrap()
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("graph-projector".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let shared = bucket(&js, "CIM_PROJECTIONS", 1).await;
    for i in 0..5 {
        shared
            .put(format!("graph.n{i}"), "{\"v\":1}".into())
            .await
            .unwrap();
    }
    shared.put("billing.a", "{}".into()).await.unwrap();
    let host = tempfile::tempdir().unwrap();
    let service = TestService::start(test_config(&nats.url(), host.path(), "replay-cli")).await;
    let url = nats.url();

    for (args, flag) in [
        (
            vec![
                "replay-events",
                "--domain",
                "graph",
                "--from-timestamp",
                "yesterday",
            ],
            "--from-timestamp",
        ),
        (
            vec!["replay-events", "--domain", "graph"],
            "--from-beginning, --from-timestamp or --from-snapshot",
        ),
        (
            vec!["replay-events", "--domain", "nope", "--from-beginning"],
            "--domain",
        ),
        (
            vec![
                "rebuild-projections",
                "--domain",
                "graph",
                "--batch-size",
                "0",
            ],
            "--batch-size",
        ),
    ] {
        let out = cli(&url, &args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }

    let text = ok(&cli(
        &url,
        &[
            "rebuild-projections",
            "--domain",
            "graph",
            "--from-beginning",
        ],
    )
    .await);
    assert!(text.contains("domain graph: would delete 5 keys"), "{text}");
    assert!(
        text.contains("projector graph-projector on DOMAIN_GRAPH_EVENTS from seq 1"),
        "{text}"
    );
    assert!(text.contains("nothing was done"), "{text}");
    assert_eq!(contents(&shared, "graph.").await.len(), 5);

    let out = cli(
        &url,
        &[
            "replay-events",
            "--domain",
            "graph",
            "--from-beginning",
            "--stall-timeout",
            "1",
        ],
    )
    .await;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("no projector is consuming graph-projector on stream DOMAIN_GRAPH_EVENTS")
            && said.contains("10 events to deliver"),
        "{said}"
    );

    let out = cli(
        &url,
        &[
            "--json",
            "rebuild-projections",
            "--domain",
            "graph",
            "--confirm",
            "--stall-timeout",
            "1",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let view: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(view["state"], "failed", "{view}");
    let error = view["error"]["message"].as_str().unwrap();
    assert!(
        error.contains("no projector is consuming graph-projector")
            && error.contains("nothing was cleared"),
        "{error}"
    );
    assert!(
        view["snapshots"].as_array().is_none_or(|s| s.is_empty()),
        "{view}"
    );
    assert_eq!(
        contents(&shared, "graph.").await.len(),
        5,
        "nobody to rebuild: nothing cleared"
    );
    assert_eq!(
        contents(&shared, "billing.").await.len(),
        1,
        "another domain's key stays"
    );
    let info = client
        .request(
            "$JS.API.CONSUMER.INFO.DOMAIN_GRAPH_EVENTS.graph-projector",
            "".into(),
        )
        .await
        .unwrap();
    let info: Value = serde_json::from_slice(&info.payload).unwrap();
    assert!(
        info.get("paused").is_none_or(|p| p == false),
        "not left paused: {info}"
    );
    assert_eq!(
        info["num_pending"], 10,
        "where the failed replay moved it, untouched by the rebuild: {info}"
    );
    service.stop().await;
}

/// restore-deleted --type projection: a deleted key's value as of a time comes back from the
/// bucket's history; a purged one from the newest snapshot before the time; a key deleted
/// before the time, a live key that differs (without --confirm), a wrong type or time are
/// refused naming the flag; the write names where the value came from.
#[tokio::test]
async fn restore_deleted_brings_back_a_key_from_history_or_the_newest_snapshot() {
    init_tracing();
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    let shared = bucket(&js, "CIM_PROJECTIONS", 5).await;
    let host = tempfile::tempdir().unwrap();
    let service = TestService::start(test_config(&nats.url(), host.path(), "undelete")).await;
    let url = nats.url();
    let rfc = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let tick = || tokio::time::sleep(Duration::from_millis(1100));

    let before_all = rfc(time::OffsetDateTime::now_utc());
    tick().await;
    shared.put("graph.n2", "{\"v\":1}".into()).await.unwrap();
    shared.put("graph.n1", "{\"v\":1}".into()).await.unwrap();
    shared.put("graph.n3", "{\"v\":1}".into()).await.unwrap();
    tick().await;
    let as_of = rfc(time::OffsetDateTime::now_utc());
    let view = json(
        &cli(
            &url,
            &[
                "--json",
                "snapshot-projections",
                "--domains",
                "graph",
                "--wait",
            ],
        )
        .await,
    );
    assert_eq!(view["state"], "completed", "{view}");
    tick().await;
    let after_snapshot = rfc(time::OffsetDateTime::now_utc());
    tick().await;
    shared.put("graph.n1", "{\"v\":2}".into()).await.unwrap();
    shared.delete("graph.n1").await.unwrap();
    shared.purge("graph.n3").await.unwrap();
    shared.put("graph.n2", "{\"v\":2}".into()).await.unwrap();

    // From the bucket's history: shown, then written.
    let text = ok(&cli(
        &url,
        &[
            "restore-deleted",
            "--type",
            "projection",
            "--id",
            "graph.n1",
            "--timestamp",
            &as_of,
        ],
    )
    .await);
    assert!(
        text.contains(
            "graph.n1 of bucket CIM_PROJECTIONS (read model CIM_PROJECTIONS of domain graph)"
        ),
        "{text}"
    );
    assert!(
        text.contains("from   the bucket's history: revision 2"),
        "{text}"
    );
    assert!(text.contains("value  7 bytes: {\"v\":1}"), "{text}");
    assert!(text.contains("now    deleted"), "{text}");
    assert_eq!(shared.get("graph.n1").await.unwrap().unwrap(), "{\"v\":1}");

    // Purged: only the snapshot before the time has it.
    let text = ok(&cli(
        &url,
        &[
            "restore-deleted",
            "--type",
            "projection",
            "--id",
            "graph.n3",
            "--timestamp",
            &after_snapshot,
        ],
    )
    .await);
    assert!(text.contains("from   projection snapshot "), "{text}");
    assert_eq!(shared.get("graph.n3").await.unwrap().unwrap(), "{\"v\":1}");

    // A live key with another value is replaced only with --confirm; --dry-run writes nothing.
    let args = [
        "restore-deleted",
        "--type",
        "projection",
        "--id",
        "graph.n2",
        "--timestamp",
        &as_of,
    ];
    let out = cli(&url, &args).await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--confirm"));
    let text = ok(&cli(&url, &[&args[..], &["--dry-run", "--confirm"]].concat()).await);
    assert!(text.contains("nothing was written"), "{text}");
    assert_eq!(shared.get("graph.n2").await.unwrap().unwrap(), "{\"v\":2}");
    ok(&cli(&url, &[&args[..], &["--confirm"]].concat()).await);
    assert_eq!(shared.get("graph.n2").await.unwrap().unwrap(), "{\"v\":1}");

    // Refusals name the flag; nothing is written.
    for (args, flag) in [
        (
            vec![
                "--type",
                "stream",
                "--id",
                "graph.n1",
                "--timestamp",
                &as_of,
            ],
            "--type",
        ),
        (
            vec![
                "--type",
                "projection",
                "--id",
                "graph.n1",
                "--timestamp",
                "noon",
            ],
            "--timestamp",
        ),
        (
            vec![
                "--type",
                "projection",
                "--id",
                "other.x",
                "--timestamp",
                &as_of,
            ],
            "--id",
        ),
        (
            vec![
                "--type",
                "projection",
                "--id",
                "graph.n1",
                "--timestamp",
                &before_all,
            ],
            "--id",
        ),
    ] {
        let out = cli(&url, &[&["restore-deleted"][..], &args].concat()).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
    service.stop().await;
}
