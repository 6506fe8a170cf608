//! The contract of [`ArchiveStore`], as checks any backend must pass (in the manner of
//! object_store's `integration.rs`).
//!
//! Each check is a `pub async fn` taking the store under test and panicking with what broke;
//! [`run_all`] runs every one of them and fails naming each check that failed.
//! `tests/tests/archive_backends.rs` runs the suite against every kind of destination the
//! service builds: memory, a local directory and S3.
//!
//! Checks write under keys of their own (`conformance/<check>/…`, and manifests under
//! `manifests/`), so they may share one store; [`list_manifests_lists_manifests_only`] compares
//! the listing before and after, so other manifests in the store do not disturb it.

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;

use bytes::Bytes;
use cim_backup::archive::store::PART_SIZE;
use cim_backup::archive::{ArchiveError, ArchiveStore, Manifest};
use cim_backup_contracts::cid::{dag_cbor_cid, raw_cid};
use futures::FutureExt;

const MIB: usize = 1024 * 1024;

/// Runs every check against `store` and panics naming each one that failed (their own panic
/// messages say what broke). All checks run even when an early one fails.
pub async fn run_all(store: &ArchiveStore) {
    let mut failed = Vec::new();
    macro_rules! run {
        ($($check:ident),* $(,)?) => {
            let all = [$(stringify!($check)),*];
            $(
                if AssertUnwindSafe($check(store)).catch_unwind().await.is_err() {
                    failed.push(stringify!($check));
                }
            )*
            assert!(
                failed.is_empty(),
                "{}: {} of {} archive checks failed: {}",
                store.url(),
                failed.len(),
                all.len(),
                failed.join(", ")
            );
        };
    }
    run!(
        put_get_round_trip,
        size_and_has,
        put_if_absent_skips_an_object_of_the_same_size,
        get_of_a_missing_key_is_missing,
        ranged_reads_are_exact,
        ranges_outside_the_object_are_refused,
        multipart_write_reads_back_byte_exact,
        empty_multipart_write_is_an_empty_object,
        aborted_writer_leaves_nothing,
        dropped_writer_leaves_nothing,
        list_manifests_lists_manifests_only,
        delete_removes,
    );
}

/// What is put is what is got.
pub async fn put_get_round_trip(store: &ArchiveStore) {
    let key = "conformance/round-trip/object";
    let bytes = pattern(10_000, 1);
    assert!(
        store.put_if_absent(key, bytes.clone()).await.unwrap(),
        "a first put uploads"
    );
    assert_same(&store.get(key).await.unwrap(), &bytes, key);
}

/// `size` is one HEAD: the size of what is there, `None` for nothing; `has` wants the exact size.
pub async fn size_and_has(store: &ArchiveStore) {
    let key = "conformance/size/object";
    store.put_if_absent(key, pattern(777, 2)).await.unwrap();
    assert_eq!(store.size(key).await.unwrap(), Some(777));
    assert!(store.has(key, 777).await.unwrap());
    assert!(
        !store.has(key, 776).await.unwrap(),
        "another size is not had"
    );
    let missing = "conformance/size/missing";
    assert_eq!(store.size(missing).await.unwrap(), None);
    assert!(!store.has(missing, 0).await.unwrap());
}

/// An object of the same size is taken to be the same object (keys are CIDs) and not uploaded
/// again, and the caller is told so; another size is uploaded over it.
pub async fn put_if_absent_skips_an_object_of_the_same_size(store: &ArchiveStore) {
    let key = "conformance/put-if-absent/object";
    let first = pattern(4_096, 3);
    assert!(store.put_if_absent(key, first.clone()).await.unwrap());
    assert!(
        !store.put_if_absent(key, first.clone()).await.unwrap(),
        "the same object again is reported as skipped"
    );
    assert!(
        !store.put_if_absent(key, pattern(4_096, 4)).await.unwrap(),
        "other bytes of the same size are skipped too"
    );
    assert_same(&store.get(key).await.unwrap(), &first, key);
    let longer = pattern(4_097, 5);
    assert!(
        store.put_if_absent(key, longer.clone()).await.unwrap(),
        "another size (a truncated upload) is replaced"
    );
    assert_same(&store.get(key).await.unwrap(), &longer, key);
}

/// A missing object is [`ArchiveError::Missing`] naming its key, whole or in part.
pub async fn get_of_a_missing_key_is_missing(store: &ArchiveStore) {
    let key = "conformance/missing/object";
    match store.get(key).await {
        Err(ArchiveError::Missing { object }) => assert_eq!(object, key),
        other => panic!("get of {key}: {other:?}, not Missing"),
    }
    match store.get_range(key, 0..1).await {
        Err(ArchiveError::Missing { object }) => assert_eq!(object, key),
        other => panic!("get_range of {key}: {other:?}, not Missing"),
    }
}

/// A ranged read gives exactly the bytes asked for: the start, the middle, the last byte, all.
pub async fn ranged_reads_are_exact(store: &ArchiveStore) {
    let key = "conformance/range/object";
    let bytes = pattern(100_000, 6);
    store.put_if_absent(key, bytes.clone()).await.unwrap();
    for range in [0..1, 0..10, 12_345..54_321, 99_999..100_000, 0..100_000] {
        let got = store.get_range(key, range.clone()).await.unwrap();
        let want = bytes.slice(range.start as usize..range.end as usize);
        assert_same(&got, &want, &format!("{key} {range:?}"));
    }
}

/// A range not wholly inside the object is refused, naming the object, the range and (when it
/// runs past the end) the object's size; an empty or backwards range is refused unread.
pub async fn ranges_outside_the_object_are_refused(store: &ArchiveStore) {
    let key = "conformance/range-outside/object";
    store.put_if_absent(key, pattern(1_000, 7)).await.unwrap();
    for (range, size) in [
        (999..1_001, Some(1_000)),
        (0..1_001, Some(1_000)),
        (1_000..1_001, Some(1_000)),
        (5_000..6_000, Some(1_000)),
        (10..10, None),
        (std::ops::Range { start: 20, end: 10 }, None),
    ] {
        let err = match store.get_range(key, range.clone()).await {
            Err(e) => e,
            Ok(bytes) => panic!(
                "get_range({range:?}) of a 1000-byte object read {} bytes",
                bytes.len()
            ),
        };
        let text = err.to_string();
        match err {
            ArchiveError::Range {
                object,
                range: said,
                size: said_size,
            } => assert_eq!(
                (object.as_str(), said, said_size),
                (key, range.clone(), size),
                "{text}"
            ),
            other => panic!("get_range({range:?}) of a 1000-byte object: {other:?}, not Range"),
        }
        assert!(
            text.contains(key) && text.contains(&format!("{}..{}", range.start, range.end)),
            "the message names the object and the range: {text}"
        );
    }
}

/// An object written in uneven pieces through an [`ObjectWriter`](cim_backup::archive::store::ObjectWriter),
/// over several parts, reads back byte for byte, and is invisible until finished.
pub async fn multipart_write_reads_back_byte_exact(store: &ArchiveStore) {
    let key = "conformance/multipart/object";
    let total = 13 * MIB + 17;
    let bytes = pattern(total, 8);
    // One byte, a page, pieces that straddle part boundaries, one that holds more than a whole
    // part, an empty one, and the rest.
    let pieces = [1, 4_099, 3 * MIB + 1, 7 * MIB + 13, 65_536, 0];
    let mut writer = store.writer(key).await.unwrap();
    let mut at = 0;
    for length in pieces {
        writer.write(bytes.slice(at..at + length)).await.unwrap();
        at += length;
    }
    writer.write(bytes.slice(at..)).await.unwrap();
    assert_eq!(
        store.size(key).await.unwrap(),
        None,
        "nothing is visible before finish"
    );
    assert_eq!(writer.finish().await.unwrap(), total as u64);
    assert_eq!(store.size(key).await.unwrap(), Some(total as u64));
    assert_same(&store.get(key).await.unwrap(), &bytes, key);
    let across = (PART_SIZE - 10) as u64..(PART_SIZE + 10) as u64;
    assert_same(
        &store.get_range(key, across.clone()).await.unwrap(),
        &bytes.slice(PART_SIZE - 10..PART_SIZE + 10),
        &format!("{key} {across:?}"),
    );
}

/// A writer finished with nothing written makes an empty object (not an error, not nothing).
pub async fn empty_multipart_write_is_an_empty_object(store: &ArchiveStore) {
    let key = "conformance/multipart-empty/object";
    let writer = store.writer(key).await.unwrap();
    assert_eq!(writer.finish().await.unwrap(), 0);
    assert_eq!(store.size(key).await.unwrap(), Some(0));
    assert!(store.get(key).await.unwrap().is_empty());
    assert!(matches!(
        store.get_range(key, 0..1).await,
        Err(ArchiveError::Range { size: Some(0), .. })
    ));
}

/// An aborted writer leaves no object, even after uploading a part, and leaves an object that
/// was already under the key as it was.
pub async fn aborted_writer_leaves_nothing(store: &ArchiveStore) {
    let fresh = "conformance/abort/fresh";
    let mut writer = store.writer(fresh).await.unwrap();
    writer.write(pattern(PART_SIZE + 1, 9)).await.unwrap();
    writer.abort().await;
    assert_eq!(store.size(fresh).await.unwrap(), None);
    assert!(matches!(
        store.get(fresh).await,
        Err(ArchiveError::Missing { .. })
    ));

    let existing = "conformance/abort/existing";
    let old = pattern(1_234, 10);
    store.put_if_absent(existing, old.clone()).await.unwrap();
    let mut writer = store.writer(existing).await.unwrap();
    writer.write(pattern(PART_SIZE + 1, 11)).await.unwrap();
    writer.abort().await;
    assert_same(&store.get(existing).await.unwrap(), &old, existing);
}

/// A writer dropped unfinished leaves no object, and the key can be written afresh after it.
pub async fn dropped_writer_leaves_nothing(store: &ArchiveStore) {
    let key = "conformance/drop/object";
    let mut writer = store.writer(key).await.unwrap();
    writer.write(pattern(PART_SIZE + 1, 12)).await.unwrap();
    drop(writer);
    // The abort runs in the background; give it the chance to, then look.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(store.size(key).await.unwrap(), None);

    let bytes = pattern(PART_SIZE + 2, 13);
    let mut writer = store.writer(key).await.unwrap();
    writer.write(bytes.clone()).await.unwrap();
    assert_eq!(writer.finish().await.unwrap(), bytes.len() as u64);
    assert_same(&store.get(key).await.unwrap(), &bytes, key);
}

/// `list_manifests` lists the manifests `put_manifest` wrote, and nothing that is not a
/// manifest: other prefixes, and names under `manifests/` that are not CIDs.
pub async fn list_manifests_lists_manifests_only(store: &ArchiveStore) {
    let before: BTreeSet<String> = listed(store).await;
    let (a, a_size) = store.put_manifest(&manifest("job-a")).await.unwrap();
    let (b, _) = store.put_manifest(&manifest("job-b")).await.unwrap();
    let segment = raw_cid(b"not a manifest");
    store
        .put_if_absent(&format!("segments/{segment}"), Bytes::from_static(b"x"))
        .await
        .unwrap();
    store
        .put_if_absent("manifests/not-a-cid", Bytes::from_static(b"x"))
        .await
        .unwrap();
    store
        .put_if_absent(
            &format!("conformance/list/manifests/{segment}"),
            Bytes::from_static(b"x"),
        )
        .await
        .unwrap();

    let mut expected = before.clone();
    expected.extend([a.to_string(), b.to_string()]);
    assert_eq!(listed(store).await, expected);
    let (read, size) = store.get_manifest(&a).await.unwrap();
    assert_eq!((read, size), (manifest("job-a"), a_size));
    // Leave the listing as it was, for whoever lists next.
    for cid in [a, b] {
        store.delete(&format!("manifests/{cid}")).await.unwrap();
    }
    store.delete("manifests/not-a-cid").await.unwrap();
    assert_eq!(listed(store).await, before);
}

/// A deleted object is gone.
pub async fn delete_removes(store: &ArchiveStore) {
    let key = "conformance/delete/object";
    store.put_if_absent(key, pattern(10, 14)).await.unwrap();
    store.delete(key).await.unwrap();
    assert_eq!(store.size(key).await.unwrap(), None);
    assert!(matches!(
        store.get(key).await,
        Err(ArchiveError::Missing { .. })
    ));
}

async fn listed(store: &ArchiveStore) -> BTreeSet<String> {
    store
        .list_manifests()
        .await
        .unwrap()
        .iter()
        .map(|c| c.to_string())
        .collect()
}

/// A small valid manifest, `job_id` telling two apart: the worked example of docs/ARCHIVE.md
/// §6.6 (pinned byte for byte by `archive::manifest`'s golden test), decoded rather than
/// spelt out, so that fields the manifest gains later do not have to be added here.
fn manifest(job_id: &str) -> Manifest {
    let hex = include_str!("../../service/src/archive/golden/manifest_v1.hex").trim();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("the golden manifest is hex"))
        .collect();
    let mut manifest =
        Manifest::decode(&bytes, &dag_cbor_cid(&bytes)).expect("the golden manifest decodes");
    manifest.job_id = job_id.into();
    manifest
}

/// `length` bytes that differ with `seed` and with position, so a swapped, repeated or
/// shifted part cannot read back equal.
fn pattern(length: usize, seed: u64) -> Bytes {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = Vec::with_capacity(length + 8);
    while bytes.len() < length {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(length);
    Bytes::from(bytes)
}

/// Equal bytes, or a panic naming the first offset that differs (not two 13 MiB dumps).
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got
        .iter()
        .zip(want)
        .position(|(g, w)| g != w)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "{what}: read back {} bytes, wrote {}; first difference at offset {first}",
        got.len(),
        want.len()
    );
}
