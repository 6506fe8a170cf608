//! Parts of a server snapshot (snapshot mode): runs of the snapshot's bytes, stored as objects
//! `parts/<cid>` (raw codec, sha2-256 of the stored bytes; age-encrypted if the backup is). The
//! bytes are the server's own format and are not opened here; concatenated in order they are
//! what `$JS.API.STREAM.RESTORE` takes.

use bytes::Bytes;
use cim_backup_contracts::cid::{raw_cid, verifies};
use cim_backup_contracts::events::PartInfo;

use super::error::ArchiveError;
use crate::keys::Keys;

pub fn key(info: &PartInfo) -> String {
    format!("parts/{}", info.cid)
}

/// Names (and encrypts, for `recipients`) a run of snapshot bytes.
pub fn seal(
    raw: Vec<u8>,
    recipients: Option<&[String]>,
) -> Result<(Bytes, PartInfo), ArchiveError> {
    let raw_bytes = raw.len() as u64;
    let stored = match recipients {
        Some(r) => Keys::encrypt(r, &raw).map_err(|e| ArchiveError::Key {
            object: "(new part)".into(),
            message: e.to_string(),
        })?,
        None => raw,
    };
    let info = PartInfo {
        cid: raw_cid(&stored),
        raw_bytes,
        stored_bytes: stored.len() as u64,
    };
    Ok((Bytes::from(stored), info))
}

/// Checks a stored part against its manifest entry and returns its snapshot bytes.
pub fn open(stored: &[u8], info: &PartInfo, keys: Option<&Keys>) -> Result<Vec<u8>, ArchiveError> {
    let object = key(info);
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
    let raw = match keys {
        Some(keys) => keys.decrypt(stored).map_err(|e| ArchiveError::Key {
            object: object.clone(),
            message: e.to_string(),
        })?,
        None => stored.to_vec(),
    };
    if raw.len() as u64 != info.raw_bytes {
        return Err(ArchiveError::corrupt(
            &object,
            format!(
                "holds {} snapshot bytes, the manifest says {}",
                raw.len(),
                info.raw_bytes
            ),
        ));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip_and_detect_tampering() {
        let (stored, info) = seal(b"snapshot bytes".to_vec(), None).unwrap();
        assert_eq!(open(&stored, &info, None).unwrap(), b"snapshot bytes");
        let mut bad = stored.to_vec();
        bad[0] ^= 1;
        assert!(
            open(&bad, &info, None)
                .unwrap_err()
                .to_string()
                .contains("does not match its CID")
        );
    }
}
