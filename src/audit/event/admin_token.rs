//! The audit events of store admin tokens ([`crate::grants::admin_tokens`]): issued and revoked,
//! with who did it. Fields in alphabetical order (the canonical payload, see [`super`]). They must
//! never carry a token, its hash or its verifier.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::grants::admin_tokens::AdminTokenRecord;

/// An admin-API token was issued into the store. Never carries the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminTokenIssued {
    pub created_at: DateTime<Utc>,
    /// Who issued it (the actor).
    pub created_by: String,
    /// `None`: until revoked.
    pub expires_at: Option<DateTime<Utc>>,
    /// The principal the token authenticates.
    pub name: String,
    pub roles: Vec<String>,
}

/// A store admin token was revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminTokenRevoked {
    pub name: String,
    pub revoked_at: DateTime<Utc>,
    /// Who revoked it (the actor).
    pub revoked_by: String,
}

impl AdminTokenIssued {
    /// The event for a token just stored.
    pub fn of(r: &AdminTokenRecord) -> Self {
        AdminTokenIssued {
            created_at: r.created_at,
            created_by: r.created_by.clone(),
            expires_at: r.expires_at,
            name: r.name.clone(),
            roles: r.roles.iter().map(|r| r.as_str().to_owned()).collect(),
        }
    }
}

/// One event of each kind here, every optional field filled (for the event tests).
#[cfg(test)]
pub(crate) fn samples(t0: DateTime<Utc>) -> Vec<super::AuditEvent> {
    vec![
        super::AuditEvent::AdminTokenIssued(AdminTokenIssued {
            created_at: t0,
            created_by: "ops".into(),
            expires_at: Some(t0 + chrono::Duration::days(30)),
            name: "ci-bot".into(),
            roles: vec!["admin".into(), "auditor".into()],
        }),
        super::AuditEvent::AdminTokenRevoked(AdminTokenRevoked {
            name: "ci-bot".into(),
            revoked_at: t0,
            revoked_by: "ops".into(),
        }),
    ]
}

/// The indexed columns of these events: the principal's name as the user (a requester's name is
/// its PostgreSQL user name).
pub(super) fn columns(name: &str) -> super::Columns {
    super::Columns {
        user: Some(name.to_owned()),
        ..super::Columns::default()
    }
}
