//! psql works under a read grant (issue 12 item 2): every meta-command that only reads — psql's
//! describe queries over the catalogs — succeeds through the proxy, with the machine's psql
//! against a real PostgreSQL. Each command is run on its own (`psql -c`), and every failure is
//! reported, not only the first.

mod common;

use common::{cluster, proxy_conn, psql, Options};

/// Meta-commands that only read, with the objects they describe created first.
const META: &[&str] = &[
    "\\d",
    "\\d items",
    "\\d+ items",
    "\\d meta_view",
    "\\d+ meta_view",
    "\\dt",
    "\\dt+",
    "\\di",
    "\\di+",
    "\\ds",
    "\\dv",
    "\\dm",
    "\\dE",
    "\\dP",
    "\\df",
    "\\df+",
    "\\df+ meta_fn",
    "\\da",
    "\\dA",
    "\\db",
    "\\dc",
    "\\dC",
    "\\dd",
    "\\dD",
    "\\ddp",
    "\\des",
    "\\det",
    "\\deu",
    "\\dew",
    "\\dF",
    "\\dFd",
    "\\dFp",
    "\\dFt",
    "\\dg",
    "\\dl",
    "\\dL",
    "\\dn",
    "\\dn+",
    "\\do",
    "\\dO",
    "\\dp",
    "\\dp items",
    "\\dRp",
    "\\dRs",
    "\\dT",
    "\\dT+",
    "\\du",
    "\\du+",
    "\\dx",
    "\\dX",
    "\\dy",
    "\\l",
    "\\l+",
    "\\z",
    "\\sf meta_fn",
    "\\sv meta_view",
    "\\dconfig",
    "\\dconfig work_mem",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reading_meta_command_works_under_a_read_grant() {
    tokio::task::spawn_blocking(|| {
        cluster::shop_psql(
            "CREATE OR REPLACE VIEW public.meta_view AS SELECT id, name FROM public.items; \
             CREATE OR REPLACE FUNCTION public.meta_fn(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1 + 1'; \
             CREATE INDEX IF NOT EXISTS items_name_idx ON public.items (name); \
             CREATE STATISTICS IF NOT EXISTS public.items_stats ON id, qty FROM public.items; \
             GRANT SELECT ON public.meta_view TO timebox_read",
        )
    })
    .await
    .expect("create the described objects");
    let inst = common::start(Options::default()).await;
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    let conn = proxy_conn(&inst, "alice", "sslmode=disable");
    let mut failures = Vec::new();
    for meta in META {
        let out = psql(&conn, &token, meta).await;
        if !out.success {
            failures.push(format!("{meta}: {}", out.stderr.trim()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} failed:\n{}",
        failures.len(),
        META.len(),
        failures.join("\n")
    );

    // Each describe ran through the policy as a read; the session's statements are all allowed.
    let out = psql(&conn, &token, "\\d items").await;
    assert!(out.stdout.contains("qty"), "{}", out.stdout);
}
