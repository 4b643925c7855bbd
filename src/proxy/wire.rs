//! PostgreSQL wire-protocol pieces the proxy needs, and nothing more.
//!
//! Builds the backend messages timebox itself sends to clients (authentication, errors, notices and
//! BackendKeyData are pgwire's message types; ParameterStatus stays by hand because it relays
//! upstream values longer than pgwire accepts), parses startup-phase packets, and tracks frame
//! boundaries in both directions without decoding frame bodies: the relay forwards backend bytes untouched and only needs to know
//! where one frame ends (to inject a notice or a FATAL cleanly) and when ReadyForQuery passes.

use bytes::{BufMut, Bytes, BytesMut};
use pgwire::messages::response::{ErrorResponse, NoticeResponse};
use pgwire::messages::startup::{Authentication, BackendKeyData, SecretKey};

pub const PROTOCOL_3_0: i32 = 196_608;
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// PostgreSQL's own limit on a startup packet.
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// Frontend message types valid after authentication.
pub fn is_frontend_message_type(tag: u8) -> bool {
    matches!(
        tag,
        b'Q' | b'P' | b'B' | b'E' | b'D' | b'C' | b'H' | b'S' | b'F' | b'X' | b'd' | b'c' | b'f'
    )
}

/// One error or notice to send to a client, with its SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Notice,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "FATAL",
            Severity::Error => "ERROR",
            Severity::Warning => "WARNING",
            Severity::Notice => "NOTICE",
        }
    }
}

/// Named constructors: every refusal a client can meet, with its SQLSTATE. The first group is
/// named for PostgreSQL's condition (appendix A of its manual) and takes the message; the second
/// builds timebox's own refusals from them. Codes are written here and nowhere else.
impl PgError {
    /// FATAL `code` with `message`; private so that call sites name the condition instead.
    fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        PgError {
            severity: Severity::Fatal,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// The same error at severity ERROR: the statement (or query) fails, the session goes on.
    pub fn non_fatal(mut self) -> Self {
        self.severity = Severity::Error;
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    // ---- PostgreSQL's conditions -------------------------------------------------------------

    /// 01000 `warning` (a NoticeResponse).
    pub fn warning(message: impl Into<String>) -> Self {
        PgError {
            severity: Severity::Warning,
            code: "01000",
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// 00000 at severity NOTICE (a NoticeResponse): something the engineer should know, not an error.
    pub fn notice(message: impl Into<String>) -> Self {
        PgError {
            severity: Severity::Notice,
            code: "00000",
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// 08P01 `protocol_violation`.
    pub fn protocol_violation(message: impl Into<String>) -> Self {
        Self::fatal("08P01", message)
    }

    /// 0A000 `feature_not_supported`.
    pub fn feature_not_supported(message: impl Into<String>) -> Self {
        Self::fatal("0A000", message)
    }

    /// 28000 `invalid_authorization_specification`.
    pub fn invalid_authorization_specification(message: impl Into<String>) -> Self {
        Self::fatal("28000", message)
    }

    /// 42000 `syntax_error_or_access_rule_violation`.
    pub fn syntax_error_or_access_rule_violation(message: impl Into<String>) -> Self {
        Self::fatal("42000", message)
    }

    /// 42501 `insufficient_privilege`.
    pub fn insufficient_privilege(message: impl Into<String>) -> Self {
        Self::fatal("42501", message)
    }

    /// 53000 `insufficient_resources`.
    pub fn insufficient_resources(message: impl Into<String>) -> Self {
        Self::fatal("53000", message)
    }

    /// 53300 `too_many_connections`.
    pub fn too_many_connections(message: impl Into<String>) -> Self {
        Self::fatal("53300", message)
    }

    /// 54000 `program_limit_exceeded`.
    pub fn program_limit_exceeded(message: impl Into<String>) -> Self {
        Self::fatal("54000", message)
    }

    /// 55000 `object_not_in_prerequisite_state`.
    pub fn object_not_in_prerequisite_state(message: impl Into<String>) -> Self {
        Self::fatal("55000", message)
    }

    /// 57014 `query_canceled`.
    pub fn query_canceled(message: impl Into<String>) -> Self {
        Self::fatal("57014", message)
    }

    /// 57P01 `admin_shutdown`: the session is being ended by timebox (expiry, revocation, kill,
    /// shutdown).
    pub fn admin_shutdown(message: impl Into<String>) -> Self {
        Self::fatal("57P01", message)
    }

    /// 58000 `system_error`.
    pub fn system_error(message: impl Into<String>) -> Self {
        Self::fatal("58000", message)
    }

    /// 58030 `io_error`.
    pub fn io_error(message: impl Into<String>) -> Self {
        Self::fatal("58030", message)
    }

    /// XX000 `internal_error`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::fatal("XX000", message)
    }

    // ---- timebox's refusals ------------------------------------------------------------------

    /// 28P01: the same words for unknown user, wrong token or another user's token.
    pub fn invalid_password(user: &str) -> Self {
        Self::fatal(
            "28P01",
            format!("password authentication failed for user \"{user}\""),
        )
        .with_hint(
            "Use the token of a grant issued for this user and this database (dbname = the target name).",
        )
    }

    /// 28P01 on `timebox_audit`: the same words for unknown user, wrong token, or a token whose
    /// config entry has no SCRAM verifier (no oracle); the hint says how to make one.
    pub fn invalid_audit_token(user: &str) -> Self {
        Self::fatal(
            "28P01",
            format!("password authentication failed for user \"{user}\""),
        )
        .with_hint(
            "Log in to timebox_audit with your admin-API token, user = the token's name. The login uses \
             SCRAM-SHA-256: the token's [[admin.tokens]] entry needs a `scram` verifier \
             (`timebox admin-token new --config-line` prints one; `timebox admin-token scram` makes one for an \
             existing token); tokens issued with `timebox admin-token new` through the admin API have one.",
        )
    }

    /// 28000: right token, but the grant has not started yet (`why` says when it starts).
    pub fn grant_not_started(why: &str) -> Self {
        Self::invalid_authorization_specification(format!("access denied: {why}"))
            .with_hint("The grant is not active yet: connect again from its start time.")
    }

    /// 28000: right token, but the grant does not admit a session now.
    pub fn grant_not_current(why: &str) -> Self {
        Self::invalid_authorization_specification(format!("access denied: {why}"))
            .with_hint("Ask for a new grant (timebox grant issue / timebox request create).")
    }

    /// 28000: the client's SCRAM-SHA-256-PLUS channel binding does not match this connection.
    pub fn channel_binding_failed(why: &str) -> Self {
        Self::invalid_authorization_specification(format!("SCRAM channel binding failed: {why}"))
    }

    /// 28000: the startup packet has no `user`.
    pub fn no_user_name() -> Self {
        Self::invalid_authorization_specification("no PostgreSQL user name specified in startup packet")
    }

    pub fn tls_required() -> Self {
        Self::invalid_authorization_specification("timebox requires an encrypted connection")
            .with_hint("Connect with sslmode=require (or verify-full).")
    }

    /// 53300: the proxy's `max_connections` is reached.
    pub fn too_many_clients(limit: usize) -> Self {
        Self::too_many_connections(format!(
            "sorry, too many clients already (timebox limit: {limit})"
        ))
    }

    pub fn too_many_auth_failures() -> Self {
        Self::invalid_authorization_specification(
            "too many failed authentication attempts for this user from this address; try again in a minute",
        )
    }

    /// 28000: one address failed too often, over all the user names it tried.
    pub fn too_many_auth_failures_from_address() -> Self {
        Self::invalid_authorization_specification(
            "too many failed authentication attempts from this address; try again in a minute",
        )
    }

    /// 28000: the instance-wide ceiling on failed logins is reached (a spread-out guessing attack).
    pub fn too_many_auth_failures_globally() -> Self {
        Self::invalid_authorization_specification(
            "too many failed authentication attempts on this timebox instance; try again in a minute",
        )
    }

    /// 53300: a login throttle's window is full of attempts still in progress, none of them failed
    /// (a pool opening many connections at once with the right token): try again shortly.
    pub fn too_many_logins_in_progress() -> Self {
        Self::too_many_connections(
            "too many logins in progress at once for this user, address or instance (each counts \
             against the failed-login limits until it succeeds)",
        )
        .with_hint("Try again in a moment, or open fewer connections at once.")
    }

    /// 53300: this client address has too many connections that have not logged in yet.
    pub fn too_many_unauthenticated_from_address(limit: usize) -> Self {
        Self::too_many_connections(format!(
            "sorry, too many clients from this address are still authenticating (timebox limit: {limit})"
        ))
        .with_hint("Try again in a few seconds.")
    }

    /// 53300: too many connections have not finished authenticating yet.
    pub fn too_many_unauthenticated(limit: usize) -> Self {
        Self::too_many_connections(format!(
            "sorry, too many clients are still authenticating (timebox limit: {limit})"
        ))
        .with_hint("Try again in a few seconds.")
    }

    pub fn startup_timeout() -> Self {
        Self::protocol_violation("timed out waiting for the client to finish startup and authentication")
    }

    /// 08006 `connection_failure`: the shared PostgreSQL store cannot be reached, so no login can
    /// be checked (fail closed); the message names the store.
    pub fn store_unreachable() -> Self {
        Self::fatal(
            "08006",
            "timebox cannot reach its store (the PostgreSQL grant store is unreachable); no new sessions until it is back",
        )
        .with_hint("Try again shortly; tell the timebox administrators if it persists.")
    }

    /// The login refusal for a store error: [`store_unreachable`](Self::store_unreachable) when it
    /// could not be reached, [`grant_store_unavailable`](Self::grant_store_unavailable) otherwise.
    pub fn for_store_error(e: &crate::store::StoreError) -> Self {
        if e.is_unavailable() {
            Self::store_unreachable()
        } else {
            Self::grant_store_unavailable()
        }
    }

    /// 58000: the grant store did not answer while a login was checked.
    pub fn grant_store_unavailable() -> Self {
        Self::system_error("timebox cannot check grants right now (grant store unavailable)")
    }

    pub fn upstream_unavailable(target: &str, why: &str) -> Self {
        Self::fatal(
            "08001",
            format!("could not connect to target \"{target}\": {why}"),
        )
    }

    pub fn upstream_rejected(target: &str, sqlstate: &str) -> Self {
        Self::fatal(
            "08004",
            format!("target \"{target}\" refused timebox's upstream login (SQLSTATE {sqlstate})"),
        )
        .with_hint("This is a timebox configuration problem; tell the timebox administrators.")
    }

    pub fn upstream_lost(target: &str) -> Self {
        Self::fatal("08006", format!("lost the connection to target \"{target}\""))
    }

    /// FATAL 54000: a frontend message longer than the proxy accepts.
    pub fn message_too_long(bytes: usize, limit: usize) -> Self {
        Self::program_limit_exceeded(format!(
            "message of {bytes} bytes exceeds timebox's limit of {limit} bytes"
        ))
    }

    /// FATAL 54000: a backend message the relay must hold whole before forwarding it (an
    /// ErrorResponse, a masked role's row) declares more bytes than it holds.
    pub fn held_message_too_long(bytes: u64, limit: u64) -> Self {
        Self::program_limit_exceeded(format!(
            "terminating connection: the server sent a message of {bytes} bytes; timebox reads such messages whole before forwarding them, up to {limit} bytes"
        ))
        .with_hint("Return less in one value or error message (e.g. substr() of a large column).")
    }

    /// ERROR 54000 (the session goes on): a statement text longer than `proxy.max_statement_bytes`.
    pub fn statement_too_long(bytes: usize, limit: usize) -> Self {
        Self::program_limit_exceeded(format!(
            "timebox: statement of {bytes} bytes exceeds the limit of {limit} bytes (proxy.max_statement_bytes)"
        ))
        .non_fatal()
        .with_hint(
            "Send a shorter statement (e.g. COPY for bulk data), or ask the timebox administrators to raise proxy.max_statement_bytes.",
        )
    }

    /// ERROR 54000 (the session goes on): a statement's result went past `limit` (a role option,
    /// e.g. `max_rows_per_statement`) whose configured value is `value`.
    /// FATAL 42501: a masked role's result was refused for a catalog change after the transaction
    /// it ran in had ended (see `relay::wrap`); the session's upstream goes with what it did.
    pub fn masked_effects_kept() -> Self {
        Self::insufficient_privilege(
            "timebox: a result was refused because the target's catalog changed while it ran, and its transaction had already ended; the session is closed so that nothing that statement did stays in it",
        )
        .with_hint("Connect again, and run statements that read masked tables in a Query string that does not end or fail its own transaction.")
    }

    pub fn result_quota_exceeded(limit: &str, value: &str, role: &str) -> Self {
        Self::program_limit_exceeded(format!(
            "timebox: result exceeds {limit} = {value} of role \"{role}\""
        ))
        .non_fatal()
        .with_detail("The rest of the result was discarded and the query was cancelled.")
        .with_hint("Narrow the query (WHERE, LIMIT, fewer columns), or ask for a role with a higher limit.")
    }

    /// Appends this as an ErrorResponse ('E'), or a NoticeResponse ('N') for warnings and notices,
    /// encoded by pgwire.
    pub fn encode(&self, out: &mut BytesMut) {
        match self.severity {
            Severity::Fatal | Severity::Error => put_pgwire(out, &ErrorResponse::new(self.fields())),
            Severity::Warning | Severity::Notice => put_pgwire(out, &NoticeResponse::new(self.fields())),
        }
    }

    /// The ErrorResponse fields: severity (twice: localised and not), SQLSTATE, message, detail,
    /// hint. NULs are dropped: one would end its field early and desynchronise the client.
    fn fields(&self) -> Vec<(u8, String)> {
        let severity = self.severity.as_str();
        [
            (b'S', Some(severity)),
            (b'V', Some(severity)),
            (b'C', Some(self.code)),
            (b'M', Some(self.message.as_str())),
            (b'D', self.detail.as_deref()),
            (b'H', self.hint.as_deref()),
        ]
        .into_iter()
        .filter_map(|(code, value)| Some((code, value?.replace('\0', ""))))
        .collect()
    }

    pub fn to_bytes(&self) -> BytesMut {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b
    }
}

fn put_cstr(b: &mut BytesMut, s: &str) {
    // NUL would end the field early; PostgreSQL strings cannot contain it.
    b.extend(s.bytes().filter(|&c| c != 0));
    b.put_u8(0);
}

/// Appends one message: tag, length (including itself), body.
pub fn frame(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let len_at = out.len();
    out.put_i32(0);
    body(out);
    let len = (out.len() - len_at) as i32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends `message` encoded by pgwire. pgwire refuses only a message longer than its type allows
/// (kilobytes for these, gigabytes for errors); ours are far shorter, but a refusal would leave
/// `out` as it was and be logged, never half a message.
fn put_pgwire<M: pgwire::messages::Message>(out: &mut BytesMut, message: &M) {
    let start = out.len();
    if let Err(e) = message.encode(out) {
        out.truncate(start);
        tracing::error!(error = %e, "cannot encode a message for the client");
    }
}

pub fn authentication_ok(out: &mut BytesMut) {
    put_pgwire(out, &Authentication::Ok);
}

pub fn authentication_sasl(out: &mut BytesMut, mechanisms: &[&str]) {
    let mechanisms = mechanisms.iter().map(|m| m.replace('\0', "")).collect();
    put_pgwire(out, &Authentication::SASL(mechanisms));
}

pub fn authentication_sasl_continue(out: &mut BytesMut, data: &[u8]) {
    put_pgwire(out, &Authentication::SASLContinue(Bytes::copy_from_slice(data)));
}

pub fn authentication_sasl_final(out: &mut BytesMut, data: &[u8]) {
    put_pgwire(out, &Authentication::SASLFinal(Bytes::copy_from_slice(data)));
}

pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    put_pgwire(out, &BackendKeyData::new(pid, SecretKey::I32(secret)));
}

pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    frame(out, b'S', |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

/// Tells a 3.x client (x > 0) that we speak 3.0 and which `_pq_.` options we did not recognise.
pub fn negotiate_protocol_version(out: &mut BytesMut, unrecognized: &[String]) {
    frame(out, b'v', |b| {
        b.put_i32(PROTOCOL_3_0);
        b.put_i32(unrecognized.len() as i32);
        for o in unrecognized {
            put_cstr(b, o);
        }
    });
}

/// A StartupMessage's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    pub protocol: i32,
    /// In the order the client sent them.
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The first packet(s) of a connection, before the StartupMessage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel { pid: i32, secret: i32 },
    Startup(StartupMessage),
}

/// Parses a startup-phase packet body (everything after the length word). Pure.
pub fn parse_startup_packet(body: &[u8]) -> Result<StartupPacket, PgError> {
    if body.len() < 4 {
        return Err(PgError::protocol_violation("invalid length of startup packet"));
    }
    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let rest = &body[4..];
    match code {
        SSL_REQUEST_CODE if rest.is_empty() => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE if rest.is_empty() => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE if rest.len() == 8 => Ok(StartupPacket::Cancel {
            pid: i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]),
            secret: i32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]),
        }),
        c if c >> 16 == 3 => {
            parse_params(rest).map(|params| StartupPacket::Startup(StartupMessage { protocol: c, params }))
        }
        c => Err(PgError::feature_not_supported(format!(
            "unsupported frontend protocol {}.{}: timebox supports 3.0",
            c >> 16,
            c & 0xffff
        ))),
    }
}

fn parse_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, PgError> {
    let bad =
        || PgError::protocol_violation("invalid startup packet layout: expected terminator as last byte");
    let mut params = Vec::new();
    loop {
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(bad());
        };
        if nul == 0 {
            return if rest.len() == 1 { Ok(params) } else { Err(bad()) };
        }
        let name = std::str::from_utf8(&rest[..nul])
            .map_err(|_| PgError::protocol_violation("startup parameter name is not UTF-8"))?
            .to_owned();
        rest = &rest[nul + 1..];
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(bad());
        };
        let value = std::str::from_utf8(&rest[..nul])
            .map_err(|_| PgError::protocol_violation(format!("startup parameter {name:?} is not UTF-8")))?
            .to_owned();
        rest = &rest[nul + 1..];
        if params.iter().any(|(k, _)| *k == name) {
            return Err(PgError::protocol_violation(format!(
                "startup parameter {name:?} given twice"
            )));
        }
        params.push((name, value));
    }
}

/// Follows message boundaries through a byte stream, chunk by chunk, reading only headers (and the
/// one status byte of ReadyForQuery). Offsets are positions in the whole stream.
#[derive(Debug, Default, Clone)]
pub struct FrameTracker {
    header: [u8; 5],
    header_len: usize,
    /// Body bytes still to come for the current frame.
    remaining: usize,
    tag: u8,
    /// Stream offset where the current (unfinished) frame began.
    frame_start: u64,
    /// Stream offset consumed so far.
    offset: u64,
    /// Status byte of the last ReadyForQuery ('I', 'T', 'E').
    pub last_ready_status: Option<u8>,
    /// ReadyForQuery messages seen so far.
    pub ready_count: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum TrackError {
    /// A length word below 4: the stream is corrupt.
    BadLength { tag: u8, len: i32 },
}

impl FrameTracker {
    /// Feeds the next chunk of the stream.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), TrackError> {
        self.feed_with(chunk, |_, _, _| {})
    }

    /// Feeds the next chunk, calling `on_frame(tag, start, end)` (stream offsets) for every frame
    /// that completes in it.
    pub fn feed_with(
        &mut self,
        chunk: &[u8],
        mut on_frame: impl FnMut(u8, u64, u64),
    ) -> Result<(), TrackError> {
        let mut i = 0;
        while i < chunk.len() {
            if self.remaining > 0 {
                let take = self.remaining.min(chunk.len() - i);
                if self.tag == b'Z' && take > 0 {
                    self.last_ready_status = Some(chunk[i + take - 1]);
                }
                i += take;
                self.remaining -= take;
                if self.remaining == 0 {
                    on_frame(self.tag, self.frame_start, self.offset + i as u64);
                    self.finish_frame();
                }
                continue;
            }
            if self.header_len == 0 {
                self.frame_start = self.offset + i as u64;
            }
            let take = (5 - self.header_len).min(chunk.len() - i);
            self.header[self.header_len..self.header_len + take].copy_from_slice(&chunk[i..i + take]);
            self.header_len += take;
            i += take;
            if self.header_len == 5 {
                self.header_len = 0;
                self.tag = self.header[0];
                let len =
                    i32::from_be_bytes([self.header[1], self.header[2], self.header[3], self.header[4]]);
                if len < 4 {
                    self.offset += i as u64;
                    return Err(TrackError::BadLength { tag: self.tag, len });
                }
                self.remaining = len as usize - 4;
                if self.remaining == 0 {
                    on_frame(self.tag, self.frame_start, self.offset + i as u64);
                    self.finish_frame();
                }
            }
        }
        self.offset += chunk.len() as u64;
        Ok(())
    }

    /// True while the header of the next frame is only partly known.
    pub fn in_header(&self) -> bool {
        self.header_len > 0
    }

    /// The tag of the frame whose body is being read (0 at a boundary or inside a header).
    pub fn current_tag(&self) -> u8 {
        if self.remaining > 0 {
            self.tag
        } else {
            0
        }
    }

    fn finish_frame(&mut self) {
        if self.tag == b'Z' {
            self.ready_count += 1;
        }
        self.tag = 0;
    }

    /// True when the stream so far ends exactly at a frame boundary.
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.remaining == 0
    }

    /// Where the unfinished frame began, if the stream is mid-frame.
    pub fn unfinished_frame_start(&self) -> Option<u64> {
        (!self.at_boundary()).then_some(self.frame_start)
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The frame whose body is still arriving, once its header is complete: its tag and stream
    /// offsets `(start, end)`, `end` being where it will finish.
    pub fn unfinished_frame(&self) -> Option<(u8, u64, u64)> {
        (self.remaining > 0).then(|| (self.tag, self.frame_start, self.offset + self.remaining as u64))
    }
}

/// The first complete frontend frame in `buf`: `Ok(Some((tag, total_len)))`, `Ok(None)` if more bytes
/// are needed, or the client-facing error for an unknown type or an oversized or malformed length.
pub fn next_frontend_frame(buf: &[u8], max_len: usize) -> Result<Option<(u8, usize)>, PgError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let tag = buf[0];
    if !is_frontend_message_type(tag) {
        return Err(PgError::protocol_violation(format!(
            "invalid frontend message type {}",
            describe_tag(tag)
        )));
    }
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(PgError::protocol_violation(format!(
            "invalid message length {len} for message type {}",
            describe_tag(tag)
        )));
    }
    let total = len as usize + 1;
    if total > max_len {
        return Err(PgError::message_too_long(total, max_len));
    }
    Ok((buf.len() >= total).then_some((tag, total)))
}

fn describe_tag(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}'", tag as char)
    } else {
        format!("0x{tag:02x}")
    }
}

#[cfg(test)]
mod tests;
