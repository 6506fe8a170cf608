//! Command handlers (`cim.backup.cmd.*`). Each validates everything it can *before* recording
//! anything: a rejected command persists nothing. An accepted command's first event is durable
//! before the reply, and the job then runs in the background.

use async_nats::service::Request;
use cim_backup_contracts::commands::{
    CancelJob, CheckStream, RestoreBackup, StartBackup, VerifyBackup, parse_body,
};
use cim_backup_contracts::events::{
    Admission, BackupAccepted, BackupMode, CancelRequested, CheckAccepted, CheckTarget,
    Compression, ENCRYPTION_AGE, Encryption, RestoreAccepted, RestoreMethod, RestoreOptions,
    Selection, VerifyAccepted,
};
use cim_backup_contracts::replies::{Accepted, CancelAccepted, RestorePlan};
use cim_backup_contracts::subjects::is_stream_name;
use cim_backup_contracts::views::{JobKind, JobState};
use cim_backup_contracts::{JobId, headers, text};
use cim_backup_domain::backup::{BackupCommand, BackupJob};
use cim_backup_domain::check::{CheckCommand, CheckJob};
use cim_backup_domain::restore::{RestoreCommand, RestoreJob};
use cim_backup_domain::verify::{VerifyCommand, VerifyJob};
use cim_backup_domain::{DomainError, JobLifecycle};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::Api;
use super::reply::ApiError;
use super::resolve::{locate, manifest_at, require_manifest};
use crate::jobs::{self, ExecuteError, Job, execute};

/// Parses a request body, naming what is wrong with it.
pub fn parse<T: for<'de> serde::Deserialize<'de>>(request: &Request) -> Result<T, ApiError> {
    parse_body(&request.message.payload).map_err(|e| ApiError::bad_request(e.0))
}

/// Longest idempotency key or correlation id accepted.
const MAX_TOKEN: usize = 256;

/// What every accepted command records about its request.
pub(crate) struct Intake {
    request_id: String,
    idempotency_key: Option<String>,
    correlation_id: Option<String>,
}

impl Intake {
    pub(super) fn new(
        request: &Request,
        key: Option<String>,
        correlation: Option<String>,
    ) -> Result<Intake, ApiError> {
        let header = |name| {
            request
                .message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let idempotency_key = key.or_else(|| header(headers::IDEMPOTENCY_KEY));
        let correlation_id = correlation.or_else(|| header(headers::REQUEST_CORRELATION_ID));
        // Both travel on: the correlation id in every event's header, the key in the
        // accept event. Bounded and single-line, or the request is the caller's mistake.
        for (field, value) in [
            ("idempotency_key", &idempotency_key),
            ("correlation_id", &correlation_id),
        ] {
            if let Some(value) = value {
                text::check_token(value, MAX_TOKEN)
                    .map_err(|why| ApiError::bad_request(format!("{field}: {why}")))?;
            }
        }
        Ok(Intake {
            request_id: uuid::Uuid::now_v7().to_string(),
            idempotency_key,
            correlation_id,
        })
    }

    /// The job id: derived from the idempotency key (so the same key always names the same job,
    /// and the event store's concurrency check makes the second attempt a duplicate), else new.
    pub(super) fn job_id(&self, kind: JobKind) -> JobId {
        let id = match &self.idempotency_key {
            Some(key) => {
                let digest = Sha256::digest(format!("{kind}\0{key}").as_bytes());
                format!("k{}", hex(&digest[..20]))
            }
            None => uuid::Uuid::now_v7().to_string(),
        };
        id.parse().expect("generated job ids are valid")
    }

    pub(super) fn admission(&self, api: &Api, normalized: &impl Serialize) -> Admission {
        let digest = Sha256::digest(serde_json::to_vec(normalized).expect("requests serialize"));
        Admission {
            instance: api.runner.context().instance.clone(),
            idempotency_key: self.idempotency_key.clone(),
            request_digest: hex(&digest),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// [`accept`], then runs the job here when this instance is to run it.
pub(super) async fn accept_and_start<A>(
    api: &Api,
    intake: &Intake,
    command: A::Command,
    admission_of: fn(&A) -> Option<&Admission>,
    digest: &str,
) -> Result<Accepted, ApiError>
where
    A: crate::engine::runner::Runs,
    A::Command: Clone + Send,
    A::Event: Send,
{
    let (reply, job) = accept::<A>(api, intake, command, admission_of, digest).await?;
    if let Some(job) = job {
        api.runner.start(job);
    }
    Ok(reply)
}

/// Records the accept command of a new job; for a repeated idempotency key returns the
/// existing job instead (or a conflict if the key was used for a different request).
///
/// The returned job is to be run: a new one, or an existing one of this instance that is not
/// running (its accept was stored but never answered, say). An accept whose outcome stays
/// unknown (no acknowledgement, even for the retries) is a 503 that says the job may exist
/// and how to find out: if it was stored, this instance runs it (the runner's sweep).
pub(super) async fn accept<A>(
    api: &Api,
    intake: &Intake,
    command: A::Command,
    admission_of: fn(&A) -> Option<&Admission>,
    digest: &str,
) -> Result<(Accepted, Option<Job<A>>), ApiError>
where
    A: JobLifecycle,
    A::Command: Clone,
{
    let id = intake.job_id(A::KIND);
    let correlation = intake
        .correlation_id
        .clone()
        .unwrap_or_else(|| id.to_string());
    let mut job = Job::<A>::new(id.clone(), correlation);
    match execute(
        &api.runner.context().events,
        &mut job,
        command,
        Some(&intake.request_id),
    )
    .await
    {
        Ok(_) => Ok((
            Accepted {
                job_id: id,
                kind: A::KIND,
                state: JobState::Accepted,
                duplicate: false,
            },
            Some(job),
        )),
        Err(ExecuteError::Rejected(DomainError::AlreadyExists)) => {
            let existing = jobs::load::<A>(&api.runner.context().events, &id)
                .await?
                .ok_or_else(|| ApiError::internal(format!("job {id} exists but has no events")))?;
            let admission = admission_of(&existing.state);
            if admission.map(|a| a.request_digest.as_str()) != Some(digest) {
                return Err(ApiError::conflict(format!(
                    "idempotency key {} was already used for a different request (job {id})",
                    text::echo(intake.idempotency_key.as_deref().unwrap_or_default())
                )));
            }
            let state = existing
                .state
                .lifecycle()
                .state
                .unwrap_or(JobState::Accepted);
            // A repeat of a request whose first answer was lost: the job is this instance's and
            // must run, whether or not the first attempt got as far as starting it.
            let mine = admission.is_some_and(|a| a.instance == api.runner.context().instance);
            let run =
                (!state.is_terminal() && mine && !api.runner.is_running(&id)).then_some(existing);
            Ok((
                Accepted {
                    job_id: id,
                    kind: A::KIND,
                    state,
                    duplicate: true,
                },
                run,
            ))
        }
        Err(ExecuteError::Rejected(e)) => Err(ApiError::bad_request(e.to_string())),
        Err(ExecuteError::Store(e @ crate::event_store::EventStoreError::Unconfirmed { .. })) => {
            Err(ApiError::unavailable(format!(
                "job {id} may or may not have been recorded ({e}); if it was, it runs: look it up with cim.backup.qry.job {{\"job_id\":\"{id}\"}}, or repeat the request with the same idempotency key"
            )))
        }
        Err(ExecuteError::Store(e)) => Err(e.into()),
    }
}

/// Whether a start request may name trees: only on an instance's own subject, since the files
/// are on its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trees {
    Refused,
    Here,
}

pub async fn start(api: &Api, request: &Request, trees: Trees) -> Result<Accepted, ApiError> {
    let cmd: StartBackup = parse(request)?;
    if cmd
        .trees
        .iter()
        .any(|t| t.remove_after || t.export.is_some() || !t.exclude.is_empty() || t.stage.is_some())
    {
        return Err(ApiError::bad_request(
            "trees: remove_after, export, exclude and stage are set by the service (backup-prometheus, backup-nixos-config, backup-grafana), never by a request",
        ));
    }
    start_command(api, request, cmd, trees).await
}

/// A start whose body is parsed (or built by the service, as backup-prometheus builds its own).
pub async fn start_command(
    api: &Api,
    request: &Request,
    cmd: StartBackup,
    trees: Trees,
) -> Result<Accepted, ApiError> {
    let ctx = api.runner.context();
    if trees == Trees::Refused && !cmd.trees.is_empty() {
        return Err(ApiError::bad_request(format!(
            "trees: file trees are read by the instance whose host has them; send the request to {}.start of an instance that serves the root (its micro-service metadata lists its roots)",
            cim_backup_contracts::subjects::files_commands("<instance>")
        )));
    }
    if cmd.streams.is_empty() && cmd.trees.is_empty() {
        return Err(ApiError::bad_request(match trees {
            Trees::Refused => "streams: at least one stream is required",
            Trees::Here => "streams, trees: name at least one stream or tree",
        }));
    }
    if let Some(p) = cmd.parallel
        && !(1..=crate::engine::trees::MAX_PARALLEL).contains(&p)
    {
        return Err(ApiError::bad_request(format!(
            "parallel: {p} is outside 1..={}",
            crate::engine::trees::MAX_PARALLEL
        )));
    }
    for tree in &cmd.trees {
        crate::engine::trees::source(ctx, tree).map_err(engine_error)?;
    }
    for stream in &cmd.streams {
        if !is_stream_name(stream) {
            return Err(ApiError::bad_request(format!(
                "streams: {} is not a valid stream name",
                text::echo(stream)
            )));
        }
        if ctx.api.stream_info(stream).await?.is_none() {
            return Err(ApiError::not_found(format!(
                "stream {stream} does not exist"
            )));
        }
    }
    let destination = ctx.destinations.resolve(cmd.destination.as_deref())?;
    let algorithm = cmd.compress.unwrap_or(ctx.defaults.compress);
    let level = match algorithm {
        cim_backup_contracts::commands::CompressionAlgorithm::Zstd => {
            cmd.zstd_level.unwrap_or(ctx.defaults.zstd_level)
        }
        cim_backup_contracts::commands::CompressionAlgorithm::None => 0,
    };
    let compression = Compression { algorithm, level };
    if cmd.full && cmd.incremental == Some(true) {
        return Err(ApiError::bad_request("full and incremental: pick one"));
    }
    let mode = cmd.mode.unwrap_or_default();
    if mode == BackupMode::Snapshot && cmd.incremental == Some(true) {
        return Err(ApiError::bad_request(
            "mode snapshot: server snapshots are always full, not incremental",
        ));
    }
    let incremental = !cmd.full && cmd.incremental.unwrap_or(true) && mode == BackupMode::Messages;
    let encrypt = decide_encryption(api, &cmd, &destination.url, incremental).await?;
    let encryption = match encrypt {
        true => Some(Encryption {
            scheme: ENCRYPTION_AGE.to_owned(),
            recipients: ctx
                .keys
                .recipients()
                .map_err(|e| ApiError::bad_request(format!("encrypt: {e}")))?,
        }),
        false => None,
    };
    // Last, because it may create the destination's directory: nothing is made for a request
    // that is refused for another reason.
    probe(api, &destination.url).await?;
    let intake = Intake::new(
        request,
        cmd.idempotency_key.clone(),
        cmd.correlation_id.clone(),
    )?;
    let admission = intake.admission(
        api,
        &(
            &cmd.streams,
            &destination.url,
            &compression,
            incremental,
            &encryption,
            mode,
            (&cmd.trees, cmd.parallel),
        ),
    );
    let request_digest = admission.request_digest.clone();
    let spec = BackupAccepted {
        streams: cmd.streams,
        destination: destination.given,
        destination_url: destination.url,
        compression,
        segment_bytes: ctx.defaults.segment_bytes,
        incremental,
        mode,
        encryption,
        admission,
        trees: cmd.trees,
        parallel: cmd.parallel,
    };
    let (reply, job) = accept::<BackupJob>(
        api,
        &intake,
        BackupCommand::Accept(spec),
        |s| s.spec.as_ref().map(|s| &s.admission),
        &request_digest,
    )
    .await?;
    if let Some(job) = job {
        api.runner.start(job);
    }
    Ok(reply)
}

/// Whether a backup is encrypted: as asked; else as its destination or the defaults say; else
/// as the streams' chains in the destination are. An unencrypted increment on an encrypted
/// chain would store those messages in plaintext beside it, so that is refused.
async fn decide_encryption(
    api: &Api,
    cmd: &StartBackup,
    url: &str,
    incremental: bool,
) -> Result<bool, ApiError> {
    let ctx = api.runner.context();
    let configured = ctx
        .destinations
        .encrypt_setting(url)
        .or(ctx.defaults.encrypt.then_some(true));
    if !incremental {
        return Ok(cmd.encrypt.or(configured).unwrap_or(false));
    }
    let entries = api.views.catalog().await?;
    let encrypted_chain = cmd.streams.iter().find(|stream| {
        cim_backup_projections::catalog::select(entries.clone(), Some(stream))
            .into_iter()
            .find(|e| e.destination == url)
            .is_some_and(|e| e.encrypted)
    });
    match (cmd.encrypt.or(configured), encrypted_chain) {
        (Some(false), Some(stream)) => Err(ApiError::bad_request(format!(
            "encrypt: the backups of {stream} in {url} are encrypted, and an unencrypted increment would store its messages in plaintext beside them; encrypt it (\"encrypt\": true), or start a new unencrypted chain with \"full\": true"
        ))),
        (Some(asked), _) => Ok(asked),
        (None, chain) => Ok(chain.is_some()),
    }
}

/// A destination must answer before a job is accepted for it.
async fn probe(api: &Api, url: &str) -> Result<(), ApiError> {
    let store = api.runner.context().destinations.create(url)?;
    store
        .probe()
        .await
        .map_err(|e| ApiError::new(e.code, e.message))
}

/// A restore request is answered with the job, or with the plan for a dry run.
#[derive(serde::Serialize)]
#[serde(untagged)]
pub enum RestoreReply {
    Accepted(Accepted),
    Plan(RestorePlan),
}

pub async fn restore(api: &Api, request: &Request) -> Result<RestoreReply, ApiError> {
    let cmd: RestoreBackup = parse(request)?;
    let ctx = api.runner.context();
    let target = cmd.as_stream.clone().unwrap_or_else(|| cmd.stream.clone());
    for (field, name) in [("stream", &cmd.stream), ("as", &target)] {
        if !is_stream_name(name) {
            return Err(ApiError::bad_request(format!(
                "{field}: {} is not a valid stream name",
                text::echo(name)
            )));
        }
    }
    let selection = Selection {
        start_seq: cmd.start_seq,
        end_seq: cmd.end_seq,
        start: cmd.start,
        end: cmd.end,
        subjects: cmd.subjects.clone(),
    };
    validate_selection(&selection)?;
    let options = RestoreOptions {
        method: cmd.method.unwrap_or_default(),
        replicas: cmd.replicas,
        placement: cmd.placement.clone(),
        consumers: cmd.consumers.unwrap_or(true),
    };
    if options.method == RestoreMethod::ServerArchive {
        let level = ctx.api.api_level().await?;
        if level < 5 {
            return Err(ApiError::bad_request(format!(
                "method server-archive needs nats-server 2.15+ (JetStream API level 5); this server has level {level}"
            )));
        }
    }
    if let Some(r) = options.replicas.filter(|r| !(1..=5).contains(r)) {
        return Err(ApiError::bad_request(format!(
            "replicas: {r} is outside 1..=5"
        )));
    }
    let located = locate(api, cmd.backup, Some(&cmd.stream), cmd.source.as_deref()).await?;
    let manifest = manifest_at(api, &located).await?;
    let entry = crate::engine::restore::stream_entry(&manifest, &cmd.stream)
        .map_err(|e| ApiError::not_found(e.to_string()))?;
    crate::engine::restore::validate_request(entry, &selection, &options).map_err(engine_error)?;
    crate::engine::restore::check_request(
        ctx,
        &located.location.url,
        located.backup,
        &cmd.stream,
        &selection,
    )
    .await
    .map_err(engine_error)?;
    match (ctx.api.stream_info(&target).await?, options.method) {
        (None, RestoreMethod::Append) => {
            return Err(ApiError::not_found(format!(
                "append needs an existing stream {target}"
            )));
        }
        (Some(info), method) if method != RestoreMethod::Append => {
            return Err(ApiError::conflict(if info.state.messages > 0 {
                format!(
                    "target stream {target} is not empty ({} messages); restore never overwrites: delete it, restore under another name with \"as\", or append with \"method\": \"append\"",
                    info.state.messages
                )
            } else {
                format!(
                    "target stream {target} already exists (empty); restore creates the stream itself to reproduce sequence numbers: delete it first, or append with \"method\": \"append\" (new sequence numbers)"
                )
            }));
        }
        _ => {}
    }
    if cmd.dry_run {
        let dry = crate::engine::restore::DryRun {
            source_url: &located.location.url,
            backup: located.backup,
            stream: &cmd.stream,
            target: &target,
            selection: &selection,
            options: &options,
        };
        return crate::engine::restore::dry_run(ctx, dry)
            .await
            .map(RestoreReply::Plan)
            .map_err(engine_error);
    }
    let intake = Intake::new(
        request,
        cmd.idempotency_key.clone(),
        cmd.correlation_id.clone(),
    )?;
    let admission = intake.admission(
        api,
        &(
            located.backup.to_string(),
            &located.location.url,
            &cmd.stream,
            &target,
            &selection,
            &options,
        ),
    );
    let request_digest = admission.request_digest.clone();
    let spec = RestoreAccepted {
        backup: located.backup,
        source: located.location.given,
        source_url: located.location.url,
        stream: cmd.stream,
        target,
        selection,
        options,
        admission,
    };
    let (reply, job) = accept::<RestoreJob>(
        api,
        &intake,
        RestoreCommand::Accept(spec),
        |s| s.spec.as_ref().map(|s| &s.admission),
        &request_digest,
    )
    .await?;
    if let Some(job) = job {
        api.runner.start(job);
    }
    Ok(RestoreReply::Accepted(reply))
}

fn validate_selection(s: &Selection) -> Result<(), ApiError> {
    if let (Some(a), Some(b)) = (s.start_seq, s.end_seq)
        && a > b
    {
        return Err(ApiError::bad_request(format!(
            "start_seq {a} is after end_seq {b}"
        )));
    }
    if let (Some(a), Some(b)) = (s.start, s.end)
        && a >= b
    {
        return Err(ApiError::bad_request(format!(
            "start {} is not before end {}",
            cim_backup_contracts::events::format_time(a),
            cim_backup_contracts::events::format_time(b)
        )));
    }
    for subject in &s.subjects {
        let tokens: Vec<&str> = subject.split('.').collect();
        let bad_gt = tokens
            .iter()
            .enumerate()
            .any(|(i, t)| *t == ">" && i + 1 != tokens.len());
        if subject.is_empty()
            || bad_gt
            || tokens
                .iter()
                .any(|t| t.is_empty() || t.contains(char::is_whitespace))
        {
            return Err(ApiError::bad_request(format!(
                "subjects: {} is not a valid subject filter",
                text::echo(subject)
            )));
        }
    }
    Ok(())
}

pub(super) fn engine_error(e: crate::engine::EngineError) -> ApiError {
    ApiError::new(e.code(), e.to_string())
}

pub async fn verify(api: &Api, request: &Request) -> Result<Accepted, ApiError> {
    let cmd: VerifyBackup = parse(request)?;
    let located = locate(
        api,
        cmd.backup,
        cmd.stream.as_deref(),
        cmd.source.as_deref(),
    )
    .await?;
    require_manifest(api, &located).await?;
    let mode = cmd.mode.unwrap_or_default();
    let intake = Intake::new(
        request,
        cmd.idempotency_key.clone(),
        cmd.correlation_id.clone(),
    )?;
    let admission = intake.admission(
        api,
        &(located.backup.to_string(), &located.location.url, mode),
    );
    let request_digest = admission.request_digest.clone();
    let spec = VerifyAccepted {
        backup: located.backup,
        source: located.location.given,
        source_url: located.location.url,
        mode,
        admission,
    };
    let (reply, job) = accept::<VerifyJob>(
        api,
        &intake,
        VerifyCommand::Accept(spec),
        |s| s.spec.as_ref().map(|s| &s.admission),
        &request_digest,
    )
    .await?;
    if let Some(job) = job {
        api.runner.start(job);
    }
    Ok(reply)
}

/// `cim.backup.cmd.check`: walk CID chains of live streams (or of a stored backup).
pub async fn check(api: &Api, request: &Request) -> Result<Accepted, ApiError> {
    let cmd: CheckStream = parse(request)?;
    let ctx = api.runner.context();
    let configured = &ctx.integrity.streams;
    let streams: Vec<String> = if cmd.streams.is_empty() {
        configured.keys().cloned().collect()
    } else {
        cmd.streams.clone()
    };
    if streams.is_empty() {
        return Err(ApiError::bad_request(
            "streams: none given and none configured in [integrity.streams]",
        ));
    }
    let mut targets = Vec::with_capacity(streams.len());
    for stream in &streams {
        if !is_stream_name(stream) {
            return Err(ApiError::bad_request(format!(
                "streams: {} is not a valid stream name",
                text::echo(stream)
            )));
        }
        let config = configured.get(stream);
        let profile = match (&cmd.profile, config) {
            (Some(p), _) => p.clone(),
            (None, Some(c)) => c.chain_profile(),
            (None, None) if stream == ctx.events.stream_name() => {
                cim_backup_contracts::integrity::ChainProfile::native()
            }
            (None, None) => {
                return Err(ApiError::bad_request(format!(
                    "no chain profile for stream {stream}: pass \"profile\" or configure [integrity.streams.{stream}]"
                )));
            }
        };
        let projections = if cmd.projections.is_empty() {
            config.map(|c| c.projections.clone()).unwrap_or_default()
        } else {
            cmd.projections.clone()
        };
        if cmd.backup.is_none() && ctx.api.stream_info(stream).await?.is_none() {
            return Err(ApiError::not_found(format!(
                "stream {stream} does not exist"
            )));
        }
        targets.push(CheckTarget {
            stream: stream.clone(),
            profile,
            projections,
        });
    }
    let (backup, source_url) = match cmd.backup {
        Some(backup) => {
            if targets.len() != 1 {
                return Err(ApiError::bad_request(
                    "backup: name exactly one stream to check in it",
                ));
            }
            let located =
                locate(api, backup, Some(&targets[0].stream), cmd.source.as_deref()).await?;
            manifest_at(api, &located).await?;
            (Some(located.backup), Some(located.location.url))
        }
        None => (None, None),
    };
    // Every target must hold something in the range: a check of nothing is refused, not "clean".
    for target in &targets {
        crate::engine::check::target_range(
            ctx,
            &target.stream,
            backup.zip(source_url.as_deref()),
            cmd.start_seq,
            cmd.end_seq,
        )
        .await
        .map_err(engine_error)?;
    }
    let max_findings = cmd.max_findings.unwrap_or(100) as u64;
    let replay = match &cmd.replay_consumers {
        None => None,
        Some(_) if targets.len() != 1 || cmd.start_seq.is_none() || cmd.backup.is_some() => {
            return Err(ApiError::bad_request(
                "replay: name one live stream and start_seq",
            ));
        }
        Some(given) if !given.is_empty() => Some(given.clone()),
        Some(_) => {
            let configured = configured
                .get(&targets[0].stream)
                .map(|c| c.projectors.clone())
                .unwrap_or_default();
            if configured.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "replay: no consumers named and none configured ([integrity.streams.{}] projectors)",
                    targets[0].stream
                )));
            }
            Some(configured)
        }
    };
    if let Some(consumers) = &replay {
        let existing = ctx.api.durable_consumers(&targets[0].stream).await?;
        if let Some(missing) = consumers
            .iter()
            .find(|c| !existing.iter().any(|e| &e.name == *c))
        {
            return Err(ApiError::not_found(format!(
                "stream {} has no durable consumer {missing}",
                targets[0].stream
            )));
        }
    }
    let intake = Intake::new(
        request,
        cmd.idempotency_key.clone(),
        cmd.correlation_id.clone(),
    )?;
    let admission = intake.admission(
        api,
        &(
            &targets,
            &backup.map(|b| b.to_string()),
            cmd.start_seq,
            cmd.end_seq,
            cmd.deep,
            max_findings,
            &replay,
        ),
    );
    let request_digest = admission.request_digest.clone();
    let spec = CheckAccepted {
        targets,
        backup,
        source_url,
        start_seq: cmd.start_seq,
        end_seq: cmd.end_seq,
        deep: cmd.deep,
        max_findings,
        replay,
        admission,
    };
    let (reply, job) = accept::<CheckJob>(
        api,
        &intake,
        CheckCommand::Accept(spec),
        |s| s.spec.as_ref().map(|s| &s.admission),
        &request_digest,
    )
    .await?;
    if let Some(job) = job {
        api.runner.start(job);
    }
    Ok(reply)
}

pub async fn cancel(api: &Api, request: &Request) -> Result<CancelAccepted, ApiError> {
    let cmd: CancelJob = parse(request)?;
    if let Some(reason) = &cmd.reason {
        text::check_line(reason, 1024)
            .map_err(|why| ApiError::bad_request(format!("reason: {why}")))?;
    }
    let kind = job_kind(api, &cmd.job_id).await?;
    let reason = CancelRequested { reason: cmd.reason };
    let requested =
        crate::with_job_type!(kind, J => request_cancel::<J>(api, &cmd.job_id, reason).await?);
    api.runner.cancel_local(&cmd.job_id);
    Ok(CancelAccepted {
        job_id: cmd.job_id,
        requested,
    })
}

/// Which kind of job an id names: from its view, or (not yet projected) from its newest event.
/// One request either way; an unknown id leaves nothing behind on the server.
pub async fn job_kind(api: &Api, id: &JobId) -> Result<JobKind, ApiError> {
    if let Some(view) = api.views.job(id).await? {
        return Ok(view.kind);
    }
    api.runner
        .context()
        .events
        .kind_of(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))
}

async fn request_cancel<A>(api: &Api, id: &JobId, reason: CancelRequested) -> Result<bool, ApiError>
where
    A: JobLifecycle,
    A::Command: Clone,
{
    let events = &api.runner.context().events;
    let mut job = jobs::load::<A>(events, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
    match execute(events, &mut job, A::request_cancel(reason), None).await {
        Ok(recorded) => Ok(!recorded.is_empty()),
        Err(ExecuteError::Rejected(DomainError::WrongState { state, .. })) => {
            Err(ApiError::conflict(format!(
                "job {id} is already {state}; only an unfinished job can be cancelled"
            )))
        }
        Err(ExecuteError::Rejected(e)) => Err(ApiError::conflict(e.to_string())),
        Err(ExecuteError::Store(e)) => Err(e.into()),
    }
}
