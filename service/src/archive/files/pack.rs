//! Packs: many blobs in one object, so a large tree is a few thousand objects, not millions.
//!
//! A pack is `CIMPACK\x01` (8 bytes) followed by its blobs, back to back, and is stored as
//! `packs/<cid>` (raw CID of its bytes). Its index, DAG-CBOR, lists each blob's chunk CID,
//! offset, stored and plaintext lengths, and is stored as `indexes/<cid>` named by its own
//! CID. A backup lists the indexes once to learn every chunk the destination already holds (a
//! resumed backup does the same, so it uploads nothing twice); manifests carry the locations
//! themselves, so a restore never needs an index.

use std::collections::HashMap;

use bytes::Bytes;
use cim_backup_contracts::cid::{Cid, dag_cbor_cid, link, raw_cid, verifies};
use cim_backup_contracts::events::Encryption;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::blob::SealedBlob;
use super::tree::ChunkRef;
use crate::archive::{ArchiveError, ArchiveStore};

/// First bytes of every pack.
pub const PACK_MAGIC: [u8; 8] = *b"CIMPACK\x01";
/// Format of index objects.
pub const INDEX_FORMAT: &str = "cim-backup-pack-index/1";
/// A pack is sealed once it holds this much.
pub const PACK_TARGET: usize = 32 * 1024 * 1024;

pub fn pack_key(cid: &Cid) -> String {
    format!("packs/{cid}")
}

pub fn index_key(cid: &Cid) -> String {
    format!("indexes/{cid}")
}

/// Where a chunk's blob is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedBlob {
    #[serde(with = "link")]
    pub cid: Cid,
    pub offset: u64,
    pub stored_len: u64,
    pub raw_len: u64,
    pub zstd: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackIndex {
    pub format: String,
    #[serde(with = "link")]
    pub pack: Cid,
    pub pack_bytes: u64,
    /// How the pack's blobs are encrypted; `null` in the clear. A backup only reuses blobs
    /// encrypted exactly as it would encrypt them.
    pub encryption: Option<Encryption>,
    pub blobs: Vec<IndexedBlob>,
}

impl PackIndex {
    pub fn encode(&self) -> (Vec<u8>, Cid) {
        let bytes = serde_ipld_dagcbor::to_vec(self).expect("indexes always encode");
        let cid = dag_cbor_cid(&bytes);
        (bytes, cid)
    }

    pub fn decode(bytes: &[u8], cid: &Cid) -> Result<PackIndex, ArchiveError> {
        let object = index_key(cid);
        if !verifies(cid, bytes) {
            return Err(ArchiveError::corrupt(
                &object,
                "content does not match its CID",
            ));
        }
        let index: PackIndex = serde_ipld_dagcbor::from_slice(bytes)
            .map_err(|e| ArchiveError::corrupt(&object, format!("not a pack index: {e}")))?;
        if index.format != INDEX_FORMAT {
            return Err(ArchiveError::corrupt(
                &object,
                format!("format {:?} is not {INDEX_FORMAT}", index.format),
            ));
        }
        Ok(index)
    }
}

/// Blobs gathered into one pack.
#[derive(Debug, Default)]
pub struct PackBuilder {
    bytes: Vec<u8>,
    blobs: Vec<IndexedBlob>,
}

/// A pack ready to upload, with its index.
#[derive(Debug)]
pub struct SealedPack {
    pub cid: Cid,
    pub bytes: Bytes,
    pub index: PackIndex,
}

impl PackBuilder {
    pub fn push(&mut self, blob: SealedBlob) {
        if self.bytes.is_empty() {
            self.bytes.reserve(PACK_TARGET + blob.bytes.len());
            self.bytes.extend_from_slice(&PACK_MAGIC);
        }
        self.blobs.push(IndexedBlob {
            cid: blob.cid,
            offset: self.bytes.len() as u64,
            stored_len: blob.bytes.len() as u64,
            raw_len: blob.raw_len,
            zstd: blob.zstd,
        });
        self.bytes.extend_from_slice(&blob.bytes);
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.bytes.len() >= PACK_TARGET
    }

    /// Names the pack; `None` if it holds nothing.
    pub fn seal(&mut self, encryption: Option<Encryption>) -> Option<SealedPack> {
        if self.blobs.is_empty() {
            return None;
        }
        let bytes = Bytes::from(std::mem::take(&mut self.bytes));
        let cid = raw_cid(&bytes);
        let index = PackIndex {
            format: INDEX_FORMAT.into(),
            pack: cid,
            pack_bytes: bytes.len() as u64,
            encryption,
            blobs: std::mem::take(&mut self.blobs),
        };
        Some(SealedPack { cid, bytes, index })
    }
}

/// Stores a pack, then its index (a pack without an index is unused space, never a chunk
/// someone counts on). Returns the bytes uploaded (0 if both were there).
pub async fn upload(store: &ArchiveStore, pack: &SealedPack) -> Result<u64, ArchiveError> {
    let mut uploaded = 0;
    if store
        .put_if_absent(&pack_key(&pack.cid), pack.bytes.clone())
        .await?
    {
        uploaded += pack.bytes.len() as u64;
    }
    let (bytes, cid) = pack.index.encode();
    store
        .put_if_absent(&index_key(&cid), Bytes::from(bytes))
        .await?;
    Ok(uploaded)
}

/// Every chunk a destination holds, encrypted as wanted, with where it is.
#[derive(Debug, Default)]
pub struct KnownChunks {
    map: HashMap<Cid, ChunkRef>,
}

impl KnownChunks {
    /// Reads every index of the destination; keeps the blobs of packs that exist with their
    /// recorded size and are encrypted as `encryption` says. An index that does not verify
    /// is skipped (with a warning): its chunks are stored again rather than trusted.
    pub async fn load(
        store: &ArchiveStore,
        encryption: Option<&Encryption>,
    ) -> Result<KnownChunks, ArchiveError> {
        let names = store.list_names("indexes").await?;
        let indexes: Vec<Result<Option<PackIndex>, ArchiveError>> = futures::stream::iter(names)
            .map(|name| async move {
                let Ok(cid) = Cid::try_from(name.as_str()) else {
                    return Ok(None);
                };
                let bytes = store.get(&index_key(&cid)).await?;
                let index = match PackIndex::decode(&bytes, &cid) {
                    Ok(index) => index,
                    Err(e) => {
                        tracing::warn!(error = %e, "pack index skipped");
                        return Ok(None);
                    }
                };
                if index.encryption.as_ref() != encryption {
                    return Ok(None);
                }
                // A pack removed since (by hand, or a future prune) must not be counted on.
                if !store.has(&pack_key(&index.pack), index.pack_bytes).await? {
                    return Ok(None);
                }
                Ok(Some(index))
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let mut known = KnownChunks::default();
        for index in indexes {
            if let Some(index) = index? {
                known.add(&index);
            }
        }
        Ok(known)
    }

    pub fn add(&mut self, index: &PackIndex) {
        for b in &index.blobs {
            self.map.entry(b.cid).or_insert_with(|| ChunkRef {
                cid: b.cid,
                len: b.raw_len,
                pack: index.pack,
                offset: b.offset,
                stored_len: b.stored_len,
                zstd: b.zstd,
            });
        }
    }

    pub fn get(&self, cid: &Cid) -> Option<&ChunkRef> {
        self.map.get(cid)
    }

    pub fn contains(&self, cid: &Cid) -> bool {
        self.map.contains_key(cid)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::files::blob;

    #[test]
    fn blobs_are_found_at_their_offsets_and_the_index_round_trips() {
        let mut b = PackBuilder::default();
        let chunks: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 1000 + i as usize]).collect();
        for c in &chunks {
            b.push(blob::seal(c, blob::chunk_cid(c), None, None).unwrap());
        }
        let sealed = b.seal(None).unwrap();
        assert!(b.is_empty());
        for (c, ib) in chunks.iter().zip(&sealed.index.blobs) {
            let at = ib.offset as usize;
            assert_eq!(&sealed.bytes[at..at + ib.stored_len as usize], c.as_slice());
        }
        let (bytes, cid) = sealed.index.encode();
        assert_eq!(PackIndex::decode(&bytes, &cid).unwrap(), sealed.index);
        let mut forged = bytes.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert!(PackIndex::decode(&forged, &cid).is_err());
    }
}
