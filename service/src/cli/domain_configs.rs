//! `export-domain-configs`, `import-domain-configs`, `restore-all-configs`: domains'
//! configuration as a deterministic YAML or JSON file, and that file planned against the server
//! and applied (docs/DOMAIN-CONFIGS.md).
//!
//! The file is read and written here, on the operator's side: an export is a query (it changes
//! nothing), and the file is what the runbook commits to git.

use std::path::{Path, PathBuf};

use clap::Args;

use cim_backup_contracts::domain_configs::{
    Action, ConfigsDocument, DomainConfigsQuery, ImportDomainConfigs, ImportPlan, ResourceKind,
};
use cim_backup_contracts::subjects::{CMD_IMPORT_DOMAIN_CONFIGS, QRY_DOMAIN_CONFIGS};
use cim_backup_contracts::views::JobKind;

use super::args::idempotency_key;
use super::client::CliError;
use super::follow::after_job_id;
use super::{Ctx, output};
use crate::domain_configs::text::{Format, parse, render};

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Only these domains, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub domains: Vec<String>,
    /// yaml or json (default: json for a file ending in .json, else yaml).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// The file to write (replaced if it exists: the runbook commits it to git); `-` for
    /// standard output.
    #[arg(long)]
    pub output: String,
}

pub async fn export(ctx: &Ctx, a: &ExportArgs) -> Result<(), CliError> {
    let doc: ConfigsDocument = ctx
        .client
        .request(
            QRY_DOMAIN_CONFIGS,
            &DomainConfigsQuery {
                domains: a.domains.clone(),
            },
        )
        .await
        .map_err(|e| e.with_flags(&[("domains", "--domains")]))?;
    let format = a
        .format
        .unwrap_or_else(|| Format::of_path(Path::new(&a.output)));
    if a.output != "-" && format != Format::of_path(Path::new(&a.output)) {
        return Err(CliError::Usage(format!(
            "--format {format:?} does not fit --output {}: import-domain-configs reads a file ending in .json as JSON and any other as YAML",
            a.output
        )));
    }
    let text = render(&doc, format).map_err(|e| CliError::Usage(format!("--format: {e}")))?;
    if a.output == "-" {
        print!("{text}");
        return Ok(());
    }
    let path = PathBuf::from(&a.output);
    write_atomically(&path, text.as_bytes())
        .map_err(|e| CliError::Usage(format!("--output {}: {e}", path.display())))?;
    let summary = doc
        .domains
        .iter()
        .map(|(name, t)| {
            format!(
                "{name} ({} streams, {} consumers, {} buckets, {} entries)",
                t.streams.len(),
                t.streams.values().map(|s| s.consumers.len()).sum::<usize>(),
                t.key_value.len() + t.object_stores.len(),
                t.config_entries
                    .iter()
                    .chain(&t.agents)
                    .map(|e| e.entries.len())
                    .sum::<usize>()
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    if ctx.json {
        output::json(
            &serde_json::json!({ "output": path, "domains": doc.domains.keys().collect::<Vec<_>>() }),
        );
    } else {
        println!("wrote {}: {summary}", path.display());
    }
    Ok(())
}

/// Writes next to `path`, then renames: a reader never sees half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("export"),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The export file (YAML, or JSON when it ends in .json).
    #[arg(long)]
    pub source: PathBuf,
    /// Only these domains of the file, comma-separated (default: all of it).
    #[arg(long, value_delimiter = ',')]
    pub domains: Vec<String>,
    /// Check the file and the server's rules, and show the plan (what every run does first).
    #[arg(long)]
    pub validate: bool,
    /// Show the plan and change nothing (the default without --apply).
    #[arg(long, conflicts_with = "apply")]
    pub dry_run: bool,
    /// Carry out the plan, in dependency order, as a config-import job.
    #[arg(long)]
    pub apply: bool,
    /// Also delete consumers and entries of the file's domains that it does not hold.
    #[arg(long)]
    pub prune: bool,
    /// Repeating a request with the same key starts one job (default: a key for this run).
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

/// Terraform's exit codes: 0 no change, 2 changes (or applied), 1 error.
pub async fn import(ctx: &Ctx, a: &ImportArgs) -> Result<(), CliError> {
    import_with_hint(ctx, a, "run again with --apply to apply").await
}

async fn import_with_hint(ctx: &Ctx, a: &ImportArgs, hint: &str) -> Result<(), CliError> {
    match import_inner(
        ctx,
        &a.source,
        &a.domains,
        a.apply,
        a.prune,
        a.idempotency_key.as_deref(),
        hint,
    )
    .await
    {
        Ok(code) => match code {
            0 => Ok(()),
            code => Err(CliError::Planned { code }),
        },
        Err(e) => {
            if ctx.json {
                output::json(&e.to_json());
            } else if !e.to_string().is_empty() {
                eprintln!("cim-backup: {e}");
            }
            Err(CliError::Planned { code: 1 })
        }
    }
}

async fn import_inner(
    ctx: &Ctx,
    source: &Path,
    domains: &[String],
    apply: bool,
    prune: bool,
    key: Option<&str>,
    hint: &str,
) -> Result<u8, CliError> {
    let text = std::fs::read_to_string(source)
        .map_err(|e| CliError::Usage(format!("--source {}: {e}", source.display())))?;
    let document = parse(&text, Format::of_path(source))
        .map_err(|e| CliError::Usage(format!("--source {}: {e}", source.display())))?;
    let mut body = ImportDomainConfigs {
        document,
        domains: domains.to_vec(),
        apply: false,
        prune,
        source: source.display().to_string(),
        idempotency_key: None,
        correlation_id: None,
    };
    let flags = &[("domains", "--domains"), ("document", "--source")];
    let plan: ImportPlan = ctx
        .client
        .request(CMD_IMPORT_DOMAIN_CONFIGS, &body)
        .await
        .map_err(|e| e.with_flags(flags))?;
    let conflicts = plan.count(Action::Conflict);
    if ctx.json && !(apply && conflicts == 0 && plan.changes()) {
        output::json(&plan);
    } else if !ctx.json {
        print_plan(&plan);
    }
    if conflicts > 0 {
        if !ctx.json {
            println!("nothing can be applied while the plan has conflicts");
        }
        return Ok(1);
    }
    if !plan.changes() {
        return Ok(0);
    }
    if !apply {
        if !ctx.json {
            println!("nothing was changed: {hint}");
        }
        return Ok(2);
    }
    body.apply = true;
    body.idempotency_key = Some(idempotency_key(key));
    let applied: ImportPlan = ctx
        .client
        .start(CMD_IMPORT_DOMAIN_CONFIGS, &body)
        .await
        .map_err(|e| e.with_flags(flags))?;
    let Some(job_id) = applied.job_id else {
        return Ok(0);
    };
    after_job_id(ctx, &job_id, JobKind::ConfigImport, true).await?;
    Ok(0)
}

fn print_plan(plan: &ImportPlan) {
    for r in &plan.resources {
        if r.action == Action::Unchanged {
            continue;
        }
        println!("{} {} {}", sign(r.action), kind_word(r.kind), r.name);
        for c in &r.changes {
            println!("      {}: {} → {}", c.field, c.live, c.document);
        }
        for n in &r.notes {
            println!("      ! {n}");
        }
    }
    println!(
        "plan: {} to create, {} to update, {} to delete, {} unchanged, {} conflicts{}",
        plan.count(Action::Create),
        plan.count(Action::Update),
        plan.count(Action::Delete),
        plan.count(Action::Unchanged),
        plan.count(Action::Conflict),
        match plan.count(Action::Extra) {
            0 => String::new(),
            n => format!(", {n} on the server only (kept; --prune deletes consumers and entries)"),
        }
    );
}

fn sign(action: Action) -> &'static str {
    match action {
        Action::Create => "  + create",
        Action::Update => "  ~ update",
        Action::Unchanged => "  = unchanged",
        Action::Conflict => "  ! conflict",
        Action::Delete => "  - delete",
        Action::Extra => "  ? extra",
    }
}

fn kind_word(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Stream => "stream",
        ResourceKind::KeyValue => "kv bucket",
        ResourceKind::ObjectStore => "object store",
        ResourceKind::Consumer => "consumer",
        ResourceKind::Entry => "entry",
    }
}

#[derive(Debug, Args)]
pub struct RestoreAllArgs {
    /// A directory of exports (the newest by modification time is imported) or one export.
    #[arg(long)]
    pub source: PathBuf,
    /// Show the plan of the newest export and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Repeating a request with the same key starts one job (default: a key for this run).
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

/// The newest export in a directory, imported and applied (never pruned).
pub async fn restore_all(ctx: &Ctx, a: &RestoreAllArgs) -> Result<(), CliError> {
    let file = match newest_export(&a.source) {
        Ok(file) => file,
        Err(e) => {
            if ctx.json {
                output::json(&e.to_json());
            } else {
                eprintln!("cim-backup: {e}");
            }
            return Err(CliError::Planned { code: 1 });
        }
    };
    if !ctx.json {
        println!("importing {}", file.display());
    }
    import_with_hint(
        ctx,
        &ImportArgs {
            source: file,
            domains: Vec::new(),
            validate: false,
            dry_run: a.dry_run,
            apply: !a.dry_run,
            prune: false,
            idempotency_key: a.idempotency_key.clone(),
        },
        "run again without --dry-run to apply",
    )
    .await
}

/// `source` itself when it is a file; else its newest `*.yaml`, `*.yml` or `*.json` whose text
/// names the export format.
fn newest_export(source: &Path) -> Result<PathBuf, CliError> {
    let usage = |m: String| CliError::Usage(format!("--source {}: {m}", source.display()));
    let meta = std::fs::metadata(source).map_err(|e| usage(e.to_string()))?;
    if meta.is_file() {
        return Ok(source.to_owned());
    }
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir(source).map_err(|e| usage(e.to_string()))? {
        let entry = entry.map_err(|e| usage(e.to_string()))?;
        let path = entry.path();
        let fits = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if !fits
            || !std::fs::read_to_string(&path)
                .is_ok_and(|t| t.contains(cim_backup_contracts::domain_configs::CONFIGS_FORMAT))
        {
            continue;
        }
        let modified = entry
            .metadata()
            .and_then(|m| m.modified())
            .map_err(|e| usage(e.to_string()))?;
        if best
            .as_ref()
            .is_none_or(|(t, p)| (modified, &path) > (*t, p))
        {
            best = Some((modified, path));
        }
    }
    best.map(|(_, p)| p)
        .ok_or_else(|| usage("holds no domain-config export (*.yaml, *.yml, *.json)".into()))
}
