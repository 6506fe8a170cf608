//! Pure verification of this service's own event log as per-aggregate CID chains (the `native`
//! profile of DESIGN §7). The walk never stops at the first problem: every message yields either
//! nothing or a [`Finding`], and memory grows with the number of aggregates, not the log length.

use std::collections::HashMap;

use cim_backup_contracts::cid::{Cid, dag_cbor_cid};
use cim_backup_contracts::events::EventEnvelope;

/// One message of the event stream as the walker sees it.
#[derive(Debug, Clone, Copy)]
pub struct ChainItem<'a> {
    pub stream_seq: u64,
    pub subject: &'a str,
    pub payload: &'a [u8],
    /// Value of the `Cim-Cid` header, if present.
    pub header_cid: Option<&'a str>,
}

/// What is wrong at one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FindingKind {
    /// The payload does not hash to the CID the message claims.
    CidMismatch,
    /// `prev` does not name the aggregate's previous event.
    BrokenLink,
    /// The aggregate's first event we saw is not its first event (sequence > 1 or a `prev`).
    MissingPredecessor,
    /// The per-aggregate sequence skips numbers.
    SequenceGap,
    /// The same event (same CID) appears again.
    Duplicate,
    /// The per-aggregate sequence goes backwards.
    OutOfOrder,
    /// The payload is not a decodable event envelope.
    Undecodable,
}

/// A break in a chain, located precisely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub stream_seq: u64,
    pub subject: String,
    /// `<aggregate-type>.<aggregate-id>` when known.
    pub aggregate: Option<String>,
    pub kind: FindingKind,
    pub detail: String,
    /// Stream sequence of the aggregate's last good event before this one.
    pub last_good_seq: Option<u64>,
}

#[derive(Debug, Clone)]
struct ChainHead {
    cid: Cid,
    sequence: u64,
    stream_seq: u64,
}

/// Walks native event chains incrementally: feed items in stream order, collect findings.
#[derive(Debug, Default)]
pub struct NativeChainWalker {
    heads: HashMap<String, ChainHead>,
    checked: u64,
}

impl NativeChainWalker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of messages checked so far.
    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// Number of aggregates (open chains) seen so far.
    pub fn chains(&self) -> usize {
        self.heads.len()
    }

    /// Checks one message; returns the findings it causes (usually none).
    pub fn check(&mut self, item: ChainItem<'_>) -> Vec<Finding> {
        self.checked += 1;
        let mut findings = Vec::new();
        let finding = |kind, aggregate: Option<&str>, detail: String, last_good| Finding {
            stream_seq: item.stream_seq,
            subject: item.subject.to_owned(),
            aggregate: aggregate.map(str::to_owned),
            kind,
            detail,
            last_good_seq: last_good,
        };
        let cid = dag_cbor_cid(item.payload);
        let envelope = match EventEnvelope::decode(item.payload) {
            Ok(e) => e,
            Err(e) => {
                findings.push(finding(FindingKind::Undecodable, None, e.to_string(), None));
                return findings;
            }
        };
        let aggregate = format!("{}.{}", envelope.aggregate_type, envelope.aggregate_id);
        let head = self.heads.get(&aggregate).cloned();
        let last_good = head.as_ref().map(|h| h.stream_seq);
        if let Some(claimed) = item.header_cid {
            if claimed != cid.to_string() {
                findings.push(finding(
                    FindingKind::CidMismatch,
                    Some(&aggregate),
                    format!("Cim-Cid header says {claimed}, payload hashes to {cid}"),
                    last_good,
                ));
                // A payload that does not match its CID cannot become the chain head: the next
                // event's link must point at the genuine predecessor.
                return findings;
            }
        }
        let prev = envelope.prev.map(|p| p.0);
        match &head {
            None => {
                if envelope.sequence != 1 || prev.is_some() {
                    findings.push(finding(
                        FindingKind::MissingPredecessor,
                        Some(&aggregate),
                        format!("first event seen has sequence {} and prev {:?}", envelope.sequence, prev.map(|c| c.to_string())),
                        None,
                    ));
                }
            }
            Some(h) if h.cid == cid => {
                findings.push(finding(FindingKind::Duplicate, Some(&aggregate), format!("event {cid} appears again"), last_good));
                return findings;
            }
            Some(h) => {
                if envelope.sequence <= h.sequence {
                    findings.push(finding(
                        FindingKind::OutOfOrder,
                        Some(&aggregate),
                        format!("sequence {} after {}", envelope.sequence, h.sequence),
                        last_good,
                    ));
                    return findings;
                }
                if envelope.sequence > h.sequence + 1 {
                    findings.push(finding(
                        FindingKind::SequenceGap,
                        Some(&aggregate),
                        format!("sequence {} after {}", envelope.sequence, h.sequence),
                        last_good,
                    ));
                } else if prev != Some(h.cid) {
                    findings.push(finding(
                        FindingKind::BrokenLink,
                        Some(&aggregate),
                        format!("prev is {:?}, expected {}", prev.map(|c| c.to_string()), h.cid),
                        last_good,
                    ));
                }
            }
        }
        self.heads.insert(aggregate, ChainHead { cid, sequence: envelope.sequence, stream_seq: item.stream_seq });
        findings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::backup_spec;
    use cim_backup_contracts::events::*;
    use cim_backup_contracts::views::JobKind;
    use time::OffsetDateTime;

    /// Encoded events of one aggregate, correctly chained: (payload, cid).
    fn chain(job: &str, n: u64) -> Vec<(Vec<u8>, Cid)> {
        let mut prev = None;
        (1..=n)
            .map(|sequence| {
                let env = EventEnvelope {
                    aggregate_type: JobKind::Backup,
                    aggregate_id: job.parse().unwrap(),
                    sequence,
                    prev,
                    meta: EventMeta {
                        event_id: format!("{job}-{sequence}"),
                        time: OffsetDateTime::UNIX_EPOCH,
                        correlation_id: "c".into(),
                        causation_id: "c".into(),
                    },
                    event: JobEvent::Backup(BackupEvent::BackupAccepted(backup_spec(&["A"]))),
                };
                let (bytes, cid) = env.encode_with_cid();
                prev = Some(cid);
                (bytes, cid.0)
            })
            .collect()
    }

    fn walk(items: &[(Vec<u8>, Cid)]) -> Vec<Finding> {
        let mut walker = NativeChainWalker::new();
        let cids: Vec<String> = items.iter().map(|(_, c)| c.to_string()).collect();
        items
            .iter()
            .enumerate()
            .flat_map(|(i, (bytes, _))| {
                walker.check(ChainItem {
                    stream_seq: i as u64 + 1,
                    subject: "s",
                    payload: bytes,
                    header_cid: Some(&cids[i]),
                })
            })
            .collect()
    }

    #[test]
    fn an_intact_interleaved_log_has_no_findings() {
        let (a, b) = (chain("a", 5), chain("b", 5));
        let interleaved: Vec<_> = a.into_iter().zip(b).flat_map(|(x, y)| [x, y]).collect();
        assert_eq!(walk(&interleaved), vec![]);
    }

    #[test]
    fn a_flipped_payload_byte_is_a_cid_mismatch_at_its_sequence() {
        let mut items = chain("a", 4);
        let last = items[2].0.len() - 1;
        items[2].0[last] ^= 1;
        let findings = walk(&items);
        assert_eq!(findings[0].stream_seq, 3);
        assert!(matches!(findings[0].kind, FindingKind::CidMismatch | FindingKind::Undecodable));
        assert_eq!(findings[0].last_good_seq.unwrap_or(2), 2);
    }

    #[test]
    fn a_deleted_event_is_a_sequence_gap_and_a_duplicate_is_named() {
        let mut items = chain("a", 4);
        items.remove(1);
        let findings = walk(&items);
        assert_eq!(findings.len(), 1);
        assert_eq!((findings[0].kind, findings[0].stream_seq), (FindingKind::SequenceGap, 2));

        let mut items = chain("a", 3);
        items.insert(2, items[1].clone());
        let findings = walk(&items);
        assert_eq!(findings.len(), 1);
        assert_eq!((findings[0].kind, findings[0].stream_seq), (FindingKind::Duplicate, 3));
    }

    #[test]
    fn a_swapped_pair_is_reported_and_a_missing_genesis_too() {
        let mut items = chain("a", 4);
        items.swap(1, 2);
        let kinds: Vec<_> = walk(&items).iter().map(|f| (f.kind, f.stream_seq)).collect();
        // 1,3,2,4: event 3 skips 2 (gap), 2 then goes backwards; 4 links correctly to 3.
        assert_eq!(kinds, vec![(FindingKind::SequenceGap, 2), (FindingKind::OutOfOrder, 3)]);

        let items = chain("a", 3);
        let findings = walk(&items[1..]);
        assert_eq!(findings[0].kind, FindingKind::MissingPredecessor);
    }

    #[test]
    fn a_forged_prev_is_a_broken_link() {
        let good = chain("a", 3);
        let other = chain("b", 2);
        // Re-encode event 3 of `a` with prev pointing at b's event: valid CID, wrong link.
        let mut env = EventEnvelope::decode(&good[2].0).unwrap();
        env.prev = Some(cim_backup_contracts::EventCid(other[1].1));
        let (bytes, cid) = env.encode_with_cid();
        let items = vec![good[0].clone(), good[1].clone(), (bytes, cid.0)];
        let findings = walk(&items);
        assert_eq!(findings.len(), 1);
        assert_eq!((findings[0].kind, findings[0].stream_seq, findings[0].last_good_seq), (FindingKind::BrokenLink, 3, Some(2)));
    }
}
