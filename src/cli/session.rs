//! `timebox session list|kill`: the admin API's `/v1/sessions` as commands, with a table for
//! people and `--json` for scripts.
//!
//! Where it sits: under [`crate::cli`], dispatched from `main.rs`. HTTP (the [`AdminClient`]
//! methods here) and rendering (pure functions) are separate so each is testable on its own.

use clap::{Args, Subcommand};
use reqwest::Method;

use super::client::{AdminClient, ApiArgs, ApiResponse};
use super::render::{render_rows, sanitize, time, Printer};
use super::CliError;
pub use crate::admin::sessions::{SessionList, SessionView};

/// `timebox session …`.
#[derive(Debug, Args)]
pub struct SessionArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub command: SessionCommand,
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// List live sessions.
    List {
        /// Print the API's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Sever a live session; the client is told who and why.
    Kill {
        /// The session id (s_…).
        id: String,
        /// Why (required; the engineer is told, the audit trail records it).
        #[arg(long)]
        reason: String,
        /// Print the API's JSON answer.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `session` command against the admin API.
pub async fn run(args: SessionArgs) -> Result<(), CliError> {
    let client = args.api.client()?;
    match args.command {
        SessionCommand::List { json } => {
            Printer::json_if(json).answer(&client.session_list().await?, |list| {
                render_session_table(&list.sessions)
            });
        }
        SessionCommand::Kill { id, reason, json } => {
            Printer::json_if(json).answer(&client.session_kill(&id, &reason).await?, render_killed);
        }
    }
    Ok(())
}

impl AdminClient {
    /// `GET /v1/sessions`.
    pub async fn session_list(&self) -> Result<ApiResponse<SessionList>, CliError> {
        self.get(&["v1", "sessions"], &()).await
    }

    /// `DELETE /v1/sessions/{id}`.
    pub async fn session_kill(&self, id: &str, reason: &str) -> Result<ApiResponse<SessionView>, CliError> {
        let body = serde_json::json!({ "reason": reason });
        self.send(Method::DELETE, &["v1", "sessions", id], Some(&body))
            .await
    }
}

/// `session list`.
pub fn render_session_table(sessions: &[SessionView]) -> String {
    render_rows(
        sessions,
        "no live sessions",
        &[
            "ID",
            "USER",
            "TARGET",
            "ROLE",
            "GRANT",
            "CLIENT",
            "STARTED",
            "EXPIRES",
            "STATEMENTS",
            "BYTES",
        ],
        |s| {
            vec![
                sanitize(&s.id),
                sanitize(&s.user),
                sanitize(&s.target),
                sanitize(&s.role),
                sanitize(&s.grant_id),
                sanitize(&s.client_addr),
                time(s.started_at),
                s.expires_at.map(time).unwrap_or_else(|| "?".into()),
                s.statements.to_string(),
                (s.bytes_from_client + s.bytes_to_client).to_string(),
            ]
        },
    )
}

/// `session kill`.
pub fn render_killed(s: &SessionView) -> String {
    format!(
        "Killed session {} of {} on {} (grant {}); the client was told why.\n",
        sanitize(&s.id),
        sanitize(&s.user),
        sanitize(&s.target),
        sanitize(&s.grant_id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_sessions_say_so() {
        assert_eq!(render_session_table(&[]), "no live sessions\n");
    }
}
