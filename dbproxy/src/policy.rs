//! The statement policy: what a developer session may send, decided from the SQL text alone.
//! Fail closed: anything not recognised as allowed is refused with a reason. Pure (no I/O);
//! checks that need the catalog (table engines, triggers, stored functions) are done by the
//! session on what [`classify`] reports in [`Forward`].
//!
//! Order of checks: executable comments are refused before parsing (the server runs
//! `/*! … */` and `/*M! … */`, sqlparser drops or mis-versions them); the text must parse as
//! exactly one statement; then each statement kind is allowed, emulated or refused.

use sqlparser::ast::{
    visit_expressions, visit_relations, ContextModifier, Expr, ObjectName, ObjectType, Set,
    SetExpr, Statement, Use,
};
use std::ops::ControlFlow;

/// A table as written in a statement: optional schema and name (unquoted).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    pub schema: Option<String>,
    pub name: String,
}

/// A statement that goes upstream as written (after catalog checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub writes: bool,
}

/// What a statement can reach, for the session's catalog checks: every table it names (views
/// among them are checked for stored functions), the ones it may write (each must be a
/// transactional base table without triggers, or a temporary table), and every function it
/// calls (checked against stored functions and UDFs).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reach {
    pub tables: Vec<TableName>,
    pub write_tables: Vec<TableName>,
    /// Last name part, upper case.
    pub functions: Vec<String>,
}

/// Transaction control, emulated per app connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxControl {
    Begin,
    Commit,
    Rollback,
    Savepoint(String),
    Release(String),
    RollbackTo(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Forward(Forward),
    Tx(TxControl),
    /// `SET autocommit = 0|1`: emulated, never forwarded.
    SetAutocommit(bool),
    /// Accepted and answered OK without going upstream (e.g. `SET TRANSACTION …`).
    Swallow,
    /// `USE db`: forwarded, and remembered per app connection.
    Use(String),
    /// A session `SET` of allowed variables: forwarded, and replayed when the upstream switches
    /// back to this app connection. `vars` are the lower-case variable names it sets.
    SessionSet {
        vars: Vec<String>,
        /// `autocommit` was set in the same statement (MariaDB Connector/J): emulated, and
        /// `upstream_sql` — the statement without it — goes upstream instead of the app's.
        autocommit: Option<bool>,
        upstream_sql: Option<String>,
        /// It sets sql_mode (perhaps from an expression, `CONCAT(@@sql_mode, …)`): the value is
        /// read back afterwards, so that what is replayed for this connection is the value.
        read_back_sql_mode: bool,
    },
    /// `CREATE TEMPORARY TABLE name`: forwarded; the session remembers its temporary tables.
    CreateTemporary(TableName),
    /// `DROP TEMPORARY TABLE`: forwarded.
    DropTemporary(Vec<TableName>),
    /// `DEVINPROD STATUS` / `DEVINPROD RESET`: the developer asks about their own session
    /// (what `devinprod db status|reset` sends).
    Admin(AdminCommand),
    /// `SELECT @@autocommit` and the like: the app connection's own emulated transaction state,
    /// answered by the proxy (the upstream's would be the session's: autocommit off, always in
    /// a transaction). Each column: its name and what it shows.
    SessionView(Vec<(String, SessionVariable)>),
    /// `SET SESSION TRANSACTION ISOLATION LEVEL …`: remembered for the app connection's
    /// `@@tx_isolation` (the session's own level never changes).
    SessionIsolation(String),
    Refuse(String),
}

/// A system variable whose value an app connection must see as its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionVariable {
    Autocommit,
    InTransaction,
    Isolation,
    ReadOnly,
}

impl SessionVariable {
    fn named(name: &str) -> Option<Self> {
        let bare = bare_variable(&name.to_ascii_lowercase()).to_owned();
        match bare.as_str() {
            "autocommit" => Some(Self::Autocommit),
            "in_transaction" => Some(Self::InTransaction),
            "tx_isolation" | "transaction_isolation" => Some(Self::Isolation),
            "tx_read_only" | "transaction_read_only" => Some(Self::ReadOnly),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminCommand {
    Status,
    Reset,
}

/// A classified statement: a short kind for messages and logs ("SELECT", "DROP TABLE") and
/// the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub kind: String,
    pub verdict: Verdict,
    pub reach: Reach,
}

/// Session variables an app may set: they change how this session's statements behave, not
/// the server, the upstream link, or the transaction.
const SETTABLE_VARIABLES: &[&str] = &[
    "character_set_client",
    "character_set_connection",
    "character_set_results",
    "collation_connection",
    // Defaults for new databases and tables only (DBD::MariaDB sets character_set_server at
    // every connect); the session variable, never the server's.
    "character_set_server",
    "collation_server",
    "character_set_database",
    "collation_database",
    "sql_mode",
    "time_zone",
    "lc_time_names",
    "lc_messages",
    "group_concat_max_len",
    "div_precision_increment",
    "max_sort_length",
    "sql_safe_updates",
    "sql_auto_is_null",
    "sql_big_selects",
    "sql_quote_show_create",
    "sql_notes",
    "sql_warnings",
    "unique_checks",
    "foreign_key_checks",
    "sql_buffer_result",
    "default_week_format",
    "innodb_lock_wait_timeout",
    "timestamp",
    "insert_id",
    "last_insert_id",
    "optimizer_search_depth",
    "big_tables",
    "names",
];

/// `SHOW <first word>` forms allowed beyond the ones sqlparser names.
const SAFE_SHOW: &[&str] = &[
    "WARNINGS", "ERRORS", "COUNT", "INDEX", "INDEXES", "KEYS", "TABLE", "GRANTS", "PROFILES",
    "PROFILE",
];

/// Character sets in which the byte 0x5C is always a backslash and 0x27 always a quote, so the
/// server splits a statement where the policy does. (In gbk, big5, sjis, cp932 or gb18030 a
/// multi-byte character can end in 0x5C, and a string the policy reads as closed stays open.)
const SAFE_CHARSETS: &[&str] = &["utf8mb4", "utf8mb3", "utf8", "latin1", "ascii", "binary"];

/// sql_mode flags that change how the server lexes strings and quotes (or imply one that does).
const UNSAFE_SQL_MODES: &[&str] = &[
    "NO_BACKSLASH_ESCAPES",
    "ANSI_QUOTES",
    "ANSI",
    "ORACLE",
    "MSSQL",
    "DB2",
    "POSTGRESQL",
    "MAXDB",
];

/// Functions refused wherever they appear: they take locks that outlive the transaction, read
/// the server's files, wait on replication, or change state that a rollback does not undo.
const REFUSED_FUNCTIONS: &[(&str, &str)] = &[
    (
        "GET_LOCK",
        "named locks survive ROLLBACK and collide with production's own locks",
    ),
    (
        "RELEASE_LOCK",
        "named locks survive ROLLBACK and collide with production's own locks",
    ),
    (
        "RELEASE_ALL_LOCKS",
        "named locks survive ROLLBACK and collide with production's own locks",
    ),
    ("IS_FREE_LOCK", "named locks are outside the transaction"),
    ("IS_USED_LOCK", "named locks are outside the transaction"),
    ("LOAD_FILE", "it reads files on the database server"),
    ("SETVAL", "sequence changes are not rolled back"),
    ("MASTER_POS_WAIT", "it waits on replication"),
    ("MASTER_GTID_WAIT", "it waits on replication"),
    ("SOURCE_POS_WAIT", "it waits on replication"),
    ("WAIT_FOR_EXECUTED_GTID_SET", "it waits on replication"),
];

fn refuse(kind: impl Into<String>, why: impl Into<String>) -> Classified {
    let kind = kind.into();
    let why = why.into();
    Classified {
        verdict: Verdict::Refuse(format!("DevInProd refused {kind}: {why}")),
        kind,
        reach: Reach::default(),
    }
}

fn ok(kind: &str, verdict: Verdict) -> Classified {
    Classified {
        kind: kind.to_owned(),
        verdict,
        reach: Reach::default(),
    }
}

/// True if `sql` contains an executable comment (`/*!`, `/*M!`), anywhere: even inside a
/// string literal, where it would be harmless, it is refused rather than risk mis-reading.
fn has_executable_comment(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    lower.contains("/*!") || lower.contains("/*m!")
}

/// The first words of a statement, for naming what was refused when it does not parse (each
/// cut to a few dozen characters: the message must not echo a megabyte of the statement).
fn leading_words(sql: &str) -> String {
    const MAX_WORD_CHARS: usize = 32;
    let words: Vec<String> = sql
        .split(|c: char| c.is_whitespace() || c == '(' || c == ';')
        .filter(|w| !w.is_empty())
        .take(2)
        .map(|w| {
            let mut word: String = w.chars().take(MAX_WORD_CHARS).collect();
            if word.len() < w.len() {
                word.push('…');
            }
            word.to_ascii_uppercase()
        })
        .collect();
    if words.is_empty() {
        "an empty statement".into()
    } else {
        words.join(" ")
    }
}

pub fn table_name(name: &ObjectName) -> TableName {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| match p.as_ident() {
            Some(ident) => ident.value.clone(),
            None => p.to_string(),
        })
        .collect();
    match parts.as_slice() {
        [schema, table] => TableName {
            schema: Some(schema.clone()),
            name: table.clone(),
        },
        _ => TableName {
            schema: None,
            name: parts.last().cloned().unwrap_or_default(),
        },
    }
}

fn relations(st: &Statement) -> Vec<TableName> {
    let mut out = Vec::new();
    let _ = visit_relations(st, |n| {
        let t = table_name(n);
        if !out.contains(&t) {
            out.push(t);
        }
        ControlFlow::<()>::Continue(())
    });
    out
}

fn functions(st: &Statement) -> Vec<String> {
    let mut out = Vec::new();
    let _ = visit_expressions(st, |e| {
        if let Expr::Function(f) = e {
            let last = f
                .name
                .0
                .last()
                .map(|p| match p.as_ident() {
                    Some(i) => i.value.to_ascii_uppercase(),
                    None => p.to_string().to_ascii_uppercase(),
                })
                .unwrap_or_default();
            out.push(last);
        }
        ControlFlow::<()>::Continue(())
    });
    out
}

/// The one statement of `sql`, parsed as [`classify`] parses it (for checks that need the
/// tree, such as masking).
pub fn parse_statement(sql: &str) -> Option<Statement> {
    let trimmed = sql.trim().trim_end_matches(';').trim();
    let mut statements = crate::sql::parse(trimmed).ok()?;
    (statements.len() == 1).then(|| statements.remove(0))
}

/// Classifies one COM_QUERY text.
pub fn classify(sql: &str) -> Classified {
    let trimmed = sql.trim().trim_end_matches(';').trim();
    // Not SQL (it would not parse), so no app statement can be mistaken for it.
    match trimmed
        .to_ascii_uppercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["DEVINPROD", "STATUS"] => {
            return ok("DEVINPROD STATUS", Verdict::Admin(AdminCommand::Status))
        }
        ["DEVINPROD", "RESET"] => {
            return ok("DEVINPROD RESET", Verdict::Admin(AdminCommand::Reset))
        }
        _ => {}
    }
    if let Some(c) = sql.chars().find(|c| !c.is_ascii() && c.is_whitespace()) {
        // sqlparser treats it as a space (and `--` before it as a comment), MariaDB as part of
        // a name: the two would read different statements.
        return refuse(
            "a non-ASCII space character",
            format!(
                "U+{:04X} is read differently by the server and the policy; use ASCII spaces, and pass \
                 such text as a parameter of a prepared statement",
                u32::from(c)
            ),
        );
    }
    let upper_words: Vec<String> = trimmed
        .split(|c: char| c.is_ascii_whitespace() || c == '(' || c == ')')
        .filter(|w| !w.is_empty())
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let first_two: Vec<&str> = upper_words.iter().take(2).map(String::as_str).collect();
    if let ["EXPLAIN" | "DESCRIBE" | "DESC", "EXTENDED" | "PARTITIONS"] = first_two.as_slice() {
        return refuse(
            "EXPLAIN EXTENDED",
            "its notes print the values a constant lookup read; use EXPLAIN",
        );
    }
    if upper_words
        .windows(2)
        .any(|w| w[0] == "PROCEDURE" && w[1].starts_with("ANALYSE"))
    {
        return refuse(
            "PROCEDURE ANALYSE",
            "it reports the values of the columns it reads",
        );
    }
    if has_executable_comment(sql) {
        return refuse(
            "an executable comment",
            "/*! … */ and /*M! … */ comments are run by the server and cannot be classified safely; remove them",
        );
    }
    let statements = match crate::sql::parse(trimmed) {
        Ok(s) => s,
        Err(e @ crate::sql::SqlError::TooDeep { .. }) => {
            return refuse(
                leading_words(trimmed),
                format!("the statement is too complex: {e}"),
            )
        }
        Err(e) => {
            return refuse(
                leading_words(trimmed),
                format!("the statement could not be classified, so it is not run ({e})"),
            )
        }
    };
    let statement = match statements.as_slice() {
        [one] => one,
        [] => return refuse("an empty statement", "there is nothing to run"),
        _ => return refuse("multiple statements", "send one statement per query"),
    };
    if let Statement::Set(Set::MultipleAssignments { assignments }) = statement {
        if assignments
            .iter()
            .any(|a| bare_variable(&variable_name(&a.name)) == "autocommit")
        {
            return classify_with_autocommit(trimmed);
        }
    }
    let mut classified = classify_statement(statement);
    if matches!(classified.verdict, Verdict::Refuse(_)) {
        return classified;
    }
    if matches!(classified.verdict, Verdict::SessionIsolation(_))
        && !matches!(first_two.get(1), Some(&"SESSION" | &"LOCAL"))
    {
        classified.verdict = Verdict::Swallow;
    }
    let functions = functions(statement);
    // Refused functions, wherever they hide (subqueries, arguments, SET values).
    if let Some((name, why)) = functions
        .iter()
        .find_map(|name| REFUSED_FUNCTIONS.iter().find(|(n, _)| n == name))
    {
        return refuse(format!("{} calling {name}()", classified.kind), *why);
    }
    let tables = relations(statement);
    let writes = matches!(
        classified.verdict,
        Verdict::Forward(Forward { writes: true })
    );
    classified.reach = Reach {
        write_tables: if writes { tables.clone() } else { Vec::new() },
        tables,
        functions,
    };
    classified
}

/// A SET that also sets autocommit: the rest, classified on its own, with the autocommit part
/// emulated (see `assignments`).
fn classify_with_autocommit(sql: &str) -> Classified {
    let Some((on, rest)) = assignments::without_autocommit(sql) else {
        return refuse(
            "SET autocommit",
            "autocommit could not be separated from the other settings of this SET; set it in a statement of its own",
        );
    };
    let mut classified = classify(&rest);
    match &mut classified.verdict {
        Verdict::SessionSet {
            autocommit: autocommit @ None,
            upstream_sql: upstream_sql @ None,
            ..
        } => {
            *autocommit = Some(on);
            *upstream_sql = Some(rest);
            classified
        }
        Verdict::Refuse(_) => classified,
        _ => refuse("SET autocommit", "set autocommit in a statement of its own"),
    }
}

fn forward(_st: &Statement, writes: bool) -> Verdict {
    Verdict::Forward(Forward { writes })
}

enum QueryShape {
    Read,
    /// SELECT … INTO somewhere in it.
    Into,
    /// A data change dressed as a query (MySQL 8 `WITH … UPDATE`).
    Changes,
}

/// Whether every branch of a query (CTEs, unions, parenthesised parts) is a plain read.
fn read_only_query(q: &sqlparser::ast::Query) -> QueryShape {
    let mut shape = QueryShape::Read;
    if let Some(with) = &q.with {
        for cte in &with.cte_tables {
            match read_only_query(&cte.query) {
                QueryShape::Read => {}
                other => return other,
            }
        }
    }
    fn walk(body: &SetExpr, shape: &mut QueryShape) {
        match body {
            SetExpr::Select(s) => {
                if s.into.is_some() {
                    *shape = QueryShape::Into;
                }
            }
            SetExpr::Query(inner) => {
                let inner_shape = read_only_query(inner);
                if !matches!(inner_shape, QueryShape::Read) {
                    *shape = inner_shape;
                }
            }
            SetExpr::SetOperation { left, right, .. } => {
                walk(left, shape);
                walk(right, shape);
            }
            SetExpr::Values(_) | SetExpr::Table(_) => {}
            _ => *shape = QueryShape::Changes,
        }
    }
    walk(&q.body, &mut shape);
    shape
}

/// `SELECT @@autocommit [AS a], @@session.tx_isolation, …` — only such variables, no FROM:
/// the columns of the answer the proxy gives itself.
fn session_view(q: &sqlparser::ast::Query) -> Option<Vec<(String, SessionVariable)>> {
    use sqlparser::ast::SelectItem;
    let SetExpr::Select(s) = q.body.as_ref() else {
        return None;
    };
    if q.with.is_some()
        || q.order_by.is_some()
        || q.limit_clause.is_some()
        || !s.from.is_empty()
        || s.selection.is_some()
        || s.into.is_some()
    {
        return None;
    }
    s.projection
        .iter()
        .map(|item| {
            let (expr, alias) = match item {
                SelectItem::UnnamedExpr(e) => (e, None),
                SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias.value.clone())),
                _ => return None,
            };
            let name = match expr {
                Expr::Identifier(i) => i.value.clone(),
                Expr::CompoundIdentifier(parts) => parts
                    .iter()
                    .map(|p| p.value.as_str())
                    .collect::<Vec<_>>()
                    .join("."),
                _ => return None,
            };
            if !name.starts_with("@@") {
                return None;
            }
            let variable = SessionVariable::named(&name)?;
            Some((alias.unwrap_or(name), variable))
        })
        .collect()
}

fn classify_statement(st: &Statement) -> Classified {
    match st {
        Statement::Query(q) if session_view(q).is_some() => ok(
            "SELECT",
            Verdict::SessionView(session_view(q).unwrap_or_default()),
        ),
        Statement::Query(q) => match read_only_query(q) {
            QueryShape::Read => ok("SELECT", forward(st, false)),
            QueryShape::Into => refuse(
                "SELECT … INTO",
                "it writes outside the transaction (a file, or variables)",
            ),
            QueryShape::Changes => refuse(
                "WITH … UPDATE/DELETE",
                "data-changing statements behind a WITH clause are not supported; write the change plainly",
            ),
        },
        Statement::Insert(i) => ok(
            if i.replace_into { "REPLACE" } else { "INSERT" },
            forward(st, true),
        ),
        Statement::Update(_) => ok("UPDATE", forward(st, true)),
        Statement::Delete(_) => ok("DELETE", forward(st, true)),
        Statement::StartTransaction { .. } => ok("BEGIN", Verdict::Tx(TxControl::Begin)),
        Statement::Commit { chain, .. } => {
            if *chain {
                return refuse("COMMIT AND CHAIN", "chained transactions are not emulated");
            }
            ok("COMMIT", Verdict::Tx(TxControl::Commit))
        }
        Statement::Rollback { savepoint, chain } => match (savepoint, chain) {
            (_, true) => refuse(
                "ROLLBACK AND CHAIN",
                "chained transactions are not emulated",
            ),
            (Some(name), _) => ok(
                "ROLLBACK TO SAVEPOINT",
                Verdict::Tx(TxControl::RollbackTo(name.value.clone())),
            ),
            (None, _) => ok("ROLLBACK", Verdict::Tx(TxControl::Rollback)),
        },
        Statement::Savepoint { name } => ok(
            "SAVEPOINT",
            Verdict::Tx(TxControl::Savepoint(name.value.clone())),
        ),
        Statement::ReleaseSavepoint { name } => ok(
            "RELEASE SAVEPOINT",
            Verdict::Tx(TxControl::Release(name.value.clone())),
        ),
        Statement::Set(set) => classify_set(set),
        Statement::Use(u) => match u {
            Use::Object(name) | Use::Database(name) | Use::Schema(name) => {
                ok("USE", Verdict::Use(table_name(name).name))
            }
            _ => refuse("USE", "only USE <database> is supported"),
        },
        Statement::CreateTable(ct) => {
            if !ct.temporary {
                return refuse(
                    "CREATE TABLE",
                    "DDL commits the transaction implicitly; use CREATE TEMPORARY TABLE",
                );
            }
            if ct.query.is_some() || ct.like.is_some() || ct.clone.is_some() {
                // Allowed, but it reads other tables: those reads are plain SELECTs.
            }
            ok(
                "CREATE TEMPORARY TABLE",
                Verdict::CreateTemporary(table_name(&ct.name)),
            )
        }
        Statement::Drop {
            object_type,
            temporary,
            names,
            ..
        } => {
            if *object_type == ObjectType::Table && *temporary {
                ok(
                    "DROP TEMPORARY TABLE",
                    Verdict::DropTemporary(names.iter().map(table_name).collect()),
                )
            } else {
                refuse(
                    format!("DROP {object_type}"),
                    "DDL commits the transaction implicitly (only DROP TEMPORARY TABLE is allowed)",
                )
            }
        }
        Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowCreate { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowCollation { .. }
        | Statement::ShowCharset(_)
        | Statement::ShowFunctions { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowObjects(_)
        | Statement::ShowViews { .. } => ok("SHOW", forward(st, false)),
        // sqlparser files every other SHOW here; only these are about the developer's own data.
        Statement::ShowVariable { variable } => {
            let first = variable.first().map(|i| i.value.to_ascii_uppercase()).unwrap_or_default();
            if SAFE_SHOW.contains(&first.as_str()) {
                ok("SHOW", forward(st, false))
            } else {
                refuse(
                    format!("SHOW {first}"),
                    "it shows the server's internals or other connections (only SHOW of tables, columns, indexes, variables, warnings and the like is allowed)",
                )
            }
        }
        Statement::ExplainTable { .. } => ok("DESCRIBE", forward(st, false)),
        Statement::Explain {
            statement, analyze, ..
        } => {
            let inner = classify_statement(statement);
            match inner.verdict {
                // EXPLAIN ANALYZE runs the statement: it must pass as itself.
                Verdict::Forward(f) if *analyze => ok(
                    &format!("EXPLAIN ANALYZE {}", inner.kind),
                    Verdict::Forward(f),
                ),
                Verdict::Forward(_) => ok("EXPLAIN", forward(st, false)),
                Verdict::Refuse(why) => Classified {
                    kind: format!("EXPLAIN {}", inner.kind),
                    verdict: Verdict::Refuse(why),
                    reach: Reach::default(),
                },
                _ => refuse(
                    format!("EXPLAIN {}", inner.kind),
                    "only queries and data changes can be explained",
                ),
            }
        }
        Statement::LockTables { .. } => refuse(
            "LOCK TABLES",
            "it commits the transaction and blocks production",
        ),
        Statement::UnlockTables => refuse("UNLOCK TABLES", "table locks are not allowed"),
        Statement::Call(_) => refuse("CALL", "procedures may COMMIT, run DDL or dynamic SQL"),
        Statement::Execute { .. } | Statement::Prepare { .. } | Statement::Deallocate { .. } => {
            refuse(
                "SQL-level PREPARE/EXECUTE",
                "its text is not visible to the policy (use the protocol's prepared statements)",
            )
        }
        Statement::Truncate { .. } => refuse("TRUNCATE", "it commits the transaction implicitly"),
        Statement::Grant { .. } | Statement::Revoke { .. } => refuse(
            "GRANT/REVOKE",
            "account changes commit and touch the server",
        ),
        Statement::Kill { .. } => refuse("KILL", "it acts on other connections"),
        other => {
            let text = other.to_string();
            refuse(leading_words(&text), "only reads, data changes, safe session SETs, USE, SHOW, DESCRIBE, EXPLAIN, temporary tables and transaction statements are allowed")
        }
    }
}

fn classify_set(set: &Set) -> Classified {
    match set {
        // `SESSION` is not kept in the tree: `classify` turns this back into `Swallow` when the
        // text has no SESSION/LOCAL (then it is about the next transaction only).
        Set::SetTransaction { modes, .. } => {
            let level = modes.iter().find_map(|m| match m {
                sqlparser::ast::TransactionMode::IsolationLevel(l) => Some(l.to_string()),
                _ => None,
            });
            match level {
                Some(l) => ok(
                    "SET SESSION TRANSACTION",
                    Verdict::SessionIsolation(l.replace(' ', "-")),
                ),
                None => ok("SET SESSION TRANSACTION", Verdict::Swallow),
            }
        }
        Set::SetNames { charset_name, .. } if !safe_charset(&charset_name.value) => refuse(
            format!("SET NAMES {}", charset_name.value),
            format!(
                "only these character sets are allowed: {}",
                SAFE_CHARSETS.join(", ")
            ),
        ),
        Set::SetNames { .. } | Set::SetNamesDefault { .. } => ok(
            "SET NAMES",
            Verdict::SessionSet {
                vars: vec!["names".into()],
                autocommit: None,
                upstream_sql: None,
                read_back_sql_mode: false,
            },
        ),
        Set::SingleAssignment {
            scope,
            variable,
            values,
            ..
        } => {
            let name = variable_name(variable);
            if let Some(c) = check_scope(scope.as_ref(), &name) {
                return c;
            }
            if bare_variable(&name) == "autocommit" {
                return match values.as_slice() {
                    [v] => match autocommit_value(v) {
                        Some(on) => ok("SET autocommit", Verdict::SetAutocommit(on)),
                        None => refuse("SET autocommit", "the value must be 0, 1, ON or OFF"),
                    },
                    _ => refuse("SET autocommit", "one value expected"),
                };
            }
            if let Some(c) = check_value(&name, values) {
                return c;
            }
            session_vars(vec![name])
        }
        Set::MultipleAssignments { assignments } => {
            // MariaDB: the scope of an assignment carries over to the next ones without one.
            let mut scope: Option<ContextModifier> = None;
            let mut names = Vec::new();
            for a in assignments {
                if a.scope.is_some() {
                    scope = a.scope;
                }
                let name = variable_name(&a.name);
                if let Some(c) = check_scope(scope.as_ref(), &name) {
                    return c;
                }
                if let Some(c) = check_value(&name, std::slice::from_ref(&a.value)) {
                    return c;
                }
                if bare_variable(&name) == "autocommit" {
                    // Cut out and emulated by `classify` (`assignments`); refused if it was not.
                    return refuse(
                        "SET autocommit",
                        "autocommit could not be separated from the other settings of this SET; set it in a statement of its own",
                    );
                }
                names.push(name);
            }
            session_vars(names)
        }
        _ => refuse("SET", "this form of SET is not allowed"),
    }
}

fn safe_charset(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    SAFE_CHARSETS.contains(&lower.as_str())
}

/// A value written as a plain literal or word (`'STRICT_ALL_TABLES'`, `utf8mb4`, `DEFAULT`).
fn plain_value(values: &[Expr]) -> Option<String> {
    let [v] = values else { return None };
    let text = v.to_string();
    let inner = text
        .strip_prefix('\'')
        .and_then(|t| t.strip_suffix('\''))
        .or_else(|| text.strip_prefix('"').and_then(|t| t.strip_suffix('"')))
        .unwrap_or(&text);
    inner
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ',')
        .then(|| inner.to_owned())
}

/// `CONCAT(@@sql_mode, ',STRICT_TRANS_TABLES', …)`: the modes it adds to the current ones (which
/// the policy keeps safe), as a plain list; `None` for any other expression.
fn appended_modes(values: &[Expr]) -> Option<String> {
    let [Expr::Function(f)] = values else {
        return None;
    };
    if !f.name.to_string().eq_ignore_ascii_case("concat") {
        return None;
    }
    let sqlparser::ast::FunctionArguments::List(list) = &f.args else {
        return None;
    };
    let mut args = list.args.iter().map(|a| a.to_string());
    let first = args.next()?.to_ascii_lowercase();
    if first != "@@sql_mode" && first != "@@session.sql_mode" {
        return None;
    }
    let mut added = Vec::new();
    for a in args {
        let inner = a.strip_prefix('\'')?.strip_suffix('\'')?;
        if !inner
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ',')
        {
            return None;
        }
        added.push(inner.to_owned());
    }
    Some(added.concat())
}

/// Values of the variables that change how the server reads statements: they must keep the
/// server lexing strings exactly as the policy does.
fn check_value(name: &str, values: &[Expr]) -> Option<Classified> {
    let bare = bare_variable(name);
    match bare {
        "sql_mode" => match plain_value(values).or_else(|| appended_modes(values)) {
            None => Some(refuse("SET sql_mode", "sql_mode must be set to a plain list of modes, e.g. 'STRICT_ALL_TABLES,NO_ZERO_DATE', or to CONCAT(@@sql_mode, ',MODE,…')")),
            // By name only: `SET sql_mode = 4` is ANSI_QUOTES as a bit mask.
            Some(v) if v.split(',').any(|m| {
                let m = m.trim();
                !m.is_empty() && !m.chars().all(|c| c.is_ascii_alphabetic() || c == '_')
            }) => Some(refuse(
                format!("SET sql_mode = {v}"),
                "sql_mode must be a list of mode names (a number is a bit mask the policy does not read)",
            )),
            Some(v) => v
                .split(',')
                .map(|m| m.trim().to_ascii_uppercase())
                .find(|m| UNSAFE_SQL_MODES.contains(&m.as_str()))
                .map(|m| {
                    refuse(
                        format!("SET sql_mode = '{v}'"),
                        format!("{m} changes how the server reads quotes and backslashes, so the policy could no longer tell what a statement does"),
                    )
                }),
        },
        "character_set_client" | "character_set_connection" | "character_set_results" | "collation_connection"
        | "character_set_server" | "collation_server" | "character_set_database" | "collation_database" => {
            let v = plain_value(values)?;
            let charset = if bare.starts_with("collation_") { v.split('_').next().unwrap_or("").to_owned() } else { v.clone() };
            // NULL for results means "no conversion" (Connector/J sends it): it changes no lexing.
            let null_results = bare == "character_set_results" && v.eq_ignore_ascii_case("null");
            (!v.eq_ignore_ascii_case("default") && !null_results && !safe_charset(&charset)).then(|| {
                refuse(
                    format!("SET {bare} = {v}"),
                    format!("only these character sets are allowed: {}", SAFE_CHARSETS.join(", ")),
                )
            })
        }
        _ => None,
    }
    .or_else(|| {
        // A character-set variable set to an expression: refuse rather than evaluate.
        (matches!(bare, "character_set_client" | "character_set_connection" | "character_set_results" | "collation_connection"
            | "character_set_server" | "collation_server" | "character_set_database" | "collation_database")
            && plain_value(values).is_none())
        .then(|| refuse(format!("SET {bare}"), "set it to a plain character set name"))
    })
}

fn variable_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|p| match p.as_ident() {
            Some(i) => i.value.clone(),
            None => p.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
        .to_ascii_lowercase()
}

fn check_scope(scope: Option<&ContextModifier>, name: &str) -> Option<Classified> {
    let global = matches!(scope, Some(ContextModifier::Global))
        || name.starts_with("@@global.")
        || name.starts_with("@@persist");
    global.then(|| refuse("SET GLOBAL", "server-wide settings affect production"))
}

fn autocommit_value(v: &Expr) -> Option<bool> {
    let s = v.to_string().to_ascii_lowercase();
    match s.trim_matches('\'').trim_matches('"') {
        "1" | "on" | "true" => Some(true),
        "0" | "off" | "false" => Some(false),
        _ => None,
    }
}

/// A system variable's name without its `@@`, `@@session.` or `@@local.` prefix.
fn bare_variable(name: &str) -> &str {
    name.trim_start_matches("@@session.")
        .trim_start_matches("@@local.")
        .trim_start_matches("@@")
}

/// `@name` (a user variable), as opposed to `@@name` (a system variable).
fn is_user_variable(name: &str) -> bool {
    name.starts_with('@') && !name.starts_with("@@")
}

/// Every name must be a user variable or an allowed session variable.
fn session_vars(names: Vec<String>) -> Classified {
    for n in &names {
        if is_user_variable(n) {
            continue;
        }
        let bare = bare_variable(n);
        if !SETTABLE_VARIABLES.contains(&bare) {
            return refuse(
                format!("SET {bare}"),
                "only session variables that do not affect the server, the connection or the transaction may be set",
            );
        }
    }
    let vars: Vec<String> = names
        .into_iter()
        .filter(|n| !is_user_variable(n))
        .map(|n| bare_variable(&n).to_owned())
        .collect();
    let read_back_sql_mode = vars.iter().any(|v| v == "sql_mode");
    ok(
        "SET",
        Verdict::SessionSet {
            vars,
            autocommit: None,
            upstream_sql: None,
            read_back_sql_mode,
        },
    )
}

mod assignments;

#[cfg(test)]
mod tests;
