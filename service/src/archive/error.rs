//! Archive errors. Rules: every variant that concerns stored data names the object key (and the
//! record's stream sequence when known), because "verify failed" without a location is useless to
//! an operator at 3 a.m.

use cim_backup_contracts::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("object {object} is missing")]
    Missing { object: String },
    #[error("object {object} is corrupt: {message}")]
    Corrupt {
        object: String,
        record: Option<u64>,
        message: String,
    },
    #[error("object store failed on {object}: {message}")]
    Store { object: String, message: String },
    /// The store refused the credentials for this object.
    #[error("the store refused access to {object}: {message}")]
    Denied { object: String, message: String },
    /// An encrypted object this service cannot open (no identity, wrong key).
    #[error("object {object}: {message}")]
    Key { object: String, message: String },
}

impl ArchiveError {
    pub fn corrupt(object: impl Into<String>, message: impl Into<String>) -> Self {
        ArchiveError::Corrupt {
            object: object.into(),
            record: None,
            message: message.into(),
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            ArchiveError::Missing { .. } | ArchiveError::Corrupt { .. } => ErrorCode::Corrupt,
            ArchiveError::Store { .. } => ErrorCode::Unavailable,
            ArchiveError::Key { .. } | ArchiveError::Denied { .. } => ErrorCode::Forbidden,
        }
    }

    /// The object key at fault.
    pub fn object(&self) -> &str {
        match self {
            ArchiveError::Missing { object }
            | ArchiveError::Corrupt { object, .. }
            | ArchiveError::Store { object, .. }
            | ArchiveError::Denied { object, .. }
            | ArchiveError::Key { object, .. } => object,
        }
    }

    /// The record (stream sequence) at fault, when known.
    pub fn record(&self) -> Option<u64> {
        match self {
            ArchiveError::Corrupt { record, .. } => *record,
            _ => None,
        }
    }
}
