//! Built-in functions judged by the target's own catalog (issue 12 item 1), through a real proxy
//! to a real PostgreSQL: an unlisted immutable `pg_catalog` function reads under a read grant; a
//! built-in name that a user function on the target shares is a user function when called
//! unqualified; the catalog is read through timebox's own connection (`timebox:catalog`), never
//! the engineer's session.

mod common;

use common::{cluster, proxy_conn, psql, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_targets_catalog_decides_unlisted_and_shadowed_built_ins() {
    // A user function named like a built-in, with other argument types: PostgreSQL would call it
    // for `reverse(42)`. Created before the instance reads the catalog.
    tokio::task::spawn_blocking(|| {
        cluster::shop_psql(
            "CREATE OR REPLACE FUNCTION public.reverse(int) RETURNS int LANGUAGE sql VOLATILE \
             AS 'DELETE FROM public.items WHERE id = -1; SELECT $1'; \
             GRANT EXECUTE ON FUNCTION public.reverse(int) TO timebox_read",
        )
    })
    .await
    .expect("create the user function");
    let inst = common::start(Options::default()).await;
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    let conn = proxy_conn(&inst, "alice", "sslmode=disable");

    // Unlisted by timebox, immutable in pg_catalog: read.
    let out = psql(&conn, &token, "SELECT int4pl(1, 2), pg_catalog.textlen('abc')").await;
    assert!(out.success, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "3|3");

    // A name a user function shares: denied unqualified, allowed qualified.
    let out = psql(&conn, &token, "SELECT reverse(42)").await;
    assert!(!out.success, "{}", out.stdout);
    assert!(
        out.stderr
            .contains("a user-defined function on this target also has"),
        "{}",
        out.stderr
    );
    let out = psql(&conn, &token, "SELECT pg_catalog.reverse('abc')").await;
    assert!(out.success, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "cba");

    // The catalog was read once for the four sessions, on a backend of its own (the log line
    // prefix is `%m [%p] %u@%d`), not in an engineer's session.
    let log = std::fs::read_to_string(cluster::shared_cluster().log_path()).expect("server log");
    let pid = |line: &str| {
        line.split('[')
            .nth(1)
            .and_then(|r| r.split(']').next())
            .map(str::to_string)
    };
    let catalog: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("FROM pg_catalog.pg_proc p JOIN"))
        .collect();
    assert_eq!(catalog.len(), 1, "read once: {catalog:#?}");
    let session = log
        .lines()
        .find(|l| l.contains("int4pl(1, 2)"))
        .expect("the engineer's statement");
    assert_ne!(pid(catalog[0]), pid(session), "{}\n{session}", catalog[0]);
}
