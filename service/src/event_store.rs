//! The JetStream event store (DESIGN §5).
//!
//! Every event of the service is one message on `cim.backup.evt.<type>.<id>.<event-type>` in the
//! stream [`EVENTS_STREAM`]. Appends are guarded by optimistic concurrency on the aggregate's
//! *wildcard* (`Nats-Expected-Last-Subject-Sequence` + `…-Subject: cim.backup.evt.<type>.<id>.*`),
//! so two instances can never fork one job's chain; the loser gets [`EventStoreError::Conflict`]
//! and reloads. The publish ack is awaited before `append` returns: an event is durable before
//! anyone is told it happened.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use cim_backup_contracts::events::{EventEnvelope, EventMeta, JobEvent};
use cim_backup_contracts::headers;
use cim_backup_contracts::subjects::{
    EVENT_PREFIX, EVENTS_STREAM, EVENTS_STREAM_SUBJECTS, aggregate_wildcard, event_subject,
    parse_event_subject,
};
use cim_backup_contracts::views::JobKind;
use cim_backup_contracts::{EventCid, JobId};

use crate::lookup::Lookup;

/// Where an aggregate's chain stands: what the next append must build on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Version {
    /// Per-aggregate sequence of the last event (0 = no events).
    pub sequence: u64,
    /// CID of the last event.
    pub head: Option<EventCid>,
    /// Stream sequence of the last event (0 = none); the optimistic-concurrency expectation.
    pub last_stream_seq: u64,
}

/// One event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub envelope: EventEnvelope,
    pub cid: EventCid,
    pub stream_seq: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum EventStoreError {
    /// Another writer appended to this aggregate since we loaded it.
    #[error(
        "{kind} {id} was changed by another writer (expected it at stream sequence {expected})"
    )]
    Conflict {
        kind: JobKind,
        id: JobId,
        expected: u64,
    },
    #[error("event stream unavailable: {0}")]
    Nats(String),
    /// The publish was sent but never acknowledged, not even by the identical retries within
    /// [`CONFIRM_FOR`]: the event may or may not be stored.
    #[error(
        "the event may or may not have been stored: no acknowledgement within {seconds} s ({message})"
    )]
    Unconfirmed { seconds: u64, message: String },
    /// A stored event does not decode or does not match its CID: the log is damaged.
    #[error("event at stream sequence {stream_seq} is damaged: {message}")]
    Damaged { stream_seq: u64, message: String },
}

fn nats(e: impl std::fmt::Display) -> EventStoreError {
    EventStoreError::Nats(e.to_string())
}

/// How long an unacknowledged append is retried (the identical message: its `Nats-Msg-Id`
/// makes a retry of a stored event a duplicate, answered with the original sequence) before
/// the outcome is reported as unknown. Below the 10 s callers usually wait for a reply.
pub const CONFIRM_FOR: Duration = Duration::from_secs(8);
/// How long one append waits for its acknowledgement.
const ACK_WAIT: Duration = Duration::from_secs(2);

/// How to create the events stream.
#[derive(Debug, Clone)]
pub struct EventStreamSettings {
    pub replicas: usize,
}

impl Default for EventStreamSettings {
    fn default() -> Self {
        EventStreamSettings { replicas: 1 }
    }
}

#[derive(Clone)]
pub struct EventStore {
    js: jetstream::Context,
    /// The stream holding `cim.backup.evt.>`: ours, or one the deployment already has.
    stream: String,
    /// Reads of that stream that leave nothing behind.
    reads: Lookup,
}

impl EventStore {
    /// Opens the store on the stream that captures `cim.backup.evt.>`, creating
    /// [`EVENTS_STREAM`] if none does.
    ///
    /// CIM deployments often have one stream on `cim.>`; our events then live there (JetStream
    /// would refuse a second stream on overlapping subjects), and a warning says that its limits
    /// now apply to the audit log. Our own stream denies deletes and purges: the chain is only
    /// tamper-evident if nobody can quietly drop a link.
    pub async fn open(
        mut js: jetstream::Context,
        settings: &EventStreamSettings,
    ) -> Result<Self, EventStoreError> {
        // Short acknowledgement waits, so that an append retried until CONFIRM_FOR gets
        // several tries before the caller's own request times out.
        js.set_timeout(ACK_WAIT);
        let api = crate::jsapi::JsApi::new(js.client());
        let owners = api
            .streams_for_subject(EVENTS_STREAM_SUBJECTS)
            .await
            .map_err(nats)?;
        match owners.as_slice() {
            [] => {}
            [one] if one == EVENTS_STREAM => {}
            [other] => {
                tracing::warn!(stream = %other, "stream {other} already captures {EVENTS_STREAM_SUBJECTS}; storing events there (its limits and delete policy now apply to the audit log)");
                let reads = Lookup::of(&api, other).await.map_err(nats)?;
                return Ok(EventStore {
                    js,
                    stream: other.clone(),
                    reads,
                });
            }
            many => {
                return Err(EventStoreError::Nats(format!(
                    "several streams capture {EVENTS_STREAM_SUBJECTS}: {many:?}; keep one"
                )));
            }
        }
        js.get_or_create_stream(stream::Config {
            name: EVENTS_STREAM.to_owned(),
            subjects: vec![EVENTS_STREAM_SUBJECTS.to_owned()],
            description: Some(
                "cim-backup: CID-chained events of backup, restore and verify jobs".into(),
            ),
            storage: stream::StorageType::File,
            num_replicas: settings.replicas,
            duplicate_window: Duration::from_secs(120),
            deny_delete: true,
            deny_purge: true,
            allow_direct: true,
            ..Default::default()
        })
        .await
        .map_err(nats)?;
        Ok(EventStore {
            js,
            stream: EVENTS_STREAM.to_owned(),
            reads: Lookup::of(&api, EVENTS_STREAM).await.map_err(nats)?,
        })
    }

    /// Name of the stream the events are stored in.
    pub fn stream_name(&self) -> &str {
        &self.stream
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Appends `events` to the aggregate at `version`, each linked to the one before.
    /// Returns the new version and the stored events.
    pub async fn append(
        &self,
        kind: JobKind,
        id: &JobId,
        version: &Version,
        events: Vec<(JobEvent, EventMeta)>,
    ) -> Result<(Version, Vec<StoredEvent>), EventStoreError> {
        let mut version = version.clone();
        let mut stored = Vec::with_capacity(events.len());
        for (event, meta) in events {
            let envelope = EventEnvelope {
                aggregate_type: kind,
                aggregate_id: id.clone(),
                sequence: version.sequence + 1,
                prev: version.head,
                meta,
                event,
            };
            let (payload, cid) = envelope.encode_with_cid();
            let subject = event_subject(kind.as_str(), id.as_str(), envelope.event.event_type());
            let headers = event_headers(&envelope, &cid, version.last_stream_seq, kind, id);
            let stream_seq = self
                .publish_confirmed(
                    subject,
                    headers,
                    payload.into(),
                    Appending {
                        kind,
                        id,
                        after: version.last_stream_seq,
                        cid: &cid,
                    },
                )
                .await
                .map_err(|e| match e {
                    Published::Conflict => EventStoreError::Conflict {
                        kind,
                        id: id.clone(),
                        expected: version.last_stream_seq,
                    },
                    Published::Failed(e) => e,
                })?;
            version = Version {
                sequence: envelope.sequence,
                head: Some(cid),
                last_stream_seq: stream_seq,
            };
            stored.push(StoredEvent {
                envelope,
                cid,
                stream_seq,
            });
        }
        Ok((version, stored))
    }

    /// Publishes one event and waits for its acknowledgement; returns its stream sequence.
    ///
    /// A lost or late acknowledgement (server paused, connection dropped, a duplicate still in
    /// flight) is ambiguous: the event may be stored. The identical message is then sent again,
    /// for at most [`CONFIRM_FOR`]: a stored one comes back as a duplicate, or as a conflict with
    /// the aggregate's expected sequence, and then the aggregate's events after the expected one
    /// show whether it is among them (same `Nats-Msg-Id`, the event's CID). Once a first attempt
    /// went unanswered, no outcome short of that is "not stored": it is [`Unconfirmed`].
    ///
    /// [`Unconfirmed`]: EventStoreError::Unconfirmed
    async fn publish_confirmed(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: bytes::Bytes,
        event: Appending<'_>,
    ) -> Result<u64, Published> {
        use jetstream::context::PublishErrorKind as Kind;
        let deadline = tokio::time::Instant::now() + CONFIRM_FOR;
        let mut delay = Duration::from_millis(100);
        let mut sent_before = false;
        loop {
            let attempt = match self
                .js
                .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                .await
            {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            let e = match attempt {
                // A clustered server before 2.11 acknowledged a duplicate still in flight with
                // sequence 0: that says nothing about where it is.
                Ok(ack) if ack.duplicate && ack.sequence == 0 => {
                    "a duplicate acknowledged without its sequence".to_owned()
                }
                Ok(ack) => return Ok(ack.sequence),
                Err(e) => {
                    // A clustered stream reports the same conflict with error code 10164
                    // ("wrong last sequence" while other proposals for the subject are in
                    // flight), which async-nats does not map to `WrongLastSequence`.
                    let conflict = matches!(e.kind(), Kind::WrongLastSequence)
                        || e.to_string().contains("wrong last sequence");
                    if conflict && !sent_before {
                        return Err(Published::Conflict);
                    }
                    let ambiguous = matches!(e.kind(), Kind::TimedOut | Kind::BrokenPipe)
                        || e.to_string().contains("duplicate message id is in process");
                    if !conflict && !ambiguous && !sent_before {
                        // Refused before anything was sent twice (no stream, too large, …):
                        // certainly not stored.
                        return Err(Published::Failed(nats(e)));
                    }
                    if conflict {
                        // After an attempt whose fate was unknown, a conflict can be that attempt,
                        // stored: look for it among the events after the expected one.
                        return match self.stored_after(&event).await {
                            Ok(Some(seq)) => Ok(seq),
                            Ok(None) => Err(Published::Conflict),
                            Err(e) => Err(Published::Failed(EventStoreError::Unconfirmed {
                                seconds: CONFIRM_FOR.as_secs(),
                                message: e.to_string(),
                            })),
                        };
                    }
                    e.to_string()
                }
            };
            sent_before = true;
            // Every try waits up to ACK_WAIT: none is started that would end past the deadline.
            if tokio::time::Instant::now() + delay + ACK_WAIT > deadline {
                if let Ok(Some(seq)) = self.stored_after(&event).await {
                    return Ok(seq);
                }
                return Err(Published::Failed(EventStoreError::Unconfirmed {
                    seconds: CONFIRM_FOR.as_secs(),
                    message: e,
                }));
            }
            tracing::warn!(error = %e, "no acknowledgement for an event; sending it again");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// The stream sequence of the event being appended (found by its `Nats-Msg-Id`, its CID), if
    /// the aggregate holds it after the expected sequence.
    async fn stored_after(
        &self,
        event: &Appending<'_>,
    ) -> Result<Option<u64>, crate::jsapi::JsApiError> {
        let cid = event.cid.to_string();
        let filter = aggregate_wildcard(event.kind.as_str(), event.id.as_str());
        Ok(self
            .reads
            .all(&filter, event.after + 1)
            .await?
            .into_iter()
            .find(|m| m.header("Nats-Msg-Id") == Some(cid.as_str()))
            .map(|m| m.seq))
    }

    /// Every event of one aggregate, in order, each checked against its CID.
    pub async fn load(
        &self,
        kind: JobKind,
        id: &JobId,
    ) -> Result<Vec<StoredEvent>, EventStoreError> {
        self.read(aggregate_wildcard(kind.as_str(), id.as_str()), 1)
            .await
    }

    /// Every event on `filter` from stream sequence `from` on, as the stream's leader has them;
    /// a lookup, however many run at once, leaves nothing on the server ([`Lookup`]).
    pub async fn read(
        &self,
        filter: String,
        from: u64,
    ) -> Result<Vec<StoredEvent>, EventStoreError> {
        self.reads
            .all(&filter, from)
            .await
            .map_err(nats)?
            .iter()
            .map(|m| decode_stored(m.seq, &m.payload, m.headers.as_ref()))
            .collect()
    }

    /// Which kind of job `id` is, from its newest event (one request); `None` if it has none.
    pub async fn kind_of(&self, id: &JobId) -> Result<Option<JobKind>, EventStoreError> {
        let last = self
            .reads
            .last(&format!("{EVENT_PREFIX}.*.{id}.*"))
            .await
            .map_err(nats)?;
        Ok(last.and_then(|m| {
            parse_event_subject(&m.subject).and_then(|(kind, _, _)| kind.parse().ok())
        }))
    }

    /// The per-aggregate sequence and stream sequence of a job's newest event (one request).
    pub async fn head_of(
        &self,
        kind: JobKind,
        id: &JobId,
    ) -> Result<Option<(u64, u64)>, EventStoreError> {
        let last = self
            .reads
            .last(&aggregate_wildcard(kind.as_str(), id.as_str()))
            .await
            .map_err(nats)?;
        Ok(last.map(|m| {
            let sequence = m
                .header(headers::CIM_SEQUENCE)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            (sequence, m.seq)
        }))
    }
}

/// The event an append is publishing: whose it is, the stream sequence it must follow, its CID.
struct Appending<'a> {
    kind: JobKind,
    id: &'a JobId,
    after: u64,
    cid: &'a EventCid,
}

/// How a publish ended when it was not acknowledged.
enum Published {
    /// The aggregate moved on since it was loaded (or an earlier attempt of this very append
    /// was stored): reload and decide again.
    Conflict,
    Failed(EventStoreError),
}

/// Decodes one stored event and checks that the payload is what its `Cim-Cid` header claims.
pub fn decode_stored(
    stream_seq: u64,
    payload: &[u8],
    headers: Option<&HeaderMap>,
) -> Result<StoredEvent, EventStoreError> {
    let damaged = |message: String| EventStoreError::Damaged {
        stream_seq,
        message,
    };
    let envelope = EventEnvelope::decode(payload).map_err(|e| damaged(e.to_string()))?;
    let cid = EventCid(cim_backup_contracts::cid::dag_cbor_cid(payload));
    if let Some(claimed) = headers.and_then(|h| h.get(headers::CIM_CID))
        && claimed.as_str() != cid.to_string()
    {
        return Err(damaged(format!(
            "payload hashes to {cid}, header claims {}",
            claimed.as_str()
        )));
    }
    Ok(StoredEvent {
        envelope,
        cid,
        stream_seq,
    })
}

fn event_headers(
    envelope: &EventEnvelope,
    cid: &EventCid,
    expected: u64,
    kind: JobKind,
    id: &JobId,
) -> HeaderMap {
    let cid = cid.to_string();
    let mut h = HeaderMap::new();
    h.insert("Nats-Msg-Id", cid.as_str());
    h.insert(
        "Nats-Expected-Last-Subject-Sequence",
        expected.to_string().as_str(),
    );
    h.insert(
        "Nats-Expected-Last-Subject-Sequence-Subject",
        aggregate_wildcard(kind.as_str(), id.as_str()).as_str(),
    );
    h.insert(headers::CIM_CID, cid.as_str());
    if let Some(prev) = envelope.prev {
        h.insert(headers::CIM_PREV_CID, prev.to_string().as_str());
    }
    h.insert(headers::CIM_EVENT_TYPE, envelope.event.event_type());
    h.insert(
        headers::CIM_CORRELATION_ID,
        envelope.meta.correlation_id.as_str(),
    );
    h.insert(
        headers::CIM_CAUSATION_ID,
        envelope.meta.causation_id.as_str(),
    );
    h.insert(
        headers::CIM_SEQUENCE,
        envelope.sequence.to_string().as_str(),
    );
    h
}
