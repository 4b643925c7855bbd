//! The parse-tree walker: a `serde::Serializer` that sees every field of every node of
//! PostgreSQL's parse tree, so a node kind it does not know is still searched for relations and
//! function calls. Part of [`super`]; it only collects [`Findings`], it decides nothing.

use std::fmt;

use pg_query::protobuf;
use serde::ser::{self, Serialize};

use super::Relation;
use crate::policy::version::{self, NewerSyntax};

/// Whether one `MERGE` action changes existing rows with no condition that filters them, for
/// `require_where`. `on_filters`: the `ON` condition names a column; `action_filters`: the action's
/// own `WHEN … AND` condition does. A condition that names no column (`true`, `1 = 1`, `NOT false`,
/// `'t'::bool`, `(SELECT true)`) is the same for every row, so it is no condition. `WHEN MATCHED`
/// rows are filtered by either condition; `WHEN NOT MATCHED BY SOURCE` rows (PostgreSQL 17) are the
/// target rows no source row matched, so only the action's own condition filters them. `INSERT` and
/// `DO NOTHING` change no existing row; any other command counts as changing rows (fail closed).
pub(super) fn merge_action_unfiltered(
    match_kind: i32,
    command_type: i32,
    on_filters: bool,
    action_filters: bool,
) -> bool {
    use protobuf::{CmdType, MergeMatchKind};
    if matches!(
        CmdType::try_from(command_type),
        Ok(CmdType::CmdInsert | CmdType::CmdNothing)
    ) || action_filters
    {
        return false;
    }
    match MergeMatchKind::try_from(match_kind) {
        Ok(MergeMatchKind::MergeWhenMatched) => !on_filters,
        _ => true,
    }
}

/// Statements that may carry a `WITH` clause (and so define CTE names).
const WITH_OWNERS: &[&str] = &[
    "SelectStmt",
    "InsertStmt",
    "UpdateStmt",
    "DeleteStmt",
    "MergeStmt",
];

/// Where a `RangeVar` names a relation the statement changes: (parse node, field, how). A field
/// holding a list of nodes is matched through its `Node` wrapper. `COPY … FROM` is decided by the
/// classifier (whether a `CopyStmt` reads or loads is only known after its relation), and `DROP`
/// names its objects as strings ([`super::kinds`]).
#[rustfmt::skip]
const CHANGED_RELATIONS: &[(&str, &str, &str)] = &[
    ("InsertStmt", "relation", "INSERT INTO"),
    ("UpdateStmt", "relation", "UPDATE"),
    ("DeleteStmt", "relation", "DELETE FROM"),
    ("MergeStmt", "relation", "MERGE INTO"),
    ("TruncateStmt", "relations", "TRUNCATE"),
    ("LockStmt", "relations", "LOCK"),
    ("AlterTableStmt", "relation", "ALTER"),
    ("RenameStmt", "relation", "ALTER … RENAME"),
    ("AlterObjectSchemaStmt", "relation", "ALTER … SET SCHEMA"),
    ("CreateTrigStmt", "relation", "CREATE TRIGGER on"),
    ("RuleStmt", "relation", "CREATE RULE on"),
    ("IndexStmt", "relation", "CREATE INDEX on"),
    ("CreatePolicyStmt", "table", "CREATE POLICY on"),
    ("AlterPolicyStmt", "table", "ALTER POLICY on"),
    ("CreateStatsStmt", "relations", "CREATE STATISTICS on"),
    ("CreateStmt", "relation", "CREATE TABLE"),
    ("IntoClause", "rel", "creates"),
    ("ViewStmt", "view", "CREATE VIEW"),
    ("CreateSeqStmt", "sequence", "CREATE SEQUENCE"),
    ("AlterSeqStmt", "sequence", "ALTER SEQUENCE"),
    ("RefreshMatViewStmt", "relation", "REFRESH MATERIALIZED VIEW"),
    ("ClusterStmt", "relation", "CLUSTER"),
    ("VacuumRelation", "relation", "VACUUM or ANALYZE"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pos {
    Body,
    Cte(u32),
}

#[derive(Debug)]
struct RelRef {
    schema: String,
    name: String,
    /// Target of INSERT/UPDATE/DELETE/MERGE: never a CTE.
    target: bool,
    /// Enclosing WITH owners, innermost first, with where in them the reference is.
    scopes: Vec<(u32, Pos)>,
}

#[derive(Debug)]
struct CteDef {
    owner: u32,
    index: u32,
    name: String,
}

#[derive(Debug)]
pub(super) struct FuncRef {
    pub(super) name: String,
    /// Literal text arguments (only kept for `set_config`).
    pub(super) args: Vec<Option<String>>,
}

#[derive(Debug, Default)]
pub(super) struct Findings {
    /// Parse-node name of the statement (`SelectStmt`, `CreateStmt`, …).
    pub(super) top: Option<&'static str>,
    pub(super) dml: Vec<&'static str>,
    pub(super) locking: bool,
    pub(super) select_into: bool,
    /// An UPDATE or DELETE, or a MERGE with an UPDATE/DELETE action, was seen.
    pub(super) has_update_or_delete: bool,
    pub(super) unfiltered: Vec<Relation>,
    /// Targets of MERGEs with an unfiltered UPDATE/DELETE action.
    pub(super) unfiltered_merge: Vec<Relation>,
    rels: Vec<RelRef>,
    ctes: Vec<CteDef>,
    recursive: Vec<u32>,
    pub(super) funcs: Vec<FuncRef>,
    pub(super) ops: Vec<String>,
    /// `location` of every `A_Const` node (byte offset into the parsed text, -1 when unknown).
    pub(super) constants: Vec<i32>,
    /// Newer-grammar constructs, each once, in order of first appearance.
    pub(super) newer: Vec<NewerSyntax>,
    /// Relations the statement changes (writes, creates, alters, locks, hangs a trigger on), with
    /// how ([`CHANGED_RELATIONS`]); CTE names are never among them.
    pub(super) changed: Vec<(Relation, &'static str)>,
    /// `TABLE name` commands: the location of each one's relation (byte offset into the parsed
    /// text). sqlparser reads them only as `SELECT * FROM name` ([`super::second_opinion`]).
    pub(super) table_commands: Vec<i32>,
}

impl Findings {
    fn saw(&mut self, syntax: NewerSyntax) {
        if !self.newer.contains(&syntax) {
            self.newer.push(syntax);
        }
    }

    /// Relations, with references to CTEs in scope left out.
    pub(super) fn relations(&self) -> Vec<Relation> {
        let mut out = Vec::new();
        for r in &self.rels {
            if r.schema.is_empty() && !r.target && self.is_cte(r) {
                continue;
            }
            out.push(Relation {
                schema: (!r.schema.is_empty()).then(|| r.schema.clone()),
                name: r.name.clone(),
            });
        }
        out
    }

    fn is_cte(&self, r: &RelRef) -> bool {
        r.scopes.iter().any(|(owner, pos)| {
            let recursive = self.recursive.contains(owner);
            self.ctes.iter().any(|c| {
                c.owner == *owner
                    && c.name == r.name
                    && match pos {
                        Pos::Body => true,
                        Pos::Cte(i) => recursive || c.index < *i,
                    }
            })
        })
    }
}

struct Frame {
    name: &'static str,
    field: &'static str,
    idx: u32,
    id: u32,
    /// UpdateStmt/DeleteStmt: a WHERE clause was seen. MergeStmt: its ON condition names a column.
    /// SelectStmt: it is a `TABLE name` command (its target list is the grammar's location-less `*`).
    /// MergeWhenClause: its AND condition names a column.
    flag: bool,
    /// AExpr: its kind. MergeWhenClause: its command type. MergeStmt: 1 when an action is
    /// unfiltered. JsonFuncExpr: its operator.
    int: i32,
    /// MergeWhenClause: its match kind.
    match_kind: i32,
    /// UpdateStmt/DeleteStmt/MergeStmt: index of the target in `Findings::rels`.
    target: Option<usize>,
}

#[derive(Default)]
struct Walker {
    frames: Vec<Frame>,
    next_id: u32,
    found: Findings,
    /// Name being collected for a FuncCall or AExpr frame (by frame id).
    names: Vec<(u32, String)>,
    /// Literal arguments of the FuncCall frames being walked (by frame id).
    args: Vec<(u32, Vec<Option<String>>)>,
    rel: Option<(String, String)>,
    /// `location` of the RangeVar being walked.
    rel_location: i32,
}

pub(super) fn walk(node: &protobuf::Node) -> Findings {
    let mut w = Walker::default();
    // The walker never fails; an error could only come from a serde impl we do not have.
    let _ = node.serialize(&mut w);
    w.found
}

#[derive(Debug)]
struct WalkError(String);

impl fmt::Display for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WalkError {}

impl ser::Error for WalkError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        WalkError(msg.to_string())
    }
}

impl Walker {
    fn top(&self) -> Option<&Frame> {
        self.frames.last()
    }

    /// The frame `up` levels below the top (0 = top).
    fn below(&self, up: usize) -> Option<&Frame> {
        self.frames.len().checked_sub(up + 1).map(|i| &self.frames[i])
    }

    fn enter(&mut self, name: &'static str) {
        self.next_id += 1;
        let id = self.next_id;
        match name {
            "FuncCall" => {
                self.names.push((id, String::new()));
                self.args.push((id, Vec::new()));
            }
            "AExpr" => self.names.push((id, String::new())),
            "RangeVar" => {
                self.rel = Some((String::new(), String::new()));
                self.rel_location = -1;
            }
            "InsertStmt" => self.found.dml.push("INSERT"),
            "UpdateStmt" => {
                self.found.dml.push("UPDATE");
                self.found.has_update_or_delete = true;
            }
            "DeleteStmt" => {
                self.found.dml.push("DELETE");
                self.found.has_update_or_delete = true;
            }
            "MergeStmt" => self.found.dml.push("MERGE"),
            "ColumnRef" => {
                // A column in a MERGE's ON condition or in a WHEN … AND condition makes it filter rows.
                for f in self.frames.iter_mut() {
                    if (f.name == "MergeStmt" && f.field == "join_condition")
                        || (f.name == "MergeWhenClause" && f.field == "condition")
                    {
                        f.flag = true;
                    }
                }
            }
            "LockingClause" => self.found.locking = true,
            "IntoClause" if self.top().is_some_and(|f| f.name == "SelectStmt") => {
                self.found.select_into = true;
            }
            other => {
                if let Some(syntax) = version::node_syntax(other) {
                    self.found.saw(syntax);
                }
            }
        }
        self.frames.push(Frame {
            name,
            field: "",
            idx: 0,
            id,
            flag: false,
            int: 0,
            match_kind: 0,
            target: None,
        });
    }

    fn exit(&mut self) {
        let Some(frame) = self.frames.pop() else { return };
        match frame.name {
            "FuncCall" => {
                let name = self.names.pop().map(|(_, n)| n).unwrap_or_default();
                let args = self.args.pop().map(|(_, a)| a).unwrap_or_default();
                self.found.funcs.push(FuncRef { name, args });
            }
            "AExpr" => {
                let name = self.names.pop().map(|(_, n)| n).unwrap_or_default();
                use protobuf::AExprKind as K;
                let operator = matches!(
                    K::try_from(frame.int),
                    Ok(K::AexprOp
                        | K::AexprOpAny
                        | K::AexprOpAll
                        | K::AexprDistinct
                        | K::AexprNotDistinct
                        | K::AexprNullif
                        | K::AexprIn
                        | K::AexprLike
                        | K::AexprIlike
                        | K::AexprSimilar)
                );
                if operator && !name.is_empty() && !self.found.ops.contains(&name) {
                    self.found.ops.push(name);
                }
            }
            "RangeVar" => self.exit_range_var(),
            "JsonFuncExpr" => self.found.saw(version::json_func_expr(frame.int)),
            "MergeWhenClause" => {
                // Frames: MergeStmt(merge_when_clauses) → Node (top) → MergeWhenClause (popped).
                let on_filters = self.below(1).is_some_and(|m| m.name == "MergeStmt" && m.flag);
                let unfiltered = merge_action_unfiltered(frame.match_kind, frame.int, on_filters, frame.flag);
                if !matches!(
                    protobuf::CmdType::try_from(frame.int),
                    Ok(protobuf::CmdType::CmdInsert | protobuf::CmdType::CmdNothing)
                ) {
                    self.found.has_update_or_delete = true;
                }
                if unfiltered {
                    let len = self.frames.len();
                    if let Some(merge) = len.checked_sub(2).and_then(|i| self.frames.get_mut(i)) {
                        if merge.name == "MergeStmt" {
                            merge.int = 1;
                        }
                    }
                }
            }
            "MergeStmt" if frame.int == 1 => {
                let target = self.target_relation(frame.target);
                self.found.unfiltered_merge.push(target);
            }
            "UpdateStmt" | "DeleteStmt" if !frame.flag => {
                let target = self.target_relation(frame.target);
                self.found.unfiltered.push(target);
            }
            _ => {}
        }
    }

    /// The relation a statement's frame names as its target (`?` when the walk did not see it).
    fn target_relation(&self, target: Option<usize>) -> Relation {
        match target.and_then(|i| self.found.rels.get(i)) {
            Some(r) => Relation {
                schema: (!r.schema.is_empty()).then(|| r.schema.clone()),
                name: r.name.clone(),
            },
            None => Relation {
                schema: None,
                name: "?".into(),
            },
        }
    }

    fn exit_range_var(&mut self) {
        let Some((schema, name)) = self.rel.take() else {
            return;
        };
        // The RangeVar frame is already popped: the parent is on top.
        let parent = self.top();
        let target = parent.is_some_and(|p| {
            p.field == "relation"
                && matches!(p.name, "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt")
        });
        let mut scopes = Vec::new();
        for k in (0..self.frames.len()).rev() {
            let f = &self.frames[k];
            if WITH_OWNERS.contains(&f.name) {
                let pos = if f.field == "with_clause" {
                    Pos::Cte(self.frames.get(k + 1).map_or(0, |w| w.idx))
                } else {
                    Pos::Body
                };
                scopes.push((f.id, pos));
            }
        }
        // The node holding the RangeVar: the parent, or for a list field the parent of its Node.
        let owner = match parent {
            Some(p) if p.name == "Node" => self.below(1),
            p => p,
        };
        let table_command =
            owner.is_some_and(|o| o.name == "SelectStmt" && o.field == "from_clause" && o.flag);
        let changed = owner.and_then(|o| {
            CHANGED_RELATIONS
                .iter()
                .find(|(node, field, _)| *node == o.name && *field == o.field)
                .map(|(_, _, how)| *how)
        });
        if table_command {
            self.found.table_commands.push(self.rel_location);
        }
        if let Some(how) = changed {
            let rel = Relation {
                schema: (!schema.is_empty()).then(|| schema.clone()),
                name: name.clone(),
            };
            self.found.changed.push((rel, how));
        }
        let index = self.found.rels.len();
        if target {
            if let Some(p) = self.frames.last_mut() {
                if matches!(p.name, "UpdateStmt" | "DeleteStmt" | "MergeStmt") {
                    p.target = Some(index);
                }
            }
        }
        self.found.rels.push(RelRef {
            schema,
            name,
            target,
            scopes,
        });
    }

    fn string(&mut self, v: &str) {
        let Some(top) = self.top() else { return };
        match (top.name, top.field) {
            ("RangeVar", "schemaname") => {
                if let Some(r) = &mut self.rel {
                    r.0 = v.to_owned();
                }
            }
            ("RangeVar", "relname") => {
                if let Some(r) = &mut self.rel {
                    r.1 = v.to_owned();
                }
            }
            ("CommonTableExpr", "ctename") => {
                // Frames: owner(with_clause) → WithClause(ctes, i) → Node → CommonTableExpr.
                if let (Some(with), Some(owner)) = (self.below(2), self.below(3)) {
                    if with.name == "WithClause" && owner.field == "with_clause" {
                        let (index, owner) = (with.idx, owner.id);
                        self.found.ctes.push(CteDef {
                            owner,
                            index,
                            name: v.to_owned(),
                        });
                    }
                }
            }
            ("String", "sval") => {
                // A name part: FuncCall(funcname) or AExpr(name) → Node → String.
                if let Some(owner) = self.below(2) {
                    let is_name = (owner.name == "FuncCall" && owner.field == "funcname")
                        || (owner.name == "AExpr" && owner.field == "name");
                    if is_name {
                        let id = owner.id;
                        if let Some((nid, name)) = self.names.last_mut() {
                            if *nid == id {
                                if !name.is_empty() {
                                    name.push('.');
                                }
                                name.push_str(v);
                            }
                        }
                        return;
                    }
                }
                // A literal argument: FuncCall(args, i) → Node → AConst(val) → String.
                if let (Some(aconst), Some(call)) = (self.below(1), self.below(3)) {
                    if aconst.name == "AConst" && call.name == "FuncCall" && call.field == "args" {
                        let (id, idx) = (call.id, call.idx as usize);
                        let keep = self
                            .names
                            .iter()
                            .rev()
                            .find(|(nid, _)| *nid == id)
                            .is_some_and(|(_, n)| n.rsplit('.').next() == Some("set_config"));
                        if keep {
                            if let Some((aid, args)) = self.args.last_mut() {
                                if *aid == id {
                                    if args.len() <= idx {
                                        args.resize(idx + 1, None);
                                    }
                                    args[idx] = Some(v.to_owned());
                                }
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// Scalars the walk does not look at: `fn serialize_i8(self, _: i8)` and so on do nothing.
macro_rules! ignore_scalars {
    ($($method:ident: $ty:ty),* $(,)?) => {
        $(fn $method(self, _: $ty) -> Result<(), WalkError> {
            Ok(())
        })*
    };
}

/// Sequences whose elements are walked as they come, with nothing to do at the end.
macro_rules! walk_elements {
    ($($part:ident::$method:ident),* $(,)?) => {$(
        impl ser::$part for &mut Walker {
            type Ok = ();
            type Error = WalkError;
            fn $method<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), WalkError> {
                value.serialize(&mut **self)
            }
            fn end(self) -> Result<(), WalkError> {
                Ok(())
            }
        }
    )*};
}

/// Structs and struct variants: each field is walked under its name (the frame's `field`), and
/// the frame [`Walker::enter`] opened is closed at the end.
macro_rules! walk_struct_fields {
    ($($part:ident),*) => {$(
        impl ser::$part for &mut Walker {
            type Ok = ();
            type Error = WalkError;
            fn serialize_field<T: ?Sized + Serialize>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), WalkError> {
                if let Some(top) = self.frames.last_mut() {
                    top.field = key;
                    top.idx = 0;
                }
                value.serialize(&mut **self)
            }
            fn end(self) -> Result<(), WalkError> {
                self.exit();
                Ok(())
            }
        }
    )*};
}

impl ser::Serializer for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    ignore_scalars! {
        serialize_i8: i8, serialize_i16: i16, serialize_i64: i64,
        serialize_u8: u8, serialize_u16: u16, serialize_u32: u32, serialize_u64: u64,
        serialize_f32: f32, serialize_f64: f64, serialize_char: char,
    }

    fn serialize_bytes(self, _: &[u8]) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_bool(self, v: bool) -> Result<(), WalkError> {
        if v && self
            .top()
            .is_some_and(|f| f.name == "WithClause" && f.field == "recursive")
        {
            if let Some(owner) = self.below(1) {
                let id = owner.id;
                self.found.recursive.push(id);
            }
        }
        Ok(())
    }
    fn serialize_i32(self, v: i32) -> Result<(), WalkError> {
        if let Some(top) = self.frames.last_mut() {
            if (top.name == "AExpr" && top.field == "kind")
                || (top.name == "MergeWhenClause" && top.field == "command_type")
                || (top.name == "JsonFuncExpr" && top.field == "op")
            {
                top.int = v;
            } else if top.name == "MergeWhenClause" && top.field == "match_kind" {
                top.match_kind = v;
            } else if top.name == "AConst" && top.field == "location" {
                self.found.constants.push(v);
            } else if top.name == "RangeVar" && top.field == "location" {
                self.rel_location = v;
            } else if top.name == "ResTarget" && top.field == "location" && v < 0 {
                // `TABLE name` is the only grammar rule that builds a SELECT's target without a
                // location: SelectStmt(target_list) → Node → ResTarget.
                let len = self.frames.len();
                if let Some(select) = len.checked_sub(3).and_then(|i| self.frames.get_mut(i)) {
                    if select.name == "SelectStmt" && select.field == "target_list" {
                        select.flag = true;
                    }
                }
            }
        }
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), WalkError> {
        self.string(v);
        Ok(())
    }
    fn serialize_none(self) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), WalkError> {
        if let Some(top) = self.frames.last_mut() {
            if matches!(top.name, "UpdateStmt" | "DeleteStmt") && top.field == "where_clause" {
                top.flag = true;
            }
        }
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), WalkError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), WalkError> {
        if self.found.top.is_none() {
            self.found.top = Some(variant);
        }
        value.serialize(self)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self, WalkError> {
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self, WalkError> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, WalkError> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, WalkError> {
        Ok(self)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self, WalkError> {
        Ok(self)
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Self, WalkError> {
        self.enter(name);
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, WalkError> {
        self.enter(name);
        Ok(self)
    }
}

impl ser::SerializeSeq for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), WalkError> {
        value.serialize(&mut **self)?;
        if let Some(top) = self.frames.last_mut() {
            top.idx += 1;
        }
        Ok(())
    }
    fn end(self) -> Result<(), WalkError> {
        Ok(())
    }
}

walk_elements!(
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
);

impl ser::SerializeMap for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, _: &T) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), WalkError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), WalkError> {
        Ok(())
    }
}

walk_struct_fields!(SerializeStruct, SerializeStructVariant);
