//! The `gateway` command: parse the CLI, set up logging, hand over to the library.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use gateway::config::{Config, ConfigError};

/// eBPF/io_uring-accelerated L4/L7 API gateway appliance.
#[derive(Parser)]
#[command(name = "gateway", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the appliance on a config file (SIGTERM/SIGINT drain and stop it).
    Run {
        /// The TOML config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a config file and print every problem with file, line and key.
    Check {
        /// The TOML config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(loaded) => {
                println!(
                    "{}: ok ({} listeners, {} upstreams, {} routes)",
                    config.display(),
                    loaded.listeners.len(),
                    loaded.upstreams.len(),
                    loaded.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(error) => report_config_error(&error),
        },
        Command::Run { config } => {
            let loaded = match Config::load(&config) {
                Ok(loaded) => loaded,
                Err(error) => return report_config_error(&error),
            };
            init_logging(loaded.gateway.log_level.as_deref());
            match gateway::runtime::run(loaded) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error}");
                    eprintln!("gateway: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn report_config_error(error: &ConfigError) -> ExitCode {
    eprintln!("{error}");
    if let ConfigError::Invalid(problems) = error {
        eprintln!("config refused: {} problem(s)", problems.len());
    }
    ExitCode::FAILURE
}

/// Logs to stderr; `RUST_LOG` wins over the config's `log_level`, which wins over `info`.
fn init_logging(config_level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(config_level.unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
