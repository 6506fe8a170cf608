//! Query handlers (`cim.backup.qry.*`): they read the views, never the work in progress.

use async_nats::service::Request;
use cim_backup_contracts::commands::{BackupsQuery, JobQuery, JobsQuery};
use cim_backup_contracts::subjects::aggregate_wildcard;
use cim_backup_contracts::views::{CatalogEntry, JobView};
use cim_backup_projections::catalog;
use cim_backup_projections::job_view::Fold;

use super::Api;
use super::commands::parse;
use super::reply::ApiError;
use super::resolve::list_location;
use crate::projector::fold_stored;

/// Most job views one `jobs` query returns.
const MAX_JOBS: usize = 1000;

/// The job's view, never behind its event log: the stored view, with any events recorded since
/// it was written folded in (the projector may lag a busy job by a few batches; a watcher
/// must see progress as soon as it is recorded). A job the projector has not seen yet is
/// folded from its events. A completion folded here puts its catalog entry first, as the
/// projector does: whoever sees a backup completed finds it in the catalog.
pub async fn job(api: &Api, request: &Request) -> Result<JobView, ApiError> {
    let query: JobQuery = parse(request)?;
    let events = &api.runner.context().events;
    let stored = api.views.job(&query.job_id).await?;
    let (kind, view) = match stored {
        Some(view) => {
            let behind = events
                .head_of(view.kind, &query.job_id)
                .await?
                .is_some_and(|(sequence, _)| sequence > view.version);
            if !behind {
                return Ok(view);
            }
            (view.kind, Some(view))
        }
        None => {
            let kind = events
                .kind_of(&query.job_id)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("no job {}", query.job_id)))?;
            (kind, None)
        }
    };
    let from = view.as_ref().map_or(1, |v| v.head_seq + 1);
    let newer = events
        .read(
            aggregate_wildcard(kind.as_str(), query.job_id.as_str()),
            from,
        )
        .await?;
    let mut view = view;
    for stored in &newer {
        match fold_stored(view.as_ref(), stored) {
            Ok(Fold::Updated(next)) => {
                if let Some(entry) = catalog::entry_for(&next, &stored.envelope) {
                    api.views.put_catalog_entry(&entry).await?;
                }
                view = Some(next);
            }
            Ok(Fold::AlreadyApplied) => {}
            Err(e) => return Err(ApiError::internal(e.to_string())),
        }
    }
    view.ok_or_else(|| ApiError::not_found(format!("no job {}", query.job_id)))
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
