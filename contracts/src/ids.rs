//! One newtype per kind of id, so a job id is never passed where a backup id belongs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::cid::Cid;
use crate::subjects::is_subject_token;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("job id {0:?} is not usable: it must be 1-64 characters of A-Z a-z 0-9 - _")]
    BadJobId(String),
    #[error("backup id {0:?} is not a CID: {1}")]
    BadBackupId(String, String),
    #[error("{0:?} is not a CID: {1}")]
    BadCid(String, String),
}

/// Id of a job (backup, restore, verify or check). It is the aggregate id, so it appears as a
/// subject token and as a KV key: only `[A-Za-z0-9_-]`, at most 64 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(String);

impl JobId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The placeholder id a dry run computes with (it never records anything).
    pub fn dry_run() -> JobId {
        JobId("dry-run".to_owned())
    }
}

impl FromStr for JobId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && is_subject_token(s)
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(JobId(s.to_owned()))
        } else {
            Err(IdError::BadJobId(s.to_owned()))
        }
    }
}

macro_rules! cid_id {
    ($(#[$doc:meta])* $name:ident, $err:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Cid);

        impl $name {
            pub fn cid(&self) -> &Cid {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Cid::try_from(s).map($name).map_err(|e| IdError::$err(s.to_owned(), e.to_string()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl From<Cid> for $name {
            fn from(cid: Cid) -> Self {
                $name(cid)
            }
        }
    };
}

cid_id!(
    /// Id of a stored backup: the CID of its manifest, so the id itself verifies the manifest.
    BackupId,
    BadBackupId
);
cid_id!(
    /// CID of one event payload (DESIGN §5).
    EventCid,
    BadCid
);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Ids travel as strings in JSON and in the event envelope: readable by any tool, and a CID
/// string is self-describing. (CID *links* in the envelope, such as `prev`, use CBOR tag 42.)
macro_rules! string_serde {
    ($name:ident) => {
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
string_serde!(JobId);
string_serde!(BackupId);
string_serde!(EventCid);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_must_be_subject_and_key_safe() {
        assert!(
            "0193f1c2-aaaa-7bbb-8ccc-0123456789ab"
                .parse::<JobId>()
                .is_ok()
        );
        for bad in ["", "a.b", "a b", "a*", "a>", "ä", &"x".repeat(65)] {
            assert!(bad.parse::<JobId>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn backup_id_parses_cid_and_names_bad_input() {
        let cid = crate::cid::dag_cbor_cid(b"\xa0");
        let id: BackupId = cid.to_string().parse().unwrap();
        assert_eq!(id.0, cid);
        let err = "not-a-cid".parse::<BackupId>().unwrap_err();
        assert!(err.to_string().contains("not-a-cid"));
    }
}
