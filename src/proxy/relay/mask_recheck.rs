//! A masked role's second catalog check of a result (s7 attack, F4): the snapshot was confirmed
//! before the statement went upstream, but DDL committed after that check (a view replaced in an
//! open transaction whose lock the statement waited for) is what the statement runs on. A
//! result's first frame — a simple Query's RowDescription, an extended-protocol BindComplete —
//! comes once PostgreSQL holds the statement's locks (taken at parse analysis or plan
//! revalidation, kept to the end of the transaction): the relay holds it back until the snapshot
//! is confirmed again ([`confirming_result`]), and [`ResultMask::after_confirm`] fails the
//! result's rows when the snapshot changed since the statement was checked. Never passes a result
//! whose statement was checked against another copy of the catalog than the current one (s8: a
//! computed column of a replaced view reads alike, OID 0, under both copies; and the text checked
//! again against the copy current at the second check is not proof either — the statement may have
//! run on a state in between, a view replaced and replaced back while timebox's fingerprint read
//! waited for a lock on a catalog).

use std::sync::Arc;

use super::{Expect, ResultMask};
use crate::masking::catalog::{ColumnVerdict, MaskSnapshot};
use crate::proxy::target_catalog::MaskEntry;

const CHANGED: &str =
    "a description judged with a copy of the target's catalog that changed while the statement ran (run it again)";
const UNCONFIRMED: &str =
    "a description timebox could not confirm against the target's catalog once the statement ran (run it again)";
/// The snapshot a Query or Bind was checked against when it was forwarded (s8 second re-attack:
/// one "checked with" for the session let a later Query or Bind, or a second check of an earlier
/// result of the same Query, move it, and a result was compared with a copy read after its text
/// was checked). Equal when the same read.
#[derive(Debug, Clone)]
pub(super) struct CheckedWith(pub(super) Option<Arc<MaskSnapshot>>);

impl PartialEq for CheckedWith {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
}

impl Eq for CheckedWith {}

/// How `snapshot` (`None`: no copy of the catalog) shows column `attnum` of relation `table`.
pub(super) fn column_verdict(snapshot: Option<&MaskSnapshot>, table: u32, attnum: i16) -> ColumnVerdict {
    match snapshot {
        Some(s) => s.column(table, attnum),
        None if table == 0 => ColumnVerdict::Plain,
        None => ColumnVerdict::Unknown("a table column while timebox has no copy of the catalog"),
    }
}

/// Whether a layout refused for `why` was refused by a second check (it stays refused).
pub(super) fn refused_for_a_change(why: &str) -> bool {
    why == CHANGED || why == UNCONFIRMED
}

/// The second catalog check's verdict on the result whose first frame is next (s7, F4).
#[derive(Debug)]
pub(super) enum Rechecked {
    /// The snapshot could not be confirmed: the result's rows fail.
    Unconfirmed,
    /// Another copy of the catalog is current than the one the statement was checked against.
    Changed,
}

impl ResultMask {
    /// Whether the backend frame `tag` begins a result whose statement holds its locks now: a
    /// simple Query's RowDescription, or an extended-protocol BindComplete (s7, F4); or is an
    /// ErrorResponse or NoticeResponse of a statement (s8), or the CommandComplete of a Query's
    /// statement that had no RowDescription (s9). Its catalog snapshot is confirmed
    /// again before it is judged ([`ResultMask::after_confirm`]).
    pub(crate) fn confirms_at(&self, tag: u8) -> bool {
        let front = self.pending.front();
        tag == b'2'
            || (tag == b'T' && matches!(front, Some(Expect::Query(..))))
            // A statement of a Query that returned no rows (DML, DECLARE, CREATE TABLE AS, …)
            // ran on what it locked too; a cursor WITH HOLD is filled at COMMIT by the plan it
            // made then (s9: its code's effects would be committed with it).
            || (tag == b'C' && matches!(front, Some(Expect::Query(..))) && self.current.is_none() && !self.failing)
            // An error or notice raised while the statement was planned — after it waited for
            // its locks — or ran (s8 re-attack: a replaced view's function raised the values).
            || (matches!(tag, b'E' | b'N')
                && matches!(
                    front,
                    Some(Expect::Query(..) | Expect::Bind { .. } | Expect::Execute(_))
                ))
    }

    /// The second catalog check of the result beginning at the next frame resolved (`confirmed`:
    /// the snapshot is current). A snapshot other than the one the statement was checked and
    /// described against, or none confirmed, fails its rows: a view it reads may have been
    /// replaced after the first check, and committed while the statement waited for its lock.
    pub(crate) fn after_confirm(&mut self, confirmed: bool) {
        let now = self.entry.current();
        // The snapshot the statement whose result this is was checked against (s8 second
        // re-attack: not the session's latest, which later Queries and checks move).
        let checked = match self.pending.front() {
            Some(Expect::Query(_, c) | Expect::Bind { checked: c, .. }) => c.0.clone(),
            Some(Expect::Execute(portal)) => match self.portal_checked.get(portal) {
                Some(c) => c.0.clone(),
                None => self.judged_with.clone(),
            },
            _ => self.judged_with.clone(),
        };
        let changed = !super::same_catalog(checked.as_deref(), now.as_deref());
        self.follow_snapshot(now);
        self.rechecked = if !confirmed {
            Some(Rechecked::Unconfirmed)
        } else {
            changed.then_some(Rechecked::Changed)
        };
    }

    /// Why the rows of the result beginning with the next frame fail after its second check, if
    /// they do: the snapshot could not be confirmed, or it is another copy than the one the
    /// statement was checked against (any change, s8).
    pub(super) fn changed_while_running(&mut self) -> Option<&'static str> {
        match self.rechecked.take()? {
            Rechecked::Unconfirmed => Some(UNCONFIRMED),
            Rechecked::Changed => Some(CHANGED),
        }
    }
}

/// The second catalog check of a masked role's result (s7, F4): the snapshot `entry` confirmed
/// current (read again if the catalog changed) once the statement holds its locks; resolves to
/// whether it could be confirmed.
pub(crate) fn confirming_result(
    entry: Arc<MaskEntry>,
    proxy: Arc<crate::proxy::ProxyState>,
) -> crate::proxy::relay::precheck::ResultConfirming {
    Box::pin(async move {
        let confirmed = entry.confirm_current(&proxy.salted_passwords).await;
        if let Err(e) = &confirmed {
            tracing::warn!(error = %e, "could not confirm the masking catalog snapshot for a result; its rows are refused");
        }
        confirmed.is_ok()
    })
}
