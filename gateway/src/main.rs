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
        /// Take the listening sockets over from the running gateway (through its
        /// `gateway.upgrade_socket`), which then drains and exits: a zero-downtime upgrade.
        #[arg(long)]
        takeover: bool,
    },
    /// Validate a config file and print every problem with file, line and key.
    Check {
        /// The TOML config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Show a running gateway's status (through its admin API).
    Status(AdminArgs),
    /// Make a running gateway reload its config file; prints every problem if refused.
    Reload(AdminArgs),
    /// List, add or remove deny/allow entries of a running gateway, live.
    Acl {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        action: AclAction,
    },
    /// The L4 services of a running gateway, balanced in XDP.
    L4 {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        action: L4Action,
    },
    /// On an L4 target without an IPIP device: attach or detach the program that
    /// decapsulates the balancer's packets (its link is pinned, so it stays).
    Decap {
        #[command(subcommand)]
        action: DecapAction,
    },
    /// The XDP state pinned in bpffs, read or removed without a running gateway.
    Xdp {
        #[command(subcommand)]
        action: XdpAction,
    },
}

#[derive(Subcommand)]
enum DecapAction {
    /// Attach `l4-decap` to an interface (driver mode unless `--skb`).
    Attach {
        #[command(flatten)]
        pins: PinArgs,
        /// Generic XDP, for drivers without native XDP.
        #[arg(long)]
        skb: bool,
    },
    /// Detach it.
    Detach(PinArgs),
}

#[derive(Subcommand)]
enum L4Action {
    /// Print (JSON) every service with its VIP, targets, weights, health, ring slots
    /// and packet, byte and new-flow counters.
    List,
}

#[derive(Subcommand)]
enum XdpAction {
    /// Print (JSON) whether the program is attached, its verdict counters, and the
    /// lists with hit counts and live entries' expiry.
    Show(PinArgs),
    /// Detach the program and remove its pinned maps (after `on_exit = "keep"`, or to
    /// uninstall).
    Detach(PinArgs),
}

/// Where an interface's XDP state is pinned.
#[derive(clap::Args)]
struct PinArgs {
    /// The interface the gateway attached to (`[xdp] interface`).
    #[arg(long, value_name = "NAME")]
    interface: String,
    /// `[xdp] pin_path` of that gateway.
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/gateway")]
    pin_path: PathBuf,
}

fn decap_command(action: DecapAction) -> ExitCode {
    use gateway::xdp::decap;
    let outcome = match action {
        DecapAction::Attach { pins, skb } => decap::attach(&pins.interface, skb, &pins.pin_path)
            .map(|()| println!("l4-decap attached to {}", pins.interface)),
        DecapAction::Detach(pins) => decap::detach(&pins.interface, &pins.pin_path).map(|was| {
            if was {
                println!("l4-decap detached from {}", pins.interface);
            } else {
                println!("no l4-decap pinned for {}", pins.interface);
            }
        }),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gateway decap: {error}");
            ExitCode::FAILURE
        }
    }
}

fn xdp_command(action: XdpAction) -> ExitCode {
    use gateway::xdp::{PinFolder, inspect};
    let (
        PinArgs {
            interface,
            pin_path,
        },
        show,
    ) = match action {
        XdpAction::Show(args) => (args, true),
        XdpAction::Detach(args) => (args, false),
    };
    let pins = PinFolder::new(&pin_path, &interface);
    let outcome = if show {
        inspect::describe(&pins).map(|state| {
            println!(
                "{}",
                serde_json::to_string_pretty(&state).unwrap_or_default()
            );
        })
    } else {
        inspect::remove(&pins).map(|existed| {
            if existed {
                println!("detached and unpinned {}", pins.dir().display());
            } else {
                println!("nothing pinned at {}", pins.dir().display());
            }
        })
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gateway: {interface}: {error}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Subcommand)]
enum AclAction {
    /// Every entry (config and live) with hit counts and remaining TTL.
    List,
    /// Live entries of the deny list: dropped in XDP when attached, else at accept.
    Deny {
        #[command(subcommand)]
        change: AclChange,
    },
    /// Live entries of the allow list (a non-empty allow list admits only its members).
    Allow {
        #[command(subcommand)]
        change: AclChange,
    },
}

#[derive(Subcommand)]
enum AclChange {
    /// Add (or renew) an entry.
    Add {
        /// An address or CIDR, e.g. 203.0.113.0/24.
        cidr: String,
        /// Remove it again after this long, e.g. 10m.
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Remove a live entry.
    Del {
        /// The address or CIDR as added.
        cidr: String,
    },
}

fn acl_path(action: &AclAction) -> (&'static str, String) {
    let form = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let (list, change) = match action {
        AclAction::List => return ("GET", "/acl".into()),
        AclAction::Deny { change } => ("deny", change),
        AclAction::Allow { change } => ("allow", change),
    };
    match change {
        AclChange::Add { cidr, ttl } => (
            "POST",
            format!(
                "/acl/add?list={list}&cidr={}{}",
                form(cidr),
                ttl.as_deref()
                    .map_or(String::new(), |t| format!("&ttl={}", form(t)))
            ),
        ),
        AclChange::Del { cidr } => (
            "POST",
            format!("/acl/remove?list={list}&cidr={}", form(cidr)),
        ),
    }
}

/// How the CLI reaches a running gateway.
#[derive(clap::Args)]
struct AdminArgs {
    /// The admin API's base URL.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9901")]
    admin: String,
    /// File holding the admin token (else `GATEWAY_ADMIN_TOKEN`).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

impl AdminArgs {
    fn token(&self) -> Result<Option<String>, String> {
        if let Some(file) = &self.token_file {
            return std::fs::read_to_string(file)
                .map(|t| Some(t.trim().to_owned()))
                .map_err(|e| format!("cannot read {}: {e}", file.display()));
        }
        Ok(std::env::var("GATEWAY_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()))
    }

    /// Calls the API; prints the body; success on 2xx.
    fn run(&self, method: &str, path: &str) -> ExitCode {
        let result = self
            .token()
            .and_then(|token| gateway::admin::call(&self.admin, method, path, token.as_deref()));
        match result {
            Ok((status, body)) => {
                println!("{}", body.trim_end());
                if (200..300).contains(&status) {
                    ExitCode::SUCCESS
                } else {
                    eprintln!("gateway: the admin API answered {status}");
                    ExitCode::FAILURE
                }
            }
            Err(error) => {
                eprintln!("gateway: {error}");
                ExitCode::FAILURE
            }
        }
    }
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
        Command::Status(args) => args.run("GET", "/status"),
        Command::Reload(args) => args.run("POST", "/reload"),
        Command::Acl { admin, action } => {
            let (method, path) = acl_path(&action);
            admin.run(method, &path)
        }
        Command::L4 {
            admin,
            action: L4Action::List,
        } => admin.run("GET", "/l4"),
        Command::Xdp { action } => xdp_command(action),
        Command::Decap { action } => decap_command(action),
        Command::Run { config, takeover } => {
            let loaded = match Config::load(&config) {
                Ok(loaded) => loaded,
                Err(error) => return report_config_error(&error),
            };
            init_logging(loaded.gateway.log_level.as_deref());
            let takeover = if takeover {
                let Some(path) = loaded.gateway.upgrade_socket.as_deref() else {
                    eprintln!("gateway: --takeover needs gateway.upgrade_socket in the config");
                    return ExitCode::FAILURE;
                };
                match gateway::runtime::upgrade::Takeover::connect(path) {
                    Ok(takeover) => Some(takeover),
                    Err(error) => {
                        eprintln!("gateway: {error}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                None
            };
            match gateway::runtime::run(loaded, takeover) {
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
