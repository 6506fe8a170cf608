//! Grafana's HTTP API, as `backup-grafana` uses it: everything an operator rebuilds a Grafana
//! from, written as one JSON file per object into a directory the backup then stores.
//!
//! ```text
//! <dir>/backup.json               what was exported, from where, when, and how many
//! <dir>/folders/<uid>.json        GET /api/folders/<uid>
//! <dir>/dashboards/<uid>.json     GET /api/dashboards/uid/<uid>   ({"dashboard", "meta"})
//! <dir>/alert-rules/<uid>.json    GET /api/v1/provisioning/alert-rules (one item each)
//! <dir>/datasources/<uid>.json    GET /api/datasources (one item each; with datasources only)
//! ```
//!
//! Folders and dashboards are found with `GET /api/search?type=dash-folder|dash-db`, page by
//! page until a page comes back empty (a server may return fewer than the limit asked for).
//! Each file holds what Grafana answered, so `POST /api/dashboards/db` with its `dashboard`
//! and `meta.folderUid` puts a dashboard back. Grafana never returns datasource secrets
//! (`secureJsonData`); `secureJsonFields` names which were set, so they can be entered again.
//!
//! The URL and token come from the service config (`[grafana]`): a request never names a URL.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use serde_json::Value;

use crate::config::GrafanaConfig;

/// The layout version written into `backup.json`.
pub const FORMAT: &str = "cim-backup-grafana/1";
/// Dashboards and folders fetched at once.
const CONCURRENT_FETCHES: usize = 8;
/// Results asked for per search page (Grafana caps it at 5000).
const PAGE_LIMIT: usize = 1000;
/// A larger answer is refused rather than held in memory.
const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// Search pages read at most (a million objects): a server that never ends is an error.
const MAX_PAGES: usize = 1000;
/// Each request of the export may take this long (a big dashboard on a busy server).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(60);
/// Each request of the check before a job is accepted, and the whole check: well inside a
/// client's 10 s wait for the reply.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(3);
const PREFLIGHT_TOTAL: Duration = Duration::from_secs(6);

#[derive(Debug, thiserror::Error)]
pub enum GrafanaError {
    #[error("[grafana] url {url}: {message}")]
    Url { url: String, message: String },
    #[error("[grafana] token_file {path}: {message}")]
    Token { path: String, message: String },
    #[error("Grafana at {url} did not answer: {message}")]
    Unreachable { url: String, message: String },
    #[error(
        "Grafana at {url} refused the token for {path} (HTTP {status}): check [grafana] token_file{hint}"
    )]
    Refused {
        url: String,
        path: String,
        status: u16,
        hint: &'static str,
    },
    #[error("Grafana at {url} answered {path} with HTTP {status}: {message}")]
    Failed {
        url: String,
        path: String,
        status: u16,
        message: String,
    },
    #[error("Grafana at {url} answered {path} with {message}")]
    Invalid {
        url: String,
        path: String,
        message: String,
    },
    #[error("writing the export {path}: {message}")]
    Write { path: String, message: String },
}

/// What one export holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExportCounts {
    pub folders: usize,
    pub dashboards: usize,
    pub alert_rules: usize,
    /// `None` when datasources were not asked for.
    pub datasources: Option<usize>,
}

/// The server's base URL (no trailing `/`), checked: http or https, a host, no query.
pub fn base_url(url: &str) -> Result<url::Url, String> {
    let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("only http:// and https:// are supported".into());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("a query or fragment is not allowed".into());
    }
    Ok(parsed)
}

/// A client of one configured server.
struct Grafana {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl GrafanaError {
    /// The error code a client sees: a refused token is 403, a mistake in `[grafana]` 500,
    /// anything the server did or did not answer 503.
    pub fn code(&self) -> cim_backup_contracts::ErrorCode {
        use cim_backup_contracts::ErrorCode;
        match self {
            GrafanaError::Refused { .. } => ErrorCode::Forbidden,
            GrafanaError::Url { .. } | GrafanaError::Token { .. } | GrafanaError::Write { .. } => {
                ErrorCode::Internal
            }
            _ => ErrorCode::Unavailable,
        }
    }
}

impl Grafana {
    fn new(config: &GrafanaConfig, timeout: Duration) -> Result<Self, GrafanaError> {
        let base = base_url(&config.url).map_err(|message| GrafanaError::Url {
            url: config.url.clone(),
            message,
        })?;
        let token = match &config.token_file {
            None => None,
            Some(path) => {
                let shown = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|e| GrafanaError::Token {
                    path: shown.clone(),
                    message: e.to_string(),
                })?;
                let token = text.trim().to_owned();
                if token.is_empty() || token.contains(char::is_whitespace) {
                    return Err(GrafanaError::Token {
                        path: shown,
                        message: "holds no single token".into(),
                    });
                }
                Some(token)
            }
        };
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .timeout(timeout)
            .build()
            .map_err(|e| GrafanaError::Url {
                url: config.url.clone(),
                message: e.to_string(),
            })?;
        Ok(Grafana {
            http,
            base: base.as_str().trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// `GET <base><path>` as JSON. `Ok(None)` for a 404 when `missing_ok`.
    async fn get(&self, path: &str, missing_ok: bool) -> Result<Option<Value>, GrafanaError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.get(&url).header("Accept", "application/json");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let unreachable = |e: reqwest::Error| GrafanaError::Unreachable {
            url: self.base.clone(),
            message: why(&e),
        };
        let mut response = request.send().await.map_err(unreachable)?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_RESPONSE_BYTES {
                return Err(self.invalid(path, format!("more than {MAX_RESPONSE_BYTES} bytes")));
            }
        }
        match status {
            200 => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| self.invalid(path, format!("no JSON: {e}"))),
            404 if missing_ok => Ok(None),
            401 | 403 => Err(GrafanaError::Refused {
                url: self.base.clone(),
                path: path.to_owned(),
                status,
                hint: if self.token.is_none() {
                    " (none is set)"
                } else if status == 403 {
                    " (the service account lacks the role for this)"
                } else {
                    ""
                },
            }),
            _ => Err(GrafanaError::Failed {
                url: self.base.clone(),
                path: path.to_owned(),
                status,
                message: grafana_message(&body),
            }),
        }
    }

    fn invalid(&self, path: &str, message: String) -> GrafanaError {
        GrafanaError::Invalid {
            url: self.base.clone(),
            path: path.to_owned(),
            message,
        }
    }

    /// The uids of every search hit of `kind` (`dash-db` or `dash-folder`), in order.
    async fn search_uids(&self, kind: &str) -> Result<Vec<String>, GrafanaError> {
        let mut uids = Vec::new();
        for page in 1..=MAX_PAGES + 1 {
            if page > MAX_PAGES {
                return Err(self.invalid(
                    &format!("/api/search?type={kind}"),
                    format!("more than {MAX_PAGES} pages of results"),
                ));
            }
            let path = format!("/api/search?type={kind}&limit={PAGE_LIMIT}&page={page}");
            let hits = self.get(&path, false).await?.unwrap_or_default();
            let hits = hits
                .as_array()
                .ok_or_else(|| self.invalid(&path, "no list of results".into()))?;
            if hits.is_empty() {
                break;
            }
            let before = uids.len();
            for hit in hits {
                let uid = self.uid_of(&path, hit)?;
                if !uids.contains(&uid) {
                    uids.push(uid);
                }
            }
            // A server that ignores `page` repeats itself; stop rather than loop forever.
            if uids.len() == before {
                break;
            }
        }
        Ok(uids)
    }

    /// An object's uid, checked to be usable as a file name and a URL path segment.
    fn uid_of(&self, path: &str, object: &Value) -> Result<String, GrafanaError> {
        let uid = object["uid"].as_str().unwrap_or_default();
        let usable = !uid.is_empty()
            && uid.len() <= 128
            && !uid.starts_with('.')
            && uid
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !usable {
            return Err(self.invalid(path, format!("an object whose uid {uid:?} is not usable")));
        }
        Ok(uid.to_owned())
    }

    /// Fetches `<prefix><uid>` for each uid, a few at a time, writing each into `dir`.
    async fn fetch_each(
        &self,
        uids: &[String],
        prefix: &str,
        dir: &Path,
    ) -> Result<usize, GrafanaError> {
        // Collected first: a lazy `map` here makes the future not provably `Send`.
        let fetches: Vec<_> = uids
            .iter()
            .map(|uid| self.fetch_into(format!("{prefix}{uid}"), dir.join(format!("{uid}.json"))))
            .collect();
        let fetched: Vec<bool> = futures::stream::iter(fetches)
            .buffer_unordered(CONCURRENT_FETCHES)
            .try_collect()
            .await?;
        Ok(fetched.into_iter().filter(|&f| f).count())
    }

    /// Writes the object at `path` to `file`; `false` when it was deleted since it was listed.
    async fn fetch_into(&self, path: String, file: PathBuf) -> Result<bool, GrafanaError> {
        match self.get(&path, true).await? {
            Some(object) => write_json(&file, &object).map(|()| true),
            None => Ok(false),
        }
    }

    /// Writes each item of the list at `path` into `dir` by its uid (an item listed twice is
    /// written and counted once).
    async fn write_list(&self, path: &str, dir: &Path) -> Result<usize, GrafanaError> {
        let list = self.get(path, false).await?.unwrap_or_default();
        let items = list
            .as_array()
            .ok_or_else(|| self.invalid(path, "no list".into()))?;
        let mut written = std::collections::BTreeSet::new();
        for item in items {
            let uid = self.uid_of(path, item)?;
            if written.insert(uid.clone()) {
                write_json(&dir.join(format!("{uid}.json")), item)?;
            }
        }
        Ok(written.len())
    }

    /// `/api/health`, with a database Grafana itself reports as failing refused.
    async fn health(&self) -> Result<Value, GrafanaError> {
        let health = self.get("/api/health", false).await?.unwrap_or_default();
        match health["database"].as_str() {
            Some("ok") | None => Ok(health),
            Some(other) => Err(self.invalid("/api/health", format!("database {other:?}"))),
        }
    }
}

/// What a job would fail on first, asked before it is accepted (a few seconds at most): the
/// token file, the server answering, the token accepted, and datasources readable when asked.
pub async fn preflight(
    config: &GrafanaConfig,
    include_datasources: bool,
) -> Result<(), GrafanaError> {
    let grafana = Grafana::new(config, PREFLIGHT_TIMEOUT)?;
    let checks = async {
        grafana.health().await?;
        grafana
            .get("/api/search?type=dash-db&limit=1", false)
            .await?;
        if include_datasources {
            grafana.get("/api/datasources", false).await?;
        }
        Ok(())
    };
    tokio::time::timeout(PREFLIGHT_TOTAL, checks)
        .await
        .unwrap_or_else(|_| {
            Err(GrafanaError::Unreachable {
                url: grafana.base.clone(),
                message: format!(
                    "the check before the backup took over {} s",
                    PREFLIGHT_TOTAL.as_secs()
                ),
            })
        })
}

/// The cause of a failed request in an operator's words (reqwest's own text names only the URL).
fn why(e: &reqwest::Error) -> String {
    let mut cause = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    match (e.is_timeout(), e.is_connect()) {
        (true, _) => "no answer in time".into(),
        (_, true) if !cause.is_empty() => format!("cannot connect ({cause})"),
        _ if !cause.is_empty() => format!("{e} ({cause})"),
        _ => e.to_string(),
    }
}

/// Exports the configured Grafana into `dir` (created; it must not exist). On an error the
/// caller removes `dir`: a partial export is never stored.
pub async fn export(
    config: &GrafanaConfig,
    dir: &Path,
    include_datasources: bool,
) -> Result<ExportCounts, GrafanaError> {
    let grafana = Grafana::new(config, EXPORT_TIMEOUT)?;
    let health = grafana.health().await?;
    let version = health["version"].as_str().map(str::to_owned);
    for sub in ["folders", "dashboards", "alert-rules"]
        .into_iter()
        .chain(include_datasources.then_some("datasources"))
    {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| write_error(&dir.join(sub), e))?;
    }
    let folders = grafana.search_uids("dash-folder").await?;
    let folders = grafana
        .fetch_each(&folders, "/api/folders/", &dir.join("folders"))
        .await?;
    let dashboards = grafana.search_uids("dash-db").await?;
    let dashboards = grafana
        .fetch_each(&dashboards, "/api/dashboards/uid/", &dir.join("dashboards"))
        .await?;
    let alert_rules = grafana
        .write_list("/api/v1/provisioning/alert-rules", &dir.join("alert-rules"))
        .await?;
    let datasources = match include_datasources {
        true => Some(
            grafana
                .write_list("/api/datasources", &dir.join("datasources"))
                .await?,
        ),
        false => None,
    };
    let counts = ExportCounts {
        folders,
        dashboards,
        alert_rules,
        datasources,
    };
    let taken_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    write_json(
        &dir.join("backup.json"),
        &serde_json::json!({
            "format": FORMAT,
            "url": grafana.base,
            "grafana_version": version,
            "taken_at": taken_at,
            "include_datasources": include_datasources,
            "counts": counts,
        }),
    )?;
    tracing::info!(dir = %dir.display(), ?counts, "Grafana exported");
    Ok(counts)
}

fn write_json(path: &Path, value: &Value) -> Result<(), GrafanaError> {
    let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    bytes.push(b'\n');
    std::fs::write(path, bytes).map_err(|e| write_error(path, e))
}

fn write_error(path: &Path, e: std::io::Error) -> GrafanaError {
    GrafanaError::Write {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Grafana's own words from an error body (`{"message": …}`), or the start of the body.
fn grafana_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| text.chars().take(200).collect::<String>())
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_http_or_https_with_a_host() {
        assert!(base_url("http://127.0.0.1:3000").is_ok());
        assert!(base_url("https://grafana.example/sub").is_ok());
        assert!(base_url("ftp://grafana").is_err());
        assert!(base_url("http://grafana:3000/?orgId=1").is_err());
        assert!(base_url("grafana:3000").is_err());
    }

    #[test]
    fn error_bodies_give_grafanas_message() {
        assert_eq!(
            grafana_message(br#"{"message":"Dashboard not found"}"#),
            "Dashboard not found"
        );
        assert_eq!(grafana_message(b"plain failure\n"), "plain failure");
    }
}
