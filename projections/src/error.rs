//! Why an event could not be folded into a view.
//!
//! Rules: `Gap` is transient (the earlier event has not been folded yet — retry later);
//! everything else means the event log and the view disagree and needs a human or a rebuild.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectionError {
    /// The view is at `version`; this event has sequence `got`, which is not `version + 1`.
    #[error("job {job}: view is at version {version}, event has sequence {got}")]
    Gap { job: String, version: u64, got: u64 },
    /// The first event of a job is not its `*Accepted` event.
    #[error("job {job}: first event is {event_type}, not an accepted event")]
    NoAcceptedEvent { job: String, event_type: String },
}
