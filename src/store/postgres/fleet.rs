//! The fleet's rows in the PostgreSQL store: instances with their heartbeat, the live sessions each
//! holds, kill requests, and the change notifications (`NOTIFY` on [`CHANNEL`]).
//!
//! Where it sits: [`crate::fleet`] registers, heartbeats and syncs its sessions through these calls
//! and listens on [`CHANNEL`]; the admin API lists and kills through them. Liveness is judged by the
//! store's clock (`now()`), never an instance's, so clock skew between instances cannot make a live
//! instance look dead. What it must never do: put a secret in a notification payload (payloads
//! are a kind and an id, see [`Change`]), or let two live instances share a name.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;

use super::PgStore;
use crate::fleet::cancel::{PeerId, MAX_PEER_ID};
use crate::store::StoreError;

/// The `LISTEN`/`NOTIFY` channel of the fleet.
pub const CHANNEL: &str = "timebox_fleet";

/// What a notification says changed: a kind and an id, never more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Grant `id` was revoked or extended: sessions on it re-read it.
    Grant(String),
    /// Session `id` is asked to end: its owner reads the kill request and acts.
    Kill(String),
}

impl Change {
    pub fn payload(&self) -> String {
        match self {
            Change::Grant(id) => format!("grant:{id}"),
            Change::Kill(id) => format!("kill:{id}"),
        }
    }

    /// The payload with the sender's clock reading `sent` appended (`;sent=<unix ms>`), so the
    /// receiver can measure the notification lag. Pure.
    pub fn payload_at(&self, sent: DateTime<Utc>) -> String {
        format!("{};sent={}", self.payload(), sent.timestamp_millis())
    }

    /// When the sender says it sent `payload` (`None` without a valid `;sent=`). Pure.
    pub fn sent_at(payload: &str) -> Option<DateTime<Utc>> {
        let (_, ms) = payload.split_once(";sent=")?;
        DateTime::from_timestamp_millis(ms.parse().ok()?)
    }

    /// Reads a payload (with or without its `;sent=` suffix); `None` for anything else (a newer
    /// timebox's kinds, or noise). Pure.
    pub fn parse(payload: &str) -> Option<Change> {
        let payload = payload.split_once(";sent=").map_or(payload, |(p, _)| p);
        let (kind, id) = payload.split_once(':')?;
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return None;
        }
        match kind {
            "grant" => Some(Change::Grant(id.to_owned())),
            "kill" => Some(Change::Kill(id.to_owned())),
            _ => None,
        }
    }
}

/// One instance as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceRow {
    pub name: String,
    /// Where peers reach its proxy port.
    pub advertise: String,
    /// Its timebox version.
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    /// Live sessions at its last heartbeat.
    pub sessions: u64,
    /// Whether its last heartbeat is within `[fleet] instance_timeout` (by the store's clock).
    pub alive: bool,
}

/// One live session as its instance registered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub id: String,
    pub instance: String,
    pub grant_id: String,
    pub user: String,
    pub target: String,
    pub role: String,
    pub client_addr: String,
    pub started_at: DateTime<Utc>,
    pub application_name: Option<String>,
}

/// A kill request for a session of this instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillRequest {
    pub session_id: String,
    pub by: String,
    pub reason: String,
}

/// What this instance registers about itself.
#[derive(Debug, Clone)]
pub struct Registration {
    pub name: String,
    /// Random per start: tells this run from an earlier one (or an impostor) of the same name.
    pub incarnation: String,
    pub advertise: String,
    pub version: String,
    pub started_at: DateTime<Utc>,
}

/// What [`PgStore::register_instance`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// Joined (or re-joined) with this peer id.
    Joined(PeerId),
    /// A live instance of another incarnation holds the name.
    NameInUse,
    /// Every peer id is held by a live instance.
    Full,
}

/// Key of the advisory lock peer ids are allocated under (the bytes of `"tbx\0peer"`).
pub const PEER_LOCK: i64 = 0x7462_7800_7065_6572;

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl PgStore {
    /// Registers (or re-registers) this instance and allocates its peer id (keeping `wanted`, the
    /// one it had, when still free), under [`PEER_LOCK`]: peer ids of instances dead for longer
    /// than `timeout` are freed first, then the lowest free one is taken. See [`Registered`].
    pub async fn register_instance(
        &self,
        r: &Registration,
        wanted: Option<PeerId>,
        timeout: Duration,
    ) -> Result<Registered, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PEER_LOCK])
            .await?;
        tx.execute(
            "UPDATE timebox.instances SET peer_id = NULL \
             WHERE peer_id IS NOT NULL AND name <> $1 AND heartbeat_at < now() - make_interval(secs => $2)",
            &[&r.name, &seconds(timeout)],
        )
        .await?;
        let wanted = wanted.map(i32::from);
        let peer: Option<i32> = tx
            .query_one(
                "SELECT coalesce( \
                   (SELECT $2::int WHERE $2::int IS NOT NULL AND NOT EXISTS \
                     (SELECT 1 FROM timebox.instances WHERE peer_id = $2::int AND name <> $1)), \
                   (SELECT min(g) FROM generate_series(1, $3::int) g WHERE NOT EXISTS \
                     (SELECT 1 FROM timebox.instances WHERE peer_id = g AND name <> $1)))",
                &[&r.name, &wanted, &i32::from(MAX_PEER_ID)],
            )
            .await?
            .try_get(0)?;
        let Some(peer) = peer else {
            return Ok(Registered::Full);
        };
        let n = tx
            .execute(
                "INSERT INTO timebox.instances AS i (name, incarnation, advertise, version, started_at, heartbeat_at, peer_id) \
                 VALUES ($1, $2, $3, $4, $5, now(), $7) \
                 ON CONFLICT (name) DO UPDATE SET incarnation = excluded.incarnation, advertise = excluded.advertise, \
                 version = excluded.version, started_at = excluded.started_at, heartbeat_at = now(), sessions = 0, \
                 peer_id = excluded.peer_id \
                 WHERE i.incarnation = excluded.incarnation \
                 OR i.heartbeat_at < now() - make_interval(secs => $6)",
                &[&r.name, &r.incarnation, &r.advertise, &r.version, &r.started_at, &seconds(timeout), &peer],
            )
            .await?;
        if n != 1 {
            return Ok(Registered::NameInUse);
        }
        tx.commit().await?;
        Ok(Registered::Joined(peer as PeerId))
    }

    /// The advertised addresses of live instances by peer id (for forwarding cancel requests).
    pub async fn peer_addresses(&self, timeout: Duration) -> Result<Vec<(PeerId, String)>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT peer_id, advertise FROM timebox.instances \
                 WHERE peer_id IS NOT NULL AND heartbeat_at >= now() - make_interval(secs => $1)",
                &[&seconds(timeout)],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let peer: i32 = r.try_get(0)?;
            if let Ok(peer) = PeerId::try_from(peer) {
                out.push((peer, r.try_get(1)?));
            }
        }
        Ok(out)
    }

    /// Heartbeats and replaces this instance's session rows with `sessions` (rows of sessions that
    /// ended are deleted, new ones inserted). `Ok(false)` if the row is no longer ours (another
    /// incarnation took the name): the caller re-registers.
    pub async fn sync_instance(&self, r: &Registration, sessions: &[SessionRow]) -> Result<bool, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let n = tx
            .execute(
                "UPDATE timebox.instances SET heartbeat_at = now(), sessions = $3 \
                 WHERE name = $1 AND incarnation = $2",
                &[&r.name, &r.incarnation, &(sessions.len() as i64)],
            )
            .await?;
        if n == 0 {
            return Ok(false);
        }
        let ids: Vec<&str> = sessions.iter().map(|s| s.id.as_str()).collect();
        tx.execute(
            "DELETE FROM timebox.sessions WHERE instance = $1 AND NOT (id = ANY($2))",
            &[&r.name, &ids],
        )
        .await?;
        let col = |f: fn(&SessionRow) -> &str| sessions.iter().map(f).collect::<Vec<&str>>();
        let started: Vec<DateTime<Utc>> = sessions.iter().map(|s| s.started_at).collect();
        let app: Vec<Option<&str>> = sessions.iter().map(|s| s.application_name.as_deref()).collect();
        tx.execute(
            "INSERT INTO timebox.sessions (id, instance, grant_id, user_name, target, role, client_addr, \
             started_at, application_name) \
             SELECT s.id, $1, s.grant_id, s.user_name, s.target, s.role, s.client_addr, s.started_at, s.app \
             FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
             $8::timestamptz[], $9::text[]) AS s(id, grant_id, user_name, target, role, client_addr, started_at, app) \
             ON CONFLICT (id) DO NOTHING",
            &[
                &r.name,
                &ids,
                &col(|s| &s.grant_id),
                &col(|s| &s.user),
                &col(|s| &s.target),
                &col(|s| &s.role),
                &col(|s| &s.client_addr),
                &started,
                &app,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Removes this instance and its sessions (clean shutdown).
    pub async fn deregister_instance(&self, r: &Registration) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let n = tx
            .execute(
                "DELETE FROM timebox.instances WHERE name = $1 AND incarnation = $2",
                &[&r.name, &r.incarnation],
            )
            .await?;
        if n == 1 {
            // Only ours: another incarnation's sessions are its own.
            tx.execute("DELETE FROM timebox.sessions WHERE instance = $1", &[&r.name])
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every registered instance, live or not, by name.
    pub async fn list_instances(&self, timeout: Duration) -> Result<Vec<InstanceRow>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT name, advertise, version, started_at, heartbeat_at, sessions, \
                 heartbeat_at >= now() - make_interval(secs => $1) FROM timebox.instances ORDER BY name",
                &[&seconds(timeout)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(InstanceRow {
                    name: r.try_get(0)?,
                    advertise: r.try_get(1)?,
                    version: r.try_get(2)?,
                    started_at: r.try_get(3)?,
                    heartbeat_at: r.try_get(4)?,
                    sessions: r.try_get::<_, i64>(5)?.max(0) as u64,
                    alive: r.try_get(6)?,
                })
            })
            .collect()
    }

    /// The sessions of live instances (a dead instance's sessions drop out after `timeout`), or the
    /// one session `id` when given.
    pub async fn list_sessions(
        &self,
        timeout: Duration,
        id: Option<&str>,
    ) -> Result<Vec<SessionRow>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT s.id, s.instance, s.grant_id, s.user_name, s.target, s.role, s.client_addr, \
                 s.started_at, s.application_name FROM timebox.sessions s \
                 JOIN timebox.instances i ON i.name = s.instance \
                 WHERE i.heartbeat_at >= now() - make_interval(secs => $1) \
                 AND ($2::text IS NULL OR s.id = $2) ORDER BY s.started_at, s.id",
                &[&seconds(timeout), &id],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(SessionRow {
                    id: r.try_get(0)?,
                    instance: r.try_get(1)?,
                    grant_id: r.try_get(2)?,
                    user: r.try_get(3)?,
                    target: r.try_get(4)?,
                    role: r.try_get(5)?,
                    client_addr: r.try_get(6)?,
                    started_at: r.try_get(7)?,
                    application_name: r.try_get(8)?,
                })
            })
            .collect()
    }

    /// Asks the owner of session `id` (on a live instance) to end it, and notifies; returns the
    /// owner's name, `None` if no live instance holds such a session.
    pub async fn request_kill(
        &self,
        id: &str,
        by: &str,
        reason: &str,
        timeout: Duration,
    ) -> Result<Option<String>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let owner = tx
            .query_opt(
                "UPDATE timebox.sessions s SET kill_by = $2, kill_reason = $3, kill_requested_at = now() \
                 FROM timebox.instances i WHERE s.id = $1 AND i.name = s.instance \
                 AND i.heartbeat_at >= now() - make_interval(secs => $4) RETURNING s.instance",
                &[&id, &by, &reason, &seconds(timeout)],
            )
            .await?;
        let Some(owner) = owner else {
            return Ok(None);
        };
        notify(&*tx, &Change::Kill(id.to_owned())).await?;
        tx.commit().await?;
        Ok(Some(owner.try_get(0)?))
    }

    /// Kill requests for sessions of instance `name`.
    pub async fn kill_requests(&self, name: &str) -> Result<Vec<KillRequest>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT id, kill_by, coalesce(kill_reason, '') FROM timebox.sessions \
                 WHERE instance = $1 AND kill_by IS NOT NULL",
                &[&name],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(KillRequest {
                    session_id: r.try_get(0)?,
                    by: r.try_get(1)?,
                    reason: r.try_get(2)?,
                })
            })
            .collect()
    }
}

/// Sends `change` on [`CHANNEL`] (delivered when the surrounding transaction commits).
pub(super) async fn notify(
    c: &impl tokio_postgres::GenericClient,
    change: &Change,
) -> Result<(), StoreError> {
    c.execute(
        "SELECT pg_notify($1, $2)",
        &[&CHANNEL, &change.payload_at(Utc::now())],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_anything_else_is_ignored() {
        for c in [Change::Grant("g_0011aabb".into()), Change::Kill("s_00ff".into())] {
            assert_eq!(Change::parse(&c.payload()), Some(c));
        }
        for bad in [
            "",
            "grant",
            "grant:",
            "grant:g 1",
            "grant:g';--",
            "audit:1",
            "kill:s_1:2",
        ] {
            assert_eq!(Change::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Change::parse(&format!("grant:{}", "a".repeat(65))), None);
    }

    #[test]
    fn payloads_carry_the_senders_clock_and_still_parse() {
        let sent = DateTime::from_timestamp_millis(1_765_000_000_123).unwrap();
        let c = Change::Grant("g_0011aabb".into());
        let payload = c.payload_at(sent);
        assert_eq!(payload, "grant:g_0011aabb;sent=1765000000123");
        assert_eq!(Change::parse(&payload), Some(c));
        assert_eq!(Change::sent_at(&payload), Some(sent));
        assert_eq!(Change::sent_at("grant:g_1"), None, "an older sender's payload");
        assert_eq!(Change::sent_at("grant:g_1;sent=soon"), None);
        assert_eq!(
            Change::parse("grant:g_1;sent=1;x"),
            Some(Change::Grant("g_1".into()))
        );
    }
}
