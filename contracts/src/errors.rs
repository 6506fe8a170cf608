//! Wire error codes (DESIGN §4).
//!
//! Rules:
//! - A rejected request gets `Nats-Service-Error` / `Nats-Service-Error-Code` headers **and** a
//!   JSON body `{"error":{"code":…,"kind":…,"message":…}}` (see [`crate::replies::ErrorReply`]).
//! - 4xx means the caller must change the request; 5xx means we failed and a retry may work.
//! - Codes are only attached at the NATS boundary; inside the service errors are typed enums.

use serde::{Deserialize, Serialize};

/// Name of the micro-service error description header.
pub const SERVICE_ERROR_HEADER: &str = "Nats-Service-Error";
/// Name of the micro-service error code header.
pub const SERVICE_ERROR_CODE_HEADER: &str = "Nats-Service-Error-Code";

/// Kinds of error a request can end in. The numeric code follows HTTP so that humans and
/// generic NATS micro-service tooling read it the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Unparsable JSON, unknown field, invalid value.
    BadRequest,
    /// The named stream, job or backup does not exist.
    NotFound,
    /// The request is valid but conflicts with current state (finished job, non-empty target,
    /// idempotency key reused with another body).
    Conflict,
    /// The capability exists in the contract but is not implemented yet.
    NotImplemented,
    /// A dependency (NATS, object store) failed; retry may help.
    Unavailable,
    /// Our bug or an unexpected state.
    Internal,
    /// A stored object or record failed verification (tampered or missing).
    Corrupt,
    /// The service holds no key that opens an encrypted backup (wrong or missing identity).
    Forbidden,
}

impl ErrorCode {
    /// The numeric code sent in `Nats-Service-Error-Code` and in the error body.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::Corrupt => 422,
            ErrorCode::Internal => 500,
            ErrorCode::NotImplemented => 501,
            ErrorCode::Unavailable => 503,
        }
    }

    /// The inverse of [`ErrorCode::status`]; unknown numbers map to `Internal`.
    pub fn from_status(status: u16) -> ErrorCode {
        match status {
            400 => ErrorCode::BadRequest,
            403 => ErrorCode::Forbidden,
            404 => ErrorCode::NotFound,
            409 => ErrorCode::Conflict,
            422 => ErrorCode::Corrupt,
            501 => ErrorCode::NotImplemented,
            503 => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_for_every_code() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::NotFound,
            ErrorCode::Conflict,
            ErrorCode::NotImplemented,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
            ErrorCode::Corrupt,
            ErrorCode::Forbidden,
        ] {
            assert_eq!(ErrorCode::from_status(code.status()), code);
        }
    }
}
