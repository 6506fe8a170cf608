//! Pure CID-chain verification over a stream's messages, with a profile per message format
//! (DESIGN §7, `CIM-FORMATS.md`). The walk never stops at the first problem: every message yields
//! nothing or findings, and memory grows with the number of chains (aggregates), not the log.
//!
//! Rules, the same for every profile (a profile only reads links and checks content hashes):
//! - a message that cannot be read is `undecodable`;
//! - content that does not hash to the CID it claims is a `cid_mismatch`, reported once: the
//!   damaged event holds the place it claims (its CID and sequence) without becoming a trusted
//!   head, so the next event may link either to that claimed place (the content was altered in
//!   place) or to the last good event (the damaged message was inserted), and both are clean;
//! - the first event of a chain must be a genesis (no predecessor; the profile's first
//!   sequence), else `missing_predecessor`;
//! - an event with the head's CID is a `duplicate`; with sequences, one that goes back is
//!   `out_of_order` and one that skips is a `sequence_gap`; a predecessor link that does not name
//!   the head is a `broken_link`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write as _;

use cim_backup_contracts::cid::{Cid, dag_cbor_cid};
use cim_backup_contracts::events::EventEnvelope;
use cim_backup_contracts::integrity::{ChainBy, ChainProfile, Finding, FindingKind, ProfileKind};
use serde_json::Value;
use serde_json::value::RawValue;

/// One message as the walker sees it.
#[derive(Clone, Copy)]
pub struct ChainItem<'a> {
    pub stream_seq: u64,
    /// Original timestamp, nanoseconds since the epoch.
    pub time_ns: i64,
    pub subject: &'a str,
    /// Header lookup (first value of a name).
    pub headers: &'a dyn Fn(&str) -> Option<&'a str>,
    pub payload: &'a [u8],
}

impl std::fmt::Debug for ChainItem<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainItem")
            .field("stream_seq", &self.stream_seq)
            .field("subject", &self.subject)
            .finish()
    }
}

/// A header lookup over no headers.
pub fn no_headers(_: &str) -> Option<&'static str> {
    None
}

/// A CID as a message carries it: parsed (the native envelope's tag-42 links, compared as
/// binary, never encoded on the hot path) or text (JSON and header formats, compared as written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkCid<'a> {
    Binary(Cid),
    Text(Cow<'a, str>),
}

impl LinkCid<'_> {
    /// Whether both name the same CID (binary with binary, text with text: a profile uses one).
    pub fn same(&self, other: &LinkCid<'_>) -> bool {
        match (self, other) {
            (LinkCid::Binary(a), LinkCid::Binary(b)) => a == b,
            (LinkCid::Text(a), LinkCid::Text(b)) => a == b,
            _ => false,
        }
    }

    fn into_owned(self) -> LinkCid<'static> {
        match self {
            LinkCid::Binary(c) => LinkCid::Binary(c),
            LinkCid::Text(t) => LinkCid::Text(Cow::Owned(t.into_owned())),
        }
    }

    /// Becomes `other`, reusing this one's text buffer (a chain's head changes every event).
    fn set(&mut self, other: LinkCid<'_>) {
        match (&mut *self, other) {
            (LinkCid::Text(Cow::Owned(buffer)), LinkCid::Text(text)) => {
                buffer.clear();
                buffer.push_str(&text);
            }
            (_, other) => *self = other.into_owned(),
        }
    }
}

impl std::fmt::Display for LinkCid<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkCid::Binary(c) => write!(f, "{c}"),
            LinkCid::Text(t) => f.write_str(t),
        }
    }
}

/// What a profile reads from one message, borrowing from it where it can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link<'a> {
    pub chain: Cow<'a, str>,
    /// The event's CID as the message claims it.
    pub cid: LinkCid<'a>,
    pub prev: Option<LinkCid<'a>>,
    pub sequence: Option<u64>,
    /// `Some(Err)` when the content does not hash to `cid`; `None` when the profile cannot tell.
    pub content: Option<Result<(), String>>,
}

/// A message format's view of chains.
pub trait Profile {
    fn kind(&self) -> ProfileKind;
    fn link<'a>(&self, item: &ChainItem<'a>) -> Result<Link<'a>, String>;
    /// The sequence of a chain's first event, when the format numbers events.
    fn genesis_sequence(&self) -> Option<u64>;
}

/// Builds the profile a [`ChainProfile`] describes.
pub fn profile(spec: &ChainProfile) -> Box<dyn Profile + Send + Sync> {
    let chain_by = spec.chain_by();
    match spec.profile {
        ProfileKind::Native => Box::new(Native),
        ProfileKind::CimIpld => Box::new(CimIpld { chain_by }),
        ProfileKind::XCidHeaders => Box::new(XCidHeaders { chain_by }),
        ProfileKind::LinkOnly => Box::new(LinkOnly {
            chain_by,
            cid_field: spec.cid_field.clone().unwrap_or_else(|| "cid".into()),
            previous_field: spec
                .previous_field
                .clone()
                .unwrap_or_else(|| "previous_cid".into()),
            sequence_field: spec.sequence_field.clone(),
        }),
    }
}

/// The chain key of a message by subject token, field or stream.
fn chain_key<'a>(
    chain_by: &ChainBy,
    item: &ChainItem<'a>,
    json: Option<&Value>,
) -> Result<Cow<'a, str>, String> {
    match chain_by {
        ChainBy::Stream | ChainBy::Envelope => Ok(Cow::Borrowed("")),
        ChainBy::SubjectToken(i) => item
            .subject
            .split('.')
            .nth(*i)
            .map(Cow::Borrowed)
            .ok_or_else(|| format!("subject {} has no token {i}", item.subject)),
        ChainBy::Field(path) => {
            let json = json.ok_or("the payload is not JSON")?;
            match field(json, path) {
                Some(Value::String(s)) => Ok(Cow::Owned(s.clone())),
                Some(Value::Null) | None => Err(format!("no field {path}")),
                Some(other) => Ok(Cow::Owned(other.to_string())),
            }
        }
    }
}

/// A JSON value by dotted path.
fn field<'v>(json: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(json, |v, key| v.get(key))
}

/// This service's envelope.
pub struct Native;

impl Profile for Native {
    fn kind(&self) -> ProfileKind {
        ProfileKind::Native
    }
    fn genesis_sequence(&self) -> Option<u64> {
        Some(1)
    }
    fn link<'a>(&self, item: &ChainItem<'a>) -> Result<Link<'a>, String> {
        let envelope = EventEnvelope::decode_head(item.payload).map_err(|e| e.to_string())?;
        let computed = dag_cbor_cid(item.payload);
        // The CID the event claims is its `Cim-Cid` header: that is what its successor links to,
        // also when the payload was altered after it was written.
        let header = (item.headers)("Cim-Cid");
        let claimed = header.and_then(|h| Cid::try_from(h).ok());
        let content = header.map(|text| match claimed {
            Some(c) if c == computed => Ok(()),
            _ => Err(format!(
                "Cim-Cid header says {text}, payload hashes to {computed}"
            )),
        });
        Ok(Link {
            chain: Cow::Owned(format!(
                "{}.{}",
                envelope.aggregate_type, envelope.aggregate_id
            )),
            cid: LinkCid::Binary(claimed.unwrap_or(computed)),
            prev: envelope.prev.map(LinkCid::Binary),
            sequence: Some(envelope.sequence),
            content,
        })
    }
}

/// cim-ipld `ChainedContent`.
pub struct CimIpld {
    pub chain_by: ChainBy,
}

/// The fields of a `ChainedContent` message, with `content` kept as its exact bytes.
#[derive(serde::Deserialize)]
struct ChainedContent<'a> {
    #[serde(borrow)]
    content: &'a RawValue,
    #[serde(borrow)]
    cid: Cow<'a, str>,
    #[serde(borrow)]
    previous_cid: Option<Cow<'a, str>>,
    sequence: u64,
}

/// Multihash code of BLAKE3-256.
const BLAKE3: u64 = 0x1e;

impl Profile for CimIpld {
    fn kind(&self) -> ProfileKind {
        ProfileKind::CimIpld
    }
    fn genesis_sequence(&self) -> Option<u64> {
        Some(0)
    }
    fn link<'a>(&self, item: &ChainItem<'a>) -> Result<Link<'a>, String> {
        let c: ChainedContent<'a> = serde_json::from_slice(item.payload)
            .map_err(|e| format!("not a ChainedContent: {e}"))?;
        // The hashed bytes are serde_json's of {content, previous_cid, sequence} in that order.
        let mut hashed = Vec::with_capacity(c.content.get().len() + 96);
        hashed.extend_from_slice(b"{\"content\":");
        hashed.extend_from_slice(c.content.get().as_bytes());
        hashed.extend_from_slice(b",\"previous_cid\":");
        serde_json::to_writer(&mut hashed, &c.previous_cid).expect("writing to memory");
        write!(hashed, ",\"sequence\":{}}}", c.sequence).expect("writing to memory");
        let digest = blake3::hash(&hashed);
        let content = match Cid::try_from(c.cid.as_ref()) {
            Err(e) => Err(format!("cid {:?} is not a CID: {e}", c.cid)),
            // The CID's codec label varies between cim-ipld versions; the multihash is what counts.
            Ok(claimed) if claimed.hash().code() != BLAKE3 => {
                Err(format!("cid {} is not a BLAKE3 CID", c.cid))
            }
            Ok(claimed) if claimed.hash().digest() != digest.as_bytes() => Err(format!(
                "CID mismatch: expected {}, calculated blake3 {}",
                c.cid,
                digest.to_hex()
            )),
            Ok(_) => Ok(()),
        };
        let chain = match &self.chain_by {
            ChainBy::Field(_) => chain_key(
                &self.chain_by,
                item,
                Some(&serde_json::from_slice(item.payload).map_err(|e| e.to_string())?),
            )?,
            other => chain_key(other, item, None)?,
        };
        Ok(Link {
            chain,
            cid: LinkCid::Text(c.cid),
            prev: c.previous_cid.map(LinkCid::Text),
            sequence: Some(c.sequence),
            content: Some(content),
        })
    }
}

/// cim-events `X-CID` / `X-Parent-CID` headers.
pub struct XCidHeaders {
    pub chain_by: ChainBy,
}

impl Profile for XCidHeaders {
    fn kind(&self) -> ProfileKind {
        ProfileKind::XCidHeaders
    }
    fn genesis_sequence(&self) -> Option<u64> {
        None
    }
    fn link<'a>(&self, item: &ChainItem<'a>) -> Result<Link<'a>, String> {
        let cid = (item.headers)("X-CID")
            .filter(|c| !c.is_empty())
            .ok_or("no X-CID header")?;
        let prev = (item.headers)("X-Parent-CID")
            .filter(|c| !c.is_empty())
            .map(|p| LinkCid::Text(Cow::Borrowed(p)));
        // cim-events hashes the stored event's JSON as serde_json writes it with `"cid":null`,
        // then publishes the same JSON with the CID filled in: put the null back and hash.
        // The top-level `cid` follows `event_data` and `header`, so the last occurrence is it.
        let text = std::str::from_utf8(item.payload).map_err(|_| "payload is not UTF-8")?;
        let needle = format!("\"cid\":\"{cid}\"");
        let content = match text.rfind(&needle) {
            None => Err(format!("the payload does not carry its cid {cid}")),
            Some(at) => {
                let hashed = format!("{}\"cid\":null{}", &text[..at], &text[at + needle.len()..]);
                let computed = cim_backup_contracts::cid::raw_cid(hashed.as_bytes());
                match Cid::try_from(cid) {
                    Ok(claimed) if claimed.hash() == computed.hash() => Ok(()),
                    Ok(_) => Err(format!(
                        "X-CID {cid} does not match the content (sha2-256 gives {computed})"
                    )),
                    Err(e) => Err(format!("X-CID {cid:?} is not a CID: {e}")),
                }
            }
        };
        let json = match &self.chain_by {
            ChainBy::Field(_) => {
                Some(serde_json::from_slice::<Value>(item.payload).map_err(|e| e.to_string())?)
            }
            _ => None,
        };
        let chain = chain_key(&self.chain_by, item, json.as_ref())?;
        Ok(Link {
            chain,
            cid: LinkCid::Text(Cow::Borrowed(cid)),
            prev,
            sequence: None,
            content: Some(content),
        })
    }
}

/// Links only, from configurable JSON fields.
pub struct LinkOnly {
    pub chain_by: ChainBy,
    pub cid_field: String,
    pub previous_field: String,
    pub sequence_field: Option<String>,
}

impl Profile for LinkOnly {
    fn kind(&self) -> ProfileKind {
        ProfileKind::LinkOnly
    }
    fn genesis_sequence(&self) -> Option<u64> {
        None
    }
    fn link<'a>(&self, item: &ChainItem<'a>) -> Result<Link<'a>, String> {
        let json: Value = serde_json::from_slice(item.payload)
            .map_err(|e| format!("payload is not JSON: {e}"))?;
        let text = |path: &str| match field(&json, path) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        };
        let cid = text(&self.cid_field).ok_or_else(|| format!("no field {}", self.cid_field))?;
        let sequence = match &self.sequence_field {
            Some(f) => Some(
                field(&json, f)
                    .and_then(Value::as_u64)
                    .ok_or_else(|| format!("no numeric field {f}"))?,
            ),
            None => None,
        };
        let chain = chain_key(&self.chain_by, item, Some(&json))?;
        Ok(Link {
            chain,
            cid: LinkCid::Text(Cow::Owned(cid)),
            prev: text(&self.previous_field).map(|p| LinkCid::Text(Cow::Owned(p))),
            sequence,
            content: None,
        })
    }
}

#[derive(Debug, Clone)]
struct Head {
    cid: LinkCid<'static>,
    sequence: Option<u64>,
    stream_seq: u64,
    time_ns: i64,
}

/// The state of one chain after a walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainState {
    /// CID and stream sequence of the chain's last good event.
    pub head_cid: String,
    pub head_seq: u64,
    /// Stream sequence of the chain's first finding, if any.
    pub first_break: Option<u64>,
}

/// The place a damaged event claims in its chain (after a `cid_mismatch`): its successor may
/// link to it.
#[derive(Debug, Clone)]
struct Claimed {
    cid: LinkCid<'static>,
    sequence: Option<u64>,
}

/// Walks chains incrementally: feed messages in stream order, collect findings.
pub struct ChainWalker {
    profile: Box<dyn Profile + Send + Sync>,
    heads: HashMap<String, Head>,
    /// Chains whose latest event was damaged, with the place it claimed.
    damaged: HashMap<String, Claimed>,
    broken: HashMap<String, u64>,
    checked: u64,
    /// Trust each chain's first event (a walk that starts mid-stream cannot see predecessors).
    anchored: bool,
}

impl ChainWalker {
    pub fn new(profile: Box<dyn Profile + Send + Sync>) -> Self {
        ChainWalker {
            profile,
            heads: HashMap::new(),
            damaged: HashMap::new(),
            broken: HashMap::new(),
            checked: 0,
            anchored: false,
        }
    }

    /// A walker for a range that starts after the stream's first message: each chain's first
    /// event in the range is its anchor (its predecessor lies before the range), so breaks
    /// before a chain's first event in the range are not seen — start earlier to cover them.
    pub fn anchored(profile: Box<dyn Profile + Send + Sync>) -> Self {
        ChainWalker {
            anchored: true,
            ..Self::new(profile)
        }
    }

    pub fn kind(&self) -> ProfileKind {
        self.profile.kind()
    }

    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// Chains seen so far.
    pub fn chains(&self) -> usize {
        self.heads.len()
    }

    /// Chains with at least one finding.
    pub fn chains_broken(&self) -> usize {
        self.broken.len()
    }

    /// Each chain's head and first break.
    pub fn chain_states(&self) -> impl Iterator<Item = (&str, ChainState)> {
        self.heads.iter().map(|(chain, h)| {
            (
                chain.as_str(),
                ChainState {
                    head_cid: h.cid.to_string(),
                    head_seq: h.stream_seq,
                    first_break: self.broken.get(chain).copied(),
                },
            )
        })
    }

    /// Checks one message; returns the findings it causes (usually none).
    pub fn check(&mut self, item: ChainItem<'_>) -> Vec<Finding> {
        self.checked += 1;
        let link = match self.profile.link(&item) {
            Ok(link) => link,
            Err(detail) => {
                return vec![self.finding(&item, None, FindingKind::Undecodable, detail, None)];
            }
        };
        // The head is only read here; cloning it per message would cost more than the check.
        let head = self.heads.get(link.chain.as_ref());
        let last_good = head.map(|h| (h.stream_seq, h.time_ns));
        if let Some(Err(detail)) = &link.content {
            // Content that does not match its CID is not trusted as the chain's head; the place
            // it claims is remembered, so that its successor is not reported a second time.
            let claimed = Claimed {
                cid: link.cid.clone().into_owned(),
                sequence: link.sequence,
            };
            let finding = self.finding(
                &item,
                Some(&link.chain),
                FindingKind::CidMismatch,
                detail.clone(),
                last_good,
            );
            self.damaged.insert(link.chain.into_owned(), claimed);
            return vec![finding];
        }
        // The event after a damaged one continues the chain cleanly when it links to the place
        // the damaged event claimed (altered in place); otherwise it is judged against the last
        // good event (the damaged message was an insertion).
        let after_damage = match self.damaged.remove(link.chain.as_ref()) {
            Some(claimed) => {
                link.prev.as_ref().is_some_and(|p| p.same(&claimed.cid))
                    && match (link.sequence, claimed.sequence) {
                        (Some(s), Some(c)) => s == c + 1,
                        _ => true,
                    }
            }
            None => false,
        };
        let mut found = None;
        match head {
            _ if after_damage => {}
            None if self.anchored => {}
            None => {
                let genesis = self.profile.genesis_sequence();
                let not_first = link.prev.is_some()
                    || (genesis.is_some() && link.sequence.is_some() && link.sequence != genesis);
                if not_first {
                    let sequence = link
                        .sequence
                        .map_or_else(|| "none".to_owned(), |s| s.to_string());
                    let prev = link
                        .prev
                        .as_ref()
                        .map_or_else(|| "none".to_owned(), ToString::to_string);
                    let detail =
                        format!("first event seen has sequence {sequence} and predecessor {prev}");
                    found = Some((FindingKind::MissingPredecessor, detail));
                }
            }
            Some(h) if h.cid.same(&link.cid) => {
                let finding = self.finding(
                    &item,
                    Some(&link.chain),
                    FindingKind::Duplicate,
                    format!("event {} appears again", link.cid),
                    last_good,
                );
                return vec![finding];
            }
            Some(h) => match (link.sequence, h.sequence) {
                (Some(s), Some(hs)) if s <= hs => {
                    let detail = format!("sequence {s} after {hs}");
                    return vec![self.finding(
                        &item,
                        Some(&link.chain),
                        FindingKind::OutOfOrder,
                        detail,
                        last_good,
                    )];
                }
                (Some(s), Some(hs)) if s > hs + 1 => {
                    found = Some((FindingKind::SequenceGap, format!("sequence {s} after {hs}")))
                }
                _ if !link.prev.as_ref().is_some_and(|p| p.same(&h.cid)) => {
                    let named = link
                        .prev
                        .as_ref()
                        .map_or_else(|| "none".to_owned(), ToString::to_string);
                    found = Some((
                        FindingKind::BrokenLink,
                        format!("predecessor is {named}, expected {}", h.cid),
                    ));
                }
                _ => {}
            },
        }
        let findings = found
            .map(|(kind, detail)| self.finding(&item, Some(&link.chain), kind, detail, last_good))
            .into_iter()
            .collect();
        match self.heads.get_mut(link.chain.as_ref()) {
            Some(head) => {
                head.cid.set(link.cid);
                head.sequence = link.sequence;
                head.stream_seq = item.stream_seq;
                head.time_ns = item.time_ns;
            }
            None => {
                let head = Head {
                    cid: link.cid.into_owned(),
                    sequence: link.sequence,
                    stream_seq: item.stream_seq,
                    time_ns: item.time_ns,
                };
                self.heads.insert(link.chain.into_owned(), head);
            }
        }
        findings
    }

    fn finding(
        &mut self,
        item: &ChainItem<'_>,
        chain: Option<&str>,
        kind: FindingKind,
        detail: String,
        last_good: Option<(u64, i64)>,
    ) -> Finding {
        if let Some(chain) = chain {
            self.broken
                .entry(chain.to_owned())
                .or_insert(item.stream_seq);
        }
        Finding {
            stream_seq: item.stream_seq,
            subject: item.subject.to_owned(),
            aggregate: chain.filter(|c| !c.is_empty()).map(str::to_owned),
            kind,
            detail,
            last_good_seq: last_good.map(|l| l.0),
            last_good_time: last_good
                .and_then(|l| time::OffsetDateTime::from_unix_timestamp_nanos(l.1 as i128).ok()),
        }
    }
}
