//! Running the service in-process and talking to it as a foreign client would: plain NATS
//! requests with JSON bodies on the contract's subjects.

use std::path::Path;
use std::time::Duration;

use async_nats::HeaderMap;
use cim_backup::config::{Config, DestinationConfig};
use cim_backup_contracts::errors::SERVICE_ERROR_CODE_HEADER;
use cim_backup_contracts::subjects::QRY_JOB;
use cim_backup_contracts::views::JobView;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A service config for tests: `local` → `file://<archive_dir>`, small segments so that even
/// small streams span several segments.
pub fn test_config(nats_url: &str, archive_dir: &Path, instance: &str) -> Config {
    let mut config = Config::default();
    config.nats.url = nats_url.to_owned();
    config.service.instance = instance.to_owned();
    config.destinations.insert(
        "local".into(),
        DestinationConfig::url(&format!("file://{}", archive_dir.display())),
    );
    config.defaults.destination = Some("local".into());
    config.defaults.segment_bytes = 64 * 1024;
    config
}

/// The service running on its own runtime (own thread), so that [`TestService::crash`] can
/// drop every task it spawned at once — like `kill -9`, but observable from the test.
pub struct TestService {
    runtime: Option<tokio::runtime::Runtime>,
    task: Option<JoinHandle<Result<(), cim_backup::api::ServeError>>>,
    stop: Option<oneshot::Sender<()>>,
}

impl TestService {
    /// Starts the service and waits until it answers queries.
    pub async fn start(config: Config) -> TestService {
        let url = config.nats.url.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("cim-backup-service")
            .build()
            .expect("service runtime");
        let task = runtime.spawn(cim_backup::api::serve(config, async {
            let _ = stopped.await;
        }));
        let service = TestService {
            runtime: Some(runtime),
            task: Some(task),
            stop: Some(stop),
        };
        let client = async_nats::connect(&url).await.expect("connect");
        let caller = Caller { client };
        crate::eventually(Duration::from_secs(30), "the service to answer", || {
            let caller = &caller;
            async move {
                caller
                    .request("cim.backup.qry.jobs", &json!({}))
                    .await
                    .ok()
                    .filter(|r| r.status.is_none())
            }
        })
        .await;
        service
    }

    /// Graceful stop: jobs are interrupted without recording anything and resume on restart.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("service stops within 30 s");
            result
                .expect("service task")
                .expect("service ran without error");
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    /// Abrupt stop, like `kill -9`: every task of the service is dropped wherever it is.
    pub async fn crash(mut self) {
        self.task.take();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        // Let the dropped connection reach the server before the test goes on.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Drop for TestService {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A reply as a foreign client sees it.
#[derive(Debug, Clone)]
pub struct Reply {
    /// `Nats-Service-Error-Code`, if the reply is an error.
    pub status: Option<u16>,
    pub headers: Option<HeaderMap>,
    pub body: Value,
}

/// Sends raw requests.
#[derive(Clone)]
pub struct Caller {
    pub client: async_nats::Client,
}

impl Caller {
    pub async fn connect(url: &str) -> Caller {
        Caller {
            client: async_nats::connect(url).await.expect("connect"),
        }
    }

    pub async fn request(
        &self,
        subject: &str,
        body: &Value,
    ) -> Result<Reply, async_nats::RequestError> {
        self.request_bytes(subject, serde_json::to_vec(body).unwrap())
            .await
    }

    pub async fn request_bytes(
        &self,
        subject: &str,
        body: Vec<u8>,
    ) -> Result<Reply, async_nats::RequestError> {
        let message = self.client.request(subject.to_owned(), body.into()).await?;
        let status = message
            .headers
            .as_ref()
            .and_then(|h| h.get(SERVICE_ERROR_CODE_HEADER))
            .map(|v| v.as_str().parse().expect("numeric error code"));
        let body = if message.payload.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&message.payload).expect("JSON reply")
        };
        Ok(Reply {
            status,
            headers: message.headers,
            body,
        })
    }

    /// A request that must succeed; returns its body.
    pub async fn ok(&self, subject: &str, body: Value) -> Value {
        let reply = self.request(subject, &body).await.expect("request");
        assert_eq!(
            reply.status, None,
            "{subject} {body} failed: {}",
            reply.body
        );
        reply.body
    }

    /// A request that must fail; returns (code, message).
    pub async fn err(&self, subject: &str, body: Value) -> (u16, String) {
        let reply = self.request(subject, &body).await.expect("request");
        let status = reply
            .status
            .unwrap_or_else(|| panic!("{subject} {body} should fail, got {}", reply.body));
        assert_eq!(
            reply.body["error"]["code"],
            json!(status),
            "body and header codes agree"
        );
        (
            status,
            reply.body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    }

    pub async fn job(&self, job_id: &str) -> JobView {
        serde_json::from_value(self.ok(QRY_JOB, json!({ "job_id": job_id })).await)
            .expect("job view")
    }

    /// Backs up `streams` to the default destination and returns the backup id (the backup
    /// must complete within `timeout`).
    pub async fn backup(&self, streams: &[&str], timeout: Duration) -> String {
        let accepted = self
            .ok(
                cim_backup_contracts::subjects::CMD_START,
                json!({ "streams": streams }),
            )
            .await;
        let view = self
            .wait_job(accepted["job_id"].as_str().unwrap(), timeout)
            .await;
        view.backup_id
            .unwrap_or_else(|| panic!("the backup did not complete: {view:?}"))
            .to_string()
    }

    /// Waits until the job is in a terminal state and returns its view. Tolerates a service
    /// that is (re)connecting: "no responders" is retried until the deadline.
    pub async fn wait_job(&self, job_id: &str, timeout: Duration) -> JobView {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(reply) = self.request(QRY_JOB, &json!({ "job_id": job_id })).await {
                assert_eq!(reply.status, None, "job query failed: {}", reply.body);
                let view: JobView = serde_json::from_value(reply.body).expect("job view");
                let p = &view.progress;
                assert!(
                    p.messages_done <= p.messages_total
                        && p.bytes_done <= p.bytes_total
                        && p.objects_done <= p.objects_total,
                    "progress never runs past its totals: {view:?}"
                );
                if view.state == cim_backup_contracts::views::JobState::Completed {
                    assert_eq!(
                        (p.messages_done, p.bytes_done, p.objects_done),
                        (p.messages_total, p.bytes_total, p.objects_total),
                        "a completed job's view adds up: {view:?}"
                    );
                }
                if view.state.is_terminal() {
                    return view;
                }
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "job {job_id} did not end within {timeout:?}: {:?}",
                    self.request(QRY_JOB, &json!({ "job_id": job_id }))
                        .await
                        .map(|r| r.body)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A job view read straight from the view bucket (works while no service runs).
pub async fn stored_view(client: &async_nats::Client, job_id: &str) -> Option<JobView> {
    let js = async_nats::jetstream::new(client.clone());
    let bucket = js
        .get_key_value(cim_backup_contracts::subjects::JOBS_BUCKET)
        .await
        .ok()?;
    let bytes = bucket.get(job_id).await.ok()??;
    Some(serde_json::from_slice(&bytes).expect("stored job view"))
}

/// The integrity configuration of a stream of cim-ipld chains with one chain per subject token 2
/// (`<a>.<b>.<aggregate>`, what `streams::publish_chained` writes).
pub fn ipld_chains_by_token_2(
    projections: Vec<cim_backup_contracts::integrity::ProjectionSpec>,
    projectors: &[&str],
) -> cim_backup::config::StreamIntegrity {
    cim_backup::config::StreamIntegrity {
        profile: cim_backup_contracts::integrity::ProfileKind::CimIpld,
        chain_by: Some(cim_backup_contracts::integrity::ChainBy::SubjectToken(2)),
        cid_field: None,
        previous_field: None,
        sequence_field: None,
        projections,
        projectors: projectors.iter().map(|p| p.to_string()).collect(),
    }
}
