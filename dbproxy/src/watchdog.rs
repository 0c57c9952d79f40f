//! The lock watchdog: a developer session must never make production wait.
//!
//! One task per [`DbProxy`], with its own connection to the database (the same user as the
//! sessions). Every `watchdog_interval_ms` it looks at
//! - row-lock waits (`information_schema.INNODB_LOCK_WAITS` joined with `INNODB_TRX`; on MySQL
//!   8 `performance_schema.data_lock_waits`): a connection that is not a developer session's,
//!   waiting longer than `lock_wait_bound_ms` on a lock a developer session's upstream holds;
//! - metadata-lock waits (`information_schema.PROCESSLIST`, state `Waiting for table metadata
//!   lock`): stock MariaDB does not say who holds a metadata lock, so the waiting statement is
//!   parsed for the tables it wants, and every developer session that has touched one of them in
//!   its open transaction (which holds their metadata locks until it ends) is the blocker. If
//!   the statement cannot be read, every session that touched a table of its database is.
//!
//! Only connections with a statement running longer than the bound can be waiting too long: the
//! process list (cheap) is read every round, InnoDB's lock tables only when there is such a
//! statement. (MariaDB serves them from a cache that is refreshed only once nobody has read it
//! for 0.1 s; reading them needlessly, from several dbproxies, could keep it stale.)
//!
//! The blocker is rolled back: `KILL CONNECTION` of its upstream (allowed for one's own user's
//! connections; otherwise CONNECTION ADMIN or SUPER), which the server answers by rolling the
//! transaction back. The kill is audited, and every app connection of the session gets error
//! 1317 saying the session was reset to protect production, and why.
//!
//! Waits are measured with the server's clock: `trx_wait_started` (whole seconds) against
//! `NOW(6)`, bounded by the waiting statement's `TIME_MS`; the smaller of the two is the wait.
//!
//! A backstop for statement time limits (MySQL's `max_execution_time` covers only SELECT): a
//! session statement still running `statement_timeout_ms` + 1 s after it started is stopped
//! with `KILL QUERY`. On MariaDB `max_statement_time` normally fires first.
//!
//! Reading lock waits needs the PROCESS privilege; without it the watchdog says so in the log
//! (and sees only its own user's connections in the process list).

use crate::audit::{AuditRecord, Decision};
use crate::config::DbProxyConfig;
use crate::session::Session;
use crate::upstream::{Upstream, UpstreamError};
use crate::DbProxy;
use sqlparser::ast::{visit_relations, ObjectName, ObjectType, Statement};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::ops::ControlFlow;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// Pause before reconnecting after the watchdog's own connection failed.
const RECONNECT_PAUSE: Duration = Duration::from_secs(2);
/// Longest a round of the watchdog's queries (and kills) may take; then its connection is
/// dropped and opened again.
const ROUND_TIMEOUT: Duration = Duration::from_secs(5);
/// The backstop stops a statement this long after its time limit (the server's own limit
/// should have fired).
const BACKSTOP_MARGIN: Duration = Duration::from_secs(1);
/// Process list state of a statement waiting for a metadata lock.
const MDL_STATE: &str = "Waiting for table metadata lock";
/// Longest a waiting statement is quoted in the audit log.
const AUDIT_SQL_CHARS: usize = 300;

/// ER_SPECIFIC_ACCESS_DENIED_ERROR: "you need (at least one of) the PROCESS privilege(s)".
const ER_SPECIFIC_ACCESS_DENIED: u16 = 1227;
/// ER_NO_SUCH_THREAD: the connection to kill is already gone.
const ER_NO_SUCH_THREAD: u16 = 1094;
/// ER_KILL_DENIED_ERROR: "You are not owner of thread".
const ER_KILL_DENIED: u16 = 1095;

/// Starts the watchdog of `proxy` unless `watchdog_interval_ms` is 0. It ends with the proxy.
pub(crate) fn spawn(proxy: &Arc<DbProxy>) {
    let config = proxy.config.clone();
    if config.watchdog_interval.is_zero() {
        warn!("the lock watchdog is off (watchdog_interval_ms = 0): developer sessions may block production indefinitely");
        return;
    }
    let weak = Arc::downgrade(proxy);
    tokio::spawn(Watchdog::new(config).run(weak));
}

/// Which server the watchdog talks to: where lock waits are, and how statement time is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    MariaDb,
    MySql,
}

/// A developer session with an upstream, as seen at the start of a round.
struct Watched {
    session: Arc<Session>,
    upstream_id: u32,
    touched: HashSet<(String, String)>,
}

/// One row-lock wait on a developer session.
#[derive(Debug)]
struct RowWait {
    waiting: u32,
    blocking: u32,
    waited: Duration,
    query: Option<String>,
}

/// A statement of another connection running longer than the bound (perhaps waiting).
#[derive(Debug)]
struct LongStatement {
    id: u32,
    db: Option<String>,
    state: Option<String>,
    /// How long it has run: an upper bound of how long it has waited.
    waited: Duration,
    info: Option<String>,
}

/// A developer session to roll back, and why.
struct Kill {
    /// For the developer: no production data (statement kinds and table names only).
    why: String,
    /// For the audit log: the waiting statement too.
    detail: String,
}

/// What went wrong in a round.
enum RoundError {
    /// The watchdog's connection failed: open another.
    Connection(UpstreamError),
    /// A query was refused (privileges, a table missing on this server…): reported, retried.
    Query(String),
}

impl From<UpstreamError> for RoundError {
    fn from(e: UpstreamError) -> Self {
        RoundError::Connection(e)
    }
}

struct Watchdog {
    config: Arc<DbProxyConfig>,
    conn: Option<(Upstream, Flavor)>,
    /// The problem last logged, so that a lasting one is logged once (and its end too).
    problem: Option<String>,
    /// Upstream threads already killed (they may show up until the rollback ends).
    killed: HashSet<u32>,
    /// Upstream threads whose statement the backstop stopped, and when.
    backstopped: HashMap<u32, Instant>,
    /// Whether the connection may read InnoDB's transactions (PROCESS), as last seen.
    sees_transactions: bool,
}

impl Watchdog {
    fn new(config: Arc<DbProxyConfig>) -> Self {
        Self {
            config,
            conn: None,
            problem: None,
            killed: HashSet::new(),
            backstopped: HashMap::new(),
            sees_transactions: false,
        }
    }

    async fn run(mut self, proxy: Weak<DbProxy>) {
        info!(
            interval_ms = self.config.watchdog_interval.as_millis() as u64,
            bound_ms = self.config.lock_wait_bound.as_millis() as u64,
            "lock watchdog started"
        );
        let mut ticks = tokio::time::interval(self.config.watchdog_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(sessions) = proxy.upgrade().map(|p| p.sessions()) else {
                break;
            };
            let watched: Vec<Watched> = sessions
                .iter()
                .filter_map(|s| {
                    Some(Watched {
                        upstream_id: s.upstream_thread_id()?,
                        touched: s.touched_tables(),
                        session: s.clone(),
                    })
                })
                .collect();
            if watched.is_empty() {
                // Nothing can block production; no need to ask the server anything, nor to
                // keep a connection open (an idle one would meet the server's wait_timeout).
                self.killed.clear();
                self.backstopped.clear();
                if let Some((conn, _)) = self.conn.take() {
                    conn.close().await;
                }
                continue;
            }
            // Every connection of the sessions: they never count as production waiting.
            let developer: HashSet<u32> = sessions
                .iter()
                .flat_map(|s| [s.upstream_thread_id(), s.catalog_thread_id()])
                .flatten()
                .collect();
            drop(sessions);
            if self.conn.is_none() && !self.connect().await {
                tokio::time::sleep(RECONNECT_PAUSE).await;
                continue;
            }
            match tokio::time::timeout(ROUND_TIMEOUT, self.round(&watched, &developer)).await {
                Ok(Ok(())) => self.report(None),
                Ok(Err(RoundError::Query(problem))) => self.report(Some(problem)),
                Ok(Err(RoundError::Connection(e))) => {
                    self.conn = None;
                    self.report(Some(format!(
                        "the lock watchdog lost its database connection ({e}); reconnecting"
                    )));
                }
                Err(_) => {
                    self.conn = None;
                    self.report(Some(format!(
                        "the lock watchdog's queries took longer than {} s; reconnecting",
                        ROUND_TIMEOUT.as_secs()
                    )));
                }
            }
        }
        if let Some((conn, _)) = self.conn.take() {
            conn.close().await;
        }
        debug!("lock watchdog stopped: its dbproxy is gone");
    }

    /// Logs a problem when it starts or changes, and its end.
    fn report(&mut self, problem: Option<String>) {
        if problem == self.problem {
            return;
        }
        match &problem {
            Some(p) => error!("{p}"),
            None => info!("the lock watchdog is working again"),
        }
        self.problem = problem;
    }

    async fn connect(&mut self) -> bool {
        let config = &self.config;
        let connected = tokio::time::timeout(ROUND_TIMEOUT, async {
            let mut up = Upstream::connect(&config.upstream, config.max_packet_bytes).await?;
            // Statement texts in the process list are read as UTF-8.
            if let Err((code, msg)) = up.run("SET NAMES utf8mb4").await? {
                return Err(UpstreamError::Protocol(format!(
                    "SET NAMES failed: {code} {msg}"
                )));
            }
            Ok(up)
        })
        .await;
        match connected {
            Ok(Ok(up)) => {
                let flavor = if up.server_version.contains("MariaDB") {
                    Flavor::MariaDb
                } else {
                    Flavor::MySql
                };
                debug!(
                    thread_id = up.connection_id,
                    ?flavor,
                    "lock watchdog connected"
                );
                self.conn = Some((up, flavor));
                self.sees_transactions = false;
                true
            }
            Ok(Err(e)) => {
                self.report(Some(format!(
                    "the lock watchdog cannot connect to the database ({e}); developer sessions \
                     that block production are NOT rolled back until it can; retrying"
                )));
                false
            }
            Err(_) => {
                self.report(Some(
                    "the lock watchdog cannot connect to the database (timed out); retrying".into(),
                ));
                false
            }
        }
    }

    /// One look at the server, and the kills it calls for.
    async fn round(
        &mut self,
        watched: &[Watched],
        developer: &HashSet<u32>,
    ) -> Result<(), RoundError> {
        let bound = self.config.lock_wait_bound;
        let mut kills: Vec<(&Watched, Kill)> = Vec::new();
        // Statements of the sessions that outlived their time limit.
        self.backstop(watched).await?;

        // Statements of other connections running longer than the bound: only they can be
        // waiting too long. (The process list is cheap; InnoDB's lock tables are read only when
        // there is such a statement, which also keeps their cache fresh — see `row_waits`.)
        let long = self.long_statements(developer).await?;
        let mut problem = None;
        if !self.sees_transactions {
            // Checked on each new connection, and until the grant is there.
            let (up, _) = self.conn()?;
            match up
                .run("SELECT COUNT(*) FROM information_schema.INNODB_TRX")
                .await?
            {
                Ok(_) => self.sees_transactions = true,
                Err((code, msg)) => problem = Some(row_wait_problem(code, &msg)),
            }
        }
        let candidates: Vec<u32> = long
            .iter()
            .filter(|l| l.state.as_deref() != Some(MDL_STATE))
            .map(|l| l.id)
            .collect();
        if self.sees_transactions && !candidates.is_empty() {
            match self.row_waits(watched, &candidates).await {
                Ok(waits) => {
                    for wait in waits {
                        if developer.contains(&wait.waiting) || wait.waited <= bound {
                            continue;
                        }
                        let Some(w) = watched.iter().find(|w| w.upstream_id == wait.blocking)
                        else {
                            continue;
                        };
                        let (summary, _) = describe(wait.query.as_deref());
                        let why = format!(
                            "connection {} ({summary}) waited {:.1} s for a row lock held by this session",
                            wait.waiting,
                            wait.waited.as_secs_f64()
                        );
                        let detail = format!(
                            "connection {} waited {:.1} s for a row lock held by the session's upstream \
                             connection {}; its statement: {}",
                            wait.waiting,
                            wait.waited.as_secs_f64(),
                            wait.blocking,
                            quote(wait.query.as_deref())
                        );
                        add(&mut kills, w, Kill { why, detail });
                    }
                }
                Err(RoundError::Query(p)) => {
                    self.sees_transactions = false;
                    problem = Some(p);
                }
                Err(e) => return Err(e),
            }
        }

        if watched.iter().any(|w| !w.touched.is_empty()) {
            for wait in long
                .iter()
                .filter(|l| l.state.as_deref() == Some(MDL_STATE))
            {
                for (w, kill) in mdl_blockers(wait, watched) {
                    add(&mut kills, w, kill);
                }
            }
        }

        for (w, kill) in kills {
            self.kill(w, kill).await?;
        }
        // Forget threads that are no longer any session's.
        self.killed
            .retain(|id| watched.iter().any(|w| w.upstream_id == *id));
        self.backstopped
            .retain(|id, _| watched.iter().any(|w| w.upstream_id == *id));
        match problem {
            Some(p) => Err(RoundError::Query(p)),
            None => Ok(()),
        }
    }

    fn conn(&mut self) -> Result<(&mut Upstream, Flavor), RoundError> {
        match self.conn.as_mut() {
            Some((up, flavor)) => Ok((up, *flavor)),
            None => Err(RoundError::Connection(UpstreamError::Protocol(
                "no connection".into(),
            ))),
        }
    }

    /// Row-lock waits whose blocker is a session's upstream.
    ///
    /// MariaDB (and MySQL 5.7) serve the `INNODB_*` tables from a cache that is refreshed only
    /// once nobody has read it for 0.1 s: hence reading them only when a statement runs long,
    /// and never more often than every `watchdog_interval_ms`.
    async fn row_waits(
        &mut self,
        watched: &[Watched],
        candidates: &[u32],
    ) -> Result<Vec<RowWait>, RoundError> {
        let blockers = id_list(watched.iter().map(|w| w.upstream_id));
        let waiting = id_list(candidates.iter().copied());
        let (up, flavor) = self.conn()?;
        // trx_wait_started has whole seconds only: the wait is at most NOW(6) minus it, and at
        // most the waiting statement's running time (TIME_MS); the smaller is the better bound.
        let sql = match flavor {
            Flavor::MariaDb => format!(
                "SELECT r.trx_mysql_thread_id, b.trx_mysql_thread_id, \
                 LEAST(TIMESTAMPDIFF(MICROSECOND, r.trx_wait_started, NOW(6)) / 1000, \
                       COALESCE(p.TIME_MS, 1e15)), \
                 r.trx_query \
                 FROM information_schema.INNODB_LOCK_WAITS w \
                 JOIN information_schema.INNODB_TRX r ON r.trx_id = w.requesting_trx_id \
                 JOIN information_schema.INNODB_TRX b ON b.trx_id = w.blocking_trx_id \
                 LEFT JOIN information_schema.PROCESSLIST p ON p.ID = r.trx_mysql_thread_id \
                 WHERE b.trx_mysql_thread_id IN ({blockers}) \
                 AND r.trx_mysql_thread_id IN ({waiting})"
            ),
            Flavor::MySql => format!(
                "SELECT r.trx_mysql_thread_id, b.trx_mysql_thread_id, \
                 LEAST(TIMESTAMPDIFF(MICROSECOND, r.trx_wait_started, NOW(6)) / 1000, \
                       COALESCE(p.TIME * 1000 + 999, 1e15)), \
                 r.trx_query \
                 FROM performance_schema.data_lock_waits w \
                 JOIN information_schema.INNODB_TRX r ON r.trx_id = w.REQUESTING_ENGINE_TRANSACTION_ID \
                 JOIN information_schema.INNODB_TRX b ON b.trx_id = w.BLOCKING_ENGINE_TRANSACTION_ID \
                 LEFT JOIN information_schema.PROCESSLIST p ON p.ID = r.trx_mysql_thread_id \
                 WHERE b.trx_mysql_thread_id IN ({blockers}) \
                 AND r.trx_mysql_thread_id IN ({waiting})"
            ),
        };
        let rows = match up.run(&sql).await? {
            Ok(c) => c.rows(),
            Err((code, msg)) => return Err(RoundError::Query(row_wait_problem(code, &msg))),
        };
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let id = |i: usize| r.get(i).cloned().flatten()?.parse::<u32>().ok();
                Some(RowWait {
                    waiting: id(0)?,
                    blocking: id(1)?,
                    waited: millis(r.get(2).cloned().flatten()?.as_str())?,
                    query: r.get(3).cloned().flatten(),
                })
            })
            .collect())
    }

    /// Statements of connections that are not the sessions' (nor the watchdog's) running
    /// longer than the bound, with their state: those waiting for a metadata lock, and
    /// candidates for a row-lock wait.
    async fn long_statements(
        &mut self,
        developer: &HashSet<u32>,
    ) -> Result<Vec<LongStatement>, RoundError> {
        let bound_ms = self.config.lock_wait_bound.as_millis();
        let sessions = id_list(developer.iter().copied());
        let (up, flavor) = self.conn()?;
        let time_ms = match flavor {
            Flavor::MariaDb => "TIME_MS",
            Flavor::MySql => "(TIME * 1000)",
        };
        let sql = format!(
            "SELECT ID, DB, STATE, {time_ms}, INFO FROM information_schema.PROCESSLIST \
             WHERE {time_ms} > {bound_ms} AND ID <> CONNECTION_ID() AND ID NOT IN ({sessions}) \
             AND COMMAND NOT IN ('Sleep', 'Daemon', 'Killed', 'Connect', 'Binlog Dump', 'Binlog Dump GTID')"
        );
        let rows = match up.run(&sql).await? {
            Ok(c) => c.rows(),
            Err((code, msg)) => {
                return Err(RoundError::Query(format!(
                    "the lock watchdog cannot read the process list: {code} {msg}"
                )))
            }
        };
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                Some(LongStatement {
                    id: r.first().cloned().flatten()?.parse().ok()?,
                    db: r.get(1).cloned().flatten(),
                    state: r.get(2).cloned().flatten(),
                    waited: millis(r.get(3).cloned().flatten()?.as_str())?,
                    info: r.get(4).cloned().flatten(),
                })
            })
            .filter(|l| !developer.contains(&l.id))
            .collect())
    }

    /// Rolls a session back: records why (for its app connections), audits, kills its upstream.
    async fn kill(&mut self, w: &Watched, kill: Kill) -> Result<(), RoundError> {
        let id = w.upstream_id;
        if self.killed.contains(&id) {
            // Killed already; its rollback may still be running.
            return Ok(());
        }
        if !w.session.protect_production_of(id, kill.why.clone()) {
            // The session has already left that upstream connection.
            return Ok(());
        }
        self.killed.insert(id);
        // The operator's log quotes the waiting statement; the audit record and the developer
        // get its kind and tables, never its values.
        warn!(key = %w.session.key, upstream_id = id, "lock watchdog: rolling the developer session back: {}", proto::printable(&kill.detail));
        self.config.audit.record(AuditRecord {
            upstream_sql: Some(format!("KILL CONNECTION {id}")),
            decision: Decision::Killed,
            reason: Some(kill.why.clone()),
            ..AuditRecord::new(w.session.key.to_string(), 0, "watchdog", "")
        });
        let (up, _) = self.conn()?;
        let killed = up.run(&format!("KILL CONNECTION {id}")).await?;
        debug!(?killed, "KILL CONNECTION {id}");
        match killed {
            Ok(_) => {}
            Err((ER_NO_SUCH_THREAD, _)) => {}
            Err((code, msg)) => {
                let grant = if code == ER_KILL_DENIED {
                    "the watchdog must run as the same database user as the sessions (it does unless \
                     that user changed), or hold CONNECTION ADMIN (MariaDB 10.5+, MySQL) or SUPER"
                } else {
                    "unexpected"
                };
                error!(
                    key = %w.session.key,
                    upstream_id = id,
                    "the lock watchdog could not KILL CONNECTION {id}: {code} {} ({grant})", proto::printable(&msg)
                );
                // Still, if the session is idle, closing its connection rolls it back.
                if w.session.close_upstream_if_idle().await {
                    warn!(key = %w.session.key, "closed the idle developer session's connection instead");
                }
            }
        }
        Ok(())
    }

    /// Stops session statements that outlived `statement_timeout_ms` + a margin.
    async fn backstop(&mut self, watched: &[Watched]) -> Result<(), RoundError> {
        let limit_ms = self.config.statement_timeout_ms;
        if limit_ms == 0 {
            return Ok(());
        }
        let limit = Duration::from_millis(limit_ms) + BACKSTOP_MARGIN;
        for w in watched {
            let Some(running) = w.session.statement_running_for() else {
                continue;
            };
            if running <= limit {
                continue;
            }
            // Once per statement: a statement that started before the last KILL QUERY is it.
            if self
                .backstopped
                .get(&w.upstream_id)
                .is_some_and(|at| running >= at.elapsed())
            {
                continue;
            }
            self.backstopped.insert(w.upstream_id, Instant::now());
            self.config.audit.record(AuditRecord {
                upstream_sql: Some(format!("KILL QUERY {}", w.upstream_id)),
                decision: Decision::Killed,
                reason: Some(format!(
                    "a statement ran {:.1} s, over the {limit_ms} ms statement limit",
                    running.as_secs_f64()
                )),
                ..AuditRecord::new(w.session.key.to_string(), 0, "watchdog", "")
            });
            let (up, _) = self.conn()?;
            match up.run(&format!("KILL QUERY {}", w.upstream_id)).await? {
                Ok(_) | Err((ER_NO_SUCH_THREAD, _)) => {}
                Err((code, msg)) => error!(
                    key = %w.session.key,
                    "the lock watchdog could not KILL QUERY {}: {code} {}",
                    w.upstream_id,
                    proto::printable(&msg)
                ),
            }
        }
        Ok(())
    }
}

/// One kill per session (the first reason found).
fn add<'a>(kills: &mut Vec<(&'a Watched, Kill)>, w: &'a Watched, kill: Kill) {
    if !kills.iter().any(|(o, _)| o.upstream_id == w.upstream_id) {
        kills.push((w, kill));
    }
}

/// What to tell the operator when the row-lock query fails.
fn row_wait_problem(code: u16, msg: &str) -> String {
    if code == ER_SPECIFIC_ACCESS_DENIED && msg.to_ascii_uppercase().contains("PROCESS") {
        format!(
            "the lock watchdog cannot see row-lock waits: the dbproxy's database user lacks the PROCESS \
             privilege (GRANT PROCESS ON *.* TO '<dbproxy user>'@'<host>'); developer sessions that \
             block production are NOT rolled back, and the process list shows only the dbproxy user's \
             own connections ({code} {msg})"
        )
    } else {
        format!("the lock watchdog cannot read row-lock waits: {code} {msg}")
    }
}

/// `1,2,3` (never empty: 0 is no thread).
fn id_list(ids: impl Iterator<Item = u32>) -> String {
    let mut out = String::from("0");
    for id in ids {
        let _ = write!(out, ",{id}");
    }
    out
}

/// A server-side number of milliseconds (`1702.881`, `1.2e3`).
fn millis(s: &str) -> Option<Duration> {
    let ms: f64 = s.trim().parse().ok()?;
    (ms.is_finite() && ms >= 0.0).then(|| Duration::from_secs_f64(ms / 1000.0))
}

/// A statement for the audit log: one line, at most [`AUDIT_SQL_CHARS`] characters.
fn quote(sql: Option<&str>) -> String {
    let Some(sql) = sql else {
        return "(not shown by the server)".into();
    };
    let one_line: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out: String = one_line.chars().take(AUDIT_SQL_CHARS).collect();
    if one_line.chars().count() > AUDIT_SQL_CHARS {
        out.push('…');
    }
    out
}

/// A table as a statement names it: (schema if written, table).
type NamedTable = (Option<String>, String);

/// A statement as a developer may see it: its kind and the tables it names, never its values
/// (production's statements carry production data). Also the tables, if it could be parsed.
fn describe(sql: Option<&str>) -> (String, Option<Vec<NamedTable>>) {
    let Some(sql) = sql else {
        return ("a statement".into(), None);
    };
    // Its first keywords: `UPDATE`, `ALTER TABLE`, `CREATE INDEX`…
    let mut words = sql
        .split(|c: char| c.is_whitespace() || c == '(' || c == ';')
        .filter(|w| !w.is_empty() && !w.starts_with("/*"))
        .map(|w| {
            w.chars()
                .filter(|c| c.is_ascii_alphabetic())
                .collect::<String>()
                .to_ascii_uppercase()
        });
    let mut kind = words
        .next()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "a statement".into());
    if matches!(
        kind.as_str(),
        "ALTER" | "CREATE" | "DROP" | "RENAME" | "TRUNCATE" | "LOCK" | "OPTIMIZE" | "ANALYZE"
    ) {
        if let Some(w) = words.next().filter(|w| {
            matches!(
                w.as_str(),
                "TABLE" | "TABLES" | "INDEX" | "UNIQUE" | "ONLINE" | "IGNORE" | "VIEW"
            )
        }) {
            kind = format!("{kind} {w}");
        }
    }
    let tables = tables_of(sql);
    let summary = match &tables {
        Some(ts) if !ts.is_empty() => {
            let names: Vec<String> = ts
                .iter()
                .map(|(s, t)| match s {
                    Some(s) => format!("{s}.{t}"),
                    None => t.clone(),
                })
                .collect();
            format!("{kind} {}", names.join(", "))
        }
        _ => kind,
    };
    (summary, tables)
}

/// The tables a statement names, as (schema if written, table); `None` if it does not parse,
/// empty if the parser found no table in it.
fn tables_of(sql: &str) -> Option<Vec<NamedTable>> {
    let statements = crate::sql::parse(sql).ok()?;
    let mut out: Vec<NamedTable> = Vec::new();
    let mut push = |n: &ObjectName| {
        let parts: Vec<String> =
            n.0.iter()
                .map(|p| match p.as_ident() {
                    Some(i) => i.value.clone(),
                    None => p.to_string(),
                })
                .collect();
        let t = match parts.as_slice() {
            [.., schema, table] => (Some(schema.clone()), table.clone()),
            [table] => (None, table.clone()),
            [] => return,
        };
        if !out.contains(&t) {
            out.push(t);
        }
    };
    for st in &statements {
        let _ = visit_relations(st, |n| {
            push(n);
            ControlFlow::<()>::Continue(())
        });
        // Names the visitor does not report as relations.
        match st {
            Statement::Drop {
                object_type: ObjectType::Table,
                names,
                ..
            } => names.iter().for_each(&mut push),
            Statement::RenameTable(renames) => renames.iter().for_each(|r| push(&r.old_name)),
            _ => {}
        }
    }
    Some(out)
}

/// The sessions blocking a metadata-lock wait, each with why.
fn mdl_blockers<'a>(wait: &LongStatement, watched: &'a [Watched]) -> Vec<(&'a Watched, Kill)> {
    let (summary, tables) = describe(wait.info.as_deref());
    let db = wait.db.as_deref().map(str::to_lowercase);
    let secs = wait.waited.as_secs_f64();
    let detail = format!(
        "connection {} (database {}) waited {secs:.1} s for a metadata lock; its statement: {}",
        wait.id,
        wait.db.as_deref().unwrap_or("none"),
        quote(wait.info.as_deref())
    );
    let mut out = Vec::new();
    match tables.filter(|t| !t.is_empty()) {
        Some(tables) => {
            // The tables it wants, with the connection's database for unqualified names (no
            // database: any schema).
            let wanted: Vec<NamedTable> = tables
                .into_iter()
                .map(|(s, t)| (s.map(|s| s.to_lowercase()).or(db.clone()), t.to_lowercase()))
                .collect();
            for w in watched {
                let hit = wanted.iter().find(|(s, t)| {
                    w.touched
                        .iter()
                        .any(|(ts, tt)| tt == t && s.as_ref().is_none_or(|s| s == ts))
                });
                if let Some((s, t)) = hit {
                    let table = match s {
                        Some(s) => format!("{s}.{t}"),
                        None => t.clone(),
                    };
                    let why = format!(
                        "connection {} ({summary}) waited {secs:.1} s for the metadata lock on {table}, \
                         which this session holds (it used that table in its open transaction)",
                        wait.id
                    );
                    out.push((
                        w,
                        Kill {
                            why,
                            detail: detail.clone(),
                        },
                    ));
                }
            }
        }
        None => {
            // Fail toward production: every session that touched its database (any, if none).
            let what = if wait.info.is_some() {
                "could not be read"
            } else {
                "is not shown by the server"
            };
            warn!(
                connection = wait.id,
                "lock watchdog: the statement waiting for a metadata lock {what}; rolling back every \
                 developer session that used a table of database {}",
                proto::printable(wait.db.as_deref().unwrap_or("(any)"))
            );
            for w in watched {
                let hit = w
                    .touched
                    .iter()
                    .find(|(s, _)| db.as_ref().is_none_or(|db| db == s));
                if let Some((s, t)) = hit {
                    let why = format!(
                        "connection {} ({summary}) waited {secs:.1} s for a metadata lock in database {s}, \
                         where this session holds one (on {s}.{t}, at least)",
                        wait.id
                    );
                    out.push((
                        w,
                        Kill {
                            why,
                            detail: detail.clone(),
                        },
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(sql: &str) -> Option<Vec<String>> {
        tables_of(sql).map(|ts| {
            ts.into_iter()
                .map(|(s, t)| match s {
                    Some(s) => format!("{s}.{t}"),
                    None => t,
                })
                .collect()
        })
    }

    #[test]
    fn the_tables_a_waiting_statement_wants_are_found() {
        assert_eq!(
            names("ALTER TABLE t ADD COLUMN c INT").unwrap(),
            ["t"],
            "ALTER TABLE"
        );
        assert_eq!(
            names("ALTER TABLE shop.Customers ADD INDEX (email)").unwrap(),
            ["shop.Customers"]
        );
        assert_eq!(names("DROP TABLE IF EXISTS a, s.b").unwrap(), ["a", "s.b"]);
        assert_eq!(names("TRUNCATE TABLE t").unwrap(), ["t"]);
        assert_eq!(names("RENAME TABLE t TO t_old").unwrap(), ["t"]);
        assert_eq!(names("CREATE INDEX i ON s.t (c)").unwrap(), ["s.t"]);
        assert_eq!(
            names("UPDATE t JOIN u ON t.id = u.id SET t.v = 1").unwrap(),
            ["t", "u"]
        );
        assert_eq!(
            names("SELECT * FROM `weird name` WHERE id IN (SELECT id FROM x.y)").unwrap(),
            ["weird name", "x.y"]
        );
        assert!(names("THIS IS NOT SQL").is_none());
    }

    #[test]
    fn a_developer_sees_the_kind_and_tables_of_a_production_statement_but_never_its_values() {
        let (summary, _) = describe(Some(
            "UPDATE shop.users SET password = 'hunter2' WHERE id = 7",
        ));
        assert_eq!(summary, "UPDATE shop.users");
        assert!(!summary.contains("hunter2"));
        let (summary, tables) = describe(Some("FROBNICATE 'secret'"));
        assert_eq!(summary, "FROBNICATE");
        assert!(tables.is_none());
        assert_eq!(describe(None).0, "a statement");
        assert_eq!(
            describe(Some("alter table shop.t add column c int default 7")).0,
            "ALTER TABLE shop.t"
        );
    }

    #[test]
    fn server_millisecond_values_are_read() {
        assert_eq!(millis("1702.881"), Some(Duration::from_micros(1_702_881)));
        assert_eq!(
            millis("1000000000000000"),
            Some(Duration::from_secs(1_000_000_000_000))
        );
        assert_eq!(millis("-1"), None);
        assert_eq!(millis("x"), None);
        assert_eq!(id_list([7u32, 9].into_iter()), "0,7,9");
    }

    fn watched(key: &str, upstream_id: u32, touched: &[(&str, &str)]) -> Watched {
        let config = crate::DbProxyFileConfig {
            upstream: Some("mysql://u@127.0.0.1:3306".into()),
            ..Default::default()
        }
        .check()
        .unwrap();
        Watched {
            session: Arc::new(Session::new(
                proto::RoutingKey::parse(key).unwrap(),
                Arc::new(config),
            )),
            upstream_id,
            touched: touched
                .iter()
                .map(|(s, t)| (s.to_string(), t.to_string()))
                .collect(),
        }
    }

    fn waiting(db: Option<&str>, info: Option<&str>) -> LongStatement {
        LongStatement {
            id: 99,
            db: db.map(String::from),
            state: Some(MDL_STATE.into()),
            waited: Duration::from_millis(1500),
            info: info.map(String::from),
        }
    }

    fn blockers(wait: &LongStatement, sessions: &[Watched]) -> Vec<u32> {
        mdl_blockers(wait, sessions)
            .into_iter()
            .map(|(w, _)| w.upstream_id)
            .collect()
    }

    #[test]
    fn a_metadata_lock_wait_is_pinned_on_the_sessions_that_used_its_tables() {
        let sessions = [
            watched("aaaaaa", 1, &[("shop", "orders")]),
            watched("bbbbbb", 2, &[("shop", "customers"), ("crm", "orders")]),
            watched("cccccc", 3, &[]),
        ];
        // Unqualified names are in the waiting connection's database; case does not matter.
        let alter = waiting(Some("shop"), Some("ALTER TABLE Orders ADD COLUMN x INT"));
        assert_eq!(blockers(&alter, &sessions), [1]);
        let (_, kill) = mdl_blockers(&alter, &sessions).remove(0);
        assert!(
            kill.why.contains("connection 99 (ALTER TABLE Orders)"),
            "{}",
            kill.why
        );
        assert!(
            kill.why.contains("metadata lock on shop.orders"),
            "{}",
            kill.why
        );
        let other_db = waiting(Some("crm"), Some("ALTER TABLE orders ADD COLUMN x INT"));
        assert_eq!(blockers(&other_db, &sessions), [2]);
        let qualified = waiting(None, Some("TRUNCATE TABLE shop.customers"));
        assert_eq!(blockers(&qualified, &sessions), [2]);
        // No database and an unqualified name: any schema.
        let anywhere = waiting(None, Some("DROP TABLE orders"));
        assert_eq!(blockers(&anywhere, &sessions), [1, 2]);
        let untouched = waiting(Some("shop"), Some("ALTER TABLE invoices ADD COLUMN y INT"));
        assert!(blockers(&untouched, &sessions).is_empty());
    }

    #[test]
    fn an_unreadable_metadata_lock_wait_rolls_back_every_session_in_its_database() {
        let sessions = [
            watched("aaaaaa", 1, &[("shop", "orders")]),
            watched("bbbbbb", 2, &[("crm", "orders")]),
        ];
        let garbled = waiting(Some("shop"), Some("ALTER ONLINE TABLE !!! what"));
        assert_eq!(blockers(&garbled, &sessions), [1]);
        let hidden = waiting(Some("crm"), None);
        assert_eq!(blockers(&hidden, &sessions), [2]);
        let nothing_known = waiting(None, None);
        assert_eq!(blockers(&nothing_known, &sessions), [1, 2]);
    }

    #[test]
    fn a_missing_process_privilege_is_named() {
        let p = row_wait_problem(
            1227,
            "Access denied; you need (at least one of) the PROCESS privilege(s) for this operation",
        );
        assert!(p.contains("GRANT PROCESS ON *.*"), "{p}");
    }
}
