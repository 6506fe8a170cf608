//! Running commands against job aggregates: load → handle → append → apply, with optimistic
//! concurrency. This is the only place where the pure domain meets the event store.

use cim_backup_contracts::JobId;
use cim_backup_contracts::events::{EventMeta, JobEvent};
use cim_backup_domain::{Aggregate, DomainError};
use time::OffsetDateTime;

use crate::event_store::{EventStore, EventStoreError, StoredEvent, Version};

/// How often a command is retried after losing an optimistic-concurrency race. Retries back off
/// (10 ms doubling), because in a cluster the reload can briefly lag the write that beat us.
const CONFLICT_RETRIES: u32 = 8;

/// Either the aggregate rejected the command, or its outcome could not be recorded. Kept apart
/// (as in esrs) because the first is the caller's problem and the second is ours.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    #[error(transparent)]
    Rejected(#[from] DomainError),
    #[error(transparent)]
    Store(#[from] EventStoreError),
}

/// A loaded job: its state, where its chain stands, and its correlation id.
#[derive(Debug, Clone)]
pub struct Job<A: Aggregate> {
    pub id: JobId,
    pub state: A,
    pub version: Version,
    pub correlation_id: String,
    /// Event id of the last event, the causation of the runner's next event.
    pub last_event_id: Option<String>,
}

impl<A: Aggregate> Job<A> {
    /// A job that does not exist yet.
    pub fn new(id: JobId, correlation_id: String) -> Self {
        Job {
            id,
            state: A::default(),
            version: Version::default(),
            correlation_id,
            last_event_id: None,
        }
    }

    fn apply_stored(&mut self, stored: &[StoredEvent]) {
        for s in stored {
            if let Some(event) = A::unwrap(&s.envelope.event) {
                self.state = std::mem::take(&mut self.state).apply(event);
            }
            self.version = Version {
                sequence: s.envelope.sequence,
                head: Some(s.cid),
                last_stream_seq: s.stream_seq,
            };
            self.last_event_id = Some(s.envelope.meta.event_id.clone());
        }
    }
}

/// Loads a job from its events; `None` if it has none.
pub async fn load<A: Aggregate>(
    store: &EventStore,
    id: &JobId,
) -> Result<Option<Job<A>>, EventStoreError> {
    let stored = store.load(A::KIND, id).await?;
    let Some(first) = stored.first() else {
        return Ok(None);
    };
    let mut job = Job::new(id.clone(), first.envelope.meta.correlation_id.clone());
    job.apply_stored(&stored);
    Ok(Some(job))
}

/// Handles `command` on `job` and records the resulting events. On a concurrency conflict the
/// job is reloaded and the command decided again on the fresh state.
///
/// `causation_id` names what caused the command (a request id, or `None` for the runner, in
/// which case the job's last event is the cause).
pub async fn execute<A>(
    store: &EventStore,
    job: &mut Job<A>,
    command: A::Command,
    causation_id: Option<&str>,
) -> Result<Vec<StoredEvent>, ExecuteError>
where
    A: Aggregate,
    A::Command: Clone,
{
    let mut attempt = 0;
    loop {
        let events = job.state.handle(command.clone())?;
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let cause = causation_id
            .map(str::to_owned)
            .or_else(|| job.last_event_id.clone())
            .unwrap_or_else(|| job.correlation_id.clone());
        let with_meta: Vec<(JobEvent, EventMeta)> = events
            .into_iter()
            .map(|e| {
                let meta = EventMeta {
                    event_id: uuid::Uuid::now_v7().to_string(),
                    time: OffsetDateTime::now_utc(),
                    correlation_id: job.correlation_id.clone(),
                    causation_id: cause.clone(),
                };
                (A::wrap(e), meta)
            })
            .collect();
        match store
            .append(A::KIND, &job.id, &job.version, with_meta)
            .await
        {
            Ok((_, stored)) => {
                job.apply_stored(&stored);
                return Ok(stored);
            }
            Err(EventStoreError::Conflict { .. }) if attempt < CONFLICT_RETRIES => {
                attempt += 1;
                tracing::debug!(job = %job.id, attempt, "append conflict; reloading");
                tokio::time::sleep(std::time::Duration::from_millis(10 << attempt.min(6))).await;
                match load::<A>(store, &job.id).await? {
                    Some(fresh) => *job = fresh,
                    None => {
                        return Err(EventStoreError::Nats(format!(
                            "job {} vanished during a conflict",
                            job.id
                        ))
                        .into());
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}
