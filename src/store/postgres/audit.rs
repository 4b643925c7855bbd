//! The central audit table in the PostgreSQL store: `timebox.audit_records`, every instance's hash
//! chain, range-partitioned by day on `ts` (`timebox.audit_records_pYYYYMMDD`), and
//! `timebox.audit_anchors`, the last record retention dropped per instance.
//!
//! Where it sits: [`crate::audit::ship`] copies each instance's records here ([`PgStore::ship`]:
//! partitions created ahead, binary COPY into a per-connection staging table, then `INSERT … ON
//! CONFLICT DO NOTHING`, so a batch shipped twice changes nothing); the admin API and
//! `timebox audit search|verify` read the fleet's trail from here ([`PgStore::central_query`],
//! [`PgStore::central_chain`]), and each instance's fleet mirror for the auditors' SQL endpoint
//! copies the others' records from here ([`PgStore::central_rows_after`]); [`crate::audit::retention`] drops whole partitions older than the
//! cut ([`PgStore::central_retention`]). What it must never do: change a shipped row (the chain
//! is the proof), drop a partition without first moving each instance's anchor past it, or name
//! a partition from anything but a date (partition names are formatted, never user text).

use chrono::{DateTime, Days, NaiveDate, TimeZone, Utc};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use super::PgStore;
use crate::audit::chain::{format_ts, ChainWalk, Head, RecordFields, VerifyReport};
use crate::audit::event::{AuditRecord, Columns};
use crate::audit::query::{where_clause, AuditFilter, Order, Page};
use crate::store::StoreError;

/// Key of the advisory lock partition creation and retention hold (`"tbx\0audt"`), so two
/// instances never race on the same DDL.
pub const AUDIT_DDL_LOCK: i64 = 0x7462_7800_6175_6474;

/// Rows read per round trip when walking a chain.
const VERIFY_PAGE: i64 = 10_000;

/// One record as shipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CentralRow {
    pub seq: u64,
    pub ts: DateTime<Utc>,
    pub kind: String,
    pub payload: String,
    pub prev_hash: String,
    pub hash: String,
    pub columns: Columns,
}

/// The partition holding day `day`: `audit_records_pYYYYMMDD` (pure).
pub fn partition_name(day: NaiveDate) -> String {
    format!("audit_records_p{}", day.format("%Y%m%d"))
}

/// The day a partition name stands for; `None` for any other name (pure).
pub fn partition_day(name: &str) -> Option<NaiveDate> {
    let digits = name.strip_prefix("audit_records_p")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    NaiveDate::parse_from_str(digits, "%Y%m%d").ok()
}

/// The range of day `day`: `[day 00:00 UTC, next day 00:00 UTC)` (pure).
pub fn partition_bounds(day: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).unwrap_or_default());
    (start, start + chrono::Duration::days(1))
}

/// The days whose partitions must exist before records with these times are inserted, plus the
/// next day (created ahead, so midnight never waits for DDL) (pure).
pub fn days_needed(times: impl IntoIterator<Item = DateTime<Utc>>) -> Vec<NaiveDate> {
    let mut days: Vec<NaiveDate> = times.into_iter().map(|t| t.date_naive()).collect();
    if let Some(last) = days.iter().max().copied() {
        days.extend(last.checked_add_days(Days::new(1)));
    }
    days.sort();
    days.dedup();
    days
}

/// Of the partitions named, those entirely older than `cut` (their upper bound ≤ cut), oldest
/// first, with the newest upper bound among them (pure).
pub fn partitions_to_drop(names: &[String], cut: DateTime<Utc>) -> (Vec<String>, Option<DateTime<Utc>>) {
    let mut old: Vec<(NaiveDate, &String)> = names
        .iter()
        .filter_map(|n| partition_day(n).map(|d| (d, n)))
        .filter(|(d, _)| partition_bounds(*d).1 <= cut)
        .collect();
    old.sort();
    let bound = old.last().map(|(d, _)| partition_bounds(*d).1);
    (old.into_iter().map(|(_, n)| n.clone()).collect(), bound)
}

/// What one retention run did to the central table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CentralRetention {
    pub dropped: Vec<String>,
    /// The anchors moved: (instance, head).
    pub anchors: Vec<(String, Head)>,
}

impl PgStore {
    /// The highest seq of `instance` the central table holds (or its retention anchor, if all of
    /// its shipped records were dropped); 0 when nothing was shipped. The shipper resumes after it.
    pub async fn shipped_through(&self, instance: &str) -> Result<u64, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_one(
                "SELECT greatest((SELECT max(seq) FROM timebox.audit_records WHERE instance = $1), \
                 (SELECT seq FROM timebox.audit_anchors WHERE instance = $1), 0)::bigint",
                &[&instance],
            )
            .await?;
        Ok(row.try_get::<_, i64>(0)?.max(0) as u64)
    }

    /// Ships `rows` of `instance` in one transaction: creates the partitions their days need, COPYs
    /// them (binary) into a staging table and inserts what the central table lacks. Idempotent.
    pub async fn ship(&self, instance: &str, rows: &[CentralRow]) -> Result<u64, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        ensure_partitions(&tx, &days_needed(rows.iter().map(|r| r.ts))).await?;
        tx.batch_execute(
            "CREATE TEMP TABLE IF NOT EXISTS audit_stage (instance text, seq bigint, ts timestamptz, \
             kind text, payload text, prev_hash text, hash text, user_name text, target text, \
             grant_id text, session_id text) ON COMMIT DELETE ROWS",
        )
        .await?;
        let sink = tx.copy_in("COPY audit_stage FROM STDIN (FORMAT binary)").await?;
        let t = Type::TEXT;
        let types = [
            t.clone(),
            Type::INT8,
            Type::TIMESTAMPTZ,
            t.clone(),
            t.clone(),
            t.clone(),
            t.clone(),
            t.clone(),
            t.clone(),
            t.clone(),
            t,
        ];
        let writer = BinaryCopyInWriter::new(sink, &types);
        futures::pin_mut!(writer);
        for r in rows {
            let seq = r.seq.min(i64::MAX as u64) as i64;
            let values: [&(dyn ToSql + Sync); 11] = [
                &instance,
                &seq,
                &r.ts,
                &r.kind,
                &r.payload,
                &r.prev_hash,
                &r.hash,
                &r.columns.user,
                &r.columns.target,
                &r.columns.grant_id,
                &r.columns.session_id,
            ];
            writer.as_mut().write(&values).await?;
        }
        writer.finish().await?;
        let inserted = tx
            .execute(
                "INSERT INTO timebox.audit_records (instance, seq, ts, kind, payload, prev_hash, hash, \
                 user_name, target, grant_id, session_id) \
                 SELECT instance, seq, ts, kind, payload, prev_hash, hash, user_name, target, grant_id, \
                 session_id FROM audit_stage ORDER BY seq ON CONFLICT DO NOTHING",
                &[],
            )
            .await?;
        tx.commit().await?;
        Ok(inserted)
    }

    /// One page of the fleet's records matching `f` (see [`crate::audit::query`]), ordered by
    /// `central_id` (arrival in the central table); `cursor` is a `central_id`.
    pub async fn central_query(&self, f: &AuditFilter) -> Result<Page, StoreError> {
        let mut clauses: Vec<String> = Vec::new();
        let mut values: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut add = |clause: &str, v: Box<dyn ToSql + Sync + Send>| {
            values.push(v);
            clauses.push(clause.replace('?', &format!("${}", values.len())));
        };
        let text_filters = [
            ("user_name = ?", &f.user),
            ("grant_id = ?", &f.grant),
            ("target = ?", &f.target),
            ("session_id = ?", &f.session),
            ("kind = ?", &f.kind),
            ("instance = ?", &f.instance),
            ("payload::jsonb ->> 'class' = ?", &f.class),
            ("payload::jsonb ->> 'decision' = ?", &f.decision),
            (
                "strpos(lower(payload::jsonb ->> 'sql'), lower(?)) > 0",
                &f.contains,
            ),
        ];
        for (clause, value) in text_filters {
            if let Some(v) = value {
                add(clause, Box::new(v.clone()));
            }
        }
        if let Some(t) = f.since {
            add("ts >= ?", Box::new(t));
        }
        if let Some(t) = f.until {
            add("ts < ?", Box::new(t));
        }
        let (cursor_clause, order) = match f.order {
            Order::Desc => ("central_id < ?", "DESC"),
            Order::Asc => ("central_id > ?", "ASC"),
        };
        if let Some(cur) = f.cursor {
            add(cursor_clause, Box::new(cur.min(i64::MAX as u64) as i64));
        }
        let limit = f.page_size();
        let where_clause = where_clause(&clauses);
        let sql = format!(
            "SELECT central_id, instance, seq, ts, kind, payload, prev_hash, hash \
             FROM timebox.audit_records {where_clause} ORDER BY central_id {order} LIMIT {}",
            limit + 1
        );
        let c = self.client().await?;
        let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| &**v as &(dyn ToSql + Sync)).collect();
        let rows = c.query(&sql, &params).await?;
        let events = rows
            .iter()
            .map(|r| {
                let payload: String = r.try_get(5)?;
                Ok(AuditRecord {
                    cursor: Some(r.try_get::<_, i64>(0)?.max(0) as u64),
                    instance: Some(r.try_get(1)?),
                    seq: r.try_get::<_, i64>(2)?.max(0) as u64,
                    ts: format_ts(r.try_get(3)?),
                    kind: r.try_get(4)?,
                    payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
                    prev_hash: r.try_get(6)?,
                    hash: r.try_get(7)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Page::of(events, limit, |r| r.cursor))
    }

    /// The instances with records or an anchor in the central table. The records' instances are
    /// found by skipping through the primary key (one index probe per instance), not by reading
    /// every row: the fleet mirror asks every second.
    pub async fn central_instances(&self) -> Result<Vec<String>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "WITH RECURSIVE i(instance) AS ( \
                   SELECT min(instance) FROM timebox.audit_records \
                   UNION ALL \
                   SELECT (SELECT min(r.instance) FROM timebox.audit_records r WHERE r.instance > i.instance) \
                   FROM i WHERE i.instance IS NOT NULL) \
                 SELECT instance FROM i WHERE instance IS NOT NULL \
                 UNION SELECT instance FROM timebox.audit_anchors ORDER BY 1",
                &[],
            )
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// Up to `limit` records of `instance` after seq `after`, in seq order (the fleet mirror's
    /// read, [`crate::auditsql::mirror`]).
    pub async fn central_rows_after(
        &self,
        instance: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<CentralRow>, StoreError> {
        let c = self.client().await?;
        let after = after.min(i64::MAX as u64) as i64;
        let rows = c
            .query(
                "SELECT seq, ts, kind, payload, prev_hash, hash, user_name, target, grant_id, session_id \
                 FROM timebox.audit_records WHERE instance = $1 AND seq > $2 ORDER BY seq, ts LIMIT $3",
                &[&instance, &after, &i64::from(limit)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(CentralRow {
                    seq: r.try_get::<_, i64>(0)?.max(0) as u64,
                    ts: r.try_get(1)?,
                    kind: r.try_get(2)?,
                    payload: r.try_get(3)?,
                    prev_hash: r.try_get(4)?,
                    hash: r.try_get(5)?,
                    columns: Columns {
                        user: r.try_get(6)?,
                        target: r.try_get(7)?,
                        grant_id: r.try_get(8)?,
                        session_id: r.try_get(9)?,
                    },
                })
            })
            .collect()
    }

    /// Walks `instance`'s chain in the central table from its retention anchor (see
    /// [`ChainWalk`]), checked against `anchors` too.
    pub async fn central_chain(&self, instance: &str, anchors: &[Head]) -> Result<VerifyReport, StoreError> {
        let c = self.client().await?;
        let start = c
            .query_opt(
                "SELECT seq, hash FROM timebox.audit_anchors WHERE instance = $1",
                &[&instance],
            )
            .await?
            .map(|r| -> Result<Head, StoreError> {
                Ok(Head {
                    seq: r.try_get::<_, i64>(0)?.max(0) as u64,
                    hash: r.try_get(1)?,
                })
            })
            .transpose()?;
        let mut after = start.as_ref().map_or(0, |h| h.seq as i64);
        let mut walk = ChainWalk::new(start, anchors);
        let stmt = c
            .prepare(
                "SELECT seq, ts, kind, payload, prev_hash, hash, user_name, target, grant_id, session_id \
                 FROM timebox.audit_records WHERE instance = $1 AND seq > $2 ORDER BY seq, ts LIMIT $3",
            )
            .await?;
        loop {
            let rows = c.query(&stmt, &[&instance, &after, &VERIFY_PAGE]).await?;
            for r in &rows {
                let seq: i64 = r.try_get(0)?;
                let ts = format_ts(r.try_get(1)?);
                let (kind, payload, prev_hash, hash): (String, String, String, String) =
                    (r.try_get(2)?, r.try_get(3)?, r.try_get(4)?, r.try_get(5)?);
                let columns = Columns {
                    user: r.try_get(6)?,
                    target: r.try_get(7)?,
                    grant_id: r.try_get(8)?,
                    session_id: r.try_get(9)?,
                };
                walk.push(&RecordFields {
                    seq,
                    ts: &ts,
                    kind: &kind,
                    payload: &payload,
                    prev_hash: &prev_hash,
                    hash: &hash,
                    columns: &columns,
                });
                after = after.max(seq);
            }
            if (rows.len() as i64) < VERIFY_PAGE {
                break;
            }
        }
        Ok(walk.finish())
    }

    /// Drops the partitions entirely older than `cut`, first moving each instance's anchor to its
    /// last record in them, in one transaction. Another instance running it at the same moment
    /// makes this one do nothing (`None`).
    pub async fn central_retention(
        &self,
        cut: DateTime<Utc>,
    ) -> Result<Option<CentralRetention>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let locked: bool = tx
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&AUDIT_DDL_LOCK])
            .await?
            .try_get(0)?;
        if !locked {
            return Ok(None);
        }
        let names: Vec<String> = tx
            .query(
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 WHERE i.inhparent = 'timebox.audit_records'::regclass",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let (dropped, bound) = partitions_to_drop(&names, cut);
        let Some(bound) = bound else {
            tx.commit().await?;
            return Ok(Some(CentralRetention::default()));
        };
        let moved = tx
            .query(
                "INSERT INTO timebox.audit_anchors AS a (instance, seq, hash, ts, cut) \
                 SELECT DISTINCT ON (instance) instance, seq, hash, ts, $2 FROM timebox.audit_records \
                 WHERE ts < $1 ORDER BY instance, seq DESC \
                 ON CONFLICT (instance) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, \
                 ts = excluded.ts, cut = excluded.cut WHERE a.seq < excluded.seq \
                 RETURNING instance, seq, hash",
                &[&bound, &cut],
            )
            .await?;
        let anchors = moved
            .iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    Head {
                        seq: r.try_get::<_, i64>(1)?.max(0) as u64,
                        hash: r.try_get(2)?,
                    },
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        for name in &dropped {
            // `name` came from `partitions_to_drop`: only names of the form audit_records_pYYYYMMDD.
            tx.batch_execute(&format!("DROP TABLE IF EXISTS timebox.{name}"))
                .await?;
        }
        tx.commit().await?;
        Ok(Some(CentralRetention { dropped, anchors }))
    }
}

/// Creates the partitions of `days` that do not exist yet, under [`AUDIT_DDL_LOCK`] (taken only
/// when one is missing, so steady-state shipping takes no lock).
async fn ensure_partitions(
    tx: &tokio_postgres::Transaction<'_>,
    days: &[NaiveDate],
) -> Result<(), StoreError> {
    let names: Vec<String> = days.iter().map(|d| partition_name(*d)).collect();
    if missing_partitions(tx, &names).await?.is_empty() {
        return Ok(());
    }
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_DDL_LOCK])
        .await?;
    let still = missing_partitions(tx, &names).await?;
    for day in days {
        let name = partition_name(*day);
        if !still.contains(&name) {
            continue;
        }
        let (from, to) = partition_bounds(*day);
        tx.batch_execute(&format!(
            "CREATE TABLE timebox.{name} PARTITION OF timebox.audit_records \
             FOR VALUES FROM ('{}') TO ('{}')",
            from.format("%Y-%m-%d %H:%M:%S+00"),
            to.format("%Y-%m-%d %H:%M:%S+00")
        ))
        .await?;
        tracing::info!(partition = %name, "created a central audit partition");
    }
    Ok(())
}

/// Which of the partitions `names` do not exist.
async fn missing_partitions(
    tx: &tokio_postgres::Transaction<'_>,
    names: &[String],
) -> Result<Vec<String>, StoreError> {
    let existing: Vec<String> = tx
        .query(
            "SELECT relname::text FROM pg_class WHERE relnamespace = 'timebox'::regnamespace \
             AND relname = ANY($1)",
            &[&names],
        )
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    Ok(names.iter().filter(|n| !existing.contains(n)).cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn partitions_are_named_and_bounded_by_utc_day() {
        assert_eq!(partition_name(day(2026, 1, 5)), "audit_records_p20260105");
        assert_eq!(partition_day("audit_records_p20260105"), Some(day(2026, 1, 5)));
        for other in [
            "audit_records",
            "audit_records_p2026010",
            "audit_records_p20261305",
            "x_p20260105",
        ] {
            assert_eq!(partition_day(other), None, "{other}");
        }
        let (from, to) = partition_bounds(day(2026, 12, 31));
        assert_eq!(from, at("2026-12-31T00:00:00Z"));
        assert_eq!(to, at("2027-01-01T00:00:00Z"));
        assert_eq!(
            days_needed([at("2026-01-01T23:59:59Z"), at("2026-01-01T00:00:00Z")]),
            vec![day(2026, 1, 1), day(2026, 1, 2)],
            "the records' day, and the next one ahead"
        );
        assert!(days_needed([]).is_empty());
    }

    #[test]
    fn only_partitions_entirely_older_than_the_cut_are_dropped() {
        let names: Vec<String> = [
            "audit_records_p20260103",
            "audit_records_p20260101",
            "audit_records_p20260102",
            "other",
        ]
        .map(String::from)
        .to_vec();
        // The cut falls inside 2026-01-03: the 1st and 2nd end before it, the 3rd does not.
        let (dropped, bound) = partitions_to_drop(&names, at("2026-01-03T12:00:00Z"));
        assert_eq!(
            dropped,
            vec!["audit_records_p20260101", "audit_records_p20260102"]
        );
        assert_eq!(bound, Some(at("2026-01-03T00:00:00Z")));
        // A cut exactly at a day's end drops that day.
        let (dropped, _) = partitions_to_drop(&names, at("2026-01-02T00:00:00Z"));
        assert_eq!(dropped, vec!["audit_records_p20260101"]);
        assert_eq!(
            partitions_to_drop(&names, at("2026-01-01T23:59:59Z")),
            (vec![], None)
        );
    }
}
