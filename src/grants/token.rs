//! Grant tokens and the SCRAM-SHA-256 verifiers they are stored as.
//!
//! A token is shown once, when its grant is issued, and is never stored: the store keeps only
//! `StoredKey`/`ServerKey` (RFC 5802), exactly what PostgreSQL keeps for a SCRAM password. The salt is
//! derived from a per-installation secret and the (user, target) pair, so every grant of one user on
//! one target shares a salt — which lets one SCRAM exchange test the proof against each of that user's
//! grants and pick the one whose token was used — and an unknown user gets a stable, plausible salt
//! (no oracle about which users exist).

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::config::Secret;

/// Recognisable prefix, so a leaked token is easy to spot by secret scanners.
pub const TOKEN_PREFIX: &str = "tbx_";
/// PostgreSQL's default SCRAM iteration count.
pub const SCRAM_ITERATIONS: u32 = 4096;
/// Random bytes in a token: 160 bits.
const TOKEN_RANDOM_BYTES: usize = 20;

type HmacSha256 = Hmac<Sha256>;

/// A freshly issued token. Only ever returned to the issuer; `Debug` does not show it.
#[derive(Debug, Clone)]
pub struct GrantToken(Secret);

impl GrantToken {
    pub fn generate() -> Self {
        let mut bytes = [0u8; TOKEN_RANDOM_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let encoded = base32_lower(&bytes);
        GrantToken(Secret::new(format!("{TOKEN_PREFIX}{encoded}")))
    }

    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

/// What the store keeps of a token: enough to verify a SCRAM proof, not enough to log in.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramVerifier {
    /// Derives the verifier for `password` (RFC 5802: SaltedPassword = Hi(password, salt, i)).
    /// Tokens are ASCII, for which SASLprep is the identity.
    pub fn derive(password: &str, salt: &[u8], iterations: u32) -> Self {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let server_key = hmac(&salted, b"Server Key");
        ScramVerifier {
            salt: salt.to_vec(),
            iterations,
            stored_key,
            server_key,
        }
    }

    /// PostgreSQL's text form (`SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`), used by the store.
    pub fn to_text(&self) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            b64.encode(&self.salt),
            b64.encode(self.stored_key),
            b64.encode(self.server_key)
        )
    }

    pub fn from_text(text: &str) -> Option<Self> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iterations, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(ScramVerifier {
            salt: b64.decode(salt).ok()?,
            iterations: iterations.parse().ok()?,
            stored_key: b64.decode(stored).ok()?.try_into().ok()?,
            server_key: b64.decode(server).ok()?.try_into().ok()?,
        })
    }
}

/// The SCRAM salt for every grant of `user` on `target`: HMAC(installation secret, user NUL target).
pub fn salt_for(installation_secret: &[u8; 32], user: &str, target: &str) -> [u8; 16] {
    let mut mac = HmacSha256::new_from_slice(installation_secret).expect("HMAC takes any key length");
    mac.update(user.as_bytes());
    mac.update(&[0]);
    mac.update(target.as_bytes());
    let full = mac.finalize().into_bytes();
    let mut salt = [0u8; 16];
    salt.copy_from_slice(&full[..16]);
    salt
}

/// SHA-256 hex of an admin bearer token, as written in `[[admin.tokens]] sha256`.
pub fn sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub(crate) fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn base32_lower(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        buffer = (buffer << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_long_and_distinct() {
        let a = GrantToken::generate();
        let b = GrantToken::generate();
        assert!(a.expose().starts_with(TOKEN_PREFIX));
        assert_eq!(a.expose().len(), TOKEN_PREFIX.len() + 32);
        assert_ne!(a.expose(), b.expose());
        assert!(!format!("{a:?}").contains(&a.expose()[4..]));
    }

    #[test]
    fn verifier_is_deterministic_and_round_trips_its_text_form() {
        let v = ScramVerifier::derive("pencil", b"0123456789abcdef", 4096);
        let again = ScramVerifier::derive("pencil", b"0123456789abcdef", 4096);
        assert_eq!(v, again);
        assert_eq!(ScramVerifier::from_text(&v.to_text()), Some(v.clone()));
        assert_ne!(ScramVerifier::derive("pencil2", b"0123456789abcdef", 4096), v);
    }

    #[test]
    fn rfc7677_test_vector() {
        // RFC 7677 section 3: user "user", password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==, i=4096.
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let salt = b64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = ScramVerifier::derive("pencil", &salt, 4096);
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let server_signature = hmac(&v.server_key, auth_message.as_bytes());
        assert_eq!(
            b64.encode(server_signature),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn salt_depends_on_user_and_target_and_secret() {
        let secret = [7u8; 32];
        assert_eq!(
            salt_for(&secret, "alice", "shop"),
            salt_for(&secret, "alice", "shop")
        );
        assert_ne!(
            salt_for(&secret, "alice", "shop"),
            salt_for(&secret, "bob", "shop")
        );
        assert_ne!(
            salt_for(&secret, "alice", "shop"),
            salt_for(&secret, "alice", "billing")
        );
        // no ambiguity between ("ab","c") and ("a","bc")
        assert_ne!(salt_for(&secret, "ab", "c"), salt_for(&secret, "a", "bc"));
        assert_ne!(
            salt_for(&[8u8; 32], "alice", "shop"),
            salt_for(&secret, "alice", "shop")
        );
    }

    #[test]
    fn base32_is_rfc4648_lowercase() {
        assert_eq!(base32_lower(b"foobar"), "mzxw6ytboi");
        assert_eq!(base32_lower(b""), "");
    }
}
