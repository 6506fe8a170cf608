//! File-tree benchmark: backing up a models directory with cim-backup and with restic, side by
//! side in the same run (issue 9's figures).
//!
//! ```text
//! . scripts/install-tools --bench        # Debian's restic
//! cargo build --release -p cim-backup -p cim-backup-tests --bins
//! target/release/bench_files --gib 2
//! ```
//! Data: several safetensors files of random tensors plus small JSON and text files (`--gib`
//! in all). Version 2 rewrites 5% of the bytes in place (a run in the middle of each weight
//! file) and appends 1 MiB to one file. For both tools: backup of v1 and v2, full restore of
//! v2, bytes stored against unique bytes, and peak RSS (the service process's VmHWM for ours,
//! the child's maxrss for restic). Ours runs as its own process (the release `cim-backup`),
//! timed from the job's events; restic's is wall time. restic always encrypts (AES-256); ours
//! is measured plain and with age encryption. Prints a Markdown table for BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use cim_backup_contracts::subjects::files_commands;
use cim_backup_tests::NatsServer;
use cim_backup_tests::bench::{
    ServiceProcess, machine, peak_rss_kib, run_job, spawn_service_with, wait_ready,
};
use cim_backup_tests::service::Caller;
use serde_json::json;

const WEIGHT_FILES: usize = 4;

fn fill(buf: &mut [u8], seed: &mut u64) {
    for w in buf.chunks_mut(8) {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        w.copy_from_slice(&seed.to_le_bytes()[..w.len()]);
    }
}

/// v1 of the models directory; returns its bytes.
fn make_models(dir: &Path, total: u64) -> u64 {
    let per_file = total / WEIGHT_FILES as u64;
    let mut seed = 0x1234_5678_9abc_def1u64;
    let mut bytes = 0;
    for i in 0..WEIGHT_FILES {
        let model = dir.join(format!("model-{}", i / 2));
        std::fs::create_dir_all(&model).unwrap();
        let rows = per_file / 4 / 4096;
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(model.join(format!("part-{i}.safetensors"))).unwrap(),
        );
        bytes += cim_backup::archive::files::formats::write_safetensors(
            &mut f,
            &[("weight", "F32", vec![rows, 4096])],
            |b| fill(b, &mut seed),
        )
        .unwrap();
        let config =
            format!("{{\"hidden_size\": 4096, \"layers\": {i}, \"vocab\": 32000}}\n").repeat(200);
        std::fs::write(model.join(format!("config-{i}.json")), &config).unwrap();
        std::fs::write(
            model.join(format!("README-{i}.md")),
            "A model card.\n".repeat(500),
        )
        .unwrap();
        bytes += config.len() as u64 + 14 * 500;
    }
    bytes
}

/// v2: 5% of each weight file rewritten in place (one run in its middle), 1 MiB appended to
/// one file. Returns the bytes that changed or were added.
fn make_v2(dir: &Path) -> u64 {
    use std::io::{Seek, SeekFrom, Write};
    let mut seed = 0xfeed_beef_u64;
    let mut changed = 0;
    for i in 0..WEIGHT_FILES {
        let path = dir.join(format!("model-{}/part-{i}.safetensors", i / 2));
        let len = std::fs::metadata(&path).unwrap().len();
        let run = len / 20;
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(len / 2)).unwrap();
        let mut buf = vec![0u8; run as usize];
        fill(&mut buf, &mut seed);
        f.write_all(&buf).unwrap();
        changed += run;
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("model-0/README-0.md"))
        .unwrap();
    let mut extra = vec![0u8; 1 << 20];
    fill(&mut extra, &mut seed);
    f.write_all(&extra).unwrap();
    changed + extra.len() as u64
}

fn du(dir: &Path) -> u64 {
    walk(dir)
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Runs a command; returns its wall time and the peak RSS (KiB) of that child.
fn timed(cmd: &mut Command) -> (f64, u64) {
    let t = Instant::now();
    let child = cmd
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child, with valid pointers.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed"
    );
    std::mem::forget(child);
    (t.elapsed().as_secs_f64(), usage.ru_maxrss as u64)
}

fn restic(repo: &Path) -> Command {
    let mut c = Command::new("restic");
    c.arg("--repo")
        .arg(repo)
        .arg("--quiet")
        .env("RESTIC_PASSWORD", "bench");
    c
}

struct Row {
    tool: String,
    v1: f64,
    v2: f64,
    restore: f64,
    stored: u64,
    rss_mib: f64,
}

async fn ours(nats: &NatsServer, models: &Path, unique: u64, encrypt: bool) -> anyhow::Result<Row> {
    let archive = tempfile::tempdir()?;
    let restored = tempfile::tempdir_in(models.parent().unwrap())?;
    let mut extra = vec![
        "--root".to_owned(),
        format!("models={}", models.parent().unwrap().display()),
    ];
    let keys = tempfile::tempdir()?;
    let config = keys.path().join("config.toml");
    if encrypt {
        let identity = age::x25519::Identity::generate();
        use age::secrecy::ExposeSecret;
        let key = keys.path().join("id.age");
        std::fs::write(&key, identity.to_string().expose_secret())?;
        std::fs::write(
            &config,
            format!(
                "[encryption]\nrecipients = [\"{}\"]\nidentity_files = [\"{}\"]\n",
                identity.to_public(),
                key.display()
            ),
        )?;
        extra.extend(["--config".to_owned(), config.display().to_string()]);
    }
    let service = ServiceProcess(spawn_service_with(&nats.url(), archive.path(), &extra)?);
    let caller = Caller::connect(&nats.url()).await;
    wait_ready(&caller).await;
    let name = models.file_name().unwrap().to_str().unwrap();
    let trees: Vec<_> = std::fs::read_dir(models)?
        .map(|e| json!({"root": "models", "path": format!("{name}/{}", e.unwrap().file_name().to_str().unwrap())}))
        .collect();
    let start = format!("{}.start", files_commands("bench"));
    let body = json!({"trees": trees, "parallel": 2, "encrypt": encrypt});
    let (_, v1) = run_job(&caller, &start, body.clone()).await;
    make_v2(models);
    let (view, v2) = run_job(&caller, &start, body).await;
    let backup = view["backup_id"].as_str().unwrap().to_owned();
    let rel = restored
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let placements: Vec<_> = std::fs::read_dir(models)?
        .map(|e| {
            let m = e.unwrap().file_name().to_str().unwrap().to_owned();
            json!({"tree": format!("models/{name}/{m}"), "path": format!("{rel}/{m}")})
        })
        .collect();
    let (_, restore) = run_job(
        &caller,
        &format!("{}.restore", files_commands("bench")),
        json!({"backup": backup, "source": format!("file://{}", archive.path().display()), "trees": placements}),
    )
    .await;
    let rss = peak_rss_kib(service.0.id());
    drop(service);
    let stored = du(archive.path());
    eprintln!(
        "ours{}: v1 {v1:.2}s v2 {v2:.2}s restore {restore:.2}s stored {stored} of {unique} unique",
        if encrypt { " (age)" } else { "" }
    );
    Ok(Row {
        tool: if encrypt {
            "cim-backup (age encryption)".into()
        } else {
            "cim-backup (plain)".into()
        },
        v1,
        v2,
        restore,
        stored,
        rss_mib: rss as f64 / 1024.0,
    })
}

fn restic_run(models: &Path, unique: u64) -> Row {
    let repo = tempfile::tempdir().unwrap();
    let target = tempfile::tempdir().unwrap();
    let (_, _) = timed(restic(repo.path()).arg("init"));
    let (v1, rss1) = timed(restic(repo.path()).arg("backup").arg(models));
    make_v2(models);
    let (v2, rss2) = timed(restic(repo.path()).arg("backup").arg(models));
    let (restore, rss3) = timed(
        restic(repo.path())
            .args(["restore", "latest", "--target"])
            .arg(target.path()),
    );
    let stored = du(repo.path());
    eprintln!(
        "restic: v1 {v1:.2}s v2 {v2:.2}s restore {restore:.2}s stored {stored} of {unique} unique"
    );
    Row {
        tool: "restic".into(),
        v1,
        v2,
        restore,
        stored,
        rss_mib: rss1.max(rss2).max(rss3) as f64 / 1024.0,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let gib: f64 = std::env::args()
        .skip_while(|a| a != "--gib")
        .nth(1)
        .map(|n| n.parse().expect("--gib N"))
        .unwrap_or(2.0);
    let total = (gib * (1u64 << 30) as f64) as u64;
    // `--hashing-only`: just the hashing table (to profile it under `perf record`).
    if std::env::args().any(|a| a == "--hashing-only") {
        for (name, one, two) in hashing_rates(total)? {
            println!("| {name} | {one:.2} | {two:.2} |");
        }
        return Ok(());
    }
    let version = Command::new("restic")
        .arg("version")
        .output()
        .expect("restic is installed by scripts/install-tools --bench");
    let nats = NatsServer::start().await;
    let mut rows = Vec::new();
    let mut unique = 0;
    for tool in ["restic", "ours", "ours-age"] {
        // Each tool gets the same v1 (same seed) and makes the same v2.
        let work = tempfile::tempdir_in(std::env::temp_dir())?;
        let models = work.path().join("models");
        std::fs::create_dir(&models)?;
        let v1 = make_models(&models, total);
        // Unique bytes: v1 plus what v2 rewrote and added.
        unique = v1 + (v1 / 20) + (1 << 20);
        let row = match tool {
            "restic" => restic_run(&models, unique),
            "ours" => ours(&nats, &models, unique, false).await?,
            _ => ours(&nats, &models, unique, true).await?,
        };
        rows.push(row);
    }
    println!(
        "{}; {}",
        machine(),
        String::from_utf8_lossy(&version.stdout).trim()
    );
    println!(
        "{:.2} GiB of models, {unique} unique bytes over v1 and v2",
        gib
    );
    println!();
    println!(
        "| tool | backup v1 s | backup v2 s | restore s | stored / unique | peak RSS MiB | v1 ratio to restic |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let anchor = rows[0].v1;
    let hashing = hashing_rates(total)?;
    for r in &rows {
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.3} | {:.0} | {:.2} |",
            r.tool,
            r.v1,
            r.v2,
            r.restore,
            r.stored as f64 / unique as f64,
            r.rss_mib,
            r.v1 / anchor
        );
    }
    println!();
    println!(
        "| hashing (chunking + chunk ids + whole-file sha256, page cache) | 1 thread GB/s | 2 threads GB/s |"
    );
    println!("|---|---:|---:|");
    for (name, one, two) in hashing {
        println!("| {name} | {one:.2} | {two:.2} |");
    }
    Ok(())
}

/// What the backup's read path costs without reading from disk, packing or uploading: FastCDC,
/// each chunk's id and the whole-file sha256, over a models directory already in the page
/// cache, on 1 and on 2 threads (a file per thread at a time, as the backup reads them). Chunk
/// ids as format `cim-backup-tree/2` names them (BLAKE3) and as `/1` did (sha2-256).
fn hashing_rates(total: u64) -> anyhow::Result<Vec<(&'static str, f64, f64)>> {
    use cim_backup::archive::files::chunker::Chunker;
    use sha2::{Digest, Sha256};
    let work = tempfile::tempdir_in(std::env::temp_dir())?;
    let bytes = make_models(work.path(), total);
    let files = walk(work.path());
    for f in &files {
        std::fs::read(f)?; // into the page cache
    }
    let run = |threads: usize, id: fn(&[u8]) -> cim_backup_contracts::cid::Cid| -> f64 {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    let mut chunker = Chunker::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(path) = files.get(i) else { break };
                        let file = std::fs::File::open(path).unwrap();
                        let mut whole = Sha256::new();
                        chunker
                            .chunks(&file, |chunk: &[u8]| {
                                whole.update(chunk);
                                std::hint::black_box(id(chunk));
                                Ok::<(), std::io::Error>(())
                            })
                            .unwrap();
                        std::hint::black_box(whole.finalize());
                    }
                });
            }
        });
        bytes as f64 / start.elapsed().as_secs_f64() / 1e9
    };
    let mut rates = Vec::new();
    for (name, id) in [
        (
            "BLAKE3 chunk ids (format 2)",
            cim_backup_contracts::cid::chunk_cid as fn(&[u8]) -> _,
        ),
        (
            "sha2-256 chunk ids (format 1)",
            cim_backup_contracts::cid::raw_cid,
        ),
    ] {
        let (one, two) = (run(1, id), run(2, id));
        eprintln!("hashing, {name}: {one:.2} GB/s on 1 thread, {two:.2} GB/s on 2");
        rates.push((name, one, two));
    }
    Ok(rates)
}
