//! Audit events: what the proxy and the admin API report, and the canonical JSON each is stored as.
//!
//! Where it sits: the relay and the admin handlers build an [`AuditEvent`] and hand it to
//! [`super::AuditLog::submit`]; there, on the caller's task, [`prepare`] redacts it and serializes
//! its payload, so the single writer thread only numbers, hashes and writes.
//!
//! **Canonical payload.** A payload is the event's fields (without `kind`) as compact JSON with keys
//! in lexicographic order and every field present (`null` for none): each event struct declares its
//! fields in alphabetical order and serde_json writes them in declaration order, which
//! `fields_are_declared_in_canonical_order` checks. Values are strings, integers, booleans, arrays and
//! nulls only — never floats — so any JSON library that sorts keys and writes compact output
//! reproduces the bytes. This module must never let an unredacted statement or a token reach a payload.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::redact;
use crate::config::ParamLogging;
use crate::grants::Grant;

mod admin_token;
pub use admin_token::{AdminTokenIssued, AdminTokenRevoked};

/// Whether the policy let a statement through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Deny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }
    }
}

/// A client authenticated and a session to the upstream is being opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStart {
    pub application_name: Option<String>,
    pub client_addr: String,
    pub grant_id: String,
    pub role: String,
    pub session_id: String,
    pub target: String,
    /// e.g. `TLSv1_3`; `None` for a plaintext client connection.
    pub tls_version: Option<String>,
    pub user: String,
}

/// A client failed to authenticate. Never carries the presented token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthFailure {
    pub client_addr: String,
    pub reason: String,
    pub target: String,
    pub user: String,
}

/// A statement the relay checked, before it is forwarded (or refused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    /// `read`, `write`, `ddl`, `admin`, … as the policy classified it.
    pub class: String,
    pub decision: Decision,
    pub grant_id: String,
    /// Bind parameters (extended protocol), after the `audit.params` policy; `None` when there were
    /// none or params are not logged. A `None` element is an SQL NULL.
    pub params: Option<Vec<Option<String>>>,
    /// Why it was denied (or a note on why it was allowed).
    pub reason: Option<String>,
    pub relations: Vec<String>,
    pub session_id: String,
    /// The statement text; redacted by [`prepare`] whatever the caller passes. Only its first
    /// [`MAX_AUDITED_SQL_BYTES`] when `sql_truncated` (see [`AuditSql`]).
    pub sql: String,
    /// The whole text's length in bytes, when `sql` is truncated.
    #[serde(default)]
    pub sql_bytes: Option<u64>,
    /// Hex SHA-256 of the whole redacted text, when `sql` is truncated.
    #[serde(default)]
    pub sql_sha256: Option<String>,
    /// `sql` is the start of a longer text. Absent in records written before it existed (false).
    #[serde(default)]
    pub sql_truncated: bool,
    /// Numbers the statements of one session from 1; links a [`StatementOutcome`].
    pub statement_id: u64,
    pub target: String,
    pub user: String,
}

/// Statement texts up to this many bytes are audited whole; a longer one keeps this much of its
/// start, its length and a hash (see [`AuditSql`]).
pub const MAX_AUDITED_SQL_BYTES: usize = 64 * 1024;

/// A statement's text as the audit trail keeps it. Whole up to [`MAX_AUDITED_SQL_BYTES`]; a longer
/// text is redacted whole, then cut to its first [`MAX_AUDITED_SQL_BYTES`] (at a character
/// boundary), and the record carries the full length and the SHA-256 of the whole redacted text, so
/// a huge statement cannot swell the trail and the trail still pins down what was sent. Building
/// one costs time in proportion to the text: the relay builds it off the async workers for big
/// statements, once per prepared statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSql {
    pub text: String,
    /// `(whole length in bytes, hex SHA-256 of the whole redacted text)` when `text` is truncated.
    pub truncated: Option<(u64, String)>,
    /// When truncated, the secrets redaction hid in the whole text (never written), so that a
    /// denial reason quoting a part of the text beyond `text` can be scrubbed of them too
    /// ([`AuditSql::scrub`]); the prefix alone no longer shows them to [`prepare`].
    pub hidden: Vec<String>,
}

impl AuditSql {
    pub fn of(sql: &str) -> AuditSql {
        Self::bounded(sql, MAX_AUDITED_SQL_BYTES)
    }

    /// As [`AuditSql::of`] with another bound. Pure.
    pub fn bounded(sql: &str, max: usize) -> AuditSql {
        if sql.len() <= max {
            return AuditSql {
                text: sql.to_owned(),
                truncated: None,
                hidden: Vec::new(),
            };
        }
        use sha2::Digest;
        let (redacted, hidden) = redact::redact_sql_secrets(sql);
        let digest = hex::encode(sha2::Sha256::digest(redacted.as_bytes()));
        let mut cut = max.min(redacted.len());
        while !redacted.is_char_boundary(cut) {
            cut -= 1;
        }
        AuditSql {
            text: redacted[..cut].to_owned(),
            truncated: Some((sql.len() as u64, digest)),
            hidden,
        }
    }

    /// `text` (a denial reason about this statement) without the secrets of the whole statement.
    pub fn scrub<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        redact::scrub(text, &self.hidden)
    }

    /// A denial reason about this statement fit for a log line: without the statement's secrets
    /// (a parser error may quote a `PASSWORD` literal) and without grant tokens. Denials only, so
    /// the cost of re-reading a short statement stays off the allowed path.
    pub fn loggable_reason(&self, reason: &str) -> String {
        let scrubbed = if self.truncated.is_some() {
            self.scrub(reason)
        } else {
            let (_, hidden) = redact::redact_sql_secrets(&self.text);
            std::borrow::Cow::Owned(redact::scrub(reason, &hidden).into_owned())
        };
        redact::redact_tokens(&scrubbed).into_owned()
    }

    /// Length of the whole text in bytes.
    pub fn bytes(&self) -> usize {
        match &self.truncated {
            Some((n, _)) => *n as usize,
            None => self.text.len(),
        }
    }
}

/// How a statement ended: the second record, linked to its [`Statement`] by session and statement id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementOutcome {
    /// e.g. `SELECT 3`; `None` on error.
    pub command_tag: Option<String>,
    /// Microseconds from forwarding the statement to its completion.
    pub duration_us: u64,
    /// What the statement returned, counted on the wire: only for roles with result quotas or
    /// column masks (absent otherwise, so records of other roles are unchanged). Declared in its
    /// canonical place (keys sort: `returned` < `rows`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub returned: Option<Returned>,
    pub rows: Option<u64>,
    pub session_id: String,
    /// The SQLSTATE of the error, if it failed.
    pub sqlstate: Option<String>,
    pub statement_id: u64,
}

/// Result rows and bytes a statement returned to the client, the masked columns its results
/// had, and the quota that stopped it. Fields in canonical (lexicographic) order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Returned {
    /// DataRow and CopyData bytes (whole frames, after masking) forwarded to the client.
    pub bytes: u64,
    /// The masked columns of its results (from their RowDescriptions: the target's catalog),
    /// sorted, each once; absent when none (roles with masks only). Names, never values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked: Option<Vec<MaskedColumnReturned>>,
    /// The role option that stopped the result (`max_rows_per_statement`,
    /// `max_result_bytes_per_statement`, `max_result_bytes_per_grant`), if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_stop: Option<String>,
    /// DataRows forwarded to the client.
    pub rows: u64,
}

/// One masked column a statement's result had: `schema.table.column` (the relation the
/// RowDescription names, a partition or child table included) and the mask `method` applied.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MaskedColumnReturned {
    pub column: String,
    pub method: String,
}

impl Returned {
    /// Two results of one audited statement (a multi-statement Query) counted as one: rows and
    /// bytes add up, masked columns are merged (sorted, each once), the first quota stop stays.
    pub fn combine(self, b: Returned) -> Returned {
        let masked = match (self.masked, b.masked) {
            (Some(mut a), Some(b)) => {
                a.extend(b);
                a.sort();
                a.dedup();
                Some(a)
            }
            (a, b) => a.or(b),
        };
        Returned {
            bytes: self.bytes + b.bytes,
            masked,
            quota_stop: self.quota_stop.or(b.quota_stop),
            rows: self.rows + b.rows,
        }
    }
}

/// A session ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEnd {
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    /// Microseconds from session start to end.
    pub duration_us: u64,
    /// Who ended the session and why, when someone did (`killed`): "bob (incident over)".
    #[serde(default)]
    pub ended_by: Option<String>,
    pub grant_id: String,
    /// `client_exit`, `expired`, `revoked`, `killed`, `upstream_error`, `client_error`, `shutdown`,
    /// `audit_unavailable`, `frame_too_large`, `internal_error`, `masked_effects`.
    pub reason: String,
    pub session_id: String,
    /// Statements the session ran (or tried to).
    pub statements: u64,
    pub target: String,
    pub user: String,
}

/// A grant was issued. Never carries its token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantIssued {
    /// Self-approved emergency access. Absent in records written before it existed (read as false).
    #[serde(default)]
    pub break_glass: bool,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub expires_at: DateTime<Utc>,
    pub grant_id: String,
    pub reason: String,
    pub role: String,
    pub starts_at: DateTime<Utc>,
    pub target: String,
    pub user: String,
}

/// A grant was revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRevoked {
    pub grant_id: String,
    pub reason: String,
    pub revoked_at: DateTime<Utc>,
    pub revoked_by: String,
    pub target: String,
    pub user: String,
}

/// A grant's end was moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantExtended {
    pub expires_at: DateTime<Utc>,
    pub extended_by: String,
    pub grant_id: String,
    pub previous_expires_at: DateTime<Utc>,
    pub reason: Option<String>,
    pub target: String,
    pub user: String,
}

/// An access request changed state (filed, approved, denied, expired, its token fetched).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRequestEvent {
    /// `created`, `approved`, `denied`, `expired` or `token_fetched`.
    pub action: String,
    /// Who acted (`timebox` for expiry).
    pub actor: String,
    pub break_glass: bool,
    /// The grant the request produced, once it did.
    pub grant_id: Option<String>,
    pub reason: Option<String>,
    pub request_id: String,
    pub role: String,
    pub target: String,
    pub ticket: Option<String>,
    pub ttl: String,
    /// The requester (the PostgreSQL user the grant is for).
    pub user: String,
}

impl From<&Grant> for GrantIssued {
    fn from(g: &Grant) -> Self {
        GrantIssued::of(g, false)
    }
}

impl GrantIssued {
    /// The event for a grant just issued, flagged break-glass or not.
    pub fn of(g: &Grant, break_glass: bool) -> Self {
        GrantIssued {
            break_glass,
            created_at: g.created_at,
            created_by: g.created_by.clone(),
            expires_at: g.expires_at,
            grant_id: g.id.clone(),
            reason: g.reason.clone(),
            role: g.role.clone(),
            starts_at: g.starts_at,
            target: g.target.clone(),
            user: g.user.clone(),
        }
    }
}

impl GrantRevoked {
    /// The event for a grant as returned by a revocation; `None` if it is not revoked.
    pub fn from_grant(g: &Grant) -> Option<Self> {
        Some(GrantRevoked {
            grant_id: g.id.clone(),
            reason: g.revoke_reason.clone().unwrap_or_default(),
            revoked_at: g.revoked_at?,
            revoked_by: g.revoked_by.clone().unwrap_or_default(),
            target: g.target.clone(),
            user: g.user.clone(),
        })
    }
}

/// How a severed session's upstream query ended, recorded after its `session_end` (the client had
/// its FATAL at the deadline; the upstream is stopped afterwards, bounded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamEnd {
    /// Microseconds from the client's FATAL to the outcome.
    pub after_us: u64,
    pub grant_id: String,
    /// `terminated`: timebox's batch connection ended the backend (`pg_terminate_backend`) and it
    /// exited (it ran nothing more); `cancelled`: a CancelRequest cancelled the query and the
    /// backend exited; `closed`: it did not stop within the bound, or statements were queued behind
    /// it, and timebox closed the upstream connection (PostgreSQL ends the backend when it notices).
    pub outcome: String,
    pub session_id: String,
    pub target: String,
    pub user: String,
}

/// One audit event. As JSON (API, tests) it carries its `kind` as a tag; in the store the kind is a
/// column and the payload is the inner struct alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuditEvent {
    SessionStart(SessionStart),
    AuthFailure(AuthFailure),
    Statement(Statement),
    StatementOutcome(StatementOutcome),
    SessionEnd(SessionEnd),
    UpstreamEnd(UpstreamEnd),
    GrantIssued(GrantIssued),
    GrantRevoked(GrantRevoked),
    GrantExtended(GrantExtended),
    AccessRequest(AccessRequestEvent),
    AdminTokenIssued(AdminTokenIssued),
    AdminTokenRevoked(AdminTokenRevoked),
    AuditRetention(super::retention::AuditRetention),
}

/// Every kind, as stored in the `kind` column.
pub const KINDS: &[&str] = &[
    "session_start",
    "auth_failure",
    "statement",
    "statement_outcome",
    "session_end",
    "upstream_end",
    "grant_issued",
    "grant_revoked",
    "grant_extended",
    "access_request",
    "admin_token_issued",
    "admin_token_revoked",
    "audit_retention",
];

impl AuditEvent {
    pub fn kind(&self) -> &'static str {
        match self {
            AuditEvent::SessionStart(_) => "session_start",
            AuditEvent::AuthFailure(_) => "auth_failure",
            AuditEvent::Statement(_) => "statement",
            AuditEvent::StatementOutcome(_) => "statement_outcome",
            AuditEvent::SessionEnd(_) => "session_end",
            AuditEvent::UpstreamEnd(_) => "upstream_end",
            AuditEvent::GrantIssued(_) => "grant_issued",
            AuditEvent::GrantRevoked(_) => "grant_revoked",
            AuditEvent::GrantExtended(_) => "grant_extended",
            AuditEvent::AccessRequest(_) => "access_request",
            AuditEvent::AdminTokenIssued(_) => "admin_token_issued",
            AuditEvent::AdminTokenRevoked(_) => "admin_token_revoked",
            AuditEvent::AuditRetention(_) => "audit_retention",
        }
    }

    /// Rebuilds an event from its stored kind and payload.
    pub fn from_parts(kind: &str, payload: &str) -> Result<AuditEvent, serde_json::Error> {
        use serde::de::Error as _;
        Ok(match kind {
            "session_start" => AuditEvent::SessionStart(serde_json::from_str(payload)?),
            "auth_failure" => AuditEvent::AuthFailure(serde_json::from_str(payload)?),
            "statement" => AuditEvent::Statement(serde_json::from_str(payload)?),
            "statement_outcome" => AuditEvent::StatementOutcome(serde_json::from_str(payload)?),
            "session_end" => AuditEvent::SessionEnd(serde_json::from_str(payload)?),
            "upstream_end" => AuditEvent::UpstreamEnd(serde_json::from_str(payload)?),
            "grant_issued" => AuditEvent::GrantIssued(serde_json::from_str(payload)?),
            "grant_revoked" => AuditEvent::GrantRevoked(serde_json::from_str(payload)?),
            "grant_extended" => AuditEvent::GrantExtended(serde_json::from_str(payload)?),
            "access_request" => AuditEvent::AccessRequest(serde_json::from_str(payload)?),
            "admin_token_issued" => AuditEvent::AdminTokenIssued(serde_json::from_str(payload)?),
            "admin_token_revoked" => AuditEvent::AdminTokenRevoked(serde_json::from_str(payload)?),
            "audit_retention" => AuditEvent::AuditRetention(serde_json::from_str(payload)?),
            other => return Err(serde_json::Error::custom(format!("unknown audit kind {other:?}"))),
        })
    }

    /// The canonical payload: the inner struct as compact JSON (see the module docs), written once
    /// into a buffer of about its size ([`AuditEvent::payload_capacity`]).
    pub fn payload_json(&self) -> String {
        let mut out = Vec::with_capacity(self.payload_capacity());
        let w = &mut out;
        let result = match self {
            AuditEvent::SessionStart(e) => serde_json::to_writer(w, e),
            AuditEvent::AuthFailure(e) => serde_json::to_writer(w, e),
            AuditEvent::Statement(e) => serde_json::to_writer(w, e),
            AuditEvent::StatementOutcome(e) => serde_json::to_writer(w, e),
            AuditEvent::SessionEnd(e) => serde_json::to_writer(w, e),
            AuditEvent::UpstreamEnd(e) => serde_json::to_writer(w, e),
            AuditEvent::GrantIssued(e) => serde_json::to_writer(w, e),
            AuditEvent::GrantRevoked(e) => serde_json::to_writer(w, e),
            AuditEvent::GrantExtended(e) => serde_json::to_writer(w, e),
            AuditEvent::AccessRequest(e) => serde_json::to_writer(w, e),
            AuditEvent::AdminTokenIssued(e) => serde_json::to_writer(w, e),
            AuditEvent::AdminTokenRevoked(e) => serde_json::to_writer(w, e),
            AuditEvent::AuditRetention(e) => serde_json::to_writer(w, e),
        };
        // Serializing plain structs of strings and integers into memory cannot fail, and
        // serde_json writes UTF-8.
        result.expect("audit payloads always serialize");
        String::from_utf8(out).expect("serde_json writes UTF-8")
    }

    /// About the payload's length, so [`AuditEvent::payload_json`] allocates once (it grows the
    /// buffer if escapes make it longer): the keys and fixed values of a statement or outcome
    /// record plus its strings; other kinds are rare.
    fn payload_capacity(&self) -> usize {
        let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        let list = |v: &[String]| v.iter().map(|s| s.len() + 3).sum::<usize>();
        match self {
            AuditEvent::Statement(e) => {
                STATEMENT_KEYS_BYTES
                    + e.class.len()
                    + e.grant_id.len()
                    + e.session_id.len()
                    + e.sql.len()
                    + e.target.len()
                    + e.user.len()
                    + opt(&e.reason)
                    + opt(&e.sql_sha256)
                    + list(&e.relations)
                    + e.params
                        .as_ref()
                        .map_or(0, |p| p.iter().map(|v| opt(v) + 5).sum())
            }
            AuditEvent::StatementOutcome(e) => {
                OUTCOME_KEYS_BYTES
                    + opt(&e.command_tag)
                    + e.session_id.len()
                    + opt(&e.sqlstate)
                    + e.returned.as_ref().map_or(0, |r| {
                        RETURNED_KEYS_BYTES
                            + r.masked.as_ref().map_or(0, |m| {
                                m.iter().map(|c| c.column.len() + c.method.len() + 32).sum()
                            })
                    })
            }
            _ => OTHER_PAYLOAD_BYTES,
        }
    }

    /// The indexed columns, moved out of the event (what [`AuditEvent::columns`] copies): for
    /// [`prepare`], once the payload is written.
    pub fn into_columns(self) -> Columns {
        let c =
            |user: String, target: String, grant_id: Option<String>, session_id: Option<String>| Columns {
                user: Some(user),
                target: Some(target),
                grant_id,
                session_id,
            };
        match self {
            AuditEvent::SessionStart(e) => c(e.user, e.target, Some(e.grant_id), Some(e.session_id)),
            AuditEvent::AuthFailure(e) => c(e.user, e.target, None, None),
            AuditEvent::Statement(e) => c(e.user, e.target, Some(e.grant_id), Some(e.session_id)),
            AuditEvent::StatementOutcome(e) => Columns {
                session_id: Some(e.session_id),
                ..Columns::default()
            },
            AuditEvent::SessionEnd(e) => c(e.user, e.target, Some(e.grant_id), Some(e.session_id)),
            AuditEvent::UpstreamEnd(e) => c(e.user, e.target, Some(e.grant_id), Some(e.session_id)),
            AuditEvent::GrantIssued(e) => c(e.user, e.target, Some(e.grant_id), None),
            AuditEvent::GrantRevoked(e) => c(e.user, e.target, Some(e.grant_id), None),
            AuditEvent::GrantExtended(e) => c(e.user, e.target, Some(e.grant_id), None),
            AuditEvent::AccessRequest(e) => c(e.user, e.target, e.grant_id, None),
            other => other.columns(),
        }
    }

    /// The indexed columns of this event (derived from the payload; `verify` checks they agree).
    pub fn columns(&self) -> Columns {
        let c = |user: &str, target: &str, grant: Option<&str>, session: Option<&str>| Columns {
            user: Some(user.to_owned()),
            target: Some(target.to_owned()),
            grant_id: grant.map(str::to_owned),
            session_id: session.map(str::to_owned),
        };
        match self {
            AuditEvent::SessionStart(e) => c(&e.user, &e.target, Some(&e.grant_id), Some(&e.session_id)),
            AuditEvent::AuthFailure(e) => c(&e.user, &e.target, None, None),
            AuditEvent::Statement(e) => c(&e.user, &e.target, Some(&e.grant_id), Some(&e.session_id)),
            AuditEvent::StatementOutcome(e) => Columns {
                session_id: Some(e.session_id.clone()),
                ..Columns::default()
            },
            AuditEvent::SessionEnd(e) => c(&e.user, &e.target, Some(&e.grant_id), Some(&e.session_id)),
            AuditEvent::UpstreamEnd(e) => c(&e.user, &e.target, Some(&e.grant_id), Some(&e.session_id)),
            AuditEvent::GrantIssued(e) => c(&e.user, &e.target, Some(&e.grant_id), None),
            AuditEvent::GrantRevoked(e) => c(&e.user, &e.target, Some(&e.grant_id), None),
            AuditEvent::GrantExtended(e) => c(&e.user, &e.target, Some(&e.grant_id), None),
            AuditEvent::AccessRequest(e) => c(&e.user, &e.target, e.grant_id.as_deref(), None),
            AuditEvent::AdminTokenIssued(e) => admin_token::columns(&e.name),
            AuditEvent::AdminTokenRevoked(e) => admin_token::columns(&e.name),
            AuditEvent::AuditRetention(_) => Columns::default(),
        }
    }

    /// Applies redaction in place: statement text, parameters per `params`, and tokens in free text.
    pub fn redact(&mut self, params: ParamLogging) {
        let tokens = |s: &mut String| {
            if let std::borrow::Cow::Owned(r) = redact::redact_tokens(s) {
                *s = r;
            }
        };
        match self {
            AuditEvent::Statement(e) => {
                let (sql, hidden) = redact::redact_sql_secrets(&e.sql);
                if let std::borrow::Cow::Owned(r) = sql {
                    e.sql = r;
                }
                e.params = redact::redact_params(e.params.take(), params);
                if let Some(r) = e.reason.as_mut() {
                    tokens(r);
                    // A denial reason may quote the statement (a parser error echoes a literal).
                    if let std::borrow::Cow::Owned(s) = redact::scrub(r, &hidden) {
                        *r = s;
                    }
                }
            }
            AuditEvent::SessionStart(e) => {
                if let Some(a) = e.application_name.as_mut() {
                    tokens(a);
                }
            }
            AuditEvent::AuthFailure(e) => tokens(&mut e.reason),
            AuditEvent::GrantIssued(e) => tokens(&mut e.reason),
            AuditEvent::GrantRevoked(e) => tokens(&mut e.reason),
            AuditEvent::GrantExtended(e) => {
                if let Some(r) = e.reason.as_mut() {
                    tokens(r);
                }
            }
            AuditEvent::AccessRequest(e) => {
                if let Some(r) = e.reason.as_mut() {
                    tokens(r);
                }
            }
            AuditEvent::SessionEnd(e) => {
                if let Some(by) = e.ended_by.as_mut() {
                    tokens(by);
                }
            }
            AuditEvent::StatementOutcome(_) | AuditEvent::UpstreamEnd(_) | AuditEvent::AuditRetention(_) => {}
            AuditEvent::AdminTokenIssued(_) | AuditEvent::AdminTokenRevoked(_) => {}
        }
    }
}

/// Columns stored beside the payload so the common filters use an index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Columns {
    pub user: Option<String>,
    pub target: Option<String>,
    pub grant_id: Option<String>,
    pub session_id: Option<String>,
}

/// An event ready for the writer: redacted, serialized, its columns extracted.
#[derive(Debug, Clone)]
pub struct PreparedEvent {
    pub kind: &'static str,
    pub payload: String,
    pub columns: Columns,
}

/// Bytes of a statement payload besides its strings: keys, quotes, separators, the decision,
/// numbers, nulls and booleans (about 230; a little more is cheaper than growing the buffer).
const STATEMENT_KEYS_BYTES: usize = 256;
/// The same for an outcome payload.
const OUTCOME_KEYS_BYTES: usize = 160;
/// The same for an outcome's `returned` object.
const RETURNED_KEYS_BYTES: usize = 96;
/// A first buffer for the payload of another kind.
const OTHER_PAYLOAD_BYTES: usize = 384;

/// Redacts and serializes an event (runs on the submitter's task, not the writer's): one
/// allocation for the payload when redaction has nothing to hide; the columns are the event's own
/// strings, moved.
pub fn prepare(mut event: AuditEvent, params: ParamLogging) -> PreparedEvent {
    event.redact(params);
    PreparedEvent {
        kind: event.kind(),
        payload: event.payload_json(),
        columns: event.into_columns(),
    }
}

/// One stored record as the API, the CLI and the JSONL file show it (keys in canonical order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Fleet-wide reads only: the record's position in the central table, to pass back as
    /// `cursor` (a seq is only unique within one instance's chain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<u64>,
    /// Hex SHA-256 of this record (see [`super::chain`]).
    pub hash: String,
    /// Fleet-wide reads only: the instance whose chain holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub kind: String,
    pub payload: serde_json::Value,
    /// Hex SHA-256 of the previous record; 64 zeros for the first.
    pub prev_hash: String,
    pub seq: u64,
    /// Commit time, RFC 3339 UTC with microseconds.
    pub ts: String,
}

impl AuditRecord {
    /// The typed event, if the payload is one this version understands.
    pub fn event(&self) -> Result<AuditEvent, serde_json::Error> {
        AuditEvent::from_parts(&self.kind, &self.payload.to_string())
    }

    /// A payload field as text (for tables), `None` when absent or null.
    pub fn field(&self, name: &str) -> Option<String> {
        match self.payload.get(name)? {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
