//! The admin listener's bounds against slow and idle clients, with raw sockets against a real
//! instance (issue 16, finding 7: idle, half-sent HTTP connections were kept forever, without limit,
//! until file descriptors ran out and proxy logins failed).

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Far above every timeout configured here: these fail only when a connection is never closed.
const GENEROUS: Duration = Duration::from_secs(30);

async fn start(admin_extra: &str) -> common::TestInstance {
    common::start(common::Options {
        admin_extra: admin_extra.into(),
        ..common::Options::default()
    })
    .await
}

/// Reads until the server closes the connection (EOF or reset); panics if it does not within
/// [`GENEROUS`]. Returns what was read.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(GENEROUS, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server kept the connection open; read so far: {:?}",
        String::from_utf8_lossy(&got)
    );
    got
}

async fn healthz_status(tb: &common::TestInstance) -> Option<reqwest::StatusCode> {
    let resp = reqwest::Client::new()
        .get(format!("{}/healthz", tb.admin_url()))
        .timeout(GENEROUS)
        .send()
        .await
        .ok()?;
    Some(resp.status())
}

/// Regression: a request whose header never completes is closed after `admin.header_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_is_closed_after_the_header_timeout() {
    let tb = start("header_timeout = \"1s\"").await;
    let mut slow = TcpStream::connect(tb.admin_addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: timebox\r\nX-Slow: ")
        .await
        .unwrap();
    read_until_closed(&mut slow).await;
    assert_eq!(healthz_status(&tb).await, Some(reqwest::StatusCode::OK));
}

/// Regression: a body that stops arriving is closed after `admin.idle_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_is_closed_after_the_idle_timeout() {
    let tb = start("idle_timeout = \"1s\"").await;
    let mut slow = TcpStream::connect(tb.admin_addr).await.unwrap();
    let head = format!(
        "POST /v1/grants HTTP/1.1\r\nHost: timebox\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"user\": ",
        common::ADMIN_TOKEN
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut slow).await;
    assert!(
        answer.is_empty(),
        "no answer to a request that never arrived: {:?}",
        String::from_utf8_lossy(&answer)
    );
}

/// Regression: connections past `admin.max_connections` get a JSON 503 and are closed, and a
/// slot that frees up serves a normal request again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_get_503_and_freed_slots_serve_again() {
    let tb = start("max_connections = 3\nheader_timeout = \"60s\"\nidle_timeout = \"60s\"").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(tb.admin_addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: timebox\r\n")
            .await
            .unwrap();
        held.push(c);
    }
    // The listener accepts in order: the fourth connection finds the three slots taken.
    let mut extra = TcpStream::connect(tb.admin_addr).await.unwrap();
    let answer = String::from_utf8(read_until_closed(&mut extra).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    let body: serde_json::Value = serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["code"], "too_many_connections", "{body}");

    // One held connection finishes its request: its slot frees up once it closes.
    let mut first = held.remove(0);
    first.write_all(b"Connection: close\r\n\r\n").await.unwrap();
    let answer = String::from_utf8(read_until_closed(&mut first).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let deadline = tokio::time::Instant::now() + GENEROUS;
    loop {
        if healthz_status(&tb).await == Some(reqwest::StatusCode::OK) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no slot freed up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);
}

/// Regression (attack on issue 16's fixes): a request whose body trickles in a byte every few
/// seconds reset the idle timeout forever; 128 of them locked every operator out of revoke and
/// kill. The body must arrive (and the answer be ready) within `admin.request_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_request_body_is_closed_at_the_request_deadline() {
    let tb = start("idle_timeout = \"60s\"\nrequest_timeout = \"2s\"").await;
    let slow = TcpStream::connect(tb.admin_addr).await.unwrap();
    let (mut reader, mut writer) = slow.into_split();
    let head = format!(
        "POST /v1/grants HTTP/1.1\r\nHost: timebox\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{",
        common::ADMIN_TOKEN
    );
    writer.write_all(head.as_bytes()).await.unwrap();
    // One byte every 200 ms: never idle long enough for the idle timeout.
    let trickle = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let read = tokio::time::timeout(GENEROUS, reader.read_to_end(&mut got)).await;
    trickle.abort();
    let answer = String::from_utf8_lossy(&got).into_owned();
    assert!(
        read.is_ok(),
        "the server kept the trickle open; read so far: {answer:?}"
    );
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    let body: serde_json::Value = serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["code"], "request_timeout", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("admin.request_timeout"),
        "{body}"
    );
    assert_eq!(healthz_status(&tb).await, Some(reqwest::StatusCode::OK));
}

/// Regression (attack on issue 16's fixes): one address opening connections that send half a
/// header took all of `admin.max_connections`, and `/healthz` (and revoke, kill) got 503 for
/// everyone. One address now gets at most `admin.max_connections_per_address` (default 16);
/// another address is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_admin_connection() {
    let per_address = timebox::config::DEFAULT_ADMIN_MAX_CONNECTIONS_PER_ADDRESS as usize;
    let tb = start(&format!(
        "max_connections = {}\nheader_timeout = \"60s\"\nidle_timeout = \"60s\"",
        per_address + 4
    ))
    .await;
    // The listener is 127.0.0.1; loopback lets a client bind 127.0.0.2 and reach it.
    let from_attacker = || async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        socket.connect(tb.admin_addr).await.unwrap()
    };
    let mut held = Vec::new();
    for _ in 0..per_address {
        let mut c = from_attacker().await;
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: timebox\r\n")
            .await
            .unwrap();
        held.push(c);
    }
    // The listener accepts in order: the next one from that address finds its share taken.
    let mut extra = from_attacker().await;
    let answer = String::from_utf8(read_until_closed(&mut extra).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    let body: serde_json::Value = serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["code"], "too_many_connections", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("admin.max_connections_per_address"),
        "{body}"
    );
    // 127.0.0.1 still gets in.
    assert_eq!(healthz_status(&tb).await, Some(reqwest::StatusCode::OK));
    drop(held);
}
