//! The errors result masking ([`super`]) sends a masked role in place of what it does not pass on:
//! rows whose columns it cannot establish, rows of an extended-protocol FETCH or EXECUTE, and a
//! statement that ran on a changed catalog. All 42501 at severity ERROR: the session goes on.

use super::ResultMask;
use crate::proxy::wire::PgError;

impl ResultMask {
    pub(super) fn error(&self, why: &str) -> PgError {
        PgError::insufficient_privilege(format!(
            "timebox: the rows of this result were not sent: it has {why}, so timebox cannot establish which of its columns role \"{}\" sees masked",
            self.role
        ))
        .non_fatal()
        .with_hint("Try again in a moment (timebox re-reads the target's catalog); select masked columns by name from their table, with a RowDescription (Describe) before the rows.")
    }

    /// A statement without rows that ran on a copy of the catalog other than the one it was
    /// checked against (s9).
    pub(super) fn changed_error(&self) -> PgError {
        PgError::insufficient_privilege(format!(
            "timebox: a statement of role \"{}\" (which masks columns) ran on the target's catalog as changed while it waited for its locks, not on the copy it was checked against; timebox ends its transaction",
            self.role
        ))
        .non_fatal()
        .with_hint("Run it again: timebox has read the target's catalog again.")
    }

    /// A statement that did not run: the catalog changed between its check and the moment timebox
    /// held the locks on what it reads (s10, [`super::super::lock_prelude`]).
    pub(crate) fn locked_changed_error(&self) -> PgError {
        PgError::insufficient_privilege(format!(
            "timebox: the target's catalog changed after a statement of role \"{}\" (which masks columns) was checked, while timebox waited for the locks on what it reads; it did not run",
            self.role
        ))
        .non_fatal()
        .with_hint("Run it again: timebox has read the target's catalog again.")
    }

    /// The rows of an extended-protocol FETCH or EXECUTE.
    pub(super) fn runtime_error(&self) -> PgError {
        let column = self
            .entry
            .current()
            .and_then(|s| s.rules.first().map(|r| r.qualified()))
            .unwrap_or_else(|| "a masked column".to_owned());
        PgError::insufficient_privilege(format!(
            "timebox: role \"{}\" masks columns (such as {column}), and the rows of a FETCH or EXECUTE sent in the extended protocol were not sent: which columns they have is decided when it runs, after any Describe",
            self.role
        ))
        .non_fatal()
        .with_hint("Send FETCH and EXECUTE as a simple Query (its RowDescription comes with the rows), or select the columns directly.")
    }
}
