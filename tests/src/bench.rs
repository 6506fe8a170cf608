//! What the benchmark binaries share: the service as its own process, job timing from the
//! job's own events, and the machine line every result carries.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::service::Caller;

/// The service process, killed when the bench ends (also when it panics).
pub struct ServiceProcess(pub Child);

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn spawn_service(url: &str, archive: &std::path::Path) -> anyhow::Result<Child> {
    spawn_service_with(url, archive, &[])
}

/// The service process with more `serve` arguments (`--root models=DIR`, say).
pub fn spawn_service_with(
    url: &str,
    archive: &std::path::Path,
    extra: &[String],
) -> anyhow::Result<Child> {
    let bin = std::env::current_exe()?.with_file_name("cim-backup");
    anyhow::ensure!(
        bin.exists(),
        "{} missing: run `cargo build --release -p cim-backup` first",
        bin.display()
    );
    Ok(Command::new(bin)
        .args([
            "--nats-url",
            url,
            "serve",
            "--instance",
            "bench",
            "--destination",
        ])
        .arg(format!("file://{}", archive.display()))
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?)
}

pub async fn wait_ready(caller: &Caller) {
    for _ in 0..200 {
        if caller
            .request("cim.backup.qry.jobs", &json!({}))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("service did not start");
}

/// Sends a command and times it from the job's first event to its last, as recorded.
pub async fn run_job(caller: &Caller, subject: &str, body: Value) -> (Value, f64) {
    let accepted = caller.ok(subject, body).await;
    let job_id = accepted["job_id"].as_str().unwrap().to_owned();
    let view = loop {
        let view = caller
            .ok("cim.backup.qry.job", json!({ "job_id": job_id }))
            .await;
        if ["completed", "failed", "cancelled"].contains(&view["state"].as_str().unwrap()) {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(view["state"], "completed", "{view}");
    let t = |k: &str| {
        time::OffsetDateTime::parse(
            view[k].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    let seconds = (t("finished_at") - t("accepted_at")).as_seconds_f64();
    (view, seconds)
}

pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let server = Command::new(crate::nats::nats_server_bin())
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("machine: {cores} cores, {cpu}; {server}")
}
