//! The backend messages the auditors' endpoint sends, encoded by pgwire's message types.
//!
//! Data flow: [`super`] (greeting, ReadyForQuery) and [`super::engine`] (a query's
//! RowDescription, DataRows and CommandComplete) append their messages to a buffer here. Errors
//! and notices go through [`PgError::encode`](crate::proxy::wire::PgError::encode) and the SCRAM
//! exchange through [`crate::proxy::wire`], which are pgwire's message types as well. Frontend
//! messages are still read by [`super::run`], which checks each length before it allocates.
//!
//! pgwire refuses to encode a message longer than the protocol allows for its type: that comes
//! back as a [`MessageError`] and the buffer is left as it was (no half message), never a panic.
//! This module must never put a NUL inside a string field (it would end the field early and
//! desynchronise the client): column names are stripped of them, parameter values come from the
//! startup packet (NUL-terminated, so NUL-free), and the strings of our own are in the tests.

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};
use pgwire::messages::data::{DataRow, FieldDescription, RowDescription};
use pgwire::messages::response::{CommandComplete, EmptyQueryResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{Authentication, BackendKeyData, ParameterStatus, SecretKey};
use pgwire::messages::Message;
use rusqlite::types::ValueRef;

use crate::proxy::wire::PgError;

/// PostgreSQL's type oid for `text`: every column of an auditor's result is text.
const TEXT_OID: u32 = 25;

/// A message that could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// pgwire refused it (longer than the protocol allows for its type).
    #[error("cannot encode the {message} message: {source}")]
    Encode {
        /// Which message (RowDescription, DataRow, …).
        message: &'static str,
        #[source]
        source: pgwire::error::PgWireError,
    },
    /// A DataRow value or column count does not fit its length word.
    #[error("a DataRow value of {bytes} bytes or {columns} columns does not fit the protocol")]
    RowTooLarge { bytes: usize, columns: usize },
}

impl MessageError {
    /// What the client is told (the detail goes to the log, not to the client).
    pub fn to_pg_error(&self) -> PgError {
        tracing::error!(error = %self, "timebox_audit cannot encode a reply");
        PgError::internal("timebox_audit could not encode its reply")
    }
}

/// Appends `message` to `out`, or leaves `out` as it was.
fn put<M: Message>(out: &mut BytesMut, name: &'static str, message: &M) -> Result<(), MessageError> {
    let start = out.len();
    message.encode(out).map_err(|source| {
        out.truncate(start);
        MessageError::Encode {
            message: name,
            source,
        }
    })
}

/// ReadyForQuery, idle: the endpoint has no transactions.
pub fn ready(out: &mut BytesMut) -> Result<(), MessageError> {
    put(out, "ReadyForQuery", &ReadyForQuery::new(TransactionStatus::Idle))
}

/// What a client is told once it is in: AuthenticationOk, the `parameters` drivers expect,
/// BackendKeyData (`pid`, `secret`) and ReadyForQuery.
pub fn greeting(
    out: &mut BytesMut,
    parameters: &[(&str, &str)],
    pid: i32,
    secret: i32,
) -> Result<(), MessageError> {
    put(out, "AuthenticationOk", &Authentication::Ok)?;
    for (name, value) in parameters {
        let status = ParameterStatus::new((*name).to_owned(), (*value).to_owned());
        put(out, "ParameterStatus", &status)?;
    }
    put(
        out,
        "BackendKeyData",
        &BackendKeyData::new(pid, SecretKey::I32(secret)),
    )?;
    ready(out)
}

/// RowDescription: one text column per name (NULs dropped: SQLite stops reading SQL at one, so a
/// name should never hold one, but one would end the field early and desynchronise the client).
pub fn row_description(out: &mut BytesMut, columns: &[String]) -> Result<(), MessageError> {
    let fields = columns
        .iter()
        .map(|name| FieldDescription::new(name.replace('\0', ""), 0, 0, TEXT_OID, -1, -1, 0))
        .collect();
    put(out, "RowDescription", &RowDescription::new(fields))
}

/// An upper bound of the bytes [`data_row`] writes for `values` (before anything is copied).
pub fn encoded_size(values: &[ValueRef<'_>]) -> usize {
    let value = |v: &ValueRef<'_>| match *v {
        ValueRef::Null => 0,
        ValueRef::Integer(_) => 20,
        ValueRef::Real(_) => 32,
        // invalid UTF-8 is replaced by U+FFFD: at most 3 bytes per input byte
        ValueRef::Text(t) => t.len().saturating_mul(3),
        ValueRef::Blob(b) => b.len().saturating_mul(2).saturating_add(2),
    };
    values
        .iter()
        .fold(7usize, |n, v| n.saturating_add(4).saturating_add(value(v)))
}

/// One DataRow, every value as text (blobs as `\x` hex, like PostgreSQL's bytea output).
pub fn data_row(out: &mut BytesMut, values: &[ValueRef<'_>]) -> Result<(), MessageError> {
    let too_large = |bytes| MessageError::RowTooLarge {
        bytes,
        columns: values.len(),
    };
    let mut data = BytesMut::with_capacity(encoded_size(values));
    for v in values {
        let text: Cow<'_, [u8]> = match *v {
            ValueRef::Null => {
                data.put_i32(-1);
                continue;
            }
            ValueRef::Integer(i) => i.to_string().into_bytes().into(),
            ValueRef::Real(r) => r.to_string().into_bytes().into(),
            ValueRef::Text(t) => match String::from_utf8_lossy(t) {
                Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
                Cow::Owned(s) => Cow::Owned(s.into_bytes()),
            },
            ValueRef::Blob(blob) => format!("\\x{}", hex::encode(blob)).into_bytes().into(),
        };
        data.put_i32(i32::try_from(text.len()).map_err(|_| too_large(text.len()))?);
        data.extend_from_slice(&text);
    }
    let count = i16::try_from(values.len()).map_err(|_| too_large(data.len()))?;
    put(out, "DataRow", &DataRow::new(data, count))
}

/// CommandComplete `SELECT <rows>`.
pub fn select_complete(out: &mut BytesMut, rows: usize) -> Result<(), MessageError> {
    put(
        out,
        "CommandComplete",
        &CommandComplete::new(format!("SELECT {rows}")),
    )
}

/// EmptyQueryResponse, for a query of only whitespace and semicolons.
pub fn empty_query(out: &mut BytesMut) -> Result<(), MessageError> {
    put(out, "EmptyQueryResponse", &EmptyQueryResponse::new())
}

#[cfg(test)]
mod tests;
