//! Domain configuration endpoints: `qry.domain-configs` (the export document) and
//! `cmd.import-domain-configs` (the plan of a document against the server, and with `apply` a
//! `config-import` job carrying out its changes). Nothing is written unless the plan has no
//! conflict and `apply` is set.

use async_nats::service::Request;
use cim_backup_contracts::domain_configs::{
    Action, CONFIGS_FORMAT, ConfigImportAccepted, ConfigsDocument, DomainConfigsQuery,
    ImportDomainConfigs, ImportPlan,
};
use cim_backup_contracts::text;
use cim_backup_domain::config_import::{ConfigImportCommand, ConfigImportJob};

use super::Api;
use super::commands::{Intake, accept_and_start, engine_error, parse};
use super::projections::all_domains;
use super::reply::ApiError;
use crate::domain_configs::{export, plan};
use crate::domains;

/// `cim.backup.qry.domain-configs`.
pub async fn export(api: &Api, request: &Request) -> Result<ConfigsDocument, ApiError> {
    let query: DomainConfigsQuery = parse(request)?;
    let all = all_domains(api).await?;
    let selected: Vec<_> = domains::select(&all, &query.domains)
        .map_err(ApiError::bad_request)?
        .into_iter()
        .cloned()
        .collect();
    export::document(api.runner.context(), &selected)
        .await
        .map_err(engine_error)
}

/// `cim.backup.cmd.import-domain-configs`.
pub async fn import(api: &Api, request: &Request) -> Result<ImportPlan, ApiError> {
    let cmd: ImportDomainConfigs = parse(request)?;
    let mut doc = cmd.document.clone();
    if doc.format != CONFIGS_FORMAT {
        return Err(ApiError::bad_request(format!(
            "document.format: {} is not {CONFIGS_FORMAT}",
            text::echo(&doc.format)
        )));
    }
    if !cmd.domains.is_empty() {
        if let Some(missing) = cmd.domains.iter().find(|d| !doc.domains.contains_key(*d)) {
            return Err(ApiError::bad_request(format!(
                "domains: the document holds no domain {}; it holds {}",
                text::echo(missing),
                doc.domains.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        doc.domains.retain(|d, _| cmd.domains.contains(d));
    }
    if doc.domains.is_empty() {
        return Err(ApiError::bad_request("document.domains: holds no domain"));
    }
    for (name, t) in &doc.domains {
        let buckets = t
            .key_value
            .keys()
            .chain(t.object_stores.keys())
            .chain(t.config_entries.iter().map(|e| &e.bucket))
            .chain(t.agents.iter().map(|e| &e.bucket));
        for b in buckets {
            if !domains::is_bucket_name(b) {
                return Err(ApiError::bad_request(format!(
                    "document.domains.{name}: {} is not a bucket name",
                    text::echo(b)
                )));
            }
        }
        for s in t.streams.keys() {
            if !domains::is_bucket_name(s) {
                return Err(ApiError::bad_request(format!(
                    "document.domains.{name}.streams: {} is not a stream name",
                    text::echo(s)
                )));
            }
        }
    }
    let ctx = api.runner.context();
    let live = all_domains(api).await?;
    let mut extra_streams = Vec::new();
    for d in live.iter().filter(|d| doc.domains.contains_key(&d.name)) {
        for s in &d.streams {
            if !doc.domains[&d.name].streams.contains_key(&s.name)
                && ctx.api.stream_info(&s.name).await?.is_some()
            {
                extra_streams.push((d.name.clone(), s.name.clone()));
            }
        }
    }
    let planned = plan::plan(ctx, &doc, &extra_streams, cmd.prune)
        .await
        .map_err(engine_error)?;
    let mut reply = ImportPlan {
        resources: planned.resources,
        job_id: None,
    };
    if !cmd.apply || !reply.changes() {
        return Ok(reply);
    }
    let conflicts: Vec<String> = reply
        .resources
        .iter()
        .filter(|r| r.action == Action::Conflict)
        .map(|r| format!("{} ({})", r.name, r.notes.join("; ")))
        .collect();
    if !conflicts.is_empty() {
        return Err(ApiError::conflict(format!(
            "document: the plan has {} conflicts, so nothing was applied: {}",
            conflicts.len(),
            conflicts.join(", ")
        )));
    }
    let changes: Vec<_> = reply
        .resources
        .iter()
        .filter(|r| matches!(r.action, Action::Create | Action::Update | Action::Delete))
        .cloned()
        .collect();
    let intake = Intake::new(
        request,
        cmd.idempotency_key.clone(),
        cmd.correlation_id.clone(),
    )?;
    let admission = intake.admission(api, &(&doc, cmd.prune));
    let digest = admission.request_digest.clone();
    let spec = ConfigImportAccepted {
        source: cmd.source.clone(),
        resources: changes,
        payloads: planned.payloads,
        admission,
    };
    let accepted = accept_and_start::<ConfigImportJob>(
        api,
        &intake,
        ConfigImportCommand::Accept(spec),
        |s| s.spec.as_ref().map(|s| &s.admission),
        &digest,
    )
    .await?;
    reply.job_id = Some(accepted.job_id.to_string());
    Ok(reply)
}
