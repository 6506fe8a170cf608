//! The replay aggregates: `projection-replay` (catch-up: a domain's projectors moved back to an
//! earlier event and followed until caught up) and `projection-rebuild` (projectors stopped,
//! read models cleared after a safety snapshot, projectors moved to the first event and
//! followed). One aggregate over one event set, registered as two job kinds by [`Kind`].
//!
//! Invariants:
//! - every planned projector belongs to a planned domain, once;
//! - a rebuild clears a domain once, and only after that domain's safety snapshot (unless the
//!   request declined it); a replay clears nothing;
//! - a projector is moved only once its domain is cleared (a rebuild), and checkpoints and
//!   catching up come only after its move;
//! - a job completes only when every projector has caught up.

use std::marker::PhantomData;

use cim_backup_contracts::events::{
    CancelRequested, JobCancelled, JobEvent, JobFailed, ReplayEvent,
};
use cim_backup_contracts::projections::SnapshotSummary;
use cim_backup_contracts::replay::{
    DomainCleared, PlannedReplay, ProjectorCaughtUp, ProjectorReset, ReplayCheckpoint,
    ReplayJobAccepted, ReplayJobCompleted, ReplayJobProgressed, ReplayJobStarted, ReplayOperation,
};
use cim_backup_contracts::views::{JobKind, JobState};

use crate::aggregate::{Aggregate, JobLifecycle};
use crate::error::DomainError;
use crate::lifecycle::Lifecycle;

/// Which job kind a [`ReplayJob`] is.
pub trait Kind: Default + Clone + std::fmt::Debug + PartialEq + Send + Sync + 'static {
    const KIND: JobKind;
    const OPERATION: ReplayOperation;
    fn wrap(event: ReplayEvent) -> JobEvent;
    fn unwrap(event: &JobEvent) -> Option<&ReplayEvent>;
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replay;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rebuild;

impl Kind for Replay {
    const KIND: JobKind = JobKind::ProjectionReplay;
    const OPERATION: ReplayOperation = ReplayOperation::Replay;
    fn wrap(event: ReplayEvent) -> JobEvent {
        JobEvent::ProjectionReplay(event)
    }
    fn unwrap(event: &JobEvent) -> Option<&ReplayEvent> {
        match event {
            JobEvent::ProjectionReplay(e) => Some(e),
            _ => None,
        }
    }
}

impl Kind for Rebuild {
    const KIND: JobKind = JobKind::ProjectionRebuild;
    const OPERATION: ReplayOperation = ReplayOperation::Rebuild;
    fn wrap(event: ReplayEvent) -> JobEvent {
        JobEvent::ProjectionRebuild(event)
    }
    fn unwrap(event: &JobEvent) -> Option<&ReplayEvent> {
        match event {
            JobEvent::ProjectionRebuild(e) => Some(e),
            _ => None,
        }
    }
}

pub type ReplayJob = Job<Replay>;
pub type RebuildJob = Job<Rebuild>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayCommand {
    Accept(ReplayJobAccepted),
    Start(ReplayJobStarted),
    RecordSafetySnapshot(SnapshotSummary),
    RecordCleared(DomainCleared),
    RecordReset(ProjectorReset),
    RecordCheckpoint(ReplayCheckpoint),
    RecordCaughtUp(ProjectorCaughtUp),
    Progress(ReplayJobProgressed),
    Complete(ReplayJobCompleted),
    Fail(JobFailed),
    RequestCancel(CancelRequested),
    ConfirmCancel(JobCancelled),
}

/// State of one replay job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job<K: Kind> {
    pub lifecycle: Lifecycle,
    pub spec: Option<ReplayJobAccepted>,
    pub safety_snapshots: Vec<SnapshotSummary>,
    pub cleared: Vec<DomainCleared>,
    /// The latest move of each projector, in the order they were first moved.
    pub resets: Vec<ProjectorReset>,
    /// The latest checkpoint of each projector.
    pub checkpoints: Vec<ReplayCheckpoint>,
    pub caught_up: Vec<ProjectorCaughtUp>,
    pub progress: ReplayJobProgressed,
    pub completed: Option<ReplayJobCompleted>,
    pub failure: Option<JobFailed>,
    kind: PhantomData<K>,
}

impl<K: Kind> Default for Job<K> {
    fn default() -> Self {
        Job {
            lifecycle: Lifecycle::default(),
            spec: None,
            safety_snapshots: Vec::new(),
            cleared: Vec::new(),
            resets: Vec::new(),
            checkpoints: Vec::new(),
            caught_up: Vec::new(),
            progress: ReplayJobProgressed::default(),
            completed: None,
            failure: None,
            kind: PhantomData,
        }
    }
}

fn same(stream: &str, consumer: &str, p: &PlannedReplay) -> bool {
    p.stream == stream && p.consumer == consumer
}

impl<K: Kind> Job<K> {
    /// Whether the rebuild still has to take a safety snapshot of `domain`.
    pub fn needs_safety_snapshot(&self, domain: &str) -> bool {
        K::OPERATION == ReplayOperation::Rebuild
            && !self.spec.as_ref().is_some_and(|s| s.no_safety_snapshot)
            && !self.safety_snapshots.iter().any(|s| s.domain == domain)
    }

    /// Whether `domain`'s read models are cleared (always, for a replay: it clears nothing).
    pub fn is_cleared(&self, domain: &str) -> bool {
        K::OPERATION == ReplayOperation::Replay || self.cleared.iter().any(|c| c.domain == domain)
    }

    pub fn reset_of(&self, stream: &str, consumer: &str) -> Option<&ProjectorReset> {
        self.resets
            .iter()
            .find(|r| r.stream == stream && r.consumer == consumer)
    }

    pub fn checkpoint_of(&self, stream: &str, consumer: &str) -> Option<&ReplayCheckpoint> {
        self.checkpoints
            .iter()
            .find(|c| c.stream == stream && c.consumer == consumer)
    }

    pub fn caught_up_of(&self, stream: &str, consumer: &str) -> Option<&ProjectorCaughtUp> {
        self.caught_up
            .iter()
            .find(|c| c.stream == stream && c.consumer == consumer)
    }

    fn planned(&self, stream: &str, consumer: &str) -> Result<&PlannedReplay, DomainError> {
        self.spec
            .as_ref()
            .and_then(|s| s.projectors.iter().find(|p| same(stream, consumer, p)))
            .ok_or_else(|| {
                DomainError::invalid(format!("projector: {consumer} on {stream} is not planned"))
            })
    }

    fn require_domain(&self, domain: &str) -> Result<(), DomainError> {
        if self
            .spec
            .as_ref()
            .is_some_and(|s| s.domains.iter().any(|d| d.name == domain))
        {
            Ok(())
        } else {
            Err(DomainError::invalid(format!(
                "domain: {domain} is not planned"
            )))
        }
    }

    fn validate_spec(spec: &ReplayJobAccepted) -> Result<(), DomainError> {
        if spec.operation != K::OPERATION {
            return Err(DomainError::invalid(format!(
                "operation: a {} job cannot {:?}",
                K::KIND,
                spec.operation
            )));
        }
        if spec.domains.is_empty() || spec.projectors.is_empty() {
            return Err(DomainError::invalid("domains: no projector to replay to"));
        }
        if spec.checkpoint_interval == 0 || spec.parallel == 0 || spec.stall_timeout_secs == 0 {
            return Err(DomainError::invalid(
                "checkpoint_interval, parallel and stall_timeout_secs must be at least 1",
            ));
        }
        if spec.batch_size == Some(0) {
            return Err(DomainError::invalid("batch_size: must be at least 1"));
        }
        for (i, p) in spec.projectors.iter().enumerate() {
            if !spec.domains.iter().any(|d| d.name == p.domain) {
                return Err(DomainError::invalid(format!(
                    "projectors: {} belongs to {}, which is not planned",
                    p.consumer, p.domain
                )));
            }
            if spec.projectors[..i]
                .iter()
                .any(|q| same(&p.stream, &p.consumer, q))
            {
                return Err(DomainError::invalid(format!(
                    "projectors: {} on {} is planned twice",
                    p.consumer, p.stream
                )));
            }
            if p.from_seq == 0 {
                return Err(DomainError::invalid("projectors: from_seq starts at 1"));
            }
        }
        if K::OPERATION == ReplayOperation::Replay
            && (spec.no_safety_snapshot || !spec.destination_url.is_empty())
        {
            return Err(DomainError::invalid(
                "destination: a replay clears nothing, so it takes no safety snapshot",
            ));
        }
        if K::OPERATION == ReplayOperation::Rebuild
            && spec.no_safety_snapshot != spec.destination_url.is_empty()
        {
            return Err(DomainError::invalid(
                "destination: a rebuild names where its safety snapshots go, or declines them",
            ));
        }
        Ok(())
    }

    fn validate_safety(&self, s: &SnapshotSummary) -> Result<(), DomainError> {
        self.require_domain(&s.domain)?;
        if s.safety_for.is_none() {
            return Err(DomainError::invalid("snapshot: not a safety snapshot"));
        }
        if !self.needs_safety_snapshot(&s.domain) || self.is_cleared(&s.domain) {
            return Err(DomainError::invalid(format!(
                "snapshot: domain {} needs no safety snapshot now",
                s.domain
            )));
        }
        Ok(())
    }

    fn validate_cleared(&self, c: &DomainCleared) -> Result<(), DomainError> {
        if K::OPERATION != ReplayOperation::Rebuild {
            return Err(DomainError::invalid("cleared: a replay clears nothing"));
        }
        self.require_domain(&c.domain)?;
        if self.is_cleared(&c.domain) {
            return Err(DomainError::invalid(format!(
                "cleared: {} is already cleared",
                c.domain
            )));
        }
        if self.needs_safety_snapshot(&c.domain) {
            return Err(DomainError::invalid(format!(
                "cleared: {} before its safety snapshot",
                c.domain
            )));
        }
        if c.models.iter().any(|m| m.restored != 0 || m.unchanged != 0) {
            return Err(DomainError::invalid("cleared: a clear only removes keys"));
        }
        Ok(())
    }

    fn validate_reset(&self, r: &ProjectorReset) -> Result<(), DomainError> {
        let planned = self.planned(&r.stream, &r.consumer)?;
        if planned.domain != r.domain {
            return Err(DomainError::invalid(format!(
                "reset: {} is a projector of {}, not {}",
                r.consumer, planned.domain, r.domain
            )));
        }
        if !self.is_cleared(&r.domain) {
            return Err(DomainError::invalid(format!(
                "reset: {} moved before domain {} was cleared",
                r.consumer, r.domain
            )));
        }
        if self.caught_up_of(&r.stream, &r.consumer).is_some() {
            return Err(DomainError::invalid(format!(
                "reset: {} has already caught up",
                r.consumer
            )));
        }
        Ok(())
    }

    fn require_following(&self, stream: &str, consumer: &str) -> Result<(), DomainError> {
        self.planned(stream, consumer)?;
        if self.reset_of(stream, consumer).is_none() {
            return Err(DomainError::invalid(format!(
                "projector: {consumer} on {stream} has not been moved yet"
            )));
        }
        if self.caught_up_of(stream, consumer).is_some() {
            return Err(DomainError::invalid(format!(
                "projector: {consumer} on {stream} has already caught up"
            )));
        }
        Ok(())
    }

    fn validate_completion(&self, done: &ReplayJobCompleted) -> Result<(), DomainError> {
        let spec = self.spec.as_ref().ok_or(DomainError::NotCreated)?;
        if let Some(left) = spec
            .projectors
            .iter()
            .find(|p| self.caught_up_of(&p.stream, &p.consumer).is_none())
        {
            return Err(DomainError::invalid(format!(
                "completion: {} on {} has not caught up",
                left.consumer, left.stream
            )));
        }
        if done.projectors != self.caught_up
            || done.cleared != self.cleared
            || done.safety_snapshots != self.safety_snapshots
        {
            return Err(DomainError::invalid(
                "completion: its report differs from what was recorded",
            ));
        }
        Ok(())
    }
}

fn upsert<T>(items: &mut Vec<T>, item: T, same: impl Fn(&T) -> bool) {
    match items.iter_mut().find(|i| same(i)) {
        Some(slot) => *slot = item,
        None => items.push(item),
    }
}

impl<K: Kind> Aggregate for Job<K> {
    const KIND: JobKind = K::KIND;
    type Command = ReplayCommand;
    type Event = ReplayEvent;

    fn handle(&self, command: ReplayCommand) -> Result<Vec<ReplayEvent>, DomainError> {
        let lc = &self.lifecycle;
        let event = match command {
            ReplayCommand::Accept(spec) => {
                lc.require_new()?;
                Self::validate_spec(&spec)?;
                ReplayEvent::ReplayJobAccepted(spec)
            }
            ReplayCommand::Start(s) => {
                lc.require(JobState::Accepted, "start")?;
                ReplayEvent::ReplayJobStarted(s)
            }
            ReplayCommand::RecordSafetySnapshot(s) => {
                lc.require(JobState::Running, "record a safety snapshot of")?;
                self.validate_safety(&s)?;
                ReplayEvent::ReplaySafetySnapshotTaken(s)
            }
            ReplayCommand::RecordCleared(c) => {
                lc.require(JobState::Running, "record a clear of")?;
                self.validate_cleared(&c)?;
                ReplayEvent::ReplayDomainCleared(c)
            }
            ReplayCommand::RecordReset(r) => {
                lc.require(JobState::Running, "record a projector move of")?;
                self.validate_reset(&r)?;
                ReplayEvent::ReplayProjectorReset(r)
            }
            ReplayCommand::RecordCheckpoint(c) => {
                lc.require(JobState::Running, "record a checkpoint of")?;
                self.require_following(&c.stream, &c.consumer)?;
                ReplayEvent::ReplayCheckpointRecorded(c)
            }
            ReplayCommand::RecordCaughtUp(c) => {
                lc.require(JobState::Running, "record a caught-up projector of")?;
                self.require_following(&c.stream, &c.consumer)?;
                ReplayEvent::ReplayProjectorCaughtUp(c)
            }
            ReplayCommand::Progress(p) => {
                lc.require(JobState::Running, "record progress of")?;
                ReplayEvent::ReplayJobProgressed(p)
            }
            ReplayCommand::Complete(done) => {
                lc.require(JobState::Running, "complete")?;
                self.validate_completion(&done)?;
                ReplayEvent::ReplayJobCompleted(done)
            }
            ReplayCommand::Fail(failure) => {
                lc.require_live("fail")?;
                ReplayEvent::ReplayJobFailed(failure)
            }
            ReplayCommand::RequestCancel(request) => {
                if !lc.cancel_request_is_new()? {
                    return Ok(vec![]);
                }
                ReplayEvent::ReplayJobCancelRequested(request)
            }
            ReplayCommand::ConfirmCancel(cancelled) => {
                lc.require_cancel_pending()?;
                ReplayEvent::ReplayJobCancelled(cancelled)
            }
        };
        Ok(vec![event])
    }

    fn apply(mut self, event: &ReplayEvent) -> Self {
        match event {
            ReplayEvent::ReplayJobAccepted(spec) => {
                self.lifecycle.accepted();
                self.spec = Some(spec.clone());
            }
            ReplayEvent::ReplayJobStarted(_) => self.lifecycle.started(),
            ReplayEvent::ReplaySafetySnapshotTaken(s) => self.safety_snapshots.push(s.clone()),
            ReplayEvent::ReplayDomainCleared(c) => self.cleared.push(c.clone()),
            ReplayEvent::ReplayProjectorReset(r) => upsert(&mut self.resets, r.clone(), |x| {
                x.stream == r.stream && x.consumer == r.consumer
            }),
            ReplayEvent::ReplayCheckpointRecorded(c) => {
                upsert(&mut self.checkpoints, c.clone(), |x| {
                    x.stream == c.stream && x.consumer == c.consumer
                })
            }
            ReplayEvent::ReplayProjectorCaughtUp(c) => self.caught_up.push(c.clone()),
            ReplayEvent::ReplayJobProgressed(p) => self.progress = p.clone(),
            ReplayEvent::ReplayJobCompleted(done) => {
                self.lifecycle.finished(JobState::Completed);
                self.completed = Some(done.clone());
            }
            ReplayEvent::ReplayJobFailed(failure) => {
                self.lifecycle.finished(JobState::Failed);
                self.failure = Some(failure.clone());
            }
            ReplayEvent::ReplayJobCancelRequested(_) => self.lifecycle.cancel_requested = true,
            ReplayEvent::ReplayJobCancelled(_) => self.lifecycle.finished(JobState::Cancelled),
        }
        self
    }

    fn wrap(event: ReplayEvent) -> JobEvent {
        K::wrap(event)
    }

    fn unwrap(event: &JobEvent) -> Option<&ReplayEvent> {
        K::unwrap(event)
    }
}

impl<K: Kind> JobLifecycle for Job<K> {
    fn fail(failure: JobFailed) -> ReplayCommand {
        ReplayCommand::Fail(failure)
    }
    fn request_cancel(request: CancelRequested) -> ReplayCommand {
        ReplayCommand::RequestCancel(request)
    }
    fn confirm_cancel(cancelled: JobCancelled) -> ReplayCommand {
        ReplayCommand::ConfirmCancel(cancelled)
    }
    fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::given;
    use crate::test_support::*;
    use cim_backup_contracts::projections::{Domain, ModelRestored};
    use cim_backup_contracts::replay::ResetMethod;

    fn domain(name: &str) -> Domain {
        Domain {
            name: name.into(),
            streams: vec![],
            projections: vec![],
            projectors: vec![],
            config: None,
            agents: None,
        }
    }

    fn planned(domain: &str, consumer: &str) -> PlannedReplay {
        PlannedReplay {
            domain: domain.into(),
            stream: format!("DOMAIN_{}_EVENTS", domain.to_uppercase()),
            consumer: consumer.into(),
            from_seq: 1,
        }
    }

    fn spec(op: ReplayOperation) -> ReplayJobAccepted {
        ReplayJobAccepted {
            operation: op,
            domains: vec![domain("g")],
            projectors: vec![planned("g", "p1"), planned("g", "p2")],
            from: "beginning".into(),
            from_snapshot: None,
            batch_size: None,
            checkpoint_interval: 10,
            parallel: 1,
            stall_timeout_secs: 30,
            destination: if op == ReplayOperation::Rebuild {
                "local".into()
            } else {
                String::new()
            },
            destination_url: if op == ReplayOperation::Rebuild {
                "file:///b".into()
            } else {
                String::new()
            },
            no_safety_snapshot: false,
            admission: admission(),
        }
    }

    fn reset(consumer: &str, from_seq: u64) -> ProjectorReset {
        ProjectorReset {
            domain: "g".into(),
            stream: "DOMAIN_G_EVENTS".into(),
            consumer: consumer.into(),
            from_seq,
            pending: 5,
            events_before: 0,
            method: ResetMethod::Reset,
            config_json: "{}".into(),
        }
    }

    fn caught(consumer: &str) -> ProjectorCaughtUp {
        ProjectorCaughtUp {
            domain: "g".into(),
            stream: "DOMAIN_G_EVENTS".into(),
            consumer: consumer.into(),
            stream_seq: 5,
            events: 5,
            millis: 1,
        }
    }

    fn started(op: ReplayOperation) -> Vec<ReplayEvent> {
        vec![
            ReplayEvent::ReplayJobAccepted(spec(op)),
            ReplayEvent::ReplayJobStarted(ReplayJobStarted::default()),
        ]
    }

    fn safety() -> SnapshotSummary {
        SnapshotSummary {
            id: manifest_cid(),
            domain: "g".into(),
            taken_at: time::OffsetDateTime::UNIX_EPOCH,
            models: vec![],
            positions: vec![],
            safety_for: Some("job".into()),
            location: String::new(),
        }
    }

    fn cleared() -> DomainCleared {
        DomainCleared {
            domain: "g".into(),
            models: vec![ModelRestored {
                name: "M".into(),
                bucket: "M".into(),
                restored: 0,
                unchanged: 0,
                removed: 4,
            }],
        }
    }

    /// A rebuild moves no projector before its domain is cleared, and clears nothing before
    /// the domain's safety snapshot.
    #[test]
    fn a_rebuild_clears_after_its_safety_snapshot_and_moves_projectors_after_the_clear() {
        let history = started(ReplayOperation::Rebuild);
        given::<RebuildJob>(history.clone())
            .when(ReplayCommand::RecordReset(reset("p1", 1)))
            .then_reject_containing("before domain g was cleared");
        given::<RebuildJob>(history.clone())
            .when(ReplayCommand::RecordCleared(cleared()))
            .then_reject_containing("before its safety snapshot");
        let mut safe = history;
        safe.push(ReplayEvent::ReplaySafetySnapshotTaken(safety()));
        given::<RebuildJob>(safe.clone())
            .when(ReplayCommand::RecordSafetySnapshot(safety()))
            .then_reject_containing("needs no safety snapshot");
        safe.push(ReplayEvent::ReplayDomainCleared(cleared()));
        given::<RebuildJob>(safe.clone())
            .when(ReplayCommand::RecordCleared(cleared()))
            .then_reject_containing("already cleared");
        given::<RebuildJob>(safe)
            .when(ReplayCommand::RecordReset(reset("p1", 1)))
            .then_expect(vec![ReplayEvent::ReplayProjectorReset(reset("p1", 1))]);
    }

    /// A replay clears nothing, and completes only when every projector has caught up, with
    /// the report of what was recorded.
    #[test]
    fn a_replay_completes_only_when_every_projector_has_caught_up() {
        let mut history = started(ReplayOperation::Replay);
        given::<ReplayJob>(history.clone())
            .when(ReplayCommand::RecordCleared(cleared()))
            .then_reject_containing("clears nothing");
        given::<ReplayJob>(history.clone())
            .when(ReplayCommand::RecordCaughtUp(caught("p1")))
            .then_reject_containing("not been moved");
        given::<ReplayJob>(history.clone())
            .when(ReplayCommand::RecordReset(reset("p9", 1)))
            .then_reject_containing("not planned");
        history.push(ReplayEvent::ReplayProjectorReset(reset("p1", 3)));
        history.push(ReplayEvent::ReplayProjectorReset(reset("p2", 3)));
        history.push(ReplayEvent::ReplayProjectorCaughtUp(caught("p1")));
        given::<ReplayJob>(history.clone())
            .when(ReplayCommand::RecordCaughtUp(caught("p1")))
            .then_reject_containing("already caught up");
        given::<ReplayJob>(history.clone())
            .when(ReplayCommand::Complete(ReplayJobCompleted {
                projectors: vec![caught("p1")],
                ..Default::default()
            }))
            .then_reject_containing("p2 on DOMAIN_G_EVENTS has not caught up");
        history.push(ReplayEvent::ReplayProjectorCaughtUp(caught("p2")));
        given::<ReplayJob>(history.clone())
            .when(ReplayCommand::Complete(ReplayJobCompleted {
                projectors: vec![caught("p2")],
                ..Default::default()
            }))
            .then_reject_containing("differs");
        let done = ReplayJobCompleted {
            projectors: vec![caught("p1"), caught("p2")],
            ..Default::default()
        };
        given::<ReplayJob>(history)
            .when(ReplayCommand::Complete(done.clone()))
            .then_expect(vec![ReplayEvent::ReplayJobCompleted(done)]);
    }

    /// A move back to a checkpoint replaces the projector's earlier move; the latest
    /// checkpoint is the one kept.
    #[test]
    fn a_second_move_and_checkpoint_replace_the_first() {
        let history = vec![
            ReplayEvent::ReplayJobAccepted(spec(ReplayOperation::Replay)),
            ReplayEvent::ReplayJobStarted(ReplayJobStarted::default()),
            ReplayEvent::ReplayProjectorReset(reset("p1", 1)),
            ReplayEvent::ReplayCheckpointRecorded(ReplayCheckpoint {
                stream: "DOMAIN_G_EVENTS".into(),
                consumer: "p1".into(),
                stream_seq: 10,
                events: 10,
            }),
            ReplayEvent::ReplayCheckpointRecorded(ReplayCheckpoint {
                stream: "DOMAIN_G_EVENTS".into(),
                consumer: "p1".into(),
                stream_seq: 20,
                events: 20,
            }),
            ReplayEvent::ReplayProjectorReset(reset("p1", 21)),
        ];
        let state = ReplayJob::from_history(&history);
        assert_eq!(state.resets.len(), 1);
        assert_eq!(state.resets[0].from_seq, 21);
        assert_eq!(state.checkpoints.len(), 1);
        assert_eq!(
            state
                .checkpoint_of("DOMAIN_G_EVENTS", "p1")
                .unwrap()
                .stream_seq,
            20
        );
    }

    /// The plan must be one a job can carry out.
    #[test]
    fn a_plan_is_refused_when_it_cannot_be_carried_out() {
        let mut twice = spec(ReplayOperation::Replay);
        twice.projectors.push(planned("g", "p1"));
        given::<ReplayJob>(vec![])
            .when(ReplayCommand::Accept(twice))
            .then_reject_containing("planned twice");
        let mut stranger = spec(ReplayOperation::Replay);
        stranger.projectors.push(planned("x", "p1"));
        given::<ReplayJob>(vec![])
            .when(ReplayCommand::Accept(stranger))
            .then_reject_containing("x, which is not planned");
        given::<ReplayJob>(vec![])
            .when(ReplayCommand::Accept(spec(ReplayOperation::Rebuild)))
            .then_reject_containing("operation");
        let mut nowhere = spec(ReplayOperation::Rebuild);
        nowhere.destination_url.clear();
        given::<RebuildJob>(vec![])
            .when(ReplayCommand::Accept(nowhere))
            .then_reject_containing("safety snapshots go");
    }
}
