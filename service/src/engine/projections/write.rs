//! Puts and deletes into a live KV bucket, with up to [`IN_FLIGHT`] acknowledgements pending:
//! one publish waiting for its ack at a time would make a restore of a million keys take
//! minutes. Every write is acknowledged before [`BucketWriter::finish`] returns, so a restore
//! recorded as done is durable.

use std::collections::VecDeque;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishAckFuture};
use bytes::Bytes;

use super::read::key_subject_prefix;
use crate::engine::error::EngineError;

/// Writes awaiting their acknowledgement, at most.
const IN_FLIGHT: usize = 512;

pub struct BucketWriter<'a> {
    js: &'a jetstream::Context,
    subjects: String,
    pending: VecDeque<PublishAckFuture>,
}

impl<'a> BucketWriter<'a> {
    pub fn new(js: &'a jetstream::Context, bucket: &str) -> Self {
        BucketWriter {
            js,
            subjects: key_subject_prefix(bucket),
            pending: VecDeque::new(),
        }
    }

    pub async fn put(&mut self, key: &str, value: Bytes) -> Result<(), EngineError> {
        let ack = self
            .js
            .publish(format!("{}{key}", self.subjects), value)
            .await
            .map_err(|e| EngineError::nats(format!("writing key {key}: {e}")))?;
        self.queue(ack).await
    }

    /// A KV delete: a `KV-Operation: DEL` marker, so the bucket keeps the key's history.
    pub async fn delete(&mut self, key: &str) -> Result<(), EngineError> {
        let mut headers = HeaderMap::new();
        headers.insert("KV-Operation", "DEL");
        let ack = self
            .js
            .publish_with_headers(format!("{}{key}", self.subjects), headers, Bytes::new())
            .await
            .map_err(|e| EngineError::nats(format!("deleting key {key}: {e}")))?;
        self.queue(ack).await
    }

    async fn queue(&mut self, ack: PublishAckFuture) -> Result<(), EngineError> {
        self.pending.push_back(ack);
        if self.pending.len() >= IN_FLIGHT {
            self.settle_one().await?;
        }
        Ok(())
    }

    async fn settle_one(&mut self) -> Result<(), EngineError> {
        if let Some(ack) = self.pending.pop_front() {
            ack.await.map_err(|e| {
                EngineError::nats(format!(
                    "a write to {}> was not acknowledged: {e}",
                    self.subjects
                ))
            })?;
        }
        Ok(())
    }

    /// Waits for every acknowledgement.
    pub async fn finish(mut self) -> Result<(), EngineError> {
        while !self.pending.is_empty() {
            self.settle_one().await?;
        }
        Ok(())
    }
}
