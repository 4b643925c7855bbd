//! Opens the upstream session for an admitted client: TCP (bounded by the connect timeout), TLS as
//! the target says, the startup message with the role's credential, authentication (SCRAM-SHA-256,
//! md5, cleartext or trust, using the `postgres-protocol` client implementations), then collects
//! ParameterStatus and BackendKeyData until the first ReadyForQuery.
//!
//! The credential never leaves this module: upstream error texts (which can name the upstream
//! user) are logged here and the client only gets the SQLSTATE.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

use super::scram::{SaltedPasswordCache, ScramClient};

/// The SCRAM exchange with the upstream: our client with cached salted passwords (ASCII
/// passwords), or postgres-protocol's (which applies SASLprep to others).
enum UpstreamScram {
    Cached(ScramClient, Option<[u8; 32]>),
    Library(ScramSha256),
}
use postgres_protocol::message::backend::{AuthenticationSaslBody, ErrorResponseBody, Header, Message};
use postgres_protocol::message::frontend;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::stream::{MaybeTls, UpstreamStream};
use crate::config::{Credential, Target};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("connection failed: {0}")]
    Connect(#[source] std::io::Error),
    #[error("the server does not accept TLS")]
    TlsRefused,
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] std::io::Error),
    #[error("invalid server name {0:?} for TLS")]
    ServerName(String),
    #[error("upstream refused the login: SQLSTATE {code}: {message}")]
    Rejected { code: String, message: String },
    #[error("upstream asked for a password but none is configured for this credential")]
    NoPassword,
    #[error("upstream asked for an unsupported authentication method ({0})")]
    UnsupportedAuth(&'static str),
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    #[error("upstream connection failed: {0}")]
    Io(#[from] std::io::Error),
}

impl UpstreamError {
    /// What the client may be told (no credential, no upstream host detail).
    pub fn client_reason(&self) -> String {
        match self {
            UpstreamError::Timeout(d) => format!("timed out after {}", humantime::format_duration(*d)),
            UpstreamError::Connect(e) => format!("connection failed ({})", e.kind()),
            UpstreamError::TlsRefused | UpstreamError::Tls(_) | UpstreamError::ServerName(_) => {
                "TLS to the target failed".into()
            }
            UpstreamError::Rejected { .. }
            | UpstreamError::NoPassword
            | UpstreamError::UnsupportedAuth(_) => "login refused".into(),
            UpstreamError::Protocol(_) | UpstreamError::Io(_) => "connection failed".into(),
        }
    }
}

/// An authenticated upstream session, ready for queries.
#[derive(Debug)]
pub struct Upstream {
    pub stream: UpstreamStream,
    /// The upstream backend's cancel key (to cancel its queries).
    pub backend_pid: i32,
    pub backend_secret: i32,
    /// ParameterStatus frames, re-encoded, to replay to the client.
    pub parameter_status: Vec<(String, String)>,
    /// NoticeResponse frames sent during startup, raw, to replay to the client.
    pub notices: BytesMut,
    /// The ReadyForQuery transaction status byte.
    pub ready_status: u8,
}

/// Connects and authenticates within `timeout`.
/// `salted`: where SCRAM salted passwords are kept between logins (see [`SaltedPasswordCache`]).
pub async fn connect(
    target: &Target,
    credential: &Credential,
    tls: Option<Arc<rustls::ClientConfig>>,
    settings: &[(String, String)],
    timeout: Duration,
    salted: &SaltedPasswordCache,
) -> Result<Upstream, UpstreamError> {
    tokio::time::timeout(timeout, connect_inner(target, credential, tls, settings, salted))
        .await
        .map_err(|_| UpstreamError::Timeout(timeout))?
}

async fn connect_inner(
    target: &Target,
    credential: &Credential,
    tls: Option<Arc<rustls::ClientConfig>>,
    settings: &[(String, String)],
    salted: &SaltedPasswordCache,
) -> Result<Upstream, UpstreamError> {
    let mut stream = open_stream(target, tls).await?;

    let mut out = BytesMut::new();
    let mut params: Vec<(&str, &str)> = vec![
        ("user", credential.user.as_str()),
        ("database", target.database.as_str()),
    ];
    params.extend(settings.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    frontend::startup_message(params, &mut out)?;
    stream.write_all(&out).await?;

    let mut buf = BytesMut::with_capacity(4096);
    let mut scram: Option<UpstreamScram> = None;
    let mut backend_key = None;
    let mut parameter_status = Vec::new();
    let mut notices = BytesMut::new();
    loop {
        let message = read_startup_message(&mut stream, &mut buf, &mut notices).await?;
        out.clear();
        match message {
            Message::AuthenticationOk => {}
            Message::AuthenticationCleartextPassword => {
                let pw = credential.password.as_ref().ok_or(UpstreamError::NoPassword)?;
                frontend::password_message(pw.expose().as_bytes(), &mut out)?;
            }
            Message::AuthenticationMd5Password(body) => {
                let pw = credential.password.as_ref().ok_or(UpstreamError::NoPassword)?;
                let hash = postgres_protocol::authentication::md5_hash(
                    credential.user.as_bytes(),
                    pw.expose().as_bytes(),
                    body.salt(),
                );
                frontend::password_message(hash.as_bytes(), &mut out)?;
            }
            Message::AuthenticationSasl(body) => scram = Some(sasl_start(credential, &body, &mut out)?),
            Message::AuthenticationSaslContinue(body) => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| UpstreamError::Protocol("SASL continue before SASL start".into()))?;
                sasl_continue(client, credential, salted, body.data(), &mut out).await?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| UpstreamError::Protocol("SASL final before SASL start".into()))?;
                sasl_final(client, body.data())?;
            }
            Message::AuthenticationGss | Message::AuthenticationGssContinue(_) => {
                return Err(UpstreamError::UnsupportedAuth("GSSAPI"))
            }
            Message::AuthenticationSspi => return Err(UpstreamError::UnsupportedAuth("SSPI")),
            Message::AuthenticationKerberosV5 => return Err(UpstreamError::UnsupportedAuth("Kerberos V5")),
            Message::AuthenticationScmCredential => {
                return Err(UpstreamError::UnsupportedAuth("SCM credential"))
            }
            Message::BackendKeyData(body) => backend_key = Some((body.process_id(), body.secret_key())),
            Message::ParameterStatus(body) => {
                parameter_status.push((body.name()?.to_owned(), body.value()?.to_owned()));
            }
            Message::NoticeResponse(_) => {}
            Message::ErrorResponse(body) => return Err(rejected(&body)?),
            Message::ReadyForQuery(body) => {
                let (backend_pid, backend_secret) = backend_key.ok_or_else(|| {
                    UpstreamError::Protocol("no BackendKeyData before ReadyForQuery".into())
                })?;
                return Ok(Upstream {
                    stream,
                    backend_pid,
                    backend_secret,
                    parameter_status,
                    notices,
                    ready_status: body.status(),
                });
            }
            _ => {
                return Err(UpstreamError::Protocol(
                    "unexpected message during startup".into(),
                ))
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
    }
}

/// TCP to the target, then TLS if its config asks for it (refused unless the server agrees).
async fn open_stream(
    target: &Target,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<UpstreamStream, UpstreamError> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(UpstreamError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let stream: UpstreamStream = match tls {
        None => MaybeTls::Plain(tcp),
        Some(config) => {
            let mut tcp = tcp;
            let mut buf = BytesMut::new();
            frontend::ssl_request(&mut buf);
            tcp.write_all(&buf).await?;
            let mut answer = [0u8; 1];
            tcp.read_exact(&mut answer).await?;
            if answer[0] != b'S' {
                return Err(UpstreamError::TlsRefused);
            }
            let name = ServerName::try_from(target.host.clone())
                .map_err(|_| UpstreamError::ServerName(target.host.clone()))?;
            let tls = TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(UpstreamError::Tls)?;
            MaybeTls::Tls(Box::new(tls))
        }
    };
    Ok(stream)
}

/// The next startup message from the server; NoticeResponses are kept raw in `notices` (severity,
/// code and all) to be replayed to the client.
async fn read_startup_message(
    stream: &mut UpstreamStream,
    buf: &mut BytesMut,
    notices: &mut BytesMut,
) -> Result<Message, UpstreamError> {
    loop {
        // Notices are kept raw (severity, code and all) and replayed to the client.
        if let Some(header) = Header::parse(buf)? {
            let total = header.len() as usize + 1;
            if header.tag() == b'N' && buf.len() >= total {
                notices.extend_from_slice(&buf.split_to(total));
                continue;
            }
        }
        if let Some(m) = Message::parse(buf)? {
            return Ok(m);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(UpstreamError::Protocol(
                "server closed the connection during startup".into(),
            ));
        }
    }
}

/// AuthenticationSASL: starts SCRAM-SHA-256 (the only mechanism timebox speaks upstream).
fn sasl_start(
    credential: &Credential,
    body: &AuthenticationSaslBody,
    out: &mut BytesMut,
) -> Result<UpstreamScram, UpstreamError> {
    let pw = credential.password.as_ref().ok_or(UpstreamError::NoPassword)?;
    let mut mechanisms = body.mechanisms();
    let mut has_scram = false;
    while let Some(m) = mechanisms.next()? {
        has_scram |= m == "SCRAM-SHA-256";
    }
    if !has_scram {
        return Err(UpstreamError::UnsupportedAuth("SASL without SCRAM-SHA-256"));
    }
    // "n": we do not bind to the upstream TLS channel; PostgreSQL accepts that.
    let password = pw.expose();
    if password.is_ascii() {
        let client = ScramClient::new();
        frontend::sasl_initial_response("SCRAM-SHA-256", client.client_first().as_bytes(), out)?;
        Ok(UpstreamScram::Cached(client, None))
    } else {
        // SASLprep may change a non-ASCII password: postgres-protocol applies it.
        let client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        frontend::sasl_initial_response("SCRAM-SHA-256", client.message(), out)?;
        Ok(UpstreamScram::Library(client))
    }
}

/// AuthenticationSASLContinue: the client-final message (salted password from the cache).
async fn sasl_continue(
    client: &mut UpstreamScram,
    credential: &Credential,
    salted: &SaltedPasswordCache,
    data: &[u8],
    out: &mut BytesMut,
) -> Result<(), UpstreamError> {
    match client {
        UpstreamScram::Library(client) => {
            client
                .update(data)
                .map_err(|e| UpstreamError::Protocol(format!("SCRAM: {e}")))?;
            frontend::sasl_response(client.message(), out)?;
        }
        UpstreamScram::Cached(client, expected) => {
            let pw = credential.password.as_ref().ok_or(UpstreamError::NoPassword)?;
            let server = client
                .server_first(data)
                .map_err(|e| UpstreamError::Protocol(format!("SCRAM: {e}")))?;
            if server.iterations > SaltedPasswordCache::MAX_ITERATIONS {
                return Err(UpstreamError::Protocol(format!(
                    "SCRAM: the server asks for {} iterations, more than timebox allows ({})",
                    server.iterations,
                    SaltedPasswordCache::MAX_ITERATIONS
                )));
            }
            let salted_password = salted
                .salted(pw.expose().as_bytes(), &server.salt, server.iterations)
                .await
                .map_err(|e| UpstreamError::Protocol(format!("SCRAM key derivation failed: {e}")))?;
            let (message, signature) = client.client_final(&server, &salted_password);
            *expected = Some(signature);
            frontend::sasl_response(message.as_bytes(), out)?;
        }
    }
    Ok(())
}

/// AuthenticationSASLFinal: the server must prove it knows the password too.
fn sasl_final(client: &mut UpstreamScram, data: &[u8]) -> Result<(), UpstreamError> {
    match client {
        UpstreamScram::Library(client) => client
            .finish(data)
            .map_err(|e| UpstreamError::Protocol(format!("SCRAM server signature: {e}")))?,
        UpstreamScram::Cached(_, expected) => {
            let expected = expected
                .as_ref()
                .ok_or_else(|| UpstreamError::Protocol("SASL final before SASL continue".into()))?;
            ScramClient::verify_server_final(data, expected)
                .map_err(|e| UpstreamError::Protocol(format!("SCRAM server signature: {e}")))?;
        }
    }
    Ok(())
}

/// The server refused the login: its SQLSTATE and message.
fn rejected(body: &ErrorResponseBody) -> Result<UpstreamError, UpstreamError> {
    let mut fields = body.fields();
    let (mut code, mut message) = (String::new(), String::new());
    while let Some(f) = fields.next()? {
        match f.type_() {
            b'C' => code = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'M' => message = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            _ => {}
        }
    }
    Ok(UpstreamError::Rejected { code, message })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Secret, UpstreamTls};
    use base64::Engine;
    use tokio::net::TcpListener;

    /// A hostile "upstream" that asks for 2^32 − 1 SCRAM iterations: refused before any PBKDF2.
    #[tokio::test]
    async fn an_upstream_asking_for_absurd_scram_iterations_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _startup = s.read(&mut buf).await.unwrap();
            // AuthenticationSASL offering SCRAM-SHA-256.
            let mechs = b"SCRAM-SHA-256\0\0";
            let mut msg = vec![b'R'];
            msg.extend_from_slice(&((8 + mechs.len()) as i32).to_be_bytes());
            msg.extend_from_slice(&10i32.to_be_bytes());
            msg.extend_from_slice(mechs);
            s.write_all(&msg).await.unwrap();
            let n = s.read(&mut buf).await.unwrap();
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let nonce = text
                .rsplit_once("r=")
                .unwrap()
                .1
                .trim_end_matches('\0')
                .to_owned();
            let salt = base64::engine::general_purpose::STANDARD.encode(b"0123456789abcdef");
            let data = format!("r={nonce}srv,s={salt},i=4294967295");
            let mut msg = vec![b'R'];
            msg.extend_from_slice(&((8 + data.len()) as i32).to_be_bytes());
            msg.extend_from_slice(&11i32.to_be_bytes());
            msg.extend_from_slice(data.as_bytes());
            s.write_all(&msg).await.unwrap();
            let _ = s.read(&mut buf).await;
        });
        let target = Target {
            name: "t".into(),
            host: "127.0.0.1".into(),
            port,
            database: "db".into(),
            tls: UpstreamTls::Disable,
            ca: None,
            credentials: Default::default(),
        };
        let credential = Credential {
            user: "u".into(),
            password: Some(Secret::new("pw")),
        };
        let cache = SaltedPasswordCache::default();
        let Err(err) = connect(&target, &credential, None, &[], Duration::from_secs(10), &cache).await else {
            panic!("an absurd iteration count must be refused");
        };
        assert!(err.to_string().contains("iterations"), "{err}");
        assert!(cache.is_empty(), "no key was derived");
        server.abort();
    }
}
