//! The `config-import` job: each planned change, in the plan's order, recorded as it is done.
//! Every step is idempotent (a create of what already exists with the same config succeeds, a
//! delete of what is gone is done), so a resumed job simply goes on with the first resource
//! not recorded.

use cim_backup_contracts::ErrorCode;
use cim_backup_contracts::domain_configs::{
    Action, ConfigImportCompleted, ConfigImportStarted, EntryValue, PlannedResource,
    ResourceApplied, ResourceKind, payload_key,
};
use cim_backup_contracts::views::JobState;
use cim_backup_domain::config_import::{ConfigImportCommand, ConfigImportJob};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::export::entry_bytes;
use crate::engine::context::Context;
use crate::engine::error::EngineError;
use crate::jobs::{Job, execute};
use crate::jsapi::{CONSUMER_NOT_FOUND, JsApiError};

/// JetStream error code for "stream name already in use with a different configuration".
const STREAM_EXISTS: u64 = 10058;

pub async fn run(
    ctx: &Context,
    job: &mut Job<ConfigImportJob>,
    cancel: &CancellationToken,
) -> Result<(), EngineError> {
    let spec = job.state.spec.clone().ok_or(EngineError::Rejected(
        cim_backup_domain::DomainError::NotCreated,
    ))?;
    if job.state.lifecycle.state == Some(JobState::Accepted) {
        let start = ConfigImportCommand::Start(ConfigImportStarted::default());
        execute(&ctx.events, job, start, None).await?;
    }
    while let Some(r) = job.state.next_resource().cloned() {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let payload = spec.payloads.get(&payload_key(r.kind, &r.name));
        apply_one(ctx, &r, payload.map(String::as_str)).await?;
        tracing::info!(job = %job.id, kind = ?r.kind, name = %r.name, action = ?r.action, "configuration applied");
        let applied = ResourceApplied {
            kind: r.kind,
            name: r.name.clone(),
            action: r.action,
        };
        execute(
            &ctx.events,
            job,
            ConfigImportCommand::RecordApplied(applied),
            None,
        )
        .await?;
    }
    let done = ConfigImportCompleted {
        applied: job.state.applied.clone(),
    };
    execute(&ctx.events, job, ConfigImportCommand::Complete(done), None).await?;
    Ok(())
}

fn bad_payload(r: &PlannedResource) -> EngineError {
    EngineError::precondition(
        ErrorCode::Internal,
        format!("the plan holds no valid config for {}", r.name),
    )
}

async fn apply_one(
    ctx: &Context,
    r: &PlannedResource,
    payload: Option<&str>,
) -> Result<(), EngineError> {
    let config = || -> Result<Value, EngineError> {
        payload
            .and_then(|p| serde_json::from_str(p).ok())
            .ok_or_else(|| bad_payload(r))
    };
    match (r.kind, r.action) {
        (
            ResourceKind::Stream | ResourceKind::KeyValue | ResourceKind::ObjectStore,
            Action::Create,
        ) => match ctx.api.create_stream(&config()?).await {
            Ok(()) => Ok(()),
            // Created by this job before it was interrupted: make it the planned config.
            Err(e) if e.err_code() == Some(STREAM_EXISTS) => {
                ctx.api.update_stream(&config()?).await.map_err(Into::into)
            }
            Err(e) => Err(e.into()),
        },
        (
            ResourceKind::Stream | ResourceKind::KeyValue | ResourceKind::ObjectStore,
            Action::Update,
        ) => ctx.api.update_stream(&config()?).await.map_err(Into::into),
        (ResourceKind::Consumer, Action::Create | Action::Update) => {
            let (stream, name) = split(&r.name)?;
            ctx.api
                .create_consumer(stream, name, &config()?)
                .await
                .map_err(Into::into)
        }
        (ResourceKind::Consumer, Action::Delete) => {
            let (stream, name) = split(&r.name)?;
            match ctx
                .api
                .raw(
                    format!("$JS.API.CONSUMER.DELETE.{stream}.{name}"),
                    serde_json::json!({}),
                )
                .await
            {
                Ok(_) => Ok(()),
                Err(JsApiError::Api { err_code, .. }) if err_code == CONSUMER_NOT_FOUND => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        (ResourceKind::Entry, action) => {
            let (bucket, key) = split(&r.name)?;
            let kv = ctx
                .js
                .get_key_value(bucket)
                .await
                .map_err(|e| EngineError::Nats(format!("bucket {bucket}: {e}")))?;
            if action == Action::Delete {
                return kv
                    .delete(key)
                    .await
                    .map_err(|e| EngineError::Nats(format!("{bucket}/{key}: {e}")));
            }
            let value: EntryValue = payload
                .and_then(|p| serde_json::from_str(p).ok())
                .ok_or_else(|| bad_payload(r))?;
            let bytes = entry_bytes(&value).ok_or_else(|| bad_payload(r))?;
            kv.put(key, bytes.into())
                .await
                .map(|_| ())
                .map_err(|e| EngineError::Nats(format!("{bucket}/{key}: {e}")))
        }
        (kind, action) => Err(EngineError::precondition(
            ErrorCode::Internal,
            format!("an import does not {action:?} a {kind:?}"),
        )),
    }
}

/// `stream/consumer` or `bucket/key`.
fn split(name: &str) -> Result<(&str, &str), EngineError> {
    name.split_once('/').ok_or_else(|| {
        EngineError::precondition(ErrorCode::Internal, format!("{name} names no parent"))
    })
}
