//! Expiry at scale, behaviour (not timing; the numbers are in `benches/RESULTS.md`): a severed
//! session's client gets its FATAL without waiting for the upstream cancel, the upstream query is
//! stopped afterwards (or its connection closed past the bound), and the audit trail says which;
//! a client whose socket is always ready cannot delay its cut. See: issue 18.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use common::{eventually, upstream_backends, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::NoTls;

async fn connect(conn: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(conn, NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

/// (kind, payload JSON) of every record in an audit database file.
fn audit_records(db: &std::path::Path) -> Vec<(String, serde_json::Value)> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut stmt = conn
        .prepare("SELECT kind, payload FROM audit_events ORDER BY seq")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .unwrap()
        .map(|r| {
            let (k, p) = r.unwrap();
            (k, serde_json::from_str(&p).unwrap())
        })
        .collect()
}

/// The `upstream_end` records of grant `grant_id`.
async fn upstream_ends(inst: &common::TestInstance, grant_id: &str) -> Vec<serde_json::Value> {
    inst.state.audit.wait_indexed().await.unwrap();
    audit_records(&inst.audit_db())
        .into_iter()
        .filter(|(k, p)| k == "upstream_end" && p["grant_id"] == grant_id)
        .map(|(_, p)| p)
        .collect()
}

/// The first 8 bytes of a CancelRequest: length 16, code 80877102.
const CANCEL_HEAD: [u8; 8] = [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];

/// A TCP relay in front of the shared cluster that counts what timebox sends the target: it relays
/// sessions, and CancelRequests unless it swallows them (accepts and never answers, like a target
/// whose postmaster cannot fork a process for them); it refuses timebox's batch cancel connection
/// (`application_name = timebox:cancel`) when told to.
struct TargetRelay {
    port: u16,
    /// CancelRequests received.
    seen: Arc<AtomicUsize>,
    /// Swallowed CancelRequest connections the sender closed.
    closed: Arc<AtomicUsize>,
    /// Batch cancel connections (startup packets with `timebox:cancel`), refused or not.
    batch_logins: Arc<AtomicUsize>,
}

#[derive(Clone, Copy)]
struct RelayRules {
    swallow_cancels: bool,
    refuse_batch: bool,
}

async fn target_relay(rules: RelayRules) -> TargetRelay {
    let cluster_port = tokio::task::spawn_blocking(|| common::cluster::shared_cluster().port())
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let counters = || Arc::new(AtomicUsize::new(0));
    let (seen, closed, batch_logins) = (counters(), counters(), counters());
    let (s2, c2, b2) = (seen.clone(), closed.clone(), batch_logins.clone());
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let (seen, closed, batch) = (s2.clone(), c2.clone(), b2.clone());
            tokio::spawn(async move {
                let mut head = [0u8; 8];
                if tcp.read_exact(&mut head).await.is_err() {
                    return;
                }
                let len = u32::from_be_bytes(head[..4].try_into().unwrap()) as usize;
                let mut rest = vec![0u8; len.saturating_sub(8)];
                if tcp.read_exact(&mut rest).await.is_err() {
                    return;
                }
                if head == CANCEL_HEAD {
                    seen.fetch_add(1, Ordering::SeqCst);
                    if rules.swallow_cancels {
                        let mut sink = [0u8; 64];
                        while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
                        closed.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
                if rest.windows(14).any(|w| w == b"timebox:cancel") {
                    batch.fetch_add(1, Ordering::SeqCst);
                    if rules.refuse_batch {
                        return;
                    }
                }
                let mut up = TcpStream::connect(("127.0.0.1", cluster_port)).await.unwrap();
                if up.write_all(&head).await.is_ok() && up.write_all(&rest).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut up).await;
                }
            });
        }
    });
    TargetRelay {
        port,
        seen,
        closed,
        batch_logins,
    }
}

/// A relay that swallows CancelRequests and refuses the batch connection: nothing timebox does
/// can stop a query on it.
async fn cancel_blackhole() -> TargetRelay {
    target_relay(RelayRules {
        swallow_cancels: true,
        refuse_batch: true,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_fatal_does_not_wait_for_an_unanswered_cancel_and_the_audit_says_closed() {
    let hole = cancel_blackhole().await;
    let inst = common::start(Options {
        shop_port: Some(hole.port),
        ..Options::default()
    })
    .await;
    let (grant, token) = inst.grant("alice", "read", "2s").await;
    let client = connect(&inst.conn_string("alice", &token, "disable")).await;
    let err = client.simple_query("SELECT pg_sleep(60)").await.unwrap_err();
    // Regression (issue 18): the FATAL used to wait for the upstream cancel (up to its 2 s
    // timeout, after which timebox dropped the cancel connection).
    assert_eq!(
        hole.closed.load(Ordering::SeqCst),
        0,
        "the client's FATAL waited for the upstream cancel"
    );
    let late = (chrono::Utc::now() - grant.expires_at).num_milliseconds();
    eprintln!("expiry with an unanswered cancel: FATAL {late} ms after expires_at");
    let db = err.as_db_error().expect("a FATAL from timebox");
    assert_eq!(db.code().code(), "57P01");
    assert!(db.message().contains("expired at"), "{}", db.message());

    // Past the bound, the upstream connection is closed; PostgreSQL ends the backend; the audit
    // records that the query was not confirmed cancelled.
    assert!(
        eventually(Duration::from_secs(15), || async {
            !upstream_ends(&inst, &grant.id).await.is_empty()
        })
        .await,
        "no upstream_end record"
    );
    let ends = upstream_ends(&inst, &grant.id).await;
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(ends[0]["outcome"], "closed", "{ends:?}");
    assert!(hole.seen.load(Ordering::SeqCst) >= 1, "no cancel was attempted");
    assert!(
        eventually(Duration::from_secs(10), || upstream_backends(&grant.id)
            .then(|n| async move { n == 0 }))
        .await,
        "the upstream backend outlived the closed connection"
    );
}

/// Four sessions of one grant in `pg_sleep(600)` expire; returns the relay and the grant once
/// each client has its FATAL 57P01.
async fn four_sessions_expire(
    rules: RelayRules,
) -> (common::TestInstance, TargetRelay, timebox::grants::Grant) {
    let relay = target_relay(rules).await;
    let inst = common::start(Options {
        shop_port: Some(relay.port),
        ..Options::default()
    })
    .await;
    // Long enough for four logins on a loaded machine.
    let (grant, token) = inst.grant("alice", "read", "6s").await;
    let conn = inst.conn_string("alice", &token, "disable");
    let clients: Vec<_> = futures::future::join_all((0..4).map(|_| connect(&conn))).await;
    let queries = clients.iter().map(|c| c.simple_query("SELECT pg_sleep(600)"));
    for result in futures::future::join_all(queries).await {
        let err = result.unwrap_err();
        assert_eq!(err.as_db_error().expect("a FATAL").code().code(), "57P01");
    }
    assert!(
        eventually(Duration::from_secs(15), || async {
            upstream_ends(&inst, &grant.id).await.len() == 4
        })
        .await,
        "expected one upstream_end per session: {:?}",
        upstream_ends(&inst, &grant.id).await
    );
    assert!(
        eventually(Duration::from_secs(10), || upstream_backends(&grant.id)
            .then(|n| async move { n == 0 }))
        .await,
        "an upstream backend is still there"
    );
    (inst, relay, grant)
}

/// Regression (issue 18): each severed session sent a CancelRequest of its own (a new connection
/// and a forked process on the target, eight at a time), so 1,000 sessions of one grant took
/// past 2 s to stop upstream. Now timebox's own connection for the role ends them in batches
/// (`pg_terminate_backend`), and no CancelRequest reaches the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sessions_backends_are_ended_by_one_batch_connection_and_audited() {
    let rules = RelayRules {
        swallow_cancels: false,
        refuse_batch: false,
    };
    let (inst, relay, grant) = four_sessions_expire(rules).await;
    for end in upstream_ends(&inst, &grant.id).await {
        assert_eq!(end["outcome"], "terminated", "{end}");
    }
    assert_eq!(
        relay.seen.load(Ordering::SeqCst),
        0,
        "CancelRequests reached the target"
    );
    assert_eq!(
        relay.batch_logins.load(Ordering::SeqCst),
        1,
        "one batch connection serves every session of the role"
    );
}

/// When the batch connection cannot be opened, each session falls back to a CancelRequest (through
/// the target's cancel slots): its query is still stopped, and the audit says how.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_batch_connection_sessions_fall_back_to_cancel_requests() {
    let rules = RelayRules {
        swallow_cancels: false,
        refuse_batch: true,
    };
    let (inst, relay, grant) = four_sessions_expire(rules).await;
    for end in upstream_ends(&inst, &grant.id).await {
        assert_eq!(end["outcome"], "cancelled", "{end}");
    }
    assert!(
        relay.batch_logins.load(Ordering::SeqCst) >= 1,
        "no batch connection was tried"
    );
    assert_eq!(
        relay.seen.load(Ordering::SeqCst),
        4,
        "one CancelRequest per session"
    );
}

/// How a pipelining client's session is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    Expiry,
    Kill,
}

/// What a pipelining client saw.
struct Pipelined {
    /// The first ErrorResponse (SQLSTATE, message) and when it arrived.
    error: Option<(String, String, chrono::DateTime<chrono::Utc>)>,
    /// The writer stopped on its own time limit: the session was never cut while it sent.
    outlived_cut: bool,
}

/// A timebox instance like [`common::start`]'s with `audit.durability = durability`.
async fn start_with_durability(durability: &str) -> common::TestInstance {
    let port = tokio::task::spawn_blocking(|| common::cluster::shared_cluster().port())
        .await
        .unwrap();
    let durability = format!("durability = \"{durability}\"");
    common::start_with_config(|dir| {
        common::config_text(&Options::default(), dir, port).replace("durability = \"fsync\"", &durability)
    })
    .await
}

/// Logs in as alice and sends `INSERT INTO table` after `INSERT` (simple Query frames, pipelined:
/// the writer never waits for an answer) until the session ends or `give_up_at`, while a reader
/// drains the answers and notes the first ErrorResponse.
async fn pipeline_inserts(
    inst: &common::TestInstance,
    token: &str,
    table: &str,
    give_up_at: chrono::DateTime<chrono::Utc>,
) -> Pipelined {
    let (stream, mut buf) = common::raw::login(inst.proxy_addr, "alice", token).await;
    let (mut rd, mut wr) = stream.into_split();
    let reader = tokio::spawn(async move {
        use postgres_protocol::message::backend::Message;
        let mut error = None;
        loop {
            match Message::parse(&mut buf) {
                Ok(Some(Message::ErrorResponse(body))) if error.is_none() => {
                    let (code, message) = common::raw::error_fields(&body);
                    error = Some((code, message, chrono::Utc::now()));
                }
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(_) => break,
            }
            match tokio::time::timeout(Duration::from_secs(30), rd.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => break,
            }
        }
        error
    });
    let mut n: u64 = 0;
    let mut batch = bytes::BytesMut::new();
    let outlived_cut = loop {
        if chrono::Utc::now() > give_up_at {
            break true;
        }
        batch.clear();
        for _ in 0..50 {
            n += 1;
            postgres_protocol::message::frontend::query(
                &format!("INSERT INTO {table} (n) VALUES ({n})"),
                &mut batch,
            )
            .unwrap();
        }
        if wr.write_all(&batch).await.is_err() || reader.is_finished() {
            break false;
        }
    };
    drop(wr);
    let error = reader.await.unwrap();
    Pipelined { error, outlived_cut }
}

/// How long INSERTs forwarded before a cut may still be running upstream after it: the proxy
/// stops forwarding at the cut, but what it forwarded just before may wait in the socket buffers
/// for a backend descheduled on a loaded machine; the upstream is stopped within 2 s of the cut.
const FORWARDED_BEFORE_CUT_TOLERANCE: chrono::Duration = chrono::Duration::seconds(2);

/// Rows in `table`: all, run after `at`, run after `at` plus the tolerance (by the server's
/// `clock_timestamp()` when each INSERT ran).
async fn rows_after(table: &str, at: chrono::DateTime<chrono::Utc>) -> (i64, i64, i64) {
    let ts = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let sql = format!(
        "SELECT count(*) || ' ' || count(*) FILTER (WHERE ran_at > '{}') || ' ' || count(*) FILTER (WHERE ran_at > '{}') FROM public.{table}",
        ts(at),
        ts(at + FORWARDED_BEFORE_CUT_TOLERANCE)
    );
    let out = tokio::task::spawn_blocking(move || common::cluster::shop_psql(&sql))
        .await
        .unwrap();
    let mut it = out.split_whitespace().map(|s| s.parse::<i64>().expect("count"));
    (it.next().unwrap(), it.next().unwrap(), it.next().unwrap())
}

/// A client whose socket is always ready (it pipelines INSERTs and never waits) is cut at the
/// deadline or kill like any other: it gets its FATAL 57P01 while still sending, and no INSERT runs
/// upstream after the cut (beyond those forwarded just before it, see
/// [`FORWARDED_BEFORE_CUT_TOLERANCE`]). Regression (issue 18): the relay loop polled socket I/O
/// before the expiry and kill arms, so a busy socket delayed the cut for as long as the client
/// kept sending (8 s here, ~72,000 INSERTs after the cut) and frames went upstream after it.
async fn pipelining_client_is_cut_at_once(cut: Cut, durability: &str) {
    let inst = start_with_durability(durability).await;
    let table = common::cluster::unique_name("pipelined");
    let create = format!(
        "CREATE TABLE public.{table} (n bigint NOT NULL, ran_at timestamptz NOT NULL DEFAULT clock_timestamp())"
    );
    tokio::task::spawn_blocking(move || common::cluster::shop_psql(&create))
        .await
        .unwrap();
    // Long enough to log in on a loaded machine; the client pipelines until the cut.
    let ttl = if cut == Cut::Expiry { "4s" } else { "1h" };
    let (grant, token) = inst.grant("alice", "write", ttl).await;
    // The cut: the grant's end, or a kill once the session has run 1,000 statements.
    let give_up_at = match cut {
        Cut::Expiry => grant.expires_at + chrono::Duration::seconds(8),
        Cut::Kill => chrono::Utc::now() + chrono::Duration::seconds(30),
    };
    let killer = (cut == Cut::Kill).then(|| {
        let state = inst.state.clone();
        tokio::spawn(async move {
            let busy = || async {
                let sessions = state.proxy.sessions.list();
                sessions.first().is_some_and(|s| s.stats().statements >= 1000)
            };
            assert!(
                eventually(Duration::from_secs(25), busy).await,
                "the client never got going"
            );
            let session = state.proxy.sessions.list().pop().expect("the session");
            session.kill("test", "cut while pipelining");
            chrono::Utc::now()
        })
    });
    let seen = pipeline_inserts(&inst, &token, &table, give_up_at).await;
    let cut_at = match killer {
        Some(k) => k.await.unwrap(),
        None => grant.expires_at,
    };
    let (rows, late, too_late) = rows_after(&table, cut_at).await;
    eprintln!(
        "{cut:?}/{durability}: {rows} rows, {late} ran after the cut; error {:?}",
        seen.error
    );
    assert!(rows > 0, "no INSERT ran before the cut");
    assert!(
        !seen.outlived_cut,
        "the session was not cut while the client kept sending (the cut was at {cut_at})"
    );
    let (code, message, at) = seen
        .error
        .expect("the client got no error before the session ended");
    assert_eq!(code, "57P01", "{message}");
    let expected = if cut == Cut::Expiry {
        "expired at"
    } else {
        "killed by"
    };
    assert!(message.contains(expected), "{message}");
    assert!(
        at >= cut_at - chrono::Duration::milliseconds(5),
        "FATAL before the cut: {at} < {cut_at}"
    );
    assert_eq!(
        too_late, 0,
        "{too_late} of {rows} INSERTs ran upstream more than {FORWARDED_BEFORE_CUT_TOLERANCE} after the cut at {cut_at}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelining_client_is_cut_at_expiry() {
    pipelining_client_is_cut_at_once(Cut::Expiry, "async").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelining_client_is_cut_at_expiry_with_fsync_audit() {
    pipelining_client_is_cut_at_once(Cut::Expiry, "fsync").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelining_client_is_cut_when_killed() {
    pipelining_client_is_cut_at_once(Cut::Kill, "async").await;
}

/// Clients' CancelRequests take the target's cancel slots like the sessions' own cancels: with one
/// slot, held by a cancel the target never answers, the other requests wait
/// `upstream_stop_timeout` and are dropped (and counted) instead of reaching the target.
/// Regression (issue 18): every client CancelRequest was sent at once, outside the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cancel_requests_are_bounded_per_target() {
    let hole = cancel_blackhole().await;
    let inst = common::start(Options {
        shop_port: Some(hole.port),
        proxy_extra: "cancel_parallelism_per_target = 1\nupstream_stop_timeout = \"1s\"".into(),
        ..Options::default()
    })
    .await;
    let (_grant, token) = inst.grant("alice", "read", "1h").await;
    let client = connect(&inst.conn_string("alice", &token, "disable")).await;
    let cancel = client.cancel_token();
    let requests = (0..3).map(|_| cancel.cancel_query(NoTls));
    for sent in futures::future::join_all(requests).await {
        sent.expect("the proxy takes the cancel request");
    }
    let counted = |outcome: &str| {
        inst.state
            .proxy
            .metrics
            .cancel_requests_total
            .with_label_values(&[outcome])
            .get()
    };
    // The proxy is done with a request once it is forwarded (the unanswered one fails after
    // its own 2 s bound) or dropped.
    let done = || async {
        ["forwarded", "failed", "dropped"]
            .iter()
            .map(|o| counted(o))
            .sum::<u64>()
            == 3
    };
    assert!(
        eventually(Duration::from_secs(20), done).await,
        "the cancel requests were not all handled"
    );
    assert_eq!(
        hole.seen.load(Ordering::SeqCst),
        1,
        "cancel requests beyond the target's one slot reached it"
    );
    assert_eq!(counted("dropped"), 2);
    assert_eq!(counted("failed"), 1, "the unanswered one timed out");
    // The session itself is untouched.
    client
        .simple_query("SELECT 1")
        .await
        .expect("the session goes on");
}

/// The messages of the tracing events emitted on this thread while it is set as default.
#[derive(Clone, Default)]
struct EventLog(Arc<std::sync::Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for EventLog {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(Option<String>);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = Some(format!("{value:?}"));
                }
            }
        }
        let mut message = Message(None);
        event.record(&mut message);
        if let Some(m) = message.0 {
            self.0.lock().unwrap().push(m);
        }
    }
}

/// Sessions of one grant cut at the same moment all get their FATAL before any of them does the
/// rest of its ending (session end record, upstream stop). On a single-threaded runtime the order
/// is deterministic: the revocation wakes every session, and each writes its FATAL in its first
/// poll. Regression (issue 18): each session did its whole ending (audit submission, upstream
/// cancel connection) right after its own FATAL, before the next session could write its FATAL,
/// so at 1,000 sessions the last FATALs waited for ~1,000 endings (p99 133 ms).
#[tokio::test]
async fn sessions_cut_together_all_get_their_fatal_before_any_ends_its_upstream() {
    use tracing_subscriber::layer::SubscriberExt;
    let log = EventLog::default();
    // With a single live dispatcher, tracing caches a callsite's interest from whichever thread hits
    // it first: one hit on another test's thread (no subscriber) would hide it here. A second one
    // makes every thread ask its own default.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let _capture = tracing::subscriber::set_default(tracing_subscriber::registry().with(log.clone()));
    let inst = common::start(Options::default()).await;
    let (grant, token) = inst.grant("alice", "read", "1h").await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(common::raw::login(inst.proxy_addr, "alice", &token).await);
    }
    inst.state
        .grants
        .revoke(&grant.id, "ops", "cut them all")
        .await
        .unwrap();
    for (stream, buf) in &mut clients {
        let (code, message) = common::raw::next_error(stream, buf).await.expect("a FATAL");
        assert_eq!(code, "57P01", "{message}");
    }
    assert!(
        eventually(Duration::from_secs(15), || async {
            let events = log.0.lock().unwrap();
            events.iter().filter(|m| *m == "session ended").count() == 3
        })
        .await,
        "the sessions did not end: {:#?}",
        log.0.lock().unwrap()
    );
    let events = log.0.lock().unwrap().clone();
    let sent: Vec<usize> = positions(&events, "final message sent");
    let ending: Vec<usize> = positions(&events, "ending the session after its final message");
    assert_eq!((sent.len(), ending.len()), (3, 3), "{events:#?}");
    assert!(
        sent.iter().max() < ending.iter().min(),
        "a session ended its upstream before another had its FATAL: {events:#?}"
    );
}

/// Regression (issue 18): a session cut with its whole grant began the slow part of its ending
/// (closing its sockets, the session end record, ending its backend, whose exit takes CPU from the
/// sessions still to be cut) as soon as it had its own FATAL, while other sessions of the grant had
/// not had theirs. Now each waits until every session of the grant has ended its relay (bounded).
/// Here one client stops reading while a big result streams to it, so its FATAL cannot be
/// delivered and its relay ends only at its close deadline: the others' endings come after that.
/// (On a single-threaded runtime, so the order of the events is the order things happened.)
#[tokio::test]
async fn sessions_cut_together_end_only_once_every_session_of_the_grant_has_its_fatal() {
    use tracing_subscriber::layer::SubscriberExt;
    let log = EventLog::default();
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let _capture = tracing::subscriber::set_default(tracing_subscriber::registry().with(log.clone()));
    let inst = common::start(Options::default()).await;
    let (grant, token) = inst.grant("alice", "read", "1h").await;
    let send = |sql: &str| {
        let mut out = bytes::BytesMut::new();
        postgres_protocol::message::frontend::query(sql, &mut out).unwrap();
        out
    };
    let mut busy = Vec::new();
    for _ in 0..2 {
        let (mut stream, buf) = common::raw::login(inst.proxy_addr, "alice", &token).await;
        stream.write_all(&send("SELECT pg_sleep(600)")).await.unwrap();
        busy.push((stream, buf));
    }
    let (mut stuck, _) = common::raw::login(inst.proxy_addr, "alice", &token).await;
    stuck
        .write_all(&send("SELECT repeat('x', 1000) FROM generate_series(1, 1000000)"))
        .await
        .unwrap();
    let waiting = |event: &'static str, sessions: &'static str| {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'timebox:%:{}%' AND wait_event = '{event}'",
            grant.id
        );
        move || {
            let sql = sql.clone();
            async move {
                let n = tokio::task::spawn_blocking(move || common::cluster::shop_psql(&sql))
                    .await
                    .unwrap();
                n.trim() == sessions
            }
        }
    };
    assert!(
        eventually(Duration::from_secs(30), waiting("ClientWrite", "1")).await,
        "the stuck client's backend never blocked on writing"
    );
    assert!(
        eventually(Duration::from_secs(30), waiting("PgSleep", "2")).await,
        "the busy sessions' queries never ran"
    );
    inst.state
        .grants
        .revoke(&grant.id, "ops", "cut them all")
        .await
        .unwrap();
    for (stream, buf) in &mut busy {
        let (code, message) = common::raw::next_error(stream, buf).await.expect("a FATAL");
        assert_eq!(code, "57P01", "{message}");
    }
    assert!(
        eventually(Duration::from_secs(15), || async {
            let events = log.0.lock().unwrap();
            events.iter().filter(|m| *m == "session ended").count() == 3
        })
        .await,
        "the sessions did not end: {:#?}",
        log.0.lock().unwrap()
    );
    drop(stuck);
    let events = log.0.lock().unwrap().clone();
    let undelivered = positions(&events, "could not deliver the final message in time; closing");
    let ending = positions(&events, "ending the session after its final message");
    assert_eq!((undelivered.len(), ending.len()), (1, 3), "{events:#?}");
    assert!(
        undelivered[0] < ending[0],
        "a session ended while another of its grant had not had its FATAL: {events:#?}"
    );
}

fn positions(events: &[String], message: &str) -> Vec<usize> {
    events
        .iter()
        .enumerate()
        .filter(|(_, m)| *m == message)
        .map(|(i, _)| i)
        .collect()
}
