//! Profiling aid: walks 200,000 in-memory native and cim-ipld events over 10,000 chains
//! (`cargo run --release -p cim-backup-domain --example walk`; use under `perf record`).

use cim_backup_contracts::events::{CheckEvent, CheckProgressed, EventEnvelope, EventMeta, JobEvent};
use cim_backup_contracts::integrity::{ChainBy, ChainProfile, ProfileKind};
use cim_backup_contracts::views::JobKind;
use cim_backup_contracts::{EventCid, JobId};
use cim_backup_domain::chain::{ChainItem, ChainWalker, profile};

fn main() {
    let (count, aggregates) = (200_000u64, 10_000u64);
    let ids: Vec<JobId> = (0..aggregates).map(|a| format!("bench-{a}").parse().unwrap()).collect();
    let mut heads: Vec<(Option<EventCid>, u64)> = vec![(None, 0); aggregates as usize];
    let time = time::OffsetDateTime::now_utc();
    let mut native = Vec::new();
    for i in 0..count {
        let a = (i % aggregates) as usize;
        let (prev, sequence) = heads[a];
        let envelope = EventEnvelope {
            aggregate_type: JobKind::Check,
            aggregate_id: ids[a].clone(),
            sequence: sequence + 1,
            prev,
            meta: EventMeta { event_id: format!("e-{i}"), time, correlation_id: ids[a].to_string(), causation_id: format!("c-{i}") },
            event: JobEvent::Check(CheckEvent::CheckProgressed(CheckProgressed { messages_done: i, findings: 0 })),
        };
        let (bytes, cid) = envelope.encode_with_cid();
        native.push((format!("chain.native.{}", ids[a]), cid.to_string(), bytes));
        heads[a] = (Some(cid), sequence + 1);
    }
    for round in 0..5 {
        let t = std::time::Instant::now();
        let mut walker = ChainWalker::new(profile(&ChainProfile::native()));
        for (i, (subject, cid, payload)) in native.iter().enumerate() {
            let lookup = |name: &str| (name == "Cim-Cid").then_some(cid.as_str());
            assert!(walker.check(ChainItem { stream_seq: i as u64 + 1, time_ns: 0, subject, headers: &lookup, payload }).is_empty());
        }
        eprintln!("native round {round}: {:.0} events/s", count as f64 / t.elapsed().as_secs_f64());
    }
    let _ = (ChainBy::Stream, ProfileKind::CimIpld);
}
