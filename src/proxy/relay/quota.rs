//! Result quotas per role (`max_rows_per_statement`, `max_result_bytes_per_statement`,
//! `max_result_bytes_per_grant`), applied to the backend stream on its way to the client.
//!
//! Only sessions whose role sets a quota have a [`ResultQuota`]; for them the outbox notes every
//! backend frame, and each DataRow and CopyData is counted at its header (whole-frame bytes), so
//! its fate is decided before any byte of it reaches the client. Past a limit the frame and the
//! rest of the statement's result are dropped (a dropped frame still arriving is removed as it
//! comes), the query is cancelled upstream through the target's cancel slots, the
//! CommandComplete or ErrorResponse that ends the statement becomes timebox's ERROR 54000, and the
//! ReadyForQuery goes through: the session stays usable. Statements that do not reach a limit are
//! forwarded unchanged. Must never let a byte past a limit reach the client, nor split a frame.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use super::mask::ResultMask;
use super::outbox::{ClientOutbox, OutboxError};
use super::Relay;
use crate::audit::event::Returned;
use crate::config::{Quotas, Size};
use crate::proxy::cancel::UPSTREAM_STOP_BOUND;
use crate::proxy::session::Session;
use crate::proxy::wire::PgError;

/// Result bytes received by each grant's sessions on this instance (for
/// `max_result_bytes_per_grant`). In memory: a restart, or another instance of a fleet, starts
/// from zero.
#[derive(Debug, Default)]
pub struct GrantUsage {
    by_grant: DashMap<String, Arc<AtomicU64>>,
}

impl GrantUsage {
    /// The counter of grant `id` (created at zero on first use).
    pub fn counter(&self, id: &str) -> Arc<AtomicU64> {
        if let Some(c) = self.by_grant.get(id) {
            return c.clone();
        }
        self.by_grant.entry(id.to_owned()).or_default().clone()
    }
}

/// The role option a result went past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    RowsPerStatement,
    BytesPerStatement,
    BytesPerGrant,
}

impl Limit {
    /// The role option's name (also the metric label and the audit record's `quota_stop`).
    pub(crate) fn key(self) -> &'static str {
        match self {
            Limit::RowsPerStatement => "max_rows_per_statement",
            Limit::BytesPerStatement => "max_result_bytes_per_statement",
            Limit::BytesPerGrant => "max_result_bytes_per_grant",
        }
    }

    /// Its configured value as the config would write it.
    fn value(self, q: &Quotas) -> String {
        let v = match self {
            Limit::RowsPerStatement => return q.max_rows_per_statement.unwrap_or(0).to_string(),
            Limit::BytesPerStatement => q.max_result_bytes_per_statement,
            Limit::BytesPerGrant => q.max_result_bytes_per_grant,
        };
        Size(v.unwrap_or(0)).to_string()
    }
}

/// What to do with one backend frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Forward,
    /// Part of a stopped result.
    Drop,
    /// This frame goes past `limit`: drop it and stop the statement.
    Stop(Limit),
    /// The frame ending the stopped statement: answer with the quota error instead.
    Answer(Limit),
    /// A ReadyForQuery reached while the stopped statement had no end: the quota error goes first.
    AnswerBefore(Limit),
}

#[derive(Debug, Clone, Copy)]
struct Stopped {
    limit: Limit,
    /// The client has its quota error.
    answered: bool,
}

/// Counts one session's results against its role's quotas. Pure: fed frame tags and lengths.
#[derive(Debug)]
pub(crate) struct QuotaCounter {
    quotas: Quotas,
    /// The grant's bytes over all its sessions.
    grant_bytes: Arc<AtomicU64>,
    /// DataRows and bytes the statement in progress has returned.
    rows: u64,
    bytes: u64,
    stopped: Option<Stopped>,
}

impl QuotaCounter {
    pub(crate) fn new(quotas: Quotas, grant_bytes: Arc<AtomicU64>) -> Self {
        QuotaCounter {
            quotas,
            grant_bytes,
            rows: 0,
            bytes: 0,
            stopped: None,
        }
    }

    /// Decides one frame with type `tag` and `len` bytes (header included).
    pub(crate) fn frame(&mut self, tag: u8, len: u64) -> Action {
        let Some(s) = &mut self.stopped else {
            return self.count(tag, len);
        };
        match tag {
            b'Z' => {
                let Stopped { limit, answered } = *s;
                self.stopped = None;
                if answered {
                    Action::Forward
                } else {
                    Action::AnswerBefore(limit)
                }
            }
            // Asynchronous messages: settings the relay checks, notices, notifications.
            b'S' | b'N' | b'A' => Action::Forward,
            b'C' | b'E' if !s.answered => {
                s.answered = true;
                Action::Answer(s.limit)
            }
            _ => Action::Drop,
        }
    }

    fn count(&mut self, tag: u8, len: u64) -> Action {
        let rows = match tag {
            b'D' => 1,
            b'd' => 0,
            _ => return Action::Forward,
        };
        let q = &self.quotas;
        let over = |max: Option<u64>, n: u64| max.is_some_and(|m| n > m);
        let limit = if over(q.max_rows_per_statement, self.rows + rows) {
            Some(Limit::RowsPerStatement)
        } else if over(q.max_result_bytes_per_statement, self.bytes + len) {
            Some(Limit::BytesPerStatement)
        } else if let Some(max) = q.max_result_bytes_per_grant {
            let before = self.grant_bytes.fetch_add(len, Ordering::Relaxed);
            (before + len > max).then(|| {
                self.grant_bytes.fetch_sub(len, Ordering::Relaxed);
                Limit::BytesPerGrant
            })
        } else {
            None
        };
        if let Some(limit) = limit {
            self.stopped = Some(Stopped {
                limit,
                answered: false,
            });
            return Action::Stop(limit);
        }
        self.rows += rows;
        self.bytes += len;
        Action::Forward
    }

    /// What the statement whose result just ended returned; counting starts again.
    pub(crate) fn finish_statement(&mut self) -> Returned {
        let r = Returned {
            rows: self.rows,
            bytes: self.bytes,
            quota_stop: self.stopped.map(|s| s.limit.key().to_owned()),
            masked: None,
        };
        self.rows = 0;
        self.bytes = 0;
        r
    }

    /// A quota stopped a statement that has not ended yet (it may still run upstream).
    pub(crate) fn running(&self) -> bool {
        self.stopped.is_some_and(|s| !s.answered)
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stopped.is_some()
    }
}

/// What the relay does with a frame after the quotas saw it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Handle it as usual; `ended`: what the statement it ends returned (`true`: completed by
    /// this CommandComplete, `false`: ended by this ErrorResponse).
    Keep { ended: Option<(Returned, bool)> },
    /// Dropped (part of a stopped result).
    Dropped,
    /// The result went past `limit` at this frame (dropped): cancel the query.
    Stopped(Limit),
    /// Replaced by the quota error (its SQLSTATE); the stopped statement returned this.
    Answered(Returned, &'static str),
    /// The quota error (its SQLSTATE) was put before this ReadyForQuery; handle it as usual.
    AnsweredBefore(Returned, &'static str),
}

/// A session's quotas applied to its client outbox.
#[derive(Debug)]
pub(crate) struct ResultQuota {
    counter: QuotaCounter,
    /// The role's name, for the error.
    role: String,
    /// A DataRow or CopyData decided at its header and still arriving: its start and whether it
    /// is dropped.
    unfinished: Option<(u64, bool)>,
    /// Dropped frames not yet removed from the outbox: one contiguous upstream range.
    drop: Option<(u64, u64)>,
}

impl ResultQuota {
    pub(crate) fn new(quotas: Quotas, grant_bytes: Arc<AtomicU64>, role: &str) -> Self {
        ResultQuota {
            counter: QuotaCounter::new(quotas, grant_bytes),
            role: role.to_owned(),
            unfinished: None,
            drop: None,
        }
    }

    /// A frame `(tag, start, end)` completed in the outbox (upstream offsets, in stream order).
    /// An error: the outbox does not hold the frame (the session ends).
    pub(crate) fn on_frame(
        &mut self,
        out: &mut ClientOutbox,
        tag: u8,
        start: u64,
        end: u64,
    ) -> Result<Step, OutboxError> {
        if let Some((at, dropped)) = self.unfinished {
            if at == start {
                self.unfinished = None;
                if !dropped {
                    // Edits are made in stream order: a drop before it goes first.
                    self.flush(out)?;
                    return Ok(Step::Keep { ended: None });
                }
                let from = start + std::mem::take(&mut out.partial_dropped);
                self.add_drop(out, from, end)?;
                return Ok(Step::Dropped);
            }
        }
        Ok(match self.counter.frame(tag, end.saturating_sub(start)) {
            Action::Forward => {
                self.flush(out)?;
                let ended = match tag {
                    b'C' => Some((self.counter.finish_statement(), true)),
                    b'E' => Some((self.counter.finish_statement(), false)),
                    b'I' | b'Z' => {
                        self.counter.finish_statement();
                        None
                    }
                    _ => None,
                };
                Step::Keep { ended }
            }
            Action::Drop => {
                self.add_drop(out, start, end)?;
                Step::Dropped
            }
            Action::Stop(limit) => {
                self.add_drop(out, start, end)?;
                Step::Stopped(limit)
            }
            Action::Answer(limit) => {
                self.flush(out)?;
                let error = self.error(limit);
                out.replace_frame(start, end, &error.to_bytes())?;
                Step::Answered(self.counter.finish_statement(), error.code)
            }
            Action::AnswerBefore(limit) => {
                self.flush(out)?;
                let error = self.error(limit);
                // Inserted before the ReadyForQuery, which stays as the server sent it.
                out.replace_frame(start, start, &error.to_bytes())?;
                Step::AnsweredBefore(self.counter.finish_statement(), error.code)
            }
        })
    }

    /// After a read's completed frames: removes pending drops, decides a DataRow or CopyData
    /// whose header arrived (removing what arrived of it if dropped); the limit it went past.
    pub(crate) fn after_read(&mut self, out: &mut ClientOutbox) -> Result<Option<Limit>, OutboxError> {
        self.flush(out)?;
        let mut stopped = None;
        if let Some((tag @ (b'D' | b'd'), start, end)) = out.tracker.unfinished_frame() {
            let dropped = match self.unfinished {
                Some((at, dropped)) if at == start => dropped,
                _ => {
                    let action = self.counter.frame(tag, end - start);
                    if let Action::Stop(limit) = action {
                        stopped = Some(limit);
                    }
                    let dropped = action != Action::Forward;
                    self.unfinished = Some((start, dropped));
                    dropped
                }
            };
            if dropped {
                let (from, to) = (start + out.partial_dropped, out.tracker.offset());
                if to > from {
                    out.replace_frame(from, to, &[])?;
                    out.partial_dropped += to - from;
                }
            }
        }
        out.hold_all = self.counter.stopped();
        Ok(stopped)
    }

    /// A stopped statement has not ended yet: its query may still run upstream.
    pub(crate) fn running(&self) -> bool {
        self.counter.running()
    }

    fn add_drop(&mut self, out: &mut ClientOutbox, start: u64, end: u64) -> Result<(), OutboxError> {
        match &mut self.drop {
            Some((_, e)) if *e == start => *e = end,
            _ => {
                self.flush(out)?;
                self.drop = Some((start, end));
            }
        }
        Ok(())
    }

    fn flush(&mut self, out: &mut ClientOutbox) -> Result<(), OutboxError> {
        match self.drop.take() {
            Some((start, end)) => out.replace_frame(start, end, &[]),
            None => Ok(()),
        }
    }

    fn error(&self, limit: Limit) -> PgError {
        PgError::result_quota_exceeded(limit.key(), &limit.value(&self.counter.quotas), &self.role)
    }
}

impl Session {
    /// Applies the role's result quotas to one completed frame; `true` when the relay handles the
    /// frame as usual afterwards. A limit reached is noted in `stopped`.
    pub(super) fn quota_frame(
        &mut self,
        r: &mut Relay,
        (tag, start, end): (u8, u64, u64),
        stopped: &mut Option<Limit>,
    ) -> Result<bool, OutboxError> {
        let Some(q) = r.quota.as_mut() else {
            return Ok(true);
        };
        let out = &mut r.bufs.outbox;
        // A denial marker's error dropped or replaced still takes its denial off the queue.
        let marker = tag == b'E' && self.interceptor.is_marker_error(out.frame_bytes(start, end)?);
        let step = q.on_frame(out, tag, start, end)?;
        let mask = r.mask.as_mut();
        let keep = match step {
            Step::Keep { ended } => {
                if let Some((returned, completed)) = ended {
                    let (returned, completed) = with_mask(mask, returned, completed);
                    r.sync.returned(returned, completed);
                }
                return Ok(true);
            }
            Step::Dropped => false,
            Step::Stopped(limit) => {
                *stopped = Some(limit);
                false
            }
            Step::Answered(returned, sqlstate) => {
                r.sync.returned(with_mask(mask, returned, false).0, false);
                r.sync.error(Some(sqlstate.to_owned()));
                false
            }
            Step::AnsweredBefore(returned, sqlstate) => {
                r.sync.returned(with_mask(mask, returned, false).0, false);
                r.sync.error(Some(sqlstate.to_owned()));
                true
            }
        };
        if marker {
            self.interceptor.take_denial();
        }
        Ok(keep)
    }

    /// After a read's frames went through [`Session::quota_frame`]: decides the frame still
    /// arriving, and when a limit was reached counts it and cancels the running query (bounded,
    /// through the target's cancel slots) before anything else is relayed, so the cancel cannot
    /// reach a later statement of this client.
    pub(super) async fn quota_after_read(
        &mut self,
        r: &mut Relay,
        mut stopped: Option<Limit>,
    ) -> Result<(), OutboxError> {
        let Some(q) = r.quota.as_mut() else {
            return Ok(());
        };
        stopped = q.after_read(&mut r.bufs.outbox)?.or(stopped);
        let Some(limit) = stopped else {
            return Ok(());
        };
        self.ctx
            .proxy
            .metrics
            .quota_stops_total
            .with_label_values(&[limit.key()])
            .inc();
        tracing::info!(limit = limit.key(), role = %self.grant.role, "result quota reached; stopping the statement");
        if !q.running() {
            return Ok(());
        }
        let slots = self.ctx.proxy.cancel_limits.for_target(&self.grant.target);
        let key = &self.upstream_cancel;
        let sent = tokio::time::timeout(UPSTREAM_STOP_BOUND, async {
            let _slot = slots.acquire().await.map_err(std::io::Error::other)?;
            key.send().await
        })
        .await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not cancel the query a quota stopped"),
            Err(_) => tracing::warn!("timed out cancelling the query a quota stopped"),
        }
        Ok(())
    }
}

/// What a statement whose result ends returned, for a role with masks (`mask`): rows and bytes as
/// the masking sent them (rows it refused are not counted; bytes are the masked frames') and the
/// masked columns of their description, with the quota's stop. `completed` (the statement's
/// CommandComplete reaches the client) is false when the masking refuses the result's rows: its
/// CommandComplete is dropped and the statement ends in the masking's error.
fn with_mask(mask: Option<&mut ResultMask>, returned: Returned, completed: bool) -> (Returned, bool) {
    let Some(m) = mask else {
        return (returned, completed);
    };
    let completed = completed && !m.failing();
    let sent = m.take_returned();
    (
        Returned {
            quota_stop: returned.quota_stop,
            ..sent
        },
        completed,
    )
}

#[cfg(test)]
#[path = "quota_tests.rs"]
mod tests;
