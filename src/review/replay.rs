//! Policy replay: every recorded statement decided again under candidate roles, to see what a
//! policy change would break (or open) before it is made.
//!
//! Each record is decided twice: under the *current* roles, which must reproduce the recorded
//! decision, and under the *candidate* roles. Only records the current roles reproduce count as
//! unchanged, newly denied or newly allowed; the others (a text recorded truncated, a session
//! whose start is missing, a decision that came from session state the record does not carry)
//! are reported apart as not reproducible, never guessed. Decisions go through the relay's own
//! parts: [`ClassifyCache`] (so texts of one literal shape are classified once),
//! [`policy::authorize_all_on`] and the session's prepared statements for `EXECUTE`. A role's
//! decision depends only on the classification, so each (role, classification) is decided once:
//! the cache hands texts of one literal shape the same classification, and the memo is keyed by it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::RecordedStatement;
use crate::audit::event::Decision as Recorded;
use crate::config::Role;
use crate::policy::{
    self, Classification, ClassifyCache, Decision, RolePolicy, ServerVersion, StatementClass,
};

/// Examples kept per group of changes.
pub const EXAMPLES_PER_GROUP: usize = 5;
/// Distinct (role, classification) decisions remembered.
const MEMO_CAPACITY: usize = 100_000;
/// Classifications cached (the relay's cache, with its shape level).
const CACHE_CAPACITY: usize = 10_000;

/// A decision as replay sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny(String),
}

/// Prepared statements of one session in one replayed world (name → class).
pub type Prepared = HashMap<String, StatementClass>;

/// The relay's decision on one classified text. Pure: `policy` is `None` when the role is not
/// defined; `prepared` is the session's prepared statements, updated as the relay updates them.
pub fn decide(
    policy: Option<&RolePolicy>,
    role: &str,
    server: ServerVersion,
    classification: &Classification,
    prepared: &mut Prepared,
) -> Verdict {
    let Some(policy) = policy else {
        return Verdict::Deny(format!("role {role} is not defined"));
    };
    if let Decision::Deny { reason, .. } = policy::authorize_all_on(policy, server, classification) {
        return Verdict::Deny(reason);
    }
    for stmt in &classification.statements {
        if let Some(name) = &stmt.execute_name {
            match prepared.get(name) {
                None => {
                    return Verdict::Deny(format!(
                        "EXECUTE of prepared statement \"{name}\", which timebox did not see prepared"
                    ))
                }
                Some(class) if !policy.allows(*class) => {
                    return Verdict::Deny(format!(
                        "EXECUTE of prepared statement \"{name}\", a {} statement, is not allowed for role {role}",
                        class.as_str()
                    ))
                }
                Some(_) => {}
            }
        }
    }
    for stmt in &classification.statements {
        if let Some(name) = &stmt.prepare_name {
            prepared.insert(name.clone(), stmt.class);
        }
        match &stmt.deallocate {
            Some(policy::Deallocate::All) => prepared.clear(),
            Some(policy::Deallocate::Name(name)) => {
                prepared.remove(name);
            }
            None => {}
        }
    }
    Verdict::Allow
}

/// What became of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    NewlyDenied,
    NewlyAllowed,
    NotReproducible,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::NewlyDenied => "newly_denied",
            Change::NewlyAllowed => "newly_allowed",
            Change::NotReproducible => "not_reproducible",
        }
    }
}

/// A link to an original record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    pub seq: u64,
    pub ts: DateTime<Utc>,
    pub session_id: String,
    pub user: String,
    pub target: String,
    /// As recorded (redacted; bind parameters are never shown).
    pub sql: String,
}

/// Records that changed the same way for the same reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeGroup {
    pub change: Change,
    pub role: String,
    pub reason: String,
    pub count: u64,
    pub examples: Vec<Example>,
}

/// The outcome of a replay. Its JSON form is the API's and the CLI's `--json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayReport {
    /// Records replayed.
    pub statements: u64,
    /// Decisions actually made (the rest reused the decision on the same role and classification,
    /// i.e. on a text of the same literal shape).
    pub decisions_made: u64,
    pub unchanged: u64,
    pub newly_denied: u64,
    pub newly_allowed: u64,
    pub not_reproducible: u64,
    /// Most frequent first.
    pub groups: Vec<ChangeGroup>,
}

impl ReplayReport {
    /// Whether any decision would change (the CLI's exit status 1).
    pub fn changed(&self) -> bool {
        self.newly_denied + self.newly_allowed > 0
    }
}

#[derive(Default)]
struct SessionState {
    current: Prepared,
    candidate: Prepared,
}

/// Folds recorded statements (in `seq` order) into a [`ReplayReport`].
pub struct Replayer {
    server: ServerVersion,
    current: HashMap<String, RolePolicy>,
    candidate: HashMap<String, RolePolicy>,
    cache: ClassifyCache,
    /// (role, classification address) → the verdicts; the classification is kept alive with them
    /// so its address cannot be reused by another.
    memo: HashMap<(String, usize), (Arc<Classification>, Verdict, Verdict)>,
    sessions: HashMap<String, SessionState>,
    counts: ReplayReport,
    groups: BTreeMap<(Change, String, String), (u64, Vec<Example>)>,
}

fn policies(roles: &BTreeMap<String, Role>) -> HashMap<String, RolePolicy> {
    roles
        .iter()
        .map(|(name, role)| (name.clone(), RolePolicy::from_role(role)))
        .collect()
}

impl Replayer {
    /// `server` is the target version statements are decided for (records do not carry it yet:
    /// [`ServerVersion::OLDEST`] decides as `timebox check` does).
    pub fn new(
        current: &BTreeMap<String, Role>,
        candidate: &BTreeMap<String, Role>,
        server: ServerVersion,
    ) -> Self {
        Replayer {
            server,
            current: policies(current),
            candidate: policies(candidate),
            cache: ClassifyCache::new(CACHE_CAPACITY),
            memo: HashMap::new(),
            sessions: HashMap::new(),
            counts: ReplayReport::default(),
            groups: BTreeMap::new(),
        }
    }

    pub fn feed(&mut self, record: RecordedStatement) {
        self.counts.statements += 1;
        let Some(role) = record.role.clone() else {
            return self.note(
                Change::NotReproducible,
                "?",
                "the session's start is not in the audit trail",
                &record,
            );
        };
        if record.truncated {
            let why = "the audit record holds only the start of the text";
            return self.note(Change::NotReproducible, &role, why, &record);
        }
        let (now, then) = self.verdicts(&role, &record);
        let recorded = match record.decision {
            Recorded::Allow => Verdict::Allow,
            Recorded::Deny => Verdict::Deny(record.reason.clone().unwrap_or_default()),
        };
        let same_outcome = |a: &Verdict, b: &Verdict| {
            matches!(
                (a, b),
                (Verdict::Allow, Verdict::Allow) | (Verdict::Deny(_), Verdict::Deny(_))
            )
        };
        if !same_outcome(&now, &recorded) {
            let why = match (&recorded, &now) {
                (Verdict::Allow, Verdict::Deny(reason)) => {
                    format!("recorded allowed; the current roles deny it: {reason}")
                }
                (Verdict::Deny(reason), _) => {
                    format!("recorded denied for a reason the text alone does not show: {reason}")
                }
                _ => "recorded decision differs".to_owned(),
            };
            return self.note(Change::NotReproducible, &role, &why, &record);
        }
        match (&now, &then) {
            (Verdict::Allow, Verdict::Deny(reason)) => self.note(Change::NewlyDenied, &role, reason, &record),
            (Verdict::Deny(reason), Verdict::Allow) => {
                let why = format!("no longer denied: {reason}");
                self.note(Change::NewlyAllowed, &role, &why, &record)
            }
            _ => self.counts.unchanged += 1,
        }
    }

    /// (current, candidate) verdicts on one record, from the memo when the text needs no
    /// session state.
    fn verdicts(&mut self, role: &str, record: &RecordedStatement) -> (Verdict, Verdict) {
        let classification = self.cache.classify(&record.sql);
        let key = (role.to_owned(), Arc::as_ptr(&classification) as usize);
        if let Some((_, now, then)) = self.memo.get(&key) {
            return (now.clone(), then.clone());
        }
        self.counts.decisions_made += 1;
        let session = self.sessions.entry(record.session_id.clone()).or_default();
        let now = decide(
            self.current.get(role),
            role,
            self.server,
            &classification,
            &mut session.current,
        );
        let then = decide(
            self.candidate.get(role),
            role,
            self.server,
            &classification,
            &mut session.candidate,
        );
        let stateful = classification
            .statements
            .iter()
            .any(|s| s.execute_name.is_some() || s.prepare_name.is_some() || s.deallocate.is_some());
        if !stateful && self.memo.len() < MEMO_CAPACITY {
            self.memo
                .insert(key, (classification.clone(), now.clone(), then.clone()));
        }
        (now, then)
    }

    fn note(&mut self, change: Change, role: &str, reason: &str, record: &RecordedStatement) {
        match change {
            Change::NewlyDenied => self.counts.newly_denied += 1,
            Change::NewlyAllowed => self.counts.newly_allowed += 1,
            Change::NotReproducible => self.counts.not_reproducible += 1,
        }
        let group = self
            .groups
            .entry((change, role.to_owned(), reason.to_owned()))
            .or_default();
        group.0 += 1;
        if group.1.len() < EXAMPLES_PER_GROUP {
            group.1.push(Example {
                seq: record.seq,
                ts: record.ts,
                session_id: record.session_id.clone(),
                user: record.user.clone(),
                target: record.target.clone(),
                sql: record.sql.clone(),
            });
        }
    }

    pub fn finish(self) -> ReplayReport {
        let mut report = self.counts;
        report.groups = self
            .groups
            .into_iter()
            .map(|((change, role, reason), (count, examples))| ChangeGroup {
                change,
                role,
                reason,
                count,
                examples,
            })
            .collect();
        report.groups.sort_by(|a, b| {
            (a.change, std::cmp::Reverse(a.count)).cmp(&(b.change, std::cmp::Reverse(b.count)))
        });
        report
    }
}

/// Replays `records` (in `seq` order). Pure.
pub fn replay(
    records: impl IntoIterator<Item = RecordedStatement>,
    current: &BTreeMap<String, Role>,
    candidate: &BTreeMap<String, Role>,
    server: ServerVersion,
) -> ReplayReport {
    let mut replayer = Replayer::new(current, candidate, server);
    for record in records {
        replayer.feed(record);
    }
    replayer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn role(name: &str, allow: &[StatementClass]) -> Role {
        Role::allowing(name, allow, Duration::from_secs(3600))
    }

    fn roles(list: &[Role]) -> BTreeMap<String, Role> {
        list.iter().map(|r| (r.name.clone(), r.clone())).collect()
    }

    fn record(seq: u64, session: &str, role: &str, sql: &str, decision: Recorded) -> RecordedStatement {
        RecordedStatement {
            seq,
            ts: Utc::now(),
            session_id: session.into(),
            grant_id: "g_1".into(),
            user: "alice".into(),
            target: "shop".into(),
            role: Some(role.into()),
            sql: sql.into(),
            truncated: false,
            class: String::new(),
            decision,
            reason: (decision == Recorded::Deny).then(|| "denied".into()),
            relations: Vec::new(),
        }
    }

    use StatementClass::{Read, Write};

    #[test]
    fn dropping_write_reports_exactly_the_writes_as_newly_denied() {
        let current = roles(&[role("ops", &[Read, Write])]);
        let candidate = roles(&[role("ops", &[Read])]);
        let trail = vec![
            record(1, "s1", "ops", "SELECT * FROM orders", Recorded::Allow),
            record(
                2,
                "s1",
                "ops",
                "UPDATE orders SET n = 1 WHERE id = 2",
                Recorded::Allow,
            ),
            record(3, "s1", "ops", "SELECT * FROM orders", Recorded::Allow),
            record(4, "s2", "ops", "DELETE FROM orders WHERE id = 7", Recorded::Allow),
        ];
        let report = replay(trail.clone(), &current, &candidate, ServerVersion::OLDEST);
        assert_eq!(
            (report.statements, report.unchanged, report.newly_denied),
            (4, 2, 2)
        );
        assert_eq!((report.newly_allowed, report.not_reproducible), (0, 0));
        assert!(report.changed());
        let seqs: Vec<u64> = report
            .groups
            .iter()
            .flat_map(|g| g.examples.iter().map(|e| e.seq))
            .collect();
        assert_eq!(seqs.len(), 2);
        assert!(seqs.contains(&2) && seqs.contains(&4), "{seqs:?}");
        // the identical SELECT was decided once
        assert_eq!(report.decisions_made, 3);

        // texts of one literal shape are decided once
        let shapes: Vec<RecordedStatement> = (0..50)
            .map(|i| {
                record(
                    i,
                    "s3",
                    "ops",
                    &format!("SELECT * FROM orders WHERE id = {}", 10 + i),
                    Recorded::Allow,
                )
            })
            .collect();
        let report = replay(shapes, &current, &candidate, ServerVersion::OLDEST);
        assert_eq!((report.unchanged, report.decisions_made), (50, 1));

        let same = replay(trail, &current, &current, ServerVersion::OLDEST);
        assert!(!same.changed());
        assert_eq!((same.unchanged, same.not_reproducible), (4, 0));
    }

    #[test]
    fn widening_a_role_reports_newly_allowed_and_unexplained_records_apart() {
        let current = roles(&[role("ro", &[Read])]);
        let candidate = roles(&[role("ro", &[Read, Write])]);
        let mut truncated = record(3, "s1", "ro", "SELECT 1", Recorded::Allow);
        truncated.truncated = true;
        let mut orphan = record(4, "s9", "ro", "SELECT 1", Recorded::Allow);
        orphan.role = None;
        let trail = vec![
            record(1, "s1", "ro", "INSERT INTO t VALUES (1)", Recorded::Deny),
            // recorded denied although the text alone is allowed (e.g. a SET cap, audit refusal)
            record(2, "s1", "ro", "SELECT 2", Recorded::Deny),
            truncated,
            orphan,
        ];
        let report = replay(trail, &current, &candidate, ServerVersion::OLDEST);
        assert_eq!(
            (report.newly_allowed, report.newly_denied, report.not_reproducible),
            (1, 0, 3)
        );
        assert_eq!(report.groups[0].change, Change::NewlyAllowed);
    }

    #[test]
    fn execute_is_judged_by_what_the_session_prepared_in_each_world() {
        let current = roles(&[role("ops", &[Read, Write])]);
        let candidate = roles(&[role("ops", &[Read])]);
        let trail = vec![
            record(
                1,
                "s1",
                "ops",
                "PREPARE w AS UPDATE t SET a = 1 WHERE id = $1",
                Recorded::Allow,
            ),
            record(2, "s1", "ops", "EXECUTE w(1)", Recorded::Allow),
            record(3, "s2", "ops", "PREPARE r AS SELECT * FROM t", Recorded::Allow),
            record(4, "s2", "ops", "EXECUTE r", Recorded::Allow),
        ];
        let report = replay(trail, &current, &candidate, ServerVersion::OLDEST);
        // the PREPARE of a write and its EXECUTE are both newly denied; the read pair is unchanged
        assert_eq!((report.newly_denied, report.unchanged), (2, 2), "{report:#?}");
    }

    #[test]
    fn a_role_the_candidate_drops_denies_everything_it_ran() {
        let current = roles(&[role("ops", &[Read])]);
        let candidate = roles(&[]);
        let report = replay(
            vec![record(1, "s1", "ops", "SELECT 1", Recorded::Allow)],
            &current,
            &candidate,
            ServerVersion::OLDEST,
        );
        assert_eq!(report.newly_denied, 1);
        assert_eq!(report.groups[0].reason, "role ops is not defined");
    }
}
