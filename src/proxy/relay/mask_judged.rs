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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::context::MaskContext;
use crate::masking::catalog::MaskSnapshot;
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

/// A prepared statement's text and the snapshot it was last judged with.
#[derive(Debug, Clone)]
struct Judged {
    text: Arc<str>,
    with: Option<Arc<MaskSnapshot>>,
}

/// One masked session's prepared statements and cursors, with the snapshot each was judged with.
#[derive(Debug, Default)]
pub struct MaskJudgements {
    statements: HashMap<String, Judged>,
    cursors: HashMap<String, Option<Arc<MaskSnapshot>>>,
    /// Portals a Bind of this session created.
    portals: HashSet<String>,
}

impl MaskJudgements {
    /// The statements of one checked text (a Query, or a Parse whose text the check allowed), in
    /// order: each `EXECUTE` runs a prepared statement ([`MaskJudgements::run`]), each `FETCH` a
    /// cursor ([`MaskJudgements::fetch`]); `PREPARE`, `DECLARE` and `DEALLOCATE` are recorded
    /// only when nothing in the text is refused.
    pub fn on_text(
        &mut self,
        m: &MaskContext,
        sql: &str,
        classification: &Classification,
    ) -> Result<(), MaskDenial> {
        let now = m.entry.current();
        let mut prepared: Vec<(String, Judged)> = Vec::new();
        let mut declared: Vec<String> = Vec::new();
        for stmt in &classification.statements {
            if let Some(name) = &stmt.execute_name {
                if !prepared.iter().any(|(n, _)| n == name) {
                    self.run(m, name)?;
                }
            }
            if let Some(name) = &stmt.fetch_cursor {
                if !declared.contains(name) {
                    self.fetch(m, name)?;
                }
            }
            if let Some(name) = &stmt.declare_cursor {
                declared.push(name.clone());
            }
            if let Some(name) = &stmt.prepare_name {
                let text = sql.get(stmt.span.clone()).unwrap_or(sql);
                let judged = Judged {
                    text: text.into(),
                    with: now.clone(),
                };
                prepared.push((name.clone(), judged));
            }
            match &stmt.deallocate {
                Some(Deallocate::All) => {
                    self.statements.clear();
                    prepared.clear();
                }
                Some(Deallocate::Name(name)) => {
                    self.statements.remove(name);
                    prepared.retain(|(n, _)| n != name);
                }
                None => {}
            }
        }
        self.statements.extend(prepared);
        for name in declared {
            self.cursors.insert(name, now.clone());
        }
        Ok(())
    }

    /// A protocol Parse of `name` with `text`, allowed against the current snapshot.
    pub fn parsed(&mut self, m: &MaskContext, name: &str, text: &str) {
        let judged = Judged {
            text: text.into(),
            with: m.entry.current(),
        };
        self.statements.insert(name.to_owned(), judged);
    }

    /// A protocol Close of statement `name`.
    pub fn closed(&mut self, name: &str) {
        self.statements.remove(name);
    }

    /// A Bind of statement `name` (whose checked text is `classification`) into `portal`: it runs
    /// now.
    pub fn bind(
        &mut self,
        m: &MaskContext,
        portal: &str,
        name: &str,
        classification: &Classification,
    ) -> Result<(), MaskDenial> {
        self.run(m, name)?;
        self.bound_portal(portal);
        let now = m.entry.current();
        for stmt in &classification.statements {
            if let Some(cursor) = &stmt.declare_cursor {
                self.cursors.insert(cursor.clone(), now.clone());
            }
        }
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

    /// Prepared statement `name` runs now: when the current snapshot is another copy than the
    /// one its text was judged with, the text is checked again against it.
    pub fn run(&mut self, m: &MaskContext, name: &str) -> Result<(), MaskDenial> {
        if let Some(denial) = m.unconfirmed_denial() {
            return Err(denial);
        }
        let Some(judged) = self.statements.get_mut(name) else {
            return Err(MaskDenial {
                reason: format!(
                    "role \"{}\" masks columns, and timebox has no checked text for prepared statement \"{name}\"",
                    m.role
                ),
                hint: UNSEEN_HINT,
            });
        };
        let now = m.entry.current();
        if !same_catalog(judged.with.as_deref(), now.as_deref()) {
            m.recheck(&judged.text)?;
            judged.with = now;
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
            Some(with) if same_catalog(with.as_deref(), m.entry.current().as_deref()) => return Ok(()),
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

#[cfg(test)]
#[path = "mask_judged_tests.rs"]
mod tests;
