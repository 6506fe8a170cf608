//! Projection snapshot benchmark: a snapshot job of one read model (a KV bucket of `--keys`
//! keys), next to a raw read of the bucket's stream in the same run (an ordered consumer from
//! the first message to the last, nothing done with the messages); then a restore of that
//! snapshot into an empty bucket with `--verify`. Peak RSS of the service process is reported.
//!
//! ```text
//! cargo build --release -p cim-backup -p cim-backup-tests --bins
//! target/release/bench_projections --keys 1000000 --value-bytes 200
//! ```

use std::time::Instant;

use async_nats::jetstream::{self, kv};
use cim_backup::engine::reader::RangeReader;
use cim_backup_contracts::subjects::{CMD_RESTORE_PROJECTIONS, CMD_SNAPSHOT_PROJECTIONS};
use cim_backup_tests::NatsServer;
use cim_backup_tests::bench::{
    ServiceProcess, machine, peak_rss_kib, run_job, spawn_service_with, wait_ready,
};
use cim_backup_tests::service::Caller;
use serde_json::json;

fn arg(name: &str, default: u64) -> u64 {
    std::env::args()
        .skip_while(|a| a != name)
        .nth(1)
        .map(|n| n.parse().expect("a number"))
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let keys = arg("--keys", 1_000_000);
    let value_bytes = arg("--value-bytes", 200) as usize;
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    for bucket in ["BENCH_MODEL", "BENCH_COPY"] {
        js.create_key_value(kv::Config {
            bucket: bucket.into(),
            ..Default::default()
        })
        .await?;
    }

    // Fill: JSON values of about `value_bytes`, published with many acks in flight.
    let t = Instant::now();
    let pad = "x".repeat(value_bytes.saturating_sub(60));
    let mut acks = std::collections::VecDeque::new();
    for i in 0..keys {
        let value = format!(
            "{{\"id\":{i},\"last_event_seq\":{i},\"name\":\"node-{i}\",\"pad\":\"{pad}\"}}"
        );
        acks.push_back(
            js.publish(format!("$KV.BENCH_MODEL.node.{i}"), value.into())
                .await?,
        );
        if acks.len() >= 4096 {
            acks.pop_front().unwrap().await?;
        }
    }
    for ack in acks {
        ack.await?;
    }
    eprintln!("filled {keys} keys in {:.1} s", t.elapsed().as_secs_f64());

    let work = tempfile::tempdir()?;
    let config = work.path().join("config.toml");
    std::fs::write(
        &config,
        "[domains.bench.projections]\nModel = { bucket = \"BENCH_MODEL\" }\n",
    )?;
    let archive = work.path().join("archive");
    let service = ServiceProcess(spawn_service_with(
        &nats.url(),
        &archive,
        &["--config".into(), config.display().to_string()],
    )?);
    let caller = Caller::connect(&nats.url()).await;
    wait_ready(&caller).await;

    // Raw read of the bucket's stream: the anchor.
    let t = Instant::now();
    let mut reader = RangeReader::open(&js, "KV_BENCH_MODEL", 1, u64::MAX).await?;
    let mut read_n = 0u64;
    while let Some(read) = reader.next().await {
        read?;
        read_n += 1;
    }
    let raw_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(read_n == keys, "raw read saw {read_n} of {keys}");

    let (view, snapshot_s) = run_job(
        &caller,
        CMD_SNAPSHOT_PROJECTIONS,
        json!({ "domains": ["bench"] }),
    )
    .await;
    let snap = &view["snapshots"][0];
    anyhow::ensure!(snap["models"][0]["keys"] == keys, "{snap}");
    let id = snap["id"].as_str().unwrap().to_owned();
    let stored: u64 = walk_size(&archive);

    let (view, restore_s) = run_job(
        &caller,
        CMD_RESTORE_PROJECTIONS,
        json!({ "snapshot": id, "domain": "bench", "as": {"Model": "BENCH_COPY"}, "verify": true }),
    )
    .await;
    anyhow::ensure!(view["verified"] == true, "{view}");
    anyhow::ensure!(view["restored"][0]["restored"] == keys, "{view}");
    let rss = peak_rss_kib(service.0.id());

    println!("\n{}\n", machine());
    println!("{keys} keys of ~{value_bytes} B in one KV bucket (history 1)\n");
    println!(
        "| raw read of KV stream s | snapshot job s | snapshot keys/s | snapshot ÷ raw read | stored MB | restore (+ safety snapshot, verify) s | restore keys/s | service peak RSS MiB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {raw_s:.2} | {snapshot_s:.2} | {:.0} | {:.2}× | {:.1} | {restore_s:.2} | {:.0} | {} |",
        keys as f64 / snapshot_s,
        snapshot_s / raw_s,
        stored as f64 / 1e6,
        keys as f64 / restore_s,
        rss / 1024
    );
    Ok(())
}

/// Bytes of every file under `dir`.
fn walk_size(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                total += walk_size(&p);
            } else if let Ok(m) = e.metadata() {
                total += m.len();
            }
        }
    }
    total
}
