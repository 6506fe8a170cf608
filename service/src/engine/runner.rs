//! [`Runner`]: owns the running jobs of this instance.
//!
//! - Spawns each accepted job as a task and ends it with exactly one terminal event:
//!   completed (by the engine), failed (any error), or cancelled (after a cancel request).
//! - Cancellation is routed through the event log: every instance watches for
//!   `*CancelRequested` events (core NATS subscription on the event subjects) and stops the job
//!   if it runs it, so `cancel` works whichever instance received the command.
//! - Shutdown stops tasks *without* recording anything: the jobs stay running in the log and
//!   are resumed by [`Runner::resume`] when the instance starts again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cim_backup_contracts::JobId;
use cim_backup_contracts::events::{JobCancelled, RestoreMethod};
use cim_backup_contracts::subjects::{EVENT_PREFIX, parse_event_subject};
use cim_backup_contracts::views::JobKind;
use cim_backup_domain::JobLifecycle;
use cim_backup_domain::backup::BackupJob;
use cim_backup_domain::check::CheckJob;
use cim_backup_domain::repair::RepairJob;
use cim_backup_domain::restore::RestoreJob;
use cim_backup_domain::tree_restore::TreeRestoreJob;
use cim_backup_domain::verify::VerifyJob;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::context::Context;
use super::error::EngineError;
use super::{backup, check, repair, restore, verify};
use crate::jobs::{self, ExecuteError, Job, execute};

/// How long a runner keeps trying to record how a job ended while NATS is unreachable.
const RECORD_END_FOR: Duration = Duration::from_secs(120);
/// How often the runner looks for jobs of this instance that the log has unfinished but that
/// do not run here (an accept that was stored although its acknowledgement was lost, a job
/// whose end could not be recorded): an accepted job never sits unrun.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

pub struct Runner {
    ctx: Arc<Context>,
    running: Mutex<HashMap<JobId, CancellationToken>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// How long a job waits for NATS to come back after losing it, before it fails.
const RECONNECT_FOR: Duration = Duration::from_secs(120);
/// How often a job resumes after NATS went away under it, before it fails.
const RESUMES: u32 = 5;

/// The engine function of one job kind.
pub type Work<A> = for<'a> fn(
    &'a Context,
    &'a mut Job<A>,
    &'a CancellationToken,
) -> BoxFuture<'a, Result<(), EngineError>>;

/// What to clean up when a job has ended in failure or cancellation.
pub type Abandon<A> = for<'a> fn(&'a Context, &'a Job<A>) -> BoxFuture<'a, ()>;

/// How a job kind meets NATS going away under it.
pub struct Recovery<A: cim_backup_domain::Aggregate + 'static> {
    /// Whether the job waits for NATS and resumes from what it recorded (else: fails).
    resume: fn(&A) -> bool,
    abandon: Option<Abandon<A>>,
}

/// A job kind the runner can run: its work, and what happens to it when NATS goes away.
pub trait Runs: JobLifecycle + Send + Sync + 'static
where
    Self::Command: Clone + Send,
    Self::Event: Send,
{
    const WORK: Work<Self>;
    fn recovery() -> Recovery<Self> {
        Recovery::RESUME
    }
}

impl Runs for BackupJob {
    const WORK: Work<Self> = |ctx, job, cancel| Box::pin(backup::run(ctx, job, cancel));
    fn recovery() -> Recovery<Self> {
        Recovery {
            resume: |_| true,
            // A failed or cancelled backup leaves no snapshot or export it staged behind.
            abandon: Some(|ctx, job| Box::pin(super::trees::abandon(ctx, job))),
        }
    }
}

impl Runs for RestoreJob {
    const WORK: Work<Self> = |ctx, job, cancel| Box::pin(restore::run(ctx, job, cancel));
    fn recovery() -> Recovery<Self> {
        Recovery {
            // An append has no sequences to resume by: the segment in flight would be
            // appended again to a live stream (duplicates without a Nats-Msg-Id).
            resume: |restore| {
                restore
                    .spec
                    .as_ref()
                    .is_some_and(|s| s.options.method != RestoreMethod::Append)
            },
            abandon: Some(|ctx, job| Box::pin(restore::abandon(ctx, job))),
        }
    }
}

impl Runs for VerifyJob {
    const WORK: Work<Self> = |ctx, job, cancel| Box::pin(verify::run(ctx, job, cancel));
}

impl Runs for TreeRestoreJob {
    const WORK: Work<Self> =
        |ctx, job, cancel| Box::pin(super::tree_restore::run(ctx, job, cancel));
}

impl Runs for CheckJob {
    const WORK: Work<Self> = |ctx, job, cancel| Box::pin(check::run(ctx, job, cancel));
}

impl Runs for cim_backup_domain::projection::SnapshotJob {
    const WORK: Work<Self> =
        |ctx, job, cancel| Box::pin(super::projections::snapshot::run(ctx, job, cancel));
}

impl Runs for cim_backup_domain::projection::RestoreJob {
    const WORK: Work<Self> =
        |ctx, job, cancel| Box::pin(super::projections::restore::run(ctx, job, cancel));
}

impl Runs for cim_backup_domain::projection::ClearJob {
    const WORK: Work<Self> =
        |ctx, job, cancel| Box::pin(super::projections::clear::run(ctx, job, cancel));
}

impl Runs for cim_backup_domain::replay::ReplayJob {
    const WORK: Work<Self> =
        |ctx, job, cancel| Box::pin(super::projections::replay::run(ctx, job, cancel));
}

impl Runs for cim_backup_domain::replay::RebuildJob {
    const WORK: Work<Self> =
        |ctx, job, cancel| Box::pin(super::projections::replay::run(ctx, job, cancel));
}

impl Runs for cim_backup_domain::config_import::ConfigImportJob {
    const WORK: Work<Self> =
        |ctx, job, cancel| Box::pin(crate::domain_configs::apply::run(ctx, job, cancel));
}

impl Runs for cim_backup_domain::key_restore::KeyRestoreJob {
    const WORK: Work<Self> =
        |ctx, job, cancel| Box::pin(super::projections::key_restore::run(ctx, job, cancel));
}

/// A repair is not resumed in place after NATS went away: its own failure path has given the
/// live stream back by then (docs/INTEGRITY.md §5), so it ends failed.
impl Runs for RepairJob {
    const WORK: Work<Self> = |ctx, job, cancel| Box::pin(repair::run(ctx, job, cancel));
    fn recovery() -> Recovery<Self> {
        Recovery {
            resume: |_| false,
            abandon: None,
        }
    }
}

/// Evaluates `$body` with `$J` naming the aggregate type of the job kind `$kind`: the service's
/// one list of which aggregate each kind is (the kinds themselves are listed in
/// `cim_backup_contracts::kinds`). The compiler refuses a kind left out.
#[macro_export]
macro_rules! with_job_type {
    ($kind:expr, $J:ident => $body:expr) => {{
        use cim_backup_contracts::views::JobKind as K;
        match $kind {
            K::Backup => {
                type $J = cim_backup_domain::backup::BackupJob;
                $body
            }
            K::Restore => {
                type $J = cim_backup_domain::restore::RestoreJob;
                $body
            }
            K::Verify => {
                type $J = cim_backup_domain::verify::VerifyJob;
                $body
            }
            K::Check => {
                type $J = cim_backup_domain::check::CheckJob;
                $body
            }
            K::Repair => {
                type $J = cim_backup_domain::repair::RepairJob;
                $body
            }
            K::TreeRestore => {
                type $J = cim_backup_domain::tree_restore::TreeRestoreJob;
                $body
            }
            K::ProjectionSnapshot => {
                type $J = cim_backup_domain::projection::SnapshotJob;
                $body
            }
            K::ProjectionRestore => {
                type $J = cim_backup_domain::projection::RestoreJob;
                $body
            }
            K::ProjectionClear => {
                type $J = cim_backup_domain::projection::ClearJob;
                $body
            }
            K::ProjectionReplay => {
                type $J = cim_backup_domain::replay::ReplayJob;
                $body
            }
            K::ProjectionRebuild => {
                type $J = cim_backup_domain::replay::RebuildJob;
                $body
            }
            K::ConfigImport => {
                type $J = cim_backup_domain::config_import::ConfigImportJob;
                $body
            }
            K::KeyRestore => {
                type $J = cim_backup_domain::key_restore::KeyRestoreJob;
                $body
            }
        }
    }};
}

/// What reloading a job before (re)running it found.
enum Reload {
    Runs,
    Ended,
}

impl<A: cim_backup_domain::Aggregate> Recovery<A> {
    /// Resume after NATS is back; nothing to clean up.
    const RESUME: Recovery<A> = Recovery {
        resume: |_| true,
        abandon: None,
    };
}

impl Runner {
    pub fn new(ctx: Arc<Context>) -> Arc<Runner> {
        Arc::new(Runner {
            ctx,
            running: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        })
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Runs `job` here: its kind's work, and its recovery when NATS goes away.
    pub fn start<A: Runs>(self: &Arc<Self>, job: Job<A>)
    where
        A::Command: Clone + Send,
        A::Event: Send,
    {
        self.spawn(job, A::WORK, A::recovery());
    }

    fn spawn<A>(self: &Arc<Self>, mut job: Job<A>, work: Work<A>, recovery: Recovery<A>)
    where
        A: JobLifecycle + Send + Sync + 'static,
        A::Command: Clone + Send,
        A::Event: Send,
    {
        let cancel = CancellationToken::new();
        if job.state.lifecycle().cancel_requested {
            cancel.cancel();
        }
        {
            let mut running = self.running.lock().unwrap();
            if running.contains_key(&job.id) {
                return; // already running here
            }
            running.insert(job.id.clone(), cancel.clone());
        }
        let this = Arc::clone(self);
        self.tasks.spawn(async move {
            let ctx = Arc::clone(&this.ctx);
            // The job as the log has it now: the caller's copy may be older than an end that
            // was recorded meanwhile (a repeated request racing the job's last step).
            match this.refresh(&mut job, &cancel).await {
                Reload::Runs => {}
                Reload::Ended => {
                    this.running.lock().unwrap().remove(&job.id);
                    return;
                }
            }
            let mut resumes = 0;
            let outcome = loop {
                // A panic in an engine is a bug, but it must still end the job as failed rather
                // than leave it running forever.
                let guarded =
                    std::panic::AssertUnwindSafe(work(&ctx, &mut job, &cancel)).catch_unwind();
                let outcome = tokio::select! {
                    outcome = guarded => outcome.unwrap_or_else(|panic| {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "unknown panic".into());
                        Err(EngineError::precondition(cim_backup_contracts::ErrorCode::Internal, format!("internal error: {what}")))
                    }),
                    _ = this.shutdown.cancelled() => break None,
                };
                match outcome {
                    Err(e)
                        if (recovery.resume)(&job.state)
                            && e.is_transient()
                            && resumes < RESUMES =>
                    {
                        resumes += 1;
                        tracing::warn!(job = %job.id, error = %e, "NATS went away under the job; it resumes when NATS is back");
                        if !this.await_nats().await {
                            if this.shutdown.is_cancelled() {
                                break None; // stopping: record nothing, resume on restart
                            }
                            break Some(Err(e));
                        }
                        match this.refresh(&mut job, &cancel).await {
                            Reload::Runs => {}
                            Reload::Ended => break None, // it ended before the connection went
                        }
                        tracing::info!(job = %job.id, resumes, "NATS is back; resuming the job");
                    }
                    outcome => break Some(outcome),
                }
            };
            if let Some(outcome) = outcome {
                // Clean up first, so that whoever sees the job failed or cancelled finds no
                // half-written leftovers.
                let ended = outcome.as_ref().is_err_and(|e| !matches!(e, EngineError::Interrupted));
                if let (true, Some(abandon)) = (ended, recovery.abandon) {
                    abandon(&ctx, &job).await;
                }
                this.finish(&mut job, outcome).await;
            }
            this.running.lock().unwrap().remove(&job.id);
        });
    }

    /// Reloads a job from its events (for up to [`RECONNECT_FOR`] while the event stream does
    /// not answer yet: right after a restart JetStream can answer before its streams do), and
    /// carries a cancel request recorded meanwhile into the job's token: the core message that
    /// normally carries it may have been missed while NATS was away.
    async fn refresh<A: JobLifecycle>(
        &self,
        job: &mut Job<A>,
        cancel: &CancellationToken,
    ) -> Reload {
        let deadline = tokio::time::Instant::now() + RECONNECT_FOR;
        loop {
            match jobs::load::<A>(&self.ctx.events, &job.id).await {
                Ok(Some(fresh)) => {
                    *job = fresh;
                    break;
                }
                Ok(None) => break, // not readable yet: keep what the caller had
                Err(e)
                    if tokio::time::Instant::now() < deadline && !self.shutdown.is_cancelled() =>
                {
                    tracing::debug!(job = %job.id, error = %e, "reloading the job");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => {
                    tracing::warn!(job = %job.id, error = %e, "cannot reload the job; going on with what is known");
                    break;
                }
            }
        }
        if job.state.lifecycle().cancel_requested {
            cancel.cancel();
        }
        match job.state.lifecycle().state {
            Some(state) if state.is_terminal() => Reload::Ended,
            _ => Reload::Runs,
        }
    }

    /// Records how a job ended, unless the engine already recorded its completion.
    async fn finish<A>(&self, job: &mut Job<A>, outcome: Result<(), EngineError>)
    where
        A: JobLifecycle,
        A::Command: Clone,
    {
        let command = match outcome {
            Ok(()) => return,
            Err(EngineError::Interrupted) => {
                tracing::info!(job = %job.id, "job interrupted by the service stopping; it resumes on restart");
                return;
            }
            Err(EngineError::Cancelled) => {
                self.await_cancel_request(job).await;
                if job.state.lifecycle().cancel_requested {
                    A::confirm_cancel(JobCancelled { reason: None })
                } else {
                    A::fail(EngineError::nats("the job was stopped for a cancel request that never became visible in the event log").to_failure())
                }
            }
            Err(e) => {
                tracing::warn!(job = %job.id, kind = %A::KIND, error = %e, "job failed");
                A::fail(e.to_failure())
            }
        };
        // NATS may be what failed: keep trying while the client reconnects. If it never comes
        // back, the job stays non-terminal in the log and this instance resumes it on restart.
        let mut delay = Duration::from_millis(200);
        let deadline = tokio::time::Instant::now() + RECORD_END_FOR;
        loop {
            match execute(&self.ctx.events, job, command.clone(), None).await {
                Ok(_) => return,
                Err(ExecuteError::Store(e))
                    if tokio::time::Instant::now() < deadline && !self.shutdown.is_cancelled() =>
                {
                    tracing::warn!(job = %job.id, error = %e, "cannot record the end of the job yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::error!(job = %job.id, error = %e, "could not record the end of the job");
                    return;
                }
            }
        }
    }

    /// The cancel request that stopped a job was seen on the wire, which in a cluster can be
    /// before the event is readable from the stream (it is stored after the RAFT commit).
    /// Reload until the request is part of the job's state, for a few seconds at most.
    async fn await_cancel_request<A: JobLifecycle>(&self, job: &mut Job<A>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !job.state.lifecycle().cancel_requested && tokio::time::Instant::now() < deadline {
            match jobs::load::<A>(&self.ctx.events, &job.id).await {
                Ok(Some(fresh)) => *job = fresh,
                Ok(None) => return,
                Err(e) => tracing::debug!(job = %job.id, error = %e, "reloading a cancelled job"),
            }
            if !job.state.lifecycle().cancel_requested {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Waits until NATS answers again (connected, JetStream responding), at most
    /// [`RECONNECT_FOR`]; false if it did not, or the service is stopping.
    async fn await_nats(&self) -> bool {
        let deadline = tokio::time::Instant::now() + RECONNECT_FOR;
        while tokio::time::Instant::now() < deadline && !self.shutdown.is_cancelled() {
            let connected = matches!(
                self.ctx.client.connection_state(),
                async_nats::connection::State::Connected
            );
            if connected && self.ctx.api.api_level().await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        false
    }

    /// Stops the job if it runs here.
    pub fn cancel_local(&self, id: &JobId) {
        if let Some(token) = self.running.lock().unwrap().get(id) {
            token.cancel();
        }
    }

    /// Whether the job runs in this instance.
    pub fn is_running(&self, id: &JobId) -> bool {
        self.running.lock().unwrap().contains_key(id)
    }

    /// Watches the event subjects for cancel requests until shutdown.
    pub async fn watch_cancellations(self: Arc<Self>) -> Result<(), async_nats::SubscribeError> {
        let mut events = self
            .ctx
            .client
            .subscribe(format!("{EVENT_PREFIX}.*.*.*"))
            .await?;
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    message = events.next() => {
                        let Some(message) = message else { break };
                        if let Some((_, id, event_type)) = parse_event_subject(message.subject.as_str())
                            && event_type.ends_with("CancelRequested")
                                && let Ok(id) = id.parse::<JobId>() {
                                    self.cancel_local(&id);
                                }
                    }
                }
            }
        });
        Ok(())
    }

    /// Restarts the unfinished jobs this instance owns (`candidates` come from the job views;
    /// each is reloaded from its events, which are the truth).
    pub async fn resume(self: &Arc<Self>, candidates: Vec<(JobKind, JobId)>) {
        for (kind, id) in candidates {
            let resumed = crate::with_job_type!(kind, J => self
                .reload::<J>(&id)
                .await
                .map(|j| j.map(|j| self.start(j))));
            match resumed {
                Ok(Some(())) => tracing::info!(job = %id, %kind, "resumed unfinished job"),
                Ok(None) => {}
                Err(e) => tracing::error!(job = %id, error = %e, "cannot resume job"),
            }
        }
    }

    /// Starts every unfinished job of this instance that does not run here (at start: all of
    /// them). Returns how many were started.
    pub async fn run_unrun(self: &Arc<Self>) -> Result<usize, crate::projector::ViewError> {
        let unrun: Vec<_> = self
            .ctx
            .views
            .jobs()
            .await?
            .into_iter()
            .filter(|v| {
                !v.state.is_terminal()
                    && v.instance == self.ctx.instance
                    && !self.is_running(&v.job_id)
            })
            .map(|v| (v.kind, v.job_id))
            .collect();
        let count = unrun.len();
        self.resume(unrun).await;
        Ok(count)
    }

    /// Runs [`Runner::run_unrun`] every [`SWEEP_EVERY`] until shutdown.
    pub fn sweep(self: Arc<Self>) {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(SWEEP_EVERY) => {}
                }
                if let Err(e) = self.run_unrun().await {
                    tracing::warn!(error = %e, "cannot look for unfinished jobs; trying again later");
                }
            }
        });
    }

    async fn reload<A: JobLifecycle>(
        &self,
        id: &JobId,
    ) -> Result<Option<Job<A>>, crate::event_store::EventStoreError> {
        let job = jobs::load::<A>(&self.ctx.events, id).await?;
        Ok(job.filter(|j| j.state.lifecycle().state.is_some_and(|s| !s.is_terminal())))
    }

    /// Stops every job task without recording anything, and waits for them.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}
