//! The `timebox` binary: parses the command line, loads config, sets up tracing and calls the library.
//! Nothing here decides anything; `anyhow` is used only in this file.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::builder::PossibleValuesParser;
use clap::{Args, Parser, Subcommand};

use timebox::app::{self, AppState, Listeners};
use timebox::cli::{self, AdminClient, CliError, IssueRequest, ListFilter};
use timebox::config::{Config, PRINCIPAL_ROLES};

#[derive(Debug, Parser)]
#[command(
    name = "timebox",
    version,
    about = "Time-boxed, audited access to PostgreSQL databases"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy and the admin API.
    Serve {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file: prints "ok" or every problem found.
    CheckConfig {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Start a throwaway PostgreSQL with sample data and timebox in front of it; prints psql commands.
    Demo(timebox::demo::DemoArgs),
    /// Issue, list, show and revoke grants through a running instance's admin API.
    Grant(GrantArgs),
    /// Manage admin API tokens.
    AdminToken {
        #[command(subcommand)]
        command: AdminTokenCommand,
    },
}

#[derive(Debug, Args)]
struct GrantArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: GrantCommand,
}

/// How to reach the admin API. The token is read from $TIMEBOX_ADMIN_TOKEN or a file, never from a
/// flag value (it would show in `ps`).
#[derive(Debug, Args)]
struct ApiArgs {
    /// The admin API's base URL.
    #[arg(long, global = true, env = cli::ADMIN_URL_ENV, default_value = cli::DEFAULT_ADMIN_URL)]
    admin_url: String,
    /// Read the admin bearer token from this file (default: $TIMEBOX_ADMIN_TOKEN).
    #[arg(long, global = true, value_name = "PATH")]
    admin_token_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum GrantCommand {
    /// Issue a grant; prints its one-time token and a ready-to-paste psql command.
    Issue {
        /// The PostgreSQL user name the engineer will log in as.
        #[arg(long)]
        user: String,
        /// The target database (as named in the config).
        #[arg(long)]
        target: String,
        /// The grant role (as named in the config).
        #[arg(long)]
        role: String,
        /// How long the grant lasts, e.g. 30m, 2h.
        #[arg(long)]
        ttl: String,
        /// Why this access is needed.
        #[arg(long)]
        reason: String,
        /// When the grant starts (RFC 3339); default now.
        #[arg(long, value_parser = parse_rfc3339)]
        starts_at: Option<DateTime<Utc>>,
        /// Print the API's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// List grants, newest first.
    List {
        /// Only grants for this PostgreSQL user.
        #[arg(long)]
        user: Option<String>,
        /// Only grants on this target.
        #[arg(long)]
        target: Option<String>,
        /// Only grants with this status now.
        #[arg(long, value_parser = PossibleValuesParser::new(["pending", "active", "expired", "revoked"]))]
        status: Option<String>,
        /// At most this many grants.
        #[arg(long)]
        limit: Option<usize>,
        /// Print the API's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Show one grant.
    Show {
        /// The grant id (g_…).
        id: String,
        /// Print the API's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a grant; its live sessions are closed at once.
    Revoke {
        /// The grant id (g_…).
        id: String,
        /// Why the access ends.
        #[arg(long)]
        reason: String,
        /// Print the API's JSON answer.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AdminTokenCommand {
    /// Make a new random admin token and print the config entry for it.
    New {
        /// The principal's name (shown in logs and as `created_by`).
        #[arg(long)]
        name: String,
        /// A role of the principal; repeat for several.
        #[arg(long = "role", required = true, value_parser = PossibleValuesParser::new(PRINCIPAL_ROLES))]
        roles: Vec<String>,
    },
}

fn parse_rfc3339(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{e}; write e.g. 2026-01-31T14:00:00Z"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(&config).await,
        Command::CheckConfig { config } => check_config(&config),
        Command::Grant(args) => report(grant(args).await),
        Command::Demo(args) => match timebox::demo::run(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::AdminToken {
            command: AdminTokenCommand::New { name, roles },
        } => {
            report(cli::new_admin_token(&name, &roles).map(|t| print!("{}", cli::render_new_admin_token(&t))))
        }
    }
}

/// Prints a CLI error to stderr; exit code 1 on error.
fn report(result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(_) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

async fn serve(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    init_tracing();
    match run_server(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "timebox stopped with an error");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
}

async fn run_server(config: Config) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&config).await.with_context(|| {
        format!(
            "cannot bind the listeners (proxy.listen = {}, admin.listen = {})",
            config.proxy.listen, config.admin.listen
        )
    })?;
    let proxy_addr = listeners.proxy.local_addr()?;
    let admin_addr = listeners.admin.local_addr()?;
    let state = AppState::build(config).context("cannot start timebox")?;
    tracing::info!(proxy = %proxy_addr, admin = %admin_addr, "timebox listening");
    app::run(state, listeners, shutdown_signal()).await?;
    tracing::info!("timebox stopped");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received"),
        _ = terminate => tracing::info!("SIGTERM received"),
    }
}

async fn grant(args: GrantArgs) -> Result<(), CliError> {
    let token = cli::resolve_token(
        args.api.admin_token_file.as_deref(),
        std::env::var(cli::ADMIN_TOKEN_ENV).ok(),
    )?;
    let client = AdminClient::new(&args.api.admin_url, token)?;
    match args.command {
        GrantCommand::Issue {
            user,
            target,
            role,
            ttl,
            reason,
            starts_at,
            json,
        } => {
            let issued = client
                .issue(&IssueRequest {
                    user,
                    target,
                    role,
                    ttl,
                    reason,
                    starts_at,
                })
                .await?;
            if json {
                print!("{}", cli::render_json(&issued.raw));
            } else {
                print!("{}", cli::render_issued(&issued.body));
            }
        }
        GrantCommand::List {
            user,
            target,
            status,
            limit,
            json,
        } => {
            let list = client
                .list(&ListFilter {
                    user,
                    target,
                    status,
                    limit,
                })
                .await?;
            if json {
                print!("{}", cli::render_json(&list.raw));
            } else {
                print!("{}", cli::render_grant_table(&list.body.grants));
            }
        }
        GrantCommand::Show { id, json } => {
            let grant = client.show(&id).await?;
            if json {
                print!("{}", cli::render_json(&grant.raw));
            } else {
                print!("{}", cli::render_grant_details(&grant.body));
            }
        }
        GrantCommand::Revoke { id, reason, json } => {
            let grant = client.revoke(&id, &reason).await?;
            if json {
                print!("{}", cli::render_json(&grant.raw));
            } else {
                print!("{}", cli::render_revoked(&grant.body));
            }
        }
    }
    Ok(())
}
