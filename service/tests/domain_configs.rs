//! Domain configuration through the CLI, against real nats-servers: `export-domain-configs`
//! is deterministic and leaves out server-assigned fields; `import-domain-configs` plans
//! create / update (with the field diff) / unchanged / conflict with Terraform's exit codes
//! (0 no change, 2 changes, 1 error), names a schema error's line and column, applies
//! idempotently, keeps what the file lacks unless `--prune`; and `restore-all-configs` puts the
//! newest export of a directory onto an empty server, which then exports the same bytes.

use std::process::Output;

use async_nats::jetstream::{self, consumer, kv};
use cim_backup_tests::files::ok;
use cim_backup_tests::service::{TestService, test_config};
use cim_backup_tests::{NatsServer, init_tracing};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cim-backup");

async fn cli(url: &str, args: &[&str]) -> Output {
    cim_backup_tests::files::cli(BIN, url, args).await
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Domain graph (events stream, projector, read model keys, configuration entries, an agent)
/// and domain billing (a stream).
async fn domains(js: &jetstream::Context) {
    for (name, subjects) in [
        ("DOMAIN_GRAPH_EVENTS", "graph.events.>"),
        ("DOMAIN_BILLING_EVENTS", "billing.events.>"),
    ] {
        js.create_stream(jetstream::stream::Config {
            name: name.into(),
            subjects: vec![subjects.into()],
            ..Default::default()
        })
        .await
        .unwrap();
    }
    js.get_stream("DOMAIN_GRAPH_EVENTS")
        .await
        .unwrap()
        .create_consumer(consumer::pull::Config {
            durable_name: Some("graph-projector".into()),
            max_ack_pending: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    for (bucket, entries) in [
        ("CIM_PROJECTIONS", vec![("graph.n1", "{\"v\":1}")]),
        (
            "CIM_DOMAIN_CONFIG",
            vec![
                ("graph.settings", "{\"layout\":\"force\"}"),
                ("graph.limits", "max_nodes: 100000\n"),
            ],
        ),
        ("CIM_AGENTS", vec![("graph.planner", "{\"model\":\"x\"}")]),
    ] {
        let store = js
            .create_key_value(kv::Config {
                bucket: bucket.into(),
                history: 5,
                ..Default::default()
            })
            .await
            .unwrap();
        for (k, v) in entries {
            store.put(k, v.to_owned().into()).await.unwrap();
        }
    }
}

fn plan_line(text: &str) -> &str {
    text.lines()
        .find(|l| l.starts_with("plan: "))
        .unwrap_or_else(|| panic!("no plan line in {text}"))
}

#[tokio::test]
async fn configs_export_deterministically_and_import_by_plan_idempotently() {
    init_tracing();
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    domains(&js).await;
    let work = tempfile::tempdir().unwrap();
    let service = TestService::start(test_config(&nats.url(), work.path(), "configs-1")).await;
    let url = nats.url();
    let dir = work.path().join("configs");
    std::fs::create_dir_all(&dir).unwrap();
    let f1 = dir.join("domains-20240115.yaml");
    let f2 = work.path().join("again.yaml");
    let j1 = work.path().join("domains.json");

    // Deterministic, and without server-assigned fields.
    let text = ok(&cli(
        &url,
        &[
            "export-domain-configs",
            "--format",
            "yaml",
            "--output",
            f1.to_str().unwrap(),
        ],
    )
    .await);
    assert!(
        text.contains("graph (1 streams, 1 consumers, 3 buckets, 3 entries)"),
        "{text}"
    );
    ok(&cli(
        &url,
        &["export-domain-configs", "--output", f2.to_str().unwrap()],
    )
    .await);
    let yaml = std::fs::read_to_string(&f1).unwrap();
    assert_eq!(
        yaml,
        std::fs::read_to_string(&f2).unwrap(),
        "two exports, same bytes"
    );
    assert!(
        !yaml.contains("_nats."),
        "no server-assigned metadata:\n{yaml}"
    );
    ok(&cli(
        &url,
        &[
            "export-domain-configs",
            "--format",
            "json",
            "--output",
            j1.to_str().unwrap(),
        ],
    )
    .await);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&j1).unwrap()).unwrap();
    let graph = &doc["domains"]["graph"];
    assert_eq!(
        graph["streams"]["DOMAIN_GRAPH_EVENTS"]["consumers"]["graph-projector"]["max_ack_pending"],
        1000
    );
    assert_eq!(
        graph["config_entries"]["entries"]["graph.limits"],
        "max_nodes: 100000\n"
    );
    assert_eq!(
        graph["agents"]["entries"]["graph.planner"],
        "{\"model\":\"x\"}"
    );
    assert!(graph["key_value"]["CIM_PROJECTIONS"].is_object(), "{graph}");
    assert!(doc["domains"]["billing"]["streams"]["DOMAIN_BILLING_EVENTS"].is_object());

    // Nothing changed: exit 0.
    let out = cli(
        &url,
        &[
            "import-domain-configs",
            "--source",
            f1.to_str().unwrap(),
            "--validate",
            "--dry-run",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert!(plan_line(&said(&out)).starts_with("plan: 0 to create, 0 to update, 0 to delete"));

    // The server drifts: a consumer gone, an entry changed, a stream limit changed, and a
    // consumer and an entry the file does not hold.
    let stream = js.get_stream("DOMAIN_GRAPH_EVENTS").await.unwrap();
    stream.delete_consumer("graph-projector").await.unwrap();
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("extra".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let config = js.get_key_value("CIM_DOMAIN_CONFIG").await.unwrap();
    config
        .put("graph.limits", "max_nodes: 5\n".into())
        .await
        .unwrap();
    config.put("graph.new", "{}".into()).await.unwrap();
    js.update_stream(jetstream::stream::Config {
        name: "DOMAIN_GRAPH_EVENTS".into(),
        subjects: vec!["graph.events.>".into()],
        max_messages: 5000,
        ..Default::default()
    })
    .await
    .unwrap();

    let out = cli(
        &url,
        &[
            "import-domain-configs",
            "--source",
            f1.to_str().unwrap(),
            "--dry-run",
        ],
    )
    .await;
    let text = said(&out);
    assert_eq!(out.status.code(), Some(2), "changes: {text}");
    for line in [
        "  + create consumer DOMAIN_GRAPH_EVENTS/graph-projector",
        "  ~ update stream DOMAIN_GRAPH_EVENTS",
        "      max_msgs: 5000 → -1",
        "  ~ update entry CIM_DOMAIN_CONFIG/graph.limits",
        "  ? extra consumer DOMAIN_GRAPH_EVENTS/extra",
        "  ? extra entry CIM_DOMAIN_CONFIG/graph.new",
        "nothing was changed: run again with --apply",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    assert!(
        stream
            .clone()
            .consumer_info("graph-projector")
            .await
            .is_err(),
        "dry run"
    );

    // Apply: exit 0, the file's state is back, what it lacks is kept; a second apply changes
    // nothing.
    let out = cli(
        &url,
        &[
            "import-domain-configs",
            "--source",
            f1.to_str().unwrap(),
            "--apply",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let mut stream = js.get_stream("DOMAIN_GRAPH_EVENTS").await.unwrap();
    assert_eq!(stream.info().await.unwrap().config.max_messages, -1);
    let projector = stream.consumer_info("graph-projector").await.unwrap();
    assert_eq!(projector.config.max_ack_pending, 1000);
    assert!(
        stream.consumer_info("extra").await.is_ok(),
        "kept without --prune"
    );
    assert_eq!(
        config.get("graph.limits").await.unwrap().unwrap(),
        "max_nodes: 100000\n"
    );
    let out = cli(
        &url,
        &[
            "import-domain-configs",
            "--source",
            f1.to_str().unwrap(),
            "--apply",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert!(plan_line(&said(&out)).starts_with("plan: 0 to create, 0 to update, 0 to delete"));

    // --prune deletes the consumer and entry the file lacks: the server exports the file again.
    let out = cli(
        &url,
        &[
            "import-domain-configs",
            "--source",
            f1.to_str().unwrap(),
            "--apply",
            "--prune",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert!(said(&out).contains("  - delete consumer DOMAIN_GRAPH_EVENTS/extra"));
    ok(&cli(
        &url,
        &["export-domain-configs", "--output", f2.to_str().unwrap()],
    )
    .await);
    assert_eq!(
        std::fs::read_to_string(&f2).unwrap(),
        yaml,
        "the server is the file again"
    );

    // Conflicts: a storage change, and a new stream whose subjects overlap billing's: exit 1,
    // nothing applied.
    let mut bad = doc.clone();
    bad["domains"]["graph"]["streams"]["DOMAIN_GRAPH_EVENTS"]["config"]["storage"] =
        "memory".into();
    bad["domains"]["graph"]["streams"]["DOMAIN_GRAPH_COMMANDS"] =
        serde_json::json!({ "config": { "subjects": ["billing.>"] } });
    let bad_file = work.path().join("bad.json");
    std::fs::write(&bad_file, serde_json::to_string(&bad).unwrap()).unwrap();
    let out = cli(
        &url,
        &[
            "import-domain-configs",
            "--source",
            bad_file.to_str().unwrap(),
            "--apply",
        ],
    )
    .await;
    let text = said(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("the server does not change storage of an existing stream"),
        "{text}"
    );
    assert!(
        text.contains(
            "subject billing.> overlaps subject billing.events.> of stream DOMAIN_BILLING_EVENTS"
        ),
        "{text}"
    );
    assert!(
        js.get_stream("DOMAIN_GRAPH_COMMANDS").await.is_err(),
        "nothing applied"
    );

    // Field checks: a typo, a value of the wrong type, and two new streams of the file that
    // overlap each other are conflicts; a field the server's config lacks but knows is an
    // update that applies; a stream of the domain the file lacks is listed, and kept.
    js.create_stream(jetstream::stream::Config {
        name: "DOMAIN_GRAPH_SNAPSHOTS".into(),
        subjects: vec!["graph.snapshots.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut odd = doc.clone();
    let projector = &mut odd["domains"]["graph"]["streams"]["DOMAIN_GRAPH_EVENTS"]["consumers"]["graph-projector"];
    projector["ack_polcy"] = "explicit".into();
    projector["max_ack_pending"] = "lots".into();
    odd["domains"]["graph"]["streams"]["DOMAIN_GRAPH_A"] =
        serde_json::json!({ "config": { "subjects": ["graphcmd.>"] } });
    odd["domains"]["graph"]["streams"]["DOMAIN_GRAPH_B"] =
        serde_json::json!({ "config": { "subjects": ["graphcmd.a"] } });
    let odd_file = work.path().join("odd.json");
    std::fs::write(&odd_file, serde_json::to_string(&odd).unwrap()).unwrap();
    let out = cli(
        &url,
        &[
            "import-domain-configs",
            "--source",
            odd_file.to_str().unwrap(),
        ],
    )
    .await;
    let text = said(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for line in [
        "ack_polcy is not a field of a consumer config",
        "max_ack_pending: the server holds a number, the file a string",
        "subject graphcmd.a overlaps subject graphcmd.> of stream DOMAIN_GRAPH_A in the same file",
        "  ? extra stream DOMAIN_GRAPH_SNAPSHOTS",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    let mut described = doc.clone();
    described["domains"]["graph"]["streams"]["DOMAIN_GRAPH_EVENTS"]["config"]["description"] =
        "graph events".into();
    let described_file = work.path().join("described.json");
    std::fs::write(&described_file, serde_json::to_string(&described).unwrap()).unwrap();
    let out = cli(
        &url,
        &[
            "import-domain-configs",
            "--source",
            described_file.to_str().unwrap(),
            "--apply",
        ],
    )
    .await;
    let text = said(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("      description: null → \"graph events\""),
        "{text}"
    );
    let mut stream = js.get_stream("DOMAIN_GRAPH_EVENTS").await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().config.description.as_deref(),
        Some("graph events")
    );
    assert!(
        js.get_stream("DOMAIN_GRAPH_SNAPSHOTS").await.is_ok(),
        "never deleted"
    );

    // A schema error names its line and column: exit 1.
    let typo = work.path().join("typo.yaml");
    std::fs::write(
        &typo,
        "format: cim-backup-domain-configs/1\ndomains:\n  graph:\n    streamz: {}\n",
    )
    .unwrap();
    let out = cli(
        &url,
        &["import-domain-configs", "--source", typo.to_str().unwrap()],
    )
    .await;
    let text = said(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("line 4, column") && text.contains("streamz"),
        "{text}"
    );
    service.stop().await;

    // An empty server: restore-all-configs imports the newest export of the directory.
    let older = dir.join("domains-20230101.yaml");
    std::fs::write(&older, yaml.replace("max_nodes: 100000", "max_nodes: 1")).unwrap();
    let past = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&older)
        .unwrap()
        .set_modified(past)
        .unwrap();
    let fresh = NatsServer::start().await;
    let work2 = tempfile::tempdir().unwrap();
    let service = TestService::start(test_config(&fresh.url(), work2.path(), "configs-2")).await;
    let out = cli(
        &fresh.url(),
        &["restore-all-configs", "--source", dir.to_str().unwrap()],
    )
    .await;
    let text = said(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!("importing {}", f1.display())),
        "{text}"
    );
    let restored = work2.path().join("restored.yaml");
    ok(&cli(
        &fresh.url(),
        &[
            "export-domain-configs",
            "--output",
            restored.to_str().unwrap(),
        ],
    )
    .await);
    // The read-model bucket is back, empty: graph's read model there is found by its keys
    // (a snapshot restore brings those), so until then it is not part of graph's export.
    let fresh_js = jetstream::new(fresh.client().await);
    assert!(fresh_js.get_key_value("CIM_PROJECTIONS").await.is_ok());
    let parse = |text: &str| {
        cim_backup::domain_configs::text::parse(
            text,
            cim_backup::domain_configs::text::Format::Yaml,
        )
        .unwrap()
    };
    let mut expected = parse(&yaml);
    expected
        .domains
        .get_mut("graph")
        .unwrap()
        .key_value
        .remove("CIM_PROJECTIONS");
    assert_eq!(
        parse(&std::fs::read_to_string(&restored).unwrap()),
        expected,
        "the new server holds what the file does"
    );
    service.stop().await;
}
