//! The projector and the view store.
//!
//! A durable pull consumer per instance (`cim-backup-projector-<instance>`) folds every event into
//! two KV buckets: `CIM_BACKUP_JOBS` (job id → [`JobView`]) and `CIM_BACKUP_CATALOG` (backup id →
//! [`CatalogEntry`]). Writes are compare-and-set on the KV revision and folds are idempotent and
//! gap-aware (see `cim_backup_projections::job_view::fold`), so several instances may fold the
//! same events side by side, and a redelivery after a crash changes nothing.
//!
//! Views are disposable. If the jobs bucket is missing when the projector starts, it recreates
//! the buckets and rewinds its consumer to the first event: the rebuilt views equal the old ones
//! because folds use only what the events carry.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv};
use cim_backup_contracts::JobId;
use cim_backup_contracts::subjects::{
    CATALOG_BUCKET, EVENTS_STREAM_SUBJECTS, JOBS_BUCKET, projector_durable,
};
use cim_backup_contracts::views::{CatalogEntry, JobView};
use cim_backup_projections::ProjectionError;
use cim_backup_projections::catalog;
use cim_backup_projections::job_view::{self, Fold};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::event_store::{StoredEvent, decode_stored};
use crate::lookup::Lookup;

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("view store unavailable: {0}")]
    Nats(String),
    #[error("stored view {key} is not valid JSON: {message}")]
    Corrupt { key: String, message: String },
}

fn nats(e: impl std::fmt::Display) -> ViewError {
    ViewError::Nats(e.to_string())
}

/// The two view buckets.
#[derive(Clone)]
pub struct Views {
    jobs: kv::Store,
    catalog: kv::Store,
    /// Listing reads of the buckets' streams, without consumers.
    jobs_reads: Lookup,
    catalog_reads: Lookup,
}

impl Views {
    /// Opens the view buckets, creating them if needed. Returns whether either bucket was new
    /// (then the projector must replay the whole event log; both views are rebuilt, since a
    /// catalog entry is only written while folding its job).
    pub async fn open(
        js: &jetstream::Context,
        replicas: usize,
    ) -> Result<(Views, bool), ViewError> {
        let (jobs, jobs_new) =
            open_bucket(js, JOBS_BUCKET, "cim-backup job views", replicas).await?;
        let (catalog, catalog_new) =
            open_bucket(js, CATALOG_BUCKET, "cim-backup backup catalog", replicas).await?;
        if jobs_new != catalog_new {
            // Replay rebuilds both; start both from empty so the folds see every event once.
            purge_bucket(
                js,
                if jobs_new {
                    CATALOG_BUCKET
                } else {
                    JOBS_BUCKET
                },
            )
            .await?;
        }
        let api = crate::jsapi::JsApi::new(js.client());
        let reads = |bucket: &str| {
            let api = api.clone();
            let stream = format!("KV_{bucket}");
            async move { Lookup::of(&api, &stream).await.map_err(nats) }
        };
        Ok((
            Views {
                jobs,
                catalog,
                jobs_reads: reads(JOBS_BUCKET).await?,
                catalog_reads: reads(CATALOG_BUCKET).await?,
            },
            jobs_new || catalog_new,
        ))
    }

    pub async fn job(&self, id: &JobId) -> Result<Option<JobView>, ViewError> {
        Ok(self.job_entry(id).await?.map(|(view, _)| view))
    }

    async fn job_entry(&self, id: &JobId) -> Result<Option<(JobView, u64)>, ViewError> {
        let Some(entry) = self.jobs.entry(id.as_str()).await.map_err(nats)? else {
            return Ok(None);
        };
        if !matches!(entry.operation, kv::Operation::Put) {
            return Ok(None);
        }
        let view = serde_json::from_slice(&entry.value).map_err(|e| ViewError::Corrupt {
            key: id.to_string(),
            message: e.to_string(),
        })?;
        Ok(Some((view, entry.revision)))
    }

    /// Every job view, newest first.
    pub async fn jobs(&self) -> Result<Vec<JobView>, ViewError> {
        let mut views: Vec<JobView> = all_values(&self.jobs_reads, JOBS_BUCKET).await?;
        views.sort_by(|a, b| {
            b.accepted_at
                .cmp(&a.accepted_at)
                .then_with(|| a.job_id.cmp(&b.job_id))
        });
        Ok(views)
    }

    /// Every catalog entry (unordered; see `catalog::select`).
    pub async fn catalog(&self) -> Result<Vec<CatalogEntry>, ViewError> {
        all_values(&self.catalog_reads, CATALOG_BUCKET).await
    }

    /// Writes one catalog entry (an idempotent put: the entry is a function of its events).
    pub async fn put_catalog_entry(&self, entry: &CatalogEntry) -> Result<(), ViewError> {
        let bytes = serde_json::to_vec(entry).expect("catalog entries serialize");
        self.catalog
            .put(entry.backup_id.to_string(), bytes.into())
            .await
            .map_err(nats)?;
        Ok(())
    }

    /// Folds a job's events (in stream order) into its view and writes the view once, with
    /// compare-and-set; catalog entries the events create are written too. Returns how many
    /// leading events were folded: the rest (from the first one that cannot be folded yet, a
    /// gap) must be retried later, with the error.
    pub async fn apply_job(
        &self,
        id: &JobId,
        events: &[StoredEvent],
    ) -> Result<(usize, Option<ProjectionError>), ViewError> {
        loop {
            let current = self.job_entry(id).await?;
            let mut view = current.as_ref().map(|(v, _)| v.clone());
            let mut changed = false;
            let mut folded = 0;
            let mut failure = None;
            let mut entries = Vec::new();
            for stored in events {
                match fold_stored(view.as_ref(), stored) {
                    Ok(Fold::Updated(next)) => {
                        entries.extend(catalog::entry_for(&next, &stored.envelope));
                        view = Some(next);
                        changed = true;
                    }
                    Ok(Fold::AlreadyApplied) => {}
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
                folded += 1;
            }
            // Catalog entries first: they are idempotent puts, so if the view write below loses
            // a race or fails, a retry or redelivery writes them again. Written after the view,
            // a failure here would be lost: the redelivered event is already in the view.
            for entry in &entries {
                self.put_catalog_entry(entry).await?;
            }
            if let (true, Some(view)) = (changed, &view) {
                let bytes = serde_json::to_vec(view).expect("views serialize");
                let written = match &current {
                    Some((_, revision)) => self
                        .jobs
                        .update(id.as_str(), bytes.into(), *revision)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    None => self
                        .jobs
                        .create(id.as_str(), bytes.into())
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                };
                if let Err(e) = written {
                    // Another instance's projector wrote this view meanwhile: read it again
                    // and fold again (folds are idempotent).
                    if e.contains("wrong last sequence")
                        || e.contains("already exists")
                        || e.contains("revision")
                    {
                        continue;
                    }
                    return Err(ViewError::Nats(e));
                }
            }
            return Ok((folded, failure));
        }
    }
}

/// Folds one stored event into a view, noting where in the stream the view now stands.
pub fn fold_stored(view: Option<&JobView>, stored: &StoredEvent) -> Result<Fold, ProjectionError> {
    let folded = job_view::fold(view, &stored.envelope, stored.cid)?;
    Ok(match folded {
        Fold::Updated(mut next) => {
            next.head_seq = stored.stream_seq;
            Fold::Updated(next)
        }
        Fold::AlreadyApplied => Fold::AlreadyApplied,
    })
}

async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
    description: &str,
    replicas: usize,
) -> Result<(kv::Store, bool), ViewError> {
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok((store, false));
    }
    let store = js
        .create_key_value(kv::Config {
            bucket: bucket.to_owned(),
            description: description.to_owned(),
            history: 1,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .map_err(nats)?;
    Ok((store, true))
}

/// Empties a view bucket (its backing stream) before a replay refills it.
async fn purge_bucket(js: &jetstream::Context, bucket: &str) -> Result<(), ViewError> {
    crate::jsapi::JsApi::new(js.client())
        .purge(&format!("KV_{bucket}"), None)
        .await
        .map(|_| ())
        .map_err(nats)
}

/// Every live value of a bucket, read as its leader has it and without leaving a consumer
/// behind ([`Lookup`]). The buckets keep one revision per key, so the stream holds exactly the
/// current values and the delete markers, which are skipped.
async fn all_values<T: serde::de::DeserializeOwned>(
    reads: &Lookup,
    bucket: &str,
) -> Result<Vec<T>, ViewError> {
    let messages = reads
        .all(&format!("$KV.{bucket}.>"), 1)
        .await
        .map_err(nats)?;
    // A key updated while the pages were read shows up twice (its old revision, then the new
    // one at a higher sequence): the newest wins.
    let mut newest: std::collections::HashMap<&str, &crate::lookup::StoredMessage> =
        std::collections::HashMap::with_capacity(messages.len());
    for m in &messages {
        newest.insert(m.subject.as_str(), m);
    }
    let mut values = Vec::with_capacity(newest.len());
    for m in newest.into_values() {
        if m.header("KV-Operation").is_some() {
            continue; // DEL or PURGE
        }
        values.push(
            serde_json::from_slice(&m.payload).map_err(|e| ViewError::Corrupt {
                key: m.subject.clone(),
                message: e.to_string(),
            })?,
        );
    }
    Ok(values)
}

/// One event as the projector's consumer delivered it: decoded, with the message to ack and how
/// often it has been delivered.
struct Delivered {
    stored: StoredEvent,
    message: jetstream::Message,
    delivered: i64,
}

/// Deliveries of an out-of-order event before the projector gives up on it (≈ 1 minute).
const GAP_RETRIES: i64 = 600;
/// Most events folded as one batch.
const BATCH: usize = 512;

/// The projector loop.
pub struct Projector {
    js: jetstream::Context,
    views: Views,
    stream: String,
    durable: String,
}

impl Projector {
    /// Prepares the durable consumer. `replay` rewinds it to the first event (after the view
    /// buckets were created fresh).
    pub async fn new(
        js: jetstream::Context,
        views: Views,
        stream: &str,
        instance: &str,
        replay: bool,
    ) -> Result<Projector, ViewError> {
        let durable = projector_durable(instance);
        if replay {
            // Absent consumer is fine: it will be created from the first event.
            let _ = js.delete_consumer_from_stream(&durable, stream).await;
        }
        let projector = Projector {
            js,
            views,
            stream: stream.to_owned(),
            durable,
        };
        projector.consumer().await?;
        Ok(projector)
    }

    async fn consumer(&self) -> Result<consumer::PullConsumer, ViewError> {
        let stream = self.js.get_stream(&self.stream).await.map_err(nats)?;
        stream
            .get_or_create_consumer(
                &self.durable,
                consumer::pull::Config {
                    durable_name: Some(self.durable.clone()),
                    // The stream may be a shared `cim.>` stream: fold only our events.
                    filter_subject: EVENTS_STREAM_SUBJECTS.to_owned(),
                    description: Some("cim-backup: folds events into job and catalog views".into()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    deliver_policy: consumer::DeliverPolicy::All,
                    // Short, so that events a crashed instance held come back quickly to another one.
                    ack_wait: Duration::from_secs(5),
                    // The durable of an instance that is gone (renamed, retired) goes away after
                    // a day; if it comes back it replays the log, which is idempotent.
                    inactive_threshold: Duration::from_secs(24 * 3600),
                    max_ack_pending: 4 * BATCH as i64,
                    ..Default::default()
                },
            )
            .await
            .map_err(nats)
    }

    /// Folds events until `shutdown`. Survives server restarts by re-opening the consumer.
    pub async fn run(self: std::sync::Arc<Self>, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            if let Err(e) = self.run_once(&shutdown).await {
                tracing::warn!(error = %e, "projector interrupted; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }

    async fn run_once(&self, shutdown: &CancellationToken) -> Result<(), ViewError> {
        let consumer = self.consumer().await?;
        // Whatever has arrived is folded as one batch: a job's events in a batch cost one view
        // read and one write, which keeps up with progress events of fast jobs.
        let mut batches = consumer.messages().await.map_err(nats)?.ready_chunks(BATCH);
        loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                b = batches.next() => b,
            };
            let Some(batch) = batch else {
                return Err(ViewError::Nats("consumer closed".into()));
            };
            let mut by_job: Vec<(JobId, Vec<Delivered>)> = Vec::new();
            for message in batch {
                let message = message.map_err(nats)?;
                let (seq, delivered) = {
                    let info = message.info().map_err(nats)?;
                    (info.stream_sequence, info.delivered)
                };
                match decode_stored(seq, &message.payload, message.headers.as_ref()) {
                    Ok(stored) => {
                        let id = stored.envelope.aggregate_id.clone();
                        let item = Delivered {
                            stored,
                            message,
                            delivered,
                        };
                        match by_job.iter_mut().find(|(j, _)| *j == id) {
                            Some((_, events)) => events.push(item),
                            None => by_job.push((id, vec![item])),
                        }
                    }
                    Err(e) => {
                        tracing::error!(seq, error = %e, "damaged event in the log; skipping it");
                        message
                            .ack_with(jetstream::AckKind::Term)
                            .await
                            .map_err(nats)?;
                    }
                }
            }
            for (id, items) in by_job {
                let events: Vec<StoredEvent> = items.iter().map(|d| d.stored.clone()).collect();
                let (folded, failure) = self.views.apply_job(&id, &events).await?;
                for (i, item) in items.into_iter().enumerate() {
                    let Delivered {
                        stored,
                        message,
                        delivered,
                    } = item;
                    let seq = stored.stream_seq;
                    if i < folded {
                        message.ack().await.map_err(nats)?;
                        continue;
                    }
                    match &failure {
                        Some(e @ ProjectionError::Gap { .. }) if delivered < GAP_RETRIES => {
                            // An earlier event of this job has not been folded yet: retry soon.
                            tracing::debug!(seq, error = %e, "event arrived before its predecessor");
                            message
                                .ack_with(jetstream::AckKind::Nak(Some(Duration::from_millis(100))))
                                .await
                                .map_err(nats)?;
                        }
                        Some(e) => {
                            // The missing event never came (terminated as damaged), or the
                            // log contradicts itself: give up on this one, loudly.
                            tracing::error!(seq, error = %e, "event cannot be projected; skipping it");
                            message
                                .ack_with(jetstream::AckKind::Term)
                                .await
                                .map_err(nats)?;
                        }
                        None => message.ack().await.map_err(nats)?,
                    }
                }
            }
        }
    }

    /// Waits until every event published so far has been folded (or `timeout` passes).
    pub async fn caught_up(&self, timeout: Duration) -> Result<bool, ViewError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let stream = self.js.get_stream(&self.stream).await.map_err(nats)?;
            let mut consumer: consumer::PullConsumer =
                stream.get_consumer(&self.durable).await.map_err(nats)?;
            let info = consumer.info().await.map_err(nats)?;
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                return Ok(true);
            }
            if tokio::time::Instant::now() > deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
