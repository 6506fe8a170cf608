//! `restore-deleted --type projection --id KEY --timestamp T`: shows where the key's value as
//! of T comes from and what will be written, then writes it (a `key-restore` job).

use clap::Args;

use cim_backup_contracts::key_restore::{
    KeyRestorePlan, LiveState, RestoreDeleted, RestoreDeletedReply, ValueOrigin,
};
use cim_backup_contracts::subjects::CMD_RESTORE_DELETED;
use cim_backup_contracts::views::JobKind;

use super::args::idempotency_key;
use super::client::CliError;
use super::follow::after_job_id;
use super::{Ctx, output};

#[derive(Debug, Args)]
pub struct RestoreDeletedArgs {
    /// What to restore: projection (a read-model key).
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: String,
    /// The key, e.g. graph.node42.
    #[arg(long)]
    pub id: String,
    /// The value the key had at this RFC 3339 time.
    #[arg(long)]
    pub timestamp: String,
    /// The bucket, when several of the key's domain could hold it.
    #[arg(long)]
    pub bucket: Option<String>,
    /// Show what would be written, and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Replace the key's live value when it holds another one.
    #[arg(long)]
    pub confirm: bool,
    /// Repeating a request with the same key starts one job (default: a key for this run).
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Return once the job is accepted instead of following it.
    #[arg(long)]
    pub no_wait: bool,
}

const FLAGS: &[(&str, &str)] = &[
    ("type", "--type"),
    ("id", "--id"),
    ("timestamp", "--timestamp"),
    ("bucket", "--bucket"),
    ("confirm", "--confirm"),
];

pub async fn restore_deleted(ctx: &Ctx, a: &RestoreDeletedArgs) -> Result<(), CliError> {
    let mut body = RestoreDeleted {
        r#type: a.kind.clone(),
        id: a.id.clone(),
        timestamp: a.timestamp.clone(),
        bucket: a.bucket.clone(),
        dry_run: true,
        confirm: a.confirm,
        idempotency_key: None,
        correlation_id: None,
    };
    let shown: RestoreDeletedReply = ctx
        .client
        .request(CMD_RESTORE_DELETED, &body)
        .await
        .map_err(|e| e.with_flags(FLAGS))?;
    let plan = &shown.plan;
    if ctx.json && (a.dry_run || plan.live == LiveState::Same) {
        output::json(&shown);
    } else if !ctx.json {
        print_plan(plan);
    }
    if plan.live == LiveState::Same {
        if !ctx.json {
            println!("nothing to write: the key holds that value");
        }
        return Ok(());
    }
    if a.dry_run {
        if !ctx.json {
            println!("nothing was written (--dry-run)");
        }
        return Ok(());
    }
    body.dry_run = false;
    body.idempotency_key = Some(idempotency_key(a.idempotency_key.as_deref()));
    let reply: RestoreDeletedReply = ctx
        .client
        .start(CMD_RESTORE_DELETED, &body)
        .await
        .map_err(|e| e.with_flags(FLAGS))?;
    let Some(job_id) = reply.job_id else {
        return Ok(());
    };
    after_job_id(ctx, &job_id, JobKind::KeyRestore, !a.no_wait).await
}

fn print_plan(plan: &KeyRestorePlan) {
    let from = match &plan.origin {
        ValueOrigin::History { revision, created } => format!(
            "the bucket's history: revision {revision} of {}",
            created
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        ),
        ValueOrigin::Snapshot {
            id,
            taken_at,
            location,
        } => format!(
            "projection snapshot {id} of {} ({location})",
            taken_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        ),
    };
    println!(
        "{} of bucket {} (read model {} of domain {}) as of {}:",
        plan.key,
        plan.bucket,
        plan.model,
        plan.domain,
        plan.as_of
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    );
    println!("    from   {from}");
    println!(
        "    value  {} bytes{}",
        plan.value_bytes,
        if plan.preview.is_empty() {
            String::new()
        } else {
            format!(": {}", plan.preview)
        }
    );
    println!(
        "    now    {}",
        match plan.live {
            LiveState::Missing => "no entry (purged or never written)".to_owned(),
            LiveState::Deleted => format!("deleted (revision {})", plan.live_revision),
            LiveState::Same => "holds this value".to_owned(),
            LiveState::Differs => format!(
                "holds another value (revision {}): written only with --confirm",
                plan.live_revision
            ),
        }
    );
}
