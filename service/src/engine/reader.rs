//! Reading a range of a stream, in order, as fast as the server sends it.
//!
//! An ordered push consumer is the fastest way to read a whole stream here (≈435k msg/s on this
//! machine, against ≈400k for batched pull and ≈240k for ordered pull; see NOTES), and it
//! recovers from gaps by itself. Messages arrive with their stream sequence and timestamp in
//! the reply subject, which is all a backup needs besides subject, headers and payload.

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;

use super::error::EngineError;

/// One message read from a stream.
pub struct ReadMessage {
    pub seq: u64,
    pub time_ns: i64,
    pub message: jetstream::Message,
}

/// Reads `from..=until` of a stream. Messages deleted inside the range are simply absent.
///
/// Its consumer is named, so that it is deleted as soon as the reader is dropped: a check or a
/// backup must not leave consumers on a stream (one left by a check once got into a server
/// snapshot and was restored with it). The ordered consumer renames itself `<name>_<n>` when it
/// recreates itself after a gap; those are deleted too.
pub struct RangeReader {
    messages: Option<consumer::push::Ordered>,
    until: u64,
    done: bool,
    /// The last sequence handed out (0 before the first).
    last_read: u64,
    cleanup: Option<Cleanup>,
}

/// What deletes a reader's consumer when the reader goes.
struct Cleanup {
    js: jetstream::Context,
    stream: String,
    name: String,
}

impl Drop for RangeReader {
    fn drop(&mut self) {
        let Some(Cleanup { js, stream, name }) = self.cleanup.take() else {
            return;
        };
        // Unsubscribe first, so that the server stops delivering to a consumer being deleted.
        drop(self.messages.take());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the runtime is gone: the consumer expires by its inactivity threshold
        };
        runtime.spawn(async move {
            if js.delete_consumer_from_stream(&name, &stream).await.is_ok() {
                return;
            }
            // Recreated after a gap under `<name>_<serial>`.
            let api = crate::jsapi::JsApi::new(js.client());
            if let Ok(names) = api.consumer_names(&stream).await {
                for other in names.iter().filter(|n| n.starts_with(&format!("{name}_"))) {
                    let _ = js.delete_consumer_from_stream(other, &stream).await;
                }
            }
        });
    }
}

impl RangeReader {
    pub async fn open(
        js: &jetstream::Context,
        stream: &str,
        from: u64,
        until: u64,
    ) -> Result<Self, EngineError> {
        let stream_handle = js.get_stream(stream).await.map_err(|e| match e.kind() {
            async_nats::jetstream::context::GetStreamErrorKind::JetStream(j)
                if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                EngineError::precondition(
                    cim_backup_contracts::ErrorCode::NotFound,
                    format!("stream {stream} does not exist (any more)"),
                )
            }
            _ => EngineError::nats(format!("stream {stream}: {e}")),
        })?;
        let inbox = js.client().new_inbox();
        let name = format!(
            "cim_backup_read_{}",
            inbox.rsplit('.').next().unwrap_or_default()
        );
        let consumer = stream_handle
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: inbox,
                name: Some(name.clone()),
                description: Some("cim-backup: reading a range; deleted when done".into()),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from.max(1),
                },
                ..Default::default()
            })
            .await
            .map_err(EngineError::nats)?;
        let cleanup = Some(Cleanup {
            js: js.clone(),
            stream: stream.to_owned(),
            name,
        });
        if consumer.cached_info().num_pending == 0 || from > until {
            return Ok(RangeReader {
                messages: None,
                until,
                done: true,
                last_read: 0,
                cleanup,
            });
        }
        let messages = consumer.messages().await.map_err(EngineError::nats)?;
        Ok(RangeReader {
            messages: Some(messages),
            until,
            done: false,
            last_read: 0,
            cleanup,
        })
    }

    /// Why reading stopped: a stream deleted under the reader is said as such (the consumer
    /// only reports a missed heartbeat); anything else is NATS failing, which a job survives
    /// by resuming once NATS is back.
    fn explain(&self, e: impl std::fmt::Display) -> impl Future<Output = EngineError> + Send {
        let error = EngineError::nats(e);
        let last_read = self.last_read;
        let target = self
            .cleanup
            .as_ref()
            .map(|c| (crate::jsapi::JsApi::new(c.js.client()), c.stream.clone()));
        async move {
            let Some((api, stream)) = target else {
                return error;
            };
            match api.stream_info(&stream).await {
                Ok(None) => EngineError::precondition(
                    cim_backup_contracts::ErrorCode::NotFound,
                    format!(
                        "stream {stream} was deleted while it was being read (after seq {last_read})"
                    ),
                ),
                _ => error,
            }
        }
    }

    /// The next message of the range, or `None` at its end.
    pub async fn next(&mut self) -> Option<Result<ReadMessage, EngineError>> {
        if self.done {
            return None;
        }
        let messages = self.messages.as_mut()?;
        let message = match messages.next().await? {
            Ok(m) => m,
            Err(e) => {
                self.done = true;
                return Some(Err(self.explain(e).await));
            }
        };
        let (seq, time_ns, pending) = match message.info() {
            Ok(info) => (
                info.stream_sequence,
                super::super::archive::segment::nanos_of(info.published),
                info.pending,
            ),
            Err(e) => {
                self.done = true;
                return Some(Err(EngineError::nats(e)));
            }
        };
        if seq > self.until {
            // Published after the cut: not part of this backup.
            self.done = true;
            return None;
        }
        if seq == self.until || pending == 0 {
            self.done = true;
        }
        self.last_read = seq;
        Some(Ok(ReadMessage {
            seq,
            time_ns,
            message,
        }))
    }
}

/// Messages per batch handed from a [`ReadAhead`]'s reading task to its consumer.
const BATCH: usize = 256;

/// A [`RangeReader`] on its own task, handing over batches: reading (the client's parsing)
/// and the caller's per-message work (hashing, chain walking) then run on both cores instead
/// of taking turns. Dropping it stops the reading task.
pub struct ReadAhead {
    batches: tokio::sync::mpsc::Receiver<Result<Vec<ReadMessage>, EngineError>>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadAhead {
    pub fn spawn(js: &jetstream::Context, stream: &str, from: u64, until: u64) -> ReadAhead {
        let (tx, batches) = tokio::sync::mpsc::channel(8);
        let (js, stream) = (js.clone(), stream.to_owned());
        let task = tokio::spawn(async move {
            let mut reader = match RangeReader::open(&js, &stream, from, until).await {
                Ok(reader) => reader,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let mut batch = Vec::with_capacity(BATCH);
            while let Some(read) = reader.next().await {
                match read {
                    Ok(message) => batch.push(message),
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
                if batch.len() == BATCH
                    && tx
                        .send(Ok(std::mem::replace(&mut batch, Vec::with_capacity(BATCH))))
                        .await
                        .is_err()
                {
                    return;
                }
            }
            if !batch.is_empty() {
                let _ = tx.send(Ok(batch)).await;
            }
        });
        ReadAhead { batches, task }
    }

    /// The next batch of the range, in order, or `None` at its end.
    pub async fn next_batch(&mut self) -> Option<Result<Vec<ReadMessage>, EngineError>> {
        self.batches.recv().await
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The first value of header `name` (exact name), found by comparing names: `HeaderMap::get`
/// builds a `HeaderName` per call, which a chain walk would pay on every message.
pub fn header<'h>(headers: Option<&'h async_nats::HeaderMap>, name: &str) -> Option<&'h str> {
    headers?
        .iter()
        .find(|(k, _)| AsRef::<str>::as_ref(*k) == name)
        .and_then(|(_, values)| values.first())
        .map(|v| v.as_str())
}
