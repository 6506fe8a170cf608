//! Finding a backup: by id in the catalog, by id in a named location, or the newest one of a
//! stream (`latest`) in the catalog or in a location.

use cim_backup_contracts::cid::Cid;
use cim_backup_contracts::commands::BackupRef;
use cim_backup_contracts::views::CatalogEntry;
use cim_backup_projections::catalog;

use super::Api;
use super::reply::ApiError;
use crate::archive::Manifest;
use crate::destination::Resolved;

/// A backup located: its manifest CID and where it is stored.
pub struct Located {
    pub backup: Cid,
    pub location: Resolved,
}

pub async fn locate(
    api: &Api,
    backup: BackupRef,
    stream: Option<&str>,
    source: Option<&str>,
) -> Result<Located, ApiError> {
    let ctx = api.runner.context();
    match (backup, source) {
        (BackupRef::Id(id), Some(source)) => Ok(Located {
            backup: id.0,
            location: ctx.destinations.resolve(Some(source))?,
        }),
        (BackupRef::Id(id), None) => {
            let entries = api.views.catalog().await?;
            let entry = entries
                .into_iter()
                .find(|e| e.backup_id == id)
                .ok_or_else(|| {
                    ApiError::not_found(format!(
                        "backup {id} is not in the catalog; name where it is stored with \"source\""
                    ))
                })?;
            Ok(Located {
                backup: id.0,
                location: Resolved {
                    given: entry.destination.clone(),
                    url: entry.destination,
                },
            })
        }
        // The newest backup in a location, of one stream or of anything.
        (BackupRef::Latest, Some(source)) => {
            let location = ctx.destinations.resolve(Some(source))?;
            let newest = newest_in_location(api, &location, stream)
                .await?
                .ok_or_else(|| {
                    ApiError::not_found(match stream {
                        Some(stream) => format!("no backup of stream {stream} in {}", location.url),
                        None => format!("no backup in {}", location.url),
                    })
                })?;
            Ok(Located {
                backup: newest,
                location,
            })
        }
        (BackupRef::Latest, None) => {
            let stream = stream.ok_or_else(|| {
                ApiError::bad_request(
                    "\"latest\" needs \"stream\" (the newest backup of which stream?) or \"source\" (the newest backup where?)",
                )
            })?;
            let entries = catalog::select(api.views.catalog().await?, Some(stream));
            let entry = entries.into_iter().next().ok_or_else(|| {
                ApiError::not_found(format!("no backup of stream {stream} in the catalog"))
            })?;
            Ok(Located {
                backup: entry.backup_id.0,
                location: Resolved {
                    given: entry.destination.clone(),
                    url: entry.destination,
                },
            })
        }
    }
}

/// The manifest of a located backup, read (and checked against its id) before a job is accepted
/// for it: a backup that is not where the request says is a 404 now, not a failed job later.
pub async fn manifest_at(api: &Api, located: &Located) -> Result<Manifest, ApiError> {
    let store = api
        .runner
        .context()
        .destinations
        .open(&located.location.url)?;
    match store.get_manifest(&located.backup).await {
        Ok((manifest, _)) => Ok(manifest),
        Err(crate::archive::ArchiveError::Missing { .. }) => Err(not_there(&store, located).await),
        Err(other) => Err(other.into()),
    }
}

/// Checks that a located backup's manifest is where the request says (one HEAD, nothing read):
/// for a verify, which is there to find out whether the manifest is intact.
pub async fn require_manifest(api: &Api, located: &Located) -> Result<(), ApiError> {
    let store = api
        .runner
        .context()
        .destinations
        .open(&located.location.url)?;
    match store
        .size(&crate::archive::manifest::key(&located.backup))
        .await?
    {
        Some(_) => Ok(()),
        None => Err(not_there(&store, located).await),
    }
}

/// Why a backup's manifest is absent: the place itself is unusable (a missing bucket), or the
/// backup is not in it.
async fn not_there(store: &crate::archive::ArchiveStore, located: &Located) -> ApiError {
    match store.probe().await {
        Err(e) => ApiError::new(e.code, e.message),
        Ok(()) => ApiError::not_found(format!(
            "backup {} is not in {}",
            located.backup, located.location.url
        )),
    }
}

/// Reads every manifest in a location; returns catalog-shaped entries, newest first.
pub async fn list_location(
    api: &Api,
    location: &Resolved,
    stream: Option<&str>,
) -> Result<Vec<CatalogEntry>, ApiError> {
    let store = api.runner.context().destinations.open(&location.url)?;
    store
        .probe()
        .await
        .map_err(|e| ApiError::new(e.code, e.message))?;
    let mut entries = Vec::new();
    for cid in store.list_manifests().await? {
        match store.get_manifest(&cid).await {
            Ok((manifest, bytes)) => {
                entries.push(entry_from_manifest(cid, &manifest, bytes, &location.url))
            }
            Err(e) => {
                tracing::warn!(manifest = %cid, error = %e, "unreadable manifest in {}", location.url)
            }
        }
    }
    Ok(catalog::select(entries, stream))
}

async fn newest_in_location(
    api: &Api,
    location: &Resolved,
    stream: Option<&str>,
) -> Result<Option<Cid>, ApiError> {
    Ok(list_location(api, location, stream)
        .await?
        .first()
        .map(|e| e.backup_id.0))
}

fn entry_from_manifest(
    cid: Cid,
    manifest: &Manifest,
    manifest_bytes: u64,
    url: &str,
) -> CatalogEntry {
    let streams: Vec<_> = manifest.streams.iter().map(|s| s.summary()).collect();
    CatalogEntry {
        backup_id: cid.into(),
        job_id: manifest
            .job_id
            .parse()
            .unwrap_or_else(|_| "unknown".parse().expect("valid id")),
        destination: url.to_owned(),
        created_at: manifest.created,
        messages: streams.iter().map(|s| s.messages).sum(),
        raw_bytes: streams.iter().map(|s| s.raw_bytes).sum::<u64>()
            + manifest.trees.iter().map(|t| t.bytes).sum::<u64>(),
        stored_bytes: manifest.objects().1 + manifest_bytes,
        objects: manifest.objects().0,
        trees: manifest.trees.clone(),
        buckets: catalog::buckets(&streams),
        streams,
        compression: manifest.compression.label(),
        encrypted: manifest.encryption.is_some(),
    }
}
