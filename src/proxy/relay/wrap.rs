//! Masked roles' simple Queries run in a transaction whose end timebox decides (issue 15, s9).
//!
//! Why: timebox refuses a masked role's result ([`super::mask`]) once PostgreSQL has begun it —
//! the second catalog check runs at the result's first frame, after the statement took its locks
//! — but the statement runs on to its end. Code the statement runs that timebox did not judge (a
//! view replaced while the statement waited for its lock, calling a function) can leave what it
//! read behind: a setting (`set_config(…, false)`), a notification, a row written. Outside a
//! transaction block, PostgreSQL commits a Query's implicit transaction before its ReadyForQuery,
//! so nothing the relay does after the refusal could undo it (the s8 open leak).
//!
//! How, for roles with masks only (other sessions have no [`TxWrap`]; their frames go upstream
//! as before, byte for byte):
//! - **Outside a transaction block** a Query of statements that may run in one
//!   ([`wrappable`]) is sent after timebox's own `BEGIN`. At its ReadyForQuery timebox sends
//!   `COMMIT` when the result was not refused and no error ended it, `ROLLBACK` otherwise; the
//!   client sees its Query's answers and one ReadyForQuery `I`, as without the wrap (a `COMMIT`
//!   that fails sends its error, as an implicit commit would).
//! - **Inside the client's block** (or a block the Query string itself opens) a refused result
//!   fails the block upstream (as any error fails a block: `25P02` for what follows, undone by
//!   the client's `ROLLBACK`), and the client's ReadyForQuery says `E`.
//! - After a result refused because the catalog changed while it ran (code timebox did not judge
//!   may have run), the session's advisory locks are released and its prepared statements
//!   deallocated (cursors closed): they are not transactional, and `pg_locks` and
//!   `pg_prepared_statements` show them; such code may also have replaced a prepared statement
//!   timebox judged. If one of these fails, the session ends.
//!
//! - A string timebox could not end the transaction of is refused before it runs
//!   ([`string_refusal`]); a change-refusal where the string ended or failed its own transaction,
//!   or one in an extended-protocol batch (`super::pipeline`), ends the session instead.
//!
//! What it does not undo: effects outside any transaction — statistics counters, sequence values,
//! the time taken — and what such code shows other sessions while it runs (`pg_stat_activity`):
//! closing that needs the check atomic with the statement (the relations it names locked first).
//!
//! The client's next frames wait (like [`super::pipeline`]'s) until the wrapped Query is over
//! (during a wrapped `COPY … FROM STDIN`, only its data goes), and a Query waits for the answers
//! to what was sent before it, so timebox knows whether a block is open when it decides. Pure:
//! fed frame tags and statuses; the relay does the I/O.

use bytes::BytesMut;

use super::outbox::OutboxError;
use super::Relay;
use crate::policy::classify::StatementInfo;
use crate::proxy::session::Session;
use crate::proxy::wire::PgError;

/// Releases the session's advisory locks (after code timebox did not judge ran).
const UNLOCK: &str = "SELECT pg_catalog.pg_advisory_unlock_all()";

/// Drops every prepared statement of the session, and closes its cursors (`WITH HOLD` ones are
/// all that is left after a rollback): code timebox did not judge may have prepared or replaced
/// one (`EXECUTE format('PREPARE …')`, s9 attack), which timebox's records would not show.
const DEALLOCATE: &str = "DEALLOCATE ALL";
const CLOSE: &str = "CLOSE ALL";

/// Not SQL: the Query fails with a syntax error before anything runs, which fails an open block.
const FAIL_BLOCK: &str = "timebox_refused_a_result_in_this_transaction_block";

fn query(sql: &str) -> BytesMut {
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::query(sql, &mut out).expect("no NUL in timebox's own SQL");
    out
}

/// Whether every statement of a Query string may run inside a transaction block timebox opens,
/// with the same effect as alone: queries, DML, settings, cursors of a held kind, prepared
/// statements. Transaction control, statements PostgreSQL refuses in a block (`VACUUM`,
/// `CREATE DATABASE`, `DISCARD ALL`, …), statements that need the client's own block (`LOCK`,
/// a `DECLARE` without `HOLD`) and the rest are not wrapped. An empty string runs nothing.
pub(crate) fn wrappable(statements: &[StatementInfo]) -> bool {
    let several = statements.len() > 1;
    !statements.is_empty() && statements.iter().all(|s| wrappable_kind(s, several))
}

/// Whether a statement runs alike alone and in timebox's block (`several`: among others in a
/// string, where PostgreSQL runs it in the string's implicit block).
fn wrappable_kind(s: &StatementInfo, several: bool) -> bool {
    match s.kind.as_str() {
        // Alone outside a block PostgreSQL refuses these; in a string they run in its implicit
        // block, as in timebox's.
        "DECLARE CURSOR" => s.declare_hold || several,
        "LOCK" => several,
        kind => WRAPPABLE_KINDS.contains(&kind),
    }
}

/// Why a masked role's Query string of several statements is refused, if it is (s9). Everything a
/// string runs must end up in a transaction timebox can still end after a refused result:
/// - a `COMMIT` (or `END`, `PREPARE TRANSACTION`) in it would make a refused statement's effects
///   durable before timebox could act;
/// - other transaction control may only open the string (`BEGIN`) or close it (`ROLLBACK`): a
///   `ROLLBACK`, `SAVEPOINT` or `RELEASE` in its middle leaves the statements after it outside
///   the block (each commits on its own, s9 attack);
/// - a statement timebox does not run in its own block (`DISCARD`, `SET TRANSACTION`, DDL
///   PostgreSQL refuses in a block, …) must come alone, so the string is never left unwrapped;
/// - `search_path` may change only in the string's last statement (s10): timebox's lock block
///   ([`super::lock_prelude`]) resolves the names the string reads before it runs, with the path
///   as it is then.
pub(crate) fn string_refusal(statements: &[StatementInfo]) -> Option<(String, &'static str)> {
    if statements.len() < 2 {
        return None;
    }
    let last = statements.len() - 1;
    let mut main = false;
    for (i, s) in statements.iter().enumerate() {
        let kind = s.kind.as_str();
        let path = s
            .sets
            .iter()
            .any(|c| matches!(c.name.as_str(), "search_path" | "all"));
        if path && i != last {
            return Some((
                "for roles with masks, a change of search_path must be the last statement of a Query string (timebox locks what the string reads, by name, before it runs)".to_owned(),
                "Send SET search_path as a Query of its own, before the statements.",
            ));
        }
        if COMMIT_KINDS.contains(&kind) {
            return Some((
                format!("for roles with masks, {kind} must be a Query of its own (in a string it would make durable what a statement whose result timebox refuses did)"),
                "Send COMMIT as a statement of its own, or end the string with ROLLBACK.",
            ));
        }
        if TRANSACTION_KINDS.contains(&kind) {
            let opens = i == 0 && matches!(kind, "BEGIN" | "START TRANSACTION");
            let closes = i == last && kind == "ROLLBACK";
            if !(opens || closes) {
                return Some((
                    format!("for roles with masks, a Query string may open with BEGIN and end with ROLLBACK, but {kind} must be a Query of its own"),
                    "Send the transaction control as statements of their own.",
                ));
            }
        } else if !wrappable_kind(s, true) {
            return Some((
                format!("for roles with masks, {kind} must be a Query of its own (timebox cannot run it in the transaction it ends when a result is refused)"),
                "Send it alone, without other statements in the string.",
            ));
        }
        if let Some(refusal) = second_statement_refusal(kind, i, &mut main) {
            return Some(refusal);
        }
    }
    None
}

/// The one statement of a masked string that reads or runs (s10 fifth attack): timebox's lock
/// block confirms the catalog once, before the string; a statement parsed after another ran — a
/// `pg_sleep`, a lock wait — could use a function, operator or type committed meanwhile. Before it
/// may come `BEGIN` and settings, after it only what names no catalog object (`FETCH`, `MOVE`,
/// `CLOSE`, `SHOW`, a trailing `ROLLBACK`). `main`: the statement was seen.
fn second_statement_refusal(kind: &str, i: usize, main: &mut bool) -> Option<(String, &'static str)> {
    let before = (i == 0 && matches!(kind, "BEGIN" | "START TRANSACTION")) || matches!(kind, "SET" | "RESET");
    if !*main {
        *main = !before;
        return None;
    }
    if matches!(kind, "FETCH" | "MOVE" | "CLOSE" | "SHOW" | "ROLLBACK") {
        return None;
    }
    Some((
        format!("for roles with masks, a Query string holds one statement that reads or runs (with BEGIN or SET before it, FETCH, MOVE, CLOSE, SHOW or ROLLBACK after it), and {kind} would be a second: timebox confirms the target's catalog right before that statement runs"),
        "Send each statement as a Query of its own (psql does).",
    ))
}

/// Transaction control that makes what ran before it durable (`END` is `COMMIT`; an unknown
/// transaction statement counts).
const COMMIT_KINDS: &[&str] = &["COMMIT", "PREPARE TRANSACTION", "COMMIT PREPARED", "TRANSACTION"];

/// The other transaction control.
const TRANSACTION_KINDS: &[&str] = &[
    "BEGIN",
    "START TRANSACTION",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "ROLLBACK TO SAVEPOINT",
    "ROLLBACK PREPARED",
];

/// Statement kinds ([`StatementInfo::kind`]) that run alike alone and in a block.
const WRAPPABLE_KINDS: &[&str] = &[
    "SELECT",
    "SELECT INTO",
    "VALUES",
    "INSERT",
    "UPDATE",
    "DELETE",
    "MERGE",
    "SET",
    "RESET",
    "SHOW",
    "EXPLAIN",
    "EXPLAIN ANALYZE",
    "COPY",
    "PREPARE",
    "EXECUTE",
    "DEALLOCATE",
    "FETCH",
    "MOVE",
    "CLOSE",
    "LISTEN",
    "UNLISTEN",
    "NOTIFY",
    "CREATE TABLE AS",
    "CREATE MATERIALIZED VIEW",
    "REFRESH MATERIALIZED VIEW",
];

/// How a masked role's Query is sent, decided when it is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// In a block timebox opens: `BEGIN` goes first (`super::lock_prelude::prelude`), with the lock block
    /// ([`super::lock_prelude`]) when the Query reads relations.
    Own,
    /// In the client's block, after the lock block; `begin_warning`: the block is the one the
    /// Query's own leading `BEGIN` opens, sent ahead of the lock block (its copy in the Query then
    /// warns `25001`, which is timebox's).
    Locked { begin_warning: bool },
    /// As it is; a refused result fails the block open at its end, if any.
    Guarded,
}

/// What the client's Query is answered with when timebox's prelude failed (the Query, pipelined
/// behind it in a failed transaction, ran nothing: its `25P02` is replaced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Substitute {
    /// The catalog changed while the locks were awaited (s10): timebox's refusal.
    Changed,
    /// The prelude's own error (a relation the session may not lock, a lock or statement
    /// timeout, a cancel): it is the statement's.
    Error(BytesMut),
}

/// What a refused result means for the transaction it ran in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    No,
    /// Refused for what timebox knew before the statement ran.
    Judged,
    /// Refused because the catalog changed while it ran: code timebox did not judge may have run.
    Changed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// No Query of the session is wrapped.
    #[default]
    Off,
    /// timebox's prelude (`BEGIN`, the lock block) answers first (CommandComplete,
    /// ReadyForQuery); `own`: in timebox's block.
    Opening { own: bool },
    /// The client's Query runs (`own`: in timebox's block).
    Running { own: bool },
    /// timebox's closing Queries were sent: `left` ReadyForQuery frames of theirs are still to
    /// come, the last of which the client gets; `commit`: it is a `COMMIT`, whose error (and
    /// settings and notifications) are the client's; `fails_last`: the last one fails the
    /// client's block (its error is expected); `failed`: one of the others failed (the session
    /// then ends: what it was to undo may still be there).
    Closing {
        left: u8,
        commit: bool,
        fails_last: bool,
        failed: bool,
    },
}

/// What the relay does with one backend frame, as far as the wrap goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WrapStep {
    /// Handled as usual.
    Pass,
    /// An answer to timebox's own Queries: not for the client, nor seen by the rest of the relay.
    Drop,
    /// The client's Query's ReadyForQuery: dropped, and these Queries go upstream (their last
    /// ReadyForQuery takes its place).
    Close(BytesMut),
    /// The ReadyForQuery the client gets: handled as usual, and the client's frames go on.
    Done,
    /// The client's Query's error, after timebox's prelude failed: replaced by this.
    Substitute(Substitute),
    /// A result was refused for a catalog change, and the transaction it ran in has ended (the
    /// string rolled it back or committed it) or failed (advisory locks cannot be released in
    /// it): the session ends, and what the statement left in it goes with its upstream.
    End,
}

/// One masked session's wrap of its Queries.
#[derive(Debug, Default)]
pub(crate) struct TxWrap {
    state: State,
    /// A Query waits for the answers to what was sent before it.
    waiting_idle: bool,
    /// The wrapped Query is a `COPY … FROM STDIN`: the server waits for the client's data, so the
    /// client's frames go on (a Query after them waits for the answers before it).
    copy_in: bool,
    /// timebox's prelude failed: the client's Query's error is replaced by this.
    substitute: Option<Substitute>,
    /// The client's Query opens with a `BEGIN` timebox sent ahead: its warning is timebox's.
    begin_warning: bool,
}

impl TxWrap {
    /// True while the client's frames wait (a wrapped Query is not over, or a Query waits for
    /// the answers before it).
    pub(crate) fn holding(&self) -> bool {
        self.waiting_idle || (self.state != State::Off && !self.copy_in)
    }

    /// Whether the client frame of type `tag` (`None`: none read yet) may be processed now: while
    /// the server waits for a wrapped COPY's data, only that data (CopyData, CopyDone, CopyFail)
    /// goes; anything else (a Flush or Sync too, which PostgreSQL would ignore) waits for the Query's
    /// end (s9 fourth attack: an extended batch sent during the COPY ran inside timebox's
    /// transaction and was committed with it, its answers dropped as timebox's own).
    pub(crate) fn admits(&self, tag: Option<u8>) -> bool {
        if self.holding() {
            return false;
        }
        !self.copy_in || matches!(tag, Some(b'd' | b'c' | b'f'))
    }

    /// A client frame of type `tag` was forwarded: the COPY's data ends at CopyDone or CopyFail.
    pub(crate) fn client_forwarded(&mut self, tag: u8) {
        if self.copy_in && matches!(tag, b'c' | b'f') {
            self.copy_in = false;
        }
    }

    /// A Query is next and frames sent before it are not answered yet: it waits.
    pub(crate) fn wait_for_idle(&mut self) {
        self.waiting_idle = true;
    }

    /// Everything sent was answered: a waiting Query may go (`true` if one waited).
    pub(crate) fn idle(&mut self) -> bool {
        std::mem::take(&mut self.waiting_idle)
    }

    /// A client Query was forwarded in `mode` (after timebox's `BEGIN` for [`Mode::Own`]).
    pub(crate) fn forwarded(&mut self, mode: Mode) {
        self.substitute = None;
        self.begin_warning = matches!(mode, Mode::Locked { begin_warning: true });
        self.state = match mode {
            Mode::Own => State::Opening { own: true },
            Mode::Locked { .. } => State::Opening { own: false },
            Mode::Guarded => State::Running { own: false },
        };
    }

    /// Whether timebox's prelude is answering (its ErrorResponse, if any, is for
    /// [`TxWrap::prelude_failed`]).
    pub(crate) fn opening(&self) -> bool {
        matches!(self.state, State::Opening { .. })
    }

    /// Whether a NoticeResponse of the running Query may be the warning of its leading `BEGIN`,
    /// which timebox sent ahead ([`Mode::Locked`]); the first such warning is dropped.
    pub(crate) fn expects_begin_warning(&self) -> bool {
        self.begin_warning && matches!(self.state, State::Running { .. })
    }

    /// The warning of the Query's leading `BEGIN` came (and is dropped).
    pub(crate) fn begin_warned(&mut self) {
        self.begin_warning = false;
    }

    /// timebox's prelude failed (the first error counts): the client's Query runs nothing.
    pub(crate) fn prelude_failed(&mut self, substitute: Substitute) {
        if self.opening() && self.substitute.is_none() {
            self.substitute = Some(substitute);
        }
    }

    /// One whole backend frame of type `tag` (`status`: a ReadyForQuery's transaction status),
    /// before the batch hold, quotas and masks see it; `refused`: whether a result of the
    /// running Query was refused.
    pub(crate) fn on_backend(&mut self, tag: u8, status: u8, refused: Refused) -> WrapStep {
        match self.state {
            State::Off => WrapStep::Pass,
            // Notifications of other sessions' commits, delivered while the session is idle, are
            // the client's whatever timebox's own Query is.
            State::Opening { .. } | State::Closing { .. } if tag == b'A' => WrapStep::Pass,
            State::Opening { own } => {
                if tag == b'Z' {
                    self.state = State::Running { own };
                }
                // BEGIN's and the lock block's CommandComplete, a warning, their error (kept by
                // `prelude_failed`) are timebox's.
                WrapStep::Drop
            }
            State::Running { own } if tag == b'Z' => {
                self.copy_in = false;
                self.substitute = None;
                self.begin_warning = false;
                self.close(own, status, refused)
            }
            State::Running { .. } if tag == b'E' && self.substitute.is_some() => {
                WrapStep::Substitute(self.substitute.take().expect("checked"))
            }
            State::Running { .. } => {
                // CopyInResponse, CopyBothResponse: the server waits for the client's data.
                if matches!(tag, b'G' | b'W') {
                    self.copy_in = true;
                }
                WrapStep::Pass
            }
            State::Closing {
                left,
                commit,
                fails_last,
                failed,
            } => match tag {
                b'Z' if left <= 1 => {
                    self.state = State::Off;
                    if failed {
                        WrapStep::End
                    } else {
                        WrapStep::Done
                    }
                }
                b'Z' => {
                    self.state = State::Closing {
                        left: left - 1,
                        commit,
                        fails_last,
                        failed,
                    };
                    WrapStep::Drop
                }
                // A COMMIT's error, settings it reports (seen by the relay's lexing watch) and
                // notifications delivered at it are the client's.
                b'E' | b'N' | b'S' if commit => WrapStep::Pass,
                // Not an answer to timebox's Queries (extended-protocol or COPY frames): the
                // relay lost track of what the server runs (s9 fourth attack); or a release
                // timebox sent failed (s9 attack: EXECUTE on it revoked). The session ends.
                b'1' | b'2' | b'3' | b'n' | b't' | b's' | b'I' | b'G' | b'H' | b'W' | b'c' | b'd' => {
                    self.closing_failed(left, commit, fails_last)
                }
                b'E' if !(left == 1 && fails_last) => self.closing_failed(left, commit, fails_last),
                _ => WrapStep::Drop,
            },
        }
    }

    /// A frame while closing that means what timebox meant to undo may still be there.
    fn closing_failed(&mut self, left: u8, commit: bool, fails_last: bool) -> WrapStep {
        self.state = State::Closing {
            left,
            commit,
            fails_last,
            failed: true,
        };
        WrapStep::Drop
    }

    /// The client's Query ended with ReadyForQuery `status`: how its transaction ends.
    fn close(&mut self, own: bool, status: u8, refused: Refused) -> WrapStep {
        let changed = refused == Refused::Changed;
        let sent: Vec<&str> = match (own, status, refused) {
            (true, b'T', Refused::No) => vec!["COMMIT"],
            // Released once the block is gone (a failed block runs nothing).
            (true, b'T' | b'E', _) if changed => vec!["ROLLBACK", UNLOCK, DEALLOCATE, CLOSE],
            (true, b'T' | b'E', _) => vec!["ROLLBACK"],
            (false, b'T', Refused::Changed) => vec![UNLOCK, DEALLOCATE, FAIL_BLOCK],
            (false, b'T', Refused::Judged) => vec![FAIL_BLOCK],
            (false, _, Refused::Changed) => {
                self.state = State::Off;
                return WrapStep::End;
            }
            // Nothing to end: no block is open, the block already failed, or nothing was refused.
            _ => {
                self.state = State::Off;
                return WrapStep::Done;
            }
        };
        let mut out = BytesMut::new();
        for sql in &sent {
            out.extend_from_slice(&query(sql));
        }
        self.state = State::Closing {
            left: sent.len() as u8,
            commit: sent == ["COMMIT"],
            fails_last: sent.last() == Some(&FAIL_BLOCK),
            failed: false,
        };
        WrapStep::Close(out)
    }
}

impl Session {
    /// The wrap's view of one completed backend frame (roles with masks); `false` when the frame
    /// was dropped and the relay must not handle it further.
    pub(super) fn wrap_frame(
        &mut self,
        r: &mut Relay,
        (tag, start, end): (u8, u64, u64),
    ) -> Result<bool, OutboxError> {
        let Some(wrap) = r.wrap.as_mut() else {
            return Ok(true);
        };
        let status = if tag == b'Z' {
            r.bufs
                .outbox
                .frame_bytes(start, end)?
                .get(5)
                .copied()
                .unwrap_or(b'I')
        } else {
            0
        };
        if tag == b'N'
            && wrap.expects_begin_warning()
            && super::lock_prelude::begin_warning(r.bufs.outbox.frame_bytes(start, end)?)
        {
            wrap.begin_warned();
            r.bufs.outbox.replace_frame(start, end, &[])?;
            if let Some(m) = r.mask.as_mut() {
                m.on_skipped(b'N');
                self.interceptor.on_backend_outcomes(m.outcomes.drain(..));
            }
            return Ok(false);
        }
        if tag == b'E' && wrap.opening() {
            let frame = r.bufs.outbox.frame_bytes(start, end)?;
            wrap.prelude_failed(if super::lock_prelude::changed_marker(frame) {
                Substitute::Changed
            } else {
                // Masked roles' errors go without DETAIL (see `backend`).
                Substitute::Error(super::mask::without_detail(frame).unwrap_or_else(|| BytesMut::from(frame)))
            });
        }
        let refused = r.mask.as_ref().map_or(Refused::No, |m| m.refused_since_ready());
        Ok(match wrap.on_backend(tag, status, refused) {
            WrapStep::Pass => {
                if matches!(tag, b'G' | b'W') && !wrap.holding() {
                    // A COPY FROM STDIN began: the client's data, already read, goes on.
                    r.resume_client = true;
                }
                true
            }
            WrapStep::Drop => {
                r.bufs.outbox.replace_frame(start, end, &[])?;
                false
            }
            WrapStep::Close(sent) => {
                if refused != Refused::No {
                    tracing::debug!(?refused, "a refused result: its transaction is ended upstream");
                }
                r.bufs.outbox.replace_frame(start, end, &[])?;
                r.bufs.to_upstream.extend_from_slice(&sent);
                false
            }
            WrapStep::Done => {
                r.resume_client = true;
                true
            }
            WrapStep::Substitute(substitute) => {
                // The client's Query ran nothing (its transaction had failed): its `25P02` gives
                // way to what failed ahead of it. Seen by the outcome tracker and the masks as
                // the Query's error.
                let bytes = match substitute {
                    Substitute::Changed => {
                        tracing::info!("the catalog changed while a masked statement's relations were locked; it did not run");
                        self.ctx.proxy.masking_metrics.masking_refusals_total.inc();
                        match r.mask.as_ref() {
                            Some(m) => m.locked_changed_error().to_bytes(),
                            None => PgError::masked_effects_kept().to_bytes(),
                        }
                    }
                    Substitute::Error(bytes) => bytes,
                };
                r.sync.error(r.held.error_sqlstate(&bytes));
                r.bufs.outbox.replace_frame(start, end, &bytes)?;
                if let Some(m) = r.mask.as_mut() {
                    m.on_skipped(b'E');
                    self.interceptor.on_backend_outcomes(m.outcomes.drain(..));
                }
                false
            }
            WrapStep::End => {
                tracing::info!("a masked result refused for a catalog change outside timebox's transaction: ending the session");
                r.bufs.outbox.replace_frame(start, end, &[])?;
                self.sever(
                    r,
                    false,
                    super::EndReason::MaskedEffects,
                    PgError::masked_effects_kept(),
                );
                false
            }
        })
    }
}

#[cfg(test)]
#[path = "wrap_tests.rs"]
mod tests;
