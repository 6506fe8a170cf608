//! The `repair` aggregate: restore a live stream from a point.
//!
//! A repair rewrites a live stream, so its rules are about never ending halfway unnoticed:
//! the steps happen in order and each is recorded; it completes only after the stream was
//! swapped, holding exactly the plan, with clean chains; and once the live stream is about to be
//! deleted ([`RepairStep::Swapping`]) it can no longer be cancelled — only finished or failed
//! with the names of the streams that hold the data.

use cim_backup_contracts::events::{
    CancelRequested, JobCancelled, JobEvent, JobFailed, RepairAccepted, RepairCompleted,
    RepairEvent, RepairProgressed, RepairStarted, RepairStep, RepairStepDone,
};
use cim_backup_contracts::views::{JobKind, JobState};

use crate::aggregate::Aggregate;
use crate::error::DomainError;
use crate::lifecycle::Lifecycle;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepairCommand {
    Accept(RepairAccepted),
    Start(RepairStarted),
    Step(RepairStepDone),
    Progress(RepairProgressed),
    Complete(RepairCompleted),
    Fail(JobFailed),
    RequestCancel(CancelRequested),
    ConfirmCancel(JobCancelled),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairJob {
    pub lifecycle: Lifecycle,
    pub spec: Option<RepairAccepted>,
    pub started: Option<RepairStarted>,
    /// Steps done, in order.
    pub steps: Vec<RepairStepDone>,
    pub progress: Option<RepairProgressed>,
    pub completed: Option<RepairCompleted>,
    pub failure: Option<JobFailed>,
}

impl RepairJob {
    /// The last step done.
    pub fn last_step(&self) -> Option<RepairStep> {
        self.steps.last().map(|s| s.step)
    }

    /// Whether `step` is done.
    pub fn done(&self, step: RepairStep) -> bool {
        self.last_step().is_some_and(|last| last >= step)
    }

    /// The record of `step`, if done.
    pub fn step(&self, step: RepairStep) -> Option<&RepairStepDone> {
        self.steps.iter().find(|s| s.step == step)
    }

    /// Whether the live stream may already be gone (no cancelling, no automatic clean-up).
    pub fn swapping(&self) -> bool {
        self.done(RepairStep::Swapping)
    }

    fn validate_spec(spec: &RepairAccepted) -> Result<(), DomainError> {
        if spec.stream.is_empty() {
            return Err(DomainError::invalid("stream: empty"));
        }
        if spec.from_seq == 0 {
            return Err(DomainError::invalid(
                "sequence: stream sequences start at 1",
            ));
        }
        Ok(())
    }

    fn validate_plan(&self, started: &RepairStarted) -> Result<(), DomainError> {
        let spec = self.spec.as_ref().ok_or(DomainError::NotCreated)?;
        let plan = &started.plan;
        if plan.stream != spec.stream || plan.from_seq != spec.from_seq {
            return Err(DomainError::invalid(format!(
                "start: a plan for {} from {} in a repair of {} from {}",
                plan.stream, plan.from_seq, spec.stream, spec.from_seq
            )));
        }
        if plan.from_backup > 0 && plan.backup_first_seq < spec.from_seq {
            return Err(DomainError::invalid(format!(
                "start: backup records from {} but the repair starts at {}",
                plan.backup_first_seq, spec.from_seq
            )));
        }
        if plan.target_last_seq < plan.live_last_seq {
            return Err(DomainError::invalid(
                "start: the repaired stream would reuse sequence numbers the live one has given out",
            ));
        }
        if plan.kept_newer > 0 && !spec.keep_newer {
            return Err(DomainError::invalid(
                "start: newer live messages kept without keep_newer",
            ));
        }
        if plan.safety_copy == plan.stream
            || plan.staging == plan.stream
            || plan.safety_copy == plan.staging
        {
            return Err(DomainError::invalid(
                "start: the safety copy, the staging stream and the live stream need three names",
            ));
        }
        Ok(())
    }

    fn validate_step(&self, done: &RepairStepDone) -> Result<(), DomainError> {
        let expected = RepairStep::ALL.get(self.steps.len()).copied();
        if expected != Some(done.step) {
            return Err(DomainError::invalid(format!(
                "step: {} is not next (after {})",
                done.step,
                self.last_step()
                    .map_or_else(|| "none".to_owned(), |s| s.to_string())
            )));
        }
        if done.step == RepairStep::Swapping && self.lifecycle.cancel_requested {
            // The last moment a cancel can win: after this the live stream is replaced.
            return Err(DomainError::invalid(
                "step: a cancel is pending; the live stream is not replaced",
            ));
        }
        let plan = &self.started.as_ref().ok_or(DomainError::NotCreated)?.plan;
        if matches!(done.step, RepairStep::Verified | RepairStep::Swapped)
            && done.messages != plan.messages()
        {
            return Err(DomainError::invalid(format!(
                "step {}: {} holds {} messages, the plan {}",
                done.step,
                done.stream,
                done.messages,
                plan.messages()
            )));
        }
        Ok(())
    }

    fn validate_completion(&self, done: &RepairCompleted) -> Result<(), DomainError> {
        let spec = self.spec.as_ref().ok_or(DomainError::NotCreated)?;
        let started = self.started.as_ref().ok_or(DomainError::NotCreated)?;
        if self.last_step() != Some(RepairStep::Swapped) {
            return Err(DomainError::invalid(
                "completion: the live stream has not been swapped",
            ));
        }
        if done.messages != started.plan.messages() || done.last_seq != started.plan.target_last_seq
        {
            return Err(DomainError::invalid(format!(
                "completion: {} messages up to {} where the plan has {} up to {}",
                done.messages,
                done.last_seq,
                started.plan.messages(),
                started.plan.target_last_seq
            )));
        }
        if done.report.as_ref().is_some_and(|r| !r.is_clean()) {
            return Err(DomainError::invalid(
                "completion: the repaired stream's chains are not clean",
            ));
        }
        if started.plan.chain_checked != done.report.is_some() {
            return Err(DomainError::invalid(
                "completion: the chain report must be there exactly when the plan checks chains",
            ));
        }
        if done.safety_copy.is_some() != spec.keep_safety_copy {
            return Err(DomainError::invalid(
                "completion: the safety copy is kept exactly when asked",
            ));
        }
        Ok(())
    }
}

impl Aggregate for RepairJob {
    const KIND: JobKind = JobKind::Repair;
    type Command = RepairCommand;
    type Event = RepairEvent;

    fn handle(&self, command: RepairCommand) -> Result<Vec<RepairEvent>, DomainError> {
        let lc = &self.lifecycle;
        let event = match command {
            RepairCommand::Accept(spec) => {
                lc.require_new()?;
                Self::validate_spec(&spec)?;
                RepairEvent::RepairAccepted(spec)
            }
            RepairCommand::Start(started) => {
                lc.require(JobState::Accepted, "start")?;
                self.validate_plan(&started)?;
                RepairEvent::RepairStarted(started)
            }
            RepairCommand::Step(done) => {
                lc.require(JobState::Running, "record a step of")?;
                self.validate_step(&done)?;
                RepairEvent::RepairStepDone(done)
            }
            RepairCommand::Progress(progress) => {
                lc.require(JobState::Running, "record progress of")?;
                if self
                    .progress
                    .as_ref()
                    .is_some_and(|p| progress.messages_done <= p.messages_done)
                {
                    return Ok(vec![]);
                }
                RepairEvent::RepairProgressed(progress)
            }
            RepairCommand::Complete(done) => {
                lc.require(JobState::Running, "complete")?;
                self.validate_completion(&done)?;
                RepairEvent::RepairCompleted(done)
            }
            RepairCommand::Fail(failure) => {
                lc.require_live("fail")?;
                RepairEvent::RepairFailed(failure)
            }
            RepairCommand::RequestCancel(request) => {
                if self.swapping() {
                    return Err(DomainError::invalid(
                        "the repair is replacing the live stream and cannot be cancelled now",
                    ));
                }
                if !lc.cancel_request_is_new()? {
                    return Ok(vec![]);
                }
                RepairEvent::RepairCancelRequested(request)
            }
            RepairCommand::ConfirmCancel(cancelled) => {
                lc.require_cancel_pending()?;
                if self.swapping() {
                    return Err(DomainError::invalid(
                        "the repair is replacing the live stream and cannot be cancelled now",
                    ));
                }
                RepairEvent::RepairCancelled(cancelled)
            }
        };
        Ok(vec![event])
    }

    fn apply(mut self, event: &RepairEvent) -> Self {
        match event {
            RepairEvent::RepairAccepted(spec) => {
                self.lifecycle.accepted();
                self.spec = Some(spec.clone());
            }
            RepairEvent::RepairStarted(started) => {
                self.lifecycle.started();
                self.started = Some(started.clone());
            }
            RepairEvent::RepairStepDone(done) => self.steps.push(done.clone()),
            RepairEvent::RepairProgressed(p) => self.progress = Some(p.clone()),
            RepairEvent::RepairCompleted(done) => {
                self.lifecycle.finished(JobState::Completed);
                self.completed = Some(done.clone());
            }
            RepairEvent::RepairFailed(failure) => {
                self.lifecycle.finished(JobState::Failed);
                self.failure = Some(failure.clone());
            }
            RepairEvent::RepairCancelRequested(_) => self.lifecycle.cancel_requested = true,
            RepairEvent::RepairCancelled(_) => self.lifecycle.finished(JobState::Cancelled),
        }
        self
    }

    fn wrap(event: RepairEvent) -> JobEvent {
        JobEvent::Repair(event)
    }

    fn unwrap(event: &JobEvent) -> Option<&RepairEvent> {
        match event {
            JobEvent::Repair(e) => Some(e),
            _ => None,
        }
    }
}

crate::impl_job_lifecycle!(RepairJob, RepairCommand);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::given;
    use crate::test_support::*;
    use cim_backup_contracts::events::RepairPlan;

    fn spec() -> RepairAccepted {
        RepairAccepted {
            stream: "EVENTS".into(),
            from_seq: 100,
            backup: manifest_cid(),
            source: "mem".into(),
            source_url: "memory://mem".into(),
            profile: None,
            keep_newer: false,
            keep_safety_copy: true,
            original_config: "{}".into(),
            origin_created: None,
            admission: admission(),
        }
    }

    fn plan() -> RepairPlan {
        RepairPlan {
            stream: "EVENTS".into(),
            from_seq: 100,
            live_first_seq: 1,
            live_last_seq: 210,
            live_messages: 209,
            kept_live: 99,
            from_backup: 101,
            backup_first_seq: 100,
            backup_last_seq: 200,
            replaced: 110,
            kept_newer: 0,
            target_last_seq: 210,
            safety_copy: "EVENTS_PRE_REPAIR_x".into(),
            staging: "EVENTS_REPAIR_x".into(),
            consumers: vec![],
            chain_checked: false,
            notes: vec![],
        }
    }

    fn started() -> RepairStarted {
        RepairStarted {
            plan: plan(),
            chain: vec![manifest_cid()],
        }
    }

    fn step(step: RepairStep, messages: u64) -> RepairEvent {
        RepairEvent::RepairStepDone(RepairStepDone {
            step,
            stream: "X".into(),
            messages,
            last_seq: 210,
            consumers: vec![],
        })
    }

    fn history_up_to(last: RepairStep) -> Vec<RepairEvent> {
        let mut h = vec![
            RepairEvent::RepairAccepted(spec()),
            RepairEvent::RepairStarted(started()),
        ];
        for s in RepairStep::ALL.into_iter().take_while(|s| *s <= last) {
            h.push(step(s, 200));
        }
        h
    }

    fn completed() -> RepairCompleted {
        RepairCompleted {
            messages: 200,
            first_seq: 1,
            last_seq: 210,
            report: None,
            safety_copy: Some("EVENTS_PRE_REPAIR_x".into()),
            notes: vec![],
        }
    }

    #[test]
    fn steps_happen_in_order_and_completion_needs_the_swap() {
        let h = vec![
            RepairEvent::RepairAccepted(spec()),
            RepairEvent::RepairStarted(started()),
        ];
        given::<RepairJob>(h.clone())
            .when(RepairCommand::Step(RepairStepDone {
                step: RepairStep::Staged,
                stream: "X".into(),
                messages: 200,
                last_seq: 210,
                consumers: vec![],
            }))
            .then_reject_containing("not next");
        given::<RepairJob>(history_up_to(RepairStep::Verified))
            .when(RepairCommand::Complete(completed()))
            .then_reject_containing("not been swapped");
        given::<RepairJob>(history_up_to(RepairStep::Swapped))
            .when(RepairCommand::Complete(completed()))
            .then_expect(vec![RepairEvent::RepairCompleted(completed())]);
    }

    #[test]
    fn a_pending_cancel_keeps_the_live_stream() {
        let mut h = history_up_to(RepairStep::Verified);
        h.push(RepairEvent::RepairCancelRequested(CancelRequested {
            reason: None,
        }));
        given::<RepairJob>(h.clone())
            .when(RepairCommand::Step(RepairStepDone {
                step: RepairStep::Swapping,
                stream: "EVENTS".into(),
                messages: 200,
                last_seq: 210,
                consumers: vec![],
            }))
            .then_reject_containing("cancel is pending");
        given::<RepairJob>(h)
            .when(RepairCommand::ConfirmCancel(JobCancelled { reason: None }))
            .then_expect(vec![RepairEvent::RepairCancelled(JobCancelled {
                reason: None,
            })]);
    }

    #[test]
    fn a_verified_stream_holds_exactly_the_plan() {
        given::<RepairJob>(history_up_to(RepairStep::Staged))
            .when(RepairCommand::Step(RepairStepDone {
                step: RepairStep::Verified,
                stream: "X".into(),
                messages: 199,
                last_seq: 210,
                consumers: vec![],
            }))
            .then_reject_containing("holds 199 messages, the plan 200");
        let mut short = completed();
        short.last_seq = 200;
        given::<RepairJob>(history_up_to(RepairStep::Swapped))
            .when(RepairCommand::Complete(short))
            .then_reject_containing("where the plan has");
    }

    #[test]
    fn no_cancelling_once_the_live_stream_is_being_replaced() {
        given::<RepairJob>(history_up_to(RepairStep::Verified))
            .when(RepairCommand::RequestCancel(CancelRequested {
                reason: None,
            }))
            .then_expect(vec![RepairEvent::RepairCancelRequested(CancelRequested {
                reason: None,
            })]);
        given::<RepairJob>(history_up_to(RepairStep::Swapping))
            .when(RepairCommand::RequestCancel(CancelRequested {
                reason: None,
            }))
            .then_reject_containing("cannot be cancelled");
    }

    #[test]
    fn a_plan_never_reuses_sequence_numbers() {
        let mut bad = started();
        bad.plan.target_last_seq = 200;
        given::<RepairJob>(vec![RepairEvent::RepairAccepted(spec())])
            .when(RepairCommand::Start(bad))
            .then_reject_containing("reuse sequence numbers");
        let mut bad = started();
        bad.plan.staging = "EVENTS".into();
        given::<RepairJob>(vec![RepairEvent::RepairAccepted(spec())])
            .when(RepairCommand::Start(bad))
            .then_reject_containing("three names");
    }
}
