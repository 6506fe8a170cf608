//! CID rules of the audit contract (DESIGN §5).
//!
//! Every event payload is a DAG-CBOR block; its CID is **CIDv1, codec dag-cbor (0x71), multihash
//! sha2-256 over the exact payload bytes**. Backup manifests and archive segments are named the
//! same way (segments with the `raw` codec, since they are not DAG-CBOR), so one rule covers the
//! whole store. The functions here are the only place a CID is computed from bytes.

pub use ::cid::Cid;
use sha2::{Digest, Sha256};

/// Multicodec code of DAG-CBOR.
pub const DAG_CBOR: u64 = 0x71;
/// Multicodec code of raw bytes.
pub const RAW: u64 = 0x55;
/// Multihash code of sha2-256.
pub const SHA2_256: u64 = 0x12;
/// Multihash code of BLAKE3 (32-byte digest): names file chunks (docs/ARCHIVE.md §12.1).
pub const BLAKE3: u64 = 0x1e;

/// CIDv1 of a DAG-CBOR block: dag-cbor codec, sha2-256 over `bytes`.
pub fn dag_cbor_cid(bytes: &[u8]) -> Cid {
    cid_of(DAG_CBOR, bytes)
}

/// CIDv1 of opaque bytes: raw codec, sha2-256 over `bytes`.
pub fn raw_cid(bytes: &[u8]) -> Cid {
    cid_of(RAW, bytes)
}

/// CIDv1 with the given codec and a sha2-256 multihash of `bytes`.
pub fn cid_of(codec: u64, bytes: &[u8]) -> Cid {
    let digest = Sha256::digest(bytes);
    let multihash = ::cid::multihash::Multihash::<64>::wrap(SHA2_256, &digest)
        .expect("a 32-byte digest always fits a 64-byte multihash");
    Cid::new_v1(codec, multihash)
}

/// The id of a file chunk: CIDv1, raw codec, BLAKE3 over its plaintext. BLAKE3, not sha2-256,
/// because every byte of a file is hashed twice (its chunk's id and the whole-file sha256 that
/// `verify-model --checksum` compares) and BLAKE3 is several times faster; every other object
/// keeps the sha2-256 rule.
pub fn chunk_cid(bytes: &[u8]) -> Cid {
    let digest = blake3::hash(bytes);
    let multihash = ::cid::multihash::Multihash::<64>::wrap(BLAKE3, digest.as_bytes())
        .expect("a 32-byte digest always fits a 64-byte multihash");
    Cid::new_v1(RAW, multihash)
}

/// Whether `cid` is exactly the id of the chunk `bytes`: a raw CIDv1 with a BLAKE3 multihash
/// ([`chunk_cid`]), or with sha2-256 (chunks of trees written in `cim-backup-tree/1`). Any
/// other hash function never verifies.
pub fn verifies_chunk(cid: &Cid, bytes: &[u8]) -> bool {
    if cid.version() != ::cid::Version::V1 || cid.codec() != RAW {
        return false;
    }
    match cid.hash().code() {
        BLAKE3 => chunk_cid(bytes) == *cid,
        SHA2_256 => verifies(cid, bytes),
        _ => false,
    }
}

/// Whether `cid` is exactly the sha2-256 CID (with its own codec) of `bytes`.
///
/// Only sha2-256 is accepted: a CID with any other hash function never verifies here, so a
/// forged CID cannot slip in by naming a hash we do not check.
pub fn verifies(cid: &Cid, bytes: &[u8]) -> bool {
    cid.version() == ::cid::Version::V1
        && cid.hash().code() == SHA2_256
        && cid_of(cid.codec(), bytes) == *cid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_dag_cbor_map_has_the_well_known_cid() {
        // `{}` in DAG-CBOR is the single byte 0xa0; its CID is published in IPLD fixtures.
        let cid = dag_cbor_cid(&[0xa0]);
        assert_eq!(
            cid.to_string(),
            "bafyreigbtj4x7ip5legnfznufuopl4sg4knzc2cof6duas4b3q2fy6swua"
        );
    }

    #[test]
    fn chunk_ids_are_blake3_and_old_sha2_ids_still_verify() {
        let cid = chunk_cid(b"hello");
        assert_eq!((cid.codec(), cid.hash().code()), (RAW, BLAKE3));
        // BLAKE3("hello"), the value b3sum prints.
        let hex: String = cid
            .hash()
            .digest()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f"
        );
        assert!(verifies_chunk(&cid, b"hello"));
        assert!(!verifies_chunk(&cid, b"hellO"));
        assert!(verifies_chunk(&raw_cid(b"hello"), b"hello"));
        assert!(!verifies_chunk(&dag_cbor_cid(b"hello"), b"hello"));
        assert!(!verifies(&cid, b"hello"), "objects keep the sha2-256 rule");
    }

    #[test]
    fn raw_cid_of_hello_is_stable() {
        let cid = raw_cid(b"hello");
        assert_eq!(cid.codec(), RAW);
        assert!(verifies(&cid, b"hello"));
        assert!(!verifies(&cid, b"hellO"));
    }

    #[test]
    fn a_cid_with_another_codec_over_same_bytes_is_a_different_cid() {
        assert_ne!(raw_cid(b"x"), dag_cbor_cid(b"x"));
    }
}

/// Serde for CID fields that appear both in DAG-CBOR (events, manifests) and in JSON (views):
/// a tag-42 link in binary formats, the CID string in human-readable ones.
pub mod link {
    use super::Cid;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(cid: &Cid, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(cid)
        } else {
            cid.serialize(s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Cid, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            Cid::try_from(text.as_str()).map_err(serde::de::Error::custom)
        } else {
            Cid::deserialize(d)
        }
    }

    /// The same for `Option<Cid>` (null when absent).
    pub mod option {
        use super::Cid;
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(cid: &Option<Cid>, s: S) -> Result<S::Ok, S::Error> {
            match cid {
                Some(cid) => super::serialize(cid, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cid>, D::Error> {
            #[derive(Deserialize)]
            struct Wrapper(#[serde(with = "super")] Cid);
            Ok(Option::<Wrapper>::deserialize(d)?.map(|w| w.0))
        }
    }
}

#[cfg(test)]
mod link_tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Doc {
        #[serde(with = "link::option")]
        parent: Option<Cid>,
    }

    #[test]
    fn links_are_strings_in_json_and_tag_42_in_dag_cbor() {
        let doc = Doc {
            parent: Some(dag_cbor_cid(&[0xa0])),
        };
        let json = serde_json::to_string(&doc).unwrap();
        assert_eq!(
            json,
            r#"{"parent":"bafyreigbtj4x7ip5legnfznufuopl4sg4knzc2cof6duas4b3q2fy6swua"}"#
        );
        assert_eq!(serde_json::from_str::<Doc>(&json).unwrap(), doc);
        let cbor = serde_ipld_dagcbor::to_vec(&doc).unwrap();
        assert!(cbor.windows(2).any(|w| w == [0xd8, 0x2a]), "tag 42");
        assert_eq!(serde_ipld_dagcbor::from_slice::<Doc>(&cbor).unwrap(), doc);
        let none = Doc { parent: None };
        assert_eq!(
            serde_json::from_str::<Doc>(&serde_json::to_string(&none).unwrap()).unwrap(),
            none
        );
    }
}
