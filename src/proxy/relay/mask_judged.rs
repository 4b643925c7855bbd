//! Which copy of the target's catalog a masked role's prepared statements and cursors were judged
//! with (s8, issue 15). The interceptor checks each statement text against the catalog snapshot
//! confirmed current just before ([`MaskContext::check`]), but a prepared statement and a cursor
//! run later than that:
//! - a prepared statement (SQL `PREPARE`, a protocol Parse) is planned again by PostgreSQL when an
//!   object it reads changed, so an `EXECUTE` or Bind after a view was replaced runs the new
//!   definition: its text is checked again against the current snapshot when that is another copy
//!   than the one it was judged with ([`MaskJudgements::run`]);
//! - a cursor is planned once, when its `DECLARE` runs, which may be after DDL committed while it
//!   waited for a lock (its text was checked before): a `FETCH` is refused unless the snapshot is
//!   still the copy the `DECLARE` was checked with ([`MaskJudgements::fetch`]), and a cursor this
//!   session did not declare through timebox (opened by a function) is refused;
//! - a protocol Describe or Execute of a portal no Bind of this session created reads a SQL cursor
//!   of that name (they share one namespace): the same rule as `FETCH` ([`MaskJudgements::use_portal`]).
//!
//! Pure bookkeeping on top of the snapshots the relay confirmed; the interceptor calls it for
//! roles with masks only. Must never let a statement run on a catalog copy its text was not
//! checked against.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::context::MaskContext;
use crate::masking::catalog::MaskSnapshot;
use crate::policy::classify::Relation;
use crate::policy::mask_shape::MaskDenial;
use crate::policy::{Classification, Deallocate};

/// Whether two snapshots are the same copy of the catalog: by fingerprint when both have one (a
/// re-read of an unchanged catalog is the same copy), otherwise only the same read.
pub(crate) fn same_catalog(a: Option<&MaskSnapshot>, b: Option<&MaskSnapshot>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => match (&a.fingerprint, &b.fingerprint) {
            (Some(x), Some(y)) => x == y,
            _ => std::ptr::eq(a, b),
        },
        (None, None) => true,
        _ => false,
    }
}

const CURSOR_HINT: &str = "CLOSE the cursor and DECLARE it again through timebox.";
const UNSEEN_HINT: &str =
    "Declare the cursor (or prepare the statement) in this session through timebox first.";

/// A prepared statement's text, the relations it reads (for the lock block), and the snapshot it
/// was last judged with.
#[derive(Debug, Clone)]
pub struct Judged {
    text: Arc<str>,
    relations: Arc<[Relation]>,
    with: Option<Arc<MaskSnapshot>>,
}

/// A cursor: the snapshot its `DECLARE` was checked with, and whether it outlives its transaction.
#[derive(Debug, Clone)]
pub struct Cursor {
    with: Option<Arc<MaskSnapshot>>,
    hold: bool,
}

/// What one Query did to the names, applied once PostgreSQL answered it without an error.
#[derive(Debug)]
pub enum Change {
    Prepared(String, Judged),
    Deallocated(Deallocate),
    Declared(String, Cursor),
    Closed(Deallocate),
}

/// What the backend said of the session's earlier messages (from the relay's [`super::ResultMask`],
/// which matches answers to messages): the judgements they carry are kept only once PostgreSQL did
/// what was judged (s8 re-attack: a `PREPARE` or `DECLARE` of an existing name, which PostgreSQL
/// refuses, replaced the judgement of the object it kept; so did a Parse it never ran).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendOutcome {
    /// The oldest Query (or FunctionCall) not answered yet ended; `failed`: with an error.
    Query { failed: bool },
    /// A Parse of statement `name` completed (ParseComplete).
    Parsed(String),
    /// A Parse of statement `name` failed or was skipped after an error.
    ParseFailed(String),
    /// ReadyForQuery with this transaction status.
    Ready(u8),
}

/// One masked session's prepared statements and cursors, with the snapshot each was judged with.
#[derive(Debug, Default)]
pub struct MaskJudgements {
    statements: HashMap<String, Judged>,
    cursors: HashMap<String, Cursor>,
    /// Portals a Bind of this session created.
    portals: HashSet<String>,
    /// Per Query (and FunctionCall) forwarded and not answered yet, in order: what it changes.
    queries: VecDeque<Vec<Change>>,
    /// Per Parse forwarded and not answered yet, in order: its name and judgement (`None`: refused).
    parses: VecDeque<(String, Option<Judged>)>,
}

impl MaskJudgements {
    /// The statements of one checked text, in order: each `EXECUTE` runs a prepared statement
    /// ([`MaskJudgements::run`]), each `FETCH` a cursor ([`MaskJudgements::fetch`]); a `PREPARE`
    /// or `DECLARE` of a name this session holds is refused (PostgreSQL would refuse it too).
    /// What a Query's `PREPARE`, `DECLARE`, `DEALLOCATE` and `CLOSE` change is kept once it was
    /// answered without an error ([`MaskJudgements::on_backend`]); a Parse's text runs at its
    /// Bind (`parse`: nothing is recorded).
    pub fn on_text(
        &mut self,
        m: &MaskContext,
        sql: &str,
        classification: &Classification,
        parse: bool,
    ) -> Result<Vec<Change>, MaskDenial> {
        let now = m.entry.current();
        let mut changes: Vec<Change> = Vec::new();
        let mut prepared: Vec<&str> = Vec::new();
        let mut declared: Vec<&str> = Vec::new();
        // Names this text frees before it takes them again (`CLOSE c; DECLARE c …`).
        let mut freed_cursors: Vec<&Deallocate> = Vec::new();
        let mut freed_statements: Vec<&Deallocate> = Vec::new();
        let frees = |freed: &[&Deallocate], name: &str| {
            freed
                .iter()
                .any(|d| matches!(d, Deallocate::All) || matches!(d, Deallocate::Name(n) if n == name))
        };
        for stmt in &classification.statements {
            if let Some(name) = &stmt.execute_name {
                if !prepared.contains(&name.as_str()) {
                    self.run(m, name)?;
                }
            }
            if let Some(name) = &stmt.fetch_cursor {
                if !declared.contains(&name.as_str()) {
                    self.fetch(m, name)?;
                }
            }
            if let Some(name) = &stmt.declare_cursor {
                let held = self.cursors.contains_key(name) && !frees(&freed_cursors, name);
                if held || declared.contains(&name.as_str()) {
                    return Err(exists(m, "cursor", name, "CLOSE"));
                }
                declared.push(name);
                let cursor = Cursor {
                    with: now.clone(),
                    hold: stmt.declare_hold,
                };
                changes.push(Change::Declared(name.clone(), cursor));
            }
            if let Some(name) = &stmt.prepare_name {
                let held = self.statements.contains_key(name) && !frees(&freed_statements, name);
                if held || prepared.contains(&name.as_str()) {
                    return Err(exists(m, "prepared statement", name, "DEALLOCATE"));
                }
                prepared.push(name);
                let judged = Judged {
                    text: sql.get(stmt.span.clone()).unwrap_or(sql).into(),
                    relations: stmt.relations.clone().into(),
                    with: now.clone(),
                };
                changes.push(Change::Prepared(name.clone(), judged));
            }
            if let Some(d) = &stmt.deallocate {
                freed_statements.push(d);
                prepared.retain(|n| !frees(&[d], n));
                changes.push(Change::Deallocated(d.clone()));
            }
            if let Some(c) = &stmt.close_cursor {
                freed_cursors.push(c);
                declared.retain(|n| !frees(&[c], n));
                changes.push(Change::Closed(c.clone()));
            }
        }
        if parse && !changes.is_empty() {
            // They would run at an Execute whose answer timebox does not match to them (s8 second
            // re-attack: recorded at Bind, a CLOSE or DEALLOCATE never executed freed a name).
            return Err(MaskDenial {
                reason: format!(
                    "role \"{}\" masks columns, and PREPARE, DECLARE, DEALLOCATE and CLOSE are taken only as a simple Query from it, not through Parse",
                    m.role
                ),
                hint: "Send the statement as a simple Query (psql does), or use protocol-level prepared statements and portals.",
            });
        }
        Ok(changes)
    }

    /// A Query (or FunctionCall) was forwarded with `changes` ([`MaskJudgements::on_text`]; none
    /// when it was refused, or for roles whose text was not checked).
    pub fn query_sent(&mut self, changes: Vec<Change>) {
        self.queries.push_back(changes);
    }

    /// A protocol Parse of `name` with `text` reading `relations` was forwarded, allowed against
    /// the current snapshot (`None`: refused, its denial marker went instead; a marker Parse is
    /// unnamed). A named statement this session holds is refused first
    /// ([`MaskJudgements::parse_allowed`]).
    pub fn parse_sent(&mut self, m: &MaskContext, name: &str, text: Option<(&str, &[Relation])>) {
        let judged = text.map(|(text, relations)| Judged {
            text: text.into(),
            relations: relations.into(),
            with: m.entry.current(),
        });
        let name = if judged.is_some() { name } else { "" };
        self.parses.push_back((name.to_owned(), judged));
    }

    /// Whether a Parse of statement `name` may go: PostgreSQL refuses a named statement that
    /// exists, and the judgement of the one it keeps must not be replaced.
    pub fn parse_allowed(&self, m: &MaskContext, name: &str) -> Result<(), MaskDenial> {
        let pending = self.parses.iter().any(|(n, j)| n == name && j.is_some());
        if !name.is_empty() && (pending || self.statements.contains_key(name)) {
            return Err(exists(m, "prepared statement", name, "Close"));
        }
        Ok(())
    }

    /// What the backend answered (see [`BackendOutcome`]).
    pub fn on_backend(&mut self, outcome: BackendOutcome) {
        match outcome {
            BackendOutcome::Query { failed } => {
                let changes = self.queries.pop_front().unwrap_or_default();
                for change in changes {
                    // A Query that failed took nothing, but what it frees is forgotten anyway:
                    // forgetting a name only refuses more (an EXECUTE or FETCH of a name timebox
                    // does not hold is refused), and a CLOSE of a cursor gone upstream (a WITH HOLD
                    // cursor whose block rolled back) then frees its name.
                    if !failed || matches!(change, Change::Closed(_) | Change::Deallocated(_)) {
                        self.apply(change);
                    }
                }
            }
            // Answers come in the order of the client's Parses, which both sides count (a refused
            // one and one dropped after a refusal included; s8 second re-attack: matching by name
            // stopped at a refused Parse, reported under the client's name).
            BackendOutcome::Parsed(_) | BackendOutcome::ParseFailed(_) => {
                let parsed = matches!(outcome, BackendOutcome::Parsed(_));
                if let Some((name, Some(judged))) = self.parses.pop_front() {
                    if parsed {
                        self.statements.insert(name, judged);
                    }
                }
            }
            // Outside a transaction block no cursor without HOLD is left.
            BackendOutcome::Ready(b'I') => self.cursors.retain(|_, c| c.hold),
            BackendOutcome::Ready(_) => {}
        }
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::Prepared(name, judged) => {
                self.statements.insert(name, judged);
            }
            Change::Deallocated(Deallocate::All) => self.statements.clear(),
            Change::Deallocated(Deallocate::Name(name)) => {
                self.statements.remove(&name);
            }
            Change::Declared(name, cursor) => {
                self.cursors.insert(name, cursor);
            }
            Change::Closed(Deallocate::All) => self.cursors.clear(),
            Change::Closed(Deallocate::Name(name)) => {
                self.cursors.remove(&name);
            }
        }
    }

    /// A protocol Close of statement `name`.
    pub fn closed(&mut self, name: &str) {
        self.statements.remove(name);
    }

    /// A Bind of statement `name` into `portal`: it runs now.
    pub fn bind(&mut self, m: &MaskContext, portal: &str, name: &str) -> Result<(), MaskDenial> {
        self.run(m, name)?;
        self.bound_portal(portal);
        Ok(())
    }

    /// A Bind created portal `name`.
    pub fn bound_portal(&mut self, name: &str) {
        self.portals.insert(name.to_owned());
    }

    /// A protocol Close of portal `name`.
    pub fn closed_portal(&mut self, name: &str) {
        self.portals.remove(name);
    }

    /// A protocol Describe or Execute of portal `name`: one this session bound, or else a SQL
    /// cursor of that name, which must pass [`MaskJudgements::fetch`] (s8 re-attack: a cursor
    /// declared while a view was being replaced was read as a portal, unchecked).
    pub fn use_portal(&self, m: &MaskContext, name: &str) -> Result<(), MaskDenial> {
        if self.portals.contains(name) && !self.cursors.contains_key(name) {
            return Ok(());
        }
        self.fetch(m, name)
    }

    /// The relations prepared statement `name` reads as PostgreSQL will run it, for the lock
    /// block (s11, sixth attack): those of a Parse of that name not answered yet and those of the
    /// statement held, as [`MaskJudgements::run`] checks both — never what a refused `PREPARE` or
    /// a Parse the server skipped said (the interceptor's map of names records those).
    pub fn relations(&self, name: &str) -> Vec<Relation> {
        let pending = self
            .parses
            .iter()
            .filter_map(|(n, j)| if n == name { j.as_ref() } else { None });
        let mut out: Vec<Relation> = Vec::new();
        for r in pending
            .chain(self.statements.get(name))
            .flat_map(|j| j.relations.iter())
        {
            if !out.contains(r) {
                out.push(r.clone());
            }
        }
        out
    }

    /// Prepared statement `name` runs now: when the current snapshot is another copy than the
    /// one its text was judged with, the text is checked again against it. A Parse of `name`
    /// not answered yet counts as well as the statement held (a Bind pipelined after its Parse).
    pub fn run(&mut self, m: &MaskContext, name: &str) -> Result<(), MaskDenial> {
        if let Some(denial) = m.unconfirmed_denial() {
            return Err(denial);
        }
        // The statement PostgreSQL will run: a Parse of that name not answered yet (if it
        // succeeds), or else the one it holds (if that Parse fails or was skipped after an
        // error): both must pass.
        let pending = self
            .parses
            .iter_mut()
            .filter_map(|(n, j)| if n == name { j.as_mut() } else { None });
        let candidates: Vec<&mut Judged> = pending.chain(self.statements.get_mut(name)).collect();
        if candidates.is_empty() {
            return Err(MaskDenial {
                reason: format!(
                    "role \"{}\" masks columns, and timebox has no checked text for prepared statement \"{name}\"",
                    m.role
                ),
                hint: UNSEEN_HINT,
            });
        }
        let now = m.entry.current();
        for judged in candidates {
            if !same_catalog(judged.with.as_deref(), now.as_deref()) {
                m.recheck(&judged.text)?;
                judged.with = now.clone();
            }
        }
        Ok(())
    }

    /// Rows are fetched from cursor `name`: it must have been declared through timebox against
    /// the copy of the catalog that is still current.
    pub fn fetch(&self, m: &MaskContext, name: &str) -> Result<(), MaskDenial> {
        if let Some(denial) = m.unconfirmed_denial() {
            return Err(denial);
        }
        let reason = match self.cursors.get(name) {
            None => format!(
                "role \"{}\" masks columns, and cursor \"{name}\" was not declared through timebox in this session (a function may have opened it), so timebox never checked its query",
                m.role
            ),
            Some(c) if same_catalog(c.with.as_deref(), m.entry.current().as_deref()) => return Ok(()),
            Some(_) => format!(
                "role \"{}\" masks columns, and the target's catalog changed since cursor \"{name}\" was declared: PostgreSQL planned its query on objects timebox did not check it against",
                m.role
            ),
        };
        let hint = if self.cursors.contains_key(name) {
            CURSOR_HINT
        } else {
            UNSEEN_HINT
        };
        Err(MaskDenial { reason, hint })
    }
}

/// The refusal of a `PREPARE`, `DECLARE` or Parse of a name the session holds (`how`: what frees it).
fn exists(m: &MaskContext, what: &str, name: &str, how: &str) -> MaskDenial {
    MaskDenial {
        reason: format!(
            "role \"{}\" masks columns, and {what} \"{name}\" exists in this session: PostgreSQL would refuse it, and timebox keeps judging the one that exists",
            m.role
        ),
        hint: if how == "CLOSE" {
            "CLOSE the cursor first."
        } else if how == "Close" {
            "Close the prepared statement first (or use another name)."
        } else {
            "DEALLOCATE the prepared statement first."
        },
    }
}

#[cfg(test)]
#[path = "mask_judged_tests.rs"]
mod tests;
