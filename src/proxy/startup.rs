//! Startup phase of a client connection: SSLRequest / GSSENCRequest / direct TLS, then the
//! StartupMessage or a CancelRequest; and the pure policy on startup parameters.
//!
//! Runs before authentication, under the proxy's startup timeout. Never lets through a startup
//! parameter that changes the upstream role or server behaviour: only an allowlist of harmless
//! session settings is passed upstream, each decided for the grant's role with the rules a `SET` of
//! it meets ([`upstream_settings`]), and the engineer's user and database are replaced by the
//! grant's upstream credential and the target's database.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::stream::{ClientStream, MaybeTls};
use super::tls::{ServerTls, ALPN_POSTGRESQL};
use super::wire::{self, PgError, StartupMessage, StartupPacket, MAX_STARTUP_PACKET};
use crate::config::ClientTls;
use crate::policy::authorize::{authorize_startup_setting, TABLE_RULES_SEARCH_PATH};
use crate::policy::{Decision, RolePolicy, StatementClass};

/// TLS facts about a client connection.
#[derive(Debug, Clone)]
pub struct ClientTlsInfo {
    /// e.g. "TLSv1.3"
    pub version: String,
    /// `tls-server-end-point` channel-binding data for SCRAM-SHA-256-PLUS.
    pub end_point_hash: Vec<u8>,
}

/// What the startup phase produced.
pub enum Startup {
    Session {
        client: ClientStream,
        message: StartupMessage,
        tls: Option<ClientTlsInfo>,
    },
    Cancel {
        pid: i32,
        secret: i32,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Tell the client (if the stream still works) and close.
    #[error("{}", .error.message)]
    Refused {
        client: Box<ClientStream>,
        error: PgError,
    },
    #[error("client connection failed during startup: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
}

impl StartupError {
    pub fn is_disconnect(&self) -> bool {
        match self {
            StartupError::Io(e) | StartupError::Tls(e) => matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
            ),
            StartupError::Refused { .. } => false,
        }
    }
}

fn refuse(client: ClientStream, error: PgError) -> StartupError {
    StartupError::Refused {
        client: Box::new(client),
        error,
    }
}

async fn accept_tls(tcp: TcpStream, tls: &ServerTls) -> Result<(ClientStream, ClientTlsInfo), StartupError> {
    let stream = TlsAcceptor::from(Arc::clone(&tls.config))
        .accept(tcp)
        .await
        .map_err(StartupError::Tls)?;
    let version = stream
        .get_ref()
        .1
        .protocol_version()
        .and_then(|v| v.as_str())
        .unwrap_or("TLS")
        .to_owned();
    Ok((
        MaybeTls::Tls(Box::new(stream)),
        ClientTlsInfo {
            version,
            end_point_hash: tls.end_point_hash.clone(),
        },
    ))
}

/// Reads one startup-phase packet (length word + body) with PostgreSQL's bounds.
async fn read_packet(client: &mut ClientStream) -> Result<Result<StartupPacket, PgError>, std::io::Error> {
    let len = client.read_i32().await?;
    if !(8..=MAX_STARTUP_PACKET as i32).contains(&len) {
        return Ok(Err(PgError::protocol_violation(
            "invalid length of startup packet",
        )));
    }
    let mut body = vec![0u8; len as usize - 4];
    client.read_exact(&mut body).await?;
    Ok(wire::parse_startup_packet(&body))
}

/// Runs the startup phase on a fresh connection.
pub async fn negotiate(
    tcp: TcpStream,
    tls: Option<&ServerTls>,
    mode: ClientTls,
) -> Result<Startup, StartupError> {
    let tls = if mode == ClientTls::Disabled { None } else { tls };
    // PostgreSQL 17 direct TLS: the connection starts with a TLS ClientHello (record type 0x16).
    let mut first = [0u8; 1];
    let n = tcp.peek(&mut first).await?;
    if n == 0 {
        return Err(StartupError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    let (mut client, mut tls_info) = match (first[0], tls) {
        (0x16, Some(server_tls)) => {
            let (client, info) = accept_tls(tcp, server_tls).await?;
            let alpn_ok = match &client {
                MaybeTls::Tls(s) => s.get_ref().1.alpn_protocol() == Some(ALPN_POSTGRESQL),
                MaybeTls::Plain(_) => false,
            };
            if !alpn_ok {
                // PostgreSQL requires ALPN for direct TLS, so that other protocols cannot be confused with it.
                return Err(refuse(
                    client,
                    PgError::protocol_violation("direct TLS connections must negotiate ALPN \"postgresql\""),
                ));
            }
            (client, Some(info))
        }
        _ => (MaybeTls::Plain(tcp), None),
    };

    loop {
        let packet = match read_packet(&mut client).await? {
            Ok(p) => p,
            Err(e) => return Err(refuse(client, e)),
        };
        match packet {
            StartupPacket::SslRequest if tls_info.is_none() => match tls {
                Some(server_tls) => {
                    client.write_all(b"S").await?;
                    let MaybeTls::Plain(tcp) = client else {
                        unreachable!("TLS not yet started")
                    };
                    let (c, info) = accept_tls(tcp, server_tls).await?;
                    client = c;
                    tls_info = Some(info);
                }
                None => client.write_all(b"N").await?,
            },
            StartupPacket::SslRequest => {
                return Err(refuse(
                    client,
                    PgError::protocol_violation("SSLRequest inside TLS"),
                ));
            }
            StartupPacket::GssEncRequest => client.write_all(b"N").await?,
            StartupPacket::Cancel { pid, secret } => return Ok(Startup::Cancel { pid, secret }),
            StartupPacket::Startup(message) => {
                if mode == ClientTls::Required && tls_info.is_none() {
                    return Err(refuse(client, PgError::tls_required()));
                }
                if message.protocol != wire::PROTOCOL_3_0 {
                    // 3.x with x > 0: answer with the version we speak and the options we ignore.
                    let unrecognized: Vec<String> = message
                        .params
                        .iter()
                        .filter(|(k, _)| k.starts_with("_pq_."))
                        .map(|(k, _)| k.clone())
                        .collect();
                    let mut out = BytesMut::new();
                    wire::negotiate_protocol_version(&mut out, &unrecognized);
                    client.write_all(&out).await?;
                }
                return Ok(Startup::Session {
                    client,
                    message,
                    tls: tls_info,
                });
            }
        }
    }
}

/// Validated startup parameters of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientParams {
    /// The engineer (PostgreSQL user name sent by the client).
    pub user: String,
    /// The target name (`dbname`).
    pub target: String,
    pub application_name: Option<String>,
    /// Harmless session settings to pass upstream, names lower-cased.
    pub settings: Vec<(String, String)>,
}

/// Session settings a client may set at startup (lower-case). Anything else is refused: settings
/// such as `role`, `session_authorization` or `default_transaction_read_only` would change what the
/// upstream session may do.
const ALLOWED_SETTINGS: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "timezone",
    "intervalstyle",
    "extra_float_digits",
    "client_min_messages",
    "search_path",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "bytea_output",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "standard_conforming_strings",
];

/// Client encodings whose statement text timebox reads exactly as PostgreSQL does: UTF-8, and
/// SQL_ASCII (no conversion; text that is not valid UTF-8 is then refused statement by statement).
/// Multi-byte encodings such as SJIS or BIG5, where a trail byte can look like a quote or a
/// backslash, are refused. Names are compared as PostgreSQL compares them
/// ([`functions::clean_encoding_name`](crate::policy::functions::clean_encoding_name)), so every
/// spelling a driver sends that the server takes for UTF8 (`utf8`, `'utf-8'`, `UNICODE`) is one.
pub fn client_encoding_is_readable(value: &str) -> bool {
    crate::policy::functions::is_utf8_encoding(value)
        || crate::policy::functions::clean_encoding_name(value).as_deref() == Some("sqlascii")
}

/// Checks one setting's value where the value matters for how the proxy reads SQL text.
fn check_setting(name: &str, value: &str) -> Result<(), PgError> {
    let refused = |why: &str| {
        Err(PgError::insufficient_privilege(format!(
            "startup setting {name}={value:?} is not allowed through timebox: {why}"
        )))
    };
    match name {
        "client_encoding" => {
            if client_encoding_is_readable(value) {
                Ok(())
            } else {
                refused("timebox reads statements as UTF-8")
            }
        }
        "standard_conforming_strings" => {
            if value.trim().eq_ignore_ascii_case("on") {
                Ok(())
            } else {
                refused("it changes how string literals are read")
            }
        }
        _ => Ok(()),
    }
}

fn set(params: &mut ClientParams, name: &str, value: &str) -> Result<(), PgError> {
    let lower = name.to_ascii_lowercase();
    if !ALLOWED_SETTINGS.contains(&lower.as_str()) {
        return Err(PgError::insufficient_privilege(format!(
            "startup setting \"{name}\" is not allowed through timebox"
        ))
        .with_hint("Only harmless session settings (application_name, DateStyle, TimeZone, search_path, …) may be set at connection time."));
    }
    check_setting(&lower, value)?;
    if lower == "application_name" {
        params.application_name = Some(value.to_owned());
        return Ok(());
    }
    params.settings.retain(|(k, _)| *k != lower);
    params.settings.push((lower, value.to_owned()));
    Ok(())
}

/// The session settings sent upstream. The client's startup settings, each decided with the rules a
/// `SET` of it meets for the role ([`authorize_startup_setting`]: `search_path` under table rules,
/// `search_path` putting `pg_catalog` behind other schemas, …), plus the role's own:
/// - its `statement_timeout` cap;
/// - for roles with table rules, `search_path = public` ([`TABLE_RULES_SEARCH_PATH`], what the
///   rules assume), so that a role- or database-level default on the target cannot move names;
/// - for roles that may not write, `default_transaction_read_only = on` as a second line of
///   defence behind statement checks.
pub fn upstream_settings(
    policy: &RolePolicy,
    client: &[(String, String)],
) -> Result<Vec<(String, String)>, PgError> {
    let mut settings = Vec::with_capacity(client.len() + 3);
    for (name, value) in client {
        if name == "statement_timeout" {
            if let Some(cap) = policy.statement_timeout {
                let asked = crate::policy::authorize::parse_pg_duration(value);
                if asked.is_none_or(|d| d.is_zero() || d > cap) {
                    return Err(PgError::insufficient_privilege(format!(
                        "startup setting statement_timeout={value} exceeds role {}'s cap of {}",
                        policy.name,
                        humantime::format_duration(cap)
                    )));
                }
            }
        }
        if let Decision::Deny { reason, hint } = authorize_startup_setting(policy, name, value) {
            return Err(PgError::insufficient_privilege(reason).with_hint(hint));
        }
        settings.push((name.clone(), value.clone()));
    }
    if let Some(cap) = policy.statement_timeout {
        if !settings.iter().any(|(k, _)| k == "statement_timeout") {
            settings.push(("statement_timeout".into(), format!("{}ms", cap.as_millis())));
        }
    }
    if policy.tables.is_some() && !settings.iter().any(|(k, _)| k == "search_path") {
        settings.push(("search_path".into(), TABLE_RULES_SEARCH_PATH.into()));
    }
    if !policy.allows(StatementClass::Write) {
        settings.push(("default_transaction_read_only".into(), "on".into()));
    }
    Ok(settings)
}

/// Splits an `options` value into words, honouring PostgreSQL's backslash escapes.
fn split_options(options: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            c if c.is_ascii_whitespace() => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// The startup-parameter policy. Pure.
pub fn check_startup_params(message: &StartupMessage) -> Result<ClientParams, PgError> {
    let user = message
        .get("user")
        .filter(|u| !u.is_empty())
        .ok_or_else(PgError::no_user_name)?
        .to_owned();
    let target = message
        .get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&user)
        .to_owned();
    let mut params = ClientParams {
        user,
        target,
        application_name: None,
        settings: Vec::new(),
    };
    for (name, value) in &message.params {
        match name.as_str() {
            "user" | "database" => {}
            "replication" => {
                if !matches!(value.to_ascii_lowercase().as_str(), "false" | "off" | "no" | "0") {
                    return Err(PgError::feature_not_supported(
                        "replication connections are not supported through timebox",
                    ));
                }
            }
            "options" => {
                let words = split_options(value);
                let mut i = 0;
                while i < words.len() {
                    let word = &words[i];
                    let assignment = if word == "-c" {
                        i += 1;
                        words.get(i).map(String::as_str)
                    } else if let Some(rest) = word.strip_prefix("-c") {
                        Some(rest)
                    } else if let Some(rest) = word.strip_prefix("--") {
                        Some(rest)
                    } else {
                        return Err(PgError::insufficient_privilege(format!(
                            "startup option {word:?} is not allowed through timebox"
                        ))
                        .with_hint("Only -c name=value settings are accepted in options."));
                    };
                    let Some((name, value)) = assignment.and_then(|a| a.split_once('=')) else {
                        return Err(PgError::protocol_violation(format!(
                            "invalid startup options {value:?}: expected -c name=value"
                        )));
                    };
                    set(&mut params, &name.replace('-', "_"), value)?;
                    i += 1;
                }
            }
            n if n.starts_with("_pq_.") => {}
            n => set(&mut params, n, value)?,
        }
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(params: &[(&str, &str)]) -> StartupMessage {
        StartupMessage {
            protocol: wire::PROTOCOL_3_0,
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn harmless_parameters_pass_and_database_defaults_to_user() {
        let p = check_startup_params(&msg(&[
            ("user", "alice"),
            ("application_name", "psql"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
            (
                "options",
                "-c statement_timeout=5s --search_path=app\\,public -csearch_path=public",
            ),
        ]))
        .unwrap();
        assert_eq!(p.user, "alice");
        assert_eq!(p.target, "alice");
        assert_eq!(p.application_name.as_deref(), Some("psql"));
        assert_eq!(
            p.settings,
            vec![
                ("client_encoding".to_string(), "UTF8".to_string()),
                ("datestyle".to_string(), "ISO, MDY".to_string()),
                ("statement_timeout".to_string(), "5s".to_string()),
                ("search_path".to_string(), "public".to_string()),
            ]
        );
    }

    #[test]
    fn dangerous_parameters_are_refused() {
        let code = |params: &[(&str, &str)]| check_startup_params(&msg(params)).unwrap_err().code;
        assert_eq!(code(&[("database", "shop")]), "28000", "no user");
        assert_eq!(code(&[("user", "a"), ("replication", "database")]), "0A000");
        assert_eq!(code(&[("user", "a"), ("replication", "true")]), "0A000");
        assert!(check_startup_params(&msg(&[("user", "a"), ("replication", "false")])).is_ok());
        assert_eq!(code(&[("user", "a"), ("options", "-c role=postgres")]), "42501");
        assert_eq!(
            code(&[("user", "a"), ("options", "-c session_authorization=postgres")]),
            "42501"
        );
        assert_eq!(
            code(&[("user", "a"), ("options", "-c default_transaction_read_only=off")]),
            "42501"
        );
        assert_eq!(code(&[("user", "a"), ("options", "--role=postgres")]), "42501");
        assert_eq!(
            code(&[("user", "a"), ("options", "-cROLE=postgres")]),
            "42501",
            "case-insensitive"
        );
        assert_eq!(
            code(&[("user", "a"), ("options", "-d 5")]),
            "42501",
            "non -c switches"
        );
        assert_eq!(code(&[("user", "a"), ("options", "-c")]), "08P01");
        assert_eq!(
            code(&[("user", "a"), ("role", "postgres")]),
            "42501",
            "GUC as a startup parameter"
        );
        assert_eq!(code(&[("user", "a"), ("client_encoding", "BIG5")]), "42501");
        assert_eq!(
            code(&[("user", "a"), ("options", "-c client_encoding=SJIS")]),
            "42501"
        );
        assert_eq!(
            code(&[("user", "a"), ("standard_conforming_strings", "off")]),
            "42501"
        );
        assert!(check_startup_params(&msg(&[("user", "a"), ("client_encoding", "utf-8")])).is_ok());
        // Issue 12: spellings drivers send and PostgreSQL accepts (case, separators, quoting).
        for spelling in ["utf8", "'utf-8'", "UNICODE", "Utf_8", "\"UTF8\"", "sql-ascii"] {
            assert!(
                check_startup_params(&msg(&[("user", "a"), ("client_encoding", spelling)])).is_ok(),
                "{spelling}"
            );
        }
        for refused in ["'SJIS'", "big-5", "utf16", "ｕｔｆ８", "utf8;latin1"] {
            assert_eq!(
                code(&[("user", "a"), ("client_encoding", refused)]),
                "42501",
                "{refused}"
            );
        }
        assert!(check_startup_params(&msg(&[("user", "a"), ("client_encoding", "SQL_ASCII")])).is_ok());
    }

    fn settings(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Startup settings meet the rules a `SET` of them meets (issue 16, finding 5).
    #[test]
    fn startup_settings_go_through_the_set_policy() {
        let mut tables = RolePolicy::with_classes("tables", &[StatementClass::Read]);
        tables.tables = Some(crate::config::TableRules {
            allow: vec!["public.*".into()],
            deny: vec![],
        });
        let err = upstream_settings(&tables, &settings(&[("search_path", "hr")])).unwrap_err();
        assert_eq!(err.code, "42501");
        assert!(
            err.message
                .contains("startup setting search_path is not allowed for role tables"),
            "{}",
            err.message
        );
        assert!(upstream_settings(&tables, &settings(&[("search_path", "\"$user\", public")])).is_err());
        let pinned = upstream_settings(&tables, &settings(&[("datestyle", "ISO")])).unwrap();
        assert!(
            pinned.contains(&("search_path".into(), "public".into())),
            "table rules pin search_path: {pinned:?}"
        );
        let same = upstream_settings(&tables, &settings(&[("search_path", "public")])).unwrap();
        assert_eq!(same.iter().filter(|(k, _)| k == "search_path").count(), 1);

        let read = RolePolicy::with_classes("read", &[StatementClass::Read]);
        let err = upstream_settings(&read, &settings(&[("search_path", "evil, pg_catalog")])).unwrap_err();
        assert!(err.message.contains("shadow built-ins"), "{}", err.message);
        let ok = upstream_settings(&read, &settings(&[("search_path", "app, public")])).unwrap();
        assert!(ok.contains(&("search_path".into(), "app, public".into())));
        assert_eq!(
            ok.iter().filter(|(k, _)| k == "search_path").count(),
            1,
            "no pin without table rules"
        );
        let none = upstream_settings(&read, &[]).unwrap();
        assert!(!none.iter().any(|(k, _)| k == "search_path"), "{none:?}");
        assert!(ok.contains(&("default_transaction_read_only".into(), "on".into())));

        let mut capped = read.clone();
        capped.statement_timeout = Some(std::time::Duration::from_secs(30));
        let err = upstream_settings(&capped, &settings(&[("statement_timeout", "1h")])).unwrap_err();
        assert!(err.message.contains("exceeds role read's cap"), "{}", err.message);
        assert!(upstream_settings(&capped, &settings(&[("statement_timeout", "5s")])).is_ok());
    }

    #[test]
    fn options_escapes() {
        assert_eq!(
            split_options(r"-c a=b\ c  -c d=e"),
            vec!["-c", "a=b c", "-c", "d=e"]
        );
        assert_eq!(split_options(""), Vec::<String>::new());
    }
}
