//! Replies on the NATS boundary: the only place where errors get wire codes.
//!
//! An error reply carries the micro-service headers (`Nats-Service-Error`,
//! `Nats-Service-Error-Code`) **and** the JSON body `{"error":{"code","kind","message"}}`, so a
//! plain `nats req` shows the reason and generic micro-service tooling sees the code. Error
//! counts per endpoint are reported in the `data` of `$SRV.STATS` (async-nats counts only
//! errors sent without a body). Messages are bounded and the header holds one clean line of
//! them, whatever values a caller sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::HeaderMap;
use async_nats::service::Request;
use cim_backup_contracts::ErrorCode;
use cim_backup_contracts::errors::{SERVICE_ERROR_CODE_HEADER, SERVICE_ERROR_HEADER};
use cim_backup_contracts::replies::ErrorReply;
use cim_backup_contracts::text;
use serde::Serialize;

/// An error that goes back to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

/// Longest error message sent: far below the server's 1 MiB payload limit, whatever a caller's
/// echoed values or a dependency's error text add up to.
const MAX_MESSAGE: usize = 4096;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str("… (cut)");
        }
        ApiError { code, message }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

impl From<crate::event_store::EventStoreError> for ApiError {
    fn from(e: crate::event_store::EventStoreError) -> Self {
        ApiError::unavailable(e.to_string())
    }
}

impl From<crate::projector::ViewError> for ApiError {
    fn from(e: crate::projector::ViewError) -> Self {
        ApiError::unavailable(e.to_string())
    }
}

impl From<crate::jsapi::JsApiError> for ApiError {
    fn from(e: crate::jsapi::JsApiError) -> Self {
        ApiError::unavailable(format!("JetStream: {e}"))
    }
}

impl From<crate::destination::DestinationError> for ApiError {
    fn from(e: crate::destination::DestinationError) -> Self {
        ApiError::new(e.code(), e.to_string())
    }
}

impl From<crate::archive::ArchiveError> for ApiError {
    fn from(e: crate::archive::ArchiveError) -> Self {
        match e {
            crate::archive::ArchiveError::Missing { .. } => ApiError::not_found(e.to_string()),
            _ => ApiError::new(e.code(), e.to_string()),
        }
    }
}

/// Error replies sent per endpoint subject, for `$SRV.STATS` data. One per service instance.
#[derive(Debug, Clone, Default)]
pub struct ErrorCounts(Arc<Mutex<HashMap<String, u64>>>);

impl ErrorCounts {
    pub fn get(&self, subject: &str) -> u64 {
        self.0.lock().unwrap().get(subject).copied().unwrap_or(0)
    }

    fn bump(&self, subject: &str) {
        *self
            .0
            .lock()
            .unwrap()
            .entry(subject.to_owned())
            .or_default() += 1;
    }
}

/// Sends `result` as the reply to `request` on the endpoint `subject`.
pub async fn send<T: Serialize>(
    request: &Request,
    counts: &ErrorCounts,
    endpoint: &str,
    result: Result<T, ApiError>,
) {
    let sent = match result {
        Ok(body) => {
            let bytes = serde_json::to_vec(&body).expect("replies serialize");
            request.respond(Ok(bytes.into())).await
        }
        Err(error) => {
            tracing::debug!(endpoint, code = ?error.code, message = %error.message, "request rejected");
            counts.bump(endpoint);
            let mut headers = HeaderMap::new();
            headers.insert(
                SERVICE_ERROR_HEADER,
                text::header_value(&error.message).as_str(),
            );
            headers.insert(
                SERVICE_ERROR_CODE_HEADER,
                error.code.status().to_string().as_str(),
            );
            let body = serde_json::to_vec(&ErrorReply::new(error.code, error.message))
                .expect("errors serialize");
            request.respond_with_headers(Ok(body.into()), headers).await
        }
    };
    if let Err(e) = sent {
        tracing::warn!(endpoint, error = %e, "could not send reply");
    }
}
