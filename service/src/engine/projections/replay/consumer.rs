//! What a replay does to a projector's consumer, through the JetStream API: read where it is,
//! pause and resume it, move it to a stream sequence, and find the first event at or after a
//! time.
//!
//! Moving uses `$JS.API.CONSUMER.RESET` where the server has it (nats-server 2.14 and later):
//! the consumer keeps its name, config and creation time, and only its delivered and ack floor
//! positions change. Older servers have no such call, so the consumer is deleted and created
//! again with the same config but `deliver_policy: by_start_sequence` and `opt_start_seq`
//! (docs/PROJECTIONS.md §8 lists what that changes). So is a consumer the server will not reset
//! there because its own start lies after the sequence (`deliver_policy: new`, say).

use cim_backup_contracts::replay::ResetMethod;
use serde_json::{Value, json};

use crate::jsapi::{CONSUMER_NOT_FOUND, JsApi, JsApiError};

/// JetStream error code for "invalid reset": the sequence lies before the consumer's own start.
pub const INVALID_RESET: u64 = 10204;

/// Where a consumer is, as `$JS.API.CONSUMER.INFO` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    pub ack_floor_stream_seq: u64,
    /// Events acknowledged since the consumer was created or last moved.
    pub ack_floor_consumer_seq: u64,
    pub num_pending: u64,
    pub num_ack_pending: u64,
    /// Pull requests waiting (0 for a push consumer).
    pub num_waiting: u64,
    pub paused: bool,
    /// A push consumer with a subscriber on its deliver subject.
    pub push_bound: bool,
}

impl Position {
    fn from_info(info: &Value) -> Position {
        let n = |path: &str| info.pointer(path).and_then(Value::as_u64).unwrap_or(0);
        Position {
            ack_floor_stream_seq: n("/ack_floor/stream_seq"),
            ack_floor_consumer_seq: n("/ack_floor/consumer_seq"),
            num_pending: n("/num_pending"),
            num_ack_pending: n("/num_ack_pending"),
            num_waiting: n("/num_waiting"),
            paused: info.get("paused").and_then(Value::as_bool).unwrap_or(false),
            push_bound: info
                .get("push_bound")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }
    }

    /// Someone is there to receive events: a pull request waits, or a push consumer's deliver
    /// subject has a subscriber.
    pub fn has_reader(&self) -> bool {
        self.num_waiting > 0 || self.push_bound
    }

    /// Nothing left to deliver and nothing delivered unacknowledged.
    pub fn caught_up(&self) -> bool {
        self.num_pending == 0 && self.num_ack_pending == 0
    }
}

/// One projector's consumer on one stream.
pub struct Consumer<'a> {
    pub api: &'a JsApi,
    pub stream: &'a str,
    pub name: &'a str,
}

impl Consumer<'_> {
    /// The consumer's config (verbatim) and position; `None` if it does not exist.
    pub async fn info(&self) -> Result<Option<(Value, Position)>, JsApiError> {
        match self
            .api
            .raw(
                format!("$JS.API.CONSUMER.INFO.{}.{}", self.stream, self.name),
                json!({}),
            )
            .await
        {
            Ok(info) => {
                let config = info.get("config").cloned().unwrap_or(Value::Null);
                Ok(Some((config, Position::from_info(&info))))
            }
            Err(e) if e.err_code() == Some(CONSUMER_NOT_FOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stops deliveries until `until` (a crashed job's pause ends by itself then).
    pub async fn pause(&self, until: time::OffsetDateTime) -> Result<(), JsApiError> {
        let until = until
            .format(&time::format_description::well_known::Rfc3339)
            .expect("a UTC time formats");
        self.api
            .raw(
                format!("$JS.API.CONSUMER.PAUSE.{}.{}", self.stream, self.name),
                json!({ "pause_until": until }),
            )
            .await
            .map(|_| ())
    }

    /// Ends a pause (a pause request without `pause_until`).
    pub async fn resume(&self) -> Result<(), JsApiError> {
        self.api
            .raw(
                format!("$JS.API.CONSUMER.PAUSE.{}.{}", self.stream, self.name),
                json!({}),
            )
            .await
            .map(|_| ())
    }

    /// Moves the consumer so that `from_seq` is the next event it delivers. `config` is the
    /// consumer's own config (used when it has to be created again). The consumer is left
    /// unpaused.
    pub async fn move_to(
        &self,
        from_seq: u64,
        config: &Value,
        server_has_reset: bool,
    ) -> Result<ResetMethod, JsApiError> {
        if server_has_reset {
            match self
                .api
                .raw(
                    format!("$JS.API.CONSUMER.RESET.{}.{}", self.stream, self.name),
                    json!({ "seq": from_seq }),
                )
                .await
            {
                Ok(_) => {
                    self.resume().await?;
                    return Ok(ResetMethod::Reset);
                }
                // A consumer whose own start lies after `from_seq` (`deliver_policy: new`, a
                // later start sequence or time) cannot be reset below it: created again.
                Err(e) if e.err_code() == Some(INVALID_RESET) => {
                    tracing::info!(
                        stream = self.stream,
                        consumer = self.name,
                        from_seq,
                        "the consumer starts after the sequence and cannot be reset there; creating it again"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        match self
            .api
            .raw(
                format!("$JS.API.CONSUMER.DELETE.{}.{}", self.stream, self.name),
                json!({}),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.err_code() == Some(CONSUMER_NOT_FOUND) => {}
            Err(e) => return Err(e),
        }
        self.api
            .create_consumer(self.stream, self.name, &starting_at(config, from_seq))
            .await?;
        Ok(ResetMethod::Recreated)
    }

    /// Creates the consumer again from `config` (it was lost while the job was down), so that
    /// `from_seq` is the next event it delivers.
    pub async fn recreate_at(&self, from_seq: u64, config: &Value) -> Result<(), JsApiError> {
        self.api
            .create_consumer(self.stream, self.name, &starting_at(config, from_seq))
            .await
    }

    /// Sets `max_ack_pending` (a field a consumer update may change).
    pub async fn set_max_ack_pending(
        &self,
        config: &Value,
        max_ack_pending: Option<u64>,
    ) -> Result<(), JsApiError> {
        let mut config = config.clone();
        if let Value::Object(map) = &mut config {
            map.remove("pause_until");
            match max_ack_pending {
                Some(n) => map.insert("max_ack_pending".into(), json!(n)),
                None => map.remove("max_ack_pending"),
            };
        }
        self.api
            .create_consumer(self.stream, self.name, &config)
            .await
    }
}

/// `config` with its start moved to `from_seq` (and no pause).
fn starting_at(config: &Value, from_seq: u64) -> Value {
    let mut config = config.clone();
    if let Value::Object(map) = &mut config {
        map.remove("opt_start_time");
        map.remove("pause_until");
        map.insert("deliver_policy".into(), json!("by_start_sequence"));
        map.insert("opt_start_seq".into(), json!(from_seq));
    }
    config
}

/// Whether the server has `$JS.API.CONSUMER.RESET` (nats-server 2.14 and later), from the
/// version it announced.
pub fn has_reset(server_version: &str) -> bool {
    let mut parts = server_version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 14)
}

/// The sequence of the first event of `stream` stored at or after `at` (the stream's last
/// sequence + 1 when there is none), found by a short-lived ephemeral consumer that starts by
/// time: the server answers from its own index, on every version.
pub async fn first_seq_at(
    api: &JsApi,
    stream: &str,
    at: time::OffsetDateTime,
) -> Result<u64, JsApiError> {
    let at = at
        .format(&time::format_description::well_known::Rfc3339)
        .expect("a time formats");
    let info = api
        .raw(
            format!("$JS.API.CONSUMER.CREATE.{stream}"),
            json!({
                "stream_name": stream,
                "config": {
                    "deliver_policy": "by_start_time",
                    "opt_start_time": at,
                    "ack_policy": "none",
                    "inactive_threshold": 5_000_000_000u64,
                    "mem_storage": true,
                    "num_replicas": 1,
                }
            }),
        )
        .await?;
    let delivered = info
        .pointer("/delivered/stream_seq")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if let Some(name) = info.get("name").and_then(Value::as_str) {
        // Gone by itself after the inactivity threshold if this fails.
        let _ = api
            .raw(
                format!("$JS.API.CONSUMER.DELETE.{stream}.{name}"),
                json!({}),
            )
            .await;
    }
    Ok(delivered + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reset_call_is_used_from_server_2_14_on() {
        assert!(!has_reset("2.11.11"));
        assert!(!has_reset("2.13.9"));
        assert!(has_reset("2.14.0"));
        assert!(has_reset("v2.15.1"));
        assert!(has_reset("3.0.0-beta"));
        assert!(!has_reset("garbage"));
    }

    #[test]
    fn a_recreated_consumer_starts_at_the_sequence_and_is_not_paused() {
        let config = json!({
            "durable_name": "p",
            "deliver_policy": "by_start_time",
            "opt_start_time": "2024-01-01T00:00:00Z",
            "pause_until": "2100-01-01T00:00:00Z",
            "filter_subject": "graph.>",
        });
        let moved = starting_at(&config, 42);
        assert_eq!(moved["deliver_policy"], "by_start_sequence");
        assert_eq!(moved["opt_start_seq"], 42);
        assert_eq!(moved["filter_subject"], "graph.>");
        assert!(moved.get("opt_start_time").is_none());
        assert!(moved.get("pause_until").is_none());
    }

    #[test]
    fn caught_up_means_nothing_pending_and_nothing_unacknowledged() {
        let p = Position {
            num_pending: 0,
            num_ack_pending: 1,
            ..Default::default()
        };
        assert!(!p.caught_up());
        assert!(
            Position {
                num_ack_pending: 0,
                ..p
            }
            .caught_up()
        );
    }
}
