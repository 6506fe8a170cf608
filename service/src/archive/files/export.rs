//! A stored tree written as a tar.gz, from the archive: the file holds exactly what the backup
//! holds (every chunk checked on the way), with entries named by their host path without the
//! leading `/` (`etc/nixos/flake.nix`), so `tar -xzf F -C /tmp/restore` followed by
//! `diff -r /etc/nixos /tmp/restore/etc/nixos` compares it with the original. With recipients
//! the gzip stream is one age file (`.tar.gz.age`); plaintext is then never written.
//!
//! Written to `<path>.partial` beside the target and renamed when complete.

use std::io::Write;
use std::path::Path;

use super::error::FilesError;
use super::restore::for_each_chunk;
use super::tree::{EntryKind, TopKind, TreeArchive};
use crate::archive::ArchiveStore;
use crate::keys::Keys;

/// Where the tar's bytes go: gzip, then age when encrypting, then the file.
enum Sink {
    Plain(flate2::write::GzEncoder<std::fs::File>),
    Encrypted(flate2::write::GzEncoder<age::stream::StreamWriter<std::fs::File>>),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Encrypted(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Encrypted(w) => w.flush(),
        }
    }
}

impl Sink {
    fn finish(self) -> std::io::Result<std::fs::File> {
        match self {
            Sink::Plain(w) => w.finish(),
            Sink::Encrypted(w) => w.finish()?.finish(),
        }
    }
}

/// Writes `tree` to `out` as a tar.gz (age-encrypted to `recipients` when given), its entries
/// under `name` or else the tree's host path without the leading `/`. Returns the bytes of
/// file content written.
pub async fn write_tar_gz(
    store: &ArchiveStore,
    keys: &Keys,
    tree: &TreeArchive,
    encrypted: bool,
    out: &Path,
    name: Option<&str>,
    recipients: Option<&[String]>,
) -> Result<u64, FilesError> {
    tree.check_paths()?;
    let shown = out.display().to_string();
    let io = |e: std::io::Error| FilesError::io(&shown, e);
    let partial = out.with_file_name(format!(
        "{}.partial",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("export")
    ));
    let file = std::fs::File::create(&partial).map_err(io)?;
    let level = flate2::Compression::default();
    let sink = match recipients {
        None => Sink::Plain(flate2::write::GzEncoder::new(file, level)),
        Some(recipients) => {
            let parsed = recipients
                .iter()
                .map(|r| r.parse::<age::x25519::Recipient>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    FilesError::refused(&shown, format!("a recipient is not an age key: {e}"))
                })?;
            let encryptor =
                age::Encryptor::with_recipients(parsed.iter().map(|r| r as &dyn age::Recipient))
                    .map_err(|e| FilesError::refused(&shown, e.to_string()))?;
            let writer = encryptor.wrap_output(file).map_err(io)?;
            Sink::Encrypted(flate2::write::GzEncoder::new(writer, level))
        }
    };
    let mut tar = tar::Builder::new(sink);
    tar.mode(tar::HeaderMode::Complete);
    let base = name
        .unwrap_or(&tree.host_path)
        .trim_start_matches('/')
        .to_owned();
    if base.is_empty()
        || base
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(FilesError::refused(
            &shown,
            format!("{base:?} is no entry name"),
        ));
    }
    let name_of = |rel: &str| {
        if rel.is_empty() {
            base.clone()
        } else {
            format!("{base}/{rel}")
        }
    };
    let mtime = |ns: i64| (ns.max(0) / 1_000_000_000) as u64;
    let mut written = 0u64;
    let result: Result<(), FilesError> = async {
        if tree.top == TopKind::Dir {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            tar.append_data(&mut h, format!("{base}/"), std::io::empty())
                .map_err(io)?;
        }
        for e in &tree.entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(e.mode);
            h.set_mtime(mtime(e.mtime_ns));
            match &e.kind {
                EntryKind::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    tar.append_data(&mut h, format!("{}/", name_of(&e.path)), std::io::empty())
                        .map_err(io)?;
                }
                EntryKind::Symlink { target } => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    tar.append_link(&mut h, name_of(&e.path), target)
                        .map_err(io)?;
                }
                EntryKind::File { size, chunks, .. } => {
                    // Config trees are small; a file is gathered, checked, then appended.
                    let mut bytes = Vec::with_capacity(*size as usize);
                    for_each_chunk(store, keys, chunks, encrypted, |r, chunk| {
                        let chunk = chunk.map_err(|x| FilesError::Damaged {
                            path: name_of(&e.path),
                            message: format!("chunk {}: {x}", r.cid),
                        })?;
                        bytes.extend_from_slice(&chunk);
                        Ok(())
                    })
                    .await?;
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(bytes.len() as u64);
                    tar.append_data(&mut h, name_of(&e.path), bytes.as_slice())
                        .map_err(io)?;
                    written += bytes.len() as u64;
                }
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    let sink = tar.into_inner().map_err(io)?;
    let file = sink.finish().map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&partial, out).map_err(io)?;
    Ok(written)
}
