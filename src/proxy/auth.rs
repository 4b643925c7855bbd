//! Client authentication: the grant token as a SCRAM-SHA-256(-PLUS) password, checked against the
//! user's grants on the requested target; then the pure admission check on the matched grant.
//!
//! No oracle: an unknown user, an unknown target, a wrong token and another user's token all go
//! through the same exchange (with the same kind of salt) and end in the same 28P01 message. Only a
//! correct token learns why its grant does not admit a session (expired, revoked, not yet started).
//! Repeated failures from one address are throttled.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::scram::{self, ScramError, SCRAM_SHA_256, SCRAM_SHA_256_PLUS};
use super::startup::{ClientParams, ClientTlsInfo};
use super::stream::ClientStream;
use super::wire::{self, PgError};
use crate::grants::token::SCRAM_ITERATIONS;
use crate::grants::{Grant, GrantService};

/// Why authentication ended without a session.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Tell the client this and close.
    #[error("{reason}")]
    Refused {
        error: PgError,
        /// For logs and audit (never the token).
        reason: String,
        /// Counted against the client address.
        counts_as_failure: bool,
    },
    #[error("client left during authentication")]
    ClientLeft,
    #[error("client connection failed during authentication: {0}")]
    Io(#[from] std::io::Error),
}

fn refused(error: PgError, reason: impl Into<String>, counts_as_failure: bool) -> AuthError {
    AuthError::Refused {
        error,
        reason: reason.into(),
        counts_as_failure,
    }
}

/// Largest password-family message accepted during authentication.
const MAX_AUTH_MESSAGE: usize = 16 * 1024;

/// Reads one 'p' (password family) message body.
async fn read_password_message(client: &mut ClientStream) -> Result<Vec<u8>, AuthError> {
    let tag = match client.read_u8().await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(AuthError::ClientLeft),
        Err(e) => return Err(e.into()),
    };
    if tag == b'X' {
        return Err(AuthError::ClientLeft);
    }
    if tag != b'p' {
        return Err(refused(
            PgError::protocol_violation(format!(
                "expected SASL response, got message type {:?}",
                tag as char
            )),
            "protocol violation during authentication",
            true,
        ));
    }
    let len = client.read_i32().await?;
    if !(4..=MAX_AUTH_MESSAGE as i32).contains(&len) {
        return Err(refused(
            PgError::protocol_violation("invalid SASL message length"),
            "protocol violation during authentication",
            true,
        ));
    }
    let mut body = vec![0u8; len as usize - 4];
    client.read_exact(&mut body).await?;
    Ok(body)
}

/// SASLInitialResponse body: mechanism name, then an int32 length and that many bytes.
fn parse_initial_response(body: &[u8]) -> Option<(&str, &[u8])> {
    let nul = body.iter().position(|&b| b == 0)?;
    let mechanism = std::str::from_utf8(&body[..nul]).ok()?;
    let rest = &body[nul + 1..];
    if rest.len() < 4 {
        return None;
    }
    let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let data = &rest[4..];
    if len < 0 || len as usize != data.len() {
        return None;
    }
    Some((mechanism, data))
}

fn scram_refusal(e: ScramError, user: &str) -> AuthError {
    match e {
        ScramError::NoMatch => refused(PgError::invalid_password(user), "wrong token", true),
        ScramError::Mechanism(m) => refused(
            PgError::protocol_violation(format!("unsupported SASL mechanism {m:?}")),
            "unsupported SASL mechanism",
            true,
        ),
        ScramError::ChannelBinding(why) => refused(
            PgError::fatal("28000", format!("SCRAM channel binding failed: {why}")),
            "channel binding failed",
            true,
        ),
        ScramError::Malformed(why) => refused(
            PgError::protocol_violation(format!("malformed SCRAM message: {why}")),
            "malformed SCRAM message",
            true,
        ),
    }
}

/// Runs SCRAM with the client and returns the grant whose token it proved, if that grant admits a
/// session now. Sends SASLFinal on success; AuthenticationOk is left to the caller (after the
/// upstream session is open).
pub async fn authenticate(
    client: &mut ClientStream,
    grants: &GrantService,
    params: &ClientParams,
    tls: Option<&ClientTlsInfo>,
) -> Result<Grant, AuthError> {
    let store_down = |e: crate::store::StoreError| {
        tracing::error!(error = %e, "grant store unavailable during authentication");
        refused(
            PgError::fatal(
                "58000",
                "timebox cannot check grants right now (grant store unavailable)",
            ),
            "grant store unavailable",
            false,
        )
    };
    let salt = grants
        .salt_for(&params.user, &params.target)
        .await
        .map_err(store_down)?;
    let candidates = grants
        .candidates(&params.user, &params.target)
        .await
        .map_err(store_down)?;
    let end_point = tls.map(|t| t.end_point_hash.as_slice());

    let mut out = BytesMut::new();
    let mechanisms: &[&str] = if end_point.is_some() {
        &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
    } else {
        &[SCRAM_SHA_256]
    };
    wire::authentication_sasl(&mut out, mechanisms);
    client.write_all(&out).await?;

    let body = read_password_message(client).await?;
    let (mechanism, data) = parse_initial_response(&body).ok_or_else(|| {
        refused(
            PgError::protocol_violation("malformed SASLInitialResponse"),
            "malformed SASLInitialResponse",
            true,
        )
    })?;
    let (server_first, state) = scram::server_first(mechanism, data, end_point, &salt, SCRAM_ITERATIONS)
        .map_err(|e| scram_refusal(e, &params.user))?;
    out.clear();
    wire::authentication_sasl_continue(&mut out, server_first.as_bytes());
    client.write_all(&out).await?;

    let body = read_password_message(client).await?;
    let verifiers: Vec<_> = candidates.iter().map(|(_, v)| v).collect();
    let (index, server_final) = scram::client_final(&state, &body, end_point, &verifiers)
        .map_err(|e| scram_refusal(e, &params.user))?;
    let grant = candidates[index].0.clone();

    if let Some(why) = grant.refusal_at(grants.now()) {
        return Err(refused(PgError::grant_not_current(&why), why, false));
    }
    out.clear();
    wire::authentication_sasl_final(&mut out, server_final.as_bytes());
    client.write_all(&out).await?;
    Ok(grant)
}

/// Fixed-window count of failed authentications per client address.
#[derive(Debug)]
pub struct AuthThrottle {
    limit: u32,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// Addresses tracked at most; past it, expired windows are swept.
const MAX_TRACKED: usize = 100_000;

impl AuthThrottle {
    pub fn new(limit_per_minute: u32) -> Self {
        AuthThrottle {
            limit: limit_per_minute,
            window: Duration::from_secs(60),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// True if `ip` has used up its failures in the current window.
    pub fn is_blocked(&self, ip: IpAddr, now: Instant) -> bool {
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        matches!(map.get(&ip), Some((start, count)) if now.duration_since(*start) < self.window && *count >= self.limit)
    }

    pub fn record_failure(&self, ip: IpAddr, now: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TRACKED {
            let window = self.window;
            map.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        let entry = map.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_blocks_after_limit_and_resets_after_window() {
        let t = AuthThrottle::new(3);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(!t.is_blocked(ip, t0));
            t.record_failure(ip, t0);
        }
        assert!(t.is_blocked(ip, t0 + Duration::from_secs(30)));
        assert!(!t.is_blocked(other, t0), "per address");
        assert!(!t.is_blocked(ip, t0 + Duration::from_secs(61)), "window over");
        t.record_failure(ip, t0 + Duration::from_secs(61));
        assert!(
            !t.is_blocked(ip, t0 + Duration::from_secs(62)),
            "counting restarted"
        );
    }

    #[test]
    fn initial_response_parsing() {
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&3i32.to_be_bytes());
        body.extend_from_slice(b"abc");
        assert_eq!(
            parse_initial_response(&body),
            Some(("SCRAM-SHA-256", &b"abc"[..]))
        );
        let mut short = b"SCRAM-SHA-256\0".to_vec();
        short.extend_from_slice(&9i32.to_be_bytes());
        short.extend_from_slice(b"abc");
        assert_eq!(parse_initial_response(&short), None);
        assert_eq!(parse_initial_response(b"no-nul"), None);
        let mut negative = b"SCRAM-SHA-256\0".to_vec();
        negative.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(parse_initial_response(&negative), None);
    }
}
