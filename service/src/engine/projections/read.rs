//! Reading one read model at one pinned point (docs/PROJECTIONS.md §2).
//!
//! A consumer on the bucket's stream with `deliver_policy: last_per_subject` first delivers
//! the latest message of every key as of its creation, then every later message in order. Read
//! until nothing is pending, the last message delivered is the pin: every key's last delivered
//! message is its value as of that sequence. Messages up to the stream's last sequence seen
//! before the consumer was created are the *base* (one per key); later ones are the *overlay*
//! (keys written while the model was read), which supersede base entries of the same key. So
//! no snapshot mixes values from before and after a concurrent write, whatever the bucket's
//! history setting.
//!
//! The consumer is a pull consumer without acks, not an ordered one: an ordered consumer that
//! recreates itself after a gap restarts by sequence, which would hand out older values of
//! keys as if they were the base. A gap here fails the read instead (the job resumes).

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use cim_backup_contracts::ErrorCode;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::archive::ArchiveError;
use crate::archive::projections::{BlockWriter, Digest, Entry, key_hash};
use crate::engine::error::EngineError;

/// The KV header naming a delete or purge.
const KV_OPERATION: &str = "KV-Operation";

/// Messages asked for per pull request.
const BATCH: usize = 4096;

/// One live key as an index holds it: its key hash, entry hash and value length. Sorted by key
/// hash; 32 bytes per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Indexed {
    pub key: u64,
    pub entry: u128,
    pub bytes: u32,
}

/// What reading a model found.
#[derive(Debug, Default)]
pub struct PinnedModel {
    /// The stream sequence every key's value is as of.
    pub stream_seq: u64,
    pub keys: u64,
    pub bytes: u64,
    pub digest: Digest,
    /// Keys written while the model was read (the overlay).
    pub overlaid: u64,
    /// Every live key, sorted by key hash.
    pub index: Vec<Indexed>,
}

impl PinnedModel {
    pub fn find(&self, key: u64) -> Option<usize> {
        self.index.binary_search_by_key(&key, |i| i.key).ok()
    }
}

/// Where the entries go: blocks for the base and for the overlay, or nowhere (a verify pass).
pub struct Sinks<'a, 'b> {
    pub base: &'a mut BlockWriter<'b>,
    pub overlay: &'a mut BlockWriter<'b>,
}

/// The KV subject prefix of a bucket's keys (`$KV.<bucket>.`).
pub fn key_subject_prefix(bucket: &str) -> String {
    format!("$KV.{bucket}.")
}

/// Reads `bucket` (keys under `prefix`) at one pinned point; counts progress into `seen`.
pub async fn read_model(
    js: &jetstream::Context,
    api: &crate::jsapi::JsApi,
    bucket: &str,
    prefix: &str,
    mut sinks: Option<Sinks<'_, '_>>,
    cancel: &CancellationToken,
    mut seen: impl FnMut(u64, u64),
) -> Result<PinnedModel, EngineError> {
    let stream_name = format!("KV_{bucket}");
    let Some(info) = api.stream_info(&stream_name).await? else {
        return Err(EngineError::precondition(
            ErrorCode::NotFound,
            format!("KV bucket {bucket} does not exist (no stream {stream_name})"),
        ));
    };
    let base_until = info.state.last_seq;
    let pinned = Pinned::open(js, &stream_name, bucket, prefix, false).await?;
    let result = read_all(
        pinned.consumer.clone(),
        &pinned.subjects,
        base_until,
        &mut sinks,
        cancel,
        &mut seen,
    )
    .await;
    pinned.close(js).await;
    result
}

/// A consumer delivering the last message of every key under a prefix, then what follows.
struct Pinned {
    consumer: consumer::PullConsumer,
    name: String,
    stream: String,
    subjects: String,
}

impl Pinned {
    async fn open(
        js: &jetstream::Context,
        stream_name: &str,
        bucket: &str,
        prefix: &str,
        headers_only: bool,
    ) -> Result<Pinned, EngineError> {
        // A read model's caller has the stream's info already: no second round trip.
        let stream = js
            .get_stream_no_info(stream_name)
            .await
            .map_err(EngineError::nats)?;
        let subjects = key_subject_prefix(bucket);
        let name = format!(
            "cim_backup_pin_{}",
            js.client()
                .new_inbox()
                .rsplit('.')
                .next()
                .unwrap_or_default()
        );
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                name: Some(name.clone()),
                description: Some(
                    "cim-backup: a pinned read of a read model; deleted when done".into(),
                ),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                filter_subject: format!("{subjects}{prefix}>"),
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(60),
                memory_storage: true,
                headers_only,
                ..Default::default()
            })
            .await
            .map_err(EngineError::nats)?;
        Ok(Pinned {
            consumer,
            name,
            stream: stream_name.to_owned(),
            subjects,
        })
    }

    async fn close(self, js: &jetstream::Context) {
        let _ = js
            .delete_consumer_from_stream(&self.name, &self.stream)
            .await;
    }
}

/// The next message of a pinned read, or why there is none. A server that stops sending is
/// found by the pull's idle heartbeat (two missed: an error), not by a timer per message.
async fn next_message(
    messages: &mut consumer::pull::Stream,
    subjects: &str,
) -> Result<jetstream::Message, EngineError> {
    match messages.next().await {
        Some(Ok(m)) => Ok(m),
        Some(Err(e)) => Err(EngineError::nats(format!("reading {subjects}>: {e}"))),
        None => Err(EngineError::nats(format!(
            "reading {subjects}> ended early"
        ))),
    }
}

fn is_deleted(message: &jetstream::Message) -> bool {
    crate::engine::reader::header(message.headers.as_ref(), KV_OPERATION)
        .is_some_and(|op| op == "DEL" || op == "PURGE")
}

/// Calls `visit` with every live key under `prefix` (values are not sent: headers only).
pub async fn scan_keys(
    js: &jetstream::Context,
    bucket: &str,
    prefix: &str,
    cancel: &CancellationToken,
    mut visit: impl FnMut(&str),
) -> Result<(), EngineError> {
    let stream_name = format!("KV_{bucket}");
    let mut pinned = Pinned::open(js, &stream_name, bucket, prefix, true).await?;
    let result = async {
        if pinned
            .consumer
            .info()
            .await
            .map_err(EngineError::nats)?
            .num_pending
            == 0
        {
            return Ok(());
        }
        let mut messages = messages_of(&pinned.consumer).await?;
        loop {
            if cancel.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            let message = next_message(&mut messages, &pinned.subjects).await?;
            let last = message.info().map_err(EngineError::nats)?.pending == 0;
            if !is_deleted(&message)
                && let Some(key) = message.subject.as_str().strip_prefix(&pinned.subjects)
            {
                visit(key);
            }
            if last {
                return Ok(());
            }
        }
    }
    .await;
    pinned.close(js).await;
    result
}

async fn messages_of(
    consumer: &consumer::PullConsumer,
) -> Result<consumer::pull::Stream, EngineError> {
    consumer
        .stream()
        .max_messages_per_batch(BATCH)
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await
        .map_err(EngineError::nats)
}

async fn read_all(
    mut consumer: consumer::PullConsumer,
    subjects: &str,
    base_until: u64,
    sinks: &mut Option<Sinks<'_, '_>>,
    cancel: &CancellationToken,
    seen: &mut impl FnMut(u64, u64),
) -> Result<PinnedModel, EngineError> {
    let mut model = PinnedModel {
        stream_seq: base_until,
        ..Default::default()
    };
    let pending = consumer
        .info()
        .await
        .map_err(EngineError::nats)?
        .num_pending;
    if pending == 0 {
        return Ok(model);
    }
    let mut messages = messages_of(&consumer).await?;
    let mut overlay: HashMap<String, Entry> = HashMap::new();
    let mut done = 0u64;
    loop {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let message = next_message(&mut messages, subjects).await?;
        let info = message.info().map_err(EngineError::nats)?;
        let (seq, last) = (info.stream_sequence, info.pending == 0);
        let created_ns = crate::archive::segment::nanos_of(info.published);
        let key = message
            .subject
            .as_str()
            .strip_prefix(subjects)
            .unwrap_or(message.subject.as_str())
            .to_owned();
        let deleted = is_deleted(&message);
        let entry = Entry {
            key,
            value: if deleted {
                Bytes::new()
            } else {
                message.payload.clone()
            },
            revision: seq,
            created_ns,
            deleted,
        };
        done += 1;
        if seq <= base_until {
            if !entry.deleted {
                add(&mut model, &entry);
                if let Some(s) = sinks.as_mut() {
                    s.base.push(&entry).await?;
                }
            }
        } else {
            overlay.insert(entry.key.clone(), entry);
        }
        seen(done, model.bytes);
        if last {
            model.stream_seq = seq.max(base_until);
            break;
        }
    }
    model.index.sort_unstable_by_key(|i| i.key);
    apply_overlay(&mut model, overlay, sinks).await?;
    Ok(model)
}

fn add(model: &mut PinnedModel, entry: &Entry) {
    let hash = entry.hash();
    model.digest.add(hash);
    model.keys += 1;
    model.bytes += entry.value.len() as u64;
    model.index.push(Indexed {
        key: key_hash(&entry.key),
        entry: hash,
        bytes: entry.value.len() as u32,
    });
}

/// Keys written while the base was read replace (or remove) their base entries.
async fn apply_overlay(
    model: &mut PinnedModel,
    overlay: HashMap<String, Entry>,
    sinks: &mut Option<Sinks<'_, '_>>,
) -> Result<(), ArchiveError> {
    if overlay.is_empty() {
        return Ok(());
    }
    model.overlaid = overlay.len() as u64;
    let mut entries: Vec<Entry> = overlay.into_values().collect();
    entries.sort_by_key(|e| e.revision);
    let mut superseded = Vec::new();
    for e in &entries {
        if let Some(at) = model.find(key_hash(&e.key)) {
            let old = model.index[at];
            model.digest.remove(old.entry);
            model.keys -= 1;
            model.bytes -= old.bytes as u64;
            superseded.push(at);
        }
    }
    superseded.sort_unstable();
    for at in superseded.into_iter().rev() {
        model.index.remove(at);
    }
    for e in &entries {
        if !e.deleted {
            add(model, e);
        }
        if let Some(s) = sinks.as_mut() {
            s.overlay.push(e).await?;
        }
    }
    model.index.sort_unstable_by_key(|i| i.key);
    Ok(())
}
