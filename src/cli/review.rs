//! `timebox roles review` and `timebox policy replay`: the admin API's `/v1/roles/review` and
//! `/v1/policy/replay` as commands, and what a reviewer reads (a summary per role with its
//! suggested narrower definition; the changes a candidate policy would make, with links to the
//! original records).
//!
//! Where it sits: under [`crate::cli`], called by `main.rs`. `policy replay --config FILE` reads
//! only the candidate file's `[roles]` table here and sends it; the instance validates it and
//! replays its own audit trail. Exit codes of `policy replay`: 0 no decision changes, 1 some do,
//! 2 on any error (unreadable or invalid candidate included).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde::Serialize;

use super::client::{AdminClient, ApiArgs, ApiResponse};
use super::render::{sanitize, truncate, Printer};
use super::CliError;
use crate::admin::review::{ReplayAnswer, ReviewAnswer};
use crate::review::replay::Change;

/// Longest statement text shown per example (`--json` has it whole).
const EXAMPLE_SQL_CHARS: usize = 100;

/// The window and filters of both commands (also their query string / body fields).
#[derive(Debug, Clone, Default, Args, Serialize)]
pub struct Scope {
    /// How far back: a duration (30d, 12h) or an RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Only sessions on this target.
    #[arg(long)]
    pub target: Option<String>,
    /// Only sessions of this role.
    #[arg(long)]
    pub role: Option<String>,
}

/// `timebox roles …`.
#[derive(Debug, Args)]
pub struct RolesArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub command: RolesCommand,
}

#[derive(Debug, Subcommand)]
pub enum RolesCommand {
    /// Per role: grants, users, statements, classes used and never used, tables, functions,
    /// settings, denials, and a suggested narrower definition (default: the last 30 days).
    Review {
        #[command(flatten)]
        scope: Scope,
        /// Print the API's JSON answer.
        #[arg(long)]
        json: bool,
    },
}

/// `timebox policy …`.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub command: PolicyCommand,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Replay the recorded statements (default: the last 7 days) under the [roles] of a candidate
    /// config file and report the decisions that would change. Exit 0 when none would, 1 when some
    /// would, 2 on error.
    Replay {
        /// The candidate config file; only its [roles] table is read.
        #[arg(long, short)]
        config: PathBuf,
        #[command(flatten)]
        scope: Scope,
        /// Print the API's JSON answer.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `roles review`.
pub async fn run_roles(args: RolesArgs) -> Result<(), CliError> {
    let RolesCommand::Review { scope, json } = args.command;
    let answer = args.api.client()?.roles_review(&scope).await?;
    Printer::json_if(json).answer(&answer, render_review);
    Ok(())
}

/// Runs `policy replay`: exit 0 when no decision changes, 1 when some do, 2 on any error.
pub async fn run_policy(args: PolicyArgs) -> ExitCode {
    let PolicyCommand::Replay { config, scope, json } = args.command;
    let answer = async {
        let roles = candidate_roles(&config)?;
        args.api.client()?.policy_replay(roles, &scope).await
    }
    .await;
    match answer {
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Ok(answer) => {
            Printer::json_if(json).answer(&answer, render_replay);
            if answer.body.changed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}

impl AdminClient {
    /// `GET /v1/roles/review`.
    pub async fn roles_review(&self, scope: &Scope) -> Result<ApiResponse<ReviewAnswer>, CliError> {
        self.get(&["v1", "roles", "review"], scope).await
    }

    /// `POST /v1/policy/replay` with `roles` (the candidate's `[roles]` as JSON).
    pub async fn policy_replay(
        &self,
        roles: serde_json::Value,
        scope: &Scope,
    ) -> Result<ApiResponse<ReplayAnswer>, CliError> {
        let mut body = serde_json::to_value(scope).unwrap_or_default();
        body["roles"] = roles;
        if let Some(fields) = body.as_object_mut() {
            fields.retain(|_, v| !v.is_null());
        }
        self.send(Method::POST, &["v1", "policy", "replay"], Some(&body))
            .await
    }
}

/// The `[roles]` table of a candidate config file, as JSON. The rest of the file is not read.
pub fn candidate_roles(path: &Path) -> Result<serde_json::Value, CliError> {
    let bad = |why: String| CliError::InvalidArgument(format!("candidate config {}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let doc: toml::Table = toml::from_str(&text).map_err(|e| bad(format!("not valid TOML: {e}")))?;
    let roles = doc
        .get("roles")
        .ok_or_else(|| bad("it has no [roles] table".into()))?;
    serde_json::to_value(roles).map_err(|e| bad(e.to_string()))
}

fn usage_line(out: &mut String, label: &str, list: &[crate::review::roles::Usage]) {
    if list.is_empty() {
        return;
    }
    let items: Vec<String> = list
        .iter()
        .map(|u| format!("{} ({})", sanitize(&u.name), u.count))
        .collect();
    let _ = writeln!(out, "  {label:<17}{}", items.join(", "));
}

/// `roles review` for a terminal.
pub fn render_review(answer: &ReviewAnswer) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} statements from {} to {}",
        answer.statements,
        answer.since.format("%Y-%m-%d %H:%M"),
        answer.until.format("%Y-%m-%d %H:%M UTC")
    );
    if answer.roles.is_empty() {
        out.push_str("no role was used in this window\n");
    }
    for r in &answer.roles {
        let _ = writeln!(
            out,
            "\nrole {} on {}: {} grants, {} users, {} statements, {} denied",
            sanitize(&r.role),
            sanitize(&r.targets.join(", ")),
            r.grants,
            r.users.len(),
            r.statements,
            r.denied
        );
        let used: Vec<String> = r.classes_used.iter().map(|(c, n)| format!("{c} ({n})")).collect();
        let _ = writeln!(
            out,
            "  {:<17}{}",
            "classes used",
            if used.is_empty() {
                "none".into()
            } else {
                used.join(", ")
            }
        );
        if !r.classes_never_used.is_empty() {
            let _ = writeln!(out, "  {:<17}{}", "never used", r.classes_never_used.join(", "));
        }
        usage_line(&mut out, "tables read", &r.tables_read);
        usage_line(&mut out, "tables written", &r.tables_written);
        usage_line(&mut out, "functions", &r.functions);
        usage_line(&mut out, "settings changed", &r.settings_changed);
        usage_line(&mut out, "denied", &r.denials);
        if let Some(s) = &r.suggestion {
            out.push('\n');
            out.push_str(s);
        }
    }
    out
}

/// `policy replay` for a terminal.
pub fn render_replay(answer: &ReplayAnswer) -> String {
    let r = &answer.report;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} statements from {} to {} replayed ({} distinct decisions): {} unchanged, {} newly denied, {} newly allowed, {} not reproducible",
        r.statements,
        answer.since.format("%Y-%m-%d %H:%M"),
        answer.until.format("%Y-%m-%d %H:%M UTC"),
        r.decisions_made,
        r.unchanged,
        r.newly_denied,
        r.newly_allowed,
        r.not_reproducible
    );
    for g in &r.groups {
        let label = match g.change {
            Change::NewlyDenied => "NEWLY DENIED",
            Change::NewlyAllowed => "NEWLY ALLOWED",
            Change::NotReproducible => "not reproducible",
        };
        let _ = writeln!(
            out,
            "\n{label} ×{} (role {}): {}",
            g.count,
            sanitize(&g.role),
            sanitize(&g.reason)
        );
        for e in &g.examples {
            let _ = writeln!(
                out,
                "  seq {} session {} {} {}  {}",
                e.seq,
                sanitize(&e.session_id),
                sanitize(&e.user),
                e.ts.format("%Y-%m-%d %H:%M:%S"),
                truncate(&sanitize(&e.sql), EXAMPLE_SQL_CHARS)
            );
        }
    }
    out.push_str(if answer.changed {
        "\nsome decisions would change (exit 1)\n"
    } else {
        "\nno decision would change (exit 0)\n"
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_candidates_roles_table_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("candidate.toml");
        std::fs::write(
            &path,
            "[proxy]\nlisten = \"nonsense\"\n[roles.read]\nallow = [\"read\"]\nmax_ttl = \"1h\"\n",
        )
        .unwrap();
        let roles = candidate_roles(&path).unwrap();
        assert_eq!(roles["read"]["allow"][0], "read");
        std::fs::write(&path, "[proxy]\n").unwrap();
        assert!(candidate_roles(&path)
            .unwrap_err()
            .to_string()
            .contains("no [roles] table"));
        std::fs::write(&path, "[roles\n").unwrap();
        assert!(candidate_roles(&path)
            .unwrap_err()
            .to_string()
            .contains("not valid TOML"));
        assert!(candidate_roles(&dir.path().join("missing.toml")).is_err());
    }
}
