//! What file-tree tests share: pseudo-random bytes (weights do not compress), and running the
//! `cim-backup` binary with its output checked.

use std::process::{Command, Output};

/// `len` bytes of xorshift noise from `seed`: incompressible like model weights, repeatable.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = vec![0u8; len];
    for w in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
    }
    out
}

/// Runs `bin --nats-url url args…` off the async runtime.
pub async fn cli(bin: &str, url: &str, args: &[&str]) -> Output {
    let (bin, url) = (bin.to_owned(), url.to_owned());
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .arg("--nats-url")
            .arg(url)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run cim-backup")
    })
    .await
    .expect("the CLI thread")
}

/// The output of a run that must succeed, as text (the run's streams shown if it did not).
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
