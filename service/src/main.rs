//! `cim-backup`: parse arguments, set up logging, run.

use clap::Parser;

fn main() -> std::process::ExitCode {
    bound_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(run())
}

/// glibc gives threads that allocate their own heap arenas (up to 8 per core) and keeps freed
/// memory in them. With the file engines' multi-MiB buffers passing through blocking threads,
/// the service's peak RSS in the models benchmark grew from ~170 MiB to over 300 MiB depending
/// on which threads ran what (BENCHMARKS.md); two arenas keep it bounded at no measured cost.
/// An operator's own `MALLOC_ARENA_MAX` wins. Called before any other thread exists.
fn bound_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: no other thread exists yet; mallopt only sets an allocator parameter.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

async fn run() -> std::process::ExitCode {
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
    // `cim-backup list-backups | head`: stdout closed early ends the process quietly, as any
    // Unix tool does, instead of a panic report about a broken pipe.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let said = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if said.contains("failed printing to stdout") && said.contains("Broken pipe") {
            std::process::exit(141);
        }
        default_hook(info);
    }));
    let cli = cim_backup::cli::Cli::parse();
    std::process::ExitCode::from(cim_backup::cli::run(cli).await)
}
