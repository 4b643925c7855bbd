//! Unit tests of the pure grant functions: status over time, refusals, extension caps, validation.

use super::*;

fn grant(now: DateTime<Utc>) -> Grant {
    Grant {
        id: "g_1".into(),
        user: "alice".into(),
        target: "shop".into(),
        role: "read".into(),
        reason: "incident 42".into(),
        created_by: "ops".into(),
        created_at: now,
        starts_at: now,
        expires_at: now + chrono::Duration::minutes(30),
        revoked_at: None,
        revoked_by: None,
        revoke_reason: None,
    }
}

#[test]
fn status_follows_time_and_revocation() {
    let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let mut g = grant(t0);
    g.starts_at = t0 + chrono::Duration::minutes(1);
    assert_eq!(g.status_at(t0), GrantStatus::Pending);
    assert_eq!(g.status_at(g.starts_at), GrantStatus::Active);
    assert_eq!(
        g.status_at(g.expires_at - chrono::Duration::milliseconds(1)),
        GrantStatus::Active
    );
    assert_eq!(
        g.status_at(g.expires_at),
        GrantStatus::Expired,
        "expiry is exclusive"
    );
    g.revoked_at = Some(t0 + chrono::Duration::minutes(2));
    g.revoked_by = Some("bob".into());
    assert_eq!(
        g.status_at(t0 + chrono::Duration::minutes(3)),
        GrantStatus::Revoked
    );
    // revocation wins even before the start
    assert_eq!(g.status_at(t0), GrantStatus::Revoked);
}

/// Revoke and extend share this check: only a pending or active grant can change.
#[test]
fn only_a_grant_that_has_not_ended_can_change() {
    let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let mut g = grant(t0);
    g.starts_at = t0 + chrono::Duration::minutes(1);
    assert!(g.check_changeable(t0).is_ok(), "pending");
    assert!(g.check_changeable(g.starts_at).is_ok(), "active");
    let status = |r: Result<(), GrantError>| match r {
        Err(GrantError::Conflict { id, status }) => {
            assert_eq!(id, "g_1");
            status
        }
        other => panic!("expected Conflict, got {other:?}"),
    };
    assert_eq!(status(g.check_changeable(g.expires_at)), "expired");
    g.revoked_at = Some(t0 + chrono::Duration::minutes(2));
    assert_eq!(status(g.check_changeable(t0)), "revoked");
}

#[test]
fn refusal_names_the_grant_and_the_time() {
    let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let mut g = grant(t0);
    assert_eq!(g.refusal_at(t0), None);
    assert_eq!(
        g.refusal_at(t0 + chrono::Duration::hours(1)).unwrap(),
        "grant g_1 expired at 2026-01-01T00:30:00Z"
    );
    g.revoked_at = Some(t0 + chrono::Duration::minutes(5));
    g.revoked_by = Some("bob".into());
    g.revoke_reason = Some("done".into());
    assert_eq!(
        g.refusal_at(t0 + chrono::Duration::minutes(6)).unwrap(),
        "grant g_1 was revoked at 2026-01-01T00:05:00Z by bob (done)"
    );
    let mut later = grant(t0);
    later.starts_at = t0 + chrono::Duration::hours(2);
    assert_eq!(
        later.refusal_at(t0).unwrap(),
        "grant g_1 starts at 2026-01-01T02:00:00Z"
    );
}

/// Role `read` capped at one hour; role `write` without an upstream credential.
fn config() -> Config {
    crate::config::testing::config(
        "1h",
        "[roles.write]\nallow = [\"read\", \"write\"]\nmax_ttl = \"1h\"\n",
    )
}

fn req(user: &str, target: &str, role: &str, ttl: &str, reason: &str) -> NewGrant {
    NewGrant {
        user: user.into(),
        target: target.into(),
        role: role.into(),
        ttl: ttl.into(),
        reason: reason.into(),
        starts_at: None,
    }
}

#[test]
fn extension_adds_to_the_old_expiry_and_stops_at_the_cap_from_the_start() {
    let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let g = grant(t0); // 30 minutes long
    let hour = Duration::from_secs(3600);
    assert_eq!(
        extended_expiry(&g, Duration::from_secs(1800), hour).unwrap(),
        t0 + chrono::Duration::hours(1),
        "exactly at the cap is allowed"
    );
    match extended_expiry(&g, Duration::from_secs(1801), hour) {
        Err(GrantError::Invalid {
            field: "ttl",
            message,
        }) => {
            assert!(message.contains("at most 30m more"), "{message}")
        }
        other => panic!("expected Invalid ttl, got {other:?}"),
    }
}

#[test]
fn issuing_validates_target_role_ttl_and_reason() {
    let c = config();
    assert_eq!(
        validate_new_grant(&c, &req("alice", "shop", "read", "30m", "inc")).unwrap(),
        Duration::from_secs(1800)
    );
    let field = |r: NewGrant| match validate_new_grant(&c, &r) {
        Err(GrantError::Invalid { field, .. }) => field,
        other => panic!("expected Invalid, got {other:?}"),
    };
    assert_eq!(field(req("alice", "nope", "read", "30m", "inc")), "target");
    assert_eq!(field(req("alice", "shop", "nope", "30m", "inc")), "role");
    assert_eq!(
        field(req("alice", "shop", "write", "30m", "inc")),
        "role",
        "no credential for write"
    );
    assert_eq!(
        field(req("alice", "shop", "read", "2h", "inc")),
        "ttl",
        "over max_ttl"
    );
    assert_eq!(field(req("alice", "shop", "read", "soon", "inc")), "ttl");
    assert_eq!(field(req("alice", "shop", "read", "0s", "inc")), "ttl");
    assert_eq!(field(req("alice", "shop", "read", "30m", "  ")), "reason");
    assert_eq!(field(req("", "shop", "read", "30m", "inc")), "user");
    assert_eq!(field(req(&"a".repeat(64), "shop", "read", "30m", "inc")), "user");
    // See: issue 16, finding 9b (control characters in names and reasons were accepted).
    assert_eq!(field(req("alice\n", "shop", "read", "30m", "inc")), "user");
    assert_eq!(field(req("alice", "sh\u{1b}op", "read", "30m", "inc")), "target");
    assert_eq!(field(req("alice", "shop", "re\0ad", "30m", "inc")), "role");
    assert_eq!(
        field(req("alice", "shop", "read", "30m", "inc\r\nFAKE LOG LINE")),
        "reason"
    );
    assert_eq!(
        field(req("alice", "shop", "read", "30m", "inc \u{202E}txt")),
        "reason"
    );
}
