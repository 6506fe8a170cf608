//! The lifecycle shared by every job aggregate.
//!
//! ```text
//! (none) --accept--> accepted --start--> running --complete--> completed
//!                        |                  |------fail------> failed
//!                        |                  '--cancel(confirm)-> cancelled
//!                        '--fail / cancel(confirm)-->
//! ```
//! A cancel *request* only sets a flag; the runner confirms with a `*Cancelled` event once it has
//! stopped, so "cancelled" always means nothing is still writing.

use cim_backup_contracts::views::JobState;

use crate::error::DomainError;

/// Lifecycle part of an aggregate's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lifecycle {
    /// `None` until the job's first event.
    pub state: Option<JobState>,
    pub cancel_requested: bool,
}

impl Lifecycle {
    pub fn require_new(&self) -> Result<(), DomainError> {
        match self.state {
            None => Ok(()),
            Some(_) => Err(DomainError::AlreadyExists),
        }
    }

    fn current(&self) -> Result<JobState, DomainError> {
        self.state.ok_or(DomainError::NotCreated)
    }

    /// The job must be exactly in `expected` to do `action`.
    pub fn require(&self, expected: JobState, action: &'static str) -> Result<(), DomainError> {
        let state = self.current()?;
        if state == expected {
            Ok(())
        } else {
            Err(DomainError::WrongState { action, state })
        }
    }

    /// The job must not have finished to do `action`.
    pub fn require_live(&self, action: &'static str) -> Result<(), DomainError> {
        let state = self.current()?;
        if state.is_terminal() {
            Err(DomainError::WrongState { action, state })
        } else {
            Ok(())
        }
    }

    /// Whether a cancel request would add anything: `Ok(false)` if one is already pending.
    pub fn cancel_request_is_new(&self) -> Result<bool, DomainError> {
        self.require_live("cancel")?;
        Ok(!self.cancel_requested)
    }

    /// A cancellation can be confirmed only after it was requested.
    pub fn require_cancel_pending(&self) -> Result<(), DomainError> {
        self.require_live("confirm the cancellation of")?;
        if self.cancel_requested {
            Ok(())
        } else {
            Err(DomainError::invalid(
                "no cancellation was requested for this job",
            ))
        }
    }

    pub fn accepted(&mut self) {
        self.state = Some(JobState::Accepted);
    }
    pub fn started(&mut self) {
        self.state = Some(JobState::Running);
    }
    pub fn finished(&mut self, state: JobState) {
        self.state = Some(state);
    }
}
