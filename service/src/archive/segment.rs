//! Segments: runs of records of one stream, stored as one object named by the CID of its stored
//! bytes (see `docs/ARCHIVE.md` § Segments).
//!
//! Plaintext = `CIMSEG\0\x01` magic + records. Stored = the plaintext compressed as one zstd
//! frame with its content checksum on (or the plaintext itself for `compression: none`). Opening
//! a segment checks, in order: the stored size, the CID of the stored bytes, the zstd frame and
//! checksum, the plaintext length and the magic; `check_records` then checks each record's CRC,
//! sequence and header block.

use bytes::Bytes;
use cim_backup_contracts::cid::{raw_cid, verifies};
use cim_backup_contracts::commands::CompressionAlgorithm;
use cim_backup_contracts::events::{Compression, SegmentInfo};
use time::OffsetDateTime;

use super::error::ArchiveError;
use super::record::{self, Record, Records};

/// First bytes of every segment plaintext: format name and version 1.
pub const SEGMENT_MAGIC: [u8; 8] = *b"CIMSEG\x00\x01";

/// Accumulates records into one segment's plaintext.
#[derive(Debug)]
pub struct SegmentBuilder {
    raw: Vec<u8>,
    first: Option<(u64, i64)>,
    last: (u64, i64),
    records: u64,
}

/// A compressed, named segment ready to upload.
#[derive(Debug, Clone)]
pub struct SealedSegment {
    pub bytes: Bytes,
    pub info: SegmentInfo,
}

impl SegmentBuilder {
    pub fn with_capacity(capacity: usize) -> Self {
        let mut raw = Vec::with_capacity(capacity + 64 * 1024);
        raw.extend_from_slice(&SEGMENT_MAGIC);
        SegmentBuilder {
            raw,
            first: None,
            last: (0, 0),
            records: 0,
        }
    }

    /// Appends a record; records must come in increasing sequence order.
    pub fn push(&mut self, rec: &Record<'_>) {
        debug_assert!(
            self.first.is_none() || rec.seq > self.last.0,
            "records out of order"
        );
        record::encode(&mut self.raw, rec);
        self.first.get_or_insert((rec.seq, rec.time_ns));
        self.last = (rec.seq, rec.time_ns);
        self.records += 1;
    }

    /// Plaintext bytes so far (magic included).
    pub fn raw_len(&self) -> usize {
        self.raw.len()
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    /// Compresses, encrypts (if `recipients` is given) and names the segment. CPU-bound: run it
    /// off the async executor.
    pub fn seal(
        self,
        compression: Compression,
        recipients: Option<&[String]>,
    ) -> Result<SealedSegment, ArchiveError> {
        let (first_seq, first_ns) = self.first.expect("sealing an empty segment is a bug");
        let stored: Vec<u8> = match compression.algorithm {
            CompressionAlgorithm::Zstd => {
                let mut compressor = zstd::bulk::Compressor::new(compression.level)
                    .and_then(|mut c| {
                        c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))
                            .map(|_| c)
                    })
                    .map_err(|e| {
                        ArchiveError::corrupt("(new segment)", format!("zstd setup: {e}"))
                    })?;
                compressor
                    .compress(&self.raw)
                    .map_err(|e| ArchiveError::corrupt("(new segment)", format!("zstd: {e}")))?
            }
            CompressionAlgorithm::None => self.raw.clone(),
        };
        let stored = match recipients {
            Some(recipients) => {
                crate::keys::Keys::encrypt(recipients, &stored).map_err(|e| ArchiveError::Key {
                    object: "(new segment)".into(),
                    message: e.to_string(),
                })?
            }
            None => stored,
        };
        let info = SegmentInfo {
            cid: raw_cid(&stored),
            first_seq,
            last_seq: self.last.0,
            first_time: time_of(first_ns),
            last_time: time_of(self.last.1),
            records: self.records,
            raw_bytes: self.raw.len() as u64,
            stored_bytes: stored.len() as u64,
        };
        Ok(SealedSegment {
            bytes: Bytes::from(stored),
            info,
        })
    }
}

/// Nanoseconds since the epoch to a time (clamped to the representable range).
pub fn time_of(ns: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ns as i128).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Nanoseconds since the epoch of a time.
pub fn nanos_of(t: OffsetDateTime) -> i64 {
    t.unix_timestamp_nanos()
        .clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// Object key of a segment relative to the destination prefix.
pub fn key(info: &SegmentInfo) -> String {
    format!("segments/{}", info.cid)
}

/// How to read the stored form of a backup's segments.
#[derive(Clone, Copy)]
pub struct Codec<'k> {
    pub compression: CompressionAlgorithm,
    /// Set for an encrypted backup: the keys to open it with.
    pub keys: Option<&'k crate::keys::Keys>,
}

/// Checks the stored bytes of a segment against its manifest entry and returns the plaintext
/// (magic included; see [`records`]).
pub fn open(stored: &[u8], info: &SegmentInfo, codec: Codec<'_>) -> Result<Vec<u8>, ArchiveError> {
    let object = key(info);
    let compression = codec.compression;
    if stored.len() as u64 != info.stored_bytes {
        return Err(ArchiveError::corrupt(
            &object,
            format!(
                "size is {} bytes, the manifest says {}",
                stored.len(),
                info.stored_bytes
            ),
        ));
    }
    if !verifies(&info.cid, stored) {
        return Err(ArchiveError::corrupt(
            &object,
            "content does not match its CID (tampered or damaged)",
        ));
    }
    let decrypted;
    let stored = match codec.keys {
        Some(keys) => {
            decrypted = keys.decrypt(stored).map_err(|e| ArchiveError::Key {
                object: object.clone(),
                message: e.to_string(),
            })?;
            &decrypted[..]
        }
        None => stored,
    };
    let plain = match compression {
        CompressionAlgorithm::Zstd => zstd::bulk::decompress(stored, info.raw_bytes as usize)
            .map_err(|e| {
                ArchiveError::corrupt(&object, format!("zstd frame does not decompress: {e}"))
            })?,
        CompressionAlgorithm::None => stored.to_vec(),
    };
    if plain.len() as u64 != info.raw_bytes {
        return Err(ArchiveError::corrupt(
            &object,
            format!(
                "plaintext is {} bytes, the manifest says {}",
                plain.len(),
                info.raw_bytes
            ),
        ));
    }
    if plain.get(..8) != Some(&SEGMENT_MAGIC[..]) {
        return Err(ArchiveError::corrupt(
            &object,
            "not a cim-backup segment (bad magic)",
        ));
    }
    Ok(plain)
}

/// The records of an opened segment.
pub fn records(plain: &[u8]) -> Records<'_> {
    Records::new(&plain[SEGMENT_MAGIC.len()..])
}

/// Checks every record of an opened segment against its manifest entry: CRCs, sequences strictly
/// increasing within `first_seq..=last_seq`, the record count, and the time bounds. Returns the
/// number of records.
pub fn check_records(plain: &[u8], info: &SegmentInfo) -> Result<u64, ArchiveError> {
    let object = key(info);
    let corrupt = |record: Option<u64>, message: String| ArchiveError::Corrupt {
        object: object.clone(),
        record,
        message,
    };
    let mut count = 0u64;
    let mut prev: Option<u64> = None;
    for rec in records(plain) {
        let rec = rec.map_err(|e| corrupt(e.seq, e.to_string()))?;
        record::validate_headers(rec.headers).map_err(|m| corrupt(Some(rec.seq), m))?;
        if rec.seq < info.first_seq || rec.seq > info.last_seq {
            return Err(corrupt(
                Some(rec.seq),
                format!(
                    "seq {} is outside {}..={}",
                    rec.seq, info.first_seq, info.last_seq
                ),
            ));
        }
        if let Some(p) = prev {
            if rec.seq <= p {
                return Err(corrupt(
                    Some(rec.seq),
                    format!("seq {} follows {p}", rec.seq),
                ));
            }
        } else if rec.seq != info.first_seq || rec.time_ns != nanos_of(info.first_time) {
            return Err(corrupt(
                Some(rec.seq),
                "first record does not match the manifest".into(),
            ));
        }
        prev = Some(rec.seq);
        count += 1;
        if count == info.records
            && (rec.seq != info.last_seq || rec.time_ns != nanos_of(info.last_time))
        {
            return Err(corrupt(
                Some(rec.seq),
                "last record does not match the manifest".into(),
            ));
        }
    }
    if count != info.records {
        return Err(corrupt(
            prev,
            format!("holds {count} records, the manifest says {}", info.records),
        ));
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZSTD: Codec<'static> = Codec {
        compression: CompressionAlgorithm::Zstd,
        keys: None,
    };

    fn zstd() -> Compression {
        Compression {
            algorithm: CompressionAlgorithm::Zstd,
            level: 3,
        }
    }

    fn build(seqs: &[u64]) -> SealedSegment {
        let mut b = SegmentBuilder::with_capacity(1024);
        for &seq in seqs {
            b.push(&Record {
                seq,
                time_ns: seq as i64 * 1000,
                subject: "s.x",
                headers: b"",
                payload: format!("payload-{seq}").as_bytes(),
            });
        }
        b.seal(zstd(), None).unwrap()
    }

    #[test]
    fn a_sealed_segment_opens_and_checks() {
        let seg = build(&[3, 4, 7]);
        assert_eq!(
            (seg.info.first_seq, seg.info.last_seq, seg.info.records),
            (3, 7, 3)
        );
        let plain = open(&seg.bytes, &seg.info, ZSTD).unwrap();
        assert_eq!(check_records(&plain, &seg.info).unwrap(), 3);
        let seqs: Vec<u64> = records(&plain).map(|r| r.unwrap().seq).collect();
        assert_eq!(seqs, [3, 4, 7]);
    }

    #[test]
    fn the_same_records_give_the_same_cid() {
        assert_eq!(build(&[1, 2]).info.cid, build(&[1, 2]).info.cid);
        assert_ne!(build(&[1, 2]).info.cid, build(&[1, 3]).info.cid);
    }

    #[test]
    fn tampered_bytes_fail_on_the_cid_naming_the_object() {
        let seg = build(&[1, 2, 3]);
        let mut bytes = seg.bytes.to_vec();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        let err = open(&bytes, &seg.info, ZSTD).unwrap_err();
        assert_eq!(err.object(), format!("segments/{}", seg.info.cid));
        assert!(err.to_string().contains("does not match its CID"), "{err}");
    }

    #[test]
    fn a_manifest_that_lies_about_the_records_is_caught() {
        let seg = build(&[1, 2, 3]);
        let plain = open(&seg.bytes, &seg.info, ZSTD).unwrap();
        let mut info = seg.info.clone();
        info.records = 4;
        assert!(
            check_records(&plain, &info)
                .unwrap_err()
                .to_string()
                .contains("holds 3 records")
        );
        let mut info = seg.info.clone();
        info.last_seq = 2;
        assert_eq!(check_records(&plain, &info).unwrap_err().record(), Some(3));
    }

    #[test]
    fn uncompressed_segments_work_too() {
        let mut b = SegmentBuilder::with_capacity(64);
        b.push(&Record {
            seq: 1,
            time_ns: 5,
            subject: "a",
            headers: b"",
            payload: b"x",
        });
        let seg = b
            .seal(
                Compression {
                    algorithm: CompressionAlgorithm::None,
                    level: 0,
                },
                None,
            )
            .unwrap();
        let plain = open(
            &seg.bytes,
            &seg.info,
            Codec {
                compression: CompressionAlgorithm::None,
                keys: None,
            },
        )
        .unwrap();
        assert_eq!(check_records(&plain, &seg.info).unwrap(), 1);
    }
}
