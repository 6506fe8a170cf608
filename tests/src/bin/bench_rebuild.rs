//! Rebuild benchmark: `--events` events over `--aggregates` aggregates in a domain's events
//! stream, folded by the real `test_projector` process into `CIM_PROJECTIONS`. The anchor, in
//! the same run, is that projector's own first fold of the same events (it consumes them as
//! they are, with no job around it). Then a `rebuild-projections` job (pause, safety snapshot,
//! clear, move to the first event, follow until caught up) is timed from its accept to its
//! completion, as recorded, and the rebuilt bucket is compared with the one before it.
//!
//! ```text
//! cargo build --release -p cim-backup -p cim-backup-tests --bins
//! target/release/bench_rebuild --events 1000000 --aggregates 10000
//! ```

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use cim_backup_contracts::subjects::CMD_REBUILD_PROJECTIONS;
use cim_backup_tests::NatsServer;
use cim_backup_tests::bench::{
    ServiceProcess, machine, peak_rss_kib, run_job, spawn_service, wait_ready,
};
use cim_backup_tests::service::Caller;
use serde_json::{Value, json};

fn arg(name: &str, default: u64) -> u64 {
    std::env::args()
        .skip_while(|a| a != name)
        .nth(1)
        .map(|n| n.parse().expect("a number"))
        .unwrap_or(default)
}

struct Projector(Child);

impl Drop for Projector {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn consumer_info(client: &async_nats::Client) -> anyhow::Result<Value> {
    let reply = client
        .request(
            "$JS.API.CONSUMER.INFO.DOMAIN_BENCH_EVENTS.bench-projector",
            "".into(),
        )
        .await?;
    Ok(serde_json::from_slice(&reply.payload)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let events = arg("--events", 1_000_000);
    let aggregates = arg("--aggregates", 10_000);
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    js.create_stream(jetstream::stream::Config {
        name: "DOMAIN_BENCH_EVENTS".into(),
        subjects: vec!["bench.events.>".into()],
        ..Default::default()
    })
    .await?;
    let store = js
        .create_key_value(kv::Config {
            bucket: "CIM_PROJECTIONS".into(),
            ..Default::default()
        })
        .await?;

    let t = Instant::now();
    let mut acks = std::collections::VecDeque::new();
    for i in 0..events {
        let a = i % aggregates;
        let event = format!("{{\"aggregate\":\"a{a}\",\"amount\":{}}}", i % 13);
        acks.push_back(
            js.publish(format!("bench.events.a{a}"), event.into())
                .await?,
        );
        if acks.len() >= 4096 {
            acks.pop_front().unwrap().await?;
        }
    }
    for ack in acks {
        ack.await?;
    }
    eprintln!(
        "published {events} events in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    js.get_stream("DOMAIN_BENCH_EVENTS")
        .await?
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("bench-projector".into()),
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await?;
    let bin = std::env::current_exe()?.with_file_name("test_projector");
    let mut child = Command::new(bin)
        .args([
            "--server",
            &nats.url(),
            "--stream",
            "DOMAIN_BENCH_EVENTS",
            "--consumer",
            "bench-projector",
            "--bucket",
            "CIM_PROJECTIONS",
            "--prefix",
            "bench.",
            "--batch",
            "2000",
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    let _stdout = child.stdout.take();
    let _projector = Projector(child);

    // The anchor: the projector's own first fold of every event.
    let t = Instant::now();
    loop {
        let info = consumer_info(&client).await?;
        if info["num_pending"] == 0 && info["num_ack_pending"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fold_s = t.elapsed().as_secs_f64();
    let before = cim_backup_tests::kv_contents(&store, "bench.").await;
    anyhow::ensure!(before.len() as u64 == aggregates.min(events));

    let archive = tempfile::tempdir()?;
    let service = ServiceProcess(spawn_service(&nats.url(), archive.path())?);
    let caller = Caller::connect(&nats.url()).await;
    wait_ready(&caller).await;
    let (view, rebuild_s) = run_job(
        &caller,
        CMD_REBUILD_PROJECTIONS,
        json!({ "domains": ["bench"], "from_beginning": true, "confirm": true,
                "batch_size": 10000, "checkpoint_interval": 100000 }),
    )
    .await;
    anyhow::ensure!(view["progress"]["messages_done"] == events, "{view}");
    let after = cim_backup_tests::kv_contents(&store, "bench.").await;
    anyhow::ensure!(
        after == before,
        "the rebuilt bucket differs from the one before"
    );
    let rss = peak_rss_kib(service.0.id());

    println!("\n{}\n", machine());
    println!(
        "{events} events over {aggregates} aggregates; test_projector, batches of 2000; rebuilt bucket equal to the one before: yes\n"
    );
    println!(
        "| projector's own first fold s | events/s | rebuild job s (pause, safety snapshot, clear, replay) | events/s | rebuild ÷ first fold | service peak RSS MiB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {fold_s:.2} | {:.0} | {rebuild_s:.2} | {:.0} | {:.2}× | {} |",
        events as f64 / fold_s,
        events as f64 / rebuild_s,
        rebuild_s / fold_s,
        rss / 1024
    );
    Ok(())
}
