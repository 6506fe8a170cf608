//! A chunk as stored inside a pack: zstd-compressed when that pays, then age-encrypted when
//! the destination encrypts. Opening a blob reverses both and checks the chunk's CID, so a
//! damaged or substituted blob is an error naming its chunk, never wrong bytes in a file.

use cim_backup_contracts::cid::{Cid, verifies_chunk};

use crate::archive::ArchiveError;
use crate::keys::Keys;

/// Bytes tried first to decide whether a chunk compresses: model weights are mostly
/// incompressible, and compressing a whole chunk to find that out would cost more than it saves.
const SAMPLE: usize = 64 * 1024;
/// A sample must shrink below this share of its size for the chunk to be compressed.
const SAMPLE_PAYS: f64 = 0.9;
/// A compressed chunk is kept only below this share of its raw size.
const WHOLE_PAYS: f64 = 0.97;

/// A chunk ready to be appended to a pack.
#[derive(Debug)]
pub struct SealedBlob {
    /// CID of the chunk's plaintext.
    pub cid: Cid,
    pub raw_len: u64,
    pub zstd: bool,
    pub bytes: Vec<u8>,
}

/// The CID that names a chunk: raw codec, BLAKE3 of its plaintext (docs/ARCHIVE.md §12.1).
pub fn chunk_cid(chunk: &[u8]) -> Cid {
    cim_backup_contracts::cid::chunk_cid(chunk)
}

/// Compresses (level `level`, when it pays) and encrypts (to `recipients`) one chunk.
/// CPU-bound: call it off the async executor.
pub fn seal(
    chunk: &[u8],
    cid: Cid,
    level: Option<i32>,
    recipients: Option<&[String]>,
) -> Result<SealedBlob, ArchiveError> {
    let compressed = level.and_then(|level| compress_if_it_pays(chunk, level));
    let zstd = compressed.is_some();
    let plain = compressed.unwrap_or_else(|| chunk.to_vec());
    let bytes = match recipients {
        Some(r) => Keys::encrypt(r, &plain).map_err(|e| ArchiveError::Key {
            object: format!("chunk {cid}"),
            message: e.to_string(),
        })?,
        None => plain,
    };
    Ok(SealedBlob {
        cid,
        raw_len: chunk.len() as u64,
        zstd,
        bytes,
    })
}

fn compress_if_it_pays(chunk: &[u8], level: i32) -> Option<Vec<u8>> {
    let sample = &chunk[..chunk.len().min(SAMPLE)];
    let tried = zstd::bulk::compress(sample, 1).ok()?;
    if (tried.len() as f64) > SAMPLE_PAYS * sample.len() as f64 {
        return None;
    }
    let whole = zstd::bulk::compress(chunk, level).ok()?;
    ((whole.len() as f64) < WHOLE_PAYS * chunk.len() as f64).then_some(whole)
}

/// What a reader needs to open one blob.
#[derive(Debug, Clone, Copy)]
pub struct BlobShape<'a> {
    pub cid: &'a Cid,
    pub raw_len: u64,
    pub zstd: bool,
    pub encrypted: bool,
}

/// Decrypts, decompresses and checks one stored blob; `object` is the pack it came from.
pub fn open(
    stored: &[u8],
    shape: BlobShape<'_>,
    keys: &Keys,
    object: &str,
) -> Result<Vec<u8>, ArchiveError> {
    let damaged =
        |message: String| ArchiveError::corrupt(object, format!("chunk {}: {message}", shape.cid));
    let decrypted;
    let plain: &[u8] = if shape.encrypted {
        decrypted = keys.decrypt(stored).map_err(|e| ArchiveError::Key {
            object: object.to_owned(),
            message: format!("chunk {}: {e}", shape.cid),
        })?;
        &decrypted
    } else {
        stored
    };
    let chunk = if shape.zstd {
        zstd::bulk::decompress(plain, shape.raw_len as usize)
            .map_err(|e| damaged(format!("does not decompress ({e})")))?
    } else {
        plain.to_vec()
    };
    if chunk.len() as u64 != shape.raw_len {
        return Err(damaged(format!(
            "{} bytes where the manifest says {}",
            chunk.len(),
            shape.raw_len
        )));
    }
    if !verifies_chunk(shape.cid, &chunk) {
        return Err(damaged(
            "content does not match its CID (tampered or damaged)".into(),
        ));
    }
    Ok(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(b: &SealedBlob) -> BlobShape<'_> {
        BlobShape {
            cid: &b.cid,
            raw_len: b.raw_len,
            zstd: b.zstd,
            encrypted: false,
        }
    }

    #[test]
    fn text_is_compressed_and_noise_is_not() {
        let text = b"{\"layer\": 1, \"dtype\": \"F16\"}\n".repeat(20_000);
        let sealed = seal(&text, chunk_cid(&text), Some(3), None).unwrap();
        assert!(sealed.zstd && sealed.bytes.len() < text.len() / 10);
        let keys = Keys::load(&Default::default()).unwrap();
        assert_eq!(
            open(&sealed.bytes, shape(&sealed), &keys, "p").unwrap(),
            text
        );

        let mut x = 7u32;
        let noise: Vec<u8> = (0..300_000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        let sealed = seal(&noise, chunk_cid(&noise), Some(3), None).unwrap();
        assert!(!sealed.zstd);
        assert_eq!(sealed.bytes, noise);
    }

    #[test]
    fn a_flipped_byte_is_named_by_its_chunk() {
        let text = b"weights ".repeat(10_000);
        let mut sealed = seal(&text, chunk_cid(&text), None, None).unwrap();
        sealed.bytes[100] ^= 1;
        let err = open(
            &sealed.bytes,
            shape(&sealed),
            &Keys::load(&Default::default()).unwrap(),
            "packs/x",
        )
        .unwrap_err();
        let said = err.to_string();
        assert!(
            said.contains("packs/x") && said.contains(&sealed.cid.to_string()),
            "{said}"
        );
    }
}
