//! Unit tests of [`super`]: each spelling of a secret PostgreSQL accepts, and odd input.

use super::*;

fn r(sql: &str) -> String {
    redact_sql(sql).into_owned()
}

#[test]
fn password_literals_in_role_statements() {
    assert_eq!(
        r("CREATE ROLE app LOGIN PASSWORD 'hunter2'"),
        "CREATE ROLE app LOGIN PASSWORD '[REDACTED]'"
    );
    assert_eq!(
        r("alter user bob with encrypted password 'md5abc' valid until 'infinity'"),
        "alter user bob with encrypted password '[REDACTED]' valid until 'infinity'"
    );
    assert_eq!(
        r("ALTER ROLE x PASSWORD E'it\\'s'; SELECT 1"),
        "ALTER ROLE x PASSWORD '[REDACTED]'; SELECT 1"
    );
    assert_eq!(
        r("CREATE USER u PASSWORD $pw$se'cret$pw$"),
        "CREATE USER u PASSWORD '[REDACTED]'"
    );
    assert_eq!(
        r("ALTER ROLE x PASSWORD /* c */ 'it''s'"),
        "ALTER ROLE x PASSWORD /* c */ '[REDACTED]'"
    );
    assert_eq!(r("ALTER ROLE x PASSWORD NULL"), "ALTER ROLE x PASSWORD NULL");
    assert_eq!(
        r("CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password 'pw')"),
        "CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password '[REDACTED]')"
    );
}

#[test]
fn keywords_inside_literals_and_identifiers_do_not_trigger() {
    let sql = "SELECT 'password' AS label, \"password\" FROM t";
    assert_eq!(r(sql), sql);
    // A comment is read as SQL (commented-out statements keep no secrets): its literal is hidden.
    assert_eq!(
        r("SELECT 'password' AS label FROM t -- password 'x'"),
        "SELECT 'password' AS label FROM t -- password '[REDACTED]'"
    );
    let sql = "SELECT * FROM keys WHERE id = 1";
    assert_eq!(r(sql), sql);
    assert!(
        matches!(redact_sql("SELECT 1"), Cow::Borrowed(_)),
        "fast path borrows"
    );
}

#[test]
fn credential_settings_and_columns() {
    assert_eq!(
        r("SET myapp.api_key = 'abc123'"),
        "SET myapp.api_key = '[REDACTED]'"
    );
    assert_eq!(
        r("set session app.secret to 'abc'; select 1"),
        "set session app.secret to '[REDACTED]'; select 1"
    );
    assert_eq!(
        r("ALTER DATABASE shop SET app.token = 'tok'"),
        "ALTER DATABASE shop SET app.token = '[REDACTED]'"
    );
    assert_eq!(
        r("UPDATE users SET api_key = 'k1', name = 'bob' WHERE id = 1"),
        "UPDATE users SET api_key = '[REDACTED]', name = 'bob' WHERE id = 1"
    );
    assert_eq!(
        r("UPDATE users SET password = 'pw' WHERE id = 1"),
        "UPDATE users SET password = '[REDACTED]' WHERE id = 1"
    );
    assert_eq!(
        r("SELECT set_config('app.password', 'pw', false)"),
        "SELECT set_config('app.password', '[REDACTED]', false)"
    );
    let harmless = "SET statement_timeout = '5s'";
    assert_eq!(r(harmless), harmless);
    let harmless = "SELECT set_config('search_path', 'public', false)";
    assert_eq!(r(harmless), harmless);
}

#[test]
fn conninfo_and_uri_passwords_inside_literals() {
    assert_eq!(
        r("SELECT dblink_connect('host=db1 user=u password=s3cret dbname=x')"),
        "SELECT dblink_connect('host=db1 user=u password=[REDACTED] dbname=x')"
    );
    assert_eq!(
        r("SELECT dblink_connect('host=db1 password = ''a b'' dbname=x')"),
        "SELECT dblink_connect('host=db1 password = [REDACTED] dbname=x')"
    );
    assert_eq!(
        r("CREATE SUBSCRIPTION s CONNECTION 'host=h sslpassword=k password=p' PUBLICATION p"),
        "CREATE SUBSCRIPTION s CONNECTION 'host=h sslpassword=[REDACTED] password=[REDACTED]' PUBLICATION p"
    );
    assert_eq!(
        r("SELECT dblink('postgresql://bob:pw@db:5432/x', 'select 1')"),
        "SELECT dblink('postgresql://bob:[REDACTED]@db:5432/x', 'select 1')"
    );
    assert_eq!(
        r("SELECT dblink('postgresql://db/x?user=bob&password=pw&sslmode=require', 'q')"),
        "SELECT dblink('postgresql://db/x?user=bob&password=[REDACTED]&sslmode=require', 'q')"
    );
    let harmless = "SELECT 'see https://example.com/x' AS url";
    assert_eq!(r(harmless), harmless);
}

#[test]
fn tokens_anywhere() {
    let t = "tbx_abcdefghijklmnopqrstuvwxyz234567";
    assert_eq!(
        r(&format!("SELECT '{t}' /* {t} */")),
        "SELECT '[REDACTED]' /* [REDACTED] */"
    );
    assert_eq!(
        redact_tokens("token tbxa_0123456789abcdef0123456789abcdef."),
        "token [REDACTED]."
    );
    assert_eq!(
        redact_tokens("SELECT * FROM tbx_users"),
        "SELECT * FROM tbx_users"
    );
    assert!(matches!(redact_tokens("plain"), Cow::Borrowed(_)));
}

#[test]
fn the_pre_check_finds_every_trigger_word() {
    for word in [
        "PASSword",
        "pwd",
        "SECRET",
        "toKen",
        "Key",
        "credential",
        "tbx_",
        "a://b",
    ] {
        assert!(might_hold_secret(&format!("select {word} from t")), "{word}");
    }
    assert!(!might_hold_secret(
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
    ));
    assert!(!might_hold_secret(""));
    assert!(!might_hold_secret("pas"));
}

#[test]
fn odd_input_never_panics() {
    for sql in [
        "'",
        "E'\\",
        "$$",
        "$a$ unterminated",
        "PASSWORD",
        "SET",
        "SET x =",
        "password=",
        "/* ",
        "\"",
        "set_config(",
        "SET a.b",
        "ü PASSWORD 'ä'",
        "postgresql://:@",
        "password=''",
        "U&'",
        "U&'\\",
        "E'\\u12",
        "set_config(a =>",
        "set_config(,,)",
        "OPTIONS (",
        "OPTIONS (add",
        "ALTER ROLE x PASSWORD U&'x' UESCAPE",
        "\0 password",
        "$a$ password $a",
        "$a$ password $a$",
        "DO $$ PASSWORD $$",
        "DO $$$$",
        "'PASSWORD '",
        "'PASSWORD ' ||",
        "format('PASSWORD %L',",
        "format('PASSWORD %L')",
        "'PASSWORD %L', (",
        "'set x.y = ' )",
        "'set_config(''a.b'', '",
        "SET a.b = ,",
        "SET a.b = 'x', (",
        "UPDATE t SET a.b = 1, c[1] = 2, (d, e) = (1, 2)",
        "'ALTER ROLE x PASSWORD $1'",
        "E'PASSWORD \\''\\xff\\''",
        "$x$ALTER ROLE a PASSWORD 'p$x'$x$",
        "N'PASSWORD ''p'''",
        "B'0101' || 'password ''x'''",
    ] {
        let _ = redact_sql(sql);
    }
    assert_eq!(r("ü PASSWORD 'ä'"), "ü PASSWORD '[REDACTED]'");
    // Every prefix of a statement that nests literals (cut anywhere, even mid-literal).
    let nested = "DO $$ BEGIN EXECUTE format('ALTER ROLE %I PASSWORD %L', 'x', E'p\\'w'); \
                      EXECUTE 'SET my.pw = ''ü'''; PERFORM set_config('a.b', U&'\\0041', false); END $$";
    for end in (0..=nested.len()).filter(|&e| nested.is_char_boundary(e)) {
        let _ = redact_sql(&nested[..end]);
    }
}

/// See: issue 16, finding 8: PASSWORD literals and other secrets leaked into the audit trail
/// when spelled in ways the old hand-written lexer did not read as PostgreSQL does. Each row:
/// the statement, the secret that must be gone, and text that must stay verbatim.
const SPELLINGS: &[(&str, &str, &str)] = &[
            ("ALTER ROLE x PASSWORD U&'s\\0065cret1'", "0065cret1", "ALTER ROLE x PASSWORD "),
            ("ALTER ROLE x PASSWORD U&'s!0065cret1' UESCAPE '!'", "s!0065cret1", "UESCAPE '!'"),
            ("ALTER ROLE x PASSWORD u&'secret1'", "secret1", "ALTER ROLE x"),
            ("ALTER ROLE x PASSWORD 'abc'\n'secret1' VALID UNTIL 'infinity'", "secret1", "VALID UNTIL 'infinity'"),
            ("ALTER ROLE x PASSWORD 'abc'  \n  'secret1'", "secret1", "ALTER ROLE x PASSWORD"),
            ("ALTER ROLE x PASSWORD E'sec\\x72et1'", "x72et1", "ALTER ROLE x"),
            ("ALTER ROLE x PASSWORD E'a\\'secret1'", "secret1", "ALTER ROLE x"),
            ("ALTER ROLE x PASSWORD $$secret1$$", "secret1", "ALTER ROLE x PASSWORD"),
            ("ALTER ROLE x PASSWORD $t$secret1$t$ LOGIN", "secret1", " LOGIN"),
            ("ALTER ROLE x WITH LOGIN PASSWORD 'secret1'", "secret1", "WITH LOGIN PASSWORD"),
            ("alter user x encrypted password 'secret1'", "secret1", "alter user x"),
            ("CREATE USER u WITH ENCRYPTED PASSWORD 'secret1' CREATEDB", "secret1", " CREATEDB"),
            ("CREATE ROLE u PASSWORD N'secret1'", "secret1", "CREATE ROLE u"),
            ("ALTER ROLE x PASSWORD -- c\n 'secret1'", "secret1", "-- c"),
            ("ALTER ROLE x PASSWORD 'a\\' secret1'", "secret1", "ALTER ROLE x "),
            (
                "ALTER USER MAPPING FOR bob SERVER s OPTIONS (SET password 'secret1')",
                "secret1",
                "OPTIONS (SET password ",
            ),
            (
                "ALTER USER MAPPING FOR bob SERVER s OPTIONS (ADD \"password\" 'secret1', user 'bob')",
                "secret1",
                "user 'bob')",
            ),
            (
                "CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password U&'secret1')",
                "secret1",
                "(user 'bob', password ",
            ),
            (
                "CREATE SERVER s FOREIGN DATA WRAPPER w OPTIONS (host 'h', aws_secret_access_key 'secret1')",
                "secret1",
                "(host 'h', ",
            ),
            (
                "SELECT set_config(setting_name => 'app.password', new_value => 'secret1', is_local => false)",
                "secret1",
                "is_local => false)",
            ),
            (
                "SELECT set_config(new_value := 'secret1', setting_name := 'app.api_key', is_local := true)",
                "secret1",
                "setting_name := 'app.api_key'",
            ),
            ("SELECT set_config('app.pass' || 'word', 'secret1', false)", "secret1", "SELECT set_config("),
            ("SELECT pg_catalog.set_config(U&'app.passwor\\0064', 'secret1', false)", "secret1", "false)"),
            ("SELECT set_config('app.token', 'sec' || 'ret1', false)", "ret1", "SELECT set_config('app.token', "),
            ("SET app.password = U&'secret1'", "secret1", "SET app.password = "),
            ("SET app.password TO 'abc'\n'secret1'", "secret1", "SET app.password TO "),
            ("SELECT dblink_connect('host=h password=secret1')", "secret1", "'host=h password="),
            ("SELECT dblink_connect(E'host=h \\x70assword=secret1')", "secret1", "SELECT dblink_connect("),
            ("SELECT dblink_connect(U&'host=h \\0070assword=secret1')", "secret1", "SELECT dblink_connect("),
            ("SELECT dblink_connect('host=h '\n'password=secret1')", "secret1", "SELECT dblink_connect("),
            ("SELECT dblink_connect($c$host=h password=secret1$c$)", "secret1", "$c$host=h password="),
            ("SELECT dblink('postgresql://u:secret1@h/db', 'select 1')", "secret1", "'select 1')"),
            // See: the attack round on issue 16's fix: SQL inside string literals is redacted as SQL.
            (
                "DO $$ BEGIN EXECUTE 'ALTER ROLE x PASSWORD ''sekrit17'''; END $$",
                "sekrit17",
                "DO $$ BEGIN EXECUTE 'ALTER ROLE x PASSWORD ''",
            ),
            (
                "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'x') THEN CREATE ROLE x LOGIN PASSWORD 'sekrit17'; END IF; END$$",
                "sekrit17",
                "WHERE rolname = 'x') THEN CREATE ROLE x LOGIN PASSWORD ",
            ),
            (
                "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $f$ BEGIN ALTER ROLE x PASSWORD 'sekrit17'; END $f$",
                "sekrit17",
                "AS $f$ BEGIN ALTER ROLE x PASSWORD ",
            ),
            (
                "DO $$ BEGIN EXECUTE format('ALTER ROLE %I PASSWORD %L', 'x', 'sekrit17'); END $$",
                "sekrit17",
                "EXECUTE format('ALTER ROLE %I PASSWORD %L', ",
            ),
            ("SELECT format('ALTER ROLE %I PASSWORD %L', 'x', 'sekrit17')", "sekrit17", "PASSWORD %L', "),
            ("SELECT format('ALTER ROLE %I PASSWORD ''%s''', 'x', 'sekrit17')", "sekrit17", "SELECT format("),
            ("SELECT format('ALTER ROLE x PASSWORD %1$L', 'sekrit17')", "sekrit17", "SELECT format("),
            ("SELECT format('SET my.pw = %L', 'sekrit17')", "sekrit17", "SELECT format('SET my.pw = %L', "),
            (
                "DO $$ BEGIN EXECUTE 'ALTER ROLE x PASSWORD ' || quote_literal('sekrit17'); END $$",
                "sekrit17",
                "EXECUTE 'ALTER ROLE x PASSWORD ' ",
            ),
            (
                "SELECT dblink_exec('dbname=d', 'ALTER ROLE x PASSWORD ''sekrit17''')",
                "sekrit17",
                "dblink_exec('dbname=d', 'ALTER ROLE x PASSWORD ''",
            ),
            (
                "DO E'BEGIN EXECUTE ''ALTER ROLE x PASSWORD ''''sekrit17''''''; END'",
                "sekrit17",
                "DO E'BEGIN EXECUTE ''ALTER ROLE x PASSWORD ''''",
            ),
            ("DO U&'BEGIN EXECUTE ''ALTER ROLE x PASSWORD ''''sekrit17''''''; END'", "sekrit17", "DO "),
            (
                "DO $$ BEGIN EXECUTE E'ALTER ROLE x PASSWORD \\'sekrit17\\''; END $$",
                "sekrit17",
                "DO $$ BEGIN EXECUTE ",
            ),
            (
                "DO $$ BEGIN PERFORM dblink_exec('c', $q$ALTER ROLE x PASSWORD 'sekrit17'$q$); END $$",
                "sekrit17",
                "PERFORM dblink_exec('c', $q$ALTER ROLE x PASSWORD ",
            ),
            ("DO $$ BEGIN EXECUTE 'SET my.pw = ''sekrit17'''; END $$", "sekrit17", "EXECUTE 'SET my.pw = "),
            (
                "DO $$ BEGIN EXECUTE 'SET ' || 'my.pw = ' || quote_literal('sekrit17'); END $$",
                "sekrit17",
                "EXECUTE 'SET ' ",
            ),
            (
                "DO $$ BEGIN EXECUTE 'SET my.pw ' || '= ' || quote_literal('sekrit17'); END $$",
                "sekrit17",
                "EXECUTE 'SET my.pw ' ",
            ),
            // See: the attack round on issue 16's fix: values of custom (dotted) settings are hidden.
            ("SELECT set_config('my.pw', 'sekrit09', false)", "sekrit09", "SELECT set_config('my.pw', "),
            (
                "SELECT set_config(new_value => 'sekrit09', setting_name => 'app.dsn', is_local => false)",
                "sekrit09",
                "setting_name => 'app.dsn', is_local => false)",
            ),
            ("SET my.pw = 'sekrit09'", "sekrit09", "SET my.pw = "),
            ("set session \"app.pw\" to 'sekrit09'; select 1", "sekrit09", "; select 1"),
            ("SET LOCAL my.pw = 'a', 'sekrit09'", "sekrit09", "SET LOCAL my.pw = "),
            ("ALTER ROLE bob SET app.pw = 'sekrit09'", "sekrit09", "ALTER ROLE bob SET app.pw = "),
            ("ALTER ROLE bob IN DATABASE d SET app.pw TO 'sekrit09'", "sekrit09", "IN DATABASE d SET app.pw TO "),
            ("ALTER DATABASE d SET my.pw = sekrit09", "sekrit09", "ALTER DATABASE d SET my.pw = "),
            // PostgreSQL's lexer refuses these: everything from the first trigger word is hidden.
            ("ALTER ROLE x PASSWORD 'secret1", "secret1", "ALTER ROLE x "),
            ("ALTER ROLE x PASSWORD $$secret1", "secret1", "ALTER ROLE x "),
            ("ALTER ROLE x /* PASSWORD 'secret1'", "secret1", "ALTER ROLE x /* "),
            ("ALTER ROLE x PASSWORD 'secret1'\0", "secret1", "ALTER ROLE x "),
    ];

/// Every row of [`SPELLINGS`].
#[test]
fn every_spelling_of_a_secret_is_hidden_and_the_rest_kept() {
    for (sql, secret, kept) in SPELLINGS {
        let out = r(sql);
        assert!(!out.contains(secret), "{sql:?} -> {out:?} still holds {secret:?}");
        assert!(out.contains(kept), "{sql:?} -> {out:?} lost {kept:?}");
        assert!(out.contains(REDACTED), "{sql:?} -> {out:?}");
    }
    // Exact output where the edit is by byte range.
    assert_eq!(
        r("ALTER ROLE x PASSWORD U&'s\\0065cret1' VALID UNTIL '2030-01-01'"),
        "ALTER ROLE x PASSWORD '[REDACTED]' VALID UNTIL '2030-01-01'"
    );
    assert_eq!(
        r("SELECT set_config(setting_name => 'app.password', new_value => 'secret1', is_local => false)"),
        "SELECT set_config(setting_name => 'app.password', new_value => '[REDACTED]', is_local => false)"
    );
}

/// PostgreSQL's own settings keep their values (only custom, dotted ones are hidden), and
/// literals without a secret in them are kept.
#[test]
fn own_settings_and_plain_literals_are_kept() {
    for sql in [
        "SET search_path = public, app",
        "SET statement_timeout TO '5s'",
        "SELECT set_config('statement_timeout', '5s', false)",
        "ALTER ROLE bob SET work_mem = '64MB'",
        "ALTER ROLE bob SET my.pw TO DEFAULT",
        "UPDATE t SET a = 1, b = 'x' WHERE c.d = 2",
        "DO $$ BEGIN RAISE NOTICE 'hello %', now(); END $$",
        "SELECT 'password reset for %', format('%s', x) FROM t",
    ] {
        assert_eq!(r(sql), sql);
    }
    assert_eq!(
        r("DO $$ BEGIN EXECUTE 'ALTER ROLE x PASSWORD ''sekrit17'''; END $$"),
        "DO $$ BEGIN EXECUTE 'ALTER ROLE x PASSWORD ''[REDACTED]'''; END $$"
    );
    assert_eq!(
        r("SELECT format('ALTER ROLE %I PASSWORD %L', 'x', 'sekrit17')"),
        "SELECT format('ALTER ROLE %I PASSWORD %L', '[REDACTED]', '[REDACTED]')"
    );
    assert_eq!(
        r("DO E'BEGIN EXECUTE ''ALTER ROLE x PASSWORD ''''s\\\\ek''''''; END'"),
        "DO E'BEGIN EXECUTE ''ALTER ROLE x PASSWORD ''''[REDACTED]''''''; END'"
    );
}

/// Literals nest without bound in the text; past [`MAX_LITERAL_NESTING`] levels a literal with
/// a secret marker is hidden whole.
#[test]
fn deep_nesting_is_hidden_whole() {
    let mut sql = "ALTER ROLE x PASSWORD 'sekrit17'".to_owned();
    for _ in 0..12 {
        sql = format!("SELECT dblink_exec('c', '{}')", sql.replace('\'', "''"));
    }
    let out = r(&sql);
    assert!(!out.contains("sekrit17"), "{out}");
    assert!(out.starts_with("SELECT dblink_exec('c', "), "{out}");
}

#[test]
fn hidden_pieces_are_scrubbed_from_text_that_quotes_them() {
    let (sql, hidden) = redact_sql_secrets("ALTER ROLE x PASSWORD 'admin-p'\n'w-c05d17'");
    assert_eq!(sql, "ALTER ROLE x PASSWORD '[REDACTED]'");
    let reason = "sqlparser: Expected: end of statement, found: 'w-c05d17' at Line: 2";
    assert_eq!(
        scrub(reason, &hidden),
        "sqlparser: Expected: end of statement, found: '[REDACTED]' at Line: 2"
    );
    let (_, hidden) = redact_sql_secrets("ALTER ROLE x PASSWORD 'secret1");
    assert!(scrub("near \"'secret1\"", &hidden).contains(REDACTED));
    let (_, none) = redact_sql_secrets("SELECT 1");
    assert!(matches!(scrub("anything", &none), Cow::Borrowed(_)));
}

#[test]
fn escapes_without_secrets_are_kept() {
    for sql in [
        "SELECT E'a\\nb', U&'d\\0061t\\+000061' FROM t",
        "SELECT regexp_match(x, '\\d+') FROM t",
        "SELECT set_config('search_path', E'public', false)",
        "SELECT set_config(setting_name => 'work_mem', new_value => '64MB', is_local => true)",
        "SELECT $1::text, 'it''s'",
    ] {
        assert_eq!(r(sql), sql);
    }
    assert_eq!(
        r("SELECT set_config('app.password', $1, false)"),
        "SELECT set_config('app.password', $1, false)",
        "a parameter is left to audit.params"
    );
}

#[test]
fn literals_are_read_as_the_server_reads_them() {
    let v = |t: &str| parse_literal(t, None).map(|l| l.value);
    assert_eq!(v("'it''s'").as_deref(), Some("it's"));
    assert_eq!(v("E'\\x41\\101\\u0041\\n'").as_deref(), Some("AAA\n"));
    assert_eq!(v("U&'\\0041\\+000042\\\\'").as_deref(), Some("AB\\"));
    assert_eq!(
        parse_literal("U&'!0041'", Some('!')).map(|l| l.value).as_deref(),
        Some("A")
    );
    assert_eq!(v("'a'\n  'b'").as_deref(), Some("ab"));
    assert_eq!(v("$x$a'b$x$").as_deref(), Some("a'b"));
    assert_eq!(v("'a' 'b'"), None, "no newline: not a continuation");
    assert_eq!(v("U&'\\00'"), None);
    assert_eq!(parse_literal("'ab'", None).unwrap().raw_content, Some(1..3));
    assert_eq!(parse_literal("'a'\n'b'", None).unwrap().raw_content, None);
}

#[test]
fn params_follow_the_policy() {
    let p = Some(vec![Some("hello".to_owned()), None]);
    assert_eq!(redact_params(p.clone(), ParamLogging::Off), None);
    assert_eq!(redact_params(p.clone(), ParamLogging::Full), p);
    assert_eq!(
        redact_params(p, ParamLogging::Redacted),
        Some(vec![Some("[redacted 5 bytes]".into()), None])
    );
    assert_eq!(redact_params(None, ParamLogging::Full), None);
}

/// Attack finding F7 (session 3): a secret literal holding a backslash hid everything after it, so
/// an engineer could keep the rest of a statement (`OR true`, a second statement) out of the audit
/// trail. Literals are read with `standard_conforming_strings = on` (the relay guarantees it), so
/// only the literal is hidden and the rest stays verbatim.
#[test]
fn a_backslash_in_a_secret_literal_hides_the_literal_not_the_rest_of_the_statement() {
    for (sql, kept) in [
        ("SELECT * FROM users WHERE password = 'a\\' OR true", "' OR true"),
        (
            "SELECT 1 FROM users WHERE pwd = 'x\\'; DELETE FROM orders",
            "'; DELETE FROM orders",
        ),
        (
            "ALTER ROLE x PASSWORD 'a\\' VALID UNTIL 'infinity'",
            "' VALID UNTIL 'infinity'",
        ),
        ("ALTER ROLE x PASSWORD 'a\\' || 'visible'", "' || 'visible'"),
    ] {
        let out = redact_sql(sql);
        assert!(out.contains(&format!("[REDACTED]{kept}")), "{sql} -> {out}");
        assert!(!out.contains("'a\\'") && !out.contains("'x\\'"), "{sql} -> {out}");
    }
}

/// Found by tests/fuzz.rs (`secrets_never_survive_redaction`): commented-out SQL kept its secrets
/// (`--; ALTER ROLE app PASSWORD 'aaaa0000aaaa'`). Comments are read as SQL by the same rules.
#[test]
fn commented_out_secrets_are_hidden_and_the_comment_kept() {
    for (sql, secret, kept) in [
        (
            "--; ALTER ROLE app PASSWORD 'aaaa0000aaaa'",
            "aaaa0000aaaa",
            "--; ALTER ROLE app PASSWORD ",
        ),
        (
            "SELECT 1 /* ALTER ROLE x PASSWORD 'pw12345' */",
            "pw12345",
            "SELECT 1 /* ALTER ROLE x PASSWORD ",
        ),
        (
            "SELECT 1 -- set my.api_key = 'k3y-value'\n",
            "k3y-value",
            "SELECT 1 -- set my.api_key = ",
        ),
        (
            "SELECT 1 /* outer /* PASSWORD 'nested99' */ */",
            "nested99",
            "SELECT 1 /* outer /* PASSWORD ",
        ),
        (
            "SELECT 1 -- dblink_connect('host=h password=conn99')",
            "conn99",
            "dblink_connect(",
        ),
        (
            "SELECT 1 -- PASSWORD 'unterminated99",
            "unterminated99",
            "SELECT 1 -- ",
        ),
    ] {
        let out = redact_sql(sql);
        assert!(!out.contains(secret), "{sql} -> {out}");
        assert!(out.contains(kept), "{sql} -> {out}");
    }
    assert_eq!(
        redact_sql("SELECT 1 -- just a comment"),
        "SELECT 1 -- just a comment"
    );
}

/// Attack review, session 4 (F2): a literal that only looks like the start of SQL waiting for a
/// secret (`'alter role x password '`) hid everything after it, so an engineer could keep the
/// condition of a DELETE or the columns of a SELECT out of the audit record. Only the values after
/// it are hidden now; names, keywords and operators stay.
#[test]
fn a_literal_that_looks_like_open_secret_sql_hides_values_not_the_statement() {
    let out = redact_sql("DELETE FROM items WHERE 'alter role x password ' IS NOT NULL AND name = 'banana'");
    assert!(out.contains("IS NOT NULL AND name = "), "{out}");
    assert!(
        !out.contains("banana"),
        "values after it stay hidden (fail closed): {out}"
    );
    let out = redact_sql("SELECT 'create role x password ', name, qty FROM items WHERE name = 'cherry'");
    assert!(out.contains(", name, qty FROM items WHERE name = "), "{out}");
    // The secret such SQL is completed with stays hidden.
    let out = redact_sql("SELECT 'ALTER ROLE x PASSWORD ' || quote_literal('pw12345')");
    assert!(
        !out.contains("pw12345") && out.contains("quote_literal("),
        "{out}"
    );
    let out = redact_sql("SELECT format('ALTER ROLE x PASSWORD %L', 'x', 98765432)");
    assert!(!out.contains("98765432"), "{out}");
}

/// Attack review, session 4 (F5): libpq takes any whitespace around `=` in conninfo; only spaces
/// were skipped, so a tab or newline kept the password in the record.
#[test]
fn conninfo_passwords_with_any_whitespace_around_the_equals_sign_are_hidden() {
    for sql in [
        "SELECT dblink_connect('c', 'host=h password=\thunter2')",
        "SELECT dblink_connect('c', E'host=h password=\\thunter2')",
        "SELECT dblink_connect('c', 'host=h password\t=hunter2')",
        "CREATE SUBSCRIPTION s CONNECTION 'host=h\n  password=\n   hunter2' PUBLICATION p",
    ] {
        let out = redact_sql(sql);
        assert!(!out.contains("hunter2"), "{sql:?} -> {out}");
    }
}
