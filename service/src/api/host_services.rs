//! Backups of the other services on an instance's host, each a tree backup the service builds
//! itself from its config (a request never names a URL or a directory to read):
//! - `cmd.prometheus`: a TSDB snapshot through the admin API, removed once stored;
//! - `cmd.nixos`: the NixOS configuration, secrets left out, also written as a tar.gz;
//! - `cmd.grafana`: a quick check of Grafana, then a job that exports folders, dashboards,
//!   alert rules and datasources through the HTTP API, stores them, writes a tar.gz, and
//!   removes the export.

use std::path::{Path, PathBuf};

use async_nats::service::Request;
use cim_backup_contracts::ErrorCode;
use cim_backup_contracts::commands::StartBackup;
use cim_backup_contracts::files::{
    GrafanaBackup, NixosBackup, PrometheusBackup, TarExport, TreeRequest, TreeStaging,
};
use cim_backup_contracts::replies::Accepted;
use cim_backup_contracts::text::echo;

use super::Api;
use super::commands::{Trees, engine_error, parse, start_command};
use super::reply::ApiError;
use crate::engine::Context;

fn forbidden(message: String) -> ApiError {
    ApiError::new(ErrorCode::Forbidden, message)
}

/// A start of one tree backup, everything else the destination's defaults.
fn tree_backup(
    tree: TreeRequest,
    destination: Option<String>,
    encrypt: Option<bool>,
    idempotency_key: Option<String>,
    correlation_id: Option<String>,
) -> StartBackup {
    StartBackup {
        streams: Vec::new(),
        trees: vec![tree],
        parallel: None,
        destination,
        compress: None,
        zstd_level: None,
        full: false,
        incremental: None,
        encrypt,
        mode: None,
        idempotency_key,
        correlation_id,
    }
}

/// Starts `start`; a refused request, or a repeat answered with the job of its first attempt,
/// keeps nothing of what was staged for it in `staged`.
async fn start_then_clean(
    api: &Api,
    request: &Request,
    start: StartBackup,
    staged: &Path,
    what: &str,
) -> Result<Accepted, ApiError> {
    let accepted = start_command(api, request, start, Trees::Here).await;
    if !matches!(&accepted, Ok(a) if !a.duplicate)
        && let Err(e) = std::fs::remove_dir_all(staged)
    {
        tracing::warn!(dir = %staged.display(), error = %e, "could not remove the unused {what}");
    }
    accepted
}

/// The host path of an export's tar.gz, checked: `.tar.gz` (or `.tar.gz.age` when `encrypted`),
/// inside a root, in a directory that exists. `why_age` ends the error of a wrong ending.
fn tar_output(
    ctx: &Context,
    output: &str,
    encrypted: bool,
    why_age: &str,
) -> Result<PathBuf, ApiError> {
    let want = if encrypted { ".tar.gz.age" } else { ".tar.gz" };
    if !output.ends_with(want) {
        return Err(ApiError::bad_request(format!(
            "output: {} must end in {want}{why_age}",
            echo(output)
        )));
    }
    let output = PathBuf::from(output);
    let (root, rel) = ctx.place(&output).ok_or_else(|| {
        forbidden(format!(
            "output: {} is not inside any of this instance's roots ([files.roots])",
            output.display()
        ))
    })?;
    let path = root.resolve(&rel).map_err(|e| engine_error(e.into()))?;
    if std::fs::symlink_metadata(&path).is_ok() {
        return Err(ApiError::conflict(format!(
            "output: {} exists; name another file (nothing is overwritten)",
            path.display()
        )));
    }
    if !path.parent().is_some_and(Path::is_dir) {
        return Err(ApiError::not_found(format!(
            "output: the directory of {} does not exist",
            path.display()
        )));
    }
    Ok(path)
}

/// Refuses an encrypted output when the service has no recipients to encrypt to.
fn recipients(ctx: &Context, field: &str) -> Result<(), ApiError> {
    ctx.keys
        .recipients()
        .map(drop)
        .map_err(|e| ApiError::bad_request(format!("{field}: {e}")))
}

/// A configured directory as a root name and a path inside it; `what` names its setting.
fn placed(ctx: &Context, dir: &Path, what: &str) -> Result<(String, String), ApiError> {
    ctx.place(dir)
        .map(|(root, rel)| (root.name.clone(), rel))
        .ok_or_else(|| {
            forbidden(format!(
                "{what} {} is not inside any of this instance's roots ([files.roots])",
                dir.display()
            ))
        })
}

/// `rel/name`, or `name` at the top of a root.
fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_owned()
    } else {
        format!("{rel}/{name}")
    }
}

/// `cim.backup.files.<instance>.cmd.prometheus`: takes a snapshot through the admin API of the
/// configured server, then starts a backup of it as a tree that the job removes from the
/// server's disk once it is stored. A snapshot whose backup is refused is removed at once.
pub async fn prometheus(api: &Api, request: &Request) -> Result<Accepted, ApiError> {
    let cmd: PrometheusBackup = parse(request)?;
    let ctx = api.runner.context();
    let config = ctx.prometheus.clone().ok_or_else(|| {
        ApiError::not_found(format!(
            "instance {} has no [prometheus] section (url and data_dir)",
            ctx.instance
        ))
    })?;
    let (root, rel) = placed(ctx, &config.data_dir, "[prometheus] data_dir")?;
    let name = crate::prometheus::snapshot(&config.url)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let snapshot_dir = config.data_dir.join("snapshots").join(&name);
    let tree = TreeRequest {
        root,
        path: join(&rel, &format!("snapshots/{name}")),
        complete_only: false,
        remove_after: true,
        exclude: Vec::new(),
        export: None,
        stage: None,
    };
    let start = tree_backup(
        tree,
        cmd.destination,
        cmd.encrypt,
        cmd.idempotency_key,
        cmd.correlation_id,
    );
    start_then_clean(api, request, start, &snapshot_dir, "Prometheus snapshot").await
}

/// `cim.backup.files.<instance>.cmd.nixos`: a backup of `[nixos] config_dir` that also writes
/// it as a tar.gz at `output` (inside a root). Secrets are left out unless `include_secrets`,
/// and then only an encrypted `.tar.gz.age` is written: plaintext with secrets is refused.
pub async fn nixos(api: &Api, request: &Request) -> Result<Accepted, ApiError> {
    let cmd: NixosBackup = parse(request)?;
    let ctx = api.runner.context();
    let (root, rel) = placed(ctx, &ctx.nixos.config_dir, "[nixos] config_dir")?;
    if cmd.include_secrets {
        recipients(ctx, "include_secrets")?;
    }
    let out_path = tar_output(
        ctx,
        &cmd.output,
        cmd.include_secrets,
        ": with include_secrets the output is only ever written encrypted, never in plaintext",
    )?;
    let tree = TreeRequest {
        root,
        path: rel,
        complete_only: false,
        remove_after: false,
        exclude: if cmd.include_secrets {
            Vec::new()
        } else {
            ctx.nixos.secret_patterns.clone()
        },
        export: Some(TarExport {
            path: out_path.display().to_string(),
            encrypt: cmd.include_secrets,
            name: None,
        }),
        stage: None,
    };
    let start = tree_backup(
        tree,
        cmd.destination,
        cmd.include_secrets.then_some(true),
        cmd.idempotency_key,
        cmd.correlation_id,
    );
    start_command(api, request, start, Trees::Here).await
}

/// `cim.backup.files.<instance>.cmd.grafana`: checks in a few seconds what the job would fail
/// on first (the token file, Grafana answering, the token accepted, datasources readable when
/// asked), then starts a backup whose job exports the configured Grafana into a new directory
/// under `[grafana] staging_dir`, stores it as a tree, writes it as a tar.gz at `output`
/// (entries under `grafana/`) and removes the export. The export runs in the job, so a slow
/// Grafana delays the job, never the reply.
pub async fn grafana(api: &Api, request: &Request) -> Result<Accepted, ApiError> {
    let cmd: GrafanaBackup = parse(request)?;
    let ctx = api.runner.context();
    let config = ctx.grafana.clone().ok_or_else(|| {
        ApiError::not_found(format!(
            "instance {} has no [grafana] section (url, staging_dir)",
            ctx.instance
        ))
    })?;
    let (root, rel) = placed(ctx, &config.staging_dir, "[grafana] staging_dir")?;
    let encrypted = cmd.output.ends_with(".age");
    let out_path = tar_output(
        ctx,
        &cmd.output,
        encrypted,
        " (or .tar.gz.age to encrypt it)",
    )?;
    if out_path.starts_with(&config.staging_dir) {
        return Err(ApiError::bad_request(format!(
            "output: {} is inside [grafana] staging_dir, where exports are removed",
            out_path.display()
        )));
    }
    if encrypted {
        recipients(ctx, "output")?;
    }
    if let Err(e) = crate::grafana::preflight(&config, cmd.include_datasources).await {
        tracing::warn!(error = %e, "backup-grafana refused");
        return Err(ApiError::new(e.code(), e.to_string()));
    }
    std::fs::create_dir_all(&config.staging_dir).map_err(|e| {
        ApiError::internal(format!(
            "[grafana] staging_dir {}: {e}",
            config.staging_dir.display()
        ))
    })?;
    let stamp = format!(
        "grafana-{}-{}",
        time::OffsetDateTime::now_utc().unix_timestamp(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let tree = TreeRequest {
        root,
        path: join(&rel, &stamp),
        complete_only: false,
        remove_after: true,
        exclude: Vec::new(),
        export: Some(TarExport {
            path: out_path.display().to_string(),
            encrypt: encrypted,
            name: Some("grafana".into()),
        }),
        stage: Some(TreeStaging::Grafana {
            include_datasources: cmd.include_datasources,
        }),
    };
    let start = tree_backup(
        tree,
        cmd.destination,
        encrypted.then_some(true),
        cmd.idempotency_key,
        cmd.correlation_id,
    );
    start_command(api, request, start, Trees::Here).await
}
