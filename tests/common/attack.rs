//! The harness the outside attacks on column masking share (`tests/masking_reattack5.rs` onward):
//! a masked read role (its name per attack, column `secret` of each of its tables masked with
//! `redact`), tables holding a secret value, the accomplice's leaking function, and the engineer's
//! second session watching `pg_stat_activity` through timebox.

use bytes::BytesMut;
use tokio::net::TcpStream;

use super::cluster::{READ_PASSWORD, READ_USER};
use super::frames::{exchange, query};
use super::masking::{accomplice, admin_psql, start_over};
use super::TestInstance;

/// One attack's masked role and the value its tables hold in their masked column.
pub struct Attack {
    /// The role's name (also the prefix of the secret and of the attack's object names).
    pub role: &'static str,
    /// The value every table of the attack holds in its masked column `secret`.
    pub secret: &'static str,
}

impl Attack {
    /// Whether an answer carries the secret in clear (any case).
    pub fn leaked(&self, out: &str) -> bool {
        out.to_lowercase().contains(self.secret)
    }

    /// The role (read) masking `secret` of each `public.<table>`, on the read user.
    pub fn role_with(&self, tables: &[&str]) -> String {
        let role = self.role;
        let mask: Vec<String> = tables
            .iter()
            .map(|t| format!("\"public.{t}.secret\" = \"redact\""))
            .collect();
        format!(
            "\n[roles.{role}]\nallow = [\"read\"]\nmax_ttl = \"1h\"\nmask = {{ {} }}\n\
             [targets.shop.credentials.{role}]\nuser = \"{READ_USER}\"\npassword = \"{READ_PASSWORD}\"\n",
            mask.join(", ")
        )
    }

    /// Table `public.<t>` (id, secret) holding the secret, readable by the read user.
    pub fn setup(&self, t: &str) -> String {
        let secret = self.secret;
        format!(
            "CREATE TABLE public.{t} (id int PRIMARY KEY, secret text);
             INSERT INTO public.{t} VALUES (1, '{secret}');
             GRANT SELECT ON public.{t} TO {READ_USER};"
        )
    }

    /// An instance with the role masking `tables`, after `sql` ran on the target.
    pub async fn start(&self, tables: &[&str], sql: String) -> TestInstance {
        admin_psql(sql).await;
        start_over(&[], self.role_with(tables)).await
    }

    /// A raw protocol session of the role (user `alice`).
    pub async fn raw(&self, inst: &TestInstance) -> (TcpStream, BytesMut) {
        let (_, token) = inst.grant("alice", self.role, "10m").await;
        super::raw::login(inst.proxy_addr, "alice", &token).await
    }

    /// The s9 leak's shape over a session prepared by `prepare` (frames exchanged one batch at a
    /// time): the accomplice replaces view `public.<v>` in an open transaction by one whose `x`
    /// calls a leaking function; the engineer sends `run`; once a backend whose query is
    /// `ILIKE like` waits for a lock, the accomplice commits; 700 ms later the watcher reads
    /// `pg_stat_activity`. (prepared answers, answer, watched, waited)
    pub async fn replaced_while_waiting(
        &self,
        inst: &TestInstance,
        t: &str,
        v: &str,
        prepare: Vec<Vec<BytesMut>>,
        run: Vec<BytesMut>,
        like: &str,
    ) -> (String, String, String, bool) {
        let (mut watcher, mut wbuf) = self.raw(inst).await;
        let (mut s, mut buf) = self.raw(inst).await;
        let mut before = String::new();
        for batch in prepare {
            before.push_str(&exchange(&mut s, &mut buf, &batch).await);
            before.push_str("\n  ");
        }
        let a = accomplice().await;
        a.batch_execute(&format!(
            "BEGIN; {} CREATE OR REPLACE VIEW public.{v} AS SELECT id, public.{v}_f() AS x FROM public.{t}",
            leaking_function(&format!("public.{v}_f"), t, "", "text", "'y'")
        ))
        .await
        .unwrap();
        let running = tokio::spawn(raw_exchange_or_close(s, buf, run));
        let b = accomplice().await;
        let waited = lock_waiting(&b, like).await;
        a.batch_execute("COMMIT").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        let seen = watch(&mut watcher, &mut wbuf).await;
        let (answer, _s, _buf) = tokio::time::timeout(std::time::Duration::from_secs(30), running)
            .await
            .expect("the statement ends")
            .unwrap();
        (before, answer, seen, waited)
    }
}

/// A view `<v>` (id, x) over nothing, readable by the read user (`v` may be qualified/quoted).
pub fn view(v: &str) -> String {
    format!(
        "CREATE VIEW {v} AS SELECT 1::int AS id, 'x'::text AS x;
         GRANT SELECT ON {v} TO {READ_USER};"
    )
}

/// A plpgsql function `<f>` (SECURITY INVOKER: runs as the engineer's read user, who may read
/// `t` upstream) that puts the masked values in `application_name` (in `pg_stat_activity` at
/// once, for every session) and sleeps 3 s; returns `ret`.
pub fn leaking_function(f: &str, t: &str, args: &str, returns: &str, ret: &str) -> String {
    format!(
        "CREATE FUNCTION {f}({args}) RETURNS {returns} LANGUAGE plpgsql VOLATILE AS $f$ BEGIN \
           PERFORM pg_catalog.set_config('application_name', (SELECT pg_catalog.string_agg(secret::text, ',') FROM public.{t}), false); \
           PERFORM pg_catalog.pg_sleep(3); RETURN {ret}; END $f$;"
    )
}

/// Waits (5 s at most) until a backend whose query is `ILIKE like` waits for a lock.
pub async fn lock_waiting(b: &tokio_postgres::Client, like: &str) -> bool {
    let sql = format!(
        "SELECT count(*) FROM pg_catalog.pg_stat_activity \
         WHERE query ILIKE '{}' AND wait_event_type = 'Lock' AND pid <> pg_catalog.pg_backend_pid()",
        like.replace('\'', "''")
    );
    super::eventually(std::time::Duration::from_secs(5), || {
        let sql = sql.clone();
        async move { super::pg::scalar(b, &sql).await != "0" }
    })
    .await
}

/// What the engineer's watching session sees in `pg_stat_activity` (through timebox).
pub async fn watch(s: &mut TcpStream, buf: &mut BytesMut) -> String {
    exchange(
        s,
        buf,
        &[query(
            "SELECT application_name FROM pg_catalog.pg_stat_activity WHERE application_name <> ''",
        )],
    )
    .await
}

/// `frames` sent on a raw session moved into a task; the answer up to ReadyForQuery or the
/// session's end (timebox closes a session whose refused result's transaction had ended).
pub async fn raw_exchange_or_close(
    mut s: TcpStream,
    mut buf: BytesMut,
    frames: Vec<BytesMut>,
) -> (String, TcpStream, BytesMut) {
    let out = super::frames::exchange_or_close(&mut s, &mut buf, &frames).await;
    (out, s, buf)
}
