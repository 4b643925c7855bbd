//! The relations a masked role's statement reads, for the lock block the relay sends ahead of it
//! (`relay::lock_prelude`): those its text names, and those of the prepared statements it runs —
//! as PostgreSQL holds them ([`crate::proxy::relay::MaskJudgements::relations`]).

use super::Interceptor;
use crate::policy::{self, Classification};

impl Interceptor {
    /// The relations prepared statement `name` reads (s10; empty when it is unknown). Roles with
    /// masks: as PostgreSQL holds it ([`MaskJudgements::relations`], s11 sixth attack: a refused
    /// `PREPARE` or a skipped Parse replaced the text in the map of names, and the lock block
    /// locked the relations of a statement that never existed).
    pub fn prepared_relations(&self, name: &str) -> Vec<policy::classify::Relation> {
        if self.masking.is_some() {
            return self.mask_judged.relations(name);
        }
        self.prepared
            .get(name)
            .map(|p| self.relations_read(&p.classification))
            .unwrap_or_default()
    }

    /// The relations a checked text reads, as named (s10, for the masked roles' lock block): those
    /// its statements name, and those of the prepared statements it executes (as prepared, every
    /// statement of their text), each once.
    pub fn relations_read(&self, classification: &Classification) -> Vec<policy::classify::Relation> {
        let mut out: Vec<policy::classify::Relation> = Vec::new();
        let mut add = |r: &policy::classify::Relation| {
            if !out.contains(r) {
                out.push(r.clone());
            }
        };
        classification
            .statements
            .iter()
            .flat_map(|s| &s.relations)
            .for_each(&mut add);
        for name in classification
            .statements
            .iter()
            .filter_map(|s| s.execute_name.as_ref())
        {
            if self.masking.is_some() {
                self.mask_judged.relations(name).iter().for_each(&mut add);
            } else if let Some(p) = self.prepared.get(name) {
                p.classification
                    .statements
                    .iter()
                    .flat_map(|s| &s.relations)
                    .for_each(&mut add);
            }
        }
        out
    }
}
