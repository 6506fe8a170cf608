//! Archive errors. Rules: every variant that concerns stored data names the object key (and the
//! record's stream sequence when known), because "verify failed" without a location is useless to
//! an operator at 3 a.m.

use std::ops::Range;

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
    /// A ranged read that does not lie inside the object. `size` is the object's size when the
    /// range runs past its end; `None` when the range itself is empty or backwards, which is
    /// refused before anything is read.
    #[error("object {object}: {}", out_of_range(range, *size))]
    Range {
        object: String,
        range: Range<u64>,
        size: Option<u64>,
    },
}

fn out_of_range(range: &Range<u64>, size: Option<u64>) -> String {
    match size {
        Some(size) => format!(
            "bytes {}..{} run past its end ({size} bytes)",
            range.start, range.end
        ),
        None => format!(
            "bytes {}..{} is not a range (it must end after it starts)",
            range.start, range.end
        ),
    }
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
            // Readers take ranges from what describes the object (a manifest, an index), so an
            // object shorter than that is damaged; an empty or backwards range is our bug.
            ArchiveError::Range { size: Some(_), .. } => ErrorCode::Corrupt,
            ArchiveError::Range { size: None, .. } => ErrorCode::Internal,
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
            | ArchiveError::Key { object, .. }
            | ArchiveError::Range { object, .. } => object,
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
