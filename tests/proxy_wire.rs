//! Wire tests: real clients (psql, tokio-postgres, raw sockets) through a real timebox instance to a
//! real throwaway PostgreSQL cluster.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pg::{db_error, scalar};
use common::{eventually, proxy_conn, psql, raw, upstream_backends, Options, TestInstance};
use futures::{FutureExt, StreamExt};
use timebox::clock::Clock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::{AsyncMessage, NoTls, SimpleQueryMessage};

type Notices = tokio::sync::mpsc::UnboundedReceiver<AsyncMessage>;

/// Connects with tokio-postgres (plaintext) and drives the connection, forwarding notices and
/// notifications.
async fn connect(conn: &str) -> Result<(tokio_postgres::Client, Notices), tokio_postgres::Error> {
    let (client, mut connection) = tokio_postgres::connect(conn, NoTls).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        while let Some(Ok(m)) = messages.next().await {
            let _ = tx.send(m);
        }
    });
    Ok((client, rx))
}

/// A plaintext session of `user` with `token`, its notices kept; the test fails if it cannot log in.
async fn session(inst: &TestInstance, user: &str, token: &str) -> (tokio_postgres::Client, Notices) {
    connect(&inst.conn_string(user, token, "disable")).await.unwrap()
}

/// The error a plaintext login of `user` with `token` gets; the test fails if it logs in.
async fn login_error(inst: &TestInstance, user: &str, token: &str) -> tokio_postgres::Error {
    connect(&inst.conn_string(user, token, "disable"))
        .await
        .err()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_over_tls_with_scram_and_channel_binding() {
    let inst = common::start(Options {
        tls: "required",
        ..Options::default()
    })
    .await;
    let (grant, token) = inst.grant("alice", "read", "10m").await;
    let out = psql(
        &proxy_conn(&inst, "alice", "sslmode=require channel_binding=require"),
        &token,
        "SELECT count(*) FROM items; SELECT current_setting('application_name'); SHOW ssl;",
    )
    .await;
    assert!(out.success, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "3");
    assert_eq!(
        lines[1],
        format!("timebox:alice:{}:psql", grant.id),
        "tagged application_name"
    );
    // Upstream TLS is off for this target; the engineer's leg is what is encrypted.
    assert_eq!(lines[2], "off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_is_refused_when_tls_is_required() {
    let inst = common::start(Options {
        tls: "required",
        ..Options::default()
    })
    .await;
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    let out = psql(&proxy_conn(&inst, "alice", "sslmode=disable"), &token, "SELECT 1").await;
    assert!(!out.success);
    assert!(
        out.stderr.contains("timebox requires an encrypted connection"),
        "{}",
        out.stderr
    );
    let err = login_error(&inst, "alice", &token).await;
    assert_eq!(db_error(&err).0, "28000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_extended_and_pipelined_queries() {
    let inst = common::start(Options::default()).await;
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    let (client, _n) = session(&inst, "alice", &token).await;

    // simple protocol, several statements in one message
    let msgs = client
        .simple_query("SELECT 1; SELECT name FROM items ORDER BY id")
        .await
        .unwrap();
    let rows = msgs
        .iter()
        .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(rows, 4);

    // extended protocol with parameters (Parse/Bind/Describe/Execute/Sync)
    let stmt = client
        .prepare("SELECT name, qty FROM items WHERE id = $1")
        .await
        .unwrap();
    let row = client.query_one(&stmt, &[&2i32]).await.unwrap();
    let name: &str = row.get(0);
    assert!(!name.is_empty());

    // pipelined: many queries in flight at once, answered in order
    let futures: Vec<_> = (0..50i32)
        .map(|i| {
            let client = &client;
            async move {
                let row = client.query_one("SELECT $1::int4 * 2", &[&i]).await.unwrap();
                row.get::<_, i32>(0)
            }
        })
        .collect();
    let results = futures::future::join_all(futures).await;
    assert_eq!(results, (0..50).map(|i| i * 2).collect::<Vec<_>>());

    // errors inside the extended protocol leave the session usable
    let err = client.query("SELECT 1/0", &[]).await.unwrap_err();
    assert_eq!(db_error(&err).0, "22012");
    assert_eq!(scalar(&client, "SELECT 42").await, "42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_both_ways() {
    let inst = common::start(Options::default()).await;
    // COPY FROM STDIN into a temporary table needs CREATE TEMP TABLE: an admin grant.
    let (_g, token) = inst.grant("bob", "admin", "10m").await;
    let (client, _n) = session(&inst, "bob", &token).await;

    // COPY TO STDOUT
    let stream = client
        .copy_out("COPY (SELECT id, name FROM items ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = stream.map(|c| c.unwrap()).collect().await;
    let text: String = chunks
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    assert_eq!(text.lines().count(), 3, "{text}");

    // COPY FROM STDIN into a temporary table, in many CopyData frames
    client
        .batch_execute("CREATE TEMP TABLE copied (n int, label text)")
        .await
        .unwrap();
    let sink = client.copy_in("COPY copied FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    use futures::SinkExt;
    for i in 0..1000 {
        sink.send(bytes::Bytes::from(format!("{i}\trow {i}\n")))
            .await
            .unwrap();
    }
    let copied = sink.finish().await.unwrap();
    assert_eq!(copied, 1000);
    assert_eq!(scalar(&client, "SELECT sum(n) FROM copied").await, "499500");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_and_parameter_status_pass_through() {
    let inst = common::start(Options::default()).await;
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    let (_g2, token2) = inst.grant("bob", "write", "10m").await;
    let (listener, mut messages) = session(&inst, "alice", &token).await;
    let (notifier, _m) = session(&inst, "bob", &token2).await;
    listener.batch_execute("LISTEN timebox_test").await.unwrap();
    notifier
        .batch_execute("NOTIFY timebox_test, 'hello'")
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(AsyncMessage::Notification(n)) = messages.recv().await {
                return n;
            }
        }
    })
    .await
    .expect("notification within 5s");
    assert_eq!(got.channel(), "timebox_test");
    assert_eq!(got.payload(), "hello");

    // A WARNING raised by the server reaches the client.
    listener.batch_execute("BEGIN; BEGIN; ROLLBACK").await.unwrap();
    let notice = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(AsyncMessage::Notice(n)) = messages.recv().await {
                return n;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(notice.message(), "there is already a transaction in progress");

    // SET produces a ParameterStatus the driver tracks.
    listener
        .batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    assert_eq!(scalar(&listener, "SHOW TimeZone").await, "Asia/Tokyo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_reaches_the_right_backend() {
    let inst = common::start(Options::default()).await;
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    let (client, _n) = session(&inst, "alice", &token).await;
    let cancel = client.cancel_token();
    let started = Instant::now();
    let query = tokio::spawn(async move {
        let r = client.simple_query("SELECT pg_sleep(30)").await;
        (r, client)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cancel.cancel_query(NoTls).await.unwrap();
    let (result, client) = query.await.unwrap();
    let err = result.unwrap_err();
    assert_eq!(db_error(&err).0, "57014", "query_canceled");
    assert!(started.elapsed() < Duration::from_secs(10));
    // the session goes on
    assert_eq!(scalar(&client, "SELECT 7").await, "7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_other_users_token_and_other_target_give_the_same_error() {
    let inst = common::start(Options::default()).await;
    let (_g, alice_token) = inst.grant("alice", "read", "10m").await;
    let (_g, _bob_token) = inst.grant("bob", "read", "10m").await;

    let cases = [
        ("alice", "tbx_not-the-token".to_string(), "shop"),
        ("bob", alice_token.clone(), "shop"),
        ("mallory", alice_token.clone(), "shop"),
        ("alice", alice_token.clone(), "billing"),
    ];
    for (user, token, db) in cases {
        let conn = format!(
            "host=127.0.0.1 port={} user={user} password={token} dbname={db} sslmode=disable",
            inst.proxy_addr.port()
        );
        let Err(err) = connect(&conn).await else {
            panic!("{user}/{db} must fail")
        };
        let (code, message) = db_error(&err);
        assert_eq!(code, "28P01", "{user}/{db}");
        assert_eq!(
            message,
            format!("password authentication failed for user \"{user}\"")
        );
    }
    // the right token still works
    assert!(connect(&inst.conn_string("alice", &alice_token, "disable"))
        .await
        .is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_revoked_and_future_grants_are_refused_with_the_reason() {
    let clock = Arc::new(timebox::clock::ManualClock::new(chrono::Utc::now()));
    let inst = common::start(Options {
        clock: Some(clock.clone()),
        ..Options::default()
    })
    .await;
    let (expired, t1) = inst.grant("alice", "read", "5m").await;
    let (revoked, t2) = inst.grant("bob", "read", "1h").await;
    let (future, t3) = inst
        .state
        .grants
        .issue(
            timebox::grants::NewGrant {
                user: "carol".into(),
                target: "shop".into(),
                role: "read".into(),
                ttl: "1h".into(),
                reason: "later".into(),
                starts_at: Some(clock.now() + chrono::Duration::hours(2)),
            },
            "ops",
        )
        .await
        .unwrap();
    inst.state
        .grants
        .revoke(&revoked.id, "ops", "incident over")
        .await
        .unwrap();
    clock.advance(chrono::Duration::minutes(10));

    let err = login_error(&inst, "alice", &t1).await;
    let (code, msg) = db_error(&err);
    assert_eq!(code, "28000");
    assert!(msg.contains(&format!("grant {} expired at", expired.id)), "{msg}");

    let err = login_error(&inst, "bob", &t2).await;
    let (code, msg) = db_error(&err);
    assert_eq!(code, "28000");
    assert!(
        msg.contains("was revoked at") && msg.contains("by ops (incident over)"),
        "{msg}"
    );

    let err = connect(&inst.conn_string("carol", t3.expose(), "disable"))
        .await
        .err()
        .unwrap();
    let (code, msg) = db_error(&err);
    assert_eq!(code, "28000");
    assert!(msg.contains(&format!("grant {} starts at", future.id)), "{msg}");
    // See: issue 17: a grant that has not started said "Ask for a new grant"; it says when to come back.
    let hint = err.as_db_error().and_then(|e| e.hint()).unwrap_or_default();
    assert!(
        hint.contains("not active yet") && !hint.contains("new grant"),
        "{hint}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_severs_a_running_query_and_the_upstream_query_is_gone() {
    let inst = common::start(Options::default()).await;
    let (grant, token) = inst.grant("alice", "read", "2s").await;
    let (client, _n) = session(&inst, "alice", &token).await;
    let err = client.simple_query("SELECT pg_sleep(30)").await.unwrap_err();
    let severed_at = chrono::Utc::now();
    let (code, msg) = db_error(&err);
    assert_eq!(code, "57P01");
    assert!(msg.contains(&format!("grant {} expired at", grant.id)), "{msg}");
    let late = (severed_at - grant.expires_at).num_milliseconds();
    eprintln!("expiry: the client saw FATAL {late} ms after expires_at (target 100 ms, bar 1 s)");
    assert!(
        (0..1000).contains(&late),
        "severed {late} ms after expiry (bar: 1 s)"
    );
    assert!(client.is_closed() || client.simple_query("SELECT 1").await.is_err());
    assert!(
        eventually(Duration::from_secs(3), || upstream_backends(&grant.id)
            .then(|n| async move { n == 0 }))
        .await,
        "upstream backend still present"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_severs_a_running_query_within_a_second() {
    let inst = common::start(Options::default()).await;
    let (grant, token) = inst.grant("alice", "read", "10m").await;
    let (client, _n) = session(&inst, "alice", &token).await;
    let query = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(upstream_backends(&grant.id).await, 1);
    let revoked_at = Instant::now();
    inst.state.grants.revoke(&grant.id, "ops", "done").await.unwrap();
    let err = query.await.unwrap().unwrap_err();
    assert!(
        revoked_at.elapsed() < Duration::from_secs(1),
        "took {:?}",
        revoked_at.elapsed()
    );
    let (code, msg) = db_error(&err);
    assert_eq!(code, "57P01");
    assert!(
        msg.contains("was revoked at") && msg.contains("by ops (done)"),
        "{msg}"
    );
    assert!(
        eventually(Duration::from_secs(3), || upstream_backends(&grant.id)
            .then(|n| async move { n == 0 }))
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_warning_notice_arrives_before_expiry() {
    // A warning already due when the session starts is not sent, so the login must end before
    // it: 4 s of margin (with the PostgreSQL store a loaded machine took over 1 s from the
    // grant's issue to the end of the login, past the 1 s a 3 s grant with a 2 s warning left).
    let inst = common::start(Options::with_proxy("expiry_warnings = [\"4s\"]")).await;
    let (grant, token) = inst.grant("alice", "read", "8s").await;
    let (_client, mut messages) = session(&inst, "alice", &token).await;
    let notice = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            match messages.recv().await {
                Some(AsyncMessage::Notice(n)) => return n,
                Some(_) => continue,
                None => panic!("connection ended before the warning"),
            }
        }
    })
    .await
    .expect("warning within 8s");
    assert!(
        chrono::Utc::now() < grant.expires_at,
        "the warning came before expiry"
    );
    assert_eq!(notice.severity(), "WARNING");
    assert!(
        notice
            .message()
            .contains(&format!("grant {} expires in", grant.id)),
        "{}",
        notice.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_query_cancels_the_upstream_query() {
    let inst = common::start(Options::default()).await;
    let (grant, token) = inst.grant("alice", "read", "10m").await;
    let (mut sock, _buf) = raw::login(inst.proxy_addr, "alice", &token).await;
    let mut q = bytes::BytesMut::new();
    postgres_protocol::message::frontend::query("SELECT pg_sleep(60)", &mut q).unwrap();
    sock.write_all(&q).await.unwrap();
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'timebox:%:{}%' AND query LIKE '%pg_sleep(60)%' AND state = 'active'",
        grant.id
    );
    let running = || {
        let sql = sql.clone();
        async move {
            tokio::task::spawn_blocking(move || common::cluster::shop_psql(&sql).trim().to_owned())
                .await
                .unwrap()
        }
    };
    assert!(
        eventually(Duration::from_secs(3), || running()
            .then(|n| async move { n == "1" }))
        .await
    );
    drop(sock);
    assert!(
        eventually(Duration::from_secs(3), || running()
            .then(|n| async move { n == "0" }))
        .await,
        "the upstream query kept running after the client left"
    );
    assert!(
        eventually(Duration::from_secs(3), || upstream_backends(&grant.id)
            .then(|n| async move { n == 0 }))
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_gives_a_quick_clear_error() {
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let inst = common::start(Options {
        shop_port: Some(closed_port),
        ..Options::default()
    })
    .await;
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    let started = Instant::now();
    let err = login_error(&inst, "alice", &token).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    let (code, msg) = db_error(&err);
    assert_eq!(code, "08001");
    assert!(msg.contains("could not connect to target \"shop\""), "{msg}");
    assert!(
        !msg.contains(&closed_port.to_string()),
        "no upstream address details: {msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_before_startup_gets_an_error_and_others_are_served() {
    let inst = common::start(Options::default()).await;
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0, 0, 0, 8, 0xde, 0xad, 0xbe, 0xef][..],
        &[0, 0, 0, 2][..],
        &[0xff; 64][..],
    ] {
        let mut s = tokio::net::TcpStream::connect(inst.proxy_addr).await.unwrap();
        s.write_all(garbage).await.unwrap();
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply)).await;
        assert_eq!(reply.first(), Some(&b'E'), "garbage {garbage:?} got {reply:?}");
        let text = String::from_utf8_lossy(&reply);
        assert!(text.contains("C08P01") || text.contains("C0A000"), "{text}");
    }
    // A silent client is cut at the startup timeout, and meanwhile others are served.
    let _silent = tokio::net::TcpStream::connect(inst.proxy_addr).await.unwrap();
    let (client, _n) = session(&inst, "alice", &token).await;
    assert_eq!(scalar(&client, "SELECT 1").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_startup_is_a_protocol_violation_and_others_are_served() {
    let inst = common::start(Options::default()).await;
    let (grant, token) = inst.grant("alice", "read", "10m").await;
    let (mut sock, mut buf) = raw::login(inst.proxy_addr, "alice", &token).await;
    sock.write_all(&[0x00, 0x13, 0x37, 0x00, 0x00, 0x00, 0x05, 0x01])
        .await
        .unwrap();
    let (code, msg) = raw::next_error(&mut sock, &mut buf).await.expect("an error");
    assert_eq!(code, "08P01");
    assert!(msg.contains("invalid frontend message type"), "{msg}");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), sock.read_to_end(&mut rest)).await;
    assert!(
        eventually(Duration::from_secs(3), || upstream_backends(&grant.id)
            .then(|n| async move { n == 0 }))
        .await
    );

    // an absurd length is refused too
    let (mut sock, mut buf) = raw::login(inst.proxy_addr, "alice", &token).await;
    sock.write_all(&[b'Q', 0x7f, 0xff, 0xff, 0xff]).await.unwrap();
    let (code, _) = raw::next_error(&mut sock, &mut buf).await.expect("an error");
    assert_eq!(code, "54000");

    let (client, _n) = session(&inst, "alice", &token).await;
    assert_eq!(scalar(&client, "SELECT 2").await, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_gives_53300() {
    let inst = common::start(Options::with_proxy("max_connections = 1")).await;
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    let (first, _n) = session(&inst, "alice", &token).await;
    let err = login_error(&inst, "alice", &token).await;
    assert_eq!(db_error(&err).0, "53300");
    drop(first);
    assert!(
        eventually(Duration::from_secs(3), || {
            let conn = inst.conn_string("alice", &token, "disable");
            async move { connect(&conn).await.is_ok() }
        })
        .await,
        "the slot is released when the first session ends"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dangerous_startup_options_and_replication_are_refused() {
    let inst = common::start(Options::default()).await;
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    for (extra, refusal) in [
        (
            "options='-c role=postgres'",
            "startup setting \"role\" is not allowed",
        ),
        (
            "replication=database",
            "replication connections are not supported",
        ),
    ] {
        let conn = proxy_conn(&inst, "alice", &format!("sslmode=disable {extra}"));
        let out = psql(&conn, &token, "SELECT 1").await;
        assert!(!out.success);
        assert!(out.stderr.contains(refusal), "{}", out.stderr);
    }
    // harmless options pass
    let out = psql(
        &proxy_conn(
            &inst,
            "alice",
            "sslmode=disable options='-c statement_timeout=5s'",
        ),
        &token,
        "SHOW statement_timeout",
    )
    .await;
    assert!(out.success, "{out:?}");
    assert_eq!(out.stdout.trim(), "5s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_md5_cleartext_and_trust_logins() {
    let inst = common::start(Options::default()).await;
    for (user, role, expected_upstream_user) in [
        ("dora", "md5", common::cluster::MD5_USER),
        ("erin", "plain", common::cluster::PLAIN_USER),
        ("finn", "trust", common::cluster::TRUST_USER),
    ] {
        let (_g, token) = inst.grant(user, role, "10m").await;
        let (client, _n) = connect(&inst.conn_string(user, &token, "disable"))
            .await
            .unwrap_or_else(|e| panic!("{role}: {e:?}"));
        assert_eq!(
            scalar(&client, "SELECT current_user").await,
            expected_upstream_user
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_idle_sessions_with_57p01() {
    let inst = common::start(Options::default()).await;
    let (grant, token) = inst.grant("alice", "read", "10m").await;
    let (mut sock, mut buf) = raw::login(inst.proxy_addr, "alice", &token).await;
    let started = Instant::now();
    inst.shutdown().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    let (code, msg) = raw::next_error(&mut sock, &mut buf)
        .await
        .expect("FATAL before close");
    assert_eq!(code, "57P01");
    assert!(msg.contains("shutting down"), "{msg}");
    assert!(
        eventually(Duration::from_secs(3), || upstream_backends(&grant.id)
            .then(|n| async move { n == 0 }))
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_with_alpn_is_accepted() {
    let inst = common::start(Options {
        tls: "required",
        ..Options::default()
    })
    .await;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&inst.cert_path).unwrap();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let make = |alpn: bool| {
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        if alpn {
            config.alpn_protocols = vec![b"postgresql".to_vec()];
        }
        tokio_rustls::TlsConnector::from(Arc::new(config))
    };
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();

    let tcp = tokio::net::TcpStream::connect(inst.proxy_addr).await.unwrap();
    let mut tls = make(true).connect(name.clone(), tcp).await.unwrap();
    let mut startup = bytes::BytesMut::new();
    postgres_protocol::message::frontend::startup_message(
        [("user", "alice"), ("database", "shop")],
        &mut startup,
    )
    .unwrap();
    tls.write_all(&startup).await.unwrap();
    let mut reply = [0u8; 64];
    let n = tls.read(&mut reply).await.unwrap();
    assert_eq!(reply[0], b'R', "authentication request");
    assert_eq!(i32::from_be_bytes(reply[5..9].try_into().unwrap()), 10, "SASL");
    assert!(String::from_utf8_lossy(&reply[..n]).contains("SCRAM-SHA-256-PLUS"));

    // without ALPN the direct TLS connection is refused
    let tcp = tokio::net::TcpStream::connect(inst.proxy_addr).await.unwrap();
    let mut tls = make(false).connect(name, tcp).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), tls.read_to_end(&mut reply)).await;
    assert!(String::from_utf8_lossy(&reply).contains("ALPN"), "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_are_throttled_per_address() {
    let inst = common::start(Options::with_proxy("auth_failures_per_minute = 3")).await;
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    for _ in 0..3 {
        let err = login_error(&inst, "alice", "tbx_wrong").await;
        assert_eq!(db_error(&err).0, "28P01");
    }
    let err = login_error(&inst, "alice", &token).await;
    let (code, msg) = db_error(&err);
    assert_eq!(code, "28000");
    assert!(msg.contains("too many failed authentication attempts"), "{msg}");
}

/// Ctrl-C in a real psql: psql sends a CancelRequest with the BackendKeyData timebox gave it, timebox
/// maps it to the upstream backend's key, the upstream cancels the statement and psql reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_ctrl_c_cancels_the_running_statement() {
    let inst = common::start(Options::default()).await;
    let (grant, token) = inst.grant("alice", "read", "10m").await;
    let psql_path = tokio::task::spawn_blocking(|| common::cluster::shared_cluster().install().psql_path())
        .await
        .unwrap();
    let mut child = common::wire::spawn_psql(
        psql_path,
        &proxy_conn(&inst, "alice", "sslmode=disable"),
        &token,
        "SELECT pg_sleep(30)",
    );

    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'timebox:%:{}%' \
         AND query LIKE '%pg_sleep(30)%' AND state = 'active'",
        grant.id
    );
    let running = || {
        let sql = sql.clone();
        async move {
            tokio::task::spawn_blocking(move || common::cluster::shop_psql(&sql).trim().to_owned())
                .await
                .unwrap()
        }
    };
    let started = eventually(Duration::from_secs(5), || {
        running().then(|n| async move { n == "1" })
    })
    .await;
    if !started {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!("the query never reached the upstream: {out:?}");
    }
    // Let psql settle into waiting for the result, as a person pressing Ctrl-C would.
    tokio::time::sleep(Duration::from_millis(700)).await;

    let interrupted_at = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if interrupted_at.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("psql still running 5s after SIGINT: {out:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = interrupted_at.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "psql reports the failed statement: {status:?}");
    assert!(
        stderr.contains("canceling statement due to user request"),
        "psql exited after {elapsed:?} with {status:?}: {stderr}"
    );
    assert!(
        eventually(Duration::from_secs(3), || running()
            .then(|n| async move { n == "0" }))
        .await,
        "the upstream statement is still running"
    );
    assert!(
        eventually(Duration::from_secs(3), || upstream_backends(&grant.id)
            .then(|n| async move { n == 0 }))
        .await,
        "the upstream backend outlived psql"
    );
}

/// A client that connects and never sends a startup packet is disconnected at `startup_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_disconnected_at_the_startup_timeout() {
    let inst = common::start(Options::with_proxy("startup_timeout = \"1s\"")).await;
    let connected_at = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(inst.proxy_addr).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), silent.read_to_end(&mut reply))
        .await
        .expect("EOF within 3s")
        .expect("a clean close");
    let elapsed = connected_at.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed after {elapsed:?}, before the timeout: {reply:?}"
    );
}

/// A client that starts up and then stalls in SCRAM — before its first SASL message, or after it —
/// gets FATAL 08P01 at `startup_timeout` instead of holding a connection slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_stalling_in_authentication_gets_08p01_at_the_startup_timeout() {
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    use postgres_protocol::message::backend::Message;
    use postgres_protocol::message::frontend;

    let inst = common::start(Options::with_proxy("startup_timeout = \"1s\"")).await;
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    for stall_after_initial_response in [false, true] {
        let case = if stall_after_initial_response {
            "after SASLInitialResponse"
        } else {
            "before SASLInitialResponse"
        };
        let connected_at = Instant::now();
        let mut s = tokio::net::TcpStream::connect(inst.proxy_addr).await.unwrap();
        let mut out = bytes::BytesMut::new();
        frontend::startup_message([("user", "alice"), ("database", "shop")], &mut out).unwrap();
        s.write_all(&out).await.unwrap();
        let mut buf = bytes::BytesMut::new();
        match raw::read_message(&mut s, &mut buf).await {
            Some(Message::AuthenticationSasl(_)) => {}
            _ => panic!("{case}: expected AuthenticationSASL"),
        }
        if stall_after_initial_response {
            let scram = ScramSha256::new(token.as_bytes(), ChannelBinding::unsupported());
            out.clear();
            frontend::sasl_initial_response("SCRAM-SHA-256", scram.message(), &mut out).unwrap();
            s.write_all(&out).await.unwrap();
            match raw::read_message(&mut s, &mut buf).await {
                Some(Message::AuthenticationSaslContinue(_)) => {}
                _ => panic!("{case}: expected AuthenticationSASLContinue"),
            }
        }
        // Now say nothing more; the rest of the stream is the proxy's verdict.
        let mut reply = buf.to_vec();
        tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut reply))
            .await
            .unwrap_or_else(|_| panic!("{case}: no reply and no close within 3s"))
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        let elapsed = connected_at.elapsed();
        assert!(
            elapsed >= Duration::from_millis(900),
            "{case}: answered after {elapsed:?}"
        );
        assert_eq!(reply.first(), Some(&b'E'), "{case}: {reply:?}");
        let text = String::from_utf8_lossy(&reply);
        assert!(text.contains("SFATAL\0"), "{case}: {text}");
        assert!(text.contains("C08P01\0"), "{case}: {text}");
        assert!(
            text.contains("Mtimed out waiting for the client to finish startup and authentication\0"),
            "{case}: {text}"
        );
    }
}

/// Regression: a slow upstream used to be reported as the client's startup timeout (08P01) because
/// the client's startup deadline also covered the upstream login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_reported_as_an_upstream_timeout() {
    // Accepts TCP (kernel backlog) but never answers the startup message.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let inst = common::start(Options {
        shop_port: Some(black_hole.local_addr().unwrap().port()),
        proxy_extra: "startup_timeout = \"1s\"\nupstream_connect_timeout = \"2s\"".into(),
        ..Options::default()
    })
    .await;
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    let started = Instant::now();
    let err = login_error(&inst, "alice", &token).await;
    let (code, msg) = db_error(&err);
    assert_eq!(code, "08001", "{msg}");
    assert!(msg.contains("timed out after 2s"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(black_hole);
}

/// Issue 3 (lexical fidelity): a session whose upstream reads SQL differently from timebox
/// (standard_conforming_strings = off) must not be used, whether the setting comes from the upstream
/// role at login or is changed during the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_fail_closed_when_the_server_reports_non_standard_lexing() {
    let role = common::cluster::unique_name("lexer");
    let setup = format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'lex-pw'; GRANT SELECT ON items TO {role}; \
         ALTER ROLE {role} SET standard_conforming_strings = off;"
    );
    tokio::task::spawn_blocking(move || common::cluster::shop_psql(&setup))
        .await
        .unwrap();
    let port = tokio::task::spawn_blocking(|| common::cluster::shared_cluster().port())
        .await
        .unwrap();
    let inst = common::start_with_config(move |dir| {
        let mut text = common::config_text(&Options::default(), dir, port);
        text.push_str(&format!(
            "\n[targets.lexed]\nhost = \"127.0.0.1\"\nport = {port}\ndatabase = \"shop\"\n\
             [targets.lexed.credentials.read]\nuser = \"{role}\"\npassword = \"lex-pw\"\n"
        ));
        text
    })
    .await;
    let (_g, token) = inst.grant_on("alice", "lexed", "read", "10m").await;
    let conn = format!(
        "host=127.0.0.1 port={} user=alice password={token} dbname=lexed sslmode=disable",
        inst.proxy_addr.port()
    );
    let Err(err) = connect(&conn).await else {
        panic!("login must be refused")
    };
    let (code, msg) = db_error(&err);
    assert_eq!(code, "55000");
    assert!(msg.contains("standard_conforming_strings = off"), "{msg}");

    // Changed during a session: statement policy refuses set_config of lexing settings outright,
    // but a function the policy cannot see into can still do it inside the server. The server's
    // ParameterStatus is the backstop: the session ends before the statement completes.
    let function = common::cluster::unique_name("lexflip");
    let create = format!(
        "CREATE FUNCTION {function}() RETURNS text LANGUAGE sql \
         AS $f$ SELECT set_config('standard_conforming_strings', 'off', false) $f$"
    );
    tokio::task::spawn_blocking(move || common::cluster::shop_psql(&create))
        .await
        .unwrap();
    let (_g, token) = inst.grant("bob", "write", "10m").await;
    let (client, _n) = session(&inst, "bob", &token).await;
    let direct = client
        .simple_query("SELECT set_config('standard_conforming_strings', 'off', false)")
        .await
        .unwrap_err();
    assert_eq!(db_error(&direct).0, "42501", "refused by statement policy");
    let err = client
        .simple_query(&format!("SELECT {function}()"))
        .await
        .unwrap_err();
    let (code, msg) = db_error(&err);
    assert_eq!(code, "57P01");
    assert!(msg.contains("standard_conforming_strings = off"), "{msg}");
    assert!(
        client.simple_query("SELECT 1").await.is_err(),
        "session must be closed"
    );
}

/// s6 attack finding (`repro_big_held_frames_any_role`): the relay holds an ErrorResponse until it
/// is complete, but stopped reading the upstream once 256 KiB were buffered, so a ~1 MB error
/// message (any role, no masks) never completed: no ReadyForQuery, the session hung. A held frame
/// is now read whole up to timebox's limit (64 MiB); over it the session ends with FATAL 54000,
/// recorded as the session's end reason. The timeouts turn a hang into a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_frames_over_the_relay_buffer_complete_and_oversized_ones_end_the_session() {
    let inst = common::start(Options::default()).await;
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    let (client, _n) = session(&inst, "alice", &token).await;
    let deadline = Duration::from_secs(60);
    let err = tokio::time::timeout(deadline, client.simple_query("SELECT repeat('x', 1000000)::int"))
        .await
        .expect("a 1 MB error message must reach the client, not hang the session")
        .unwrap_err();
    let (code, msg) = db_error(&err);
    assert_eq!(code, "22P02");
    assert!(msg.len() > 1_000_000, "the whole message: {} bytes", msg.len());
    let after = tokio::time::timeout(deadline, scalar(&client, "SELECT 42"))
        .await
        .expect("the session goes on");
    assert_eq!(after, "42");

    // Over the limit: refused at its header, never buffered whole, never half-forwarded.
    let err = tokio::time::timeout(
        deadline,
        client.simple_query("SELECT repeat('x', 65 * 1024 * 1024)::int"),
    )
    .await
    .expect("an oversized error message must end the session, not hang it")
    .unwrap_err();
    let (code, msg) = db_error(&err);
    assert_eq!(code, "54000");
    assert!(msg.contains("67108864 bytes"), "{msg}");
    assert!(
        client.simple_query("SELECT 1").await.is_err(),
        "session must be closed"
    );
    let db = inst.audit_db();
    let recorded = eventually(Duration::from_secs(20), || {
        let db = db.clone();
        async move {
            common::pg::audit_records(&db)
                .iter()
                .any(|(k, p)| k == "session_end" && p["reason"] == "frame_too_large")
        }
    })
    .await;
    assert!(recorded, "{:#?}", common::pg::audit_records(&db));
}
