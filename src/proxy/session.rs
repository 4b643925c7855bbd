//! One client connection, from accept to close: startup, authentication, upstream login, relay.
//!
//! The relay loop is the hot path. It moves frontend frames (checked for type and size, whole) to
//! the upstream and backend bytes to the client without decoding them — a [`FrameTracker`] only
//! follows frame headers so that timebox's own messages (expiry warnings, the final FATAL) are
//! injected exactly at a frame boundary. Both directions are driven from one task by a single
//! poll function (no locks, no per-message allocation; buffers are reused; each wake-up writes
//! whatever is pending in one write call per direction).
//!
//! A Query or Parse too big to check inline (see [`Interceptor::wants_offload`]) is prechecked on
//! the blocking pool while the loop goes on serving the upstream, expiry, kills and shutdown; the
//! client's later frames wait for it, so statements stay in order and are audited before they are
//! forwarded.
//!
//! Expiry, revocation, kill and shutdown are arms of the loop's `select!`. When the grant changes,
//! the session re-checks it with [`Grant::refusal_at`], the function that admitted it. Severing a
//! session cancels the running upstream query first, then tells the client why (FATAL 57P01) and
//! closes both sides. It must never leave a query running upstream after the client is gone.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::io::poll_read_buf;
use tokio_util::sync::CancellationToken;

use super::cancel::{CancelKeyGuard, UpstreamCancel};
use super::intercept::{Checked, FrontendAction, Interceptor, Precheck, Prechecker};
use super::relay::gate::AuditGate;
use super::relay::held::{command_tag, error_sqlstate, lexing_problem};
use super::relay::outbox::ClientOutbox;
use super::relay::sync::{Completed, SyncTracker};
use super::startup::{self, ClientParams, ClientTlsInfo, Startup, StartupError};
use super::stream::{ClientStream, UpstreamStream};
use super::wire::{self, PgError};
use super::{PreAuthSlot, SessionHandle};
use crate::audit::event::{self as audit_event, AuditEvent};
use crate::audit::AuditError;
use crate::grants::watch::GrantWatch;
use crate::grants::{Grant, GrantStatus};

use super::login::{self, authenticate, open_session};
use super::wire::StartupMessage;
use super::ProxyContext;

/// Buffered bytes per direction before the relay stops reading from the sender (backpressure).
const HIGH_WATER: usize = 256 * 1024;
/// Initial capacity of each relay buffer.
const BUFFER_CAPACITY: usize = 16 * 1024;
/// How long a severed session may take to reach a frame boundary and deliver its FATAL.
const SEVER_DRAIN: Duration = Duration::from_millis(500);

/// Why a session ended (audit, metrics, logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    ClientExit,
    Expired,
    Revoked,
    Killed,
    UpstreamError,
    ClientError,
    Shutdown,
    /// The audit log refused or failed to record statements (fail closed).
    AuditUnavailable,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::ClientExit => "client_exit",
            EndReason::Expired => "expired",
            EndReason::Revoked => "revoked",
            EndReason::Killed => "killed",
            EndReason::UpstreamError => "upstream_error",
            EndReason::ClientError => "client_error",
            EndReason::Shutdown => "shutdown",
            EndReason::AuditUnavailable => "audit_unavailable",
        }
    }
}

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
            if let Some(target) = ctx.proxy.cancel_keys.lookup(pid, secret) {
                tracing::info!(client.addr = %peer, "forwarding cancel request");
                if let Err(e) = target.send().await {
                    tracing::warn!(error = %e, "cancel request to upstream failed");
                }
            } else {
                tracing::debug!(client.addr = %peer, "cancel request with unknown key ignored");
            }
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

/// Converts a wall-clock deadline into a tokio instant (now if already past).
fn instant_at(now: DateTime<Utc>, at: DateTime<Utc>) -> Instant {
    let wait = (at - now).to_std().unwrap_or(Duration::ZERO);
    Instant::now() + wait
}

/// What one poll of the four I/O directions produced.
#[derive(Default)]
struct IoEvents {
    client_read: Option<std::io::Result<usize>>,
    upstream_read: Option<std::io::Result<usize>>,
    client_wrote: Option<(std::io::Result<usize>, bool)>,
    upstream_wrote: Option<std::io::Result<usize>>,
    client_flushed: Option<std::io::Result<()>>,
    upstream_flushed: Option<std::io::Result<()>>,
    /// A big statement's precheck came back: go on with the client's frames.
    resume_frames: bool,
}

impl IoEvents {
    fn any(&self) -> bool {
        self.client_read.is_some()
            || self.upstream_read.is_some()
            || self.client_wrote.is_some()
            || self.upstream_wrote.is_some()
            || self.client_flushed.is_some()
            || self.upstream_flushed.is_some()
            || self.resume_frames
    }
}

/// How the session is ending, once it is.
struct Closing {
    reason: EndReason,
    /// Give up on delivering the FATAL cleanly after this.
    deadline: Instant,
}

impl Session {
    async fn run(mut self, mut client: ClientStream) {
        let started = Instant::now();
        let metrics = self.ctx.proxy.metrics.clone();
        let (target, role) = (self.grant.target.clone(), self.grant.role.clone());
        let labels = [target.as_str(), role.as_str()];
        metrics.sessions_total.with_label_values(&labels).inc();
        metrics.sessions_active.with_label_values(&labels).inc();
        // fsync/write durability: statements are forwarded only once their records are durable.
        let wait_for_durable = self.ctx.audit.durability() != crate::config::Durability::Async;
        let mut gate = AuditGate::new(wait_for_durable);
        let reason = self.relay(&mut client, &mut gate).await;
        // Outcomes of the last statements not yet handed to the audit log go with the session end.
        let mut outcomes = gate.into_outcomes();
        // Whatever happened, no upstream query may outlive the session.
        let mut terminate = BytesMut::new();
        postgres_protocol::message::frontend::terminate(&mut terminate);
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            self.upstream.write_all(&terminate).await?;
            self.upstream.shutdown().await
        })
        .await;
        let _ = tokio::time::timeout(Duration::from_millis(500), client.shutdown()).await;
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
        match tokio::time::timeout(Duration::from_secs(5), self.ctx.audit.record(outcomes)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                metrics.audit_failures_total.inc();
                tracing::error!(error = %e, "cannot record the session end in the audit log");
            }
            Err(_) => tracing::error!("timed out recording the session end in the audit log"),
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

    /// The relay loop; returns why it ended.
    /// `gate`: client frames wait there for their audit records; outcome records wait for the next
    /// statement's submission and go with it (one hand-off to the audit writer per statement
    /// instead of two), or at the latest [`OUTCOME_FLUSH_DELAY`](super::relay::gate::OUTCOME_FLUSH_DELAY) after they were made; what is
    /// left at the end goes with the session end.
    async fn relay(&mut self, client: &mut ClientStream, gate: &mut AuditGate) -> EndReason {
        let state = self.ctx.clone();
        let max_message = state.config.proxy.max_message_bytes;
        let client_tls = client.is_tls();
        let upstream_tls = self.upstream.is_tls();
        let mut from_client = BytesMut::with_capacity(BUFFER_CAPACITY);
        let mut to_upstream = BytesMut::with_capacity(BUFFER_CAPACITY);
        let mut outbox = ClientOutbox::new();
        // Complete ErrorResponse / ParameterStatus frames from the last upstream read: (tag, start, end).
        let mut held_frames: Vec<(u8, u64, u64)> = Vec::new();
        let (mut client_needs_flush, mut upstream_needs_flush) = (false, false);
        // Forwarded sync points and the outcomes they complete.
        let mut sync = SyncTracker::default();
        let audit = state.audit.clone();
        // Benchmarks only (`[bench] skip_audit`, false unless built with `bench-knobs`): no statement records.
        let skip_audit = state.config.bench.skip_audit();
        let metrics = state.proxy.metrics.clone();
        let statement_duration = metrics
            .statement_duration_seconds
            .with_label_values(&[&self.grant.target]);
        let bytes_from_client = metrics.relayed_bytes_total.with_label_values(&["from_client"]);
        let bytes_to_client = metrics.relayed_bytes_total.with_label_values(&["to_client"]);
        let mut closing: Option<Closing> = None;
        let mut shutdown_deadline: Option<Instant> = None;
        let shutdown = state.shutdown.clone();
        let kill: CancellationToken = self.handle.kill_token();
        let mut warnings = self.pending_warnings(state.clock.now());
        // A big Query/Parse being prechecked on the blocking pool (see `offload_precheck`); the
        // client's frames wait for it, expiry, kills and shutdown do not.
        let mut offloaded: Option<OffloadedPrecheck> = None;
        // Its result, with the frame, to process before the rest of `from_client`.
        let mut resumed: Option<(u8, Bytes, Precheck)> = None;

        loop {
            let now = state.clock.now();
            let expiry = instant_at(now, self.grant.expires_at);
            let warning = warnings
                .last()
                .map(|w| instant_at(now, self.grant.expires_at - *w));
            let busy = sync.busy();
            let read_client = closing.is_none()
                && !gate.waiting()
                && offloaded.is_none()
                && resumed.is_none()
                && to_upstream.len() < HIGH_WATER;
            let resume_frames = closing.is_none() && resumed.is_some();
            let read_upstream =
                outbox.pending.len() < HIGH_WATER && (closing.is_none() || outbox.inject_at.is_none());
            let write_client = outbox.next_chunk().is_some();
            let write_upstream = closing.is_none() && !to_upstream.is_empty();

            let io = poll_fn(|cx| {
                let mut ev = IoEvents {
                    resume_frames,
                    ..IoEvents::default()
                };
                if read_client {
                    if let Poll::Ready(r) = poll_read_buf(Pin::new(&mut *client), cx, &mut from_client) {
                        ev.client_read = Some(r);
                    }
                }
                if write_client {
                    if let Some((chunk, injected)) = outbox.next_chunk() {
                        if let Poll::Ready(r) = Pin::new(&mut *client).poll_write(cx, chunk) {
                            ev.client_wrote = Some((r, injected));
                        }
                    }
                } else if client_needs_flush {
                    if let Poll::Ready(r) = Pin::new(&mut *client).poll_flush(cx) {
                        ev.client_flushed = Some(r);
                    }
                }
                if write_upstream {
                    if let Poll::Ready(r) = Pin::new(&mut self.upstream).poll_write(cx, &to_upstream) {
                        ev.upstream_wrote = Some(r);
                    }
                } else if upstream_needs_flush {
                    if let Poll::Ready(r) = Pin::new(&mut self.upstream).poll_flush(cx) {
                        ev.upstream_flushed = Some(r);
                    }
                }
                if read_upstream {
                    let before = outbox.pending.len();
                    if let Poll::Ready(r) =
                        poll_read_buf(Pin::new(&mut self.upstream), cx, &mut outbox.pending)
                    {
                        if let Ok(n) = &r {
                            if outbox.track_read(before, *n, &mut held_frames).is_err() {
                                ev.upstream_read = Some(Err(std::io::Error::new(
                                    std::io::ErrorKind::InvalidData,
                                    "corrupt frame from upstream",
                                )));
                                return Poll::Ready(ev);
                            }
                        }
                        ev.upstream_read = Some(r);
                    }
                }
                if ev.any() {
                    Poll::Ready(ev)
                } else {
                    Poll::Pending
                }
            });

            let closing_deadline = closing.as_ref().map(|c| c.deadline);
            let outcome_deadline = gate.outcome_deadline();
            tokio::select! {
                biased;
                ev = io => {
                    // --- backend → client
                    if let Some(r) = ev.upstream_read {
                        match r {
                            Ok(0) => {
                                if closing.is_some() {
                                    break;
                                }
                                tracing::info!("upstream closed the connection");
                                return self.finish_after_upstream_loss(client, &mut outbox, EndReason::UpstreamError).await;
                            }
                            Ok(n) => {
                                self.handle.add_to_client(n as u64);
                                bytes_to_client.inc_by(n as u64);
                                for (tag, start, end) in held_frames.drain(..) {
                                    if tag == b'Z' {
                                        let status = outbox.tracker.last_ready_status.unwrap_or(b'I');
                                        if let Some(done) = sync.ready(status, Instant::now()) {
                                            statement_duration.observe(done.elapsed.as_secs_f64());
                                            gate.outcomes(self.outcome_events(done), Instant::now());
                                        }
                                        continue;
                                    }
                                    if tag == b'C' {
                                        if let Some(t) = command_tag(outbox.frame_bytes(start, end)) {
                                            sync.command_complete(t);
                                        }
                                        continue;
                                    }
                                    if tag == b'E' && self.interceptor.is_marker_error(outbox.frame_bytes(start, end)) {
                                        let denial = self.interceptor.take_denial();
                                        outbox.replace_frame(start, end, &denial);
                                        continue;
                                    }
                                    if tag == b'E' {
                                        sync.error(error_sqlstate(outbox.frame_bytes(start, end)));
                                        continue;
                                    }
                                    if tag == b'S' {
                                        if let Some(problem) = lexing_problem(outbox.frame_bytes(start, end)) {
                                            if closing.is_none() {
                                                closing = Some(self.sever(&mut outbox, busy, EndReason::UpstreamError,
                                                    PgError::admin_shutdown(format!("terminating connection: {problem}"))
                                                        .with_hint("timebox reads statements with standard_conforming_strings = on and UTF-8 text; it does not allow changing that.")).await);
                                                // Right after the ParameterStatus, before the statement's ReadyForQuery:
                                                // the statement that changed the setting fails, nothing after it runs.
                                                outbox.inject_after(end);
                                            }
                                        }
                                    }
                                }
                                outbox.place_injection();
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "upstream read failed");
                                let mut lost = BytesMut::new();
                                PgError::upstream_lost(&self.grant.target).encode(&mut lost);
                                outbox.pending.clear();
                                let _ = client.write_all(&lost).await;
                                return EndReason::UpstreamError;
                            }
                        }
                    }
                    if let Some((r, injected)) = ev.client_wrote {
                        match r {
                            Ok(n) => {
                                outbox.advance(n, injected);
                                client_needs_flush = client_tls;
                                outbox.place_injection();
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "client write failed");
                                self.cancel_if_busy(busy).await;
                                return closing.map(|c| c.reason).unwrap_or(EndReason::ClientExit);
                            }
                        }
                    }
                    if let Some(r) = ev.client_flushed {
                        if r.is_err() {
                            self.cancel_if_busy(busy).await;
                            return closing.map(|c| c.reason).unwrap_or(EndReason::ClientExit);
                        }
                        client_needs_flush = false;
                    }
                    // --- client → backend
                    let mut frames_ready = ev.resume_frames;
                    if let Some(r) = ev.client_read {
                        match r {
                            Ok(0) | Err(_) => {
                                // The client vanished (EOF without Terminate, or reset): stop its query.
                                tracing::info!(phase = ?sync.phase(), "client disconnected");
                                self.cancel_if_busy(busy).await;
                                return EndReason::ClientExit;
                            }
                            Ok(n) => {
                                self.handle.add_from_client(n as u64);
                                bytes_from_client.inc_by(n as u64);
                                frames_ready = true;
                            }
                        }
                    }
                    if frames_ready {
                        loop {
                            // The prechecked big frame first, then what is buffered.
                            let parked: Bytes;
                            let (tag, frame, consumed, precheck) = if let Some((tag, bytes, pre)) = resumed.take() {
                                parked = bytes;
                                (tag, &parked[..], 0, Some(pre))
                            } else {
                                match wire::next_frontend_frame(&from_client, max_message) {
                                    Ok(Some((tag, len))) => {
                                        if self.interceptor.wants_offload(tag, &from_client[..len]) {
                                            let frame = from_client.split_to(len).freeze();
                                            offloaded = Some(offload_precheck(
                                                self.interceptor.prechecker(),
                                                state.proxy.precheck_permits.clone(),
                                                tag,
                                                frame,
                                            ));
                                            break;
                                        }
                                        (tag, &from_client[..len], len, None)
                                    }
                                    Ok(None) => {
                                        // This read's frames go upstream once their records are durable.
                                        let submitted = gate.end_of_read(|events| audit.submit(events), &mut to_upstream, Instant::now());
                                        if let Err(e) = submitted {
                                            metrics.audit_failures_total.inc();
                                            tracing::error!(error = %e, "audit log refused statement records; statements not run");
                                            closing = Some(self.sever(&mut outbox, busy, EndReason::AuditUnavailable, audit_refusal(&e)).await);
                                        }
                                        break;
                                    }
                                    Err(error) => {
                                        tracing::info!(code = error.code, message = %error.message, "client protocol violation");
                                        outbox.queue_instead(&error);
                                        self.cancel_if_busy(busy).await;
                                        closing = Some(Closing { reason: EndReason::ClientError, deadline: Instant::now() + SEVER_DRAIN });
                                        break;
                                    }
                                }
                            };
                            if tag == b'X' {
                                // Terminate: the session ends normally after what came before it
                                // (once that is audited).
                                let (events, held) = gate.terminate();
                                if audit.record_durable(events).await.is_err() {
                                    metrics.audit_failures_total.inc();
                                    return EndReason::ClientExit;
                                }
                                to_upstream.extend_from_slice(&held);
                                to_upstream.extend_from_slice(frame);
                                let _ = self.upstream.write_all(&to_upstream).await;
                                return EndReason::ClientExit;
                            }
                            let mut checked = None;
                            let action = self.interceptor.on_frontend_prechecked(tag, frame, precheck, &mut checked);
                            if checked.is_some() {
                                self.handle.add_statement();
                            }
                            // What actually goes upstream decides what it will answer.
                            let sent_tag = match &action {
                                FrontendAction::Forward => {
                                    gate.hold(frame);
                                    Some(tag)
                                }
                                FrontendAction::Replace(bytes) => {
                                    gate.hold(bytes);
                                    Some(bytes[0])
                                }
                                FrontendAction::Drop => None,
                            };
                            if let Some(c) = checked.as_ref().filter(|_| !skip_audit) {
                                let id = self.next_statement_id();
                                if c.denied.is_none() {
                                    sync.statement(id);
                                }
                                gate.statement(self.statement_event(id, c));
                            }
                            if let Some(c) = &checked {
                                let decision = if c.denied.is_some() { "deny" } else { "allow" };
                                state
                                    .proxy
                                    .metrics
                                    .statements_total
                                    .with_label_values(&[c.class.as_str(), decision])
                                    .inc();
                                if let Some(reason) = &c.denied {
                                    // The reason may quote the statement: never a secret in a log line.
                                    let reason = c.sql.loggable_reason(reason);
                                    tracing::info!(sql.len = c.sql.bytes(), %reason, "statement denied");
                                }
                            }
                            if let Some(sent) = sent_tag {
                                sync.forwarded(sent, Instant::now());
                            }
                            from_client.advance(consumed);
                        }
                    }
                    if let Some(r) = ev.upstream_wrote {
                        match r {
                            Ok(n) => {
                                to_upstream.advance(n);
                                upstream_needs_flush = upstream_tls;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "upstream write failed");
                                return self.finish_after_upstream_loss(client, &mut outbox, EndReason::UpstreamError).await;
                            }
                        }
                    }
                    if let Some(r) = ev.upstream_flushed {
                        if r.is_err() {
                            return self.finish_after_upstream_loss(client, &mut outbox, EndReason::UpstreamError).await;
                        }
                        upstream_needs_flush = false;
                    }
                    if let Some(c) = &closing {
                        if outbox.drained() && !client_needs_flush {
                            let _ = tokio::time::timeout(Duration::from_millis(200), client.flush()).await;
                            return c.reason;
                        }
                    }
                }
                prechecked = wait_offloaded(&mut offloaded), if offloaded.is_some() => {
                    offloaded = None;
                    resumed = Some(prechecked);
                }
                acked = gate.acknowledged(), if gate.waiting() => {
                    let (waited, acked) = gate.on_acknowledged(acked, &mut to_upstream, Instant::now());
                    if let Some(waited) = waited {
                        metrics.audit_write_seconds.observe(waited.as_secs_f64());
                    }
                    if let Err(e) = acked {
                        metrics.audit_failures_total.inc();
                        tracing::error!(error = %e, "audit records not durable; statements not run");
                        closing = Some(self.sever(&mut outbox, busy, EndReason::AuditUnavailable, audit_refusal(&e)).await);
                    }
                }
                _ = sleep_opt(outcome_deadline), if outcome_deadline.is_some() => {
                    if let Err(e) = audit.submit(gate.due_outcomes()) {
                        metrics.audit_failures_total.inc();
                        tracing::error!(error = %e, "could not record statement outcomes in the audit log");
                    }
                }
                _ = sleep_opt(closing_deadline), if closing_deadline.is_some() => {
                    tracing::debug!("could not deliver the final message in time; closing");
                    return closing.map(|c| c.reason).unwrap_or(EndReason::Shutdown);
                }
                grant = self.watch.changed(), if closing.is_none() => {
                    self.grant = grant;
                    warnings = self.pending_warnings(state.clock.now());
                    if let Some(c) = self.check_grant(&mut outbox, busy).await {
                        closing = Some(c);
                    }
                }
                _ = tokio::time::sleep_until(expiry), if closing.is_none() => {
                    if let Some(c) = self.check_grant(&mut outbox, busy).await {
                        closing = Some(c);
                    }
                }
                _ = sleep_opt(warning), if closing.is_none() && warning.is_some() => {
                    if let Some(w) = warnings.pop() {
                        let left = humantime::format_duration(Duration::from_secs(w.num_seconds().max(0) as u64));
                        let notice = PgError::warning(format!(
                            "timebox: grant {} expires in {left} (at {}); the session will be closed then",
                            self.grant.id,
                            self.grant.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                        ))
                        .with_hint("Ask for an extension or a new grant if you need more time.");
                        outbox.queue(&notice);
                    }
                }
                _ = kill.cancelled(), if closing.is_none() => {
                    let by = self.handle.kill_reason().unwrap_or_else(|| "an administrator".into());
                    closing = Some(self.sever(&mut outbox, busy, EndReason::Killed,
                        PgError::admin_shutdown(format!("terminating connection: session killed by {by}"))).await);
                }
                _ = shutdown.cancelled(), if shutdown_deadline.is_none() && closing.is_none() => {
                    shutdown_deadline = Some(Instant::now() + state.config.proxy.shutdown_grace);
                }
                _ = sleep_opt(shutdown_deadline), if shutdown_deadline.is_some() && closing.is_none() => {
                    closing = Some(self.sever(&mut outbox, busy, EndReason::Shutdown,
                        PgError::admin_shutdown("terminating connection: timebox is shutting down")).await);
                }
            }

            // On shutdown, an idle session (nothing in flight either way) ends at once.
            if shutdown_deadline.is_some()
                && closing.is_none()
                && !sync.busy()
                && offloaded.is_none()
                && resumed.is_none()
                && from_client.is_empty()
                && to_upstream.is_empty()
                && outbox.tracker.at_boundary()
            {
                closing = Some(
                    self.sever(
                        &mut outbox,
                        false,
                        EndReason::Shutdown,
                        PgError::admin_shutdown("terminating connection: timebox is shutting down"),
                    )
                    .await,
                );
            }
        }
        closing.map(|c| c.reason).unwrap_or(EndReason::UpstreamError)
    }

    fn next_statement_id(&mut self) -> u64 {
        self.statement_seq += 1;
        self.statement_seq
    }

    /// The audit record of one checked statement (redacted by the audit log before it is written).
    fn statement_event(&self, id: u64, c: &Checked) -> AuditEvent {
        let classification = &c.classification;
        let mut relations: Vec<String> = Vec::new();
        for stmt in &classification.statements {
            for r in &stmt.relations {
                let r = r.to_string();
                if !relations.contains(&r) {
                    relations.push(r);
                }
            }
        }
        AuditEvent::Statement(audit_event::Statement {
            class: c.class.as_str().to_owned(),
            decision: if c.denied.is_some() {
                audit_event::Decision::Deny
            } else {
                audit_event::Decision::Allow
            },
            grant_id: self.grant.id.clone(),
            params: c.params.clone(),
            reason: c.denied.as_deref().map(|r| c.sql.scrub(r).into_owned()),
            relations,
            session_id: self.handle.name(),
            sql: c.sql.text.clone(),
            sql_bytes: c.sql.truncated.as_ref().map(|(n, _)| *n),
            sql_sha256: c.sql.truncated.as_ref().map(|(_, h)| h.clone()),
            sql_truncated: c.sql.truncated.is_some(),
            statement_id: id,
            target: self.grant.target.clone(),
            user: self.grant.user.clone(),
        })
    }

    /// The audit records of the outcomes one ReadyForQuery completed.
    fn outcome_events(&self, done: Completed) -> impl Iterator<Item = AuditEvent> + '_ {
        let duration_us = done.elapsed.as_micros() as u64;
        done.outcomes.into_iter().map(move |o| {
            AuditEvent::StatementOutcome(audit_event::StatementOutcome {
                command_tag: o.command_tag,
                duration_us,
                rows: o.rows,
                session_id: self.handle.name(),
                sqlstate: o.sqlstate,
                statement_id: o.statement_id,
            })
        })
    }

    /// Warnings (durations before expiry) still ahead, the next one last.
    fn pending_warnings(&self, now: DateTime<Utc>) -> Vec<chrono::Duration> {
        let left = self.grant.expires_at - now;
        let mut w: Vec<chrono::Duration> = self
            .ctx
            .config
            .proxy
            .expiry_warnings
            .iter()
            .filter_map(|d| chrono::Duration::from_std(*d).ok())
            .filter(|d| *d < left)
            .collect();
        w.sort();
        w
    }

    /// Re-checks the grant now; severs the session if it no longer admits it.
    async fn check_grant(&mut self, outbox: &mut ClientOutbox, busy: bool) -> Option<Closing> {
        let now = self.ctx.clock.now();
        let why = self.grant.refusal_at(now)?;
        let reason = match self.grant.status_at(now) {
            GrantStatus::Revoked => EndReason::Revoked,
            _ => EndReason::Expired,
        };
        let error = PgError::admin_shutdown(format!("terminating connection: {why}"))
            .with_hint("Ask for a new grant (timebox grant issue / timebox request create).");
        Some(self.sever(outbox, busy, reason, error).await)
    }

    /// Cancels the upstream query if one runs, queues the FATAL, and enters the closing state.
    async fn sever(
        &mut self,
        outbox: &mut ClientOutbox,
        busy: bool,
        reason: EndReason,
        error: PgError,
    ) -> Closing {
        tracing::info!(reason = reason.as_str(), message = %error.message, "severing session");
        self.cancel_if_busy(busy).await;
        outbox.queue_last(&error);
        Closing {
            reason,
            deadline: Instant::now() + SEVER_DRAIN,
        }
    }

    async fn cancel_if_busy(&self, busy: bool) {
        if busy {
            if let Err(e) = self.upstream_cancel.send().await {
                tracing::warn!(error = %e, "could not cancel the upstream query");
            }
        }
    }

    /// The upstream is gone: deliver what it sent (up to a boundary), then a FATAL.
    async fn finish_after_upstream_loss(
        &mut self,
        client: &mut ClientStream,
        outbox: &mut ClientOutbox,
        reason: EndReason,
    ) -> EndReason {
        let out = outbox.take_before_loss(&PgError::upstream_lost(&self.grant.target));
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            client.write_all(&out).await?;
            client.flush().await
        })
        .await;
        reason
    }
}

/// A big statement's precheck running on the blocking pool: resolves to its frame and result.
type OffloadedPrecheck = Pin<Box<dyn std::future::Future<Output = (u8, Bytes, Precheck)> + Send>>;

/// Prechecks a big Query or Parse frame on the blocking pool, at most `permits` at once over the
/// instance, so that parsing megabytes of SQL never runs on (and stalls) the async workers that
/// serve every other session and the admin API. A panicking check is a refusal, not a crash.
fn offload_precheck(
    prechecker: Prechecker,
    permits: Arc<tokio::sync::Semaphore>,
    tag: u8,
    frame: Bytes,
) -> OffloadedPrecheck {
    Box::pin(async move {
        let _permit = permits.acquire_owned().await;
        let job = frame.clone();
        let checked = tokio::task::spawn_blocking(move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| prechecker.precheck(tag, &job)))
        })
        .await;
        let precheck = match checked {
            Ok(Ok(precheck)) => precheck,
            Ok(Err(_)) | Err(_) => {
                tracing::error!(
                    message.bytes = frame.len(),
                    "statement check failed; statement refused"
                );
                Prechecker::failed(frame.len())
            }
        };
        (tag, frame, precheck)
    })
}

/// Waits for the offloaded precheck (never resolves when there is none).
async fn wait_offloaded(offloaded: &mut Option<OffloadedPrecheck>) -> (u8, Bytes, Precheck) {
    match offloaded {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// The FATAL a client gets when its statements cannot be audited (they were not run).
pub(crate) fn audit_refusal(e: &AuditError) -> PgError {
    let message =
        "terminating connection: timebox cannot record statements in the audit log right now, so they were not run";
    match e {
        AuditError::QueueFull { .. } => PgError::insufficient_resources(message),
        _ => PgError::io_error(message),
    }
    .with_hint("Tell the timebox administrators; nothing reaches the database unaudited.")
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
