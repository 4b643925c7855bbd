//! Admin-API tokens kept in the store: issued, listed and revoked over the admin API, without a
//! config edit or a restart (issue 17). The `[[admin.tokens]]` of the config stay as the bootstrap.
//!
//! Data flow: `POST /v1/admin-tokens` ([`crate::admin::admin_tokens`]) calls
//! [`AdminTokenService::issue`], which validates, stores the token's SHA-256 and SCRAM verifier (never
//! the token), records `admin_token_issued` and only then releases the token, once;
//! [`AdminTokenService::revoke`] marks it revoked and records `admin_token_revoked`. Every admin-API
//! request whose bearer token is not a config token comes to [`AdminTokenService::authenticate`]:
//! the token's id prefix finds one row (an indexed read, no scan), its SHA-256 is compared in
//! constant time, and the pure [`check_presented`] decides. Nothing is cached, so a revocation holds
//! from the next request on, on every instance sharing the store.
//!
//! What it must never do: log, record or return a token except the one copy in the issue answer;
//! say anything about a token's state to someone who does not hold it (a hash mismatch is "unknown").

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::effects::{Effects, Unrecorded};
use super::token::{ScramVerifier, SCRAM_ITERATIONS};
use super::validate;
use crate::audit::event::{AdminTokenIssued, AdminTokenRevoked};
use crate::audit::AuditEvent;
use crate::clock::Clock;
use crate::config::{Config, PrincipalRole, Secret, PRINCIPAL_ROLES};
use crate::store::{Store, StoreError};

/// Prefix of every admin token timebox makes (config tokens from `admin-token new --config-line`
/// and store tokens alike); the audit redaction knows it.
pub const ADMIN_TOKEN_PREFIX: &str = "tbxa_";
/// Hex digits of a store token's id, right after the prefix (8 random bytes).
pub const TOKEN_ID_HEX: usize = 16;
/// Hex digits of a store token's secret part, after its id (16 random bytes, 128 bits).
pub const TOKEN_SECRET_HEX: usize = 32;
/// `last_used_at` is written at most this often per token (so using a token is a read, not a
/// write per request).
pub const LAST_USED_GRANULARITY: Duration = Duration::from_secs(60);
/// Who revokes a token whose issuance could not be recorded.
const TIMEBOX_ACTOR: &str = "timebox";

/// An admin token as the store keeps it, without its hash and verifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTokenRecord {
    /// The [`TOKEN_ID_HEX`] hex digits after the prefix of the token: how a presented token finds
    /// its row. Not secret on its own; never shown by the API.
    pub id: String,
    /// The principal's name (`created_by` of what it does; a requester's PostgreSQL user name).
    pub name: String,
    pub roles: Vec<PrincipalRole>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    /// `None`: until revoked.
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
    /// Last accepted use, to [`LAST_USED_GRANULARITY`].
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A stored token: its record, the SHA-256 of the token (bearer checks) and its SCRAM-SHA-256
/// verifier (the same form as grant tokens and `[[admin.tokens]] scram`). `Debug` shows neither.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredAdminToken {
    pub record: AdminTokenRecord,
    pub sha256: [u8; 32],
    pub scram: ScramVerifier,
}

impl std::fmt::Debug for StoredAdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredAdminToken")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// Where a stored token stands at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AdminTokenStatus {
    Active,
    Expired,
    Revoked,
}

impl AdminTokenRecord {
    /// The one function that says whether the token admits its holder at `now`. Pure.
    pub fn status_at(&self, now: DateTime<Utc>) -> AdminTokenStatus {
        if self.revoked_at.is_some() {
            AdminTokenStatus::Revoked
        } else if self.expires_at.is_some_and(|e| now >= e) {
            AdminTokenStatus::Expired
        } else {
            AdminTokenStatus::Active
        }
    }
}

/// Why a presented token that matches a stored one does not admit its holder (401 with `code`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("admin token {name:?} was revoked at {} by {by}", rfc3339(*.at))]
    Revoked {
        name: String,
        at: DateTime<Utc>,
        by: String,
    },
    #[error("admin token {name:?} expired at {}", rfc3339(*.at))]
    Expired { name: String, at: DateTime<Utc> },
}

impl Refusal {
    /// The stable code of the API's 401 answer.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Revoked { .. } => "admin_token_revoked",
            Refusal::Expired { .. } => "admin_token_expired",
        }
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Why an admin-token operation failed; each maps to a client-facing error.
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    /// A live token (or a config token) already has the name, or the name is a config token's.
    #[error("{0}")]
    Conflict(String),
    #[error("no live admin token named {0:?}")]
    NotFound(String),
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The change was made (or undone) but its audit record could not be written.
    #[error(transparent)]
    Unrecorded(#[from] Unrecorded),
}

fn invalid(field: &'static str, message: impl Into<String>) -> AdminTokenError {
    AdminTokenError::Invalid {
        field,
        message: message.into(),
    }
}

/// A request to issue a token (admin API body).
#[derive(Debug, Clone, Default)]
pub struct NewAdminToken {
    pub name: String,
    pub roles: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Checks a new token's fields at `now`; returns its roles, deduplicated in their canonical order.
/// Pure.
pub fn validate_new(req: &NewAdminToken, now: DateTime<Utc>) -> Result<Vec<PrincipalRole>, AdminTokenError> {
    if let Some(problem) = validate::name_problem(&req.name) {
        return Err(invalid("name", problem));
    }
    if req.roles.is_empty() {
        return Err(invalid(
            "roles",
            format!("give at least one role ({})", PRINCIPAL_ROLES.join(" | ")),
        ));
    }
    let mut roles = Vec::new();
    for name in &req.roles {
        let role = PrincipalRole::from_name(name).ok_or_else(|| {
            invalid(
                "roles",
                format!("{name:?} is not one of {}", PRINCIPAL_ROLES.join(" | ")),
            )
        })?;
        roles.push(role);
    }
    roles.sort();
    roles.dedup();
    if let Some(at) = req.expires_at {
        if at <= now {
            return Err(invalid(
                "expires_at",
                format!("{} is not in the future", rfc3339(at)),
            ));
        }
    }
    Ok(roles)
}

/// A fresh token: `tbxa_` + id ([`TOKEN_ID_HEX`]) + secret ([`TOKEN_SECRET_HEX`]), all hex, so the
/// audit redaction's token pattern covers all of it. Returns (id, token).
pub fn generate() -> (String, Secret) {
    let mut id = [0u8; TOKEN_ID_HEX / 2];
    let mut secret = [0u8; TOKEN_SECRET_HEX / 2];
    rand::rngs::OsRng.fill_bytes(&mut id);
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let id = hex::encode(id);
    let token = format!("{ADMIN_TOKEN_PREFIX}{id}{}", hex::encode(secret));
    (id, Secret::new(token))
}

/// The id of a presented token if it has a store token's shape; `None` for anything else (a
/// config token, garbage). Pure.
pub fn token_id(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix(ADMIN_TOKEN_PREFIX)?;
    let well_formed = rest.len() == TOKEN_ID_HEX + TOKEN_SECRET_HEX
        && rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    well_formed.then(|| &rest[..TOKEN_ID_HEX])
}

/// What a presented token is to the stored token its id found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Not this token (its hash differs): the same answer as an unknown token.
    Unknown,
    Admitted,
    Refused(Refusal),
}

/// Decides a presented token against the stored token its id found, at `now`: the SHA-256 is
/// compared in constant time first, and only a holder of the token learns its state. Pure.
pub fn check_presented(stored: &StoredAdminToken, presented: &str, now: DateTime<Utc>) -> Check {
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    if !bool::from(digest[..].ct_eq(&stored.sha256[..])) {
        return Check::Unknown;
    }
    let r = &stored.record;
    match r.status_at(now) {
        AdminTokenStatus::Active => Check::Admitted,
        AdminTokenStatus::Revoked => Check::Refused(Refusal::Revoked {
            name: r.name.clone(),
            at: r.revoked_at.unwrap_or(now),
            by: r.revoked_by.clone().unwrap_or_default(),
        }),
        AdminTokenStatus::Expired => Check::Refused(Refusal::Expired {
            name: r.name.clone(),
            at: r.expires_at.unwrap_or(now),
        }),
    }
}

/// Roles as the store keeps them: names joined by commas. Pure.
pub fn roles_text(roles: &[PrincipalRole]) -> String {
    roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(",")
}

/// The roles of [`roles_text`]; `None` if a name is not a role (a corrupt row). Pure.
pub fn parse_roles(text: &str) -> Option<Vec<PrincipalRole>> {
    text.split(',').map(PrincipalRole::from_name).collect()
}

/// A stored token from its row: the record, the hex SHA-256 and the verifier's text; `None` if
/// either is unreadable (a corrupt row). Pure.
pub fn stored_from_parts(
    record: AdminTokenRecord,
    sha256_hex: &str,
    scram: &str,
) -> Option<StoredAdminToken> {
    let mut sha256 = [0u8; 32];
    hex::decode_to_slice(sha256_hex, &mut sha256).ok()?;
    Some(StoredAdminToken {
        record,
        sha256,
        scram: ScramVerifier::from_text(scram)?,
    })
}

impl StoredAdminToken {
    /// The token as a config entry (`[[admin.tokens]]`), for the logins that check those: the
    /// auditors' `timebox_audit` endpoint.
    pub fn as_config_token(&self) -> crate::config::AdminToken {
        crate::config::AdminToken {
            name: self.record.name.clone(),
            sha256: self.sha256,
            scram: Some(self.scram.clone()),
            roles: self.record.roles.clone(),
        }
    }
}

/// Whether an admitted use at `now` should be written as the token's `last_used_at`. Pure.
pub fn needs_touch(last_used_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    last_used_at.is_none_or(|t| (now - t).to_std().unwrap_or_default() >= LAST_USED_GRANULARITY)
}

/// Issues, lists, revokes and authenticates store admin tokens; every change is recorded here
/// ([`Effects`]), so no caller can forget to. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AdminTokenService {
    store: Store,
    /// For the names of the config's tokens (a store token may not take one).
    config: Arc<Config>,
    clock: Arc<dyn Clock>,
    effects: Effects,
}

impl AdminTokenService {
    pub fn new(store: Store, config: Arc<Config>, clock: Arc<dyn Clock>, effects: Effects) -> Self {
        AdminTokenService {
            store,
            config,
            clock,
            effects,
        }
    }

    fn is_config_name(&self, name: &str) -> bool {
        self.config.admin.tokens.iter().any(|t| t.name == name)
    }

    /// Issues a token for principal `req.name` as `by`, records `admin_token_issued`, and only then
    /// returns the token: the only copy there will ever be. If the audit log refuses, the stored
    /// token is revoked again (nobody has seen it) and the caller gets
    /// [`AdminTokenError::Unrecorded`].
    pub async fn issue(
        &self,
        req: NewAdminToken,
        by: &str,
    ) -> Result<(AdminTokenRecord, Secret), AdminTokenError> {
        let now = self.clock.now();
        let roles = validate_new(&req, now)?;
        if self.is_config_name(&req.name) {
            return Err(AdminTokenError::Conflict(format!(
                "{:?} is the name of an admin token in the config file; choose another name",
                req.name
            )));
        }
        let (id, token) = generate();
        let sha256: [u8; 32] = Sha256::digest(token.expose().as_bytes()).into();
        let text = token.expose().to_owned();
        let scram = tokio::task::spawn_blocking(move || {
            let mut salt = [0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut salt);
            ScramVerifier::derive(&text, &salt, SCRAM_ITERATIONS)
        })
        .await
        .map_err(|e| AdminTokenError::Store(StoreError::Task(e)))?;
        let record = AdminTokenRecord {
            id,
            name: req.name,
            roles,
            created_at: now,
            created_by: by.to_owned(),
            expires_at: req.expires_at,
            revoked_at: None,
            revoked_by: None,
            last_used_at: None,
        };
        let stored = StoredAdminToken {
            record: record.clone(),
            sha256,
            scram,
        };
        if !self.store.insert_admin_token(stored, now).await? {
            return Err(AdminTokenError::Conflict(format!(
                "a live admin token is already named {:?}; revoke it first or choose another name",
                record.name
            )));
        }
        let event = AuditEvent::AdminTokenIssued(AdminTokenIssued::of(&record));
        let refusal = || {
            format!(
                "admin token {:?} was not issued: its audit record could not be written (the stored token \
                 is revoked; nobody has seen it)",
                record.name
            )
        };
        if let Err(unrecorded) = self.effects.record(vec![event], refusal).await {
            let undone = self
                .store
                .revoke_admin_token(record.name.clone(), TIMEBOX_ACTOR.into(), now)
                .await;
            tracing::error!(name = %record.name, undone = undone.is_ok(),
                "admin token issued but not recorded; revoked again");
            return Err(unrecorded.into());
        }
        tracing::info!(name = %record.name, created_by = by, roles = ?record.roles,
            expires_at = ?record.expires_at, "admin token issued");
        Ok((record, token))
    }

    /// Every stored token (live, expired and revoked), newest first; never a hash or verifier.
    pub async fn list(&self) -> Result<Vec<AdminTokenRecord>, AdminTokenError> {
        Ok(self.store.list_admin_tokens().await?)
    }

    /// Revokes the live token named `name` as `by`, at once (its next request gets 401), and
    /// records `admin_token_revoked`. If the audit log refuses, the token stays revoked and the
    /// caller gets [`AdminTokenError::Unrecorded`].
    pub async fn revoke(&self, name: &str, by: &str) -> Result<AdminTokenRecord, AdminTokenError> {
        let now = self.clock.now();
        let Some(revoked) = self
            .store
            .revoke_admin_token(name.to_owned(), by.to_owned(), now)
            .await?
        else {
            if self.is_config_name(name) {
                return Err(AdminTokenError::Conflict(format!(
                    "admin token {name:?} is in the config file; remove its [[admin.tokens]] entry there"
                )));
            }
            return Err(AdminTokenError::NotFound(name.to_owned()));
        };
        tracing::info!(name, revoked_by = by, "admin token revoked");
        let event = AuditEvent::AdminTokenRevoked(AdminTokenRevoked {
            name: revoked.name.clone(),
            revoked_at: revoked.revoked_at.unwrap_or(now),
            revoked_by: by.to_owned(),
        });
        self.effects
            .record(vec![event], || {
                format!("admin token {name:?} was revoked but its audit record could not be written")
            })
            .await?;
        Ok(revoked)
    }

    /// The live token named `name` (not revoked, not expired now) with its verifier, for the
    /// auditors' SCRAM login to `timebox_audit`.
    pub async fn live_named(&self, name: &str) -> Result<Option<StoredAdminToken>, StoreError> {
        self.store
            .live_admin_token_named(name.to_owned(), self.clock.now())
            .await
    }

    /// The stored token `presented` is, if it is one and admits its holder now; `Ok(None)` when it
    /// is no store token (the caller answers "unknown admin token"); [`AdminTokenError::Refused`]
    /// when it is one but revoked or expired. A failing store fails closed
    /// ([`AdminTokenError::Store`]).
    pub async fn authenticate(&self, presented: &str) -> Result<Option<AdminTokenRecord>, AdminTokenError> {
        let Some(id) = token_id(presented) else {
            return Ok(None);
        };
        let Some(stored) = self.store.admin_token(id.to_owned()).await? else {
            return Ok(None);
        };
        let now = self.clock.now();
        match check_presented(&stored, presented, now) {
            Check::Unknown => Ok(None),
            Check::Refused(refusal) => Err(refusal.into()),
            Check::Admitted => {
                if needs_touch(stored.record.last_used_at, now) {
                    if let Err(e) = self.store.touch_admin_token(stored.record.id.clone(), now).await {
                        tracing::warn!(error = %e, name = %stored.record.name,
                            "could not note an admin token's last use");
                    }
                }
                Ok(Some(stored.record))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn stored(token: &str) -> StoredAdminToken {
        StoredAdminToken {
            record: AdminTokenRecord {
                id: token_id(token).unwrap_or("x").to_owned(),
                name: "ci".into(),
                roles: vec![PrincipalRole::Admin],
                created_at: t0(),
                created_by: "ops".into(),
                expires_at: None,
                revoked_at: None,
                revoked_by: None,
                last_used_at: None,
            },
            sha256: Sha256::digest(token.as_bytes()).into(),
            scram: ScramVerifier::derive(token, b"salt", 4096),
        }
    }

    #[test]
    fn generated_tokens_have_the_store_shape_and_are_distinct() {
        let (id, token) = generate();
        assert_eq!(token_id(token.expose()), Some(id.as_str()));
        assert_eq!(
            token.expose().len(),
            ADMIN_TOKEN_PREFIX.len() + TOKEN_ID_HEX + TOKEN_SECRET_HEX
        );
        assert_ne!(generate().1.expose(), token.expose());
        // The audit redaction hides all of it, not just a prefix.
        let text = format!("pasted {} here", token.expose());
        let redacted = crate::audit::redact::redact_tokens(&text);
        assert!(
            !redacted.contains(&token.expose()[ADMIN_TOKEN_PREFIX.len()..][..4]),
            "{redacted}"
        );
        assert!(
            !redacted.contains(&token.expose()[token.expose().len() - 8..]),
            "{redacted}"
        );
    }

    #[test]
    fn only_the_store_shape_has_an_id() {
        let good = format!("tbxa_{}", "0123456789abcdef".repeat(3));
        assert_eq!(token_id(&good), Some("0123456789abcdef"));
        // A config token made by `admin-token new --config-line` (32 hex digits) is not one.
        assert_eq!(token_id(&format!("tbxa_{}", "ab".repeat(16))), None);
        assert_eq!(token_id(&format!("tbx_{}", "0123456789abcdef".repeat(3))), None);
        assert_eq!(token_id(&format!("tbxa_{}", "0123456789ABCDEF".repeat(3))), None);
        assert_eq!(token_id(&format!("tbxa_{}é", "0123456789abcdef".repeat(3))), None);
        assert_eq!(token_id(""), None);
        assert_eq!(token_id("tbxa_"), None);
    }

    #[test]
    fn a_presented_token_is_admitted_only_when_it_matches_and_is_live() {
        let (_, token) = generate();
        let mut s = stored(token.expose());
        assert_eq!(check_presented(&s, token.expose(), t0()), Check::Admitted);
        let mut other = token.expose().to_owned();
        other.pop();
        other.push(if token.expose().ends_with('0') { '1' } else { '0' });
        assert_eq!(check_presented(&s, &other, t0()), Check::Unknown);

        s.record.expires_at = Some(t0() + chrono::Duration::minutes(5));
        assert_eq!(
            check_presented(&s, token.expose(), t0() + chrono::Duration::minutes(4)),
            Check::Admitted
        );
        let expired = check_presented(&s, token.expose(), t0() + chrono::Duration::minutes(5));
        let Check::Refused(refusal) = expired else {
            panic!("{expired:?}")
        };
        assert_eq!(refusal.code(), "admin_token_expired");
        assert_eq!(
            refusal.to_string(),
            "admin token \"ci\" expired at 2026-01-01T00:05:00Z"
        );
        // Someone without the token learns nothing about its state.
        assert_eq!(
            check_presented(&s, &other, t0() + chrono::Duration::hours(1)),
            Check::Unknown
        );

        s.record.revoked_at = Some(t0());
        s.record.revoked_by = Some("ops".into());
        let Check::Refused(refusal) = check_presented(&s, token.expose(), t0()) else {
            panic!("revoked is refused")
        };
        assert_eq!(refusal.code(), "admin_token_revoked");
        assert!(
            refusal
                .to_string()
                .contains("revoked at 2026-01-01T00:00:00Z by ops"),
            "{refusal}"
        );
        assert!(!format!("{s:?}").contains("sha256"), "Debug hides the hash");
    }

    #[test]
    fn new_tokens_are_validated_field_by_field() {
        let ok = NewAdminToken {
            name: "ci-bot".into(),
            roles: vec!["auditor".into(), "admin".into(), "admin".into()],
            expires_at: Some(t0() + chrono::Duration::days(30)),
        };
        assert_eq!(
            validate_new(&ok, t0()).unwrap(),
            vec![PrincipalRole::Admin, PrincipalRole::Auditor]
        );
        let field = |req: NewAdminToken| match validate_new(&req, t0()) {
            Err(AdminTokenError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(NewAdminToken {
                name: "".into(),
                ..ok.clone()
            }),
            "name"
        );
        assert_eq!(
            field(NewAdminToken {
                name: "a b".into(),
                ..ok.clone()
            }),
            "name"
        );
        assert_eq!(
            field(NewAdminToken {
                roles: vec![],
                ..ok.clone()
            }),
            "roles"
        );
        assert_eq!(
            field(NewAdminToken {
                roles: vec!["root".into()],
                ..ok.clone()
            }),
            "roles"
        );
        assert_eq!(
            field(NewAdminToken {
                expires_at: Some(t0()),
                ..ok.clone()
            }),
            "expires_at"
        );
        assert!(validate_new(
            &NewAdminToken {
                expires_at: None,
                ..ok
            },
            t0()
        )
        .is_ok());
    }

    #[test]
    fn roles_round_trip_their_stored_text() {
        let roles = vec![PrincipalRole::Admin, PrincipalRole::Auditor];
        assert_eq!(roles_text(&roles), "admin,auditor");
        assert_eq!(parse_roles("admin,auditor"), Some(roles));
        assert_eq!(parse_roles("admin,root"), None);
        assert_eq!(parse_roles(""), None);
    }

    /// A service over an in-memory store whose audit log works until `writer` is shut down.
    fn service() -> (AdminTokenService, Store, crate::audit::AuditWriterHandle) {
        use crate::audit::{AuditLog, AuditOptions};
        use crate::clock::SystemClock;
        let config = Arc::new(crate::config::testing::config("8h", ""));
        let (audit, writer) =
            AuditLog::open_with(AuditOptions::from_config(&config.audit, &config.store)).unwrap();
        let metrics = Arc::new(crate::metrics::Metrics::new().unwrap());
        let webhooks = Arc::new(crate::webhooks::Webhooks::new(Vec::new(), metrics));
        let effects = Effects::new(audit, webhooks, Arc::new(SystemClock));
        let store = Store::new(Arc::new(
            crate::store::sqlite::SqliteStore::open_in_memory().unwrap(),
        ));
        let service = AdminTokenService::new(store.clone(), config, Arc::new(SystemClock), effects);
        (service, store, writer)
    }

    fn request(name: &str) -> NewAdminToken {
        NewAdminToken {
            name: name.into(),
            roles: vec!["auditor".into()],
            expires_at: None,
        }
    }

    /// No token leaves the service without its `admin_token_issued` record: when the audit log
    /// refuses, the caller gets `Unrecorded`, and the stored token is revoked again (so it is
    /// useless even if it were known, and its name is free).
    #[tokio::test]
    async fn an_issue_the_audit_log_refuses_releases_no_token_and_frees_the_name() {
        let (service, store, writer) = service();
        let (issued, token) = service.issue(request("ok"), "ops").await.unwrap();
        let admitted = service.authenticate(token.expose()).await.unwrap();
        assert_eq!(admitted.map(|r| r.name), Some(issued.name));

        writer.shutdown().await;
        let err = service.issue(request("ci"), "ops").await.unwrap_err();
        let AdminTokenError::Unrecorded(unrecorded) = err else {
            panic!("{err:?}")
        };
        assert!(
            unrecorded.message.contains("was not issued"),
            "{}",
            unrecorded.message
        );
        let listed = store.list_admin_tokens().await.unwrap();
        let ci = listed
            .iter()
            .find(|r| r.name == "ci")
            .expect("stored, then revoked");
        assert_eq!(ci.revoked_by.as_deref(), Some("timebox"));
        assert!(service.live_named("ci").await.unwrap().is_none());
    }

    /// A name a config token has is refused (409), for issuing and revoking alike.
    #[tokio::test]
    async fn config_token_names_are_not_for_the_store() {
        let (service, _store, _writer) = service();
        let err = service.issue(request("ops"), "ops").await.unwrap_err();
        assert!(
            matches!(err, AdminTokenError::Conflict(ref m) if m.contains("config file")),
            "{err:?}"
        );
        let err = service.revoke("ops", "ops").await.unwrap_err();
        assert!(
            matches!(err, AdminTokenError::Conflict(ref m) if m.contains("config file")),
            "{err:?}"
        );
        let err = service.revoke("nobody", "ops").await.unwrap_err();
        assert!(matches!(err, AdminTokenError::NotFound(_)), "{err:?}");
    }

    #[test]
    fn last_use_is_written_at_most_once_a_minute() {
        assert!(needs_touch(None, t0()));
        assert!(!needs_touch(Some(t0()), t0() + chrono::Duration::seconds(59)));
        assert!(needs_touch(Some(t0()), t0() + chrono::Duration::seconds(60)));
        assert!(
            !needs_touch(Some(t0() + chrono::Duration::seconds(5)), t0()),
            "clock went back"
        );
    }
}
