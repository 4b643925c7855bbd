//! `timebox grant issue|list|show|extend|revoke`: the admin API's `/v1/grants` as commands, with
//! tables for people and `--json` for scripts.
//!
//! Where it sits: under [`crate::cli`], dispatched from `main.rs`. HTTP (the [`AdminClient`]
//! methods here) and rendering (pure functions) are separate so each is testable on its own. The
//! only token it ever prints is the one-time grant token of `grant issue`.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use clap::builder::PossibleValuesParser;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde::Serialize;

use super::client::{AdminClient, ApiArgs, ApiResponse};
use super::render::{render_fields, render_rows, sanitize, time, truncate, Printer};
use super::CliError;
pub use crate::admin::grants::{ConnectInfo, GrantList, GrantView, IssueRequest, IssuedGrant};

/// Longest reason shown in a table cell (the full text is in `grant show`).
const TABLE_REASON_CHARS: usize = 48;

/// `timebox grant …`.
#[derive(Debug, Args)]
pub struct GrantArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub command: GrantCommand,
}

#[derive(Debug, Subcommand)]
pub enum GrantCommand {
    /// Issue a grant; prints its one-time token and a ready-to-paste psql command.
    Issue {
        #[command(flatten)]
        grant: IssueArgs,
        /// Print the API's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// List grants, newest first.
    List {
        #[command(flatten)]
        filter: ListFilter,
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

/// What `grant issue` asks for: the body of `POST /v1/grants`.
#[derive(Debug, Clone, Args)]
pub struct IssueArgs {
    /// The PostgreSQL user name the engineer will log in as.
    #[arg(long)]
    pub user: String,
    /// The target database (as named in the config).
    #[arg(long)]
    pub target: String,
    /// The grant role (as named in the config).
    #[arg(long)]
    pub role: String,
    /// How long the grant lasts, e.g. 30m, 2h.
    #[arg(long)]
    pub ttl: String,
    /// Why this access is needed.
    #[arg(long)]
    pub reason: String,
    /// When the grant starts (RFC 3339); default now.
    #[arg(long, value_parser = parse_rfc3339)]
    pub starts_at: Option<DateTime<Utc>>,
}

impl From<IssueArgs> for IssueRequest {
    fn from(a: IssueArgs) -> IssueRequest {
        IssueRequest {
            user: a.user,
            target: a.target,
            role: a.role,
            ttl: a.ttl,
            reason: a.reason,
            starts_at: a.starts_at,
        }
    }
}

/// Filters of `grant list`, sent as `GET /v1/grants` parameters.
#[derive(Debug, Clone, Default, Serialize, Args)]
pub struct ListFilter {
    /// Only grants for this PostgreSQL user.
    #[arg(long)]
    pub user: Option<String>,
    /// Only grants on this target.
    #[arg(long)]
    pub target: Option<String>,
    /// Only grants with this status now.
    #[arg(long, value_parser = PossibleValuesParser::new(["pending", "active", "expired", "revoked"]))]
    pub status: Option<String>,
    /// At most this many grants.
    #[arg(long)]
    pub limit: Option<usize>,
}

fn parse_rfc3339(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{e}; write e.g. 2026-01-31T14:00:00Z"))
}

/// Runs one `grant` command against the admin API.
pub async fn run(args: GrantArgs) -> Result<(), CliError> {
    let client = args.api.client()?;
    match args.command {
        GrantCommand::Issue { grant, json } => {
            Printer::json_if(json).answer(&client.issue(&grant.into()).await?, render_issued);
        }
        GrantCommand::List { filter, json } => {
            Printer::json_if(json).answer(&client.list(&filter).await?, |list| {
                render_grant_table(&list.grants)
            });
        }
        GrantCommand::Show { id, json } => {
            Printer::json_if(json).answer(&client.show(&id).await?, render_grant_details);
        }
        GrantCommand::Extend {
            id,
            ttl,
            reason,
            json,
        } => {
            let grant = client.extend(&id, &ttl, reason.as_deref()).await?;
            Printer::json_if(json).answer(&grant, render_extended);
        }
        GrantCommand::Revoke { id, reason, json } => {
            Printer::json_if(json).answer(&client.revoke(&id, &reason).await?, render_revoked);
        }
    }
    Ok(())
}

impl AdminClient {
    /// `POST /v1/grants`.
    pub async fn issue(&self, req: &IssueRequest) -> Result<ApiResponse<IssuedGrant>, CliError> {
        self.send(Method::POST, &["v1", "grants"], Some(req)).await
    }

    /// `GET /v1/grants`.
    pub async fn list(&self, filter: &ListFilter) -> Result<ApiResponse<GrantList>, CliError> {
        self.get(&["v1", "grants"], filter).await
    }

    /// `GET /v1/grants/{id}`.
    pub async fn show(&self, id: &str) -> Result<ApiResponse<GrantView>, CliError> {
        self.get(&["v1", "grants", id], &()).await
    }

    /// `POST /v1/grants/{id}/extend`.
    pub async fn extend(
        &self,
        id: &str,
        ttl: &str,
        reason: Option<&str>,
    ) -> Result<ApiResponse<GrantView>, CliError> {
        let body = serde_json::json!({ "ttl": ttl, "reason": reason });
        self.send(Method::POST, &["v1", "grants", id, "extend"], Some(&body))
            .await
    }

    /// `POST /v1/grants/{id}/revoke`.
    pub async fn revoke(&self, id: &str, reason: &str) -> Result<ApiResponse<GrantView>, CliError> {
        let body = serde_json::json!({ "reason": reason });
        self.send(Method::POST, &["v1", "grants", id, "revoke"], Some(&body))
            .await
    }
}

/// `grant list`: one aligned row per grant.
pub fn render_grant_table(grants: &[GrantView]) -> String {
    render_rows(
        grants,
        "no grants",
        &["ID", "USER", "TARGET", "ROLE", "STATUS", "EXPIRES_AT", "REASON"],
        |v| {
            let g = &v.grant;
            vec![
                sanitize(&g.id),
                sanitize(&g.user),
                sanitize(&g.target),
                sanitize(&g.role),
                if v.break_glass {
                    format!("{}, break-glass", v.status.as_str())
                } else {
                    v.status.as_str().to_owned()
                },
                time(g.expires_at),
                truncate(&sanitize(&g.reason), TABLE_REASON_CHARS),
            ]
        },
    )
}

/// `grant show`: every field, one per line.
pub fn render_grant_details(view: &GrantView) -> String {
    let g = &view.grant;
    let mut fields: Vec<(&str, String)> = vec![
        ("id", g.id.clone()),
        ("user", g.user.clone()),
        ("target", g.target.clone()),
        ("role", g.role.clone()),
        ("status", view.status.as_str().to_owned()),
        (
            "break_glass",
            if view.break_glass { "yes" } else { "no" }.to_owned(),
        ),
        ("reason", g.reason.clone()),
        ("created_by", g.created_by.clone()),
        ("created_at", time(g.created_at)),
        ("starts_at", time(g.starts_at)),
        ("expires_at", time(g.expires_at)),
    ];
    if let Some(at) = g.revoked_at {
        fields.push(("revoked_at", time(at)));
        fields.push(("revoked_by", g.revoked_by.clone().unwrap_or_default()));
        fields.push(("revoke_reason", g.revoke_reason.clone().unwrap_or_default()));
    }
    render_fields(&fields)
}

/// The one-time token and the command to connect with it: the end of `grant issue` and of
/// `request token`.
pub fn render_token_once(token: &str, psql: &str) -> String {
    format!(
        "\nToken (shown only once: timebox does not keep it and cannot show it again):\n  {}\n\n\
         Connect with:\n  {}\n",
        sanitize(token),
        sanitize(psql)
    )
}

/// `grant issue`: the grant, its one-time token and the command to connect with it.
pub fn render_issued(issued: &IssuedGrant) -> String {
    let g = &issued.view.grant;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Issued grant {} for {} on {} (role {}): {}, expires at {}.",
        sanitize(&g.id),
        sanitize(&g.user),
        sanitize(&g.target),
        sanitize(&g.role),
        issued.view.status.as_str(),
        time(g.expires_at)
    );
    if issued.view.status == crate::grants::GrantStatus::Pending {
        let _ = writeln!(out, "It starts at {}.", time(g.starts_at));
    }
    out.push_str(&render_token_once(&issued.token, &issued.connect.psql));
    out
}

/// `grant extend`.
pub fn render_extended(v: &GrantView) -> String {
    format!(
        "Extended grant {} ({} on {}, role {}): now expires at {}; live sessions keep going.\n",
        sanitize(&v.grant.id),
        sanitize(&v.grant.user),
        sanitize(&v.grant.target),
        sanitize(&v.grant.role),
        time(v.grant.expires_at)
    )
}

/// `grant revoke`: what was revoked.
pub fn render_revoked(view: &GrantView) -> String {
    let g = &view.grant;
    format!(
        "Revoked grant {} ({} on {}, role {}); its live sessions are being closed.\n",
        sanitize(&g.id),
        sanitize(&g.user),
        sanitize(&g.target),
        sanitize(&g.role)
    )
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::{Grant, GrantStatus};

    fn view(id: &str, user: &str, reason: &str, status: GrantStatus) -> GrantView {
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        GrantView {
            grant: Grant {
                id: id.into(),
                user: user.into(),
                target: "shop".into(),
                role: "read".into(),
                reason: reason.into(),
                created_by: "ops".into(),
                created_at: t0,
                starts_at: t0,
                expires_at: t0 + chrono::Duration::minutes(30),
                revoked_at: None,
                revoked_by: None,
                revoke_reason: None,
            },
            status,
            break_glass: false,
        }
    }

    #[test]
    fn table_columns_are_aligned() {
        let text = render_grant_table(&[
            view("g_1", "alice", "incident 42", GrantStatus::Active),
            view("g_22", "bartholomew", "migration", GrantStatus::Revoked),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("ID    USER         TARGET  ROLE  STATUS   EXPIRES_AT"),
            "{text}"
        );
        assert_eq!(
            lines[1],
            "g_1   alice        shop    read  active   2026-01-01T00:30:00Z  incident 42"
        );
        assert_eq!(
            lines[2],
            "g_22  bartholomew  shop    read  revoked  2026-01-01T00:30:00Z  migration"
        );
        let status_col = lines[0].find("STATUS").unwrap();
        assert!(lines
            .iter()
            .all(|l| l[status_col..].starts_with(|c: char| c.is_ascii_alphabetic())));
    }

    #[test]
    fn table_cells_are_sanitized_and_long_reasons_truncated() {
        let text = render_grant_table(&[view(
            "g_1",
            "alice",
            &format!("a\nb\x1b[31m{}", "x".repeat(100)),
            GrantStatus::Active,
        )]);
        assert_eq!(
            text.lines().count(),
            2,
            "a newline in a reason must not break the table"
        );
        assert!(!text.contains('\x1b'), "no terminal escapes");
        assert!(text.lines().nth(1).unwrap().ends_with('…'));
        assert_eq!(render_grant_table(&[]), "no grants\n");
    }

    /// See: issue 17: break-glass grants, "flagged everywhere", looked like any other in
    /// `grant list` and `grant show`.
    #[test]
    fn break_glass_grants_are_flagged_in_list_and_show() {
        let mut bg = view("g_1", "alice", "prod down", GrantStatus::Active);
        bg.break_glass = true;
        let plain = view("g_2", "bob", "migration", GrantStatus::Active);
        let table = render_grant_table(&[bg.clone(), plain.clone()]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[1].contains("active, break-glass"), "{table}");
        assert!(!lines[2].contains("break-glass"), "{table}");
        assert!(
            render_grant_details(&bg).contains("break_glass  yes"),
            "{}",
            render_grant_details(&bg)
        );
        assert!(render_grant_details(&plain).contains("break_glass  no"));
    }

    #[test]
    fn details_show_revocation_only_when_revoked() {
        let mut v = view("g_1", "alice", "incident", GrantStatus::Active);
        let text = render_grant_details(&v);
        assert!(text.contains("status       active"), "{text}");
        assert!(!text.contains("revoked_by"));
        v.grant.revoked_at = Some(v.grant.starts_at);
        v.grant.revoked_by = Some("bob".into());
        v.status = GrantStatus::Revoked;
        assert!(render_grant_details(&v).contains("revoked_by     bob"));
    }

    #[test]
    fn issued_output_has_token_once_notice_and_psql() {
        let issued = IssuedGrant {
            view: view("g_1", "alice", "incident", GrantStatus::Active),
            token: "tbx_secret".into(),
            connect: ConnectInfo {
                host: "127.0.0.1".into(),
                port: 6432,
                dbname: "shop".into(),
                user: "alice".into(),
                sslmode: "require".into(),
                psql: "PGPASSWORD='tbx_secret' psql \"host=127.0.0.1 port=6432\"".into(),
            },
        };
        let text = render_issued(&issued);
        assert!(
            text.contains("g_1") && text.contains("2026-01-01T00:30:00Z"),
            "{text}"
        );
        assert!(text.contains("shown only once"));
        assert!(text.contains("\n  tbx_secret\n"));
        assert!(text.contains("PGPASSWORD='tbx_secret' psql"));
    }
}
