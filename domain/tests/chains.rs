//! Every chain profile against generated chains with injected corruption: each break is reported
//! at the right stream sequence and with the right kind, and a clean stream is clean.

use cim_backup_contracts::cid::{Cid, raw_cid};
use cim_backup_contracts::events::*;
use cim_backup_contracts::integrity::{ChainBy, ChainProfile, Finding, FindingKind, ProfileKind};
use cim_backup_contracts::views::JobKind;
use cim_backup_domain::chain::{ChainItem, ChainWalker, profile};
use serde_json::json;

/// One generated message.
#[derive(Clone, Debug)]
struct Msg {
    subject: String,
    headers: Vec<(String, String)>,
    payload: Vec<u8>,
}

fn walk(spec: &ChainProfile, msgs: &[Msg]) -> Vec<Finding> {
    let mut walker = ChainWalker::new(profile(spec));
    let mut findings = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        let lookup = |name: &str| {
            m.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        findings.extend(walker.check(ChainItem {
            stream_seq: i as u64 + 1,
            time_ns: i as i64,
            subject: &m.subject,
            headers: &lookup,
            payload: &m.payload,
        }));
    }
    findings
}

fn kinds(findings: &[Finding]) -> Vec<(FindingKind, u64)> {
    findings.iter().map(|f| (f.kind, f.stream_seq)).collect()
}

fn spec(profile: ProfileKind, chain_by: ChainBy) -> ChainProfile {
    ChainProfile {
        profile,
        chain_by: Some(chain_by),
        cid_field: None,
        previous_field: None,
        sequence_field: None,
    }
}

// --- generators: `n` events of `aggregates` chains, interleaved round robin -------------------

fn native(n: u64, aggregates: u64) -> Vec<Msg> {
    let mut prev = vec![None; aggregates as usize];
    (0..n)
        .map(|i| {
            let a = (i % aggregates) as usize;
            let env = EventEnvelope {
                aggregate_type: JobKind::Backup,
                aggregate_id: format!("job-{a}").parse().unwrap(),
                sequence: i / aggregates + 1,
                prev: prev[a],
                meta: EventMeta {
                    event_id: format!("e{i}"),
                    time: time::OffsetDateTime::UNIX_EPOCH,
                    correlation_id: "c".into(),
                    causation_id: "c".into(),
                },
                event: JobEvent::Backup(BackupEvent::BackupCancelRequested(CancelRequested {
                    reason: Some(format!("r{i}")),
                })),
            };
            let (bytes, cid) = env.encode_with_cid();
            prev[a] = Some(cid);
            Msg {
                subject: format!("cim.backup.evt.backup.job-{a}.X"),
                headers: vec![("Cim-Cid".into(), cid.to_string())],
                payload: bytes,
            }
        })
        .collect()
}

/// cim-ipld ChainedContent: CIDv1 (private codec 0x0200) over BLAKE3 of {content, previous_cid, sequence}.
fn cim_ipld(n: u64, aggregates: u64) -> Vec<Msg> {
    let mut prev: Vec<Option<String>> = vec![None; aggregates as usize];
    (0..n)
        .map(|i| {
            let a = (i % aggregates) as usize;
            let sequence = i / aggregates;
            let content = json!({ "node": a, "label": format!("node-{i}"), "weight": i * 7 });
            let hashed = json!({ "content": content, "previous_cid": prev[a], "sequence": sequence });
            // serde_json::json! keeps insertion order only with preserve_order; build the bytes by hand.
            let hashed = format!(
                "{{\"content\":{},\"previous_cid\":{},\"sequence\":{}}}",
                serde_json::to_string(&hashed["content"]).unwrap(),
                serde_json::to_string(&prev[a]).unwrap(),
                sequence
            );
            let digest = blake3::hash(hashed.as_bytes());
            let mh = cid::multihash::Multihash::<64>::wrap(0x1e, digest.as_bytes()).unwrap();
            let cid = Cid::new_v1(0x0200, mh).to_string();
            let payload = format!(
                "{{\"content\":{},\"cid\":\"{cid}\",\"previous_cid\":{},\"sequence\":{sequence},\"timestamp\":\"2026-11-25T12:00:00Z\"}}",
                serde_json::to_string(&content).unwrap(),
                serde_json::to_string(&prev[a]).unwrap()
            );
            prev[a] = Some(cid);
            Msg { subject: format!("cim.graph.{a}"), headers: vec![], payload: payload.into_bytes() }
        })
        .collect()
}

/// cim-events' `StoredEvent` (cim repo, `modules/cim-events/src/event_store.rs`), field for
/// field in its declaration order, as serde_json writes it: `sequence` is 0 (JetStream assigns
/// it), `event_data` is a `serde_json::Value` (keys sorted), timestamps are chrono's RFC 3339.
#[derive(serde::Serialize)]
struct StoredEvent {
    sequence: u64,
    aggregate_id: String,
    event_type: String,
    event_data: serde_json::Value,
    header: EventHeader,
    cid: Option<String>,
    parent_cid: Option<String>,
    timestamp: String,
}

#[derive(serde::Serialize)]
struct EventHeader {
    message_id: String,
    correlation_id: String,
    causation_id: Option<String>,
    timestamp: String,
}

/// What cim-events publishes for `event`: the CID is CIDv1 raw sha2-256 over the JSON with
/// `"cid":null`, then the same JSON with the CID filled in is the payload, and the CIDs travel in
/// `X-CID` / `X-Parent-CID` (absent for an aggregate's first event).
fn publish_like_cim_events(mut event: StoredEvent) -> (String, Msg) {
    assert!(event.cid.is_none());
    let cid = raw_cid(&serde_json::to_vec(&event).unwrap()).to_string();
    let mut headers = vec![
        ("X-Message-ID".to_string(), event.header.message_id.clone()),
        (
            "X-Correlation-ID".to_string(),
            event.header.correlation_id.clone(),
        ),
        ("X-CID".to_string(), cid.clone()),
    ];
    if let Some(parent) = &event.parent_cid {
        headers.push(("X-Parent-CID".into(), parent.clone()));
    }
    let subject = format!("events.{}.{}", event.aggregate_id, event.event_type);
    event.cid = Some(cid.clone());
    let payload = serde_json::to_vec(&event).unwrap();
    (
        cid,
        Msg {
            subject,
            headers,
            payload,
        },
    )
}

fn x_cid(n: u64, aggregates: u64) -> Vec<Msg> {
    let mut prev: Vec<Option<String>> = vec![None; aggregates as usize];
    (0..n)
        .map(|i| {
            let a = (i % aggregates) as usize;
            let event = StoredEvent {
                sequence: 0,
                aggregate_id: format!("agg{a}"),
                event_type: "updated".into(),
                event_data: json!({ "value": i, "label": format!("v{i}") }),
                header: EventHeader {
                    message_id: format!("00000000-0000-4000-8000-{i:012}"),
                    correlation_id: format!("00000000-0000-4000-9000-{a:012}"),
                    causation_id: None,
                    timestamp: "2025-07-31T19:27:35.123456789Z".into(),
                },
                cid: None,
                parent_cid: prev[a].clone(),
                timestamp: format!("2025-07-31T19:27:{:02}.5Z", i % 60),
            };
            let (cid, msg) = publish_like_cim_events(event);
            prev[a] = Some(cid);
            msg
        })
        .collect()
}

#[test]
fn x_cid_hashes_the_stored_event_with_a_null_cid_as_cim_events_does() {
    // Pinned independently (Python: sha256 of these exact bytes, CIDv1 raw, base32):
    // {"sequence":0,"aggregate_id":"order-1",...,"cid":null,"parent_cid":null,"timestamp":...}
    let event = StoredEvent {
        sequence: 0,
        aggregate_id: "order-1".into(),
        event_type: "OrderPlaced".into(),
        event_data: json!({ "currency": "EUR", "amount": 42 }),
        header: EventHeader {
            message_id: "6f1c2d9e-8c43-4a8b-9d0e-2b7f1a3c5d47".into(),
            correlation_id: "a3e9b0c1-5f6d-4e2a-8b7c-9d0e1f2a3b4c".into(),
            causation_id: None,
            timestamp: "2025-07-31T19:27:35.123456789Z".into(),
        },
        cid: None,
        parent_cid: None,
        timestamp: "2025-07-31T19:27:35.123457Z".into(),
    };
    let (cid, msg) = publish_like_cim_events(event);
    assert_eq!(
        cid,
        "bafkreiffavcbpp4huviut2i25amsppzpnym4vosf2ihtic27fm4hfv4rn4"
    );
    let payload = String::from_utf8(msg.payload.clone()).unwrap();
    assert!(
        payload.contains(&format!(",\"cid\":\"{cid}\",\"parent_cid\":null,")),
        "{payload}"
    );
    let spec = spec(ProfileKind::XCidHeaders, ChainBy::SubjectToken(1));
    assert_eq!(
        walk(&spec, std::slice::from_ref(&msg)),
        vec![],
        "a genuine event is clean"
    );
    // The rule is exactly "null": the same event hashed with an empty string is not it.
    let empty = payload.replace(&format!("\"cid\":\"{cid}\""), "\"cid\":\"\"");
    assert_ne!(raw_cid(empty.as_bytes()).to_string(), cid);
}

/// The old cim-domain store: {stored_event, event_with_cid: {event, cid, previous_cid}}.
fn link_only(n: u64, aggregates: u64) -> Vec<Msg> {
    let mut prev: Vec<Option<String>> = vec![None; aggregates as usize];
    (0..n)
        .map(|i| {
            let a = (i % aggregates) as usize;
            let cid = format!("cid-{i}");
            let payload = json!({ "stored_event": { "aggregate_id": format!("agg{a}") }, "event_with_cid": { "event": { "i": i }, "cid": cid, "previous_cid": prev[a] } });
            prev[a] = Some(cid);
            Msg { subject: "domain.events".into(), headers: vec![], payload: serde_json::to_vec(&payload).unwrap() }
        })
        .collect()
}

fn link_only_spec() -> ChainProfile {
    ChainProfile {
        profile: ProfileKind::LinkOnly,
        chain_by: Some(ChainBy::Field("stored_event.aggregate_id".into())),
        cid_field: Some("event_with_cid.cid".into()),
        previous_field: Some("event_with_cid.previous_cid".into()),
        sequence_field: None,
    }
}

/// One profile under test: its generator, its spec, whether it numbers events, whether it
/// hashes content.
struct Case {
    name: &'static str,
    generate: fn(u64, u64) -> Vec<Msg>,
    spec: ChainProfile,
    numbered: bool,
    hashed: bool,
}

fn cases() -> Vec<Case> {
    let case = |name, generate, spec, numbered, hashed| Case {
        name,
        generate,
        spec,
        numbered,
        hashed,
    };
    vec![
        case("native", native, ChainProfile::native(), true, true),
        case(
            "cim-ipld",
            cim_ipld,
            spec(ProfileKind::CimIpld, ChainBy::SubjectToken(2)),
            true,
            true,
        ),
        case(
            "x-cid-headers",
            x_cid,
            spec(ProfileKind::XCidHeaders, ChainBy::SubjectToken(1)),
            false,
            true,
        ),
        case("link-only", link_only, link_only_spec(), false, false),
    ]
}

#[test]
fn clean_streams_are_clean_for_every_profile() {
    for Case {
        name,
        generate,
        spec,
        ..
    } in cases()
    {
        assert_eq!(walk(&spec, &generate(60, 3)), vec![], "{name}");
    }
}

#[test]
fn a_flipped_payload_byte_is_a_cid_mismatch_where_content_is_hashed() {
    for Case {
        name,
        generate,
        spec,
        hashed,
        ..
    } in cases()
    {
        let mut msgs = generate(30, 3);
        // Flip a byte inside the event's hashed data: the "13" each generator writes into event
        // 13 (native: reason "r13"; cim-ipld: label "node-13"; x-cid: "value":13).
        let m = &mut msgs[13];
        let at = m
            .payload
            .windows(3)
            .position(|w| matches!(w[0], b'r' | b'-' | b':') && &w[1..] == b"13")
            .unwrap_or(0)
            + 2;
        m.payload[at] = b'4';
        let found = kinds(&walk(&spec, &msgs));
        if hashed {
            // One damaged event is one finding: the chain's next event (index 16, which links to
            // the CID the damaged one claims) is clean.
            assert_eq!(
                found,
                vec![(FindingKind::CidMismatch, 14)],
                "{name}: {found:?}"
            );
        } else {
            // link-only cannot see content, only links: a changed CID is a broken link next.
            let mut msgs = generate(30, 3);
            let text = String::from_utf8(msgs[13].payload.clone())
                .unwrap()
                .replace("cid-13", "cid-1X");
            msgs[13].payload = text.into_bytes();
            let found = kinds(&walk(&spec, &msgs));
            assert_eq!(
                found,
                vec![(FindingKind::BrokenLink, 17)],
                "{name}: the next event of that chain names the real cid"
            );
        }
    }
}

#[test]
fn an_inserted_damaged_copy_is_one_finding_and_the_chain_goes_on_from_the_last_good_event() {
    for Case {
        name,
        generate,
        spec,
        hashed,
        ..
    } in cases()
    {
        if !hashed {
            continue;
        }
        let mut msgs = generate(30, 3);
        // A copy of event 13 with one byte changed, inserted before it: the copy is damaged; the
        // genuine event 13 that follows links to the last good event of its chain.
        let mut copy = msgs[13].clone();
        let at = copy
            .payload
            .windows(3)
            .position(|w| matches!(w[0], b'r' | b'-' | b':') && &w[1..] == b"13")
            .unwrap()
            + 2;
        copy.payload[at] = b'4';
        msgs.insert(13, copy);
        assert_eq!(
            kinds(&walk(&spec, &msgs)),
            vec![(FindingKind::CidMismatch, 14)],
            "{name}"
        );
    }
}

#[test]
fn a_deleted_message_is_a_gap_or_a_broken_link_at_the_next_event_of_its_chain() {
    for Case {
        name,
        generate,
        spec,
        numbered,
        ..
    } in cases()
    {
        let mut msgs = generate(30, 3);
        msgs.remove(12); // event 4 of chain 0; chain 0 continues at index 14 → stream seq 15
        let expected = if numbered {
            FindingKind::SequenceGap
        } else {
            FindingKind::BrokenLink
        };
        assert_eq!(kinds(&walk(&spec, &msgs)), vec![(expected, 15)], "{name}");
    }
}

#[test]
fn a_forged_predecessor_is_a_broken_link() {
    // Re-link event 10 (chain 1) to chain 2's head with a consistent CID: only the link is wrong.
    let native_msgs = {
        let mut msgs = native(12, 3);
        let mut env = EventEnvelope::decode(&msgs[10].payload).unwrap();
        env.prev = Some(cim_backup_contracts::EventCid(
            cim_backup_contracts::cid::dag_cbor_cid(&msgs[8].payload),
        ));
        let (bytes, cid) = env.encode_with_cid();
        msgs[10].payload = bytes;
        msgs[10].headers = vec![("Cim-Cid".into(), cid.to_string())];
        msgs
    };
    let found = walk(&ChainProfile::native(), &native_msgs);
    assert_eq!(kinds(&found), vec![(FindingKind::BrokenLink, 11)]);
    assert_eq!(
        found[0].last_good_seq,
        Some(8),
        "the chain's last good event"
    );

    let mut links = link_only(12, 3);
    let text = String::from_utf8(links[10].payload.clone())
        .unwrap()
        .replace("\"cid-7\"", "\"cid-8\"");
    links[10].payload = text.into_bytes();
    assert_eq!(
        kinds(&walk(&link_only_spec(), &links)),
        vec![(FindingKind::BrokenLink, 11)]
    );
}

#[test]
fn a_reordered_pair_and_a_duplicate_are_named() {
    for Case {
        name,
        generate,
        spec,
        numbered,
        ..
    } in cases()
    {
        let mut msgs = generate(30, 3);
        msgs.swap(12, 15); // two events of chain 0 trade places
        let found = kinds(&walk(&spec, &msgs));
        if numbered {
            assert_eq!(
                found,
                vec![
                    (FindingKind::SequenceGap, 13),
                    (FindingKind::OutOfOrder, 16)
                ],
                "{name}"
            );
        } else {
            assert_eq!(
                found.first(),
                Some(&(FindingKind::BrokenLink, 13)),
                "{name}: {found:?}"
            );
        }
        let mut msgs = generate(30, 3);
        let again = msgs[12].clone();
        msgs.insert(13, again);
        assert_eq!(
            kinds(&walk(&spec, &msgs)),
            vec![(FindingKind::Duplicate, 14)],
            "{name}"
        );
    }
}

#[test]
fn ten_thousand_interleaved_aggregates() {
    for Case {
        name,
        generate,
        spec,
        ..
    } in cases()
    {
        let clean = generate(30_000, 10_000);
        assert_eq!(walk(&spec, &clean), vec![], "{name}: clean");
        // The second event of aggregate 5,000 (index 15,000) goes missing: its third event
        // (index 25,000, stream seq 25,000 after the removal) is where the break shows.
        let mut msgs = clean;
        msgs.remove(15_000);
        let found = walk(&spec, &msgs);
        assert_eq!(found.len(), 1, "{name}: {:?}", kinds(&found));
        assert_eq!(found[0].stream_seq, 25_000, "{name}");
        assert_eq!(
            found[0].last_good_seq,
            Some(5_001),
            "{name}: its first event"
        );
    }
}
