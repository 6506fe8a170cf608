//! `restore-from-point`: the CLI side of a repair. It always shows the plan first; it runs only
//! with `--confirm`, or when the operator types the stream's name at the prompt of a terminal.

use std::io::{BufRead, IsTerminal, Write};

use cim_backup_contracts::commands::RepairStream;
use cim_backup_contracts::replies::{Accepted, RepairPreview};
use cim_backup_contracts::subjects::CMD_REPAIR;

use super::client::{CliError, Client};
use super::{Cli, RepairArgs, after_accept, output, restore_source};

pub async fn restore_from_point(
    cli: &Cli,
    client: &Client,
    a: &RepairArgs,
) -> Result<(), CliError> {
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
        idempotency_key: None,
        correlation_id: None,
    };
    if !a.confirm {
        let preview: RepairPreview = client.request(CMD_REPAIR, &body).await?;
        if cli.json {
            output::json(&preview)
        } else {
            output::repair_plan(&preview)
        }
        if a.dry_run {
            return Ok(());
        }
        if cli.json || !std::io::stdin().is_terminal() {
            return Err(CliError::Usage(format!(
                "not confirmed: this rewrites {} from seq {}; run again with --confirm",
                a.stream, a.sequence
            )));
        }
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
    let accepted: Accepted = client.request(CMD_REPAIR, &body).await?;
    after_accept(cli, client, accepted, !a.no_wait).await
}
