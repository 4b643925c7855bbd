//! Access requests: an engineer asks for a grant with a reason; other people approve or deny it.
//!
//! Data flow: the admin API calls [`RequestService`]; a request is stored pending, collects the
//! approvals its role needs (`approvals = N` distinct approvers, never the requester: two-person
//! rule), and the Nth approval issues the grant through [`super::GrantService`]. A break-glass request
//! (`break_glass = true` on the role) approves itself at once with a capped TTL and a flagged grant.
//! Every change of state is recorded in the audit trail and announced to the webhooks here
//! ([`super::effects`]); a change the audit log refuses is answered with [`RequestError::Unrecorded`].
//! A grant a request issued is recorded together with the request event that issued it (`approved`,
//! or `created` for break-glass), and its token is kept only once that record is written.
//!
//! The token of a grant made from a request is generated at approval and kept **only in memory**
//! (never stored, not even encrypted) until the requester fetches it once; a restart before the fetch
//! loses it and the engineer asks again. Everything that decides (status, validation, TTL cap) is a
//! pure function; this module must never log a token.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::effects::{Effects, Unrecorded, AUDIT_UNAVAILABLE};
use super::token::GrantToken;
use super::{
    grant_fields, rfc3339, Grant, GrantError, GrantService, GrantView, IssueOptions, NewGrant,
    UnrecordedGrant,
};
use crate::audit::event::AccessRequestEvent;
use crate::audit::AuditEvent;
use crate::clock::Clock;
use crate::config::Config;
use crate::store::{ApproveOutcome, RequestFilter, Store, StoreError};
use crate::webhooks::WebhookEvent;

/// Longest request reason accepted (the grant's reason adds the request id and ticket).
pub const MAX_REQUEST_REASON_CHARS: usize = 800;
/// Longest ticket reference accepted.
pub const MAX_TICKET_CHARS: usize = 100;

/// A request's state as stored; [`AccessRequest::status_at`] turns an overdue `Pending` into `Expired`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RequestStatus {
    Pending,
    Approved,
    Denied,
    Expired,
}

impl RequestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Pending => "pending",
            RequestStatus::Approved => "approved",
            RequestStatus::Denied => "denied",
            RequestStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(RequestStatus::Pending),
            "approved" => Some(RequestStatus::Approved),
            "denied" => Some(RequestStatus::Denied),
            "expired" => Some(RequestStatus::Expired),
            _ => None,
        }
    }
}

/// One reviewer's approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Approval {
    pub by: String,
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// An access request as stored and shown (never with a token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AccessRequest {
    pub id: String,
    /// The principal who asked; also the PostgreSQL user the grant is for.
    pub requester: String,
    pub target: String,
    pub role: String,
    /// The grant length asked for (after the break-glass cap), e.g. "30m".
    pub ttl: String,
    pub reason: String,
    pub ticket: Option<String>,
    pub break_glass: bool,
    pub created_at: DateTime<Utc>,
    /// A pending request not decided by then is expired.
    pub review_deadline: DateTime<Utc>,
    pub approvals_required: u32,
    pub approvals: Vec<Approval>,
    /// The stored state (see [`AccessRequest::status_at`]).
    pub state: RequestStatus,
    pub decided_at: Option<DateTime<Utc>>,
    pub denied_by: Option<String>,
    pub deny_reason: Option<String>,
    /// The grant the final approval issued.
    pub grant_id: Option<String>,
    /// When the requester fetched the grant's token (it can be fetched once).
    pub token_fetched_at: Option<DateTime<Utc>>,
}

impl AccessRequest {
    /// The request's status at `now`: a pending request past its review deadline is expired.
    pub fn status_at(&self, now: DateTime<Utc>) -> RequestStatus {
        match self.state {
            RequestStatus::Pending if now >= self.review_deadline => RequestStatus::Expired,
            s => s,
        }
    }
}

/// A request as the API and the webhooks show it: every stored field plus its status now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RequestView {
    #[serde(flatten)]
    pub request: AccessRequest,
    pub status: RequestStatus,
    /// Only in the answer that filed the request, when it got less than asked: the break-glass TTL
    /// cap ([`ttl_cap_note`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl RequestView {
    pub fn at(request: AccessRequest, now: DateTime<Utc>) -> Self {
        let status = request.status_at(now);
        RequestView {
            request,
            status,
            note: None,
        }
    }
}

/// What to tell a requester whose `asked` TTL became the shorter `granted` one (break-glass requests
/// are capped at the role's `break_glass_max_ttl`, never refused for length); `None` if nothing was cut.
pub fn ttl_cap_note(asked: &str, granted: &str, role: &str) -> Option<String> {
    let (a, g) = (
        humantime::parse_duration(asked).ok()?,
        humantime::parse_duration(granted).ok()?,
    );
    (a > g).then(|| format!("ttl {asked} was capped at {granted} (break_glass_max_ttl of role {role})"))
}

fn request_fields(view: &RequestView) -> serde_json::Value {
    serde_json::json!({ "request": view })
}

/// The audit record of a request's change of state.
fn request_event(r: &AccessRequest, action: &str, actor: &str, reason: Option<&str>) -> AuditEvent {
    AuditEvent::AccessRequest(AccessRequestEvent {
        action: action.to_owned(),
        actor: actor.to_owned(),
        break_glass: r.break_glass,
        grant_id: r.grant_id.clone(),
        reason: reason.map(str::to_owned),
        request_id: r.id.clone(),
        role: r.role.clone(),
        target: r.target.clone(),
        ticket: r.ticket.clone(),
        ttl: r.ttl.clone(),
        user: r.requester.clone(),
    })
}

/// Body of `POST /v1/requests`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAccessRequest {
    pub target: String,
    pub role: String,
    /// e.g. "30m"; at most the role's `max_ttl` (break-glass: capped at `break_glass_max_ttl`).
    pub ttl: String,
    /// Required: what is this access for?
    #[serde(default)]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// Self-approve at once (only roles with `break_glass = true`).
    #[serde(default)]
    pub break_glass: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("no request {0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Grant(#[from] GrantError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The change was made but its audit record could not be written (503 `audit_unavailable`).
    #[error(transparent)]
    Unrecorded(#[from] Unrecorded),
}

fn invalid(field: &'static str, message: impl Into<String>) -> RequestError {
    RequestError::Invalid {
        field,
        message: message.into(),
    }
}

/// Checks a request against the config; returns the TTL the grant will get (break-glass: capped).
/// The requester's name is the PostgreSQL user. Pure.
pub fn validate_request(
    config: &Config,
    requester: &str,
    req: &NewAccessRequest,
) -> Result<Duration, RequestError> {
    let reason = req.reason.trim();
    if reason.is_empty() {
        return Err(invalid(
            "reason",
            "a reason is required (what is this access for?)",
        ));
    }
    if reason.chars().count() > MAX_REQUEST_REASON_CHARS {
        return Err(invalid(
            "reason",
            format!("at most {MAX_REQUEST_REASON_CHARS} characters"),
        ));
    }
    super::check_text("reason", reason)?;
    if let Some(t) = &req.ticket {
        if t.trim().is_empty()
            || t.chars().count() > MAX_TICKET_CHARS
            || t.chars().any(super::validate::is_forbidden_in_text)
        {
            return Err(invalid(
                "ticket",
                format!("1 to {MAX_TICKET_CHARS} printable characters"),
            ));
        }
    }
    let workflow = config.workflow(&req.role);
    let mut ttl = humantime::parse_duration(&req.ttl).map_err(|e| {
        invalid(
            "ttl",
            format!("{:?} is not a duration ({e}); write e.g. \"30m\"", req.ttl),
        )
    })?;
    if req.break_glass {
        if config.roles.contains_key(&req.role) && !workflow.break_glass {
            return Err(invalid(
                "break_glass",
                format!("role {:?} does not allow break-glass access", req.role),
            ));
        }
        ttl = ttl.min(workflow.break_glass_max_ttl);
    }
    // The same checks an issued grant gets (target, role, credential, TTL bounds, user name).
    super::validate_new_grant(config, &grant_request(requester, req, ttl, "r", None))?;
    Ok(ttl)
}

/// The grant a request turns into.
fn grant_request(
    requester: &str,
    req: &NewAccessRequest,
    ttl: Duration,
    request_id: &str,
    ticket: Option<&str>,
) -> NewGrant {
    let mut reason = format!("{} (request {request_id}", req.reason.trim());
    if let Some(t) = ticket {
        reason.push_str(&format!(", ticket {t}"));
    }
    reason.push(')');
    NewGrant {
        user: requester.to_owned(),
        target: req.target.clone(),
        role: req.role.clone(),
        ttl: humantime::format_duration(ttl).to_string(),
        reason,
        starts_at: None,
    }
}

fn new_request_id() -> String {
    let mut bytes = [0u8; 8];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    format!("r_{}", hex::encode(bytes))
}

/// What a state change produced: the request, and the grant if one was issued now.
#[derive(Debug, Clone)]
pub struct RequestChange {
    pub request: AccessRequest,
    pub grant: Option<Grant>,
}

/// Access-request operations shared by the admin API and the expiry task; every change is audited
/// and announced here.
#[derive(Debug)]
pub struct RequestService {
    store: Store,
    grants: GrantService,
    config: Arc<Config>,
    clock: Arc<dyn Clock>,
    /// Tokens of approved requests not yet fetched, by request id. Memory only, by design; a token
    /// is put here only once its grant's `grant_issued` record is written.
    tokens: DashMap<String, GrantToken>,
    /// The same audit trail and webhooks as the grant service's.
    effects: Effects,
}

impl RequestService {
    pub fn new(store: Store, grants: GrantService, config: Arc<Config>, clock: Arc<dyn Clock>) -> Self {
        let effects = grants.effects().clone();
        RequestService {
            store,
            grants,
            config,
            clock,
            tokens: DashMap::new(),
            effects,
        }
    }

    /// Records `event` or refuses with the generic audit refusal.
    async fn record(&self, event: AuditEvent) -> Result<(), Unrecorded> {
        self.effects
            .record(vec![event], || AUDIT_UNAVAILABLE.to_owned())
            .await
    }

    /// Files a request by `requester`. A break-glass request is approved by its requester at once.
    pub async fn create(
        &self,
        req: NewAccessRequest,
        requester: &str,
    ) -> Result<RequestChange, RequestError> {
        let ttl = validate_request(&self.config, requester, &req)?;
        let now = self.clock.now();
        let window = chrono::Duration::from_std(self.config.requests.review_window)
            .unwrap_or_else(|_| chrono::Duration::hours(1));
        let request = AccessRequest {
            id: new_request_id(),
            requester: requester.to_owned(),
            target: req.target.clone(),
            role: req.role.clone(),
            ttl: humantime::format_duration(ttl).to_string(),
            reason: req.reason.trim().to_owned(),
            ticket: req.ticket.as_ref().map(|t| t.trim().to_owned()),
            break_glass: req.break_glass,
            created_at: now,
            review_deadline: now + window,
            approvals_required: if req.break_glass {
                1
            } else {
                self.config.workflow(&req.role).approvals
            },
            approvals: Vec::new(),
            state: RequestStatus::Pending,
            decided_at: None,
            denied_by: None,
            deny_reason: None,
            grant_id: None,
            token_fetched_at: None,
        };
        self.store.insert_request(request.clone()).await?;
        tracing::info!(request.id = %request.id, requester, target = %request.target, role = %request.role,
            break_glass = request.break_glass, "access request filed");
        if !req.break_glass {
            self.record(request_event(
                &request,
                "created",
                requester,
                Some(&request.reason),
            ))
            .await?;
            let r = &request;
            self.effects.notify(
                WebhookEvent::RequestCreated,
                format!(
                    "{} asks for {} access to {} for {}{}: {} (request {}; {} approval{} needed)",
                    r.requester,
                    r.role,
                    r.target,
                    r.ttl,
                    r.ticket.as_ref().map(|t| format!(" [{t}]")).unwrap_or_default(),
                    r.reason,
                    r.id,
                    r.approvals_required,
                    if r.approvals_required == 1 { "" } else { "s" }
                ),
                request_fields(&RequestView::at(r.clone(), self.clock.now())),
            );
            return Ok(RequestChange { request, grant: None });
        }
        let approval = Approval {
            by: requester.to_owned(),
            reason: format!("break-glass: {}", request.reason),
            at: now,
        };
        let (request, pending) = self.record_approval(&request.id, approval).await?;
        let event = request_event(&request, "created", requester, Some(&request.reason));
        self.conclude(request, pending, event, requester).await
    }

    pub async fn get(&self, id: &str) -> Result<AccessRequest, RequestError> {
        self.store
            .get_request(id.to_owned())
            .await?
            .ok_or_else(|| RequestError::NotFound(id.to_owned()))
    }

    pub async fn list(&self, filter: RequestFilter) -> Result<Vec<AccessRequest>, RequestError> {
        Ok(self.store.list_requests(filter, self.clock.now()).await?)
    }

    /// Approves as `by` (never the requester); the last approval needed issues the grant.
    pub async fn approve(&self, id: &str, by: &str, reason: &str) -> Result<RequestChange, RequestError> {
        super::check_text("reason", reason)?;
        let request = self.get(id).await?;
        if request.requester == by {
            return Err(RequestError::Forbidden(format!(
                "{by:?} filed request {id} and cannot approve it (two-person rule)"
            )));
        }
        let approval = Approval {
            by: by.to_owned(),
            reason: reason.to_owned(),
            at: self.clock.now(),
        };
        let (request, pending) = self.record_approval(id, approval).await?;
        let event = request_event(&request, "approved", by, Some(reason));
        self.conclude(request, pending, event, by).await
    }

    /// Stores an approval; the last one needed issues the grant (stored, its token not yet released).
    async fn record_approval(
        &self,
        id: &str,
        approval: Approval,
    ) -> Result<(AccessRequest, Option<UnrecordedGrant>), RequestError> {
        let now = approval.at;
        let by = approval.by.clone();
        let request = match self.store.approve_request(id.to_owned(), approval, now).await? {
            ApproveOutcome::NotFound => return Err(RequestError::NotFound(id.to_owned())),
            ApproveOutcome::NotPending(status) => {
                return Err(RequestError::Conflict(format!(
                    "request {id} is {} and can no longer be reviewed",
                    status.as_str()
                )))
            }
            ApproveOutcome::Duplicate => {
                return Err(RequestError::Conflict(format!(
                    "{by:?} has already approved request {id}; another approver is needed"
                )))
            }
            ApproveOutcome::Recorded(r) => *r,
        };
        tracing::info!(request.id = %id, approver = %by, approvals = request.approvals.len(),
            required = request.approvals_required, "access request approved");
        if request.state != RequestStatus::Approved {
            return Ok((request, None));
        }
        let ttl = humantime::parse_duration(&request.ttl)
            .map_err(|e| StoreError::Corrupt(format!("request {id} has an unreadable ttl: {e}")))?;
        let new = grant_request(
            &request.requester,
            &NewAccessRequest {
                target: request.target.clone(),
                role: request.role.clone(),
                ttl: request.ttl.clone(),
                reason: request.reason.clone(),
                ticket: None,
                break_glass: request.break_glass,
            },
            ttl,
            &request.id,
            request.ticket.as_deref(),
        );
        let created_by = request
            .approvals
            .iter()
            .map(|a| a.by.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let pending = self
            .grants
            .issue_unrecorded(
                new,
                &created_by,
                IssueOptions {
                    break_glass: request.break_glass,
                },
            )
            .await?;
        self.store
            .set_request_grant(id.to_owned(), pending.grant().id.clone())
            .await?;
        let request = self.get(id).await?;
        Ok((request, Some(pending)))
    }

    /// Records `event` (the approval, or the creation of a break-glass request) and announces it; with
    /// a grant just issued, records it in the same batch, keeps its token for the requester only once
    /// that is written, and announces the grant. If the audit log refuses, the token is dropped.
    async fn conclude(
        &self,
        request: AccessRequest,
        pending: Option<UnrecordedGrant>,
        event: AuditEvent,
        actor: &str,
    ) -> Result<RequestChange, RequestError> {
        let r = &request;
        let Some(pending) = pending else {
            self.record(event).await?;
            self.effects.notify(
                WebhookEvent::RequestApproved,
                format!(
                    "{actor} approved access request {} by {} for {} on {} ({} of {} approvals)",
                    r.id,
                    r.requester,
                    r.role,
                    r.target,
                    r.approvals.len(),
                    r.approvals_required
                ),
                request_fields(&RequestView::at(r.clone(), self.clock.now())),
            );
            return Ok(RequestChange { request, grant: None });
        };
        let (grant, token) = self
            .grants
            .record_issued(pending, vec![event], |g| {
                format!(
                    "grant {} was issued for request {} but its audit record could not be written, so its token \
                     is withheld; revoke it once the audit log is healthy",
                    g.id, r.id
                )
            })
            .await?;
        self.tokens.insert(r.id.clone(), token);
        let now = self.clock.now();
        let view = RequestView::at(r.clone(), now);
        let grant_view = GrantView::at(grant.clone(), now).flagged(r.break_glass);
        let until = rfc3339(grant.expires_at);
        let fields = serde_json::json!({ "request": view, "grant": grant_view });
        if r.break_glass {
            self.effects.notify(
                WebhookEvent::BreakGlass,
                format!(
                    ":rotating_light: BREAK-GLASS: {} gave themselves {} access to {} until {} (grant {}): {}",
                    r.requester, r.role, r.target, until, grant.id, r.reason
                ),
                fields,
            );
        } else {
            self.effects.notify(
                WebhookEvent::RequestApproved,
                format!(
                    "{actor} approved access request {} by {} for {} on {}; grant {} until {}",
                    r.id, r.requester, r.role, r.target, grant.id, until
                ),
                fields,
            );
        }
        self.effects.notify(
            WebhookEvent::GrantIssued,
            format!(
                "Grant {} issued for {} on {} ({}) until {} (request {}, approved by {}){}",
                grant.id,
                grant.user,
                grant.target,
                grant.role,
                until,
                r.id,
                grant.created_by,
                if r.break_glass { " [break-glass]" } else { "" }
            ),
            grant_fields(&grant_view),
        );
        Ok(RequestChange {
            request,
            grant: Some(grant),
        })
    }

    /// Denies as `by` (never the requester).
    pub async fn deny(&self, id: &str, by: &str, reason: &str) -> Result<AccessRequest, RequestError> {
        super::check_text("reason", reason)?;
        let request = self.get(id).await?;
        if request.requester == by {
            return Err(RequestError::Forbidden(format!(
                "{by:?} filed request {id} and cannot review it; withdraw it by letting it expire"
            )));
        }
        let now = self.clock.now();
        match self
            .store
            .deny_request(id.to_owned(), by.to_owned(), reason.to_owned(), now)
            .await?
        {
            Some((true, r)) => {
                tracing::info!(request.id = %id, denied_by = by, "access request denied");
                self.record(request_event(&r, "denied", by, Some(reason))).await?;
                self.effects.notify(
                    WebhookEvent::RequestDenied,
                    format!(
                        "{by} denied access request {} by {} for {} on {}: {reason}",
                        r.id, r.requester, r.role, r.target
                    ),
                    request_fields(&RequestView::at(r.clone(), self.clock.now())),
                );
                Ok(r)
            }
            Some((false, r)) => Err(RequestError::Conflict(format!(
                "request {id} is {} and can no longer be reviewed",
                r.status_at(now).as_str()
            ))),
            None => Err(RequestError::NotFound(id.to_owned())),
        }
    }

    /// Hands the requester the token of its approved request, once.
    pub async fn take_token(
        &self,
        id: &str,
        by: &str,
    ) -> Result<(AccessRequest, Grant, GrantToken), RequestError> {
        let request = self.get(id).await?;
        if request.requester != by {
            return Err(RequestError::Forbidden(format!(
                "only the requester of {id} may fetch its token"
            )));
        }
        let now = self.clock.now();
        let Some(grant_id) = request.grant_id.clone() else {
            return Err(RequestError::Conflict(format!(
                "request {id} is {} and has no grant",
                request.status_at(now).as_str()
            )));
        };
        if request.token_fetched_at.is_some() {
            return Err(RequestError::Conflict(format!(
                "the token of request {id} was already fetched; it is shown only once"
            )));
        }
        let Some((_, token)) = self.tokens.remove(id) else {
            return Err(RequestError::Conflict(format!(
                "the token of request {id} is no longer available (timebox restarted since the approval); \
                 file a new request"
            )));
        };
        if !self.store.mark_token_fetched(id.to_owned(), now).await? {
            return Err(RequestError::Conflict(format!(
                "the token of request {id} was already fetched; it is shown only once"
            )));
        }
        let grant = self.grants.get(&grant_id).await?;
        let request = self.get(id).await?;
        self.record(request_event(&request, "token_fetched", by, None))
            .await?;
        Ok((request, grant, token))
    }

    /// Marks overdue pending requests expired, records and announces each; returns them. A record
    /// the audit log refuses is logged (there is no caller to refuse).
    pub async fn expire_due(&self) -> Result<Vec<AccessRequest>, RequestError> {
        let expired = self.store.expire_requests(self.clock.now()).await?;
        for r in &expired {
            tracing::info!(request.id = %r.id, requester = %r.requester, "access request expired unreviewed");
            if let Err(e) = self.record(request_event(r, "expired", "timebox", None)).await {
                tracing::error!(error = %e.source, request.id = %r.id,
                    "cannot record a request expiry in the audit log");
            }
            self.effects.notify(
                WebhookEvent::RequestExpired,
                format!(
                    "Access request {} by {} for {} on {} expired without a decision",
                    r.id, r.requester, r.role, r.target
                ),
                serde_json::json!({ "request": r }),
            );
        }
        Ok(expired)
    }
}

#[cfg(test)]
#[path = "requests_tests.rs"]
pub(crate) mod tests;
