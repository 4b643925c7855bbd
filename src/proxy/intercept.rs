//! Statement enforcement inside the relay: every frontend message that carries SQL or runs a
//! prepared statement is checked with the pure policy ([`crate::policy`]) before it is forwarded.
//!
//! How a denial reaches the client exactly as a failed statement would: the denied message is
//! replaced by one that makes the *upstream* fail at the same point — a Query or Parse whose text is
//! a per-session marker that does not parse. PostgreSQL then does everything a real failure does: the
//! error comes in order with pipelined work, an open transaction becomes failed, the extended
//! protocol skips to Sync, and ReadyForQuery carries the true transaction status. The relay swaps
//! that one marked ErrorResponse (recognised by the session's random marker) for timebox's readable
//! 42501 denial. The denied SQL itself never reaches the server.
//!
//! Tracks prepared statements (protocol-level Parse and SQL-level PREPARE share one namespace in
//! PostgreSQL) so that Bind and EXECUTE run only statements that were checked; unknown names are
//! denied (fail closed).
//!
//! Big statements: reading, classifying and audit-bounding a statement text costs time in proportion
//! to its length, so a Query or Parse longer than [`INLINE_CHECK_BYTES`] (unless its exact text is
//! cached) is prechecked ([`Prechecker::precheck`], pure) on the blocking pool by the relay, which
//! keeps serving expiry, kills and shutdown meanwhile, and then hands the result to
//! [`Interceptor::on_frontend_prechecked`]. A text longer than `proxy.max_statement_bytes` is not
//! classified at all: it is refused with ERROR 54000 (audited as denied) and the session goes on.
//!
//! A timebox built with the `bench-knobs` cargo feature (benchmarks only) may be configured with
//! `[bench] skip_policy = true`, which makes [`Interceptor::check_sql`] allow every statement without
//! classifying it (see [`Interceptor::bench_skip_policy`]); no other build can turn checking off.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::BytesMut;

use super::wire::PgError;
use crate::audit::event::AuditSql;
use crate::config::DEFAULT_MAX_STATEMENT_BYTES;
use crate::policy::appname::{self, Appname};
use crate::policy::{
    self, Classification, ClassifyCache, Decision, RolePolicy, ServerVersion, StatementClass, Target,
    TargetFunctions,
};
use crate::proxy::relay::mask::{BackendOutcome, Change, MaskContext, MaskJudgements};

/// Prepared statements a session may hold before new named ones are refused.
const MAX_PREPARED: usize = 10_000;

/// Query and Parse messages up to this many bytes are checked inline on the session's task; longer
/// ones, unless their exact text is in the classification cache, on the blocking pool.
pub const INLINE_CHECK_BYTES: usize = 8 * 1024;

/// What the relay does with one frontend message.
#[derive(Debug, PartialEq, Eq)]
pub enum FrontendAction {
    Forward,
    /// Send these bytes upstream instead (a denial marker).
    Replace(BytesMut),
    /// Send nothing (messages after a denial, up to Sync).
    Drop,
}

/// One checked statement (a Query or Parse message, or a Bind executing a prepared statement), for
/// audit and metrics.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The text as audited (bounded, see [`AuditSql`]).
    pub sql: Arc<AuditSql>,
    pub classification: Arc<Classification>,
    /// The class audited and counted: the classification's, or `unparsed` for a text timebox did
    /// not classify (too long, not UTF-8).
    pub class: StatementClass,
    pub denied: Option<String>,
    /// Bind parameters (text, or `\x…` hex for binary ones; `None` for NULL).
    pub params: Option<Vec<Option<String>>>,
    /// Masked columns the text may read (roles with masks; for the audit record), and whether
    /// the masking shape check is what denied it.
    pub masked: Vec<String>,
    pub mask_denied: bool,
}

/// A prepared statement as checked: its class and text.
#[derive(Debug, Clone)]
struct Prepared {
    class: StatementClass,
    sql: Arc<AuditSql>,
    classification: Arc<Classification>,
}

/// Per-session enforcement state.
#[derive(Debug)]
pub struct Interceptor {
    policy: Arc<RolePolicy>,
    grant_id: String,
    role: String,
    /// Unparseable statement text unique to this session; its syntax error marks a denial.
    marker: String,
    /// After an extended-protocol denial, drop everything up to Sync (PostgreSQL ignores it too).
    skipping_until_sync: bool,
    /// Prepared statement name → what it was checked as (protocol and SQL level).
    prepared: HashMap<String, Prepared>,
    /// Denials whose marker error has not come back from upstream yet, in order.
    denials: VecDeque<PgError>,
    /// Classifications shared by all sessions, by exact text or by literal shape (see
    /// `policy::shape`); either way a hit equals a fresh parse of the text.
    cache: Arc<ClassifyCache>,
    /// `Some` (an empty classification, given to every statement) only under the benchmark knob
    /// `[bench] skip_policy`: everything is allowed unclassified.
    skip_policy: Option<Arc<Classification>>,
    /// `proxy.max_statement_bytes`: longer texts are refused unclassified (54000).
    max_statement_bytes: usize,
    /// The target's major version (from its `server_version` at login; the oldest supported until
    /// known): constructs of the classifier's newer grammar are what this version makes of them.
    server: ServerVersion,
    /// What the target's catalog says about function names, when timebox could read it.
    target_functions: Option<Arc<TargetFunctions>>,
    /// `timebox:<user>:<grant id>`: `application_name` keeps it (see [`appname`]).
    app_tag: String,
    /// The role's column masks, if any (shape check here, rewrite in the relay).
    masking: Option<Arc<MaskContext>>,
    /// Roles with masks: the catalog copy each prepared statement and cursor was judged with.
    mask_judged: MaskJudgements,
    /// Roles with masks: what the Query being checked changes once it ran ([`Change`]).
    mask_changes: Vec<Change>,
}

impl Interceptor {
    pub fn new(policy: Arc<RolePolicy>, cache: Arc<ClassifyCache>, grant_id: &str, role: &str) -> Self {
        let nonce: [u8; 12] = rand::random();
        Interceptor {
            policy,
            grant_id: grant_id.to_owned(),
            role: role.to_owned(),
            marker: format!("timebox_denied_{}", hex::encode(nonce)),
            skipping_until_sync: false,
            prepared: HashMap::new(),
            denials: VecDeque::new(),
            cache,
            skip_policy: None,
            max_statement_bytes: DEFAULT_MAX_STATEMENT_BYTES,
            server: ServerVersion::OLDEST,
            target_functions: None,
            app_tag: appname::session_tag("?", grant_id),
            masking: None,
            mask_judged: MaskJudgements::default(),
            mask_changes: Vec::new(),
        }
    }

    /// The engineer behind the session, for the `application_name` tag it must keep.
    pub fn tagging(mut self, user: &str) -> Self {
        self.app_tag = appname::session_tag(user, &self.grant_id);
        self
    }

    /// What the `application_name` rules make of an allowed message: `None` to forward it, the
    /// statement text to send instead (the tagged `SET`), or the denial.
    fn application_name(&self, classification: &Classification) -> Result<Option<String>, PgError> {
        match appname::decide(&self.app_tag, classification) {
            Appname::Keep => Ok(None),
            Appname::Rewrite(sql) => Ok(Some(sql)),
            Appname::Deny { reason, hint } => Err(self.denial(&reason, &hint)),
        }
    }

    fn target(&self) -> Target<'_> {
        Target {
            server: self.server,
            functions: self.target_functions.as_deref(),
        }
    }

    /// The target's version, as its `server_version` ParameterStatus reported it at login (`None`
    /// or unreadable: the oldest supported).
    pub fn on_server(mut self, server_version: Option<&str>) -> Self {
        self.server = ServerVersion::of_target(server_version);
        self
    }

    /// What the target's catalog says about function names (see `policy::target_functions`);
    /// `None`: the hand-kept lists decide alone.
    pub fn with_target_functions(mut self, functions: Option<Arc<TargetFunctions>>) -> Self {
        self.target_functions = functions;
        self
    }

    /// The role's column masks (see `proxy::relay::mask`); `None`: the role masks nothing.
    pub fn with_masking(mut self, masking: Option<Arc<MaskContext>>) -> Self {
        self.masking = masking;
        self
    }

    pub fn masking(&self) -> Option<&Arc<MaskContext>> {
        self.masking.as_ref()
    }

    /// The name of the session's lock block in the extended protocol (s10): unique to the session
    /// like its denial marker, so it never names a client's statement or portal.
    pub fn lock_name(&self) -> String {
        self.marker.replacen("timebox_denied_", "timebox_lock_", 1)
    }

    /// The name of the session's prepared fingerprint read, used by its lock block (s10).
    pub fn check_name(&self) -> String {
        self.marker.replacen("timebox_denied_", "timebox_check_", 1)
    }

    /// Statement texts longer than `limit` bytes (`proxy.max_statement_bytes`) are refused with
    /// ERROR 54000 without being classified.
    pub fn max_statement_bytes(mut self, limit: usize) -> Self {
        self.max_statement_bytes = limit;
        self
    }

    /// The pure, text-sized part of this session's checks, to run elsewhere.
    pub fn prechecker(&self) -> Prechecker {
        Prechecker {
            cache: self.cache.clone(),
            max_statement_bytes: self.max_statement_bytes,
            skip_policy: self.skip_policy.clone(),
            masking: self.masking.clone(),
        }
    }

    /// True when checking this whole frontend frame may take long enough that the relay should
    /// precheck it on the blocking pool: a Query or Parse longer than [`INLINE_CHECK_BYTES`] whose
    /// exact text is not cached (only texts up to [`ClassifyCache::MAX_CACHED_TEXT`] can be).
    pub fn wants_offload(&self, tag: u8, frame: &[u8]) -> bool {
        if !matches!(tag, b'Q' | b'P') || frame.len() <= INLINE_CHECK_BYTES || self.skipping_until_sync {
            return false;
        }
        if frame.len() > ClassifyCache::MAX_CACHED_TEXT + 1024 {
            return true;
        }
        match message_text(tag, &frame[5..]) {
            (Some(_), Some(text)) if text.len() <= self.max_statement_bytes => self.cache.get(text).is_none(),
            _ => true,
        }
    }

    /// Benchmarks only: with `skip` (the config's `[bench] skip_policy`, which is always false unless
    /// timebox was built with the `bench-knobs` feature) every statement is allowed without being
    /// classified, to measure what enforcement costs. Prepared statements are still tracked so that
    /// their executions are audited with their text.
    pub fn bench_skip_policy(mut self, skip: bool) -> Self {
        self.skip_policy = skip.then(|| {
            Arc::new(Classification {
                statements: Vec::new(),
            })
        });
        self
    }

    /// True when `frame` (a whole backend ErrorResponse) is the upstream's answer to a denial marker.
    pub fn is_marker_error(&self, frame: &[u8]) -> bool {
        !self.denials.is_empty()
            && frame
                .windows(self.marker.len())
                .any(|w| w == self.marker.as_bytes())
    }

    /// The ErrorResponse to send in place of the next marker error.
    pub fn take_denial(&mut self) -> BytesMut {
        let error = self
            .denials
            .pop_front()
            .unwrap_or_else(|| PgError::insufficient_privilege("timebox: statement denied"));
        error.to_bytes()
    }

    fn denial(&self, reason: &str, hint: &str) -> PgError {
        let error = PgError::insufficient_privilege(format!("timebox: {reason}"))
            .non_fatal()
            .with_detail(format!("Grant {} (role {}).", self.grant_id, self.role));
        if hint.is_empty() {
            error
        } else {
            error.with_hint(hint)
        }
    }

    /// The classification, the class to audit and the denial, if any, of a prechecked text.
    /// Roles with masks: a masking refusal found here is kept in `pre.mask_denial` (s8: an
    /// `EXECUTE` or `FETCH` of something judged with another copy of the catalog).
    fn judge(&mut self, pre: &mut Precheck) -> (Arc<Classification>, StatementClass, Option<PgError>) {
        let unclassified = || Arc::new(Classification::default());
        match &pre.text {
            TextCheck::Classified(c) => {
                let (c, mut denial) = self.check_sql(c.clone());
                if let (None, None, Some(m), Some(text)) =
                    (&denial, &pre.mask_denial, &self.masking, &pre.masked_text)
                {
                    let parse = pre.name.as_deref();
                    let judged = crate::proxy::relay::lock_prelude::temporary_schema_refusal(text, &m.role)
                        .map_or(Ok(()), Err)
                        .and_then(|()| parse.map_or(Ok(()), |name| self.mask_judged.parse_allowed(m, name)))
                        .and_then(|()| self.mask_judged.on_text(m, text, &c, parse.is_some()));
                    match judged {
                        Ok(changes) => self.mask_changes = changes,
                        Err(d) => pre.mask_denial = Some(d),
                    }
                }
                if let (None, Some(d)) = (&denial, &pre.mask_denial) {
                    denial = Some(self.denial(&d.reason, d.hint));
                }
                if denial.is_none() && self.skip_policy.is_none() {
                    self.record_prepared(&pre.sql, &c);
                }
                let class = c.class();
                (c, class, denial)
            }
            TextCheck::Unreadable => (
                unclassified(),
                StatementClass::Unparsed,
                Some(self.denial(
                    "the statement text is not valid UTF-8",
                    "timebox checks statements as UTF-8 text; use client_encoding UTF8.",
                )),
            ),
            TextCheck::TooLong(bytes) => (
                unclassified(),
                StatementClass::Unparsed,
                Some(PgError::statement_too_long(*bytes, self.max_statement_bytes)),
            ),
            TextCheck::Failed => (
                unclassified(),
                StatementClass::Unparsed,
                Some(self.denial(
                    "the statement could not be checked",
                    "Try again; tell the timebox administrators if it persists.",
                )),
            ),
        }
    }

    /// Checks classified SQL text against the role, including EXECUTE of prepared statements.
    /// Returns the classification and the denial, if any ([`Interceptor::record_prepared`]
    /// updates the prepared-statement namespace once every check passed).
    fn check_sql(&mut self, classification: Arc<Classification>) -> (Arc<Classification>, Option<PgError>) {
        if self.skip_policy.is_some() {
            return (classification, None);
        }
        if let Decision::Deny { reason, hint } =
            policy::authorize_all_in(&self.policy, self.target(), &classification)
        {
            return (classification, Some(self.denial(&reason, &hint)));
        }
        // Statements whose effect depends on session state the classifier cannot see.
        for stmt in &classification.statements {
            if let Some(name) = &stmt.execute_name {
                match self.prepared.get(name).map(|p| p.class) {
                    None => {
                        let e = self.denial(
                            &format!("EXECUTE of prepared statement \"{name}\", which timebox did not see prepared"),
                            "Prepare the statement in this session through timebox first.",
                        );
                        return (classification, Some(e));
                    }
                    Some(class) if !self.policy.allows(class) => {
                        let e = self.denial(
                            &format!(
                                "EXECUTE of prepared statement \"{name}\", a {} statement, is not allowed for role {}",
                                class.as_str(),
                                self.role
                            ),
                            &format!("Request a grant whose role allows {} statements.", class.as_str()),
                        );
                        return (classification, Some(e));
                    }
                    Some(_) => {}
                }
            }
        }
        let new_names = classification
            .statements
            .iter()
            .filter_map(|s| s.prepare_name.as_ref())
            .filter(|n| !self.prepared.contains_key(*n))
            .count();
        if new_names > 0 && self.prepared.len() + new_names > MAX_PREPARED {
            return (
                classification.clone(),
                Some(self.denial(
                    &format!("too many prepared statements in this session ({MAX_PREPARED})"),
                    "DEALLOCATE statements you no longer need.",
                )),
            );
        }
        (classification, None)
    }

    /// Records what an allowed text's `PREPARE` and `DEALLOCATE` statements do to the prepared
    /// namespace — only once every check passed (s11 sixth attack: a `PREPARE` of an existing
    /// name, refused for a role with masks, had already replaced the text a later Bind of that
    /// name was audited with, and locked).
    fn record_prepared(&mut self, sql: &Arc<AuditSql>, classification: &Arc<Classification>) {
        for stmt in &classification.statements {
            if let Some(name) = &stmt.prepare_name {
                self.prepared.insert(
                    name.clone(),
                    Prepared {
                        class: stmt.class,
                        sql: sql.clone(),
                        classification: classification.clone(),
                    },
                );
            }
            match &stmt.deallocate {
                Some(policy::Deallocate::All) => self.prepared.clear(),
                Some(policy::Deallocate::Name(name)) => {
                    self.prepared.remove(name);
                }
                None => {}
            }
        }
    }

    fn deny_with_query_marker(&mut self, error: PgError) -> FrontendAction {
        self.denials.push_back(error);
        let mut out = BytesMut::new();
        postgres_protocol::message::frontend::query(&self.marker, &mut out).expect("marker has no NUL");
        FrontendAction::Replace(out)
    }

    /// A Parse refused: its marker (an unnamed Parse) goes instead.
    fn deny_parse(&mut self, error: PgError) -> FrontendAction {
        if let Some(m) = &self.masking {
            self.mask_judged.parse_sent(m, "", None);
        }
        self.deny_with_parse_marker(error)
    }

    /// Roles with masks: what the backend answered to earlier Queries and Parses (from the
    /// relay's result masking), so that judgements are kept only for what PostgreSQL did.
    pub fn on_backend_outcomes(&mut self, outcomes: impl Iterator<Item = BackendOutcome>) {
        for outcome in outcomes {
            self.mask_judged.on_backend(outcome);
        }
    }

    fn deny_with_parse_marker(&mut self, error: PgError) -> FrontendAction {
        self.denials.push_back(error);
        self.skipping_until_sync = true;
        let mut out = BytesMut::new();
        postgres_protocol::message::frontend::parse("", &self.marker, std::iter::empty(), &mut out)
            .expect("marker has no NUL");
        FrontendAction::Replace(out)
    }

    /// Decides what to do with one complete frontend message (`frame` includes tag and length).
    /// `checked` receives the statement checked, if the message carried one.
    pub fn on_frontend(&mut self, tag: u8, frame: &[u8], checked: &mut Option<Checked>) -> FrontendAction {
        self.on_frontend_prechecked(tag, frame, None, checked)
    }

    /// [`Interceptor::on_frontend`] with the [`Precheck`] of a Query or Parse frame already made
    /// (on the blocking pool, see [`Interceptor::wants_offload`]); `None` prechecks inline.
    pub fn on_frontend_prechecked(
        &mut self,
        tag: u8,
        frame: &[u8],
        precheck: Option<Precheck>,
        checked: &mut Option<Checked>,
    ) -> FrontendAction {
        if self.skipping_until_sync {
            if tag == b'S' {
                self.skipping_until_sync = false;
                return FrontendAction::Forward;
            }
            if let Some(m) = &self.masking {
                // The relay's result masking counts every client Query and Parse, these
                // included (the server skips them after the marker's error): so do the judgements.
                match tag {
                    b'Q' | b'F' => self.mask_judged.query_sent(Vec::new()),
                    b'P' => self.mask_judged.parse_sent(m, "", None),
                    _ => {}
                }
            }
            return FrontendAction::Drop;
        }
        let body = &frame[5..];
        match tag {
            b'Q' => self.on_query(tag, frame, precheck, checked),
            b'P' => self.on_parse(tag, frame, body, precheck, checked),
            b'B' => self.on_bind(body, checked),
            b'C' => self.on_close(body),
            b'F' => self.on_function_call(),
            b'D' | b'E' if self.masking.is_some() => self.on_portal_use(tag, body),
            _ => FrontendAction::Forward,
        }
    }

    /// The statement with timebox's tag kept in a `SET application_name`, if it is one and
    /// nothing denied it yet; a refused change becomes the denial.
    fn tag_application_name(
        &self,
        classification: &Classification,
        denial: &mut Option<PgError>,
    ) -> Option<String> {
        if denial.is_some() {
            return None;
        }
        match self.application_name(classification) {
            Ok(rewritten) => rewritten,
            Err(e) => {
                *denial = Some(e);
                None
            }
        }
    }

    /// Query: checked (and its `SET application_name` tagged) before it goes.
    fn on_query(
        &mut self,
        tag: u8,
        frame: &[u8],
        precheck: Option<Precheck>,
        checked: &mut Option<Checked>,
    ) -> FrontendAction {
        let mut pre = precheck.unwrap_or_else(|| self.prechecker().precheck(tag, frame));
        let (classification, class, mut denial) = self.judge(&mut pre);
        if denial.is_none() && self.masking.is_some() {
            if let Some((message, hint)) = super::relay::wrap::string_refusal(&classification.statements) {
                denial = Some(self.denial(&message, hint));
            }
        }
        let rewritten = self.tag_application_name(&classification, &mut denial);
        *checked = Some(Checked {
            sql: pre.sql,
            classification,
            class,
            denied: denial.as_ref().map(|e| e.message.clone()),
            params: None,
            masked: pre.masked.clone(),
            mask_denied: pre.mask_denial.is_some() && denial.is_some(),
        });
        let changes = std::mem::take(&mut self.mask_changes);
        if self.masking.is_some() {
            self.mask_judged
                .query_sent(if denial.is_some() { Vec::new() } else { changes });
        }
        match (denial, rewritten) {
            (Some(e), _) => self.deny_with_query_marker(e),
            (None, None) => FrontendAction::Forward,
            (None, Some(sql)) => {
                let mut out = BytesMut::new();
                postgres_protocol::message::frontend::query(&sql, &mut out)
                    .expect("a generated SET has no NUL");
                FrontendAction::Replace(out)
            }
        }
    }

    /// Parse: checked, and its statement remembered under its name for later Binds.
    fn on_parse(
        &mut self,
        tag: u8,
        frame: &[u8],
        body: &[u8],
        precheck: Option<Precheck>,
        checked: &mut Option<Checked>,
    ) -> FrontendAction {
        let mut pre = precheck.unwrap_or_else(|| self.prechecker().precheck(tag, frame));
        let (classification, class, mut denial) = self.judge(&mut pre);
        let mut mask_denied = pre.mask_denial.is_some();
        if let (None, Some(m)) = (&denial, &self.masking) {
            if let Some(why) = policy::mask_shape::parameter_type_refusal(&parse_param_types(body)) {
                let reason = format!("role \"{}\" masks columns, and {why}", m.role);
                denial = Some(self.denial(
                    &reason,
                    "Leave the parameter's type unspecified (0) or use a built-in type, and cast in the text if needed.",
                ));
                mask_denied = true;
            }
        }
        if denial.is_none() && classification.statements.len() > 1 {
            // PostgreSQL refuses these too; refusing here keeps the prepared namespace exact.
            denial = Some(self.denial(
                "a prepared statement must contain a single SQL statement",
                "Send one statement per Parse message.",
            ));
        }
        let rewritten = self.tag_application_name(&classification, &mut denial);
        *checked = Some(Checked {
            sql: pre.sql.clone(),
            classification: classification.clone(),
            class,
            denied: denial.as_ref().map(|e| e.message.clone()),
            params: None,
            masked: pre.masked.clone(),
            mask_denied: mask_denied && denial.is_some(),
        });
        let name = pre.name;
        match (denial, name) {
            (None, Some(name)) => {
                if !name.is_empty()
                    && self.prepared.len() >= MAX_PREPARED
                    && !self.prepared.contains_key(&name)
                {
                    let e = self.denial(
                        &format!("too many prepared statements in this session ({MAX_PREPARED})"),
                        "Close statements you no longer need.",
                    );
                    return self.deny_parse(e);
                }
                let replaced = rewritten.map(|text| {
                    // The same Parse (name, parameter types) with the tagged SET as its text.
                    let param_types = cstr(body)
                        .and_then(|(_, rest)| cstr(rest))
                        .map_or(&[][..], |(_, types)| types);
                    let mut out = BytesMut::new();
                    super::wire::frame(&mut out, b'P', |b| {
                        b.extend_from_slice(name.as_bytes());
                        b.extend_from_slice(&[0]);
                        b.extend_from_slice(text.as_bytes());
                        b.extend_from_slice(&[0]);
                        b.extend_from_slice(param_types);
                    });
                    out
                });
                if let (Some(m), Some(text)) = (&self.masking, &pre.masked_text) {
                    let relations: Vec<policy::classify::Relation> = classification
                        .statements
                        .iter()
                        .flat_map(|s| s.relations.iter().cloned())
                        .collect();
                    self.mask_judged.parse_sent(m, &name, Some((text, &relations)));
                }
                self.prepared.insert(
                    name,
                    Prepared {
                        class: classification.class(),
                        sql: pre.sql,
                        classification,
                    },
                );
                match replaced {
                    None => FrontendAction::Forward,
                    Some(out) => FrontendAction::Replace(out),
                }
            }
            (denial, name) => {
                if let Some(name) = name {
                    self.prepared.remove(&name);
                }
                let e = denial.unwrap_or_else(|| self.denial("the statement could not be checked", ""));
                self.deny_parse(e)
            }
        }
    }

    /// Bind: runs only a statement this session's Parse checked (audited with its parameters).
    fn on_bind(&mut self, body: &[u8], checked: &mut Option<Checked>) -> FrontendAction {
        let statement = cstr(body).and_then(|(_portal, rest)| cstr(rest));
        let known = statement
            .and_then(|(s, _)| std::str::from_utf8(s).ok())
            .and_then(|s| self.prepared.get(s).cloned());
        match known {
            Some(p) => {
                // Roles with masks: the statement runs on the catalog as it is now (s8).
                let name = statement.map_or("", |(s, _)| std::str::from_utf8(s).unwrap_or_default());
                let portal =
                    cstr(body).map_or(String::new(), |(p, _)| String::from_utf8_lossy(p).into_owned());
                let masking = match &self.masking {
                    Some(m) => self.mask_judged.bind(m, &portal, name).err(),
                    None => None,
                };
                let denial = masking.map(|d| self.denial(&d.reason, d.hint));
                // Each Bind is one execution of a checked statement: audit it with its parameters.
                *checked = Some(Checked {
                    sql: p.sql,
                    class: p.class,
                    classification: p.classification,
                    denied: denial.as_ref().map(|e| e.message.clone()),
                    params: statement.and_then(|(_, rest)| bind_params(rest)),
                    masked: Vec::new(),
                    mask_denied: denial.is_some(),
                });
                match denial {
                    Some(e) => self.deny_with_parse_marker(e),
                    None => FrontendAction::Forward,
                }
            }
            // Benchmark knob: allowed too (e.g. a statement from an SQL-level PREPARE).
            None if self.skip_policy.is_some() => FrontendAction::Forward,
            None => {
                let name = statement
                    .map(|(s, _)| String::from_utf8_lossy(s).into_owned())
                    .unwrap_or_default();
                let e = self.denial(
                    &format!("Bind of prepared statement \"{name}\", which timebox did not check"),
                    "Prepare the statement in this session through timebox first.",
                );
                self.deny_with_parse_marker(e)
            }
        }
    }

    /// Close: a closed statement name is forgotten.
    fn on_close(&mut self, body: &[u8]) -> FrontendAction {
        // Close: 'S' statement or 'P' portal, then the name.
        if body.first() == Some(&b'S') {
            if let Some((name, _)) = cstr(&body[1..]) {
                let name = String::from_utf8_lossy(name);
                self.prepared.remove(&*name);
                self.mask_judged.closed(&name);
            }
        } else if let Some((name, _)) = cstr(body.get(1..).unwrap_or_default()) {
            self.mask_judged.closed_portal(&String::from_utf8_lossy(name));
        }
        FrontendAction::Forward
    }

    /// Roles with masks: a Describe of a portal or an Execute reads a portal this session bound,
    /// or a SQL cursor under the rules of `FETCH` (s8; see [`MaskJudgements::use_portal`]).
    fn on_portal_use(&mut self, tag: u8, body: &[u8]) -> FrontendAction {
        let name = match tag {
            b'D' if body.first() != Some(&b'P') => return FrontendAction::Forward,
            b'D' => cstr(&body[1..]),
            _ => cstr(body),
        };
        let name = name
            .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
            .unwrap_or_default();
        let Some(m) = &self.masking else {
            return FrontendAction::Forward;
        };
        match self.mask_judged.use_portal(m, &name) {
            Ok(()) => FrontendAction::Forward,
            Err(d) => {
                let e = self.denial(&d.reason, d.hint);
                self.deny_with_parse_marker(e)
            }
        }
    }

    /// FunctionCall (the fast path): admin roles only.
    fn on_function_call(&mut self) -> FrontendAction {
        if self.masking.is_some() {
            // Answered like a Query (its ReadyForQuery ends it).
            self.mask_judged.query_sent(Vec::new());
        }
        if self.masking.is_some() {
            // s9 attack: the fast path calls any function by OID (`query_to_xml` runs any query),
            // and its answer is not a row timebox masks: hidden code, refused like DO and CALL.
            let e = self.denial(
                "FunctionCall messages (the fast-path function interface) are not allowed for roles with masks",
                "Call functions with SELECT instead.",
            );
            self.deny_with_query_marker(e)
        } else if self.skip_policy.is_some() || self.policy.allows(StatementClass::Admin) {
            FrontendAction::Forward
        } else {
            let e = self.denial(
                "FunctionCall messages (the fast-path function interface) are not allowed for this role",
                "Call functions with SELECT instead; the fast path needs a grant with role admin.",
            );
            self.deny_with_query_marker(e)
        }
    }
}

/// Splits a NUL-terminated string off the front of `b`.
fn cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = b.iter().position(|&c| c == 0)?;
    Some((&b[..nul], &b[nul + 1..]))
}

mod params;
mod relations;
use params::{bind_params, parse_param_types};

mod precheck;
use precheck::{message_text, TextCheck};
pub use precheck::{Precheck, Prechecker};

#[cfg(test)]
mod tests;
