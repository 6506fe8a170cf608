//! Real-server test harness for cim-backup.
//!
//! Tests here run against real `nats-server` processes (spawned on `-p -1` with temp store
//! dirs, readiness checked by connecting) and a real S3 API (`moto_server` on 127.0.0.1). Nothing
//! is mocked. If a server binary is missing the harness panics with the command that installs
//! it: a missing dependency is a failure, never a silently skipped test.
//!
//! # Layout
//! - [`archive_conformance`] — the contract of `ArchiveStore` as checks every destination
//!   backend (memory, local directory, S3) must pass.
//! - [`files`] — noise bytes for file trees, and the CLI run with its output checked.
//! - [`nats`] — [`NatsServer`] (one node, restartable on the same port and store) and
//!   [`NatsCluster`] (three clustered nodes).
//! - [`raw`] — the NATS protocol by hand (malformed header blocks, pipelined requests) and the
//!   server's HTTP monitoring endpoint.
//! - [`s3`] — [`MotoServer`] and bucket creation.
//! - [`service`] — runs the cim-backup service in-process or as a child process, and a raw
//!   request helper that speaks the contract as a foreign client would.
//! - [`streams`] — builders for CIM-like test streams and helpers to compare streams.

pub mod archive_conformance;
pub mod bench;
pub mod files;
pub mod grafana;
pub mod nats;
pub mod raw;
pub mod s3;
pub mod service;
pub mod streams;

pub use nats::{NatsCluster, NatsServer};
pub use s3::MotoServer;

/// Installs a tracing subscriber once, honouring `RUST_LOG` (quiet by default).
pub fn init_tracing() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
    });
}

/// Polls `check` every 20 ms until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: std::time::Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Every live key under `prefix` of a KV bucket with its value: what tests compare buckets by.
pub async fn kv_contents(
    store: &async_nats::jetstream::kv::Store,
    prefix: &str,
) -> std::collections::BTreeMap<String, Vec<u8>> {
    use futures::StreamExt;
    let mut out = std::collections::BTreeMap::new();
    let mut keys = store.keys().await.expect("keys");
    while let Some(key) = keys.next().await {
        let key = key.expect("key");
        if key.starts_with(prefix)
            && let Some(value) = store.get(&key).await.expect("get")
        {
            out.insert(key, value.to_vec());
        }
    }
    out
}
