//! `timebox audit search|tail|verify|head`: the admin API's `/v1/audit` as commands, and the
//! renderings an auditor reads (a table per record, the verification verdict, the head to anchor).
//!
//! Where it sits: under [`crate::cli`], dispatched from `main.rs`. It reads through the admin API,
//! except `verify --db` / `head --db`, which open an audit database file read-only (offline
//! auditing). Its filter flags become the one [`AuditFilter`] the API and the SQL side use. It must
//! never write to the trail.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::builder::PossibleValuesParser;
use clap::{Args, Subcommand};

use super::client::{AdminClient, ApiArgs, ApiResponse};
use super::render::{sanitize, truncate, Format, Printer};
use super::{report, CliError};
use crate::audit::{AuditFilter, AuditRecord, Head, Order, Page, VerifyReport};

/// Longest detail shown in a table cell (`--json` has everything).
const TABLE_DETAIL_CHARS: usize = 100;
/// The largest page the API serves (`audit tail` asks for at most this many).
const MAX_PAGE: usize = crate::audit::query::MAX_LIMIT;

/// `timebox audit …`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub command: AuditCommand,
}

/// Filters shared by `audit search` and `audit tail`: the flags of [`AuditFilter`]'s fields.
#[derive(Debug, Clone, Args)]
pub struct AuditFilterArgs {
    /// Only records of this PostgreSQL user.
    #[arg(long)]
    pub user: Option<String>,
    /// Only records of this grant id.
    #[arg(long)]
    pub grant: Option<String>,
    /// Only records on this target.
    #[arg(long)]
    pub target: Option<String>,
    /// Only records of this session id.
    #[arg(long)]
    pub session: Option<String>,
    /// Only statements of this class (read, write, ddl, admin, …).
    #[arg(long)]
    pub class: Option<String>,
    /// Only statements with this decision.
    #[arg(long, value_parser = PossibleValuesParser::new(["allow", "deny"]))]
    pub decision: Option<String>,
    /// Only records of this kind.
    #[arg(long, value_parser = PossibleValuesParser::new(crate::audit::event::KINDS))]
    pub kind: Option<String>,
    /// Only statements whose text contains this (case-insensitive).
    #[arg(long)]
    pub contains: Option<String>,
    /// Only records of this instance (fleet-wide reads, PostgreSQL store).
    #[arg(long)]
    pub instance: Option<String>,
}

impl From<AuditFilterArgs> for AuditFilter {
    fn from(a: AuditFilterArgs) -> AuditFilter {
        AuditFilter {
            user: a.user,
            grant: a.grant,
            target: a.target,
            session: a.session,
            class: a.class,
            decision: a.decision,
            kind: a.kind,
            contains: a.contains,
            instance: a.instance,
            ..AuditFilter::default()
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
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

/// Runs one `audit` command. `verify` exits 1 when a record does not match and 2 when it could not
/// check; the others 1 on any error.
pub async fn run(args: AuditArgs) -> ExitCode {
    match args.command {
        AuditCommand::Verify {
            db,
            expect_head,
            json,
        } => verify(&args.api, db, expect_head, json).await,
        AuditCommand::Head { db: Some(path), json } => match crate::audit::head_of_file(&path) {
            Ok(head) => {
                Printer::json_if(json).value(&head, render_head);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                ExitCode::FAILURE
            }
        },
        AuditCommand::Head { db: None, json } => report(head(&args.api, json).await),
        AuditCommand::Search {
            filter,
            since,
            until,
            limit,
            cursor,
            json,
        } => report(search(&args.api, filter, [since, until], limit, cursor, json).await),
        AuditCommand::Tail {
            filter,
            lines,
            follow,
            json,
        } => report(tail(&args.api, filter.into(), lines, follow, json).await),
    }
}

/// `audit verify`, from a file (`--db`) or through the API.
async fn verify(api: &ApiArgs, db: Option<PathBuf>, expect_head: Option<String>, json: bool) -> ExitCode {
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
            crate::audit::verify_file(&path, &anchors).map_err(|e| format!("{}: {e}", path.display()))
        }
        None => match api.client() {
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
            Printer::json_if(json).value(&report, render_verify_report);
            if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    }
}

async fn head(api: &ApiArgs, json: bool) -> Result<(), CliError> {
    let head = api.client()?.audit_head().await?;
    Printer::json_if(json).answer(&head, render_head);
    Ok(())
}

/// `audit search`: one page, newest first, and the cursor of the next.
async fn search(
    api: &ApiArgs,
    filter: AuditFilterArgs,
    [since, until]: [Option<String>; 2],
    limit: usize,
    cursor: Option<u64>,
    json: bool,
) -> Result<(), CliError> {
    let client = api.client()?;
    if limit == 0 {
        // A 0 in the filter means "the API's default": refuse it here as the API refuses limit=0.
        return Err(CliError::InvalidArgument(format!(
            "--limit: 0 is out of range (1..={MAX_PAGE})"
        )));
    }
    let now = Utc::now();
    let time = |flag: &str, v: Option<String>| {
        v.map(|s| parse_time_arg(&s, now).map_err(|e| CliError::InvalidArgument(format!("{flag}: {e}"))))
            .transpose()
    };
    let filter = AuditFilter {
        since: time("--since", since)?,
        until: time("--until", until)?,
        limit,
        cursor,
        ..filter.into()
    };
    let page = client.audit_search(&filter).await?;
    Printer::json_if(json).answer(&page, |page| {
        let mut text = render_audit_table(&page.events);
        if let Some(next) = page.next_cursor {
            let _ = writeln!(text, "more: --cursor {next}");
        }
        text
    });
    Ok(())
}

/// `audit tail`: the latest `lines` records oldest first; with `follow`, every new one after them,
/// polled every second until Ctrl-C.
async fn tail(
    api: &ApiArgs,
    filter: AuditFilter,
    lines: usize,
    follow: bool,
    json: bool,
) -> Result<(), CliError> {
    let client = api.client()?;
    let printer = Printer::new(if json { Format::JsonLines } else { Format::Text });
    let latest = AuditFilter {
        limit: lines.clamp(1, MAX_PAGE),
        ..filter.clone()
    };
    let mut records = client.audit_search(&latest).await?.body.events;
    records.reverse();
    // Fleet-wide reads page by the central table's cursor, an instance's by seq.
    let position = |r: &AuditRecord| r.cursor.unwrap_or(r.seq);
    let mut last = records.last().map(position).unwrap_or(0);
    printer.values(&records, render_audit_table);
    if !follow {
        return Ok(());
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        loop {
            let newer = AuditFilter {
                order: Order::Asc,
                cursor: Some(last),
                limit: MAX_PAGE,
                ..filter.clone()
            };
            let page = client.audit_search(&newer).await?.body;
            if let Some(r) = page.events.last() {
                last = position(r);
            }
            printer.values(&page.events, render_audit_lines);
            if page.next_cursor.is_none() {
                break;
            }
        }
    }
}

impl AdminClient {
    /// `GET /v1/audit`.
    pub async fn audit_search(&self, filter: &AuditFilter) -> Result<ApiResponse<Page>, CliError> {
        self.get(&["v1", "audit"], filter).await
    }

    /// `GET /v1/audit/verify`, also checked against `anchor` (a head noted earlier) if given.
    pub async fn audit_verify(&self, anchor: Option<&Head>) -> Result<ApiResponse<VerifyReport>, CliError> {
        let query = serde_json::json!({ "anchor": anchor.map(|a| a.to_string()) });
        self.get(&["v1", "audit", "verify"], &query).await
    }

    /// `GET /v1/audit/head`.
    pub async fn audit_head(&self) -> Result<ApiResponse<Head>, CliError> {
        self.get(&["v1", "audit", "head"], &()).await
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

/// An outcome's `returned` (roles with quotas or masks): rows and bytes, the quota that stopped
/// it, the masked columns of its results.
fn write_returned(s: &mut String, r: &AuditRecord) {
    let Some(returned) = r.payload.get("returned").filter(|v| v.is_object()) else {
        return;
    };
    let n = |k: &str| returned.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    let _ = write!(s, "; returned {} rows, {} B", n("rows"), n("bytes"));
    if let Some(stop) = returned.get("quota_stop").and_then(|v| v.as_str()) {
        let _ = write!(s, ", stopped by {stop}");
    }
    let masked: Vec<String> = returned
        .get("masked")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .map(|m| {
            let text = |k: &str| m.get(k).and_then(|v| v.as_str()).unwrap_or("?");
            format!("{} ({})", text("column"), text("method"))
        })
        .collect();
    if !masked.is_empty() {
        let _ = write!(s, "; masked {}", masked.join(", "));
    }
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
            let mut s = format!(
                "#{} {result} in {:.1} ms",
                f("statement_id"),
                f("duration_us").parse::<f64>().unwrap_or(0.0) / 1000.0
            );
            write_returned(&mut s, r);
            s
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
        "upstream_end" => format!(
            "upstream query {} {:.1} ms after the session end",
            f("outcome"),
            f("after_us").parse::<f64>().unwrap_or(0.0) / 1000.0
        ),
        "auth_failure" => format!("{} from {}", f("reason"), f("client_addr")),
        "grant_issued" => format!(
            "{}grant {} role {} by {} until {}: {}",
            break_glass_flag(r),
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
        "access_request" => {
            let mut s = format!(
                "{}request {} {} by {}: {} on {} for {}",
                break_glass_flag(r),
                f("request_id"),
                f("action"),
                f("actor"),
                f("role"),
                f("target"),
                f("ttl")
            );
            if let Some(ticket) = r.field("ticket") {
                let _ = write!(s, " [{ticket}]");
            }
            if let Some(grant) = r.field("grant_id") {
                let _ = write!(s, " → grant {grant}");
            }
            if let Some(reason) = r.field("reason").filter(|r| !r.is_empty()) {
                let _ = write!(s, " ({reason})");
            }
            s
        }
        "admin_token_issued" => {
            let roles: Vec<&str> = r.payload["roles"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            let until = r.field("expires_at").unwrap_or_else(|| "revoked".into());
            format!(
                "admin token {} ({}) issued by {}, until {until}",
                f("name"),
                roles.join(", "),
                f("created_by")
            )
        }
        "admin_token_revoked" => format!("admin token {} revoked by {}", f("name"), f("revoked_by")),
        "audit_retention" => format!(
            "retention on {}: records before {} removed ({} local, partitions {})",
            f("instance"),
            f("cut"),
            f("pruned_local"),
            r.payload
                .get("dropped_partitions")
                .map_or_else(String::new, |v| v.to_string())
        ),
        _ => r.payload.to_string(),
    };
    truncate(&sanitize(&text), TABLE_DETAIL_CHARS)
}

/// `BREAK-GLASS ` for records of self-approved emergency access (flagged everywhere), else nothing.
fn break_glass_flag(r: &AuditRecord) -> &'static str {
    if r.payload.get("break_glass").and_then(|v| v.as_bool()) == Some(true) {
        "BREAK-GLASS "
    } else {
        ""
    }
}

/// Columns of the audit table and their widths (all but the last, DETAIL). Fixed, not fitted to the
/// rows, so that the rows `tail --follow` prints one poll at a time line up with the first page's
/// header: SEQ up to a million records, TS as the trail writes it (microseconds), the longest kind
/// (`statement_outcome`), a session id (`s_` + 16 hex digits). A longer cell pushes its row right.
const AUDIT_COLUMNS: [(&str, usize); 6] = [
    ("SEQ", 6),
    ("TS", 27),
    ("KIND", 17),
    ("USER", 12),
    ("SESSION", 18),
    ("DETAIL", 0),
];

/// One line of the audit table: cells padded to [`AUDIT_COLUMNS`], two spaces apart.
fn audit_line(cells: &[String]) -> String {
    let mut line = String::new();
    for (i, (cell, (_, width))) in cells.iter().zip(AUDIT_COLUMNS).enumerate() {
        if i + 1 == AUDIT_COLUMNS.len() {
            line.push_str(cell);
        } else {
            let _ = write!(line, "{cell:<width$}  ");
        }
    }
    line.push('\n');
    line
}

/// `audit search` / `audit tail`: one aligned row per record.
pub fn render_audit_table(records: &[AuditRecord]) -> String {
    if records.is_empty() {
        return "no audit records\n".into();
    }
    let header: Vec<String> = AUDIT_COLUMNS.iter().map(|(h, _)| (*h).to_owned()).collect();
    let mut out = audit_line(&header);
    out.push_str(&render_audit_lines(records));
    out
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

/// Rows for `tail --follow` after the first page: no header, the same fixed columns.
pub fn render_audit_lines(records: &[AuditRecord]) -> String {
    let mut out = String::new();
    for r in records {
        out.push_str(&audit_line(&audit_row(r)));
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
            let at = match &bad.instance {
                Some(instance) => format!("instance {} record {}", sanitize(instance), bad.seq),
                None => format!("record {}", bad.seq),
            };
            let _ = writeln!(out, "FAILED at {at}: {}", sanitize(&bad.problem));
            let _ = writeln!(
                out,
                "{} records; records before {} verified",
                report.records, bad.seq
            );
        }
    }
    if let Some(anchor) = &report.anchor {
        let _ = writeln!(out, "starts after the retention anchor {anchor}");
    }
    for i in &report.instances {
        let verdict = match &i.report.first_bad {
            None => "ok".to_owned(),
            Some(bad) => format!("FAILED at record {}", bad.seq),
        };
        let _ = writeln!(
            out,
            "instance {}: {verdict}, {} records, head {}",
            sanitize(&i.instance),
            i.report.records,
            i.report.head
        );
    }
    let _ = writeln!(out, "head {}", report.head);
    out
}

/// `audit head`: `SEQ:HASH`, the form `verify --expect-head` takes.
pub fn render_head(head: &Head) -> String {
    format!("{head}\n")
}

#[cfg(test)]
mod tests;
