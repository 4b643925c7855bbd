//! The store suite: every case is written once over the [`Store`] handle and runs against both
//! backends — SQLite (a file in a temporary directory) and PostgreSQL (a fresh database, owned by a
//! fresh role, on the throwaway cluster of `tests/common/cluster.rs`).
//!
//! Besides the round trips, the cases that matter for several instances sharing one store:
//! concurrent approvals through two handles approve exactly once; two migrations at once both
//! succeed; the installation secret is the same from two handles; a store written by a newer
//! timebox is refused; an unreachable store is a clear `StoreError`.

mod common;

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use timebox::config::PrincipalRole;
use timebox::config::{PostgresStoreConfig, StoreConfig, UpstreamTls};
use timebox::grants::admin_tokens::{AdminTokenRecord, StoredAdminToken};
use timebox::grants::requests::{AccessRequest, Approval, RequestStatus};
use timebox::grants::token::ScramVerifier;
use timebox::grants::{Grant, GrantStatus};
use timebox::store::{ApproveOutcome, GrantFilter, RequestFilter, Store, StoreError};

use common::StoreDatabase;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sqlite,
    Postgres,
}

/// One empty store of one kind, and how to reach it.
struct Backend {
    kind: Kind,
    config: StoreConfig,
    dir: tempfile::TempDir,
    db: Option<StoreDatabase>,
}

fn postgres_config(db: &StoreDatabase, port: u16, audit_dir: &std::path::Path) -> StoreConfig {
    let password = std::fs::read_to_string(&db.password_file).unwrap();
    let mut connect = tokio_postgres::Config::new();
    connect
        .host("127.0.0.1")
        .port(port)
        .user(&db.role)
        .password(password.trim_end())
        .dbname(&db.database);
    StoreConfig::Postgres(Box::new(PostgresStoreConfig {
        connect,
        tls: UpstreamTls::Disable,
        ca: None,
        pool_size: 4,
        // Generous: a loaded 2-core CI machine.
        connect_timeout: Duration::from_secs(20),
        query_timeout: Duration::from_secs(30),
        audit_dir: audit_dir.to_owned(),
    }))
}

impl Backend {
    async fn new(kind: Kind) -> Backend {
        let dir = tempfile::tempdir().unwrap();
        match kind {
            Kind::Sqlite => Backend {
                kind,
                config: StoreConfig::Sqlite {
                    path: dir.path().join("timebox.db"),
                },
                dir,
                db: None,
            },
            Kind::Postgres => {
                let db = StoreDatabase::create_async().await;
                let port = common::cluster::shared_cluster().port();
                Backend {
                    kind,
                    config: postgres_config(&db, port, dir.path()),
                    dir,
                    db: Some(db),
                }
            }
        }
    }

    /// A new handle on this backend's store (migrating it as needed).
    async fn open(&self) -> Store {
        Store::connect(&self.config).await.expect("open store")
    }

    /// Marks the store as written by a timebox whose schema is at version 999.
    async fn make_schema_newer(&self) {
        match (&self.config, &self.db) {
            (StoreConfig::Postgres(_), Some(db)) => {
                db.psql(
                    "INSERT INTO timebox.schema_version (version, applied_by) VALUES (999, 'timebox 99')",
                );
            }
            (StoreConfig::Sqlite { path }, _) => {
                let c = rusqlite::Connection::open(path).unwrap();
                c.pragma_update(None, "user_version", 999).unwrap();
            }
            other => panic!("unexpected backend {other:?}"),
        }
    }

    /// The same kind of store where nothing answers.
    fn unreachable_config(&self) -> StoreConfig {
        match self.kind {
            Kind::Sqlite => {
                let file = self.dir.path().join("not-a-directory");
                std::fs::write(&file, b"").unwrap();
                StoreConfig::Sqlite {
                    path: file.join("timebox.db"),
                }
            }
            Kind::Postgres => {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let port = listener.local_addr().unwrap().port();
                drop(listener);
                postgres_config(self.db.as_ref().unwrap(), port, self.dir.path())
            }
        }
    }
}

/// Each case runs once per backend: `<case>::sqlite` and `<case>::postgres`.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$case(super::Backend::new(super::Kind::Sqlite).await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$case(super::Backend::new(super::Kind::Postgres).await).await
            }
        }
    )*};
}

on_both_backends!(
    grants_round_trip_filter_and_revoke_once,
    candidates_are_newest_first_with_their_verifiers,
    requests_collect_approvals_then_approve_deny_and_expire,
    extend_count_and_break_glass,
    concurrent_approvals_on_two_handles_approve_exactly_once,
    concurrent_expiry_on_two_handles_expires_each_request_once,
    concurrent_migrations_all_succeed,
    installation_secret_is_the_same_from_two_handles,
    a_store_newer_than_the_binary_is_refused,
    an_unreachable_store_is_a_clear_error,
    admin_tokens_round_trip_one_live_name_and_revoke,
    concurrent_issues_of_one_admin_token_name_store_one,
);

fn t0() -> DateTime<Utc> {
    Utc.timestamp_micros(1_700_000_000_000_000).unwrap()
}

fn minutes(n: i64) -> chrono::Duration {
    chrono::Duration::minutes(n)
}

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
        expires_at: created + minutes(10),
        revoked_at: None,
        revoked_by: None,
        revoke_reason: None,
    }
}

fn verifier() -> ScramVerifier {
    ScramVerifier::derive("tbx_x", b"salt", 4096)
}

fn request(id: &str, created: DateTime<Utc>, required: u32) -> AccessRequest {
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
        approvals_required: required,
        approvals: vec![],
        state: RequestStatus::Pending,
        decided_at: None,
        denied_by: None,
        deny_reason: None,
        grant_id: None,
        token_fetched_at: None,
    }
}

fn approval(by: &str, at: DateTime<Utc>) -> Approval {
    Approval {
        by: by.into(),
        reason: "ok".into(),
        at,
    }
}

async fn grant_ids(s: &Store, status: GrantStatus, now: DateTime<Utc>) -> Vec<String> {
    let filter = GrantFilter {
        status: Some(status),
        ..Default::default()
    };
    s.list_grants(filter, now)
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.id)
        .collect()
}

async fn grants_round_trip_filter_and_revoke_once(b: Backend) {
    let s = b.open().await;
    let a = grant("g_a", "alice", t0());
    let mut later = grant("g_b", "bob", t0() + chrono::Duration::seconds(1));
    later.starts_at = t0() + minutes(5);
    s.insert_grant(a.clone(), verifier()).await.unwrap();
    s.insert_grant(later, verifier()).await.unwrap();
    assert_eq!(s.get_grant("g_a".into()).await.unwrap(), Some(a));
    assert_eq!(s.get_grant("g_zz".into()).await.unwrap(), None);
    assert!(
        s.insert_grant(grant("g_a", "x", t0()), verifier()).await.is_err(),
        "ids are unique"
    );

    let now = t0() + minutes(1);
    assert_eq!(grant_ids(&s, GrantStatus::Active, now).await, ["g_a"]);
    assert_eq!(grant_ids(&s, GrantStatus::Pending, now).await, ["g_b"]);
    assert!(grant_ids(&s, GrantStatus::Expired, now).await.is_empty());
    assert_eq!(
        grant_ids(&s, GrantStatus::Expired, t0() + minutes(20)).await,
        ["g_b", "g_a"],
        "newest first"
    );

    let revoke = |id: &str, by: &str, at| s.revoke_grant(id.into(), by.into(), "done".into(), at);
    let revoked = revoke("g_a", "carol", t0() + minutes(2)).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_by.as_deref(), Some("carol"));
    assert_eq!(revoked.revoked_at, Some(t0() + minutes(2)));
    let again = revoke("g_a", "dave", t0() + minutes(3)).await.unwrap().unwrap();
    assert_eq!(
        again.revoked_by.as_deref(),
        Some("carol"),
        "the first revocation stays"
    );
    assert_eq!(grant_ids(&s, GrantStatus::Revoked, now).await, ["g_a"]);
    assert_eq!(revoke("g_missing", "x", t0()).await.unwrap(), None);

    let by_user = GrantFilter {
        user: Some("bob".into()),
        ..Default::default()
    };
    assert_eq!(s.list_grants(by_user, t0()).await.unwrap().len(), 1);
    let limited = GrantFilter {
        limit: Some(1),
        ..Default::default()
    };
    let newest = s.list_grants(limited, t0()).await.unwrap();
    assert_eq!(newest.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(), ["g_b"]);
}

async fn candidates_are_newest_first_with_their_verifiers(b: Backend) {
    let s = b.open().await;
    s.insert_grant(grant("g_old", "alice", t0()), verifier())
        .await
        .unwrap();
    s.insert_grant(
        grant("g_new", "alice", t0() + chrono::Duration::seconds(5)),
        verifier(),
    )
    .await
    .unwrap();
    s.insert_grant(grant("g_bob", "bob", t0()), verifier())
        .await
        .unwrap();
    let c = s.grant_candidates("alice".into(), "shop".into()).await.unwrap();
    let ids: Vec<&str> = c.iter().map(|(g, _)| g.id.as_str()).collect();
    assert_eq!(ids, ["g_new", "g_old"]);
    assert_eq!(c[0].1, verifier());
    assert!(s
        .grant_candidates("alice".into(), "billing".into())
        .await
        .unwrap()
        .is_empty());
}

async fn requests_collect_approvals_then_approve_deny_and_expire(b: Backend) {
    let s = b.open().await;
    s.insert_request(request("r_a", t0(), 2)).await.unwrap();
    s.insert_request(request("r_b", t0(), 1)).await.unwrap();
    s.insert_request(request("r_c", t0(), 1)).await.unwrap();
    assert_eq!(
        s.get_request("r_a".into()).await.unwrap(),
        Some(request("r_a", t0(), 2))
    );
    let approve = |id: &str, by: &str| s.approve_request(id.into(), approval(by, t0()), t0());

    let ApproveOutcome::Recorded(r) = approve("r_a", "bob").await.unwrap() else {
        panic!("first approval")
    };
    assert_eq!((r.state, r.approvals.len()), (RequestStatus::Pending, 1));
    assert!(matches!(
        approve("r_a", "bob").await.unwrap(),
        ApproveOutcome::Duplicate
    ));
    let ApproveOutcome::Recorded(r) = approve("r_a", "carol").await.unwrap() else {
        panic!("second approval")
    };
    assert_eq!(r.state, RequestStatus::Approved);
    assert_eq!(r.decided_at, Some(t0()));
    assert!(matches!(
        approve("r_a", "dave").await.unwrap(),
        ApproveOutcome::NotPending(RequestStatus::Approved)
    ));
    assert!(matches!(
        approve("r_zz", "dave").await.unwrap(),
        ApproveOutcome::NotFound
    ));
    assert_eq!(s.count_pending_requests(t0()).await.unwrap(), 2);

    let (denied, r) = s
        .deny_request("r_c".into(), "bob".into(), "no".into(), t0())
        .await
        .unwrap()
        .unwrap();
    assert!(denied && r.state == RequestStatus::Denied && r.denied_by.as_deref() == Some("bob"));
    assert!(s
        .deny_request("r_zz".into(), "bob".into(), "no".into(), t0())
        .await
        .unwrap()
        .is_none());

    let later = t0() + chrono::Duration::hours(2);
    let pending_then = RequestFilter {
        status: Some(RequestStatus::Expired),
        ..Default::default()
    };
    let overdue = s.list_requests(pending_then, later).await.unwrap();
    assert_eq!(
        overdue.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["r_b"],
        "pending past its deadline"
    );
    let expired = s.expire_requests(later).await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(
        (expired[0].id.as_str(), expired[0].state),
        ("r_b", RequestStatus::Expired)
    );
    assert!(s.expire_requests(later).await.unwrap().is_empty(), "expired once");
    let (changed, r) = s
        .deny_request("r_b".into(), "bob".into(), "no".into(), later)
        .await
        .unwrap()
        .unwrap();
    assert!(!changed && r.state == RequestStatus::Expired);

    let approved = RequestFilter {
        status: Some(RequestStatus::Approved),
        ..Default::default()
    };
    let listed = s.list_requests(approved, later).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0]
            .approvals
            .iter()
            .map(|a| a.by.as_str())
            .collect::<Vec<_>>(),
        ["bob", "carol"]
    );

    s.insert_grant(grant("g_r", "alice", t0()), verifier())
        .await
        .unwrap();
    s.set_request_grant("r_a".into(), "g_r".into()).await.unwrap();
    assert_eq!(
        s.get_request("r_a".into())
            .await
            .unwrap()
            .unwrap()
            .grant_id
            .as_deref(),
        Some("g_r")
    );
    assert!(s.mark_token_fetched("r_a".into(), later).await.unwrap());
    assert!(
        !s.mark_token_fetched("r_a".into(), later).await.unwrap(),
        "fetched once"
    );
    assert_eq!(
        s.get_request("r_a".into())
            .await
            .unwrap()
            .unwrap()
            .token_fetched_at,
        Some(later)
    );
}

async fn extend_count_and_break_glass(b: Backend) {
    let s = b.open().await;
    s.insert_grant(grant("g_a", "alice", t0()), verifier())
        .await
        .unwrap();
    s.insert_grant_flagged(grant("g_b", "bob", t0()), verifier(), true)
        .await
        .unwrap();
    let flagged = s
        .break_glass_ids(vec!["g_a".into(), "g_b".into(), "g_zz".into()])
        .await
        .unwrap();
    assert_eq!(flagged.into_iter().collect::<Vec<_>>(), ["g_b"]);
    let c = s.grant_counts(t0()).await.unwrap();
    assert_eq!(
        (c.active, c.break_glass_active, c.expired, c.pending),
        (2, 1, 0, 0)
    );

    let new_end = t0() + chrono::Duration::hours(1);
    let extended = s.extend_grant("g_a".into(), new_end).await.unwrap().unwrap();
    assert_eq!(extended.expires_at, new_end);
    assert_eq!(s.extend_grant("g_zz".into(), new_end).await.unwrap(), None);
    let at = t0() + minutes(30);
    let c = s.grant_counts(at).await.unwrap();
    assert_eq!((c.active, c.expired, c.break_glass_active), (1, 1, 0));
    let gone = s.grants_expired_between(t0(), at).await.unwrap();
    assert_eq!(gone.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(), ["g_b"]);
    assert!(s
        .grants_expired_between(at, at + minutes(1))
        .await
        .unwrap()
        .is_empty());

    s.revoke_grant("g_a".into(), "x".into(), "y".into(), at)
        .await
        .unwrap();
    let unchanged = s
        .extend_grant("g_a".into(), at + chrono::Duration::hours(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(unchanged.expires_at, new_end, "a revoked grant is not extended");
    assert_eq!(s.grant_counts(at).await.unwrap().revoked, 1);
}

/// See: issue 11 item 1. Approvers of one request on two instances at once: each request gets
/// exactly `approvals_required` approvals recorded, exactly one of them approves it, and the rest
/// find it decided; one approver racing itself on both instances is recorded once.
async fn concurrent_approvals_on_two_handles_approve_exactly_once(b: Backend) {
    let handles = [b.open().await, b.open().await];
    const REQUESTS: usize = 6;
    const APPROVERS: usize = 6;
    const REQUIRED: u32 = 3;
    for r in 0..REQUESTS {
        handles[0]
            .insert_request(request(&format!("r_{r}"), t0(), REQUIRED))
            .await
            .unwrap();
    }
    handles[1]
        .insert_request(request("r_dup", t0(), 5))
        .await
        .unwrap();

    let mut tasks = tokio::task::JoinSet::new();
    for r in 0..REQUESTS {
        for a in 0..APPROVERS {
            let store = handles[(r + a) % 2].clone();
            tasks.spawn(async move {
                let outcome = store
                    .approve_request(format!("r_{r}"), approval(&format!("approver{a}"), t0()), t0())
                    .await;
                (format!("r_{r}"), outcome)
            });
        }
    }
    for store in handles.clone() {
        tasks.spawn(async move {
            let outcome = store
                .approve_request("r_dup".into(), approval("twice", t0()), t0())
                .await;
            ("r_dup".to_owned(), outcome)
        });
    }
    let mut recorded = std::collections::HashMap::<String, (u32, u32)>::new();
    let mut duplicates = 0;
    while let Some(joined) = tasks.join_next().await {
        let (id, outcome) = joined.unwrap();
        match outcome.unwrap_or_else(|e| panic!("{id}: {e}")) {
            ApproveOutcome::Recorded(r) => {
                let entry = recorded.entry(id).or_default();
                entry.0 += 1;
                entry.1 += u32::from(r.state == RequestStatus::Approved);
            }
            ApproveOutcome::NotPending(RequestStatus::Approved) => {}
            ApproveOutcome::Duplicate => duplicates += 1,
            other => panic!("{id}: unexpected {other:?}"),
        }
    }
    for r in 0..REQUESTS {
        let id = format!("r_{r}");
        assert_eq!(
            recorded[&id],
            (REQUIRED, 1),
            "{id}: (approvals recorded, approvals that approved)"
        );
        let stored = handles[1].get_request(id.clone()).await.unwrap().unwrap();
        assert_eq!(
            (stored.state, stored.approvals.len()),
            (RequestStatus::Approved, REQUIRED as usize),
            "{id}"
        );
    }
    assert_eq!(
        (recorded["r_dup"], duplicates),
        ((1, 0), 1),
        "one approver racing itself counts once"
    );
}

/// Two instances expiring overdue requests at once: each request is reported expired once.
async fn concurrent_expiry_on_two_handles_expires_each_request_once(b: Backend) {
    let handles = [b.open().await, b.open().await];
    for r in 0..20 {
        handles[r % 2]
            .insert_request(request(&format!("r_{r}"), t0(), 1))
            .await
            .unwrap();
    }
    let later = t0() + chrono::Duration::hours(2);
    let (a, b2) = tokio::join!(
        handles[0].expire_requests(later),
        handles[1].expire_requests(later)
    );
    let mut ids: Vec<String> = a.unwrap().into_iter().chain(b2.unwrap()).map(|r| r.id).collect();
    ids.sort();
    let mut expected: Vec<String> = (0..20).map(|r| format!("r_{r}")).collect();
    expected.sort();
    assert_eq!(ids, expected);
}

/// See: issue 11 item 1 (several instances starting at once). Four at once: one migrates from
/// scratch, the others wait for it and find nothing left to do.
async fn concurrent_migrations_all_succeed(b: Backend) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let config = b.config.clone();
        tasks.spawn(async move { timebox::store::migrate(&config).await });
    }
    let mut from = Vec::new();
    let mut to = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let migrated = joined.unwrap().expect("migration");
        from.push(migrated.from);
        to.push(migrated.to);
    }
    from.sort();
    let latest = to[0];
    assert!(latest >= 1 && to.iter().all(|v| *v == latest), "{to:?}");
    assert_eq!(from, [0, latest, latest, latest]);
    let again = timebox::store::migrate(&b.config).await.unwrap();
    assert_eq!((again.from, again.to), (latest, latest));
    // And the store works.
    let s = b.open().await;
    s.insert_grant(grant("g_a", "alice", t0()), verifier())
        .await
        .unwrap();
}

async fn installation_secret_is_the_same_from_two_handles(b: Backend) {
    let (a, c) = (b.open().await, b.open().await);
    let (x, y) = tokio::join!(a.installation_secret(), c.installation_secret());
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x, y);
    assert_ne!(x, [0u8; 32]);
    assert_eq!(
        b.open().await.installation_secret().await.unwrap(),
        x,
        "kept across opens"
    );
}

async fn a_store_newer_than_the_binary_is_refused(b: Backend) {
    let s = b.open().await;
    s.insert_grant(grant("g_a", "alice", t0()), verifier())
        .await
        .unwrap();
    drop(s);
    b.make_schema_newer().await;
    let err = Store::connect(&b.config).await.unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 999, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("newer than this timebox understands"),
        "{err}"
    );
    let err = timebox::store::migrate(&b.config).await.unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 999, .. }),
        "{err}"
    );
    // The synchronous open (AppState::build) refuses it too.
    let config = b.config.clone();
    let err = tokio::task::spawn_blocking(move || Store::open(&config))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 999, .. }),
        "{err}"
    );
}

async fn an_unreachable_store_is_a_clear_error(b: Backend) {
    let config = b.unreachable_config();
    let err = Store::connect(&config).await.unwrap_err();
    let text = err.to_string();
    match b.kind {
        Kind::Sqlite => assert!(text.contains("cannot prepare store directory"), "{text}"),
        Kind::Postgres => {
            assert!(err.is_unavailable(), "{text}");
            assert!(
                text.contains("cannot connect to the PostgreSQL store: error connecting to server: "),
                "{text}"
            );
        }
    }
    let err = timebox::store::migrate(&config).await.unwrap_err();
    assert_eq!(err.to_string(), text);
}

/// A PostgreSQL store that goes away under a running instance: calls fail with an error that says
/// so (callers deny), within the query timeout, and never hang or panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_store_that_goes_away_fails_calls_closed() {
    let b = Backend::new(Kind::Postgres).await;
    let s = b.open().await;
    s.insert_grant(grant("g_a", "alice", t0()), verifier())
        .await
        .unwrap();
    let db = b.db.as_ref().unwrap();
    let sql = format!("DROP DATABASE {} WITH (FORCE)", db.database);
    tokio::task::spawn_blocking(move || common::cluster::shared_cluster().psql("postgres", &sql).unwrap())
        .await
        .unwrap();
    let err = s.get_grant("g_a".into()).await.unwrap_err();
    let err2 = s.get_grant("g_a".into()).await.unwrap_err();
    for e in [&err, &err2] {
        assert!(
            matches!(e, StoreError::Postgres(_) | StoreError::Unavailable(_)),
            "{e}"
        );
    }
    assert!(err2.is_unavailable(), "no new connection can be had: {err2}");
}

/// A PostgreSQL store call that cannot finish (a table locked by someone else) ends at
/// `query_timeout` with a `Timeout` error instead of holding the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_postgres_store_call_ends_at_the_query_timeout() {
    let b = Backend::new(Kind::Postgres).await;
    let StoreConfig::Postgres(mut pg) = b.config.clone() else {
        unreachable!()
    };
    pg.query_timeout = Duration::from_secs(1);
    let config = StoreConfig::Postgres(pg.clone());
    let s = Store::connect(&config).await.unwrap();
    s.insert_grant(grant("g_a", "alice", t0()), verifier())
        .await
        .unwrap();
    let (locker, conn) = pg.connect.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    locker
        .batch_execute("BEGIN; LOCK TABLE timebox.grants IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let err = s.get_grant("g_a".into()).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Timeout(d) if d == Duration::from_secs(1)),
        "{err}"
    );
    assert!(err.is_unavailable());
    locker.batch_execute("ROLLBACK").await.unwrap();
    // The pool recovers once the lock is gone.
    assert!(
        common::eventually(Duration::from_secs(20), || {
            let s = s.clone();
            async move { s.get_grant("g_a".into()).await.is_ok() }
        })
        .await
    );
}

/// `Store::open` (what `AppState::build` calls) migrates a PostgreSQL store on a thread of its own,
/// so it also works from inside a single-threaded runtime (`#[tokio::main(flavor =
/// "current_thread")]`, tests), where blocking on the runtime's own I/O would hang.
#[tokio::test(flavor = "current_thread")]
async fn the_synchronous_open_works_inside_a_single_threaded_runtime() {
    let b = Backend::new(Kind::Postgres).await;
    let s = Store::open(&b.config).expect("open");
    assert_eq!(s.kind(), "postgres");
    s.insert_grant(grant("g_a", "alice", t0()), verifier())
        .await
        .unwrap();
    assert!(s.get_grant("g_a".into()).await.unwrap().is_some());
}

// ---------------------------------------------------------------------------------------------
// Admin tokens (issue 17 item 1).
// ---------------------------------------------------------------------------------------------

fn admin_token(id: &str, name: &str, created: DateTime<Utc>) -> StoredAdminToken {
    let token = format!("tbxa_{id}{}", "0".repeat(32));
    let mut sha256 = [0u8; 32];
    hex::decode_to_slice(timebox::grants::token::sha256_hex(&token), &mut sha256).unwrap();
    StoredAdminToken {
        record: AdminTokenRecord {
            id: id.into(),
            name: name.into(),
            roles: vec![PrincipalRole::Admin, PrincipalRole::Auditor],
            created_at: created,
            created_by: "ops".into(),
            expires_at: None,
            revoked_at: None,
            revoked_by: None,
            last_used_at: None,
        },
        sha256,
        scram: ScramVerifier::derive(&token, b"salt", 4096),
    }
}

/// A stored token comes back by its id with its hash and verifier; a name is taken by one live
/// token at a time (expired or revoked ones free it); revoking takes the live one, once; a use is
/// noted; the list is newest first.
async fn admin_tokens_round_trip_one_live_name_and_revoke(b: Backend) {
    let s = b.open().await;
    let mut first = admin_token("00000000000000a1", "ci", t0());
    first.record.expires_at = Some(t0() + minutes(10));
    assert!(s.insert_admin_token(first.clone(), t0()).await.unwrap());
    assert_eq!(
        s.admin_token("00000000000000a1".into()).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(s.admin_token("00000000000000ff".into()).await.unwrap(), None);

    // While the first is live, its name is taken; once it has expired, it is free.
    let second = admin_token("00000000000000a2", "ci", t0() + minutes(1));
    assert!(!s
        .insert_admin_token(second.clone(), t0() + minutes(1))
        .await
        .unwrap());
    assert_eq!(
        s.admin_token("00000000000000a2".into()).await.unwrap(),
        None,
        "nothing stored"
    );
    let second = admin_token("00000000000000a2", "ci", t0() + minutes(10));
    assert!(s
        .insert_admin_token(second.clone(), t0() + minutes(10))
        .await
        .unwrap());

    // Revoking takes the live one (not the expired one), once.
    let at = t0() + minutes(11);
    let revoked = s
        .revoke_admin_token("ci".into(), "ops".into(), at)
        .await
        .unwrap()
        .expect("a live token named ci");
    assert_eq!(revoked.id, "00000000000000a2");
    assert_eq!(
        (revoked.revoked_at, revoked.revoked_by.as_deref()),
        (Some(at), Some("ops"))
    );
    assert_eq!(
        s.revoke_admin_token("ci".into(), "ops".into(), at).await.unwrap(),
        None
    );
    assert_eq!(
        s.revoke_admin_token("nobody".into(), "ops".into(), at)
            .await
            .unwrap(),
        None
    );
    // A revoked token frees the name too.
    assert!(s
        .insert_admin_token(admin_token("00000000000000a3", "ci", at), at)
        .await
        .unwrap());

    s.touch_admin_token("00000000000000a3".into(), at + minutes(1))
        .await
        .unwrap();
    let listed = s.list_admin_tokens().await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["00000000000000a3", "00000000000000a2", "00000000000000a1"]);
    assert_eq!(listed[0].last_used_at, Some(at + minutes(1)));
    assert_eq!(listed[0].roles, [PrincipalRole::Admin, PrincipalRole::Auditor]);
    assert_eq!(listed[1].revoked_at, Some(at));
    // Another handle (another instance) sees the same.
    assert_eq!(b.open().await.list_admin_tokens().await.unwrap(), listed);
}

/// Instances issuing one name at once: exactly one token is stored. Each handle has its
/// connection open and the issues start together, round after round, so the check-then-insert
/// race has every chance to show.
async fn concurrent_issues_of_one_admin_token_name_store_one(b: Backend) {
    const HANDLES: usize = 4;
    const ROUNDS: usize = 10;
    let mut handles = Vec::new();
    for _ in 0..HANDLES {
        let s = b.open().await;
        s.list_admin_tokens().await.unwrap();
        handles.push(s);
    }
    for round in 0..ROUNDS {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(HANDLES));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, s) in handles.iter().cloned().enumerate() {
            let token = admin_token(&format!("00000000000{round:03}b{i}"), &format!("ci{round}"), t0());
            let barrier = barrier.clone();
            tasks.spawn(async move {
                barrier.wait().await;
                s.insert_admin_token(token, t0()).await.unwrap()
            });
        }
        let mut stored = 0;
        while let Some(joined) = tasks.join_next().await {
            stored += usize::from(joined.unwrap());
        }
        assert_eq!(stored, 1, "round {round}");
    }
    assert_eq!(b.open().await.list_admin_tokens().await.unwrap().len(), ROUNDS);
}
