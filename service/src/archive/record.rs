//! Framing of one stream message inside a segment (see `docs/ARCHIVE.md` § Records).
//!
//! ```text
//! record  := body_len:u32le body crc32:u32le         crc32 (IEEE) over body
//! body    := seq:u64le time_ns:i64le
//!            subject_len:u16le subject
//!            headers_len:u32le headers                NATS header block, or empty
//!            payload_len:u32le payload
//! ```
//! Payloads are framed as the original bytes, never re-encoded. Headers reach us parsed (the
//! client does not expose the raw block), so they are written back in the NATS wire form
//! (`NATS/1.0\r\nName: value\r\n…\r\n`) with names sorted and each name's values in their
//! original order, so that the same message always gives the same bytes (and segment CID).

use async_nats::HeaderMap;

/// Fixed part of a body: seq + time + three length fields.
const FIXED: usize = 8 + 8 + 2 + 4 + 4;

/// One message as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub seq: u64,
    /// Original stream timestamp, nanoseconds since the Unix epoch.
    pub time_ns: i64,
    pub subject: &'a str,
    /// NATS header block (empty if the message had no headers).
    pub headers: &'a [u8],
    pub payload: &'a [u8],
}

impl Record<'_> {
    /// Bytes this record occupies in a segment.
    pub fn framed_len(&self) -> usize {
        4 + FIXED + self.subject.len() + self.headers.len() + self.payload.len() + 4
    }
}

/// Appends `record` to `out`.
///
/// Panics if the subject exceeds 65,535 bytes or the record exceeds 4 GiB: NATS limits
/// (max_payload ≤ 64 MiB, subjects far shorter) make those impossible for a real message, and a
/// silent truncation would corrupt the archive.
pub fn encode(out: &mut Vec<u8>, record: &Record<'_>) {
    let body_len = FIXED + record.subject.len() + record.headers.len() + record.payload.len();
    let body_len = u32::try_from(body_len).expect("a record fits 4 GiB");
    out.reserve(body_len as usize + 8);
    out.extend_from_slice(&body_len.to_le_bytes());
    let start = out.len();
    out.extend_from_slice(&record.seq.to_le_bytes());
    out.extend_from_slice(&record.time_ns.to_le_bytes());
    out.extend_from_slice(
        &u16::try_from(record.subject.len())
            .expect("subject fits u16")
            .to_le_bytes(),
    );
    out.extend_from_slice(record.subject.as_bytes());
    out.extend_from_slice(&(record.headers.len() as u32).to_le_bytes()); // < body_len, fits
    out.extend_from_slice(record.headers);
    out.extend_from_slice(&(record.payload.len() as u32).to_le_bytes()); // < body_len, fits
    out.extend_from_slice(record.payload);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Why a record could not be read; `offset` is the byte offset of the record in the segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record at byte {offset}{}: {message}", seq.map(|s| format!(" (seq {s})")).unwrap_or_default())]
pub struct RecordError {
    pub offset: usize,
    pub seq: Option<u64>,
    pub message: String,
}

/// Iterates the records of a segment body (the bytes after the segment magic).
pub struct Records<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Records<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Records {
            buf,
            pos: 0,
            failed: false,
        }
    }

    fn next_record(&mut self) -> Result<Record<'a>, RecordError> {
        let offset = self.pos;
        let err = |seq, message: String| RecordError {
            offset,
            seq,
            message,
        };
        let rest = &self.buf[self.pos..];
        let body_len =
            read_u32(rest, 0).ok_or_else(|| err(None, "truncated length".into()))? as usize;
        if body_len < FIXED || rest.len() < 4 + body_len + 4 {
            return Err(err(
                None,
                format!("length {body_len} runs past the end of the segment"),
            ));
        }
        let body = &rest[4..4 + body_len];
        let seq = u64::from_le_bytes(body[0..8].try_into().unwrap());
        let stored_crc = read_u32(rest, 4 + body_len).unwrap();
        if crc32fast::hash(body) != stored_crc {
            return Err(err(Some(seq), "checksum mismatch".into()));
        }
        let time_ns = i64::from_le_bytes(body[8..16].try_into().unwrap());
        let mut at = 16;
        let subject_len = u16::from_le_bytes(body[at..at + 2].try_into().unwrap()) as usize;
        at += 2;
        let subject = body
            .get(at..at + subject_len)
            .ok_or_else(|| err(Some(seq), "subject overruns".into()))?;
        let subject = std::str::from_utf8(subject)
            .map_err(|_| err(Some(seq), "subject is not UTF-8".into()))?;
        at += subject_len;
        let headers_len = read_u32(body, at)
            .ok_or_else(|| err(Some(seq), "headers length overruns".into()))?
            as usize;
        at += 4;
        let headers = body
            .get(at..at + headers_len)
            .ok_or_else(|| err(Some(seq), "headers overrun".into()))?;
        at += headers_len;
        let payload_len = read_u32(body, at)
            .ok_or_else(|| err(Some(seq), "payload length overruns".into()))?
            as usize;
        at += 4;
        if at + payload_len != body.len() {
            return Err(err(
                Some(seq),
                "payload length does not match the record length".into(),
            ));
        }
        let payload = &body[at..];
        self.pos += 4 + body_len + 4;
        Ok(Record {
            seq,
            time_ns,
            subject,
            headers,
            payload,
        })
    }
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let result = self.next_record();
        self.failed = result.is_err();
        Some(result)
    }
}

/// Encodes a header map as a NATS header block with names sorted (values keep their order).
pub fn encode_headers(headers: Option<&HeaderMap>, out: &mut Vec<u8>) {
    out.clear();
    let Some(headers) = headers.filter(|h| !h.is_empty()) else {
        return;
    };
    let mut entries: Vec<_> = headers.iter().collect();
    entries.sort_by(|a, b| AsRef::<str>::as_ref(a.0).cmp(AsRef::<str>::as_ref(b.0)));
    out.extend_from_slice(b"NATS/1.0\r\n");
    for (name, values) in entries {
        for value in values {
            out.extend_from_slice(AsRef::<[u8]>::as_ref(name));
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_str().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Checks a header block's structure without building a map (for deep verify).
pub fn validate_headers(block: &[u8]) -> Result<(), String> {
    if block.is_empty() {
        return Ok(());
    }
    let text = std::str::from_utf8(block).map_err(|_| "header block is not UTF-8".to_owned())?;
    let body = text
        .strip_prefix("NATS/1.0")
        .ok_or("header block does not start with NATS/1.0")?;
    if !body.ends_with("\r\n\r\n") {
        return Err("header block is not terminated by an empty line".into());
    }
    for line in body.split("\r\n").skip(1).filter(|l| !l.is_empty()) {
        let (name, _) = line
            .split_once(':')
            .ok_or_else(|| format!("header line {line:?} has no colon"))?;
        check_header_name(name)?;
    }
    Ok(())
}

/// Header names are printable ASCII without spaces or colons (what NATS and the client accept).
fn check_header_name(name: &str) -> Result<(), String> {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        Ok(())
    } else {
        Err(format!("header name {name:?} is not valid"))
    }
}

/// Decodes a header block written by [`encode_headers`]; `None` for an empty block.
pub fn decode_headers(block: &[u8]) -> Result<Option<HeaderMap>, String> {
    if block.is_empty() {
        return Ok(None);
    }
    let text = std::str::from_utf8(block).map_err(|_| "header block is not UTF-8".to_owned())?;
    let mut lines = text.split("\r\n");
    match lines.next() {
        Some(first) if first.starts_with("NATS/1.0") => {}
        _ => return Err("header block does not start with NATS/1.0".into()),
    }
    let mut map = HeaderMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("header line {line:?} has no colon"))?;
        check_header_name(name)?;
        let value: async_nats::HeaderValue = value
            .trim_start()
            .parse()
            .map_err(|_| format!("header {name} has an invalid value"))?;
        map.append(name, value);
    }
    Ok(Some(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seq: u64) -> Record<'static> {
        Record {
            seq,
            time_ns: 1_700_000_000_123_456_789,
            subject: "cim.domain.graph.node.created",
            headers: b"NATS/1.0\r\nCim-Event-Type: NodeCreated\r\n\r\n",
            payload: br#"{"id":1}"#,
        }
    }

    #[test]
    fn records_round_trip_and_framed_len_is_exact() {
        let mut buf = Vec::new();
        for seq in 1..=3 {
            encode(&mut buf, &sample(seq));
        }
        assert_eq!(buf.len(), 3 * sample(1).framed_len());
        let read: Vec<_> = Records::new(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(read, vec![sample(1), sample(2), sample(3)]);
    }

    #[test]
    fn a_flipped_byte_is_located_by_seq() {
        let mut buf = Vec::new();
        encode(&mut buf, &sample(7));
        encode(&mut buf, &sample(8));
        let second = sample(7).framed_len();
        buf[second + 30] ^= 0x40;
        let results: Vec<_> = Records::new(&buf).collect();
        assert!(results[0].is_ok());
        let err = results[1].clone().unwrap_err();
        assert_eq!((err.offset, err.seq), (second, Some(8)));
        assert!(err.message.contains("checksum"));
        assert_eq!(results.len(), 2, "iteration stops after an error");
    }

    #[test]
    fn truncation_is_an_error_not_a_short_read() {
        let mut buf = Vec::new();
        encode(&mut buf, &sample(1));
        buf.truncate(buf.len() - 1);
        let err = Records::new(&buf).next().unwrap().unwrap_err();
        assert!(err.message.contains("past the end"), "{}", err.message);
    }

    #[test]
    fn headers_encode_sorted_and_decode_back() {
        let mut map = HeaderMap::new();
        map.insert("Zed", "1");
        map.insert("Alpha", "two words");
        map.append("Multi", "a");
        map.append("Multi", "b");
        let mut block = Vec::new();
        encode_headers(Some(&map), &mut block);
        assert_eq!(
            block,
            b"NATS/1.0\r\nAlpha: two words\r\nMulti: a\r\nMulti: b\r\nZed: 1\r\n\r\n"
        );
        let back = decode_headers(&block).unwrap().unwrap();
        assert_eq!(back.get("Alpha").unwrap().as_str(), "two words");
        assert_eq!(
            back.get_all("Multi")
                .map(|v| v.as_str().to_owned())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(validate_headers(&block), Ok(()));
        assert!(
            validate_headers(b"NATS/1.0\r\nno colon\r\n\r\n")
                .unwrap_err()
                .contains("no colon")
        );
        assert!(validate_headers(b"HTTP/1.1\r\n\r\n").is_err());
        let bad_name = "NATS/1.0\r\nB\u{e4}d: x\r\n\r\n".as_bytes();
        assert!(
            validate_headers(bad_name)
                .unwrap_err()
                .contains("not valid")
        );
        assert!(
            decode_headers(bad_name).unwrap_err().contains("not valid"),
            "no panic, an error"
        );
        encode_headers(None, &mut block);
        assert!(block.is_empty());
        assert!(decode_headers(b"").unwrap().is_none());
    }
}
