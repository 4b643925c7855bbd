//! Who is calling the admin API: `Authorization: Bearer <token>` → [`Principal`].
//!
//! Two kinds of token, checked in this order: the config's (`[[admin.tokens]]`, the bootstrap),
//! which hold only the SHA-256 of each token — the presented token is hashed and compared against
//! every configured hash in constant time; then the store's (issued over `/v1/admin-tokens`), found
//! by the token's id prefix and checked by [`crate::grants::admin_tokens::AdminTokenService`]
//! (constant-time hash compare; revoked or expired → 401 `admin_token_revoked` /
//! `admin_token_expired`; a store that cannot answer fails closed, 503). Role checks are explicit
//! calls in each handler ([`Principal::require_any`]). This module must never log or echo a
//! presented token.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::error::ApiError;
use crate::app::AppState;
use crate::config::{AdminToken, PrincipalRole};

pub const ADMIN: PrincipalRole = PrincipalRole::Admin;
pub const APPROVER: PrincipalRole = PrincipalRole::Approver;
pub const REQUESTER: PrincipalRole = PrincipalRole::Requester;
pub const AUDITOR: PrincipalRole = PrincipalRole::Auditor;

/// Every role that may read grants at all (a requester only its own).
pub const READ_ROLES: &[PrincipalRole] = &[ADMIN, APPROVER, AUDITOR, REQUESTER];
/// Roles that see every grant.
pub const SEE_ALL_ROLES: &[PrincipalRole] = &[ADMIN, APPROVER, AUDITOR];

/// An authenticated caller of the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub roles: Vec<PrincipalRole>,
}

/// `roles` by name, joined with `separator` ("admin or approver").
pub fn role_names(roles: &[PrincipalRole], separator: &str) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(separator)
}

impl Principal {
    pub fn has_any(&self, roles: &[PrincipalRole]) -> bool {
        self.roles.iter().any(|r| roles.contains(r))
    }

    /// `Ok` if the principal has one of `roles`; otherwise 403 naming the operation and the roles.
    pub fn require_any(&self, roles: &[PrincipalRole], operation: &str) -> Result<(), ApiError> {
        if self.has_any(roles) {
            return Ok(());
        }
        tracing::info!(principal = %self.name, operation, "admin API: forbidden");
        Err(ApiError::Forbidden(format!(
            "{operation} requires role {}; principal {:?} has {}",
            role_names(roles, " or "),
            self.name,
            if self.roles.is_empty() {
                "no roles".to_owned()
            } else {
                role_names(&self.roles, ", ")
            }
        )))
    }

    /// Whether the principal may see grants of every user (otherwise only grants for its own name).
    pub fn sees_all_grants(&self) -> bool {
        self.has_any(SEE_ALL_ROLES)
    }
}

/// Finds the principal whose token hashes to the presented one. Every configured hash is compared,
/// in constant time, whichever matches.
pub fn authenticate(tokens: &[AdminToken], presented: &str) -> Option<Principal> {
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    // Index + 1 of the first match, 0 for none; selected without branching on the comparison.
    let mut found: u32 = 0;
    for (i, token) in tokens.iter().enumerate() {
        let matches = digest[..].ct_eq(&token.sha256[..]) & found.ct_eq(&0);
        found = u32::conditional_select(&found, &(i as u32 + 1), matches);
    }
    let token = tokens.get((found as usize).checked_sub(1)?)?;
    Some(Principal {
        name: token.name.clone(),
        roles: token.roles.clone(),
    })
}

/// The bearer token of an `Authorization` header value, if it has that shape.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(char::is_whitespace))
        .then_some(token)
}

impl FromRequestParts<Arc<AppState>> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(AUTHORIZATION) else {
            return Err(ApiError::Unauthorized(
                "missing Authorization header; send `Authorization: Bearer <admin token>`".into(),
            ));
        };
        let token = value.to_str().ok().and_then(bearer_token).ok_or_else(|| {
            ApiError::Unauthorized("malformed Authorization header; expected `Bearer <admin token>`".into())
        })?;
        if let Some(principal) = authenticate(&state.config.admin.tokens, token) {
            return Ok(principal);
        }
        match state.admin_tokens.authenticate(token).await {
            Ok(Some(record)) => Ok(Principal {
                name: record.name,
                roles: record.roles,
            }),
            Ok(None) => {
                tracing::info!(path = %parts.uri.path(), "admin API: unknown bearer token");
                Err(ApiError::Unauthorized("unknown admin token".into()))
            }
            Err(e) => {
                tracing::info!(path = %parts.uri.path(), error = %e, "admin API: bearer token refused");
                Err(e.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::token::sha256_hex;

    fn token(name: &str, secret: &str, roles: &[PrincipalRole]) -> AdminToken {
        let mut sha256 = [0u8; 32];
        hex::decode_to_slice(sha256_hex(secret), &mut sha256).unwrap();
        AdminToken {
            name: name.into(),
            sha256,
            scram: None,
            roles: roles.to_vec(),
        }
    }

    #[test]
    fn the_matching_token_gives_its_principal() {
        let tokens = vec![
            token("ops", "s1", &[ADMIN]),
            token("audrey", "s2", &[AUDITOR]),
            token("alice", "s3", &[REQUESTER]),
        ];
        assert_eq!(authenticate(&tokens, "s1").unwrap().name, "ops");
        let audrey = authenticate(&tokens, "s2").unwrap();
        assert_eq!(audrey.name, "audrey");
        assert_eq!(audrey.roles, vec![PrincipalRole::Auditor]);
        assert_eq!(authenticate(&tokens, "s3").unwrap().name, "alice");
        assert_eq!(authenticate(&tokens, "s4"), None);
        assert_eq!(authenticate(&tokens, ""), None);
        assert_eq!(authenticate(&[], "s1"), None);
    }

    #[test]
    fn duplicate_hashes_resolve_to_the_first_token() {
        let tokens = vec![
            token("first", "same", &[ADMIN]),
            token("second", "same", &[AUDITOR]),
        ];
        assert_eq!(authenticate(&tokens, "same").unwrap().name, "first");
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(
            bearer_token("bearer abc"),
            Some("abc"),
            "the scheme is case-insensitive"
        );
        assert_eq!(bearer_token("Bearer   abc  "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer a b"), None);
        assert_eq!(bearer_token("abc"), None);
    }

    #[test]
    fn role_checks() {
        let p = |roles: &[PrincipalRole]| Principal {
            name: "x".into(),
            roles: roles.to_vec(),
        };
        assert!(p(&[ADMIN]).require_any(&[ADMIN], "issuing grants").is_ok());
        assert!(p(&[APPROVER])
            .require_any(&[ADMIN, APPROVER], "revoking grants")
            .is_ok());
        let err = p(&[AUDITOR]).require_any(&[ADMIN], "issuing grants").unwrap_err();
        assert_eq!(err.code(), "forbidden");
        assert!(
            err.to_string().contains("issuing grants requires role admin"),
            "{err}"
        );
        assert!(err.to_string().contains("auditor"), "{err}");
        assert!(p(&[AUDITOR]).sees_all_grants());
        assert!(p(&[APPROVER]).sees_all_grants());
        assert!(!p(&[REQUESTER]).sees_all_grants());
        assert!(p(&[REQUESTER, AUDITOR]).sees_all_grants(), "roles add up");
        assert!(!p(&[]).has_any(READ_ROLES));
    }
}
