//! The projector and the view store.
//!
//! A durable pull consumer (`cim-backup-projector`) on the event stream folds every event into
//! two KV buckets: `CIM_BACKUP_JOBS` (job id → [`JobView`]) and `CIM_BACKUP_CATALOG` (backup id →
//! [`CatalogEntry`]). Writes are compare-and-set on the KV revision and folds are idempotent and
//! gap-aware (see `cim_backup_projections::job_view::fold`), so several instances may share the
//! consumer, and a redelivery after a crash changes nothing.
//!
//! Views are disposable. If the jobs bucket is missing when the projector starts, it recreates
//! the buckets and rewinds its consumer to the first event: the rebuilt views equal the old ones
//! because folds use only what the events carry.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv};
use cim_backup_contracts::subjects::{CATALOG_BUCKET, EVENTS_STREAM_SUBJECTS, JOBS_BUCKET, PROJECTOR_DURABLE};
use cim_backup_contracts::views::{CatalogEntry, JobView};
use cim_backup_contracts::JobId;
use cim_backup_projections::catalog;
use cim_backup_projections::job_view::{self, Fold};
use cim_backup_projections::ProjectionError;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::event_store::{StoredEvent, decode_stored};

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
}

impl Views {
    /// Opens the view buckets, creating them if needed. Returns whether either bucket was new
    /// (then the projector must replay the whole event log; both views are rebuilt, since a
    /// catalog entry is only written while folding its job).
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<(Views, bool), ViewError> {
        let (jobs, jobs_new) = open_bucket(js, JOBS_BUCKET, "cim-backup job views", replicas).await?;
        let (catalog, catalog_new) = open_bucket(js, CATALOG_BUCKET, "cim-backup backup catalog", replicas).await?;
        if jobs_new != catalog_new {
            // Replay rebuilds both; start both from empty so the folds see every event once.
            purge_bucket(js, if jobs_new { CATALOG_BUCKET } else { JOBS_BUCKET }).await?;
        }
        Ok((Views { jobs, catalog }, jobs_new || catalog_new))
    }

    pub async fn job(&self, id: &JobId) -> Result<Option<JobView>, ViewError> {
        Ok(self.job_entry(id).await?.map(|(view, _)| view))
    }

    async fn job_entry(&self, id: &JobId) -> Result<Option<(JobView, u64)>, ViewError> {
        let Some(entry) = self.jobs.entry(id.as_str()).await.map_err(nats)? else { return Ok(None) };
        if !matches!(entry.operation, kv::Operation::Put) {
            return Ok(None);
        }
        let view = serde_json::from_slice(&entry.value)
            .map_err(|e| ViewError::Corrupt { key: id.to_string(), message: e.to_string() })?;
        Ok(Some((view, entry.revision)))
    }

    /// Every job view, newest first.
    pub async fn jobs(&self) -> Result<Vec<JobView>, ViewError> {
        let mut views: Vec<JobView> = all_values(&self.jobs).await?;
        views.sort_by(|a, b| b.accepted_at.cmp(&a.accepted_at).then_with(|| a.job_id.cmp(&b.job_id)));
        Ok(views)
    }

    /// Every catalog entry (unordered; see `catalog::select`).
    pub async fn catalog(&self) -> Result<Vec<CatalogEntry>, ViewError> {
        all_values(&self.catalog).await
    }

    /// Folds one stored event into the views. `Err(Gap)` means "not yet": retry later.
    pub async fn apply(&self, stored: &StoredEvent) -> Result<Result<(), ProjectionError>, ViewError> {
        let id = &stored.envelope.aggregate_id;
        loop {
            let current = self.job_entry(id).await?;
            let fold = match job_view::fold(current.as_ref().map(|(v, _)| v), &stored.envelope, stored.cid) {
                Ok(fold) => fold,
                Err(e) => return Ok(Err(e)),
            };
            let Fold::Updated(next) = fold else { return Ok(Ok(())) };
            let bytes = serde_json::to_vec(&next).expect("views serialize");
            let written = match &current {
                Some((_, revision)) => self.jobs.update(id.as_str(), bytes.into(), *revision).await.map_err(|e| e.to_string()),
                None => self.jobs.create(id.as_str(), bytes.into()).await.map(|_| 0).map_err(|e| e.to_string()),
            };
            match written {
                Ok(_) => {
                    if let Some(entry) = catalog::entry_for(&next, &stored.envelope) {
                        let bytes = serde_json::to_vec(&entry).expect("catalog entries serialize");
                        self.catalog.put(entry.backup_id.to_string(), bytes.into()).await.map_err(nats)?;
                    }
                    return Ok(Ok(()));
                }
                // Another projector wrote this view meanwhile: read it again and re-fold.
                Err(e) if e.contains("wrong last sequence") || e.contains("already exists") || e.contains("revision") => continue,
                Err(e) => return Err(ViewError::Nats(e)),
            }
        }
    }
}

async fn open_bucket(js: &jetstream::Context, bucket: &str, description: &str, replicas: usize) -> Result<(kv::Store, bool), ViewError> {
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok((store, false));
    }
    let store = js.create_key_value(kv::Config {
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
    crate::jsapi::JsApi::new(js.client()).purge(&format!("KV_{bucket}"), None).await.map(|_| ()).map_err(nats)
}

async fn all_values<T: serde::de::DeserializeOwned>(store: &kv::Store) -> Result<Vec<T>, ViewError> {
    let keys: Vec<String> = store.keys().await.map_err(nats)?.filter_map(|k| async move { k.ok() }).collect().await;
    let mut values = Vec::with_capacity(keys.len());
    for key in keys {
        if let Some(bytes) = store.get(&key).await.map_err(nats)? {
            values.push(serde_json::from_slice(&bytes).map_err(|e| ViewError::Corrupt { key, message: e.to_string() })?);
        }
    }
    Ok(values)
}

/// Deliveries of an out-of-order event before the projector gives up on it (≈ 1 minute).
const GAP_RETRIES: i64 = 600;

/// The projector loop.
pub struct Projector {
    js: jetstream::Context,
    views: Views,
    stream: String,
}

impl Projector {
    /// Prepares the durable consumer. `replay` rewinds it to the first event (after the view
    /// buckets were created fresh).
    pub async fn new(js: jetstream::Context, views: Views, stream: &str, replay: bool) -> Result<Projector, ViewError> {
        if replay {
            // Absent consumer is fine: it will be created from the first event.
            let _ = js.delete_consumer_from_stream(PROJECTOR_DURABLE, stream).await;
        }
        let projector = Projector { js, views, stream: stream.to_owned() };
        projector.consumer().await?;
        Ok(projector)
    }

    async fn consumer(&self) -> Result<consumer::PullConsumer, ViewError> {
        let stream = self.js.get_stream(&self.stream).await.map_err(nats)?;
        stream
            .get_or_create_consumer(
                PROJECTOR_DURABLE,
                consumer::pull::Config {
                    durable_name: Some(PROJECTOR_DURABLE.to_owned()),
                    // The stream may be a shared `cim.>` stream: fold only our events.
                    filter_subject: EVENTS_STREAM_SUBJECTS.to_owned(),
                    description: Some("cim-backup: folds events into job and catalog views".into()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    deliver_policy: consumer::DeliverPolicy::All,
                    // Short, so that events a crashed instance held come back quickly to another one.
                    ack_wait: Duration::from_secs(5),
                    max_ack_pending: 1000,
                    ..Default::default()
                },
            )
            .await
            .map_err(nats)
    }

    /// Folds events until `shutdown`. Survives server restarts by re-opening the consumer.
    pub async fn run(self, shutdown: CancellationToken) {
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
        let mut messages = consumer.messages().await.map_err(nats)?;
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                m = messages.next() => m,
            };
            let Some(message) = message else { return Err(ViewError::Nats("consumer closed".into())) };
            let message = message.map_err(nats)?;
            let (seq, delivered) = {
                let info = message.info().map_err(nats)?;
                (info.stream_sequence, info.delivered)
            };
            match decode_stored(seq, &message.payload, message.headers.as_ref()) {
                Ok(stored) => match self.views.apply(&stored).await? {
                    Ok(()) => message.ack().await.map_err(nats)?,
                    Err(e @ ProjectionError::Gap { .. }) if delivered >= GAP_RETRIES => {
                        // The missing event never came (it was terminated as undecodable, or
                        // the log is damaged): give up on this one rather than loop forever.
                        tracing::error!(seq, error = %e, "event stays out of order after {delivered} deliveries; skipping it");
                        message.ack_with(jetstream::AckKind::Term).await.map_err(nats)?;
                    }
                    Err(ProjectionError::Gap { .. }) => {
                        // An earlier event of this job is still on its way (another projector
                        // holds it): try again shortly.
                        message.ack_with(jetstream::AckKind::Nak(Some(Duration::from_millis(100)))).await.map_err(nats)?;
                    }
                    Err(e) => {
                        tracing::error!(seq, error = %e, "event cannot be projected; skipping it");
                        message.ack_with(jetstream::AckKind::Term).await.map_err(nats)?;
                    }
                },
                Err(e) => {
                    tracing::error!(seq, error = %e, "damaged event in the log; skipping it");
                    message.ack_with(jetstream::AckKind::Term).await.map_err(nats)?;
                }
            }
        }
    }

    /// Waits until every event published so far has been folded (or `timeout` passes).
    pub async fn caught_up(js: &jetstream::Context, stream: &str, timeout: Duration) -> Result<bool, ViewError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let stream = js.get_stream(stream).await.map_err(nats)?;
            let mut consumer: consumer::PullConsumer = stream.get_consumer(PROJECTOR_DURABLE).await.map_err(nats)?;
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
