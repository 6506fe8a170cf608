//! `cim-backup`: parse arguments, set up logging, run.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = cim_backup::cli::Cli::parse();
    std::process::ExitCode::from(cim_backup::cli::run(cli).await)
}
