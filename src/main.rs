//! The `floorcast` binary: CLI, configuration, logging, signals; then [`floorcast::node::run`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use floorcast::config::{Config, LogFormat, Source};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's malloc: the SIP core allocates and frees small buffers per message,
/// where glibc's allocator cost about a fifth of the SIP thread's time (BENCHMARKS.md, registration).
/// `--no-default-features` builds with the system allocator instead.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Floorcast: a B-TrunC trunking control function with a floor-gated RTP relay.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node (the default). Without --config it runs the embedded default configuration.
    Run {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file and exit.
    CheckConfig {
        /// Configuration file (TOML).
        file: PathBuf,
    },
}

fn load(path: Option<&PathBuf>) -> Result<Config, String> {
    let config = match path {
        None => Config::embedded_default().map_err(|error| format!("embedded default configuration: {error}"))?,
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|error| format!("{}: {error}", path.display()))?;
            let mut config = Config::from_toml(&text).map_err(|error| format!("{}: {error}", path.display()))?;
            // Provisioning files named relative to the config file are found next to it.
            let directory = path.parent().unwrap_or(std::path::Path::new("."));
            for source in [&mut config.provisioning.network, &mut config.provisioning.subscribers] {
                if let Source::File(file) = source {
                    if file.is_relative() {
                        *file = directory.join(&*file);
                    }
                }
            }
            config
        }
    };
    // The provisioned data is part of the configuration: check it too.
    floorcast::node::load_provisioning(&config).map_err(|error| format!("provisioning: {error:#}"))?;
    Ok(config)
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Registers SIGINT/SIGTERM handlers now (so a signal arriving while the node starts is not
/// lost) and returns a future that completes on the first of them.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run { config: None }) {
        Command::CheckConfig { file } => match load(Some(&file)) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(2)
            }
        },
        Command::Run { config } => {
            let config = match load(config.as_ref()) {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&config);
            // Before the runtime and the node allocate anything much (see the function).
            if let Err(error) = floorcast::io::disable_transparent_huge_pages() {
                tracing::warn!(%error, "cannot opt out of transparent huge pages");
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("error: cannot start the async runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(async {
                let shutdown = shutdown_signal().map_err(|error| anyhow::anyhow!("cannot watch signals: {error}"))?;
                floorcast::node::run(config, shutdown).await
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error:#}");
                    eprintln!("error: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
