//! Golden vectors: the exact bytes and CIDs of events. Any drift in encoding, key order, field
//! names or CID rules fails here — that drift would break every agent that verifies our chain.

use cim_backup_contracts::JobId;
use cim_backup_contracts::cid::{dag_cbor_cid, verifies};
use cim_backup_contracts::commands::CompressionAlgorithm;
use cim_backup_contracts::events::*;
use cim_backup_contracts::views::JobKind;
use time::macros::datetime;

fn meta(n: u32) -> EventMeta {
    EventMeta {
        event_id: format!("00000000-0000-7000-8000-00000000000{n}"),
        time: datetime!(2026-11-25 12:00:00.123456789 UTC),
        correlation_id: "corr-1".into(),
        causation_id: "cmd-1".into(),
    }
}

fn accepted() -> EventEnvelope {
    EventEnvelope {
        aggregate_type: JobKind::Backup,
        aggregate_id: "job-1".parse::<JobId>().unwrap(),
        sequence: 1,
        prev: None,
        meta: meta(1),
        event: JobEvent::Backup(BackupEvent::BackupAccepted(BackupAccepted {
            trees: Vec::new(),
            parallel: None,
            streams: vec!["EVENTS".into()],
            destination: "local".into(),
            destination_url: "file:///srv/backups".into(),
            compression: Compression {
                algorithm: CompressionAlgorithm::Zstd,
                level: 3,
            },
            segment_bytes: 8 << 20,
            incremental: true,
            mode: BackupMode::Messages,
            encryption: None,
            admission: Admission {
                instance: "node-1".into(),
                idempotency_key: None,
                request_digest: "ab".repeat(32),
            },
        })),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const ACCEPTED_HEX: &str = include_str!("golden/backup_accepted.hex");
const ACCEPTED_CID: &str = "bafyreifdbyi6nopwdnvfbkmuh6ltxwmra55gtbqwwwqfvyjp5k33tuvgey";
const STARTED_CID: &str = "bafyreig4t5j6pzgy3rbftfwqzqjkqkni4on3fuusupnxa5lvctz2p6wmxe";

#[test]
fn backup_accepted_bytes_and_cid_are_pinned() {
    let (bytes, cid) = accepted().encode_with_cid();
    assert_eq!(hex(&bytes), ACCEPTED_HEX.trim());
    assert_eq!(cid.to_string(), ACCEPTED_CID);
    assert!(verifies(&cid.0, &bytes));
}

#[test]
fn second_event_links_to_the_first_with_a_tag_42_link() {
    let (_, first) = accepted().encode_with_cid();
    let started = EventEnvelope {
        sequence: 2,
        prev: Some(first),
        meta: meta(2),
        event: JobEvent::Backup(BackupEvent::BackupStarted(BackupStarted {
            taken_at: datetime!(2026-11-25 12:00:01 UTC),
            streams: vec![StreamStart {
                cut: StreamCut {
                    stream: "EVENTS".into(),
                    first_seq: 1,
                    last_seq: 100,
                    messages: 100,
                    bytes: 52_500,
                    taken_at: datetime!(2026-11-25 12:00:01 UTC),
                    created: None,
                },
                config: r#"{"name":"EVENTS","subjects":["cim.>"]}"#.into(),
                parent: None,
                consumers: vec![],
            }],
            tool: "cim-backup 0.1.0".into(),
            notes: vec![],
            estimate: None,
        })),
        ..accepted()
    };
    let (bytes, cid) = started.encode_with_cid();
    assert_eq!(cid.to_string(), STARTED_CID);
    // CBOR tag 42 (0xd8 0x2a) followed by a byte string holding 0x00 + the CID bytes.
    let mut link = vec![0xd8, 0x2a, 0x58, 37, 0x00];
    link.extend_from_slice(&first.0.to_bytes());
    assert!(
        bytes.windows(link.len()).any(|w| w == link),
        "prev is not a tag-42 link"
    );
    let decoded = EventEnvelope::decode(&bytes).unwrap();
    assert_eq!(decoded, started);
    assert_eq!(decoded.prev, Some(first));
}

#[test]
fn decode_of_encode_is_identity_for_every_backup_event_type() {
    let env = accepted();
    let bytes = env.encode();
    assert_eq!(EventEnvelope::decode(&bytes).unwrap(), env);
    assert_eq!(dag_cbor_cid(&bytes), env.encode_with_cid().1.0);
}

#[test]
fn a_newer_event_version_is_refused_not_misread() {
    let mut bytes = accepted().encode();
    // `version` is encoded as the text key "version" followed by the small integer 0x01.
    let key = b"gversion";
    let pos = bytes.windows(key.len()).position(|w| w == key).unwrap();
    assert_eq!(bytes[pos + key.len()], 0x01);
    bytes[pos + key.len()] = 0x02;
    let err = EventEnvelope::decode(&bytes).unwrap_err();
    assert!(err.to_string().contains("version 2 is newer"), "{err}");
}

#[test]
fn unknown_event_type_is_a_named_error() {
    let mut bytes = accepted().encode();
    // Flip the event type name "BackupAccepted" to "BackupAcceptex" inside the payload.
    let pos = bytes
        .windows(14)
        .position(|w| w == b"BackupAccepted")
        .unwrap();
    bytes[pos + 13] = b'x';
    let err = EventEnvelope::decode(&bytes).unwrap_err();
    assert!(err.to_string().contains("BackupAcceptex"), "{err}");
}

#[test]
fn event_type_catalogue_is_stable() {
    let names: Vec<&str> = BackupEvent::TYPES.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "BackupAccepted",
            "BackupStarted",
            "SegmentStored",
            "BackupCompleted",
            "BackupFailed",
            "BackupCancelRequested",
            "BackupCancelled",
            "SnapshotTaken",
            "SnapshotPartStored",
            "TreeStored",
            "TreeProgressed"
        ]
    );
    let names: Vec<&str> = cim_backup_contracts::events::TreeRestoreEvent::TYPES
        .iter()
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(
        names,
        [
            "TreeRestoreAccepted",
            "TreeRestoreStarted",
            "TreeRestoreProgressed",
            "TreeRestored",
            "TreeRestoreCompleted",
            "TreeRestoreFailed",
            "TreeRestoreCancelRequested",
            "TreeRestoreCancelled"
        ]
    );
}

/// Prints the current vectors; run with `--ignored --nocapture` when a change is intended, then
/// review the diff of the pinned values like any other contract change.
#[test]
#[ignore]
fn print_vectors() {
    let (bytes, cid) = accepted().encode_with_cid();
    println!("accepted hex {}\naccepted cid {cid}", hex(&bytes));
}
