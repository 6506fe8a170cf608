//! `cim.backup.cmd.repair`: restore a live stream from a point. It rewrites a live stream, so
//! on top of the usual validation it answers a dry run with the exact plan, and runs only with
//! an explicit `confirm`.

use async_nats::service::Request;
use cim_backup_contracts::JobId;
use cim_backup_contracts::commands::RepairStream;
use cim_backup_contracts::events::RepairAccepted;
use cim_backup_contracts::replies::{Accepted, RepairPreview};
use cim_backup_contracts::subjects::is_stream_name;
use cim_backup_domain::repair::{RepairCommand, RepairJob};
use serde_json::Value;

use super::Api;
use super::commands::{Intake, accept, engine_error, parse};
use super::reply::ApiError;
use super::resolve::locate;
use crate::engine::repair::{plan, streams};

/// A repair request is answered with the job, or with the plan for a dry run.
#[derive(serde::Serialize)]
#[serde(untagged)]
pub enum RepairReply {
    Accepted(Accepted),
    Preview(RepairPreview),
}

pub async fn repair(api: &Api, request: &Request) -> Result<RepairReply, ApiError> {
    let cmd: RepairStream = parse(request)?;
    let ctx = api.runner.context();
    let stream = cmd.stream.as_str();
    if !is_stream_name(stream) {
        return Err(ApiError::bad_request(format!(
            "stream: {} is not a valid stream name",
            cim_backup_contracts::text::echo(stream)
        )));
    }
    if cmd.sequence == 0 {
        return Err(ApiError::bad_request(
            "sequence: stream sequences start at 1",
        ));
    }
    let live = ctx.api.stream_info(stream).await?.ok_or_else(|| {
        ApiError::not_found(format!("stream {stream} does not exist; restore-from-point repairs a live stream (bring back a deleted one with restore)"))
    })?;
    if let Some(why) = plan::refuse(stream, &live.config) {
        return Err(ApiError::bad_request(why));
    }
    let level = ctx.api.api_level().await?;
    if level < 5 {
        return Err(ApiError::bad_request(format!(
            "restore-from-point needs nats-server 2.15+ (JetStream API level 5, per-message restore); this server has level {level}"
        )));
    }
    let intake = Intake::new(
        request,
        cmd.idempotency_key.clone(),
        cmd.correlation_id.clone(),
    )?;
    if let Some(other) = live
        .config
        .pointer(&format!("/metadata/{}", streams::FROZEN_BY))
        .and_then(Value::as_str)
        && other
            != intake
                .job_id(cim_backup_contracts::views::JobKind::Repair)
                .as_str()
    {
        return Err(ApiError::conflict(format!(
            "stream {stream} is being repaired by job {other}"
        )));
    }
    let profile = cmd
        .profile
        .clone()
        .or_else(|| ctx.integrity.streams.get(stream).map(|c| c.chain_profile()));
    let located = locate(api, cmd.backup, Some(stream), cmd.source.as_deref()).await?;
    let keep_safety_copy = cmd.keep_safety_copy.unwrap_or(true);
    // Opening the source reads only manifests: the backup exists, holds the stream, covers the point.
    let source = plan::Source::open(
        ctx,
        &located.location.url,
        located.backup,
        stream,
        cmd.sequence,
    )
    .await
    .map_err(engine_error)?;
    source
        .same_stream(stream, &live, located.backup)
        .map_err(engine_error)?;
    if cmd.dry_run {
        let request = plan::Request {
            stream,
            from_seq: cmd.sequence,
            backup: located.backup,
            profile: profile.as_ref(),
            keep_newer: cmd.keep_newer,
            keep_safety_copy,
        };
        let plan = plan::make(ctx, &source, &live, &request, &JobId::dry_run())
            .await
            .map_err(engine_error)?;
        let chain = source.chain.ids().into_iter().map(Into::into).collect();
        return Ok(RepairReply::Preview(RepairPreview {
            dry_run: true,
            backup: located.backup.into(),
            chain,
            plan,
        }));
    }
    if !cmd.confirm {
        return Err(ApiError::bad_request(format!(
            "restore-from-point rewrites the live stream {stream} from seq {}: review it with \"dry_run\": true, then send \"confirm\": true",
            cmd.sequence
        )));
    }
    let admission = intake.admission(
        api,
        &(
            located.backup.to_string(),
            &located.location.url,
            stream,
            cmd.sequence,
            &profile,
            cmd.keep_newer,
            keep_safety_copy,
        ),
    );
    let request_digest = admission.request_digest.clone();
    let spec = RepairAccepted {
        stream: cmd.stream.clone(),
        from_seq: cmd.sequence,
        backup: located.backup,
        source: located.location.given,
        source_url: located.location.url,
        profile,
        keep_newer: cmd.keep_newer,
        keep_safety_copy,
        original_config: live.config.to_string(),
        origin_created: streams::origin(&live.config, live.created),
        admission,
    };
    let (reply, job) = accept::<RepairJob>(
        api,
        &intake,
        RepairCommand::Accept(spec),
        |s| s.spec.as_ref().map(|s| &s.admission),
        &request_digest,
    )
    .await?;
    if let Some(job) = job {
        api.runner.start(job);
    }
    Ok(RepairReply::Accepted(reply))
}
