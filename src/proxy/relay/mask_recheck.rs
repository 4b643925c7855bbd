//! A masked role's second catalog check of a result (s7 attack, F4): the snapshot was confirmed
//! before the statement went upstream, but DDL committed after that check (a view replaced in an
//! open transaction whose lock the statement waited for) is what the statement runs on. A
//! result's first frame — a simple Query's RowDescription, an extended-protocol BindComplete —
//! comes once PostgreSQL holds the statement's locks (taken at parse analysis or plan
//! revalidation, kept to the end of the transaction): the relay holds it back until the snapshot
//! is confirmed again ([`confirming_result`]), and [`ResultMask::after_confirm`] fails the
//! result's rows when the snapshot changed since the statement was checked. Never passes a result
//! judged with another copy of the catalog than the current one unless the statement's text passes
//! the check against the current copy too and both copies show its columns alike (s8: alike alone
//! passed a computed column of a replaced view, OID 0 in both).

use std::sync::Arc;

use super::{Expect, ResultMask};
use crate::masking::catalog::{ColumnVerdict, MaskSnapshot};
use crate::masking::rewrite_row_description;
use crate::proxy::target_catalog::MaskEntry;

const CHANGED: &str =
    "a description judged with a copy of the target's catalog that changed while the statement ran (run it again)";
const UNCONFIRMED: &str =
    "a description timebox could not confirm against the target's catalog once the statement ran (run it again)";
/// How `snapshot` (`None`: no copy of the catalog) shows column `attnum` of relation `table`.
pub(super) fn column_verdict(snapshot: Option<&MaskSnapshot>, table: u32, attnum: i16) -> ColumnVerdict {
    match snapshot {
        Some(s) => s.column(table, attnum),
        None if table == 0 => ColumnVerdict::Plain,
        None => ColumnVerdict::Unknown("a table column while timebox has no copy of the catalog"),
    }
}

/// Whether two snapshots show every column of a RowDescription alike (its rows are then masked
/// the same whichever judged it); a malformed one counts as unlike.
fn judged_alike(frame: &[u8], a: Option<&MaskSnapshot>, b: Option<&MaskSnapshot>) -> bool {
    let alike = std::cell::Cell::new(true);
    let parsed = rewrite_row_description(frame, |table, attnum| {
        if column_verdict(a, table, attnum) != column_verdict(b, table, attnum) {
            alike.set(false);
        }
        None
    });
    parsed.is_ok() && alike.get()
}

/// The second catalog check's verdict on the result whose first frame is next (s7, F4).
#[derive(Debug)]
pub(super) enum Rechecked {
    /// The snapshot could not be confirmed: the result's rows fail.
    Unconfirmed,
    /// Another snapshot is current than the one the statement was checked against (given): a
    /// RowDescription both show alike passes, anything else fails.
    Changed(Option<Arc<MaskSnapshot>>),
}

impl ResultMask {
    /// Whether the backend frame `tag` begins a result whose statement holds its locks now: a
    /// simple Query's RowDescription, or an extended-protocol BindComplete (s7, F4). Its catalog
    /// snapshot is confirmed again before it is judged ([`ResultMask::after_confirm`]).
    pub(crate) fn confirms_at(&self, tag: u8) -> bool {
        tag == b'2' || (tag == b'T' && matches!(self.pending.front(), Some(Expect::Query(..))))
    }

    /// The second catalog check of the result beginning at the next frame resolved (`confirmed`:
    /// the snapshot is current). A snapshot other than the one the statement was checked and
    /// described against, or none confirmed, fails its rows: a view it reads may have been
    /// replaced after the first check, and committed while the statement waited for its lock.
    pub(crate) fn after_confirm(&mut self, confirmed: bool) {
        let now = self.entry.current();
        let checked = self.judged_with.clone();
        let changed = !super::same_catalog(checked.as_deref(), now.as_deref());
        self.follow_snapshot(now);
        self.rechecked = if !confirmed {
            Some(Rechecked::Unconfirmed)
        } else {
            changed.then_some(Rechecked::Changed(checked))
        };
    }

    /// Why the rows of the result beginning with frame `tag` fail after its second check, if
    /// they do: not confirmed; or the catalog changed since the statement was checked, unless this
    /// is a simple Query's RowDescription whose text passes the check against the current copy
    /// ([`MaskContext::recheck`]) and which the old and the current copy show alike (a change
    /// elsewhere in the catalog). A BindComplete's statement was described earlier: any change
    /// fails it.
    pub(super) fn changed_while_running(&mut self, tag: u8, frame: &[u8]) -> Option<&'static str> {
        match self.rechecked.take()? {
            Rechecked::Unconfirmed => Some(UNCONFIRMED),
            Rechecked::Changed(checked)
                if tag == b'T'
                    && self.query_passes_again()
                    && judged_alike(frame, checked.as_deref(), self.entry.current().as_deref()) =>
            {
                None
            }
            Rechecked::Changed(_) => Some(CHANGED),
        }
    }

    /// Whether the text of the simple Query in progress passes the masking check against the
    /// current copy of the catalog (`false` without one: fail closed).
    fn query_passes_again(&self) -> bool {
        match (&self.context, self.pending.front()) {
            (Some(context), Some(Expect::Query(_, Some(text)))) => context.recheck(text).is_ok(),
            _ => false,
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
