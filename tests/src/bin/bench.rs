//! Throughput benchmark: our backup, verify and restore of a stream of CIM-like events, against
//! the server's own snapshot and restore of the same stream, measured in the same run.
//!
//! ```text
//! cargo build --release -p cim-backup
//! cargo run --release -p cim-backup-tests --bin bench -- --messages 100000
//! ```
//! The service runs as its own process (the release `cim-backup` binary next to this one), so
//! its peak RSS is its own. Times are taken from the job's events (accepted → completed), not
//! from polling. Prints a Markdown table for BENCHMARKS.md.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use cim_backup::jsapi::JsApi;
use cim_backup_contracts::subjects::{CMD_RESTORE, CMD_START, CMD_VERIFY};
use cim_backup_tests::NatsServer;
use cim_backup_tests::bench::{
    ServiceProcess, machine, peak_rss_kib, run_job, spawn_service, wait_ready,
};
use cim_backup_tests::service::Caller;
use cim_backup_tests::streams::{create_stream, publish_events, state};
use futures::StreamExt;
use serde_json::{Value, json};

struct Row {
    what: &'static str,
    seconds: f64,
    messages: u64,
    bytes: u64,
    note: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let messages: u64 = std::env::args()
        .skip_while(|a| a != "--messages")
        .nth(1)
        .map(|n| n.parse().expect("--messages N"))
        .unwrap_or(100_000);
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    let api = JsApi::new(client.clone());
    create_stream(&client, "BENCH", &["bench.>"]).await;
    let t = Instant::now();
    publish_events(&client, "bench.node", 0, messages, 1_000).await;
    let publish_s = t.elapsed().as_secs_f64();
    let source = state(&client, "BENCH").await;
    eprintln!(
        "published {messages} events ({} bytes) in {publish_s:.1} s",
        source.bytes
    );

    let archive = tempfile::tempdir()?;
    let service = ServiceProcess(spawn_service(&nats.url(), archive.path())?);
    let caller = Caller::connect(&nats.url()).await;
    wait_ready(&caller).await;
    let mut rows = Vec::new();

    let (view, seconds) = run_job(&caller, CMD_START, json!({ "streams": ["BENCH"] })).await;
    let backup_id = view["backup_id"]
        .as_str()
        .expect("backup completed")
        .to_owned();
    let stored = dir_size(archive.path());
    rows.push(Row {
        what: "cim-backup full backup",
        seconds,
        messages,
        bytes: source.bytes,
        note: format!(
            "{} stored ({:.2}x smaller than the stream)",
            human(stored),
            source.bytes as f64 / stored as f64
        ),
    });

    let (_, seconds) = run_job(&caller, CMD_VERIFY, json!({ "backup": backup_id })).await;
    rows.push(Row {
        what: "cim-backup verify (deep)",
        seconds,
        messages,
        bytes: stored,
        note: "re-hash, decompress, check every record".into(),
    });

    let (_, seconds) = run_job(
        &caller,
        CMD_RESTORE,
        json!({ "backup": backup_id, "stream": "BENCH", "as": "BENCH_R" }),
    )
    .await;
    rows.push(Row {
        what: "cim-backup restore (server-archive)",
        seconds,
        messages,
        bytes: source.bytes,
        note: "sequences, gaps, timestamps, headers exact".into(),
    });
    api.delete_stream("BENCH_R").await?;
    let (_, seconds) = run_job(
        &caller,
        CMD_RESTORE,
        json!({ "backup": backup_id, "stream": "BENCH", "as": "BENCH_R", "method": "publish" }),
    )
    .await;
    rows.push(Row {
        what: "cim-backup restore (publish)",
        seconds,
        messages,
        bytes: source.bytes,
        note: "the path for servers before 2.15".into(),
    });
    api.delete_stream("BENCH_R").await?;

    // 1% more, then an incremental backup: its time should follow the delta, not the stream.
    let delta = (messages / 100).max(1);
    publish_events(&client, "bench.node", messages, delta, 1_000).await;
    let before = dir_size(archive.path());
    let (view, seconds) = run_job(&caller, CMD_START, json!({ "streams": ["BENCH"] })).await;
    assert_eq!(
        view["progress"]["messages_done"], delta,
        "incremental stores only the delta"
    );
    rows.push(Row {
        what: "cim-backup incremental backup (+1%)",
        seconds,
        messages: delta,
        bytes: delta * (source.bytes / messages.max(1)),
        note: format!("{} stored", human(dir_size(archive.path()) - before)),
    });
    let rss = peak_rss_kib(service.0.id());
    drop(service);

    // The anchor: the server's own snapshot and restore of the same stream (what
    // `nats stream backup/restore` does), through the raw API.
    let info = api.stream_info("BENCH").await?.expect("stream");
    let messages = info.state.messages;
    let t = Instant::now();
    let chunks = server_snapshot(&client, "BENCH").await?;
    let seconds = t.elapsed().as_secs_f64();
    let snapshot_bytes: u64 = chunks.iter().map(|c| c.len() as u64).sum();
    rows.push(Row {
        what: "server snapshot ($JS.API.STREAM.SNAPSHOT)",
        seconds,
        messages,
        bytes: source.bytes,
        note: format!("{} archive", human(snapshot_bytes)),
    });
    js.delete_stream("BENCH").await?;
    let t = Instant::now();
    server_restore(&client, &info.config, &chunks).await?;
    let seconds = t.elapsed().as_secs_f64();
    let restored = state(&client, "BENCH").await;
    assert_eq!(restored.messages, messages, "server restore is complete");
    rows.push(Row {
        what: "server restore ($JS.API.STREAM.RESTORE)",
        seconds,
        messages,
        bytes: source.bytes,
        note: String::new(),
    });

    println!("{}", machine());
    println!(
        "{} CIM-like events, {} in the stream ({} B per message on average); +1% before the incremental and the server's snapshot\n",
        source.messages,
        human(source.bytes),
        source.bytes / source.messages.max(1)
    );
    println!("| operation | seconds | msg/s | MB/s | notes |");
    println!("|---|---:|---:|---:|---|");
    for r in &rows {
        println!(
            "| {} | {:.2} | {:.0} | {:.1} | {} |",
            r.what,
            r.seconds,
            r.messages as f64 / r.seconds,
            r.bytes as f64 / r.seconds / 1e6,
            r.note
        );
    }
    let rate = |name: &str| {
        rows.iter()
            .find(|r| r.what.starts_with(name))
            .map(|r| r.messages as f64 / r.seconds)
            .unwrap()
    };
    println!(
        "\nratios (our msg/s ÷ the server's, same run): backup / server snapshot = {:.2}; restore (server-archive) / server restore = {:.2}; restore (publish) / server restore = {:.2}; service peak RSS {} MiB",
        rate("cim-backup full") / rate("server snapshot"),
        rate("cim-backup restore (server-archive)") / rate("server restore"),
        rate("cim-backup restore (publish)") / rate("server restore"),
        rss / 1024
    );
    Ok(())
}

async fn server_snapshot(client: &async_nats::Client, stream: &str) -> anyhow::Result<Vec<Bytes>> {
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await?;
    let body = json!({ "deliver_subject": inbox, "no_consumers": true, "chunk_size": 128 * 1024, "jsck": false });
    let reply = client
        .request(
            format!("$JS.API.STREAM.SNAPSHOT.{stream}"),
            serde_json::to_vec(&body)?.into(),
        )
        .await?;
    let reply: Value = serde_json::from_slice(&reply.payload)?;
    anyhow::ensure!(reply.get("error").is_none(), "snapshot refused: {reply}");
    let mut chunks = Vec::new();
    while let Some(m) = sub.next().await {
        if m.payload.is_empty() {
            break; // end marker (status 204)
        }
        if let Some(reply) = m.reply.clone() {
            client.publish(reply, Bytes::new()).await?;
        }
        chunks.push(m.payload);
    }
    Ok(chunks)
}

async fn server_restore(
    client: &async_nats::Client,
    config: &Value,
    chunks: &[Bytes],
) -> anyhow::Result<()> {
    let name = config["name"].as_str().unwrap();
    let body = json!({ "config": config, "state": {} });
    let reply = client
        .request(
            format!("$JS.API.STREAM.RESTORE.{name}"),
            serde_json::to_vec(&body)?.into(),
        )
        .await?;
    let reply: Value = serde_json::from_slice(&reply.payload)?;
    let deliver = reply["deliver_subject"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("restore refused: {reply}"))?
        .to_owned();
    for chunk in chunks {
        client.request(deliver.clone(), chunk.clone()).await?;
    }
    let done = tokio::time::timeout(
        Duration::from_secs(600),
        client.request(deliver, Bytes::new()),
    )
    .await??;
    let done: Value = serde_json::from_slice(&done.payload)?;
    anyhow::ensure!(done.get("error").is_none(), "restore failed: {done}");
    Ok(())
}

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        dir_size(&e.path())
                    } else {
                        e.metadata().map(|m| m.len()).unwrap_or(0)
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

fn human(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}
