//! The repair engine: restore a live stream from a point (`restore-from-point`).
//!
//! JetStream cannot rewrite a stored message, so a repair rebuilds the stream. The procedure
//! (docs/INTEGRITY.md tells operators what they see at each step):
//!
//! 1. **Freeze** the live stream `S`: it keeps content and consumers but loses its subjects, so
//!    nothing is written that the repair would lose. Then **plan** from the frozen state, reading
//!    and verifying the backup's records from the repair point `N` on ([`plan`]).
//! 2. **Safety copy** `S_PRE_REPAIR_<tag>`: the server's snapshot of `S`, restored under that name.
//! 3. **Stage** `S_REPAIR_<tag>`: a per-message server archive of `S`'s messages before `N`,
//!    the backup's records from `N` (original sequences and times), and — with `keep_newer` —
//!    live messages after the backup's cut.
//! 4. **Verify** the staging stream: exact counts and last sequence, and its chains walked clean.
//! 5. **Swap**: `S`'s durable consumers and positions are recorded, `S` is deleted and uploaded
//!    again from the staging stream with those consumers, checked, and given its subjects back.
//! 6. Clean up: the staging stream goes; the safety copy stays unless asked otherwise.
//!
//! A failure or cancel before the swap puts `S` back as it was (subjects restored) and removes
//! what the repair created; after the swap started it cannot be cancelled, and a failure names
//! the streams holding the data. A restarted service resumes after the last recorded step.

pub mod plan;
pub mod streams;

use std::time::Duration;

use cim_backup_contracts::ErrorCode;
use cim_backup_contracts::events::{
    ConsumerPosition, RepairCompleted, RepairPlan, RepairProgressed, RepairStarted, RepairStep,
    RepairStepDone,
};
use cim_backup_contracts::integrity::IntegrityReport;
use cim_backup_contracts::views::JobState;
use cim_backup_domain::repair::{RepairCommand, RepairJob};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::context::Context;
use super::error::EngineError;
use super::reader::RangeReader;
use super::restore::server_archive::{Upload, consumer_entry};
use super::restore::settled_info;
use crate::archive::record::{Record, encode_headers};
use crate::jobs::{Job, execute};

const PROGRESS_EVERY: Duration = Duration::from_millis(250);

pub async fn run(
    ctx: &Context,
    job: &mut Job<RepairJob>,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let result = repair(ctx, job, cancel).await;
    match result {
        // The service is stopping: keep everything as it is for the resume.
        Err(EngineError::Interrupted) => Err(EngineError::Interrupted),
        Err(e) if !job.state.swapping() => match undo(ctx, job).await {
            Ok(()) => Err(e),
            Err(stuck) => Err(EngineError::precondition(e.code(), format!("{e}; {stuck}"))),
        },
        Err(e) => {
            let stream = job
                .state
                .spec
                .as_ref()
                .map(|s| s.stream.clone())
                .unwrap_or_default();
            let (safety, staging) = streams::names(&stream, &job.id);
            let where_ = if job.state.done(RepairStep::Swapped) {
                format!(
                    "{stream} holds the repaired content; clean-up did not finish: delete {staging} (and {safety} once not needed) if they remain"
                )
            } else {
                format!(
                    "while replacing {stream}: the stream as it was is in {safety}, the repaired content in {staging}"
                )
            };
            Err(EngineError::precondition(
                e.code(),
                format!("{e} ({where_})"),
            ))
        }
        Ok(()) => Ok(()),
    }
}

/// Everything the steps share.
struct Repair<'a> {
    ctx: &'a Context,
    cancel: &'a CancellationToken,
    original: Value,
    /// What the rebuilt stream is given: the original configuration carrying its origin.
    given_back: Value,
    source: plan::Source,
}

async fn repair(
    ctx: &Context,
    job: &mut Job<RepairJob>,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let spec = job.state.spec.clone().ok_or(EngineError::Rejected(
        cim_backup_domain::DomainError::NotCreated,
    ))?;
    let original: Value = serde_json::from_str(&spec.original_config).map_err(|e| {
        EngineError::precondition(
            ErrorCode::Internal,
            format!("the recorded stream config is not JSON: {e}"),
        )
    })?;
    let source = plan::Source::open(
        ctx,
        &spec.source_url,
        spec.backup,
        &spec.stream,
        spec.from_seq,
    )
    .await?;
    let given_back = streams::given_back(&original, spec.origin_created);
    let r = Repair {
        ctx,
        cancel,
        original,
        given_back,
        source,
    };
    if job.state.lifecycle.state == Some(JobState::Accepted) {
        r.start(job).await?;
    }
    let plan = job
        .state
        .started
        .as_ref()
        .expect("a running repair has a plan")
        .plan
        .clone();
    if !job.state.done(RepairStep::SafetyCopied) {
        r.check_cancel()?;
        r.safety_copy(job, &plan).await?;
    }
    if !job.state.done(RepairStep::Staged) {
        r.check_cancel()?;
        r.stage(job, &plan).await?;
    }
    if !job.state.done(RepairStep::Verified) {
        r.check_cancel()?;
        r.verify_staging(job, &plan).await?;
    }
    if !job.state.done(RepairStep::Swapping) {
        r.check_cancel()?;
        r.ready_to_swap(job, &plan).await?;
        let consumers = r.consumer_positions(&plan.stream).await?;
        let swapping = r
            .record(
                job,
                RepairStep::Swapping,
                &plan.stream,
                plan.messages(),
                plan.target_last_seq,
                consumers,
            )
            .await;
        match swapping {
            // A cancel recorded since the last look wins: nothing has been replaced yet.
            Err(EngineError::Rejected(_)) if job.state.lifecycle.cancel_requested => {
                return Err(EngineError::Cancelled);
            }
            other => other?,
        }
    }
    // From here on the live stream may be gone: no cancelling, finish or fail loudly.
    let mut report = None;
    if !job.state.done(RepairStep::Swapped) {
        report = r.swap(job, &plan).await?;
    }
    r.finish(job, &plan, report).await
}

impl Repair<'_> {
    fn check_cancel(&self) -> Result<(), EngineError> {
        if self.cancel.is_cancelled() {
            Err(EngineError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Freezes the live stream, plans from its frozen state, and records the plan.
    async fn start(&self, job: &mut Job<RepairJob>) -> Result<(), EngineError> {
        let spec = job.state.spec.clone().expect("accepted");
        let level = self.ctx.api.api_level().await?;
        if level < 5 {
            return Err(EngineError::precondition(
                ErrorCode::BadRequest,
                format!(
                    "restore-from-point needs nats-server 2.15+ (JetStream API level 5, per-message restore); this server has level {level}"
                ),
            ));
        }
        let stream = &spec.stream;
        let info = self.ctx.api.stream_info(stream).await?.ok_or_else(|| {
            EngineError::precondition(
                ErrorCode::NotFound,
                format!("stream {stream} vanished before the repair started"),
            )
        })?;
        if let Some(why) = plan::refuse(stream, &self.original) {
            return Err(EngineError::precondition(ErrorCode::BadRequest, why));
        }
        if !streams::frozen_by(&info.config, &job.id) {
            if !streams::same_config(&info.config, &self.original) {
                return Err(EngineError::precondition(
                    ErrorCode::Conflict,
                    format!(
                        "the configuration of {stream} changed after the repair was accepted; nothing was changed — review and ask again"
                    ),
                ));
            }
            self.ctx
                .api
                .update_stream(&streams::frozen(&self.original, &job.id))
                .await?;
            tracing::info!(job = %job.id, stream, "stream frozen for the repair");
        }
        let live = settled_info(self.ctx, stream).await?;
        let request = plan::Request {
            stream,
            from_seq: spec.from_seq,
            backup: spec.backup,
            profile: spec.profile.as_ref(),
            keep_newer: spec.keep_newer,
            keep_safety_copy: spec.keep_safety_copy,
        };
        let planned = plan::make(self.ctx, &self.source, &live, &request, &job.id).await?;
        for name in [&planned.safety_copy, &planned.staging] {
            self.remove_ours(name, &job.id).await?;
        }
        let started = RepairStarted {
            plan: planned,
            chain: self.source.chain.ids(),
        };
        execute(&self.ctx.events, job, RepairCommand::Start(started), None).await?;
        Ok(())
    }

    async fn record(
        &self,
        job: &mut Job<RepairJob>,
        step: RepairStep,
        stream: &str,
        messages: u64,
        last_seq: u64,
        consumers: Vec<ConsumerPosition>,
    ) -> Result<(), EngineError> {
        let done = RepairStepDone {
            step,
            stream: stream.to_owned(),
            messages,
            last_seq,
            consumers,
        };
        execute(&self.ctx.events, job, RepairCommand::Step(done), None).await?;
        tracing::info!(job = %job.id, ?step, stream, messages, "repair step done");
        Ok(())
    }

    /// Deletes `name` if this repair created it (left from an interrupted attempt); refuses to
    /// touch it if someone else did.
    async fn remove_ours(
        &self,
        name: &str,
        job: &cim_backup_contracts::JobId,
    ) -> Result<(), EngineError> {
        match self.ctx.api.stream_info(name).await? {
            None => Ok(()),
            Some(info) if streams::built_by(&info.config, job) => {
                Ok(self.ctx.api.delete_stream(name).await?)
            }
            Some(_) => Err(EngineError::precondition(
                ErrorCode::Conflict,
                format!(
                    "stream {name} exists and was not made by this repair; delete or rename it, then repair again"
                ),
            )),
        }
    }

    async fn safety_copy(
        &self,
        job: &mut Job<RepairJob>,
        plan: &RepairPlan,
    ) -> Result<(), EngineError> {
        self.remove_ours(&plan.safety_copy, &job.id).await?;
        let config = streams::built(&self.original, &plan.safety_copy, &job.id);
        super::snapshot::copy_stream(self.ctx, &plan.stream, &config).await?;
        let state = settled_info(self.ctx, &plan.safety_copy).await?.state;
        if state.messages != plan.live_messages || state.last_seq != plan.live_last_seq {
            return Err(EngineError::precondition(
                ErrorCode::Internal,
                format!(
                    "the safety copy {} holds {} messages up to seq {}, the frozen stream {} up to {}",
                    plan.safety_copy,
                    state.messages,
                    state.last_seq,
                    plan.live_messages,
                    plan.live_last_seq
                ),
            ));
        }
        self.record(
            job,
            RepairStep::SafetyCopied,
            &plan.safety_copy,
            state.messages,
            state.last_seq,
            Vec::new(),
        )
        .await
    }

    /// Writes the repaired content to the staging stream in one server archive.
    async fn stage(&self, job: &mut Job<RepairJob>, plan: &RepairPlan) -> Result<(), EngineError> {
        self.remove_ours(&plan.staging, &job.id).await?;
        let config = streams::built(&self.original, &plan.staging, &job.id);
        let mut upload = Upload::begin(
            &self.ctx.api,
            &config,
            first_seq(plan),
            plan.target_last_seq,
            &[],
        )
        .await?;
        let mut progress = Progress::new(true);
        if plan.kept_live > 0 {
            self.copy_range(
                job,
                &mut upload,
                &plan.stream,
                (plan.live_first_seq, plan.from_seq - 1),
                &mut progress,
            )
            .await?;
        }
        for i in 0..self.source.plan.segments.len() {
            self.check_cancel()?;
            let fetch = self.source.segment(self.ctx, i);
            tokio::pin!(fetch);
            let plain = loop {
                tokio::select! {
                    plain = &mut fetch => break plain?,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => upload.keepalive().await?,
                }
            };
            for record in self.source.records(i, &plain) {
                upload.message(&record?).await?;
                progress.tick(self.ctx, job).await?;
            }
        }
        if plan.kept_newer > 0 {
            let newer = (self.source.cut_last_seq() + 1, plan.live_last_seq);
            self.copy_range(job, &mut upload, &plan.stream, newer, &mut progress)
                .await?;
        }
        upload.finish().await?;
        if progress.done != plan.messages() {
            return Err(EngineError::precondition(
                ErrorCode::Internal,
                format!(
                    "staging wrote {} messages where the plan has {}; the live stream is unchanged",
                    progress.done,
                    plan.messages()
                ),
            ));
        }
        self.record(
            job,
            RepairStep::Staged,
            &plan.staging,
            progress.done,
            plan.target_last_seq,
            Vec::new(),
        )
        .await
    }

    /// Appends `from..=until` of a live stream to an upload, as stored.
    async fn copy_range(
        &self,
        job: &mut Job<RepairJob>,
        upload: &mut Upload,
        stream: &str,
        (from, until): (u64, u64),
        progress: &mut Progress,
    ) -> Result<(), EngineError> {
        let mut reader = RangeReader::open(&self.ctx.js, stream, from, until).await?;
        let mut headers = Vec::new();
        while let Some(read) = reader.next().await {
            let read = read?;
            encode_headers(read.message.headers.as_ref(), &mut headers);
            let record = Record {
                seq: read.seq,
                time_ns: read.time_ns,
                subject: read.message.subject.as_str(),
                headers: &headers,
                payload: &read.message.payload,
            };
            upload.message(&record).await?;
            if progress.tick(self.ctx, job).await? % 1024 == 0 && progress.cancellable {
                self.check_cancel()?;
            }
        }
        Ok(())
    }

    /// The stream holds exactly the plan; with a profile, its chains are walked.
    /// The stream holds exactly the plan (on every replica); with a profile, its chains are
    /// walked and must be clean.
    async fn check_rebuilt(
        &self,
        job: &Job<RepairJob>,
        stream: &str,
        plan: &RepairPlan,
        cancel: &CancellationToken,
    ) -> Result<Option<IntegrityReport>, EngineError> {
        let state = settled_info(self.ctx, stream).await?.state;
        if state.messages != plan.messages() || state.last_seq != plan.target_last_seq {
            return Err(EngineError::precondition(
                ErrorCode::Internal,
                format!(
                    "{stream} holds {} messages up to seq {}, the plan {} up to {}",
                    state.messages,
                    state.last_seq,
                    plan.messages(),
                    plan.target_last_seq
                ),
            ));
        }
        self.walk_chains(job, stream, plan, cancel).await
    }

    /// Walks the repaired range of `stream` (up to the plan's last sequence, whatever was
    /// written after it) with the job's profile; any break is an error.
    async fn walk_chains(
        &self,
        job: &Job<RepairJob>,
        stream: &str,
        plan: &RepairPlan,
        cancel: &CancellationToken,
    ) -> Result<Option<IntegrityReport>, EngineError> {
        let Some(profile) = job.state.spec.as_ref().and_then(|s| s.profile.as_ref()) else {
            return Ok(None);
        };
        let first = settled_info(self.ctx, stream).await?.state.first_seq;
        let range = (first, plan.target_last_seq);
        let report =
            super::check::walk_stream(self.ctx, stream, profile, range, 10, cancel).await?;
        if let Some(first) = report.findings.first() {
            let hint = if first.stream_seq < plan.from_seq {
                format!(
                    " — before the repair point {}: repair from an earlier sequence",
                    plan.from_seq
                )
            } else {
                String::new()
            };
            return Err(EngineError::precondition(
                ErrorCode::Corrupt,
                format!(
                    "the repaired content in {stream} still has broken chains: {} finding(s), the first at seq {} ({}: {}){hint}",
                    report.findings_total, first.stream_seq, first.kind, first.detail
                ),
            ));
        }
        Ok(Some(report))
    }

    /// Before the point of no return: the frozen stream is exactly what was planned (nothing
    /// written to it, nothing removed) and the verified staging stream is still there.
    async fn ready_to_swap(
        &self,
        job: &Job<RepairJob>,
        plan: &RepairPlan,
    ) -> Result<(), EngineError> {
        let live = settled_info(self.ctx, &plan.stream).await?;
        let frozen = streams::frozen_by(&live.config, &job.id);
        if !frozen
            || live.state.messages != plan.live_messages
            || live.state.last_seq != plan.live_last_seq
        {
            return Err(EngineError::precondition(
                ErrorCode::Conflict,
                format!(
                    "{} changed while frozen ({} messages up to seq {}, planned {} up to {}{}); it was not replaced",
                    plan.stream,
                    live.state.messages,
                    live.state.last_seq,
                    plan.live_messages,
                    plan.live_last_seq,
                    if frozen {
                        ""
                    } else {
                        ", and no longer carries this repair's freeze"
                    }
                ),
            ));
        }
        let staged = settled_info(self.ctx, &plan.staging).await?;
        if !streams::built_by(&staged.config, &job.id) || staged.state.messages != plan.messages() {
            return Err(EngineError::precondition(
                ErrorCode::Conflict,
                format!(
                    "the staging stream {} changed after it was verified; {} was not replaced",
                    plan.staging, plan.stream
                ),
            ));
        }
        Ok(())
    }

    async fn verify_staging(
        &self,
        job: &mut Job<RepairJob>,
        plan: &RepairPlan,
    ) -> Result<(), EngineError> {
        self.check_rebuilt(job, &plan.staging, plan, self.cancel)
            .await?;
        self.record(
            job,
            RepairStep::Verified,
            &plan.staging,
            plan.messages(),
            plan.target_last_seq,
            Vec::new(),
        )
        .await
    }

    async fn consumer_positions(&self, stream: &str) -> Result<Vec<ConsumerPosition>, EngineError> {
        Ok(self
            .ctx
            .api
            .durable_consumers(stream)
            .await?
            .into_iter()
            .map(|c| ConsumerPosition {
                config: c.config.to_string(),
                name: c.name,
                delivered_consumer_seq: c.delivered_consumer_seq,
                delivered_stream_seq: c.delivered_stream_seq,
                ack_floor_consumer_seq: c.ack_floor_consumer_seq,
                ack_floor_stream_seq: c.ack_floor_stream_seq,
                num_ack_pending: c.num_ack_pending,
            })
            .collect())
    }

    /// Replaces the live stream with the staging stream's content and the recorded consumers.
    async fn swap(
        &self,
        job: &mut Job<RepairJob>,
        plan: &RepairPlan,
    ) -> Result<Option<IntegrityReport>, EngineError> {
        let stream = plan.stream.as_str();
        // Nothing may stop the swap half-way: not a cancel signal, not a late progress event.
        let never = CancellationToken::new();
        let mut given_back = false;
        let upload_needed = match self.ctx.api.stream_info(stream).await? {
            None => true,
            Some(info) if streams::frozen_by(&info.config, &job.id) => {
                self.ctx.api.delete_stream(stream).await?;
                tracing::info!(job = %job.id, stream, "frozen live stream deleted for the swap");
                true
            }
            // Ours from before a restart: complete if the counts say so, else upload again.
            Some(info) if streams::built_by(&info.config, &job.id) => {
                let complete = info.state.messages == plan.messages()
                    && info.state.last_seq == plan.target_last_seq;
                if !complete {
                    self.ctx.api.delete_stream(stream).await?;
                }
                !complete
            }
            // Rebuilt and given its configuration back before a restart: only the record is missing.
            Some(info)
                if streams::same_config(&info.config, &self.given_back)
                    && info.state.last_seq >= plan.target_last_seq =>
            {
                given_back = true;
                false
            }
            Some(_) => {
                return Err(EngineError::precondition(
                    ErrorCode::Conflict,
                    format!(
                        "stream {stream} was recreated by someone else while the repair swapped it"
                    ),
                ));
            }
        };
        if upload_needed {
            let swapping = job
                .state
                .step(RepairStep::Swapping)
                .expect("recorded before the swap");
            let entries = swapping
                .consumers
                .iter()
                .map(|c| {
                    consumer_entry(
                        &c.config,
                        c.ack_floor_stream_seq.min(plan.target_last_seq),
                        c.ack_floor_consumer_seq,
                    )
                })
                .collect::<Result<Vec<_>, _>>()?;
            let config = streams::built(&self.original, stream, &job.id);
            let mut upload = Upload::begin(
                &self.ctx.api,
                &config,
                first_seq(plan),
                plan.target_last_seq,
                &entries,
            )
            .await?;
            let mut progress = Progress::new(false);
            let staged = (1, plan.target_last_seq);
            self.copy_range(job, &mut upload, &plan.staging, staged, &mut progress)
                .await?;
            upload.finish().await?;
        }
        let report = if given_back {
            // It takes writes again: walk the repaired range only.
            self.walk_chains(job, stream, plan, &never).await?
        } else {
            let report = self.check_rebuilt(job, stream, plan, &never).await?;
            self.ctx.api.update_stream(&self.given_back).await?;
            report
        };
        self.record(
            job,
            RepairStep::Swapped,
            stream,
            plan.messages(),
            plan.target_last_seq,
            Vec::new(),
        )
        .await?;
        Ok(report)
    }

    /// Removes the staging stream (and the safety copy unless kept) and completes.
    async fn finish(
        &self,
        job: &mut Job<RepairJob>,
        plan: &RepairPlan,
        report: Option<IntegrityReport>,
    ) -> Result<(), EngineError> {
        let spec = job.state.spec.clone().expect("accepted");
        let report = match report {
            Some(r) => Some(r),
            // Resumed after the swap (the stream takes writes again): walk the repaired range.
            None if plan.chain_checked => {
                self.walk_chains(job, &plan.stream, plan, &CancellationToken::new())
                    .await?
            }
            None => None,
        };
        self.remove_ours(&plan.staging, &job.id).await?;
        if !spec.keep_safety_copy {
            self.remove_ours(&plan.safety_copy, &job.id).await?;
        }
        let first_seq = settled_info(self.ctx, &plan.stream).await?.state.first_seq;
        let mut notes = plan.notes.clone();
        if spec.keep_safety_copy {
            notes.push(format!(
                "the stream as it was is kept as {}: delete it when you no longer need it",
                plan.safety_copy
            ));
        }
        let completed = RepairCompleted {
            messages: plan.messages(),
            first_seq,
            last_seq: plan.target_last_seq,
            report,
            safety_copy: spec.keep_safety_copy.then(|| plan.safety_copy.clone()),
            notes,
        };
        execute(
            &self.ctx.events,
            job,
            RepairCommand::Complete(completed),
            None,
        )
        .await?;
        tracing::info!(job = %job.id, stream = %plan.stream, "repair completed");
        Ok(())
    }
}

/// The first sequence the rebuilt stream holds (the server archive's `first_seq`).
fn first_seq(plan: &RepairPlan) -> u64 {
    if plan.messages() == 0 {
        plan.target_last_seq + 1 // an empty stream's first sequence
    } else if plan.kept_live > 0 {
        plan.live_first_seq
    } else if plan.from_backup > 0 {
        plan.backup_first_seq
    } else {
        // Only newer live messages: they start after the backup's last sequence.
        plan.from_seq.max(plan.backup_last_seq + 1)
    }
}

/// A failed or cancelled repair (before the swap) gives the live stream its subjects back and
/// removes the streams it created. A repair stopped by a shutdown keeps them and resumes.
async fn undo(ctx: &Context, job: &Job<RepairJob>) -> Result<(), String> {
    let Some(spec) = &job.state.spec else {
        return Ok(());
    };
    let original: Value = serde_json::from_str(&spec.original_config).map_err(|e| e.to_string())?;
    // Giving the stream its subjects back matters more than anything else here: keep trying
    // for a minute while NATS recovers, as the runner does for the job's last event.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut delay = Duration::from_millis(200);
    let given_back = loop {
        let attempt = async {
            match ctx.api.stream_info(&spec.stream).await? {
                Some(info) if streams::frozen_by(&info.config, &job.id) => {
                    ctx.api.update_stream(&original).await.map(|()| true)
                }
                _ => Ok(false),
            }
        };
        match attempt.await {
            Ok(changed) => break Ok(changed),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(job = %job.id, stream = %spec.stream, error = %e, "cannot give the stream its subjects back yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => break Err(e),
        }
    };
    let (safety, staging) = streams::names(&spec.stream, &job.id);
    for name in [safety, staging] {
        if let Ok(Some(info)) = ctx.api.stream_info(&name).await
            && streams::built_by(&info.config, &job.id)
            && let Err(e) = ctx.api.delete_stream(&name).await
        {
            tracing::warn!(job = %job.id, stream = %name, error = %e, "could not remove a stream the repair created");
        }
    }
    match given_back {
        Ok(true) => {
            tracing::info!(job = %job.id, stream = %spec.stream, "repair undone: the stream has its subjects back");
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(e) => Err(format!(
            "{} is still frozen (no subjects) and could not be given its configuration back ({e}): update it to the configuration recorded in the job's RepairAccepted event",
            spec.stream
        )),
    }
}

/// Messages staged, reported every [`PROGRESS_EVERY`].
struct Progress {
    done: u64,
    last: tokio::time::Instant,
    /// Staging: cancellable and reported. The swap: neither (the live stream is being replaced).
    cancellable: bool,
}

impl Progress {
    fn new(cancellable: bool) -> Self {
        Progress {
            done: 0,
            last: tokio::time::Instant::now(),
            cancellable,
        }
    }

    async fn tick(&mut self, ctx: &Context, job: &mut Job<RepairJob>) -> Result<u64, EngineError> {
        self.done += 1;
        // The swap only counts: a slow or failed event append must not stall its upload.
        if self.cancellable
            && self.done.is_multiple_of(256)
            && self.last.elapsed() >= PROGRESS_EVERY
        {
            execute(
                &ctx.events,
                job,
                RepairCommand::Progress(RepairProgressed {
                    messages_done: self.done,
                }),
                None,
            )
            .await?;
            self.last = tokio::time::Instant::now();
        }
        Ok(self.done)
    }
}
