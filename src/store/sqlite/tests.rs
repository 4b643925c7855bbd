//! Unit tests of the SQLite store (the backend-independent suite is `tests/store.rs`).

use super::*;

fn grant(id: &str, user: &str, created: DateTime<Utc>) -> Grant {
    Grant {
        id: id.into(),
        user: user.into(),
        target: "shop".into(),
        role: "read".into(),
        reason: "why".into(),
        created_by: "ops".into(),
        created_at: created,
        starts_at: created,
        expires_at: created + chrono::Duration::minutes(10),
        revoked_at: None,
        revoked_by: None,
        revoke_reason: None,
    }
}

fn verifier() -> ScramVerifier {
    ScramVerifier::derive("tbx_x", b"salt", 4096)
}

#[test]
fn grants_round_trip_and_filter_by_status() {
    let s = SqliteStore::open_in_memory().unwrap();
    let t0 = Utc.timestamp_micros(1_700_000_000_000_000).unwrap();
    let a = grant("g_a", "alice", t0);
    let mut b = grant("g_b", "bob", t0 + chrono::Duration::seconds(1));
    b.starts_at = t0 + chrono::Duration::minutes(5);
    s.insert_grant(&a, &verifier()).unwrap();
    s.insert_grant(&b, &verifier()).unwrap();
    assert_eq!(s.get_grant("g_a").unwrap().unwrap(), a);
    assert_eq!(s.get_grant("g_zz").unwrap(), None);

    let at = |status| {
        s.list_grants(
            &GrantFilter {
                status: Some(status),
                ..Default::default()
            },
            t0 + chrono::Duration::minutes(1),
        )
        .unwrap()
        .into_iter()
        .map(|g| g.id)
        .collect::<Vec<_>>()
    };
    assert_eq!(at(GrantStatus::Active), vec!["g_a"]);
    assert_eq!(at(GrantStatus::Pending), vec!["g_b"]);
    assert!(at(GrantStatus::Expired).is_empty());

    let revoked = s
        .revoke_grant("g_a", "carol", "done", t0 + chrono::Duration::minutes(2))
        .unwrap()
        .unwrap();
    assert_eq!(revoked.revoked_by.as_deref(), Some("carol"));
    // a second revocation keeps the first one's author
    let again = s
        .revoke_grant("g_a", "dave", "again", t0 + chrono::Duration::minutes(3))
        .unwrap()
        .unwrap();
    assert_eq!(again.revoked_by.as_deref(), Some("carol"));
    assert_eq!(at(GrantStatus::Revoked), vec!["g_a"]);
    assert_eq!(s.revoke_grant("g_missing", "x", "y", t0).unwrap(), None);

    let by_user = s
        .list_grants(
            &GrantFilter {
                user: Some("bob".into()),
                ..Default::default()
            },
            t0,
        )
        .unwrap();
    assert_eq!(by_user.len(), 1);
}

#[test]
fn candidates_are_newest_first_with_verifiers() {
    let s = SqliteStore::open_in_memory().unwrap();
    let t0 = Utc.timestamp_micros(1_700_000_000_000_000).unwrap();
    s.insert_grant(&grant("g_old", "alice", t0), &verifier()).unwrap();
    s.insert_grant(
        &grant("g_new", "alice", t0 + chrono::Duration::seconds(5)),
        &verifier(),
    )
    .unwrap();
    s.insert_grant(&grant("g_bob", "bob", t0), &verifier()).unwrap();
    let c = s.grant_candidates("alice", "shop").unwrap();
    let ids: Vec<&str> = c.iter().map(|(g, _)| g.id.as_str()).collect();
    assert_eq!(ids, vec!["g_new", "g_old"]);
    assert_eq!(c[0].1, verifier());
    assert!(s.grant_candidates("alice", "billing").unwrap().is_empty());
}

fn request(id: &str, created: DateTime<Utc>, required: u32) -> AccessRequest {
    crate::grants::requests::tests::pending_request(id, created, required)
}

#[test]
fn requests_collect_distinct_approvals_then_approve_and_expire_when_overdue() {
    let s = SqliteStore::open_in_memory().unwrap();
    let t0 = Utc.timestamp_micros(1_700_000_000_000_000).unwrap();
    s.insert_request(&request("r_a", t0, 2)).unwrap();
    s.insert_request(&request("r_b", t0, 1)).unwrap();
    assert_eq!(s.get_request("r_a").unwrap().unwrap(), request("r_a", t0, 2));
    let approve = |id: &str, by: &str| {
        s.approve_request(
            id,
            &Approval {
                by: by.into(),
                reason: "ok".into(),
                at: t0,
            },
            t0,
        )
        .unwrap()
    };
    let ApproveOutcome::Recorded(r) = approve("r_a", "bob") else {
        panic!()
    };
    assert_eq!((r.state, r.approvals.len()), (RequestStatus::Pending, 1));
    assert!(matches!(approve("r_a", "bob"), ApproveOutcome::Duplicate));
    let ApproveOutcome::Recorded(r) = approve("r_a", "carol") else {
        panic!()
    };
    assert_eq!(r.state, RequestStatus::Approved);
    assert!(matches!(
        approve("r_a", "dave"),
        ApproveOutcome::NotPending(RequestStatus::Approved)
    ));
    assert!(matches!(approve("r_zz", "dave"), ApproveOutcome::NotFound));
    assert_eq!(s.count_pending_requests(t0).unwrap(), 1);

    let later = t0 + chrono::Duration::hours(2);
    let expired = s.expire_requests(later).unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].state, RequestStatus::Expired);
    let (changed, r) = s.deny_request("r_b", "bob", "no", later).unwrap().unwrap();
    assert!(!changed && r.state == RequestStatus::Expired);
    let listed = s
        .list_requests(
            &RequestFilter {
                status: Some(RequestStatus::Approved),
                ..Default::default()
            },
            later,
        )
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].approvals.len(), 2);
    assert!(s.mark_token_fetched("r_a", later).unwrap());
    assert!(!s.mark_token_fetched("r_a", later).unwrap());
}

#[test]
fn extending_and_counting_grants_and_the_break_glass_flag() {
    let s = SqliteStore::open_in_memory().unwrap();
    let t0 = Utc.timestamp_micros(1_700_000_000_000_000).unwrap();
    s.insert_grant(&grant("g_a", "alice", t0), &verifier()).unwrap();
    s.insert_grant_flagged(&grant("g_b", "bob", t0), &verifier(), true)
        .unwrap();
    let ids = s.break_glass_ids(&["g_a".into(), "g_b".into()]).unwrap();
    assert_eq!(ids.into_iter().collect::<Vec<_>>(), vec!["g_b".to_owned()]);
    let c = s.grant_counts(t0).unwrap();
    assert_eq!((c.active, c.break_glass_active, c.expired), (2, 1, 0));
    let new_end = t0 + chrono::Duration::hours(1);
    assert_eq!(
        s.extend_grant("g_a", new_end).unwrap().unwrap().expires_at,
        new_end
    );
    let at = t0 + chrono::Duration::minutes(30);
    let c = s.grant_counts(at).unwrap();
    assert_eq!((c.active, c.expired, c.break_glass_active), (1, 1, 0));
    let gone = s.grants_expired_between(t0, at).unwrap();
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].id, "g_b");
    s.revoke_grant("g_a", "x", "y", at).unwrap();
    let unchanged = s
        .extend_grant("g_a", at + chrono::Duration::hours(5))
        .unwrap()
        .unwrap();
    assert_eq!(unchanged.expires_at, new_end, "a revoked grant is not extended");
}

/// See: issue 16, finding 12b (the store, which holds token verifiers, was created 0644, and so
/// were its -wal and -shm files).
#[cfg(unix)]
#[test]
fn the_store_and_its_side_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/timebox.db");
    let store = SqliteStore::open(&path).unwrap();
    store.installation_secret().unwrap();
    assert_eq!(mode(&dir.path().join("data")), 0o700);
    for side in ["", "-wal", "-shm"] {
        let p = std::path::PathBuf::from(format!("{}{side}", path.display()));
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    drop(store);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    SqliteStore::open(&path).unwrap();
    assert_eq!(mode(&path), 0o600, "an existing loose store is tightened");
}

#[test]
fn installation_secret_is_stable_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("t.db");
    let first = SqliteStore::open(&path).unwrap().installation_secret().unwrap();
    let second = SqliteStore::open(&path).unwrap().installation_secret().unwrap();
    assert_eq!(first, second);
    assert_ne!(first, [0u8; 32]);
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    {
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
    }
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::SchemaTooNew { found: 99, .. }), "{err}");
}
