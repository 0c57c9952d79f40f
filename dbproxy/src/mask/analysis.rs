//! Where a masked column may appear in a statement — the "no path around a mask" half of
//! masking. Values are masked by the proxy on their way back (see [`super::rows`]), so the
//! server must never *compute* with a masked column on the developer's behalf: a function, a
//! comparison, a sort, a copy or a join over the real value would leak it, one inference at a
//! time. The rule is therefore simple and strict:
//!
//! * a masked column may be **selected plainly** (`email`, `u.email`, `email AS e`) in the
//!   projection of the statement's outermost `SELECT` — the value comes back and is masked
//!   there — or expanded from `*`/`t.*` in that same projection;
//! * **anywhere else** it is refused: in an expression or function, in WHERE/ON/USING/GROUP
//!   BY/HAVING/ORDER BY/window clauses, in a subquery, derived table, CTE or UNION branch, in a
//!   `*` of a nested query (except directly under `EXISTS`), as a positional `ORDER BY 2`, in
//!   INSERT … SELECT, UPDATE … SET, RETURNING, or through an alias of a masked projection;
//! * it may not be **written** either (INSERT/UPDATE/REPLACE naming it, or an INSERT without a
//!   column list into its table): a write of a guessed value would answer "does this value
//!   exist?" through a duplicate-key error.
//!
//! Column names are matched conservatively: an identifier whose last part is the name of any
//! masked column of any masked table the statement reaches counts as masked, whatever table it
//! really belongs to. A false alarm costs a refusal with a clear message; a miss would cost a
//! leak. Views reading masked tables are refused by the session's catalog check, and the server's
//! own diaries of statements (`mysql`, `performance_schema`, `sys`, the process list) by
//! [`check`] here, since they hold production's SQL text with real values in it.

use super::{fold, MaskRules};
use crate::policy::{table_name, TableName};
use sqlparser::ast::{
    visit_relations, Expr, GroupByExpr, ObjectName, OrderByKind, Query, Select, SelectItem,
    SetExpr, Statement, TableFactor, TableWithJoins, Visit, Visitor,
};
use std::collections::HashSet;
use std::ops::ControlFlow;

/// Schemas that record other connections' statements or column statistics (real values).
const DIARY_SCHEMAS: &[&str] = &["mysql", "performance_schema", "sys"];

/// The `information_schema` tables open with masking on: the catalog, as ORMs and tools read
/// it. The others hold statements (PROCESSLIST, INNODB_TRX), index key values (INNODB_LOCKS),
/// partition bounds or statistics.
const OPEN_INFORMATION_SCHEMA: &[&str] = &[
    "schemata",
    "tables",
    "columns",
    "views",
    "routines",
    "parameters",
    "triggers",
    "events",
    "statistics",
    "key_column_usage",
    "referential_constraints",
    "table_constraints",
    "check_constraints",
    "character_sets",
    "collations",
    "collation_character_set_applicability",
    "engines",
    "plugins",
    "keywords",
    "sql_functions",
    "column_privileges",
    "table_privileges",
    "schema_privileges",
    "user_privileges",
    "applicable_roles",
    "enabled_roles",
    "session_variables",
    "session_status",
];

/// Names compared as the server compares identifiers ([`fold`]).
trait FoldName {
    fn fold_name(&self) -> String;
}

impl FoldName for str {
    fn fold_name(&self) -> String {
        fold(self)
    }
}

/// A masked column as (schema, table, column), lower-cased.
pub type ColumnRef = (String, String, String);
type Reached<'a> = Vec<(&'a TableName, Vec<ColumnRef>)>;

/// What the result of an allowed statement carries, for the row masker: for each position of
/// the outermost projection, the masked column it plainly selects, if the AST can tell
/// (`None` overall when a `*` makes positions unknowable; the column definitions then decide).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaskedProjection {
    pub positions: Option<Vec<Option<ColumnRef>>>,
}

/// Checks `statement` (run with `default_db` selected) against the masking rules.
/// `Err` carries the refusal for the developer.
pub fn check(
    statement: &Statement,
    rules: &MaskRules,
    default_db: Option<&str>,
) -> Result<MaskedProjection, String> {
    let mut relations = Vec::new();
    let _ = visit_relations(statement, |n| {
        relations.push(table_name(n));
        ControlFlow::<()>::Continue(())
    });
    // `TABLE t` names its table as a plain string, which visit_relations does not see.
    struct TableStatements(Vec<TableName>);
    impl Visitor for TableStatements {
        type Break = ();
        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            fn walk(body: &SetExpr, out: &mut Vec<TableName>) {
                match body {
                    SetExpr::Table(t) => out.extend(t.table_name.iter().map(|n| TableName {
                        schema: t.schema_name.clone(),
                        name: n.clone(),
                    })),
                    SetExpr::SetOperation { left, right, .. } => {
                        walk(left, out);
                        walk(right, out);
                    }
                    _ => {}
                }
            }
            walk(&query.body, &mut self.0);
            ControlFlow::Continue(())
        }
    }
    let mut table_statements = TableStatements(Vec::new());
    let _ = statement.visit(&mut table_statements);
    relations.extend(table_statements.0);
    for t in &relations {
        let schema = t.schema.as_deref().or(default_db).unwrap_or("").fold_name();
        let name = t.name.fold_name();
        if DIARY_SCHEMAS.contains(&schema.as_str())
            || (schema == "information_schema" && !OPEN_INFORMATION_SCHEMA.contains(&name.as_str()))
        {
            return Err(format!(
                "DevInProd refused a read of {schema}.{name}: with masking on, the server's own records \
                 of statements and column statistics are closed (they hold production's real values)"
            ));
        }
    }
    // A temporary table named like a masked table would be masked as that table: a mask
    // oracle for any value the developer puts in it.
    if let Statement::CreateTable(ct) = statement {
        let t = table_name(&ct.name);
        if !rules
            .masked_columns(t.schema.as_deref().or(default_db), &t.name)
            .is_empty()
        {
            return Err(format!(
                "DevInProd refused CREATE TEMPORARY TABLE {}: a table of that name has masked columns, \
                 and a temporary table would shadow it; choose another name",
                t.name
            ));
        }
    }
    // The masked tables this statement reaches, and the names of their masked columns.
    let reached: Reached = relations
        .iter()
        .map(|t| {
            (
                t,
                rules.masked_columns(t.schema.as_deref().or(default_db), &t.name),
            )
        })
        .filter(|(_, cols)| !cols.is_empty())
        .collect();
    if reached.is_empty() {
        return Ok(MaskedProjection::default());
    }
    let mut names: HashSet<String> = reached
        .iter()
        .flat_map(|(_, cols)| cols.iter().map(|(_, _, c)| c.clone()))
        .collect();
    let masked_tables: HashSet<String> = reached.iter().map(|(t, _)| t.name.fold_name()).collect();

    check_writes(statement, &names, &masked_tables)?;

    // NATURAL and USING joins compare columns without naming them as expressions, wherever the
    // join sits (parentheses, multi-table UPDATE/DELETE): refused outright. The text is the
    // parsed statement printed back, so comments and quoting cannot hide the keywords.
    let printed = statement.to_string().to_ascii_uppercase();
    if printed.contains("NATURAL ") || printed.contains(" USING") {
        return Err("DevInProd refused a NATURAL or USING join in a statement that reaches masked columns: \
             it may compare masked values; join with ON on unmasked columns"
            .into());
    }

    // The outermost SELECT, whose plain projections may carry masked columns out.
    let top = match statement {
        Statement::Query(q) => Some(&**q),
        Statement::Explain { statement, .. } => match &**statement {
            Statement::Query(q) => Some(&**q),
            _ => None,
        },
        _ => None,
    };
    let top_select = top.and_then(|q| match &*q.body {
        SetExpr::Select(s) => Some(&**s),
        _ => None,
    });

    let mut allowed: HashSet<*const Expr> = HashSet::new();
    let mut positions = Vec::new();
    let mut wildcard_over_masked = false;
    if let Some(select) = top_select {
        for item in &select.projection {
            match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                    let column = plain_column(e).filter(|c| names.contains(c));
                    if let Some(column) = &column {
                        allowed.insert(e as *const Expr);
                        if let SelectItem::ExprWithAlias { alias, .. } = item {
                            // `ORDER BY e` for `email AS e` sorts by the real value.
                            names.insert(alias.value.fold_name());
                        }
                        positions.push(resolve_plain(e, column, &reached, select));
                    } else {
                        positions.push(None);
                    }
                }
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                    wildcard_over_masked |= direct_tables(&select.from)
                        .iter()
                        .any(|t| masked_tables.contains(&table_name(t).name.fold_name()));
                    positions.push(None);
                }
                SelectItem::ExprWithAliases { .. } => positions.push(None),
            }
        }
        // Positional references to the projection: `ORDER BY 2`, and anything the server folds
        // into a position (`(2)`, `+2`, `TRUE`): an item that names no column.
        let projection_has_masked = wildcard_over_masked || !allowed.is_empty();
        if projection_has_masked {
            let mut positional = top
                .and_then(|q| q.order_by.as_ref())
                .map(|o| match &o.kind {
                    OrderByKind::Expressions(es) => es.iter().any(|e| names_no_column(&e.expr)),
                    OrderByKind::All(_) => true,
                })
                .unwrap_or(false);
            match &select.group_by {
                GroupByExpr::Expressions(es, _) => positional |= es.iter().any(names_no_column),
                GroupByExpr::All(_) => positional = true,
            }
            if positional {
                return Err("DevInProd refused ORDER BY/GROUP BY by position in a query that selects masked \
                     columns: it would sort or group by their real values; name unmasked columns instead"
                    .into());
            }
            // DISTINCT over a many-to-one mask (fixed, null, redact, hash cut short) counts the
            // real values and tells which rows share one.
            if select.distinct.is_some() {
                let lossy = |(s, t, c): &ColumnRef| {
                    rules.strategy(s, t, c).is_some_and(|st| !st.is_bijective())
                };
                let lossy_selected = select.projection.iter().any(|item| match item {
                    SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                        plain_column(e).is_some_and(|c| {
                            reached
                                .iter()
                                .flat_map(|(_, cols)| cols.iter())
                                .any(|r| r.2 == c && lossy(r))
                        })
                    }
                    SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                        reached.iter().flat_map(|(_, cols)| cols.iter()).any(lossy)
                    }
                    SelectItem::ExprWithAliases { .. } => false,
                });
                if lossy_selected {
                    return Err("DevInProd refused DISTINCT over a column masked with fixed, null, redact or \
                         hash: the number of rows would count its real values"
                        .into());
                }
            }
        }
    }
    // Index hints on a table with masked columns choose the order rows come back in.
    let mut hinted = None;
    for_each_statement_factor(statement, &mut |f| {
        if let TableFactor::Table {
            name, index_hints, ..
        } = f
        {
            let t = table_name(name).name.fold_name();
            if !index_hints.is_empty() && masked_tables.contains(&t) {
                hinted = Some(t);
            }
        }
    });
    if let Some(t) = hinted {
        return Err(format!(
            "DevInProd refused an index hint on {t}: it has masked columns, and an index over one \
             would return rows in the order of its real values"
        ));
    }

    let mut exists_selects: HashSet<*const Select> = HashSet::new();
    let top_select_ptr = top_select.map(|s| s as *const Select);
    let mut finder = Finder {
        names: &names,
        masked_tables: &masked_tables,
        allowed: &allowed,
        top_select: top_select_ptr,
        exists_selects: &mut exists_selects,
    };
    if let ControlFlow::Break(why) = statement.visit(&mut finder) {
        return Err(why);
    }
    let has_wildcard = top_select.is_some_and(|s| {
        s.projection.iter().any(|i| {
            matches!(
                i,
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
            )
        })
    });
    Ok(MaskedProjection {
        positions: (!has_wildcard && top_select.is_some()).then_some(positions),
    })
}

/// `email`, `u.email`, `shop.users.email` (lower-cased last part), or `None` for anything else.
fn plain_column(e: &Expr) -> Option<String> {
    match e {
        Expr::Identifier(i) => Some(i.value.fold_name()),
        Expr::CompoundIdentifier(parts) => parts.last().map(|i| i.value.fold_name()),
        Expr::Nested(inner) => plain_column(inner),
        _ => None,
    }
}

/// The masked column a plain projection selects, when it can be pinned to one table: by its
/// qualifier (a table name or alias of the outermost FROM), or as the only reached table that
/// masks a column of that name.
fn resolve_plain(
    e: &Expr,
    column: &str,
    reached: &[(&TableName, Vec<ColumnRef>)],
    select: &Select,
) -> Option<ColumnRef> {
    let qualifier = match e {
        Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
            Some(parts[parts.len() - 2].value.fold_name())
        }
        _ => None,
    };
    let table_of = |q: &str| -> Option<String> {
        let mut found = None;
        for_each_factor(&select.from, &mut |f| {
            if let TableFactor::Table { name, alias, .. } = f {
                let t = table_name(name).name.fold_name();
                let a = alias.as_ref().map(|a| a.name.value.fold_name());
                if a.as_deref() == Some(q) || (a.is_none() && t == q) {
                    found = Some(t);
                }
            }
        });
        found
    };
    let candidates: Vec<&ColumnRef> = reached
        .iter()
        .flat_map(|(_, cols)| cols.iter())
        .filter(|(_, t, c)| {
            c == column
                && match &qualifier {
                    Some(q) => table_of(q).as_deref() == Some(t.as_str()),
                    None => true,
                }
        })
        .collect();
    match candidates.as_slice() {
        [one] => Some((*one).clone()),
        _ => None,
    }
}

/// An ORDER BY / GROUP BY item that names no column and calls nothing but `RAND()`: a
/// position, however written (`2`, `(2)`, `+2`, `TRUE`).
fn names_no_column(e: &Expr) -> bool {
    if let Expr::Function(f) = e {
        if f.name.to_string().eq_ignore_ascii_case("rand") {
            return false;
        }
    }
    let mut found = false;
    let _ = sqlparser::ast::visit_expressions(e, |x| {
        if matches!(
            x,
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) | Expr::Function(_)
        ) {
            found = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    !found
}

/// Every table factor of the statement, at any depth.
fn for_each_statement_factor(statement: &Statement, f: &mut impl FnMut(&TableFactor)) {
    struct Factors<'a, F>(&'a mut F);
    impl<F: FnMut(&TableFactor)> Visitor for Factors<'_, F> {
        type Break = ();
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
            (self.0)(factor);
            ControlFlow::Continue(())
        }
    }
    let _ = statement.visit(&mut Factors(f));
}

fn for_each_factor(from: &[TableWithJoins], f: &mut impl FnMut(&TableFactor)) {
    for twj in from {
        let mut visit = |factor: &TableFactor| {
            if let TableFactor::NestedJoin {
                table_with_joins, ..
            } = factor
            {
                for_each_factor(std::slice::from_ref(table_with_joins), f);
            } else {
                f(factor);
            }
        };
        visit(&twj.relation);
        for j in &twj.joins {
            visit(&j.relation);
        }
    }
}

/// Tables named directly in a FROM clause (not inside derived tables).
fn direct_tables(from: &[TableWithJoins]) -> Vec<ObjectName> {
    let mut out = Vec::new();
    for_each_factor(from, &mut |f| {
        if let TableFactor::Table { name, .. } = f {
            out.push(name.clone());
        }
    });
    out
}

fn last_ident(n: &ObjectName) -> String {
    n.0.last()
        .map(|p| match p.as_ident() {
            Some(i) => i.value.fold_name(),
            None => p.to_string().fold_name(),
        })
        .unwrap_or_default()
}

fn check_writes(
    statement: &Statement,
    names: &HashSet<String>,
    masked_tables: &HashSet<String>,
) -> Result<(), String> {
    let refuse = |what: &str| {
        Err(format!(
            "DevInProd refused a write to masked column {what}: a write of a chosen value would reveal \
             through a duplicate-key error whether that value exists; leave masked columns out of writes"
        ))
    };
    match statement {
        Statement::Insert(insert) => {
            let target = match &insert.table {
                sqlparser::ast::TableObject::TableName(n) => last_ident(n),
                _ => String::new(),
            };
            if masked_tables.contains(&target)
                && insert.columns.is_empty()
                && insert.assignments.is_empty()
            {
                return refuse(&format!(
                    "{target} (an INSERT without a column list sets every column)"
                ));
            }
            if let Some(c) = insert
                .columns
                .iter()
                .map(last_ident)
                .find(|c| names.contains(c))
            {
                return refuse(&c);
            }
            let mut assignments: Vec<&sqlparser::ast::Assignment> =
                insert.assignments.iter().collect();
            if let Some(sqlparser::ast::OnInsert::DuplicateKeyUpdate(a)) = &insert.on {
                assignments.extend(a.iter());
            }
            if let Some(c) = assigned(&assignments, names) {
                return refuse(&c);
            }
        }
        Statement::Update(update) => {
            let assignments: Vec<&sqlparser::ast::Assignment> = update.assignments.iter().collect();
            if let Some(c) = assigned(&assignments, names) {
                return refuse(&c);
            }
        }
        _ => {}
    }
    Ok(())
}

fn assigned(
    assignments: &[&sqlparser::ast::Assignment],
    names: &HashSet<String>,
) -> Option<String> {
    use sqlparser::ast::AssignmentTarget;
    assignments.iter().find_map(|a| {
        let targets: Vec<&ObjectName> = match &a.target {
            AssignmentTarget::ColumnName(n) => vec![n],
            AssignmentTarget::Tuple(ns) => ns.iter().collect(),
        };
        targets
            .into_iter()
            .map(last_ident)
            .find(|c| names.contains(c))
    })
}

/// Walks the whole statement for masked references outside the allowed places.
struct Finder<'a> {
    names: &'a HashSet<String>,
    masked_tables: &'a HashSet<String>,
    /// The outermost projection's plain masked references.
    allowed: &'a HashSet<*const Expr>,
    top_select: Option<*const Select>,
    /// SELECTs directly under EXISTS: their `*` reads nothing.
    exists_selects: &'a mut HashSet<*const Select>,
}

impl Visitor for Finder<'_> {
    type Break = String;

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<String> {
        if let Expr::Exists { subquery, .. } = expr {
            if let SetExpr::Select(s) = &*subquery.body {
                self.exists_selects.insert(&**s as *const Select);
            }
        }
        if let Expr::MatchAgainst { columns, .. } = expr {
            if let Some(c) = columns
                .iter()
                .map(last_ident)
                .find(|c| self.names.contains(c))
            {
                return ControlFlow::Break(format!(
                    "DevInProd refused MATCH … AGAINST over masked column `{c}`: it searches its real values"
                ));
            }
        }
        let name = match expr {
            Expr::Identifier(i) => Some(i.value.fold_name()),
            Expr::CompoundIdentifier(parts) => parts.last().map(|i| i.value.fold_name()),
            _ => None,
        };
        if let Some(name) = name {
            if self.names.contains(&name) && !self.allowed.contains(&(expr as *const Expr)) {
                return ControlFlow::Break(format!(
                    "DevInProd refused a use of masked column `{name}` in `{expr}`: a masked column may only \
                     be selected plainly in the outermost SELECT (not computed with, compared, sorted, \
                     grouped, joined on, copied, or read through a subquery, derived table, CTE or UNION)"
                ));
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<String> {
        let ptr = select as *const Select;
        let nested = Some(ptr) != self.top_select && !self.exists_selects.contains(&ptr);
        let wildcard = select.projection.iter().any(|i| {
            matches!(
                i,
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
            )
        });
        if nested && wildcard {
            if let Some(t) = direct_tables(&select.from)
                .iter()
                .map(|t| table_name(t).name.fold_name())
                .find(|t| self.masked_tables.contains(t))
            {
                return ControlFlow::Break(format!(
                    "DevInProd refused `*` over {t} inside a subquery, derived table, CTE, UNION or copy: it \
                     carries masked columns; name the columns you need"
                ));
            }
        }
        ControlFlow::Continue(())
    }

    /// MySQL's `TABLE t` reads every column without a SELECT to look at; in a UNION its
    /// columns would lose the definitions the row masker keys on.
    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<String> {
        fn tables(body: &SetExpr, out: &mut Vec<String>) {
            match body {
                SetExpr::Table(t) => out.extend(t.table_name.iter().map(|n| n.fold_name())),
                SetExpr::SetOperation { left, right, .. } => {
                    tables(left, out);
                    tables(right, out);
                }
                _ => {}
            }
        }
        let mut named = Vec::new();
        tables(&query.body, &mut named);
        match named.into_iter().find(|t| self.masked_tables.contains(t)) {
            Some(t) => ControlFlow::Break(format!(
                "DevInProd refused `TABLE {t}`: it has masked columns; SELECT the columns you need"
            )),
            None => ControlFlow::Continue(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn rules() -> MaskRules {
        let mut columns = BTreeMap::new();
        columns.insert("shop.users.email".to_string(), "email".to_string());
        MaskRules::parse(&columns).unwrap()
    }

    fn run(sql: &str) -> Result<MaskedProjection, String> {
        let statement =
            crate::policy::parse_statement(sql).unwrap_or_else(|| panic!("{sql} does not parse"));
        check(&statement, &rules(), Some("shop"))
    }

    #[test]
    fn plain_projections_pass_and_are_located() {
        let p = run("SELECT id, u.email AS e FROM users u WHERE id = 1").unwrap();
        assert_eq!(
            p.positions,
            Some(vec![
                None,
                Some(("shop".into(), "users".into(), "email".into()))
            ])
        );
        assert_eq!(run("SELECT * FROM users").unwrap().positions, None);
        assert!(
            run("SELECT id FROM users WHERE EXISTS (SELECT * FROM users v WHERE v.id = 2)").is_ok()
        );
        // Another schema's table of that name has no masked column.
        assert_eq!(
            run("SELECT email FROM other.users").unwrap(),
            MaskedProjection::default()
        );
    }

    #[test]
    fn every_other_use_is_refused() {
        for sql in [
            "SELECT LOWER(email) FROM users",
            "SELECT id FROM users WHERE email = 'x'",
            "SELECT email FROM users ORDER BY 1",
            "SELECT email e FROM users ORDER BY e",
            "SELECT * FROM users GROUP BY 2",
            "SELECT * FROM (SELECT * FROM users) d",
            "SELECT id FROM users JOIN orders USING (id)",
            "SELECT id FROM users NATURAL JOIN orders",
            "INSERT INTO users (id, email) VALUES (1, 'a@b.c')",
            "INSERT INTO users VALUES (1, 'a@b.c')",
            "INSERT INTO users SET email = 'a@b.c'",
            "INSERT INTO users (id) VALUES (1) ON DUPLICATE KEY UPDATE email = 'x'",
            "UPDATE users SET email = 'x' WHERE id = 1",
            "UPDATE users SET id = 2 WHERE email = 'x'",
            "DELETE FROM users WHERE email = 'x'",
            "SELECT * FROM performance_schema.events_statements_history",
            "SELECT * FROM information_schema.processlist",
        ] {
            let r = run(sql);
            assert!(r.is_err(), "{sql} passed: {r:?}");
        }
    }
}
