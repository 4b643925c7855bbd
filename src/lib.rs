//! timebox: a PostgreSQL proxy that gives engineers time-boxed access to production databases.
//!
//! Data flow (serving path, one client connection):
//! 1. [`config`] loads and validates the TOML config; [`app::run`] builds the shared state and
//!    starts the proxy and admin listeners.
//! 2. [`admin`] (HTTP) issues and revokes [`grants`] and serves requests, sessions and the audit
//!    trail; each grant has a one-time token stored only as a SCRAM verifier in the [`store`].
//! 3. [`proxy`] accepts a client (TLS, startup), authenticates the token with SCRAM-SHA-256 against
//!    the user's grants, connects upstream with the role's credential, and relays frames.
//! 4. Each statement is classified and authorized by [`policy`] (pg_query, cross-checked by
//!    sqlparser) before it is forwarded; a denial is answered with SQLSTATE 42501.
//! 5. Every decision and outcome is recorded by [`audit`] (hash-chained, acknowledged before the
//!    statement goes upstream); [`auditsql`] serves it to auditors as `dbname=timebox_audit`.
//! 6. Each session's relay loop watches its grant: expiry, revocation and shutdown sever it.
//! 7. With a PostgreSQL store, [`fleet`] shares sessions and grant changes between instances:
//!    LISTEN/NOTIFY plus a periodic reconcile feed each session's grant watch.
//! 8. [`webhooks`] tell chat about requests, grants and sessions; [`metrics`] are served at `/metrics`.
//!
//! Outside the serving path (nothing above depends on them): [`cli`] holds the `timebox` commands
//! (`main.rs` only dispatches), [`demo`] holds `timebox demo` and its throwaway-cluster launcher
//! [`demo::cluster`], also used by the tests and the benchmarks.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod audit;
pub mod auditsql;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod fleet;
pub mod grants;
pub mod logging;
pub mod masking;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod review;
pub mod store;
pub mod webhooks;
