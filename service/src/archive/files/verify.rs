//! Deep verification of a stored tree without the original: every chunk is fetched, opened
//! and checked against its CID, every file rebuilt in memory-bounded passes and checked against
//! its whole-file sha256, and safetensors headers parsed and checked against the file size.
//! Each finding names the file, and the chunk and pack object when one is at fault.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::error::FilesError;
use super::formats;
use super::restore::for_each_chunk;
use super::tree::{EntryKind, TreeArchive};
use crate::archive::ArchiveStore;
use crate::keys::Keys;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The tree's name in the backup.
    pub tree: String,
    /// The file, relative to the tree.
    pub path: String,
    /// The chunk at fault, when one is.
    pub chunk: Option<String>,
    /// The stored object at fault, when one is.
    pub object: Option<String>,
    pub problem: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TreeVerified {
    pub files: u64,
    pub bytes: u64,
    pub chunks: u64,
    /// Files recognised as model formats, with what was found (`path`, label).
    pub models: Vec<(String, String)>,
    pub findings: Vec<Finding>,
}

pub async fn verify_tree(
    store: &ArchiveStore,
    keys: &Keys,
    tree: &TreeArchive,
    encrypted: bool,
) -> Result<TreeVerified, FilesError> {
    let mut out = TreeVerified::default();
    if let Err(e) = tree.check_paths() {
        out.findings.push(Finding {
            tree: tree.name.clone(),
            path: String::new(),
            chunk: None,
            object: None,
            problem: e.to_string(),
        });
        return Ok(out);
    }
    for e in &tree.entries {
        let EntryKind::File {
            size,
            sha256,
            chunks,
        } = &e.kind
        else {
            continue;
        };
        out.files += 1;
        let mut whole = Sha256::new();
        let mut rebuilt = 0u64;
        let mut whole_ok = true;
        let mut prefix = Prefix::default();
        let mut findings = Vec::new();
        for_each_chunk(store, keys, chunks, encrypted, |r, chunk| {
            out.chunks += 1;
            match chunk {
                Ok(bytes) => {
                    whole.update(&bytes);
                    prefix.feed(&bytes);
                    rebuilt += bytes.len() as u64;
                }
                Err(x) => {
                    whole_ok = false;
                    let object = Some(x.object().to_owned());
                    findings.push(Finding {
                        tree: tree.name.clone(),
                        path: e.path.clone(),
                        chunk: Some(r.cid.to_string()),
                        object,
                        problem: x.to_string(),
                    });
                    rebuilt += r.len;
                }
            }
            Ok(())
        })
        .await?;
        out.bytes += rebuilt;
        if whole_ok {
            let got = format!("{:x}", whole.finalize());
            if rebuilt != *size || &got != sha256 {
                findings.push(Finding {
                    tree: tree.name.clone(),
                    path: e.path.clone(),
                    chunk: None,
                    object: None,
                    problem: format!("rebuilt {rebuilt} bytes with sha256 {got}; the backup says {size} bytes, {sha256}"),
                });
            } else {
                let name = if e.path.is_empty() {
                    tree.name.as_str()
                } else {
                    e.path.as_str()
                };
                match formats::detect(name, &prefix.bytes, *size) {
                    Ok(formats::ModelFormat::Unknown) => {}
                    Ok(f) => out.models.push((e.path.clone(), f.label())),
                    Err(problem) => findings.push(Finding {
                        tree: tree.name.clone(),
                        path: e.path.clone(),
                        chunk: None,
                        object: None,
                        problem: format!("safetensors header: {problem}"),
                    }),
                }
            }
        }
        out.findings.extend(findings);
    }
    Ok(out)
}

/// The first bytes of a file, as many as its format needs to be recognised.
#[derive(Debug)]
struct Prefix {
    bytes: Vec<u8>,
    need: u64,
    decided: bool,
}

impl Default for Prefix {
    fn default() -> Self {
        Prefix {
            bytes: Vec::new(),
            need: 8,
            decided: false,
        }
    }
}

impl Prefix {
    fn feed(&mut self, chunk: &[u8]) {
        let mut at = 0;
        while (self.bytes.len() as u64) < self.need && at < chunk.len() {
            let take = ((self.need - self.bytes.len() as u64) as usize).min(chunk.len() - at);
            self.bytes.extend_from_slice(&chunk[at..at + take]);
            at += take;
            if !self.decided && self.bytes.len() >= 8 {
                self.need = formats::prefix_needed(&self.bytes[..8]);
                self.decided = true;
            }
        }
    }
}
