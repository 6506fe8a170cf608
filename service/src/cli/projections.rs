//! `list-domains`, `snapshot-projections`, `list-projection-snapshots`,
//! `restore-projection-snapshot`, `clear-projections`: domains and snapshots of their read
//! models.

use std::collections::BTreeMap;

use clap::Args;

use cim_backup_contracts::projections::{
    ClearPlan, ClearProjections, Domain, DomainsQuery, Origin, ProjectionSnapshotsQuery,
    RestoreProjectionSnapshot, SnapshotProjections, SnapshotSummary,
};
use cim_backup_contracts::replies::Accepted;
use cim_backup_contracts::subjects::{
    CMD_CLEAR_PROJECTIONS, CMD_RESTORE_PROJECTIONS, CMD_SNAPSHOT_PROJECTIONS, QRY_DOMAINS,
    QRY_PROJECTION_SNAPSHOTS,
};

use super::args::{idempotency_key, location};
use super::client::CliError;
use super::follow::after_accept;
use super::{Ctx, output};

#[derive(Debug, Args)]
pub struct ListDomainsArgs {
    /// Only these domains, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub domains: Vec<String>,
}

pub async fn list_domains(ctx: &Ctx, a: &ListDomainsArgs) -> Result<(), CliError> {
    let query = DomainsQuery {
        domains: a.domains.clone(),
    };
    let domains: Vec<Domain> = ctx
        .client
        .request(QRY_DOMAINS, &query)
        .await
        .map_err(|e| e.with_flags(&[("domains", "--domains")]))?;
    if ctx.json {
        output::json(&domains);
        return Ok(());
    }
    if domains.is_empty() {
        println!(
            "no domains: none configured ([domains.<name>]) and none found (streams DOMAIN_<NAME>_EVENTS, keys <name>.<id> in CIM_PROJECTIONS)"
        );
    }
    for d in &domains {
        println!("{}", d.name);
        for s in &d.streams {
            println!("    stream      {:<40} {}", s.name, origin(s.origin));
        }
        for m in &d.projections {
            let place = if m.prefix.is_empty() {
                format!("{} = bucket {}", m.name, m.bucket)
            } else {
                format!("{} = bucket {}, keys {}*", m.name, m.bucket, m.prefix)
            };
            println!("    projection  {place:<40} {}", origin(m.origin));
        }
        for p in &d.projectors {
            println!(
                "    projector   {:<40} {}",
                format!("{} on {}", p.consumer, p.stream),
                origin(p.origin)
            );
        }
        for (what, range) in [("config", &d.config), ("agents", &d.agents)] {
            if let Some(r) = range {
                println!(
                    "    {what:<11} {:<40} {}",
                    format!("bucket {}, keys {}*", r.bucket, r.prefix),
                    origin(r.origin)
                );
            }
        }
    }
    Ok(())
}

fn origin(o: Origin) -> &'static str {
    match o {
        Origin::Configured => "configured",
        Origin::Discovered => "discovered",
    }
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// `all`, or domain names, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub domains: Vec<String>,
    /// Only these read models, comma-separated (names as list-domains shows them).
    #[arg(long, value_delimiter = ',')]
    pub include: Vec<String>,
    /// Where: a directory (inside a file root of the service), a URL, or a configured
    /// destination name (default: the service's default destination).
    #[arg(long)]
    pub output: Option<String>,
    /// Repeating a request with the same key starts one job (default: a key for this run).
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Follow the job to its end (exit 1 if it fails).
    #[arg(long)]
    pub wait: bool,
}

pub async fn snapshot(ctx: &Ctx, a: &SnapshotArgs) -> Result<(), CliError> {
    let body = SnapshotProjections {
        domains: a.domains.clone(),
        include: a.include.clone(),
        destination: a.output.as_deref().map(location),
        idempotency_key: Some(idempotency_key(a.idempotency_key.as_deref())),
        correlation_id: None,
    };
    let accepted: Accepted = ctx
        .client
        .start(CMD_SNAPSHOT_PROJECTIONS, &body)
        .await
        .map_err(|e| {
            e.with_flags(&[
                ("domains", "--domains"),
                ("include", "--include"),
                ("destination", "--output"),
            ])
        })?;
    after_accept(ctx, accepted, a.wait).await
}

#[derive(Debug, Args)]
pub struct ListSnapshotsArgs {
    /// Only this domain's snapshots.
    #[arg(long)]
    pub domain: Option<String>,
    /// List what a destination holds (a directory, URL or name) instead of the catalog.
    #[arg(long)]
    pub source: Option<String>,
    /// Also the safety snapshots that restores took.
    #[arg(long)]
    pub safety: bool,
}

pub async fn list_snapshots(ctx: &Ctx, a: &ListSnapshotsArgs) -> Result<(), CliError> {
    let query = ProjectionSnapshotsQuery {
        domain: a.domain.clone(),
        source: a.source.as_deref().map(location),
        safety: a.safety,
    };
    let found: Vec<SnapshotSummary> = ctx
        .client
        .request(QRY_PROJECTION_SNAPSHOTS, &query)
        .await
        .map_err(|e| e.with_flags(&[("domain", "--domain"), ("source", "--source")]))?;
    if ctx.json {
        output::json(&found);
        return Ok(());
    }
    if found.is_empty() {
        println!("no projection snapshots");
        return Ok(());
    }
    for s in &found {
        let safety = s
            .safety_for
            .as_ref()
            .map(|j| format!("  (safety snapshot taken by job {j})"))
            .unwrap_or_default();
        println!(
            "{}  {}  {}  {} keys  {}  {}{safety}",
            s.id,
            output::time(s.taken_at),
            s.domain,
            s.keys(),
            output::bytes(s.bytes()),
            s.location
        );
        for m in &s.models {
            println!(
                "    {:<24} {:>10} keys {:>10}  bucket {}{} at seq {}",
                m.name,
                m.keys,
                output::bytes(m.bytes),
                m.bucket,
                if m.prefix.is_empty() {
                    String::new()
                } else {
                    format!(" keys {}*", m.prefix)
                },
                m.stream_seq
            );
        }
        for p in &s.positions {
            println!(
                "    events: {} on {} at seq {}",
                p.consumer, p.stream, p.stream_seq
            );
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct RestoreSnapshotArgs {
    /// A snapshot id, `latest`, or a directory/URL holding snapshots (then the domain's newest
    /// there).
    #[arg(long)]
    pub snapshot: String,
    /// The domain whose read models are put back.
    #[arg(long)]
    pub domain: String,
    /// Where the snapshot is (a directory, URL or name; default: as the catalog says).
    #[arg(long)]
    pub source: Option<String>,
    /// Read every model back afterwards and compare it with the snapshot's digest.
    #[arg(long)]
    pub verify: bool,
    /// Restore a read model into another (existing) bucket: NAME=BUCKET, repeatable.
    #[arg(long = "as", value_name = "NAME=BUCKET")]
    pub r#as: Vec<String>,
    /// Repeating a request with the same key starts one job (default: a key for this run).
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Follow the job to its end (exit 1 if it fails).
    #[arg(long)]
    pub wait: bool,
}

pub async fn restore(ctx: &Ctx, a: &RestoreSnapshotArgs) -> Result<(), CliError> {
    let looks_like_place = a.snapshot.contains('/');
    let (snapshot, source) = match (&a.source, looks_like_place) {
        (Some(_), true) => {
            return Err(CliError::Usage(
                "--snapshot: a directory or URL there and --source both name where to look; give one"
                    .into(),
            ));
        }
        (None, true) => ("latest".to_owned(), Some(location(&a.snapshot))),
        (source, false) => (a.snapshot.clone(), source.as_deref().map(location)),
    };
    let mut targets = BTreeMap::new();
    for pair in &a.r#as {
        let Some((name, bucket)) = pair.split_once('=') else {
            return Err(CliError::Usage(format!(
                "--as: {} is not NAME=BUCKET",
                cim_backup_contracts::text::echo(pair)
            )));
        };
        targets.insert(name.to_owned(), bucket.to_owned());
    }
    let body = RestoreProjectionSnapshot {
        snapshot,
        source,
        domain: a.domain.clone(),
        verify: a.verify,
        r#as: targets,
        idempotency_key: Some(idempotency_key(a.idempotency_key.as_deref())),
        correlation_id: None,
    };
    let snapshot_flag = if looks_like_place {
        "--snapshot"
    } else {
        "--source"
    };
    let accepted: Accepted = ctx
        .client
        .start(CMD_RESTORE_PROJECTIONS, &body)
        .await
        .map_err(|e| {
            e.with_flags(&[
                ("snapshot", "--snapshot"),
                ("source", snapshot_flag),
                ("domain", "--domain"),
                ("as", "--as"),
            ])
        })?;
    after_accept(ctx, accepted, a.wait).await
}

#[derive(Debug, Args)]
pub struct ClearArgs {
    /// The domain whose read models are emptied.
    #[arg(long)]
    pub domain: String,
    /// Only these read models, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub include: Vec<String>,
    /// Delete. Without it the command shows what it would delete and deletes nothing.
    #[arg(long)]
    pub confirm: bool,
    /// Do not take a safety snapshot first.
    #[arg(long)]
    pub no_safety_snapshot: bool,
    /// Where the safety snapshot goes (default: the service's default destination).
    #[arg(long)]
    pub destination: Option<String>,
    /// Repeating a request with the same key starts one job (default: a key for this run).
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Return once the job is accepted instead of following it.
    #[arg(long)]
    pub no_wait: bool,
}

const CLEAR_FLAGS: &[(&str, &str)] = &[
    ("domain", "--domain"),
    ("include", "--include"),
    ("destination", "--destination"),
    ("confirm", "--confirm"),
];

/// Always shows the plan first; deletes only with --confirm.
pub async fn clear(ctx: &Ctx, a: &ClearArgs) -> Result<(), CliError> {
    let mut body = ClearProjections {
        domain: a.domain.clone(),
        include: a.include.clone(),
        dry_run: true,
        confirm: false,
        no_safety_snapshot: a.no_safety_snapshot,
        destination: a.destination.as_deref().map(location),
        idempotency_key: None,
        correlation_id: None,
    };
    let plan: ClearPlan = ctx
        .client
        .request(CMD_CLEAR_PROJECTIONS, &body)
        .await
        .map_err(|e| e.with_flags(CLEAR_FLAGS))?;
    if !a.confirm {
        if ctx.json {
            output::json(&plan);
        } else {
            print_clear_plan(&plan, "would delete");
            println!("nothing was deleted: run again with --confirm to clear");
        }
        return Ok(());
    }
    if !ctx.json {
        print_clear_plan(&plan, "deleting");
    }
    body.dry_run = false;
    body.confirm = true;
    body.idempotency_key = Some(idempotency_key(a.idempotency_key.as_deref()));
    let accepted: Accepted = ctx
        .client
        .start(CMD_CLEAR_PROJECTIONS, &body)
        .await
        .map_err(|e| e.with_flags(CLEAR_FLAGS))?;
    after_accept(ctx, accepted, !a.no_wait).await
}

fn print_clear_plan(plan: &ClearPlan, verb: &str) {
    let total: u64 = plan.models.iter().map(|m| m.keys).sum();
    println!("{verb} {total} keys of domain {}:", plan.domain);
    for m in &plan.models {
        print_planned_model(m);
    }
    print_safety_destination(&plan.safety_destination, "a safety snapshot is taken first");
}

/// One read model of a clear or rebuild plan: its live keys and where they are.
pub fn print_planned_model(m: &cim_backup_contracts::projections::PlannedClear) {
    println!(
        "    {:<24} {:>10} keys  bucket {}{}",
        m.name,
        m.keys,
        m.bucket,
        if m.prefix.is_empty() {
            String::new()
        } else {
            format!(" keys {}*", m.prefix)
        }
    );
}

/// Where a plan's safety snapshot goes, or that it was declined.
pub fn print_safety_destination(destination: &str, taken: &str) {
    if destination.is_empty() {
        println!("no safety snapshot (--no-safety-snapshot)");
    } else {
        println!("{taken}, into {destination}");
    }
}
