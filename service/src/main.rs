//! `cim-backup`: parse arguments, set up logging, run.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    use std::io::IsTerminal;
    // Colour only for a person at a terminal: a log file or a pipe gets plain text.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .init();
    let cli = cim_backup::cli::Cli::parse();
    std::process::ExitCode::from(cim_backup::cli::run(cli).await)
}
