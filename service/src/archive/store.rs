//! [`ArchiveStore`]: a backup destination seen as a content-addressed object store.
//!
//! Keys under the destination prefix: `segments/<cid>` and `manifests/<cid>`. Because a key is
//! the CID of its bytes, writing an object that already exists with the same size is skipped:
//! that is what lets a resumed job continue without re-uploading, and two backups share
//! identical segments for free.

use std::sync::Arc;

use bytes::Bytes;
use cim_backup_contracts::cid::Cid;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::error::ArchiveError;
use super::manifest::{self, Manifest};
use super::segment::{self, SealedSegment};

#[derive(Clone)]
pub struct ArchiveStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
}

impl std::fmt::Debug for ArchiveStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveStore")
            .field("url", &self.url)
            .finish()
    }
}

fn store_error(object: &str, e: object_store::Error) -> ArchiveError {
    match e {
        object_store::Error::NotFound { .. } => ArchiveError::Missing {
            object: object.to_owned(),
        },
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => ArchiveError::Denied {
            object: object.to_owned(),
            message: describe(&e),
        },
        other => ArchiveError::Store {
            object: object.to_owned(),
            message: describe(&other),
        },
    }
}

/// An object-store error in words: the service's own `Code: Message` from an S3 error body
/// rather than the XML, and the cause chain otherwise.
pub fn describe(e: &object_store::Error) -> String {
    let text = e.to_string();
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&format!("</{name}>"))? + start;
        Some(text[start..end].to_owned())
    };
    match (tag("Code"), tag("Message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code,
        _ => {
            let mut parts = vec![text.clone()];
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                let more = s.to_string();
                if !parts.iter().any(|p| p.contains(&more)) {
                    parts.push(more);
                }
                source = s.source();
            }
            parts.join(": ")
        }
    }
}

/// Why a destination cannot be used, with the code the caller gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Unusable {
    pub code: cim_backup_contracts::ErrorCode,
    pub message: String,
}

impl ArchiveStore {
    /// `url` is the destination as shown to users (no credentials).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path, url: String) -> Self {
        ArchiveStore { store, prefix, url }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The full object-store path of `key`.
    pub fn path(&self, key: &str) -> Path {
        let mut path = self.prefix.clone();
        for part in key.split('/') {
            path = path.join(part);
        }
        path
    }

    /// Checks that the destination answers (bucket exists, credentials work), saying which of
    /// them it is when not: a missing bucket is 404, refused credentials 403, anything else 503.
    pub async fn probe(&self) -> Result<(), Unusable> {
        use cim_backup_contracts::ErrorCode;
        let Err(e) = self.store.list_with_delimiter(Some(&self.prefix)).await else {
            return Ok(());
        };
        let bucket = url::Url::parse(&self.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        let said = describe(&e);
        let s3_code = said.split(':').next().unwrap_or_default();
        let missing =
            matches!(e, object_store::Error::NotFound { .. }) || s3_code == "NoSuchBucket";
        let refused = matches!(
            e,
            object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
        ) || matches!(
            s3_code,
            "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken"
        );
        let (code, message) = match () {
            _ if missing => (
                ErrorCode::NotFound,
                format!("{}: the bucket {bucket} does not exist ({said})", self.url),
            ),
            _ if refused => (
                ErrorCode::Forbidden,
                format!("{}: the store refused these credentials ({said})", self.url),
            ),
            _ => (
                ErrorCode::Unavailable,
                format!("{} is not reachable: {said}", self.url),
            ),
        };
        Err(Unusable { code, message })
    }

    /// The size of `key`, or `None` if it does not exist (one HEAD request, nothing read).
    pub async fn size(&self, key: &str) -> Result<Option<u64>, ArchiveError> {
        match self.store.head(&self.path(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error(key, e)),
        }
    }

    /// Whether `key` exists with exactly `size` bytes.
    pub async fn has(&self, key: &str, size: u64) -> Result<bool, ArchiveError> {
        Ok(self.size(key).await? == Some(size))
    }

    /// Stores `bytes` under `key` unless an object of the same size is already there.
    /// Returns whether it uploaded.
    pub async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<bool, ArchiveError> {
        if self.has(key, bytes.len() as u64).await? {
            return Ok(false);
        }
        self.store
            .put(&self.path(key), PutPayload::from_bytes(bytes))
            .await
            .map_err(|e| store_error(key, e))?;
        Ok(true)
    }

    pub async fn put_segment(&self, sealed: &SealedSegment) -> Result<bool, ArchiveError> {
        self.put_if_absent(&segment::key(&sealed.info), sealed.bytes.clone())
            .await
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, ArchiveError> {
        let result = self
            .store
            .get(&self.path(key))
            .await
            .map_err(|e| store_error(key, e))?;
        result.bytes().await.map_err(|e| store_error(key, e))
    }

    /// Writes a manifest; returns the backup id and the manifest's size.
    pub async fn put_manifest(&self, manifest: &Manifest) -> Result<(Cid, u64), ArchiveError> {
        let (bytes, cid) = manifest.encode();
        let size = bytes.len() as u64;
        self.put_if_absent(&manifest::key(&cid), Bytes::from(bytes))
            .await?;
        Ok((cid, size))
    }

    /// Reads and verifies a manifest; returns it and its size.
    pub async fn get_manifest(&self, cid: &Cid) -> Result<(Manifest, u64), ArchiveError> {
        let bytes = self.get(&manifest::key(cid)).await?;
        Ok((Manifest::decode(&bytes, cid)?, bytes.len() as u64))
    }

    /// CIDs of every manifest in the destination (every backup it holds).
    pub async fn list_manifests(&self) -> Result<Vec<Cid>, ArchiveError> {
        let dir = self.path("manifests");
        let metas: Vec<_> = self
            .store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|e| store_error("manifests/", e))?;
        Ok(metas
            .iter()
            .filter_map(|m| {
                m.location
                    .filename()
                    .and_then(|name| Cid::try_from(name).ok())
            })
            .collect())
    }

    /// Deletes an object (used by tests and by cleanup of cancelled jobs' manifests; segments
    /// are content-addressed and may be shared, so they are never deleted by a job).
    pub async fn delete(&self, key: &str) -> Result<(), ArchiveError> {
        self.store
            .delete(&self.path(key))
            .await
            .map_err(|e| store_error(key, e))
    }

    /// Overwrites an object unconditionally (tests use it to tamper with backups).
    pub async fn overwrite(&self, key: &str, bytes: Bytes) -> Result<(), ArchiveError> {
        self.store
            .put(&self.path(key), PutPayload::from_bytes(bytes))
            .await
            .map(|_| ())
            .map_err(|e| store_error(key, e))
    }
}
