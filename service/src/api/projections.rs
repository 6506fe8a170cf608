//! Domain and projection endpoints: `qry.domains`, `qry.projection-snapshots`,
//! `cmd.snapshot-projections`, `cmd.restore-projections`. Every check that can fail is made
//! before anything is recorded: a domain, read model, bucket or snapshot that does not exist is
//! a 4xx naming the field, and no job.

use std::collections::BTreeMap;

use async_nats::service::Request;
use cim_backup_contracts::cid::Cid;
use cim_backup_contracts::projections::{
    ClearPlan, ClearProjections, Domain, DomainsQuery, PlannedClear, ProjectionJobAccepted,
    ProjectionOperation, ProjectionSnapshotsQuery, ReadModel, RestoreProjectionSnapshot,
    SnapshotProjections, SnapshotSummary,
};
use cim_backup_contracts::text;
use cim_backup_contracts::views::JobKind;
use cim_backup_domain::projection::{
    Clear, Kind, ProjectionCommand, ProjectionJob, Restore, Snapshot,
};

use super::Api;
use super::commands::{Intake, parse};
use super::reply::ApiError;
use crate::archive::projections::{get_snapshot, list_snapshots};
use crate::domains;

/// `cim.backup.qry.domains`.
pub async fn list_domains(api: &Api, request: &Request) -> Result<Vec<Domain>, ApiError> {
    let query: DomainsQuery = parse(request)?;
    let all = all_domains(api).await?;
    let selected = domains::select(&all, &query.domains).map_err(ApiError::bad_request)?;
    Ok(selected.into_iter().cloned().collect())
}

pub(super) async fn all_domains(api: &Api) -> Result<Vec<Domain>, ApiError> {
    let ctx = api.runner.context();
    Ok(domains::list(&ctx.api, &ctx.domains).await?)
}

/// `cim.backup.qry.projection-snapshots`: from a destination when `source` is given, else the
/// catalog (every snapshot a job recorded, wherever it was written, whether the job then
/// completed or not).
pub async fn list_snapshots_query(
    api: &Api,
    request: &Request,
) -> Result<Vec<SnapshotSummary>, ApiError> {
    let query: ProjectionSnapshotsQuery = parse(request)?;
    let mut found = match &query.source {
        Some(source) => in_destination(api, source).await?,
        None => in_catalog(api).await?,
    };
    found.retain(|s| {
        query.domain.as_ref().is_none_or(|d| &s.domain == d)
            && (query.safety || s.safety_for.is_none())
    });
    found.sort_by(|a, b| b.taken_at.cmp(&a.taken_at).then(a.id.cmp(&b.id)));
    found.dedup_by(|a, b| a.id == b.id && a.location == b.location);
    Ok(found)
}

pub(super) async fn in_destination(
    api: &Api,
    source: &str,
) -> Result<Vec<SnapshotSummary>, ApiError> {
    let ctx = api.runner.context();
    let location = ctx.destinations.resolve(Some(source))?;
    let store = ctx.destinations.open(&location.url)?;
    let mut out = Vec::new();
    for id in list_snapshots(&store).await? {
        let manifest = get_snapshot(&store, &id).await?;
        out.push(manifest.summary(id, &location.url));
    }
    Ok(out)
}

pub(super) async fn in_catalog(api: &Api) -> Result<Vec<SnapshotSummary>, ApiError> {
    Ok(api
        .views
        .jobs()
        .await?
        .into_iter()
        // Whatever state the job ended in: a snapshot is recorded only once it is stored, and
        // the safety snapshot of a failed restore, clear or rebuild is the one most needed.
        .filter(|v| {
            matches!(
                v.kind,
                JobKind::ProjectionSnapshot
                    | JobKind::ProjectionRestore
                    | JobKind::ProjectionClear
                    | JobKind::ProjectionRebuild
            )
        })
        .flat_map(|v| v.snapshots)
        .collect())
}

/// `cim.backup.cmd.snapshot-projections`.
pub async fn snapshot(
    api: &Api,
    request: &Request,
) -> Result<cim_backup_contracts::replies::Accepted, ApiError> {
    let cmd: SnapshotProjections = parse(request)?;
    let ctx = api.runner.context();
    let all = all_domains(api).await?;
    let explicit = !(cmd.domains.is_empty() || cmd.domains.iter().any(|d| d == "all"));
    let selected = domains::select(&all, &cmd.domains).map_err(ApiError::bad_request)?;
    let mut planned = Vec::new();
    for d in selected {
        let mut d = d.clone();
        if !cmd.include.is_empty() {
            d.projections.retain(|m| cmd.include.contains(&m.name));
        }
        if d.projections.is_empty() {
            if explicit && cmd.include.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "domains: {} has no read models (configure [domains.{}.projections] or keep keys {}.<id> in {})",
                    d.name,
                    d.name,
                    d.name,
                    domains::PROJECTIONS_BUCKET
                )));
            }
            continue;
        }
        planned.push(d);
    }
    for name in &cmd.include {
        if !planned
            .iter()
            .any(|d| d.projections.iter().any(|m| &m.name == name))
        {
            return Err(ApiError::bad_request(format!(
                "include: no read model {} in the domains named",
                text::echo(name)
            )));
        }
    }
    if planned.is_empty() {
        return Err(ApiError::bad_request(
            "domains: none has read models to snapshot (see list-domains)",
        ));
    }
    require_buckets(api, planned.iter().flat_map(|d| &d.projections)).await?;
    require_projectors(api, &planned).await?;
    let location = ctx.destinations.resolve(cmd.destination.as_deref())?;
    require_keys_if_encrypted(api, &location.url)?;
    let intake = Intake::new(
        request,
        cmd.idempotency_key.clone(),
        cmd.correlation_id.clone(),
    )?;
    let admission = intake.admission(api, &(&planned, &location.url));
    let digest = admission.request_digest.clone();
    let spec = ProjectionJobAccepted {
        operation: ProjectionOperation::Snapshot,
        domains: planned,
        destination: location.given,
        destination_url: location.url,
        snapshot: None,
        verify: false,
        r#as: BTreeMap::new(),
        no_safety_snapshot: false,
        admission,
    };
    let reply = accept_and_start::<Snapshot>(api, &intake, spec, &digest).await?;
    Ok(reply)
}

/// Records a projection job's accept (or finds the job its idempotency key names) and starts
/// it when this instance is to run it.
async fn accept_and_start<K: Kind>(
    api: &Api,
    intake: &Intake,
    spec: ProjectionJobAccepted,
    digest: &str,
) -> Result<cim_backup_contracts::replies::Accepted, ApiError>
where
    ProjectionJob<K>: crate::engine::runner::Runs
        + cim_backup_domain::Aggregate<
            Command = ProjectionCommand,
            Event = cim_backup_contracts::events::ProjectionEvent,
        >,
{
    super::commands::accept_and_start::<ProjectionJob<K>>(
        api,
        intake,
        ProjectionCommand::Accept(spec),
        |s| s.spec.as_ref().map(|s| &s.admission),
        digest,
    )
    .await
}

/// Snapshots to a destination that encrypts need recipients (a restore writes its safety
/// snapshot there too): refused now rather than failed later.
pub(super) fn require_keys_if_encrypted(api: &Api, url: &str) -> Result<(), ApiError> {
    crate::engine::projections::take::recipients_for(api.runner.context(), url)
        .map(|_| ())
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

/// A restore or clear writes and deletes keys under each model's prefix: refused when those
/// keys hold another domain's read model (a shared bucket, a whole-bucket model).
pub(super) fn refuse_other_domains_keys(
    all: &[Domain],
    domain: &str,
    model: &ReadModel,
    field: &str,
) -> Result<(), ApiError> {
    match domains::owned_elsewhere(all, domain, &model.bucket, &model.prefix) {
        Some((other, theirs)) => Err(ApiError::bad_request(format!(
            "{field}: read model {} would be written to keys {}* of bucket {}, which hold read model {} of domain {} (keys {}*); nothing was done",
            model.name, model.prefix, model.bucket, theirs.name, other.name, theirs.prefix
        ))),
        None => Ok(()),
    }
}

/// Every projector must have its consumer: the snapshot records where each one is.
pub(super) async fn require_projectors(api: &Api, planned: &[Domain]) -> Result<(), ApiError> {
    for d in planned {
        crate::engine::projections::take::positions(api.runner.context(), d)
            .await
            .map_err(super::commands::engine_error)?;
    }
    Ok(())
}

/// Every model's bucket must exist: a typo is a 404 now, not a failed job later.
pub(super) async fn require_buckets<'a>(
    api: &Api,
    models: impl Iterator<Item = &'a ReadModel>,
) -> Result<(), ApiError> {
    let ctx = api.runner.context();
    let mut missing = Vec::new();
    for m in models {
        if ctx
            .api
            .stream_info(&format!("KV_{}", m.bucket))
            .await?
            .is_none()
        {
            missing.push(format!("read model {}: KV bucket {}", m.name, m.bucket));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(ApiError::not_found(format!(
        "{} does not exist; nothing was done (name the domains to cover with --domains, or fix [domains])",
        missing.join(", ")
    )))
}

/// `cim.backup.cmd.restore-projections`.
pub async fn restore(
    api: &Api,
    request: &Request,
) -> Result<cim_backup_contracts::replies::Accepted, ApiError> {
    let cmd: RestoreProjectionSnapshot = parse(request)?;
    let ctx = api.runner.context();
    let all = all_domains(api).await?;
    domains::select(&all, std::slice::from_ref(&cmd.domain))
        .map_err(|e| ApiError::bad_request(e.replacen("domains:", "domain:", 1)))?;
    let (id, location) = locate_snapshot(api, &cmd).await?;
    let store = ctx.destinations.open(&location.url)?;
    let snapshot = get_snapshot(&store, &id).await?;
    if snapshot.domain != cmd.domain {
        return Err(ApiError::bad_request(format!(
            "snapshot: {id} is of domain {}, not {}",
            snapshot.domain, cmd.domain
        )));
    }
    for name in cmd.r#as.keys() {
        if !snapshot.models.iter().any(|m| &m.name == name) {
            return Err(ApiError::bad_request(format!(
                "as: the snapshot holds no read model {}; it holds {}",
                text::echo(name),
                snapshot
                    .models
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    for bucket in cmd.r#as.values() {
        if !domains::is_bucket_name(bucket) {
            return Err(ApiError::bad_request(format!(
                "as: {} is not a bucket name",
                text::echo(bucket)
            )));
        }
    }
    let targets: Vec<ReadModel> = snapshot
        .models
        .iter()
        .map(|m| ReadModel {
            name: m.name.clone(),
            bucket: cmd.r#as.get(&m.name).unwrap_or(&m.bucket).clone(),
            prefix: m.prefix.clone(),
            origin: cim_backup_contracts::projections::Origin::Configured,
        })
        .collect();
    for t in &targets {
        let field = if cmd.r#as.contains_key(&t.name) {
            "as"
        } else {
            "domain"
        };
        refuse_other_domains_keys(&all, &cmd.domain, t, field)?;
    }
    for (i, a) in targets.iter().enumerate() {
        for b in &targets[i + 1..] {
            if a.bucket == b.bucket
                && (a.prefix.starts_with(&b.prefix) || b.prefix.starts_with(&a.prefix))
            {
                return Err(ApiError::bad_request(format!(
                    "as: read models {} and {} would both be restored to keys {}* of bucket {}; restoring one would delete the other's keys (give one of them another bucket)",
                    a.name,
                    b.name,
                    if a.prefix.len() < b.prefix.len() {
                        &a.prefix
                    } else {
                        &b.prefix
                    },
                    a.bucket
                )));
            }
        }
    }
    require_buckets(api, targets.iter()).await?;
    require_keys_if_encrypted(api, &location.url)?;
    let domain = Domain {
        name: cmd.domain.clone(),
        streams: Vec::new(),
        projections: targets,
        projectors: Vec::new(),
        config: None,
        agents: None,
    };
    let intake = Intake::new(
        request,
        cmd.idempotency_key.clone(),
        cmd.correlation_id.clone(),
    )?;
    let admission = intake.admission(api, &(id.to_string(), &location.url, &cmd));
    let digest = admission.request_digest.clone();
    let spec = ProjectionJobAccepted {
        operation: ProjectionOperation::Restore,
        domains: vec![domain],
        destination: location.given,
        destination_url: location.url,
        snapshot: Some(id),
        verify: cmd.verify,
        r#as: cmd.r#as.clone(),
        no_safety_snapshot: false,
        admission,
    };
    let reply = accept_and_start::<Restore>(api, &intake, spec, &digest).await?;
    Ok(reply)
}

/// The snapshot a restore names: an id (looked up in `source`, else in the catalog), or
/// `latest` (the domain's newest in `source`, else in the catalog).
pub(super) async fn locate_snapshot(
    api: &Api,
    cmd: &RestoreProjectionSnapshot,
) -> Result<(Cid, crate::destination::Resolved), ApiError> {
    let ctx = api.runner.context();
    let wanted = if cmd.snapshot == "latest" {
        None
    } else {
        Some(Cid::try_from(cmd.snapshot.as_str()).map_err(|e| {
            ApiError::bad_request(format!(
                "snapshot: {} is neither a snapshot id nor \"latest\": {e}",
                text::echo(&cmd.snapshot)
            ))
        })?)
    };
    let candidates = match &cmd.source {
        Some(source) => in_destination(api, source).await?,
        None => in_catalog(api).await?,
    };
    let mut fitting: Vec<&SnapshotSummary> = candidates
        .iter()
        .filter(|s| match wanted {
            Some(id) => s.id == id,
            None => s.domain == cmd.domain && s.safety_for.is_none(),
        })
        .collect();
    fitting.sort_by_key(|s| std::cmp::Reverse(s.taken_at));
    let Some(found) = fitting.first() else {
        let place = cmd
            .source
            .as_deref()
            .map(|s| format!("in {}", text::echo(s)))
            .unwrap_or_else(|| "in the catalog (pass source to look in a destination)".into());
        return Err(ApiError::not_found(match wanted {
            Some(id) => format!("snapshot: no snapshot {id} {place}"),
            None => format!("snapshot: no snapshot of domain {} {place}", cmd.domain),
        }));
    };
    let given = cmd.source.clone().unwrap_or_else(|| found.location.clone());
    let location = ctx.destinations.resolve(Some(&given))?;
    Ok((found.id, location))
}

/// What `cmd.clear-projections` answers: the plan (`dry_run`), or the accepted job.
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
pub enum ClearReply {
    Plan(ClearPlan),
    Accepted(cim_backup_contracts::replies::Accepted),
}

/// `cim.backup.cmd.clear-projections`: with `dry_run`, what would be deleted (nothing is);
/// with `confirm`, a `projection-clear` job; with neither, a 400 that says so.
pub async fn clear(api: &Api, request: &Request) -> Result<ClearReply, ApiError> {
    let cmd: ClearProjections = parse(request)?;
    let ctx = api.runner.context();
    if cmd.dry_run == cmd.confirm {
        return Err(ApiError::bad_request(
            "confirm: a clear deletes every key of the domain's read models; send dry_run to see what, or confirm to do it (one of them)",
        ));
    }
    let all = all_domains(api).await?;
    let domain = domains::select(&all, std::slice::from_ref(&cmd.domain))
        .map_err(|e| ApiError::bad_request(e.replacen("domains:", "domain:", 1)))?[0]
        .clone();
    let mut models = domain.projections.clone();
    if !cmd.include.is_empty() {
        models.retain(|m| cmd.include.contains(&m.name));
        if let Some(missing) = cmd
            .include
            .iter()
            .find(|n| !models.iter().any(|m| &m.name == *n))
        {
            return Err(ApiError::bad_request(format!(
                "include: domain {} has no read model {}",
                domain.name,
                text::echo(missing)
            )));
        }
    }
    if models.is_empty() {
        return Err(ApiError::bad_request(format!(
            "domain: {} has no read models to clear",
            domain.name
        )));
    }
    for m in &models {
        refuse_other_domains_keys(&all, &domain.name, m, "domain")?;
    }
    require_buckets(api, models.iter()).await?;
    let location = if cmd.no_safety_snapshot {
        None
    } else {
        let location = ctx.destinations.resolve(cmd.destination.as_deref())?;
        require_keys_if_encrypted(api, &location.url)?;
        Some(location)
    };
    if cmd.dry_run {
        let mut planned = Vec::new();
        for m in &models {
            let mut keys = 0u64;
            crate::engine::projections::read::scan_keys(
                &ctx.js,
                &m.bucket,
                &m.prefix,
                &Default::default(),
                |_| keys += 1,
            )
            .await
            .map_err(|e| ApiError::unavailable(format!("counting the keys of {}: {e}", m.name)))?;
            planned.push(PlannedClear {
                name: m.name.clone(),
                bucket: m.bucket.clone(),
                prefix: m.prefix.clone(),
                keys,
            });
        }
        return Ok(ClearReply::Plan(ClearPlan {
            domain: domain.name,
            models: planned,
            safety_destination: location.map(|l| l.url).unwrap_or_default(),
        }));
    }
    let intake = Intake::new(
        request,
        cmd.idempotency_key.clone(),
        cmd.correlation_id.clone(),
    )?;
    let (given, url) = location.map(|l| (l.given, l.url)).unwrap_or_default();
    let admission = intake.admission(api, &(&domain.name, &models, &url, cmd.no_safety_snapshot));
    let digest = admission.request_digest.clone();
    let spec = ProjectionJobAccepted {
        operation: ProjectionOperation::Clear,
        domains: vec![Domain {
            projections: models,
            ..domain
        }],
        destination: given,
        destination_url: url,
        snapshot: None,
        verify: false,
        r#as: BTreeMap::new(),
        no_safety_snapshot: cmd.no_safety_snapshot,
        admission,
    };
    let reply = accept_and_start::<Clear>(api, &intake, spec, &digest).await?;
    Ok(ClearReply::Accepted(reply))
}
