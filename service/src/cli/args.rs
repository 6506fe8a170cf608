//! What several commands parse the same way: locations, times, backup sources, chain profiles,
//! idempotency keys.

use clap::Args;

use cim_backup_contracts::commands::BackupRef;
use cim_backup_contracts::integrity::{ChainBy, ChainProfile, ProfileKind};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::client::CliError;

/// A path (absolute, or starting with `./` or `../`) means a local directory; anything else is
/// a URL or a configured destination name, resolved by the service.
pub fn location(source: &str) -> String {
    let is_path = source.starts_with('/') || source.starts_with("./") || source.starts_with("../");
    match is_path.then(|| std::path::absolute(source)) {
        Some(Ok(path)) => format!("file://{}", path.display()),
        _ => source.to_owned(),
    }
}

/// An RFC 3339 time given to `flag`.
pub fn time(flag: &str, value: Option<&str>) -> Result<Option<OffsetDateTime>, CliError> {
    value
        .map(|t| {
            OffsetDateTime::parse(t, &Rfc3339).map_err(|_| {
                CliError::Usage(format!(
                    "{flag}: {} is not an RFC 3339 time (like 2026-11-25T11:00:00Z)",
                    cim_backup_contracts::text::echo(t)
                ))
            })
        })
        .transpose()
}

/// `--source` of the restore commands: a backup id, `latest`, or a location (directory, URL,
/// name) with an optional `--backup` id in it.
pub fn restore_source(
    source: &str,
    backup: Option<&str>,
) -> Result<(BackupRef, Option<String>), CliError> {
    let parse = |s: &str| {
        s.parse::<BackupRef>()
            .map_err(|e| CliError::Usage(format!("--backup: {e}")))
    };
    if let Ok(r) = source.parse::<BackupRef>() {
        if backup.is_some() {
            return Err(CliError::Usage(
                "--backup needs --source to be a location, not a backup id".into(),
            ));
        }
        return Ok((r, None));
    }
    let backup = match backup {
        Some(b) => parse(b)?,
        None => BackupRef::Latest,
    };
    Ok((backup, Some(location(source))))
}

/// The idempotency key of a request that starts a job: the user's, or one for this
/// invocation, so that a request repeated after a lost reply starts no second job.
pub fn idempotency_key(given: Option<&str>) -> String {
    given
        .map(str::to_owned)
        .unwrap_or_else(|| format!("cli-{}", uuid::Uuid::new_v4()))
}

/// A value of a closed set given to `flag` (`--method publish`), by its wire name.
pub fn choice<T: for<'de> serde::Deserialize<'de>>(
    flag: &str,
    value: Option<&str>,
) -> Result<Option<T>, CliError> {
    value
        .map(|v| {
            serde_json::from_value(serde_json::Value::String(v.to_owned())).map_err(|e| {
                let known = e
                    .to_string()
                    .split_once("expected ")
                    .map(|(_, rest)| format!(": expected {rest}"))
                    .unwrap_or_default();
                CliError::Usage(format!(
                    "{flag}: {} is not known{known}",
                    cim_backup_contracts::text::echo(v)
                ))
            })
        })
        .transpose()
}

/// How a stream's messages chain (default: the service's configuration for the stream).
#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// The chain profile: native, cim-ipld, x-cid-headers or link-only.
    #[arg(long)]
    pub profile: Option<String>,
    /// What a chain is: `stream`, `subject:<token index>` or `field:<json path>`.
    #[arg(long)]
    pub chain_by: Option<String>,
    /// link-only: the JSON field of an event's CID.
    #[arg(long)]
    pub cid_field: Option<String>,
    /// link-only: the JSON field of the predecessor's CID.
    #[arg(long)]
    pub previous_field: Option<String>,
    /// link-only: a per-chain sequence field.
    #[arg(long)]
    pub sequence_field: Option<String>,
}

impl ProfileArgs {
    pub fn to_profile(&self) -> Result<Option<ChainProfile>, CliError> {
        let Some(profile) = &self.profile else {
            return match self.chain_by.is_some() || self.cid_field.is_some() {
                true => Err(CliError::Usage(
                    "--chain-by and the field options need --profile".into(),
                )),
                false => Ok(None),
            };
        };
        let kind: ProfileKind = choice("--profile", Some(profile))?.expect("a value was given");
        let chain_by = self
            .chain_by
            .as_deref()
            .map(|c| match c.split_once(':') {
                None if c == "stream" => Ok(ChainBy::Stream),
                Some(("subject", i)) => i.parse().map(ChainBy::SubjectToken).map_err(|_| {
                    CliError::Usage(format!("--chain-by: {i:?} is not a token index"))
                }),
                Some(("field", f)) => Ok(ChainBy::Field(f.to_owned())),
                _ => Err(CliError::Usage(format!(
                    "--chain-by: {c:?}: use stream, subject:<n> or field:<path>"
                ))),
            })
            .transpose()?;
        Ok(Some(ChainProfile {
            profile: kind,
            chain_by,
            cid_field: self.cid_field.clone(),
            previous_field: self.previous_field.clone(),
            sequence_field: self.sequence_field.clone(),
        }))
    }
}

/// The request fields of a chain profile and their flags.
pub const PROFILE_FLAGS: &[(&str, &str)] = &[
    ("profile", "--profile"),
    ("chain_by", "--chain-by"),
    ("cid_field", "--cid-field"),
    ("previous_field", "--previous-field"),
    ("sequence_field", "--sequence-field"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_name_their_flag() {
        let e = time("--start", Some("yesterday")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--start: \"yesterday\" is not an RFC 3339 time"),
            "{e}"
        );
        let e = choice::<cim_backup_contracts::events::RestoreMethod>("--method", Some("fast"))
            .unwrap_err();
        assert!(
            e.to_string().starts_with("--method: \"fast\" is not known"),
            "{e}"
        );
        assert!(e.to_string().contains("server-archive"), "{e}");
    }

    #[test]
    fn paths_become_file_urls() {
        assert_eq!(location("/srv/b"), "file:///srv/b");
        assert_eq!(location("offsite"), "offsite");
        assert_eq!(location("s3://b/p"), "s3://b/p");
    }
}
