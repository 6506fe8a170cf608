//! The CLI's NATS client: request/reply on the service's subjects, nothing more.
//!
//! Rules:
//! - Every error maps to one documented exit code ([`CliError::exit_code`]).
//! - A CLI user is told about flags, not JSON fields: [`CliError::with_flags`] rewrites the
//!   field names in a service's message into the command's flags.
//! - A request that starts a job carries an idempotency key (the user's, or one made for this
//!   invocation), so a reply lost in transit is retried without starting a second job.

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
    #[error("{message} ({kind})")]
    Rejected {
        status: u16,
        kind: String,
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
    /// A check completed without walking anything (its range held no messages when walked).
    #[error("nothing was checked: {0}")]
    NothingChecked(String),
    /// The user stopped following a job (Ctrl-C); the job goes on.
    #[error(
        "stopped following job {job_id}; it goes on: cim-backup backup-status --job-id {job_id} --watch"
    )]
    StoppedFollowing { job_id: String },
    /// `import-domain-configs` printed its plan or its error; Terraform's exit codes say the
    /// rest (0 no change, 2 changes, 1 error).
    #[error("")]
    Planned { code: u8 },
}

impl CliError {
    /// Exit codes (documented in the README and `--help`):
    /// 0 ok (a check: clean) · 1 job failed or was cancelled (a check: could not check) ·
    /// 2 usage error · 3 request rejected (4xx) · 4 service unavailable or failed (5xx, no
    /// responders, timeout) · 5 a check found corruption · 130 stopped following (Ctrl-C).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Corrupted(_) => 5,
            CliError::JobDidNotComplete { .. } | CliError::NothingChecked(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Rejected { status, .. } if *status < 500 => 3,
            CliError::Rejected { .. } | CliError::Unavailable(_) => 4,
            CliError::StoppedFollowing { .. } => 130,
            CliError::Planned { code } => *code,
        }
    }

    /// The error as `--json` prints it: the service's own shape, `{"error":{code,kind,message}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let (code, kind) = match self {
            CliError::Rejected { status, kind, .. } => (*status, kind.clone()),
            CliError::Usage(_) => (400, "usage".to_owned()),
            CliError::Unavailable(_) => (503, "unavailable".to_owned()),
            CliError::JobDidNotComplete { .. } => (500, "job_did_not_complete".to_owned()),
            CliError::Corrupted(_) => (422, "corrupt".to_owned()),
            CliError::NothingChecked(_) => (422, "nothing_checked".to_owned()),
            CliError::StoppedFollowing { .. } => (499, "stopped_following".to_owned()),
            CliError::Planned { code } => {
                (if *code == 1 { 400 } else { 200 }, "planned".to_owned())
            }
        };
        let message = match self {
            CliError::Rejected { message, .. } => message.clone(),
            other => other.to_string(),
        };
        serde_json::json!({ "error": { "code": code, "kind": kind, "message": message } })
    }

    /// The service's message in the words of the command line: `start_seq: …` becomes
    /// `--start-seq: …`, `"encrypt": true` becomes `--encrypt`. `flags` pairs each JSON field
    /// of the request with the flag that sets it.
    pub fn with_flags(self, flags: &[(&str, &str)]) -> CliError {
        match self {
            CliError::Rejected {
                status,
                kind,
                message,
            } => CliError::Rejected {
                status,
                kind,
                message: in_flags(&message, flags),
            },
            other => other,
        }
    }

    /// Whether repeating the same request (same idempotency key) may succeed: no reply came
    /// in time, or the service could not tell whether it recorded the job.
    fn worth_repeating(&self) -> bool {
        match self {
            CliError::Unavailable(message) => message.starts_with("no reply"),
            CliError::Rejected {
                status, message, ..
            } => *status == 503 && message.contains("may or may not have been recorded"),
            _ => false,
        }
    }
}

/// Rewrites JSON field names into flags (see [`CliError::with_flags`]).
pub fn in_flags(message: &str, flags: &[(&str, &str)]) -> String {
    let mut out = message.to_owned();
    for (field, flag) in flags {
        for (from, to) in [
            (format!("\"{field}\": true"), flag.to_string()),
            (format!("\"{field}\":true"), flag.to_string()),
            (format!("\"{field}\""), flag.to_string()),
        ] {
            out = out.replace(&from, &to);
        }
        if let Some(rest) = out.strip_prefix(&format!("{field}:")) {
            out = format!("{flag}:{rest}");
        }
        // Field names with an underscore are no English words: replace them anywhere.
        if field.contains('_') {
            out = replace_word(&out, field, flag);
        }
    }
    out
}

/// Replaces `word` where it stands alone (not inside a longer identifier).
fn replace_word(text: &str, word: &str, with: &str) -> String {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(word) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + word.len()..].chars().next();
        out.push_str(&rest[..at]);
        if before.is_some_and(is_ident) || after.is_some_and(is_ident) {
            out.push_str(word);
        } else {
            out.push_str(with);
        }
        rest = &rest[at + word.len()..];
    }
    out.push_str(rest);
    out
}

/// One running service instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub name: String,
    pub host: String,
    pub roots: Vec<cim_backup_contracts::files::RootInfo>,
}

pub struct Client {
    nats: async_nats::Client,
    url: String,
    timeout: Duration,
}

/// Attempts of a request that starts a job, when its reply was lost.
const ATTEMPTS: u32 = 3;

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
                .map_err(|e| CliError::Usage(format!("--creds {}: {e}", creds.display())))?;
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

    /// A request to someone other than the service (a training agent): its reply as text, or
    /// why there was none (no responders, no answer within `wait`).
    pub async fn ask(
        &self,
        subject: &str,
        body: &serde_json::Value,
        wait: Duration,
    ) -> Result<String, String> {
        let request = async_nats::Request::new()
            .payload(serde_json::to_vec(body).expect("json").into())
            .timeout(Some(wait));
        match self.nats.send_request(subject.to_owned(), request).await {
            Ok(reply) => Ok(String::from_utf8_lossy(&reply.payload).into_owned()),
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                Err("no responders".into())
            }
            Err(e) if e.kind() == async_nats::RequestErrorKind::TimedOut => {
                Err(format!("no answer within {} s", wait.as_secs()))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// The running service instances, with their hosts and roots (what `$SRV.PING` answers).
    pub async fn instances(&self) -> Result<Vec<Instance>, CliError> {
        use futures::StreamExt;
        let inbox = self.nats.new_inbox();
        let mut replies =
            self.nats.subscribe(inbox.clone()).await.map_err(|e| {
                CliError::Unavailable(format!("cannot subscribe on {}: {e}", self.url))
            })?;
        self.nats
            .publish_with_reply(
                format!("$SRV.PING.{}", cim_backup_contracts::subjects::SERVICE_NAME),
                inbox,
                "".into(),
            )
            .await
            .map_err(|e| CliError::Unavailable(format!("cannot ask for instances: {e}")))?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        let mut found = Vec::new();
        while let Ok(Some(reply)) = tokio::time::timeout_at(deadline, replies.next()).await {
            let Ok(ping) = serde_json::from_slice::<serde_json::Value>(&reply.payload) else {
                continue;
            };
            let meta = &ping["metadata"];
            let Some(name) = meta["instance"].as_str() else {
                continue;
            };
            found.push(Instance {
                name: name.to_owned(),
                host: meta["host"].as_str().unwrap_or_default().to_owned(),
                roots: meta["roots"]
                    .as_str()
                    .and_then(|r| serde_json::from_str(r).ok())
                    .unwrap_or_default(),
            });
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
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

    /// A request that starts a job (its body carries an idempotency key): repeated when its
    /// reply was lost, so that the job is started once and its id is known.
    pub async fn start<R: DeserializeOwned>(
        &self,
        subject: &str,
        body: &impl Serialize,
    ) -> Result<R, CliError> {
        let mut attempt = 1;
        loop {
            match self.request(subject, body).await {
                Err(e) if e.worth_repeating() && attempt < ATTEMPTS => {
                    eprintln!("cim-backup: {e}; asking again (same idempotency key)");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    pub async fn request_json(
        &self,
        subject: &str,
        body: &impl Serialize,
    ) -> Result<serde_json::Value, CliError> {
        self.request_json_within(subject, body, self.timeout).await
    }

    /// A request whose answer takes long to compute (hashing a model): waits at least `at_least`.
    pub async fn request_slow<R: DeserializeOwned>(
        &self,
        subject: &str,
        body: &impl Serialize,
        at_least: Duration,
    ) -> Result<R, CliError> {
        let value = self
            .request_json_within(subject, body, self.timeout.max(at_least))
            .await?;
        serde_json::from_value(value)
            .map_err(|e| CliError::Unavailable(format!("unexpected reply on {subject}: {e}")))
    }

    async fn request_json_within(
        &self,
        subject: &str,
        body: &impl Serialize,
        timeout: Duration,
    ) -> Result<serde_json::Value, CliError> {
        let payload = serde_json::to_vec(body).expect("requests serialize");
        let request = async_nats::Request::new()
            .payload(payload.into())
            .timeout(Some(timeout));
        let reply = tokio::time::timeout(
            timeout + Duration::from_secs(1),
            self.nats.send_request(subject.to_owned(), request),
        )
        .await
        .map_err(|_| {
            CliError::Unavailable(format!(
                "no reply on {subject} within {} s (--timeout)",
                timeout.as_secs()
            ))
        })?
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => CliError::Unavailable(format!(
                "no cim-backup service answers on {} (is `cim-backup serve` running?)",
                self.url
            )),
            async_nats::RequestErrorKind::TimedOut => CliError::Unavailable(format!(
                "no reply on {subject} within {} s (--timeout)",
                timeout.as_secs()
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
            let kind = serde_json::to_value(kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            return Err(CliError::Rejected {
                status,
                kind,
                message,
            });
        }
        serde_json::from_slice(&reply.payload)
            .map_err(|e| CliError::Unavailable(format!("reply on {subject} is not JSON: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_become_flags() {
        let flags = [
            ("start_seq", "--start-seq"),
            ("end_seq", "--end-seq"),
            ("encrypt", "--encrypt"),
            ("full", "--full"),
            ("streams", "--streams"),
            ("as", "--as"),
        ];
        assert_eq!(
            in_flags("start_seq 9 is after end_seq 3", &flags),
            "--start-seq 9 is after --end-seq 3"
        );
        assert_eq!(
            in_flags(
                "encrypt: refused; encrypt it (\"encrypt\": true), or start anew with \"full\": true",
                &flags
            ),
            "--encrypt: refused; encrypt it (--encrypt), or start anew with --full"
        );
        assert_eq!(
            in_flags("streams: \"A.B\" is not a valid stream name", &flags),
            "--streams: \"A.B\" is not a valid stream name"
        );
        assert_eq!(
            in_flags("restore under another name with \"as\"", &flags),
            "restore under another name with --as"
        );
        assert_eq!(
            in_flags("not a start_sequence or my_start_seq", &flags),
            "not a start_sequence or my_start_seq",
            "only whole words"
        );
    }

    #[test]
    fn json_errors_have_the_services_shape() {
        let e = CliError::Rejected {
            status: 404,
            kind: "not_found".into(),
            message: "no job x".into(),
        };
        assert_eq!(
            e.to_json(),
            serde_json::json!({ "error": { "code": 404, "kind": "not_found", "message": "no job x" } })
        );
        assert_eq!(e.exit_code(), 3);
    }
}
