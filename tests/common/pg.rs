//! Real clients' small helpers shared by the wire tests: tokio-postgres connections, the error a
//! server sent, one value of a query, and the records of an audit database file.

use tokio_postgres::{NoTls, SimpleQueryMessage};

/// Connects with tokio-postgres (plaintext) and drives the connection; fails the test if it cannot.
pub async fn connect(conn: &str) -> tokio_postgres::Client {
    try_connect(conn).await.expect("connect")
}

/// [`connect`], handing back the error.
pub async fn try_connect(conn: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conn, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// SQLSTATE and message of the error a server sent; fails the test for any other error.
pub fn db_error(e: &tokio_postgres::Error) -> (String, String) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("expected a database error, got {e:?}"));
    (db.code().code().to_owned(), db.message().to_owned())
}

/// The first column of the first row of a simple query (`""` for NULL).
pub async fn scalar(client: &tokio_postgres::Client, sql: &str) -> String {
    let rows = client.simple_query(sql).await.unwrap();
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_owned()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no row from {sql}"))
}

/// (kind, payload JSON) of every record in an audit database file.
pub fn audit_records(db: &std::path::Path) -> Vec<(String, serde_json::Value)> {
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
