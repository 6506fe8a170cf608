//! `cmd.restore-deleted`: a read-model key's value as of a time, found and shown (the plan),
//! then written by a `key-restore` job unless it is a dry run or the key holds it already. A
//! key that holds another value now is replaced only with `confirm`.

use async_nats::service::Request;
use base64::Engine;
use cim_backup_contracts::key_restore::{
    KeyRestoreAccepted, LiveState, RestoreDeleted, RestoreDeletedReply,
};
use cim_backup_contracts::replay::parse_timestamp;
use cim_backup_contracts::text;
use cim_backup_domain::key_restore::{KeyRestoreCommand, KeyRestoreJob};

use super::Api;
use super::commands::{Intake, accept_and_start, engine_error, parse};
use super::projections::{all_domains, in_catalog};
use super::reply::ApiError;
use crate::engine::projections::key_restore::{model_of, plan};

pub async fn restore_deleted(
    api: &Api,
    request: &Request,
) -> Result<RestoreDeletedReply, ApiError> {
    let cmd: RestoreDeleted = parse(request)?;
    if cmd.r#type != "projection" {
        return Err(ApiError::bad_request(format!(
            "type: {} is not restorable this way; only projection (a read-model key)",
            text::echo(&cmd.r#type)
        )));
    }
    if cmd.id.is_empty() {
        return Err(ApiError::bad_request("id: name the key"));
    }
    let as_of = parse_timestamp(&cmd.timestamp)
        .map_err(|e| ApiError::bad_request(format!("timestamp: {e}")))?;
    let all = all_domains(api).await?;
    let (domain, model) = model_of(&all, &cmd.id, cmd.bucket.as_deref()).map_err(engine_error)?;
    let catalog = in_catalog(api).await?;
    let ctx = api.runner.context();
    let (plan, value) = plan(ctx, domain, model, &cmd.id, as_of, &catalog)
        .await
        .map_err(engine_error)?;
    if cmd.dry_run || plan.live == LiveState::Same {
        return Ok(RestoreDeletedReply { plan, job_id: None });
    }
    if plan.live == LiveState::Differs && !cmd.confirm {
        return Err(ApiError::conflict(format!(
            "confirm: {} holds another value now (revision {}); send confirm to replace it with its value as of {}",
            plan.key, plan.live_revision, cmd.timestamp
        )));
    }
    let intake = Intake::new(
        request,
        cmd.idempotency_key.clone(),
        cmd.correlation_id.clone(),
    )?;
    let admission = intake.admission(api, &(&plan, &cmd));
    let digest = admission.request_digest.clone();
    let spec = KeyRestoreAccepted {
        plan: plan.clone(),
        value: base64::engine::general_purpose::STANDARD.encode(&value),
        admission,
    };
    let accepted = accept_and_start::<KeyRestoreJob>(
        api,
        &intake,
        KeyRestoreCommand::Accept(spec),
        |s| s.spec.as_ref().map(|s| &s.admission),
        &digest,
    )
    .await?;
    Ok(RestoreDeletedReply {
        plan,
        job_id: Some(accepted.job_id.to_string()),
    })
}
