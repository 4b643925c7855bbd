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

use std::collections::VecDeque;
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

use super::auth::{self, AuthError};
use super::cancel::{CancelKeyGuard, UpstreamCancel};
use super::intercept::{Checked, FrontendAction, Interceptor, Precheck, Prechecker};
use super::startup::{self, ClientParams, ClientTlsInfo, Startup, StartupError};
use super::stream::{ClientStream, UpstreamStream};
use super::upstream::{self, Upstream};
use super::wire::{self, FrameTracker, PgError};
use super::{PreAuthSlot, SessionHandle};
use crate::app::AppState;
use crate::audit::event::{self as audit_event, AuditEvent};
use crate::audit::{AuditAck, AuditError};
use crate::grants::watch::GrantWatch;
use crate::grants::{Grant, GrantStatus};

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
    state: Arc<AppState>,
    tcp: TcpStream,
    peer: SocketAddr,
    unauthenticated: Result<PreAuthSlot, PgError>,
) {
    let _ = tcp.set_nodelay(true);
    let startup_deadline = Instant::now() + state.config.proxy.startup_timeout;
    let negotiated = tokio::time::timeout_at(
        startup_deadline,
        startup::negotiate(tcp, state.proxy.tls.as_ref(), state.config.proxy.tls),
    )
    .await;
    let (mut client, message, tls) = match negotiated {
        Err(_) => {
            tracing::debug!(client.addr = %peer, "startup timed out");
            return;
        }
        Ok(Err(StartupError::Refused { mut client, error })) => {
            tracing::info!(client.addr = %peer, code = error.code, message = %error.message, "startup refused");
            send_fatal(&mut client, &error).await;
            return;
        }
        Ok(Err(e)) => {
            if e.is_disconnect() {
                tracing::debug!(client.addr = %peer, error = %e, "client left during startup");
            } else {
                tracing::info!(client.addr = %peer, error = %e, "startup failed");
            }
            return;
        }
        Ok(Ok(Startup::Cancel { pid, secret })) => {
            if let Some(target) = state.proxy.cancel_keys.lookup(pid, secret) {
                tracing::info!(client.addr = %peer, "forwarding cancel request");
                if let Err(e) = target.send().await {
                    tracing::warn!(error = %e, "cancel request to upstream failed");
                }
            } else {
                tracing::debug!(client.addr = %peer, "cancel request with unknown key ignored");
            }
            return;
        }
        Ok(Ok(Startup::Session { client, message, tls })) => (client, message, tls),
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
        let pre_auth = crate::auditsql::PreAuth {
            deadline: startup_deadline,
            unauthenticated,
        };
        crate::auditsql::serve(state, client, params, tls, peer, pre_auth).await;
        return;
    }
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
        authenticate(&state, &mut client, &params, tls.as_ref(), peer),
    );
    let authenticated = tracing::Instrument::instrument(authenticated, span.clone()).await;
    let (grant, watch) = match authenticated {
        Err(_) => {
            // The attempt's throttle reservation was dropped unreleased: it counts as a failure.
            record_auth_timeout(&state, &params, peer);
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
    let _slot = match state.proxy.admit(state.config.proxy.max_connections) {
        Ok(slot) => slot,
        Err(error) => {
            send_fatal(&mut client, &error).await;
            return;
        }
    };
    drop(unauthenticated);
    let opened = open_session(&state, &mut client, &params, tls.as_ref(), peer, grant, watch);
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

/// Counts and audits a client that did not finish authenticating before the startup deadline.
pub(crate) fn record_auth_timeout(state: &AppState, params: &ClientParams, peer: SocketAddr) {
    state
        .proxy
        .metrics
        .auth_failures_total
        .with_label_values(&["timeout"])
        .inc();
    tracing::info!(client.addr = %peer, user = %params.user, "authentication timed out");
    let event = AuditEvent::AuthFailure(audit_event::AuthFailure {
        client_addr: peer.to_string(),
        reason: "authentication timed out".into(),
        target: params.target.clone(),
        user: params.user.clone(),
    });
    if let Err(e) = state.audit.submit(vec![event]) {
        state.proxy.metrics.audit_failures_total.inc();
        tracing::error!(error = %e, "cannot record an authentication failure in the audit log");
    }
}

/// Writes a FATAL (best effort) and closes.
async fn send_fatal(client: &mut ClientStream, error: &PgError) {
    let bytes = error.to_bytes();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        client.write_all(&bytes).await?;
        client.flush().await?;
        client.shutdown().await
    })
    .await;
}

/// How long outcome records may wait for the next statement's audit submission (which they join)
/// before they are submitted on their own: an idle session's outcomes are durable within this.
const OUTCOME_FLUSH_DELAY: Duration = Duration::from_millis(50);

/// The part of a session that exists once its upstream is open.
struct Session {
    state: Arc<AppState>,
    /// Registry entry (listing, kill); removed when the session ends.
    handle: Arc<SessionHandle>,
    /// The grant as last seen; replaced whenever the watch reports a change.
    grant: Grant,
    /// Revocation and extension arrive here.
    watch: GrantWatch,
    upstream: UpstreamStream,
    /// How to cancel the upstream backend's running query.
    upstream_cancel: UpstreamCancel,
    /// Keeps the client-facing cancel key registered for the session's lifetime.
    _cancel_key: CancelKeyGuard,
    /// Checks every statement against the grant's role before it is forwarded.
    interceptor: Interceptor,
    /// Statements audited so far in this session (their `statement_id`s).
    statement_seq: u64,
}

/// Authenticates the client and admits it under a current grant, watched from now on. `Ok(None)`
/// when the client left quietly; `Err` is the FATAL to send.
async fn authenticate(
    state: &Arc<AppState>,
    client: &mut ClientStream,
    params: &ClientParams,
    tls: Option<&ClientTlsInfo>,
    peer: SocketAddr,
) -> Result<Option<(Grant, GrantWatch)>, PgError> {
    let throttle = &state.proxy.auth_throttle;
    let auth_failures = &state.proxy.metrics.auth_failures_total;
    let reservation = match throttle.reserve(peer.ip(), &params.user, std::time::Instant::now()) {
        Ok(r) => r,
        Err(throttled) => {
            auth_failures.with_label_values(&["throttled"]).inc();
            tracing::warn!(why = %throttled, "authentication throttled");
            return Err(throttled.to_pg_error());
        }
    };
    let grant = match auth::authenticate(client, &state.grants, params, tls).await {
        Ok(g) => {
            reservation.release();
            g
        }
        Err(AuthError::Refused {
            kind,
            error,
            reason,
            counts_as_failure,
        }) => {
            if !counts_as_failure {
                reservation.release();
            }
            auth_failures.with_label_values(&[kind.metric_label()]).inc();
            tracing::info!(%reason, code = error.code, "authentication failed");
            let event = AuditEvent::AuthFailure(audit_event::AuthFailure {
                client_addr: peer.to_string(),
                reason: reason.clone(),
                target: params.target.clone(),
                user: params.user.clone(),
            });
            if let Err(e) = state.audit.submit(vec![event]) {
                state.proxy.metrics.audit_failures_total.inc();
                tracing::error!(error = %e, "cannot record an authentication failure in the audit log");
            }
            return Err(error);
        }
        Err(AuthError::ClientLeft) => {
            // No proof was evaluated (libpq leaves like this when it has no password).
            reservation.release();
            tracing::debug!("client left during authentication");
            return Ok(None);
        }
        Err(AuthError::Io(e)) => {
            reservation.release();
            tracing::debug!(error = %e, "client connection failed during authentication");
            return Ok(None);
        }
    };
    tracing::Span::current().record("grant.id", grant.id.as_str());

    // Watch first, then re-read: a revocation between authentication and now is not missed.
    let watch = state.grants.watches().subscribe(&grant);
    match state.grants.get(&grant.id).await {
        Ok(fresh) => state.grants.watches().publish(&fresh),
        Err(e) => {
            tracing::error!(error = %e, "grant store unavailable");
            return Err(match &e {
                crate::grants::GrantError::Store(store) => PgError::for_store_error(store),
                _ => PgError::grant_store_unavailable(),
            });
        }
    }
    let grant = watch.current();
    if let Some(why) = grant.refusal_at(state.clock.now()) {
        return Err(PgError::grant_not_current(&why));
    }
    Ok(Some((grant, watch)))
}

/// Opens the upstream session for an admitted client and sends the client its startup answer.
/// `Ok(None)` when the client left meanwhile; `Err` is the FATAL to send.
async fn open_session(
    state: &Arc<AppState>,
    client: &mut ClientStream,
    params: &ClientParams,
    tls: Option<&ClientTlsInfo>,
    peer: SocketAddr,
    grant: Grant,
    watch: GrantWatch,
) -> Result<Option<Session>, PgError> {
    let config = &state.config;
    let (Some(target), Some(credential)) = (
        config.targets.get(&grant.target),
        config
            .targets
            .get(&grant.target)
            .and_then(|t| t.credentials.get(&grant.role)),
    ) else {
        tracing::error!(role = %grant.role, "grant's target or role is no longer configured");
        return Err(PgError::grant_not_current(&format!(
            "grant {} names target \"{}\" / role \"{}\", which is no longer configured",
            grant.id, grant.target, grant.role
        )));
    };

    let Some(policy) = state.proxy.policies.get(&grant.role).cloned() else {
        return Err(PgError::grant_not_current(&format!(
            "grant {} names role \"{}\", which is no longer configured",
            grant.id, grant.role
        )));
    };
    let settings = startup::upstream_settings(&policy, &params.settings)?;
    let interceptor = Interceptor::new(policy, state.proxy.classify_cache.clone(), &grant.id, &grant.role)
        .tagging(&grant.user)
        .bench_skip_policy(config.bench.skip_policy())
        .max_statement_bytes(config.proxy.max_statement_bytes);
    let mut settings = settings;
    settings.push((
        "application_name".into(),
        tagged_application_name(&grant, params.application_name.as_deref()),
    ));
    let upstream_tls = state.proxy.upstream_tls.get(&target.name).cloned().flatten();
    let upstream = match upstream::connect(
        target,
        credential,
        upstream_tls,
        &settings,
        config.proxy.upstream_connect_timeout,
        &state.proxy.salted_passwords,
    )
    .await
    {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(error = %e, host = %target.host, port = target.port, "upstream connection failed");
            let kind = match &e {
                upstream::UpstreamError::Timeout(_) => "timeout",
                upstream::UpstreamError::Connect(_) => "connect",
                upstream::UpstreamError::TlsRefused
                | upstream::UpstreamError::Tls(_)
                | upstream::UpstreamError::ServerName(_) => "tls",
                upstream::UpstreamError::Rejected { .. }
                | upstream::UpstreamError::NoPassword
                | upstream::UpstreamError::UnsupportedAuth(_) => "rejected",
                upstream::UpstreamError::Protocol(_) | upstream::UpstreamError::Io(_) => "protocol",
            };
            state
                .proxy
                .metrics
                .upstream_connect_errors_total
                .with_label_values(&[&target.name, kind])
                .inc();
            return Err(match &e {
                upstream::UpstreamError::Rejected { code, .. } => {
                    PgError::upstream_rejected(&target.name, code)
                }
                _ => PgError::upstream_unavailable(&target.name, &e.client_reason()),
            });
        }
    };
    let Upstream {
        stream,
        backend_pid,
        backend_secret,
        parameter_status,
        notices,
        ready_status,
    } = upstream;
    let server_version = parameter_status
        .iter()
        .find(|(name, _)| name == "server_version")
        .map(|(_, value)| value.as_str());
    let interceptor = interceptor.on_server(server_version);

    for (name, value) in &parameter_status {
        let mut frame = BytesMut::new();
        wire::parameter_status(&mut frame, name, value);
        if let Some(problem) = lexing_problem(&frame) {
            tracing::error!(%problem, "upstream session uses settings timebox cannot read statements under");
            return Err(PgError::object_not_in_prerequisite_state(format!("target \"{}\" cannot be used: {problem}", target.name))
                .with_hint("Tell the timebox administrators: the upstream role or database overrides a setting that must stay at its default."));
        }
    }
    let upstream_cancel = UpstreamCancel {
        host: target.host.clone(),
        port: target.port,
        pid: backend_pid,
        secret: backend_secret,
    };
    let cancel_key = state.proxy.cancel_keys.register(upstream_cancel.clone());
    let handle = state.proxy.sessions.register(
        &grant,
        peer,
        tls.map(|t| t.version.clone()),
        params.application_name.clone(),
    );
    let start = AuditEvent::SessionStart(audit_event::SessionStart {
        application_name: params.application_name.clone(),
        client_addr: peer.to_string(),
        grant_id: grant.id.clone(),
        role: grant.role.clone(),
        session_id: handle.name(),
        target: grant.target.clone(),
        tls_version: tls.map(|t| t.version.clone()),
        user: grant.user.clone(),
    });
    // Durable before the session goes on (not waiting for the index: the relay never does).
    if let Err(e) = state.audit.record_durable(vec![start]).await {
        state.proxy.sessions.remove(handle.id);
        state.proxy.metrics.audit_failures_total.inc();
        tracing::error!(error = %e, "cannot record the session start in the audit log");
        return Err(audit_refusal(&e));
    }

    let mut out = BytesMut::with_capacity(512);
    wire::authentication_ok(&mut out);
    for (name, value) in &parameter_status {
        wire::parameter_status(&mut out, name, value);
    }
    out.extend_from_slice(&notices);
    wire::backend_key_data(&mut out, cancel_key.pid, cancel_key.secret);
    wire::frame(&mut out, b'Z', |b| b.extend_from_slice(&[ready_status]));
    if let Err(e) = client.write_all(&out).await {
        tracing::debug!(error = %e, "client left before the session started");
        return Ok(None);
    }
    tracing::info!(
        role = %grant.role,
        tls = tls.map(|t| t.version.as_str()).unwrap_or("none"),
        expires_at = %grant.expires_at,
        upstream.pid = backend_pid,
        "session started"
    );
    Ok(Some(Session {
        state: state.clone(),
        handle,
        grant,
        watch,
        upstream: stream,
        upstream_cancel,
        _cancel_key: cancel_key,
        interceptor,
        statement_seq: 0,
    }))
}

/// `timebox:<user>:<grant id>[:<client's application_name>]`, at most 63 bytes (PostgreSQL's limit).
/// Later changes keep the tag too: see [`crate::policy::appname`].
pub fn tagged_application_name(grant: &Grant, client_name: Option<&str>) -> String {
    let tag = crate::policy::appname::session_tag(&grant.user, &grant.id);
    crate::policy::appname::tagged(&tag, client_name)
}

/// Converts a wall-clock deadline into a tokio instant (now if already past).
fn instant_at(now: DateTime<Utc>, at: DateTime<Utc>) -> Instant {
    let wait = (at - now).to_std().unwrap_or(Duration::ZERO);
    Instant::now() + wait
}

/// Backend bytes on their way to the client, with timebox's own messages spliced in at a frame
/// boundary.
///
/// Offsets are positions in the byte stream the client receives; `delta` maps upstream stream
/// offsets (what the [`FrameTracker`] counts) to client offsets after frames were replaced.
/// ErrorResponse and ParameterStatus frames, and frames whose header is still incomplete, are held
/// back until complete so they can be inspected (and replaced) before the client sees any of them.
struct ClientOutbox {
    /// Bytes not yet written to the client: client offsets `[written, written + pending.len())`.
    pending: BytesMut,
    /// Client offset up to which everything has been written.
    written: u64,
    /// Client offset minus upstream offset.
    delta: i64,
    /// timebox's own messages waiting for a boundary.
    inject: BytesMut,
    /// The client offset (a frame boundary) at which `inject` goes out.
    inject_at: Option<u64>,
    /// Frame boundaries of the upstream stream.
    tracker: FrameTracker,
}

/// Frames the relay inspects before forwarding: ErrorResponse (denial markers, outcome SQLSTATE),
/// ParameterStatus (settings that change how SQL is lexed) and CommandComplete (outcome tags).
fn held_tag(tag: u8) -> bool {
    tag == b'E' || tag == b'S' || tag == b'C'
}

impl ClientOutbox {
    fn new() -> Self {
        ClientOutbox {
            pending: BytesMut::with_capacity(BUFFER_CAPACITY),
            written: 0,
            delta: 0,
            inject: BytesMut::new(),
            inject_at: None,
            tracker: FrameTracker::default(),
        }
    }

    fn to_client(&self, upstream_offset: u64) -> u64 {
        (upstream_offset as i64 + self.delta) as u64
    }

    /// The latest frame boundary in client offsets.
    fn last_boundary(&self) -> u64 {
        self.to_client(
            self.tracker
                .unfinished_frame_start()
                .unwrap_or(self.tracker.offset()),
        )
    }

    /// Where writing must pause until the current frame is complete, if anywhere.
    fn hold_point(&self) -> Option<u64> {
        let t = &self.tracker;
        (t.in_header() || held_tag(t.current_tag())).then(|| self.last_boundary())
    }

    /// Picks the injection point if one is not chosen yet: the latest boundary not yet passed.
    fn place_injection(&mut self) {
        if self.inject.is_empty() || self.inject_at.is_some() {
            return;
        }
        let boundary = self.last_boundary();
        if boundary >= self.written {
            self.inject_at = Some(boundary);
        }
    }

    /// The bytes to write next (stream bytes up to the injection or hold point, then the injection).
    fn next_chunk(&self) -> Option<(&[u8], bool)> {
        let mut limit = self.written + self.pending.len() as u64;
        if let Some(hold) = self.hold_point() {
            limit = limit.min(hold);
        }
        match self.inject_at {
            Some(at) if at == self.written && !self.inject.is_empty() => {
                return Some((&self.inject[..], true))
            }
            Some(at) => limit = limit.min(at),
            None => {}
        }
        let n = limit.saturating_sub(self.written) as usize;
        (n > 0).then(|| (&self.pending[..n], false))
    }

    fn advance(&mut self, n: usize, injected: bool) {
        if injected {
            self.inject.advance(n);
            if self.inject.is_empty() {
                self.inject_at = None;
            }
        } else {
            self.pending.advance(n);
            self.written += n as u64;
        }
    }

    fn injection_done(&self) -> bool {
        self.inject.is_empty()
    }

    /// The bytes of a complete, held frame given in upstream offsets.
    fn frame_bytes(&self, start: u64, end: u64) -> &[u8] {
        let from = (self.to_client(start) - self.written) as usize;
        let to = (self.to_client(end) - self.written) as usize;
        &self.pending[from..to]
    }

    /// Replaces a complete, held frame (upstream offsets) with `replacement`.
    fn replace_frame(&mut self, start: u64, end: u64, replacement: &[u8]) {
        let from = (self.to_client(start) - self.written) as usize;
        let to = (self.to_client(end) - self.written) as usize;
        let tail = self.pending.split_off(to);
        self.pending.truncate(from);
        self.pending.extend_from_slice(replacement);
        self.pending.extend_from_slice(&tail);
        self.delta += replacement.len() as i64 - (end - start) as i64;
    }
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
        let metrics = self.state.proxy.metrics.clone();
        let (target, role) = (self.grant.target.clone(), self.grant.role.clone());
        let labels = [target.as_str(), role.as_str()];
        metrics.sessions_total.with_label_values(&labels).inc();
        metrics.sessions_active.with_label_values(&labels).inc();
        // Outcomes of the last statements, not yet handed to the audit log (see `relay`).
        let mut outcomes = Vec::new();
        let reason = self.relay(&mut client, &mut outcomes).await;
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
        match tokio::time::timeout(Duration::from_secs(5), self.state.audit.record(outcomes)).await {
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
        self.state.proxy.sessions.remove(self.handle.id);
        metrics.sessions_active.with_label_values(&labels).dec();
        metrics
            .session_ends_total
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// The relay loop; returns why it ended.
    /// `outcome_events`: outcome records wait for the next statement's submission and go with it
    /// (one hand-off to the audit writer per statement instead of two), or at the latest
    /// [`OUTCOME_FLUSH_DELAY`] after they were made; what is left at the end goes with the session
    /// end.
    async fn relay(&mut self, client: &mut ClientStream, outcome_events: &mut Vec<AuditEvent>) -> EndReason {
        let state = self.state.clone();
        let max_message = state.config.proxy.max_message_bytes;
        let client_tls = client.is_tls();
        let upstream_tls = self.upstream.is_tls();
        let mut from_client = BytesMut::with_capacity(BUFFER_CAPACITY);
        let mut to_upstream = BytesMut::with_capacity(BUFFER_CAPACITY);
        let mut outbox = ClientOutbox::new();
        // Complete ErrorResponse / ParameterStatus frames from the last upstream read: (tag, start, end).
        let mut held_frames: Vec<(u8, u64, u64)> = Vec::new();
        let (mut client_needs_flush, mut upstream_needs_flush) = (false, false);
        // Sync points (Query, Sync, FunctionCall) sent minus ReadyForQuery received.
        let mut awaiting_ready: u64 = 0;
        // Extended-protocol messages sent since the last Sync.
        let mut unsynced = false;
        let mut ready_seen: u64 = 0;
        // Each sync point forwarded and not yet answered by ReadyForQuery: when it was sent and the
        // audited statements whose outcome it completes.
        let mut in_flight: VecDeque<(Instant, Vec<u64>)> = VecDeque::new();
        // Statements checked since the last sync point (their outcome comes with the next one).
        let mut since_sync: Vec<u64> = Vec::new();
        // Outcome of the sync point in progress: command tags and the error, if any.
        let mut outcome_tags: Vec<String> = Vec::new();
        let mut outcome_error: Option<String> = None;
        let audit = state.audit.clone();
        // fsync/write durability: statements are forwarded only once their records are durable.
        let wait_for_audit = audit.durability() != crate::config::Durability::Async;
        // Benchmarks only (`[bench] skip_audit`, false unless built with `bench-knobs`): no statement records.
        let skip_audit = state.config.bench.skip_audit();
        // Frames of the last client read, waiting for their audit acknowledgement.
        let mut audit_hold = BytesMut::new();
        let mut pending_ack: Option<(crate::audit::AuditAck, Instant)> = None;
        let mut statement_events: Vec<AuditEvent> = Vec::new();
        let mut outcome_deadline: Option<Instant> = None;
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
            let busy = awaiting_ready > 0 || unsynced;
            let read_client = closing.is_none()
                && pending_ack.is_none()
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
                            let fed =
                                outbox
                                    .tracker
                                    .feed_with(&outbox.pending[before..before + n], |tag, s, e| {
                                        if held_tag(tag) || tag == b'Z' {
                                            held_frames.push((tag, s, e));
                                        }
                                    });
                            if fed.is_err() {
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
                                        if let Some((sent, ids)) = in_flight.pop_front() {
                                            let elapsed = sent.elapsed();
                                            statement_duration.observe(elapsed.as_secs_f64());
                                            self.outcomes(ids, &mut outcome_tags, &mut outcome_error, elapsed, outcome_events);
                                        }
                                        continue;
                                    }
                                    if tag == b'C' {
                                        if let Some(t) = command_tag(outbox.frame_bytes(start, end)) {
                                            outcome_tags.push(t);
                                        }
                                        continue;
                                    }
                                    if tag == b'E' && self.interceptor.is_marker_error(outbox.frame_bytes(start, end)) {
                                        let denial = self.interceptor.take_denial();
                                        outbox.replace_frame(start, end, &denial);
                                        continue;
                                    }
                                    if tag == b'E' {
                                        outcome_error = error_sqlstate(outbox.frame_bytes(start, end));
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
                                                outbox.inject_at = Some(outbox.to_client(end));
                                            }
                                        }
                                    }
                                }
                                let now_ready = outbox.tracker.ready_count;
                                if !outcome_events.is_empty() && outcome_deadline.is_none() {
                                    outcome_deadline = Some(Instant::now() + OUTCOME_FLUSH_DELAY);
                                }
                                awaiting_ready = awaiting_ready.saturating_sub(now_ready - ready_seen);
                                ready_seen = now_ready;
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
                                tracing::info!("client disconnected");
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
                                        if !statement_events.is_empty() {
                                            // Earlier outcomes go first, in the same hand-off.
                                            let mut events = std::mem::take(outcome_events);
                                            events.append(&mut statement_events);
                                            outcome_deadline = None;
                                            match audit.submit(events) {
                                                Ok(ack) if wait_for_audit => pending_ack = Some((ack, Instant::now())),
                                                Ok(_) => {}
                                                Err(e) => {
                                                    metrics.audit_failures_total.inc();
                                                    tracing::error!(error = %e, "audit log refused statement records; statements not run");
                                                    audit_hold.clear();
                                                    closing = Some(self.sever(&mut outbox, busy, EndReason::AuditUnavailable, audit_refusal(&e)).await);
                                                    break;
                                                }
                                            }
                                        }
                                        if pending_ack.is_none() {
                                            to_upstream.extend_from_slice(&audit_hold);
                                            audit_hold.clear();
                                        }
                                        break;
                                    }
                                    Err(error) => {
                                        tracing::info!(code = error.code, message = %error.message, "client protocol violation");
                                        outbox.inject.clear();
                                        error.encode(&mut outbox.inject);
                                        outbox.place_injection();
                                        self.cancel_if_busy(busy).await;
                                        closing = Some(Closing { reason: EndReason::ClientError, deadline: Instant::now() + SEVER_DRAIN });
                                        break;
                                    }
                                }
                            };
                            if tag == b'X' {
                                // Terminate: the session ends normally after what came before it
                                // (once that is audited).
                                let mut events = std::mem::take(outcome_events);
                                events.append(&mut statement_events);
                                if audit.record_durable(events).await.is_err() {
                                    metrics.audit_failures_total.inc();
                                    return EndReason::ClientExit;
                                }
                                to_upstream.extend_from_slice(&audit_hold);
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
                                    audit_hold.extend_from_slice(frame);
                                    Some(tag)
                                }
                                FrontendAction::Replace(bytes) => {
                                    audit_hold.extend_from_slice(bytes);
                                    Some(bytes[0])
                                }
                                FrontendAction::Drop => None,
                            };
                            if let Some(c) = checked.as_ref().filter(|_| !skip_audit) {
                                let id = self.next_statement_id();
                                if c.denied.is_none() {
                                    since_sync.push(id);
                                }
                                statement_events.push(self.statement_event(id, c));
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
                            match sent_tag {
                                Some(b'Q' | b'F') => {
                                    awaiting_ready += 1;
                                    in_flight.push_back((Instant::now(), std::mem::take(&mut since_sync)));
                                }
                                Some(b'S') => {
                                    awaiting_ready += 1;
                                    unsynced = false;
                                    in_flight.push_back((Instant::now(), std::mem::take(&mut since_sync)));
                                }
                                Some(b'P' | b'B' | b'E' | b'D' | b'C' | b'H') => unsynced = true,
                                _ => {}
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
                        if outbox.injection_done() && outbox.inject_at.is_none() && !client_needs_flush {
                            let _ = tokio::time::timeout(Duration::from_millis(200), client.flush()).await;
                            return c.reason;
                        }
                    }
                }
                prechecked = wait_offloaded(&mut offloaded), if offloaded.is_some() => {
                    offloaded = None;
                    resumed = Some(prechecked);
                }
                acked = wait_ack(&mut pending_ack), if pending_ack.is_some() => {
                    if let Some((_, submitted)) = pending_ack.take() {
                        metrics.audit_write_seconds.observe(submitted.elapsed().as_secs_f64());
                    }
                    match acked {
                        Ok(()) => {
                            to_upstream.extend_from_slice(&audit_hold);
                            audit_hold.clear();
                        }
                        Err(e) => {
                            metrics.audit_failures_total.inc();
                            tracing::error!(error = %e, "audit records not durable; statements not run");
                            audit_hold.clear();
                            closing = Some(self.sever(&mut outbox, busy, EndReason::AuditUnavailable, audit_refusal(&e)).await);
                        }
                    }
                }
                _ = sleep_opt(outcome_deadline), if outcome_deadline.is_some() => {
                    outcome_deadline = None;
                    if let Err(e) = audit.submit(std::mem::take(outcome_events)) {
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
                        notice.encode(&mut outbox.inject);
                        outbox.place_injection();
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
                && awaiting_ready == 0
                && !unsynced
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

    /// Outcome records for the statements a ReadyForQuery completes: command tags in order, and
    /// the error for those that got none.
    fn outcomes(
        &self,
        ids: Vec<u64>,
        tags: &mut Vec<String>,
        error: &mut Option<String>,
        elapsed: Duration,
        out: &mut Vec<AuditEvent>,
    ) {
        let mut tags_iter = tags.drain(..);
        let ids_len = ids.len();
        for (i, id) in ids.into_iter().enumerate() {
            // A multi-statement Query is one audited statement with several command tags.
            let tag = if i + 1 == ids_len {
                let rest: Vec<String> = tags_iter.by_ref().collect();
                (!rest.is_empty()).then(|| rest.join("; "))
            } else {
                tags_iter.next()
            };
            let rows = tag.as_deref().and_then(rows_of);
            out.push(AuditEvent::StatementOutcome(audit_event::StatementOutcome {
                command_tag: tag.clone(),
                duration_us: elapsed.as_micros() as u64,
                rows,
                session_id: self.handle.name(),
                sqlstate: if tag.is_none() { error.clone() } else { None },
                statement_id: id,
            }));
        }
        drop(tags_iter);
        tags.clear();
        *error = None;
    }

    /// Warnings (durations before expiry) still ahead, the next one last.
    fn pending_warnings(&self, now: DateTime<Utc>) -> Vec<chrono::Duration> {
        let left = self.grant.expires_at - now;
        let mut w: Vec<chrono::Duration> = self
            .state
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
        let now = self.state.clock.now();
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
        outbox.inject.clear();
        outbox.inject_at = None;
        error.encode(&mut outbox.inject);
        outbox.place_injection();
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
        let complete = match outbox.tracker.unfinished_frame_start() {
            Some(start) if start >= outbox.written => (start - outbox.written) as usize,
            Some(_) => 0,
            None => outbox.pending.len(),
        };
        let mut out = outbox.pending.split_to(complete);
        if outbox.tracker.at_boundary() || complete > 0 || outbox.written == outbox.tracker.offset() {
            PgError::upstream_lost(&self.grant.target).encode(&mut out);
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            client.write_all(&out).await?;
            client.flush().await
        })
        .await;
        reason
    }
}

/// If a ParameterStatus frame reports a setting that changes how SQL text is lexed to a value
/// timebox does not read statements with, the reason to end the session. Pure.
fn lexing_problem(frame: &[u8]) -> Option<String> {
    let body = frame.get(5..)?;
    let mut parts = body.split(|&b| b == 0);
    let name = std::str::from_utf8(parts.next()?).ok()?;
    let value = std::str::from_utf8(parts.next()?).ok()?;
    let ok = match name {
        "standard_conforming_strings" => value.eq_ignore_ascii_case("on"),
        "client_encoding" => startup::client_encoding_is_readable(value),
        _ => true,
    };
    (!ok).then(|| format!("the server reported {name} = {value}, which changes how statements are read"))
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

/// Waits for the pending audit acknowledgement (never resolves when there is none).
async fn wait_ack(pending: &mut Option<(AuditAck, Instant)>) -> Result<(), AuditError> {
    match pending {
        Some((ack, _)) => ack.await,
        None => std::future::pending().await,
    }
}

/// The FATAL a client gets when its statements cannot be audited (they were not run).
fn audit_refusal(e: &AuditError) -> PgError {
    let message =
        "terminating connection: timebox cannot record statements in the audit log right now, so they were not run";
    match e {
        AuditError::QueueFull { .. } => PgError::insufficient_resources(message),
        _ => PgError::io_error(message),
    }
    .with_hint("Tell the timebox administrators; nothing reaches the database unaudited.")
}

/// The tag of a CommandComplete frame ("UPDATE 3").
fn command_tag(frame: &[u8]) -> Option<String> {
    let body = frame.get(5..)?;
    let end = body.iter().position(|&b| b == 0)?;
    Some(String::from_utf8_lossy(&body[..end]).into_owned())
}

/// Rows counted in a command tag ("INSERT 0 5" → 5, "SELECT 3" → 3).
fn rows_of(tag: &str) -> Option<u64> {
    let last = tag.rsplit(';').next()?.split_whitespace().last()?;
    last.parse().ok()
}

/// The SQLSTATE of an ErrorResponse frame.
fn error_sqlstate(frame: &[u8]) -> Option<String> {
    let mut fields = frame.get(5..)?;
    while let Some((&code, rest)) = fields.split_first() {
        if code == 0 {
            break;
        }
        let end = rest.iter().position(|&b| b == 0)?;
        if code == b'C' {
            return Some(String::from_utf8_lossy(&rest[..end]).into_owned());
        }
        fields = &rest[end + 1..];
    }
    None
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant {
        let now = Utc::now();
        Grant {
            id: "g_0123456789abcdef".into(),
            user: "alice".into(),
            target: "shop".into(),
            role: "read".into(),
            reason: "r".into(),
            created_by: "ops".into(),
            created_at: now,
            starts_at: now,
            expires_at: now,
            revoked_at: None,
            revoked_by: None,
            revoke_reason: None,
        }
    }

    #[test]
    fn application_name_names_engineer_and_grant_and_fits() {
        let g = grant();
        assert_eq!(
            tagged_application_name(&g, None),
            "timebox:alice:g_0123456789abcdef"
        );
        assert_eq!(
            tagged_application_name(&g, Some("psql")),
            "timebox:alice:g_0123456789abcdef:psql"
        );
        let long = tagged_application_name(&g, Some(&"é".repeat(40)));
        assert!(long.len() <= 63, "{}", long.len());
        assert!(long.starts_with("timebox:alice:g_0123456789abcdef:"));
    }

    fn frame_bytes(tag: u8, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        wire::frame(&mut b, tag, |x| x.extend_from_slice(body));
        b
    }

    #[test]
    fn lexing_settings_reported_by_the_server_are_checked() {
        let status = |name: &str, value: &str| {
            let mut b = BytesMut::new();
            wire::parameter_status(&mut b, name, value);
            lexing_problem(&b)
        };
        assert_eq!(status("standard_conforming_strings", "on"), None);
        assert!(status("standard_conforming_strings", "off").is_some());
        assert_eq!(status("client_encoding", "UTF8"), None);
        assert!(status("client_encoding", "SJIS").is_some());
        assert!(status("client_encoding", "BIG5").is_some());
        assert_eq!(status("TimeZone", "UTC"), None);
        assert_eq!(status("application_name", "anything"), None);
    }

    #[test]
    fn held_frames_wait_until_complete_and_can_be_replaced() {
        let mut outbox = ClientOutbox::new();
        let row = frame_bytes(b'D', &[1; 8]);
        let err = frame_bytes(b'E', b"SERROR\0Mmarker\0\0");
        let mut stream = row.clone();
        stream.extend_from_slice(&err[..7]);
        outbox.pending.extend_from_slice(&stream);
        outbox.tracker.feed(&stream).unwrap();
        // the DataRow may go, the partial ErrorResponse may not
        assert_eq!(outbox.next_chunk().unwrap().0, &row[..]);
        outbox.advance(row.len(), false);
        assert!(outbox.next_chunk().is_none());
        let rest = &err[7..];
        outbox.pending.extend_from_slice(rest);
        let mut done = Vec::new();
        outbox
            .tracker
            .feed_with(rest, |t, s, e| done.push((t, s, e)))
            .unwrap();
        let (tag, s, e) = done[0];
        assert_eq!(tag, b'E');
        assert_eq!(outbox.frame_bytes(s, e), &err[..]);
        let replacement = PgError::insufficient_privilege("denied").to_bytes();
        outbox.replace_frame(s, e, &replacement);
        assert_eq!(outbox.next_chunk().unwrap().0, &replacement[..]);
        // a later frame is located correctly after the splice
        let z = frame_bytes(b'Z', b"I");
        outbox.pending.extend_from_slice(&z);
        outbox.tracker.feed(&z).unwrap();
        assert_eq!(
            outbox.last_boundary(),
            (row.len() + replacement.len() + z.len()) as u64
        );
    }

    #[test]
    fn injection_waits_for_a_frame_boundary() {
        let mut outbox = ClientOutbox::new();
        let row = frame_bytes(b'D', &[7; 20]);
        // The first 10 bytes of a DataRow arrive and are written to the client.
        outbox.pending.extend_from_slice(&row[..10]);
        outbox.tracker.feed(&row[..10]).unwrap();
        let (chunk, injected) = outbox.next_chunk().unwrap();
        assert_eq!((chunk.len(), injected), (10, false));
        outbox.advance(10, false);
        // Now a notice is queued: it cannot go out mid-frame.
        outbox.inject.extend_from_slice(&PgError::warning("w").to_bytes());
        outbox.place_injection();
        assert_eq!(outbox.inject_at, None);
        assert!(outbox.next_chunk().is_none());
        // The rest of the row and a whole CommandComplete arrive.
        let cc = frame_bytes(b'C', b"SELECT 1\0");
        let mut rest = BytesMut::from(&row[10..]);
        rest.extend_from_slice(&cc);
        outbox.pending.extend_from_slice(&rest);
        outbox.tracker.feed(&rest).unwrap();
        outbox.place_injection();
        assert_eq!(outbox.inject_at, Some((row.len() + cc.len()) as u64));
        // Stream bytes up to the boundary, then the notice.
        let (chunk, injected) = outbox.next_chunk().unwrap();
        assert_eq!((chunk.len(), injected), (row.len() - 10 + cc.len(), false));
        outbox.advance(chunk.len(), false);
        let (chunk, injected) = outbox.next_chunk().unwrap();
        assert!(injected);
        assert_eq!(chunk[0], b'N');
        let n = chunk.len();
        outbox.advance(n, true);
        assert!(outbox.next_chunk().is_none());
        assert!(outbox.injection_done());
    }

    #[test]
    fn injection_goes_before_unwritten_partial_frame() {
        let mut outbox = ClientOutbox::new();
        let a = frame_bytes(b'D', &[1; 8]);
        let b = frame_bytes(b'D', &[2; 8]);
        let mut stream = a.clone();
        stream.extend_from_slice(&b[..4]);
        outbox.pending.extend_from_slice(&stream);
        outbox.tracker.feed(&stream).unwrap();
        PgError::admin_shutdown("bye").encode(&mut outbox.inject);
        outbox.place_injection();
        assert_eq!(
            outbox.inject_at,
            Some(a.len() as u64),
            "before the partial second row"
        );
        let (chunk, injected) = outbox.next_chunk().unwrap();
        assert_eq!((chunk, injected), (&a[..], false));
    }
}
