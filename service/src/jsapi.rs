//! Raw JetStream API calls (`$JS.API.*`) for the few things where the typed client is not
//! enough: stream configs must be carried **verbatim** (a backup restores fields this tool has
//! never heard of), and purge-by-filter and stream lookup by subject are needed by restores.

use std::time::Duration;

use async_nats::Client;
use serde::Deserialize;
use serde_json::{Value, json};

/// JetStream error code for "stream not found".
pub const STREAM_NOT_FOUND: u64 = 10059;
/// JetStream error code for "consumer not found".
pub const CONSUMER_NOT_FOUND: u64 = 10014;

#[derive(Debug, thiserror::Error)]
pub enum JsApiError {
    #[error("JetStream API {subject}: {message}")]
    Transport { subject: String, message: String },
    /// The server answered with an API error.
    #[error("{description} (JetStream error {err_code})")]
    Api {
        code: u64,
        err_code: u64,
        description: String,
    },
}

impl JsApiError {
    pub fn err_code(&self) -> Option<u64> {
        match self {
            JsApiError::Api { err_code, .. } => Some(*err_code),
            JsApiError::Transport { .. } => None,
        }
    }
}

/// State of a stream as `$JS.API.STREAM.INFO` reports it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamState {
    pub messages: u64,
    pub bytes: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub first_ts: Option<time::OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_ts: Option<time::OffsetDateTime>,
    #[serde(default)]
    pub num_deleted: u64,
    #[serde(default)]
    pub consumer_count: u64,
}

/// A stream's config (verbatim JSON) and state.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    pub config: Value,
    pub state: StreamState,
    /// When the stream was created (server time).
    pub created: Option<time::OffsetDateTime>,
    /// Whether every replica has caught up with the leader (true for a single-replica stream).
    pub replicas_current: bool,
}

/// A durable consumer as `$JS.API.CONSUMER.LIST` reports it: config verbatim, positions parsed.
#[derive(Debug, Clone)]
pub struct ConsumerInfo {
    pub name: String,
    pub config: Value,
    pub delivered_consumer_seq: u64,
    pub delivered_stream_seq: u64,
    pub ack_floor_consumer_seq: u64,
    pub ack_floor_stream_seq: u64,
    pub num_ack_pending: u64,
}

#[derive(Clone)]
pub struct JsApi {
    client: Client,
    timeout: Duration,
}

impl JsApi {
    pub fn new(client: Client) -> Self {
        JsApi {
            client,
            timeout: Duration::from_secs(10),
        }
    }

    async fn request(&self, subject: String, body: Value) -> Result<Value, JsApiError> {
        let transport = |message: String| JsApiError::Transport {
            subject: subject.clone(),
            message,
        };
        let payload = serde_json::to_vec(&body).expect("JSON values serialize");
        let reply = tokio::time::timeout(
            self.timeout,
            self.client.request(subject.clone(), payload.into()),
        )
        .await
        .map_err(|_| transport(format!("no answer within {:?}", self.timeout)))?
        .map_err(|e| transport(e.to_string()))?;
        let value: Value = serde_json::from_slice(&reply.payload)
            .map_err(|e| transport(format!("bad JSON reply: {e}")))?;
        if let Some(error) = value.get("error") {
            return Err(JsApiError::Api {
                code: error.get("code").and_then(Value::as_u64).unwrap_or(0),
                err_code: error.get("err_code").and_then(Value::as_u64).unwrap_or(0),
                description: error
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error")
                    .to_owned(),
            });
        }
        Ok(value)
    }

    /// A stream's config and state; `None` if it does not exist.
    pub async fn stream_info(&self, stream: &str) -> Result<Option<StreamInfo>, JsApiError> {
        match self
            .request(format!("$JS.API.STREAM.INFO.{stream}"), json!({}))
            .await
        {
            Ok(mut value) => {
                let created = value.get("created").and_then(Value::as_str).and_then(|t| {
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .ok()
                });
                let replicas_current = value
                    .pointer("/cluster/replicas")
                    .and_then(Value::as_array)
                    .is_none_or(|rs| {
                        rs.iter().all(|r| {
                            r["current"] == Value::Bool(true)
                                && r.get("lag").and_then(Value::as_u64).unwrap_or(0) == 0
                        })
                    });
                let config = value
                    .get_mut("config")
                    .map(Value::take)
                    .unwrap_or(Value::Null);
                let state = value
                    .get_mut("state")
                    .map(Value::take)
                    .map(serde_json::from_value)
                    .transpose()
                    .map_err(|e| JsApiError::Transport {
                        subject: format!("$JS.API.STREAM.INFO.{stream}"),
                        message: e.to_string(),
                    })?
                    .unwrap_or_default();
                Ok(Some(StreamInfo {
                    config,
                    state,
                    created,
                    replicas_current,
                }))
            }
            Err(e) if e.err_code() == Some(STREAM_NOT_FOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a stream from a verbatim config.
    pub async fn create_stream(&self, config: &Value) -> Result<(), JsApiError> {
        let name = config
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        self.request(format!("$JS.API.STREAM.CREATE.{name}"), config.clone())
            .await
            .map(|_| ())
    }

    /// Replaces a stream's config.
    pub async fn update_stream(&self, config: &Value) -> Result<(), JsApiError> {
        let name = config
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        self.request(format!("$JS.API.STREAM.UPDATE.{name}"), config.clone())
            .await
            .map(|_| ())
    }

    pub async fn delete_stream(&self, stream: &str) -> Result<(), JsApiError> {
        self.request(format!("$JS.API.STREAM.DELETE.{stream}"), json!({}))
            .await
            .map(|_| ())
    }

    /// Purges the messages on `filter` (all messages if `None`); returns how many went.
    pub async fn purge(&self, stream: &str, filter: Option<&str>) -> Result<u64, JsApiError> {
        let body = match filter {
            Some(f) => json!({ "filter": f }),
            None => json!({}),
        };
        let reply = self
            .request(format!("$JS.API.STREAM.PURGE.{stream}"), body)
            .await?;
        Ok(reply.get("purged").and_then(Value::as_u64).unwrap_or(0))
    }

    /// The durable consumers of a stream (ephemeral ones are skipped: they belong to a
    /// running client, not to the stream).
    pub async fn durable_consumers(&self, stream: &str) -> Result<Vec<ConsumerInfo>, JsApiError> {
        let mut consumers = Vec::new();
        let mut offset = 0u64;
        loop {
            let reply = self
                .request(
                    format!("$JS.API.CONSUMER.LIST.{stream}"),
                    json!({ "offset": offset }),
                )
                .await?;
            let page = reply
                .get("consumers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let total = reply.get("total").and_then(Value::as_u64).unwrap_or(0);
            offset += page.len() as u64;
            for info in page {
                let config = info.get("config").cloned().unwrap_or(Value::Null);
                let Some(durable) = config
                    .get("durable_name")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                else {
                    continue;
                };
                let seq = |path: &str| info.pointer(path).and_then(Value::as_u64).unwrap_or(0);
                consumers.push(ConsumerInfo {
                    name: durable,
                    delivered_consumer_seq: seq("/delivered/consumer_seq"),
                    delivered_stream_seq: seq("/delivered/stream_seq"),
                    ack_floor_consumer_seq: seq("/ack_floor/consumer_seq"),
                    ack_floor_stream_seq: seq("/ack_floor/stream_seq"),
                    num_ack_pending: seq("/num_ack_pending"),
                    config,
                });
            }
            if offset >= total || total == 0 {
                return Ok(consumers);
            }
        }
    }

    /// The names of a stream's consumers (durable and ephemeral).
    pub async fn consumer_names(&self, stream: &str) -> Result<Vec<String>, JsApiError> {
        self.paged_names(format!("$JS.API.CONSUMER.NAMES.{stream}"), "consumers")
            .await
    }

    /// Every name a `*.NAMES` request lists under `field`, asking page after page (by
    /// `offset`) until `total` are in or a page comes back empty.
    async fn paged_names(&self, subject: String, field: &str) -> Result<Vec<String>, JsApiError> {
        let mut names = Vec::new();
        loop {
            let reply = self
                .request(subject.clone(), json!({ "offset": names.len() }))
                .await?;
            let page: Vec<String> = reply
                .get(field)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|n| n.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let total = reply.get("total").and_then(Value::as_u64).unwrap_or(0) as usize;
            let empty = page.is_empty();
            names.extend(page);
            if empty || names.len() >= total {
                return Ok(names);
            }
        }
    }

    /// Creates (or updates to the same config) a durable consumer.
    pub async fn create_consumer(
        &self,
        stream: &str,
        name: &str,
        config: &Value,
    ) -> Result<(), JsApiError> {
        let body = json!({ "stream_name": stream, "config": config });
        self.request(format!("$JS.API.CONSUMER.CREATE.{stream}.{name}"), body)
            .await
            .map(|_| ())
    }

    /// The JetStream API level the server implements (0 if it does not say: before 2.11).
    /// Level 5 (nats-server 2.15) restores per-message archives (ADR-63).
    pub async fn api_level(&self) -> Result<u64, JsApiError> {
        let reply = self.request("$JS.API.INFO".to_owned(), json!({})).await?;
        Ok(reply
            .pointer("/api/level")
            .and_then(Value::as_u64)
            .unwrap_or(0))
    }

    /// Sends a raw request and returns the JSON reply, API errors included as errors.
    pub async fn raw(&self, subject: String, body: Value) -> Result<Value, JsApiError> {
        self.request(subject, body).await
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Names of every stream, paged.
    pub async fn stream_names(&self) -> Result<Vec<String>, JsApiError> {
        self.paged_names("$JS.API.STREAM.NAMES".to_owned(), "streams")
            .await
    }

    /// The subjects of a stream that match `filter` (with their message counts), paged; at
    /// most `limit` of them.
    pub async fn subjects(
        &self,
        stream: &str,
        filter: &str,
        limit: usize,
    ) -> Result<Vec<String>, JsApiError> {
        let mut subjects = Vec::new();
        loop {
            let reply = self
                .request(
                    format!("$JS.API.STREAM.INFO.{stream}"),
                    json!({ "subjects_filter": filter, "offset": subjects.len() }),
                )
                .await?;
            let page: Vec<String> = reply
                .pointer("/state/subjects")
                .and_then(Value::as_object)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            let total = reply.get("total").and_then(Value::as_u64).unwrap_or(0) as usize;
            let empty = page.is_empty();
            subjects.extend(page);
            if empty || subjects.len() >= total || subjects.len() >= limit {
                subjects.truncate(limit);
                return Ok(subjects);
            }
        }
    }

    /// Names of the streams whose subjects overlap `subject`.
    pub async fn streams_for_subject(&self, subject: &str) -> Result<Vec<String>, JsApiError> {
        let reply = self
            .request(
                "$JS.API.STREAM.NAMES".to_owned(),
                json!({ "subject": subject }),
            )
            .await?;
        Ok(reply
            .get("streams")
            .and_then(Value::as_array)
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }
}
