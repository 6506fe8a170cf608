//! Reading stored messages without leaving server state behind, and consistently.
//!
//! Queries (`qry.job`, `qry.jobs`, `qry.backups`, cancel lookups) must not create consumers that
//! outlive them: an ephemeral consumer lingers for its inactivity threshold, and a burst of
//! lookups then exhausts the server's consumer limits for everyone. And a reload after an
//! optimistic-concurrency conflict must see the write that won. So:
//! - a stream with one replica that allows direct gets (our event stream and view buckets on a
//!   single server) answers **batch direct gets** (`$JS.API.DIRECT.GET.<stream>` with `batch` and
//!   `next_by_subj`, nats-server 2.11+): requests only;
//! - a replicated stream answers direct gets from any replica, which may lag the leader, so
//!   single messages come from `$JS.API.STREAM.MSG.GET.<stream>` (the leader), and longer reads
//!   from a pull consumer that is deleted as soon as the read ends (at most [`SCANS`] at once
//!   per process, so a burst waits instead of piling consumers up).

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::jsapi::JsApiError;

/// Consumer-backed reads that may run at once in this process.
pub const SCANS: usize = 8;

fn scans() -> &'static Semaphore {
    static SCANS_RUNNING: Semaphore = Semaphore::const_new(SCANS);
    &SCANS_RUNNING
}

/// Messages asked for per batch direct get.
const PAGE: usize = 512;
/// JetStream error code for "no message found".
const NO_MESSAGE_FOUND: u64 = 10037;

/// One stored message as a direct read returns it.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub seq: u64,
    pub subject: String,
    /// The message's own headers (a direct get adds `Nats-Stream`, `Nats-Sequence`, … beside
    /// them; they are kept, as readers look names up).
    pub headers: Option<HeaderMap>,
    pub payload: Bytes,
}

impl StoredMessage {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::engine::reader::header(self.headers.as_ref(), name)
    }
}

/// Consistent reads of one stream that leave nothing behind.
#[derive(Clone)]
pub struct Lookup {
    client: Client,
    stream: String,
    /// Direct gets are answered consistently: the stream allows them and has one replica.
    direct: bool,
    timeout: Duration,
}

impl Lookup {
    /// Reads of `stream`, asking the server how they can be made.
    pub async fn of(api: &crate::jsapi::JsApi, stream: &str) -> Result<Lookup, JsApiError> {
        let config = api.stream_info(stream).await?.map(|i| i.config);
        let direct = config.as_ref().is_some_and(|c| {
            c.get("allow_direct") == Some(&Value::Bool(true))
                && c.get("num_replicas").and_then(Value::as_u64).unwrap_or(1) <= 1
        });
        Ok(Lookup {
            client: api.client().clone(),
            stream: stream.to_owned(),
            direct,
            timeout: Duration::from_secs(10),
        })
    }

    fn transport(&self, message: impl std::fmt::Display) -> JsApiError {
        JsApiError::Transport {
            subject: format!("reading stream {}", self.stream),
            message: message.to_string(),
        }
    }

    /// The newest message on `filter` (wildcards allowed), if any.
    pub async fn last(&self, filter: &str) -> Result<Option<StoredMessage>, JsApiError> {
        let request = json!({ "last_by_subj": filter });
        if self.direct {
            Ok(self.direct_get(&request).await?.into_iter().next())
        } else {
            self.msg_get(request).await
        }
    }

    /// Every message on `filter` from sequence `from` on, in order.
    pub async fn all(&self, filter: &str, from: u64) -> Result<Vec<StoredMessage>, JsApiError> {
        if !self.direct {
            return self.scan(filter, from).await;
        }
        // Paged until a page comes back empty: a page can hold fewer than asked for when the
        // server caps its bytes, so a short page is not the end.
        let mut out = Vec::new();
        let mut next = from.max(1);
        loop {
            let page = self
                .direct_get(&json!({ "seq": next, "next_by_subj": filter, "batch": PAGE }))
                .await?;
            match page.last() {
                Some(last) => next = last.seq + 1,
                None => return Ok(out),
            }
            out.extend(page);
        }
    }

    /// A read through a pull consumer of the leader, deleted when the read ends.
    async fn scan(&self, filter: &str, from: u64) -> Result<Vec<StoredMessage>, JsApiError> {
        let _permit = scans()
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let js = jetstream::new(self.client.clone());
        let stream = js
            .get_stream(&self.stream)
            .await
            .map_err(|e| self.transport(e))?;
        let mut reader = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: filter.to_owned(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from.max(1),
                },
                ack_policy: consumer::AckPolicy::None,
                memory_storage: true,
                inactive_threshold: Duration::from_secs(10),
                description: Some("cim-backup: one lookup, deleted when done".into()),
                ..Default::default()
            })
            .await
            .map_err(|e| self.transport(e))?;
        let name = reader.cached_info().name.clone();
        let result = self.drain(&mut reader).await;
        if let Err(e) = stream.delete_consumer(&name).await {
            tracing::debug!(stream = %self.stream, consumer = %name, error = %e, "could not delete a lookup consumer (it expires by itself)");
        }
        result
    }

    async fn drain(
        &self,
        reader: &mut consumer::PullConsumer,
    ) -> Result<Vec<StoredMessage>, JsApiError> {
        let pending = reader.cached_info().num_pending as usize;
        let mut out = Vec::with_capacity(pending);
        // On a cluster a new consumer can take a moment before its leader answers.
        let mut not_ready = 0;
        while out.len() < pending {
            let fetched = reader
                .fetch()
                .max_messages(PAGE.min(pending - out.len()))
                .expires(self.timeout)
                .messages()
                .await;
            let mut batch = match fetched {
                Ok(batch) => batch,
                Err(e) if not_ready < 40 => {
                    not_ready += 1;
                    tracing::debug!(error = %e, "lookup consumer not ready yet");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(self.transport(e)),
            };
            let before = out.len();
            let mut retry = false;
            while let Some(message) = batch.next().await {
                let message = match message {
                    Ok(message) => message,
                    Err(e) if out.len() == before && not_ready < 40 => {
                        not_ready += 1;
                        tracing::debug!(error = %e, "lookup consumer not ready yet");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        retry = true;
                        break;
                    }
                    Err(e) => return Err(self.transport(e)),
                };
                let seq = message
                    .info()
                    .map_err(|e| self.transport(e))?
                    .stream_sequence;
                let message = message.split().0;
                out.push(StoredMessage {
                    seq,
                    subject: message.subject.to_string(),
                    headers: message.headers,
                    payload: message.payload,
                });
            }
            if out.len() == before && !retry {
                // Nothing came within the wait although more was counted: an incomplete read
                // is an error, never a shorter answer.
                return Err(self.transport(format!(
                    "the read stopped after {} of {pending} messages",
                    out.len()
                )));
            }
        }
        Ok(out)
    }

    /// One batch direct get: the messages until the server's end-of-batch (204) or "not
    /// found" (404).
    async fn direct_get(&self, request: &Value) -> Result<Vec<StoredMessage>, JsApiError> {
        let inbox = self.client.new_inbox();
        let mut replies = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| self.transport(e))?;
        self.client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{}", self.stream),
                inbox,
                serde_json::to_vec(request)
                    .expect("JSON values serialize")
                    .into(),
            )
            .await
            .map_err(|e| self.transport(e))?;
        let mut out = Vec::new();
        loop {
            let message = tokio::time::timeout(self.timeout, replies.next())
                .await
                .map_err(|_| self.transport(format!("no answer within {:?}", self.timeout)))?
                .ok_or_else(|| self.transport("the reply subscription closed"))?;
            if let Some(status) = message.status {
                return match status.as_u16() {
                    204 | 404 => Ok(out),
                    503 => Err(self.transport("no responders (is JetStream enabled?)")),
                    code => Err(self.transport(format!(
                        "status {code}: {}",
                        message.description.unwrap_or_default()
                    ))),
                };
            }
            let header = |name: &str| crate::engine::reader::header(message.headers.as_ref(), name);
            let seq = header("Nats-Sequence")
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| self.transport("a direct get reply without Nats-Sequence"))?;
            let subject = header("Nats-Subject").unwrap_or_default().to_owned();
            let single = request.get("batch").is_none();
            out.push(StoredMessage {
                seq,
                subject,
                headers: message.headers,
                payload: message.payload,
            });
            if single {
                return Ok(out);
            }
        }
    }

    /// One `STREAM.MSG.GET`: the stream's own API, for streams without direct gets.
    async fn msg_get(&self, request: Value) -> Result<Option<StoredMessage>, JsApiError> {
        use base64::Engine as _;
        let reply = match crate::jsapi::JsApi::new(self.client.clone())
            .raw(format!("$JS.API.STREAM.MSG.GET.{}", self.stream), request)
            .await
        {
            Ok(reply) => reply,
            Err(e) if e.err_code() == Some(NO_MESSAGE_FOUND) => return Ok(None),
            Err(e) => return Err(e),
        };
        let message = &reply["message"];
        let decode = |field: &str| {
            message
                .get(field)
                .and_then(Value::as_str)
                .map(|b| base64::engine::general_purpose::STANDARD.decode(b))
                .transpose()
                .map_err(|e| self.transport(format!("{field} is not base64: {e}")))
        };
        let headers = match decode("hdrs")? {
            Some(block) => {
                crate::archive::record::decode_headers(&block).map_err(|e| self.transport(e))?
            }
            None => None,
        };
        Ok(Some(StoredMessage {
            seq: message["seq"].as_u64().unwrap_or_default(),
            subject: message["subject"].as_str().unwrap_or_default().to_owned(),
            headers,
            payload: decode("data")?.unwrap_or_default().into(),
        }))
    }
}
