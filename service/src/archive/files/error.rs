//! Errors of file-tree work. Each names the path (relative to the tree) or the object at
//! fault, so an operator knows which file of which model, and which chunk of it.

use cim_backup_contracts::ErrorCode;

use crate::archive::ArchiveError;

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// Reading or writing the local file system.
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    /// A path a request named, or a manifest holds, that is not allowed (outside the root,
    /// `..`, absolute, a symlink on the way).
    #[error("{path}: {message}")]
    Refused { path: String, message: String },
    /// The target of a restore exists and the request did not ask to replace it.
    #[error(
        "{path} already exists (ask for overwrite to replace it; the old one is kept until the new one is in place)"
    )]
    Exists { path: String },
    /// The target is in use by a running program (a server on its data directory).
    #[error("{path}: {message}")]
    Busy { path: String, message: String },
    /// A path a request named that does not exist.
    #[error("{path} does not exist")]
    Missing { path: String },
    /// The job was cancelled while reading.
    #[error("cancelled")]
    Cancelled,
    /// A chunk whose stored bytes do not give back its CID, or a file whose sha256 differs.
    #[error("{path}: {message}")]
    Damaged { path: String, message: String },
}

impl FilesError {
    pub fn io(path: impl std::fmt::Display, e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::NotFound => FilesError::Missing {
                path: path.to_string(),
            },
            std::io::ErrorKind::NotADirectory => FilesError::Refused {
                path: path.to_string(),
                message: "a part of this path is a file, not a directory".into(),
            },
            _ => FilesError::Io {
                path: path.to_string(),
                message: e.to_string(),
            },
        }
    }

    pub fn refused(path: impl std::fmt::Display, message: impl Into<String>) -> Self {
        FilesError::Refused {
            path: path.to_string(),
            message: message.into(),
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            FilesError::Archive(e) => e.code(),
            FilesError::Io { .. } => ErrorCode::Internal,
            FilesError::Missing { .. } => ErrorCode::NotFound,
            FilesError::Busy { .. } => ErrorCode::Conflict,
            FilesError::Refused { .. } => ErrorCode::Forbidden,
            FilesError::Exists { .. } => ErrorCode::Conflict,
            FilesError::Damaged { .. } => ErrorCode::Corrupt,
            FilesError::Cancelled => ErrorCode::Conflict,
        }
    }
}
