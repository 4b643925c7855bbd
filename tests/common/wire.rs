//! Small shared pieces of the wire tests (issue 10): the raw bytes of an answer, the config lines
//! of an extra upstream credential, psql as a child process to interrupt, the metrics text.

use std::ffi::OsStr;
use std::process::{Child, Command, Stdio};

use bytes::BytesMut;
use tokio::net::TcpStream;

/// Sends `sql` as a simple Query and returns the raw bytes of the answer, up to its ReadyForQuery.
pub async fn answer_bytes(s: &mut TcpStream, buf: &mut BytesMut, sql: &str) -> Vec<u8> {
    super::frames::send(s, &[super::frames::query(sql)]).await;
    super::frames::read_to_ready(s, buf).await
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
