//! Small shared pieces of the wire tests (issue 10): the raw bytes of an answer, the config lines
//! of an extra upstream credential, psql as a child process to interrupt, the metrics text.

use std::ffi::OsStr;
use std::process::{Child, Command, Stdio};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `sql` as a simple Query and returns the raw bytes of the answer, up to its ReadyForQuery.
pub async fn answer_bytes(s: &mut TcpStream, buf: &mut BytesMut, sql: &str) -> Vec<u8> {
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::query(sql, &mut out).unwrap();
    s.write_all(&out).await.unwrap();
    let mut answer = Vec::new();
    loop {
        while buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() < 1 + len {
                break;
            }
            let frame = buf.split_to(1 + len);
            answer.extend_from_slice(&frame);
            if frame[0] == b'Z' {
                return answer;
            }
        }
        assert!(s.read_buf(buf).await.unwrap() > 0, "connection closed");
    }
}

/// `[targets.shop.credentials.<role>]` with the given upstream user and password (TOML lines).
pub fn shop_credential(role: &str, user: &str, password: &str) -> String {
    format!("[targets.shop.credentials.{role}]\nuser = \"{user}\"\npassword = \"{password}\"\n")
}

/// `psql -X -A -t -d <conn> -c <sql>` started with `password`, its output piped (a statement to
/// interrupt: Ctrl-C tests).
pub fn spawn_psql(psql: impl AsRef<OsStr>, conn: &str, password: &str, sql: &str) -> Child {
    Command::new(psql)
        .args(["-X", "-A", "-t", "-d", conn, "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn psql")
}

/// The text of `inst`'s `/metrics`, scraped with the admin token.
pub async fn metrics_text(inst: &super::TestInstance) -> String {
    reqwest::Client::new()
        .get(format!("{}/metrics", inst.admin_url()))
        .bearer_auth(super::ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
