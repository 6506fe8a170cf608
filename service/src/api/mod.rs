//! The NATS micro-service `cim-backup` (DESIGN §4).
//!
//! [`serve`] connects, opens the event store and views, starts the projector and the runner,
//! resumes this instance's unfinished jobs, and answers commands and queries until `shutdown`
//! resolves. Several instances may run: endpoints share the micro-service queue group, job
//! chains are protected by optimistic concurrency, and views by compare-and-set.
//!
//! # Layout
//! - [`commands`] — `cim.backup.cmd.*` handlers.
//! - [`queries`] — `cim.backup.qry.*` handlers.
//! - [`repair`] — `cim.backup.cmd.repair` (restore from a point), apart for its safeguards.
//! - [`resolve`] — locating a backup (`latest`, by id, by location).
//! - [`reply`] — [`reply::ApiError`] and error replies with headers and JSON body.

pub mod commands;
pub mod domain_configs;
pub mod files;
pub mod host_services;
pub mod key_restore;
pub mod projections;
pub mod queries;
pub mod repair;
pub mod replay;
pub mod reply;
pub mod resolve;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::service::{Request, ServiceExt};
use cim_backup_contracts::subjects::{COMMAND_PREFIX, QUERY_PREFIX, SERVICE_NAME};
use cim_backup_contracts::views::JobState;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::destination::Destinations;
use crate::engine::{Context, Runner};
use crate::event_store::{EventStore, EventStreamSettings};
use crate::jsapi::JsApi;
use crate::projector::{Projector, Views};
use reply::{ApiError, send};

/// Messages a subscription buffers before the client applies back pressure.
const SUBSCRIPTION_CAPACITY: usize = 8192;

/// What the handlers share.
pub struct Api {
    pub runner: Arc<Runner>,
    pub views: Views,
    pub errors: reply::ErrorCounts,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot connect to NATS at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("JetStream is not available at {url}: {message} (is the server started with -js?)")]
    NoJetStream { url: String, message: String },
    #[error("cannot open the event store: {0}")]
    Events(#[from] crate::event_store::EventStoreError),
    #[error("cannot open the views: {0}")]
    Views(#[from] crate::projector::ViewError),
    #[error("cannot start the micro-service: {0}")]
    Service(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// Connects to NATS with the configured credentials.
pub async fn connect(
    config: &crate::config::NatsConfig,
    name: &str,
) -> Result<async_nats::Client, ServeError> {
    // A bounded subscription buffer bounds memory while a backup reads a stream faster than it
    // can archive it (the default, 65,536 messages, is ~45 MB of CIM events).
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .subscription_capacity(SUBSCRIPTION_CAPACITY);
    if let Some(creds) = &config.creds {
        options = options
            .credentials_file(creds)
            .await
            .map_err(|e| ServeError::Connect {
                url: config.url.clone(),
                message: format!("credentials {}: {e}", creds.display()),
            })?;
    }
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    let client = tokio::time::timeout(
        Duration::from_secs(15),
        options.connect(config.url.as_str()),
    )
    .await
    .map_err(|_| ServeError::Connect {
        url: config.url.clone(),
        message: "no connection within 15 s".into(),
    })?
    .map_err(|e| ServeError::Connect {
        url: config.url.clone(),
        message: e.to_string(),
    })?;
    Ok(client)
}

/// Runs the service until `shutdown` resolves.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    config.validate()?;
    if let Some(token) = config.grafana.as_ref().and_then(|g| g.token_file.as_ref())
        && let Err(e) = std::fs::File::open(token)
    {
        tracing::warn!(file = %token.display(), error = %e, "[grafana] token_file cannot be read: backup-grafana will be refused until it can");
    }
    let client = connect(&config.nats, SERVICE_NAME).await?;
    let js = async_nats::jetstream::new(client.clone());
    js.query_account()
        .await
        .map_err(|e| ServeError::NoJetStream {
            url: config.nats.url.clone(),
            message: e.to_string(),
        })?;
    refuse_a_second_instance(&client, &config.service.instance).await?;
    let replicas = config.service.events_replicas;
    let events = EventStore::open(js.clone(), &EventStreamSettings { replicas }).await?;
    let (views, fresh_views) = Views::open(&js, replicas).await?;
    let stop = CancellationToken::new();
    let events_stream = events.stream_name().to_owned();
    let projector = Arc::new(
        Projector::new(
            js.clone(),
            views.clone(),
            &events_stream,
            &config.service.instance,
            fresh_views,
        )
        .await?,
    );
    let projector_task = tokio::spawn(Arc::clone(&projector).run(stop.clone()));

    let ctx = Arc::new(Context {
        client: client.clone(),
        js: js.clone(),
        api: JsApi::new(client.clone()),
        events,
        destinations: Destinations::new(
            config.destinations.clone(),
            config.defaults.destination.clone(),
            &config.service.file_roots,
        ),
        defaults: config.defaults.clone(),
        instance: config.service.instance.clone(),
        keys: crate::keys::Keys::load(&config.encryption)
            .map_err(|e| ServeError::Service(e.to_string()))?,
        integrity: config.integrity.clone(),
        views: views.clone(),
        roots: config
            .files
            .roots
            .iter()
            .map(|(name, dir)| crate::archive::files::scan::Root::new(name, dir))
            .collect::<Result<_, _>>()
            .map_err(|e| ServeError::Service(format!("[files.roots]: {e}")))?,
        prometheus: config.prometheus.clone(),
        nixos: config.nixos.clone(),
        grafana: config.grafana.clone(),
        domains: config.domains.clone(),
    });
    let runner = Runner::new(ctx);
    runner
        .clone()
        .watch_cancellations()
        .await
        .map_err(|e| ServeError::Service(e.to_string()))?;
    let api = Arc::new(Api {
        runner: runner.clone(),
        views: views.clone(),
        errors: reply::ErrorCounts::default(),
    });

    // Resume this instance's unfinished jobs once the views have caught up with the log.
    warn_if_requests_are_captured(&JsApi::new(client.clone())).await;
    if !projector.caught_up(Duration::from_secs(10)).await? {
        tracing::warn!("views are behind the event log; resuming jobs from what they show");
    }
    runner.run_unrun().await?;
    runner.clone().sweep();

    let service = client
        .service_builder()
        .description("cim-backup: backup, restore, verify and integrity checks of CIM streams")
        .metadata(std::collections::HashMap::from([
            (
                INSTANCE_METADATA.to_owned(),
                config.service.instance.clone(),
            ),
            (HOST_METADATA.to_owned(), crate::config::host_name()),
            (
                ROOTS_METADATA.to_owned(),
                roots_metadata(&runner.context().roots),
            ),
        ]))
        .stats_handler({
            let errors = api.errors.clone();
            move |_name, stats| serde_json::json!({ "error_replies": errors.get(&stats.subject) })
        })
        .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| ServeError::Service(e.to_string()))?;
    let instance = config.service.instance.clone();
    let mut endpoints = Vec::new();
    for endpoint in Endpoint::ALL {
        let group = service.group(endpoint.prefix(&instance));
        endpoints.push((
            endpoint,
            group
                .endpoint(endpoint.name())
                .await
                .map_err(|e| ServeError::Service(e.to_string()))?,
        ));
    }
    let mut loops = Vec::new();
    for (endpoint, mut requests) in endpoints {
        let api = Arc::clone(&api);
        let stop = stop.clone();
        loops.push(tokio::spawn(async move {
            loop {
                let request = tokio::select! {
                    _ = stop.cancelled() => break,
                    r = requests.next() => r,
                };
                let Some(request) = request else { break };
                let api = Arc::clone(&api);
                let subject = endpoint.subject(&api.runner.context().instance);
                tokio::spawn(async move { dispatch(&api, endpoint, &subject, request).await });
            }
        }));
    }
    tracing::info!(instance = %config.service.instance, url = %config.nats.url, "cim-backup service ready");

    shutdown.await;
    tracing::info!("shutting down");
    stop.cancel();
    for l in loops {
        let _ = l.await;
    }
    let _ = service.stop().await;
    runner.shutdown().await;
    let _ = projector_task.await;
    let _ = client.flush().await;
    Ok(())
}

/// Micro-service metadata key naming the instance.
const INSTANCE_METADATA: &str = "instance";
/// Metadata key with the host the instance runs on (the CLI picks the instance on its host).
pub const HOST_METADATA: &str = "host";
/// Metadata key with the roots the instance serves, as a JSON list of `{name, path}`.
pub const ROOTS_METADATA: &str = "roots";

fn roots_metadata(roots: &[crate::archive::files::scan::Root]) -> String {
    let roots: Vec<_> = roots
        .iter()
        .map(|r| cim_backup_contracts::files::RootInfo {
            name: r.name.clone(),
            path: r.dir.display().to_string(),
        })
        .collect();
    serde_json::to_string(&roots).expect("roots serialize")
}

/// Two processes with one instance name would both run that instance's jobs (and share its
/// projector's consumer): the second one does not start. Running instances answer `$SRV.PING`
/// with their name in the metadata.
async fn refuse_a_second_instance(
    client: &async_nats::Client,
    instance: &str,
) -> Result<(), ServeError> {
    let inbox = client.new_inbox();
    let Ok(mut replies) = client.subscribe(inbox.clone()).await else {
        return Ok(()); // the start fails later with a clearer error
    };
    if client
        .publish_with_reply(format!("$SRV.PING.{SERVICE_NAME}"), inbox, "".into())
        .await
        .is_err()
    {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(Some(reply)) = tokio::time::timeout_at(deadline, replies.next()).await {
        let Ok(ping) = serde_json::from_slice::<serde_json::Value>(&reply.payload) else {
            continue;
        };
        if ping
            .pointer(&format!("/metadata/{INSTANCE_METADATA}"))
            .and_then(|v| v.as_str())
            == Some(instance)
        {
            let id = ping.get("id").and_then(|v| v.as_str()).unwrap_or("?");
            return Err(ServeError::Service(format!(
                "another cim-backup named instance {instance:?} is running (service id {id}): give each instance its own [service] instance (--instance), or stop that one"
            )));
        }
    }
    Ok(())
}

/// A stream that captures our request subjects answers every request with a JetStream ack,
/// which clients take for our reply. We cannot fix that deployment, but we can say so loudly.
async fn warn_if_requests_are_captured(api: &JsApi) {
    for subject in [
        format!("{COMMAND_PREFIX}.start"),
        format!("{QUERY_PREFIX}.job"),
    ] {
        if let Ok(streams) = api.streams_for_subject(&subject).await {
            for stream in streams {
                tracing::warn!(%stream, "stream {stream} captures {subject}: requests to cim-backup will also get JetStream acks as replies; exclude cim.backup.cmd.> and cim.backup.qry.> from it");
            }
        }
    }
}

/// A request whose header block had malformed lines (left out by the NATS client, which says
/// how many): refused as a whole, since what the caller meant by those headers is unknown.
fn malformed_headers(request: &Request) -> Option<ApiError> {
    let count = async_nats::connection::malformed_header_lines(&request.message)?;
    Some(ApiError::bad_request(format!(
        "the request's header block is malformed ({count} line(s) are not `Name: value` with a printable name and a one-line value); nothing was done"
    )))
}

/// The endpoints of the service: one value per subject, so that dispatch is by type and an
/// endpoint without a handler cannot compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Start,
    Restore,
    Verify,
    Check,
    Repair,
    Cancel,
    Job,
    Jobs,
    Backups,
    /// `cim.backup.files.<instance>.cmd.start`: a backup of trees under this instance's roots.
    FilesStart,
    /// `cim.backup.files.<instance>.qry.models`: the models under one of its roots.
    FilesModels,
    /// `cim.backup.files.<instance>.cmd.restore`: trees of a backup put back on its host.
    FilesRestore,
    /// `cim.backup.files.<instance>.qry.check`: a file or tree against a checksum or backup.
    FilesCheck,
    /// `cim.backup.files.<instance>.cmd.prometheus`: snapshot Prometheus and back it up.
    FilesPrometheus,
    /// `cim.backup.files.<instance>.cmd.nixos`: the NixOS configuration, and a tar.gz of it.
    FilesNixos,
    /// `cim.backup.files.<instance>.cmd.grafana`: Grafana through its HTTP API, and a tar.gz.
    FilesGrafana,
    /// `cim.backup.qry.domains`: every domain and its parts.
    Domains,
    /// `cim.backup.qry.projection-snapshots`: snapshots in the catalog or a destination.
    ProjectionSnapshots,
    /// `cim.backup.cmd.snapshot-projections`.
    SnapshotProjections,
    /// `cim.backup.cmd.restore-projections`.
    RestoreProjections,
    /// `cim.backup.cmd.clear-projections`.
    ClearProjections,
    /// `cim.backup.cmd.replay-events`.
    ReplayEvents,
    /// `cim.backup.cmd.rebuild-projections`.
    RebuildProjections,
    /// `cim.backup.qry.domain-configs`: the export document.
    DomainConfigs,
    /// `cim.backup.cmd.import-domain-configs`.
    ImportDomainConfigs,
    /// `cim.backup.cmd.restore-deleted`.
    RestoreDeleted,
}

impl Endpoint {
    const ALL: [Endpoint; 26] = [
        Endpoint::Start,
        Endpoint::Restore,
        Endpoint::Verify,
        Endpoint::Check,
        Endpoint::Repair,
        Endpoint::Cancel,
        Endpoint::Job,
        Endpoint::Jobs,
        Endpoint::Backups,
        Endpoint::FilesStart,
        Endpoint::FilesModels,
        Endpoint::FilesRestore,
        Endpoint::FilesCheck,
        Endpoint::FilesPrometheus,
        Endpoint::FilesNixos,
        Endpoint::FilesGrafana,
        Endpoint::Domains,
        Endpoint::ProjectionSnapshots,
        Endpoint::SnapshotProjections,
        Endpoint::RestoreProjections,
        Endpoint::ClearProjections,
        Endpoint::ReplayEvents,
        Endpoint::RebuildProjections,
        Endpoint::DomainConfigs,
        Endpoint::ImportDomainConfigs,
        Endpoint::RestoreDeleted,
    ];

    /// The last token of its subject.
    fn name(self) -> &'static str {
        match self {
            Endpoint::Start => "start",
            Endpoint::Restore => "restore",
            Endpoint::Verify => "verify",
            Endpoint::Check => "check",
            Endpoint::Repair => "repair",
            Endpoint::Cancel => "cancel",
            Endpoint::Job => "job",
            Endpoint::Jobs => "jobs",
            Endpoint::Backups => "backups",
            Endpoint::FilesStart => "start",
            Endpoint::FilesModels => "models",
            Endpoint::FilesRestore => "restore",
            Endpoint::FilesCheck => "check",
            Endpoint::FilesPrometheus => "prometheus",
            Endpoint::FilesNixos => "nixos",
            Endpoint::FilesGrafana => "grafana",
            Endpoint::Domains => "domains",
            Endpoint::ProjectionSnapshots => "projection-snapshots",
            Endpoint::SnapshotProjections => "snapshot-projections",
            Endpoint::RestoreProjections => "restore-projections",
            Endpoint::ClearProjections => "clear-projections",
            Endpoint::ReplayEvents => "replay-events",
            Endpoint::RebuildProjections => "rebuild-projections",
            Endpoint::DomainConfigs => "domain-configs",
            Endpoint::ImportDomainConfigs => "import-domain-configs",
            Endpoint::RestoreDeleted => "restore-deleted",
        }
    }

    /// The group its subject is in: shared by all instances, or this instance's own.
    fn prefix(self, instance: &str) -> String {
        match self {
            Endpoint::Job
            | Endpoint::Jobs
            | Endpoint::Backups
            | Endpoint::Domains
            | Endpoint::ProjectionSnapshots
            | Endpoint::DomainConfigs => QUERY_PREFIX.to_owned(),
            Endpoint::FilesStart
            | Endpoint::FilesRestore
            | Endpoint::FilesPrometheus
            | Endpoint::FilesNixos
            | Endpoint::FilesGrafana => cim_backup_contracts::subjects::files_commands(instance),
            Endpoint::FilesModels | Endpoint::FilesCheck => {
                cim_backup_contracts::subjects::files_queries(instance)
            }
            _ => COMMAND_PREFIX.to_owned(),
        }
    }

    fn subject(self, instance: &str) -> String {
        format!("{}.{}", self.prefix(instance), self.name())
    }
}

async fn dispatch(api: &Api, endpoint: Endpoint, subject: &str, request: Request) {
    let errors = &api.errors;
    if let Some(refused) = malformed_headers(&request) {
        return send::<()>(&request, errors, subject, Err(refused)).await;
    }
    match endpoint {
        Endpoint::Start => {
            send(
                &request,
                errors,
                subject,
                commands::start(api, &request, commands::Trees::Refused).await,
            )
            .await
        }
        Endpoint::FilesStart => {
            send(
                &request,
                errors,
                subject,
                commands::start(api, &request, commands::Trees::Here).await,
            )
            .await
        }
        Endpoint::Restore => {
            send(
                &request,
                errors,
                subject,
                commands::restore(api, &request).await,
            )
            .await
        }
        Endpoint::Verify => {
            send(
                &request,
                errors,
                subject,
                commands::verify(api, &request).await,
            )
            .await
        }
        Endpoint::Check => {
            send(
                &request,
                errors,
                subject,
                commands::check(api, &request).await,
            )
            .await
        }
        Endpoint::Repair => {
            send(
                &request,
                errors,
                subject,
                repair::repair(api, &request).await,
            )
            .await
        }
        Endpoint::Cancel => {
            send(
                &request,
                errors,
                subject,
                commands::cancel(api, &request).await,
            )
            .await
        }
        Endpoint::FilesRestore => {
            send(
                &request,
                errors,
                subject,
                files::restore(api, &request).await,
            )
            .await
        }
        Endpoint::FilesNixos => {
            let reply = host_services::nixos(api, &request).await;
            send(&request, errors, subject, reply).await
        }
        Endpoint::FilesPrometheus => {
            let reply = host_services::prometheus(api, &request).await;
            send(&request, errors, subject, reply).await
        }
        Endpoint::FilesGrafana => {
            let reply = host_services::grafana(api, &request).await;
            send(&request, errors, subject, reply).await
        }
        Endpoint::FilesCheck => {
            send(&request, errors, subject, files::check(api, &request).await).await
        }
        Endpoint::FilesModels => {
            send(
                &request,
                errors,
                subject,
                files::models(api, &request).await,
            )
            .await
        }
        Endpoint::Domains => {
            let reply = projections::list_domains(api, &request).await;
            send(&request, errors, subject, reply).await
        }
        Endpoint::ProjectionSnapshots => {
            let reply = projections::list_snapshots_query(api, &request).await;
            send(&request, errors, subject, reply).await
        }
        Endpoint::SnapshotProjections => {
            let reply = projections::snapshot(api, &request).await;
            send(&request, errors, subject, reply).await
        }
        Endpoint::RestoreProjections => {
            let reply = projections::restore(api, &request).await;
            send(&request, errors, subject, reply).await
        }
        Endpoint::ClearProjections => {
            let reply = projections::clear(api, &request).await;
            send(&request, errors, subject, reply).await
        }
        Endpoint::ReplayEvents => {
            let reply = replay::replay(api, &request).await;
            send(&request, errors, subject, reply).await
        }
        Endpoint::RebuildProjections => {
            let reply = replay::rebuild(api, &request).await;
            send(&request, errors, subject, reply).await
        }
        Endpoint::DomainConfigs => {
            let reply = domain_configs::export(api, &request).await;
            send(&request, errors, subject, reply).await
        }
        Endpoint::ImportDomainConfigs => {
            let reply = domain_configs::import(api, &request).await;
            send(&request, errors, subject, reply).await
        }
        Endpoint::RestoreDeleted => {
            let reply = key_restore::restore_deleted(api, &request).await;
            send(&request, errors, subject, reply).await
        }
        Endpoint::Job => send(&request, errors, subject, queries::job(api, &request).await).await,
        Endpoint::Jobs => {
            send(
                &request,
                errors,
                subject,
                queries::jobs(api, &request).await,
            )
            .await
        }
        Endpoint::Backups => {
            send(
                &request,
                errors,
                subject,
                queries::backups(api, &request).await,
            )
            .await
        }
    }
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    let _ = JobState::Running;
}
