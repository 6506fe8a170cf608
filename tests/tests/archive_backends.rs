//! The `ArchiveStore` conformance suite (`cim_backup_tests::archive_conformance`) against every
//! kind of destination, each opened the way the service opens it: through `Destinations`, from
//! its URL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cim_backup::archive::ArchiveStore;
use cim_backup::config::DestinationConfig;
use cim_backup::destination::Destinations;
use cim_backup_tests::archive_conformance::run_all;
use cim_backup_tests::s3::{ACCESS_KEY, REGION, SECRET_KEY};
use cim_backup_tests::{MotoServer, init_tracing};

/// Opens `url` to write into, as a backup would.
fn open(destinations: &Destinations, url: &str) -> ArchiveStore {
    let resolved = destinations.resolve(Some(url)).unwrap();
    destinations.create(&resolved.url).unwrap()
}

#[tokio::test]
async fn in_memory() {
    init_tracing();
    let destinations = Destinations::new(BTreeMap::new(), None, &[]);
    run_all(&open(&destinations, "memory://archive-conformance")).await;
}

#[tokio::test]
async fn local_directory() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let destinations = Destinations::new(BTreeMap::new(), None, &[root.path().to_path_buf()]);
    let url = format!("file://{}/backups", root.path().display());
    run_all(&open(&destinations, &url)).await;
    // The file system stages a multipart write in `<name>#<n>` beside its key; aborted and
    // dropped writers removed theirs (a dropped one's in the background, so wait for it).
    let staged =
        cim_backup_tests::eventually(Duration::from_secs(5), "staged files removed", || {
            let staged = staged_files(root.path());
            async move { staged.is_empty().then_some(staged) }
        })
        .await;
    assert!(staged.is_empty());
}

/// Files under `dir` whose name is a multipart staging name (`…#<digits>`).
fn staged_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(staged_files(&path));
        } else if path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.rsplit_once('#'))
            .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        {
            found.push(path);
        }
    }
    found
}

#[tokio::test]
async fn s3_on_moto() {
    init_tracing();
    let moto = MotoServer::start().await;
    moto.create_bucket("conformance").await;
    // Under a prefix, as a destination usually is, so keys are checked to stay inside it.
    let url = "s3://conformance/archive/here";
    let mut named = BTreeMap::new();
    named.insert(
        "offsite".to_owned(),
        DestinationConfig {
            endpoint: Some(moto.endpoint()),
            region: Some(REGION.into()),
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(SECRET_KEY.into()),
            allow_http: true,
            retry_timeout_secs: Some(5),
            ..DestinationConfig::url(url)
        },
    );
    let destinations = Destinations::new(named, None, &[]);
    let store = open(&destinations, "offsite");
    run_all(&store).await;

    // Everything the suite left is under the prefix.
    use futures::TryStreamExt;
    use object_store::ObjectStore;
    let outside: Vec<String> = moto
        .store("conformance")
        .list(None)
        .map_ok(|m| m.location.to_string())
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .filter(|k| !k.starts_with("archive/here/"))
        .collect();
    assert!(
        outside.is_empty(),
        "objects outside the prefix: {outside:?}"
    );
    // Aborted and dropped writers aborted their uploads: S3 keeps no parts of them.
    assert_eq!(
        moto.pending_uploads("conformance").await,
        Vec::<String>::new()
    );
}
