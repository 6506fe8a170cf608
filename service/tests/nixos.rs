//! `backup-nixos-config` as the runbook uses it: a real tar.gz that `tar -xzf` extracts and
//! `diff -r` compares with the configuration (flake.lock included, secrets left out), the same
//! tree in the archive, and with --include-secrets only an age-encrypted file that the stock
//! `age` opens; a plaintext output with secrets is refused with nothing written.

use std::path::Path;
use std::process::{Command, Output};

use age::secrecy::ExposeSecret;
use cim_backup_tests::files::ok;
use cim_backup_tests::service::{TestService, test_config};
use cim_backup_tests::{NatsServer, init_tracing};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cim-backup");

async fn cli(url: &str, args: &[&str]) -> Output {
    cim_backup_tests::files::cli(BIN, url, args).await
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn the_nixos_configuration_becomes_a_tar_gz_without_its_secrets() {
    init_tracing();
    let nats = NatsServer::start().await;
    let host = tempfile::tempdir().unwrap();
    let nixos = host.path().join("etc/nixos");
    write(
        &nixos.join("configuration.nix"),
        "{ ... }: { services.nats.enable = true; }\n",
    );
    write(&nixos.join("flake.nix"), "{ outputs = { self }: { }; }\n");
    write(
        &nixos.join("flake.lock"),
        "{\"nodes\": {}, \"version\": 7}\n",
    );
    write(
        &nixos.join("hosts/web.nix"),
        "{ networking.hostName = \"web\"; }\n",
    );
    write(&nixos.join("secrets/db.yaml"), "password: hunter2-sops\n");
    write(&nixos.join("wifi.age"), "age-encrypted-wifi\n");
    write(
        &nixos.join("keys/ssh_host_ed25519_key"),
        "PRIVATE KEY hunter2\n",
    );
    let exports = host.path().join("exports");
    std::fs::create_dir(&exports).unwrap();
    let identity = age::x25519::Identity::generate();
    let key = host.path().join("backup.agekey");
    std::fs::write(&key, identity.to_string().expose_secret()).unwrap();

    let archive = tempfile::tempdir().unwrap();
    let mut config = test_config(&nats.url(), archive.path(), "web-1");
    config
        .files
        .roots
        .insert("etc".into(), host.path().join("etc"));
    config.files.roots.insert("exports".into(), exports.clone());
    config.nixos.config_dir = nixos.clone();
    config.encryption.recipients = vec![identity.to_public().to_string()];
    config.encryption.identity_files = vec![key.clone()];
    let service = TestService::start(config).await;
    let url = nats.url();

    let out = exports.join("nixos-config.tar.gz");
    let view: Value = serde_json::from_str(&ok(&cli(
        &url,
        &[
            "--json",
            "backup-nixos-config",
            "--output",
            out.to_str().unwrap(),
        ],
    )
    .await))
    .unwrap();
    assert_eq!(view["state"], "completed", "{view}");
    let notes = view["notes"].to_string();
    assert!(
        notes.contains("secrets left out: a secret (matches secrets/**)")
            && notes.contains("wifi.age")
            && notes.contains("ssh_host_ed25519_key"),
        "secrets left out are said: {notes}"
    );

    // The runbook's check: extract, then diff against the original (secrets excepted).
    let restore = host.path().join("restore");
    std::fs::create_dir(&restore).unwrap();
    let x = Command::new("tar")
        .arg("-xzf")
        .arg(&out)
        .arg("-C")
        .arg(&restore)
        .output()
        .unwrap();
    assert!(
        x.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&x.stderr)
    );
    let extracted = restore.join(nixos.strip_prefix("/").unwrap());
    let diff = Command::new("diff")
        .arg("-r")
        .args(["-x", "secrets", "-x", "*.age", "-x", "ssh_host_*_key"])
        .arg(&nixos)
        .arg(&extracted)
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "diff -r: {}",
        String::from_utf8_lossy(&diff.stdout)
    );
    assert!(extracted.join("flake.lock").exists());
    for secret in ["secrets/db.yaml", "wifi.age", "keys/ssh_host_ed25519_key"] {
        assert!(
            !extracted.join(secret).exists(),
            "{secret} must not be in the plaintext tar"
        );
    }
    let listed = String::from_utf8_lossy(
        &Command::new("tar")
            .arg("-tzf")
            .arg(&out)
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        !listed.contains("hunter2") && !listed.contains("secrets/db.yaml"),
        "{listed}"
    );

    // With secrets: plaintext refused, nothing written.
    let plain = exports.join("with-secrets.tar.gz");
    let refused = cli(
        &url,
        &[
            "backup-nixos-config",
            "--include-secrets",
            "--output",
            plain.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(
        refused.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--output"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!plain.exists());

    // Encrypted: the stock age opens it, and it holds the secrets.
    let sealed = exports.join("with-secrets.tar.gz.age");
    ok(&cli(
        &url,
        &[
            "backup-nixos-config",
            "--include-secrets",
            "--output",
            sealed.to_str().unwrap(),
        ],
    )
    .await);
    let bytes = std::fs::read(&sealed).unwrap();
    assert!(!bytes.windows(7).any(|w| w == b"hunter2"));
    let opened = host.path().join("opened.tar.gz");
    let age = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&key)
        .arg("-o")
        .arg(&opened)
        .arg(&sealed)
        .output()
        .unwrap();
    assert!(
        age.status.success(),
        "age -d: {}",
        String::from_utf8_lossy(&age.stderr)
    );
    let with = host.path().join("with");
    std::fs::create_dir(&with).unwrap();
    assert!(
        Command::new("tar")
            .arg("-xzf")
            .arg(&opened)
            .arg("-C")
            .arg(&with)
            .status()
            .unwrap()
            .success()
    );
    let all = with.join(nixos.strip_prefix("/").unwrap());
    let diff = Command::new("diff")
        .arg("-r")
        .arg(&nixos)
        .arg(&all)
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "with secrets, the whole tree: {}",
        String::from_utf8_lossy(&diff.stdout)
    );

    // Outside the roots: a usage error, nothing asked of the service.
    let outside = cli(
        &url,
        &[
            "backup-nixos-config",
            "--output",
            "/tmp/nixos-outside.tar.gz",
        ],
    )
    .await;
    assert_eq!(
        outside.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&outside.stderr)
    );
    service.stop().await;
}
