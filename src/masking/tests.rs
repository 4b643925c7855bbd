//! Unit tests of [`super`]: the methods, and frames rewritten and re-read with
//! `postgres_protocol`'s backend parser (what a driver would read).

use bytes::{BufMut, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::Message;

use super::*;

fn key() -> MaskKey {
    MaskKey::derive(&[7; 32])
}

fn text(method: MaskMethod, value: &str) -> Option<String> {
    mask_text(method, &key(), value.as_bytes()).map(|v| String::from_utf8(v).unwrap())
}

#[test]
fn methods_show_what_the_issue_says() {
    use MaskMethod::*;
    assert_eq!(text(Redact, "alice@example.com").as_deref(), Some("***"));
    assert_eq!(text(Null, "alice@example.com"), None);
    assert_eq!(
        text(Email, "alice@example.com").as_deref(),
        Some("***@example.com")
    );
    assert_eq!(text(Email, "not an address").as_deref(), Some("***"));
    assert_eq!(text(Email, "@example.com").as_deref(), Some("***"));
    assert_eq!(text(Partial, "4111111111111111").as_deref(), Some("***1111"));
    assert_eq!(
        text(Partial, "ünïcödé").as_deref(),
        Some("***cödé"),
        "characters, not bytes"
    );
    assert_eq!(
        text(Partial, "1234").as_deref(),
        Some("***"),
        "short values are not shown whole"
    );
    for m in MaskMethod::NAMES {
        assert_eq!(m.parse::<MaskMethod>().unwrap().as_str(), m);
    }
    assert!("Hash".parse::<MaskMethod>().is_err());
}

#[test]
fn hashes_are_stable_per_installation_and_differ_across_installations() {
    let a = text(MaskMethod::Hash, "alice@example.com").unwrap();
    assert_eq!(a.len(), 32);
    assert_eq!(
        text(MaskMethod::Hash, "alice@example.com").unwrap(),
        a,
        "joins still work"
    );
    assert_ne!(text(MaskMethod::Hash, "bob@example.com").unwrap(), a);
    let other = MaskKey::derive(&[8; 32]);
    let b = String::from_utf8(mask_text(MaskMethod::Hash, &other, b"alice@example.com").unwrap()).unwrap();
    assert_ne!(a, b);
    assert_eq!(format!("{:?}", key()), "MaskKey(…)", "the key never prints");
}

#[test]
fn binary_values_of_types_timebox_does_not_read_are_redacted_never_passed() {
    let int8 = MaskedColumn {
        method: MaskMethod::Partial,
        type_oid: 20,
        format: 1,
    };
    assert_eq!(
        int8.mask(&key(), &12345678_i64.to_be_bytes()),
        Some(b"***".to_vec())
    );
    let varchar = MaskedColumn {
        method: MaskMethod::Email,
        type_oid: 1043,
        format: 1,
    };
    assert_eq!(varchar.mask(&key(), b"a@b.org"), Some(b"***@b.org".to_vec()));
    let as_text = MaskedColumn { format: 0, ..int8 };
    assert_eq!(as_text.mask(&key(), b"12345678"), Some(b"***5678".to_vec()));
}

/// A RowDescription of (name, table OID, attnum, type OID, format) fields.
fn row_description(fields: &[(&str, u32, i16, u32, i16)]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_i16(fields.len() as i16);
    for (name, table, attnum, type_oid, format) in fields {
        b.put_slice(name.as_bytes());
        b.put_u8(0);
        b.put_u32(*table);
        b.put_i16(*attnum);
        b.put_u32(*type_oid);
        b.put_i16(if *type_oid == 23 { 4 } else { -1 });
        b.put_i32(-1);
        b.put_i16(*format);
    }
    with_header(b'T', &b)
}

fn data_row(values: &[Option<&[u8]>]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_i16(values.len() as i16);
    for v in values {
        match v {
            None => b.put_i32(-1),
            Some(v) => {
                b.put_i32(v.len() as i32);
                b.put_slice(v);
            }
        }
    }
    with_header(b'D', &b)
}

/// customers (OID 16400): id (1), email (2, email), card (3, partial), note (4, null).
fn customers(table: u32, attnum: i16) -> Option<MaskMethod> {
    match (table, attnum) {
        (16400, 2) => Some(MaskMethod::Email),
        (16400, 3) => Some(MaskMethod::Partial),
        (16400, 4) => Some(MaskMethod::Null),
        _ => None,
    }
}

#[test]
fn a_result_with_masked_columns_is_rewritten_and_reads_back_as_text() {
    let desc = row_description(&[
        ("id", 16400, 1, 23, 1),
        ("email", 16400, 2, 1043, 1),
        ("card", 16400, 3, 1043, 0),
        ("note", 16400, 4, 25, 0),
        ("total", 0, 0, 23, 0),
    ]);
    let (new_desc, columns) = rewrite_row_description(&desc, customers).unwrap().unwrap();
    let mut parsed = new_desc.clone();
    let Some(Message::RowDescription(body)) = Message::parse(&mut parsed).unwrap() else {
        panic!("not a RowDescription");
    };
    let fields: Vec<(String, u32, u32)> = body
        .fields()
        .map(|f| Ok((f.name().to_owned(), f.type_oid(), f.table_oid())))
        .collect()
        .unwrap();
    assert_eq!(
        fields,
        [
            ("id".into(), 23, 16400),
            ("email".into(), MASKED_TYPE_OID, 16400),
            ("card".into(), MASKED_TYPE_OID, 16400),
            ("note".into(), 25, 16400),
            ("total".into(), 23, 0)
        ]
    );
    let row = data_row(&[
        Some(&7_i32.to_be_bytes()),
        Some(b"alice@example.com"),
        Some(b"4111111111111111"),
        Some(b"VIP, call first"),
        None,
    ]);
    let mut masked = rewrite_data_row(&row, &columns, &key()).unwrap();
    let Some(Message::DataRow(body)) = Message::parse(&mut masked).unwrap() else {
        panic!("not a DataRow");
    };
    let buf = body.buffer();
    let values: Vec<Option<Vec<u8>>> = body
        .ranges()
        .map(|r| Ok(r.map(|r| buf[r].to_vec())))
        .collect()
        .unwrap();
    assert_eq!(
        values,
        [
            Some(7_i32.to_be_bytes().to_vec()),
            Some(b"***@example.com".to_vec()),
            Some(b"***1111".to_vec()),
            None,
            None
        ]
    );
}

#[test]
fn results_without_masked_columns_are_left_alone() {
    let desc = row_description(&[("id", 16401, 1, 23, 0), ("email", 16401, 2, 25, 0)]);
    assert_eq!(rewrite_row_description(&desc, customers).unwrap(), None);
}

#[test]
fn malformed_frames_are_errors_never_panics() {
    let desc = row_description(&[("email", 16400, 2, 1043, 0)]);
    let (_, columns) = rewrite_row_description(&desc, customers).unwrap().unwrap();
    let row = data_row(&[Some(b"alice@example.com")]);
    for cut in 0..row.len() {
        assert!(rewrite_data_row(&row[..cut], &columns, &key()).is_err());
    }
    for cut in 0..desc.len() {
        assert!(rewrite_row_description(&desc[..cut], customers).is_err());
    }
    // A field count or value length that lies.
    let mut lying = row.to_vec();
    lying[5..7].copy_from_slice(&2_i16.to_be_bytes());
    assert!(rewrite_data_row(&lying, &columns, &key()).is_err());
    let mut lying = row.to_vec();
    lying[7..11].copy_from_slice(&i32::MAX.to_be_bytes());
    assert!(rewrite_data_row(&lying, &columns, &key()).is_err());
    let mut lying = row.to_vec();
    lying[7..11].copy_from_slice(&(-7_i32).to_be_bytes());
    assert!(
        rewrite_data_row(&lying, &columns, &key()).is_err(),
        "trailing bytes"
    );
    assert!(
        rewrite_data_row(&desc, &columns, &key()).is_err(),
        "wrong frame type"
    );
}

/// Issue 15 item 5: the hash is computed from a pre-keyed HMAC state now (no key schedule, no
/// string per hex digit per value); its value must not change, or joins and exports across
/// versions of one installation break. Pinned to HMAC-SHA256 computed independently (Python's
/// `hmac`: key = HMAC(secret, "timebox column masking v1"), first 16 bytes in hex).
#[test]
fn the_hash_of_a_value_is_the_same_as_before() {
    assert_eq!(
        text(MaskMethod::Hash, "alice@example.com").as_deref(),
        Some("78f1bb6a59c3d1d6d50d7091c8bde05a")
    );
}

/// Issue 15 item 5: rows are rewritten into one reused buffer (appended to what it holds); a
/// malformed row leaves the buffer as it was, and a masked value that is SQL NULL stays NULL.
#[test]
fn rows_are_appended_to_a_reused_buffer_and_a_bad_one_leaves_it_untouched() {
    let desc = row_description(&[
        ("id", 16400, 1, 23, 0),
        ("email", 16400, 2, 25, 0),
        ("note", 16400, 4, 25, 0),
    ]);
    let (_, columns) = rewrite_row_description(&desc, customers).unwrap().unwrap();
    let mut out = BytesMut::new();
    let a = data_row(&[Some(b"1"), Some(b"a@b.org"), Some(b"secret")]);
    let b = data_row(&[Some(b"2"), None, None]);
    rewrite_data_row_into(&a, &columns, &key(), &mut out).unwrap();
    let first = out.len();
    rewrite_data_row_into(&b, &columns, &key(), &mut out).unwrap();
    assert!(rewrite_data_row_into(&a[..a.len() - 1], &columns, &key(), &mut out).is_err());
    let expected = [
        data_row(&[Some(b"1"), Some(b"***@b.org"), None]),
        data_row(&[Some(b"2"), None, None]),
    ]
    .concat();
    assert_eq!(&out[..], &expected[..]);
    assert_eq!(
        &out[..first],
        &rewrite_data_row(&a, &columns, &key()).unwrap()[..]
    );
}
