//! Fixtures for aggregate tests.

use cim_backup_contracts::cid::{Cid, dag_cbor_cid, raw_cid};
use cim_backup_contracts::commands::CompressionAlgorithm;
use cim_backup_contracts::errors::ErrorCode;
use cim_backup_contracts::events::*;
use time::OffsetDateTime;

pub fn admission() -> Admission {
    Admission {
        instance: "test".into(),
        idempotency_key: None,
        request_digest: "00".repeat(32),
    }
}

pub fn backup_spec(streams: &[&str]) -> BackupAccepted {
    BackupAccepted {
        trees: Vec::new(),
        parallel: None,
        streams: streams.iter().map(|s| s.to_string()).collect(),
        destination: "mem".into(),
        destination_url: "memory://mem".into(),
        compression: Compression {
            algorithm: CompressionAlgorithm::Zstd,
            level: 3,
        },
        segment_bytes: 1 << 20,
        incremental: true,
        mode: BackupMode::Messages,
        encryption: None,
        admission: admission(),
    }
}

pub fn restore_spec(stream: &str, target: &str) -> RestoreAccepted {
    RestoreAccepted {
        backup: manifest_cid(),
        source: "mem".into(),
        source_url: "memory://mem".into(),
        stream: stream.into(),
        target: target.into(),
        selection: Selection::default(),
        options: RestoreOptions::default(),
        admission: admission(),
    }
}

pub fn verify_spec() -> VerifyAccepted {
    VerifyAccepted {
        backup: manifest_cid(),
        source: "mem".into(),
        source_url: "memory://mem".into(),
        mode: VerifyMode::Deep,
        admission: admission(),
    }
}

pub fn segment(first: u64, last: u64) -> SegmentInfo {
    SegmentInfo {
        cid: raw_cid(format!("{first}-{last}").as_bytes()),
        first_seq: first,
        last_seq: last,
        first_time: OffsetDateTime::UNIX_EPOCH,
        last_time: OffsetDateTime::UNIX_EPOCH,
        records: last - first + 1,
        raw_bytes: 10 * (last - first + 1),
        stored_bytes: 3 * (last - first + 1),
    }
}

pub fn manifest_cid() -> Cid {
    dag_cbor_cid(b"\xa0")
}

pub fn failure() -> JobFailed {
    JobFailed {
        code: ErrorCode::Corrupt,
        message: "bad".into(),
        object: Some("segments/x".into()),
        record: None,
    }
}
