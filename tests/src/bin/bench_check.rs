//! Integrity-check benchmark: a check job over a CID-chained stream (native and cim-ipld
//! profiles), next to the limits measured in the same run on the same stream — reading it with
//! an ordered consumer (the check's own read path, nothing done with the messages), hashing its
//! payloads, and walking its chains in memory.
//!
//! ```text
//! cargo build --release -p cim-backup -p cim-backup-tests --bins
//! target/release/bench_check --events 1000000 --aggregates 10000
//! ```

use std::time::Instant;

use async_nats::jetstream;
use bytes::Bytes;
use cim_backup::engine::reader::RangeReader;
use cim_backup_contracts::cid::dag_cbor_cid;
use cim_backup_contracts::events::{
    CheckEvent, CheckProgressed, EventEnvelope, EventMeta, JobEvent,
};
use cim_backup_contracts::integrity::ChainProfile;
use cim_backup_contracts::subjects::CMD_CHECK;
use cim_backup_contracts::views::JobKind;
use cim_backup_contracts::{EventCid, JobId};
use cim_backup_domain::chain::{ChainItem, ChainWalker, profile};
use cim_backup_tests::NatsServer;
use cim_backup_tests::bench::{
    ServiceProcess, machine, peak_rss_kib, run_job, spawn_service, wait_ready,
};
use cim_backup_tests::service::Caller;
use cim_backup_tests::streams::{create_stream, publish_chained, state};
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
    let events = arg("--events", 1_000_000);
    let aggregates = arg("--aggregates", 10_000);
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let js = jetstream::new(client.clone());

    let t = Instant::now();
    create_stream(&client, "CHAIN_NATIVE", &["chain.native.>"]).await;
    publish_native(&js, "chain.native", events, aggregates).await;
    create_stream(&client, "CHAIN_IPLD", &["chain.ipld.>"]).await;
    publish_chained(&client, "chain.ipld", events, aggregates).await;
    eprintln!(
        "published 2 × {events} chained events over {aggregates} aggregates in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let archive = tempfile::tempdir()?;
    let service = ServiceProcess(spawn_service(&nats.url(), archive.path())?);
    let caller = Caller::connect(&nats.url()).await;
    wait_ready(&caller).await;

    println!("\n{}\n", machine());
    println!("{events} events over {aggregates} aggregates, interleaved\n");
    println!(
        "| profile | stream MB | check job s | check events/s | raw read events/s | hash events/s (MB/s) | in-memory walk events/s | check time ÷ raw read time |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let ipld = ChainProfile {
        chain_by: Some(cim_backup_contracts::integrity::ChainBy::SubjectToken(2)),
        ..ChainProfile::native()
    };
    let ipld = ChainProfile {
        profile: cim_backup_contracts::integrity::ProfileKind::CimIpld,
        ..ipld
    };
    for (stream, spec) in [
        ("CHAIN_NATIVE", ChainProfile::native()),
        ("CHAIN_IPLD", ipld),
    ] {
        let bytes = state(&client, stream).await.bytes;
        // The check job, timed by its own events (accepted → completed).
        let (view, check_s) = run_job(
            &caller,
            CMD_CHECK,
            json!({ "streams": [stream], "profile": spec }),
        )
        .await;
        let report = &view["reports"][0];
        assert_eq!(report["findings_total"], 0, "{report}");
        assert_eq!(report["messages_checked"], events, "{report}");
        assert_eq!(report["chains"], aggregates, "{report}");

        // Raw read: the same ordered consumer the check reads with, doing nothing else.
        let t = Instant::now();
        let mut reader = RangeReader::open(&js, stream, 1, u64::MAX).await?;
        let mut read_n = 0u64;
        while let Some(read) = reader.next().await {
            read?;
            read_n += 1;
        }
        let raw_s = t.elapsed().as_secs_f64();
        assert_eq!(read_n, events);

        // The messages in memory for the compute-only limits (not timed).
        let mut reader = RangeReader::open(&js, stream, 1, u64::MAX).await?;
        let mut kept: Vec<Kept> = Vec::with_capacity(events as usize);
        while let Some(read) = reader.next().await {
            let read = read?;
            let headers = header_list(read.message.headers.as_ref());
            kept.push(Kept {
                seq: read.seq,
                subject: read.message.subject.to_string(),
                headers,
                payload: read.message.payload.clone(),
            });
        }

        // Hashing the payloads (the CID work alone).
        let t = Instant::now();
        let mut sink = 0u8;
        for Kept { payload, .. } in &kept {
            sink ^= match spec.profile {
                cim_backup_contracts::integrity::ProfileKind::CimIpld => {
                    blake3::hash(payload).as_bytes()[0]
                }
                _ => dag_cbor_cid(payload).hash().digest()[0],
            };
        }
        let hash_s = t.elapsed().as_secs_f64();
        std::hint::black_box(sink);
        let payload_bytes: usize = kept.iter().map(|k| k.payload.len()).sum();

        // Walking the chains in memory (parse + hash + link bookkeeping, no I/O).
        let t = Instant::now();
        let mut walker = ChainWalker::new(profile(&spec));
        for Kept {
            seq,
            subject,
            headers,
            payload,
        } in &kept
        {
            let lookup = |name: &str| {
                headers
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())
            };
            let found = walker.check(ChainItem {
                stream_seq: *seq,
                time_ns: 0,
                subject,
                headers: &lookup,
                payload,
            });
            assert!(found.is_empty());
        }
        let walk_s = t.elapsed().as_secs_f64();

        let rate = |s: f64| events as f64 / s;
        let kept_n = kept.len() as f64;
        println!(
            "| {:?} | {:.0} | {check_s:.2} | {:.0} | {:.0} | {:.0} ({:.0}) | {:.0} | {:.2} |",
            spec.profile,
            bytes as f64 / 1e6,
            rate(check_s),
            rate(raw_s),
            kept_n / hash_s,
            payload_bytes as f64 / hash_s / 1e6,
            kept_n / walk_s,
            check_s / raw_s,
        );
    }
    println!(
        "\nservice peak RSS {} MiB",
        peak_rss_kib(service.0.id()) / 1024
    );
    Ok(())
}

/// A message kept in memory for the compute-only limits.
struct Kept {
    seq: u64,
    subject: String,
    headers: Vec<(String, String)>,
    payload: Bytes,
}

fn header_list(headers: Option<&async_nats::HeaderMap>) -> Vec<(String, String)> {
    headers
        .map(|h| {
            h.iter()
                .flat_map(|(k, vs)| {
                    vs.iter()
                        .map(move |v| (AsRef::<str>::as_ref(k).to_owned(), v.as_str().to_owned()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Publishes `count` events in this service's own envelope (DAG-CBOR, `prev` links, CID in
/// `Cim-Cid`), `aggregates` chains interleaved.
async fn publish_native(js: &jetstream::Context, prefix: &str, count: u64, aggregates: u64) {
    let mut heads: Vec<(Option<EventCid>, u64)> = vec![(None, 0); aggregates as usize];
    let ids: Vec<JobId> = (0..aggregates)
        .map(|a| format!("bench-{a}").parse().unwrap())
        .collect();
    let time = time::OffsetDateTime::now_utc();
    let mut acks = Vec::with_capacity(1024);
    for i in 0..count {
        let a = (i % aggregates) as usize;
        let (prev, sequence) = heads[a];
        let envelope = EventEnvelope {
            aggregate_type: JobKind::Check,
            aggregate_id: ids[a].clone(),
            sequence: sequence + 1,
            prev,
            meta: EventMeta {
                event_id: format!("e-{i}"),
                time,
                correlation_id: ids[a].to_string(),
                causation_id: format!("c-{i}"),
            },
            event: JobEvent::Check(CheckEvent::CheckProgressed(CheckProgressed {
                messages_done: i,
                findings: 0,
            })),
        };
        let (bytes, cid) = envelope.encode_with_cid();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Cim-Cid", cid.to_string().as_str());
        acks.push(
            js.publish_with_headers(format!("{prefix}.{}", ids[a]), headers, bytes.into())
                .await
                .expect("publish"),
        );
        heads[a] = (Some(cid), sequence + 1);
        if acks.len() >= 1024 {
            for ack in acks.drain(..) {
                ack.await.expect("ack");
            }
        }
    }
    for ack in acks {
        ack.await.expect("ack");
    }
}
