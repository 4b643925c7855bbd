//! The text-sized part of checking a Query or Parse message ([`Prechecker::precheck`]): reading
//! the text, classifying it, building its audit form and, for roles with masks, its masking shape
//! check. Pure apart from the shared classification cache, so the relay may run it on the blocking
//! pool; [`super::Interceptor`] judges its result.

use std::sync::Arc;

use super::cstr;
use crate::audit::event::AuditSql;
use crate::policy::mask_shape::MaskDenial;
use crate::policy::{Classification, ClassifyCache};
use crate::proxy::relay::mask::MaskContext;

/// The part of checking a Query or Parse message whose cost grows with its text: reading the text,
/// classifying it and building its audit form. Pure apart from the shared classification cache, so
/// the relay can run it on the blocking pool ([`Interceptor::wants_offload`]).
#[derive(Debug, Clone)]
pub struct Prechecker {
    pub(super) cache: Arc<ClassifyCache>,
    pub(super) max_statement_bytes: usize,
    pub(super) skip_policy: Option<Arc<Classification>>,
    /// The role's column masks: each text also gets the masking shape check.
    pub(super) masking: Option<Arc<MaskContext>>,
}

/// What [`Prechecker::precheck`] found in one Query or Parse message.
#[derive(Debug)]
pub struct Precheck {
    /// The Parse message's statement name (empty for the unnamed one); `None` for a Query or an
    /// unreadable Parse.
    pub(super) name: Option<String>,
    pub(super) sql: Arc<AuditSql>,
    pub(super) text: TextCheck,
    /// The masking shape check's denial (roles with masks), or the masked columns it may read.
    pub(super) mask_denial: Option<MaskDenial>,
    pub(super) masked: Vec<String>,
    /// Roles with masks: the text, for [`MaskJudgements`] (a prepared statement's text is checked
    /// again when it runs on another copy of the catalog).
    pub(super) masked_text: Option<Arc<str>>,
}

#[derive(Debug)]
pub(super) enum TextCheck {
    Classified(Arc<Classification>),
    /// Not valid UTF-8, or not a well-formed message body.
    Unreadable,
    /// Longer than `proxy.max_statement_bytes` (its length): never classified.
    TooLong(usize),
    /// Checking failed inside timebox (the precheck task died): refused.
    Failed,
}

impl Prechecker {
    /// Reads, bounds and classifies the text of a whole Query (`Q`) or Parse (`P`) frame.
    pub fn precheck(&self, tag: u8, frame: &[u8]) -> Precheck {
        let body = frame.get(5..).unwrap_or_default();
        let (name, text) = message_text(tag, body);
        let (Some(name), Some(text)) = (name, text) else {
            let raw = if tag == b'P' {
                cstr(body)
                    .and_then(|(_, rest)| cstr(rest))
                    .map_or(body, |(s, _)| s)
            } else {
                cstr(body).map_or(body, |(s, _)| s)
            };
            return Precheck {
                name: None,
                sql: Arc::new(AuditSql::of(&String::from_utf8_lossy(raw))),
                text: TextCheck::Unreadable,
                mask_denial: None,
                masked: Vec::new(),
                masked_text: None,
            };
        };
        let sql = Arc::new(AuditSql::of(text));
        let text = if text.len() > self.max_statement_bytes {
            TextCheck::TooLong(text.len())
        } else if let Some(unclassified) = &self.skip_policy {
            TextCheck::Classified(unclassified.clone())
        } else {
            TextCheck::Classified(self.cache.classify(text))
        };
        let (mask_denial, masked) = match (&self.masking, &text) {
            (Some(m), TextCheck::Classified(c)) => match m.check(text_sql(tag, frame), c) {
                Ok(masked) => (None, masked),
                Err(d) => (Some(d), Vec::new()),
            },
            _ => (None, Vec::new()),
        };
        let masked_text = matches!(text, TextCheck::Classified(_))
            .then_some(())
            .and(self.masking.as_ref())
            .map(|_| Arc::from(text_sql(tag, frame)));
        Precheck {
            name: (tag == b'P').then(|| name.to_owned()),
            sql,
            text,
            mask_denial,
            masked,
            masked_text,
        }
    }

    /// The precheck of a message whose check could not run (audited by its length only).
    pub fn failed(frame_len: usize) -> Precheck {
        Precheck {
            name: None,
            sql: Arc::new(AuditSql {
                text: String::new(),
                truncated: Some((frame_len as u64, String::new())),
                hidden: Vec::new(),
            }),
            text: TextCheck::Failed,
            mask_denial: None,
            masked: Vec::new(),
            masked_text: None,
        }
    }
}

/// The statement name (Parse; `""` for Query) and text of a Query or Parse body, each `None` when
/// not valid UTF-8 or not NUL-terminated.
pub(super) fn message_text(tag: u8, body: &[u8]) -> (Option<&str>, Option<&str>) {
    fn utf8(b: &[u8]) -> Option<&str> {
        std::str::from_utf8(b).ok()
    }
    if tag == b'P' {
        match cstr(body) {
            Some((name, rest)) => (utf8(name), cstr(rest).and_then(|(s, _)| utf8(s))),
            None => (None, None),
        }
    } else {
        (Some(""), cstr(body).and_then(|(s, _)| utf8(s)))
    }
}

/// The statement text of a whole Query or Parse frame already read as UTF-8 (empty otherwise).
pub(super) fn text_sql(tag: u8, frame: &[u8]) -> &str {
    message_text(tag, frame.get(5..).unwrap_or_default())
        .1
        .unwrap_or("")
}
