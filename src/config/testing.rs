//! Config text for unit tests anywhere in the crate: the tables every test config needs, written
//! once, so a test states only what it adds or changes. Compiled only for tests.

/// The tables before `[store]` in [`BASE`] and [`MINIMAL`] (macros, so that both are built at
/// compile time).
macro_rules! head {
    () => {
        r#"
        [proxy]
        listen = "127.0.0.1:6432"
        tls = "disabled"
        [admin]
        listen = "127.0.0.1:9187"
        [[admin.tokens]]
        name = "ops"
        sha256 = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
        roles = ["admin"]
"#
    };
}

/// The tables after `[store]`; `[roles.read]` comes last, so a test can append keys to it.
macro_rules! tail {
    () => {
        r#"        [targets.shop]
        host = "127.0.0.1"
        database = "shop"
        [targets.shop.credentials.read]
        user = "timebox_read"
        password = "pw"
        [roles.read]
        allow = ["read"]
        max_ttl = "8h"
"#
    };
}

/// `[proxy]` (127.0.0.1:6432, no TLS), `[admin]` (127.0.0.1:9187, one admin token `ops`), target
/// `shop` with a `read` credential, role `read` (`max_ttl = "8h"`). No `[store]`: a test adds its own.
pub(crate) const BASE: &str = concat!(head!(), tail!());

/// [`BASE`] with an in-memory store: a config that validates and needs nothing running.
pub(crate) const MINIMAL: &str = concat!(
    head!(),
    "        [store]\n        url = \"sqlite::memory:\"\n",
    tail!()
);

/// [`MINIMAL`] with the role `read`'s `max_ttl` set to `max_ttl` and `extra` tables appended.
pub(crate) fn config(max_ttl: &str, extra: &str) -> super::Config {
    let text = MINIMAL.replace("max_ttl = \"8h\"", &format!("max_ttl = \"{max_ttl}\""));
    super::Config::from_toml_str(&format!("{text}{extra}")).expect("a valid test config")
}
