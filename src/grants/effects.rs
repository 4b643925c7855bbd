//! What every grant and request change leaves behind: its audit record, then its webhook notifications.
//!
//! Where it sits: [`super::GrantService`] and [`super::requests::RequestService`] hold an [`Effects`]
//! from construction and call it for every change they make, so each of their callers (admin API, CLI
//! through it, demo, tests, a future fleet sync) is audited and announced without remembering to; the
//! HTTP handlers only translate HTTP. [`Effects::record`] is the one "record or refuse" path: a change
//! whose record cannot be written is answered with [`Unrecorded`] (503 `audit_unavailable` on the API,
//! its message saying what did happen) and is not announced. It must never put a token in a record or
//! a notification.

use std::sync::Arc;

use crate::audit::{AuditError, AuditEvent, AuditLog};
use crate::clock::Clock;
use crate::webhooks::{Notification, WebhookEvent, Webhooks};

/// The refusal of a change whose record could not be written, when nothing more specific applies.
pub const AUDIT_UNAVAILABLE: &str = "the audit log is unavailable";

/// A change was made (or half made) but its audit record could not be written; the caller is refused.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Unrecorded {
    /// For a person: what did happen (e.g. the grant exists but its token is withheld).
    pub message: String,
    #[source]
    pub source: AuditError,
}

/// The audit trail and the webhooks, as the services use them. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Effects {
    audit: AuditLog,
    webhooks: Arc<Webhooks>,
    clock: Arc<dyn Clock>,
}

impl Effects {
    pub fn new(audit: AuditLog, webhooks: Arc<Webhooks>, clock: Arc<dyn Clock>) -> Self {
        Effects {
            audit,
            webhooks,
            clock,
        }
    }

    /// Records `events` (in order, one batch) as durably as the audit level promises and visible to
    /// queries; if the log refuses, the caller gets `refusal()` as an [`Unrecorded`].
    pub async fn record(
        &self,
        events: Vec<AuditEvent>,
        refusal: impl FnOnce() -> String,
    ) -> Result<(), Unrecorded> {
        self.audit.record(events).await.map_err(|source| Unrecorded {
            message: refusal(),
            source,
        })
    }

    /// Queues a notification for the webhooks that want `event`, stamped now. Never waits.
    pub fn notify(&self, event: WebhookEvent, text: String, fields: serde_json::Value) {
        self.webhooks
            .notify(Notification::new(event, text, fields, self.clock.now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditOptions, AuthFailure};
    use crate::clock::SystemClock;
    use crate::config::{AuditConfig, Durability, ParamLogging, StoreConfig};
    use crate::metrics::Metrics;

    fn event() -> AuditEvent {
        AuditEvent::AuthFailure(AuthFailure {
            client_addr: "127.0.0.1:1".into(),
            reason: "test".into(),
            target: "shop".into(),
            user: "alice".into(),
        })
    }

    #[tokio::test]
    async fn a_refused_record_is_the_callers_refusal_with_the_audit_error_kept() {
        let config = AuditConfig {
            durability: Durability::Write,
            jsonl: None,
            params: ParamLogging::Redacted,
            jsonl_max_bytes: 1 << 20,
            jsonl_keep: 1,
            retain: None,
        };
        let (audit, writer) =
            AuditLog::open_with(AuditOptions::from_config(&config, &StoreConfig::SqliteMemory)).unwrap();
        let webhooks = Arc::new(Webhooks::new(Vec::new(), Arc::new(Metrics::new().unwrap())));
        let effects = Effects::new(audit.clone(), webhooks, Arc::new(SystemClock));
        effects.record(vec![event()], || unreachable!()).await.unwrap();
        assert_eq!(audit.head().seq, 1);

        writer.shutdown().await;
        let refused = effects
            .record(vec![event()], || "grant g_1 was revoked but …".into())
            .await
            .unwrap_err();
        assert_eq!(refused.to_string(), "grant g_1 was revoked but …");
        assert!(
            matches!(refused.source, AuditError::Closed),
            "{:?}",
            refused.source
        );
    }
}
