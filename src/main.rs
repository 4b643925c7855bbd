//! The `timebox` binary: parses the command line and dispatches to the library; the commands live in
//! [`timebox::cli`] (one file per group) and [`timebox::demo`]. Nothing here decides or prints
//! anything but a top-level error.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use timebox::cli::{
    admin_token, audit, check, grant, instance, report, request, review, serve, session, store,
};

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
        /// Skip the checks that need this host to have the files and environment variables the
        /// config names (TLS files, password_env, password_file, CA files); list what was skipped.
        #[arg(long)]
        offline: bool,
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
    Grant(grant::GrantArgs),
    /// Search, follow and verify the audit trail (roles admin, auditor).
    Audit(audit::AuditArgs),
    /// Ask for access, review requests, fetch the token of an approved request.
    Request(request::RequestArgs),
    /// List live sessions and kill one.
    Session(session::SessionArgs),
    /// List the instances sharing a PostgreSQL store (roles admin, auditor).
    Instance(instance::InstanceArgs),
    /// What each role was actually used for, from the audit trail, with a suggested narrower role
    /// (roles admin, auditor).
    Roles(review::RolesArgs),
    /// Decide the recorded statements again under a candidate config's roles. Exit 0 when no
    /// decision changes, 1 when some do, 2 on error.
    Policy(review::PolicyArgs),
    /// Start a throwaway PostgreSQL, print it as one JSON line, stop and delete it when stdin closes
    /// (the benchmark harness's upstream; see benches/README.md).
    #[command(hide = true)]
    DemoCluster(timebox::demo::cluster::command::ClusterArgs),
    /// Manage the store's schema.
    Store {
        #[command(subcommand)]
        command: store::StoreCommand,
    },
    /// Issue, list and revoke admin API tokens (through the admin API), or make a config entry.
    AdminToken(admin_token::AdminTokenArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve { config } => serve::serve(&config).await,
        Command::CheckConfig { config, offline } => check::check_config(&config, offline),
        Command::Check { config, role, sql } => check::check(&config, &role, &sql),
        Command::Grant(args) => report(grant::run(args).await),
        Command::Request(args) => report(request::run(args).await),
        Command::Session(args) => report(session::run(args).await),
        Command::Instance(args) => report(instance::run(args).await),
        Command::Audit(args) => audit::run(args).await,
        Command::Roles(args) => report(review::run_roles(args).await),
        Command::Policy(args) => review::run_policy(args).await,
        Command::Demo(args) => match timebox::demo::run(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::DemoCluster(args) => match timebox::demo::cluster::command::run(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Store { command } => store::run(command).await,
        Command::AdminToken(args) => report(admin_token::run(args).await),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every argument of every command, with its command path, that `--help` shows without a word.
    fn args_without_help(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if arg.is_hide_set() || id == "help" || id == "version" {
                continue;
            }
            if arg.get_help().is_none() {
                out.push(format!("{path} {id}"));
            }
        }
        for sub in cmd.get_subcommands() {
            if !sub.is_hide_set() {
                args_without_help(sub, &format!("{path} {}", sub.get_name()), out);
            }
        }
    }

    /// See: issue 17: `timebox request deny --help` and `timebox session kill --help` showed their
    /// arguments with no explanation. Every argument says what it is.
    #[test]
    fn every_argument_has_help() {
        let mut missing = Vec::new();
        args_without_help(&Cli::command(), "timebox", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:#?}");
    }
}
