//! Server side of SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (RFC 5802, RFC 7677, RFC 5929
//! `tls-server-end-point`), as pure functions over the exchanged messages.
//!
//! Why not pgwire's SCRAM server: it verifies a proof against exactly one verifier. A user may hold
//! several grants on one target (a read grant and, later, a write grant); all of them share the
//! (user, target) salt (see `grants::token`), so one exchange checks the proof against each grant's
//! StoredKey and the match tells which grant the presented token belongs to. The primitives (HMAC,
//! SHA-256, PBKDF2) come from the RustCrypto crates; this module only does the message handling,
//! and its tests run it against the SCRAM client of the `postgres-protocol` crate (what
//! tokio-postgres uses) and, in the wire tests, against libpq (psql).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::grants::token::{hmac, ScramVerifier};

pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("SCRAM channel binding check failed: {0}")]
    ChannelBinding(&'static str),
    #[error("unsupported SASL mechanism {0:?}")]
    Mechanism(String),
    /// The proof matches none of the candidate verifiers.
    #[error("SCRAM proof does not match")]
    NoMatch,
}

/// State kept between the server-first and client-final messages.
#[derive(Debug, Clone)]
pub struct ServerFirstSent {
    gs2_header: String,
    uses_channel_binding: bool,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

/// Handles the client-first message (the data of SASLInitialResponse). `tls_end_point` is the
/// channel-binding data when the client connection is TLS (we then advertise -PLUS), `None` otherwise.
/// Returns the server-first message to send and the state for the final step.
pub fn server_first(
    mechanism: &str,
    client_first: &[u8],
    tls_end_point: Option<&[u8]>,
    salt: &[u8],
    iterations: u32,
) -> Result<(String, ServerFirstSent), ScramError> {
    let plus = match mechanism {
        SCRAM_SHA_256 => false,
        SCRAM_SHA_256_PLUS => true,
        other => return Err(ScramError::Mechanism(other.to_owned())),
    };
    if plus && tls_end_point.is_none() {
        return Err(ScramError::ChannelBinding(
            "SCRAM-SHA-256-PLUS needs a TLS connection",
        ));
    }
    let text =
        std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("client-first is not UTF-8"))?;
    // gs2-header: cbind-flag "," [authzid] ","
    let (flag, rest) = text
        .split_once(',')
        .ok_or(ScramError::Malformed("missing gs2 header"))?;
    let (authzid, bare) = rest
        .split_once(',')
        .ok_or(ScramError::Malformed("missing gs2 header"))?;
    if !authzid.is_empty() {
        return Err(ScramError::Malformed("authorization identity is not supported"));
    }
    let uses_channel_binding = match flag {
        "n" => false,
        "y" if tls_end_point.is_some() => {
            // The client could bind but believes we cannot, although we advertised -PLUS.
            return Err(ScramError::ChannelBinding(
                "client did not use the advertised channel binding",
            ));
        }
        "y" => false,
        "p=tls-server-end-point" => true,
        f if f.starts_with("p=") => {
            return Err(ScramError::ChannelBinding("unsupported channel binding type"))
        }
        _ => return Err(ScramError::Malformed("invalid channel binding flag")),
    };
    if uses_channel_binding != plus {
        return Err(ScramError::ChannelBinding(
            "channel binding flag does not match the mechanism",
        ));
    }
    let gs2_header = format!("{flag},{authzid},");

    // client-first-bare: "n=" user "," "r=" nonce ["," extensions]; PostgreSQL ignores the user here.
    let mut parts = bare.split(',');
    let user = parts.next().ok_or(ScramError::Malformed("missing user name"))?;
    if !user.starts_with("n=") {
        return Err(ScramError::Malformed("expected n= attribute"));
    }
    let client_nonce = parts
        .next()
        .and_then(|p| p.strip_prefix("r="))
        .ok_or(ScramError::Malformed("expected r= attribute"))?;
    if client_nonce.is_empty()
        || !client_nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
    {
        return Err(ScramError::Malformed("invalid client nonce"));
    }
    if parts.any(|p| p.starts_with("m=")) {
        return Err(ScramError::Malformed("mandatory extensions are not supported"));
    }

    let mut server_nonce = [0u8; 18];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut server_nonce);
    let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
    let server_first = format!("r={nonce},s={},i={iterations}", B64.encode(salt));
    Ok((
        server_first.clone(),
        ServerFirstSent {
            gs2_header,
            uses_channel_binding,
            client_first_bare: bare.to_owned(),
            server_first,
            nonce,
        },
    ))
}

/// Handles the client-final message: checks channel binding and nonce, then the proof against each
/// candidate. Returns the index of the matching candidate and the server-final message.
pub fn client_final(
    state: &ServerFirstSent,
    client_final: &[u8],
    tls_end_point: Option<&[u8]>,
    candidates: &[&ScramVerifier],
) -> Result<(usize, String), ScramError> {
    let text =
        std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("client-final is not UTF-8"))?;
    let (without_proof, proof) = text
        .rsplit_once(",p=")
        .ok_or(ScramError::Malformed("missing proof"))?;
    let mut parts = without_proof.split(',');
    let cbind = parts
        .next()
        .and_then(|p| p.strip_prefix("c="))
        .ok_or(ScramError::Malformed("expected c= attribute"))?;
    let nonce = parts
        .next()
        .and_then(|p| p.strip_prefix("r="))
        .ok_or(ScramError::Malformed("expected r= attribute"))?;

    let mut expected_cbind = state.gs2_header.as_bytes().to_vec();
    if state.uses_channel_binding {
        let data = tls_end_point.ok_or(ScramError::ChannelBinding("no TLS channel to bind to"))?;
        expected_cbind.extend_from_slice(data);
    }
    let cbind = B64
        .decode(cbind)
        .map_err(|_| ScramError::Malformed("c= is not base64"))?;
    if cbind != expected_cbind {
        return Err(ScramError::ChannelBinding(
            "channel binding data does not match this TLS connection",
        ));
    }
    if nonce != state.nonce {
        return Err(ScramError::Malformed("nonce does not match"));
    }
    let proof = B64
        .decode(proof)
        .map_err(|_| ScramError::Malformed("p= is not base64"))?;
    if proof.len() != 32 {
        return Err(ScramError::Malformed("proof has the wrong length"));
    }

    let auth_message = format!(
        "{},{},{}",
        state.client_first_bare, state.server_first, without_proof
    );
    for (i, v) in candidates.iter().enumerate() {
        let signature = hmac(&v.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for (k, (p, s)) in client_key.iter_mut().zip(proof.iter().zip(signature.iter())) {
            *k = p ^ s;
        }
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        if bool::from(stored.ct_eq(&v.stored_key)) {
            let server_signature = hmac(&v.server_key, auth_message.as_bytes());
            return Ok((i, format!("v={}", B64.encode(server_signature))));
        }
    }
    Err(ScramError::NoMatch)
}

/// Client side of SCRAM-SHA-256 without channel binding (`n,,`), for timebox's own upstream
/// logins. Unlike `postgres-protocol`'s client it takes the salted password from the caller, so
/// the relay can keep it per (password, salt, iterations) and skip PBKDF2 — 4,096 HMAC rounds by
/// default — on every new upstream connection ([`SaltedPasswordCache`]). Only for ASCII
/// passwords, whose SASLprep form is the password itself; others go through `postgres-protocol`.
#[derive(Debug, Clone)]
pub struct ScramClient {
    nonce: String,
}

/// What the server's first message asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFirst {
    message: String,
    nonce: String,
    pub salt: Vec<u8>,
    pub iterations: u32,
}

impl Default for ScramClient {
    fn default() -> Self {
        Self::new()
    }
}

impl ScramClient {
    pub fn new() -> ScramClient {
        let nonce: [u8; 18] = rand::random();
        ScramClient {
            nonce: B64.encode(nonce),
        }
    }

    fn first_bare(&self) -> String {
        format!("n=,r={}", self.nonce)
    }

    /// The client-first message (`n,,n=,r=NONCE`; PostgreSQL takes the user from the startup).
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.first_bare())
    }

    /// Parses the server-first message; the server's nonce must extend ours.
    pub fn server_first(&self, message: &[u8]) -> Result<ServerFirst, ScramError> {
        let text =
            std::str::from_utf8(message).map_err(|_| ScramError::Malformed("server-first is not UTF-8"))?;
        let mut parts = text.split(',');
        let nonce = parts
            .next()
            .and_then(|p| p.strip_prefix("r="))
            .ok_or(ScramError::Malformed("server-first without a nonce"))?;
        let salt = parts
            .next()
            .and_then(|p| p.strip_prefix("s="))
            .and_then(|s| B64.decode(s).ok())
            .ok_or(ScramError::Malformed("server-first without a valid salt"))?;
        let iterations: u32 = parts
            .next()
            .and_then(|p| p.strip_prefix("i="))
            .and_then(|i| i.parse().ok())
            .filter(|i| *i > 0)
            .ok_or(ScramError::Malformed(
                "server-first without a valid iteration count",
            ))?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::Malformed("the server's nonce does not extend ours"));
        }
        Ok(ServerFirst {
            message: text.to_owned(),
            nonce: nonce.to_owned(),
            salt,
            iterations,
        })
    }

    /// The client-final message, and the server signature the server-final must carry.
    pub fn client_final(&self, server: &ServerFirst, salted_password: &[u8; 32]) -> (String, [u8; 32]) {
        let without_proof = format!("c=biws,r={}", server.nonce);
        let auth_message = format!("{},{},{}", self.first_bare(), server.message, without_proof);
        let client_key = hmac(salted_password, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(signature).map(|(k, s)| k ^ s).collect();
        let server_key = hmac(salted_password, b"Server Key");
        let server_signature = hmac(&server_key, auth_message.as_bytes());
        (
            format!("{without_proof},p={}", B64.encode(proof)),
            server_signature,
        )
    }

    /// Checks the server-final message against the expected server signature.
    pub fn verify_server_final(message: &[u8], expected: &[u8; 32]) -> Result<(), ScramError> {
        let text =
            std::str::from_utf8(message).map_err(|_| ScramError::Malformed("server-final is not UTF-8"))?;
        let verifier = text
            .split(',')
            .next()
            .and_then(|p| p.strip_prefix("v="))
            .and_then(|v| B64.decode(v).ok())
            .ok_or(ScramError::Malformed("server-final without a verifier"))?;
        if bool::from(verifier.ct_eq(expected)) {
            Ok(())
        } else {
            Err(ScramError::NoMatch)
        }
    }
}

/// Salted passwords of upstream logins, keyed by a hash of (password, salt, iterations), so one
/// PBKDF2 per upstream role and server serves every later connection. In memory only, like the
/// passwords themselves; bounded (cleared when full).
#[derive(Debug, Default)]
pub struct SaltedPasswordCache {
    entries: std::sync::Mutex<std::collections::HashMap<[u8; 32], [u8; 32]>>,
}

impl SaltedPasswordCache {
    const MAX_ENTRIES: usize = 256;

    /// Upstream iteration counts above this are refused (PostgreSQL's default is 4,096): a server
    /// must not be able to make timebox spend minutes of CPU on one login.
    pub const MAX_ITERATIONS: u32 = 10_000_000;

    /// The cache key of (password, salt, iterations).
    fn key(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update((password.len() as u64).to_be_bytes());
        h.update(password);
        h.update(iterations.to_be_bytes());
        h.update(salt);
        h.finalize().into()
    }

    /// PBKDF2-HMAC-SHA-256: the SCRAM salted password.
    fn derive(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut salted);
        salted
    }

    fn get(&self, key: &[u8; 32]) -> Option<[u8; 32]> {
        self.lock().get(key).copied()
    }

    fn insert(&self, key: [u8; 32], salted: [u8; 32]) {
        let mut entries = self.lock();
        if entries.len() >= Self::MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(key, salted);
    }

    /// The salted password for `password` under the server's salt and iteration count: from the
    /// cache, or derived on the blocking pool (PBKDF2 is thousands of HMAC rounds; never on an
    /// async worker) and kept.
    pub async fn salted(
        &self,
        password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> Result<[u8; 32], tokio::task::JoinError> {
        let key = Self::key(password, salt, iterations);
        if let Some(hit) = self.get(&key) {
            return Ok(hit);
        }
        let (password, salt) = (password.to_vec(), salt.to_vec());
        let salted = tokio::task::spawn_blocking(move || Self::derive(&password, &salt, iterations)).await?;
        self.insert(key, salted);
        Ok(salted)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<[u8; 32], [u8; 32]>> {
        // Nothing in the map can be left inconsistent by a panic.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    const SALT: &[u8] = b"0123456789abcdef";

    fn verifier(token: &str) -> ScramVerifier {
        ScramVerifier::derive(token, SALT, 4096)
    }

    /// Runs a full exchange with the postgres-protocol client; returns the matched index.
    fn exchange(
        client_password: &str,
        binding: ChannelBinding,
        mechanism: &str,
        tls: Option<&[u8]>,
        candidates: &[&ScramVerifier],
    ) -> Result<usize, ScramError> {
        let mut client = ScramSha256::new(client_password.as_bytes(), binding);
        let (first, state) = server_first(mechanism, client.message(), tls, SALT, 4096)?;
        client
            .update(first.as_bytes())
            .expect("client accepts server-first");
        let (index, last) = client_final(&state, client.message(), tls, candidates)?;
        client
            .finish(last.as_bytes())
            .expect("client verifies the server signature");
        Ok(index)
    }

    /// Our upstream client against this module's server (itself checked against postgres-protocol
    /// and libpq): the server must accept the proof, and the client the server's signature.
    async fn client_exchange(
        password: &str,
        cache: &SaltedPasswordCache,
        candidates: &[&ScramVerifier],
    ) -> Result<usize, ScramError> {
        let client = ScramClient::new();
        let (first, state) = server_first(SCRAM_SHA_256, client.client_first().as_bytes(), None, SALT, 4096)?;
        let server = client.server_first(first.as_bytes())?;
        assert_eq!((server.salt.as_slice(), server.iterations), (SALT, 4096));
        let salted = cache
            .salted(password.as_bytes(), &server.salt, server.iterations)
            .await
            .unwrap();
        let (message, expected) = client.client_final(&server, &salted);
        let (index, last) = client_final(&state, message.as_bytes(), None, candidates)?;
        ScramClient::verify_server_final(last.as_bytes(), &expected)?;
        Ok(index)
    }

    #[tokio::test]
    async fn the_upstream_client_logs_in_with_cached_salted_passwords() {
        let v = verifier("s3cret-upstream");
        let cache = SaltedPasswordCache::default();
        assert_eq!(client_exchange("s3cret-upstream", &cache, &[&v]).await, Ok(0));
        assert_eq!(cache.len(), 1);
        // Second login: same salted password from the cache, fresh nonces, still valid.
        assert_eq!(client_exchange("s3cret-upstream", &cache, &[&v]).await, Ok(0));
        assert_eq!(cache.len(), 1, "one PBKDF2 per (password, salt, iterations)");
        // A different password is another entry, and the server refuses it.
        assert_eq!(
            client_exchange("wrong", &cache, &[&v]).await,
            Err(ScramError::NoMatch)
        );
        assert_eq!(cache.len(), 2);
        // The cached value is the real salted password.
        let mut direct = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(b"s3cret-upstream", SALT, 4096, &mut direct);
        assert_eq!(
            cache.salted(b"s3cret-upstream", SALT, 4096).await.unwrap(),
            direct
        );
    }

    #[tokio::test]
    async fn the_upstream_client_refuses_a_forged_server() {
        let client = ScramClient::new();
        // A server nonce that does not extend ours, or only repeats it.
        let own = client.client_first();
        let nonce = own.rsplit_once("r=").unwrap().1.to_owned();
        let salt = B64.encode(SALT);
        assert!(client
            .server_first(format!("r=other{nonce},s={salt},i=4096").as_bytes())
            .is_err());
        assert!(client
            .server_first(format!("r={nonce},s={salt},i=4096").as_bytes())
            .is_err());
        assert!(client
            .server_first(format!("r={nonce}x,s=!!,i=4096").as_bytes())
            .is_err());
        assert!(client
            .server_first(format!("r={nonce}x,s={salt},i=0").as_bytes())
            .is_err());
        // A server that does not know the password cannot produce the signature.
        let server = client
            .server_first(format!("r={nonce}x,s={salt},i=4096").as_bytes())
            .unwrap();
        let cache = SaltedPasswordCache::default();
        let salted = cache.salted(b"pw", SALT, 4096).await.unwrap();
        let (_, expected) = client.client_final(&server, &salted);
        let forged = format!("v={}", B64.encode([0u8; 32]));
        assert_eq!(
            ScramClient::verify_server_final(forged.as_bytes(), &expected),
            Err(ScramError::NoMatch)
        );
        assert!(ScramClient::verify_server_final(b"e=other-error", &expected).is_err());
    }

    #[test]
    fn picks_the_grant_whose_token_was_used() {
        let (a, b, c) = (verifier("tbx_a"), verifier("tbx_b"), verifier("tbx_c"));
        let candidates = [&a, &b, &c];
        assert_eq!(
            exchange(
                "tbx_b",
                ChannelBinding::unsupported(),
                SCRAM_SHA_256,
                None,
                &candidates
            ),
            Ok(1)
        );
        assert_eq!(
            exchange(
                "tbx_c",
                ChannelBinding::unsupported(),
                SCRAM_SHA_256,
                None,
                &candidates
            ),
            Ok(2)
        );
        assert_eq!(
            exchange(
                "tbx_wrong",
                ChannelBinding::unsupported(),
                SCRAM_SHA_256,
                None,
                &candidates
            ),
            Err(ScramError::NoMatch)
        );
        assert_eq!(
            exchange("tbx_a", ChannelBinding::unsupported(), SCRAM_SHA_256, None, &[]),
            Err(ScramError::NoMatch),
            "unknown user: no candidates, same error"
        );
    }

    #[test]
    fn channel_binding_over_tls() {
        let v = verifier("tbx_a");
        let hash = [9u8; 32];
        assert_eq!(
            exchange(
                "tbx_a",
                ChannelBinding::tls_server_end_point(hash.to_vec()),
                SCRAM_SHA_256_PLUS,
                Some(&hash),
                &[&v]
            ),
            Ok(0)
        );
        // plain SCRAM over TLS with "n" is accepted (clients with channel_binding=disable)
        assert_eq!(
            exchange(
                "tbx_a",
                ChannelBinding::unsupported(),
                SCRAM_SHA_256,
                Some(&hash),
                &[&v]
            ),
            Ok(0)
        );
        // a client binding to a different certificate (man in the middle) is refused
        assert!(matches!(
            exchange(
                "tbx_a",
                ChannelBinding::tls_server_end_point(vec![1u8; 32]),
                SCRAM_SHA_256_PLUS,
                Some(&hash),
                &[&v]
            ),
            Err(ScramError::ChannelBinding(_))
        ));
        // "y" while we advertised -PLUS is a downgrade
        assert!(matches!(
            exchange(
                "tbx_a",
                ChannelBinding::unrequested(),
                SCRAM_SHA_256,
                Some(&hash),
                &[&v]
            ),
            Err(ScramError::ChannelBinding(_))
        ));
        // "y" without TLS is fine
        assert_eq!(
            exchange("tbx_a", ChannelBinding::unrequested(), SCRAM_SHA_256, None, &[&v]),
            Ok(0)
        );
        // -PLUS without TLS is refused
        assert!(matches!(
            exchange(
                "tbx_a",
                ChannelBinding::tls_server_end_point(hash.to_vec()),
                SCRAM_SHA_256_PLUS,
                None,
                &[&v]
            ),
            Err(ScramError::ChannelBinding(_))
        ));
    }

    #[test]
    fn malformed_messages_are_rejected() {
        let first = |m: &[u8]| server_first(SCRAM_SHA_256, m, None, SALT, 4096).map(|_| ());
        assert_eq!(
            first(b"garbage"),
            Err(ScramError::Malformed("missing gs2 header"))
        );
        assert!(first(b"n,a=admin,n=,r=abc").is_err(), "authzid");
        assert!(first(b"x,,n=,r=abc").is_err(), "bad flag");
        assert!(first(b"n,,n=,r=").is_err(), "empty nonce");
        assert!(first(b"n,,n=,r=abc,m=ext").is_err(), "mandatory extension");
        assert!(first(b"n,,r=abc").is_err(), "missing n=");
        assert!(first(&[0xff, 0xfe]).is_err(), "not UTF-8");
        assert!(first(b"n,,n=,r=abc").is_ok());
        assert_eq!(
            server_first("SCRAM-SHA-1", b"n,,n=,r=abc", None, SALT, 4096).unwrap_err(),
            ScramError::Mechanism("SCRAM-SHA-1".into())
        );

        let (_, state) = server_first(SCRAM_SHA_256, b"n,,n=,r=abc", None, SALT, 4096).unwrap();
        let v = verifier("x");
        let fin = |m: &str| client_final(&state, m.as_bytes(), None, &[&v]).map(|_| ());
        assert!(fin("c=biws,r=abc").is_err(), "no proof");
        assert!(fin("c=biws,r=wrongnonce,p=AAAA").is_err());
        assert!(
            fin(&format!("c=eSws,r={},p=AAAA", state.nonce)).is_err(),
            "cbind mismatch"
        );
        assert_eq!(
            fin(&format!("c=biws,r={},p=AAAA", state.nonce)),
            Err(ScramError::Malformed("proof has the wrong length"))
        );
    }
}
