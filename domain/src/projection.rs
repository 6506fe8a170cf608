//! The projection aggregates: `projection-snapshot` (a domain's read models captured, one
//! snapshot per domain) and `projection-restore` (a snapshot put back into the live buckets,
//! after a safety snapshot of what was there). Both are one aggregate over one event set,
//! registered as two job kinds by the marker type [`Kind`].
//!
//! Invariants:
//! - the operation fits the kind (a `projection-restore` job restores one snapshot into one
//!   domain; a `projection-snapshot` job names no snapshot);
//! - a snapshot job records one snapshot per planned domain, of that domain, once, and
//!   completes only with all of them;
//! - a restore records its safety snapshot before any model is restored, and each planned read
//!   model once; it completes only when every one is recorded, and a restore that asked for
//!   verification completes only verified.

use std::marker::PhantomData;

use cim_backup_contracts::events::{
    CancelRequested, JobCancelled, JobEvent, JobFailed, ProjectionEvent,
};
use cim_backup_contracts::projections::{
    ModelRestored, ProjectionJobAccepted, ProjectionJobCompleted, ProjectionJobProgressed,
    ProjectionJobStarted, ProjectionOperation, SnapshotSummary,
};
use cim_backup_contracts::views::{JobKind, JobState};

use crate::aggregate::{Aggregate, JobLifecycle};
use crate::error::DomainError;
use crate::lifecycle::Lifecycle;

/// Which job kind a [`ProjectionJob`] is.
pub trait Kind: Default + Clone + std::fmt::Debug + PartialEq + Send + Sync + 'static {
    const KIND: JobKind;
    const OPERATION: ProjectionOperation;
    fn wrap(event: ProjectionEvent) -> JobEvent;
    fn unwrap(event: &JobEvent) -> Option<&ProjectionEvent>;
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restore;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Clear;

impl Kind for Clear {
    const KIND: JobKind = JobKind::ProjectionClear;
    const OPERATION: ProjectionOperation = ProjectionOperation::Clear;
    fn wrap(event: ProjectionEvent) -> JobEvent {
        JobEvent::ProjectionClear(event)
    }
    fn unwrap(event: &JobEvent) -> Option<&ProjectionEvent> {
        match event {
            JobEvent::ProjectionClear(e) => Some(e),
            _ => None,
        }
    }
}

impl Kind for Snapshot {
    const KIND: JobKind = JobKind::ProjectionSnapshot;
    const OPERATION: ProjectionOperation = ProjectionOperation::Snapshot;
    fn wrap(event: ProjectionEvent) -> JobEvent {
        JobEvent::ProjectionSnapshot(event)
    }
    fn unwrap(event: &JobEvent) -> Option<&ProjectionEvent> {
        match event {
            JobEvent::ProjectionSnapshot(e) => Some(e),
            _ => None,
        }
    }
}

impl Kind for Restore {
    const KIND: JobKind = JobKind::ProjectionRestore;
    const OPERATION: ProjectionOperation = ProjectionOperation::Restore;
    fn wrap(event: ProjectionEvent) -> JobEvent {
        JobEvent::ProjectionRestore(event)
    }
    fn unwrap(event: &JobEvent) -> Option<&ProjectionEvent> {
        match event {
            JobEvent::ProjectionRestore(e) => Some(e),
            _ => None,
        }
    }
}

pub type SnapshotJob = ProjectionJob<Snapshot>;
pub type RestoreJob = ProjectionJob<Restore>;
pub type ClearJob = ProjectionJob<Clear>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProjectionCommand {
    Accept(ProjectionJobAccepted),
    Start(ProjectionJobStarted),
    Progress(ProjectionJobProgressed),
    RecordSnapshot(SnapshotSummary),
    RecordModel(ModelRestored),
    Complete(ProjectionJobCompleted),
    Fail(JobFailed),
    RequestCancel(CancelRequested),
    ConfirmCancel(JobCancelled),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionJob<K: Kind> {
    pub lifecycle: Lifecycle,
    pub spec: Option<ProjectionJobAccepted>,
    pub progress: ProjectionJobProgressed,
    pub snapshots: Vec<SnapshotSummary>,
    pub restored: Vec<ModelRestored>,
    pub completed: Option<ProjectionJobCompleted>,
    pub failure: Option<JobFailed>,
    kind: PhantomData<K>,
}

impl<K: Kind> Default for ProjectionJob<K> {
    fn default() -> Self {
        ProjectionJob {
            lifecycle: Lifecycle::default(),
            spec: None,
            progress: ProjectionJobProgressed::default(),
            snapshots: Vec::new(),
            restored: Vec::new(),
            completed: None,
            failure: None,
            kind: PhantomData,
        }
    }
}

impl<K: Kind> ProjectionJob<K> {
    /// A snapshot job: the next domain without a snapshot. A restore: `None`.
    pub fn next_domain(&self) -> Option<&cim_backup_contracts::projections::Domain> {
        if K::OPERATION != ProjectionOperation::Snapshot {
            return None;
        }
        self.spec.as_ref()?.domains.get(self.snapshots.len())
    }

    /// A restore: its safety snapshot, once recorded.
    pub fn safety_snapshot(&self) -> Option<&SnapshotSummary> {
        self.snapshots.iter().find(|s| s.safety_for.is_some())
    }

    /// A restore: the read models still to restore, in order.
    pub fn models_left(&self) -> Vec<&cim_backup_contracts::projections::ReadModel> {
        let Some(spec) = &self.spec else {
            return Vec::new();
        };
        spec.domains
            .iter()
            .flat_map(|d| &d.projections)
            .filter(|m| !self.restored.iter().any(|r| r.name == m.name))
            .collect()
    }

    fn validate_spec(spec: &ProjectionJobAccepted) -> Result<(), DomainError> {
        if spec.operation != K::OPERATION {
            return Err(DomainError::invalid(format!(
                "operation: a {} job cannot {:?}",
                K::KIND,
                spec.operation
            )));
        }
        if spec.domains.is_empty() {
            return Err(DomainError::invalid("domains: none to work on"));
        }
        let mut names = std::collections::HashSet::new();
        for d in &spec.domains {
            if !names.insert(d.name.as_str()) {
                return Err(DomainError::invalid(format!(
                    "domains: {} is named twice",
                    d.name
                )));
            }
            if d.projections.is_empty() {
                return Err(DomainError::invalid(format!(
                    "domains: {} has no read models",
                    d.name
                )));
            }
        }
        match (K::OPERATION, &spec.snapshot) {
            (ProjectionOperation::Restore, None) => {
                Err(DomainError::invalid("snapshot: a restore needs one"))
            }
            (ProjectionOperation::Restore, Some(_)) if spec.domains.len() != 1 => Err(
                DomainError::invalid("domains: a restore puts back exactly one domain"),
            ),
            (ProjectionOperation::Snapshot | ProjectionOperation::Clear, Some(_)) => {
                Err(DomainError::invalid("snapshot: only a restore reads one"))
            }
            (ProjectionOperation::Clear, None) if spec.domains.len() != 1 => Err(
                DomainError::invalid("domains: a clear empties exactly one domain"),
            ),
            _ => Ok(()),
        }
    }

    fn validate_snapshot(&self, s: &SnapshotSummary) -> Result<(), DomainError> {
        match K::OPERATION {
            ProjectionOperation::Snapshot => {
                let next = self.next_domain().ok_or_else(|| {
                    DomainError::invalid("snapshot: every planned domain has one")
                })?;
                if next.name != s.domain || s.safety_for.is_some() {
                    return Err(DomainError::invalid(format!(
                        "snapshot: of {} where {} comes next",
                        s.domain, next.name
                    )));
                }
            }
            ProjectionOperation::Restore | ProjectionOperation::Clear => {
                if self.safety_snapshot().is_some() || s.safety_for.is_none() {
                    return Err(DomainError::invalid(
                        "snapshot: a restore or clear records one safety snapshot",
                    ));
                }
                if self.skips_safety_snapshot() {
                    return Err(DomainError::invalid(
                        "snapshot: this clear was asked to go without a safety snapshot",
                    ));
                }
            }
        }
        Ok(())
    }

    /// A clear asked to go without its safety snapshot.
    pub fn skips_safety_snapshot(&self) -> bool {
        K::OPERATION == ProjectionOperation::Clear
            && self.spec.as_ref().is_some_and(|s| s.no_safety_snapshot)
    }

    fn validate_model(&self, m: &ModelRestored) -> Result<(), DomainError> {
        if K::OPERATION == ProjectionOperation::Snapshot {
            return Err(DomainError::invalid(
                "model: a snapshot job writes no model",
            ));
        }
        if K::OPERATION == ProjectionOperation::Clear && (m.restored != 0 || m.unchanged != 0) {
            return Err(DomainError::invalid("model: a clear only removes keys"));
        }
        if self.safety_snapshot().is_none() && !self.skips_safety_snapshot() {
            return Err(DomainError::invalid(
                "model: restored before the safety snapshot was recorded",
            ));
        }
        if !self.models_left().iter().any(|left| left.name == m.name) {
            return Err(DomainError::invalid(format!(
                "model: {} is not planned, or already restored",
                m.name
            )));
        }
        Ok(())
    }

    fn validate_completion(&self, done: &ProjectionJobCompleted) -> Result<(), DomainError> {
        if let Some(next) = self.next_domain() {
            return Err(DomainError::invalid(format!(
                "completion: {} has no snapshot",
                next.name
            )));
        }
        if done.snapshots != self.snapshots {
            return Err(DomainError::invalid(
                "completion: its snapshots differ from the recorded ones",
            ));
        }
        if K::OPERATION != ProjectionOperation::Snapshot {
            if let Some(left) = self.models_left().first() {
                return Err(DomainError::invalid(format!(
                    "completion: {} is not restored",
                    left.name
                )));
            }
            if done.restored != self.restored {
                return Err(DomainError::invalid(
                    "completion: its models differ from the restored ones",
                ));
            }
            let asked = K::OPERATION == ProjectionOperation::Restore
                && self.spec.as_ref().is_some_and(|s| s.verify);
            if asked && done.verified != Some(true) {
                return Err(DomainError::invalid(
                    "completion: verification was asked for and did not pass",
                ));
            }
        }
        Ok(())
    }
}

impl<K: Kind> Aggregate for ProjectionJob<K> {
    const KIND: JobKind = K::KIND;
    type Command = ProjectionCommand;
    type Event = ProjectionEvent;

    fn handle(&self, command: ProjectionCommand) -> Result<Vec<ProjectionEvent>, DomainError> {
        let lc = &self.lifecycle;
        let event = match command {
            ProjectionCommand::Accept(spec) => {
                lc.require_new()?;
                Self::validate_spec(&spec)?;
                ProjectionEvent::ProjectionJobAccepted(spec)
            }
            ProjectionCommand::Start(s) => {
                lc.require(JobState::Accepted, "start")?;
                ProjectionEvent::ProjectionJobStarted(s)
            }
            ProjectionCommand::Progress(p) => {
                lc.require(JobState::Running, "record progress of")?;
                if p.keys_done < self.progress.keys_done {
                    return Err(DomainError::invalid("progress: must not go backwards"));
                }
                ProjectionEvent::ProjectionJobProgressed(p)
            }
            ProjectionCommand::RecordSnapshot(s) => {
                lc.require(JobState::Running, "record a snapshot of")?;
                self.validate_snapshot(&s)?;
                ProjectionEvent::ProjectionSnapshotTaken(s)
            }
            ProjectionCommand::RecordModel(m) => {
                lc.require(JobState::Running, "record a restored model of")?;
                self.validate_model(&m)?;
                ProjectionEvent::ProjectionModelRestored(m)
            }
            ProjectionCommand::Complete(done) => {
                lc.require(JobState::Running, "complete")?;
                self.validate_completion(&done)?;
                ProjectionEvent::ProjectionJobCompleted(done)
            }
            ProjectionCommand::Fail(failure) => {
                lc.require_live("fail")?;
                ProjectionEvent::ProjectionJobFailed(failure)
            }
            ProjectionCommand::RequestCancel(request) => {
                if !lc.cancel_request_is_new()? {
                    return Ok(vec![]);
                }
                ProjectionEvent::ProjectionJobCancelRequested(request)
            }
            ProjectionCommand::ConfirmCancel(cancelled) => {
                lc.require_cancel_pending()?;
                ProjectionEvent::ProjectionJobCancelled(cancelled)
            }
        };
        Ok(vec![event])
    }

    fn apply(mut self, event: &ProjectionEvent) -> Self {
        match event {
            ProjectionEvent::ProjectionJobAccepted(spec) => {
                self.lifecycle.accepted();
                self.spec = Some(spec.clone());
            }
            ProjectionEvent::ProjectionJobStarted(_) => self.lifecycle.started(),
            ProjectionEvent::ProjectionJobProgressed(p) => self.progress = p.clone(),
            ProjectionEvent::ProjectionSnapshotTaken(s) => self.snapshots.push(s.clone()),
            ProjectionEvent::ProjectionModelRestored(m) => self.restored.push(m.clone()),
            ProjectionEvent::ProjectionJobCompleted(done) => {
                self.lifecycle.finished(JobState::Completed);
                self.completed = Some(done.clone());
            }
            ProjectionEvent::ProjectionJobFailed(failure) => {
                self.lifecycle.finished(JobState::Failed);
                self.failure = Some(failure.clone());
            }
            ProjectionEvent::ProjectionJobCancelRequested(_) => {
                self.lifecycle.cancel_requested = true
            }
            ProjectionEvent::ProjectionJobCancelled(_) => {
                self.lifecycle.finished(JobState::Cancelled)
            }
        }
        self
    }

    fn wrap(event: ProjectionEvent) -> JobEvent {
        K::wrap(event)
    }

    fn unwrap(event: &JobEvent) -> Option<&ProjectionEvent> {
        K::unwrap(event)
    }
}

impl<K: Kind> JobLifecycle for ProjectionJob<K> {
    fn fail(failure: JobFailed) -> ProjectionCommand {
        ProjectionCommand::Fail(failure)
    }
    fn request_cancel(request: CancelRequested) -> ProjectionCommand {
        ProjectionCommand::RequestCancel(request)
    }
    fn confirm_cancel(cancelled: JobCancelled) -> ProjectionCommand {
        ProjectionCommand::ConfirmCancel(cancelled)
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
    use cim_backup_contracts::projections::{Domain, Origin, ReadModel};

    fn domain(name: &str, models: &[&str]) -> Domain {
        Domain {
            name: name.into(),
            streams: vec![],
            projections: models
                .iter()
                .map(|m| ReadModel {
                    name: (*m).into(),
                    bucket: (*m).into(),
                    prefix: String::new(),
                    origin: Origin::Configured,
                })
                .collect(),
            projectors: vec![],
            config: None,
            agents: None,
        }
    }

    fn accepted(op: ProjectionOperation, domains: Vec<Domain>) -> ProjectionJobAccepted {
        ProjectionJobAccepted {
            operation: op,
            domains,
            destination: "local".into(),
            destination_url: "file:///b".into(),
            snapshot: (op == ProjectionOperation::Restore).then(manifest_cid),
            verify: op == ProjectionOperation::Restore,
            r#as: Default::default(),
            no_safety_snapshot: false,
            admission: admission(),
        }
    }

    fn summary(domain: &str, safety: bool) -> SnapshotSummary {
        SnapshotSummary {
            id: manifest_cid(),
            domain: domain.into(),
            taken_at: time::OffsetDateTime::UNIX_EPOCH,
            models: vec![],
            positions: vec![],
            safety_for: safety.then(|| "job".to_owned()),
            location: String::new(),
        }
    }

    fn restored(name: &str) -> ModelRestored {
        ModelRestored {
            name: name.into(),
            bucket: name.into(),
            restored: 1,
            unchanged: 0,
            removed: 0,
        }
    }

    /// A snapshot job records one snapshot per domain, in order, and completes with all.
    #[test]
    fn a_snapshot_job_covers_every_domain_in_order() {
        let spec = accepted(
            ProjectionOperation::Snapshot,
            vec![domain("a", &["A"]), domain("b", &["B"])],
        );
        given::<SnapshotJob>(vec![])
            .when(ProjectionCommand::Accept(accepted(
                ProjectionOperation::Restore,
                vec![domain("a", &["A"])],
            )))
            .then_reject_containing("operation");
        let history = vec![
            ProjectionEvent::ProjectionJobAccepted(spec),
            ProjectionEvent::ProjectionJobStarted(ProjectionJobStarted::default()),
        ];
        given::<SnapshotJob>(history.clone())
            .when(ProjectionCommand::RecordSnapshot(summary("b", false)))
            .then_reject_containing("a comes next");
        let mut one = history;
        one.push(ProjectionEvent::ProjectionSnapshotTaken(summary(
            "a", false,
        )));
        given::<SnapshotJob>(one.clone())
            .when(ProjectionCommand::Complete(ProjectionJobCompleted {
                snapshots: vec![summary("a", false)],
                ..Default::default()
            }))
            .then_reject_containing("b has no snapshot");
        one.push(ProjectionEvent::ProjectionSnapshotTaken(summary(
            "b", false,
        )));
        let done = ProjectionJobCompleted {
            snapshots: vec![summary("a", false), summary("b", false)],
            ..Default::default()
        };
        given::<SnapshotJob>(one)
            .when(ProjectionCommand::Complete(done.clone()))
            .then_expect(vec![ProjectionEvent::ProjectionJobCompleted(done)]);
    }

    /// A clear deletes nothing before its safety snapshot unless asked to go without one, and
    /// then records none.
    #[test]
    fn a_clear_needs_its_safety_snapshot_unless_told_otherwise() {
        let spec = accepted(ProjectionOperation::Clear, vec![domain("g", &["M"])]);
        let started = ProjectionEvent::ProjectionJobStarted(ProjectionJobStarted::default());
        let removed = ModelRestored {
            restored: 0,
            removed: 3,
            ..restored("M")
        };
        given::<ClearJob>(vec![
            ProjectionEvent::ProjectionJobAccepted(spec.clone()),
            started.clone(),
        ])
        .when(ProjectionCommand::RecordModel(removed.clone()))
        .then_reject_containing("before the safety snapshot");
        let bare = ProjectionJobAccepted {
            no_safety_snapshot: true,
            ..spec
        };
        let history = vec![ProjectionEvent::ProjectionJobAccepted(bare), started];
        given::<ClearJob>(history.clone())
            .when(ProjectionCommand::RecordSnapshot(summary("g", true)))
            .then_reject_containing("without a safety snapshot");
        given::<ClearJob>(history.clone())
            .when(ProjectionCommand::RecordModel(restored("M")))
            .then_reject_containing("only removes");
        given::<ClearJob>(history)
            .when(ProjectionCommand::RecordModel(removed.clone()))
            .then_expect(vec![ProjectionEvent::ProjectionModelRestored(removed)]);
    }

    /// A restore writes nothing before its safety snapshot, restores each model once, and
    /// cannot complete unverified when verification was asked for.
    #[test]
    fn a_restore_needs_its_safety_snapshot_first_and_verifies_when_asked() {
        let spec = accepted(ProjectionOperation::Restore, vec![domain("g", &["M", "N"])]);
        let history = vec![
            ProjectionEvent::ProjectionJobAccepted(spec),
            ProjectionEvent::ProjectionJobStarted(ProjectionJobStarted::default()),
        ];
        given::<RestoreJob>(history.clone())
            .when(ProjectionCommand::RecordModel(restored("M")))
            .then_reject_containing("before the safety snapshot");
        let mut safe = history;
        safe.push(ProjectionEvent::ProjectionSnapshotTaken(summary("g", true)));
        given::<RestoreJob>(safe.clone())
            .when(ProjectionCommand::RecordModel(restored("X")))
            .then_reject_containing("not planned");
        safe.push(ProjectionEvent::ProjectionModelRestored(restored("M")));
        given::<RestoreJob>(safe.clone())
            .when(ProjectionCommand::RecordModel(restored("M")))
            .then_reject_containing("already restored");
        safe.push(ProjectionEvent::ProjectionModelRestored(restored("N")));
        let unverified = ProjectionJobCompleted {
            snapshots: vec![summary("g", true)],
            restored: vec![restored("M"), restored("N")],
            verified: Some(false),
        };
        given::<RestoreJob>(safe.clone())
            .when(ProjectionCommand::Complete(unverified.clone()))
            .then_reject_containing("did not pass");
        let done = ProjectionJobCompleted {
            verified: Some(true),
            ..unverified
        };
        given::<RestoreJob>(safe)
            .when(ProjectionCommand::Complete(done.clone()))
            .then_expect(vec![ProjectionEvent::ProjectionJobCompleted(done)]);
    }
}
