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
    /// Classify SQL and decide it for a role, without connecting: prints each statement's class,
    /// relations and decision. Exit 0 when allowed, 1 when denied, 2 when the config is invalid.
    Check {
        /// The TOML config file (its roles are used).
        #[arg(long, short)]
        config: PathBuf,
        /// The role to decide for.
        #[arg(long)]
        role: String,
        /// SQL text (one or more statements).
        sql: String,
    },
    /// Start a throwaway PostgreSQL with sample data and timebox in front of it; prints psql commands.
    Demo(timebox::demo::DemoArgs),
    /// Issue, list, show and revoke grants through a running instance's admin API.
    Grant(GrantArgs),
    /// Search, follow and verify the audit trail (roles admin, auditor).
    Audit(AuditArgs),
    /// Ask for access, review requests, fetch the token of an approved request.
    Request(RequestArgs),
    /// List live sessions and kill one.
    Session(SessionArgs),
    /// What each role was actually used for, from the audit trail, with a suggested narrower role
    /// (roles admin, auditor).
    Roles(RolesArgs),
    /// Decide the recorded statements again under a candidate config's roles. Exit 0 when no
    /// decision changes, 1 when some do, 2 on error.
    Policy(PolicyArgs),
    /// Manage admin API tokens.
    AdminToken {
        #[command(subcommand)]
        command: AdminTokenCommand,
    },
}

/// The window and filters of `roles review` and `policy replay`.
#[derive(Debug, Args)]
struct ScopeArgs {
    /// How far back: a duration (30d, 12h) or an RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Only sessions on this target.
    #[arg(long)]
    target: Option<String>,
    /// Only sessions of this role.
    #[arg(long)]
    role: Option<String>,
    /// Print the API's JSON answer.
    #[arg(long)]
    json: bool,
}

impl ScopeArgs {
    fn scope(&self) -> cli::review::Scope {
        cli::review::Scope {
            since: self.since.clone(),
            target: self.target.clone(),
            role: self.role.clone(),
        }
    }
}

#[derive(Debug, Args)]
struct RolesArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: RolesCommand,
}

#[derive(Debug, Subcommand)]
enum RolesCommand {
    /// Per role: grants, users, statements, classes used and never used, tables, functions,
    /// settings, denials, and a suggested narrower definition (default: the last 30 days).
    Review(ScopeArgs),
}

#[derive(Debug, Args)]
struct PolicyArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Replay the recorded statements (default: the last 7 days) under the [roles] of a candidate
    /// config file and report the decisions that would change.
    Replay {
        /// The candidate config file; only its [roles] table is read.
        #[arg(long, short)]
        config: PathBuf,
        #[command(flatten)]
        scope: ScopeArgs,
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
    /// Extend a grant: its expiry moves by TTL (never past its start + the role's max_ttl); live
    /// sessions keep going.
    Extend {
        /// The grant id (g_…).
        id: String,
        /// How much longer, e.g. 30m.
        #[arg(long)]
        ttl: String,
        /// Why more time is needed.
        #[arg(long)]
        reason: Option<String>,
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

#[derive(Debug, Args)]
struct RequestArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: RequestCommand,
}

#[derive(Debug, Subcommand)]
enum RequestCommand {
    /// Ask for access (as the principal of the admin token, which is the PostgreSQL user).
    Create {
        /// The target database (as named in the config).
        #[arg(long)]
        target: String,
        /// The grant role (as named in the config).
        #[arg(long)]
        role: String,
        /// How long the access should last, e.g. 30m.
        #[arg(long)]
        ttl: String,
        /// Why the access is needed (required).
        #[arg(long)]
        reason: String,
        /// A ticket or incident reference.
        #[arg(long)]
        ticket: Option<String>,
        /// Emergency: self-approve at once (roles with break_glass = true; TTL capped; loudly flagged).
        /// Prints the token.
        #[arg(long)]
        break_glass: bool,
        /// Print the API's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// List requests, newest first (a requester sees its own).
    List {
        #[arg(long)]
        requester: Option<String>,
        #[arg(long)]
        target: Option<String>,
        #[arg(long, value_parser = PossibleValuesParser::new(["pending", "approved", "denied", "expired"]))]
        status: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Show one request.
    Show {
        /// The request id (r_…).
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Approve a request (approver or admin; never your own).
    Approve {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// Deny a request (approver or admin; never your own).
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// Fetch the token of your approved request (once).
    Token {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct SessionArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: SessionCommand,
}

#[derive(Debug, Subcommand)]
enum SessionCommand {
    /// List live sessions.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Sever a live session; the client is told who and why.
    Kill {
        /// The session id (s_…).
        id: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct AuditArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: AuditCommand,
}

/// Filters shared by `audit search` and `audit tail`.
#[derive(Debug, Args)]
struct AuditFilterArgs {
    /// Only records of this PostgreSQL user.
    #[arg(long)]
    user: Option<String>,
    /// Only records of this grant id.
    #[arg(long)]
    grant: Option<String>,
    /// Only records on this target.
    #[arg(long)]
    target: Option<String>,
    /// Only records of this session id.
    #[arg(long)]
    session: Option<String>,
    /// Only statements of this class (read, write, ddl, admin, …).
    #[arg(long)]
    class: Option<String>,
    /// Only statements with this decision.
    #[arg(long, value_parser = PossibleValuesParser::new(["allow", "deny"]))]
    decision: Option<String>,
    /// Only records of this kind.
    #[arg(long, value_parser = PossibleValuesParser::new(timebox::audit::event::KINDS))]
    kind: Option<String>,
    /// Only statements whose text contains this (case-insensitive).
    #[arg(long)]
    contains: Option<String>,
}

impl AuditFilterArgs {
    fn search(&self) -> cli::audit::AuditSearch {
        cli::audit::AuditSearch {
            user: self.user.clone(),
            grant: self.grant.clone(),
            target: self.target.clone(),
            session: self.session.clone(),
            class: self.class.clone(),
            decision: self.decision.clone(),
            kind: self.kind.clone(),
            contains: self.contains.clone(),
            ..Default::default()
        }
    }
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Search audit records, newest first.
    Search {
        #[command(flatten)]
        filter: AuditFilterArgs,
        /// Records at or after this time: RFC 3339 or a duration ago (e.g. 24h).
        #[arg(long)]
        since: Option<String>,
        /// Records before this time: RFC 3339 or a duration ago.
        #[arg(long)]
        until: Option<String>,
        /// At most this many records (1..=1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Continue from a previous page's cursor.
        #[arg(long)]
        cursor: Option<u64>,
        /// Print the API's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Show the latest records, oldest first; with --follow, keep printing new ones.
    Tail {
        #[command(flatten)]
        filter: AuditFilterArgs,
        /// How many of the latest records to show first.
        #[arg(long, short = 'n', default_value_t = 20)]
        lines: usize,
        /// Keep polling (every second) for new records until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// One JSON record per line.
        #[arg(long)]
        json: bool,
    },
    /// Verify the hash chain. Exit 0: intact; 1: a record does not match; 2: could not verify.
    Verify {
        /// Verify this audit database file directly (offline, read-only) instead of asking the API.
        #[arg(long, value_name = "PATH")]
        db: Option<PathBuf>,
        /// Also require the record at SEQ to carry HASH (a head printed earlier by `audit head`).
        #[arg(long, value_name = "SEQ:HASH")]
        expect_head: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the head of the chain (SEQ:HASH) to anchor it elsewhere.
    Head {
        /// Read this audit database file directly instead of asking the API.
        #[arg(long, value_name = "PATH")]
        db: Option<PathBuf>,
        /// Print {"seq", "hash"} as JSON.
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
    /// Print the `scram` line (the SCRAM-SHA-256 verifier that logins to timebox_audit are checked
    /// against) for an existing admin token, read from $TIMEBOX_ADMIN_TOKEN or --admin-token-file.
    Scram {
        /// Read the token from this file instead of $TIMEBOX_ADMIN_TOKEN.
        #[arg(long, value_name = "PATH")]
        admin_token_file: Option<PathBuf>,
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
        Command::Check { config, role, sql } => match Config::load(&config) {
            Ok(c) => {
                let (out, allowed) = timebox::policy::check_command(&c, &role, &sql);
                print!("{out}");
                if allowed {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("error: {}: {e}", config.display());
                ExitCode::from(2)
            }
        },
        Command::Grant(args) => report(grant(args).await),
        Command::Request(args) => report(request(args).await),
        Command::Session(args) => report(session(args).await),
        Command::Audit(args) => audit(args).await,
        Command::Roles(args) => report(roles(args).await),
        Command::Policy(args) => policy(args).await,
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
        Command::AdminToken {
            command: AdminTokenCommand::Scram { admin_token_file },
        } => report(
            cli::resolve_token(
                admin_token_file.as_deref(),
                std::env::var(cli::ADMIN_TOKEN_ENV).ok(),
            )
            .map(|token| print!("{}", cli::render_admin_token_scram(&token))),
        ),
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
    // Every event one line, control characters escaped: log lines carry client-supplied text.
    let subscriber = timebox::logging::subscriber(filter, std::io::stderr);
    if tracing_subscriber::util::SubscriberInitExt::try_init(subscriber).is_err() {
        eprintln!("warning: a tracing subscriber was already installed");
    }
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
        GrantCommand::Extend {
            id,
            ttl,
            reason,
            json,
        } => {
            let grant = client.extend(&id, &ttl, reason.as_deref()).await?;
            if json {
                print!("{}", cli::render_json(&grant.raw));
            } else {
                print!("{}", cli::requests::render_extended(&grant.body));
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

fn api_client(api: &ApiArgs) -> Result<AdminClient, CliError> {
    let token = cli::resolve_token(
        api.admin_token_file.as_deref(),
        std::env::var(cli::ADMIN_TOKEN_ENV).ok(),
    )?;
    AdminClient::new(&api.admin_url, token)
}

/// `timebox roles review`.
async fn roles(args: RolesArgs) -> Result<(), CliError> {
    let RolesCommand::Review(scope) = args.command;
    let answer = cli::review::review(&api_client(&args.api)?, &scope.scope()).await?;
    if scope.json {
        print!("{}", cli::render_json(&answer.raw));
    } else {
        print!("{}", cli::review::render_review(&answer.body));
    }
    Ok(())
}

/// `timebox policy replay`: exit 0 when no decision changes, 1 when some do, 2 on error.
async fn policy(args: PolicyArgs) -> ExitCode {
    let PolicyCommand::Replay { config, scope } = args.command;
    let answer = async {
        let roles = cli::review::candidate_roles(&config)?;
        cli::review::replay(&api_client(&args.api)?, roles, &scope.scope()).await
    }
    .await;
    match answer {
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Ok(answer) => {
            if scope.json {
                print!("{}", cli::render_json(&answer.raw));
            } else {
                print!("{}", cli::review::render_replay(&answer.body));
            }
            if answer.body.changed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}

/// `timebox audit …`. `verify` exits 1 when a record does not match and 2 when it could not check.
async fn audit(args: AuditArgs) -> ExitCode {
    use timebox::audit::{self, Head};
    match args.command {
        AuditCommand::Verify {
            db,
            expect_head,
            json,
        } => {
            let anchors = match expect_head.as_deref().map(|t| (t, Head::parse(t))) {
                None => Vec::new(),
                Some((_, Some(head))) => vec![head],
                Some((text, None)) => {
                    eprintln!("error: --expect-head {text:?} is not SEQ:HASH (64 hex digits)");
                    return ExitCode::from(2);
                }
            };
            let report = match db {
                Some(path) => {
                    audit::verify_file(&path, &anchors).map_err(|e| format!("{}: {e}", path.display()))
                }
                None => match api_client(&args.api) {
                    Ok(client) => client
                        .audit_verify(anchors.first())
                        .await
                        .map(|r| r.body)
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
            };
            match report {
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
                Ok(report) => {
                    if json {
                        print!(
                            "{}",
                            cli::render_json(&serde_json::to_value(&report).unwrap_or_default())
                        );
                    } else {
                        print!("{}", cli::audit::render_verify_report(&report));
                    }
                    if report.ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
            }
        }
        AuditCommand::Head { db: Some(path), json } => match audit::head_of_file(&path) {
            Ok(head) => {
                print_head(&head, json);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                ExitCode::FAILURE
            }
        },
        command => report(audit_api(&args.api, command).await),
    }
}

fn print_head(head: &timebox::audit::Head, json: bool) {
    if json {
        print!(
            "{}",
            cli::render_json(&serde_json::to_value(head).unwrap_or_default())
        );
    } else {
        print!("{}", cli::audit::render_head(head));
    }
}

/// The audit commands answered by the admin API.
async fn audit_api(api: &ApiArgs, command: AuditCommand) -> Result<(), CliError> {
    let client = api_client(api)?;
    match command {
        AuditCommand::Search {
            filter,
            since,
            until,
            limit,
            cursor,
            json,
        } => {
            let now = Utc::now();
            let time = |flag: &str, v: Option<String>| {
                v.map(|s| {
                    cli::audit::parse_time_arg(&s, now)
                        .map_err(|e| CliError::InvalidArgument(format!("{flag}: {e}")))
                })
                .transpose()
            };
            let search = cli::audit::AuditSearch {
                since: time("--since", since)?,
                until: time("--until", until)?,
                limit: Some(limit),
                cursor,
                ..filter.search()
            };
            let page = client.audit_search(&search).await?;
            if json {
                print!("{}", cli::render_json(&page.raw));
            } else {
                print!("{}", cli::audit::render_audit_table(&page.body.events));
                if let Some(next) = page.body.next_cursor {
                    println!("more: --cursor {next}");
                }
            }
        }
        AuditCommand::Tail {
            filter,
            lines,
            follow,
            json,
        } => {
            let print = |records: &[timebox::audit::AuditRecord], first: bool| {
                if json {
                    for r in records {
                        println!("{}", serde_json::to_string(r).unwrap_or_default());
                    }
                } else if first {
                    print!("{}", cli::audit::render_audit_table(records));
                } else {
                    print!("{}", cli::audit::render_audit_lines(records));
                }
            };
            let latest = cli::audit::AuditSearch {
                limit: Some(lines.clamp(1, 1000)),
                ..filter.search()
            };
            let mut records = client.audit_search(&latest).await?.body.events;
            records.reverse();
            let mut last = records.last().map(|r| r.seq).unwrap_or(0);
            print(&records, true);
            if follow {
                loop {
                    use std::io::Write as _;
                    let _ = std::io::stdout().flush();
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        _ = tokio::signal::ctrl_c() => break,
                    }
                    loop {
                        let newer = cli::audit::AuditSearch {
                            order: Some("asc".into()),
                            cursor: Some(last),
                            limit: Some(1000),
                            ..filter.search()
                        };
                        let page = client.audit_search(&newer).await?.body;
                        if let Some(r) = page.events.last() {
                            last = r.seq;
                        }
                        print(&page.events, false);
                        if page.next_cursor.is_none() {
                            break;
                        }
                    }
                }
            }
        }
        AuditCommand::Verify { .. } => unreachable!("verify is handled by `audit`"),
        AuditCommand::Head { json, .. } => print_head(&client.audit_head().await?.body, json),
    }
    Ok(())
}

/// `timebox request …`.
async fn request(args: RequestArgs) -> Result<(), CliError> {
    use cli::requests as rq;
    let client = api_client(&args.api)?;
    let show = |v: &cli::ApiResponse<rq::RequestView>, json: bool| {
        if json {
            print!("{}", cli::render_json(&v.raw));
        } else {
            print!("{}", rq::render_request_details(&v.body));
        }
    };
    match args.command {
        RequestCommand::Create {
            target,
            role,
            ttl,
            reason,
            ticket,
            break_glass,
            json,
        } => {
            let created = client
                .request_create(&rq::NewAccessRequest {
                    target,
                    role,
                    ttl,
                    reason,
                    ticket,
                    break_glass,
                })
                .await?;
            if break_glass {
                let token = client.request_token(&created.body.request.id).await?;
                if json {
                    print!("{}", cli::render_json(&token.raw));
                } else {
                    print!("{}", rq::render_request_token(&token.body));
                }
            } else {
                show(&created, json);
            }
        }
        RequestCommand::List {
            requester,
            target,
            status,
            limit,
            json,
        } => {
            let list = client
                .request_list(&rq::RequestListFilter {
                    requester,
                    target,
                    status,
                    limit,
                })
                .await?;
            if json {
                print!("{}", cli::render_json(&list.raw));
            } else {
                print!("{}", rq::render_request_table(&list.body.requests));
            }
        }
        RequestCommand::Show { id, json } => show(&client.request_show(&id).await?, json),
        RequestCommand::Approve { id, reason, json } => {
            show(&client.request_review(&id, true, &reason).await?, json)
        }
        RequestCommand::Deny { id, reason, json } => {
            show(&client.request_review(&id, false, &reason).await?, json)
        }
        RequestCommand::Token { id, json } => {
            let token = client.request_token(&id).await?;
            if json {
                print!("{}", cli::render_json(&token.raw));
            } else {
                print!("{}", rq::render_request_token(&token.body));
            }
        }
    }
    Ok(())
}

/// `timebox session …`.
async fn session(args: SessionArgs) -> Result<(), CliError> {
    use cli::requests as rq;
    let client = api_client(&args.api)?;
    match args.command {
        SessionCommand::List { json } => {
            let list = client.session_list().await?;
            if json {
                print!("{}", cli::render_json(&list.raw));
            } else {
                print!("{}", rq::render_session_table(&list.body.sessions));
            }
        }
        SessionCommand::Kill { id, reason, json } => {
            let killed = client.session_kill(&id, &reason).await?;
            if json {
                print!("{}", cli::render_json(&killed.raw));
            } else {
                print!("{}", rq::render_killed(&killed.body));
            }
        }
    }
    Ok(())
}
