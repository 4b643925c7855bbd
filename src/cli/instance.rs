//! `timebox instance list`: the admin API's `/v1/instances` as a command, with a table for people
//! and `--json` for scripts.
//!
//! Where it sits: under [`crate::cli`], dispatched from `main.rs`. HTTP (the [`AdminClient`] method)
//! and rendering (a pure function) are separate so each is testable on its own.

use clap::{Args, Subcommand};

use super::client::{AdminClient, ApiArgs, ApiResponse};
use super::render::{render_rows, sanitize, time, Printer};
use super::CliError;
pub use crate::admin::instances::{InstanceList, InstanceRow};

/// `timebox instance …`.
#[derive(Debug, Args)]
pub struct InstanceArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub command: InstanceCommand,
}

#[derive(Debug, Subcommand)]
pub enum InstanceCommand {
    /// List the fleet's instances (roles admin, auditor).
    List {
        /// Print the API's JSON answer instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `instance` command against the admin API.
pub async fn run(args: InstanceArgs) -> Result<(), CliError> {
    let client = args.api.client()?;
    match args.command {
        InstanceCommand::List { json } => {
            Printer::json_if(json).answer(&client.instance_list().await?, render_instance_table);
        }
    }
    Ok(())
}

impl AdminClient {
    /// `GET /v1/instances`.
    pub async fn instance_list(&self) -> Result<ApiResponse<InstanceList>, CliError> {
        self.get(&["v1", "instances"], &()).await
    }
}

/// `instance list`.
pub fn render_instance_table(list: &InstanceList) -> String {
    if !list.fleet {
        return "not a fleet: this instance uses the SQLite store\n".into();
    }
    render_rows(
        &list.instances,
        "no instances registered",
        &[
            "NAME",
            "ADVERTISE",
            "VERSION",
            "STARTED",
            "HEARTBEAT",
            "SESSIONS",
            "STATE",
        ],
        |i| {
            vec![
                sanitize(&i.name),
                sanitize(&i.advertise),
                sanitize(&i.version),
                time(i.started_at),
                time(i.heartbeat_at),
                i.sessions.to_string(),
                if i.alive { "alive" } else { "dead" }.into(),
            ]
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_fleet_it_says_so() {
        let list = InstanceList {
            fleet: false,
            this_instance: None,
            instances: vec![],
        };
        assert!(render_instance_table(&list).starts_with("not a fleet"));
    }
}
