//! [`ArchiveStore`]: a backup destination seen as a content-addressed object store.
//!
//! Keys under the destination prefix: `segments/<cid>`, `parts/<cid>` and `manifests/<cid>`.
//! Because a key is the CID of its bytes, writing an object that already exists with the same
//! size is skipped: that is what lets a resumed job continue without re-uploading, and two
//! backups share identical segments for free.
//!
//! # Operations
//! - Whole objects: [`ArchiveStore::put_if_absent`] (and the segment and manifest forms of it),
//!   [`ArchiveStore::get`], [`ArchiveStore::size`] / [`ArchiveStore::has`] (one HEAD),
//!   [`ArchiveStore::list_manifests`], [`ArchiveStore::delete`].
//! - Part of an object: [`ArchiveStore::get_range`] reads exactly the bytes asked for, so a
//!   reader can take one piece out of a large object without fetching all of it; a range that
//!   is not inside the object is an error, never a short read.
//! - Objects too large to hold in memory: [`ArchiveStore::writer`] gives an [`ObjectWriter`]
//!   that uploads in parts of [`PART_SIZE`] while the caller produces the bytes. Like a single
//!   PUT it is atomic: nothing is visible under the key until [`ObjectWriter::finish`], and an
//!   aborted or dropped writer leaves no object.
//!
//! Every backend the service builds (`destination.rs`: memory, local directory, S3) passes the
//! same conformance suite, `cim-backup-tests`' `archive_conformance`.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use cim_backup_contracts::cid::Cid;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use super::error::ArchiveError;
use super::manifest::{self, Manifest};
use super::segment::{self, SealedSegment};

/// The size of every part of an [`ObjectWriter`]'s upload but the last. S3 refuses smaller
/// parts (other than the last) and takes at most 10,000 parts, so one written object holds at
/// most 10,000 × 5 MiB ≈ 48.8 GiB.
pub const PART_SIZE: usize = 5 * 1024 * 1024;

/// Parts an [`ObjectWriter`] uploads at once. A writer holds at most this many parts in flight
/// plus the one it is filling, so its memory stays bounded however much is written through it.
const PARTS_IN_FLIGHT: usize = 2;

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

    /// Bytes `range` of `key`, exactly. object_store answers a range that runs past the end
    /// with the bytes up to the end, which a reader would take for a short record; here a range
    /// that is not wholly inside the object (or is empty or backwards) is
    /// [`ArchiveError::Range`], naming the object, the range and the object's size.
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, ArchiveError> {
        let outside = |size| ArchiveError::Range {
            object: key.to_owned(),
            range: range.clone(),
            size,
        };
        if range.start >= range.end {
            return Err(outside(None));
        }
        let path = self.path(key);
        let options = GetOptions::new().with_range(Some(range.clone()));
        let result = match self.store.get_opts(&path, options).await {
            Ok(result) => result,
            Err(e @ object_store::Error::NotFound { .. }) => return Err(store_error(key, e)),
            // A range that starts at or past the end is refused in a different form by each
            // backend (a range error in memory and on disk, 416 from S3); the object's size
            // tells that case apart from a store that failed.
            Err(e) => {
                return match self.store.head(&path).await {
                    Ok(meta) if meta.size <= range.start => Err(outside(Some(meta.size))),
                    _ => Err(store_error(key, e)),
                };
            }
        };
        if result.range != range {
            return Err(outside(Some(result.meta.size)));
        }
        let bytes = result.bytes().await.map_err(|e| store_error(key, e))?;
        if bytes.len() as u64 != range.end - range.start {
            return Err(ArchiveError::Store {
                object: key.to_owned(),
                message: format!(
                    "asked for bytes {}..{}, the store sent {} bytes",
                    range.start,
                    range.end,
                    bytes.len()
                ),
            });
        }
        Ok(bytes)
    }

    /// Starts a multipart write of `key` (see [`ObjectWriter`]). Nothing is visible under the
    /// key until the writer finishes; an object already there stays as it is until then.
    pub async fn writer(&self, key: &str) -> Result<ObjectWriter, ArchiveError> {
        let upload = self
            .store
            .put_multipart(&self.path(key))
            .await
            .map_err(|e| store_error(key, e))?;
        Ok(ObjectWriter {
            key: key.to_owned(),
            upload: Some(WriteMultipart::new_with_chunk_size(upload, PART_SIZE)),
            written: 0,
        })
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

    /// Names of the objects directly under `dir` (e.g. `indexes`): one listing, nothing read.
    pub async fn list_names(&self, dir: &str) -> Result<Vec<String>, ArchiveError> {
        let metas: Vec<_> = self
            .store
            .list(Some(&self.path(dir)))
            .try_collect()
            .await
            .map_err(|e| store_error(&format!("{dir}/"), e))?;
        Ok(metas
            .iter()
            .filter_map(|m| m.location.filename().map(str::to_owned))
            .collect())
    }

    /// Deletes an object. Only tests call it: no job deletes archive objects (segments and
    /// parts are content-addressed and may be shared by other backups). Deleting an object that
    /// is not there is `Ok` in memory and on S3 but [`ArchiveError::Missing`] in a local
    /// directory, as object_store's backends differ.
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

/// A streaming write of one object, in parts of [`PART_SIZE`] (the last may be shorter), for
/// objects too large to hold in memory. At most a few parts are in flight: [`write`] waits for
/// one to finish before it starts another.
///
/// The object appears whole or not at all. [`finish`] completes the upload, which makes the
/// object visible under its key in one step. [`abort`], dropping the writer, or a failed
/// [`write`] discards what was uploaded: a failed part would otherwise leave a hole in the
/// object, so after a failure every later call fails too.
///
/// [`write`]: ObjectWriter::write
/// [`finish`]: ObjectWriter::finish
/// [`abort`]: ObjectWriter::abort
pub struct ObjectWriter {
    key: String,
    /// `None` once the upload was discarded after a failure (or taken by `finish`, `abort`).
    upload: Option<WriteMultipart>,
    written: u64,
}

impl std::fmt::Debug for ObjectWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectWriter")
            .field("key", &self.key)
            .field("written", &self.written)
            .finish()
    }
}

impl ObjectWriter {
    /// The key being written.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Appends `bytes` to the object, uploading each part as it fills.
    pub async fn write(&mut self, bytes: Bytes) -> Result<(), ArchiveError> {
        let upload = self.upload.as_mut().ok_or_else(|| discarded(&self.key))?;
        let length = bytes.len() as u64;
        if let Err(e) = put_bounded(upload, bytes).await {
            return Err(self.fail(e).await);
        }
        self.written += length;
        Ok(())
    }

    /// Uploads the last part and completes the object; returns the bytes written. On failure
    /// the upload is discarded and nothing is visible under the key.
    pub async fn finish(mut self) -> Result<u64, ArchiveError> {
        let upload = self.upload.take().ok_or_else(|| discarded(&self.key))?;
        upload
            .finish()
            .await
            .map_err(|e| store_error(&self.key, e))?;
        tracing::debug!(object = %self.key, bytes = self.written, "multipart write finished");
        Ok(self.written)
    }

    /// Discards the upload: the parts already stored are deleted and no object appears.
    pub async fn abort(mut self) {
        if let Some(upload) = self.upload.take() {
            abort(&self.key, upload).await;
        }
    }

    /// Discards the upload after a failed part and returns the failure.
    async fn fail(&mut self, e: object_store::Error) -> ArchiveError {
        if let Some(upload) = self.upload.take() {
            abort(&self.key, upload).await;
        }
        store_error(&self.key, e)
    }
}

impl Drop for ObjectWriter {
    /// A writer dropped unfinished (a cancelled job, an error on the producing side) aborts its
    /// upload in the background: S3 keeps the parts of an upload that is never aborted, unseen
    /// but billed. Without a runtime there is nothing to run the abort on; the other backends
    /// discard their parts when dropped, and S3 lifecycle rules collect the rest.
    fn drop(&mut self) {
        let Some(upload) = self.upload.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let key = std::mem::take(&mut self.key);
                drop(runtime.spawn(async move { abort(&key, upload).await }));
            }
            Err(_) => tracing::warn!(
                object = %self.key,
                "multipart writer dropped outside a runtime; its parts were not aborted"
            ),
        }
    }
}

/// Hands `bytes` to the upload a part's worth at a time. At most one part fills per piece, so
/// waiting for capacity before each keeps the parts in flight within [`PARTS_IN_FLIGHT`] even
/// when one call brings many parts' worth.
async fn put_bounded(
    upload: &mut WriteMultipart,
    mut bytes: Bytes,
) -> Result<(), object_store::Error> {
    while !bytes.is_empty() {
        upload.wait_for_capacity(PARTS_IN_FLIGHT).await?;
        upload.put(bytes.split_to(bytes.len().min(PART_SIZE)));
    }
    Ok(())
}

async fn abort(key: &str, upload: WriteMultipart) {
    if let Err(e) = upload.abort().await {
        tracing::warn!(object = %key, error = %describe(&e), "could not abort a multipart write");
    }
}

fn discarded(key: &str) -> ArchiveError {
    ArchiveError::Store {
        object: key.to_owned(),
        message: "an earlier write failed and the upload was discarded".to_owned(),
    }
}
