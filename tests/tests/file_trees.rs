//! File trees in the archive, through the archive layer on a real local directory and a real
//! S3 API (moto): round trips byte for byte with modes, times, links and empty directories;
//! deduplication across versions; a tampered chunk named by file and chunk; restores that are
//! atomic and never overwrite unasked; links that never lead out; a file changing while read;
//! and a killed backup that resumes without uploading again.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use age::secrecy::ExposeSecret;
use cim_backup::archive::ArchiveStore;
use cim_backup::archive::files::backup::{BackupSettings, FileBackup, TreeSource};
use cim_backup::archive::files::formats;
use cim_backup::archive::files::pack::pack_key;
use cim_backup::archive::files::restore::{Target, restore_tree};
use cim_backup::archive::files::scan::Root;
use cim_backup::archive::files::verify::verify_tree;
use cim_backup::archive::files::{EntryKind, FilesError, TreeArchive};
use cim_backup::keys::{EncryptionConfig, Keys};
use cim_backup_tests::MotoServer;
use cim_backup_tests::files::noise;
use tokio_util::sync::CancellationToken;

fn local_store(dir: &Path) -> ArchiveStore {
    ArchiveStore::new(
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir).unwrap()),
        object_store::path::Path::default(),
        format!("file://{}", dir.display()),
    )
}

/// Restores `tree` to `path` (a test's restore: no progress counter, never cancelled).
async fn restore_to(
    store: &ArchiveStore,
    keys: &Keys,
    tree: &TreeArchive,
    encrypted: bool,
    path: &Path,
    overwrite: bool,
    tag: &str,
) -> Result<cim_backup::archive::files::restore::Restored, FilesError> {
    let target = Target {
        path,
        overwrite,
        tag,
        written: None,
    };
    restore_tree(
        store,
        keys,
        tree,
        encrypted,
        target,
        &CancellationToken::new(),
    )
    .await
}

fn settings() -> BackupSettings {
    BackupSettings {
        parallel: 2,
        zstd_level: Some(3),
        encryption: None,
    }
}

/// A models root: one safetensors model directory with a config, an empty directory and a
/// link inside it, and one single-file GGUF model.
fn models(root: &Path) {
    let m = root.join("llama");
    std::fs::create_dir_all(m.join("empty")).unwrap();
    let mut seed = 1;
    let mut f = std::fs::File::create(m.join("model.safetensors")).unwrap();
    formats::write_safetensors(
        &mut f,
        &[
            ("w1", "F32", vec![1024, 1024]),
            ("w2", "BF16", vec![2048, 2048]),
        ],
        |b| {
            seed += 1;
            b.copy_from_slice(&noise(b.len(), seed));
        },
    )
    .unwrap();
    std::fs::write(
        m.join("config.json"),
        br#"{"hidden_size": 4096, "layers": 32}"#.repeat(100),
    )
    .unwrap();
    std::fs::set_permissions(
        m.join("config.json"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::os::unix::fs::symlink("model.safetensors", m.join("current")).unwrap();
    let mut gguf = b"GGUF\x03\0\0\0".to_vec();
    gguf.extend(noise(3 << 20, 99));
    std::fs::write(root.join("tiny.gguf"), gguf).unwrap();
}

fn source(root: &Path, path: &str) -> TreeSource {
    TreeSource {
        root: Root::new("models", root).unwrap(),
        path: path.into(),
        instance: "node-a".into(),
        complete_only: false,
        exclude: Vec::new(),
    }
}

fn no_keys() -> Keys {
    Keys::load(&EncryptionConfig::default()).unwrap()
}

/// Every file, dir and link under `a` is under `b` with the same bytes, mode, mtime and
/// link target, and nothing more.
fn assert_same_tree(a: &Path, b: &Path) {
    let list = |p: &Path| -> Vec<String> {
        let mut v: Vec<_> = walkdir::WalkDir::new(p)
            .min_depth(1)
            .into_iter()
            .map(|e| {
                e.unwrap()
                    .path()
                    .strip_prefix(p)
                    .unwrap()
                    .display()
                    .to_string()
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(list(a), list(b));
    for rel in list(a) {
        let (x, y) = (a.join(&rel), b.join(&rel));
        let (mx, my) = (
            std::fs::symlink_metadata(&x).unwrap(),
            std::fs::symlink_metadata(&y).unwrap(),
        );
        assert_eq!(mx.file_type(), my.file_type(), "{rel}");
        if mx.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_link(&x).unwrap(),
                std::fs::read_link(&y).unwrap()
            );
            continue;
        }
        assert_eq!(mx.mode() & 0o7777, my.mode() & 0o7777, "{rel} mode");
        assert_eq!(
            (mx.mtime(), mx.mtime_nsec()),
            (my.mtime(), my.mtime_nsec()),
            "{rel} mtime"
        );
        if mx.is_file() {
            assert!(
                std::fs::read(&x).unwrap() == std::fs::read(&y).unwrap(),
                "{rel} bytes"
            );
        }
    }
}

async fn round_trip(store: ArchiveStore) {
    let src = tempfile::tempdir().unwrap();
    models(src.path());
    let backup = FileBackup::open(store.clone(), settings()).await.unwrap();
    let tree = backup
        .tree(&source(src.path(), "llama"), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!((tree.files, tree.dirs, tree.symlinks), (2, 1, 1));
    assert!(tree.skipped.is_empty(), "{:?}", tree.skipped);
    let EntryKind::File { sha256, .. } = &tree.entry("model.safetensors").unwrap().kind else {
        panic!()
    };
    let want = sha2_hex(&std::fs::read(src.path().join("llama/model.safetensors")).unwrap());
    assert_eq!(sha256, &want, "the whole-file sha256 is sha256sum's");

    let verified = verify_tree(&store, &no_keys(), &tree, false).await.unwrap();
    assert!(verified.findings.is_empty(), "{:?}", verified.findings);
    assert_eq!(verified.files, 2);
    assert!(
        verified
            .models
            .iter()
            .any(|(p, l)| p == "model.safetensors" && l.contains("2 tensors")),
        "{:?}",
        verified.models
    );

    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("llama");
    let restored = restore_to(&store, &no_keys(), &tree, false, &target, false, "job1")
        .await
        .unwrap();
    assert_eq!(restored.files, 2);
    assert_same_tree(&src.path().join("llama"), &target);
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        1,
        "no temporary left beside it"
    );

    // A single-file model.
    let gguf = backup
        .tree(&source(src.path(), "tiny.gguf"), &CancellationToken::new())
        .await
        .unwrap();
    let at = out.path().join("tiny.gguf");
    restore_to(&store, &no_keys(), &gguf, false, &at, false, "job2")
        .await
        .unwrap();
    assert!(std::fs::read(&at).unwrap() == std::fs::read(src.path().join("tiny.gguf")).unwrap());
    let v = verify_tree(&store, &no_keys(), &gguf, false).await.unwrap();
    assert_eq!(v.models, vec![(String::new(), "gguf v3".to_owned())]);
}

fn sha2_hex(b: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(b))
}

#[tokio::test]
async fn a_tree_round_trips_on_a_local_directory() {
    let dest = tempfile::tempdir().unwrap();
    round_trip(local_store(dest.path())).await;
}

#[tokio::test]
async fn a_tree_round_trips_on_s3() {
    let moto = MotoServer::start().await;
    moto.create_bucket("cim-models").await;
    let store = ArchiveStore::new(
        Arc::new(moto.store("cim-models")),
        object_store::path::Path::from("backup/20261202"),
        "s3://cim-models/backup/20261202".into(),
    );
    round_trip(store).await;
}

#[tokio::test]
async fn a_second_version_stores_only_what_changed() {
    let src = tempfile::tempdir().unwrap();
    models(src.path());
    let dest = tempfile::tempdir().unwrap();
    let store = local_store(dest.path());
    let first = FileBackup::open(store.clone(), settings()).await.unwrap();
    let v1 = first
        .tree(&source(src.path(), "llama"), &CancellationToken::new())
        .await
        .unwrap();

    // Rewrite 5% of the weights in place, and append to the config.
    let path = src.path().join("llama/model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let len = bytes.len();
    let at = len / 2;
    bytes[at..at + len / 20].copy_from_slice(&noise(len / 20, 7));
    std::fs::write(&path, &bytes).unwrap();
    let config = src.path().join("llama/config.json");
    let mut text = std::fs::read(&config).unwrap();
    text.extend_from_slice(b"\n{\"rope\": 10000}");
    std::fs::write(&config, text).unwrap();

    let second = FileBackup::open(store.clone(), settings()).await.unwrap();
    let v2 = second
        .tree(&source(src.path(), "llama"), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(v2.bytes, v1.bytes + 16);
    let changed = (len / 20) as u64;
    assert!(
        v2.stored_bytes < changed + 4 * 8 * 1024 * 1024 && v2.stored_bytes < v1.stored_bytes / 2,
        "v2 stored {} of {} (v1 stored {})",
        v2.stored_bytes,
        v2.bytes,
        v1.stored_bytes
    );
    assert!(
        v2.new_chunks < v2.chunks / 2,
        "{} new of {}",
        v2.new_chunks,
        v2.chunks
    );
    let out = tempfile::tempdir().unwrap();
    restore_to(
        &store,
        &no_keys(),
        &v2,
        false,
        &out.path().join("m"),
        false,
        "j",
    )
    .await
    .unwrap();
    assert_same_tree(&src.path().join("llama"), &out.path().join("m"));
}

/// Flips one byte of the first stored blob of `file`; returns the chunk's CID.
async fn tamper(store: &ArchiveStore, tree: &TreeArchive, file: &str) -> String {
    let EntryKind::File { chunks, .. } = &tree.entry(file).unwrap().kind else {
        panic!()
    };
    let c = &chunks[0];
    let key = pack_key(&c.pack);
    let mut bytes = store.get(&key).await.unwrap().to_vec();
    bytes[(c.offset + c.stored_len / 2) as usize] ^= 0x40;
    store.overwrite(&key, bytes.into()).await.unwrap();
    c.cid.to_string()
}

#[tokio::test]
async fn a_tampered_chunk_is_named_by_file_and_chunk_and_nothing_half_restored_is_left() {
    let src = tempfile::tempdir().unwrap();
    models(src.path());
    let dest = tempfile::tempdir().unwrap();
    let store = local_store(dest.path());
    let backup = FileBackup::open(store.clone(), settings()).await.unwrap();
    let tree = backup
        .tree(&source(src.path(), "llama"), &CancellationToken::new())
        .await
        .unwrap();
    let chunk = tamper(&store, &tree, "model.safetensors").await;

    let v = verify_tree(&store, &no_keys(), &tree, false).await.unwrap();
    assert_eq!(v.findings.len(), 1, "{:?}", v.findings);
    let f = &v.findings[0];
    assert_eq!(
        (f.path.as_str(), f.chunk.as_deref()),
        ("model.safetensors", Some(chunk.as_str()))
    );
    assert!(f.object.as_deref().unwrap().starts_with("packs/"), "{f:?}");

    let out = tempfile::tempdir().unwrap();
    let err = restore_to(
        &store,
        &no_keys(),
        &tree,
        false,
        &out.path().join("llama"),
        false,
        "j",
    )
    .await
    .unwrap_err();
    assert!(matches!(err, FilesError::Damaged { .. }), "{err}");
    assert!(
        err.to_string().contains("model.safetensors") && err.to_string().contains(&chunk),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        0,
        "neither target nor temporary"
    );
}

#[tokio::test]
async fn a_restore_never_overwrites_unasked_and_replaces_whole_when_asked() {
    let src = tempfile::tempdir().unwrap();
    models(src.path());
    let dest = tempfile::tempdir().unwrap();
    let store = local_store(dest.path());
    let backup = FileBackup::open(store.clone(), settings()).await.unwrap();
    let tree = backup
        .tree(&source(src.path(), "llama"), &CancellationToken::new())
        .await
        .unwrap();

    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("llama");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("model.safetensors"), b"the old model").unwrap();
    let err = restore_to(&store, &no_keys(), &tree, false, &target, false, "j")
        .await
        .unwrap_err();
    assert!(matches!(err, FilesError::Exists { .. }), "{err}");
    assert_eq!(
        std::fs::read(target.join("model.safetensors")).unwrap(),
        b"the old model"
    );

    // Damaged backup + overwrite: the old model stays, whole.
    let tampered_dest = tempfile::tempdir().unwrap();
    let other = local_store(tampered_dest.path());
    let b2 = FileBackup::open(other.clone(), settings()).await.unwrap();
    let t2 = b2
        .tree(&source(src.path(), "llama"), &CancellationToken::new())
        .await
        .unwrap();
    tamper(&other, &t2, "model.safetensors").await;
    assert!(
        restore_to(&other, &no_keys(), &t2, false, &target, true, "j")
            .await
            .is_err()
    );
    assert_eq!(
        std::fs::read(target.join("model.safetensors")).unwrap(),
        b"the old model"
    );

    let r = restore_to(&store, &no_keys(), &tree, false, &target, true, "j")
        .await
        .unwrap();
    assert!(r.replaced);
    assert_same_tree(&src.path().join("llama"), &target);
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        1,
        "no safety copy or temporary left"
    );
}

#[tokio::test]
async fn links_are_kept_as_links_and_requests_cannot_leave_the_root() {
    let src = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("id_ed25519"), b"secret").unwrap();
    std::fs::create_dir(src.path().join("m")).unwrap();
    std::os::unix::fs::symlink(outside.path(), src.path().join("m/keys")).unwrap();
    std::os::unix::fs::symlink(outside.path(), src.path().join("escape")).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let store = local_store(dest.path());
    let backup = FileBackup::open(store.clone(), settings()).await.unwrap();
    let tree = backup
        .tree(&source(src.path(), "m"), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        (tree.files, tree.symlinks),
        (0, 1),
        "the link is stored, not what it points at"
    );
    for bad in ["escape", "escape/id_ed25519", "../x", "m/../../etc"] {
        let err = backup
            .tree(&source(src.path(), bad), &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            cim_backup_contracts::ErrorCode::Forbidden,
            "{bad}: {err}"
        );
    }
    let out = tempfile::tempdir().unwrap();
    restore_to(
        &store,
        &no_keys(),
        &tree,
        false,
        &out.path().join("m"),
        false,
        "j",
    )
    .await
    .unwrap();
    assert!(
        std::fs::symlink_metadata(out.path().join("m/keys"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[tokio::test]
async fn a_file_that_keeps_changing_is_left_out_never_stored_torn() {
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir(src.path().join("ckpt")).unwrap();
    let busy = src.path().join("ckpt/step-100.ckpt");
    std::fs::write(&busy, noise(24 << 20, 3)).unwrap();
    std::fs::write(src.path().join("ckpt/done.ckpt"), noise(1 << 20, 4)).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (busy, stop) = (busy.clone(), stop.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(busy).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(b"more").unwrap();
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    };
    let dest = tempfile::tempdir().unwrap();
    let store = local_store(dest.path());
    let backup = FileBackup::open(store.clone(), settings()).await.unwrap();
    let tree = backup
        .tree(&source(src.path(), "ckpt"), &CancellationToken::new())
        .await
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(tree.entry("done.ckpt").is_some());
    assert!(tree.entry("step-100.ckpt").is_none(), "never stored torn");
    assert_eq!(tree.skipped.len(), 1, "{:?}", tree.skipped);
    assert_eq!(tree.skipped[0].path, "step-100.ckpt");
    assert!(
        tree.skipped[0].reason.contains("changed while being read"),
        "{:?}",
        tree.skipped
    );
}

#[tokio::test]
async fn a_killed_backup_resumes_without_uploading_again() {
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir(src.path().join("big")).unwrap();
    for i in 0..3 {
        std::fs::write(
            src.path().join(format!("big/part-{i}.bin")),
            noise(40 << 20, 10 + i),
        )
        .unwrap();
    }
    let dest = tempfile::tempdir().unwrap();
    let store = local_store(dest.path());
    let first = FileBackup::open(store.clone(), settings()).await.unwrap();
    let cancel = CancellationToken::new();
    let stopper = {
        let (cancel, counters) = (cancel.clone(), first.counters.clone());
        tokio::spawn(async move {
            while counters.uploaded.load(std::sync::atomic::Ordering::Relaxed) < 40 << 20 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            cancel.cancel();
        })
    };
    let err = first
        .tree(&source(src.path(), "big"), &cancel)
        .await
        .unwrap_err();
    stopper.await.unwrap();
    assert!(matches!(err, FilesError::Cancelled), "{err}");
    let before = first.uploaded();
    assert!((40 << 20..120 << 20).contains(&before), "{before}");

    let second = FileBackup::open(store.clone(), settings()).await.unwrap();
    let tree = second
        .tree(&source(src.path(), "big"), &CancellationToken::new())
        .await
        .unwrap();
    assert!(
        second.uploaded() + before <= (120 << 20) + (40 << 20),
        "resumed upload {} after {before}: stored chunks were sent again",
        second.uploaded()
    );
    assert!(second.uploaded() < 120 << 20);
    let v = verify_tree(&store, &no_keys(), &tree, false).await.unwrap();
    assert!(v.findings.is_empty() && v.files == 3, "{v:?}");
}

#[tokio::test]
async fn encrypted_chunks_are_age_files_and_never_plaintext() {
    let identity = age::x25519::Identity::generate();
    let keyfile = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(keyfile.path(), identity.to_string().expose_secret()).unwrap();
    let keys = Keys::load(&EncryptionConfig {
        recipients: vec![identity.to_public().to_string()],
        identity_files: vec![keyfile.path().to_owned()],
    })
    .unwrap();
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir(src.path().join("cfg")).unwrap();
    let text = b"api_key = \"do-not-leak\"\n".repeat(1000);
    std::fs::write(src.path().join("cfg/settings.toml"), &text).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let store = local_store(dest.path());
    let mut s = settings();
    s.encryption = Some(cim_backup_contracts::events::Encryption {
        scheme: cim_backup_contracts::events::ENCRYPTION_AGE.into(),
        recipients: keys.recipients().unwrap(),
    });
    let backup = FileBackup::open(store.clone(), s).await.unwrap();
    let tree = backup
        .tree(&source(src.path(), "cfg"), &CancellationToken::new())
        .await
        .unwrap();
    let EntryKind::File { chunks, .. } = &tree.entry("settings.toml").unwrap().kind else {
        panic!()
    };
    let pack = store.get(&pack_key(&chunks[0].pack)).await.unwrap();
    assert!(!pack.windows(11).any(|w| w == b"do-not-leak"));
    // The blob is an age file the age CLI opens (to the zstd frame of the chunk).
    let blob = &pack[chunks[0].offset as usize..(chunks[0].offset + chunks[0].stored_len) as usize];
    let blob_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(blob_file.path(), blob).unwrap();
    let out = std::process::Command::new("age")
        .args(["-d", "-i"])
        .arg(keyfile.path())
        .arg(blob_file.path())
        .output()
        .expect("age is installed by scripts/install-tools");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plain = if chunks[0].zstd {
        zstd::decode_all(&out.stdout[..]).unwrap()
    } else {
        out.stdout
    };
    assert_eq!(plain, text);

    assert!(
        verify_tree(&store, &no_keys(), &tree, true)
            .await
            .unwrap()
            .findings
            .len()
            == 1,
        "no identity: a finding, never clean"
    );
    let restored = tempfile::tempdir().unwrap();
    restore_to(
        &store,
        &keys,
        &tree,
        true,
        &restored.path().join("cfg"),
        false,
        "j",
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read(restored.path().join("cfg/settings.toml")).unwrap(),
        text
    );
}
