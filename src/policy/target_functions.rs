//! What a target's own catalog says about function names (issue 12 item 1), so built-ins are not
//! judged by a hand-kept list alone. Read once per target and server version through a connection
//! timebox opens itself (never an engineer's session: see `proxy::target_catalog`), and consulted
//! by [`super::authorize`] for two questions:
//!
//! - **Does a call of this name only read?** A name all of whose functions are in `pg_catalog`
//!   and marked `IMMUTABLE` or `STABLE` (PostgreSQL's promise that they do not modify the database)
//!   counts as read-only, when the hand lists ([`super::functions`]) do not know it. The reviewed
//!   lists still come first: a side-effecting built-in (`set_config`, `nextval`, `pg_notify`,
//!   `lo_*`, `pg_terminate_backend`, `dblink*`, …) is write or admin whatever its volatility, and
//!   volatile built-ins that only read (`random`, `clock_timestamp`, `pg_sleep`) stay read.
//! - **Can an unqualified built-in name reach a user function?** When a function of the same name
//!   exists outside `pg_catalog` and `information_schema` (`public.lower(int)`), PostgreSQL picks
//!   by argument types and may call the user's; such a call counts as a user function (write
//!   unless the role's `allow_functions` names it), whatever the hand lists say.
//!
//! Pure: built from rows, answers from sets.

use std::collections::HashSet;

/// The query that reads what [`TargetFunctions::from_rows`] takes: per function name, whether every
/// function of that name is a read-only `pg_catalog` function, and whether any is user-defined.
/// Every function and operator is named in `pg_catalog` and compares equal types (s8): a user's
/// operator or aggregate of the same name, found first on a `search_path` a role setting put
/// before `pg_catalog`, would otherwise decide which names count as read-only built-ins (the s7
/// finding F1 on the masking queries).
pub const FUNCTIONS_QUERY: &str = "SELECT p.proname, \
     pg_catalog.bool_and(n.nspname OPERATOR(pg_catalog.=) 'pg_catalog'::pg_catalog.name \
       AND p.provolatile OPERATOR(pg_catalog.=) ANY ('{i,s}'::pg_catalog.\"char\"[]) \
       AND p.prokind OPERATOR(pg_catalog.=) ANY ('{f,a,w}'::pg_catalog.\"char\"[])), \
     pg_catalog.bool_or(NOT n.nspname OPERATOR(pg_catalog.=) ANY ('{pg_catalog,information_schema}'::pg_catalog.name[])) \
     FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace \
     GROUP BY p.proname";

/// Function names as one target's catalog has them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetFunctions {
    /// Names whose every function is an immutable or stable `pg_catalog` function.
    read_only: HashSet<String>,
    /// Names that a function outside `pg_catalog`/`information_schema` has.
    user_defined: HashSet<String>,
}

impl TargetFunctions {
    /// From the rows of [`FUNCTIONS_QUERY`]: (name, every one read-only built-in, any user-defined).
    pub fn from_rows(rows: impl IntoIterator<Item = (String, bool, bool)>) -> Self {
        let mut out = TargetFunctions::default();
        for (name, read_only, user_defined) in rows {
            if user_defined {
                out.user_defined.insert(name.clone());
            }
            if read_only && !user_defined {
                out.read_only.insert(name);
            }
        }
        out
    }

    /// Whether a call of `name` (folded, as written: `f` or `pg_catalog.f`) reaches only read-only
    /// built-ins. Any other qualification is a user schema: no.
    pub fn reads_only(&self, name: &str) -> bool {
        match name.rsplit_once('.') {
            Some(("pg_catalog", base)) => self.read_only.contains(base),
            Some(_) => false,
            None => self.read_only.contains(name),
        }
    }

    /// Whether an unqualified call of `name` may reach a user-defined function.
    pub fn shadowed(&self, name: &str) -> bool {
        !name.contains('.') && self.user_defined.contains(name)
    }

    /// How many names are known (for logs and metrics).
    pub fn len(&self) -> usize {
        self.read_only.len() + self.user_defined.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> TargetFunctions {
        TargetFunctions::from_rows([
            ("pg_get_function_sqlbody".to_string(), true, false),
            ("lower".to_string(), false, true),
            ("nextval".to_string(), false, false),
            ("my_report".to_string(), false, true),
        ])
    }

    #[test]
    fn stable_and_immutable_catalog_functions_read_only() {
        let t = target();
        assert!(t.reads_only("pg_get_function_sqlbody"));
        assert!(t.reads_only("pg_catalog.pg_get_function_sqlbody"));
        assert!(
            !t.reads_only("public.pg_get_function_sqlbody"),
            "another schema is a user's"
        );
        assert!(!t.reads_only("nextval"), "volatile");
        assert!(!t.reads_only("my_report"), "user-defined");
        assert!(!t.reads_only("not_there"), "unknown to the catalog");
    }

    /// The decisions a read role gets with and without the target's catalog.
    #[test]
    fn authorize_consults_the_catalog_for_unlisted_and_shadowed_names() {
        use crate::policy::{authorize_all_in, classify, RolePolicy, ServerVersion, StatementClass, Target};
        let t = TargetFunctions::from_rows([
            ("int4pl".to_string(), true, false),
            ("reverse".to_string(), false, true),
            ("my_report".to_string(), false, true),
        ]);
        let read = RolePolicy::with_classes("read", &[StatementClass::Read]);
        let server = ServerVersion::parse("15.4").expect("version");
        let with = Target {
            server,
            functions: Some(&t),
        };
        let without = Target::version(server);
        let decide = |target: Target<'_>, sql: &str| authorize_all_in(&read, target, &classify(sql));
        // An unlisted immutable built-in: read with the catalog, write (denied) without it.
        assert!(decide(with, "SELECT int4pl(1, 2)").is_allow());
        assert!(decide(with, "SELECT pg_catalog.int4pl(1, 2)").is_allow());
        assert!(!decide(without, "SELECT int4pl(1, 2)").is_allow());
        // A hand-listed built-in whose name a user function shares: denied unqualified.
        let d = decide(with, "SELECT reverse('abc')");
        assert!(
            d.to_string()
                .contains("a user-defined function on this target also has"),
            "{d}"
        );
        assert!(decide(with, "SELECT pg_catalog.reverse('abc')").is_allow());
        assert!(decide(without, "SELECT reverse('abc')").is_allow());
        // User functions and side-effecting built-ins keep their rules.
        assert!(!decide(with, "SELECT my_report()").is_allow());
        assert!(!decide(with, "SELECT nextval('s')").is_allow());
    }

    #[test]
    fn a_built_in_name_a_user_function_shares_is_shadowed_when_unqualified() {
        let t = target();
        assert!(t.shadowed("lower"));
        assert!(!t.reads_only("lower"));
        assert!(
            !t.shadowed("pg_catalog.lower"),
            "qualified: PostgreSQL calls the catalog's"
        );
        assert!(!t.shadowed("upper"));
    }

    /// Regression (s8, the class of s7's F1): no operator or function of the query is left to the
    /// `search_path`.
    #[test]
    fn the_functions_query_names_its_operators_and_functions() {
        let q = FUNCTIONS_QUERY;
        assert_eq!(q.matches(" = ").count(), 0, "{q}");
        assert!(!q.contains(" IN ("), "{q}");
        assert_eq!(q.matches("OPERATOR(pg_catalog.=)").count(), 5, "{q}");
        assert!(
            q.contains("pg_catalog.bool_and(") && q.contains("pg_catalog.bool_or("),
            "{q}"
        );
    }
}
