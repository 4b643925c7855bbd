//! The endpoint's messages byte for byte (as the hand-written encoder sent them before pgwire),
//! and read back by an independent decoder (postgres-protocol's, as drivers use).

use super::*;
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend;

/// Tag, length word (counting itself) and body.
fn framed(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn parse(bytes: &[u8]) -> Vec<backend::Message> {
    let mut buf = BytesMut::from(bytes);
    let mut messages = Vec::new();
    while let Some(m) = backend::Message::parse(&mut buf).expect("well-formed") {
        messages.push(m);
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    messages
}

#[test]
fn the_greeting_is_the_bytes_clients_expect() {
    let mut out = BytesMut::new();
    greeting(
        &mut out,
        &[("server_encoding", "UTF8"), ("application_name", "")],
        7,
        -2,
    )
    .unwrap();
    let mut expected = framed(b'R', &0i32.to_be_bytes());
    expected.extend(framed(b'S', b"server_encoding\0UTF8\0"));
    expected.extend(framed(b'S', b"application_name\0\0"));
    expected.extend(framed(b'K', &[0, 0, 0, 7, 0xff, 0xff, 0xff, 0xfe]));
    expected.extend(framed(b'Z', b"I"));
    assert_eq!(&out[..], &expected[..]);
    let kinds: Vec<_> = parse(&out)
        .into_iter()
        .map(|m| match m {
            backend::Message::AuthenticationOk => "ok",
            backend::Message::ParameterStatus(_) => "parameter",
            backend::Message::BackendKeyData(k) if k.process_id() == 7 && k.secret_key() == -2 => "key",
            backend::Message::ReadyForQuery(r) if r.status() == b'I' => "ready",
            _ => "unexpected",
        })
        .collect();
    assert_eq!(kinds, ["ok", "parameter", "parameter", "key", "ready"]);
}

#[test]
fn a_result_is_text_columns_rows_and_select_n() {
    let mut out = BytesMut::new();
    row_description(&mut out, &["a".into(), "payload".into()]).unwrap();
    let values = [
        ValueRef::Integer(-5),
        ValueRef::Null,
        ValueRef::Real(1.5),
        ValueRef::Text(b"caf\xc3\xa9 \xff"),
        ValueRef::Blob(&[0xde, 0xad]),
    ];
    data_row(&mut out, &values).unwrap();
    select_complete(&mut out, 1).unwrap();
    empty_query(&mut out).unwrap();

    let column = |name: &str| {
        let mut c = name.as_bytes().to_vec();
        c.push(0);
        c.extend_from_slice(&[
            0, 0, 0, 0, 0, 0, 0, 0, 0, 25, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ]);
        c
    };
    let mut expected = framed(b'T', &[&[0, 2][..], &column("a"), &column("payload")].concat());
    let field = |v: &[u8]| [&(v.len() as i32).to_be_bytes()[..], v].concat();
    let row = [
        &[0, 5][..],
        &field(b"-5"),
        &(-1i32).to_be_bytes(),
        &field(b"1.5"),
        &field("café \u{fffd}".as_bytes()),
        &field(b"\\xdead"),
    ]
    .concat();
    expected.extend(framed(b'D', &row));
    expected.extend(framed(b'C', b"SELECT 1\0"));
    expected.extend(framed(b'I', b""));
    assert_eq!(&out[..], &expected[..]);
    assert!(encoded_size(&values) >= row.len() + 5, "the bound covers the row");

    let messages = parse(&out);
    let backend::Message::RowDescription(description) = &messages[0] else {
        panic!("RowDescription first");
    };
    let names: Vec<String> = description
        .fields()
        .map(|f| Ok((f.name().to_owned(), f.type_oid())))
        .collect::<Vec<_>>()
        .unwrap()
        .into_iter()
        .map(|(n, oid)| format!("{n}:{oid}"))
        .collect();
    assert_eq!(names, ["a:25", "payload:25"]);
    let backend::Message::DataRow(row) = &messages[1] else {
        panic!("DataRow second");
    };
    let buffer = row.buffer();
    let cells: Vec<Option<Vec<u8>>> = row
        .ranges()
        .map(|r| Ok(r.map(|r| buffer[r].to_vec())))
        .collect()
        .unwrap();
    assert_eq!(cells[0].as_deref(), Some(&b"-5"[..]));
    assert_eq!(cells[1], None);
    assert_eq!(cells[4].as_deref(), Some(&b"\\xdead"[..]));
    assert!(matches!(&messages[2], backend::Message::CommandComplete(c) if c.tag().unwrap() == "SELECT 1"));
    assert!(matches!(messages[3], backend::Message::EmptyQueryResponse));
}

#[test]
fn a_failed_encoding_leaves_no_half_message() {
    let mut out = BytesMut::from(&b"kept"[..]);
    // ParameterStatus may be at most 30,000 bytes long in pgwire.
    let long = "x".repeat(40_000);
    let err = greeting(&mut out, &[("application_name", &long)], 1, 1).unwrap_err();
    assert!(
        matches!(
            err,
            MessageError::Encode {
                message: "ParameterStatus",
                ..
            }
        ),
        "{err}"
    );
    // AuthenticationOk went in before; nothing of the refused message did.
    assert_eq!(&out[..4], b"kept");
    assert_eq!(&out[4..], &framed(b'R', &0i32.to_be_bytes())[..]);
    assert_eq!(err.to_pg_error().code, "XX000");
}

#[test]
fn a_nul_in_a_column_name_cannot_desynchronise_the_client() {
    let mut out = BytesMut::new();
    row_description(&mut out, &["a\0b".into(), "c".into()]).unwrap();
    ready(&mut out).unwrap();
    let messages = parse(&out);
    let backend::Message::RowDescription(description) = &messages[0] else {
        panic!("RowDescription first");
    };
    let names: Vec<String> = description
        .fields()
        .map(|f| Ok(f.name().to_owned()))
        .collect()
        .unwrap();
    assert_eq!(names, ["ab", "c"]);
    assert!(matches!(messages[1], backend::Message::ReadyForQuery(_)));
}
