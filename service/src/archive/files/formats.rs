//! Model file formats, recognised from their first bytes: safetensors (its header parsed and
//! checked against the file size, since the format carries no checksum of its own), GGUF,
//! PyTorch's zip archives and ONNX.

use std::collections::BTreeMap;

use serde::Serialize;

/// Largest safetensors header accepted (the format's own limit is 100 MB).
pub const SAFETENSORS_HEADER_MAX: u64 = 100_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "format", rename_all = "snake_case")]
pub enum ModelFormat {
    Safetensors {
        tensors: u64,
        /// Tensors per dtype.
        dtypes: BTreeMap<String, u64>,
        parameters: u64,
    },
    Gguf {
        version: u32,
    },
    PytorchZip,
    Onnx,
    Unknown,
}

impl ModelFormat {
    pub fn label(&self) -> String {
        match self {
            ModelFormat::Safetensors {
                tensors,
                dtypes,
                parameters,
            } => format!(
                "safetensors ({tensors} tensors, {}, {} parameters)",
                dtypes.keys().cloned().collect::<Vec<_>>().join("/"),
                parameters
            ),
            ModelFormat::Gguf { version } => format!("gguf v{version}"),
            ModelFormat::PytorchZip => "pytorch zip".into(),
            ModelFormat::Onnx => "onnx".into(),
            ModelFormat::Unknown => "unknown".into(),
        }
    }
}

/// Bytes of a file's start needed to recognise it: 8 for most; for safetensors, the header.
pub fn prefix_needed(first8: &[u8]) -> u64 {
    match first8.get(..8) {
        Some(b) if !b.starts_with(b"GGUF") && !b.starts_with(b"PK\x03\x04") => {
            let n = u64::from_le_bytes(b.try_into().expect("8 bytes"));
            if n <= SAFETENSORS_HEADER_MAX {
                8 + n
            } else {
                8
            }
        }
        _ => 8,
    }
}

/// Recognises a file from its first bytes (`prefix_needed` of them, or all it has) and its
/// name. A file that looks like safetensors but whose header is wrong is an error: it is the
/// one check a safetensors file allows.
pub fn detect(name: &str, prefix: &[u8], size: u64) -> Result<ModelFormat, String> {
    if prefix.starts_with(b"GGUF") && prefix.len() >= 8 {
        let version = u32::from_le_bytes(prefix[4..8].try_into().expect("4 bytes"));
        return Ok(ModelFormat::Gguf { version });
    }
    if prefix.starts_with(b"PK\x03\x04") {
        return Ok(
            if name.ends_with(".pt")
                || name.ends_with(".pth")
                || name.ends_with(".bin")
                || name.ends_with(".ckpt")
            {
                ModelFormat::PytorchZip
            } else {
                ModelFormat::Unknown
            },
        );
    }
    if name.ends_with(".onnx") {
        // Protocol buffers have no magic; an ONNX model starts with field 1 (ir_version).
        return Ok(if prefix.first() == Some(&0x08) {
            ModelFormat::Onnx
        } else {
            ModelFormat::Unknown
        });
    }
    if name.ends_with(".safetensors") {
        return safetensors(prefix, size);
    }
    Ok(ModelFormat::Unknown)
}

fn dtype_bytes(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// Parses a safetensors header and checks that the tensors' data offsets tile the data part
/// exactly: no gap, no overlap, each tensor as long as its shape and dtype say, and the last
/// ending where the file does.
pub fn safetensors(prefix: &[u8], size: u64) -> Result<ModelFormat, String> {
    let Some(first8) = prefix.get(..8) else {
        return Err(format!("{size} bytes: too short for a safetensors header"));
    };
    let n = u64::from_le_bytes(first8.try_into().expect("8 bytes"));
    if n > SAFETENSORS_HEADER_MAX || 8 + n > size {
        return Err(format!("header length {n} does not fit a {size}-byte file"));
    }
    let header = prefix
        .get(8..8 + n as usize)
        .ok_or_else(|| format!("header of {n} bytes is cut short"))?;
    let map: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| format!("header is not JSON: {e}"))?;
    let mut spans = Vec::new();
    let mut dtypes = BTreeMap::new();
    let mut parameters = 0u64;
    for (name, t) in map.iter().filter(|(k, _)| k.as_str() != "__metadata__") {
        let dtype = t["dtype"]
            .as_str()
            .ok_or(format!("tensor {name}: no dtype"))?;
        let width = dtype_bytes(dtype).ok_or(format!("tensor {name}: unknown dtype {dtype}"))?;
        let shape = t["shape"]
            .as_array()
            .ok_or(format!("tensor {name}: no shape"))?
            .iter()
            .map(|d| d.as_u64().ok_or(format!("tensor {name}: bad shape")))
            .collect::<Result<Vec<u64>, _>>()?;
        let count: u64 = shape.iter().product();
        let offsets = t["data_offsets"]
            .as_array()
            .ok_or(format!("tensor {name}: no data_offsets"))?;
        let (Some(begin), Some(end)) = (
            offsets.first().and_then(|v| v.as_u64()),
            offsets.get(1).and_then(|v| v.as_u64()),
        ) else {
            return Err(format!("tensor {name}: bad data_offsets"));
        };
        if end < begin || end - begin != count * width {
            return Err(format!(
                "tensor {name}: data_offsets {begin}..{end} do not hold {count} {dtype} values"
            ));
        }
        spans.push((begin, end, name.clone()));
        *dtypes.entry(dtype.to_owned()).or_insert(0) += 1;
        parameters += count;
    }
    spans.sort();
    let data = size - 8 - n;
    let mut at = 0;
    for (begin, end, name) in &spans {
        if *begin != at {
            return Err(format!(
                "tensor {name} starts at {begin}, not {at} (gap or overlap)"
            ));
        }
        at = *end;
    }
    if at != data {
        return Err(format!(
            "tensors end at byte {at} of the data, but the file holds {data} data bytes"
        ));
    }
    Ok(ModelFormat::Safetensors {
        tensors: spans.len() as u64,
        dtypes,
        parameters,
    })
}

/// Recognises a file on disk, reading only its start.
pub fn detect_path(path: &std::path::Path) -> Result<ModelFormat, String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let size = f.metadata().map_err(|e| e.to_string())?.len();
    let mut first = [0u8; 8];
    let got = read_up_to(&mut f, &mut first).map_err(|e| e.to_string())?;
    let need = prefix_needed(&first[..got]).min(size);
    let mut prefix = first[..got].to_vec();
    if need > got as u64 {
        let mut rest = Vec::new();
        f.take(need - got as u64)
            .read_to_end(&mut rest)
            .map_err(|e| e.to_string())?;
        prefix.extend(rest);
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    detect(name, &prefix, size)
}

fn read_up_to(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// A safetensors file with the given tensors (name, dtype, shape), data filled by `fill`:
/// for tests and benchmarks.
pub fn write_safetensors(
    out: &mut impl std::io::Write,
    tensors: &[(&str, &str, Vec<u64>)],
    mut fill: impl FnMut(&mut [u8]),
) -> std::io::Result<u64> {
    let mut header = serde_json::Map::new();
    let mut at = 0;
    for (name, dtype, shape) in tensors {
        let len = shape.iter().product::<u64>() * dtype_bytes(dtype).expect("known dtype");
        header.insert(
            (*name).to_owned(),
            serde_json::json!({ "dtype": dtype, "shape": shape, "data_offsets": [at, at + len] }),
        );
        at += len;
    }
    let text = serde_json::to_vec(&header).expect("json");
    out.write_all(&(text.len() as u64).to_le_bytes())?;
    out.write_all(&text)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = at;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        fill(&mut buf[..n]);
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(8 + text.len() as u64 + at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_safetensors_file_is_described_and_a_truncated_one_is_not() {
        let mut bytes = Vec::new();
        write_safetensors(
            &mut bytes,
            &[("a", "F32", vec![4, 4]), ("b", "BF16", vec![10])],
            |b| b.fill(1),
        )
        .unwrap();
        let n = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let got = safetensors(&bytes[..n], bytes.len() as u64).unwrap();
        assert_eq!(
            got,
            ModelFormat::Safetensors {
                tensors: 2,
                dtypes: [("BF16".to_owned(), 1), ("F32".to_owned(), 1)].into(),
                parameters: 26,
            }
        );
        let err = safetensors(&bytes[..n], bytes.len() as u64 - 1).unwrap_err();
        assert!(err.contains("data bytes"), "{err}");
        assert_eq!(prefix_needed(&bytes[..8]), n as u64);
    }

    #[test]
    fn gguf_and_zip_are_recognised_by_magic() {
        assert_eq!(
            detect("m.gguf", b"GGUF\x03\0\0\0", 100).unwrap(),
            ModelFormat::Gguf { version: 3 }
        );
        assert_eq!(
            detect("m.pt", b"PK\x03\x04abcd", 100).unwrap(),
            ModelFormat::PytorchZip
        );
        assert_eq!(
            detect("m.onnx", b"\x08\x07", 100).unwrap(),
            ModelFormat::Onnx
        );
    }
}
