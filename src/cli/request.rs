//! `timebox request create|list|show|approve|deny|token`: the admin API's `/v1/requests` as
//! commands, with tables for people and `--json` for scripts.
//!
//! Where it sits: under [`crate::cli`], dispatched from `main.rs`. HTTP (the [`AdminClient`]
//! methods here) and rendering (pure functions) are separate so each is testable on its own. The
//! only token it ever prints is the one-time grant token of `request token` (or `request create
//! --break-glass`).

use std::fmt::Write as _;

use clap::builder::PossibleValuesParser;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde::Serialize;

use super::client::{AdminClient, ApiArgs, ApiResponse};
use super::grant::render_token_once;
use super::render::{render_fields, render_rows, sanitize, time, truncate, Printer};
use super::CliError;
pub use crate::admin::requests::{RequestList, RequestToken, RequestView};
pub use crate::grants::requests::NewAccessRequest;

/// Longest reason shown in a table cell.
const TABLE_REASON_CHARS: usize = 40;

/// `timebox request …`.
#[derive(Debug, Args)]
pub struct RequestArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub command: RequestCommand,
}

#[derive(Debug, Subcommand)]
pub enum RequestCommand {
    /// Ask for access (as the principal of the admin token, which is the PostgreSQL user).
    Create {
        #[command(flatten)]
        request: CreateArgs,
        /// Print the API's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// List requests, newest first (a requester sees its own).
    List {
        #[command(flatten)]
        filter: RequestListFilter,
        /// Print the API's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Show one request.
    Show {
        /// The request id (r_…).
        id: String,
        /// Print the API's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Approve a request (approver or admin; never your own).
    Approve {
        /// The request id (r_…).
        id: String,
        /// Why you approve (optional; recorded in the audit trail).
        #[arg(long, default_value = "")]
        reason: String,
        /// Print the API's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Deny a request (approver or admin; never your own).
    Deny {
        /// The request id (r_…).
        id: String,
        /// Why you deny (required; the requester sees it, the audit trail records it).
        #[arg(long)]
        reason: String,
        /// Print the API's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Fetch the token of your approved request (once).
    Token {
        /// The request id (r_…).
        id: String,
        /// Print the API's JSON answer.
        #[arg(long)]
        json: bool,
    },
}

/// What `request create` asks for: the body of `POST /v1/requests`.
#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// The target database (as named in the config).
    #[arg(long)]
    pub target: String,
    /// The grant role (as named in the config).
    #[arg(long)]
    pub role: String,
    /// How long the access should last, e.g. 30m.
    #[arg(long)]
    pub ttl: String,
    /// Why the access is needed (required).
    #[arg(long)]
    pub reason: String,
    /// A ticket or incident reference.
    #[arg(long)]
    pub ticket: Option<String>,
    /// Emergency: self-approve at once (roles with break_glass = true; TTL capped; loudly flagged).
    /// Prints the token.
    #[arg(long)]
    pub break_glass: bool,
}

impl From<CreateArgs> for NewAccessRequest {
    fn from(a: CreateArgs) -> NewAccessRequest {
        NewAccessRequest {
            target: a.target,
            role: a.role,
            ttl: a.ttl,
            reason: a.reason,
            ticket: a.ticket,
            break_glass: a.break_glass,
        }
    }
}

/// Filters of `request list`, sent as `GET /v1/requests` parameters.
#[derive(Debug, Clone, Default, Serialize, Args)]
pub struct RequestListFilter {
    /// Only requests by this requester.
    #[arg(long)]
    pub requester: Option<String>,
    /// Only requests for this target.
    #[arg(long)]
    pub target: Option<String>,
    /// Only requests in this state.
    #[arg(long, value_parser = PossibleValuesParser::new(["pending", "approved", "denied", "expired"]))]
    pub status: Option<String>,
    /// At most this many (newest first).
    #[arg(long)]
    pub limit: Option<usize>,
}

/// Runs one `request` command against the admin API.
pub async fn run(args: RequestArgs) -> Result<(), CliError> {
    let client = args.api.client()?;
    match args.command {
        RequestCommand::Create { request, json } => {
            let break_glass = request.break_glass;
            let created = client.request_create(&request.into()).await?;
            if let Some(note) = &created.body.note {
                // On stderr, so that --json output stays one document.
                eprintln!("note: {note}");
            }
            if break_glass {
                let token = client.request_token(&created.body.request.id).await?;
                Printer::json_if(json).answer(&token, render_request_token);
            } else {
                Printer::json_if(json).answer(&created, render_request_details);
            }
        }
        RequestCommand::List { filter, json } => {
            Printer::json_if(json).answer(&client.request_list(&filter).await?, |list| {
                render_request_table(&list.requests)
            });
        }
        RequestCommand::Show { id, json } => {
            Printer::json_if(json).answer(&client.request_show(&id).await?, render_request_details);
        }
        RequestCommand::Approve { id, reason, json } => {
            let reviewed = client.request_review(&id, true, &reason).await?;
            Printer::json_if(json).answer(&reviewed, render_request_details);
        }
        RequestCommand::Deny { id, reason, json } => {
            let reviewed = client.request_review(&id, false, &reason).await?;
            Printer::json_if(json).answer(&reviewed, render_request_details);
        }
        RequestCommand::Token { id, json } => {
            Printer::json_if(json).answer(&client.request_token(&id).await?, render_request_token);
        }
    }
    Ok(())
}

impl AdminClient {
    /// `POST /v1/requests`.
    pub async fn request_create(&self, req: &NewAccessRequest) -> Result<ApiResponse<RequestView>, CliError> {
        self.send(Method::POST, &["v1", "requests"], Some(req)).await
    }

    /// `GET /v1/requests`.
    pub async fn request_list(&self, f: &RequestListFilter) -> Result<ApiResponse<RequestList>, CliError> {
        self.get(&["v1", "requests"], f).await
    }

    /// `GET /v1/requests/{id}`.
    pub async fn request_show(&self, id: &str) -> Result<ApiResponse<RequestView>, CliError> {
        self.get(&["v1", "requests", id], &()).await
    }

    /// `POST /v1/requests/{id}/approve` or `/deny`.
    pub async fn request_review(
        &self,
        id: &str,
        approve: bool,
        reason: &str,
    ) -> Result<ApiResponse<RequestView>, CliError> {
        let action = if approve { "approve" } else { "deny" };
        let body = serde_json::json!({ "reason": reason });
        self.send(Method::POST, &["v1", "requests", id, action], Some(&body))
            .await
    }

    /// `POST /v1/requests/{id}/token`.
    pub async fn request_token(&self, id: &str) -> Result<ApiResponse<RequestToken>, CliError> {
        self.send(Method::POST, &["v1", "requests", id, "token"], None::<&()>)
            .await
    }
}

/// `request list`.
pub fn render_request_table(requests: &[RequestView]) -> String {
    render_rows(
        requests,
        "no requests",
        &[
            "ID",
            "REQUESTER",
            "TARGET",
            "ROLE",
            "TTL",
            "STATUS",
            "APPROVALS",
            "REASON",
        ],
        |v| {
            let r = &v.request;
            vec![
                sanitize(&r.id),
                sanitize(&r.requester),
                sanitize(&r.target),
                sanitize(&r.role),
                sanitize(&r.ttl),
                format!(
                    "{}{}",
                    v.status.as_str(),
                    if r.break_glass { " (break-glass)" } else { "" }
                ),
                format!("{}/{}", r.approvals.len(), r.approvals_required),
                truncate(&sanitize(&r.reason), TABLE_REASON_CHARS),
            ]
        },
    )
}

/// `request show` (and the answer of create/approve/deny): every field, one per line.
pub fn render_request_details(v: &RequestView) -> String {
    let r = &v.request;
    let mut fields: Vec<(&str, String)> = vec![
        ("id", r.id.clone()),
        ("status", v.status.as_str().to_owned()),
        ("requester", r.requester.clone()),
        ("target", r.target.clone()),
        ("role", r.role.clone()),
        ("ttl", r.ttl.clone()),
        ("reason", r.reason.clone()),
        ("ticket", r.ticket.clone().unwrap_or_default()),
        ("break_glass", r.break_glass.to_string()),
        ("created_at", time(r.created_at)),
        ("review_deadline", time(r.review_deadline)),
        (
            "approvals",
            format!("{} of {}", r.approvals.len(), r.approvals_required),
        ),
    ];
    for a in &r.approvals {
        fields.push((
            "approved_by",
            format!("{} at {} ({})", a.by, time(a.at), a.reason),
        ));
    }
    if let Some(by) = &r.denied_by {
        fields.push(("denied_by", by.clone()));
        fields.push(("deny_reason", r.deny_reason.clone().unwrap_or_default()));
    }
    if let Some(g) = &r.grant_id {
        fields.push(("grant_id", g.clone()));
    }
    render_fields(&fields)
}

/// `request token`: the one-time token and the command to connect with it.
pub fn render_request_token(t: &RequestToken) -> String {
    let g = &t.grant.grant;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Grant {} for {} on {} (role {}){}, expires at {}.",
        sanitize(&g.id),
        sanitize(&g.user),
        sanitize(&g.target),
        sanitize(&g.role),
        if t.grant.break_glass { " [BREAK-GLASS]" } else { "" },
        time(g.expires_at)
    );
    out.push_str(&render_token_once(&t.token, &t.connect.psql));
    out
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::grants::requests::Approval;

    #[test]
    fn request_table_and_details_show_status_and_approvals() {
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut r = crate::grants::requests::tests::pending_request("r_1", t0, 2);
        r.role = "admin".into();
        r.reason = "migrate\norders".into();
        r.approvals = vec![Approval {
            by: "bob".into(),
            reason: "ok".into(),
            at: t0,
        }];
        let v = RequestView::at(r, t0);
        let table = render_request_table(std::slice::from_ref(&v));
        assert_eq!(table.lines().count(), 2, "{table}");
        assert!(
            table.contains("pending") && table.contains("1/2") && table.contains("migrate orders"),
            "{table}"
        );
        let details = render_request_details(&v);
        assert!(
            details.contains("approved_by") && details.contains("bob at 2026-01-01T00:00:00Z"),
            "{details}"
        );
        assert_eq!(render_request_table(&[]), "no requests\n");
    }
}
