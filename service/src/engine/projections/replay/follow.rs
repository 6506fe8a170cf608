//! One projector moved to its start and followed until it has caught up.
//!
//! - **Moved once.** The move is recorded (`ReplayProjectorReset`) with the consumer's config
//!   from before, so a resumed job does not move it back to the start again.
//! - **Resumed from the last checkpoint.** A resumed job reads the consumer: if it is gone it
//!   is created again from that config, and if its ack floor is behind the last checkpoint (it
//!   was recreated or reset by someone else) it is moved to the event after the checkpoint.
//!   Otherwise it is simply followed on: its own ack floor is past the checkpoint.
//! - **Caught up** means nothing left to deliver and nothing unacknowledged.
//! - **Stalled** means nothing acknowledged for `stall_timeout_secs` while events wait: no
//!   projector is consuming, and the job fails and says so.

use std::time::{Duration, Instant};

use cim_backup_contracts::ErrorCode;
use cim_backup_contracts::replay::{
    PlannedReplay, ProjectorCaughtUp, ProjectorReset, ReplayCheckpoint, ResetMethod,
};
use cim_backup_domain::replay::{Job as ReplayState, Kind, ReplayCommand};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::consumer::{Consumer, Position};
use super::{Recorder, Tally, missing};
use crate::engine::context::Context;
use crate::engine::error::EngineError;

/// How often a followed consumer is read.
pub const POLL_EVERY: Duration = Duration::from_millis(200);

pub async fn follow<K: Kind>(
    ctx: &Context,
    before: &ReplayState<K>,
    planned: &PlannedReplay,
    recorder: &Recorder,
    tally: &Tally,
    server_has_reset: bool,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let spec = before.spec.as_ref().expect("a running job has its spec");
    if let Some(done) = before.caught_up_of(&planned.stream, &planned.consumer) {
        tally.set(&planned.stream, &planned.consumer, done.events, done.events);
        return Ok(());
    }
    let c = Consumer {
        api: &ctx.api,
        stream: &planned.stream,
        name: &planned.consumer,
    };
    let started = Instant::now();
    let reset = match before.reset_of(&planned.stream, &planned.consumer) {
        None => first_move(&c, planned, spec.batch_size, server_has_reset).await?,
        Some(earlier) => {
            let checkpoint = before.checkpoint_of(&planned.stream, &planned.consumer);
            match resume_move(&c, earlier, checkpoint, spec.batch_size, server_has_reset).await? {
                Some(again) => again,
                None => {
                    tracing::info!(
                        stream = c.stream,
                        consumer = c.name,
                        "resumed replay: the projector is past its last checkpoint, followed on"
                    );
                    earlier.clone()
                }
            }
        }
    };
    if before.reset_of(&planned.stream, &planned.consumer) != Some(&reset) {
        tracing::info!(stream = c.stream, consumer = c.name, from_seq = reset.from_seq, pending = reset.pending, method = ?reset.method, "projector moved");
        recorder
            .record(ReplayCommand::RecordReset(reset.clone()))
            .await?;
    }
    let interval = spec.checkpoint_interval;
    let stall = Duration::from_secs(spec.stall_timeout_secs);
    let mut next_checkpoint = (reset.events_before / interval + 1) * interval;
    let mut last = (u64::MAX, Instant::now());
    let total = reset.events_before + reset.pending;
    let followed = async {
        let pos = loop {
            if cancel.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            let Some((_, pos)) = c.info().await? else {
                return Err(missing(&c));
            };
            let events = reset.events_before + pos.ack_floor_consumer_seq;
            tally.set(c.stream, c.name, events, total);
            if pos.caught_up() {
                break pos;
            }
            if events >= next_checkpoint {
                let checkpoint = ReplayCheckpoint {
                    stream: planned.stream.clone(),
                    consumer: planned.consumer.clone(),
                    stream_seq: pos.ack_floor_stream_seq,
                    events,
                };
                recorder
                    .record(ReplayCommand::RecordCheckpoint(checkpoint))
                    .await?;
                next_checkpoint = (events / interval + 1) * interval;
            }
            if events != last.0 {
                last = (events, Instant::now());
            } else if last.1.elapsed() >= stall {
                return Err(stalled(&c, &pos, stall));
            }
            tokio::time::sleep(POLL_EVERY).await;
        };
        Ok::<_, EngineError>(pos)
    };
    let followed = followed.await;
    if spec.batch_size.is_some() {
        // Put back on every way out: a failed rebuild must not leave its limit behind.
        let put_back = put_back_max_ack_pending(&c, &reset).await;
        if let (Err(e), Err(_)) = (&put_back, &followed) {
            tracing::warn!(stream = c.stream, consumer = c.name, error = %e, "could not put max_ack_pending back after a failed replay");
        }
        if followed.is_ok() {
            put_back?;
        }
    }
    let pos = followed?;
    let events = reset.events_before + pos.ack_floor_consumer_seq;
    tally.set(c.stream, c.name, events, events);
    let caught = ProjectorCaughtUp {
        domain: planned.domain.clone(),
        stream: planned.stream.clone(),
        consumer: planned.consumer.clone(),
        stream_seq: pos.ack_floor_stream_seq,
        events,
        millis: started.elapsed().as_millis() as u64,
    };
    tracing::info!(
        stream = c.stream,
        consumer = c.name,
        events,
        stream_seq = caught.stream_seq,
        "projector caught up"
    );
    recorder.record(ReplayCommand::RecordCaughtUp(caught)).await
}

/// The first move of a projector: to its planned start.
async fn first_move(
    c: &Consumer<'_>,
    planned: &PlannedReplay,
    batch_size: Option<u64>,
    server_has_reset: bool,
) -> Result<ProjectorReset, EngineError> {
    let Some((config, _)) = c.info().await? else {
        return Err(missing(c));
    };
    let method = c
        .move_to(planned.from_seq, &config, server_has_reset)
        .await?;
    let pending = limit_and_count(c, batch_size).await?;
    Ok(ProjectorReset {
        domain: planned.domain.clone(),
        stream: planned.stream.clone(),
        consumer: planned.consumer.clone(),
        from_seq: planned.from_seq,
        pending,
        events_before: 0,
        method,
        config_json: config.to_string(),
    })
}

/// A resumed job's projector: moved again to the event after its last checkpoint when the
/// consumer is gone or behind it; `None` when it can be followed on where it is.
async fn resume_move(
    c: &Consumer<'_>,
    earlier: &ProjectorReset,
    checkpoint: Option<&ReplayCheckpoint>,
    batch_size: Option<u64>,
    server_has_reset: bool,
) -> Result<Option<ProjectorReset>, EngineError> {
    let floor = checkpoint.map_or(earlier.from_seq.saturating_sub(1), |cp| cp.stream_seq);
    let events_before = checkpoint.map_or(0, |cp| cp.events);
    let original: Value = serde_json::from_str(&earlier.config_json).unwrap_or(Value::Null);
    let method = match c.info().await? {
        None => {
            c.recreate_at(floor + 1, &original).await?;
            ResetMethod::Recreated
        }
        Some((config, pos)) if pos.ack_floor_stream_seq < floor => {
            c.move_to(floor + 1, &config, server_has_reset).await?
        }
        Some(_) => return Ok(None),
    };
    tracing::warn!(
        stream = c.stream,
        consumer = c.name,
        from_seq = floor + 1,
        "resumed replay: the projector's consumer was gone or behind its last checkpoint; moved to the event after it"
    );
    let pending = limit_and_count(c, batch_size).await?;
    Ok(Some(ProjectorReset {
        from_seq: floor + 1,
        pending,
        events_before,
        method,
        ..earlier.clone()
    }))
}

/// Applies `--batch-size` (as `max_ack_pending`) and returns the events the consumer has to
/// deliver.
async fn limit_and_count(c: &Consumer<'_>, batch_size: Option<u64>) -> Result<u64, EngineError> {
    let Some((config, pos)) = c.info().await? else {
        return Err(missing(c));
    };
    if let Some(n) = batch_size {
        c.set_max_ack_pending(&config, Some(n)).await?;
    }
    Ok(pos.num_pending + pos.num_ack_pending)
}

/// Gives the consumer back the `max_ack_pending` it had before the job.
async fn put_back_max_ack_pending(
    c: &Consumer<'_>,
    reset: &ProjectorReset,
) -> Result<(), EngineError> {
    let original: Value = serde_json::from_str(&reset.config_json).unwrap_or(Value::Null);
    let Some((config, _)) = c.info().await? else {
        return Err(missing(c));
    };
    let own = original.get("max_ack_pending").and_then(Value::as_u64);
    c.set_max_ack_pending(&config, own).await?;
    Ok(())
}

fn stalled(c: &Consumer<'_>, pos: &Position, stall: Duration) -> EngineError {
    let who = if pos.num_waiting == 0 {
        "no pull request is waiting and nothing was acknowledged"
    } else {
        "pull requests wait but nothing was acknowledged"
    };
    EngineError::precondition(
        ErrorCode::Unavailable,
        format!(
            "no projector is consuming {} on stream {}: {who} for {} s, with {} events to deliver and {} unacknowledged (start the projector, then run the same command again; its consumer stays where it was moved)",
            c.name,
            c.stream,
            stall.as_secs(),
            pos.num_pending,
            pos.num_ack_pending
        ),
    )
}
