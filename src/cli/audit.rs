//! `timebox audit search|tail|verify|head`: the admin API's `/v1/audit` as commands, and the
//! renderings an auditor reads (a table per record, the verification verdict, the head to anchor).
//!
//! Where it sits: under [`crate::cli`], called by `main.rs`. It reads through the admin API, except
//! `verify --db` / `head --db`, which open an audit database file read-only (offline auditing). It
//! must never write to the trail.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use reqwest::Method;

use super::{sanitize, truncate, AdminClient, ApiResponse, CliError};
use crate::audit::{AuditRecord, Head, Page, VerifyReport};

/// Longest detail shown in a table cell (`--json` has everything).
const TABLE_DETAIL_CHARS: usize = 100;

/// Filters of `audit search` / `audit tail`, sent as `GET /v1/audit` parameters.
#[derive(Debug, Clone, Default)]
pub struct AuditSearch {
    pub user: Option<String>,
    pub grant: Option<String>,
    pub target: Option<String>,
    pub session: Option<String>,
    pub class: Option<String>,
    pub decision: Option<String>,
    pub kind: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub contains: Option<String>,
    pub cursor: Option<u64>,
    pub limit: Option<usize>,
    /// `asc` or `desc` (default).
    pub order: Option<String>,
}

impl AuditSearch {
    fn query(&self) -> Vec<(&'static str, String)> {
        let time =
            |t: &Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
        let pairs = [
            ("user", self.user.clone()),
            ("grant", self.grant.clone()),
            ("target", self.target.clone()),
            ("session", self.session.clone()),
            ("class", self.class.clone()),
            ("decision", self.decision.clone()),
            ("kind", self.kind.clone()),
            ("since", time(&self.since)),
            ("until", time(&self.until)),
            ("contains", self.contains.clone()),
            ("cursor", self.cursor.map(|c| c.to_string())),
            ("limit", self.limit.map(|n| n.to_string())),
            ("order", self.order.clone()),
        ];
        pairs.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect()
    }
}

impl AdminClient {
    /// `GET /v1/audit`.
    pub async fn audit_search(&self, search: &AuditSearch) -> Result<ApiResponse<Page>, CliError> {
        self.call::<(), _>(Method::GET, &["v1", "audit"], &search.query(), None)
            .await
    }

    /// `GET /v1/audit/verify`, also checked against `anchor` (a head noted earlier) if given.
    pub async fn audit_verify(&self, anchor: Option<&Head>) -> Result<ApiResponse<VerifyReport>, CliError> {
        let query: Vec<(&str, String)> = anchor.map(|a| ("anchor", a.to_string())).into_iter().collect();
        self.call::<(), _>(Method::GET, &["v1", "audit", "verify"], &query, None)
            .await
    }

    /// `GET /v1/audit/head`.
    pub async fn audit_head(&self) -> Result<ApiResponse<Head>, CliError> {
        self.call::<(), _>(Method::GET, &["v1", "audit", "head"], &[], None)
            .await
    }
}

/// A time argument: RFC 3339 (`2026-01-31T14:00:00Z`) or a duration ago (`90m`, `24h`, `7days`).
pub fn parse_time_arg(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let ago = humantime::parse_duration(s).map_err(|_| {
        format!("{s:?} is neither an RFC 3339 time (2026-01-31T14:00:00Z) nor a duration ago (24h)")
    })?;
    chrono::Duration::from_std(ago)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .ok_or_else(|| format!("{s:?} is too far back"))
}

/// One line of detail per kind, for the table.
pub fn record_detail(r: &AuditRecord) -> String {
    let f = |name: &str| r.field(name).unwrap_or_default();
    let text = match r.kind.as_str() {
        "statement" => {
            let mut s = format!("{} {}: {}", f("decision"), f("class"), f("sql"));
            if r.field("decision").as_deref() == Some("deny") {
                if let Some(reason) = r.field("reason") {
                    let _ = write!(s, " — {reason}");
                }
            }
            s
        }
        "statement_outcome" => {
            let result = match (r.field("sqlstate"), r.field("command_tag")) {
                (Some(state), _) if state != "00000" => format!("error {state}"),
                (_, Some(tag)) => tag,
                _ => "done".into(),
            };
            format!(
                "#{} {result} in {:.1} ms",
                f("statement_id"),
                f("duration_us").parse::<f64>().unwrap_or(0.0) / 1000.0
            )
        }
        "session_start" => format!(
            "grant {} role {} from {}{}",
            f("grant_id"),
            f("role"),
            f("client_addr"),
            r.field("application_name")
                .map(|a| format!(" ({a})"))
                .unwrap_or_default()
        ),
        "session_end" => format!(
            "{}: {} statements, {} B in, {} B out",
            f("reason"),
            f("statements"),
            f("bytes_from_client"),
            f("bytes_to_client")
        ),
        "auth_failure" => format!("{} from {}", f("reason"), f("client_addr")),
        "grant_issued" => format!(
            "grant {} role {} by {} until {}: {}",
            f("grant_id"),
            f("role"),
            f("created_by"),
            f("expires_at"),
            f("reason")
        ),
        "grant_revoked" => format!("grant {} by {}: {}", f("grant_id"), f("revoked_by"), f("reason")),
        "grant_extended" => format!(
            "grant {} until {} by {}",
            f("grant_id"),
            f("expires_at"),
            f("extended_by")
        ),
        _ => r.payload.to_string(),
    };
    truncate(&sanitize(&text), TABLE_DETAIL_CHARS)
}

/// `audit search` / `audit tail`: one aligned row per record.
pub fn render_audit_table(records: &[AuditRecord]) -> String {
    if records.is_empty() {
        return "no audit records\n".to_owned();
    }
    let rows: Vec<Vec<String>> = records.iter().map(audit_row).collect();
    super::render_table(&["SEQ", "TS", "KIND", "USER", "SESSION", "DETAIL"], &rows)
}

fn audit_row(r: &AuditRecord) -> Vec<String> {
    vec![
        r.seq.to_string(),
        sanitize(&r.ts),
        sanitize(&r.kind),
        sanitize(&r.field("user").unwrap_or_else(|| "-".into())),
        sanitize(&r.field("session_id").unwrap_or_else(|| "-".into())),
        record_detail(r),
    ]
}

/// Rows for `tail --follow` after the first page: no header, same columns (widths may differ).
pub fn render_audit_lines(records: &[AuditRecord]) -> String {
    let mut out = String::new();
    for r in records {
        out.push_str(&audit_row(r).join("  "));
        out.push('\n');
    }
    out
}

/// `audit verify`: the verdict first, then the head to anchor.
pub fn render_verify_report(report: &VerifyReport) -> String {
    let mut out = String::new();
    match &report.first_bad {
        None => {
            let _ = writeln!(out, "ok: {} records, the hash chain is intact", report.records);
        }
        Some(bad) => {
            let _ = writeln!(out, "FAILED at record {}: {}", bad.seq, sanitize(&bad.problem));
            let _ = writeln!(
                out,
                "{} records; records before {} verified",
                report.records, bad.seq
            );
        }
    }
    let _ = writeln!(out, "head {}", report.head);
    out
}

/// `audit head`: `SEQ:HASH`, the form `verify --expect-head` takes.
pub fn render_head(head: &Head) -> String {
    format!("{head}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::BadRecord;
    use serde_json::json;

    fn record(seq: u64, kind: &str, payload: serde_json::Value) -> AuditRecord {
        AuditRecord {
            hash: "ab".repeat(32),
            kind: kind.into(),
            payload,
            prev_hash: "00".repeat(32),
            seq,
            ts: "2026-01-01T00:00:00.000000Z".into(),
        }
    }

    #[test]
    fn table_rows_show_who_and_what() {
        let text = render_audit_table(&[
            record(
                2,
                "statement",
                json!({"user": "alice", "session_id": "s_1", "decision": "deny", "class": "write",
                       "sql": "DELETE FROM t\nWHERE 1", "reason": "role read may not write"}),
            ),
            record(
                1,
                "statement_outcome",
                json!({"session_id": "s_1", "statement_id": 1, "command_tag": "SELECT 3",
                       "sqlstate": null, "duration_us": 1500}),
            ),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("SEQ  TS"), "{text}");
        assert!(
            lines[1].ends_with("deny write: DELETE FROM t WHERE 1 — role read may not write"),
            "{text}"
        );
        assert!(lines[1].contains("alice"), "{text}");
        assert!(lines[2].ends_with("#1 SELECT 3 in 1.5 ms"), "{text}");
        assert!(lines[2].contains("  -  "), "no user on an outcome: {text}");
        assert_eq!(render_audit_table(&[]), "no audit records\n");
    }

    #[test]
    fn verify_report_says_ok_or_where_it_failed() {
        let head = Head {
            seq: 9,
            hash: "cd".repeat(32),
        };
        let ok = VerifyReport {
            ok: true,
            records: 9,
            head: head.clone(),
            first_bad: None,
        };
        assert!(render_verify_report(&ok).starts_with("ok: 9 records"));
        let bad = VerifyReport {
            ok: false,
            first_bad: Some(BadRecord {
                seq: 4,
                problem: "record 4 is missing (deleted)".into(),
            }),
            ..ok
        };
        let text = render_verify_report(&bad);
        assert!(
            text.starts_with("FAILED at record 4: record 4 is missing"),
            "{text}"
        );
        assert!(text.contains(&format!("head 9:{}", "cd".repeat(32))));
        assert_eq!(render_head(&head), format!("9:{}\n", "cd".repeat(32)));
    }

    #[test]
    fn time_arguments_are_absolute_or_ago() {
        let now = DateTime::parse_from_rfc3339("2026-01-02T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_time_arg("24h", now).unwrap().to_rfc3339(),
            "2026-01-01T00:00:00+00:00"
        );
        assert_eq!(
            parse_time_arg("2026-01-01T12:00:00+02:00", now)
                .unwrap()
                .to_rfc3339(),
            "2026-01-01T10:00:00+00:00"
        );
        assert!(parse_time_arg("yesterday", now).is_err());
    }

    #[test]
    fn search_parameters_are_sent_only_when_set() {
        let s = AuditSearch {
            user: Some("alice".into()),
            limit: Some(5),
            ..Default::default()
        };
        assert_eq!(
            s.query(),
            vec![("user", "alice".to_owned()), ("limit", "5".to_owned())]
        );
    }
}
