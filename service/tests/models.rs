//! Model weights through the running service and the `cim-backup` binary, as the runbook uses
//! them: `list-gpu-models`, `backup-gpu-models`, `verify-model-backup`; file requests refused
//! outside the declared roots and on the shared subject; a tampered chunk named by the deep
//! verify; and a file backup killed mid-way that resumes without uploading its chunks again.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use cim_backup_contracts::subjects::{CMD_START, CMD_VERIFY, files_commands, files_queries};
use cim_backup_contracts::views::JobState;
use cim_backup_tests::files::{noise, ok};
use cim_backup_tests::service::{Caller, TestService, test_config};
use cim_backup_tests::{NatsServer, init_tracing};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_cim-backup");

async fn cli(url: &str, args: &[&str]) -> Output {
    cim_backup_tests::files::cli(BIN, url, args).await
}
const WAIT: Duration = Duration::from_secs(120);

/// Two models: a safetensors directory and a single GGUF file.
fn models(root: &Path, mib: usize) {
    let m = root.join("llama-3-8b");
    std::fs::create_dir_all(&m).unwrap();
    let mut f = std::fs::File::create(m.join("model.safetensors")).unwrap();
    let n = (mib << 20) / 4 / 1024;
    let mut seed = 0;
    cim_backup::archive::files::formats::write_safetensors(
        &mut f,
        &[
            ("embed", "F32", vec![n as u64, 512]),
            ("lm_head", "F32", vec![n as u64, 512]),
        ],
        |b| {
            seed += 1;
            b.copy_from_slice(&noise(b.len(), seed));
        },
    )
    .unwrap();
    std::fs::write(
        m.join("config.json"),
        br#"{"architectures":["LlamaForCausalLM"]}"#,
    )
    .unwrap();
    let mut gguf = b"GGUF\x03\0\0\0".to_vec();
    gguf.extend(noise(1 << 20, 9));
    std::fs::write(root.join("phi.gguf"), gguf).unwrap();
}

struct Setup {
    nats: NatsServer,
    root: tempfile::TempDir,
    archive: tempfile::TempDir,
    config: cim_backup::config::Config,
}

fn setup_with(nats: NatsServer, mib: usize) -> Setup {
    let root = tempfile::tempdir().unwrap();
    models(root.path(), mib);
    let archive = tempfile::tempdir().unwrap();
    let mut config = test_config(&nats.url(), archive.path(), "gpu-1");
    config
        .files
        .roots
        .insert("models".into(), root.path().to_owned());
    Setup {
        nats,
        root,
        archive,
        config,
    }
}

#[tokio::test]
async fn the_model_runbook_commands_work_end_to_end() {
    init_tracing();
    let s = setup_with(NatsServer::start().await, 8);
    let service = TestService::start(s.config.clone()).await;
    let url = s.nats.url();

    let listed = ok(&cli(&url, &["list-gpu-models"]).await);
    assert!(
        listed.contains("llama-3-8b") && listed.contains("phi.gguf"),
        "{listed}"
    );
    assert!(listed.contains("safetensors (2 tensors, F32"), "{listed}");
    assert!(
        listed.contains("gguf v3") && listed.contains("never"),
        "{listed}"
    );

    let source = s.root.path().display().to_string();
    let out = ok(&cli(
        &url,
        &[
            "--json",
            "backup-gpu-models",
            "--source",
            &source,
            "--parallel",
            "2",
            "--wait",
        ],
    )
    .await);
    let view: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(view["state"], "completed", "{view}");
    let backup_id = view["backup_id"].as_str().unwrap().to_owned();

    let entries: Value =
        serde_json::from_str(&ok(&cli(&url, &["--json", "list-backups"]).await)).unwrap();
    let trees = &entries[0]["trees"];
    assert_eq!(trees.as_array().unwrap().len(), 2, "{entries}");
    assert_eq!(trees[0]["name"], "models/llama-3-8b");
    assert_eq!(trees[0]["files"], 2);

    let listed: Value =
        serde_json::from_str(&ok(&cli(&url, &["--json", "list-gpu-models"]).await)).unwrap();
    assert_eq!(
        listed[0]["last_backup"]["backup_id"],
        backup_id.as_str(),
        "{listed}"
    );
    assert_eq!(listed[0]["changed_since_backup"], false);
    let recent = ok(&cli(
        &url,
        &["--json", "list-gpu-models", "--modified-since", "24h"],
    )
    .await);
    assert_eq!(
        serde_json::from_str::<Value>(&recent)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let none = ok(&cli(
        &url,
        &[
            "--json",
            "list-gpu-models",
            "--modified-since",
            "2999-01-01T00:00:00Z",
        ],
    )
    .await);
    assert_eq!(serde_json::from_str::<Value>(&none).unwrap(), json!([]));

    let location = format!("file://{}", s.archive.path().display());
    let verified = ok(&cli(
        &url,
        &["--json", "verify-model-backup", "--backup-path", &location],
    )
    .await);
    let view: Value = serde_json::from_str(&verified).unwrap();
    assert_eq!(view["state"], "completed", "{view}");

    // A second backup of unchanged models uploads no chunk again.
    let out = ok(&cli(
        &url,
        &[
            "--json",
            "backup-gpu-models",
            "--models",
            "llama-3-8b",
            "--wait",
        ],
    )
    .await);
    let second: Value = serde_json::from_str(&out).unwrap();
    let entries: Value =
        serde_json::from_str(&ok(&cli(&url, &["--json", "list-backups"]).await)).unwrap();
    let again = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["backup_id"] == second["backup_id"])
        .unwrap();
    assert_eq!(again["trees"][0]["new_chunks"], 0, "{again}");
    assert_eq!(again["trees"][0]["stored_bytes"], 0, "{again}");

    // A changed model says so.
    std::fs::write(
        s.root.path().join("llama-3-8b/config.json"),
        b"{\"architectures\":[]}",
    )
    .unwrap();
    let listed: Value =
        serde_json::from_str(&ok(&cli(&url, &["--json", "list-gpu-models"]).await)).unwrap();
    assert_eq!(listed[0]["changed_since_backup"], true, "{listed}");

    // A tampered pack: the deep verify fails, naming the file and the chunk.
    let packs = s.archive.path().join("packs");
    let pack = std::fs::read_dir(&packs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&pack, bytes).unwrap();
    let out = cli(
        &url,
        &["--json", "verify-model-backup", "--backup-path", &backup_id],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let view: Value = serde_json::from_slice(&out.stdout).unwrap();
    let message = view["error"]["message"].as_str().unwrap();
    // Chunks are named by BLAKE3 raw CIDs (bafkr4i…), packs by sha2-256 ones (bafkrei…).
    assert!(
        message.contains("models/llama-3-8b: model.safetensors: chunk bafkr4i"),
        "{message}"
    );
    assert!(
        view["error"]["object"]
            .as_str()
            .unwrap()
            .starts_with("packs/"),
        "{view}"
    );
    service.stop().await;
}

#[tokio::test]
async fn file_requests_are_refused_outside_the_roots_and_on_the_shared_subject() {
    init_tracing();
    let s = setup_with(NatsServer::start().await, 1);
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), s.root.path().join("escape")).unwrap();
    let service = TestService::start(s.config.clone()).await;
    let c = Caller::connect(&s.nats.url()).await;
    let start = format!("{}.start", files_commands("gpu-1"));
    for (tree, code, says) in [
        (json!({"root": "models", "path": "../etc"}), 403, ".."),
        (json!({"root": "models", "path": "escape"}), 403, "symlink"),
        (
            json!({"root": "models", "path": "escape/x"}),
            403,
            "symlink",
        ),
        (json!({"root": "etc", "path": ""}), 404, "no root \"etc\""),
        (
            json!({"root": "models", "path": "nope"}),
            404,
            "does not exist",
        ),
    ] {
        let (status, message) = c.err(&start, json!({ "trees": [tree] })).await;
        assert_eq!(status, code, "{tree}: {message}");
        assert!(message.contains(says), "{tree}: {message}");
    }
    let (status, message) = c
        .err(
            CMD_START,
            json!({ "trees": [{"root": "models", "path": "phi.gguf"}] }),
        )
        .await;
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("cim.backup.files."), "{message}");
    let (status, message) = c
        .err(
            &format!("{}.models", files_queries("gpu-1")),
            json!({ "root": "models", "path": "../.." }),
        )
        .await;
    assert_eq!(status, 403, "{message}");
    let jobs = c
        .ok(cim_backup_contracts::subjects::QRY_JOBS, json!({}))
        .await;
    assert_eq!(jobs, json!([]), "nothing was recorded for refused requests");
    service.stop().await;
}

#[tokio::test]
async fn a_file_backup_killed_mid_way_resumes_without_uploading_again() {
    init_tracing();
    let s = setup_with(NatsServer::start().await, 96);
    let c = Caller::connect(&s.nats.url()).await;
    let service = TestService::start(s.config.clone()).await;
    let start = format!("{}.start", files_commands("gpu-1"));
    let accepted = c
        .ok(
            &start,
            json!({ "trees": [{"root": "models", "path": "llama-3-8b"}], "parallel": 1 }),
        )
        .await;
    let job = accepted["job_id"].as_str().unwrap().to_owned();
    // Kill it once a first pack is stored.
    let packs = s.archive.path().join("packs");
    let deadline = tokio::time::Instant::now() + WAIT;
    while std::fs::read_dir(&packs).map_or(0, |d| d.count()) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no pack was ever stored"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    service.crash().await;
    let stored_before: Vec<_> = std::fs::read_dir(&packs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!stored_before.is_empty());
    let view = cim_backup_tests::service::stored_view(&c.client, &job)
        .await
        .unwrap();
    assert_ne!(view.state, JobState::Completed, "killed before it finished");

    let service = TestService::start(s.config.clone()).await;
    let view = c.wait_job(&job, WAIT).await;
    assert_eq!(view.state, JobState::Completed, "{view:?}");
    let total: u64 = std::fs::read_dir(&packs)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let before: u64 = stored_before
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let size = 96u64 << 20;
    assert!(
        total < size + (8 << 20),
        "no chunk stored twice: {total} in packs for {size} of files"
    );
    assert!(before > 0 && stored_before.iter().all(|p| p.exists()));
    let verify = c
        .ok(CMD_VERIFY, json!({ "backup": view.backup_id.unwrap().to_string(), "source": format!("file://{}", s.archive.path().display()) }))
        .await;
    let v = c.wait_job(verify["job_id"].as_str().unwrap(), WAIT).await;
    assert_eq!(v.state, JobState::Completed, "{v:?}");
    service.stop().await;
}

fn same_file(a: &Path, b: &Path) {
    assert!(
        std::fs::read(a).unwrap() == std::fs::read(b).unwrap(),
        "{} differs from {}",
        a.display(),
        b.display()
    );
}

#[tokio::test]
async fn models_restore_whole_into_place_and_never_over_one_unasked() {
    init_tracing();
    let s = setup_with(NatsServer::start().await, 4);
    let service = TestService::start(s.config.clone()).await;
    let url = s.nats.url();
    let root = s.root.path();
    let source = root.display().to_string();
    let out = ok(&cli(
        &url,
        &["--json", "backup-gpu-models", "--source", &source, "--wait"],
    )
    .await);
    let backup: Value = serde_json::from_str(&out).unwrap();
    let backup_id = backup["backup_id"].as_str().unwrap().to_owned();
    let location = format!("file://{}", s.archive.path().display());

    // One model into another directory of the root.
    let restored = root.join("restored");
    let out = ok(&cli(
        &url,
        &[
            "--json",
            "restore-gpu-model",
            "--model-id",
            "llama-3-8b",
            "--source",
            &location,
            "--destination",
            restored.to_str().unwrap(),
        ],
    )
    .await);
    let view: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(view["state"], "completed", "{view}");
    assert_eq!(view["kind"], "tree-restore");
    for f in ["model.safetensors", "config.json"] {
        same_file(
            &root.join("llama-3-8b").join(f),
            &restored.join("llama-3-8b").join(f),
        );
    }
    let names: Vec<_> = std::fs::read_dir(&restored)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        ["llama-3-8b"],
        "no temporary or safety copy left beside it"
    );

    // Again without --overwrite: refused before anything is written, the model untouched.
    std::fs::write(restored.join("llama-3-8b/config.json"), b"edited").unwrap();
    let out = cli(
        &url,
        &[
            "restore-gpu-model",
            "--model-id",
            "llama-3-8b",
            "--source",
            &backup_id,
            "--destination",
            restored.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(restored.join("llama-3-8b/config.json")).unwrap(),
        b"edited"
    );
    // With it: replaced whole.
    ok(&cli(
        &url,
        &[
            "restore-gpu-model",
            "--model-id",
            "llama-3-8b",
            "--source",
            &backup_id,
            "--destination",
            restored.to_str().unwrap(),
            "--overwrite",
        ],
    )
    .await);
    same_file(
        &root.join("llama-3-8b/config.json"),
        &restored.join("llama-3-8b/config.json"),
    );

    // Every model of the newest backup, the runbook's way.
    let all = root.join("all");
    let latest = format!("{location}/latest");
    ok(&cli(
        &url,
        &[
            "restore-all-models",
            "--source",
            &latest,
            "--destination",
            all.to_str().unwrap(),
        ],
    )
    .await);
    same_file(&root.join("phi.gguf"), &all.join("phi.gguf"));
    same_file(
        &root.join("llama-3-8b/model.safetensors"),
        &all.join("llama-3-8b/model.safetensors"),
    );

    // verify-model: a file against its sha256, a directory against its backup.
    let gguf = root.join("phi.gguf");
    let sum = {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(std::fs::read(&gguf).unwrap()))
    };
    let said = ok(&cli(
        &url,
        &[
            "verify-model",
            "--path",
            gguf.to_str().unwrap(),
            "--checksum",
            &format!("sha256:{sum}"),
        ],
    )
    .await);
    assert!(said.contains("OK"), "{said}");
    let wrong = format!("sha256:{}", "0".repeat(64));
    let out = cli(
        &url,
        &[
            "verify-model",
            "--path",
            gguf.to_str().unwrap(),
            "--checksum",
            &wrong,
        ],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = cli(
        &url,
        &[
            "verify-model",
            "--path",
            gguf.to_str().unwrap(),
            "--checksum",
            "md5:abc",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--checksum"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let model = root.join("llama-3-8b");
    ok(&cli(&url, &["verify-model", "--path", model.to_str().unwrap()]).await);
    std::fs::write(
        model.join("config.json"),
        b"{\"architectures\":[\"changed\"]}",
    )
    .unwrap();
    let out = cli(
        &url,
        &["--json", "verify-model", "--path", model.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.status.code(), Some(5));
    let checked: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        checked["differences"][0]["path"], "config.json",
        "{checked}"
    );

    // Outside the roots: a usage error naming the roots; nothing is asked of the service.
    let out = cli(
        &url,
        &[
            "restore-gpu-model",
            "--model-id",
            "phi.gguf",
            "--source",
            &backup_id,
            "--destination",
            "/tmp",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not inside a root"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A damaged backup: the restore fails naming the file, and leaves no half model behind.
    let pack = std::fs::read_dir(s.archive.path().join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(&pack, bytes).unwrap();
    let broken = root.join("broken");
    let out = cli(
        &url,
        &[
            "--json",
            "restore-gpu-model",
            "--model-id",
            "llama-3-8b",
            "--source",
            &backup_id,
            "--destination",
            broken.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let view: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        view["error"]["message"]
            .as_str()
            .unwrap()
            .contains("model.safetensors"),
        "{view}"
    );
    assert!(
        !broken.exists(),
        "neither the model, nor a temporary, nor the directory made for it"
    );
    service.stop().await;
}

#[tokio::test]
async fn checkpoints_are_backed_up_only_when_complete_and_restored_for_training() {
    init_tracing();
    let nats = NatsServer::start().await;
    let ckpt = tempfile::tempdir().unwrap();
    let run = ckpt.path().join("run-7");
    std::fs::create_dir(&run).unwrap();
    let done = run.join("step-100.ckpt");
    std::fs::write(&done, noise(3 << 20, 5)).unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(120);
    std::fs::File::options()
        .write(true)
        .open(&done)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let busy = run.join("step-200.ckpt");
    let mut writer = std::fs::File::create(&busy).unwrap();
    std::io::Write::write_all(&mut writer, &noise(1 << 20, 6)).unwrap();
    let archive = tempfile::tempdir().unwrap();
    let mut config = test_config(&nats.url(), archive.path(), "gpu-1");
    config
        .files
        .roots
        .insert("checkpoints".into(), ckpt.path().to_owned());
    let service = TestService::start(config).await;
    let url = nats.url();

    ok(&cli(
        &url,
        &[
            "backup-checkpoint",
            "--file",
            done.to_str().unwrap(),
            "--compress",
        ],
    )
    .await);
    let out = cli(
        &url,
        &["backup-checkpoint", "--file", busy.to_str().unwrap()],
    )
    .await;
    ok(&out);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("left out") && said.contains("open for writing"),
        "{said}"
    );
    drop(writer);
    let entries: Value =
        serde_json::from_str(&ok(&cli(&url, &["--json", "list-backups"]).await)).unwrap();
    let busy_entry = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["trees"][0]["name"] == "checkpoints/run-7/step-200.ckpt")
        .unwrap();
    assert_eq!(
        busy_entry["trees"][0]["files"], 0,
        "never stored half-written: {busy_entry}"
    );

    // Restored where it was, after it was lost.
    let original = std::fs::read(&done).unwrap();
    std::fs::remove_file(&done).unwrap();
    let out = ok(&cli(
        &url,
        &[
            "restore-checkpoint",
            "--checkpoint-id",
            "step-100.ckpt",
            "--resume-training",
        ],
    )
    .await);
    assert!(
        out.contains("no training agent answered on cim.training.resume"),
        "{out}"
    );
    assert!(std::fs::read(&done).unwrap() == original);

    // Into another directory, with a training agent listening.
    let agent = async_nats::connect(&url).await.unwrap();
    let mut asks = agent.subscribe("cim.training.resume").await.unwrap();
    let answering = tokio::spawn(async move {
        use futures::StreamExt;
        let ask = asks.next().await.unwrap();
        let body: Value = serde_json::from_slice(&ask.payload).unwrap();
        agent
            .publish(ask.reply.unwrap(), "resuming".into())
            .await
            .unwrap();
        agent.flush().await.unwrap();
        body
    });
    let into = ckpt.path().join("restored");
    let out = ok(&cli(
        &url,
        &[
            "restore-checkpoint",
            "--checkpoint-id",
            "checkpoints/run-7/step-100.ckpt",
            "--destination",
            into.to_str().unwrap(),
            "--resume-training",
        ],
    )
    .await);
    assert!(
        out.contains("training agent answered on cim.training.resume: resuming"),
        "{out}"
    );
    let asked = answering.await.unwrap();
    assert_eq!(
        asked["path"],
        into.join("step-100.ckpt").to_str().unwrap(),
        "{asked}"
    );
    assert!(std::fs::read(into.join("step-100.ckpt")).unwrap() == original);

    // The one left out cannot be restored, and says why.
    let out = cli(
        &url,
        &[
            "restore-checkpoint",
            "--checkpoint-id",
            "step-200.ckpt",
            "--destination",
            into.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "refused before a job: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("left out when backed up"), "{said}");
    service.stop().await;
}
