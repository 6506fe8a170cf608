//! What a restore reads and writes: the backup's chain (an incremental backup back to its full
//! one), the segments a selection needs (by their sequence and time ranges, so cost follows
//! the range, not the backup), and the record filter.

use cim_backup_contracts::ErrorCode;
use cim_backup_contracts::cid::Cid;
use cim_backup_contracts::events::{ConsumerRestored, SegmentInfo, Selection};
use time::OffsetDateTime;

use crate::archive::manifest::{Manifest, StreamArchive};
use crate::archive::record::Record;
use crate::archive::segment::{self, Codec, nanos_of, time_of};
use crate::archive::{ArchiveError, ArchiveStore};
use crate::engine::error::EngineError;
use crate::keys::Keys;

/// Longest chain followed (a guard against cycles in a forged archive).
const MAX_CHAIN: usize = 10_000;

/// The manifests of a restore, the full backup first.
pub struct Chain {
    pub manifests: Vec<(Cid, Manifest)>,
    pub stream: String,
}

impl Chain {
    /// Reads the backup and follows the stream's `parent` links back to a full backup.
    pub async fn resolve(
        archive: &ArchiveStore,
        backup: Cid,
        stream: &str,
    ) -> Result<Chain, EngineError> {
        let mut manifests = Vec::new();
        let mut next = Some(backup);
        while let Some(cid) = next {
            if manifests.len() >= MAX_CHAIN || manifests.iter().any(|(c, _)| *c == cid) {
                return Err(ArchiveError::corrupt(
                    crate::archive::manifest::key(&cid),
                    "the parent chain loops",
                )
                .into());
            }
            let (manifest, _) = archive.get_manifest(&cid).await?;
            let entry = stream_entry(&manifest, stream)?;
            next = entry.parent;
            manifests.push((cid, manifest));
        }
        manifests.reverse();
        Ok(Chain {
            manifests,
            stream: stream.to_owned(),
        })
    }

    pub fn ids(&self) -> Vec<Cid> {
        self.manifests.iter().map(|(c, _)| *c).collect()
    }

    /// The stream as the newest backup of the chain saw it (config, cut, consumers).
    pub fn latest(&self) -> &StreamArchive {
        stream_entry(
            &self.manifests.last().expect("a chain is never empty").1,
            &self.stream,
        )
        .expect("resolved")
    }

    /// Messages below the newest cut's first sequence were gone from the stream by then
    /// (expired, purged): a restore of the newest backup does not bring them back.
    pub fn floor(&self) -> u64 {
        self.latest().cut.first_seq
    }

    /// Checks the links between backups: each incremental holds only sequences after its
    /// parent's cut, and comes from the same stream (same creation time).
    pub fn check_links(&self) -> Result<(), ArchiveError> {
        for pair in self.manifests.windows(2) {
            let ((_, parent), (child_id, child)) = (&pair[0], &pair[1]);
            let (p, c) = (
                stream_entry(parent, &self.stream).expect("resolved"),
                stream_entry(child, &self.stream).expect("resolved"),
            );
            let object = crate::archive::manifest::key(child_id);
            if c.cut.created != p.cut.created {
                return Err(ArchiveError::corrupt(
                    object,
                    format!(
                        "continues a different stream {} (creation times differ)",
                        self.stream
                    ),
                ));
            }
            if let Some(first) = c.segments.first()
                && first.first_seq <= p.cut.last_seq
            {
                return Err(ArchiveError::corrupt(
                    object,
                    format!(
                        "starts at seq {} but its parent covers up to {}",
                        first.first_seq, p.cut.last_seq
                    ),
                ));
            }
            if c.cut.last_seq < p.cut.last_seq {
                return Err(ArchiveError::corrupt(
                    object,
                    format!(
                        "its cut {} is before its parent's {}",
                        c.cut.last_seq, p.cut.last_seq
                    ),
                ));
            }
        }
        Ok(())
    }
}

pub fn stream_entry<'m>(
    manifest: &'m Manifest,
    stream: &str,
) -> Result<&'m StreamArchive, EngineError> {
    manifest.stream(stream).ok_or_else(|| {
        let names: Vec<&str> = manifest.streams.iter().map(|s| s.name.as_str()).collect();
        EngineError::precondition(
            ErrorCode::NotFound,
            format!("the backup holds no stream {stream} (it holds {names:?})"),
        )
    })
}

/// One segment to read, and how its backup stores segments.
#[derive(Clone)]
pub struct PlannedSegment {
    pub info: SegmentInfo,
    pub manifest: usize,
}

/// The segments a selection needs, in sequence order.
pub struct Plan {
    pub segments: Vec<PlannedSegment>,
    pub selection: Selection,
    pub floor: u64,
    /// Records in the planned segments (an upper bound of what is written).
    pub records: u64,
    pub raw_bytes: u64,
}

impl Plan {
    pub fn new(chain: &Chain, selection: &Selection) -> Plan {
        let floor = chain.floor();
        let lo = selection.start_seq.unwrap_or(0).max(floor);
        let hi = selection.end_seq.unwrap_or(u64::MAX);
        let segments: Vec<PlannedSegment> = chain
            .manifests
            .iter()
            .enumerate()
            .flat_map(|(i, (_, m))| {
                let entry = stream_entry(m, &chain.stream).expect("resolved");
                entry.segments.iter().map(move |s| PlannedSegment {
                    info: s.clone(),
                    manifest: i,
                })
            })
            .filter(|s| {
                s.info.last_seq >= lo
                    && s.info.first_seq <= hi
                    && selection.start.is_none_or(|t| s.info.last_time >= t)
                    && selection.end.is_none_or(|t| s.info.first_time < t)
            })
            .collect();
        Plan {
            records: segments.iter().map(|s| s.info.records).sum(),
            raw_bytes: segments.iter().map(|s| s.info.raw_bytes).sum(),
            segments,
            selection: selection.clone(),
            floor,
        }
    }

    /// Whether a record is restored.
    pub fn keeps(&self, record: &Record<'_>) -> bool {
        let s = &self.selection;
        record.seq >= self.floor
            && s.start_seq.is_none_or(|x| record.seq >= x)
            && s.end_seq.is_none_or(|x| record.seq <= x)
            && s.start.is_none_or(|t| record.time_ns >= nanos_of(t))
            && s.end.is_none_or(|t| record.time_ns < nanos_of(t))
            && (s.subjects.is_empty()
                || s.subjects
                    .iter()
                    .any(|f| subject_matches(f, record.subject)))
    }

    /// Whether every record of the planned segments is kept without looking at them (then the
    /// plan's bounds are exact without a scan).
    pub fn keeps_whole_segments(&self, chain: &Chain) -> bool {
        self.selection.is_everything()
            && chain.manifests.iter().all(|(_, m)| {
                stream_entry(m, &chain.stream)
                    .map(|e| e.segments.iter().all(|s| s.first_seq >= self.floor))
                    .unwrap_or(false)
            })
    }
}

/// NATS subject matching: `*` matches one token, `>` the rest (one or more tokens).
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// What the selected records are: counts, bytes and ranges (exactly, by reading them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub messages: u64,
    /// subject + headers + payload
    pub bytes: u64,
    pub first: Option<(u64, i64)>,
    pub last: Option<(u64, i64)>,
}

impl Tally {
    pub fn add(&mut self, r: &Record<'_>) {
        self.messages += 1;
        self.bytes += (r.subject.len() + r.headers.len() + r.payload.len()) as u64;
        self.first.get_or_insert((r.seq, r.time_ns));
        self.last = Some((r.seq, r.time_ns));
    }

    pub fn first_seq(&self) -> Option<u64> {
        self.first.map(|f| f.0)
    }
    pub fn last_seq(&self) -> Option<u64> {
        self.last.map(|l| l.0)
    }
    pub fn first_time(&self) -> Option<OffsetDateTime> {
        self.first.map(|f| time_of(f.1))
    }
    pub fn last_time(&self) -> Option<OffsetDateTime> {
        self.last.map(|l| time_of(l.1))
    }
}

/// How to open the segments of the chain's `i`th backup.
pub fn codec<'k>(chain: &Chain, i: usize, keys: &'k Keys) -> Codec<'k> {
    let manifest = &chain.manifests[i].1;
    Codec {
        compression: manifest.compression.algorithm,
        keys: manifest.encryption.as_ref().map(|_| keys),
    }
}

/// A fetched planned segment, opened: authenticated, decrypted and decompressed.
pub fn open_planned(
    chain: &Chain,
    planned: &PlannedSegment,
    stored: &[u8],
    keys: &Keys,
) -> Result<Vec<u8>, EngineError> {
    Ok(segment::open(
        stored,
        &planned.info,
        codec(chain, planned.manifest, keys),
    )?)
}

/// The records of an opened planned segment that `plan` keeps, in order; a damaged record ends
/// the iteration with an error naming its object.
pub fn kept_records<'a>(
    plan: &'a Plan,
    planned: &PlannedSegment,
    plain: &'a [u8],
) -> impl Iterator<Item = Result<Record<'a>, EngineError>> + 'a {
    let object = segment::key(&planned.info);
    segment::records(plain)
        .map(move |r| {
            r.map_err(|e| {
                EngineError::from(ArchiveError::Corrupt {
                    object: object.clone(),
                    record: e.seq,
                    message: e.to_string(),
                })
            })
        })
        .filter(move |r| r.as_ref().map_or(true, |r| plan.keeps(r)))
}

/// Reads the planned segments and counts exactly what the selection keeps.
pub async fn tally(
    archive: &ArchiveStore,
    chain: &Chain,
    plan: &Plan,
    keys: &Keys,
) -> Result<Tally, EngineError> {
    tally_checked(archive, chain, plan, keys, |_| Ok(())).await
}

/// [`tally`], refusing the first kept record that `check` refuses (an append checks that the
/// target captures every subject before anything is written).
pub async fn tally_checked(
    archive: &ArchiveStore,
    chain: &Chain,
    plan: &Plan,
    keys: &Keys,
    check: impl Fn(&Record<'_>) -> Result<(), EngineError>,
) -> Result<Tally, EngineError> {
    let mut tally = Tally::default();
    for planned in &plan.segments {
        let stored = archive.get(&segment::key(&planned.info)).await?;
        let plain = open_planned(chain, planned, &stored, keys)?;
        for record in kept_records(plan, planned, &plain) {
            let record = record?;
            check(&record)?;
            tally.add(&record);
        }
    }
    Ok(tally)
}

/// Where each saved consumer starts in the restored stream: after its ack floor, clamped to
/// what was restored. Messages it had delivered without an ack are delivered again.
pub fn consumer_starts(latest: &StreamArchive, last_restored: u64) -> Vec<ConsumerRestored> {
    latest
        .consumers
        .iter()
        .map(|c| {
            let floor = c.ack_floor_stream_seq.min(last_restored);
            // Delivered-but-unacked messages that were restored come again.
            let delivered = c.delivered_stream_seq.min(last_restored);
            let redeliveries = c.num_ack_pending.min(delivered.saturating_sub(floor));
            ConsumerRestored {
                name: c.name.clone(),
                start_seq: floor + 1,
                redeliveries,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_filters_follow_nats_wildcards() {
        assert!(subject_matches("orders.>", "orders.eu.new"));
        assert!(!subject_matches("orders.>", "orders"));
        assert!(subject_matches("orders.*.new", "orders.eu.new"));
        assert!(!subject_matches("orders.*.new", "orders.eu.old"));
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.b.c"));
        assert!(subject_matches(">", "anything.at.all"));
    }
}
