//! The `projection-replay` and `projection-rebuild` jobs (docs/PROJECTIONS.md §8).
//!
//! Per domain, at most `parallel` domains at once:
//! 1. a rebuild stops the domain's projectors (a consumer pause), waits until none holds an
//!    unacknowledged event, takes the safety snapshot and deletes every key of the read
//!    models (a replay skips this);
//! 2. each projector's consumer is moved to its planned start and followed ([`follow`]) until
//!    nothing is left to deliver, with checkpoints every `checkpoint_interval` events.
//!
//! Domains run concurrently but the job's events are recorded by one loop (the only holder of
//! the job), which the domain tasks send their steps to and wait on; a step is done only once
//! it is recorded.

pub mod consumer;
pub mod follow;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use cim_backup_contracts::ErrorCode;
use cim_backup_contracts::projections::{Domain, ModelRestored};
use cim_backup_contracts::replay::{
    DomainCleared, ReplayJobCompleted, ReplayJobProgressed, ReplayJobStarted, ReplayOperation,
};
use cim_backup_contracts::views::JobState;
use cim_backup_domain::replay::{Job as ReplayState, Kind, ReplayCommand};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::PROGRESS_EVERY;
use super::restore::delete_keys;
use super::take::{Counter, recipients_for, take};
use crate::engine::context::Context;
use crate::engine::error::EngineError;
use crate::jobs::{Job, execute};
use consumer::Consumer;

/// How long a rebuild's pause lasts at most: a job that dies while its projectors are paused
/// leaves them paused no longer than this.
pub const PAUSE_FOR: Duration = Duration::from_secs(3600);

/// A step a domain task asks the recording loop to record.
type Record = (ReplayCommand, oneshot::Sender<Result<(), EngineError>>);

/// The domain tasks' way to the recording loop.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Record>,
}

impl Recorder {
    /// Records `command` and returns once it is stored (or refused).
    pub async fn record(&self, command: ReplayCommand) -> Result<(), EngineError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((command, reply))
            .await
            .map_err(|_| EngineError::Interrupted)?;
        answer.await.map_err(|_| EngineError::Interrupted)?
    }
}

/// Events acknowledged and to deliver, per projector: what progress reports.
#[derive(Default)]
pub struct Tally(Mutex<BTreeMap<(String, String), (u64, u64)>>);

impl Tally {
    pub fn set(&self, stream: &str, consumer: &str, done: u64, total: u64) {
        self.0
            .lock()
            .expect("tally lock")
            .insert((stream.to_owned(), consumer.to_owned()), (done, total));
    }

    fn sum(&self) -> ReplayJobProgressed {
        let map = self.0.lock().expect("tally lock");
        ReplayJobProgressed {
            events_done: map.values().map(|v| v.0).sum(),
            events_total: map.values().map(|v| v.1.max(v.0)).sum(),
        }
    }
}

pub async fn run<K: Kind>(
    ctx: &Context,
    job: &mut Job<ReplayState<K>>,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let spec = job.state.spec.clone().ok_or(EngineError::Rejected(
        cim_backup_domain::DomainError::NotCreated,
    ))?;
    if job.state.lifecycle.state == Some(JobState::Accepted) {
        let start = ReplayCommand::Start(ReplayJobStarted::default());
        execute(&ctx.events, job, start, None).await?;
    }
    let before = job.state.clone();
    let server_has_reset = consumer::has_reset(&ctx.client.server_info().version);
    let tally = Tally::default();
    let (tx, mut rx) = mpsc::channel::<Record>(16);
    let job_id = job.id.to_string();
    let work = {
        let recorder = Recorder { tx };
        let (before, tally, spec, job_id) = (&before, &tally, &spec, &job_id);
        async move {
            // At most `parallel` domains at once; the first failure stops the others.
            let permits = tokio::sync::Semaphore::new(spec.parallel as usize);
            let permits = &permits;
            let domains = spec.domains.iter().map(|domain| {
                let recorder = recorder.clone();
                async move {
                    let _turn = permits
                        .acquire()
                        .await
                        .map_err(|_| EngineError::Interrupted)?;
                    domain_work(
                        ctx,
                        before,
                        domain,
                        &recorder,
                        tally,
                        server_has_reset,
                        job_id,
                        cancel,
                    )
                    .await
                }
            });
            futures::future::try_join_all(domains).await
        }
    };
    tokio::pin!(work);
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.tick().await;
    let outcome = loop {
        tokio::select! {
            done = &mut work => break done,
            Some((command, reply)) = rx.recv() => {
                let recorded = execute(&ctx.events, job, command, None).await;
                let _ = reply.send(recorded.map(|_| ()).map_err(EngineError::from));
            }
            _ = tick.tick() => {
                let p = tally.sum();
                if p != job.state.progress {
                    execute(&ctx.events, job, ReplayCommand::Progress(p), None).await?;
                }
            }
        }
    };
    outcome?;
    let p = tally.sum();
    if p != job.state.progress {
        execute(&ctx.events, job, ReplayCommand::Progress(p), None).await?;
    }
    let done = ReplayJobCompleted {
        safety_snapshots: job.state.safety_snapshots.clone(),
        cleared: job.state.cleared.clone(),
        projectors: job.state.caught_up.clone(),
    };
    tracing::info!(job = %job.id, events = done.events(), "replay completed: every projector caught up");
    execute(&ctx.events, job, ReplayCommand::Complete(done), None).await?;
    Ok(())
}

/// One domain: cleared first when rebuilding, then each projector followed until caught up.
#[allow(clippy::too_many_arguments)]
async fn domain_work<K: Kind>(
    ctx: &Context,
    before: &ReplayState<K>,
    domain: &Domain,
    recorder: &Recorder,
    tally: &Tally,
    server_has_reset: bool,
    job_id: &str,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let spec = before.spec.as_ref().expect("a running job has its spec");
    let planned: Vec<_> = spec
        .projectors
        .iter()
        .filter(|p| p.domain == domain.name)
        .collect();
    if K::OPERATION == ReplayOperation::Rebuild && !before.is_cleared(&domain.name) {
        let consumers: Vec<Consumer> = planned
            .iter()
            .map(|p| Consumer {
                api: &ctx.api,
                stream: &p.stream,
                name: &p.consumer,
            })
            .collect();
        let cleared = clear_domain(ctx, before, domain, &consumers, recorder, job_id, cancel).await;
        if cleared.is_err() {
            for c in &consumers {
                if let Err(e) = c.resume().await {
                    tracing::warn!(stream = c.stream, consumer = c.name, error = %e, "could not end the pause of a projector after a failed clear; it ends by itself");
                }
            }
        }
        cleared?;
    }
    let follows = planned
        .iter()
        .map(|p| follow::follow(ctx, before, p, recorder, tally, server_has_reset, cancel));
    futures::future::try_join_all(follows).await?;
    Ok(())
}

/// A rebuild's first step for one domain: its projectors paused and drained, the safety
/// snapshot (unless declined), then every key of its read models deleted.
async fn clear_domain<K: Kind>(
    ctx: &Context,
    before: &ReplayState<K>,
    domain: &Domain,
    consumers: &[Consumer<'_>],
    recorder: &Recorder,
    job_id: &str,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let spec = before.spec.as_ref().expect("a running job has its spec");
    let stall = Duration::from_secs(spec.stall_timeout_secs);
    for c in consumers {
        await_reader(c, stall, cancel).await?;
    }
    let until = time::OffsetDateTime::now_utc() + PAUSE_FOR;
    for c in consumers {
        c.pause(until).await?;
    }
    for c in consumers {
        drain(c, stall, cancel).await?;
    }
    if before.needs_safety_snapshot(&domain.name) {
        let store = ctx.destinations.create(&spec.destination_url)?;
        let recipients = recipients_for(ctx, &spec.destination_url)?;
        let safety = take(
            ctx,
            &store,
            domain,
            recipients,
            Some(job_id.to_owned()),
            cancel,
            &Counter::default(),
        )
        .await?;
        let summary = safety.manifest.summary(safety.id, &spec.destination_url);
        tracing::info!(job = job_id, domain = %domain.name, safety = %safety.id, keys = summary.keys(), "safety snapshot of the read models stored before the rebuild");
        recorder
            .record(ReplayCommand::RecordSafetySnapshot(summary))
            .await?;
    }
    let mut models = Vec::new();
    for m in &domain.projections {
        let removed = delete_keys(ctx, &m.bucket, &m.prefix, |_| false, cancel).await?;
        tracing::info!(job = job_id, domain = %domain.name, model = %m.name, removed, "read model cleared for the rebuild");
        models.push(ModelRestored {
            name: m.name.clone(),
            bucket: m.bucket.clone(),
            restored: 0,
            unchanged: 0,
            removed,
        });
    }
    recorder
        .record(ReplayCommand::RecordCleared(DomainCleared {
            domain: domain.name.clone(),
            models,
        }))
        .await
}

/// Waits, at most `stall`, until a projector is there to fold what the rebuild replays (a
/// pull request waiting, or a bound push consumer): a rebuild with nobody to rebuild would
/// leave the read models empty, so it fails before clearing anything.
async fn await_reader(
    c: &Consumer<'_>,
    stall: Duration,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    wait_until(c, stall, cancel, consumer::Position::has_reader, |_| {
        format!(
            "no projector is consuming {} on stream {}: no pull request or subscriber for {} s; nothing was cleared (start the projector, then run the rebuild again)",
            c.name,
            c.stream,
            stall.as_secs()
        )
    })
    .await
}

/// Waits until a paused projector has acknowledged everything it was given.
async fn drain(
    c: &Consumer<'_>,
    stall: Duration,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    wait_until(c, stall, cancel, |pos| pos.num_ack_pending == 0, |pos| {
        format!(
            "projector {} on {} still holds {} unacknowledged events {} s after it was paused; nothing was cleared (stop or fix the projector, or raise stall_timeout_secs)",
            c.name,
            c.stream,
            pos.num_ack_pending,
            stall.as_secs()
        )
    })
    .await
}

/// Reads the consumer every [`follow::POLL_EVERY`] until `ready` holds, failing with
/// `unavailable` and `why_not` of its last position after `stall`.
async fn wait_until(
    c: &Consumer<'_>,
    stall: Duration,
    cancel: &CancellationToken,
    ready: impl Fn(&consumer::Position) -> bool,
    why_not: impl Fn(&consumer::Position) -> String,
) -> Result<(), EngineError> {
    let deadline = tokio::time::Instant::now() + stall;
    loop {
        let Some((_, pos)) = c.info().await? else {
            return Err(missing(c));
        };
        if ready(&pos) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(EngineError::precondition(
                ErrorCode::Unavailable,
                why_not(&pos),
            ));
        }
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        tokio::time::sleep(follow::POLL_EVERY).await;
    }
}

/// The error for a projector whose consumer is gone.
pub fn missing(c: &Consumer<'_>) -> EngineError {
    EngineError::precondition(
        ErrorCode::NotFound,
        format!(
            "projector {} has no consumer on stream {} any more",
            c.name, c.stream
        ),
    )
}
