//! A stand-in for Grafana's HTTP API, for `backup-grafana`'s tests.
//!
//! No Grafana server package exists on the registries this project installs from (Debian,
//! PyPI, npm, crates.io): only clients. So this serves the documented endpoints that
//! `backup-grafana` reads, with Grafana's shapes and status codes, from a real TCP socket:
//! - `GET /api/health` (no auth): `{"database":"ok","version":…}`;
//! - `GET /api/search?type=dash-folder|dash-db&limit=L&page=P`: hits, at most
//!   [`PAGE_CAP`] per page whatever `limit` asks (so paging is exercised);
//! - `GET /api/folders/<uid>`, `GET /api/dashboards/uid/<uid>`: the object, or 404;
//! - `GET /api/datasources`: the list (403 for the viewer token, as Grafana's RBAC answers);
//! - `GET /api/v1/provisioning/alert-rules`: the list;
//! - anything without `Authorization: Bearer <token>`: 401 `{"message":"Unauthorized"}`.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Hits a search page returns at most.
pub const PAGE_CAP: usize = 7;

/// What the server holds.
#[derive(Debug, Clone, Default)]
pub struct GrafanaData {
    /// Folder objects as `GET /api/folders/<uid>` returns them.
    pub folders: Vec<Value>,
    /// `{"dashboard": …, "meta": …}` as `GET /api/dashboards/uid/<uid>` returns them.
    pub dashboards: Vec<Value>,
    pub datasources: Vec<Value>,
    pub alert_rules: Vec<Value>,
}

impl GrafanaData {
    /// `folders` folders (the last nested in the first), `dashboards` dashboards spread over
    /// them and the General folder, two datasources (one with secrets set) and three rules.
    pub fn sample(folders: usize, dashboards: usize) -> Self {
        let folder_uids: Vec<String> = (0..folders).map(|i| format!("folder-{i}")).collect();
        let folders_json = folder_uids
            .iter()
            .enumerate()
            .map(|(i, uid)| {
                let mut f = json!({"id": i + 1, "uid": uid, "title": format!("Team {i}"),
                    "url": format!("/dashboards/f/{uid}/"), "version": 1});
                if i + 1 == folders && folders > 1 {
                    f["parentUid"] = json!(folder_uids[0]);
                }
                f
            })
            .collect();
        let dashboards_json = (0..dashboards)
            .map(|i| {
                let folder = folder_uids.get(i % (folders + 1)).cloned().unwrap_or_default();
                json!({
                    "dashboard": {"id": 100 + i, "uid": format!("dash-{i:03}"),
                        "title": format!("Service {i}"), "tags": ["cim"], "schemaVersion": 39,
                        "version": 3, "panels": [{"id": 1, "type": "timeseries",
                        "title": "events/s", "targets": [{"expr": format!("rate(cim_events_total{{svc=\"{i}\"}}[5m])")}]}]},
                    "meta": {"type": "db", "slug": format!("service-{i}"), "folderUid": folder,
                        "created": "2026-11-01T10:00:00Z", "updated": "2026-12-01T10:00:00Z"}
                })
            })
            .collect();
        GrafanaData {
            folders: folders_json,
            dashboards: dashboards_json,
            datasources: vec![
                json!({"id": 1, "uid": "prom-main", "orgId": 1, "name": "Prometheus",
                    "type": "prometheus", "access": "proxy", "url": "http://127.0.0.1:9090",
                    "isDefault": true, "jsonData": {"httpMethod": "POST"},
                    "secureJsonFields": {}}),
                json!({"id": 2, "uid": "pg-events", "orgId": 1, "name": "Events DB",
                    "type": "postgres", "url": "127.0.0.1:5432", "user": "grafana",
                    "jsonData": {"sslmode": "disable"},
                    "secureJsonFields": {"password": true}}),
            ],
            alert_rules: (0..3)
                .map(|i| {
                    json!({"uid": format!("rule-{i}"), "title": format!("Backlog {i}"),
                        "folderUID": folder_uids.first().cloned().unwrap_or_default(),
                        "ruleGroup": "cim", "condition": "A", "for": "5m",
                        "data": [{"refId": "A", "datasourceUid": "prom-main",
                            "model": {"expr": format!("cim_backlog > {}", i * 10)}}]})
                })
                .collect(),
        }
    }
}

/// A running stand-in; stopped when dropped.
pub struct FakeGrafana {
    pub url: String,
    /// The admin token: everything is readable.
    pub token: String,
    /// A viewer token: datasources are 403.
    pub viewer_token: String,
    served: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeGrafana {
    pub async fn start(data: GrafanaData) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let token = "glsa_admin_0123456789abcdef".to_owned();
        let viewer_token = "glsa_viewer_0123456789abcdef".to_owned();
        let served = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new((data, token.clone(), viewer_token.clone()));
        let log = served.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (state, log) = (state.clone(), log.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let auth = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("authorization")
                                .then(|| v.trim().to_owned())
                        })
                        .unwrap_or_default();
                    log.lock().unwrap().push(target.clone());
                    let (data, token, viewer) = &*state;
                    let (status, body) = answer(data, token, viewer, &auth, &target);
                    let body = body.to_string();
                    let reason = match status {
                        200 => "OK",
                        401 => "Unauthorized",
                        403 => "Forbidden",
                        _ => "Not Found",
                    };
                    let response = format!(
                        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        FakeGrafana {
            url,
            token,
            viewer_token,
            served,
            task,
        }
    }

    /// The request targets served so far, in order.
    pub fn served(&self) -> Vec<String> {
        self.served.lock().unwrap().clone()
    }

    /// Stops answering: connections are refused from now on.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for FakeGrafana {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(data: &GrafanaData, token: &str, viewer: &str, auth: &str, target: &str) -> (u16, Value) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path == "/api/health" {
        return (
            200,
            json!({"database": "ok", "version": "11.3.0", "commit": "fake"}),
        );
    }
    let role = match auth.strip_prefix("Bearer ") {
        Some(t) if t == token => "Admin",
        Some(t) if t == viewer => "Viewer",
        _ => return (401, json!({"message": "Unauthorized"})),
    };
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or_default()
            .to_owned()
    };
    let not_found = |what: &str| (404, json!({"message": format!("{what} not found")}));
    match path {
        "/api/search" => {
            let limit: usize = param("limit").parse().unwrap_or(1000);
            let page: usize = param("page").parse().unwrap_or(1).max(1);
            let hits: Vec<Value> = match param("type").as_str() {
                "dash-folder" => data
                    .folders
                    .iter()
                    .map(|f| json!({"uid": f["uid"], "title": f["title"], "type": "dash-folder"}))
                    .collect(),
                "dash-db" => data
                    .dashboards
                    .iter()
                    .map(|d| {
                        json!({"uid": d["dashboard"]["uid"], "title": d["dashboard"]["title"],
                        "type": "dash-db", "folderUid": d["meta"]["folderUid"]})
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let size = limit.min(PAGE_CAP);
            let page: Vec<Value> = hits
                .into_iter()
                .skip((page - 1) * size)
                .take(size)
                .collect();
            (200, Value::Array(page))
        }
        "/api/datasources" if role != "Admin" => (
            403,
            json!({"message": "You'll need additional permissions to perform this action. Permissions needed: datasources:read"}),
        ),
        "/api/datasources" => (200, Value::Array(data.datasources.clone())),
        "/api/v1/provisioning/alert-rules" => (200, Value::Array(data.alert_rules.clone())),
        _ => {
            if let Some(uid) = path.strip_prefix("/api/folders/") {
                return data
                    .folders
                    .iter()
                    .find(|f| f["uid"] == uid)
                    .map(|f| (200, f.clone()))
                    .unwrap_or_else(|| not_found("folder"));
            }
            if let Some(uid) = path.strip_prefix("/api/dashboards/uid/") {
                return data
                    .dashboards
                    .iter()
                    .find(|d| d["dashboard"]["uid"] == uid)
                    .map(|d| (200, d.clone()))
                    .unwrap_or_else(|| not_found("Dashboard"));
            }
            not_found("endpoint")
        }
    }
}
