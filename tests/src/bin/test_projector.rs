//! A small real projector, as a CIM domain would run one: it binds to a durable pull consumer
//! of an events stream and folds each event into a KV bucket, then acknowledges it. Used by the
//! replay and rebuild tests and the rebuild benchmark; cim-backup never folds events itself.
//!
//! ```text
//! test_projector --server URL --stream S --consumer C --bucket B --prefix P [--batch N]
//!                [--delay-ms MS]
//! ```
//! (`--delay-ms` waits that long after each batch: a slow projector, for tests that interrupt
//! a rebuild midway.)
//!
//! Events are JSON `{"aggregate": "<id>", "amount": <i64>}`. The read model is one key per
//! aggregate, `<prefix><id>`, holding `{"aggregate", "events", "total", "last_event_seq"}`
//! (the documented `last_event_seq` convention): an event at or below a key's
//! `last_event_seq` is skipped, so an event delivered twice is folded once. A batch is folded
//! per key (one read and one write per key, all keys at once), then every event of it is
//! acknowledged. It prints `ready` once bound and runs until killed.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Event {
    aggregate: String,
    amount: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    aggregate: String,
    events: u64,
    total: i64,
    last_event_seq: u64,
}

struct Args {
    server: String,
    stream: String,
    consumer: String,
    bucket: String,
    prefix: String,
    batch: usize,
    delay: Duration,
}

fn args() -> Args {
    let mut map = BTreeMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        map.insert(flag.trim_start_matches("--").to_owned(), value);
    }
    let get = |k: &str| {
        map.get(k)
            .cloned()
            .unwrap_or_else(|| panic!("--{k} is required"))
    };
    Args {
        server: get("server"),
        stream: get("stream"),
        consumer: get("consumer"),
        bucket: get("bucket"),
        prefix: map.get("prefix").cloned().unwrap_or_default(),
        batch: map
            .get("batch")
            .map(|b| b.parse().expect("--batch is a number"))
            .unwrap_or(1000),
        delay: Duration::from_millis(
            map.get("delay-ms")
                .map(|d| d.parse().expect("--delay-ms is a number"))
                .unwrap_or(0),
        ),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let a = args();
    let client = async_nats::connect(&a.server).await?;
    let js = jetstream::new(client);
    let kv = js.get_key_value(&a.bucket).await?;
    println!("ready");
    loop {
        // The consumer may be recreated under us (a replay on an older server): look it up
        // again after any error.
        let consumer: PullConsumer = match js.get_consumer_from_stream(&a.consumer, &a.stream).await
        {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(e) = run(&consumer, &kv, &a).await {
            eprintln!("test_projector: {e}; binding again");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn run(consumer: &PullConsumer, kv: &jetstream::kv::Store, a: &Args) -> anyhow::Result<()> {
    loop {
        let mut fetched = consumer
            .fetch()
            .max_messages(a.batch)
            .expires(Duration::from_millis(500))
            .messages()
            .await?;
        let mut batch = Vec::new();
        while let Some(m) = fetched.next().await {
            batch.push(m.map_err(|e| anyhow::anyhow!("{e}"))?);
        }
        if batch.is_empty() {
            continue;
        }
        let mut by_key: BTreeMap<String, Vec<(u64, Event)>> = BTreeMap::new();
        for m in &batch {
            let seq = m
                .info()
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .stream_sequence;
            let event: Event = serde_json::from_slice(&m.payload)?;
            by_key
                .entry(format!("{}{}", a.prefix, event.aggregate))
                .or_default()
                .push((seq, event));
        }
        let writes = by_key.into_iter().map(|(key, events)| async move {
            let mut state: State = match kv.get(&key).await? {
                Some(bytes) => serde_json::from_slice(&bytes)?,
                None => State::default(),
            };
            let before = state.last_event_seq;
            for (seq, e) in events {
                if seq <= state.last_event_seq {
                    continue;
                }
                state.aggregate = e.aggregate;
                state.events += 1;
                state.total += e.amount;
                state.last_event_seq = seq;
            }
            if state.last_event_seq != before {
                kv.put(&key, serde_json::to_vec(&state)?.into()).await?;
            }
            anyhow::Ok(())
        });
        for written in futures::future::join_all(writes).await {
            written?;
        }
        for m in &batch {
            m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        if !a.delay.is_zero() {
            tokio::time::sleep(a.delay).await;
        }
    }
}
