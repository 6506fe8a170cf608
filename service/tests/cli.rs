//! The `cim-backup` binary as users run it: the runbook's commands, `--json`, exit codes, and
//! `serve --embedded` (the README's first command) starting and stopping its own nats-server.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use cim_backup_tests::service::{TestService, ipld_chains_by_token_2, test_config};
use cim_backup_tests::streams::{assert_same_messages, create_stream, publish_events, read_all};
use cim_backup_tests::{NatsServer, init_tracing};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cim-backup");

fn cli(url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--nats-url")
        .arg(url)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run cim-backup")
}

/// Runs the CLI with a line of arguments (split on whitespace), off the async runtime.
async fn cli_line(url: &str, line: &str) -> Output {
    let url = url.to_owned();
    let args: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    tokio::task::spawn_blocking(move || {
        cli(&url, &args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap()
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[tokio::test]
async fn the_runbook_commands_work_end_to_end() {
    init_tracing();
    let nats = NatsServer::start().await;
    let archive = tempfile::tempdir().unwrap();
    let client = nats.client().await;
    create_stream(&client, "EVENTS", &["events.>"]).await;
    publish_events(&client, "events.node", 0, 800, 4).await;
    let service = TestService::start(test_config(&nats.url(), archive.path(), "node-a")).await;
    let url = nats.url();
    let u = url.clone();
    let run = move |args: Vec<&'static str>| {
        let u = u.clone();
        async move {
            tokio::task::spawn_blocking(move || cli(&u, &args))
                .await
                .unwrap()
        }
    };

    let out = run(vec![
        "--json",
        "backup-event-streams",
        "--streams",
        "EVENTS",
        "--compress",
        "zstd",
        "--wait",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let view = json(&out);
    assert_eq!(view["state"], "completed");
    assert_eq!(view["progress"]["messages_done"], 800);
    let backup_id = view["backup_id"].as_str().unwrap().to_owned();
    let job_id = view["job_id"].as_str().unwrap().to_owned();

    let out = tokio::task::spawn_blocking({
        let (url, job_id) = (url.clone(), job_id.clone());
        move || cli(&url, &["backup-status", "--job-id", &job_id])
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("completed") && text.contains(&backup_id),
        "{text}"
    );

    let out = run(vec!["--json", "list-backups", "--stream", "EVENTS"]).await;
    assert_eq!(json(&out)[0]["backup_id"], backup_id.as_str());

    let out = tokio::task::spawn_blocking({
        let (url, id) = (url.clone(), backup_id.clone());
        move || cli(&url, &["verify-backup", "--backup", &id, "--wait"])
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The runbook's shape: --source is where the backups are (a directory here).
    let out = tokio::task::spawn_blocking({
        let (url, dir) = (url.clone(), archive.path().display().to_string());
        move || {
            cli(
                &url,
                &[
                    "restore-events",
                    "--stream",
                    "EVENTS",
                    "--as",
                    "EVENTS_CLI",
                    "--source",
                    &dir,
                    "--wait",
                ],
            )
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_messages(
        &read_all(&client, "EVENTS_CLI").await,
        &read_all(&client, "EVENTS").await,
    );

    // Exit codes: 3 for a rejected request, 2 for bad usage, 1 for a job that did not complete.
    let out = run(vec!["backup-event-streams", "--streams", "NOPE"]).await;
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stream NOPE does not exist"));
    let out = run(vec!["backup-event-streams"]).await;
    assert_eq!(out.status.code(), Some(2));
    std::fs::remove_dir_all(archive.path().join("segments")).unwrap();
    let out = tokio::task::spawn_blocking({
        let (url, id) = (url.clone(), backup_id.clone());
        move || cli(&url, &["verify-backup", "--backup", &id, "--wait"])
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"));
    service.stop().await;

    // 4 when nobody answers.
    let out = run(vec!["list-jobs"]).await;
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no cim-backup service answers"));
}

#[tokio::test]
async fn serve_embedded_starts_its_own_nats_server_and_stops_it() {
    let data = tempfile::tempdir().unwrap();
    let port = cim_backup_tests::nats::free_port();
    let child = Command::new(BIN)
        .args([
            "serve",
            "--embedded",
            "--nats-port",
            &port.to_string(),
            "--instance",
            "embedded-test",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("nats://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = cli(&url, &["--json", "list-jobs"]);
        if out.status.success() {
            assert_eq!(json(&out), Value::Array(vec![]));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "embedded service not ready: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The default destination is the data directory's archive.
    let client = async_nats::connect(&url).await.unwrap();
    create_stream(&client, "DEMO", &["demo.>"]).await;
    publish_events(&client, "demo.x", 0, 50, 2).await;
    let out = cli(
        &url,
        &[
            "--json",
            "backup-event-streams",
            "--streams",
            "DEMO",
            "--wait",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        data.path()
            .join("archive/manifests")
            .read_dir()
            .unwrap()
            .count()
            == 1
    );
    drop(client);

    // A second `serve --embedded` on the same port must not serve on the first one's server
    // (its backups would land in the first one's archive): it fails, naming the port.
    let other = tempfile::tempdir().unwrap();
    let second = Command::new(BIN)
        .args(["serve", "--embedded", "--nats-port", &port.to_string()])
        .arg("--data-dir")
        .arg(other.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(4), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "no colour codes when not a terminal: {stderr:?}"
    );
    assert!(
        stderr.contains(&format!("port {port}")) && !stderr.contains("service ready"),
        "{stderr}"
    );
    assert!(
        !other.path().join("archive").exists() && !other.path().join("nats").exists(),
        "the second instance made nothing"
    );
    let out = cli(&url, &["--json", "list-jobs"]);
    assert!(out.status.success(), "the first instance still serves");

    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let served = child.wait_with_output().unwrap();
    assert!(
        served.status.success(),
        "serve exits cleanly on SIGTERM: {:?}",
        served.status
    );
    let log = String::from_utf8_lossy(&served.stderr);
    assert!(log.contains("service ready"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "no colour codes in a log that is not a terminal: {log:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "embedded nats-server stopped"
    );
}

/// The runbook's corruption scenario through the binary: check (exit 5), find the point,
/// restore from it (refused without confirmation, the plan shown), check again (exit 0), replay.
#[tokio::test]
async fn the_corruption_runbook_works_through_the_binary() {
    use cim_backup_tests::streams::{api_level, publish_chained};
    init_tracing();
    let nats = NatsServer::start().await;
    let archive = tempfile::tempdir().unwrap();
    let client = nats.client().await;
    create_stream(&client, "GRAPH", &["cim.graph.>"]).await;
    publish_chained(&client, "cim.graph", 600, 10).await;
    let js = async_nats::jetstream::new(client.clone());
    let mut config = test_config(&nats.url(), archive.path(), "node-a");
    config
        .integrity
        .streams
        .insert("GRAPH".into(), ipld_chains_by_token_2(vec![], &[]));
    let service = TestService::start(config).await;
    let url = nats.url();
    let text = |o: &Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };

    let out = cli_line(&url, "backup-event-streams --streams GRAPH --wait").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = cli_line(&url, "check-data-integrity").await;
    assert_eq!(out.status.code(), Some(0), "clean: {}", text(&out));
    assert!(
        text(&out).contains("Event Stream: OK - 600 messages in 10 chains verified"),
        "{}",
        text(&out)
    );

    js.get_stream("GRAPH")
        .await
        .unwrap()
        .delete_message(305)
        .await
        .unwrap(); // aggregate 4's 31st event
    let out = cli_line(&url, "check-data-integrity --stream GRAPH").await;
    assert_eq!(out.status.code(), Some(5), "corrupted: {}", text(&out));
    assert!(
        text(&out).contains("Event Stream: CORRUPTED - CID chain broken at seq 315"),
        "{}",
        text(&out)
    );
    let out = cli_line(
        &url,
        "--json find-corruption-point --stream GRAPH --start-seq 200",
    )
    .await;
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    // One JSON document per invocation: the report (the exit code says "corrupted").
    let found = json(&out);
    assert_eq!(found[0]["findings"][0]["stream_seq"], 315);
    assert_eq!(found[0]["findings"][0]["last_good_seq"], 295);
    assert_eq!(found[0]["findings"][0]["kind"], "sequence_gap");
    let out = cli_line(&url, "find-corruption-point --stream GRAPH --start-seq 200").await;
    assert!(
        text(&out).contains("(sequence_gap)")
            && text(&out).contains("checked    seq 200..=600, anchored"),
        "wire names, and the range checked: {}",
        text(&out)
    );
    let out = cli_line(
        &url,
        "find-corruption-point --stream GRAPH --start-seq 9000",
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("nothing to check: --start-seq 9000 is after the last sequence 600"),
        "{}",
        text(&out)
    );

    if api_level(&client).await < 5 {
        let out = cli_line(
            &url,
            "restore-from-point --stream GRAPH --sequence 296 --dry-run",
        )
        .await;
        assert_eq!(
            out.status.code(),
            Some(3),
            "refused before 2.15: {}",
            text(&out)
        );
        service.stop().await;
        return;
    }
    // Not a terminal and no --confirm: the plan is shown, nothing changes (exit 2).
    let out = cli_line(&url, "restore-from-point --stream GRAPH --sequence 296").await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("replaces  304 live messages from seq 296")
            && text(&out).contains("--confirm"),
        "{}",
        text(&out)
    );
    let out = cli_line(&url, "check-data-integrity --stream GRAPH").await;
    assert_eq!(out.status.code(), Some(5), "unchanged: {}", text(&out));

    let out = cli_line(
        &url,
        "restore-from-point --stream GRAPH --sequence 296 --confirm",
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("completed") && text(&out).contains("GRAPH_PRE_REPAIR_"),
        "{}",
        text(&out)
    );
    let out = cli_line(&url, "check-data-integrity --stream GRAPH").await;
    assert_eq!(out.status.code(), Some(0), "repaired: {}", text(&out));
    let out = cli_line(
        &url,
        "replay-corrupted-events --stream GRAPH --from-seq 296 --validate-cids --consumers none",
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "an unknown consumer is named: {}",
        text(&out)
    );
    assert!(text(&out).contains("none"), "{}", text(&out));
    service.stop().await;
}

/// The CLI talks in flags, prints times as RFC 3339 and kinds by their wire names, gives one
/// JSON document per invocation (errors in the service's shape), says the job id at once, ends
/// a followed job with a summary line, and accepts a path wherever a destination goes.
#[tokio::test]
async fn the_cli_speaks_in_flags_and_prints_one_document() {
    init_tracing();
    let nats = NatsServer::start().await;
    let archive = tempfile::tempdir().unwrap();
    let client = nats.client().await;
    create_stream(&client, "EVENTS", &["events.>"]).await;
    publish_events(&client, "events.node", 0, 500, 4).await;
    let service = TestService::start(test_config(&nats.url(), archive.path(), "node-a")).await;
    let url = nats.url();
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
    let stdout = |o: &Output| String::from_utf8_lossy(&o.stdout).into_owned();

    // A path as the destination, the job id at once, the closing summary.
    let dir = archive.path().join("by-path").display().to_string();
    let out = cli_line(
        &url,
        &format!("backup-event-streams --streams EVENTS --destination {dir} --wait"),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("following it (Ctrl-C stops following, not the job)"),
        "{}",
        stderr(&out)
    );
    let summary = stdout(&out);
    assert!(
        summary.contains("backed up 500 messages in")
            && summary.contains("stored (")
            && summary.contains("msg/s")
            && summary.contains("MB/s"),
        "{summary}"
    );
    assert!(std::path::Path::new(&dir).join("manifests").is_dir());
    let accepted = summary
        .lines()
        .find_map(|l| l.strip_prefix("accepted  "))
        .expect("accepted line");
    assert!(
        time::OffsetDateTime::parse(accepted, &time::format_description::well_known::Rfc3339)
            .is_ok(),
        "an RFC 3339 time: {accepted}"
    );

    // Mistakes named by their flags: caught here, or told by the service in the CLI's words.
    for (line, code, needle) in [
        (
            "restore-events --stream EVENTS --as X --start yesterday",
            2,
            "--start: \"yesterday\" is not an RFC 3339 time",
        ),
        (
            "restore-events --stream EVENTS --as X --start-seq 9 --end-seq 3",
            2,
            "--start-seq 9 is after --end-seq 3",
        ),
        (
            "restore-events --stream EVENTS --as X --method fast",
            2,
            "--method: \"fast\" is not known",
        ),
        (
            "restore-events --stream EVENTS --as A.B",
            3,
            "--as: \"A.B\" is not a valid stream name",
        ),
        (
            "list-jobs --state finished",
            2,
            "--state: \"finished\" is not known",
        ),
    ] {
        let out = cli_line(&url, line).await;
        assert_eq!(out.status.code(), Some(code), "{line}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{line}: {}", stderr(&out));
    }

    // --json: exactly one document, errors in the service's shape.
    let missing = archive.path().join("not-there").display().to_string();
    let out = cli_line(
        &url,
        &format!("--json list-backups --destination {missing}"),
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let error = json(&out);
    assert_eq!(error["error"]["code"], 404, "{error}");
    assert_eq!(error["error"]["kind"], "not_found");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{error}"
    );
    assert!(
        !std::path::Path::new(&missing).exists(),
        "a listing created nothing"
    );
    let out = cli_line(
        &url,
        "--json restore-events --stream EVENTS --as X --start-seq 5 --end-seq 1",
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(json(&out)["error"]["kind"], "usage");

    // Ctrl-C while following a job stops following, says the job goes on, and exits 130. (The
    // job here belongs to an instance that is not running, so it stays accepted.)
    let store = cim_backup::event_store::EventStore::open(
        async_nats::jetstream::new(client.clone()),
        &Default::default(),
    )
    .await
    .unwrap();
    let id: cim_backup_contracts::JobId = "elsewhere-job".parse().unwrap();
    let mut job =
        cim_backup::jobs::Job::<cim_backup_domain::verify::VerifyJob>::new(id.clone(), "c".into());
    let spec = cim_backup_contracts::events::VerifyAccepted {
        backup: cim_backup_contracts::cid::raw_cid(b"x"),
        source: "local".into(),
        source_url: format!("file://{}", archive.path().display()),
        mode: cim_backup_contracts::events::VerifyMode::Structural,
        admission: cim_backup_contracts::events::Admission {
            instance: "elsewhere".into(),
            idempotency_key: None,
            request_digest: "0".repeat(64),
        },
    };
    cim_backup::jobs::execute(
        &store,
        &mut job,
        cim_backup_domain::verify::VerifyCommand::Accept(spec),
        None,
    )
    .await
    .unwrap();
    let watching = Command::new(BIN)
        .args([
            "--nats-url",
            &url,
            "backup-status",
            "--job-id",
            id.as_str(),
            "--watch",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    Command::new("kill")
        .arg("-INT")
        .arg(watching.id().to_string())
        .status()
        .unwrap();
    let out = tokio::task::spawn_blocking(move || watching.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("stopped following job elsewhere-job; it goes on"),
        "{}",
        stderr(&out)
    );
    service.stop().await;
}
