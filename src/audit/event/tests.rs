use super::*;

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// One event of every kind, with every optional field filled.
pub(crate) fn samples() -> Vec<AuditEvent> {
    vec![
        AuditEvent::SessionStart(SessionStart {
            application_name: Some("psql".into()),
            client_addr: "127.0.0.1:50000".into(),
            grant_id: "g_1".into(),
            role: "read".into(),
            session_id: "s_1".into(),
            target: "shop".into(),
            tls_version: Some("TLSv1_3".into()),
            user: "alice".into(),
        }),
        AuditEvent::AuthFailure(AuthFailure {
            client_addr: "127.0.0.1:50001".into(),
            reason: "no active grant".into(),
            target: "shop".into(),
            user: "mallory".into(),
        }),
        AuditEvent::Statement(Statement {
            class: "read".into(),
            decision: Decision::Allow,
            grant_id: "g_1".into(),
            params: Some(vec![Some("42".into()), None]),
            reason: Some("allowed by role read".into()),
            relations: vec!["public.orders".into()],
            session_id: "s_1".into(),
            sql: "SELECT * FROM orders WHERE id = $1 AND note = $2".into(),
            sql_bytes: Some(48),
            sql_sha256: Some("00".repeat(32)),
            sql_truncated: true,
            statement_id: 1,
            target: "shop".into(),
            user: "alice".into(),
        }),
        AuditEvent::StatementOutcome(StatementOutcome {
            command_tag: Some("SELECT 1".into()),
            duration_us: 1234,
            rows: Some(1),
            session_id: "s_1".into(),
            sqlstate: Some("00000".into()),
            statement_id: 1,
            returned: None,
        }),
        AuditEvent::SessionEnd(SessionEnd {
            bytes_from_client: 100,
            bytes_to_client: 2000,
            duration_us: 5_000_000,
            ended_by: Some("bob (done)".into()),
            grant_id: "g_1".into(),
            reason: "client_exit".into(),
            session_id: "s_1".into(),
            statements: 1,
            target: "shop".into(),
            user: "alice".into(),
        }),
        AuditEvent::UpstreamEnd(UpstreamEnd {
            after_us: 2_000_000,
            grant_id: "g_1".into(),
            outcome: "closed".into(),
            session_id: "s_1".into(),
            target: "shop".into(),
            user: "alice".into(),
        }),
        AuditEvent::GrantIssued(GrantIssued {
            break_glass: true,
            created_at: t0(),
            created_by: "ops".into(),
            expires_at: t0() + chrono::Duration::minutes(30),
            grant_id: "g_1".into(),
            reason: "incident 42".into(),
            role: "read".into(),
            starts_at: t0(),
            target: "shop".into(),
            user: "alice".into(),
        }),
        AuditEvent::GrantRevoked(GrantRevoked {
            grant_id: "g_1".into(),
            reason: "done".into(),
            revoked_at: t0(),
            revoked_by: "bob".into(),
            target: "shop".into(),
            user: "alice".into(),
        }),
        AuditEvent::GrantExtended(GrantExtended {
            expires_at: t0() + chrono::Duration::hours(1),
            extended_by: "ops".into(),
            grant_id: "g_1".into(),
            previous_expires_at: t0(),
            reason: Some("still debugging".into()),
            target: "shop".into(),
            user: "alice".into(),
        }),
        AuditEvent::AccessRequest(AccessRequestEvent {
            action: "approved".into(),
            actor: "bob".into(),
            break_glass: false,
            grant_id: Some("g_1".into()),
            reason: Some("matches INC-1".into()),
            request_id: "r_1".into(),
            role: "write".into(),
            target: "shop".into(),
            ticket: Some("INC-1".into()),
            ttl: "30m".into(),
            user: "alice".into(),
        }),
        AuditEvent::AuditRetention(crate::audit::retention::AuditRetention {
            cut: t0(),
            dropped_partitions: vec!["audit_records_p20260101".into()],
            instance: Some("tb-a".into()),
            local_anchor: Some(format!("7:{}", "ab".repeat(32))),
            pruned_local: 7,
            retain: "90d".into(),
        }),
    ]
    .into_iter()
    .chain(admin_token::samples(t0()))
    .collect()
}

#[test]
fn fields_are_declared_in_canonical_order() {
    for event in samples() {
        assert_canonical(&event);
    }
}

/// An outcome of a role with masks and quotas: `returned` and its fields in canonical order too.
/// Regression (s6): `returned` came after `statement_id` and its fields as rows, bytes,
/// quota_stop, so a key-sorting JSON library did not reproduce the payload.
#[test]
fn an_outcome_with_returned_and_masked_columns_is_canonical_and_pinned() {
    let outcome = AuditEvent::StatementOutcome(StatementOutcome {
        command_tag: Some("SELECT 2".into()),
        duration_us: 10,
        returned: Some(Returned {
            bytes: 120,
            masked: Some(vec![MaskedColumnReturned {
                column: "public.customers.email".into(),
                method: "email".into(),
            }]),
            quota_stop: Some("max_rows_per_statement".into()),
            rows: 2,
        }),
        rows: Some(2),
        session_id: "s_1".into(),
        sqlstate: None,
        statement_id: 3,
    });
    assert_canonical(&outcome);
    assert_eq!(
        outcome.payload_json(),
        r#"{"command_tag":"SELECT 2","duration_us":10,"returned":{"bytes":120,"masked":[{"column":"public.customers.email","method":"email"}],"quota_stop":"max_rows_per_statement","rows":2},"rows":2,"session_id":"s_1","sqlstate":null,"statement_id":3}"#
    );
    let back = AuditEvent::from_parts("statement_outcome", &outcome.payload_json()).unwrap();
    assert_eq!(back, outcome);
}

#[test]
fn returned_of_several_results_add_up_and_merge_masked_columns() {
    let m = |c: &str| MaskedColumnReturned {
        column: c.into(),
        method: "redact".into(),
    };
    let a = Returned {
        bytes: 10,
        masked: Some(vec![m("public.c.b"), m("public.c.z")]),
        quota_stop: None,
        rows: 1,
    };
    let b = Returned {
        bytes: 5,
        masked: Some(vec![m("public.c.a"), m("public.c.b")]),
        quota_stop: Some("max_rows_per_statement".into()),
        rows: 2,
    };
    let sum = a.clone().combine(b);
    assert_eq!((sum.rows, sum.bytes), (3, 15));
    assert_eq!(
        sum.masked,
        Some(vec![m("public.c.a"), m("public.c.b"), m("public.c.z")])
    );
    assert_eq!(sum.quota_stop.as_deref(), Some("max_rows_per_statement"));
    assert_eq!(a.clone().combine(Returned::default()).masked, a.masked);
}

fn assert_canonical(event: &AuditEvent) {
    {
        let payload = event.payload_json();
        let value: serde_json::Value = serde_json::from_str(&payload).unwrap();
        let mut keys: Vec<&String> = value.as_object().unwrap().keys().collect();
        keys.sort();
        let positions: Vec<usize> = keys
            .iter()
            .map(|k| payload.find(&format!("\"{k}\":")).unwrap())
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "{} fields are not in lexicographic order: {payload}",
            event.kind()
        );
        assert_eq!(
            serde_json::to_string(&value).unwrap(),
            payload,
            "compact and canonical"
        );
    }
}

#[test]
fn payload_bytes_are_pinned() {
    // Changing these bytes changes every hash: a new format needs a new kind or a migration.
    let samples = samples();
    assert_eq!(
        samples[3].payload_json(),
        r#"{"command_tag":"SELECT 1","duration_us":1234,"rows":1,"session_id":"s_1","sqlstate":"00000","statement_id":1}"#
    );
    assert_eq!(
        samples[7].payload_json(),
        r#"{"grant_id":"g_1","reason":"done","revoked_at":"2026-01-01T00:00:00Z","revoked_by":"bob","target":"shop","user":"alice"}"#
    );
}

#[test]
fn events_round_trip_through_kind_and_payload() {
    for event in samples() {
        let back = AuditEvent::from_parts(event.kind(), &event.payload_json()).unwrap();
        assert_eq!(back, event);
        // and the tagged form the API uses
        let tagged = serde_json::to_value(&event).unwrap();
        assert_eq!(tagged["kind"], event.kind());
        assert_eq!(serde_json::from_value::<AuditEvent>(tagged).unwrap(), event);
    }
    assert_eq!(KINDS.len(), samples().len());
    assert!(AuditEvent::from_parts("nope", "{}").is_err());
}

/// Regression (issue 16, finding 6): a 50 MB statement was written to the audit trail whole.
#[test]
fn long_statement_texts_are_bounded_hashed_and_flagged() {
    let short = AuditSql::of("SELECT 1");
    assert_eq!((short.text.as_str(), short.truncated.clone()), ("SELECT 1", None));
    assert_eq!(short.bytes(), 8);

    let long = format!("SELECT '{}'", "é".repeat(MAX_AUDITED_SQL_BYTES));
    let a = AuditSql::of(&long);
    assert!(a.text.len() <= MAX_AUDITED_SQL_BYTES && a.text.len() > MAX_AUDITED_SQL_BYTES - 4);
    assert!(long.starts_with(&a.text));
    use sha2::Digest;
    let (bytes, sha) = a.truncated.clone().unwrap();
    assert_eq!(bytes, long.len() as u64);
    assert_eq!(sha, hex::encode(sha2::Sha256::digest(long.as_bytes())));
    assert_eq!(a.bytes(), long.len());

    // The hash is of the redacted text: it is no oracle for a secret in the statement.
    let secret = format!("ALTER ROLE x PASSWORD 'hunter2' /* {} */", "x".repeat(100));
    let s = AuditSql::bounded(&secret, 40);
    assert!(!s.text.contains("hunter2"), "{}", s.text);
    // A reason quoting the statement is scrubbed with the whole text's secrets.
    assert!(!s.scrub("syntax error near 'hunter2'").contains("hunter2"));
    let redacted = redact::redact_sql(&secret);
    assert_eq!(
        s.truncated.unwrap().1,
        hex::encode(sha2::Sha256::digest(redacted.as_bytes()))
    );
}

#[test]
fn prepare_redacts_and_extracts_columns() {
    let mut s = match samples().remove(2) {
        AuditEvent::Statement(s) => s,
        _ => unreachable!(),
    };
    s.sql = "ALTER ROLE x PASSWORD 'hunter2'".into();
    s.params = Some(vec![Some("tbx_abcdefghijklmnopqrstuvwxyz234567".into()), None]);
    let p = prepare(AuditEvent::Statement(s.clone()), ParamLogging::Redacted);
    assert_eq!(p.kind, "statement");
    assert!(!p.payload.contains("hunter2"), "{}", p.payload);
    assert!(
        p.payload.contains(r#""params":["[redacted 36 bytes]",null]"#),
        "{}",
        p.payload
    );
    assert_eq!(p.columns.user.as_deref(), Some("alice"));
    assert_eq!(p.columns.session_id.as_deref(), Some("s_1"));
    let full = prepare(AuditEvent::Statement(s.clone()), ParamLogging::Full);
    assert!(
        full.payload.contains(r#""params":["[REDACTED]",null]"#),
        "{}",
        full.payload
    );
    let off = prepare(AuditEvent::Statement(s), ParamLogging::Off);
    assert!(off.payload.contains(r#""params":null"#), "{}", off.payload);
}

/// Regression (issue 16, finding 8's log path): the sqlparser cross-check rejects a continued
/// literal and its message quotes it; the relay's "statement denied" log line must not.
#[test]
fn a_denial_reason_quoting_a_secret_is_scrubbed_for_the_log() {
    let sql = "ALTER ROLE x PASSWORD 'abc'\n'hunter2-secret'";
    let reason =
        "statement could not be parsed: found: 'hunter2-secret' near tbx_abcdefghijklmnopqrstuvwxyz234567";
    for audited in [AuditSql::of(sql), AuditSql::bounded(sql, 10)] {
        let logged = audited.loggable_reason(reason);
        assert!(!logged.contains("hunter2-secret"), "{logged}");
        assert!(
            !logged.contains("tbx_abcdefghijklmnopqrstuvwxyz234567"),
            "{logged}"
        );
        assert!(logged.starts_with("statement could not be parsed"), "{logged}");
    }
}

/// What `prepare` made of every sample before issue 13's encoding change (no per-statement
/// copies of the columns, a payload buffer sized once): the same payload bytes and columns, for
/// each parameter policy. The hash chain covers these bytes: they must never change.
#[test]
fn prepared_records_are_byte_for_byte_what_they_were() {
    let mut statement = match samples().remove(2) {
        AuditEvent::Statement(s) => s,
        _ => unreachable!(),
    };
    statement.sql =
        "ALTER ROLE x PASSWORD 'hunter2'; SELECT * FROM t WHERE k = 'tbx_abcdefghijklmnopqrstuvwxyz234567'"
            .into();
    statement.reason = Some("near 'hunter2'".into());
    statement.params = Some(vec![
        Some("tbx_abcdefghijklmnopqrstuvwxyz234567".into()),
        None,
        Some("é".into()),
    ]);
    statement.relations = vec!["public.t".into(), "public.orders".into()];
    let cases = [
        (
            AuditEvent::Statement(statement.clone()),
            ParamLogging::Redacted,
            PINNED_STATEMENT_REDACTED,
        ),
        (
            AuditEvent::Statement(statement.clone()),
            ParamLogging::Full,
            PINNED_STATEMENT_FULL,
        ),
        (
            AuditEvent::Statement(statement),
            ParamLogging::Off,
            PINNED_STATEMENT_OFF,
        ),
    ];
    for (event, params, pinned) in cases {
        let p = prepare(event, params);
        assert_eq!((p.kind, p.payload.as_str()), ("statement", pinned), "{params:?}");
        assert_eq!(
            p.columns,
            Columns {
                user: Some("alice".into()),
                target: Some("shop".into()),
                grant_id: Some("g_1".into()),
                session_id: Some("s_1".into()),
            }
        );
    }
    for event in samples() {
        let want = (event.kind(), event.payload_json(), event.columns());
        let p = prepare(event, ParamLogging::Full);
        assert_eq!((p.kind, p.payload, p.columns), want);
    }
    let pinned: Vec<String> = samples()
        .into_iter()
        .map(|e| prepare(e, ParamLogging::Redacted).payload)
        .collect();
    assert_eq!(pinned.join("\n"), PINNED_SAMPLES);
}

const PINNED_STATEMENT_REDACTED: &str = "{\"class\":\"read\",\"decision\":\"allow\",\"grant_id\":\"g_1\",\"params\":[\"[redacted 36 bytes]\",null,\"[redacted 2 bytes]\"],\"reason\":\"near '[REDACTED]'\",\"relations\":[\"public.t\",\"public.orders\"],\"session_id\":\"s_1\",\"sql\":\"ALTER ROLE x PASSWORD '[REDACTED]'; SELECT * FROM t WHERE k = '[REDACTED]'\",\"sql_bytes\":48,\"sql_sha256\":\"0000000000000000000000000000000000000000000000000000000000000000\",\"sql_truncated\":true,\"statement_id\":1,\"target\":\"shop\",\"user\":\"alice\"}";
const PINNED_STATEMENT_FULL: &str = "{\"class\":\"read\",\"decision\":\"allow\",\"grant_id\":\"g_1\",\"params\":[\"[REDACTED]\",null,\"é\"],\"reason\":\"near '[REDACTED]'\",\"relations\":[\"public.t\",\"public.orders\"],\"session_id\":\"s_1\",\"sql\":\"ALTER ROLE x PASSWORD '[REDACTED]'; SELECT * FROM t WHERE k = '[REDACTED]'\",\"sql_bytes\":48,\"sql_sha256\":\"0000000000000000000000000000000000000000000000000000000000000000\",\"sql_truncated\":true,\"statement_id\":1,\"target\":\"shop\",\"user\":\"alice\"}";
const PINNED_STATEMENT_OFF: &str = "{\"class\":\"read\",\"decision\":\"allow\",\"grant_id\":\"g_1\",\"params\":null,\"reason\":\"near '[REDACTED]'\",\"relations\":[\"public.t\",\"public.orders\"],\"session_id\":\"s_1\",\"sql\":\"ALTER ROLE x PASSWORD '[REDACTED]'; SELECT * FROM t WHERE k = '[REDACTED]'\",\"sql_bytes\":48,\"sql_sha256\":\"0000000000000000000000000000000000000000000000000000000000000000\",\"sql_truncated\":true,\"statement_id\":1,\"target\":\"shop\",\"user\":\"alice\"}";
const PINNED_SAMPLES: &str = "{\"application_name\":\"psql\",\"client_addr\":\"127.0.0.1:50000\",\"grant_id\":\"g_1\",\"role\":\"read\",\"session_id\":\"s_1\",\"target\":\"shop\",\"tls_version\":\"TLSv1_3\",\"user\":\"alice\"}\n{\"client_addr\":\"127.0.0.1:50001\",\"reason\":\"no active grant\",\"target\":\"shop\",\"user\":\"mallory\"}\n{\"class\":\"read\",\"decision\":\"allow\",\"grant_id\":\"g_1\",\"params\":[\"[redacted 2 bytes]\",null],\"reason\":\"allowed by role read\",\"relations\":[\"public.orders\"],\"session_id\":\"s_1\",\"sql\":\"SELECT * FROM orders WHERE id = $1 AND note = $2\",\"sql_bytes\":48,\"sql_sha256\":\"0000000000000000000000000000000000000000000000000000000000000000\",\"sql_truncated\":true,\"statement_id\":1,\"target\":\"shop\",\"user\":\"alice\"}\n{\"command_tag\":\"SELECT 1\",\"duration_us\":1234,\"rows\":1,\"session_id\":\"s_1\",\"sqlstate\":\"00000\",\"statement_id\":1}\n{\"bytes_from_client\":100,\"bytes_to_client\":2000,\"duration_us\":5000000,\"ended_by\":\"bob (done)\",\"grant_id\":\"g_1\",\"reason\":\"client_exit\",\"session_id\":\"s_1\",\"statements\":1,\"target\":\"shop\",\"user\":\"alice\"}\n{\"after_us\":2000000,\"grant_id\":\"g_1\",\"outcome\":\"closed\",\"session_id\":\"s_1\",\"target\":\"shop\",\"user\":\"alice\"}\n{\"break_glass\":true,\"created_at\":\"2026-01-01T00:00:00Z\",\"created_by\":\"ops\",\"expires_at\":\"2026-01-01T00:30:00Z\",\"grant_id\":\"g_1\",\"reason\":\"incident 42\",\"role\":\"read\",\"starts_at\":\"2026-01-01T00:00:00Z\",\"target\":\"shop\",\"user\":\"alice\"}\n{\"grant_id\":\"g_1\",\"reason\":\"done\",\"revoked_at\":\"2026-01-01T00:00:00Z\",\"revoked_by\":\"bob\",\"target\":\"shop\",\"user\":\"alice\"}\n{\"expires_at\":\"2026-01-01T01:00:00Z\",\"extended_by\":\"ops\",\"grant_id\":\"g_1\",\"previous_expires_at\":\"2026-01-01T00:00:00Z\",\"reason\":\"still debugging\",\"target\":\"shop\",\"user\":\"alice\"}\n{\"action\":\"approved\",\"actor\":\"bob\",\"break_glass\":false,\"grant_id\":\"g_1\",\"reason\":\"matches INC-1\",\"request_id\":\"r_1\",\"role\":\"write\",\"target\":\"shop\",\"ticket\":\"INC-1\",\"ttl\":\"30m\",\"user\":\"alice\"}\n{\"cut\":\"2026-01-01T00:00:00Z\",\"dropped_partitions\":[\"audit_records_p20260101\"],\"instance\":\"tb-a\",\"local_anchor\":\"7:abababababababababababababababababababababababababababababababab\",\"pruned_local\":7,\"retain\":\"90d\"}\n{\"created_at\":\"2026-01-01T00:00:00Z\",\"created_by\":\"ops\",\"expires_at\":\"2026-01-31T00:00:00Z\",\"name\":\"ci-bot\",\"roles\":[\"admin\",\"auditor\"]}\n{\"name\":\"ci-bot\",\"revoked_at\":\"2026-01-01T00:00:00Z\",\"revoked_by\":\"ops\"}";
