//! Unit tests of [`super`] (access requests) and the crate-wide request fixture.

use super::*;

/// Role `admin` needs two approvals and allows break-glass up to 30 minutes.
fn config() -> Config {
    crate::config::testing::config(
        "8h",
        r#"
        [targets.shop.credentials.admin]
        user = "a"
        [roles.admin]
        allow = ["read", "write"]
        max_ttl = "4h"
        approvals = 2
        break_glass = true
        break_glass_max_ttl = "30m"
        "#,
    )
}

fn req(role: &str, ttl: &str, reason: &str, break_glass: bool) -> NewAccessRequest {
    NewAccessRequest {
        target: "shop".into(),
        role: role.into(),
        ttl: ttl.into(),
        reason: reason.into(),
        ticket: None,
        break_glass,
    }
}

#[test]
fn a_capped_ttl_is_named_and_an_uncut_one_is_not() {
    assert_eq!(
        ttl_cap_note("2h", "1h", "admin").as_deref(),
        Some("ttl 2h was capped at 1h (break_glass_max_ttl of role admin)")
    );
    assert_eq!(ttl_cap_note("30m", "30m", "admin"), None);
    assert_eq!(ttl_cap_note("60m", "1h", "admin"), None);
}

#[test]
fn reason_is_required_and_break_glass_is_capped_and_role_gated() {
    let c = config();
    let field = |r: NewAccessRequest| match validate_request(&c, "alice", &r) {
        Err(RequestError::Invalid { field, .. }) => field,
        Err(RequestError::Grant(GrantError::Invalid { field, .. })) => field,
        other => panic!("expected Invalid, got {other:?}"),
    };
    assert_eq!(field(req("read", "1h", "  ", false)), "reason");
    assert_eq!(field(req("read", "9h", "inc", false)), "ttl");
    assert_eq!(field(req("read", "1h", "inc", true)), "break_glass");
    assert_eq!(field(req("nope", "1h", "inc", false)), "role");
    assert_eq!(
        validate_request(&c, "alice", &req("admin", "3h", "inc", true)).unwrap(),
        Duration::from_secs(1800),
        "capped at break_glass_max_ttl"
    );
    assert_eq!(
        validate_request(&c, "alice", &req("admin", "3h", "inc", false)).unwrap(),
        Duration::from_secs(3 * 3600)
    );
}

#[test]
fn overdue_pending_requests_are_expired() {
    let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let mut r = pending_request("r_1", t0, 1);
    assert_eq!(r.status_at(t0), RequestStatus::Pending);
    assert_eq!(
        r.status_at(t0 + chrono::Duration::hours(1)),
        RequestStatus::Expired
    );
    r.state = RequestStatus::Approved;
    assert_eq!(
        r.status_at(t0 + chrono::Duration::hours(2)),
        RequestStatus::Approved
    );
}

/// A pending request of alice for `read` on `shop` (ticket INC-1), for unit tests across the crate.
pub(crate) fn pending_request(id: &str, created: DateTime<Utc>, approvals_required: u32) -> AccessRequest {
    AccessRequest {
        id: id.into(),
        requester: "alice".into(),
        target: "shop".into(),
        role: "read".into(),
        ttl: "30m".into(),
        reason: "inc".into(),
        ticket: Some("INC-1".into()),
        break_glass: false,
        created_at: created,
        review_deadline: created + chrono::Duration::hours(1),
        approvals_required,
        approvals: vec![],
        state: RequestStatus::Pending,
        decided_at: None,
        denied_by: None,
        deny_reason: None,
        grant_id: None,
        token_fetched_at: None,
    }
}
