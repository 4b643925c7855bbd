//! `timebox request create|list|show|approve|deny|token`, `timebox grant extend` and
//! `timebox session list|kill`: the admin API's `/v1/requests`, `/v1/grants/{id}/extend` and
//! `/v1/sessions` as commands, with tables for people and `--json` for scripts.
//!
//! Where it sits: under [`crate::cli`], called by `main.rs`. HTTP and rendering are separate so each
//! is testable on its own. The only token it ever prints is the one-time grant token of
//! `request token` (or `request create --break-glass`).

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::Method;
use serde::Serialize;

use super::{render_table, sanitize, truncate, AdminClient, ApiResponse, CliError, GrantView};
pub use crate::admin::requests::{RequestList, RequestToken, RequestView};
pub use crate::admin::sessions::{SessionList, SessionView};
pub use crate::grants::requests::NewAccessRequest;

/// Longest reason shown in a table cell.
const TABLE_REASON_CHARS: usize = 40;

/// Filters of `request list`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RequestListFilter {
    pub requester: Option<String>,
    pub target: Option<String>,
    pub status: Option<String>,
    pub limit: Option<usize>,
}

impl AdminClient {
    /// `POST /v1/requests`.
    pub async fn request_create(&self, req: &NewAccessRequest) -> Result<ApiResponse<RequestView>, CliError> {
        self.call(Method::POST, &["v1", "requests"], &[], Some(req)).await
    }

    /// `GET /v1/requests`.
    pub async fn request_list(&self, f: &RequestListFilter) -> Result<ApiResponse<RequestList>, CliError> {
        let query: Vec<(&str, String)> = [
            ("requester", f.requester.clone()),
            ("target", f.target.clone()),
            ("status", f.status.clone()),
            ("limit", f.limit.map(|n| n.to_string())),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        self.call::<(), _>(Method::GET, &["v1", "requests"], &query, None)
            .await
    }

    /// `GET /v1/requests/{id}`.
    pub async fn request_show(&self, id: &str) -> Result<ApiResponse<RequestView>, CliError> {
        self.call::<(), _>(Method::GET, &["v1", "requests", id], &[], None)
            .await
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
        self.call(Method::POST, &["v1", "requests", id, action], &[], Some(&body))
            .await
    }

    /// `POST /v1/requests/{id}/token`.
    pub async fn request_token(&self, id: &str) -> Result<ApiResponse<RequestToken>, CliError> {
        self.call::<(), _>(Method::POST, &["v1", "requests", id, "token"], &[], None)
            .await
    }

    /// `POST /v1/grants/{id}/extend`.
    pub async fn extend(
        &self,
        id: &str,
        ttl: &str,
        reason: Option<&str>,
    ) -> Result<ApiResponse<GrantView>, CliError> {
        let body = serde_json::json!({ "ttl": ttl, "reason": reason });
        self.call(Method::POST, &["v1", "grants", id, "extend"], &[], Some(&body))
            .await
    }

    /// `GET /v1/sessions`.
    pub async fn session_list(&self) -> Result<ApiResponse<SessionList>, CliError> {
        self.call::<(), _>(Method::GET, &["v1", "sessions"], &[], None)
            .await
    }

    /// `DELETE /v1/sessions/{id}`.
    pub async fn session_kill(&self, id: &str, reason: &str) -> Result<ApiResponse<SessionView>, CliError> {
        let body = serde_json::json!({ "reason": reason });
        self.call(Method::DELETE, &["v1", "sessions", id], &[], Some(&body))
            .await
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `request list`.
pub fn render_request_table(requests: &[RequestView]) -> String {
    if requests.is_empty() {
        return "no requests\n".to_owned();
    }
    let rows: Vec<Vec<String>> = requests
        .iter()
        .map(|v| {
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
        })
        .collect();
    render_table(
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
        &rows,
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
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in fields {
        let _ = writeln!(out, "{key:<width$}  {}", sanitize(&value));
    }
    out
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
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Token (shown only once: timebox does not keep it and cannot show it again):"
    );
    let _ = writeln!(out, "  {}", sanitize(&t.token));
    let _ = writeln!(out);
    let _ = writeln!(out, "Connect with:");
    let _ = writeln!(out, "  {}", sanitize(&t.connect.psql));
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

/// `session list`.
pub fn render_session_table(sessions: &[SessionView]) -> String {
    if sessions.is_empty() {
        return "no live sessions\n".to_owned();
    }
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
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
        })
        .collect();
    render_table(
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
        &rows,
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
    use crate::grants::requests::{AccessRequest, Approval, RequestStatus};

    #[test]
    fn request_table_and_details_show_status_and_approvals() {
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let r = AccessRequest {
            id: "r_1".into(),
            requester: "alice".into(),
            target: "shop".into(),
            role: "admin".into(),
            ttl: "30m".into(),
            reason: "migrate\norders".into(),
            ticket: Some("INC-1".into()),
            break_glass: false,
            created_at: t0,
            review_deadline: t0 + chrono::Duration::hours(1),
            approvals_required: 2,
            approvals: vec![Approval {
                by: "bob".into(),
                reason: "ok".into(),
                at: t0,
            }],
            state: RequestStatus::Pending,
            decided_at: None,
            denied_by: None,
            deny_reason: None,
            grant_id: None,
            token_fetched_at: None,
        };
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
        assert_eq!(render_session_table(&[]), "no live sessions\n");
    }
}
