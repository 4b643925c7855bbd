//! A masked role's session context (issue 15, s6): its masks, the target's catalog snapshot entry
//! and the `hash` key, shared by the interceptor (the pre-execution shape check, after the snapshot
//! is confirmed current) and the relay (the rewrite). Never checks a statement against a snapshot
//! it could not confirm.

use std::sync::Arc;

use crate::config::{Credential, Masking, Target};
use crate::masking::MaskKey;
use crate::policy::mask_shape::{self, MaskDenial, MaskScope};
use crate::policy::Classification;
use crate::proxy::target_catalog::{MaskEntry, MaskSource};
use crate::proxy::wire::PgError;
use crate::proxy::ProxyContext;

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

    /// The pre-execution shape check of one statement text, with the snapshot's rules (inherited
    /// tables included) and views when one was read.
    pub fn check(&self, sql: &str, classification: &Classification) -> Result<Vec<String>, MaskDenial> {
        if self.unconfirmed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(MaskDenial {
                reason: format!(
                    "role \"{}\" masks columns, and timebox could not confirm that its copy of the target's catalog is current",
                    self.role
                ),
                hint: UNCONFIRMED_HINT,
            });
        }
        let snapshot = self.entry.current();
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
        mask_shape::check(sql, &scope)
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
mod tests {
    use super::*;
    use crate::config::{MaskFilters, MaskRule};
    use crate::masking::MaskMethod;

    /// Regression (s6): a statement checked after the snapshot could not be confirmed current
    /// is refused, whatever it is; the next confirmed one is checked as usual.
    #[test]
    fn an_unconfirmed_snapshot_refuses_the_statement() {
        let context = MaskContext {
            role: "support".into(),
            masking: Masking {
                columns: vec![MaskRule {
                    schema: "public".into(),
                    table: "customers".into(),
                    column: "email".into(),
                    method: MaskMethod::Email,
                }],
                filters: MaskFilters::default(),
            },
            entry: Arc::new(MaskEntry::holding(None)),
            key: MaskKey::derive(&[1; 32]),
            unconfirmed: true.into(),
        };
        let classification = Classification::default();
        let denial = context.check("SELECT 1", &classification).unwrap_err();
        assert!(denial.reason.contains("could not confirm"), "{}", denial.reason);
        context
            .unconfirmed
            .store(false, std::sync::atomic::Ordering::Release);
        assert_eq!(context.check("SELECT 1", &classification), Ok(Vec::new()));
    }
}
