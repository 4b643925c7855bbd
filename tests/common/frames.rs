//! Raw frontend frames for the wire tests that speak the protocol themselves (pipelines,
//! Describe-less Executes, FETCH/EXECUTE shapes), and the reader of an answer up to its
//! ReadyForQuery, as bytes or as a printable summary (`tag:body ` with NULs shown as `|`).

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one answer may take to arrive (generous: a loaded CI machine).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

pub fn msg(tag: u8, body: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(tag);
    b.put_u32(body.len() as u32 + 4);
    b.put_slice(body);
    b
}

fn cs(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Parse of `sql` as statement `name`, no parameter types.
pub fn parse(name: &str, sql: &str) -> BytesMut {
    let mut b = cs(name);
    b.extend(cs(sql));
    b.extend([0, 0]);
    msg(b'P', &b)
}

/// Describe of a statement (`b'S'`) or portal (`b'P'`).
pub fn describe(kind: u8, name: &str) -> BytesMut {
    let mut b = vec![kind];
    b.extend(cs(name));
    msg(b'D', &b)
}

/// Bind of statement `stmt` to portal `portal`, no parameters, text results.
pub fn bind(portal: &str, stmt: &str) -> BytesMut {
    let mut b = cs(portal);
    b.extend(cs(stmt));
    b.extend([0, 0, 0, 0, 0, 0]);
    msg(b'B', &b)
}

/// Execute of `portal`, all rows.
pub fn execute(portal: &str) -> BytesMut {
    let mut b = cs(portal);
    b.extend(0i32.to_be_bytes());
    msg(b'E', &b)
}

pub fn sync() -> BytesMut {
    msg(b'S', &[])
}

pub fn query(sql: &str) -> BytesMut {
    msg(b'Q', &cs(sql))
}

/// Writes `frames` at once (one pipelined batch or more).
pub async fn send(s: &mut TcpStream, frames: &[BytesMut]) {
    let mut out = BytesMut::new();
    for f in frames {
        out.extend_from_slice(f);
    }
    s.write_all(&out).await.unwrap();
}

/// Reads up to the next ReadyForQuery: the frames' bytes.
pub async fn read_to_ready(s: &mut TcpStream, buf: &mut BytesMut) -> Vec<u8> {
    match read_until_ready(s, buf).await {
        Ok(answer) => answer,
        Err(so_far) => panic!("connection closed: {}", summary(&so_far)),
    }
}

/// Whole frames up to and including the next ReadyForQuery; `Err` with what came if the server
/// closed the connection first.
async fn read_until_ready(s: &mut TcpStream, buf: &mut BytesMut) -> Result<Vec<u8>, Vec<u8>> {
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
                return Ok(answer);
            }
        }
        let read = tokio::time::timeout(ANSWER_TIMEOUT, s.read_buf(buf)).await;
        if read.expect("an answer").unwrap_or(0) == 0 {
            return Err(answer);
        }
    }
}

/// A printable summary of whole frames: `tag:body ` each, NULs shown as `|`.
pub fn summary(bytes: &[u8]) -> String {
    let mut rest = bytes;
    let mut out = String::new();
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let body = String::from_utf8_lossy(&rest[5..1 + len]).replace('\0', "|");
        out.push_str(&format!("{}:{} ", rest[0] as char, body));
        rest = &rest[1 + len..];
    }
    out
}

/// Reads up to the next ReadyForQuery: a printable summary of the answer.
pub async fn answer(s: &mut TcpStream, buf: &mut BytesMut) -> String {
    summary(&read_to_ready(s, buf).await)
}

/// Sends frames, reads up to ReadyForQuery; a printable summary of the answer.
pub async fn exchange(s: &mut TcpStream, buf: &mut BytesMut, frames: &[BytesMut]) -> String {
    send(s, frames).await;
    answer(s, buf).await
}

/// Sends frames, reads until the server closes the connection; a printable summary of all of it.
pub async fn exchange_to_close(s: &mut TcpStream, buf: &mut BytesMut, frames: &[BytesMut]) -> String {
    send(s, frames).await;
    loop {
        let read = tokio::time::timeout(ANSWER_TIMEOUT, s.read_buf(buf)).await;
        if read.expect("the server closes the connection").unwrap_or(0) == 0 {
            return summary(buf);
        }
    }
}

/// Sends frames, reads up to the next ReadyForQuery or until the server closes the connection
/// (a session timebox ends); a printable summary of the answer.
pub async fn exchange_or_close(s: &mut TcpStream, buf: &mut BytesMut, frames: &[BytesMut]) -> String {
    send(s, frames).await;
    match read_until_ready(s, buf).await {
        Ok(answer) | Err(answer) => summary(&answer),
    }
}
