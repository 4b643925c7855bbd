//! Backend → client: what the upstream sent goes to the client undecoded, except the few frames
//! the relay holds and reads ([`super::held`]): CommandComplete and ErrorResponse become
//! statement outcomes (through the sync tracker), a denial marker's ErrorResponse is replaced by
//! timebox's 42501, and a ParameterStatus that changes how SQL is lexed ends the session. When the
//! upstream is lost the client gets the whole frames it is owed and a FATAL, never half a frame.

use std::ops::ControlFlow;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::io::{UpstreamRead, MAX_HELD_FRAME};
use super::outbox::{lost_track, OutboxError};
use super::quota::Limit;
use super::state::EndReason;
use super::sync::Completed;
use super::Relay;
use crate::audit::event::{self as audit_event, AuditEvent};
use crate::proxy::session::Session;
use crate::proxy::stream::ClientStream;
use crate::proxy::wire::PgError;

/// What became of one held frame.
pub(super) enum Held {
    /// Handled (sent as it is or edited, or dropped).
    Handled,
    /// A masked role's result begins: it waits for a second catalog check.
    Confirm,
}

/// The held frames of an upstream read, from `at` on not handled yet (a masked role's result
/// waiting for its second catalog check, s7 F4).
pub(crate) struct PausedRead {
    pub(crate) frames: Vec<(u8, u64, u64)>,
    pub(crate) at: usize,
    /// A quota limit the read's frames before `at` reached.
    pub(crate) stopped: Option<Limit>,
}

impl Session {
    /// The upstream read `read` finished.
    pub(super) async fn on_upstream_read(
        &mut self,
        client: &mut ClientStream,
        r: &mut Relay,
        read: std::io::Result<usize>,
        busy: bool,
    ) -> ControlFlow<EndReason> {
        match read {
            Ok(0) => {
                if let Some(reason) = r.state.reason() {
                    return ControlFlow::Break(reason);
                }
                tracing::info!("upstream closed the connection");
                self.finish_after_upstream_loss(client, r).await
            }
            Ok(n) => {
                self.handle.add_to_client(n as u64);
                r.bytes_to_client.inc_by(n as u64);
                self.on_held_frames(r, busy).await;
                self.check_held_size(r, busy);
                r.bufs.outbox.place_injection();
                ControlFlow::Continue(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "upstream read failed");
                let lost = PgError::upstream_lost(&self.grant.target).to_bytes();
                r.bufs.outbox.pending.clear();
                let _ = client.write_all(&lost).await;
                ControlFlow::Break(EndReason::UpstreamError)
            }
        }
    }

    /// Reads the frames held back from the last upstream read, in order, then applies the
    /// read's edits (rows masked, frames dropped or replaced) in one pass. A frame the outbox
    /// cannot find ends the session ([`Session::abandon_stream`]). A masked role's result waits
    /// for a second catalog check at its first frame ([`Session::pause_result`]).
    async fn on_held_frames(&mut self, r: &mut Relay, busy: bool) {
        if r.bufs.outbox.abandoned() {
            // The session is ending: nothing more of the stream is handled or sent.
            r.bufs.held_frames.clear();
            return;
        }
        let held = std::mem::take(&mut r.bufs.held_frames);
        self.handle_held_frames(
            r,
            busy,
            PausedRead {
                frames: held,
                at: 0,
                stopped: None,
            },
            false,
        )
        .await;
    }

    /// Handles `read.frames` from `read.at` on (the first of them already past the quotas and its
    /// second catalog check when `resumed`), then finishes the read, unless a result pauses it.
    async fn handle_held_frames(&mut self, r: &mut Relay, busy: bool, mut read: PausedRead, resumed: bool) {
        // Result quotas (roles that set one): frames dropped or replaced are not handled below.
        let mut handled = Ok(());
        if resumed {
            handled = self.held_frame_rest(r, busy, read.frames[read.at]);
            read.at += 1;
        }
        while handled.is_ok() && read.at < read.frames.len() {
            let frame = read.frames[read.at];
            match self.on_held_frame(r, busy, frame, &mut read.stopped) {
                Ok(Held::Handled) => read.at += 1,
                Ok(Held::Confirm) => {
                    if let Err(e) = self.pause_result(r, read) {
                        self.abandon_stream(r, busy, e);
                    }
                    return;
                }
                Err(e) => handled = Err(e),
            }
        }
        // The list's allocation is kept for the next read.
        let mut held = read.frames;
        held.clear();
        r.bufs.held_frames = held;
        if handled.is_ok() && r.quota.is_some() {
            handled = self.quota_after_read(r, read.stopped).await;
        }
        if r.mask.is_some() {
            self.mask_after_read(r);
        }
        match handled {
            Ok(()) => r.bufs.outbox.finish_edits(),
            Err(e) => self.abandon_stream(r, busy, e),
        }
    }

    /// One frame held back from the last upstream read (upstream offsets `start..end`).
    fn on_held_frame(
        &mut self,
        r: &mut Relay,
        busy: bool,
        (tag, start, end): (u8, u64, u64),
        stopped: &mut Option<Limit>,
    ) -> Result<Held, OutboxError> {
        // Masked roles' Binds (`super::lock_prelude`): the answers to timebox's lock block ahead
        // of one (not an abort marker's error, which comes first, see `super::pipeline`).
        if matches!(tag, b'1' | b'2' | b'C' | b'3' | b'E')
            && r.mask.as_ref().is_some_and(|m| m.answering_lock())
            && !(tag == b'E' && r.batch.as_ref().is_some_and(|b| b.marker_pending()))
        {
            self.lock_frame(r, (tag, start, end))?;
            return Ok(Held::Handled);
        }
        // Masked roles' Queries (`super::wrap`): timebox's own transaction control is answered
        // here, and a Query's end releases the client's frames.
        if r.wrap.is_some() && !self.wrap_frame(r, (tag, start, end))? {
            return Ok(Held::Handled);
        }
        // Masked roles' batches (`super::pipeline`): an Execute's end releases the client's frames.
        if r.batch.is_some() && !self.batch_frame(r, (tag, start, end))? {
            return Ok(Held::Handled);
        }
        if r.quota.is_some() && !self.quota_frame(r, (tag, start, end), stopped)? {
            if let Some(m) = r.mask.as_mut() {
                m.on_skipped(tag);
                self.interceptor.on_backend_outcomes(m.outcomes.drain(..));
            }
            return Ok(Held::Handled);
        }
        // Masked roles (s7, F4): a result's first frame waits for the catalog to be confirmed
        // again, now that the statement holds its locks.
        // Not a CommandComplete after DDL the session ran itself (s9 fourth attack: its own
        // change made every such statement "ran on a changed catalog"): DDL changes the catalog by
        // design, so a statement without rows of a string with DDL is not checked again.
        if r.mask.as_ref().is_some_and(|m| m.confirms_at(tag)) && !(tag == b'C' && r.ddl_forwarded) {
            return Ok(Held::Confirm);
        }
        self.held_frame_rest(r, busy, (tag, start, end))?;
        Ok(Held::Handled)
    }

    /// A held frame past the batch hold and the quotas: masked, then read.
    fn held_frame_rest(
        &mut self,
        r: &mut Relay,
        busy: bool,
        (tag, start, end): (u8, u64, u64),
    ) -> Result<(), OutboxError> {
        // Column masks (roles that set some): rows rewritten, or dropped when unknown.
        if r.mask.is_some() && !self.mask_frame(r, (tag, start, end))? {
            return Ok(());
        }
        let outbox = &mut r.bufs.outbox;
        match tag {
            b'Z' => {
                if std::mem::take(&mut r.ddl_forwarded) {
                    self.ddl_ran();
                }
                // This frame's status (not the last one of the read: a read may hold several).
                let status = outbox.frame_bytes(start, end)?.get(5).copied().unwrap_or(b'I');
                if let Some(done) = r.sync.ready(status, Instant::now()) {
                    r.statement_duration.observe(done.elapsed.as_secs_f64());
                    let events = self.outcome_events(done);
                    r.gate.outcomes(events, Instant::now());
                }
                // Masked roles: a Query waiting for the answers before it may go now.
                if r.sync.answered_all() && r.wrap.as_mut().is_some_and(|w| w.idle()) {
                    r.resume_client = true;
                }
            }
            b'C' => {
                if let Some(t) = r.held.command_tag(outbox.frame_bytes(start, end)?) {
                    r.sync.command_complete(t);
                }
            }
            b'E' if self.interceptor.is_marker_error(outbox.frame_bytes(start, end)?) => {
                let denial = self.interceptor.take_denial();
                outbox.replace_frame(start, end, &denial)?;
            }
            b'E' => {
                let frame = outbox.frame_bytes(start, end)?;
                r.sync.error(r.held.error_sqlstate(frame));
                // Masked roles: no DETAIL (it may quote a failing row's masked columns).
                if r.mask.is_some() {
                    if let Some(f) = super::mask::without_detail(frame) {
                        outbox.replace_frame(start, end, &f)?;
                    }
                }
            }
            b'S' => {
                let Some(problem) = r.held.lexing_problem(outbox.frame_bytes(start, end)?) else {
                    return Ok(());
                };
                if r.state.relaying() {
                    let error = PgError::admin_shutdown(format!("terminating connection: {problem}"))
                        .with_hint("timebox reads statements with standard_conforming_strings = on and UTF-8 text; it does not allow changing that.");
                    self.sever(r, busy, EndReason::UpstreamError, error);
                    // Right after the ParameterStatus, before the statement's ReadyForQuery:
                    // the statement that changed the setting fails, nothing after it runs.
                    r.bufs.outbox.inject_after(end)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The outbox cannot find a frame the relay was handed (an internal error): the session ends
    /// with FATAL XX000, and none of the stream's unsent bytes reach the client (they may hold
    /// rows not masked yet), nor any read after.
    fn abandon_stream(&self, r: &mut Relay, busy: bool, e: OutboxError) {
        tracing::error!(error = %e, "the relay lost track of the server's messages; ending the session");
        r.bufs.outbox.abandon();
        self.sever(r, busy, EndReason::InternalError, lost_track());
    }

    /// A masked role's result reached its first frame ([`Held::Confirm`]): the frames before it
    /// go, it and the rest of its read wait (unsent, unhandled, nothing more read upstream) for the
    /// target's catalog to be confirmed again, in a future the relay races with its cut arms.
    fn pause_result(&mut self, r: &mut Relay, read: PausedRead) -> Result<(), OutboxError> {
        let (_, start, _) = read.frames[read.at];
        r.bufs.outbox.pause_at(start)?;
        if let Some(m) = r.mask.as_ref() {
            r.result_confirming = Some(super::mask::confirming_result(m.entry(), self.ctx.proxy.clone()));
        }
        r.paused = Some(read);
        Ok(())
    }

    /// The second catalog check of a paused result resolved (`confirmed`: it could read the
    /// catalog): the result is judged by it, and the rest of the read is handled.
    pub(super) async fn on_result_confirmed(&mut self, r: &mut Relay, confirmed: bool, busy: bool) {
        let Some(read) = r.paused.take() else {
            return;
        };
        r.bufs.outbox.resume();
        if let Some(m) = r.mask.as_mut() {
            m.after_confirm(confirmed);
        }
        self.handle_held_frames(r, busy, read, true).await;
        self.check_held_size(r, busy);
        r.bufs.outbox.place_injection();
    }

    /// A held frame arriving declares more than the relay holds: the session ends with FATAL 54000
    /// right before it (the complete frames ahead of it are delivered, none of it is).
    fn check_held_size(&self, r: &mut Relay, busy: bool) {
        if let UpstreamRead::TooLarge { declared } = r.bufs.outbox.read_decision() {
            if r.state.relaying() {
                let error = PgError::held_message_too_long(declared, MAX_HELD_FRAME);
                self.sever(r, busy, EndReason::FrameTooLarge, error);
            }
        }
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
                returned: o.returned,
            })
        })
    }

    /// The upstream is gone: deliver what it sent (up to a boundary), then a FATAL.
    pub(super) async fn finish_after_upstream_loss(
        &mut self,
        client: &mut ClientStream,
        r: &mut Relay,
    ) -> ControlFlow<EndReason> {
        let out = r
            .bufs
            .outbox
            .take_before_loss(&PgError::upstream_lost(&self.grant.target));
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            client.write_all(&out).await?;
            client.flush().await
        })
        .await;
        ControlFlow::Break(EndReason::UpstreamError)
    }
}
