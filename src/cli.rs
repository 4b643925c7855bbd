//! The `timebox grant …` and `timebox admin-token new` commands: an HTTP client for the admin API
//! ([`AdminClient`]) and the functions that render its answers for a terminal.
//!
//! Where it sits: called by `main.rs` after clap has parsed the command line; it talks to a running
//! instance's admin API ([`crate::admin`]) and never touches the store directly. HTTP and rendering
//! are separate so each is testable on its own. It must never take the admin token as a plain
//! command-line value (it would show in `ps`): only from the environment or a file.

pub mod audit;
pub mod requests;
pub mod review;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rand::RngCore;
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use crate::admin::grants::{ConnectInfo, GrantList, GrantView, IssueRequest, IssuedGrant};
use crate::config::{PrincipalRole, Secret, PRINCIPAL_ROLES};
use crate::grants::token::sha256_hex;

/// Where the CLI looks for the admin API unless told otherwise.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9187";
/// Environment variable holding the admin API URL.
pub const ADMIN_URL_ENV: &str = "TIMEBOX_ADMIN_URL";
/// Environment variable holding the admin bearer token.
pub const ADMIN_TOKEN_ENV: &str = "TIMEBOX_ADMIN_TOKEN";
/// Prefix of admin tokens made by `timebox admin-token new`.
pub const ADMIN_TOKEN_PREFIX: &str = "tbxa_";
/// Longest reason shown in a table cell (the full text is in `grant show`).
const TABLE_REASON_CHARS: usize = 48;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("no admin token: set {ADMIN_TOKEN_ENV} or pass --admin-token-file PATH")]
    NoToken,
    #[error("cannot read the admin token file {}: {source}", path.display())]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the admin token file {} is empty", path.display())]
    EmptyTokenFile { path: PathBuf },
    #[error("{url:?} is not a usable admin API URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach the admin API at {url}: {detail}")]
    Unreachable {
        url: String,
        detail: String,
        #[source]
        source: reqwest::Error,
    },
    /// The API answered with its JSON error shape.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer from the admin API (HTTP {status}): {body}")]
    UnexpectedResponse { status: u16, body: String },
    #[error("request to the admin API failed: {0}")]
    Http(#[source] reqwest::Error),
    #[error("{0}")]
    InvalidArgument(String),
}

impl CliError {
    /// The API's error code, when the API answered with one.
    pub fn api_code(&self) -> Option<&str> {
        match self {
            CliError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// The admin token: from `--admin-token-file` if given, else from `$TIMEBOX_ADMIN_TOKEN`
/// (`env_value`). Surrounding whitespace (a trailing newline) is ignored.
pub fn resolve_token(file: Option<&Path>, env_value: Option<String>) -> Result<Secret, CliError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| CliError::TokenFile {
            path: path.to_owned(),
            source,
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(CliError::EmptyTokenFile {
                path: path.to_owned(),
            });
        }
        return Ok(Secret::new(token));
    }
    match env_value.as_deref().map(str::trim) {
        Some(token) if !token.is_empty() => Ok(Secret::new(token)),
        _ => Err(CliError::NoToken),
    }
}

/// An answer of the admin API: the JSON exactly as received (for `--json`) and its typed reading.
#[derive(Debug, Clone)]
pub struct ApiResponse<T> {
    pub raw: serde_json::Value,
    pub body: T,
}

/// Filters of `grant list`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ListFilter {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// A client for one instance's admin API, authenticated as one principal.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: Url,
    /// The base URL as the user wrote it, for messages.
    shown_url: String,
    token: Secret,
    http: reqwest::Client,
}

impl AdminClient {
    pub fn new(base_url: &str, token: Secret) -> Result<Self, CliError> {
        let bad = |reason: &str| CliError::BadUrl {
            url: base_url.to_owned(),
            reason: reason.to_owned(),
        };
        let base = Url::parse(base_url).map_err(|e| bad(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(bad("expected http://HOST:PORT or https://HOST:PORT"));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("timebox-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(CliError::Http)?;
        Ok(AdminClient {
            base,
            shown_url: base_url.to_owned(),
            token,
            http,
        })
    }

    /// `POST /v1/grants`.
    pub async fn issue(&self, req: &IssueRequest) -> Result<ApiResponse<IssuedGrant>, CliError> {
        self.call(Method::POST, &["v1", "grants"], &[], Some(req)).await
    }

    /// `GET /v1/grants`.
    pub async fn list(&self, filter: &ListFilter) -> Result<ApiResponse<GrantList>, CliError> {
        let mut query = Vec::new();
        for (key, value) in [
            ("user", filter.user.clone()),
            ("target", filter.target.clone()),
            ("status", filter.status.clone()),
            ("limit", filter.limit.map(|n| n.to_string())),
        ] {
            if let Some(v) = value {
                query.push((key, v));
            }
        }
        self.call::<(), _>(Method::GET, &["v1", "grants"], &query, None)
            .await
    }

    /// `GET /v1/grants/{id}`.
    pub async fn show(&self, id: &str) -> Result<ApiResponse<GrantView>, CliError> {
        self.call::<(), _>(Method::GET, &["v1", "grants", id], &[], None)
            .await
    }

    /// `POST /v1/grants/{id}/revoke`.
    pub async fn revoke(&self, id: &str, reason: &str) -> Result<ApiResponse<GrantView>, CliError> {
        let body = serde_json::json!({ "reason": reason });
        self.call(Method::POST, &["v1", "grants", id, "revoke"], &[], Some(&body))
            .await
    }

    /// The URL of `segments` under the base URL (each segment percent-encoded).
    pub fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<ApiResponse<T>, CliError> {
        let url = self.url(segments, query);
        let mut request = self.http.request(method, url).bearer_auth(self.token.expose());
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| self.transport_error(e))?;
        let raw = parse_answer(status, &text)?;
        let body = serde_json::from_value(raw.clone()).map_err(|e| CliError::UnexpectedResponse {
            status: status.as_u16(),
            body: format!("{e}: {}", excerpt(&text)),
        })?;
        Ok(ApiResponse { raw, body })
    }

    fn transport_error(&self, e: reqwest::Error) -> CliError {
        if e.is_connect() || e.is_timeout() {
            CliError::Unreachable {
                url: self.shown_url.clone(),
                detail: innermost_cause(&e),
                source: e,
            }
        } else {
            CliError::Http(e)
        }
    }
}

/// Reads an admin API answer: the JSON of a success, or the API's `{code, message}` as an error.
pub fn parse_answer(status: StatusCode, text: &str) -> Result<serde_json::Value, CliError> {
    let json: Option<serde_json::Value> = serde_json::from_str(text).ok();
    if status.is_success() {
        return json.ok_or_else(|| CliError::UnexpectedResponse {
            status: status.as_u16(),
            body: excerpt(text),
        });
    }
    let field = |name: &str| {
        json.as_ref()
            .and_then(|j| j.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    match (field("code"), field("message")) {
        (Some(code), Some(message)) => Err(CliError::Api {
            status: status.as_u16(),
            code,
            message,
        }),
        _ => Err(CliError::UnexpectedResponse {
            status: status.as_u16(),
            body: excerpt(text),
        }),
    }
}

/// The most specific description of a transport failure ("Connection refused (os error 111)").
fn innermost_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current = e;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

fn excerpt(text: &str) -> String {
    let text = sanitize(text.trim());
    if text.is_empty() {
        "(empty body)".to_owned()
    } else {
        truncate(&text, 200)
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering (pure).
// ---------------------------------------------------------------------------------------------

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Control characters (newlines, terminal escapes) from API text become spaces before printing.
fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max_chars.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// Rows of cells as aligned columns separated by two spaces; the last column is not padded.
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `grant list`: one aligned row per grant.
pub fn render_grant_table(grants: &[GrantView]) -> String {
    if grants.is_empty() {
        return "no grants\n".to_owned();
    }
    let rows: Vec<Vec<String>> = grants
        .iter()
        .map(|v| {
            let g = &v.grant;
            vec![
                sanitize(&g.id),
                sanitize(&g.user),
                sanitize(&g.target),
                sanitize(&g.role),
                v.status.as_str().to_owned(),
                time(g.expires_at),
                truncate(&sanitize(&g.reason), TABLE_REASON_CHARS),
            ]
        })
        .collect();
    render_table(
        &["ID", "USER", "TARGET", "ROLE", "STATUS", "EXPIRES_AT", "REASON"],
        &rows,
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
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in fields {
        let _ = writeln!(out, "{key:<width$}  {}", sanitize(&value));
    }
    out
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
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Token (shown only once: timebox does not keep it and cannot show it again):"
    );
    let _ = writeln!(out, "  {}", sanitize(&issued.token));
    let _ = writeln!(out);
    let _ = writeln!(out, "Connect with:");
    let _ = writeln!(out, "  {}", sanitize(&issued.connect.psql));
    out
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

/// Pretty JSON for `--json`.
pub fn render_json(value: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    text.push('\n');
    text
}

// ---------------------------------------------------------------------------------------------
// `timebox admin-token new`.
// ---------------------------------------------------------------------------------------------

/// A freshly made admin token and the config entry that admits it.
#[derive(Debug, Clone)]
pub struct NewAdminToken {
    pub name: String,
    pub roles: Vec<PrincipalRole>,
    pub token: Secret,
    pub sha256: String,
    /// The token's SCRAM-SHA-256 verifier in PostgreSQL's text form, for `timebox_audit`.
    pub scram: String,
}

/// A SCRAM-SHA-256 verifier of an admin token (random salt, PostgreSQL's 4,096 iterations), in
/// the text form of `[[admin.tokens]] scram`: what `timebox_audit` logins are checked against.
pub fn admin_token_scram(token: &str) -> String {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    crate::grants::token::ScramVerifier::derive(token, &salt, crate::grants::token::SCRAM_ITERATIONS)
        .to_text()
}

/// What `admin-token scram` prints: the `scram` line for an existing token's config entry.
pub fn render_admin_token_scram(token: &Secret) -> String {
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    format!(
        "Add this line to the token's [[admin.tokens]] entry and restart timebox:\n\nscram = {}\n",
        quote(&admin_token_scram(token.expose()))
    )
}

/// Makes a random admin token (`tbxa_` + 32 hex digits, 128 bits) for principal `name`.
pub fn new_admin_token(name: &str, roles: &[String]) -> Result<NewAdminToken, CliError> {
    if name.trim().is_empty() || name.trim() != name {
        return Err(CliError::InvalidArgument(
            "--name must be non-empty, without surrounding spaces".into(),
        ));
    }
    if roles.is_empty() {
        return Err(CliError::InvalidArgument(format!(
            "give at least one --role ({})",
            PRINCIPAL_ROLES.join(" | ")
        )));
    }
    let mut parsed = Vec::new();
    for r in roles {
        let Some(role) = PrincipalRole::from_name(r) else {
            return Err(CliError::InvalidArgument(format!(
                "--role {r:?} is not one of {}",
                PRINCIPAL_ROLES.join(" | ")
            )));
        };
        parsed.push(role);
    }
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = format!("{ADMIN_TOKEN_PREFIX}{}", hex::encode(bytes));
    let mut roles = parsed;
    roles.dedup();
    Ok(NewAdminToken {
        name: name.to_owned(),
        roles,
        sha256: sha256_hex(&token),
        scram: admin_token_scram(&token),
        token: Secret::new(token),
    })
}

/// The TOML entry to paste into the config, `[[admin.tokens]]` with name, sha256 and roles.
pub fn admin_token_toml(t: &NewAdminToken) -> String {
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let roles: Vec<String> = t.roles.iter().map(|r| quote(r.as_str())).collect();
    format!(
        "[[admin.tokens]]\nname = {}\nsha256 = {}\nscram = {}\nroles = [{}]\n",
        quote(&t.name),
        quote(&t.sha256),
        quote(&t.scram),
        roles.join(", ")
    )
}

/// What `admin-token new` prints.
pub fn render_new_admin_token(t: &NewAdminToken) -> String {
    format!(
        "Admin token for {:?} (shown only once; the config keeps only its SHA-256 and SCRAM verifier):\n  {}\n\n\
         Add this to the config file and restart timebox:\n\n{}",
        t.name,
        t.token.expose(),
        admin_token_toml(t)
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

    #[test]
    fn details_show_revocation_only_when_revoked() {
        let mut v = view("g_1", "alice", "incident", GrantStatus::Active);
        let text = render_grant_details(&v);
        assert!(text.contains("status      active"), "{text}");
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

    #[test]
    fn api_errors_are_read_from_the_json_shape() {
        let err = parse_answer(
            StatusCode::FORBIDDEN,
            r#"{"code":"forbidden","message":"issuing grants requires role admin"}"#,
        )
        .unwrap_err();
        assert_eq!(err.api_code(), Some("forbidden"));
        assert_eq!(
            err.to_string(),
            "issuing grants requires role admin (forbidden, HTTP 403)"
        );
        let err = parse_answer(StatusCode::BAD_GATEWAY, "<html>bad gateway</html>").unwrap_err();
        assert!(
            matches!(err, CliError::UnexpectedResponse { status: 502, .. }),
            "{err:?}"
        );
        assert_eq!(parse_answer(StatusCode::OK, r#"{"a":1}"#).unwrap()["a"], 1);
    }

    #[test]
    fn token_comes_from_the_file_first_then_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        assert_eq!(
            resolve_token(Some(&file), Some("from-env".into()))
                .unwrap()
                .expose(),
            "from-file"
        );
        assert_eq!(
            resolve_token(None, Some(" from-env ".into())).unwrap().expose(),
            "from-env"
        );
        assert!(matches!(resolve_token(None, None), Err(CliError::NoToken)));
        assert!(matches!(
            resolve_token(None, Some("".into())),
            Err(CliError::NoToken)
        ));
        std::fs::write(&file, "\n").unwrap();
        assert!(matches!(
            resolve_token(Some(&file), None),
            Err(CliError::EmptyTokenFile { .. })
        ));
        let missing = dir.path().join("missing");
        assert!(matches!(
            resolve_token(Some(&missing), None),
            Err(CliError::TokenFile { .. })
        ));
    }

    #[test]
    fn urls_keep_a_base_path_and_encode_segments() {
        let c = AdminClient::new("http://h:1/prefix/", Secret::new("t")).unwrap();
        assert_eq!(
            c.url(&["v1", "grants", "a/b"], &[]).as_str(),
            "http://h:1/prefix/v1/grants/a%2Fb"
        );
        let c = AdminClient::new("http://h:1", Secret::new("t")).unwrap();
        assert_eq!(
            c.url(&["v1", "grants"], &[("user", "a b".into())]).as_str(),
            "http://h:1/v1/grants?user=a+b"
        );
        assert!(matches!(
            AdminClient::new("h:1", Secret::new("t")),
            Err(CliError::BadUrl { .. })
        ));
        assert!(matches!(
            AdminClient::new("ftp://h", Secret::new("t")),
            Err(CliError::BadUrl { .. })
        ));
    }

    #[test]
    fn admin_tokens_and_their_toml() {
        let t = new_admin_token("ops", &["admin".into(), "auditor".into()]).unwrap();
        assert!(t.token.expose().starts_with(ADMIN_TOKEN_PREFIX));
        assert_eq!(t.token.expose().len(), ADMIN_TOKEN_PREFIX.len() + 32);
        assert_eq!(t.sha256, sha256_hex(t.token.expose()));
        let toml_text = admin_token_toml(&t);
        let config = format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\ntls = \"disabled\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{toml_text}"
        );
        let c = crate::config::Config::from_toml_str(&config).expect("the snippet is valid config");
        assert_eq!(c.admin.tokens[0].name, "ops");
        assert_eq!(hex::encode(c.admin.tokens[0].sha256), t.sha256);
        let verifier = c.admin.tokens[0].scram.clone().expect("a scram verifier");
        assert_eq!(
            verifier,
            crate::grants::token::ScramVerifier::derive(
                t.token.expose(),
                &verifier.salt,
                verifier.iterations
            ),
            "the verifier is the token's"
        );
        assert_eq!(
            c.admin.tokens[0].roles,
            vec![PrincipalRole::Admin, PrincipalRole::Auditor]
        );
        assert!(new_admin_token("ops", &["root".into()]).is_err());
        assert!(new_admin_token("", &["admin".into()]).is_err());
        assert!(new_admin_token("ops", &[]).is_err());
        assert_ne!(new_admin_token("ops", &["admin".into()]).unwrap().token, t.token);
    }
}
