//! Prometheus's admin API, as `backup-prometheus` uses it: `POST /api/v1/admin/tsdb/snapshot`
//! (the server hard-links its blocks, and writes its head as one, under
//! `<data_dir>/snapshots/<name>`), and the lock file some servers hold on their data
//! directory (Prometheus 2.42 creates none by default: restores also look for processes with
//! files open or mapped inside the target, `archive::files::busy::in_use_by`).
//!
//! Plain HTTP/1.1 on a loopback or LAN address from the service config (`[prometheus] url`):
//! a request never names the URL, so it cannot point the service at another host.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    #[error("[prometheus] url {0}: only http://host:port is supported")]
    Url(String),
    #[error(
        "Prometheus at {url} did not answer: {message} (is it running, with --web.enable-admin-api?)"
    )]
    Unreachable { url: String, message: String },
    #[error("Prometheus at {url} refused the snapshot: {message}")]
    Refused { url: String, message: String },
}

/// Asks the server for a snapshot; returns its name (a directory under `<data_dir>/snapshots`).
pub async fn snapshot(url: &str) -> Result<String, PrometheusError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| PrometheusError::Url(url.into()))?;
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        return Err(PrometheusError::Url(url.into()));
    }
    let unreachable = |message: String| PrometheusError::Unreachable {
        url: url.to_owned(),
        message,
    };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(host).await?;
        let request = format!(
            "POST /api/v1/admin/tsdb/snapshot HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    // A snapshot of a big head can take a while; this bounds a server that hangs.
    let response = tokio::time::timeout(Duration::from_secs(300), exchange)
        .await
        .map_err(|_| unreachable("no answer within 300 s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| unreachable("not an HTTP response".into()))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    if status != "200" || json["status"] != "success" {
        let said = json["error"].as_str().map(str::to_owned).unwrap_or(body);
        return Err(PrometheusError::Refused {
            url: url.to_owned(),
            message: format!("HTTP {status}: {}", said.trim()),
        });
    }
    json["data"]["name"]
        .as_str()
        .filter(|n| !n.is_empty() && !n.contains('/') && !n.starts_with('.'))
        .map(str::to_owned)
        .ok_or_else(|| PrometheusError::Refused {
            url: url.to_owned(),
            message: format!("no snapshot name in {body}"),
        })
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// Whether a program holds `<dir>/lock` locked (an exclusive `flock`, as Prometheus takes with
/// its lock file on): its data directory must not be replaced under it.
pub fn locked_by_a_running_program(dir: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::File::open(dir.join("lock")) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; released when `file` is dropped.
    let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    taken != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_file_is_seen_and_a_free_one_is_not() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        assert!(!locked_by_a_running_program(dir.path()), "no lock file");
        let lock = std::fs::File::create(dir.path().join("lock")).unwrap();
        assert!(
            !locked_by_a_running_program(dir.path()),
            "a lock file nobody holds"
        );
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
            0
        );
        assert!(locked_by_a_running_program(dir.path()));
    }

    #[test]
    fn chunked_bodies_are_put_back_together() {
        assert_eq!(dechunk("4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n"), "abcdef");
    }
}
