//! Test streams with CIM-like events, and reading streams back for comparison.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use cim_backup::jsapi::JsApi;
use futures::StreamExt;
use serde_json::json;

/// Creates a file stream `name` on `subjects`.
pub async fn create_stream(client: &async_nats::Client, name: &str, subjects: &[&str]) {
    JsApi::new(client.clone())
        .create_stream(
            &json!({ "name": name, "subjects": subjects, "storage": "file", "num_replicas": 1 }),
        )
        .await
        .unwrap_or_else(|e| panic!("create stream {name}: {e}"));
}

/// Deterministic pseudo-random numbers (splitmix64), so test events vary like real ones
/// (real ids are random UUIDs; identical filler would make compression look far too good).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn uuid_v7_like(seed: u64) -> String {
    let (a, b) = (mix(seed), mix(seed ^ 0xdead_beef));
    format!(
        "{:08x}-{:04x}-7{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    )
}

/// A CIM-like domain event of about 400 bytes of JSON, with random-looking ids and values.
pub fn cim_event(i: u64, aggregate: u64) -> Bytes {
    let r = mix(i);
    let body = json!({
        "event_id": uuid_v7_like(i),
        "aggregate_id": uuid_v7_like(aggregate << 32),
        "aggregate_type": "Node",
        "event_type": "NodePropertiesUpdated",
        "sequence": i,
        "correlation_id": format!("correlation:{}", uuid_v7_like(i / 10 + (1 << 40))),
        "causation_id": format!("causation:{}", uuid_v7_like(i.wrapping_sub(1))),
        "occurred_at": format!("2026-11-25T12:{:02}:{:02}.{:06}Z", (i / 60_000_000) % 60, (i / 1_000_000) % 60, i % 1_000_000),
        "payload": {
            "node": aggregate,
            "properties": { "label": format!("node-{aggregate}"), "weight": r % 10_000, "score": (r >> 20) % 1_000_000, "tags": ["graph", "cim", "domain"] }
        }
    });
    Bytes::from(serde_json::to_vec(&body).unwrap())
}

/// Headers like the ones CIM modules set.
pub fn cim_headers(i: u64, aggregate: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("Nats-Msg-Id", format!("evt-{i}").as_str());
    h.insert("Cim-Event-Type", "NodePropertiesUpdated");
    h.insert("Cim-Aggregate-Id", format!("{aggregate}").as_str());
    h.insert(
        "Cim-Correlation-Id",
        format!("correlation:{}", i / 10).as_str(),
    );
    h
}

/// Publishes `count` CIM-like events on `<prefix>.<aggregate>` starting at index `start`
/// (pipelined, every ack checked).
pub async fn publish_events(
    client: &async_nats::Client,
    prefix: &str,
    start: u64,
    count: u64,
    aggregates: u64,
) {
    let js = jetstream::new(client.clone());
    let mut acks = Vec::with_capacity(1024);
    for i in start..start + count {
        let aggregate = i % aggregates;
        let ack = js
            .publish_with_headers(
                format!("{prefix}.{aggregate}"),
                cim_headers(i, aggregate),
                cim_event(i, aggregate),
            )
            .await
            .expect("publish");
        acks.push(ack);
        if acks.len() >= 1024 {
            for ack in acks.drain(..) {
                ack.await.expect("publish ack");
            }
        }
    }
    for ack in acks {
        ack.await.expect("publish ack");
    }
}

/// One stored message, headers sorted for comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub seq: u64,
    pub subject: String,
    pub headers: Vec<(String, Vec<String>)>,
    pub payload: Bytes,
}

/// Every message of a stream, in order, with its sequence.
pub async fn read_all(client: &async_nats::Client, stream: &str) -> Vec<StoredMessage> {
    let js = jetstream::new(client.clone());
    let stream = js.get_stream(stream).await.expect("stream exists");
    let consumer = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let pending = consumer.cached_info().num_pending;
    let mut out = Vec::with_capacity(pending as usize);
    if pending == 0 {
        return out;
    }
    let mut messages = consumer.messages().await.expect("messages");
    while let Some(m) = messages.next().await {
        let m = m.expect("message");
        let info = m.info().expect("info");
        let (seq, remaining) = (info.stream_sequence, info.pending);
        let mut headers: Vec<(String, Vec<String>)> = m
            .headers
            .as_ref()
            .map(|h| {
                h.iter()
                    .map(|(k, v)| {
                        (
                            AsRef::<str>::as_ref(k).to_owned(),
                            v.iter().map(|x| x.as_str().to_owned()).collect(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        headers.sort();
        out.push(StoredMessage {
            seq,
            subject: m.subject.to_string(),
            headers,
            payload: m.payload.clone(),
        });
        if remaining == 0 {
            break;
        }
    }
    out
}

/// The state of a stream (messages, first/last seq).
pub async fn state(client: &async_nats::Client, stream: &str) -> cim_backup::jsapi::StreamState {
    JsApi::new(client.clone())
        .stream_info(stream)
        .await
        .expect("stream info")
        .expect("stream exists")
        .state
}

/// Asserts two streams hold the same messages, naming the first difference (instead of
/// printing thousands of messages).
#[track_caller]
pub fn assert_same_messages(got: &[StoredMessage], expected: &[StoredMessage]) {
    if let Some(i) = got.iter().zip(expected).position(|(a, b)| a != b) {
        panic!(
            "message {i} differs:\n  got      {:?}\n  expected {:?}",
            got[i], expected[i]
        );
    }
    assert_eq!(
        got.len(),
        expected.len(),
        "message counts differ (the common prefix is equal)"
    );
}

/// Header the `publish` restore method adds (the original timestamp); the `server-archive`
/// method keeps timestamps natively and adds nothing.
pub const ORIGINAL_TIME_HEADER: &str = "Cim-Original-Time";

/// Asserts a restored stream holds the original's messages, whichever restore method the
/// server made the service choose (on servers before 2.15 it is `publish`, which adds the
/// original-time header; nothing else may differ).
#[track_caller]
pub fn assert_restored(restored: &[StoredMessage], original: &[StoredMessage]) {
    let stripped: Vec<StoredMessage> = restored
        .iter()
        .cloned()
        .map(|mut m| {
            m.headers.retain(|(n, _)| n != ORIGINAL_TIME_HEADER);
            m
        })
        .collect();
    assert_same_messages(&stripped, original);
}

/// The JetStream API level of the server (5 = nats-server 2.15, which restores per-message
/// archives).
pub async fn api_level(client: &async_nats::Client) -> u64 {
    JsApi::new(client.clone())
        .api_level()
        .await
        .expect("api level")
}

/// A cim-ipld `ChainedContent` message: its JSON payload and CID (CIDv1, private codec 0x0200,
/// BLAKE3-256 over the serde_json bytes of `{content, previous_cid, sequence}`).
pub fn chained_content(
    content: &serde_json::Value,
    previous: Option<&str>,
    sequence: u64,
) -> (Bytes, String) {
    let content = serde_json::to_string(content).unwrap();
    let previous = serde_json::to_string(&previous).unwrap();
    let hashed =
        format!("{{\"content\":{content},\"previous_cid\":{previous},\"sequence\":{sequence}}}");
    let digest = blake3::hash(hashed.as_bytes());
    let mh = cid::multihash::Multihash::<64>::wrap(0x1e, digest.as_bytes()).unwrap();
    let cid = cid::Cid::new_v1(0x0200, mh).to_string();
    let payload = format!(
        "{{\"content\":{content},\"cid\":\"{cid}\",\"previous_cid\":{previous},\"sequence\":{sequence},\"timestamp\":\"2026-11-25T12:00:00Z\"}}"
    );
    (Bytes::from(payload), cid)
}

/// Publishes `count` cim-ipld chained events over `aggregates` chains on `<prefix>.<aggregate>`;
/// returns each chain's last CID and the stream sequence of its last event.
pub async fn publish_chained(
    client: &async_nats::Client,
    prefix: &str,
    count: u64,
    aggregates: u64,
) -> Vec<(String, u64)> {
    let js = jetstream::new(client.clone());
    let mut heads: Vec<(Option<String>, u64, u64)> = vec![(None, 0, 0); aggregates as usize];
    let mut acks = Vec::new();
    for i in 0..count {
        let a = (i % aggregates) as usize;
        let (prev, next_sequence, _) = heads[a].clone();
        let content = json!({ "node": a, "label": format!("node-{i}"), "weight": i % 97 });
        let (payload, cid) = chained_content(&content, prev.as_deref(), next_sequence);
        acks.push((
            a,
            js.publish(format!("{prefix}.{a}"), payload)
                .await
                .expect("publish"),
        ));
        heads[a] = (Some(cid), next_sequence + 1, 0);
        if acks.len() >= 512 {
            for (a, ack) in acks.drain(..) {
                heads[a].2 = ack.await.expect("ack").sequence;
            }
        }
    }
    for (a, ack) in acks {
        heads[a].2 = ack.await.expect("ack").sequence;
    }
    heads
        .into_iter()
        .map(|(cid, _, seq)| (cid.unwrap_or_default(), seq))
        .collect()
}

/// Publishes, on `<prefix>.<aggregate>`, the next event of a cim-ipld chain whose content was
/// changed after its CID was computed (a tampered event); returns its stream sequence.
pub async fn publish_tampered(
    client: &async_nats::Client,
    prefix: &str,
    aggregate: usize,
    previous: &str,
    sequence: u64,
) -> u64 {
    let (genuine, _) = chained_content(
        &json!({ "node": aggregate, "label": "real" }),
        Some(previous),
        sequence,
    );
    let tampered = String::from_utf8(genuine.to_vec())
        .unwrap()
        .replace("\"real\"", "\"fake\"");
    let js = jetstream::new(client.clone());
    js.publish(format!("{prefix}.{aggregate}"), tampered.into())
        .await
        .expect("publish")
        .await
        .expect("ack")
        .sequence
}
