//! The `verify` aggregate: one job that re-reads and checks every object of a backup.
//!
//! A verify completes only with the totals it announced: it cannot report "verified" for a
//! backup it checked partly.

use cim_backup_contracts::events::{
    CancelRequested, JobCancelled, JobEvent, JobFailed, VerifyAccepted, VerifyCompleted,
    VerifyEvent, VerifyProgressed, VerifyStarted,
};
use cim_backup_contracts::views::{JobKind, JobState};

use crate::aggregate::Aggregate;
use crate::error::DomainError;
use crate::lifecycle::Lifecycle;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyCommand {
    Accept(VerifyAccepted),
    Start(VerifyStarted),
    Progress(VerifyProgressed),
    Complete(VerifyCompleted),
    Fail(JobFailed),
    RequestCancel(CancelRequested),
    ConfirmCancel(JobCancelled),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyJob {
    pub lifecycle: Lifecycle,
    pub spec: Option<VerifyAccepted>,
    pub plan: Option<VerifyStarted>,
    pub progress: Option<VerifyProgressed>,
    pub completed: Option<VerifyCompleted>,
    pub failure: Option<JobFailed>,
}

impl VerifyJob {
    fn validate_progress(&self, next: &VerifyProgressed) -> Result<(), DomainError> {
        let plan = self.plan.as_ref().ok_or(DomainError::NotCreated)?;
        if next.objects_done > plan.objects || next.records_done > plan.records {
            return Err(DomainError::invalid(format!(
                "progress: {} objects / {} records exceed the plan of {} / {}",
                next.objects_done, next.records_done, plan.objects, plan.records
            )));
        }
        if let Some(prev) = &self.progress
            && next.objects_done <= prev.objects_done
        {
            return Err(DomainError::invalid(format!(
                "progress: must move forward from object {}",
                prev.objects_done
            )));
        }
        Ok(())
    }

    fn validate_completion(&self, done: &VerifyCompleted) -> Result<(), DomainError> {
        let plan = self.plan.as_ref().ok_or(DomainError::NotCreated)?;
        if (done.objects, done.records, done.bytes) != (plan.objects, plan.records, plan.bytes) {
            return Err(DomainError::invalid(format!(
                "completion: checked {} objects / {} records / {} bytes, the plan was {} / {} / {}",
                done.objects, done.records, done.bytes, plan.objects, plan.records, plan.bytes
            )));
        }
        Ok(())
    }
}

impl Aggregate for VerifyJob {
    const KIND: JobKind = JobKind::Verify;
    type Command = VerifyCommand;
    type Event = VerifyEvent;

    fn handle(&self, command: VerifyCommand) -> Result<Vec<VerifyEvent>, DomainError> {
        let lc = &self.lifecycle;
        let event = match command {
            VerifyCommand::Accept(spec) => {
                lc.require_new()?;
                VerifyEvent::VerifyAccepted(spec)
            }
            VerifyCommand::Start(plan) => {
                lc.require(JobState::Accepted, "start")?;
                VerifyEvent::VerifyStarted(plan)
            }
            VerifyCommand::Progress(progress) => {
                lc.require(JobState::Running, "record progress of")?;
                self.validate_progress(&progress)?;
                VerifyEvent::VerifyProgressed(progress)
            }
            VerifyCommand::Complete(done) => {
                lc.require(JobState::Running, "complete")?;
                self.validate_completion(&done)?;
                VerifyEvent::VerifyCompleted(done)
            }
            VerifyCommand::Fail(failure) => {
                lc.require_live("fail")?;
                VerifyEvent::VerifyFailed(failure)
            }
            VerifyCommand::RequestCancel(request) => {
                if !lc.cancel_request_is_new()? {
                    return Ok(vec![]);
                }
                VerifyEvent::VerifyCancelRequested(request)
            }
            VerifyCommand::ConfirmCancel(cancelled) => {
                lc.require_cancel_pending()?;
                VerifyEvent::VerifyCancelled(cancelled)
            }
        };
        Ok(vec![event])
    }

    fn apply(mut self, event: &VerifyEvent) -> Self {
        match event {
            VerifyEvent::VerifyAccepted(spec) => {
                self.lifecycle.accepted();
                self.spec = Some(spec.clone());
            }
            VerifyEvent::VerifyStarted(plan) => {
                self.lifecycle.started();
                self.plan = Some(plan.clone());
            }
            VerifyEvent::VerifyProgressed(p) => self.progress = Some(p.clone()),
            VerifyEvent::VerifyCompleted(done) => {
                self.lifecycle.finished(JobState::Completed);
                self.completed = Some(done.clone());
            }
            VerifyEvent::VerifyFailed(failure) => {
                self.lifecycle.finished(JobState::Failed);
                self.failure = Some(failure.clone());
            }
            VerifyEvent::VerifyCancelRequested(_) => self.lifecycle.cancel_requested = true,
            VerifyEvent::VerifyCancelled(_) => self.lifecycle.finished(JobState::Cancelled),
        }
        self
    }

    fn wrap(event: VerifyEvent) -> JobEvent {
        JobEvent::Verify(event)
    }

    fn unwrap(event: &JobEvent) -> Option<&VerifyEvent> {
        match event {
            JobEvent::Verify(e) => Some(e),
            _ => None,
        }
    }
}

crate::impl_job_lifecycle!(VerifyJob, VerifyCommand);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::given;
    use crate::test_support::*;

    fn plan() -> VerifyStarted {
        VerifyStarted {
            objects: 3,
            bytes: 300,
            records: 1000,
        }
    }

    #[test]
    fn completion_must_cover_the_whole_plan() {
        let history = vec![
            VerifyEvent::VerifyAccepted(verify_spec()),
            VerifyEvent::VerifyStarted(plan()),
        ];
        given::<VerifyJob>(history.clone())
            .when(VerifyCommand::Complete(VerifyCompleted {
                objects: 2,
                bytes: 200,
                records: 700,
            }))
            .then_reject_containing("the plan was 3");
        given::<VerifyJob>(history)
            .when(VerifyCommand::Complete(VerifyCompleted {
                objects: 3,
                bytes: 300,
                records: 1000,
            }))
            .then_expect(vec![VerifyEvent::VerifyCompleted(VerifyCompleted {
                objects: 3,
                bytes: 300,
                records: 1000,
            })]);
    }

    #[test]
    fn a_failed_verify_names_the_object_and_stays_failed() {
        let mut history = vec![
            VerifyEvent::VerifyAccepted(verify_spec()),
            VerifyEvent::VerifyStarted(plan()),
        ];
        history.push(VerifyEvent::VerifyFailed(failure()));
        let state = VerifyJob::from_history(&history);
        assert_eq!(state.lifecycle.state, Some(JobState::Failed));
        assert_eq!(
            state.failure.as_ref().unwrap().object.as_deref(),
            Some("segments/x")
        );
        given::<VerifyJob>(history)
            .when(VerifyCommand::Progress(VerifyProgressed {
                objects_done: 1,
                bytes_done: 1,
                records_done: 1,
            }))
            .then_reject(DomainError::WrongState {
                action: "record progress of",
                state: JobState::Failed,
            });
    }

    #[test]
    fn progress_must_move_forward() {
        let history = vec![
            VerifyEvent::VerifyAccepted(verify_spec()),
            VerifyEvent::VerifyStarted(plan()),
            VerifyEvent::VerifyProgressed(VerifyProgressed {
                objects_done: 2,
                bytes_done: 1,
                records_done: 1,
            }),
        ];
        given::<VerifyJob>(history)
            .when(VerifyCommand::Progress(VerifyProgressed {
                objects_done: 2,
                bytes_done: 2,
                records_done: 2,
            }))
            .then_reject_containing("move forward");
    }
}
