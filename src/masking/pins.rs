//! Masked columns' identities kept across restarts (issue 15, s9). Each read of a target's catalog
//! follows the masked columns of the previous read by identity — (table OID, attribute number),
//! [`super::catalog::MaskSnapshot::pins`] — so a masked table renamed while timebox runs stays
//! masked. Kept only in memory, they were lost at a restart: a table renamed while timebox was down,
//! with a new table given its old name, was matched by name only, and the renamed one's values
//! went out in clear. `proxy::target_catalog` now stores them (the store's `meta` values, shared by
//! a fleet) after each read that changed them, and starts the first read of a run from them.
//!
//! Stored by rule name (`schema.table.column`), not by the rule's place in the config, so a config
//! whose rules were reordered finds its pins; a rule no longer configured is dropped. Pure.

use serde::{Deserialize, Serialize};

use crate::config::MaskRule;

/// One stored pin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredPin {
    rule: String,
    relid: u32,
    attnum: i16,
}

/// The store key of the pins of `role`'s rules on `target`.
pub fn key(target: &str, role: &str) -> String {
    format!("mask_pins/{target}/{role}")
}

/// `pins` (rule index, table OID, attribute number) as stored.
pub fn encode(rules: &[MaskRule], pins: &[(usize, u32, i16)]) -> Vec<u8> {
    let stored: Vec<StoredPin> = pins
        .iter()
        .filter_map(|&(i, relid, attnum)| {
            Some(StoredPin {
                rule: rules.get(i)?.qualified(),
                relid,
                attnum,
            })
        })
        .collect();
    serde_json::to_vec(&stored).expect("pins serialize")
}

/// The stored pins of `rules` (rule index, table OID, attribute number); pins of rules no longer
/// configured are dropped. An error: the bytes are not pins.
pub fn decode(rules: &[MaskRule], bytes: &[u8]) -> Result<Vec<(usize, u32, i16)>, serde_json::Error> {
    let stored: Vec<StoredPin> = serde_json::from_slice(bytes)?;
    Ok(stored
        .into_iter()
        .filter_map(|p| {
            let i = rules.iter().position(|r| r.qualified() == p.rule)?;
            Some((i, p.relid, p.attnum))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masking::MaskMethod;

    fn rule(table: &str, column: &str) -> MaskRule {
        MaskRule {
            schema: "public".into(),
            table: table.into(),
            column: column.into(),
            method: MaskMethod::Redact,
        }
    }

    #[test]
    fn pins_come_back_by_rule_name_whatever_the_order_of_the_rules() {
        let before = [rule("customers", "email"), rule("payments", "card")];
        let pins = [(0, 16400, 3), (1, 16410, 2), (1, 16420, 2)];
        let stored = encode(&before, &pins);
        assert_eq!(decode(&before, &stored).unwrap(), pins);
        let reordered = [rule("payments", "card"), rule("customers", "email")];
        assert_eq!(
            decode(&reordered, &stored).unwrap(),
            vec![(1, 16400, 3), (0, 16410, 2), (0, 16420, 2)]
        );
    }

    #[test]
    fn pins_of_rules_no_longer_configured_are_dropped_and_garbage_is_an_error() {
        let stored = encode(
            &[rule("customers", "email"), rule("payments", "card")],
            &[(0, 1, 1), (1, 2, 2)],
        );
        assert_eq!(
            decode(&[rule("payments", "card")], &stored).unwrap(),
            vec![(0, 2, 2)]
        );
        assert!(decode(&[rule("payments", "card")], b"not json").is_err());
        assert_eq!(decode(&[], b"[]").unwrap(), vec![]);
    }

    #[test]
    fn keys_name_target_and_role() {
        assert_eq!(key("shop", "support"), "mask_pins/shop/support");
    }
}
