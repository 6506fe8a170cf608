//! The server's own stream snapshot (`$JS.API.STREAM.SNAPSHOT`), received chunk by chunk; and a
//! server-side copy of a stream built on it (snapshot → restore under another name), which
//! keeps every sequence, timestamp, header and consumer at the server's speed.

use bytes::Bytes;
use futures::StreamExt as _;
use serde_json::Value;

use super::context::Context;
use super::error::EngineError;
use super::restore::server_archive::Upload;

/// How long a snapshot may send nothing before it counts as stalled.
const STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// The stream's state as the snapshot captured it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotState {
    pub first_seq: u64,
    pub last_seq: u64,
    pub messages: u64,
    pub bytes: u64,
}

/// A snapshot being received.
pub struct ServerSnapshot {
    client: async_nats::Client,
    stream: String,
    chunks: async_nats::Subscriber,
    pub state: SnapshotState,
    finished: bool,
}

impl ServerSnapshot {
    /// Asks the server for a snapshot of `stream`, with its consumers or without.
    pub async fn start(
        ctx: &Context,
        stream: &str,
        with_consumers: bool,
    ) -> Result<ServerSnapshot, EngineError> {
        let inbox = ctx.client.new_inbox();
        let chunks = ctx
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(EngineError::nats)?;
        let request = serde_json::json!({ "deliver_subject": inbox, "no_consumers": !with_consumers, "chunk_size": 128 * 1024, "jsck": false });
        let reply = ctx
            .api
            .raw(format!("$JS.API.STREAM.SNAPSHOT.{stream}"), request)
            .await?;
        let state = |k: &str| {
            reply
                .pointer(&format!("/state/{k}"))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        Ok(ServerSnapshot {
            client: ctx.client.clone(),
            stream: stream.to_owned(),
            chunks,
            state: SnapshotState {
                first_seq: state("first_seq"),
                last_seq: state("last_seq"),
                messages: state("messages"),
                bytes: state("bytes"),
            },
            finished: false,
        })
    }

    /// The next chunk (acknowledged, so the server sends on), or `None` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, EngineError> {
        if self.finished {
            return Ok(None);
        }
        let stream = &self.stream;
        let chunk = tokio::time::timeout(STALL, self.chunks.next())
            .await
            .map_err(|_| {
                EngineError::nats(format!(
                    "the snapshot of {stream} stalled (no data for {} s)",
                    STALL.as_secs()
                ))
            })?
            .ok_or_else(|| EngineError::nats("the snapshot subscription closed"))?;
        if let Some(status) = chunk.status.filter(|s| s.as_u16() != 204) {
            return Err(EngineError::nats(format!(
                "snapshot of {stream}: status {} {}",
                status.as_u16(),
                chunk.description.unwrap_or_default()
            )));
        }
        if chunk.payload.is_empty() {
            self.finished = true;
            return Ok(None);
        }
        if let Some(reply) = chunk.reply {
            self.client
                .publish(reply, Bytes::new())
                .await
                .map_err(EngineError::nats)?;
        }
        Ok(Some(chunk.payload))
    }
}

/// Copies stream `from` into a new stream with `config` (whose `name` is the copy's), without
/// its consumers (a copy of a push consumer would deliver everything twice), through the server
/// (needs nats-server 2.15+ to restore under another name). Returns the state copied.
pub async fn copy_stream(
    ctx: &Context,
    from: &str,
    config: &Value,
) -> Result<SnapshotState, EngineError> {
    let mut snapshot = ServerSnapshot::start(ctx, from, false).await?;
    let mut upload = Upload::passthrough(&ctx.api, config).await?;
    while let Some(chunk) = snapshot.next_chunk().await? {
        upload.raw(&chunk).await?;
    }
    upload.finish().await?;
    Ok(snapshot.state)
}
