//! `serve`: the service itself, from a config file, environment and flags (each overriding the
//! one before), optionally on an embedded nats-server.

use std::path::PathBuf;

use clap::Args;

use super::Cli;
use crate::config::{Config, DestinationConfig};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(long, env = "CIM_BACKUP_CONFIG")]
    pub config: Option<PathBuf>,
    /// Start a local nats-server (JetStream, store in DATA_DIR/nats) and use DATA_DIR/archive as
    /// the default destination `local`.
    #[arg(long)]
    pub embedded: bool,
    /// Data directory of the embedded mode.
    #[arg(long, env = "CIM_BACKUP_DATA_DIR", default_value = ".cim-backup")]
    pub data_dir: PathBuf,
    /// Client port of the embedded nats-server.
    #[arg(long, default_value_t = 4222)]
    pub nats_port: u16,
    /// Name of this instance (recorded as the runner of its jobs).
    #[arg(long, env = "CIM_BACKUP_INSTANCE")]
    pub instance: Option<String>,
    /// Default destination (configured name or URL).
    #[arg(long, env = "CIM_BACKUP_DESTINATION")]
    pub destination: Option<String>,
    /// A directory requests may name as a file:// destination or source (repeatable; adds to
    /// [service] file_roots; configured destinations are always allowed).
    #[arg(long, env = "CIM_BACKUP_FILE_ROOTS", value_delimiter = ',')]
    pub file_root: Vec<PathBuf>,
    /// A file-tree root this instance serves, as NAME=DIR (repeatable; adds to [files.roots]),
    /// e.g. models=/var/lib/cim/models. File backups and restores name a root, never a path.
    #[arg(
        long = "root",
        env = "CIM_BACKUP_ROOTS",
        value_delimiter = ',',
        value_name = "NAME=DIR"
    )]
    pub roots: Vec<String>,
}

/// Runs the service; returns the exit code.
pub async fn serve(cli: &Cli, args: &ServeArgs) -> u8 {
    let mut config = match &args.config {
        Some(path) => match Config::from_file(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cim-backup: {e}");
                return 2;
            }
        },
        None => Config::default(),
    };
    if let Some(url) = &cli.nats_url {
        config.nats.url = url.clone();
    }
    if cli.creds.is_some() {
        config.nats.creds = cli.creds.clone();
    }
    if let Some(instance) = &args.instance {
        config.service.instance = instance.clone();
    }
    if let Some(destination) = &args.destination {
        config.defaults.destination = Some(destination.clone());
    }
    for root in &args.file_root {
        match std::path::absolute(root) {
            Ok(root) => config.service.file_roots.push(root),
            Err(e) => {
                eprintln!("cim-backup: --file-root {}: {e}", root.display());
                return 2;
            }
        }
    }
    for root in &args.roots {
        let Some((name, dir)) = root.split_once('=') else {
            eprintln!(
                "cim-backup: --root {root}: expected NAME=DIR, e.g. models=/var/lib/cim/models"
            );
            return 2;
        };
        match std::path::absolute(dir) {
            Ok(dir) => {
                config.files.roots.insert(name.to_owned(), dir);
            }
            Err(e) => {
                eprintln!("cim-backup: --root {root}: {e}");
                return 2;
            }
        }
    }
    let _embedded = if args.embedded {
        let data_dir = match std::path::absolute(&args.data_dir) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("cim-backup: --data-dir {}: {e}", args.data_dir.display());
                return 2;
            }
        };
        let nats = match crate::embedded::EmbeddedNats::start(&data_dir, args.nats_port).await {
            Ok(n) => n,
            Err(e) => {
                eprintln!("cim-backup: {e}");
                return 4;
            }
        };
        config.nats.url = nats.url.clone();
        let archive = data_dir.join("archive");
        let url = format!("file://{}", archive.display());
        config
            .destinations
            .entry("local".into())
            .or_insert_with(|| DestinationConfig::url(&url));
        let default = config
            .defaults
            .destination
            .get_or_insert_with(|| "local".into())
            .clone();
        // Say what is used: a configured destination wins over the embedded directory.
        let used = config
            .destinations
            .get(&default)
            .map(|d| d.url.clone())
            .unwrap_or_else(|| default.clone());
        eprintln!(
            "cim-backup: embedded nats-server at {} (store {}), default destination {default} = {used}",
            nats.url,
            data_dir.join("nats").display()
        );
        Some(nats)
    } else {
        None
    };
    eprintln!(
        "cim-backup: serving on {} as instance {:?}; Ctrl-C to stop",
        config.nats.url, config.service.instance
    );
    match crate::api::serve(config, crate::api::shutdown_signal()).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cim-backup: {e}");
            4
        }
    }
}
