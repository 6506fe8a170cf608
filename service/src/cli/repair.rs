//! `restore-from-point`: the CLI side of a repair. It always shows the plan first; it runs only
//! with `--confirm`, or when the operator types the stream's name at the prompt of a terminal.

use std::io::{BufRead, IsTerminal, Write};

use clap::Args;

use cim_backup_contracts::commands::RepairStream;
use cim_backup_contracts::replies::{Accepted, RepairPreview};
use cim_backup_contracts::subjects::CMD_REPAIR;

use super::args::{PROFILE_FLAGS, ProfileArgs, idempotency_key, restore_source};
use super::client::CliError;
use super::follow::after_accept;
use super::{Ctx, output};

#[derive(Debug, Args)]
pub struct RepairArgs {
    /// The live stream to repair.
    #[arg(long)]
    pub stream: String,
    /// The first sequence replaced by the backup's records (the corruption point, or before).
    #[arg(long)]
    pub sequence: u64,
    /// A backup id, `latest`, or where backups are stored (then the newest backup of the stream
    /// there, or --backup).
    #[arg(long, default_value = "latest")]
    pub source: String,
    /// A backup id inside --source.
    #[arg(long)]
    pub backup: Option<String>,
    /// Show exactly what would change; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Run without asking (the plan is what --dry-run shows).
    #[arg(long, alias = "yes")]
    pub confirm: bool,
    /// Keep live messages newer than the backup.
    #[arg(long)]
    pub keep_newer: bool,
    /// Delete the copy of the stream as it was once the repaired one checks clean.
    #[arg(long)]
    pub drop_safety_copy: bool,
    /// Return once the job is accepted instead of following it.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub profile: ProfileArgs,
}

const REPAIR_FLAGS: &[(&str, &str)] = &[
    ("stream", "--stream"),
    ("sequence", "--sequence"),
    ("backup", "--backup"),
    ("source", "--source"),
    ("keep_newer", "--keep-newer"),
    ("keep_safety_copy", "--drop-safety-copy"),
    ("dry_run", "--dry-run"),
    ("confirm", "--confirm"),
];

pub async fn restore_from_point(ctx: &Ctx, a: &RepairArgs) -> Result<(), CliError> {
    let (backup, source) = restore_source(&a.source, a.backup.as_deref())?;
    let mut body = RepairStream {
        stream: a.stream.clone(),
        sequence: a.sequence,
        backup,
        source,
        profile: a.profile.to_profile()?,
        keep_newer: a.keep_newer,
        keep_safety_copy: a.drop_safety_copy.then_some(false),
        dry_run: true,
        confirm: false,
        idempotency_key: Some(idempotency_key(None)),
        correlation_id: None,
    };
    let flags = |e: CliError| e.with_flags(REPAIR_FLAGS).with_flags(PROFILE_FLAGS);
    if !a.confirm {
        let preview: RepairPreview = ctx.client.request(CMD_REPAIR, &body).await.map_err(flags)?;
        if a.dry_run || ctx.json || !std::io::stdin().is_terminal() {
            if ctx.json {
                output::json(&preview)
            } else {
                output::repair_plan(&preview)
            }
        }
        if a.dry_run {
            return Ok(());
        }
        if ctx.json || !std::io::stdin().is_terminal() {
            return Err(CliError::Usage(format!(
                "not confirmed: this rewrites {} from seq {}; run again with --confirm",
                a.stream, a.sequence
            )));
        }
        output::repair_plan(&preview);
        eprint!(
            "This rewrites the live stream {} from seq {}. Type the stream name to go on: ",
            a.stream, a.sequence
        );
        std::io::stderr().flush().ok();
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .map_err(|e| CliError::Usage(format!("reading the confirmation: {e}")))?;
        if answer.trim() != a.stream {
            return Err(CliError::Usage("not confirmed: nothing was changed".into()));
        }
    } else if a.dry_run {
        return Err(CliError::Usage(
            "--dry-run and --confirm exclude each other".into(),
        ));
    }
    body.dry_run = false;
    body.confirm = true;
    let accepted: Accepted = ctx.client.start(CMD_REPAIR, &body).await.map_err(flags)?;
    after_accept(ctx, accepted, !a.no_wait).await
}
