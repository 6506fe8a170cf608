//! The CLI's NATS client: request/reply on the service's subjects, nothing more.

use std::time::Duration;

use cim_backup_contracts::ErrorCode;
use cim_backup_contracts::errors::SERVICE_ERROR_CODE_HEADER;
use cim_backup_contracts::replies::ErrorReply;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a CLI request did not produce an answer. Each maps to a documented exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The service answered with an error (4xx or 5xx).
    #[error("{message} ({code})")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    /// Nobody answered, or NATS is unreachable.
    #[error("{0}")]
    Unavailable(String),
    /// A job ended failed or cancelled.
    #[error("job {job_id} {state}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    JobDidNotComplete {
        job_id: String,
        state: String,
        message: Option<String>,
    },
    #[error("{0}")]
    Usage(String),
    /// An integrity check completed and found breaks.
    #[error("corrupted: {0}")]
    Corrupted(String),
}

impl CliError {
    /// Exit codes (documented in the README and `--help`):
    /// 0 ok (a check: clean) · 1 job failed or was cancelled (a check: could not check) ·
    /// 2 usage error · 3 request rejected (4xx) · 4 service unavailable or failed (5xx, no
    /// responders, timeout) · 5 a check found corruption.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Corrupted(_) => 5,
            CliError::JobDidNotComplete { .. } => 1,
            CliError::Usage(_) => 2,
            CliError::Rejected { status, .. } if *status < 500 => 3,
            CliError::Rejected { .. } | CliError::Unavailable(_) => 4,
        }
    }
}

pub struct Client {
    nats: async_nats::Client,
    url: String,
    timeout: Duration,
}

impl Client {
    pub async fn connect(
        config: &crate::config::NatsConfig,
        timeout: Duration,
    ) -> Result<Client, CliError> {
        let mut options = async_nats::ConnectOptions::new()
            .name("cim-backup-cli")
            .connection_timeout(timeout);
        if let Some(creds) = &config.creds {
            options = options
                .credentials_file(creds)
                .await
                .map_err(|e| CliError::Usage(format!("credentials {}: {e}", creds.display())))?;
        }
        if let Some(token) = &config.token {
            options = options.token(token.clone());
        }
        if let (Some(user), Some(password)) = (&config.user, &config.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        let nats = options.connect(config.url.as_str()).await.map_err(|e| {
            CliError::Unavailable(format!("cannot connect to NATS at {}: {e}", config.url))
        })?;
        Ok(Client {
            nats,
            url: config.url.clone(),
            timeout,
        })
    }

    /// Sends `body` to `subject` and decodes the reply, turning error replies into
    /// [`CliError::Rejected`].
    pub async fn request<R: DeserializeOwned>(
        &self,
        subject: &str,
        body: &impl Serialize,
    ) -> Result<R, CliError> {
        let value: serde_json::Value = self.request_json(subject, body).await?;
        serde_json::from_value(value)
            .map_err(|e| CliError::Unavailable(format!("unexpected reply on {subject}: {e}")))
    }

    pub async fn request_json(
        &self,
        subject: &str,
        body: &impl Serialize,
    ) -> Result<serde_json::Value, CliError> {
        let payload = serde_json::to_vec(body).expect("requests serialize");
        let reply = tokio::time::timeout(
            self.timeout,
            self.nats.request(subject.to_owned(), payload.into()),
        )
        .await
        .map_err(|_| {
            CliError::Unavailable(format!("no reply on {subject} within {:?}", self.timeout))
        })?
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => CliError::Unavailable(format!(
                "no cim-backup service answers on {} (is `cim-backup serve` running?)",
                self.url
            )),
            _ => CliError::Unavailable(format!("request on {subject} failed: {e}")),
        })?;
        if let Some(code) = reply
            .headers
            .as_ref()
            .and_then(|h| h.get(SERVICE_ERROR_CODE_HEADER))
        {
            let status: u16 = code.as_str().parse().unwrap_or(500);
            let (kind, message) = match serde_json::from_slice::<ErrorReply>(&reply.payload) {
                Ok(body) => (body.error.kind, body.error.message),
                Err(_) => (
                    ErrorCode::from_status(status),
                    String::from_utf8_lossy(&reply.payload).into_owned(),
                ),
            };
            let code = serde_json::to_value(kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            return Err(CliError::Rejected {
                status,
                code,
                message,
            });
        }
        serde_json::from_slice(&reply.payload)
            .map_err(|e| CliError::Unavailable(format!("reply on {subject} is not JSON: {e}")))
    }
}
