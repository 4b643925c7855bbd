//! Unit tests of the wire pieces: startup packets, error layout, frame tracking.

use super::*;

fn startup_body(params: &[(&str, &str)]) -> Vec<u8> {
    let mut b = PROTOCOL_3_0.to_be_bytes().to_vec();
    for (k, v) in params {
        b.extend_from_slice(k.as_bytes());
        b.push(0);
        b.extend_from_slice(v.as_bytes());
        b.push(0);
    }
    b.push(0);
    b
}

#[test]
fn parses_startup_ssl_gss_and_cancel() {
    let s = parse_startup_packet(&startup_body(&[("user", "alice"), ("database", "shop")])).unwrap();
    let StartupPacket::Startup(m) = s else { panic!() };
    assert_eq!(m.get("user"), Some("alice"));
    assert_eq!(m.get("database"), Some("shop"));
    assert_eq!(
        parse_startup_packet(&SSL_REQUEST_CODE.to_be_bytes()).unwrap(),
        StartupPacket::SslRequest
    );
    assert_eq!(
        parse_startup_packet(&GSSENC_REQUEST_CODE.to_be_bytes()).unwrap(),
        StartupPacket::GssEncRequest
    );
    let mut cancel = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
    cancel.extend_from_slice(&7i32.to_be_bytes());
    cancel.extend_from_slice(&(-9i32).to_be_bytes());
    assert_eq!(
        parse_startup_packet(&cancel).unwrap(),
        StartupPacket::Cancel { pid: 7, secret: -9 }
    );
}

#[test]
fn rejects_malformed_startup_packets() {
    let code = |r: Result<StartupPacket, PgError>| r.unwrap_err().code;
    assert_eq!(code(parse_startup_packet(&[0, 3])), "08P01");
    let mut no_term = startup_body(&[("user", "a")]);
    no_term.pop();
    assert_eq!(code(parse_startup_packet(&no_term)), "08P01");
    let mut trailing = startup_body(&[("user", "a")]);
    trailing.push(b'x');
    assert_eq!(code(parse_startup_packet(&trailing)), "08P01");
    assert_eq!(
        code(parse_startup_packet(&startup_body(&[
            ("user", "a"),
            ("user", "b")
        ]))),
        "08P01"
    );
    assert_eq!(
        code(parse_startup_packet(&0x0002_0000i32.to_be_bytes())),
        "0A000",
        "protocol 2"
    );
    assert_eq!(
        code(parse_startup_packet(&[0xde, 0xad, 0xbe, 0xef, 1, 2])),
        "0A000"
    );
    let mut bad_utf8 = PROTOCOL_3_0.to_be_bytes().to_vec();
    bad_utf8.extend_from_slice(&[0xff, 0, b'x', 0, 0]);
    assert_eq!(code(parse_startup_packet(&bad_utf8)), "08P01");
}

#[test]
fn error_response_layout() {
    let e = PgError::invalid_password("alice");
    let b = e.to_bytes();
    assert_eq!(b[0], b'E');
    let len = i32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
    assert_eq!(len + 1, b.len());
    let body = String::from_utf8_lossy(&b[5..]);
    assert!(body.contains("SFATAL\0"));
    assert!(body.contains("C28P01\0"));
    assert!(body.contains("Mpassword authentication failed for user \"alice\"\0"));
    assert_eq!(*b.last().unwrap(), 0);
    assert_eq!(PgError::warning("x").to_bytes()[0], b'N');
    // NUL inside a message cannot end the field early
    let b = PgError::protocol_violation("a\0b").to_bytes();
    assert!(String::from_utf8_lossy(&b).contains("Mab\0"));
}

/// The bytes of an ErrorResponse and a NoticeResponse with every field, as the hand-written
/// encoder sent them before pgwire encoded them: clients see no difference.
#[test]
fn error_and_notice_bytes_are_unchanged_by_pgwire() {
    let e = PgError::insufficient_privilege("no")
        .with_detail("d")
        .with_hint("h")
        .non_fatal();
    let body = b"SERROR\0VERROR\0C42501\0Mno\0Dd\0Hh\0\0";
    let mut expected = vec![b'E'];
    expected.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    expected.extend_from_slice(body);
    assert_eq!(&e.to_bytes()[..], &expected[..]);
    let n = PgError::warning("w").to_bytes();
    assert_eq!(&n[..], b"N\0\0\0\x21SWARNING\0VWARNING\0C01000\0Mw\0\0");
    let mut appended = BytesMut::from(&b"kept"[..]);
    e.encode(&mut appended);
    assert_eq!(&appended[4..], &expected[..], "appends after what is there");
}

/// The authentication messages and BackendKeyData, byte for byte as the hand-written encoder sent
/// them before pgwire encoded them.
#[test]
fn authentication_bytes_are_unchanged_by_pgwire() {
    let mut out = BytesMut::new();
    authentication_ok(&mut out);
    authentication_sasl(&mut out, &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
    authentication_sasl_continue(&mut out, b"r=abc,s=c2FsdA==,i=4096");
    authentication_sasl_final(&mut out, b"v=xyz");
    backend_key_data(&mut out, 7, -2);
    let mut expected: Vec<u8> = b"R\0\0\0\x08\0\0\0\0".to_vec();
    expected.extend_from_slice(b"R\0\0\0\x2a\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
    expected.extend_from_slice(b"R\0\0\0\x1f\0\0\0\x0br=abc,s=c2FsdA==,i=4096");
    expected.extend_from_slice(b"R\0\0\0\x0d\0\0\0\x0cv=xyz");
    expected.extend_from_slice(b"K\0\0\0\x0c\0\0\0\x07\xff\xff\xff\xfe");
    assert_eq!(&out[..], &expected[..]);
}

/// Each condition constructor carries PostgreSQL's SQLSTATE for that condition name
/// (appendix A of the PostgreSQL manual); a typo in one would send clients the wrong code.
#[test]
fn condition_constructors_carry_postgresqls_sqlstates() {
    use Severity::{Error, Fatal, Warning};
    let m = "m";
    // `case!(ctor(args), code, severity)`: the constructor's name is the case's name.
    macro_rules! case {
        ($ctor:ident($($arg:expr),*), $code:literal, $severity:ident) => {
            (stringify!($ctor), PgError::$ctor($($arg),*), $code, $severity)
        };
    }
    let cases: &[(&str, PgError, &str, Severity)] = &[
        case!(warning(m), "01000", Warning),
        case!(protocol_violation(m), "08P01", Fatal),
        case!(feature_not_supported(m), "0A000", Fatal),
        case!(invalid_authorization_specification(m), "28000", Fatal),
        case!(syntax_error_or_access_rule_violation(m), "42000", Fatal),
        case!(insufficient_privilege(m), "42501", Fatal),
        case!(insufficient_resources(m), "53000", Fatal),
        case!(too_many_connections(m), "53300", Fatal),
        case!(program_limit_exceeded(m), "54000", Fatal),
        case!(object_not_in_prerequisite_state(m), "55000", Fatal),
        case!(query_canceled(m), "57014", Fatal),
        case!(admin_shutdown(m), "57P01", Fatal),
        case!(system_error(m), "58000", Fatal),
        case!(io_error(m), "58030", Fatal),
        ("internal_error", PgError::internal(m), "XX000", Fatal),
        (
            "non_fatal",
            PgError::insufficient_privilege(m).non_fatal(),
            "42501",
            Error,
        ),
        case!(statement_too_long(2, 1), "54000", Error),
        case!(message_too_long(2, 1), "54000", Fatal),
        case!(grant_store_unavailable(), "58000", Fatal),
        case!(channel_binding_failed("x"), "28000", Fatal),
        case!(store_unreachable(), "08006", Fatal),
        case!(no_user_name(), "28000", Fatal),
        case!(too_many_clients(1), "53300", Fatal),
        case!(masked_effects_kept(), "42501", Fatal),
    ];
    for (name, error, code, severity) in cases {
        assert_eq!(error.code, *code, "{name}");
        assert_eq!(error.severity, *severity, "{name}");
    }
}

fn msgs(list: &[(u8, &[u8])]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for (tag, body) in list {
        frame(&mut out, *tag, |b| b.extend_from_slice(body));
    }
    out.to_vec()
}

#[test]
fn tracker_finds_boundaries_across_any_split() {
    let stream = msgs(&[
        (b'T', b"abc"),
        (b'D', &[0; 300]),
        (b'C', b"SELECT 1\0"),
        (b'Z', b"T"),
    ]);
    for split in 0..stream.len() {
        let mut t = FrameTracker::default();
        t.feed(&stream[..split]).unwrap();
        t.feed(&stream[split..]).unwrap();
        assert!(t.at_boundary(), "split at {split}");
        assert_eq!(t.ready_count, 1);
        assert_eq!(t.last_ready_status, Some(b'T'));
        assert_eq!(t.offset(), stream.len() as u64);
    }
    // byte by byte
    let mut t = FrameTracker::default();
    for (i, b) in stream.iter().enumerate() {
        t.feed(std::slice::from_ref(b)).unwrap();
        if i == 7 {
            // inside the first frame ('T' + 4 length bytes + "abc" = 8 bytes, ends at index 7)
            assert!(t.at_boundary());
        }
        if i == 10 {
            assert_eq!(t.unfinished_frame_start(), Some(8));
        }
    }
}

#[test]
fn tracker_reports_each_completed_frame_once_with_its_span() {
    let stream = msgs(&[(b'T', b"abc"), (b'E', &[1; 40]), (b'Z', b"I")]);
    for split in 0..stream.len() {
        let mut t = FrameTracker::default();
        let mut seen = Vec::new();
        t.feed_with(&stream[..split], |tag, s, e| seen.push((tag, s, e)))
            .unwrap();
        t.feed_with(&stream[split..], |tag, s, e| seen.push((tag, s, e)))
            .unwrap();
        assert_eq!(
            seen,
            vec![(b'T', 0, 8), (b'E', 8, 53), (b'Z', 53, 59)],
            "split at {split}"
        );
    }
    let mut t = FrameTracker::default();
    t.feed(&stream[..10]).unwrap();
    assert!(t.in_header(), "inside the ErrorResponse header");
    t.feed(&stream[10..15]).unwrap();
    assert_eq!(t.current_tag(), b'E');
    assert!(!t.in_header());
    t.feed(&stream[15..]).unwrap();
    t.feed(&[b'D', 0]).unwrap();
    assert!(t.in_header());
    assert_eq!(t.current_tag(), 0);
}

#[test]
fn tracker_rejects_corrupt_lengths() {
    let mut t = FrameTracker::default();
    assert_eq!(
        t.feed(&[b'D', 0, 0, 0, 2]),
        Err(TrackError::BadLength { tag: b'D', len: 2 })
    );
}

#[test]
fn frontend_frames_are_checked() {
    let q = msgs(&[(b'Q', b"select 1\0")]);
    assert_eq!(next_frontend_frame(&q, 1000).unwrap(), Some((b'Q', q.len())));
    assert_eq!(next_frontend_frame(&q[..3], 1000).unwrap(), None);
    assert_eq!(next_frontend_frame(&q[..q.len() - 1], 1000).unwrap(), None);
    assert_eq!(next_frontend_frame(b"Zxxxx", 1000).unwrap_err().code, "08P01");
    assert_eq!(next_frontend_frame(&[0x00], 1000).unwrap_err().code, "08P01");
    assert_eq!(
        next_frontend_frame(&[b'Q', 0, 0, 0, 1], 1000).unwrap_err().code,
        "08P01"
    );
    assert_eq!(
        next_frontend_frame(&[b'Q', 0, 1, 0, 0], 1000).unwrap_err().code,
        "54000"
    );
    // 'p' (password) is not valid once the session is established
    assert!(next_frontend_frame(&msgs(&[(b'p', b"x\0")]), 1000).is_err());
}
