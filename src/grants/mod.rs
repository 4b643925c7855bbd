//! Grants: who may reach which target, with which role, why, and until when.
//!
//! Data flow: the admin API (or CLI through it), the demo and [`requests`] call
//! [`GrantService::issue`]/[`GrantService::revoke`]/[`GrantService::extend`], which record each change
//! in the audit trail and announce it to the webhooks themselves ([`effects`]), so no caller can
//! forget to; a grant's token is released only once its `grant_issued` record is written. The proxy's
//! authentication calls [`GrantService::candidates`] and then the pure
//! [`Grant::status_at`] to admit a session; live sessions hold a [`watch::GrantWatch`] so revocation
//! and extension reach them at once. Everything that decides (status, TTL caps, validation) is a pure
//! function over a [`Grant`] and a time.

pub mod admin_tokens;
pub mod effects;
pub mod requests;
pub mod token;
pub mod validate;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::audit::{AuditEvent, GrantExtended, GrantIssued, GrantRevoked};
use crate::clock::Clock;
use crate::config::Config;
use crate::store::{GrantCounts, GrantFilter, Store, StoreError};
use crate::webhooks::WebhookEvent;
use effects::{Effects, Unrecorded};
use token::{GrantToken, ScramVerifier, SCRAM_ITERATIONS};
use watch::GrantWatches;

/// A grant as stored and shown (never with its token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Grant {
    pub id: String,
    pub user: String,
    pub target: String,
    pub role: String,
    pub reason: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub starts_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
    pub revoke_reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GrantStatus {
    /// Issued, but `starts_at` is in the future.
    Pending,
    Active,
    Expired,
    Revoked,
}

impl GrantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantStatus::Pending => "pending",
            GrantStatus::Active => "active",
            GrantStatus::Expired => "expired",
            GrantStatus::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(GrantStatus::Pending),
            "active" => Some(GrantStatus::Active),
            "expired" => Some(GrantStatus::Expired),
            "revoked" => Some(GrantStatus::Revoked),
            _ => None,
        }
    }
}

/// A grant as the API and the webhooks show it: every stored field plus its status now. Never a
/// token or verifier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GrantView {
    #[serde(flatten)]
    pub grant: Grant,
    pub status: GrantStatus,
    /// Self-approved emergency access.
    #[serde(default)]
    pub break_glass: bool,
}

impl GrantView {
    pub fn at(grant: Grant, now: DateTime<Utc>) -> Self {
        let status = grant.status_at(now);
        GrantView {
            grant,
            status,
            break_glass: false,
        }
    }

    pub fn flagged(mut self, break_glass: bool) -> Self {
        self.break_glass = break_glass;
        self
    }
}

/// The structured fields of a grant in webhook notifications.
pub fn grant_fields(view: &GrantView) -> serde_json::Value {
    serde_json::json!({ "grant": view })
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Grant {
    /// Refuses to revoke or extend a grant that has ended at `now` (revoked or expired):
    /// [`GrantError::Conflict`] naming its status. Pure.
    pub fn check_changeable(&self, now: DateTime<Utc>) -> Result<(), GrantError> {
        let status = match self.status_at(now) {
            GrantStatus::Revoked => "revoked",
            GrantStatus::Expired => "expired",
            GrantStatus::Active | GrantStatus::Pending => return Ok(()),
        };
        Err(GrantError::Conflict {
            id: self.id.clone(),
            status,
        })
    }

    /// The one function that decides whether a grant admits a session at `now`. Used at login and
    /// again by every live session whenever the grant changes.
    pub fn status_at(&self, now: DateTime<Utc>) -> GrantStatus {
        if self.revoked_at.is_some() {
            GrantStatus::Revoked
        } else if now >= self.expires_at {
            GrantStatus::Expired
        } else if now < self.starts_at {
            GrantStatus::Pending
        } else {
            GrantStatus::Active
        }
    }

    /// Why this grant does not admit a session at `now`, in words for the engineer; `None` if it does.
    pub fn refusal_at(&self, now: DateTime<Utc>) -> Option<String> {
        let when = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        match self.status_at(now) {
            GrantStatus::Active => None,
            GrantStatus::Revoked => Some(format!(
                "grant {} was revoked at {} by {}{}",
                self.id,
                self.revoked_at.map(when).unwrap_or_default(),
                self.revoked_by.as_deref().unwrap_or("unknown"),
                self.revoke_reason
                    .as_deref()
                    .filter(|r| !r.is_empty())
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            )),
            GrantStatus::Expired => Some(format!("grant {} expired at {}", self.id, when(self.expires_at))),
            GrantStatus::Pending => Some(format!("grant {} starts at {}", self.id, when(self.starts_at))),
        }
    }
}

/// A request to issue a grant (admin API body, CLI).
#[derive(Debug, Clone, Deserialize)]
pub struct NewGrant {
    pub user: String,
    pub target: String,
    pub role: String,
    /// The grant's length, e.g. "30m".
    pub ttl: String,
    pub reason: String,
    pub starts_at: Option<DateTime<Utc>>,
}

/// Why a grant could not be issued or changed; each maps to a client-facing error.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("no grant {0}")]
    NotFound(String),
    #[error("grant {id} is already {status}")]
    Conflict { id: String, status: &'static str },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The change was made but its audit record could not be written (503 `audit_unavailable`).
    #[error(transparent)]
    Unrecorded(#[from] Unrecorded),
}

fn invalid(field: &'static str, message: impl Into<String>) -> GrantError {
    GrantError::Invalid {
        field,
        message: message.into(),
    }
}

/// Checks a grant request against the configuration; returns the validated TTL. Pure.
pub fn validate_new_grant(config: &Config, req: &NewGrant) -> Result<Duration, GrantError> {
    check_name("user", &req.user)?;
    check_name("target", &req.target)?;
    check_name("role", &req.role)?;
    let target = config.targets.get(&req.target).ok_or_else(|| {
        let known: Vec<&str> = config.targets.keys().map(String::as_str).collect();
        invalid(
            "target",
            format!("no target {:?} (known: {})", req.target, known.join(", ")),
        )
    })?;
    let role = config.roles.get(&req.role).ok_or_else(|| {
        let known: Vec<&str> = config.roles.keys().map(String::as_str).collect();
        invalid(
            "role",
            format!("no role {:?} (known: {})", req.role, known.join(", ")),
        )
    })?;
    if !target.credentials.contains_key(&req.role) {
        return Err(invalid(
            "role",
            format!(
                "target {:?} has no upstream credential for role {:?}",
                req.target, req.role
            ),
        ));
    }
    let ttl = humantime::parse_duration(&req.ttl).map_err(|e| {
        invalid(
            "ttl",
            format!("{:?} is not a duration ({e}); write e.g. \"30m\"", req.ttl),
        )
    })?;
    if ttl < Duration::from_secs(1) {
        return Err(invalid("ttl", "must be at least 1s"));
    }
    if ttl > role.max_ttl {
        return Err(invalid(
            "ttl",
            format!(
                "{} exceeds role {:?}'s max_ttl of {}",
                req.ttl,
                req.role,
                humantime::format_duration(role.max_ttl)
            ),
        ));
    }
    if req.reason.trim().is_empty() {
        return Err(invalid(
            "reason",
            "a reason is required (what is this access for?)",
        ));
    }
    if req.reason.len() > 1000 {
        return Err(invalid("reason", "at most 1000 characters"));
    }
    check_text("reason", &req.reason)?;
    Ok(ttl)
}

/// Refuses a user, target or role name outside [`validate::name_problem`]'s rules (field `field`).
pub fn check_name(field: &'static str, name: &str) -> Result<(), GrantError> {
    validate::name_problem(name).map_or(Ok(()), |m| Err(invalid(field, m)))
}

/// Refuses free text with control or bidirectional-override characters (field `field`).
pub fn check_text(field: &'static str, text: &str) -> Result<(), GrantError> {
    validate::text_problem(text).map_or(Ok(()), |m| Err(invalid(field, m)))
}

/// How a grant is issued beyond its [`NewGrant`] fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct IssueOptions {
    /// Self-approved emergency access: flagged everywhere, TTL capped by the role.
    pub break_glass: bool,
}

/// The new expiry of a grant extended by `ttl`: the old expiry plus `ttl`, refused (field `ttl`)
/// when that passes `starts_at + cap` (the role's `max_ttl`, or `break_glass_max_ttl` for a
/// break-glass grant). Pure.
pub fn extended_expiry(grant: &Grant, ttl: Duration, cap: Duration) -> Result<DateTime<Utc>, GrantError> {
    let too_long = || invalid("ttl", "too long");
    let add = |t: DateTime<Utc>, d: Duration| {
        chrono::Duration::from_std(d)
            .ok()
            .and_then(|d| t.checked_add_signed(d))
            .ok_or_else(too_long)
    };
    let new = add(grant.expires_at, ttl)?;
    let limit = add(grant.starts_at, cap)?;
    if new > limit {
        let room = (limit - grant.expires_at).to_std().unwrap_or_default();
        return Err(invalid(
            "ttl",
            format!(
                "extending by {} would end the grant at {}, past its limit of {} (max_ttl {} from its start); \
                 at most {} more is possible",
                humantime::format_duration(ttl),
                new.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                limit.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                humantime::format_duration(cap),
                humantime::format_duration(Duration::from_secs(room.as_secs())),
            ),
        ));
    }
    Ok(new)
}

fn new_grant_id() -> String {
    let mut bytes = [0u8; 8];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    format!("g_{}", hex::encode(bytes))
}

/// A grant stored but not yet on the audit record. Its token is released only by
/// [`GrantService::record_issued`], so no token reaches anyone without its `grant_issued` record;
/// dropped, the token is gone and the grant cannot be used.
#[must_use = "a grant's token is released only once its issuance is recorded"]
#[derive(Debug)]
pub(crate) struct UnrecordedGrant {
    grant: Grant,
    token: GrantToken,
    break_glass: bool,
}

impl UnrecordedGrant {
    pub(crate) fn grant(&self) -> &Grant {
        &self.grant
    }
}

/// The grant operations shared by the admin API, the demo, access requests and the proxy. Every
/// change it makes is audited and announced here ([`effects`]). Cheap to clone.
#[derive(Clone, Debug)]
pub struct GrantService {
    store: Store,
    config: Arc<Config>,
    clock: Arc<dyn Clock>,
    watches: GrantWatches,
    /// The audit trail and webhooks every grant change is recorded in and announced to.
    effects: Effects,
}

impl GrantService {
    pub fn new(store: Store, config: Arc<Config>, clock: Arc<dyn Clock>, effects: Effects) -> Self {
        GrantService {
            store,
            config,
            clock,
            watches: GrantWatches::default(),
            effects,
        }
    }

    /// Where this service records and announces its changes (shared with [`requests`]).
    pub fn effects(&self) -> &Effects {
        &self.effects
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub fn watches(&self) -> &GrantWatches {
        &self.watches
    }

    /// Issues a grant, records its `grant_issued` event and announces it; the returned token is the
    /// only copy that will ever exist. If the audit log refuses, the grant exists but its token is
    /// withheld ([`GrantError::Unrecorded`]).
    pub async fn issue(&self, req: NewGrant, created_by: &str) -> Result<(Grant, GrantToken), GrantError> {
        let pending = self
            .issue_unrecorded(req, created_by, IssueOptions::default())
            .await?;
        let (grant, token) = self
            .record_issued(pending, Vec::new(), |g| {
                format!(
                    "grant {} was issued but its audit record could not be written, so its token is withheld; \
                     revoke it once the audit log is healthy",
                    g.id
                )
            })
            .await?;
        let view = GrantView::at(grant.clone(), self.clock.now());
        self.effects.notify(
            WebhookEvent::GrantIssued,
            format!(
                "{} issued grant {} for {} on {} ({}) until {}: {}",
                grant.created_by,
                grant.id,
                grant.user,
                grant.target,
                grant.role,
                rfc3339(grant.expires_at),
                grant.reason
            ),
            grant_fields(&view),
        );
        Ok((grant, token))
    }

    /// Validates and stores a grant; its token waits in the result until
    /// [`record_issued`](Self::record_issued) has written the `grant_issued` record.
    pub(crate) async fn issue_unrecorded(
        &self,
        req: NewGrant,
        created_by: &str,
        options: IssueOptions,
    ) -> Result<UnrecordedGrant, GrantError> {
        let ttl = validate_new_grant(&self.config, &req)?;
        if options.break_glass {
            let workflow = self.config.workflow(&req.role);
            if !workflow.break_glass {
                return Err(invalid(
                    "break_glass",
                    format!("role {:?} does not allow break-glass access", req.role),
                ));
            }
            if ttl > workflow.break_glass_max_ttl {
                return Err(invalid(
                    "ttl",
                    format!(
                        "break-glass grants of role {:?} last at most {}",
                        req.role,
                        humantime::format_duration(workflow.break_glass_max_ttl)
                    ),
                ));
            }
        }
        let now = self.clock.now();
        let (starts_at, expires_at) =
            validate::grant_window(now, req.starts_at, ttl).map_err(|(field, m)| invalid(field, m))?;
        let grant = Grant {
            id: new_grant_id(),
            user: req.user,
            target: req.target,
            role: req.role,
            reason: req.reason.trim().to_owned(),
            created_by: created_by.to_owned(),
            created_at: now,
            starts_at,
            expires_at,
            revoked_at: None,
            revoked_by: None,
            revoke_reason: None,
        };
        let token = GrantToken::generate();
        let secret = self.store.installation_secret().await?;
        let salt = token::salt_for(&secret, &grant.user, &grant.target);
        let token_text = token.expose().to_owned();
        let verifier =
            tokio::task::spawn_blocking(move || ScramVerifier::derive(&token_text, &salt, SCRAM_ITERATIONS))
                .await
                .map_err(|e| GrantError::Store(StoreError::Task(e)))?;
        self.store
            .insert_grant_flagged(grant.clone(), verifier, options.break_glass)
            .await?;
        tracing::info!(grant.id = %grant.id, user = %grant.user, target = %grant.target, role = %grant.role,
            created_by, expires_at = %grant.expires_at, break_glass = options.break_glass, "grant issued");
        Ok(UnrecordedGrant {
            grant,
            token,
            break_glass: options.break_glass,
        })
    }

    /// Records `preceding` and then the grant's `grant_issued` event, in one batch, and only then
    /// releases its token. If the audit log refuses, the token is dropped (the stored grant is
    /// unusable without it) and the caller gets `refusal(grant)` as [`Unrecorded`].
    pub(crate) async fn record_issued(
        &self,
        pending: UnrecordedGrant,
        mut preceding: Vec<AuditEvent>,
        refusal: impl FnOnce(&Grant) -> String,
    ) -> Result<(Grant, GrantToken), Unrecorded> {
        let UnrecordedGrant {
            grant,
            token,
            break_glass,
        } = pending;
        preceding.push(AuditEvent::GrantIssued(GrantIssued::of(&grant, break_glass)));
        self.effects.record(preceding, || refusal(&grant)).await?;
        Ok((grant, token))
    }

    /// `grant` as shown, flagged break-glass or not.
    async fn view(&self, grant: Grant) -> Result<GrantView, StoreError> {
        let break_glass = self.is_break_glass(&grant.id).await?;
        Ok(GrantView::at(grant, self.clock.now()).flagged(break_glass))
    }

    pub async fn get(&self, id: &str) -> Result<Grant, GrantError> {
        self.store
            .get_grant(id.to_owned())
            .await?
            .ok_or_else(|| GrantError::NotFound(id.to_owned()))
    }

    pub async fn list(&self, filter: GrantFilter) -> Result<Vec<Grant>, GrantError> {
        Ok(self.store.list_grants(filter, self.clock.now()).await?)
    }

    /// Revokes a grant and tells its live sessions at once, then records and announces it. If the
    /// audit log refuses, the grant stays revoked and the caller gets [`GrantError::Unrecorded`].
    pub async fn revoke(&self, id: &str, by: &str, reason: &str) -> Result<Grant, GrantError> {
        check_text("reason", reason)?;
        let now = self.clock.now();
        let current = self.get(id).await?;
        current.check_changeable(now)?;
        let revoked = self
            .store
            .revoke_grant(id.to_owned(), by.to_owned(), reason.to_owned(), now)
            .await?
            .ok_or_else(|| GrantError::NotFound(id.to_owned()))?;
        self.watches.publish(&revoked);
        tracing::info!(grant.id = %id, revoked_by = by, "grant revoked");
        if let Some(event) = GrantRevoked::from_grant(&revoked) {
            self.effects
                .record(vec![AuditEvent::GrantRevoked(event)], || {
                    format!(
                        "grant {} was revoked (its sessions are being closed) but its audit record could not be \
                         written",
                        revoked.id
                    )
                })
                .await?;
        }
        let view = self.view(revoked.clone()).await?;
        let g = &view.grant;
        self.effects.notify(
            WebhookEvent::GrantRevoked,
            format!(
                "{by} revoked grant {} for {} on {} ({}): {reason}",
                g.id, g.user, g.target, g.role
            ),
            grant_fields(&view),
        );
        Ok(revoked)
    }

    /// Extends a grant by `ttl` (see [`extended_expiry`]) as `by` and tells its live sessions at once,
    /// then records and announces it. `reason` (optional) is checked like every free text. Returns the
    /// expiry before and the grant after. If the audit log refuses, the grant stays extended and the
    /// caller gets [`GrantError::Unrecorded`].
    pub async fn extend(
        &self,
        id: &str,
        ttl: &str,
        reason: Option<&str>,
        by: &str,
    ) -> Result<(DateTime<Utc>, Grant), GrantError> {
        if let Some(r) = reason {
            check_text("reason", r)?;
        }
        let ttl = humantime::parse_duration(ttl).map_err(|e| {
            invalid(
                "ttl",
                format!("{ttl:?} is not a duration ({e}); write e.g. \"30m\""),
            )
        })?;
        if ttl < Duration::from_secs(1) {
            return Err(invalid("ttl", "must be at least 1s"));
        }
        let now = self.clock.now();
        let current = self.get(id).await?;
        current.check_changeable(now)?;
        let role = self
            .config
            .roles
            .get(&current.role)
            .ok_or_else(|| invalid("role", format!("role {:?} is no longer configured", current.role)))?;
        let cap = if self.is_break_glass(id).await? {
            self.config.workflow(&current.role).break_glass_max_ttl
        } else {
            role.max_ttl
        };
        let new_expiry = extended_expiry(&current, ttl, cap)?;
        let extended = self
            .store
            .extend_grant(id.to_owned(), new_expiry)
            .await?
            .ok_or_else(|| GrantError::NotFound(id.to_owned()))?;
        if extended.revoked_at.is_some() {
            return Err(GrantError::Conflict {
                id: id.to_owned(),
                status: "revoked",
            });
        }
        self.watches.publish(&extended);
        tracing::info!(grant.id = %id, previous = %current.expires_at, expires_at = %extended.expires_at,
            "grant extended");
        let event = AuditEvent::GrantExtended(GrantExtended {
            expires_at: extended.expires_at,
            extended_by: by.to_owned(),
            grant_id: extended.id.clone(),
            previous_expires_at: current.expires_at,
            reason: reason.map(str::to_owned),
            target: extended.target.clone(),
            user: extended.user.clone(),
        });
        self.effects
            .record(vec![event], || {
                format!(
                    "grant {} was extended but its audit record could not be written",
                    extended.id
                )
            })
            .await?;
        let view = self.view(extended.clone()).await?;
        let g = &view.grant;
        self.effects.notify(
            WebhookEvent::GrantExtended,
            format!(
                "{by} extended grant {} for {} on {} ({}) until {}{}",
                g.id,
                g.user,
                g.target,
                g.role,
                rfc3339(g.expires_at),
                reason.map(|r| format!(": {r}")).unwrap_or_default()
            ),
            grant_fields(&view),
        );
        Ok((current.expires_at, extended))
    }

    /// Whether grant `id` is a break-glass grant.
    pub async fn is_break_glass(&self, id: &str) -> Result<bool, StoreError> {
        Ok(!self.store.break_glass_ids(vec![id.to_owned()]).await?.is_empty())
    }

    /// Which of `ids` are break-glass grants.
    pub async fn break_glass_ids(
        &self,
        ids: Vec<String>,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        self.store.break_glass_ids(ids).await
    }

    /// Grant counts by state now (metrics).
    pub async fn counts(&self) -> Result<GrantCounts, StoreError> {
        self.store.grant_counts(self.clock.now()).await
    }

    /// The underlying store (for services built beside this one).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Grants (with verifiers) of `user` on `target` that a presented token may belong to, newest first.
    pub async fn candidates(
        &self,
        user: &str,
        target: &str,
    ) -> Result<Vec<(Grant, ScramVerifier)>, StoreError> {
        self.store
            .grant_candidates(user.to_owned(), target.to_owned())
            .await
    }

    /// The SCRAM salt used for `user` on `target`, whether or not such grants exist.
    pub async fn salt_for(&self, user: &str, target: &str) -> Result<[u8; 16], StoreError> {
        let secret = self.store.installation_secret().await?;
        Ok(token::salt_for(&secret, user, target))
    }
}

#[cfg(test)]
mod tests;
