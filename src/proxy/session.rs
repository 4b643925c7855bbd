//! One client connection, from accept to close: startup, then `login`
//! (authentication, upstream login), then the `relay`, then the session end
//! (audit record, metrics). [`handle_connection`] is the thin entry the accept loop spawns.
//! A severed session's client is closed first; its upstream query is stopped after, bounded
//! (through the batch connection of [`super::upstream_cancel`], else a CancelRequest), and how it
//! ended is recorded (`upstream_end`). When a grant's end cuts all its sessions at once, each
//! waits after its FATAL until every one of them has its own ([`CUT_BARRIER_BOUND`] at most)
//! before it closes anything or ends a backend.
//! A session must never outlive its grant, and never leave a query running upstream after the
//! client is gone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::cancel::{stop_plan, stop_upstream, CancelKeyGuard, Stop, StopPlan, UpstreamCancel};
use super::intercept::Interceptor;
use super::login::{self, authenticate, open_session};
use super::relay::{EndReason, SEVER_DRAIN};
use super::startup::{self, ClientParams, ClientTlsInfo, Startup, StartupError};
use super::stream::{ClientStream, UpstreamStream};
use super::wire::PgError;
use super::wire::StartupMessage;
use super::{PreAuthSlot, ProxyContext, SessionHandle};
use crate::audit::event::{self as audit_event, AuditEvent};
use crate::grants::watch::GrantWatch;
use crate::grants::Grant;

/// Entry point for an accepted TCP connection. `unauthenticated` is its slot among connections
/// that have not logged in yet (`Err` when none is free: the client still gets that FATAL after
/// its startup packet). A slot among `max_connections` is taken only once the client has
/// authenticated.
pub async fn handle_connection(
    ctx: Arc<ProxyContext>,
    tcp: TcpStream,
    peer: SocketAddr,
    unauthenticated: Result<PreAuthSlot, PgError>,
) {
    let _ = tcp.set_nodelay(true);
    let startup_deadline = Instant::now() + ctx.config.proxy.startup_timeout;
    let Some((mut client, message, tls)) = negotiate(&ctx, tcp, peer, startup_deadline).await else {
        return;
    };
    let unauthenticated = match unauthenticated {
        Ok(slot) => slot,
        Err(error) => {
            tracing::warn!(client.addr = %peer, message = %error.message, "too many unauthenticated connections");
            send_fatal(&mut client, &error).await;
            return;
        }
    };
    let params = match startup::check_startup_params(&message) {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(client.addr = %peer, code = e.code, message = %e.message, "startup parameters refused");
            send_fatal(&mut client, &e).await;
            return;
        }
    };
    if params.target == crate::auditsql::AUDIT_DATABASE {
        let serve = (ctx.audit_endpoint)(client, params, tls, peer, startup_deadline, unauthenticated);
        serve.await;
        return;
    }
    let login = Login {
        params,
        tls,
        peer,
        deadline: startup_deadline,
    };
    login_and_relay(ctx, client, login, unauthenticated).await;
}

/// A client that sent its startup packet and is about to log in.
struct Login {
    params: ClientParams,
    tls: Option<ClientTlsInfo>,
    peer: SocketAddr,
    /// The startup deadline: TLS, startup packet and SCRAM must be done by then.
    deadline: Instant,
}

/// TLS and the startup packet, before `deadline`. `None` when the connection is done with
/// (refused, timed out, left, or a cancel request, which is forwarded here).
async fn negotiate(
    ctx: &ProxyContext,
    tcp: TcpStream,
    peer: SocketAddr,
    startup_deadline: Instant,
) -> Option<(ClientStream, StartupMessage, Option<ClientTlsInfo>)> {
    let negotiated = tokio::time::timeout_at(
        startup_deadline,
        startup::negotiate(tcp, ctx.proxy.tls.as_ref(), ctx.config.proxy.tls),
    )
    .await;
    match negotiated {
        Err(_) => {
            tracing::debug!(client.addr = %peer, "startup timed out");
            None
        }
        Ok(Err(StartupError::Refused { mut client, error })) => {
            tracing::info!(client.addr = %peer, code = error.code, message = %error.message, "startup refused");
            send_fatal(&mut client, &error).await;
            None
        }
        Ok(Err(e)) => {
            if e.is_disconnect() {
                tracing::debug!(client.addr = %peer, error = %e, "client left during startup");
            } else {
                tracing::info!(client.addr = %peer, error = %e, "startup failed");
            }
            None
        }
        Ok(Ok(Startup::Cancel { pid, secret })) => {
            crate::fleet::cancel::on_cancel_request(ctx, peer, pid, secret).await;
            None
        }
        Ok(Ok(Startup::Session { client, message, tls })) => Some((client, message, tls)),
    }
}

/// Authenticates, admits, opens the upstream and runs the session, all in the session's span.
async fn login_and_relay(
    ctx: Arc<ProxyContext>,
    mut client: ClientStream,
    login: Login,
    unauthenticated: PreAuthSlot,
) {
    let Login {
        params,
        tls,
        peer,
        deadline: startup_deadline,
    } = login;

    let span = tracing::info_span!(
        "session",
        client.addr = %peer,
        user = %params.user,
        target = %params.target,
        session.id = tracing::field::Empty,
        grant.id = tracing::field::Empty,
    );
    let _enter = span.enter();
    drop(_enter);
    // The startup deadline covers what the client must do (TLS, startup, SCRAM); the upstream
    // login has its own timeout so a slow target is reported as such, not as the client's fault.
    let authenticated = tokio::time::timeout_at(
        startup_deadline,
        authenticate(&ctx, &mut client, &params, tls.as_ref(), peer),
    );
    let authenticated = tracing::Instrument::instrument(authenticated, span.clone()).await;
    let (grant, watch) = match authenticated {
        Err(_) => {
            // The attempt's throttle reservation was dropped unreleased: it counts as a failure.
            login::record_auth_timeout(&ctx.proxy.metrics, &ctx.audit, &params, peer);
            send_fatal(&mut client, &PgError::startup_timeout()).await;
            return;
        }
        Ok(Err(error)) => {
            send_fatal(&mut client, &error).await;
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Ok(Some(admitted))) => admitted,
    };
    let _slot = match ctx.proxy.admit(ctx.config.proxy.max_connections) {
        Ok(slot) => slot,
        Err(error) => {
            send_fatal(&mut client, &error).await;
            return;
        }
    };
    drop(unauthenticated);
    let opened = open_session(&ctx, &mut client, &params, tls.as_ref(), peer, grant, watch);
    let session = match tracing::Instrument::instrument(opened, span.clone()).await {
        Err(error) => {
            send_fatal(&mut client, &error).await;
            return;
        }
        Ok(None) => return,
        Ok(Some(session)) => session,
    };
    span.record("session.id", session.handle.id);
    span.record("grant.id", session.grant.id.as_str());
    let run = session.run(client);
    tracing::Instrument::instrument(run, span).await;
}

/// Writes a FATAL (best effort) and closes.
pub(crate) async fn send_fatal(client: &mut ClientStream, error: &PgError) {
    let bytes = error.to_bytes();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        client.write_all(&bytes).await?;
        client.flush().await?;
        client.shutdown().await
    })
    .await;
}

/// The part of a session that exists once its upstream is open.
pub(crate) struct Session {
    /// What the proxy shares with every session: config, grants, audit log, clock, shutdown.
    pub(crate) ctx: Arc<ProxyContext>,
    /// Registry entry (listing, kill); removed when the session ends.
    pub(crate) handle: Arc<SessionHandle>,
    /// The grant as last seen; replaced whenever the watch reports a change.
    pub(crate) grant: Grant,
    /// Revocation and extension arrive here.
    pub(crate) watch: GrantWatch,
    pub(crate) upstream: UpstreamStream,
    /// How to cancel the upstream backend's running query.
    pub(crate) upstream_cancel: UpstreamCancel,
    /// Keeps the client-facing cancel key registered for the session's lifetime.
    pub(crate) _cancel_key: CancelKeyGuard,
    /// Checks every statement against the grant's role before it is forwarded.
    pub(crate) interceptor: Interceptor,
    /// Statements audited so far in this session (their `statement_id`s).
    pub(crate) statement_seq: u64,
}

impl Session {
    /// Relays until the session ends, then closes both sides and records the end.
    async fn run(mut self, mut client: ClientStream) {
        let started = Instant::now();
        let metrics = self.ctx.proxy.metrics.clone();
        let (target, role) = (self.grant.target.clone(), self.grant.role.clone());
        let labels = [target.as_str(), role.as_str()];
        metrics.sessions_total.with_label_values(&labels).inc();
        metrics.sessions_active.with_label_values(&labels).inc();
        let mut relay = self.relay_state(&client);
        let reason = self.relay(&mut client, &mut relay).await;
        self.watch.relay_ended();
        let plan = stop_plan(relay.cancel_upstream(), relay.sync_points_in_flight());
        // The client has its FATAL. When the grant's end cut every session of it at the same
        // moment, each waits until all have theirs before it does anything slower (closing
        // sockets, the session end record, ending backends: a backend's exit takes CPU from the
        // sessions still to be cut); otherwise it lets the others run first (issue 18).
        let waited = Instant::now();
        let stop_bound = self.ctx.config.proxy.upstream_stop_timeout;
        if waits_for_the_grants_cut(reason, plan) {
            let bound = CUT_BARRIER_BOUND.min(stop_bound / 2);
            let _ = tokio::time::timeout(bound, self.watch.relays_ended()).await;
        } else {
            tokio::task::yield_now().await;
        }
        let waited = waited.elapsed();
        tracing::debug!("ending the session after its final message");
        // Outcomes of the last statements not yet handed to the audit log go with the session end.
        let mut outcomes = relay.into_outcomes();
        // The client has its final message: it is closed first, and the session ends for it now.
        let _ = tokio::time::timeout(Duration::from_millis(500), client.shutdown()).await;
        drop(client);
        let ended = Instant::now();
        let stats = self.handle.stats();
        let end = AuditEvent::SessionEnd(audit_event::SessionEnd {
            bytes_from_client: stats.bytes_from_client,
            bytes_to_client: stats.bytes_to_client,
            duration_us: started.elapsed().as_micros() as u64,
            ended_by: (reason == EndReason::Killed)
                .then(|| self.handle.kill_reason())
                .flatten(),
            grant_id: self.grant.id.clone(),
            reason: reason.as_str().to_owned(),
            session_id: self.handle.name(),
            statements: stats.statements,
            target: self.grant.target.clone(),
            user: self.grant.user.clone(),
        });
        outcomes.push(end);
        // Whatever happened, no upstream query may outlive the session: stop it (bounded) while the
        // session end is being recorded, then record how it stopped.
        let limits = &self.ctx.proxy.cancel_limits;
        let slots = limits.for_server(&self.upstream_cancel);
        let (grant, pid) = (&self.grant, self.upstream_cancel.pid);
        let urgent = plan == StopPlan::CloseAtOnce;
        let batch = limits
            .batch
            .terminate(&self.ctx, (&grant.target, &grant.role), pid, urgent);
        let stop = Stop {
            plan,
            batch,
            cancel: &self.upstream_cancel,
            slots: &slots,
        };
        // The wait above counts against the bound on the upstream's stop.
        let bound = stop_bound.saturating_sub(waited);
        let stop = stop_upstream(&mut self.upstream, stop, bound);
        let (_, stopped) = tokio::join!(record(&self.ctx, outcomes), stop);
        if let Some(outcome) = stopped {
            tracing::info!(
                outcome = outcome.as_str(),
                after_ms = ended.elapsed().as_millis() as u64,
                "upstream query ended"
            );
            let upstream_end = AuditEvent::UpstreamEnd(audit_event::UpstreamEnd {
                after_us: ended.elapsed().as_micros() as u64,
                grant_id: self.grant.id.clone(),
                outcome: outcome.as_str().to_owned(),
                session_id: self.handle.name(),
                target: self.grant.target.clone(),
                user: self.grant.user.clone(),
            });
            record(&self.ctx, vec![upstream_end]).await;
        }
        tracing::info!(
            reason = reason.as_str(),
            duration_ms = started.elapsed().as_millis() as u64,
            bytes_from_client = stats.bytes_from_client,
            bytes_to_client = stats.bytes_to_client,
            "session ended"
        );
        self.ctx.proxy.sessions.remove(self.handle.id);
        metrics.sessions_active.with_label_values(&labels).dec();
        metrics
            .session_ends_total
            .with_label_values(&[reason.as_str()])
            .inc();
    }
}

/// How long a session cut with its whole grant waits after its FATAL for the grant's other
/// sessions to have theirs. Each of them writes its FATAL at the cut, or its relay ends at its
/// close deadline ([`SEVER_DRAIN`] after its cut) if its client does not read; the rest is margin
/// for sessions cut a little later (or still logging in). At most half of
/// `proxy.upstream_stop_timeout`, and counted against it.
pub const CUT_BARRIER_BOUND: Duration = SEVER_DRAIN.saturating_add(Duration::from_millis(250));

/// Whether a session that ended for `reason`, its upstream to be stopped by `plan`, waits for the
/// rest of its grant's sessions to have their FATAL: only when the grant's end (expiry,
/// revocation) cut them all at once, and not when statements are queued behind the running one
/// (their backend must be ended at once, or they would run after the FATAL). Pure.
pub(crate) fn waits_for_the_grants_cut(reason: EndReason, plan: StopPlan) -> bool {
    matches!(reason, EndReason::Expired | EndReason::Revoked) && plan != StopPlan::CloseAtOnce
}

/// Records a session's closing `events` (bounded wait), logging a failure.
async fn record(ctx: &ProxyContext, events: Vec<AuditEvent>) {
    match tokio::time::timeout(Duration::from_secs(5), ctx.audit.record(events)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            ctx.proxy.metrics.audit_failures_total.inc();
            tracing::error!(error = %e, "cannot record the session end in the audit log");
        }
        Err(_) => tracing::error!("timed out recording the session end in the audit log"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sessions_cut_with_their_whole_grant_wait_for_the_others_fatals() {
        for plan in [StopPlan::Idle, StopPlan::Stop] {
            assert!(waits_for_the_grants_cut(EndReason::Expired, plan));
            assert!(waits_for_the_grants_cut(EndReason::Revoked, plan));
        }
        assert!(
            !waits_for_the_grants_cut(EndReason::Expired, StopPlan::CloseAtOnce),
            "queued statements: the backend is ended at once"
        );
        for reason in [
            EndReason::ClientExit,
            EndReason::Killed,
            EndReason::Shutdown,
            EndReason::UpstreamError,
            EndReason::ClientError,
            EndReason::AuditUnavailable,
        ] {
            assert!(!waits_for_the_grants_cut(reason, StopPlan::Stop), "{reason:?}");
        }
        assert!(CUT_BARRIER_BOUND > SEVER_DRAIN);
    }
}
