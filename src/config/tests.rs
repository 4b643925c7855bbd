//! Unit tests of the config: defaults, every problem with its path, typed once.

use super::testing::MINIMAL;
use super::*;

#[test]
fn minimal_config_is_valid_with_defaults() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    assert_eq!(c.proxy.tls, ClientTls::Disabled);
    assert_eq!(c.targets["shop"].port, 5432);
    assert_eq!(c.roles["read"].max_ttl, Duration::from_secs(8 * 3600));
    assert_eq!(c.audit.durability, Durability::Fsync);
    assert_eq!(c.proxy.cancel_parallelism_per_target, 8);
    assert_eq!(c.proxy.upstream_stop_timeout, Duration::from_secs(2));
    assert_eq!(
        c.proxy.expiry_warnings,
        vec![Duration::from_secs(300), Duration::from_secs(60)]
    );
    assert_eq!(
        c.targets["shop"].credentials["read"]
            .password
            .as_ref()
            .unwrap()
            .expose(),
        "pw"
    );
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let text = MINIMAL
        .replace("listen = \"127.0.0.1:6432\"", "listen = \"nowhere\"\nlisen = 1")
        .replace(
            "max_ttl = \"8h\"",
            "max_ttl = \"forever\"\nallow_everything = true",
        )
        .replace("allow = [\"read\"]", "allow = [\"read\", \"sudo\"]")
        .replace(
            "[store]\n        url = \"sqlite::memory:\"",
            "[store]\n        url = \"mysql://x\"",
        );
    let err = Config::from_toml_str(&text).unwrap_err();
    let ConfigError::Invalid(problems) = err else {
        panic!("expected Invalid, got {err}")
    };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for expected in [
        "proxy.lisen",
        "roles.read.allow_everything",
        "proxy.listen",
        "roles.read.max_ttl",
        "roles.read.allow[1]",
        "store.url",
    ] {
        assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
    }
}

#[test]
fn credential_for_unknown_role_and_missing_env_are_reported() {
    let text = MINIMAL.replace(
            "[roles.read]",
            "[targets.shop.credentials.write]\nuser = \"w\"\npassword_env = \"TIMEBOX_TEST_SURELY_UNSET_VAR\"\n[roles.read]",
        );
    let ConfigError::Invalid(problems) = Config::from_toml_str(&text).unwrap_err() else {
        panic!()
    };
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert!(
        text.iter()
            .any(|t| t.starts_with("targets.shop.credentials.write: no role \"write\"")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.starts_with("targets.shop.credentials.write.password_env: environment variable")),
        "{text:?}"
    );
}

#[test]
fn tls_required_needs_cert_and_key() {
    let text = MINIMAL.replace("tls = \"disabled\"", "tls = \"required\"");
    let ConfigError::Invalid(problems) = Config::from_toml_str(&text).unwrap_err() else {
        panic!()
    };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert!(
        paths.contains(&"proxy.tls_cert") && paths.contains(&"proxy.tls_key"),
        "{paths:?}"
    );
}

#[test]
fn bad_admin_token_hash_is_reported() {
    let text = MINIMAL.replace(
        "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
        "nothex",
    );
    let ConfigError::Invalid(problems) = Config::from_toml_str(&text).unwrap_err() else {
        panic!()
    };
    assert_eq!(problems[0].path, "admin.tokens[0].sha256");
}

#[test]
fn the_example_config_uses_only_known_keys_and_valid_values() {
    // Everything in config/timebox.example.toml must parse; the only problems allowed are the
    // ones that depend on the machine (files and environment variables that do not exist here).
    let text = include_str!("../../config/timebox.example.toml");
    match Config::from_toml_str(text) {
        Ok(_) => {}
        Err(ConfigError::Invalid(problems)) => {
            for p in problems {
                assert!(p.on_host, "example config problem: {p}");
            }
        }
        Err(e) => panic!("example config does not parse: {e}"),
    }
}

#[test]
fn workflow_webhooks_and_requests_parse_and_bad_values_are_reported() {
    let ok = format!(
            "{}\napprovals = 2\nbreak_glass = true\nbreak_glass_max_ttl = \"30m\"\n\
             [requests]\nreview_window = \"15m\"\n\
             [[webhooks]]\nurl = \"https://hooks.example.com/x\"\nevents = [\"break_glass\", \"request_created\"]\n",
            MINIMAL.trim_end()
        );
    let c = Config::from_toml_str(&ok).unwrap();
    let w = c.workflow("read");
    assert_eq!((w.approvals, w.break_glass), (2, true));
    assert_eq!(w.break_glass_max_ttl, Duration::from_secs(1800));
    assert_eq!(c.requests.review_window, Duration::from_secs(900));
    assert!(c.webhooks[0].wants(WebhookEvent::BreakGlass) && !c.webhooks[0].wants(WebhookEvent::GrantIssued));

    let defaults = Config::from_toml_str(MINIMAL).unwrap();
    assert_eq!(defaults.workflow("read"), RoleWorkflow::default());
    assert_eq!(defaults.requests.review_window, Duration::from_secs(3600));
    assert!(defaults.webhooks.is_empty());

    let bad = format!(
        "{}\napprovals = 0\nbreak_glass_max_ttl = \"9h\"\n\
             [[webhooks]]\nurl = \"ftp://x\"\nevents = [\"everything\"]\n",
        MINIMAL.trim_end()
    );
    let ConfigError::Invalid(problems) = Config::from_toml_str(&bad).unwrap_err() else {
        panic!()
    };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for expected in [
        "roles.read.approvals",
        "roles.read.break_glass_max_ttl",
        "webhooks[0].url",
        "webhooks[0].events[0]",
    ] {
        assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
    }
}

#[test]
fn webhook_event_names_become_events_once_and_a_star_is_every_event() {
    let with = |events: &str| {
        let text = format!(
            "{}\n[[webhooks]]\nurl = \"https://hooks.example.com/x\"\nevents = {events}\n",
            MINIMAL.trim_end()
        );
        Config::from_toml_str(&text).unwrap().webhooks.remove(0)
    };
    assert_eq!(with(r#"["*"]"#).events, WebhookEvent::ALL.to_vec());
    assert_eq!(
        with(r#"["grant_revoked", "break_glass", "grant_revoked"]"#).events,
        vec![WebhookEvent::BreakGlass, WebhookEvent::GrantRevoked]
    );
}

#[test]
fn bench_knobs_are_off_by_default() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    assert_eq!(c.bench, BenchKnobs::default());
    assert!(!c.bench.skip_policy() && !c.bench.skip_audit() && !c.bench.any());
}

/// Guards against a production build that can turn off enforcement or auditing: without the
/// `bench-knobs` feature a `[bench]` table is an error, whatever it says.
#[cfg(not(feature = "bench-knobs"))]
#[test]
fn bench_table_is_refused_without_the_bench_knobs_feature() {
    for table in [
        "[bench]\nskip_policy = true",
        "[bench]\nskip_audit = true",
        "[bench]",
    ] {
        let text = format!("{}\n{table}\n", MINIMAL.trim_end());
        let ConfigError::Invalid(problems) = Config::from_toml_str(&text).unwrap_err() else {
            panic!("expected Invalid for {table:?}")
        };
        assert_eq!(
            problems,
            vec![ConfigProblem {
                path: "bench".into(),
                message: "[bench] needs a timebox built with --features bench-knobs (benchmarks only)".into(),
                on_host: false,
            }],
            "{table:?}"
        );
    }
}

#[cfg(feature = "bench-knobs")]
#[test]
fn bench_table_sets_the_knobs_with_the_bench_knobs_feature() {
    let text = format!("{}\n[bench]\nskip_policy = true\n", MINIMAL.trim_end());
    let c = Config::from_toml_str(&text).unwrap();
    assert!(c.bench.skip_policy() && !c.bench.skip_audit() && c.bench.any());
    let text = format!("{}\n[bench]\nskip_audit = true\n", MINIMAL.trim_end());
    let c = Config::from_toml_str(&text).unwrap();
    assert!(!c.bench.skip_policy() && c.bench.skip_audit());
    let text = format!("{}\n[bench]\nskip_everything = true\n", MINIMAL.trim_end());
    let ConfigError::Invalid(problems) = Config::from_toml_str(&text).unwrap_err() else {
        panic!()
    };
    // (serde_ignored writes an optional table's keys as `bench.?.key`, like `audit.?.key`.)
    assert!(problems[0].path.ends_with("skip_everything"), "{problems:?}");
    assert_eq!(problems[0].message, "unknown key");
}

#[test]
fn secrets_do_not_print() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    let dump = format!("{c:?}");
    assert!(!dump.contains("\"pw\""), "{dump}");
}

#[test]
fn role_policy_options_parse_and_bad_values_are_reported_with_their_path() {
    let ok = MINIMAL.replace(
        "max_ttl = \"8h\"",
        "max_ttl = \"8h\"\nrequire_where = true\nstatement_timeout = \"30s\"\nallow_unparsed = false\n\
             allow_functions = [\"report_totals\", \"app.safe_fn\"]\n\
             tables = { allow = [\"public.*\"], deny = [\"public.secrets\"] }",
    );
    let c = Config::from_toml_str(&ok).unwrap();
    let role = &c.roles["read"];
    assert!(role.require_where && !role.allow_unparsed);
    assert_eq!(role.statement_timeout, Some(Duration::from_secs(30)));
    assert_eq!(role.allow_functions, ["report_totals", "app.safe_fn"]);
    let tables = role.tables.as_ref().unwrap();
    assert_eq!(tables.allow, ["public.*"]);
    assert_eq!(tables.deny, ["public.secrets"]);

    let bad = MINIMAL.replace(
        "max_ttl = \"8h\"",
        "max_ttl = \"8h\"\nstatement_timeout = \"soon\"\nallow_functions = [\"Bad Name\"]\n\
             tables = { allow = [\"orders\"], deny = [\"public.Secrets\"], alow = [] }",
    );
    let ConfigError::Invalid(problems) = Config::from_toml_str(&bad).unwrap_err() else {
        panic!()
    };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for expected in [
        "roles.read.statement_timeout",
        "roles.read.allow_functions[0]",
        "roles.read.tables.allow[0]",
        "roles.read.tables.deny[0]",
        "roles.read.tables.alow",
    ] {
        assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
    }
}

#[test]
fn candidate_roles_validate_alone_with_their_paths() {
    let roles = roles_from_json(serde_json::json!({
        "read": {"allow": ["read"], "max_ttl": "1h", "tables": {"allow": ["public.*"]}},
    }))
    .unwrap();
    assert_eq!(roles["read"].allow, vec![StatementClass::Read]);
    let Err(ConfigError::Invalid(problems)) = roles_from_json(serde_json::json!({
        "read": {"allow": ["read", "everything"], "max_ttl": "soon", "alow": []},
    })) else {
        panic!("invalid roles must be refused");
    };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for wanted in ["roles.read.allow[1]", "roles.read.max_ttl", "roles.read.alow"] {
        assert!(paths.contains(&wanted), "{wanted} missing from {paths:?}");
    }
    assert!(roles_from_json(serde_json::json!(["not", "a", "table"])).is_err());
}

#[test]
fn principal_roles_parse_once_from_their_config_names() {
    let names: Vec<&str> = PrincipalRole::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(names, PRINCIPAL_ROLES, "the CLI's list is the enum's names");
    for role in PrincipalRole::ALL {
        assert_eq!(PrincipalRole::from_name(role.as_str()), Some(role));
        assert_eq!(role.to_string(), role.as_str());
    }
    for bad in ["", "root", "Admin", " admin", "auditors", "read"] {
        assert_eq!(PrincipalRole::from_name(bad), None, "{bad:?}");
    }
    let c = Config::from_toml_str(
            "[proxy]\nlisten = \"127.0.0.1:0\"\ntls = \"disabled\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[admin.tokens]]\nname = \"ops\"\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n\
             roles = [\"approver\", \"auditor\"]\n",
        )
        .unwrap();
    assert_eq!(
        c.admin.tokens[0].roles,
        [PrincipalRole::Approver, PrincipalRole::Auditor]
    );
    let err = Config::from_toml_str(
            "[proxy]\nlisten = \"127.0.0.1:0\"\ntls = \"disabled\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[admin.tokens]]\nname = \"ops\"\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n\
             roles = [\"admin\", \"Admin\"]\n",
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("admin.tokens[0].roles[1]"), "{err}");
}

#[test]
fn statement_classes_parse_once_from_their_config_names() {
    for name in STATEMENT_CLASSES {
        let class = StatementClass::from_name(name).expect(name);
        assert_eq!(class.as_str(), *name);
    }
    for bad in ["unparsed", "READ", "", "select"] {
        assert_eq!(StatementClass::from_name(bad), None, "{bad:?}");
    }
}

#[test]
fn cancel_limits_are_validated_with_their_paths() {
    let with = |extra: &str| {
        MINIMAL.replace(
            "listen = \"127.0.0.1:6432\"",
            &format!("listen = \"127.0.0.1:6432\"\n{extra}"),
        )
    };
    let c = Config::from_toml_str(&with(
        "cancel_parallelism_per_target = 2\nupstream_stop_timeout = \"500ms\"",
    ))
    .unwrap();
    assert_eq!(c.proxy.cancel_parallelism_per_target, 2);
    assert_eq!(c.proxy.upstream_stop_timeout, Duration::from_millis(500));
    let err = Config::from_toml_str(&with(
        "cancel_parallelism_per_target = 0\nupstream_stop_timeout = \"0s\"",
    ))
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("proxy.cancel_parallelism_per_target"), "{text}");
    assert!(text.contains("proxy.upstream_stop_timeout"), "{text}");
    let err = Config::from_toml_str(&with("upstream_stop_timeout = \"soon\"")).unwrap_err();
    assert!(err.to_string().contains("proxy.upstream_stop_timeout"), "{err}");
}
