//! Restore by publishing: for servers without the archive restore (before 2.15), and for
//! appending to an existing stream.
//!
//! # How sequences are reproduced (new target)
//! JetStream assigns sequences itself, so the server is made to assign the right ones:
//! 1. the target is created with `first_seq` = the first restored sequence;
//! 2. records are published in order; for every sequence missing from the archive (a message
//!    deleted before the backup, or filtered out) a *filler* is published on `_CIM_BACKUP.fill`;
//!    each ack must carry exactly the expected sequence, otherwise someone else wrote to the
//!    target and the restore fails;
//! 3. fillers are purged by subject, leaving exactly the original gaps.
//!
//! While it runs, the target listens only on `_CIM_BACKUP.restore.<job>.>` with a subject
//! transform that strips that prefix, so messages are stored under their original subjects but
//! live producers cannot interleave, and it has no limits that could evict restored messages.
//! Its final configuration is applied at the end.
//!
//! JetStream does not let a publisher set a message's timestamp: the original time travels in
//! the `Cim-Original-Time` header (RFC 3339, nanoseconds). Publish preconditions
//! (`Nats-Expected-*`) are not re-sent: they held when the message was first stored and can
//! fail against the restored stream. Those are the only differences from the original.

use std::collections::VecDeque;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishAckFuture;
use bytes::Bytes;
use cim_backup_contracts::events::{ConsumerPosition, ConsumerRestored};
use cim_backup_contracts::{ErrorCode, JobId};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::plan::{Chain, Plan, Tally, kept_records, open_planned};
use super::progress::Progress;
use crate::archive::record::{Record, decode_headers};
use crate::archive::{ArchiveError, ArchiveStore, segment};
use crate::engine::context::Context;
use crate::engine::error::EngineError;

/// Prefix of the subjects a target listens on while a restore writes it.
pub const RESTORE_PREFIX: &str = "_CIM_BACKUP.restore";
/// Subject of the placeholder messages that reproduce sequence gaps; purged before the end.
pub const FILLER_SUBJECT: &str = "_CIM_BACKUP.fill";
/// Header carrying a restored message's original timestamp.
pub const ORIGINAL_TIME_HEADER: &str = "Cim-Original-Time";
/// Publishes awaiting their ack at once.
const ACK_WINDOW: usize = 4096;

/// The subjects a target stream captures. Every restore publish goes through [`Captures::check`]
/// first: a message on a subject the target does not capture would land in whichever stream
/// does (a live one, say) or nowhere, so it is refused before it is sent. JetStream forbids
/// overlapping subjects, so a subject the target captures is captured by no other stream.
#[derive(Debug, Clone)]
pub struct Captures {
    stream: String,
    filters: Vec<String>,
}

impl Captures {
    /// What `stream` captures now, from its configuration.
    pub async fn of(ctx: &Context, stream: &str) -> Result<Captures, EngineError> {
        let info = ctx
            .api
            .stream_info(stream)
            .await?
            .ok_or_else(|| vanished(stream))?;
        Ok(Captures::from_config(stream, &info.config))
    }

    pub fn from_config(stream: &str, config: &Value) -> Captures {
        let filters = config
            .get("subjects")
            .and_then(Value::as_array)
            .map(|s| {
                s.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Captures {
            stream: stream.to_owned(),
            filters,
        }
    }

    /// Refuses a subject the stream does not capture.
    pub fn check(&self, subject: &str) -> Result<(), EngineError> {
        if self
            .filters
            .iter()
            .any(|f| super::plan::subject_matches(f, subject))
        {
            return Ok(());
        }
        Err(EngineError::precondition(
            ErrorCode::Conflict,
            format!(
                "stream {} does not capture {subject} (its subjects: {}): published, the message would go to another stream or nowhere, so nothing is published; restore into a stream that captures the original subjects, or restore under a new name instead of appending",
                self.stream,
                if self.filters.is_empty() {
                    "none".to_owned()
                } else {
                    self.filters.join(", ")
                }
            ),
        ))
    }
}

/// Where the records go and what they must look like there.
pub enum Into<'a> {
    /// A new target created for this restore, reproducing sequences up to `last_seq`.
    New {
        final_config: &'a Value,
        first_seq: u64,
        last_seq: u64,
    },
    /// An existing stream: appended after its last message, on the original subjects.
    Existing,
}

/// Writes the plan's records to `target`; returns what was written.
#[allow(clippy::too_many_arguments)]
pub async fn write(
    ctx: &Context,
    job: &JobId,
    target: &str,
    chain: &Chain,
    plan: &Plan,
    into: Into<'_>,
    archive: &ArchiveStore,
    progress: &mut Progress<'_>,
    cancel: &CancellationToken,
) -> Result<Tally, EngineError> {
    let (prefix, mut next_seq, expect_seqs) = match &into {
        Into::New {
            final_config,
            first_seq,
            ..
        } => {
            let info = match ctx.api.stream_info(target).await? {
                Some(info) if super::target::owned_by(&info.config, job) => info,
                Some(_) => {
                    return Err(EngineError::precondition(
                        ErrorCode::Conflict,
                        format!(
                            "target stream {target} was created by someone else during the restore"
                        ),
                    ));
                }
                None => {
                    ctx.api
                        .create_stream(&staging_config(final_config, job, *first_seq))
                        .await?;
                    ctx.api
                        .stream_info(target)
                        .await?
                        .ok_or_else(|| vanished(target))?
                }
            };
            (
                format!("{RESTORE_PREFIX}.{job}."),
                info.state.last_seq + 1,
                true,
            )
        }
        Into::Existing => (String::new(), 0, false),
    };
    let mut writer = Writer {
        ctx,
        target: target.to_owned(),
        captures: Captures::of(ctx, target).await?,
        prefix,
        in_flight: VecDeque::new(),
        expect_seqs,
        tally: Tally::default(),
        duplicates: 0,
    };
    // Appending has no sequences to resume by: a resumed append skips the segments recorded as
    // written (progress is recorded after every segment when appending), so at most the one
    // segment in flight at a crash is published again (and deduplicated by Nats-Msg-Id, if set).
    let skip = if expect_seqs {
        0
    } else {
        progress.recorded_segments() as usize
    };
    for (index, planned) in plan.segments.iter().enumerate() {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let skipped = index < skip;
        let object = segment::key(&planned.info);
        let stored = archive.get(&object).await?;
        let plain = open_planned(chain, planned, &stored, &ctx.keys)?;
        for record in kept_records(plan, planned, &plain) {
            let record = record?;
            writer.tally.add(&record);
            if skipped {
                continue;
            }
            if expect_seqs {
                if record.seq < next_seq {
                    continue; // written before a restart
                }
                while next_seq < record.seq {
                    writer
                        .send(FILLER_SUBJECT, None, Bytes::new(), Some(next_seq))
                        .await?;
                    next_seq += 1;
                }
            }
            let headers = restored_headers(&record).map_err(|message| ArchiveError::Corrupt {
                object: object.clone(),
                record: Some(record.seq),
                message,
            })?;
            writer
                .send(
                    record.subject,
                    Some(headers),
                    Bytes::copy_from_slice(record.payload),
                    expect_seqs.then_some(next_seq),
                )
                .await?;
            next_seq += 1;
        }
        writer.drain().await?;
        progress
            .segment_done(
                ctx,
                &writer.tally,
                planned.info.raw_bytes,
                planned.info.last_seq,
            )
            .await?;
    }
    if let Into::New { last_seq, .. } = into {
        // Trailing gaps, so the next message gets the sequence it would have had.
        while next_seq <= last_seq {
            writer
                .send(FILLER_SUBJECT, None, Bytes::new(), Some(next_seq))
                .await?;
            next_seq += 1;
        }
        writer.drain().await?;
        // The caller checks the target, then gives it its final configuration (subjects):
        // until then nobody else can write to it.
        ctx.api.purge(target, Some(FILLER_SUBJECT)).await?;
    }
    if writer.duplicates > 0 {
        progress.note(format!(
            "{} messages were already in {target} (same Nats-Msg-Id within its duplicate window) and were not appended again",
            writer.duplicates
        ));
    }
    Ok(writer.tally)
}

fn vanished(target: &str) -> EngineError {
    EngineError::precondition(
        ErrorCode::Conflict,
        format!("target stream {target} vanished during the restore"),
    )
}

/// Publish preconditions (`Nats-Expected-*`) held when the message was first stored.
fn is_publish_precondition(name: &str) -> bool {
    name.len() >= 13 && name[..13].eq_ignore_ascii_case("Nats-Expected")
}

/// The headers a restored message is published with: the archived ones, without publish
/// preconditions, plus `Cim-Original-Time`.
fn restored_headers(record: &Record<'_>) -> Result<HeaderMap, String> {
    let archived = decode_headers(record.headers)?.unwrap_or_default();
    let mut headers: HeaderMap = archived
        .iter()
        .filter(|(name, _)| !is_publish_precondition(name.as_ref()))
        .flat_map(|(name, values)| values.iter().map(move |v| (name.clone(), v.clone())))
        .collect();
    let time = cim_backup_contracts::events::format_time(segment::time_of(record.time_ns));
    headers.insert(ORIGINAL_TIME_HEADER, time.as_str());
    Ok(headers)
}

/// The configuration a new target is written with: the final one, listening only on the
/// restore prefix, starting at `first_seq`, without limits that could evict restored messages
/// or fillers, and with a minimal duplicate window (restored messages may legitimately repeat a
/// `Nats-Msg-Id` from outside the original window).
fn staging_config(final_config: &Value, job: &JobId, first_seq: u64) -> Value {
    let mut c = final_config.clone();
    let prefix = format!("{RESTORE_PREFIX}.{job}.>");
    c["subjects"] = json!([prefix]);
    c["subject_transform"] = json!({ "src": prefix, "dest": ">" });
    c["first_seq"] = json!(first_seq.max(1));
    c["sealed"] = json!(false);
    c["deny_purge"] = json!(false);
    c["deny_delete"] = json!(false);
    c["max_msgs"] = json!(-1);
    c["max_bytes"] = json!(-1);
    c["max_age"] = json!(0);
    c["max_msgs_per_subject"] = json!(-1);
    c["duplicate_window"] = json!(100_000_000u64);
    c
}

/// Recreates the saved durable consumers, each starting after its (clamped) ack floor.
pub async fn create_consumers(
    ctx: &Context,
    target: &str,
    saved: &[ConsumerPosition],
    starts: &[ConsumerRestored],
) -> Result<(), EngineError> {
    for (consumer, start) in saved.iter().zip(starts) {
        let mut config: Value = serde_json::from_str(&consumer.config).map_err(|e| {
            EngineError::precondition(
                ErrorCode::Corrupt,
                format!("saved consumer {} has no valid config: {e}", consumer.name),
            )
        })?;
        config["deliver_policy"] = json!("by_start_sequence");
        config["opt_start_seq"] = json!(start.start_seq);
        if let Some(map) = config.as_object_mut() {
            map.remove("opt_start_time");
        }
        ctx.api
            .create_consumer(target, &consumer.name, &config)
            .await?;
    }
    Ok(())
}

/// Publishes with pipelined acks, checking every assigned sequence.
struct Writer<'a> {
    ctx: &'a Context,
    target: String,
    /// Checked before every publish: nothing goes to a subject the target does not capture.
    captures: Captures,
    prefix: String,
    in_flight: VecDeque<(Option<u64>, PublishAckFuture)>,
    expect_seqs: bool,
    tally: Tally,
    duplicates: u64,
}

impl Writer<'_> {
    async fn send(
        &mut self,
        subject: &str,
        headers: Option<HeaderMap>,
        payload: Bytes,
        expected: Option<u64>,
    ) -> Result<(), EngineError> {
        if self.in_flight.len() >= ACK_WINDOW {
            self.settle_one().await?;
        }
        let subject = format!("{}{subject}", self.prefix);
        self.captures.check(&subject)?;
        let js = &self.ctx.js;
        let ack = match headers {
            Some(h) if !h.is_empty() => js.publish_with_headers(subject, h, payload).await,
            _ => js.publish(subject, payload).await,
        }
        .map_err(EngineError::nats)?;
        self.in_flight.push_back((expected, ack));
        Ok(())
    }

    async fn settle_one(&mut self) -> Result<(), EngineError> {
        let Some((expected, ack)) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let ack = ack.await.map_err(|e| {
            use async_nats::jetstream::context::PublishErrorKind as Kind;
            match e.kind() {
                // NATS went away: the job may resume once it is back.
                Kind::TimedOut | Kind::BrokenPipe => EngineError::nats(e),
                // The server refused the message (too large, …): it would refuse it again.
                _ => EngineError::precondition(
                    ErrorCode::Unavailable,
                    format!("the server refused a restored message: {e}"),
                ),
            }
        })?;
        if ack.stream != self.target {
            return Err(EngineError::precondition(
                ErrorCode::Conflict,
                format!(
                    "the message went to stream {}, which captures its subject, not to {}",
                    ack.stream, self.target
                ),
            ));
        }
        if ack.duplicate {
            if self.expect_seqs {
                return Err(EngineError::precondition(
                    ErrorCode::Conflict,
                    format!(
                        "the server dropped the message for sequence {} as a duplicate (its Nats-Msg-Id repeats an earlier one)",
                        expected.map_or_else(|| "?".to_owned(), |e| e.to_string())
                    ),
                ));
            }
            // Appending: the target already holds this message (same Nats-Msg-Id within its
            // duplicate window), so it was not written.
            self.duplicates += 1;
            self.tally.messages -= 1;
            return Ok(());
        }
        if let Some(expected) = expected.filter(|e| ack.sequence != *e) {
            return Err(EngineError::precondition(
                ErrorCode::Conflict,
                format!(
                    "target got sequence {} where {expected} was expected: something else wrote to it during the restore",
                    ack.sequence
                ),
            ));
        }
        Ok(())
    }

    async fn drain(&mut self) -> Result<(), EngineError> {
        while !self.in_flight.is_empty() {
            self.settle_one().await?;
        }
        Ok(())
    }
}
