//! Startup parameters as real clients send them, through a real proxy to a real PostgreSQL:
//! every spelling PostgreSQL accepts for UTF8 in `client_encoding` (issue 12).

mod common;

use bytes::BytesMut;
use common::{proxy_conn, psql, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The first message the proxy answers a startup packet with `client_encoding = value`: `R`
/// (authentication begins) or `E` with its SQLSTATE.
async fn first_reply(addr: std::net::SocketAddr, value: &str) -> (u8, String) {
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::startup_message(
        [
            ("user", "alice"),
            ("database", "shop"),
            ("client_encoding", value),
        ],
        &mut out,
    )
    .unwrap();
    sock.write_all(&out).await.unwrap();
    let mut header = [0u8; 5];
    sock.read_exact(&mut header).await.unwrap();
    let len = u32::from_be_bytes(header[1..5].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len.saturating_sub(4)];
    sock.read_exact(&mut body).await.unwrap();
    let code = body
        .split(|b| *b == 0)
        .find_map(|field| field.strip_prefix(b"C"))
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .unwrap_or_default();
    (header[0], code)
}

/// Regression (issue 12): a driver sending `client_encoding` as `'utf-8'` (quoted, as asyncpg
/// does) was refused, though PostgreSQL accepts every spelling its `pg_char_to_encoding` cleans to
/// `utf8`. Encodings timebox cannot read are still refused with 42501.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_utf8_spelling_postgresql_accepts_starts_a_session() {
    let inst = common::start(Options::default()).await;
    for spelling in ["UTF8", "utf8", "utf-8", "'utf-8'", "UNICODE", "Utf_8"] {
        let (tag, code) = first_reply(inst.proxy_addr, spelling).await;
        assert_eq!(
            (tag, code.as_str()),
            (b'R', ""),
            "{spelling}: authentication begins"
        );
    }
    for refused in ["SJIS", "'big5'", "utf16"] {
        let (tag, code) = first_reply(inst.proxy_addr, refused).await;
        assert_eq!((tag, code.as_str()), (b'E', "42501"), "{refused}");
    }

    // psql (libpq) with a lower-case, dashed spelling, all the way to the server.
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    let out = psql(
        &proxy_conn(&inst, "alice", "sslmode=disable client_encoding=utf-8"),
        &token,
        "SHOW client_encoding",
    )
    .await;
    assert!(out.success, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "UTF8");
}

/// A Python interpreter that has `module`, if the machine has one.
fn python_with(module: &str) -> Option<&'static str> {
    ["python3", "/usr/bin/python3"].into_iter().find(|python| {
        std::process::Command::new(python)
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// asyncpg sends `client_encoding='utf-8'` in its startup packet: it logs in and runs simple and
/// prepared statements (without TLS; `compat_drivers.rs` runs the whole driver script over TLS).
/// Skipped (with a note) where asyncpg is not installed, except under `CI=true`, where that fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_logs_in_and_queries() {
    let Some(python) = python_with("asyncpg") else {
        let why = "asyncpg is not installed (apt-get install python3-asyncpg)";
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "{why}; scripts/install-deps.sh installs it"
        );
        eprintln!("{why}: skipped");
        return;
    };
    let inst = common::start(Options::default()).await;
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    let script = r#"
import asyncio, os, sys, asyncpg
async def main():
    c = await asyncpg.connect(host="127.0.0.1", port=int(sys.argv[1]), user="alice",
                              database="shop", ssl=False, timeout=60)
    await c.execute("SELECT 1")
    print(await c.fetchval("SELECT current_setting('client_encoding')"))
    print(await c.fetchval("SELECT $1::int + 1", 41))
    await c.close()
asyncio.run(main())
"#;
    let port = inst.proxy_addr.port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .args(["-c", script, &port])
            .env("PGPASSWORD", token)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run python")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.split_whitespace().collect::<Vec<_>>(), ["UTF8", "42"]);
}
