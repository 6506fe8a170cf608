//! Why an aggregate rejected a command.
//!
//! Rules: a rejection is a value the caller shows to a human (it names the job state or the
//! offending field); it never means "the outcome could not be recorded" — storage failures are
//! the service's errors, kept apart as in esrs.

use cim_backup_contracts::views::JobState;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// A job with this id already exists (for example the same idempotency key).
    #[error("job already exists")]
    AlreadyExists,
    /// The command needs an existing job.
    #[error("job does not exist")]
    NotCreated,
    /// The command does not fit the job's current state.
    #[error("cannot {action} a job that is {state}")]
    WrongState {
        action: &'static str,
        state: JobState,
    },
    /// The command's data is invalid; the message names the field.
    #[error("{0}")]
    Invalid(String),
}

impl DomainError {
    pub fn invalid(message: impl Into<String>) -> Self {
        DomainError::Invalid(message.into())
    }
}
