//! The `restore` aggregate: one job that writes one stream of a backup into an empty stream.
//!
//! A restore may only complete with exactly the totals it announced when it started, and its
//! progress only moves forward: a "completed" restore wrote every message of the plan.

use cim_backup_contracts::events::{
    CancelRequested, JobCancelled, JobEvent, JobFailed, RestoreAccepted, RestoreCompleted,
    RestoreEvent, RestoreMethod, RestoreProgressed, RestoreStarted,
};
use cim_backup_contracts::subjects::is_stream_name;
use cim_backup_contracts::views::{JobKind, JobState};

use crate::aggregate::Aggregate;
use crate::error::DomainError;
use crate::lifecycle::Lifecycle;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreCommand {
    Accept(RestoreAccepted),
    Start(RestoreStarted),
    Progress(RestoreProgressed),
    Complete(RestoreCompleted),
    Fail(JobFailed),
    RequestCancel(CancelRequested),
    ConfirmCancel(JobCancelled),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreJob {
    pub lifecycle: Lifecycle,
    pub spec: Option<RestoreAccepted>,
    pub plan: Option<RestoreStarted>,
    pub progress: Option<RestoreProgressed>,
    pub completed: Option<RestoreCompleted>,
    pub failure: Option<JobFailed>,
}

impl RestoreJob {
    fn validate_spec(spec: &RestoreAccepted) -> Result<(), DomainError> {
        for (field, name) in [("stream", &spec.stream), ("as", &spec.target)] {
            if !is_stream_name(name) {
                return Err(DomainError::invalid(format!(
                    "{field}: {} is not a valid stream name",
                    cim_backup_contracts::text::echo(name)
                )));
            }
        }
        Ok(())
    }

    fn validate_progress(&self, next: &RestoreProgressed) -> Result<(), DomainError> {
        let plan = self.plan.as_ref().ok_or(DomainError::NotCreated)?;
        if next.segments_done > plan.segments || next.messages_done > plan.messages {
            return Err(DomainError::invalid(format!(
                "progress: {} segments / {} messages exceed the plan of {} / {}",
                next.segments_done, next.messages_done, plan.segments, plan.messages
            )));
        }
        if let Some(prev) = &self.progress
            && (next.segments_done <= prev.segments_done || next.last_seq < prev.last_seq)
        {
            return Err(DomainError::invalid(format!(
                "progress: must move forward from segment {} / seq {}",
                prev.segments_done, prev.last_seq
            )));
        }
        Ok(())
    }

    /// A restore completes only after reading every planned segment; when nothing is filtered
    /// out it must have written every record of them, in the planned range.
    fn validate_completion(&self, done: &RestoreCompleted) -> Result<(), DomainError> {
        let plan = self.plan.as_ref().ok_or(DomainError::NotCreated)?;
        // Appending may skip messages the target already holds (same Nats-Msg-Id).
        let everything = self
            .spec
            .as_ref()
            .is_some_and(|s| s.selection.is_everything())
            && plan.method != RestoreMethod::Append;
        let short = if everything {
            done.messages != plan.messages
                || (plan.messages > 0
                    && (done.first_seq, done.last_seq) != (plan.first_seq, plan.last_seq))
        } else {
            done.messages > plan.messages
        };
        if done.segments != plan.segments || short {
            return Err(DomainError::invalid(format!(
                "completion: read {} segments and wrote {} messages ({}..={}), the plan was {} segments and {} messages ({}..={})",
                done.segments,
                done.messages,
                done.first_seq,
                done.last_seq,
                plan.segments,
                plan.messages,
                plan.first_seq,
                plan.last_seq
            )));
        }
        Ok(())
    }
}

impl Aggregate for RestoreJob {
    const KIND: JobKind = JobKind::Restore;
    type Command = RestoreCommand;
    type Event = RestoreEvent;

    fn handle(&self, command: RestoreCommand) -> Result<Vec<RestoreEvent>, DomainError> {
        let lc = &self.lifecycle;
        let event = match command {
            RestoreCommand::Accept(spec) => {
                lc.require_new()?;
                Self::validate_spec(&spec)?;
                RestoreEvent::RestoreAccepted(spec)
            }
            RestoreCommand::Start(plan) => {
                lc.require(JobState::Accepted, "start")?;
                if plan.method == RestoreMethod::Auto {
                    return Err(DomainError::invalid(
                        "start: the method must be decided (not auto)",
                    ));
                }
                RestoreEvent::RestoreStarted(plan)
            }
            RestoreCommand::Progress(progress) => {
                lc.require(JobState::Running, "record progress of")?;
                self.validate_progress(&progress)?;
                RestoreEvent::RestoreProgressed(progress)
            }
            RestoreCommand::Complete(done) => {
                lc.require(JobState::Running, "complete")?;
                self.validate_completion(&done)?;
                RestoreEvent::RestoreCompleted(done)
            }
            RestoreCommand::Fail(failure) => {
                lc.require_live("fail")?;
                RestoreEvent::RestoreFailed(failure)
            }
            RestoreCommand::RequestCancel(request) => {
                if !lc.cancel_request_is_new()? {
                    return Ok(vec![]);
                }
                RestoreEvent::RestoreCancelRequested(request)
            }
            RestoreCommand::ConfirmCancel(cancelled) => {
                lc.require_cancel_pending()?;
                RestoreEvent::RestoreCancelled(cancelled)
            }
        };
        Ok(vec![event])
    }

    fn apply(mut self, event: &RestoreEvent) -> Self {
        match event {
            RestoreEvent::RestoreAccepted(spec) => {
                self.lifecycle.accepted();
                self.spec = Some(spec.clone());
            }
            RestoreEvent::RestoreStarted(plan) => {
                self.lifecycle.started();
                self.plan = Some(plan.clone());
            }
            RestoreEvent::RestoreProgressed(p) => self.progress = Some(p.clone()),
            RestoreEvent::RestoreCompleted(done) => {
                self.lifecycle.finished(JobState::Completed);
                self.completed = Some(done.clone());
            }
            RestoreEvent::RestoreFailed(failure) => {
                self.lifecycle.finished(JobState::Failed);
                self.failure = Some(failure.clone());
            }
            RestoreEvent::RestoreCancelRequested(_) => self.lifecycle.cancel_requested = true,
            RestoreEvent::RestoreCancelled(_) => self.lifecycle.finished(JobState::Cancelled),
        }
        self
    }

    fn wrap(event: RestoreEvent) -> JobEvent {
        JobEvent::Restore(event)
    }

    fn unwrap(event: &JobEvent) -> Option<&RestoreEvent> {
        match event {
            JobEvent::Restore(e) => Some(e),
            _ => None,
        }
    }
}

crate::impl_job_lifecycle!(RestoreJob, RestoreCommand);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::given;
    use crate::test_support::*;

    fn plan() -> RestoreStarted {
        RestoreStarted {
            method: RestoreMethod::ServerArchive,
            chain: vec![manifest_cid()],
            segments: 2,
            messages: 100,
            bytes: 1000,
            first_seq: 1,
            last_seq: 100,
            target_last_seq: 100,
        }
    }

    fn done(segments: u64, messages: u64, first_seq: u64, last_seq: u64) -> RestoreCompleted {
        RestoreCompleted {
            segments,
            messages,
            bytes: 1000,
            first_seq,
            last_seq,
            consumers: vec![],
            notes: vec![],
        }
    }

    fn running() -> Vec<RestoreEvent> {
        vec![
            RestoreEvent::RestoreAccepted(restore_spec("A", "B")),
            RestoreEvent::RestoreStarted(plan()),
        ]
    }

    fn progress(segments: u64, messages: u64, last_seq: u64) -> RestoreProgressed {
        RestoreProgressed {
            segments_done: segments,
            messages_done: messages,
            bytes_done: 0,
            last_seq,
        }
    }

    #[test]
    fn target_name_is_validated() {
        given::<RestoreJob>(vec![])
            .when(RestoreCommand::Accept(restore_spec("A", "B.C")))
            .then_reject_containing("as: \"B.C\"");
    }

    #[test]
    fn progress_only_moves_forward_and_within_the_plan() {
        let mut history = running();
        history.push(RestoreEvent::RestoreProgressed(progress(1, 50, 50)));
        given::<RestoreJob>(history.clone())
            .when(RestoreCommand::Progress(progress(1, 50, 50)))
            .then_reject_containing("move forward");
        given::<RestoreJob>(history.clone())
            .when(RestoreCommand::Progress(progress(3, 150, 150)))
            .then_reject_containing("exceed the plan");
        given::<RestoreJob>(history)
            .when(RestoreCommand::Progress(progress(2, 100, 100)))
            .then_expect(vec![RestoreEvent::RestoreProgressed(progress(2, 100, 100))]);
    }

    #[test]
    fn completion_must_match_the_plan() {
        given::<RestoreJob>(running())
            .when(RestoreCommand::Complete(done(2, 99, 1, 100)))
            .then_reject_containing("100 messages");
        given::<RestoreJob>(running())
            .when(RestoreCommand::Complete(done(1, 100, 1, 100)))
            .then_reject_containing("read 1 segments");
        given::<RestoreJob>(running())
            .when(RestoreCommand::Complete(done(2, 100, 1, 100)))
            .then_expect(vec![RestoreEvent::RestoreCompleted(done(2, 100, 1, 100))]);
    }

    #[test]
    fn a_filtered_restore_may_write_fewer_messages_but_must_read_every_planned_segment() {
        let mut spec = restore_spec("A", "B");
        spec.selection.subjects = vec!["orders.>".into()];
        let history = vec![
            RestoreEvent::RestoreAccepted(spec),
            RestoreEvent::RestoreStarted(plan()),
        ];
        given::<RestoreJob>(history.clone())
            .when(RestoreCommand::Complete(done(2, 40, 3, 77)))
            .then_expect(vec![RestoreEvent::RestoreCompleted(done(2, 40, 3, 77))]);
        given::<RestoreJob>(history.clone())
            .when(RestoreCommand::Complete(done(2, 101, 1, 100)))
            .then_reject_containing("plan was");
        given::<RestoreJob>(history)
            .when(RestoreCommand::Complete(done(1, 40, 3, 77)))
            .then_reject_containing("read 1 segments");
    }

    #[test]
    fn the_method_is_decided_at_start() {
        let mut auto = plan();
        auto.method = RestoreMethod::Auto;
        given::<RestoreJob>(vec![RestoreEvent::RestoreAccepted(restore_spec("A", "A"))])
            .when(RestoreCommand::Start(auto))
            .then_reject_containing("not auto");
    }

    #[test]
    fn a_job_cannot_complete_before_it_starts() {
        given::<RestoreJob>(vec![RestoreEvent::RestoreAccepted(restore_spec("A", "A"))])
            .when(RestoreCommand::Complete(done(0, 0, 0, 0)))
            .then_reject(DomainError::WrongState {
                action: "complete",
                state: JobState::Accepted,
            });
    }

    #[test]
    fn a_failed_restore_cannot_be_cancelled() {
        let mut history = running();
        history.push(RestoreEvent::RestoreFailed(failure()));
        given::<RestoreJob>(history)
            .when(RestoreCommand::RequestCancel(CancelRequested {
                reason: None,
            }))
            .then_reject(DomainError::WrongState {
                action: "cancel",
                state: JobState::Failed,
            });
    }
}
