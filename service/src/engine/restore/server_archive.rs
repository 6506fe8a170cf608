//! Restore through the server: our segments become a per-message stream archive (ADR-63,
//! `NATSARC1`, nats-server 2.15+) uploaded to `$JS.API.STREAM.RESTORE.<target>`. The server stores
//! every message with its original sequence and timestamp and headers byte for byte, leaves the
//! gaps, and recreates the consumers with their positions — the full-fidelity path.
//!
//! # Format written (the subset the server reads)
//! An S2/Snappy framed stream (we write Snappy framing, which the server accepts) whose
//! content is `NATSARC1` followed by entries
//! `uvarint name_len | zigzag varint time_ns | uvarint seq | uvarint hdr_len | uvarint payload_len
//! | name | headers | payload`: first `state.json` (seq 0), then one `consumers/<name>` per
//! consumer (`{"config","state"}`), then the messages (name = subject) in ascending sequence, then
//! an all-zero sentinel. Missing sequences are gaps; sequences after the last message up to
//! `state.last_seq` are gaps too.
//!
//! The upload is all or nothing: the server creates the stream only when the sentinel arrives
//! and drops it if the upload stops (it aborts after 5 s without data — while segments are
//! fetched, empty padding chunks keep the upload alive).

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use cim_backup_contracts::ErrorCode;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::archive::record::Record;
use crate::engine::error::EngineError;
use crate::jsapi::JsApi;

/// Bytes per upload chunk (below the default 1 MiB max_payload).
const CHUNK: usize = 256 * 1024;
/// Chunks awaiting their ack at once.
const WINDOW: usize = 4;
/// Send a padding chunk when nothing was sent for this long (the server gives up after 5 s).
const KEEPALIVE: Duration = Duration::from_secs(2);
/// A Snappy framing padding chunk of length 0: skipped by the reader.
const PADDING: [u8; 4] = [0xfe, 0, 0, 0];

/// An archive upload in progress.
pub struct Upload {
    client: async_nats::Client,
    deliver: String,
    encoder: snap::write::FrameEncoder<Vec<u8>>,
    /// Chunks are published in order with reply subjects `<inbox>.<n>`; their acks arrive here.
    inbox: String,
    acks: async_nats::Subscriber,
    sent: u64,
    acked: u64,
    last_send: Instant,
    entry: Vec<u8>,
    /// Whether we write a NATSARC1 archive (else raw snapshot bytes are passed through).
    archive: bool,
}

fn failed(message: impl std::fmt::Display) -> EngineError {
    EngineError::precondition(ErrorCode::Unavailable, format!("server restore: {message}"))
}

impl Upload {
    /// Asks the server to restore `config` (whose `name` is the target) and writes the archive
    /// head: `state.json` and the consumers.
    pub async fn begin(
        api: &JsApi,
        config: &Value,
        first_seq: u64,
        last_seq: u64,
        consumers: &[(String, Value)],
    ) -> Result<Upload, EngineError> {
        let mut upload = Self::open(api, config, Some(5)).await?;
        upload.archive = true;
        upload.write_raw(b"NATSARC1");
        let state = json!({ "messages": 0, "bytes": 0, "first_seq": first_seq, "last_seq": last_seq, "consumer_count": consumers.len() });
        upload.entry("state.json", 0, 0, b"", state.to_string().as_bytes());
        for (name, consumer) in consumers {
            upload.entry(
                &format!("consumers/{name}"),
                0,
                0,
                b"",
                consumer.to_string().as_bytes(),
            );
        }
        upload.pump().await?;
        Ok(upload)
    }

    /// Asks the server to restore `config` from bytes the caller passes through (a server
    /// snapshot, in the format of the server that took it).
    pub async fn passthrough(api: &JsApi, config: &Value) -> Result<Upload, EngineError> {
        Self::open(api, config, None).await
    }

    async fn open(
        api: &JsApi,
        config: &Value,
        api_level: Option<u32>,
    ) -> Result<Upload, EngineError> {
        let name = config["name"].as_str().unwrap_or_default().to_owned();
        let mut headers = async_nats::HeaderMap::new();
        if let Some(level) = api_level {
            // Servers before API level 5 would misread the archive; with this they refuse.
            headers.insert("Nats-Required-Api-Level", level.to_string().as_str());
        }
        let body = serde_json::to_vec(&json!({ "config": config, "state": {} })).expect("json");
        let client = api.client().clone();
        // The server lets an abandoned upload of the same stream go after 5 s without data
        // (a restarted job meets its own): wait for that instead of failing.
        let deadline = Instant::now() + Duration::from_secs(20);
        let deliver = loop {
            match Self::request(&client, &name, headers.clone(), body.clone()).await {
                Err(e) if Instant::now() < deadline && e.to_string().contains("in progress") => {
                    tracing::info!(stream = %name, error = %e, "waiting for an earlier restore of the stream to be let go");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                other => break other?,
            }
        };
        let inbox = client.new_inbox();
        let acks = client
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(failed)?;
        Ok(Upload {
            client,
            deliver,
            encoder: snap::write::FrameEncoder::new(Vec::with_capacity(2 * CHUNK)),
            inbox,
            acks,
            sent: 0,
            acked: 0,
            last_send: Instant::now(),
            entry: Vec::with_capacity(64 * 1024),
            archive: false,
        })
    }

    /// Asks the server to restore a stream; returns the subject to send the data to.
    async fn request(
        client: &async_nats::Client,
        name: &str,
        headers: async_nats::HeaderMap,
        body: Vec<u8>,
    ) -> Result<String, EngineError> {
        let reply = tokio::time::timeout(
            Duration::from_secs(30),
            client.request_with_headers(
                format!("$JS.API.STREAM.RESTORE.{name}"),
                headers,
                body.into(),
            ),
        )
        .await
        .map_err(|_| failed("no answer to the restore request"))?
        .map_err(failed)?;
        let reply: Value = serde_json::from_slice(&reply.payload).map_err(failed)?;
        if let Some(error) = reply.get("error") {
            return Err(failed(
                error
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or("refused"),
            ));
        }
        Ok(reply["deliver_subject"]
            .as_str()
            .ok_or_else(|| failed("no deliver subject in the reply"))?
            .to_owned())
    }

    /// Sends bytes as they are (passthrough uploads).
    pub async fn raw(&mut self, bytes: &[u8]) -> Result<(), EngineError> {
        for chunk in bytes.chunks(CHUNK) {
            self.send(Bytes::copy_from_slice(chunk)).await?;
        }
        Ok(())
    }

    fn write_raw(&mut self, bytes: &[u8]) {
        self.encoder.write_all(bytes).expect("writing to memory");
    }

    fn entry(&mut self, name: &str, time_ns: i64, seq: u64, headers: &[u8], payload: &[u8]) {
        let e = &mut self.entry;
        e.clear();
        uvarint(e, name.len() as u64);
        uvarint(e, ((time_ns << 1) ^ (time_ns >> 63)) as u64);
        uvarint(e, seq);
        uvarint(e, headers.len() as u64);
        uvarint(e, payload.len() as u64);
        e.extend_from_slice(name.as_bytes());
        e.extend_from_slice(headers);
        e.extend_from_slice(payload);
        let entry = std::mem::take(&mut self.entry);
        self.write_raw(&entry);
        self.entry = entry;
    }

    /// Adds one message (its stored headers block and payload, as archived).
    pub async fn message(&mut self, record: &Record<'_>) -> Result<(), EngineError> {
        self.entry(
            record.subject,
            record.time_ns,
            record.seq,
            record.headers,
            record.payload,
        );
        self.pump().await
    }

    /// Sends whole frames once a chunk's worth is ready.
    async fn pump(&mut self) -> Result<(), EngineError> {
        if self.encoder.get_ref().len() >= CHUNK {
            let chunk = std::mem::take(self.encoder.get_mut());
            self.send(chunk.into()).await?;
        }
        Ok(())
    }

    /// Keeps the upload alive while the caller waits for something slow (archive uploads only:
    /// a padding chunk is valid framing there; a passthrough snapshot cannot be padded).
    pub async fn keepalive(&mut self) -> Result<(), EngineError> {
        if self.archive && self.last_send.elapsed() >= KEEPALIVE {
            self.send(Bytes::from_static(&PADDING)).await?;
        }
        Ok(())
    }

    /// Publishes a chunk (in order: the archive is one byte stream), with at most [`WINDOW`]
    /// chunks awaiting their ack.
    async fn send(&mut self, chunk: Bytes) -> Result<(), EngineError> {
        if self.sent - self.acked >= WINDOW as u64 {
            self.settle_one().await?;
        }
        let reply = format!("{}.{}", self.inbox, self.sent);
        self.client
            .publish_with_reply(self.deliver.clone(), reply, chunk)
            .await
            .map_err(failed)?;
        self.sent += 1;
        self.last_send = Instant::now();
        Ok(())
    }

    async fn settle_one(&mut self) -> Result<(), EngineError> {
        use futures::StreamExt;
        if self.acked == self.sent {
            return Ok(());
        }
        let reply = tokio::time::timeout(Duration::from_secs(60), self.acks.next())
            .await
            .map_err(|_| failed("no ack for a chunk within 60 s"))?
            .ok_or_else(|| failed("the ack subscription closed"))?;
        self.acked += 1;
        if !reply.payload.is_empty() {
            let value: Value = serde_json::from_slice(&reply.payload).unwrap_or(Value::Null);
            let reason = value
                .pointer("/error/description")
                .and_then(Value::as_str)
                .unwrap_or("chunk refused");
            return Err(failed(reason));
        }
        Ok(())
    }

    /// Writes the sentinel, sends the rest and the end marker, and waits for the server to
    /// finish. Returns the new stream's info (as the server replied).
    pub async fn finish(mut self) -> Result<Value, EngineError> {
        if self.archive {
            self.entry("", 0, 0, b"", b"");
            self.encoder.flush().map_err(failed)?;
            let rest = std::mem::take(self.encoder.get_mut());
            if !rest.is_empty() {
                self.send(rest.into()).await?;
            }
        }
        while self.acked < self.sent {
            self.settle_one().await?;
        }
        let done = tokio::time::timeout(
            Duration::from_secs(600),
            self.client.request(self.deliver.clone(), Bytes::new()),
        )
        .await
        .map_err(|_| failed("the server did not finish within 10 minutes"))?
        .map_err(failed)?;
        let value: Value = serde_json::from_slice(&done.payload).map_err(failed)?;
        if let Some(error) = value.get("error") {
            return Err(failed(
                error
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or("restore failed"),
            ));
        }
        Ok(value)
    }
}

/// The `consumers/<name>` entry of a saved consumer starting after `ack_floor`: everything after
/// it is delivered again (positions beyond the restored range are clamped by the caller).
pub fn consumer_entry(
    config: &str,
    ack_floor_stream_seq: u64,
    ack_floor_consumer_seq: u64,
) -> Result<(String, Value), EngineError> {
    let config: Value = serde_json::from_str(config).map_err(|e| {
        EngineError::precondition(
            ErrorCode::Corrupt,
            format!("a saved consumer config is not JSON: {e}"),
        )
    })?;
    let name = config["durable_name"]
        .as_str()
        .or(config["name"].as_str())
        .unwrap_or_default()
        .to_owned();
    let position =
        json!({ "consumer_seq": ack_floor_consumer_seq, "stream_seq": ack_floor_stream_seq });
    Ok((
        name,
        json!({ "config": config, "state": { "delivered": position, "ack_floor": position } }),
    ))
}

fn uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_match_the_adr_63_worked_example() {
        // subject `orders.new`, ts 1700000000000000000, seq 1, no headers, body `hi`
        let mut e = Vec::new();
        let ts: i64 = 1_700_000_000_000_000_000;
        uvarint(&mut e, 10);
        uvarint(&mut e, ((ts << 1) ^ (ts >> 63)) as u64);
        uvarint(&mut e, 1);
        uvarint(&mut e, 0);
        uvarint(&mut e, 2);
        e.extend_from_slice(b"orders.newhi");
        let hex: String = e.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "0a8080d0e2c6bfce972f0100026f72646572732e6e65776869");
    }
}
