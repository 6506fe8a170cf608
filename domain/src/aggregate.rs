//! The aggregate contract and a small given/when/then harness for testing aggregates.

use cim_backup_contracts::events::JobEvent;
use cim_backup_contracts::views::JobKind;

use crate::error::DomainError;

/// A pure, synchronous aggregate (the esrs shape).
pub trait Aggregate: Default + Clone + std::fmt::Debug {
    /// Aggregate type: the token in event subjects. Never renamed.
    const KIND: JobKind;
    type Command;
    type Event: Clone + std::fmt::Debug + PartialEq;

    /// Decides which events `command` produces from `self`, or why it is rejected.
    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, DomainError>;

    /// Folds one event into the state. Events are facts: apply never fails.
    fn apply(self, event: &Self::Event) -> Self;

    /// Wraps this aggregate's event into the contract's [`JobEvent`].
    fn wrap(event: Self::Event) -> JobEvent;

    /// Extracts this aggregate's event from a [`JobEvent`] (`None` for another aggregate's).
    fn unwrap(event: &JobEvent) -> Option<&Self::Event>;

    /// Folds a whole history.
    fn from_history<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self
    where
        Self::Event: 'a,
    {
        events
            .into_iter()
            .fold(Self::default(), |state, event| state.apply(event))
    }
}

/// `given(history).when(command).then_expect(events)` for aggregate tests (after cqrs-es).
pub fn given<A: Aggregate>(history: Vec<A::Event>) -> Given<A> {
    Given {
        state: A::from_history(&history),
    }
}

pub struct Given<A: Aggregate> {
    state: A,
}

impl<A: Aggregate> Given<A> {
    pub fn when(self, command: A::Command) -> Then<A> {
        Then {
            result: self.state.handle(command),
        }
    }
}

pub struct Then<A: Aggregate> {
    result: Result<Vec<A::Event>, DomainError>,
}

impl<A: Aggregate> Then<A> {
    #[track_caller]
    pub fn then_expect(self, expected: Vec<A::Event>) {
        match self.result {
            Ok(events) => assert_eq!(events, expected),
            Err(e) => panic!("expected events, command was rejected: {e}"),
        }
    }

    #[track_caller]
    pub fn then_reject(self, expected: DomainError) {
        match self.result {
            Ok(events) => panic!("expected rejection {expected:?}, got events {events:?}"),
            Err(e) => assert_eq!(e, expected),
        }
    }

    /// The rejection message must contain `needle` (for validation errors naming a field).
    #[track_caller]
    pub fn then_reject_containing(self, needle: &str) {
        match self.result {
            Ok(events) => panic!("expected a rejection containing {needle:?}, got {events:?}"),
            Err(e) => assert!(
                e.to_string().contains(needle),
                "{e} does not contain {needle:?}"
            ),
        }
    }
}

/// Commands every job aggregate understands, so a runner can end any job the same way.
pub trait JobLifecycle: Aggregate {
    fn fail(failure: cim_backup_contracts::events::JobFailed) -> Self::Command;
    fn request_cancel(request: cim_backup_contracts::events::CancelRequested) -> Self::Command;
    fn confirm_cancel(cancelled: cim_backup_contracts::events::JobCancelled) -> Self::Command;
    fn lifecycle(&self) -> &crate::lifecycle::Lifecycle;
}

/// Implements [`JobLifecycle`] for an aggregate whose command enum has `Fail`,
/// `RequestCancel` and `ConfirmCancel` variants and whose state has a `lifecycle` field.
#[macro_export]
macro_rules! impl_job_lifecycle {
    ($aggregate:ty, $command:ident) => {
        impl $crate::aggregate::JobLifecycle for $aggregate {
            fn fail(failure: cim_backup_contracts::events::JobFailed) -> $command {
                $command::Fail(failure)
            }
            fn request_cancel(request: cim_backup_contracts::events::CancelRequested) -> $command {
                $command::RequestCancel(request)
            }
            fn confirm_cancel(cancelled: cim_backup_contracts::events::JobCancelled) -> $command {
                $command::ConfirmCancel(cancelled)
            }
            fn lifecycle(&self) -> &$crate::lifecycle::Lifecycle {
                &self.lifecycle
            }
        }
    };
}
