//! The relay: a session's statements from the client to the upstream and the answers back, until
//! the client leaves, the grant expires or is revoked, the session is killed, the upstream is lost
//! or timebox shuts down.
//!
//! The loop ([`Session::relay`]) is a small `select!` over plain parts, each in its own file and
//! unit-tested without sockets:
//! - [`io`]: one poll of the four I/O directions (the hot path: bytes are forwarded undecoded);
//! - [`outbox`]: backend bytes to the client, with timebox's own messages spliced in at a frame
//!   boundary;
//! - [`held`]: the few backend frames the relay reads (CommandComplete, ErrorResponse,
//!   ParameterStatus), decoded with `postgres_protocol`;
//! - [`sync`]: forwarded frames and backend replies → statement outcomes, and the backend's
//!   [`sync::Phase`] (idle, in a transaction, busy);
//! - [`gate`]: client frames held until their audit records are acknowledged;
//! - [`state`]: open, draining for shutdown, closing with a reason;
//! - [`precheck`]: big statements checked on the blocking pool (and masked roles' catalog
//!   freshness checks raced with the cut arms);
//! - [`pipeline`]: masked roles' Executes waited for, so nothing after a refused result in a batch
//!   takes effect;
//! - [`wrap`]: masked roles' Queries in a transaction timebox ends, rolled back (or the client's
//!   block failed) when a result was refused;
//! - [`mask`]: masked roles' results rewritten; each result's first frame waits (the outbox paused
//!   there) for a second catalog check raced with the cut arms, like the client-side one.
//!
//! [`frontend`] and [`backend`] apply them to what each side sent. Expiry, revocation, kill and
//! shutdown are arms of the loop's `select!`; when the grant changes, the session re-checks it with
//! [`Grant::refusal_at`](crate::grants::Grant::refusal_at), the function that admitted it. Severing a session tells the client why (FATAL 57P01) and
//! closes it at once; the running upstream query is cancelled afterwards, bounded (see
//! [`Session::run`](super::session)), so a slow or storming target never delays the FATAL. The relay
//! must never leave a query running upstream after the client is gone, nor forward a statement
//! before it is checked and audited.

mod backend;
mod cut;
mod frontend;
mod gate;
mod held;
mod io;
pub(crate) mod lock_prelude;
pub(crate) mod mask;
mod outbox;
mod pipeline;
mod precheck;
pub(crate) mod quota;
mod state;
mod sync;
pub(crate) mod wrap;

use std::future::poll_fn;
use std::ops::ControlFlow;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

pub use state::EndReason;
pub(crate) use state::SEVER_DRAIN;

use self::gate::AuditGate;
use self::held::HeldDecoder;
use self::io::{Buffers, IoEvents, UpstreamRead, Wants, HIGH_WATER};
use self::pipeline::BatchHold;
use self::precheck::{
    wait_confirmed, wait_offloaded, wait_result_confirmed, Confirming, OffloadedPrecheck, ResultConfirming,
};
use self::state::SessionState;
use self::sync::SyncTracker;
use super::intercept::Precheck;
use super::session::Session;
use super::stream::ClientStream;
use super::wire::PgError;
use crate::audit::event::AuditEvent;
use crate::audit::AuditError;
use crate::grants::watch::GrantProbe;
use crate::grants::GrantStatus;

pub(crate) use held::lexing_problem;

/// A session's relay state: everything the loop keeps between wake-ups.
pub(crate) struct Relay {
    /// The bytes between the two sides.
    bufs: Buffers,
    /// Decodes the held backend frames the relay reads.
    held: HeldDecoder,
    /// Forwarded sync points and their outcomes.
    sync: SyncTracker,
    /// Client frames waiting for their audit records.
    gate: AuditGate,
    /// Open, draining or closing.
    state: SessionState,
    /// Expiry warnings (durations before expiry) still ahead, the next one last.
    warnings: Vec<chrono::Duration>,
    /// A big Query/Parse being prechecked on the blocking pool; the client's frames wait for it,
    /// expiry, kills and shutdown do not.
    offloaded: Option<OffloadedPrecheck>,
    /// Its result, with the frame, to process before the rest of `from_client`.
    resumed: Option<(u8, Bytes, Precheck)>,
    /// `proxy.max_message_bytes`.
    max_message: usize,
    /// A query may be running upstream that the session must cancel once the client has its
    /// final message (set when the session is severed or the client leaves while busy; the cancel
    /// itself runs after the relay, in [`Session::run`](super::session)).
    cancel_upstream: bool,
    /// Benchmarks only (`[bench] skip_audit`, false unless built with `bench-knobs`): no
    /// statement records.
    skip_audit: bool,
    client_tls: bool,
    upstream_tls: bool,
    statement_duration: prometheus::Histogram,
    bytes_from_client: prometheus::IntCounter,
    bytes_to_client: prometheus::IntCounter,
    /// The role's result quotas; `None` (nothing counted) when it sets none.
    quota: Option<quota::ResultQuota>,
    /// The role's column masks; `None` (no frame looked at) when it masks nothing.
    mask: Option<mask::ResultMask>,
    /// A DDL statement was forwarded: masked roles' catalog snapshots are re-read at the next
    /// ReadyForQuery.
    ddl_forwarded: bool,
    /// Roles with masks: the hold on client frames after an Execute (`None`: frames are never held
    /// for a result).
    batch: Option<BatchHold>,
    /// Roles with masks: Queries in a transaction whose end timebox decides (`None`: Queries go
    /// as they are).
    wrap: Option<wrap::TxWrap>,
    /// Roles with masks: the catalog freshness check of the frame at the head of `from_client`,
    /// which waits for it; expiry, kills and shutdown do not.
    confirming: Option<Confirming>,
    /// That check resolved: the head frame is processed without another.
    confirmed: bool,
    /// Client frames already read wait to be processed (a check resolved, a hold was released).
    resume_client: bool,
    /// Roles with masks (s7, F4): the held frames of an upstream read from a result's first frame
    /// on, waiting for the second catalog check of that result (the outbox is paused there).
    paused: Option<backend::PausedRead>,
    /// That check, raced with the cut arms; a cut drops it.
    result_confirming: Option<ResultConfirming>,
}

impl Relay {
    /// What to poll this round.
    fn wants(&self) -> Wants {
        let relaying = self.state.relaying();
        let b = &self.bufs;
        Wants {
            read_client: relaying
                && !self.gate.waiting()
                && self.offloaded.is_none()
                && self.resumed.is_none()
                && self.confirming.is_none()
                && !self.resume_client
                && !self.batch.as_ref().is_some_and(BatchHold::holding)
                && !self.wrap.as_ref().is_some_and(wrap::TxWrap::holding)
                && b.to_upstream.len() < HIGH_WATER,
            // A held frame arriving is read on until whole (bounded), others wait for the client.
            read_upstream: b.outbox.read_decision() == UpstreamRead::Read
                && (relaying || b.outbox.inject_at.is_none()),
            write_upstream: relaying && !b.to_upstream.is_empty(),
            resume_frames: relaying
                && (self.resumed.is_some() || (self.resume_client && !self.gate.waiting())),
        }
    }

    /// On shutdown, an idle session (nothing in flight either way) ends at once.
    fn idle_while_draining(&self) -> bool {
        self.state.draining()
            && !self.sync.busy()
            && self.offloaded.is_none()
            && self.resumed.is_none()
            && self.bufs.from_client.is_empty()
            && self.bufs.to_upstream.is_empty()
            && self.bufs.outbox.tracker.at_boundary()
    }

    /// Whether the upstream query must be cancelled now that the relay has ended.
    pub(crate) fn cancel_upstream(&self) -> bool {
        self.cancel_upstream
    }

    /// Statements forwarded and not answered yet (sync points, plus extended-protocol messages not
    /// yet synced): more than one means some wait behind the running one.
    pub(crate) fn sync_points_in_flight(&self) -> usize {
        self.sync.in_flight()
    }

    /// Remembers to cancel the upstream query after the relay if one runs (`busy`); never waits
    /// for the upstream, so the client's final message is not delayed by it.
    fn cancel_after_relay(&mut self, busy: bool) {
        self.cancel_upstream |= busy;
    }

    /// Outcome records still waiting when the session ends (they go with the session end).
    pub(crate) fn into_outcomes(self) -> Vec<AuditEvent> {
        self.gate.into_outcomes()
    }
}

impl Session {
    /// The relay state for this session and client.
    pub(crate) fn relay_state(&self, client: &ClientStream) -> Relay {
        let state = &self.ctx;
        let metrics = &state.proxy.metrics;
        let quota = self.result_quota();
        let mask = self.result_mask();
        let mut bufs = Buffers::new();
        mask::set_frame_hooks(&mut bufs.outbox, quota.is_some(), mask.is_some());
        Relay {
            bufs,
            held: HeldDecoder::default(),
            sync: SyncTracker::default(),
            // fsync/write durability: statements are forwarded only once their records are durable.
            gate: AuditGate::new(state.audit.durability() != crate::config::Durability::Async),
            state: SessionState::Open,
            warnings: self.pending_warnings(state.clock.now()),
            offloaded: None,
            resumed: None,
            max_message: state.config.proxy.max_message_bytes,
            cancel_upstream: false,
            skip_audit: state.config.bench.skip_audit(),
            client_tls: client.is_tls(),
            upstream_tls: self.upstream.is_tls(),
            statement_duration: metrics
                .statement_duration_seconds
                .with_label_values(&[&self.grant.target]),
            bytes_from_client: metrics.relayed_bytes_total.with_label_values(&["from_client"]),
            bytes_to_client: metrics.relayed_bytes_total.with_label_values(&["to_client"]),
            batch: mask.as_ref().map(|_| BatchHold::default()),
            wrap: mask.as_ref().map(|_| wrap::TxWrap::default()),
            quota,
            mask,
            ddl_forwarded: false,
            confirming: None,
            confirmed: false,
            resume_client: false,
            paused: None,
            result_confirming: None,
        }
    }

    /// The result quotas of the session's role, if it sets any.
    fn result_quota(&self) -> Option<quota::ResultQuota> {
        let role = self.ctx.config.roles.get(&self.grant.role)?;
        // Roles with masks count too (unlimited): their records carry what was returned.
        (!role.quotas.is_unlimited() || role.masking.is_some()).then(|| {
            let grant_bytes = self.ctx.proxy.grant_result_bytes.counter(&self.grant.id);
            quota::ResultQuota::new(role.quotas, grant_bytes, &role.name)
        })
    }

    /// The relay loop; returns why it ended.
    pub(crate) async fn relay(&mut self, client: &mut ClientStream, r: &mut Relay) -> EndReason {
        let shutdown = self.ctx.shutdown.clone();
        let kill = self.handle.kill_token();
        let mut probe = self.watch.probe();
        loop {
            if r.idle_while_draining() {
                self.sever(r, false, EndReason::Shutdown, shutting_down());
            }
            let now = self.ctx.clock.now();
            let tnow = Instant::now();
            // Whether a cancel would reach a running query, as of this wake-up.
            let busy = r.sync.busy();
            // Cuts first: the arms below come after socket I/O, which a busy peer keeps ready.
            let signals = cut::Signals {
                relaying: r.state.relaying(),
                killed: kill.is_cancelled(),
                grant_changed: probe.changed(),
                now,
                expires_at: self.grant.expires_at,
                shutdown_while_open: r.state == SessionState::Open && shutdown.is_cancelled(),
                instant: tnow,
                drain_deadline: r.state.drain_deadline(),
                close_deadline: r.state.close_deadline(),
            };
            if let Some(due) = cut::due(&signals) {
                if let ControlFlow::Break(end) = self.cut(r, due, busy, &mut probe) {
                    return end;
                }
                continue;
            }
            let expiry = instant_at(now, tnow, self.grant.expires_at);
            let warning = r
                .warnings
                .last()
                .map(|w| instant_at(now, tnow, self.grant.expires_at - *w));
            let relaying = r.state.relaying();
            let open = r.state == SessionState::Open;
            let (drain_deadline, close_deadline) = (r.state.drain_deadline(), r.state.close_deadline());
            let outcome_deadline = r.gate.outcome_deadline();
            let wants = r.wants();
            let io = poll_fn(|cx| {
                let mut wants = wants;
                // Checked on every write of client frames (a clock read, the kill token's lock and
                // an atomic load; no syscall): none goes upstream past the deadline, after a kill
                // or before a grant change is re-checked.
                wants.write_upstream = wants.write_upstream
                    && cut::may_forward(Instant::now(), expiry, kill.is_cancelled(), probe.changed());
                io::poll(cx, client, &mut self.upstream, &mut r.bufs, wants)
            });
            tokio::select! {
                biased;
                ev = io => {
                    if let ControlFlow::Break(end) = self.on_io(client, r, ev, busy).await {
                        return end;
                    }
                }
                prechecked = wait_offloaded(&mut r.offloaded), if r.offloaded.is_some() => {
                    r.offloaded = None;
                    r.resumed = Some(prechecked);
                }
                _ = wait_confirmed(&mut r.confirming), if r.confirming.is_some() => {
                    r.confirming = None;
                    r.confirmed = true;
                    r.resume_client = true;
                }
                confirmed = wait_result_confirmed(&mut r.result_confirming), if r.result_confirming.is_some() => {
                    r.result_confirming = None;
                    self.on_result_confirmed(r, confirmed, busy).await;
                }
                acked = r.gate.acknowledged(), if r.gate.waiting() => self.on_acknowledged(r, acked, busy).await,
                _ = sleep_opt(outcome_deadline), if outcome_deadline.is_some() => {
                    self.submit_outcomes(r.gate.due_outcomes());
                }
                _ = sleep_opt(close_deadline), if close_deadline.is_some() => {
                    tracing::debug!("could not deliver the final message in time; closing");
                    return r.state.reason().unwrap_or(EndReason::Shutdown);
                }
                grant = self.watch.changed(), if relaying => self.on_grant(r, grant, busy, &mut probe),
                _ = tokio::time::sleep_until(expiry), if relaying => self.check_grant(r, busy),
                _ = sleep_opt(warning), if relaying && warning.is_some() => self.warn(r),
                notices = self.handle.next_notices(), if relaying => {
                    for text in notices {
                        r.bufs.outbox.queue(&PgError::notice(text));
                    }
                }
                _ = kill.cancelled(), if relaying => self.killed(r, busy),
                _ = shutdown.cancelled(), if open => {
                    r.state.shutdown(Instant::now(), self.ctx.config.proxy.shutdown_grace);
                }
                _ = sleep_opt(drain_deadline), if drain_deadline.is_some() => {
                    self.sever(r, busy, EndReason::Shutdown, shutting_down());
                }
            }
        }
    }

    /// Makes a cut [`cut::due`] found at the top of the loop; `Break` ends the session.
    fn cut(
        &mut self,
        r: &mut Relay,
        due: cut::Due,
        busy: bool,
        probe: &mut GrantProbe,
    ) -> ControlFlow<EndReason> {
        match due {
            cut::Due::Kill => self.killed(r, busy),
            cut::Due::GrantChanged => match self.watch.take_changed() {
                Some(grant) => self.on_grant(r, grant, busy, probe),
                None => probe.seen(),
            },
            cut::Due::Expired => self.check_grant(r, busy),
            cut::Due::Shutdown => r
                .state
                .shutdown(Instant::now(), self.ctx.config.proxy.shutdown_grace),
            cut::Due::DrainOver => self.sever(r, busy, EndReason::Shutdown, shutting_down()),
            cut::Due::CloseOver => {
                tracing::debug!("could not deliver the final message in time; closing");
                return ControlFlow::Break(r.state.reason().unwrap_or(EndReason::Shutdown));
            }
        }
        ControlFlow::Continue(())
    }

    /// The grant changed (revoked, extended): take it and re-check it.
    fn on_grant(&mut self, r: &mut Relay, grant: crate::grants::Grant, busy: bool, probe: &mut GrantProbe) {
        self.grant = grant;
        probe.seen();
        r.warnings = self.pending_warnings(self.ctx.clock.now());
        self.check_grant(r, busy);
    }

    /// An administrator killed the session.
    fn killed(&self, r: &mut Relay, busy: bool) {
        let by = self
            .handle
            .kill_reason()
            .unwrap_or_else(|| "an administrator".into());
        let error = PgError::admin_shutdown(format!("terminating connection: session killed by {by}"));
        self.sever(r, busy, EndReason::Killed, error);
    }

    /// Whether a cut is pending that forbids forwarding client frames (for the paths that write
    /// upstream outside the loop's I/O poll).
    pub(super) fn cut_pending(&self) -> bool {
        self.handle.kill_token().is_cancelled()
            || self.watch.has_changed()
            || self.ctx.clock.now() >= self.grant.expires_at
    }

    /// Applies what one I/O poll produced; `Break` ends the session.
    async fn on_io(
        &mut self,
        client: &mut ClientStream,
        r: &mut Relay,
        ev: IoEvents,
        busy: bool,
    ) -> ControlFlow<EndReason> {
        // --- backend → client
        if let Some(read) = ev.upstream_read {
            self.on_upstream_read(client, r, read, busy).await?;
        }
        if let Some((wrote, injected)) = ev.client_wrote {
            let Ok(n) = wrote.inspect_err(|e| tracing::debug!(error = %e, "client write failed")) else {
                return self.client_gone(r, busy).await;
            };
            r.bufs.outbox.advance(n, injected);
            r.bufs.client_needs_flush = r.client_tls;
            r.bufs.outbox.place_injection();
        }
        if let Some(flushed) = ev.client_flushed {
            if flushed.is_err() {
                return self.client_gone(r, busy).await;
            }
            r.bufs.client_needs_flush = false;
        }
        // --- client → backend
        let mut frames_ready = ev.resume_frames;
        if let Some(read) = ev.client_read {
            match read {
                Ok(0) | Err(_) => {
                    // The client vanished (EOF without Terminate, or reset): stop its query.
                    tracing::info!(phase = ?r.sync.phase(), "client disconnected");
                    r.cancel_after_relay(busy);
                    return ControlFlow::Break(EndReason::ClientExit);
                }
                Ok(n) => {
                    self.handle.add_from_client(n as u64);
                    r.bytes_from_client.inc_by(n as u64);
                    frames_ready = true;
                }
            }
        }
        if frames_ready {
            self.on_client_frames(r, busy).await?;
        }
        if let Some(wrote) = ev.upstream_wrote {
            match wrote {
                Ok(n) => {
                    bytes::Buf::advance(&mut r.bufs.to_upstream, n);
                    r.bufs.upstream_needs_flush = r.upstream_tls;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "upstream write failed");
                    return self.finish_after_upstream_loss(client, r).await;
                }
            }
        }
        if let Some(flushed) = ev.upstream_flushed {
            if flushed.is_err() {
                return self.finish_after_upstream_loss(client, r).await;
            }
            r.bufs.upstream_needs_flush = false;
        }
        if let Some(reason) = r.state.reason() {
            if r.bufs.outbox.drained() && !r.bufs.client_needs_flush {
                tracing::debug!(reason = reason.as_str(), "final message sent");
                let _ = tokio::time::timeout(Duration::from_millis(200), client.flush()).await;
                return ControlFlow::Break(reason);
            }
        }
        ControlFlow::Continue(())
    }

    /// The client cannot be written to: stop its query and end.
    async fn client_gone(&mut self, r: &mut Relay, busy: bool) -> ControlFlow<EndReason> {
        r.cancel_after_relay(busy);
        ControlFlow::Break(r.state.reason().unwrap_or(EndReason::ClientExit))
    }

    /// The audit acknowledgement of the held client frames came back.
    async fn on_acknowledged(&mut self, r: &mut Relay, acked: Result<(), AuditError>, busy: bool) {
        let (waited, acked) = r
            .gate
            .on_acknowledged(acked, &mut r.bufs.to_upstream, Instant::now());
        if let Some(waited) = waited {
            self.ctx
                .proxy
                .metrics
                .audit_write_seconds
                .observe(waited.as_secs_f64());
        }
        if let Err(e) = acked {
            self.ctx.proxy.metrics.audit_failures_total.inc();
            tracing::error!(error = %e, "audit records not durable; statements not run");
            self.sever(r, busy, EndReason::AuditUnavailable, audit_refusal(&e));
        }
    }

    /// Hands outcome records to the audit log on their own (best effort: the statements ran).
    fn submit_outcomes(&self, events: Vec<AuditEvent>) {
        if let Err(e) = self.ctx.audit.submit(events) {
            self.ctx.proxy.metrics.audit_failures_total.inc();
            tracing::error!(error = %e, "could not record statement outcomes in the audit log");
        }
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

    /// The next expiry warning is due: queue it for the client.
    fn warn(&self, r: &mut Relay) {
        if let Some(w) = r.warnings.pop() {
            let left = humantime::format_duration(Duration::from_secs(w.num_seconds().max(0) as u64));
            let notice = PgError::warning(format!(
                "timebox: grant {} expires in {left} (at {}); the session will be closed then",
                self.grant.id,
                self.grant
                    .expires_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ))
            .with_hint("Ask for an extension or a new grant if you need more time.");
            r.bufs.outbox.queue(&notice);
        }
    }

    /// Re-checks the grant now; severs the session if it no longer admits it.
    fn check_grant(&mut self, r: &mut Relay, busy: bool) {
        let now = self.ctx.clock.now();
        let Some(why) = self.grant.refusal_at(now) else {
            return;
        };
        let reason = match self.grant.status_at(now) {
            GrantStatus::Revoked => EndReason::Revoked,
            _ => EndReason::Expired,
        };
        let error = PgError::admin_shutdown(format!("terminating connection: {why}"))
            .with_hint("Ask for a new grant (timebox grant issue / timebox request create).");
        self.sever(r, busy, reason, error);
    }

    /// Queues the FATAL, enters the closing state (nothing more is forwarded upstream) and marks
    /// the running upstream query, if any, for cancelling after the client has its FATAL.
    fn sever(&self, r: &mut Relay, busy: bool, reason: EndReason, error: PgError) {
        // Debug, not info: at a mass expiry a synchronous log line per session before its FATAL
        // delays every later session's (the info line is "session ended", after it).
        tracing::debug!(
            reason = reason.as_str(),
            phase = ?r.sync.phase(),
            message = %error.message,
            "severing session"
        );
        r.cancel_after_relay(busy);
        // A result waiting for its second catalog check: the check is dropped, and the FATAL goes
        // at the pause (nothing of that result reaches the client).
        r.result_confirming = None;
        r.paused = None;
        r.bufs.outbox.queue_last(&error);
        r.state.close(reason, Instant::now());
    }
}

/// A backend frame with `tag` and `body`, for the parts' unit tests.
#[cfg(test)]
fn test_frame(tag: u8, body: &[u8]) -> bytes::BytesMut {
    let mut b = bytes::BytesMut::new();
    super::wire::frame(&mut b, tag, |x| x.extend_from_slice(body));
    b
}

fn shutting_down() -> PgError {
    PgError::admin_shutdown("terminating connection: timebox is shutting down")
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

/// Converts a wall-clock deadline into a tokio instant, given the same moment `now` on both
/// clocks (`tnow` if already past).
fn instant_at(now: DateTime<Utc>, tnow: Instant, at: DateTime<Utc>) -> Instant {
    let wait = (at - now).to_std().unwrap_or(Duration::ZERO);
    tnow + wait
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
