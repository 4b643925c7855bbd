//! Column masking on the backend stream (issue 15), for sessions whose role has `mask`: each
//! RowDescription is judged column by column against the target's catalog snapshot
//! ([`MaskSnapshot::column`]) and rewritten ([`crate::masking::rewrite_row_description`]), and
//! each DataRow of a result with masked columns is rewritten before any byte of it reaches the
//! client. Sessions of other roles have no [`ResultMask`]: their frames are not looked at.
//!
//! Which description a DataRow follows: in a simple Query, the RowDescription before it; in the
//! extended protocol, its portal's (from Describe of the portal, or Bind of a described
//! statement, with the Bind's result formats). The frontend messages sent are queued
//! ([`ResultMask::on_frontend`]) and matched to the backend's answers in order (an ErrorResponse
//! skips to Sync, as PostgreSQL does). A DataRow whose columns cannot be established — no
//! description seen, a relation newer than the snapshot, a view over a masked table, a computed
//! column of a masked table — is never forwarded: the result's rows are dropped and the client
//! gets ERROR 42501 in their place (and a fresh snapshot is asked for). For the statement's
//! outcome record it counts the rows and bytes each result sent and names the masked columns of
//! its description ([`ResultMask::take_returned`]). Pure apart from the
//! snapshot it reads; must never let a row of a masked column out unmasked.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::BytesMut;

use super::outbox::{ClientOutbox, OutboxError};
use super::Relay;
use crate::audit::event::{MaskedColumnReturned, Returned};
use crate::masking::catalog::{ColumnVerdict, MaskSnapshot};
use crate::masking::{rewrite_data_row_into, rewrite_row_description, MaskKey, MaskMethod, MaskedColumn};
use crate::proxy::session::Session;
use crate::proxy::target_catalog::{refresh_in_background, MaskEntry};
use crate::proxy::wire::PgError;

/// A frontend message whose answer decides a later DataRow's columns.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// A simple Query; `true` when its text may close, declare or prepare a cursor or statement
    /// (every described layout is then stale once it completes); the snapshot it was checked
    /// against.
    Query(bool, CheckedWith),
    /// A statement's name, and whether its result shape is decided when it runs.
    Parse(String, bool),
    Bind {
        portal: String,
        statement: String,
        formats: Vec<i16>,
        checked: CheckedWith,
    },
    Describe {
        portal: bool,
        name: String,
    },
    Execute(String),
    Close {
        portal: bool,
        name: String,
    },
    /// timebox's lock block ahead of a Bind (s10): the answers still to come.
    Lock(u8),
    Sync,
}

/// How the rows of one result are masked.
#[derive(Debug, Clone, PartialEq)]
enum Layout {
    Plain,
    /// Each column's mask (`None`: plain), and the masked columns' names for the audit record.
    Masked(Arc<Vec<Option<MaskedColumn>>>, Arc<Vec<MaskedColumnReturned>>),
    /// Rows are not forwarded (why).
    Fail(&'static str),
    /// A FETCH or EXECUTE in the extended protocol: its columns are decided when it runs (the
    /// cursor or prepared statement may be closed and declared again after any Describe), so no
    /// description is trusted and its rows are not forwarded.
    Runtime,
}

impl Layout {
    /// A statement's layout with a Bind's result format codes.
    fn with_formats(&self, formats: &[i16]) -> Layout {
        let Layout::Masked(columns, names) = self else {
            return self.clone();
        };
        let columns = columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                c.map(|c| MaskedColumn {
                    format: match formats.len() {
                        0 => 0,
                        1 => formats[0],
                        _ => formats.get(i).copied().unwrap_or(0),
                    },
                    ..c
                })
            })
            .collect();
        Layout::Masked(Arc::new(columns), names.clone())
    }
}

/// What the relay does with one backend frame.
#[derive(Debug, PartialEq)]
pub(crate) enum MaskStep {
    Keep,
    /// Send the bytes of [`ResultMask::replacement`] instead (a rewritten RowDescription or
    /// DataRow).
    Replace,
    /// Part of a result whose rows are not forwarded.
    Drop,
    /// The first row of such a result: send this error instead.
    Fail(PgError),
}

/// The rewritten-frame buffer keeps its allocation up to this capacity.
const REPLACEMENT_KEEP: usize = 1024 * 1024;

const NO_DESCRIPTION: &str = "no RowDescription timebox saw";
const NO_DATA: &str = "a Describe answered with NoData (no rows expected)";
const RECATALOGED: &str =
    "a description from before timebox read the target's catalog again (describe it again)";
const STALE: &str =
    "a description from before a CLOSE, DECLARE, PREPARE, DEALLOCATE or DISCARD (describe it again)";

/// One session's masking state.
pub(crate) struct ResultMask {
    entry: Arc<MaskEntry>,
    key: MaskKey,
    role: String,
    pending: VecDeque<Expect>,
    statements: HashMap<String, Layout>,
    portals: HashMap<String, Layout>,
    /// The snapshot each portal's Bind was checked against (an Execute's second checks compare
    /// with it).
    portal_checked: HashMap<String, CheckedWith>,
    /// Statements (and the portals bound from them) whose text may close, declare or prepare a
    /// cursor or statement: once one runs, every described layout is stale.
    reshaping_statements: HashSet<String>,
    reshaping_portals: HashSet<String>,
    /// The simple Query's current result.
    current: Option<Layout>,
    /// Rows of the current result are being dropped (the client has the error).
    failing: bool,
    /// The snapshot the stored layouts were judged with: when a Bind or RowDescription finds
    /// another one current, they are stale (a view may have been replaced since).
    judged_with: Option<Arc<MaskSnapshot>>,
    /// The second catalog check of the result about to be judged found the snapshot changed
    /// since the statement was checked, or could not confirm it (why): its rows fail (s7, F4).
    rechecked: Option<Rechecked>,
    /// The result in progress failed its second catalog check (why): the server's error ending
    /// it is replaced too (code the changed object runs may quote masked values in it).
    refuse_error: Option<&'static str>,
    /// What the backend answered to the session's Queries and Parses since last drained, for the
    /// interceptor's judgements (s8, [`BackendOutcome`]).
    pub(crate) outcomes: Vec<BackendOutcome>,
    /// The Query being answered failed (an ErrorResponse came before its ReadyForQuery).
    query_failed: bool,
    /// A result was refused since the last ReadyForQuery: settings reported and notifications
    /// until the next one are not passed on (the refused statement's code may have made them).
    refused_before_ready: bool,
    /// Such a result was refused by its second catalog check (code timebox did not judge may have
    /// run), since the last ReadyForQuery.
    changed_before_ready: bool,
    /// The client got timebox's error in place of a result since the last ReadyForQuery: the rest
    /// of a Query string is not passed on.
    error_before_ready: bool,
    /// A snapshot re-read is wanted (a column timebox could not establish).
    pub(crate) wants_refresh: bool,
    /// Masked values sent since last asked (for the metric).
    pub(crate) masked_values: u64,
    /// DataRows and DataRow/CopyData bytes (as sent, masked) of the statement in progress, for
    /// its audit record ([`ResultMask::take_returned`]).
    sent_rows: u64,
    sent_bytes: u64,
    /// The last frame rewritten ([`MaskStep::Replace`]): one buffer for every row, so a masked
    /// row costs no allocation.
    replacement: BytesMut,
}

impl ResultMask {
    pub(crate) fn new(entry: Arc<MaskEntry>, key: MaskKey, role: &str) -> Self {
        ResultMask {
            entry,
            key,
            role: role.to_owned(),
            pending: VecDeque::new(),
            statements: HashMap::new(),
            portals: HashMap::new(),
            portal_checked: HashMap::new(),
            reshaping_statements: HashSet::new(),
            reshaping_portals: HashSet::new(),
            current: None,
            failing: false,
            judged_with: None,
            rechecked: None,
            refuse_error: None,
            outcomes: Vec::new(),
            query_failed: false,
            refused_before_ready: false,
            changed_before_ready: false,
            error_before_ready: false,
            wants_refresh: false,
            masked_values: 0,
            sent_rows: 0,
            sent_bytes: 0,
            replacement: BytesMut::new(),
        }
    }

    /// The frame to send instead of the last one [`ResultMask::on_backend`] answered
    /// [`MaskStep::Replace`] for.
    pub(crate) fn replacement(&self) -> &[u8] {
        &self.replacement
    }

    pub(crate) fn entry(&self) -> Arc<MaskEntry> {
        self.entry.clone()
    }

    /// A whole frontend frame that was sent upstream (or replaced by a denial marker: the
    /// server's error then skips to Sync, which this queue does too).
    pub(crate) fn on_frontend(&mut self, tag: u8, frame: &[u8]) {
        let body = frame.get(5..).unwrap_or_default();
        let expect = match tag {
            b'Q' => {
                // The snapshot its statements were just checked against, which their results'
                // second check compares with (s7, F4).
                self.follow_snapshot(self.entry.current());
                let reshapes = reshapes_names(&cstr(body).map(|(q, _)| q).unwrap_or_default());
                Expect::Query(reshapes, CheckedWith(self.entry.current()))
            }
            b'F' => Expect::Query(false, CheckedWith(self.entry.current())),
            b'P' => match cstr(body) {
                Some((name, rest)) => {
                    let runtime = cstr(rest).is_none_or(|(sql, _)| shaped_at_run_time(&sql));
                    if cstr(rest).is_none_or(|(sql, _)| reshapes_names(&sql)) {
                        self.reshaping_statements.insert(name.clone());
                    } else {
                        self.reshaping_statements.remove(&name);
                    }
                    Expect::Parse(name, runtime)
                }
                None => Expect::Parse(String::new(), true),
            },
            b'B' => {
                self.follow_snapshot(self.entry.current());
                let Some((portal, rest)) = cstr(body) else { return };
                let Some((statement, rest)) = cstr(rest) else {
                    return;
                };
                Expect::Bind {
                    checked: CheckedWith(self.entry.current()),
                    portal,
                    statement,
                    // Malformed: the server refuses it; rows of an unknown layout fail anyway.
                    formats: result_formats(rest).unwrap_or_default(),
                }
            }
            b'D' | b'C' => {
                let portal = body.first() == Some(&b'P');
                let name = cstr(body.get(1..).unwrap_or_default())
                    .map(|(n, _)| n)
                    .unwrap_or_default();
                if tag == b'D' {
                    Expect::Describe { portal, name }
                } else {
                    Expect::Close { portal, name }
                }
            }
            b'E' => Expect::Execute(cstr(body).map(|(n, _)| n).unwrap_or_default()),
            b'S' => Expect::Sync,
            _ => return,
        };
        self.pending.push_back(expect);
    }

    /// Judges and rewrites a RowDescription.
    fn describe(&mut self, frame: &[u8]) -> (Option<BytesMut>, Layout) {
        let snapshot = self.entry.current();
        self.follow_snapshot(snapshot.clone());
        let unknown = std::cell::Cell::new(None);
        let masked = std::cell::RefCell::new(Vec::new());
        let rewritten = rewrite_row_description(frame, |table, attnum| {
            match column_verdict(snapshot.as_deref(), table, attnum) {
                ColumnVerdict::Plain => None,
                ColumnVerdict::Masked(m) => {
                    masked.borrow_mut().push((table, attnum, m));
                    Some(m)
                }
                ColumnVerdict::Unknown(why) => {
                    unknown.set(Some(why));
                    Some(MaskMethod::Redact)
                }
            }
        });
        if let Some(why) = unknown.get() {
            self.wants_refresh = true;
            let frame = rewritten.ok().flatten().map(|(f, _)| f);
            return (frame, Layout::Fail(why));
        }
        match rewritten {
            Ok(None) => (None, Layout::Plain),
            Ok(Some((f, columns))) => {
                let names = self.audited_names(masked.into_inner());
                (Some(f), Layout::Masked(Arc::new(columns), Arc::new(names)))
            }
            Err(_) => (None, Layout::Fail("a malformed RowDescription")),
        }
    }

    /// The audit record's names of a description's masked columns, sorted, each once: from the
    /// catalog read (a column read before its name is known is named by its OIDs).
    fn audited_names(&self, masked: Vec<(u32, i16, MaskMethod)>) -> Vec<MaskedColumnReturned> {
        let names = self.entry.names();
        let mut out: Vec<MaskedColumnReturned> = masked
            .into_iter()
            .map(|(table, attnum, method)| MaskedColumnReturned {
                column: names
                    .get(&(table, attnum))
                    .cloned()
                    .unwrap_or_else(|| format!("table {table} column {attnum}")),
                method: method.as_str().to_owned(),
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// A frame the relay forwards (`len` bytes as sent): DataRows and CopyData count for the
    /// statement's audit record.
    pub(crate) fn sent(&mut self, tag: u8, len: usize) {
        match tag {
            b'D' => {
                self.sent_rows += 1;
                self.sent_bytes += len as u64;
            }
            b'd' => self.sent_bytes += len as u64,
            _ => {}
        }
    }

    /// The result of the statement in progress is ending (its CommandComplete or ErrorResponse
    /// is next, or a quota stopped it): what it returned, with the masked columns of the
    /// description its rows follow; counting starts again.
    pub(crate) fn take_returned(&mut self) -> Returned {
        let layout = match self.pending.front() {
            Some(Expect::Execute(p)) => self.portals.get(p),
            _ => self.current.as_ref(),
        };
        let masked = match layout {
            Some(Layout::Masked(_, names)) if !names.is_empty() => Some(names.to_vec()),
            _ => None,
        };
        Returned {
            bytes: std::mem::take(&mut self.sent_bytes),
            masked,
            quota_stop: None,
            rows: std::mem::take(&mut self.sent_rows),
        }
    }

    /// Rows of the current result are being refused (its CommandComplete will be dropped).
    pub(crate) fn failing(&self) -> bool {
        self.failing
    }

    /// Layouts stored before the snapshot `current` was read are stale (s6: a view replaced
    /// outside timebox is seen by the new snapshot only).
    fn follow_snapshot(&mut self, current: Option<Arc<MaskSnapshot>>) {
        if let (Some(judged), Some(now)) = (&self.judged_with, &current) {
            if !same_catalog(Some(judged), Some(now)) {
                self.invalidate_all(RECATALOGED);
            }
        }
        if current.is_some() {
            self.judged_with = current;
        }
    }

    /// Stores a described layout, unless the statement or portal is shaped at run time (then no
    /// description is trusted).
    fn store(&mut self, portal: bool, name: String, layout: Layout) {
        let map = if portal {
            &mut self.portals
        } else {
            &mut self.statements
        };
        // A portal whose BindComplete failed its second check stays refused until bound again
        // (s8 second re-attack: a Describe of it afterwards was judged by the current copy).
        let kept = matches!(map.get(&name), Some(Layout::Runtime))
            || (portal
                && matches!(map.get(&name), Some(Layout::Fail(why)) if recheck::refused_for_a_change(why)));
        if !kept {
            map.insert(name, layout);
        }
    }

    /// SQL `CLOSE`/`DECLARE`/`PREPARE`/`DEALLOCATE`/`DISCARD` share names with protocol portals
    /// and statements: after one ran, no layout described before may be trusted (a cursor or
    /// statement of the same name may now return other columns). Rows then fail until described again.
    fn invalidate_all(&mut self, why: &'static str) {
        for layout in self.statements.values_mut().chain(self.portals.values_mut()) {
            if *layout != Layout::Runtime {
                *layout = Layout::Fail(why);
            }
        }
    }

    /// Pops the front expectation if `f` accepts it.
    fn pop_if(&mut self, f: impl Fn(&Expect) -> bool) -> Option<Expect> {
        if self.pending.front().is_some_and(f) {
            self.pending.pop_front()
        } else {
            None
        }
    }

    /// One whole backend frame the relay is about to forward.
    pub(crate) fn on_backend(&mut self, tag: u8, frame: &[u8]) -> MaskStep {
        // Only the frame right after the second check carries its verdict.
        let changed = self.changed_while_running();
        self.changed_before_ready |= changed.is_some();
        if self.error_before_ready && tag != b'Z' && matches!(self.pending.front(), Some(Expect::Query(..))) {
            // The client has the error that ended its Query string (as after any error in one);
            // PostgreSQL ran on, and nothing more of the string is the client's (s9).
            self.on_skipped(tag);
            return MaskStep::Drop;
        }
        let step = self.judge_backend(tag, frame, changed);
        if matches!(step, MaskStep::Fail(_)) || self.refuse_error.is_some() || self.failing {
            self.refused_before_ready = true;
        }
        self.error_before_ready |= matches!(step, MaskStep::Fail(_));
        if tag == b'Z' {
            self.refused_before_ready = false;
            self.changed_before_ready = false;
            self.error_before_ready = false;
        }
        step
    }

    /// Whether a result was refused since the last ReadyForQuery, and why (for `super::wrap`).
    pub(crate) fn refused_since_ready(&self) -> super::wrap::Refused {
        use super::wrap::Refused;
        if self.changed_before_ready {
            Refused::Changed
        } else if self.refused_before_ready || self.failing || self.refuse_error.is_some() {
            Refused::Judged
        } else {
            Refused::No
        }
    }

    fn judge_backend(&mut self, tag: u8, frame: &[u8], changed: Option<&'static str>) -> MaskStep {
        match tag {
            b'T' => {
                let (rewritten, layout) = self.describe(frame);
                // A notice before it may have carried the verdict (s8).
                let refused = changed.or(self.refuse_error.take());
                self.refuse_error = refused;
                self.place(refused.map_or(layout, Layout::Fail));
                let Some(rewritten) = rewritten else {
                    return MaskStep::Keep;
                };
                self.replacement.clear();
                self.replacement.extend_from_slice(&rewritten);
                MaskStep::Replace
            }
            b'D' => self.row(frame),
            _ => {
                // The server's own ErrorResponse still goes (it may answer a denial marker), unless
                // it ends a result that failed its second catalog check.
                let ended_failing = self.failing && matches!(tag, b'C' | b'I' | b's');
                let (failing, refused) = (self.failing, changed.or(self.refuse_error.take()));
                self.refuse_error = refused.filter(|_| !matches!(tag, b'C' | b'E' | b'I' | b's' | b'Z'));
                self.track(tag, frame.get(5).copied(), changed);
                match refused {
                    Some(why) if tag == b'E' && !failing => MaskStep::Fail(self.error(why)),
                    // A statement without rows ran on a changed catalog (s9): the client is told
                    // it failed (its transaction is ended upstream, see `wrap`).
                    Some(_) if tag == b'C' && changed.is_some() && !failing => {
                        MaskStep::Fail(self.changed_error())
                    }
                    // The client has timebox's error for this result already.
                    Some(_) if tag == b'E' => MaskStep::Drop,
                    // A notice of a refused result (code a replaced object runs may quote
                    // masked values in it; s8 re-attack).
                    Some(_) if tag == b'N' => MaskStep::Drop,
                    _ if tag == b'N' && failing => MaskStep::Drop,
                    // What a refused result's code set or sent (a setting reported, a
                    // notification; s8 second re-attack) is not passed on either.
                    _ if matches!(tag, b'S' | b'A')
                        && (refused.is_some() || failing || self.refused_before_ready) =>
                    {
                        MaskStep::Drop
                    }
                    _ if ended_failing => MaskStep::Drop,
                    _ => MaskStep::Keep,
                }
            }
        }
    }

    /// A frame the result quotas dropped or replaced: only its place in the protocol counts.
    pub(crate) fn on_skipped(&mut self, tag: u8) {
        match tag {
            b'T' => self.place(Layout::Fail(NO_DESCRIPTION)),
            b'D' => {}
            _ => self.track(tag, None, None),
        }
    }

    /// Where a RowDescription's layout belongs.
    fn place(&mut self, layout: Layout) {
        match self.pending.front() {
            Some(Expect::Describe { portal, name }) => {
                let (portal, name) = (*portal, name.clone());
                self.pending.pop_front();
                self.store(portal, name, layout);
            }
            _ => self.current = Some(layout),
        }
    }

    fn row(&mut self, frame: &[u8]) -> MaskStep {
        if self.failing {
            return MaskStep::Drop;
        }
        // The layout is borrowed, not cloned, and the row is rewritten into the one reused
        // buffer: a masked row costs no allocation.
        let layout = match self.pending.front() {
            Some(Expect::Execute(p)) => self.portals.get(p),
            _ => self.current.as_ref(),
        };
        let why = match layout {
            Some(Layout::Plain) => return MaskStep::Keep,
            Some(Layout::Masked(columns, _)) => {
                if self.replacement.capacity() > REPLACEMENT_KEEP {
                    // A huge row's buffer is not kept for the rest of the session.
                    self.replacement = BytesMut::new();
                }
                self.replacement.clear();
                match rewrite_data_row_into(frame, columns, &self.key, &mut self.replacement) {
                    Ok(()) => {
                        self.masked_values += columns.iter().filter(|c| c.is_some()).count() as u64;
                        return MaskStep::Replace;
                    }
                    Err(_) => Some("a malformed DataRow"),
                }
            }
            Some(Layout::Fail(why)) => Some(*why),
            None => Some(NO_DESCRIPTION),
            Some(Layout::Runtime) => None,
        };
        self.failing = true;
        MaskStep::Fail(match why {
            Some(why) => self.error(why),
            None => self.runtime_error(),
        })
    }

    /// The protocol bookkeeping of a frame that is not a RowDescription or DataRow.
    /// `changed`: a BindComplete's second catalog check failed its portal's rows (why).
    fn track(&mut self, tag: u8, status: Option<u8>, changed: Option<&'static str>) {
        match tag {
            b'1' => {
                if let Some(Expect::Parse(name, runtime)) = self.pop_if(|e| matches!(e, Expect::Parse(..))) {
                    self.outcomes.push(BackendOutcome::Parsed(name.clone()));
                    if runtime {
                        self.statements.insert(name, Layout::Runtime);
                    } else {
                        self.statements.remove(&name);
                    }
                }
            }
            b'2' => {
                if let Some(Expect::Bind {
                    portal,
                    statement,
                    formats,
                    checked,
                }) = self.pop_if(|e| matches!(e, Expect::Bind { .. }))
                {
                    let layout = match changed {
                        Some(why) => Layout::Fail(why),
                        None => self
                            .statements
                            .get(&statement)
                            .map_or(Layout::Fail(NO_DESCRIPTION), |l| l.with_formats(&formats)),
                    };
                    self.portal_checked.insert(portal.clone(), checked);
                    if self.reshaping_statements.contains(&statement) {
                        self.reshaping_portals.insert(portal.clone());
                    } else {
                        self.reshaping_portals.remove(&portal);
                    }
                    self.portals.insert(portal, layout);
                }
            }
            b'3' => {
                if let Some(Expect::Close { portal, name }) =
                    self.pop_if(|e| matches!(e, Expect::Close { .. }))
                {
                    if portal {
                        self.portals.remove(&name);
                    } else {
                        self.statements.remove(&name);
                    }
                }
            }
            b'n' => {
                if let Some(Expect::Describe { portal, name }) =
                    self.pop_if(|e| matches!(e, Expect::Describe { .. }))
                {
                    // No rows expected: any that come were not described (a FETCH of a cursor
                    // declared after the Describe).
                    self.store(portal, name, Layout::Fail(NO_DATA));
                }
            }
            b'C' | b'I' | b's' => {
                self.failing = false;
                // A portal suspended goes on at its next Execute: the same statement.
                if tag != b's' {
                    (self.sent_rows, self.sent_bytes) = (0, 0);
                }
                match self.pop_if(|e| matches!(e, Expect::Execute(_))) {
                    Some(Expect::Execute(portal)) if self.reshaping_portals.contains(&portal) => {
                        self.invalidate_all(STALE)
                    }
                    Some(_) => {}
                    None => self.current = None,
                }
            }
            b'E' => {
                self.failing = false;
                self.current = None;
                (self.sent_rows, self.sent_bytes) = (0, 0);
                if matches!(self.pending.front(), Some(Expect::Query(..))) {
                    self.query_failed = true;
                } else {
                    while self.pending.front().is_some_and(|e| *e != Expect::Sync) {
                        match self.pending.pop_front() {
                            Some(Expect::Parse(name, _)) => {
                                self.outcomes.push(BackendOutcome::ParseFailed(name))
                            }
                            // A Query sent into the failed batch: skipped, unanswered (s8 second
                            // re-attack: its changes were applied at the next Query's answer).
                            Some(Expect::Query(..)) => {
                                self.outcomes.push(BackendOutcome::Query { failed: true })
                            }
                            _ => {}
                        }
                    }
                }
            }
            b'Z' => {
                self.failing = false;
                self.current = None;
                (self.sent_rows, self.sent_bytes) = (0, 0);
                while let Some(e) = self.pending.pop_front() {
                    if matches!(e, Expect::Query(..)) {
                        let failed = std::mem::take(&mut self.query_failed);
                        self.outcomes.push(BackendOutcome::Query { failed });
                    }
                    if matches!(e, Expect::Query(true, _)) {
                        self.invalidate_all(STALE);
                    }
                    if matches!(e, Expect::Sync | Expect::Query(..)) {
                        break;
                    }
                }
                if let Some(status) = status {
                    self.outcomes.push(BackendOutcome::Ready(status));
                }
                // Outside a transaction block no portal survives.
                if status == Some(b'I') {
                    self.portals.clear();
                    self.portal_checked.clear();
                }
            }
            _ => {}
        }
    }
}

/// How a session's client outbox looks at backend frames: every frame is noted only for roles
/// with quotas or masks, and rows are held until whole only for roles with masks. Roles with
/// neither pay nothing per row: their rows go to the client undecoded, only the few frames the
/// relay reads (CommandComplete, ErrorResponse, ParameterStatus, ReadyForQuery) are noted.
pub(super) fn set_frame_hooks(out: &mut ClientOutbox, quota: bool, mask: bool) {
    out.track_all = quota || mask;
    out.hold_rows = mask;
}

impl Session {
    /// The session's result masking, if its role masks columns.
    pub(super) fn result_mask(&self) -> Option<ResultMask> {
        let m = self.interceptor.masking()?;
        Some(ResultMask::new(m.entry.clone(), m.key.clone(), &m.role))
    }

    /// Applies the role's masks to one completed backend frame; `true` when the relay handles
    /// the frame as usual afterwards. An error: the outbox does not hold the frame (the session
    /// ends; the frame is not sent).
    pub(super) fn mask_frame(
        &mut self,
        r: &mut Relay,
        (tag, start, end): (u8, u64, u64),
    ) -> Result<bool, OutboxError> {
        let Some(m) = r.mask.as_mut() else {
            return Ok(true);
        };
        let out = &mut r.bufs.outbox;
        let step = m.on_backend(tag, out.frame_bytes(start, end)?);
        self.interceptor.on_backend_outcomes(m.outcomes.drain(..));
        Ok(match step {
            MaskStep::Keep => {
                m.sent(tag, (end - start) as usize);
                true
            }
            MaskStep::Replace => {
                out.replace_frame(start, end, m.replacement())?;
                m.sent(tag, m.replacement().len());
                true
            }
            MaskStep::Drop => {
                out.replace_frame(start, end, &[])?;
                false
            }
            MaskStep::Fail(error) => {
                tracing::warn!(role = %self.grant.role, "rows whose masking timebox cannot establish were not sent");
                self.ctx.proxy.masking_metrics.masking_refusals_total.inc();
                out.replace_frame(start, end, &error.to_bytes())?;
                r.sync.error(Some(error.code.to_owned()));
                false
            }
        })
    }

    /// After a read's frames: counts masked values, and asks for a fresh snapshot when a column
    /// could not be established.
    pub(super) fn mask_after_read(&mut self, r: &mut Relay) {
        let Some(m) = r.mask.as_mut() else {
            return;
        };
        let metrics = &self.ctx.proxy.masking_metrics;
        metrics
            .masked_values_total
            .inc_by(std::mem::take(&mut m.masked_values));
        if std::mem::take(&mut m.wants_refresh) {
            refresh_in_background(m.entry(), self.ctx.proxy.clone());
        }
    }

    /// A DDL statement ran on the target (in this session, whatever its role): every masked
    /// role's snapshot of the target is read again.
    pub(super) fn ddl_ran(&self) {
        for entry in self.ctx.proxy.mask_catalogs.entries_of(&self.grant.target) {
            refresh_in_background(entry, self.ctx.proxy.clone());
        }
    }
}

#[path = "mask_frames.rs"]
mod frames;
pub(super) use frames::without_detail;
use frames::{cstr, reshapes_names, result_formats, shaped_at_run_time};

#[path = "mask_recheck.rs"]
mod recheck;

#[path = "mask_errors.rs"]
mod errors;

#[path = "mask_lock.rs"]
mod lock;
pub(crate) use recheck::confirming_result;
use recheck::{column_verdict, CheckedWith, Rechecked};

#[path = "mask_context.rs"]
mod context;
pub use context::{prefetch_masks, session_masking, MaskContext};

#[path = "mask_judged.rs"]
mod judged;
pub(crate) use judged::same_catalog;
pub use judged::{BackendOutcome, Change, MaskJudgements};

#[cfg(test)]
#[path = "mask_tests.rs"]
mod tests;
