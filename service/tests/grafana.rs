//! `backup-grafana` as the runbook uses it (`--include-datasources --output FILE.tar.gz`): every
//! folder, dashboard (by uid), alert rule and datasource in a tar.gz that `tar -xzf` reads,
//! the same export in the archive, and the staging directory gone afterwards, also when the
//! job is cancelled; refusals (token, role, server down, output) before any job exists.
//!
//! No Grafana server package exists on the registries this project installs from, so these
//! tests run against `cim_backup_tests::grafana::FakeGrafana`: a small HTTP server on a real
//! socket serving Grafana's documented API (search paging capped below the limit asked, 401
//! without the token, 403 on datasources for a viewer). Everything else is real: nats-server,
//! the service, the CLI binary, the archive on disk, and `tar`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cim_backup::config::GrafanaConfig;
use cim_backup_contracts::subjects::files_commands;
use cim_backup_tests::files::ok;
use cim_backup_tests::grafana::{FakeGrafana, GrafanaData, PAGE_CAP};
use cim_backup_tests::service::{Caller, TestService, test_config};
use cim_backup_tests::{NatsServer, init_tracing};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_cim-backup");

async fn cli(url: &str, args: &[&str]) -> Output {
    cim_backup_tests::files::cli(BIN, url, args).await
}

/// A host with an `exports` root (outputs) and a `grafana` root (staging), and a service
/// configured for `grafana` with the token in `token`.
struct Host {
    dir: tempfile::TempDir,
    _archive: tempfile::TempDir,
    _service: TestService,
}

impl Host {
    async fn start(nats: &NatsServer, grafana_url: &str, token: &str) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let archive = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("exports")).unwrap();
        std::fs::create_dir(dir.path().join("staging")).unwrap();
        let token_file = dir.path().join("grafana.token");
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        let mut config = test_config(&nats.url(), archive.path(), "monitor-1");
        let roots = &mut config.files.roots;
        roots.insert("exports".into(), dir.path().join("exports"));
        roots.insert("grafana".into(), dir.path().join("staging"));
        config.grafana = Some(GrafanaConfig {
            url: grafana_url.to_owned(),
            token_file: Some(token_file),
            staging_dir: dir.path().join("staging"),
        });
        let service = TestService::start(config).await;
        Host {
            dir,
            _archive: archive,
            _service: service,
        }
    }

    fn output(&self, name: &str) -> PathBuf {
        self.dir.path().join("exports").join(name)
    }

    fn staged(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("staging"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }
}

fn extract(archive: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    let x = Command::new("tar")
        .arg("-xzf")
        .arg(archive)
        .arg("-C")
        .arg(into)
        .output()
        .unwrap();
    assert!(
        x.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&x.stderr)
    );
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn grafana_becomes_a_tar_gz_with_every_dashboard_folder_rule_and_datasource() {
    init_tracing();
    let nats = NatsServer::start().await;
    let data = GrafanaData::sample(3, 20);
    let grafana = FakeGrafana::start(data.clone()).await;
    let host = Host::start(&nats, &grafana.url, &grafana.token).await;
    let url = nats.url();

    let out = host.output("20261202.tar.gz");
    let view: Value = serde_json::from_str(&ok(&cli(
        &url,
        &[
            "--json",
            "backup-grafana",
            "--include-datasources",
            "--output",
            out.to_str().unwrap(),
        ],
    )
    .await))
    .unwrap();
    assert_eq!(view["state"], "completed", "{view}");
    assert!(
        host.staged().is_empty(),
        "the staged export is removed once stored: {:?}",
        host.staged()
    );

    let restore = host.dir.path().join("restore");
    extract(&out, &restore);
    let top = restore.join("grafana");
    // Every dashboard by uid, exactly as Grafana answered (dashboard and meta).
    let dashboards = files_in(&top.join("dashboards"));
    assert_eq!(dashboards.len(), 20, "{dashboards:?}");
    for d in &data.dashboards {
        let uid = d["dashboard"]["uid"].as_str().unwrap();
        assert_eq!(&read_json(&top.join(format!("dashboards/{uid}.json"))), d);
    }
    for f in &data.folders {
        let uid = f["uid"].as_str().unwrap();
        assert_eq!(&read_json(&top.join(format!("folders/{uid}.json"))), f);
    }
    for r in &data.alert_rules {
        let uid = r["uid"].as_str().unwrap();
        assert_eq!(&read_json(&top.join(format!("alert-rules/{uid}.json"))), r);
    }
    for s in &data.datasources {
        let uid = s["uid"].as_str().unwrap();
        assert_eq!(&read_json(&top.join(format!("datasources/{uid}.json"))), s);
    }
    let about = read_json(&top.join("backup.json"));
    assert_eq!(about["format"], "cim-backup-grafana/1");
    assert_eq!(about["grafana_version"], "11.3.0");
    assert_eq!(
        about["counts"],
        json!({"folders": 3, "dashboards": 20, "alert_rules": 3, "datasources": 2})
    );
    // 20 dashboards at most 7 a page: pages 1, 2, 3 and the empty page 4 were all asked for.
    let pages = grafana
        .served()
        .iter()
        .filter(|t| t.starts_with("/api/search?type=dash-db") && t.contains("&page="))
        .count();
    assert_eq!(pages, 20usize.div_ceil(PAGE_CAP) + 1);

    // The same export is a tree of a backup in the catalog.
    let listed = ok(&cli(&url, &["--json", "list-backups"]).await);
    assert!(
        listed.contains("\"grafana/grafana-"),
        "the backup holds the tree: {listed}"
    );

    // Without --include-datasources there are none, and backup.json says so.
    let out2 = host.output("no-datasources.tar.gz");
    let view: Value = serde_json::from_str(&ok(&cli(
        &url,
        &[
            "--json",
            "backup-grafana",
            "--output",
            out2.to_str().unwrap(),
        ],
    )
    .await))
    .unwrap();
    assert_eq!(view["state"], "completed", "{view}");
    let restore2 = host.dir.path().join("restore2");
    extract(&out2, &restore2);
    assert!(!restore2.join("grafana/datasources").exists());
    let about = read_json(&restore2.join("grafana/backup.json"));
    assert_eq!(about["include_datasources"], false);
    assert_eq!(about["counts"]["datasources"], Value::Null);
    assert_eq!(files_in(&restore2.join("grafana/dashboards")).len(), 20);
}

#[tokio::test]
async fn refusals_name_what_was_wrong_and_keep_nothing() {
    init_tracing();
    let nats = NatsServer::start().await;
    let grafana = FakeGrafana::start(GrafanaData::sample(1, 3)).await;
    let url = nats.url();

    // A viewer's token reads dashboards but not datasources: the 403 is named.
    let host = Host::start(&nats, &grafana.url, &grafana.viewer_token).await;
    let out = host.output("viewer.tar.gz");
    let run = cli(
        &url,
        &[
            "backup-grafana",
            "--include-datasources",
            "--output",
            out.to_str().unwrap(),
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("/api/datasources") && stderr.contains("HTTP 403"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing written for a refused export");
    assert!(host.staged().is_empty(), "{:?}", host.staged());

    // The output must be a .tar.gz (or .tar.gz.age), and the flag is named.
    let run = cli(
        &url,
        &[
            "backup-grafana",
            "--output",
            host.output("x.zip").to_str().unwrap(),
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("--output") && stderr.contains(".tar.gz"),
        "{stderr}"
    );

    // An existing output is never overwritten: 409, the file untouched.
    let existing = host.output("exists.tar.gz");
    std::fs::write(&existing, b"an earlier export").unwrap();
    let run = cli(
        &url,
        &["backup-grafana", "--output", existing.to_str().unwrap()],
    )
    .await;
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("exists"), "{stderr}");
    assert_eq!(std::fs::read(&existing).unwrap(), b"an earlier export");

    // Outside every root: the CLI finds no instance for it, and the service itself says 403.
    let run = cli(
        &url,
        &["backup-grafana", "--output", "/tmp/elsewhere.tar.gz"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--output") && stderr.contains("no instance serves a root that holds it"),
        "{stderr}"
    );
    let c = Caller::connect(&url).await;
    let subject = format!("{}.grafana", files_commands("monitor-1"));
    for (body, code, says) in [
        (
            json!({"output": "/tmp/elsewhere.tar.gz"}),
            403,
            "not inside any of this instance's roots",
        ),
        (
            json!({"output": "/tmp/x.tar.gz", "url": "http://evil"}),
            400,
            "url",
        ),
        (json!({}), 400, "output"),
    ] {
        let (status, message) = c.err(&subject, body.clone()).await;
        assert_eq!(status, code, "{body}: {message}");
        assert!(message.contains(says), "{body}: {message}");
    }

    // A server that is down: 5xx, said as such, nothing kept.
    grafana.stop();
    let run = cli(&url, &["backup-grafana", "--output", out.to_str().unwrap()]).await;
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("did not answer"), "{stderr}");
    assert!(!out.exists());
    assert!(host.staged().is_empty(), "{:?}", host.staged());
    let jobs = ok(&cli(&url, &["--json", "list-jobs"]).await);
    assert!(
        !jobs.contains("grafana"),
        "no job for a refused request: {jobs}"
    );
}

#[tokio::test]
async fn a_wrong_token_is_refused_by_name() {
    init_tracing();
    let nats = NatsServer::start().await;
    let grafana = FakeGrafana::start(GrafanaData::sample(1, 2)).await;
    let host = Host::start(&nats, &grafana.url, "glsa_wrong").await;
    let out = host.output("wrong.tar.gz");
    let run = cli(
        &nats.url(),
        &["backup-grafana", "--output", out.to_str().unwrap()],
    )
    .await;
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("refused the token") && stderr.contains("token_file"),
        "{stderr}"
    );
    assert!(!out.exists());
    assert!(host.staged().is_empty(), "{:?}", host.staged());
}

#[tokio::test]
async fn a_cancelled_backup_leaves_no_export_staged() {
    init_tracing();
    let nats = NatsServer::start().await;
    // Big enough that the backup is still running when the cancel arrives: 8 dashboards of
    // 16 MiB of incompressible text each.
    let mut data = GrafanaData::sample(1, 8);
    for (i, d) in data.dashboards.iter_mut().enumerate() {
        let blob: String = cim_backup_tests::files::noise(12 << 20, i as u64 + 1)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()[..16 << 20]
            .to_owned();
        d["dashboard"]["description"] = json!(blob);
    }
    let grafana = FakeGrafana::start(data).await;
    let host = Host::start(&nats, &grafana.url, &grafana.token).await;
    let url = nats.url();
    let out = host.output("cancelled.tar.gz");
    let accepted: Value = serde_json::from_str(&ok(&cli(
        &url,
        &[
            "--json",
            "backup-grafana",
            "--no-wait",
            "--output",
            out.to_str().unwrap(),
        ],
    )
    .await))
    .unwrap();
    let job_id = accepted["job_id"].as_str().expect("a job id").to_owned();
    ok(&cli(&url, &["cancel-job", "--job-id", &job_id]).await);
    let view = Caller::connect(&url)
        .await
        .wait_job(&job_id, std::time::Duration::from_secs(120))
        .await;
    assert_eq!(
        view.state,
        cim_backup_contracts::views::JobState::Cancelled,
        "{view:?}"
    );
    assert!(
        host.staged().is_empty(),
        "a cancelled backup removes the export it staged: {:?}",
        host.staged()
    );
    assert!(!out.exists(), "no tar.gz for a cancelled backup");
}
