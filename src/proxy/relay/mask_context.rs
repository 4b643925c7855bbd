//! A masked role's session context (issue 15, s6): its masks, the target's catalog snapshot entry
//! and the `hash` key, shared by the interceptor (the pre-execution shape check, after the snapshot
//! is confirmed current) and the relay (the rewrite). Never checks a statement against a snapshot
//! it could not confirm.

use std::sync::Arc;

use crate::config::{Credential, Masking, Target};
use crate::masking::MaskKey;
use crate::policy::mask_shape::{self, MaskDenial, MaskScope};
use crate::policy::{Classification, StatementClass, StatementInfo};
use crate::proxy::relay::precheck::Confirming;
use crate::proxy::target_catalog::{MaskEntry, MaskSource};
use crate::proxy::wire::PgError;
use crate::proxy::{ProxyContext, ProxyState};

/// A masked role's session: its masks, the target's snapshot entry and the `hash` key. Shared by
/// the interceptor (the shape check) and the relay (the rewrite).
#[derive(Debug)]
pub struct MaskContext {
    pub role: String,
    pub masking: Masking,
    pub entry: Arc<MaskEntry>,
    pub key: MaskKey,
    /// The last [`MaskContext::confirm_current`] could not confirm the snapshot: the next
    /// statement checked is refused (fail closed, never checked against a stale snapshot).
    pub unconfirmed: std::sync::atomic::AtomicBool,
}

/// Why a masked role's statement is refused when the catalog snapshot cannot be confirmed.
const UNCONFIRMED_HINT: &str = "Try again; tell the timebox administrators if it persists.";

impl MaskContext {
    /// Before a statement of this session is checked: confirms that the target's catalog
    /// snapshot is current (re-reading it when the catalog changed); when it cannot, the
    /// statement's check refuses it ([`MaskContext::check`]).
    pub async fn confirm_current(&self, salted: &crate::proxy::scram::SaltedPasswordCache) {
        let result = self.entry.confirm_current(salted).await;
        if let Err(e) = &result {
            tracing::warn!(error = %e, "could not confirm the masking catalog snapshot; the statement is refused");
        }
        self.unconfirmed
            .store(result.is_err(), std::sync::atomic::Ordering::Release);
    }

    /// [`MaskContext::confirm_current`] as a future of its own (s7), which the relay races with
    /// its cut arms (expiry, revocation, kill, shutdown) while the statement waits for it: a slow or
    /// locked catalog never delays a cut, and the statement is not checked or forwarded before it
    /// resolved.
    pub(crate) fn confirming(self: Arc<Self>, proxy: Arc<ProxyState>) -> Confirming {
        Box::pin(async move { self.confirm_current(&proxy.salted_passwords).await })
    }

    /// The pre-execution shape check of one statement text, with the snapshot's rules (inherited
    /// tables included) and views when one was read.
    pub fn check(&self, sql: &str, classification: &Classification) -> Result<Vec<String>, MaskDenial> {
        if let Some(denial) = self.unconfirmed_denial() {
            return Err(denial);
        }
        let snapshot = self.entry.current();
        if let Some(denial) = snapshot.as_deref().and_then(|s| unmatched_denial(&self.role, s)) {
            return Err(denial);
        }
        let (columns, views, known) = match &snapshot {
            Some(s) => (&s.rules[..], &s.views[..], Some(&s.names)),
            None => (&self.masking.columns[..], &[][..], None),
        };
        let scope = MaskScope {
            role: &self.role,
            columns,
            filters: self.masking.filters,
            views,
            known,
            types: snapshot.as_ref().and_then(|s| s.types.as_ref()),
        };
        for stmt in &classification.statements {
            mask_shape::check_functions(&stmt.unknown_functions, &scope)?;
        }
        let masked = mask_shape::check(sql, &scope)?;
        if let Some((rows, after)) = runs_on_after_rows(sql, classification) {
            return Err(MaskDenial {
                reason: format!(
                    "role \"{}\" masks columns, and this query string runs {after} after {rows}, which may return rows: timebox judges rows as they arrive, and if it had to refuse those, PostgreSQL would still run the rest of the string",
                    self.role
                ),
                hint: RUNS_ON_HINT,
            });
        }
        Ok(masked)
    }
}

impl MaskContext {
    /// The refusal of anything checked while the last [`MaskContext::confirm_current`] could not
    /// confirm the snapshot; `None` when it could.
    pub fn unconfirmed_denial(&self) -> Option<MaskDenial> {
        self.unconfirmed
            .load(std::sync::atomic::Ordering::Acquire)
            .then(|| MaskDenial {
                reason: format!(
                    "role \"{}\" masks columns, and timebox could not confirm that its copy of the target's catalog is current",
                    self.role
                ),
                hint: UNCONFIRMED_HINT,
            })
    }

    /// [`MaskContext::check`] of a text checked before against another copy of the catalog (a
    /// prepared statement about to run again, s8), classified afresh.
    pub fn recheck(&self, sql: &str) -> Result<(), MaskDenial> {
        self.check(sql, &crate::policy::classify(sql)).map(drop)
    }
}

/// Why every statement of a role is refused while a masking rule matches no column on the target.
const UNMATCHED_HINT: &str = "Tell the timebox administrators: point the rule at the table's and column's current name in timebox's config (and restart it), or restore the name on the target.";

/// The refusal of every statement of `role` while a masking rule of its config matches no column
/// of `snapshot`'s target (issue 15, s8): a table renamed or moved while timebox was down, a
/// dropped table or column, or a typo — its values would otherwise be returned in clear under the
/// new name (fail closed). `None` when every rule matched.
fn unmatched_denial(role: &str, snapshot: &crate::masking::catalog::MaskSnapshot) -> Option<MaskDenial> {
    let rules: Vec<String> = snapshot.unmatched_rules().map(|r| r.qualified()).collect();
    let (noun, verb) = match rules.len() {
        0 => return None,
        1 => ("rule", "matches"),
        _ => ("rules", "match"),
    };
    Some(MaskDenial {
        reason: format!(
            "masking {noun} {} of role \"{role}\" {verb} no column on the target (a renamed or dropped table or column?): timebox refuses this role's statements until the rule or the target is fixed",
            rules.join(", ")
        ),
        hint: UNMATCHED_HINT,
    })
}

const RUNS_ON_HINT: &str = "Send that statement as a query of its own, or use the extended protocol (where timebox stops a batch at a refused result).";

/// Statement kinds that never return rows (any other kind may: fail closed). INSERT, UPDATE,
/// DELETE and MERGE return rows with RETURNING ([`may_return_rows`]).
const ROWLESS: [&str; 16] = [
    "BEGIN",
    "START TRANSACTION",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "ROLLBACK TO SAVEPOINT",
    "SET",
    "RESET",
    "SET TRANSACTION",
    "SET SESSION CHARACTERISTICS",
    "DECLARE CURSOR",
    "CLOSE",
    "PREPARE",
    "DEALLOCATE",
    "LOCK",
];

/// What may follow a statement that may return rows in one Query string: reads that change
/// nothing (class `read`).
const READS: [&str; 4] = ["SELECT", "VALUES", "SHOW", "EXPLAIN"];

/// The simple protocol's rule for masked roles (s7). A Query string is one implicit transaction
/// that PostgreSQL runs to its end: when timebox refuses a statement's rows (it judges them as they
/// arrive, after the statement ran), the client gets the error and, as after any error in a string,
/// believes nothing after it ran and the string's transaction rolled back — but PostgreSQL ran and
/// committed the rest. So a string in which a statement that may return rows is followed by
/// anything but a plain read (`READS`, class `read`: no write, no SET), a ROLLBACK (it undoes, never
/// keeps), or the COMMIT of a transaction the string began itself and did nothing but read in
/// (`BEGIN; DECLARE …; FETCH …; COMMIT`) is refused before it runs. Returns the kinds of the two
/// statements. Not seen: such a string's BEGIN inside a transaction block opened by an earlier
/// query (PostgreSQL warns and ignores it), whose COMMIT then keeps that block's earlier work.
/// (Since s9 the interceptor refuses every string that commits among other statements,
/// `relay::wrap::commits_among_other_statements`: the COMMIT would make a refused statement's
/// effects durable.)
pub(crate) fn runs_on_after_rows<'c>(
    sql: &str,
    classification: &'c Classification,
) -> Option<(&'c str, &'c str)> {
    let statements = &classification.statements;
    let only_reads = statements.iter().all(|s| s.class == StatementClass::Read);
    let mut began = false;
    let mut rows: Option<&str> = None;
    for stmt in statements {
        let kind = stmt.kind.as_str();
        if let Some(rows) = rows {
            let fine = (stmt.class == StatementClass::Read && READS.contains(&kind))
                || kind == "ROLLBACK"
                || (kind == "COMMIT" && began && only_reads);
            if !fine {
                return Some((rows, kind));
            }
        } else if matches!(kind, "BEGIN" | "START TRANSACTION") {
            began = true;
        } else if may_return_rows(sql, stmt) {
            rows = Some(kind);
        }
    }
    None
}

/// Whether `stmt` (of the text `sql`) may return rows: its kind is not known to be row-less, or a
/// data-modifying statement whose text has `RETURNING` (a plain substring test: a comment or literal
/// may over-match, which only refuses more; fail closed).
fn may_return_rows(sql: &str, stmt: &StatementInfo) -> bool {
    match stmt.kind.as_str() {
        "INSERT" | "UPDATE" | "DELETE" | "MERGE" => sql
            .get(stmt.span.clone())
            .is_none_or(|text| text.to_ascii_lowercase().contains("returning")),
        kind => !ROWLESS.contains(&kind),
    }
}

/// At startup (s8 re-attack): every masked role's copy of each target's catalog is read once, in
/// the background, so that its masked columns are followed by identity from then on (a table
/// renamed before the role's first session would otherwise be matched by its new occupant's name
/// only). Failures are logged; the first session reads again.
pub async fn prefetch_masks(ctx: Arc<ProxyContext>) {
    for target in ctx.config.targets.values() {
        for (role, credential) in &target.credentials {
            let Some(masking) = ctx.config.roles.get(role).and_then(|r| r.masking.clone()) else {
                continue;
            };
            let source = MaskSource {
                target: target.clone(),
                credential: credential.clone(),
                tls: ctx.proxy.upstream_tls.get(&target.name).cloned().flatten(),
                rules: masking.columns.clone(),
                pin_store: Some((
                    ctx.grants.store().clone(),
                    crate::masking::pins::key(&target.name, role),
                )),
            };
            ctx.proxy
                .mask_catalogs
                .snapshot(&source, role, &ctx.proxy.salted_passwords)
                .await;
        }
    }
}

/// At login: the masking of a session of `role` on `target`, `None` when the role masks nothing.
/// Reads the target's snapshot if none is known yet (bounded; without one, rows from tables fail).
pub async fn session_masking(
    ctx: &ProxyContext,
    target: &Target,
    credential: &Credential,
    role: &str,
) -> Result<Option<Arc<MaskContext>>, PgError> {
    let Some(masking) = ctx.config.roles.get(role).and_then(|r| r.masking.clone()) else {
        return Ok(None);
    };
    let source = MaskSource {
        target: target.clone(),
        credential: credential.clone(),
        tls: ctx.proxy.upstream_tls.get(&target.name).cloned().flatten(),
        rules: masking.columns.clone(),
        pin_store: Some((
            ctx.grants.store().clone(),
            crate::masking::pins::key(&target.name, role),
        )),
    };
    let entry = ctx
        .proxy
        .mask_catalogs
        .snapshot(&source, role, &ctx.proxy.salted_passwords)
        .await;
    let secret = ctx
        .grants
        .store()
        .installation_secret()
        .await
        .map_err(|e| PgError::for_store_error(&e))?;
    Ok(Some(Arc::new(MaskContext {
        role: role.to_owned(),
        masking,
        entry,
        key: MaskKey::derive(&secret),
        unconfirmed: Default::default(),
    })))
}

#[cfg(test)]
impl MaskContext {
    /// Role `support` masking `public.customers.email` by `email`, over `entry` (unit tests).
    pub(crate) fn support(entry: Arc<MaskEntry>) -> MaskContext {
        use crate::config::{MaskFilters, MaskRule};
        MaskContext {
            role: "support".into(),
            masking: Masking {
                columns: vec![MaskRule::customers_email(crate::masking::MaskMethod::Email)],
                filters: MaskFilters::default(),
            },
            entry,
            key: MaskKey::derive(&[1; 32]),
            unconfirmed: false.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MaskRule;
    use crate::masking::MaskMethod;

    /// Regression (s6): a statement checked after the snapshot could not be confirmed current
    /// is refused, whatever it is; the next confirmed one is checked as usual.
    #[test]
    fn an_unconfirmed_snapshot_refuses_the_statement() {
        let context = MaskContext::support(Arc::new(MaskEntry::holding(None)));
        context
            .unconfirmed
            .store(true, std::sync::atomic::Ordering::Release);
        let classification = Classification::default();
        let denial = context.check("SELECT 1", &classification).unwrap_err();
        assert!(denial.reason.contains("could not confirm"), "{}", denial.reason);
        context
            .unconfirmed
            .store(false, std::sync::atomic::Ordering::Release);
        assert_eq!(context.check("SELECT 1", &classification), Ok(Vec::new()));
    }

    /// Regression (s8, issue 15): a masking rule that matches no column on the target (its table
    /// renamed while timebox was down) masked nothing, and the column came back in clear under the
    /// new name. Every statement of the role is refused (42501, by `MaskDenial`) naming the rule;
    /// once the rule matches again, statements are checked as usual.
    #[test]
    fn a_rule_that_matches_no_column_refuses_every_statement() {
        use crate::masking::catalog::MaskSnapshot;
        let rule = MaskRule::customers_email(MaskMethod::Email);
        let row = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
        let unmatched =
            MaskSnapshot::from_rows(std::slice::from_ref(&rule), &[vec![], vec![], vec![]]).unwrap();
        let context = MaskContext::support(Arc::new(MaskEntry::holding(Some(unmatched))));
        let classification = Classification::default();
        let denial = context.check("SELECT 1", &classification).unwrap_err();
        assert_eq!(
            denial.reason,
            "masking rule public.customers.email of role \"support\" matches no column on the target (a renamed or dropped table or column?): timebox refuses this role's statements until the rule or the target is fixed"
        );
        assert_eq!(denial.hint, UNMATCHED_HINT);
        let matched = MaskSnapshot::from_rows(
            &[rule],
            &[
                vec![row(&["0", "100", "public", "customers", "2", "t", "email"])],
                vec![],
                vec![row(&["100", "public", "customers"])],
            ],
        )
        .unwrap();
        context.entry.replace_snapshot(matched);
        assert_eq!(context.check("SELECT 1", &classification), Ok(Vec::new()));
    }

    /// Regression (s7): in one Query string, a statement that changes something after one that may
    /// return rows would run even when timebox refused those rows.
    #[test]
    fn a_query_string_that_runs_on_after_rows_is_refused() {
        let verdict = |sql: &str| {
            let classification = crate::policy::classify(sql);
            runs_on_after_rows(sql, &classification).map(|(rows, after)| format!("{after} after {rows}"))
        };
        for (sql, expected) in [
            (
                "SELECT email FROM customers; UPDATE customers SET name = 'x' WHERE id = 2",
                Some("UPDATE after SELECT"),
            ),
            ("SELECT 1; COMMIT", Some("COMMIT after SELECT")),
            (
                "BEGIN; UPDATE t SET a = 1 WHERE a = 2; SELECT 1; COMMIT",
                Some("COMMIT after SELECT"),
            ),
            (
                "BEGIN; SELECT 1; ROLLBACK TO SAVEPOINT s",
                Some("ROLLBACK TO SAVEPOINT after SELECT"),
            ),
            (
                "TABLE customers; SET search_path = public",
                Some("SET after SELECT"),
            ),
            ("SELECT 1; SELECT public.f()", Some("SELECT after SELECT")),
            (
                "UPDATE t SET a = 1 RETURNING a; DELETE FROM t WHERE a = 2",
                Some("DELETE after UPDATE"),
            ),
            ("FETCH 1 FROM c; CLOSE c", Some("CLOSE after FETCH")),
            // Rows only at the end, or reads only after them.
            ("BEGIN; UPDATE t SET a = 1 WHERE a = 2; COMMIT", None),
            ("UPDATE t SET a = 1 WHERE a = 2; SELECT a FROM t", None),
            (
                "SELECT 1; SELECT 2; VALUES (3); SHOW search_path; EXPLAIN SELECT 4",
                None,
            ),
            ("SET search_path = public; SELECT 1", None),
            (
                "BEGIN; DECLARE c CURSOR FOR SELECT 1; FETCH 2 FROM c; COMMIT",
                None,
            ),
            ("BEGIN; SELECT 1; END", None),
            ("SELECT 1; ROLLBACK", None),
            ("SELECT 1", None),
            ("", None),
        ] {
            assert_eq!(verdict(sql).as_deref(), expected, "{sql}");
        }
    }
}
