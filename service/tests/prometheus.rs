//! `backup-prometheus` and `restore-prometheus` against a real Prometheus (Debian's package,
//! installed by scripts/install-tools --tests): the snapshot is taken through the admin API,
//! backed up and removed from the server's disk; a restore into the data directory of the
//! running server is refused; a restore elsewhere brings the series back (`promtool tsdb list`,
//! and a query to a second Prometheus started on the restored directory).

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use cim_backup::config::PrometheusConfig;
use cim_backup_tests::files::ok;
use cim_backup_tests::service::{TestService, test_config};
use cim_backup_tests::{NatsServer, init_tracing};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cim-backup");

async fn cli(url: &str, args: &[&str]) -> Output {
    cim_backup_tests::files::cli(BIN, url, args).await
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// (status line, body) of a GET; a chunked body is put back together.
fn http_get(port: u16, path: &str) -> Option<(String, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status = head.lines().next()?.to_owned();
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Some((status, body.to_owned()));
    }
    let mut joined = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).ok()?;
        if n == 0 {
            break;
        }
        joined.push_str(after.get(..n)?);
        rest = after.get(n..)?.trim_start_matches("\r\n");
    }
    Some((status, joined))
}

/// Starts Prometheus on `data_dir`, scraping itself when `scrape`.
fn start_prometheus(data_dir: &Path, port: u16, scrape: bool, config_dir: &Path) -> Prometheus {
    let config = config_dir.join(format!("prometheus-{port}.yml"));
    let body = if scrape {
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: self\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        )
    } else {
        "global:\n  scrape_interval: 1h\n".to_owned()
    };
    std::fs::write(&config, body).unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", data_dir.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--web.enable-admin-api")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(
            "prometheus is installed by scripts/install-tools --tests (Debian package prometheus)",
        );
    let p = Prometheus(child);
    for _ in 0..200 {
        if http_get(port, "/-/ready").is_some_and(|(status, _)| status.contains(" 200")) {
            return p;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("prometheus on {port} did not become ready");
}

#[tokio::test]
async fn prometheus_is_backed_up_by_snapshot_and_its_series_come_back() {
    init_tracing();
    let nats = NatsServer::start().await;
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("metrics2");
    std::fs::create_dir(&data).unwrap();
    let port = free_port();
    let prometheus = start_prometheus(&data, port, true, root.path());
    // Until it has scraped itself a few times (its first scrape can take seconds).
    let mut samples = 0;
    for _ in 0..300 {
        if let Some((_, body)) = http_get(port, "/api/v1/query?query=count_over_time(up[1m])") {
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            samples = v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
            if samples >= 3 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(samples >= 3, "prometheus never scraped itself");

    let archive = tempfile::tempdir().unwrap();
    let mut config = test_config(&nats.url(), archive.path(), "mon-1");
    config
        .files
        .roots
        .insert("prometheus".into(), root.path().to_owned());
    config.prometheus = Some(PrometheusConfig {
        url: format!("http://127.0.0.1:{port}"),
        data_dir: data.clone(),
    });
    let service = TestService::start(config).await;
    let url = nats.url();

    let out = ok(&cli(&url, &["--json", "backup-prometheus"]).await);
    let view: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(view["state"], "completed", "{view}");
    let backup_id = view["backup_id"].as_str().unwrap().to_owned();
    let left: Vec<_> = std::fs::read_dir(data.join("snapshots")).unwrap().collect();
    assert!(
        left.is_empty(),
        "the server's snapshot is removed once stored: {left:?}"
    );
    let entries: Value =
        serde_json::from_str(&ok(&cli(&url, &["--json", "list-backups"]).await)).unwrap();
    let tree = &entries[0]["trees"][0];
    assert!(
        tree["path"]
            .as_str()
            .unwrap()
            .starts_with("metrics2/snapshots/"),
        "{tree}"
    );
    assert!(
        tree["files"].as_u64().unwrap() >= 3,
        "a block: meta.json, index, chunks: {tree}"
    );

    // Not into the data directory of the running server.
    let out = cli(
        &url,
        &[
            "restore-prometheus",
            "--backup",
            &backup_id,
            "--data-dir",
            data.to_str().unwrap(),
            "--overwrite",
        ],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        data.join("wal").is_dir() && data.join("chunks_head").is_dir(),
        "the live data directory is untouched"
    );

    // Elsewhere: promtool reads the blocks, and a Prometheus on it answers a query.
    let restored = root.path().join("restored");
    ok(&cli(
        &url,
        &[
            "restore-prometheus",
            "--backup",
            &backup_id,
            "--data-dir",
            restored.to_str().unwrap(),
        ],
    )
    .await);
    let listed = Command::new("promtool")
        .args(["tsdb", "list"])
        .arg(&restored)
        .output()
        .unwrap();
    let listed_text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success() && listed_text.lines().count() >= 2,
        "promtool tsdb list: {listed_text}"
    );
    drop(prometheus);
    let port2 = free_port();
    let _second = start_prometheus(&restored, port2, false, root.path());
    let (_, answer) = http_get(port2, "/api/v1/query?query=count(prometheus_build_info)").unwrap();
    let body: Value = serde_json::from_str(&answer).unwrap_or_default();
    assert_eq!(body["status"], "success", "{answer}");
    assert!(
        !body["data"]["result"].as_array().unwrap().is_empty(),
        "the series came back: {answer}"
    );
    service.stop().await;
}
