//! Role review and policy replay: least privilege from the evidence in the audit trail.
//!
//! Data flow: [`trail`] reads the statement records of a time window (with each session's role
//! from its `session_start` record) out of the audit database; [`roles::review`] folds them into
//! what each role actually used (classes, tables, functions, settings, denials) and a suggested
//! narrower definition; [`replay::replay`] decides every recorded statement again under candidate
//! roles with the same parser, cache and checks the relay uses ([`crate::policy`]) and reports the
//! decisions that would change. Both are pure over the records they are given, so the admin API
//! and the tests ask the same question the same way; nothing here writes anything.

pub mod replay;
pub mod roles;
pub mod trail;

use chrono::{DateTime, Utc};

use crate::audit::event::Decision;

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("cannot read the audit database {path}: {source}")]
    Trail {
        path: std::path::PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("audit record {seq} is not readable: {source}")]
    Record {
        seq: u64,
        #[source]
        source: serde_json::Error,
    },
}

/// Which records to look at.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// Records at or after this instant.
    pub since: Option<DateTime<Utc>>,
    pub target: Option<String>,
    /// The role of the session at the time (its `session_start` record).
    pub role: Option<String>,
}

/// One statement record, with the role its session ran under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedStatement {
    pub seq: u64,
    pub ts: DateTime<Utc>,
    pub session_id: String,
    pub grant_id: String,
    pub user: String,
    pub target: String,
    /// `None` when the session's start is not in the trail (e.g. pruned).
    pub role: Option<String>,
    /// As recorded: redacted, and only the start of the text when `truncated`.
    pub sql: String,
    pub truncated: bool,
    pub class: String,
    pub decision: Decision,
    pub reason: Option<String>,
    pub relations: Vec<String>,
}
