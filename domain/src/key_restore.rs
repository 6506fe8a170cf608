//! The `key-restore` aggregate: one read-model key written back with the value it had at a
//! time. Invariants: the plan names a key and a bucket, and the key does not hold the value
//! already; the job completes once, with the revision written.

use cim_backup_contracts::events::{
    CancelRequested, JobCancelled, JobEvent, JobFailed, KeyRestoreEvent,
};
use cim_backup_contracts::key_restore::{
    KeyRestoreAccepted, KeyRestoreCompleted, KeyRestoreStarted, LiveState,
};
use cim_backup_contracts::views::{JobKind, JobState};

use crate::aggregate::{Aggregate, JobLifecycle};
use crate::error::DomainError;
use crate::lifecycle::Lifecycle;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRestoreCommand {
    Accept(KeyRestoreAccepted),
    Start(KeyRestoreStarted),
    Complete(KeyRestoreCompleted),
    Fail(JobFailed),
    RequestCancel(CancelRequested),
    ConfirmCancel(JobCancelled),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyRestoreJob {
    pub lifecycle: Lifecycle,
    pub spec: Option<KeyRestoreAccepted>,
    pub completed: Option<KeyRestoreCompleted>,
    pub failure: Option<JobFailed>,
}

impl Aggregate for KeyRestoreJob {
    const KIND: JobKind = JobKind::KeyRestore;
    type Command = KeyRestoreCommand;
    type Event = KeyRestoreEvent;

    fn handle(&self, command: KeyRestoreCommand) -> Result<Vec<KeyRestoreEvent>, DomainError> {
        let lc = &self.lifecycle;
        let event = match command {
            KeyRestoreCommand::Accept(spec) => {
                lc.require_new()?;
                if spec.plan.key.is_empty() || spec.plan.bucket.is_empty() {
                    return Err(DomainError::invalid("plan: names no key or bucket"));
                }
                if spec.plan.live == LiveState::Same {
                    return Err(DomainError::invalid(
                        "plan: the key holds the value already",
                    ));
                }
                KeyRestoreEvent::KeyRestoreAccepted(spec)
            }
            KeyRestoreCommand::Start(s) => {
                lc.require(JobState::Accepted, "start")?;
                KeyRestoreEvent::KeyRestoreStarted(s)
            }
            KeyRestoreCommand::Complete(done) => {
                lc.require(JobState::Running, "complete")?;
                if done.revision == 0 {
                    return Err(DomainError::invalid("completion: no revision was written"));
                }
                KeyRestoreEvent::KeyRestoreCompleted(done)
            }
            KeyRestoreCommand::Fail(failure) => {
                lc.require_live("fail")?;
                KeyRestoreEvent::KeyRestoreFailed(failure)
            }
            KeyRestoreCommand::RequestCancel(request) => {
                if !lc.cancel_request_is_new()? {
                    return Ok(vec![]);
                }
                KeyRestoreEvent::KeyRestoreCancelRequested(request)
            }
            KeyRestoreCommand::ConfirmCancel(cancelled) => {
                lc.require_cancel_pending()?;
                KeyRestoreEvent::KeyRestoreCancelled(cancelled)
            }
        };
        Ok(vec![event])
    }

    fn apply(mut self, event: &KeyRestoreEvent) -> Self {
        match event {
            KeyRestoreEvent::KeyRestoreAccepted(spec) => {
                self.lifecycle.accepted();
                self.spec = Some(spec.clone());
            }
            KeyRestoreEvent::KeyRestoreStarted(_) => self.lifecycle.started(),
            KeyRestoreEvent::KeyRestoreCompleted(done) => {
                self.lifecycle.finished(JobState::Completed);
                self.completed = Some(done.clone());
            }
            KeyRestoreEvent::KeyRestoreFailed(f) => {
                self.lifecycle.finished(JobState::Failed);
                self.failure = Some(f.clone());
            }
            KeyRestoreEvent::KeyRestoreCancelRequested(_) => self.lifecycle.cancel_requested = true,
            KeyRestoreEvent::KeyRestoreCancelled(_) => self.lifecycle.finished(JobState::Cancelled),
        }
        self
    }

    fn wrap(event: KeyRestoreEvent) -> JobEvent {
        JobEvent::KeyRestore(event)
    }

    fn unwrap(event: &JobEvent) -> Option<&KeyRestoreEvent> {
        match event {
            JobEvent::KeyRestore(e) => Some(e),
            _ => None,
        }
    }
}

impl JobLifecycle for KeyRestoreJob {
    fn fail(failure: JobFailed) -> KeyRestoreCommand {
        KeyRestoreCommand::Fail(failure)
    }
    fn request_cancel(request: CancelRequested) -> KeyRestoreCommand {
        KeyRestoreCommand::RequestCancel(request)
    }
    fn confirm_cancel(cancelled: JobCancelled) -> KeyRestoreCommand {
        KeyRestoreCommand::ConfirmCancel(cancelled)
    }
    fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::given;
    use crate::test_support::admission;
    use cim_backup_contracts::key_restore::{KeyRestorePlan, ValueOrigin};

    fn spec(live: LiveState) -> KeyRestoreAccepted {
        KeyRestoreAccepted {
            plan: KeyRestorePlan {
                domain: "g".into(),
                model: "M".into(),
                bucket: "B".into(),
                key: "g.k".into(),
                as_of: time::OffsetDateTime::UNIX_EPOCH,
                origin: ValueOrigin::History {
                    revision: 3,
                    created: time::OffsetDateTime::UNIX_EPOCH,
                },
                live,
                live_revision: 4,
                value_bytes: 2,
                preview: "{}".into(),
            },
            value: "e30=".into(),
            admission: admission(),
        }
    }

    #[test]
    fn a_key_that_holds_the_value_is_not_restored_and_completion_names_its_revision() {
        given::<KeyRestoreJob>(vec![])
            .when(KeyRestoreCommand::Accept(spec(LiveState::Same)))
            .then_reject_containing("holds the value already");
        let history = vec![
            KeyRestoreEvent::KeyRestoreAccepted(spec(LiveState::Deleted)),
            KeyRestoreEvent::KeyRestoreStarted(KeyRestoreStarted::default()),
        ];
        given::<KeyRestoreJob>(history.clone())
            .when(KeyRestoreCommand::Complete(KeyRestoreCompleted {
                revision: 0,
            }))
            .then_reject_containing("no revision");
        let done = KeyRestoreCompleted { revision: 5 };
        given::<KeyRestoreJob>(history)
            .when(KeyRestoreCommand::Complete(done.clone()))
            .then_expect(vec![KeyRestoreEvent::KeyRestoreCompleted(done)]);
    }
}
