//! Query handlers (`cim.backup.qry.*`): they read the views, never the work in progress.

use async_nats::service::Request;
use cim_backup_contracts::commands::{BackupsQuery, JobQuery, JobsQuery};
use cim_backup_contracts::views::{CatalogEntry, JobView};
use cim_backup_projections::{catalog, job_view};

use super::Api;
use super::commands::{job_kind, parse};
use super::reply::ApiError;
use super::resolve::list_location;

/// Most job views one `jobs` query returns.
const MAX_JOBS: usize = 1000;

pub async fn job(api: &Api, request: &Request) -> Result<JobView, ApiError> {
    let query: JobQuery = parse(request)?;
    if let Some(view) = api.views.job(&query.job_id).await? {
        return Ok(view);
    }
    // Accepted a moment ago and not projected yet: fold its events directly, with the same fold.
    let kind = job_kind(api, &query.job_id).await?;
    let events = api
        .runner
        .context()
        .events
        .load(kind, &query.job_id)
        .await?;
    job_view::fold_all(events.iter().map(|e| (&e.envelope, e.cid)))
        .map_err(|e| ApiError::internal(e.to_string()))?
        .ok_or_else(|| ApiError::not_found(format!("no job {}", query.job_id)))
}

pub async fn jobs(api: &Api, request: &Request) -> Result<Vec<JobView>, ApiError> {
    let query: JobsQuery = parse(request)?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_JOBS {
        return Err(ApiError::bad_request(format!(
            "limit must be 1..={MAX_JOBS}"
        )));
    }
    let mut views = api.views.jobs().await?;
    views.retain(|v| {
        query.kind.is_none_or(|k| v.kind == k) && query.state.is_none_or(|s| v.state == s)
    });
    views.truncate(limit);
    Ok(views)
}

pub async fn backups(api: &Api, request: &Request) -> Result<Vec<CatalogEntry>, ApiError> {
    let query: BackupsQuery = parse(request)?;
    match &query.destination {
        Some(destination) => {
            let location = api
                .runner
                .context()
                .destinations
                .resolve(Some(destination))?;
            list_location(api, &location, query.stream.as_deref()).await
        }
        None => Ok(catalog::select(
            api.views.catalog().await?,
            query.stream.as_deref(),
        )),
    }
}
