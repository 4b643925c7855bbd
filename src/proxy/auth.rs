//! Client authentication: the grant token as a SCRAM-SHA-256(-PLUS) password, checked against the
//! user's grants on the requested target; then the pure admission check on the matched grant.
//!
//! No oracle: an unknown user, an unknown target, a wrong token and another user's token all go
//! through the same exchange (with the same kind of salt) and end in the same 28P01 message. Only a
//! correct token learns why its grant does not admit a session (expired, revoked, not yet started).
//! Attempts are counted before they are evaluated, per (address, user) and for the whole instance
//! ([`AuthThrottle`]).

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
use crate::grants::token::{ScramVerifier, SCRAM_ITERATIONS};
use crate::grants::{Grant, GrantService};

/// Why authentication ended without a session.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Tell the client this and close.
    #[error("{reason}")]
    Refused {
        /// What kind of refusal, for the metric (never derived from the SQLSTATE).
        kind: AuthFailure,
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

/// Why a login was refused: the `reason` label of `timebox_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No verifier matched the proof (unknown user, wrong token, another user's token).
    WrongToken,
    /// The right token, but its grant does not admit a session now.
    GrantNotCurrent,
    /// The grant store did not answer.
    StoreUnavailable,
    /// The SCRAM-SHA-256-PLUS channel binding does not match this connection.
    ChannelBinding,
    /// A malformed or unexpected authentication message.
    Protocol,
}

impl AuthFailure {
    /// The metric label. A channel-binding failure counts as `protocol` (the client's SCRAM
    /// exchange is wrong for this connection), not as a grant problem.
    pub fn metric_label(self) -> &'static str {
        match self {
            AuthFailure::WrongToken => "wrong_token",
            AuthFailure::GrantNotCurrent => "grant_not_current",
            AuthFailure::StoreUnavailable => "store_unavailable",
            AuthFailure::ChannelBinding | AuthFailure::Protocol => "protocol",
        }
    }
}

fn refused(
    kind: AuthFailure,
    error: PgError,
    reason: impl Into<String>,
    counts_as_failure: bool,
) -> AuthError {
    AuthError::Refused {
        kind,
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
            AuthFailure::Protocol,
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
            AuthFailure::Protocol,
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

fn scram_refusal(e: ScramError, wrong_token: &impl Fn() -> PgError) -> AuthError {
    match e {
        ScramError::NoMatch => refused(AuthFailure::WrongToken, wrong_token(), "wrong token", true),
        ScramError::Mechanism(m) => refused(
            AuthFailure::Protocol,
            PgError::protocol_violation(format!("unsupported SASL mechanism {m:?}")),
            "unsupported SASL mechanism",
            true,
        ),
        ScramError::ChannelBinding(why) => refused(
            AuthFailure::ChannelBinding,
            PgError::channel_binding_failed(why),
            "channel binding failed",
            true,
        ),
        ScramError::Malformed(why) => refused(
            AuthFailure::Protocol,
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
            AuthFailure::StoreUnavailable,
            PgError::for_store_error(&e),
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
    let verifiers: Vec<_> = candidates.iter().map(|(_, v)| v).collect();
    let wrong = || PgError::invalid_password(&params.user);
    let (index, server_final) =
        scram_exchange(client, tls, &salt, SCRAM_ITERATIONS, &verifiers, wrong).await?;
    let grant = candidates[index].0.clone();

    if let Some(why) = grant.refusal_at(grants.now()) {
        return Err(refused(
            AuthFailure::GrantNotCurrent,
            grant_refusal(&grant, grants.now(), &why),
            why,
            false,
        ));
    }
    send_sasl_final(client, &server_final).await?;
    Ok(grant)
}

/// Runs a SCRAM-SHA-256(-PLUS when the client connection is TLS) exchange up to the proof check,
/// with `salt` and `iterations` in the server-first message. Returns the index of the candidate
/// verifier whose key the proof matches, and the server-final message, which the caller sends
/// with [`send_sasl_final`] once its own checks pass. An empty `candidates` (unknown user) goes
/// through the same exchange and ends in the same `wrong_token()` refusal as a wrong token.
pub(crate) async fn scram_exchange(
    client: &mut ClientStream,
    tls: Option<&ClientTlsInfo>,
    salt: &[u8],
    iterations: u32,
    candidates: &[&ScramVerifier],
    wrong_token: impl Fn() -> PgError,
) -> Result<(usize, String), AuthError> {
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
            AuthFailure::Protocol,
            PgError::protocol_violation("malformed SASLInitialResponse"),
            "malformed SASLInitialResponse",
            true,
        )
    })?;
    let (server_first, state) = scram::server_first(mechanism, data, end_point, salt, iterations)
        .map_err(|e| scram_refusal(e, &wrong_token))?;
    out.clear();
    wire::authentication_sasl_continue(&mut out, server_first.as_bytes());
    client.write_all(&out).await?;

    let body = read_password_message(client).await?;
    scram::client_final(&state, &body, end_point, candidates).map_err(|e| scram_refusal(e, &wrong_token))
}

/// Sends SASLFinal (the server's signature) after a successful [`scram_exchange`].
pub(crate) async fn send_sasl_final(client: &mut ClientStream, server_final: &str) -> Result<(), AuthError> {
    let mut out = BytesMut::new();
    wire::authentication_sasl_final(&mut out, server_final.as_bytes());
    client.write_all(&out).await?;
    Ok(())
}

/// Failed (and in-flight) authentications in fixed one-minute windows, per (client address, user),
/// per client address and for the whole instance.
///
/// An attempt is counted *before* it is evaluated: [`AuthThrottle::reserve`] takes a slot, and only
/// [`Reservation::release`] (a successful login, or a client that left before offering a proof)
/// gives it back. A concurrent burst therefore cannot get more than `per_user_and_address`
/// evaluations, and another user at the same address keeps its own budget. An attempt past a
/// tier's limit is refused as a failure (28000) when failures fill that window, and as busy
/// ([`Throttled::InFlight`], 53300, try again) when attempts still in flight do. The per-address
/// tier stops one address from spraying many user names (and from using up the global ceiling
/// alone); the global ceiling bounds guesses spread over many addresses.
#[derive(Debug)]
pub struct AuthThrottle {
    limits: ThrottleLimits,
    window: Duration,
    counts: Mutex<ThrottleCounts>,
}

/// Attempts allowed per window by each tier of an [`AuthThrottle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleLimits {
    pub per_user_and_address: u32,
    pub per_address: u32,
    pub global: u32,
}

#[derive(Debug, Default)]
struct ThrottleCounts {
    keys: HashMap<(IpAddr, String), Window>,
    addresses: HashMap<IpAddr, Window>,
    global: Option<Window>,
    /// When expired windows were last dropped: at most once per window length, so the table holds
    /// about two windows of admitted attempts, not every key a past flood left.
    swept_at: Option<Instant>,
}

impl ThrottleCounts {
    /// Drops the windows that have ended by `now`.
    fn sweep(&mut self, now: Instant, length: Duration) {
        self.keys.retain(|_, w| now.duration_since(w.start) < length);
        self.addresses.retain(|_, w| now.duration_since(w.start) < length);
        self.swept_at = Some(now);
    }
}

/// One fixed window: when it started, how many attempts it holds (failed or still in flight),
/// and how many of those are still in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    start: Instant,
    count: u32,
    in_flight: u32,
}

/// Why a window has no room: its failures fill it, or attempts not yet decided do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Full {
    Failures,
    InFlight,
}

impl Window {
    /// The window `w` as seen at `now` (a fresh one once `length` has passed), if it has room for
    /// one more attempt under `limit`.
    fn admit(w: Option<Window>, now: Instant, length: Duration, limit: u32) -> Result<Window, Full> {
        let w = match w {
            Some(w) if now.duration_since(w.start) < length => w,
            _ => Window {
                start: now,
                count: 0,
                in_flight: 0,
            },
        };
        if w.count < limit {
            Ok(w)
        } else if w.count.saturating_sub(w.in_flight) >= limit {
            Err(Full::Failures)
        } else {
            Err(Full::InFlight)
        }
    }

    fn plus_one(self) -> Window {
        Window {
            count: self.count + 1,
            in_flight: self.in_flight + 1,
            ..self
        }
    }

    /// Settles one attempt counted in the window that started at `start` (not in a later one): it
    /// is no longer in flight, and a success no longer counts at all.
    fn settle(w: Option<&mut Window>, start: Instant, succeeded: bool) {
        if let Some(w) = w.filter(|w| w.start == start) {
            w.in_flight = w.in_flight.saturating_sub(1);
            if succeeded {
                w.count = w.count.saturating_sub(1);
            }
        }
    }
}

/// Why an attempt was refused before it was evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Throttled {
    #[error("too many failed authentications for this user from this address")]
    AddressAndUser,
    #[error("too many failed authentications from this address")]
    Address,
    #[error("too many failed authentications on this instance")]
    Global,
    /// A tier's window is full, but not of failures: of attempts not yet decided (e.g. a pool
    /// opening many connections at once). Nothing failed; the client may try again shortly.
    #[error("too many authentications in progress at once")]
    InFlight,
}

impl Throttled {
    /// The FATAL the client gets.
    pub fn to_pg_error(self) -> PgError {
        match self {
            Throttled::AddressAndUser => PgError::too_many_auth_failures(),
            Throttled::Address => PgError::too_many_auth_failures_from_address(),
            Throttled::Global => PgError::too_many_auth_failures_globally(),
            Throttled::InFlight => PgError::too_many_logins_in_progress(),
        }
    }
}

/// A counted attempt, in flight until settled. Dropped without [`Reservation::release`], it
/// stays counted as a failure.
#[derive(Debug)]
#[must_use = "a reservation is released on success, or counts as a failure when dropped"]
pub struct Reservation<'a> {
    throttle: &'a AuthThrottle,
    key: (IpAddr, String),
    /// Start of the window each tier counted the attempt in.
    windows: [Instant; 3],
    settled: bool,
}

impl Reservation<'_> {
    /// Gives the slot back: the attempt succeeded (or was never evaluated).
    pub fn release(mut self) {
        self.settle(true);
    }

    fn settle(&mut self, succeeded: bool) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let mut counts = self.throttle.counts.lock().unwrap_or_else(|e| e.into_inner());
        let [key, address, global] = self.windows;
        Window::settle(counts.keys.get_mut(&self.key), key, succeeded);
        Window::settle(counts.addresses.get_mut(&self.key.0), address, succeeded);
        Window::settle(counts.global.as_mut(), global, succeeded);
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.settle(false);
    }
}

/// (address, user) keys tracked at most; past it, expired windows are swept, and if that is not
/// enough new keys are refused (fail closed) until the window turns.
const MAX_TRACKED: usize = 100_000;

impl AuthThrottle {
    pub fn new(limits: ThrottleLimits) -> Self {
        AuthThrottle {
            limits,
            window: Duration::from_secs(60),
            counts: Mutex::new(ThrottleCounts::default()),
        }
    }

    /// (address, user) keys tracked now (each with its window).
    pub fn tracked(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).keys.len()
    }

    /// Counts an attempt by `user` from `ip` before it is evaluated, or refuses it if a tier's
    /// budget is used up.
    pub fn reserve(&self, ip: IpAddr, user: &str, now: Instant) -> Result<Reservation<'_>, Throttled> {
        let (length, limits) = (self.window, self.limits);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let key = (ip, user.to_owned());
        if counts.swept_at.is_none_or(|at| now.duration_since(at) >= length) {
            counts.sweep(now, length);
        }
        if !counts.keys.contains_key(&key) && counts.keys.len() >= MAX_TRACKED {
            counts.sweep(now, length);
            if counts.keys.len() >= MAX_TRACKED {
                return Err(Throttled::Global);
            }
        }
        let tiers = (
            Window::admit(counts.global, now, length, limits.global),
            Window::admit(
                counts.addresses.get(&ip).copied(),
                now,
                length,
                limits.per_address,
            ),
            Window::admit(
                counts.keys.get(&key).copied(),
                now,
                length,
                limits.per_user_and_address,
            ),
        );
        let (global, address, entry) = match tiers {
            (Ok(global), Ok(address), Ok(entry)) => (global, address, entry),
            (global, address, entry) => {
                // A tier full of failures says so; only when none is, the attempt is just early.
                let full = [
                    (global.err(), Throttled::Global),
                    (address.err(), Throttled::Address),
                    (entry.err(), Throttled::AddressAndUser),
                ];
                return Err(full
                    .into_iter()
                    .find(|(f, _)| *f == Some(Full::Failures))
                    .map_or(Throttled::InFlight, |(_, tier)| tier));
            }
        };
        counts.global = Some(global.plus_one());
        counts.addresses.insert(ip, address.plus_one());
        counts.keys.insert(key.clone(), entry.plus_one());
        Ok(Reservation {
            throttle: self,
            key,
            windows: [entry.start, address.start, global.start],
            settled: false,
        })
    }
}

/// The FATAL for a right token whose grant does not admit a session at `now` (`why` is
/// [`Grant::refusal_at`]'s text): a grant that has not started tells the engineer to come back then;
/// any other, to ask for a new grant.
pub(crate) fn grant_refusal(
    grant: &crate::grants::Grant,
    now: chrono::DateTime<chrono::Utc>,
    why: &str,
) -> PgError {
    match grant.status_at(now) {
        crate::grants::GrantStatus::Pending => PgError::grant_not_started(why),
        _ => PgError::grant_not_current(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "alice";

    /// The auth-failure metric's label comes from the kind of refusal, not from its SQLSTATE:
    /// a channel-binding failure shares 28000 with a grant that is not current, but it is a
    /// protocol problem. (Regression: the label used to be mapped from `error.code`.)
    #[test]
    fn refusals_are_labelled_by_kind_not_by_sqlstate() {
        let wrong = || PgError::invalid_password(ALICE);
        let label = |e: ScramError| match scram_refusal(e, &wrong) {
            AuthError::Refused { kind, error, .. } => (kind.metric_label(), error.code),
            other => panic!("{other:?}"),
        };
        assert_eq!(label(ScramError::NoMatch), ("wrong_token", "28P01"));
        assert_eq!(label(ScramError::ChannelBinding("x")), ("protocol", "28000"));
        assert_eq!(label(ScramError::Malformed("x")), ("protocol", "08P01"));
        assert_eq!(label(ScramError::Mechanism("MD5".into())), ("protocol", "08P01"));
        assert_eq!(AuthFailure::GrantNotCurrent.metric_label(), "grant_not_current");
        assert_eq!(AuthFailure::StoreUnavailable.metric_label(), "store_unavailable");
    }

    fn limits(per_user_and_address: u32, per_address: u32, global: u32) -> ThrottleLimits {
        ThrottleLimits {
            per_user_and_address,
            per_address,
            global,
        }
    }

    #[test]
    fn one_address_cannot_spray_user_names() {
        let t = AuthThrottle::new(limits(3, 5, 1000));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..5 {
            drop(t.reserve(ip, &format!("u{i}"), t0).unwrap());
        }
        assert_eq!(t.reserve(ip, "u9", t0).err(), Some(Throttled::Address));
        assert!(t.reserve("10.0.0.2".parse().unwrap(), "u9", t0).is_ok());
    }

    #[test]
    fn throttle_blocks_after_limit_and_resets_after_window() {
        let t = AuthThrottle::new(limits(3, 1000, 1000));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            drop(t.reserve(ip, ALICE, t0).expect("within the limit"));
        }
        let later = t0 + Duration::from_secs(30);
        assert_eq!(t.reserve(ip, ALICE, later).err(), Some(Throttled::AddressAndUser));
        assert!(t.reserve(other, ALICE, later).is_ok(), "per address");
        assert!(t.reserve(ip, "bob", later).is_ok(), "per user");
        let next = t0 + Duration::from_secs(61);
        assert!(t.reserve(ip, ALICE, next).is_ok(), "window over");
    }

    /// Regression (issue 16, 12c): concurrent attempts all passed `is_blocked` before any failure
    /// was recorded, so a burst of 60 got 14 evaluations. Reservations in flight count.
    #[test]
    fn attempts_in_flight_count_against_the_limit() {
        let t = AuthThrottle::new(limits(3, 1000, 1000));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        let held: Vec<_> = (0..60).filter_map(|_| t.reserve(ip, ALICE, t0).ok()).collect();
        assert_eq!(held.len(), 3, "a burst gets exactly `limit` evaluations");
        drop(held);
        assert!(
            t.reserve(ip, ALICE, t0).is_err(),
            "dropped reservations stay counted"
        );
    }

    /// Regression (issue 12 item 6): a pool opening more connections at once than the limit, all
    /// with the right token, was told "too many failed authentication attempts" although nothing
    /// had failed. A window full of attempts still in flight is its own refusal (53300, try again);
    /// one full of failures is the throttle's 28000, for every tier.
    #[test]
    fn a_window_full_of_attempts_in_flight_is_busy_not_failed() {
        let t = AuthThrottle::new(limits(3, 1000, 1000));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        let held: Vec<_> = (0..3).map(|_| t.reserve(ip, ALICE, t0).unwrap()).collect();
        assert_eq!(t.reserve(ip, ALICE, t0).err(), Some(Throttled::InFlight));
        assert_eq!(Throttled::InFlight.to_pg_error().code, "53300");
        let mut held = held.into_iter();
        held.next().unwrap().release();
        assert!(t.reserve(ip, ALICE, t0).is_ok_and(|r| {
            r.release();
            true
        }));
        drop(held); // the two still in flight fail
        let r = t.reserve(ip, ALICE, t0).unwrap(); // one failure-free slot is left
        assert_eq!(t.reserve(ip, ALICE, t0).err(), Some(Throttled::InFlight));
        drop(r);
        assert_eq!(t.reserve(ip, ALICE, t0).err(), Some(Throttled::AddressAndUser));

        let t = AuthThrottle::new(limits(1000, 2, 1000));
        let a = t.reserve(ip, "a", t0).unwrap();
        let _b = t.reserve(ip, "b", t0).unwrap();
        assert_eq!(t.reserve(ip, "c", t0).err(), Some(Throttled::InFlight));
        drop(a);
        assert_eq!(t.reserve(ip, "c", t0).err(), Some(Throttled::InFlight));
        let t = AuthThrottle::new(limits(1000, 1000, 1));
        let _a = t.reserve(ip, "a", t0).unwrap();
        assert_eq!(t.reserve(ip, "b", t0).err(), Some(Throttled::InFlight));
    }

    #[test]
    fn released_reservations_do_not_count() {
        let t = AuthThrottle::new(limits(2, 1000, 1000));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..10 {
            t.reserve(ip, ALICE, t0).expect("successes never block").release();
        }
        // a release from an earlier window does not eat into the new one
        let old = t.reserve(ip, ALICE, t0).unwrap();
        let t1 = t0 + Duration::from_secs(61);
        let a = t.reserve(ip, ALICE, t1).unwrap();
        old.release();
        let b = t.reserve(ip, ALICE, t1).unwrap();
        assert!(t.reserve(ip, ALICE, t1).is_err());
        drop((a, b));
    }

    #[test]
    fn the_global_ceiling_covers_every_address_and_user() {
        let t = AuthThrottle::new(limits(3, 1000, 5));
        let t0 = Instant::now();
        for i in 0..5u8 {
            let ip = IpAddr::from([10, 0, 0, i]);
            drop(t.reserve(ip, &format!("u{i}"), t0).unwrap());
        }
        let fresh: IpAddr = "10.9.9.9".parse().unwrap();
        assert_eq!(t.reserve(fresh, "zed", t0).err(), Some(Throttled::Global));
        assert!(t.reserve(fresh, "zed", t0 + Duration::from_secs(60)).is_ok());
    }

    /// Regression (issue 12 item 6): expired windows were only swept once 100,000 keys had piled
    /// up, so the table kept every (address, user) of every past flood, up to ~10 KB of user name
    /// each (the startup packet's bound): about a gigabyte. Stale keys now go when the window turns.
    #[test]
    fn stale_keys_are_swept_when_the_window_turns() {
        let t = AuthThrottle::new(limits(3, 1000, 100_000));
        let t0 = Instant::now();
        for minute in 0..5u64 {
            let now = t0 + Duration::from_secs(61 * minute);
            for i in 0..500u32 {
                let ip = IpAddr::from(i.to_be_bytes());
                drop(t.reserve(ip, &format!("user{minute}-{i}"), now).unwrap());
            }
            assert!(
                t.tracked() <= 500,
                "minute {minute}: {} keys tracked, 500 are current",
                t.tracked()
            );
        }
        // A key still inside its window is kept (and still counts).
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let now = t0 + Duration::from_secs(1000);
        for _ in 0..3 {
            drop(t.reserve(ip, ALICE, now).unwrap());
        }
        let sweep = now + Duration::from_secs(59);
        drop(t.reserve("10.0.0.2".parse().unwrap(), "bob", sweep).unwrap());
        assert_eq!(t.reserve(ip, ALICE, sweep).err(), Some(Throttled::AddressAndUser));
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
