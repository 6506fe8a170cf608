//! The projection snapshot format (docs/PROJECTIONS.md §3): a manifest per snapshot, naming the
//! blocks of entries of each read model by CID, and each model's digest.
//!
//! - `projections/snapshots/<cid>`: the manifest (DAG-CBOR; its CID is the snapshot id).
//! - `projections/blocks/<cid>`: entries, framed, zstd-compressed, then age-encrypted when the
//!   snapshot is; the CID (sha2-256, raw) is over the stored bytes, so a damaged block is found
//!   before it is opened.
//!
//! A model's entries are its `blocks` then its `overlay`: the overlay holds the keys written
//! while the model was read, and an entry in `blocks` whose key is in the overlay is
//! superseded. Readers hold the overlay (small) in memory and stream the rest.
//!
//! The digest of a model is the sum, modulo 2^128, of the first 16 bytes of
//! `BLAKE3(u32le(len key) ‖ key ‖ value)` over its entries: it does not depend on order, so a
//! live bucket is checked against it in one pass of any order.

use std::collections::HashMap;

use bytes::Bytes;
use cim_backup_contracts::cid::{Cid, dag_cbor_cid, link, raw_cid, verifies};
use cim_backup_contracts::projections::{ModelSnapshot, ProjectorPosition, SnapshotSummary};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{ArchiveError, ArchiveStore};
use crate::keys::Keys;

/// The format name in every snapshot manifest.
pub const SNAPSHOT_FORMAT: &str = "cim-backup-projections/1";
/// Uncompressed bytes of entries after which a block is sealed.
pub const BLOCK_BYTES: usize = 8 << 20;
const SNAPSHOTS: &str = "projections/snapshots";
const BLOCKS: &str = "projections/blocks";

/// One key's latest value, as the snapshot holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Bytes,
    /// The stream sequence of the bucket's message (the KV revision).
    pub revision: u64,
    /// When that value was written (unix nanoseconds).
    pub created_ns: i64,
    /// The key was deleted or purged (only in an overlay: it supersedes an earlier value).
    pub deleted: bool,
}

impl Entry {
    /// The entry's 128-bit hash: what the model digest sums.
    pub fn hash(&self) -> u128 {
        entry_hash(&self.key, &self.value)
    }
}

pub fn entry_hash(key: &str, value: &[u8]) -> u128 {
    let mut h = blake3::Hasher::new();
    h.update(&(key.len() as u32).to_le_bytes());
    h.update(key.as_bytes());
    h.update(value);
    let out = h.finalize();
    u128::from_le_bytes(out.as_bytes()[..16].try_into().expect("16 bytes"))
}

/// A 64-bit name of a key, for the in-memory indexes of a read (never stored, so the
/// standard library's SipHash with its fixed keys is enough, and cheaper than BLAKE3 on
/// short keys).
pub fn key_hash(key: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

pub fn digest_hex(digest: u128) -> String {
    format!("{digest:032x}")
}

/// What a manifest records of one read model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelManifest {
    pub name: String,
    pub bucket: String,
    pub prefix: String,
    pub stream_seq: u64,
    pub keys: u64,
    pub bytes: u64,
    pub digest: String,
    pub blocks: Vec<BlockRef>,
    pub overlay: Vec<BlockRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRef {
    #[serde(with = "link")]
    pub cid: Cid,
    pub entries: u64,
    pub size: u64,
}

/// A snapshot manifest: its CID is the snapshot id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    pub format: String,
    pub domain: String,
    #[serde(with = "time::serde::rfc3339")]
    pub taken_at: OffsetDateTime,
    pub models: Vec<ModelManifest>,
    pub positions: Vec<ProjectorPosition>,
    pub encrypted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_for: Option<String>,
    pub tool: String,
}

impl SnapshotManifest {
    pub fn encode(&self) -> (Vec<u8>, Cid) {
        let bytes = serde_ipld_dagcbor::to_vec(self).expect("manifests always encode");
        let cid = dag_cbor_cid(&bytes);
        (bytes, cid)
    }

    pub fn decode(bytes: &[u8], expected: &Cid) -> Result<SnapshotManifest, ArchiveError> {
        let object = snapshot_key(expected);
        if !verifies(expected, bytes) {
            return Err(ArchiveError::corrupt(
                &object,
                "content does not match its CID (tampered or damaged)",
            ));
        }
        let manifest: SnapshotManifest = serde_ipld_dagcbor::from_slice(bytes)
            .map_err(|e| ArchiveError::corrupt(&object, format!("not a snapshot: {e}")))?;
        if manifest.format != SNAPSHOT_FORMAT {
            return Err(ArchiveError::corrupt(
                &object,
                format!(
                    "snapshot format {:?} is not one this version reads ({SNAPSHOT_FORMAT})",
                    manifest.format
                ),
            ));
        }
        Ok(manifest)
    }

    /// The summary events and listings carry.
    pub fn summary(&self, id: Cid, location: &str) -> SnapshotSummary {
        SnapshotSummary {
            id,
            domain: self.domain.clone(),
            taken_at: self.taken_at,
            models: self
                .models
                .iter()
                .map(|m| ModelSnapshot {
                    name: m.name.clone(),
                    bucket: m.bucket.clone(),
                    prefix: m.prefix.clone(),
                    stream_seq: m.stream_seq,
                    keys: m.keys,
                    bytes: m.bytes,
                    digest: m.digest.clone(),
                })
                .collect(),
            positions: self.positions.clone(),
            safety_for: self.safety_for.clone(),
            location: location.to_owned(),
        }
    }
}

pub fn snapshot_key(cid: &Cid) -> String {
    format!("{SNAPSHOTS}/{cid}")
}

fn block_key(cid: &Cid) -> String {
    format!("{BLOCKS}/{cid}")
}

/// The value length that marks a deleted key.
const DELETED: u32 = u32::MAX;

/// Appends one entry's frame: `u32le key len, key, u64le revision, i64le created, u32le value
/// len (u32::MAX: deleted, no value), value`.
fn frame(out: &mut Vec<u8>, e: &Entry) {
    out.extend_from_slice(&(e.key.len() as u32).to_le_bytes());
    out.extend_from_slice(e.key.as_bytes());
    out.extend_from_slice(&e.revision.to_le_bytes());
    out.extend_from_slice(&e.created_ns.to_le_bytes());
    if e.deleted {
        out.extend_from_slice(&DELETED.to_le_bytes());
    } else {
        out.extend_from_slice(&(e.value.len() as u32).to_le_bytes());
        out.extend_from_slice(&e.value);
    }
}

fn unframe(object: &str, bytes: &Bytes) -> Result<Vec<Entry>, ArchiveError> {
    let bad = |at: usize| ArchiveError::corrupt(object, format!("entry frame cut at byte {at}"));
    let mut entries = Vec::new();
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> Result<std::ops::Range<usize>, ArchiveError> {
        let end = at
            .checked_add(n)
            .filter(|e| *e <= bytes.len())
            .ok_or(bad(*at))?;
        let r = *at..end;
        *at = end;
        Ok(r)
    };
    while at < bytes.len() {
        let r = take(&mut at, 4)?;
        let klen = u32::from_le_bytes(bytes[r].try_into().expect("4")) as usize;
        let r = take(&mut at, klen)?;
        let key = std::str::from_utf8(&bytes[r])
            .map_err(|_| ArchiveError::corrupt(object, "a key is not UTF-8"))?
            .to_owned();
        let r = take(&mut at, 8)?;
        let revision = u64::from_le_bytes(bytes[r].try_into().expect("8"));
        let r = take(&mut at, 8)?;
        let created_ns = i64::from_le_bytes(bytes[r].try_into().expect("8"));
        let r = take(&mut at, 4)?;
        let vlen = u32::from_le_bytes(bytes[r].try_into().expect("4"));
        let (value, deleted) = if vlen == DELETED {
            (Bytes::new(), true)
        } else {
            (bytes.slice(take(&mut at, vlen as usize)?), false)
        };
        entries.push(Entry {
            key,
            value,
            revision,
            created_ns,
            deleted,
        });
    }
    Ok(entries)
}

/// Builds the blocks of one model as entries arrive, storing each as it fills. A full block
/// is compressed, encrypted and stored on its own task while the next one fills (one at a
/// time, so blocks stay in order and memory stays at two blocks): reading never waits for
/// zstd.
pub struct BlockWriter<'a> {
    store: &'a ArchiveStore,
    recipients: Option<Vec<String>>,
    buffer: Vec<u8>,
    entries: u64,
    sealing: Option<tokio::task::JoinHandle<Result<BlockRef, ArchiveError>>>,
    pub written: Vec<BlockRef>,
    /// Bytes stored so far (compressed, encrypted).
    pub stored_bytes: u64,
}

impl<'a> BlockWriter<'a> {
    pub fn new(store: &'a ArchiveStore, recipients: Option<Vec<String>>) -> Self {
        BlockWriter {
            store,
            recipients,
            buffer: Vec::with_capacity(BLOCK_BYTES + (64 << 10)),
            entries: 0,
            sealing: None,
            written: Vec::new(),
            stored_bytes: 0,
        }
    }

    pub async fn push(&mut self, entry: &Entry) -> Result<(), ArchiveError> {
        frame(&mut self.buffer, entry);
        self.entries += 1;
        if self.buffer.len() >= BLOCK_BYTES {
            self.seal().await?;
        }
        Ok(())
    }

    /// Hands what is buffered to the sealing task as one block (nothing if empty), after the
    /// previous block is stored.
    pub async fn seal(&mut self) -> Result<(), ArchiveError> {
        if self.entries == 0 {
            return Ok(());
        }
        self.settle().await?;
        let plain = std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(BLOCK_BYTES + (64 << 10)),
        );
        let entries = std::mem::take(&mut self.entries);
        let (store, recipients) = (self.store.clone(), self.recipients.clone());
        self.sealing = Some(tokio::spawn(async move {
            let sealed = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
                let compressed = zstd::bulk::compress(&plain, 1).map_err(|e| e.to_string())?;
                match recipients {
                    Some(r) => Keys::encrypt(&r, &compressed).map_err(|e| e.to_string()),
                    None => Ok(compressed),
                }
            })
            .await
            .map_err(|e| ArchiveError::corrupt(BLOCKS, format!("sealing task failed: {e}")))?
            .map_err(|e| ArchiveError::corrupt(BLOCKS, format!("cannot seal a block: {e}")))?;
            let cid = raw_cid(&sealed);
            let size = sealed.len() as u64;
            store
                .put_if_absent(&block_key(&cid), Bytes::from(sealed))
                .await?;
            Ok(BlockRef { cid, entries, size })
        }));
        Ok(())
    }

    /// Waits for the block being sealed, and records it.
    async fn settle(&mut self) -> Result<(), ArchiveError> {
        if let Some(task) = self.sealing.take() {
            let block = task.await.map_err(|e| {
                ArchiveError::corrupt(BLOCKS, format!("sealing task failed: {e}"))
            })??;
            self.stored_bytes += block.size;
            self.written.push(block);
        }
        Ok(())
    }

    pub async fn finish(mut self) -> Result<(Vec<BlockRef>, u64), ArchiveError> {
        self.seal().await?;
        self.settle().await?;
        Ok((std::mem::take(&mut self.written), self.stored_bytes))
    }
}

impl Drop for BlockWriter<'_> {
    /// A writer dropped mid-way (a failed read) stops its sealing task.
    fn drop(&mut self) {
        if let Some(task) = self.sealing.take() {
            task.abort();
        }
    }
}

/// Reads, checks and opens one block.
pub async fn read_block(
    store: &ArchiveStore,
    keys: &Keys,
    block: &BlockRef,
    encrypted: bool,
) -> Result<Vec<Entry>, ArchiveError> {
    let object = block_key(&block.cid);
    let stored = store.get(&object).await?;
    if !verifies(&block.cid, &stored) {
        return Err(ArchiveError::corrupt(
            &object,
            "content does not match its CID (tampered or damaged)",
        ));
    }
    let compressed = if encrypted {
        Bytes::from(keys.decrypt(&stored).map_err(|e| ArchiveError::Key {
            object: object.clone(),
            message: e.to_string(),
        })?)
    } else {
        stored
    };
    let plain = zstd::stream::decode_all(&compressed[..])
        .map_err(|e| ArchiveError::corrupt(&object, format!("not zstd: {e}")))?;
    let entries = unframe(&object, &Bytes::from(plain))?;
    if entries.len() as u64 != block.entries {
        return Err(ArchiveError::corrupt(
            &object,
            format!(
                "holds {} entries where the snapshot records {}",
                entries.len(),
                block.entries
            ),
        ));
    }
    Ok(entries)
}

/// Every entry of a model, a block at a time: superseded ones left out, the overlay last.
pub struct ModelEntries<'a> {
    store: &'a ArchiveStore,
    keys: &'a Keys,
    model: &'a ModelManifest,
    encrypted: bool,
    overlay: HashMap<String, Entry>,
    next_block: usize,
    overlay_done: bool,
}

impl<'a> ModelEntries<'a> {
    /// Reads the overlay (small: the keys written while the model was read).
    pub async fn open(
        store: &'a ArchiveStore,
        keys: &'a Keys,
        model: &'a ModelManifest,
        encrypted: bool,
    ) -> Result<ModelEntries<'a>, ArchiveError> {
        let mut overlay = HashMap::new();
        for block in &model.overlay {
            for e in read_block(store, keys, block, encrypted).await? {
                overlay.insert(e.key.clone(), e);
            }
        }
        Ok(ModelEntries {
            store,
            keys,
            model,
            encrypted,
            overlay,
            next_block: 0,
            overlay_done: false,
        })
    }

    /// The next batch of entries, or `None` after the last.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<Entry>>, ArchiveError> {
        if let Some(block) = self.model.blocks.get(self.next_block) {
            self.next_block += 1;
            let mut entries = read_block(self.store, self.keys, block, self.encrypted).await?;
            entries.retain(|e| !self.overlay.contains_key(&e.key));
            return Ok(Some(entries));
        }
        if self.overlay_done {
            return Ok(None);
        }
        self.overlay_done = true;
        let mut rest: Vec<Entry> = std::mem::take(&mut self.overlay)
            .into_values()
            .filter(|e| !e.deleted)
            .collect();
        rest.sort_by_key(|e| e.revision);
        Ok(Some(rest))
    }
}

pub async fn put_snapshot(
    store: &ArchiveStore,
    manifest: &SnapshotManifest,
) -> Result<Cid, ArchiveError> {
    let (bytes, cid) = manifest.encode();
    store
        .put_if_absent(&snapshot_key(&cid), Bytes::from(bytes))
        .await?;
    Ok(cid)
}

pub async fn get_snapshot(
    store: &ArchiveStore,
    cid: &Cid,
) -> Result<SnapshotManifest, ArchiveError> {
    let bytes = store.get(&snapshot_key(cid)).await?;
    SnapshotManifest::decode(&bytes, cid)
}

/// Every snapshot in a destination (unreadable ones are reported by the caller's listing as
/// errors, not skipped: a listing that hides damage would be a false "clean").
pub async fn list_snapshots(store: &ArchiveStore) -> Result<Vec<Cid>, ArchiveError> {
    Ok(store
        .list_names(SNAPSHOTS)
        .await?
        .into_iter()
        .filter_map(|n| Cid::try_from(n.as_str()).ok())
        .collect())
}

/// Sum of entry hashes: the model digest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digest(pub u128);

impl Digest {
    pub fn add(&mut self, hash: u128) {
        self.0 = self.0.wrapping_add(hash);
    }
    pub fn remove(&mut self, hash: u128) {
        self.0 = self.0.wrapping_sub(hash);
    }
    pub fn hex(self) -> String {
        digest_hex(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, value: &str, revision: u64) -> Entry {
        Entry {
            key: key.into(),
            value: Bytes::from(value.to_owned()),
            revision,
            created_ns: 1_700_000_000_000_000_000,
            deleted: false,
        }
    }

    #[test]
    fn frames_round_trip_and_a_cut_frame_is_corrupt() {
        let mut gone = entry("d", "", 11);
        gone.deleted = true;
        let entries = vec![entry("a.b", "{\"x\":1}", 3), entry("c", "", 9), gone];
        let mut out = Vec::new();
        for e in &entries {
            frame(&mut out, e);
        }
        assert_eq!(unframe("o", &Bytes::from(out.clone())).unwrap(), entries);
        let cut = Bytes::from(out[..out.len() - 1].to_vec());
        assert!(unframe("o", &cut).unwrap_err().to_string().contains("cut"));
    }

    /// The digest does not depend on order, and changes with any key or value.
    #[test]
    fn the_digest_is_order_free_and_sees_every_change() {
        let mut a = Digest::default();
        a.add(entry_hash("k1", b"v1"));
        a.add(entry_hash("k2", b"v2"));
        let mut b = Digest::default();
        b.add(entry_hash("k2", b"v2"));
        b.add(entry_hash("k1", b"v1"));
        assert_eq!(a, b);
        let mut c = Digest::default();
        c.add(entry_hash("k1", b"v1"));
        c.add(entry_hash("k2", b"v3"));
        assert_ne!(a, c);
        // The key length is framed: ("ab","c") and ("a","bc") differ.
        assert_ne!(entry_hash("ab", b"c"), entry_hash("a", b"bc"));
        c.remove(entry_hash("k2", b"v3"));
        c.add(entry_hash("k2", b"v2"));
        assert_eq!(a, c);
    }
}
