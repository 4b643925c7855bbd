//! Client → backend: takes the client's bytes apart into frontend frames (checked for type and
//! size, whole), has each checked by the [`Interceptor`](crate::proxy::intercept::Interceptor),
//! records the checked statements, and hands the frames to the audit gate, which releases them
//! upstream once their records are acknowledged. Never forwards a frame unchecked or unaudited.

use std::ops::ControlFlow;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::gate::AuditGate;
use super::lock_prelude;
use super::precheck::offload_precheck;
use super::state::EndReason;
use super::sync::SyncTracker;
use super::wrap::{self, Mode};
use super::{audit_refusal, Relay};
use crate::audit::event::{self as audit_event, AuditEvent};
use crate::proxy::intercept::{Checked, FrontendAction, Precheck};
use crate::proxy::session::Session;
use crate::proxy::wire::{self, PgError};

impl Session {
    /// Processes the complete frames the client sent (the prechecked big one first).
    pub(super) async fn on_client_frames(&mut self, r: &mut Relay, busy: bool) -> ControlFlow<EndReason> {
        r.resume_client = false;
        loop {
            let next = match &r.resumed {
                Some((tag, ..)) => Some(*tag),
                None => r.bufs.from_client.first().copied(),
            };
            if r.batch.as_ref().is_some_and(|b| b.holding())
                || r.wrap.as_ref().is_some_and(|w| !w.admits(next))
            {
                // Masked roles: the frames after an Execute wait for its result (see `pipeline`),
                // those after a Query for its transaction's end (see `wrap`); those before go now.
                self.end_of_read(r, busy).await;
                return ControlFlow::Continue(());
            }
            let parked: Bytes;
            let (tag, frame, consumed, precheck) = if let Some((tag, bytes, pre)) = r.resumed.take() {
                parked = bytes;
                (tag, &parked[..], 0, Some(pre))
            } else {
                match wire::next_frontend_frame(&r.bufs.from_client, r.max_message) {
                    Ok(Some((tag, len))) => {
                        if tag == b'Q' && r.wrap.is_some() {
                            if let ControlFlow::Break(()) = self.query_waits(r, busy).await {
                                return ControlFlow::Continue(());
                            }
                        }
                        // Masked roles only: the catalog snapshot the statement is checked (and
                        // its result judged) against is confirmed current first (s6), in a future
                        // the relay races with its cut arms (s7); the frame waits for it.
                        if matches!(tag, b'Q' | b'P' | b'B') && !std::mem::take(&mut r.confirmed) {
                            if let Some(m) = self.interceptor.masking() {
                                r.confirming = Some(m.clone().confirming(self.ctx.proxy.clone()));
                                return ControlFlow::Continue(());
                            }
                        }
                        if self.interceptor.wants_offload(tag, &r.bufs.from_client[..len]) {
                            let frame = r.bufs.from_client.split_to(len).freeze();
                            let permits = self.ctx.proxy.precheck_permits.clone();
                            r.offloaded = Some(offload_precheck(
                                self.interceptor.prechecker(),
                                permits,
                                tag,
                                frame,
                            ));
                            return ControlFlow::Continue(());
                        }
                        (tag, &r.bufs.from_client[..len], len, None)
                    }
                    Ok(None) => {
                        self.end_of_read(r, busy).await;
                        return ControlFlow::Continue(());
                    }
                    Err(error) => {
                        tracing::info!(code = error.code, message = %error.message, "client protocol violation");
                        r.bufs.outbox.queue_instead(&error);
                        r.cancel_after_relay(busy);
                        r.state.close(EndReason::ClientError, Instant::now());
                        return ControlFlow::Continue(());
                    }
                }
            };
            if tag == b'X' {
                // Terminate: the session ends normally after what came before it (once that is
                // audited).
                let (events, held) = r.gate.terminate();
                if self.ctx.audit.record_durable(events).await.is_err() {
                    self.ctx.proxy.metrics.audit_failures_total.inc();
                    return ControlFlow::Break(EndReason::ClientExit);
                }
                // Not past the deadline, a kill or a grant change (the audit write took time).
                if self.cut_pending() {
                    tracing::info!("client frames before Terminate not forwarded: the session is being cut");
                    r.cancel_after_relay(busy);
                    return ControlFlow::Break(EndReason::ClientExit);
                }
                let to_upstream = &mut r.bufs.to_upstream;
                to_upstream.extend_from_slice(&held);
                to_upstream.extend_from_slice(frame);
                let _ = self.upstream.write_all(to_upstream).await;
                return ControlFlow::Break(EndReason::ClientExit);
            }
            // Masked roles: a Query outside a transaction block goes in one timebox opens, if it
            // may; one reading relations, after they are locked (in the client's block too).
            let transaction = (tag == b'Q' && r.wrap.is_some()).then(|| r.sync.transaction());
            let (ddl, sent, mode, bind_locked) = self.on_frame(
                &mut r.gate,
                &mut r.sync,
                r.skip_audit,
                tag,
                frame,
                precheck,
                transaction,
            );
            r.ddl_forwarded |= ddl;
            if let (Some(w), Some(sent)) = (r.wrap.as_mut(), sent) {
                if sent == b'Q' {
                    w.forwarded(mode);
                }
                w.client_forwarded(sent);
            }
            if let (Some(batch), Some(sent)) = (r.batch.as_mut(), sent) {
                if let Some(flush) = batch.forwarded(sent) {
                    r.gate.hold(flush);
                }
            }
            if let Some(m) = r.mask.as_mut() {
                if bind_locked {
                    m.lock_sent();
                }
                m.on_frontend(tag, frame);
            }
            r.bufs.from_client.advance(consumed);
        }
    }

    /// Masked roles (see `wrap`): a Query waits until everything sent before it is answered
    /// (`Break`: it waits); a Query after extended-protocol messages with no Sync between them
    /// ends the session (whether a block is open upstream is then unknown).
    async fn query_waits(&mut self, r: &mut Relay, busy: bool) -> ControlFlow<()> {
        if r.sync.unsynced() {
            let error = PgError::protocol_violation(
                "timebox: for roles with masks, a simple Query must not follow extended-protocol messages without a Sync",
            );
            tracing::info!("masked role: a Query inside an unsynced extended-protocol batch");
            r.bufs.outbox.queue_instead(&error);
            r.cancel_after_relay(busy);
            r.state.close(EndReason::ClientError, Instant::now());
            return ControlFlow::Break(());
        }
        if r.sync.answered_all() {
            return ControlFlow::Continue(());
        }
        if let Some(w) = r.wrap.as_mut() {
            w.wait_for_idle();
        }
        self.end_of_read(r, busy).await;
        ControlFlow::Break(())
    }

    /// One frontend frame: checked, recorded, held for the audit gate, tracked for its outcome.
    /// `true` when it is an allowed DDL statement (masked columns' identities may change); the type
    /// of the frame sent upstream in its place, if any; how a masked role's Query went
    /// (`transaction`: the session's transaction status before it, for masked roles' Queries;
    /// see `wrap` and `lock_prelude`); `true` when timebox's lock block went ahead of a masked
    /// role's Bind.
    #[allow(clippy::too_many_arguments)]
    fn on_frame(
        &mut self,
        gate: &mut AuditGate,
        sync: &mut SyncTracker,
        skip_audit: bool,
        tag: u8,
        frame: &[u8],
        precheck: Option<Precheck>,
        transaction: Option<u8>,
    ) -> (bool, Option<u8>, Mode, bool) {
        let mut checked = None;
        let action = self
            .interceptor
            .on_frontend_prechecked(tag, frame, precheck, &mut checked);
        if checked.is_some() {
            self.handle.add_statement();
        }
        let (mode, prelude) = self.masked_query_mode(&action, frame, checked.as_ref(), transaction);
        if let Some(prelude) = prelude {
            gate.hold(&prelude);
        }
        let bind_locked =
            tag == b'B' && matches!(action, FrontendAction::Forward) && self.masked_bind_lock(gate, frame);
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
        if let Some(c) = &checked {
            if !skip_audit {
                let id = self.next_statement_id();
                if c.denied.is_none() {
                    sync.statement(id);
                }
                gate.statement(self.statement_event(id, c));
            }
            self.count_statement(c);
        }
        if let Some(sent) = sent_tag {
            sync.forwarded(sent, Instant::now());
        }
        let ddl =
            checked.is_some_and(|c| c.denied.is_none() && c.class == crate::policy::StatementClass::Ddl);
        (ddl, sent_tag, mode, bind_locked)
    }

    /// A masked role's Bind of a statement that reads relations: timebox's lock block goes
    /// upstream ahead of it (`lock_prelude::bind_lock`); `true` when it did.
    fn masked_bind_lock(&self, gate: &mut AuditGate, frame: &[u8]) -> bool {
        let Some(m) = self.interceptor.masking() else {
            return false;
        };
        let body = frame.get(5..).unwrap_or_default();
        let statement = body
            .iter()
            .position(|b| *b == 0)
            .and_then(|end| body.get(end + 1..))
            .and_then(|rest| rest.iter().position(|b| *b == 0).map(|n| &rest[..n]));
        let Some(statement) = statement.and_then(|s| std::str::from_utf8(s).ok()) else {
            return false;
        };
        let relations = self.interceptor.prepared_relations(statement);
        if relations.is_empty() {
            return false;
        }
        let snapshot = m.entry.current();
        let block = lock_prelude::lock_block(
            &relations,
            snapshot.as_ref().and_then(|s| s.fingerprint.as_ref()),
            &self.interceptor.check_name(),
        );
        gate.hold(&lock_prelude::bind_lock(&self.interceptor.lock_name(), &block));
        true
    }

    /// How a masked role's Query goes (`transaction`: the session's status before it; `None`: not
    /// a masked role's Query), and what timebox sends ahead of it: its `BEGIN` outside a block
    /// when the Query may run in one (`wrap`), the lock block when it reads relations, outside a
    /// block or in the client's (`lock_prelude`); outside a block, a string opening with its own
    /// `BEGIN` has it sent ahead of the lock block. Nothing for a failed block (nothing runs
    /// there).
    fn masked_query_mode(
        &self,
        action: &FrontendAction,
        frame: &[u8],
        checked: Option<&Checked>,
        transaction: Option<u8>,
    ) -> (Mode, Option<BytesMut>) {
        let allowed = checked.filter(|c| c.denied.is_none() && !matches!(action, FrontendAction::Drop));
        let (Some(status), Some(c)) = (transaction, allowed) else {
            return (Mode::Guarded, None);
        };
        let statements = &c.classification.statements;
        let own = status == b'I' && wrap::wrappable(statements);
        let relations = self.interceptor.relations_read(&c.classification);
        let reads = !relations.is_empty();
        // `wrap::string_refusal` leaves transaction control in a string only as its first
        // (`BEGIN`) or last (`ROLLBACK`) statement.
        let opens = status == b'I'
            && statements.len() > 1
            && matches!(
                statements.first().map(|s| s.kind.as_str()),
                Some("BEGIN" | "START TRANSACTION")
            );
        let begin = if own {
            // READ COMMITTED whatever the session's default when the lock block follows: it
            // refuses any other isolation level (see `lock_prelude::ISOLATION`).
            Some(
                if reads {
                    "BEGIN ISOLATION LEVEL READ COMMITTED"
                } else {
                    "BEGIN"
                }
                .to_owned(),
            )
        } else if opens {
            match lock_prelude::leading_begin(frame) {
                Some(begin) => Some(begin),
                None => return (Mode::Guarded, None),
            }
        } else {
            None
        };
        let lock = (own || opens || status == b'T')
            .then_some(relations)
            .filter(|relations| !relations.is_empty())
            .map(|relations| {
                let snapshot = self.interceptor.masking().and_then(|m| m.entry.current());
                lock_prelude::lock_block(
                    &relations,
                    snapshot.as_ref().and_then(|s| s.fingerprint.as_ref()),
                    &self.interceptor.check_name(),
                )
            });
        let mode = match (own, lock.is_some()) {
            (true, _) => Mode::Own,
            (false, true) => Mode::Locked { begin_warning: opens },
            (false, false) => return (Mode::Guarded, None),
        };
        (mode, lock_prelude::prelude(begin.as_deref(), lock))
    }

    /// Metrics and the log line of a checked statement.
    fn count_statement(&self, c: &Checked) {
        let decision = if c.denied.is_some() { "deny" } else { "allow" };
        self.ctx
            .proxy
            .metrics
            .statements_total
            .with_label_values(&[c.class.as_str(), decision])
            .inc();
        if c.mask_denied {
            self.ctx.proxy.masking_metrics.masking_denials_total.inc();
        }
        if let Some(reason) = &c.denied {
            // The reason may quote the statement: never a secret in a log line.
            let reason = c.sql.loggable_reason(reason);
            tracing::info!(sql.len = c.sql.bytes(), %reason, "statement denied");
        }
    }

    /// The client's read is processed: its frames go upstream once their records are durable.
    async fn end_of_read(&mut self, r: &mut Relay, busy: bool) {
        let audit = &self.ctx.audit;
        let submitted = r.gate.end_of_read(
            |events| audit.submit(events),
            &mut r.bufs.to_upstream,
            Instant::now(),
        );
        if let Err(e) = submitted {
            self.ctx.proxy.metrics.audit_failures_total.inc();
            tracing::error!(error = %e, "audit log refused statement records; statements not run");
            self.sever(r, busy, EndReason::AuditUnavailable, audit_refusal(&e));
        }
    }

    fn next_statement_id(&mut self) -> u64 {
        self.statement_seq += 1;
        self.statement_seq
    }

    /// The audit record of one checked statement (redacted by the audit log before it is written).
    fn statement_event(&self, id: u64, c: &Checked) -> AuditEvent {
        let mut relations: Vec<String> = Vec::new();
        for stmt in &c.classification.statements {
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
            reason: c
                .denied
                .as_deref()
                .map(|r| c.sql.scrub(r).into_owned())
                .or_else(|| {
                    // Roles with masks: which masked columns it may read (names, never values).
                    (!c.masked.is_empty()).then(|| format!("masked columns: {}", c.masked.join(", ")))
                }),
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
}
