//! The manifest: the one object that says what a backup holds (see `docs/ARCHIVE.md`
//! § Manifest). It is DAG-CBOR and its CID is the backup id, so the id verifies the manifest and
//! the manifest's segment links (CBOR tag 42) verify the segments: a backup is a Merkle DAG.
//!
//! Written last: a backup whose manifest is not stored does not exist, whatever segments are.

use cim_backup_contracts::cid::{Cid, dag_cbor_cid, verifies};
use cim_backup_contracts::events::{
    Compression, ConsumerPosition, ENCRYPTION_AGE, Encryption, PartInfo, SegmentInfo, StreamCut,
    StreamSummary,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::error::ArchiveError;

/// Format name and version of manifests of streams only: what version 1 wrote, byte for byte.
pub const MANIFEST_FORMAT: &str = "cim-backup-archive/1";
/// Format of manifests that hold file trees (`trees`); a version-1 reader refuses them rather
/// than take a backup of trees for an empty one.
pub const MANIFEST_FORMAT_TREES: &str = "cim-backup-archive/2";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// Writer, e.g. `cim-backup 0.1.0`.
    pub tool: String,
    pub job_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    pub compression: Compression,
    /// `null`: segments are stored in the clear. Otherwise how they are encrypted (scheme
    /// `age`, to the listed recipients); a reader refuses a scheme it does not know.
    pub encryption: Option<Encryption>,
    pub streams: Vec<StreamArchive>,
    /// File trees, each a link to its tree object `trees/<cid>` with its totals (version 2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trees: Vec<cim_backup_contracts::files::TreeSummary>,
}

/// One stream inside a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamArchive {
    pub name: String,
    /// The stream configuration as the server reported it (JSON text, verbatim, so fields this
    /// tool does not know survive a round trip).
    pub config: String,
    /// The stream's state at the cut: the backup holds everything up to `cut.last_seq`.
    pub cut: StreamCut,
    pub first_seq: u64,
    pub last_seq: u64,
    pub messages: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    /// Backup this one continues (incremental backups): it holds only messages after the
    /// parent's `cut.last_seq` of this stream. `null` for a full backup.
    pub parent: Option<Cid>,
    /// Durable consumers and their positions at the cut.
    pub consumers: Vec<ConsumerPosition>,
    pub segments: Vec<SegmentInfo>,
    /// Snapshot mode: the server's own snapshot of the stream, in parts (then `segments` is
    /// empty). Absent for the per-message archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotArchive>,
}

/// A server snapshot (`$JS.API.STREAM.SNAPSHOT`, the format of the server that took it) stored
/// as content-addressed parts `parts/<cid>`, to be concatenated in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotArchive {
    pub parts: Vec<PartInfo>,
}

impl StreamArchive {
    pub fn summary(&self) -> StreamSummary {
        StreamSummary {
            stream: self.name.clone(),
            first_seq: self.first_seq,
            last_seq: self.last_seq,
            messages: self.messages,
            raw_bytes: self.raw_bytes,
            stored_bytes: self.stored_bytes,
            // Stored objects of the stream: segments, or a snapshot's parts.
            segments: self.segments.len() as u64
                + self.snapshot.as_ref().map_or(0, |s| s.parts.len() as u64),
            parent: self.parent,
        }
    }
}

impl Manifest {
    /// Canonical bytes and CID (= backup id).
    pub fn encode(&self) -> (Vec<u8>, Cid) {
        let bytes = serde_ipld_dagcbor::to_vec(self).expect("manifests always encode");
        let cid = dag_cbor_cid(&bytes);
        (bytes, cid)
    }

    /// Decodes manifest bytes that must have CID `expected`.
    pub fn decode(bytes: &[u8], expected: &Cid) -> Result<Manifest, ArchiveError> {
        let object = key(expected);
        if !verifies(expected, bytes) {
            return Err(ArchiveError::corrupt(
                &object,
                "content does not match its CID (tampered or damaged)",
            ));
        }
        let manifest: Manifest = serde_ipld_dagcbor::from_slice(bytes)
            .map_err(|e| ArchiveError::corrupt(&object, format!("not a manifest: {e}")))?;
        let known = match manifest.format.as_str() {
            MANIFEST_FORMAT => manifest.trees.is_empty(),
            MANIFEST_FORMAT_TREES => true,
            _ => false,
        };
        if !known {
            return Err(ArchiveError::corrupt(
                &object,
                format!(
                    "format {:?} is not {MANIFEST_FORMAT} (streams) or {MANIFEST_FORMAT_TREES} (with trees)",
                    manifest.format
                ),
            ));
        }
        if let Some(e) = &manifest.encryption
            && e.scheme != ENCRYPTION_AGE
        {
            return Err(ArchiveError::corrupt(
                &object,
                format!("encryption scheme {:?} is not supported", e.scheme),
            ));
        }
        Ok(manifest)
    }

    pub fn stream(&self, name: &str) -> Option<&StreamArchive> {
        self.streams.iter().find(|s| s.name == name)
    }

    /// Objects of the backup (segments or parts, plus this manifest) and their stored bytes.
    pub fn objects(&self) -> (u64, u64) {
        let stored: u64 = self
            .streams
            .iter()
            .map(|s| {
                s.segments.len() as u64 + s.snapshot.as_ref().map_or(0, |x| x.parts.len() as u64)
            })
            .sum();
        let bytes: u64 = self.streams.iter().map(|s| s.stored_bytes).sum::<u64>()
            + self
                .trees
                .iter()
                .map(|t| t.stored_bytes + t.tree_bytes)
                .sum::<u64>();
        (stored + self.trees.len() as u64 + 1, bytes)
    }
}

/// Object key of a manifest relative to the destination prefix.
pub fn key(cid: &Cid) -> String {
    format!("manifests/{cid}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use cim_backup_contracts::cid::raw_cid;
    use cim_backup_contracts::commands::CompressionAlgorithm;

    fn manifest() -> Manifest {
        Manifest {
            trees: Vec::new(),
            format: MANIFEST_FORMAT.into(),
            tool: "cim-backup test".into(),
            job_id: "j".into(),
            created: OffsetDateTime::UNIX_EPOCH,
            compression: Compression {
                algorithm: CompressionAlgorithm::Zstd,
                level: 3,
            },
            encryption: None,
            streams: vec![StreamArchive {
                name: "EVENTS".into(),
                config: r#"{"name":"EVENTS","future_field":1}"#.into(),
                cut: StreamCut {
                    stream: "EVENTS".into(),
                    first_seq: 1,
                    last_seq: 2,
                    messages: 2,
                    bytes: 10,
                    taken_at: OffsetDateTime::UNIX_EPOCH,
                    created: None,
                },
                first_seq: 1,
                last_seq: 2,
                messages: 2,
                raw_bytes: 100,
                stored_bytes: 50,
                parent: None,
                consumers: vec![],
                snapshot: None,
                segments: vec![SegmentInfo {
                    cid: raw_cid(b"seg"),
                    first_seq: 1,
                    last_seq: 2,
                    first_time: OffsetDateTime::UNIX_EPOCH,
                    last_time: OffsetDateTime::UNIX_EPOCH,
                    records: 2,
                    raw_bytes: 100,
                    stored_bytes: 50,
                }],
            }],
        }
    }

    #[test]
    fn manifest_round_trips_and_its_cid_is_the_backup_id() {
        let (bytes, cid) = manifest().encode();
        assert_eq!(Manifest::decode(&bytes, &cid).unwrap(), manifest());
        assert_eq!(manifest().objects(), (2, 50));
    }

    #[test]
    fn segment_cids_are_ipld_links() {
        let (bytes, _) = manifest().encode();
        let mut link = vec![0xd8, 0x2a];
        link.push(0x58);
        link.push(37);
        link.push(0);
        link.extend_from_slice(&raw_cid(b"seg").to_bytes());
        assert!(bytes.windows(link.len()).any(|w| w == link));
    }

    #[test]
    fn a_manifest_under_the_wrong_id_is_rejected() {
        let (bytes, _) = manifest().encode();
        let wrong = dag_cbor_cid(b"other");
        let err = Manifest::decode(&bytes, &wrong).unwrap_err();
        assert!(
            err.to_string().contains(&format!("manifests/{wrong}")),
            "{err}"
        );
    }
}

/// The worked example of `docs/ARCHIVE.md` §6.6, whose bytes were produced by an independent
/// DAG-CBOR encoder: the Rust writer must produce exactly them, and the same CIDs.
#[cfg(test)]
mod golden {
    use super::*;
    use crate::archive::record::Record;
    use crate::archive::segment::SegmentBuilder;
    use cim_backup_contracts::commands::CompressionAlgorithm;
    use time::macros::datetime;

    #[test]
    fn the_documented_example_backup_is_reproduced_byte_for_byte() {
        let none = Compression {
            algorithm: CompressionAlgorithm::None,
            level: 0,
        };
        let mut builder = SegmentBuilder::with_capacity(64);
        builder.push(&Record {
            seq: 1,
            time_ns: 0,
            subject: "a",
            headers: b"",
            payload: b"x",
        });
        let segment = builder.seal(none, None).unwrap();
        assert_eq!(
            hex(&segment.bytes),
            "43494d53454700011c000000010000000000000000000000000000000100610000000001000000786b79fb47"
        );
        assert_eq!(
            segment.info.cid.to_string(),
            "bafkreifgcoxeh4jlcdo7wckg5xmac7qtmb5zudt5fbf5hse4ocbzwgmv6u"
        );
        let manifest = Manifest {
            trees: Vec::new(),
            format: MANIFEST_FORMAT.into(),
            tool: "cim-backup 0.1.0".into(),
            job_id: "job-1".into(),
            created: datetime!(2026-11-25 12:00:01 UTC),
            compression: none,
            encryption: None,
            streams: vec![StreamArchive {
                name: "EVENTS".into(),
                config: r#"{"name":"EVENTS","subjects":["a"]}"#.into(),
                cut: StreamCut {
                    stream: "EVENTS".into(),
                    first_seq: 1,
                    last_seq: 1,
                    messages: 1,
                    bytes: 32,
                    taken_at: datetime!(2026-11-25 12:00:01 UTC),
                    created: None,
                },
                first_seq: 1,
                last_seq: 1,
                messages: 1,
                raw_bytes: 44,
                stored_bytes: 44,
                parent: None,
                consumers: vec![],
                snapshot: None,
                segments: vec![segment.info],
            }],
        };
        let (bytes, cid) = manifest.encode();
        assert_eq!(hex(&bytes), include_str!("golden/manifest_v1.hex").trim());
        assert_eq!(
            cid.to_string(),
            "bafyreibtgq5ff3peyv77nipssyvl2774tr6cbrqzunw3v4ctzfqx4z4gdy"
        );
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
