//! A developer session: ONE upstream connection holding ONE transaction that is never
//! committed, shared by every app connection of the developer (their app's pool). Commands
//! from app connections are serialised on it; each app connection's own state (database,
//! session variables, character set, its transaction) is re-applied when the upstream switches
//! to it.
//!
//! If the upstream transaction is lost (deadlock, server restart, a dropped connection), the
//! session says so loudly: every app connection gets an error on its next command, and a new
//! transaction starts after that. It never continues in autocommit.
//!
//! Layout:
//! - here: the session's state (its upstream, the app connections' own state, the write
//!   turn), its life (start, loss, reset, end) and switching the upstream between app
//!   connections;
//! - `statements`: what each command of an app connection goes through, from the policy to
//!   the relayed response;
//! - `catalog`: the catalog checks a write must pass, on a connection of their own.

mod catalog;
mod statements;

use crate::audit::{AuditRecord, Decision};
use crate::config::DbProxyConfig;
use crate::limits::SessionLimits;
use crate::mask::analysis::MaskedProjection;
use crate::mask::rows::ResultMasker;
use crate::packet::PacketWriter;
use crate::policy::{
    classify, parse_statement, AdminCommand, Forward, Reach, SessionVariable, TableName, TxControl,
    Verdict,
};
use crate::txn::{AppTransaction, Plan};
use crate::upstream::{
    relay_response, Collected, Position, ResponseTracker, Upstream, UpstreamError,
};
use crate::wire;
use proto::{printable, RoutingKey};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWrite;
use tracing::{info, warn};

/// How long catalog facts (engines, triggers, stored functions) are trusted.
const CATALOG_TTL: Duration = Duration::from_secs(30);

/// One app connection's state, as a real server would keep it for that connection.
pub struct AppConn {
    pub id: u32,
    pub db: Option<String>,
    /// Session variables it set: variable → the SET statement, in order.
    vars: Vec<(String, String)>,
    pub tx: AppTransaction,
    generation: u64,
    /// Whether a statement of its own has reached the upstream yet. A connection that has
    /// not loses nothing when the session ends: it is not told of a reset, and a statement that
    /// finds the upstream dead is run again on a new session (a brand-new connection must not
    /// fail inside its own connect because the watchdog or `db reset` ended the session a
    /// moment before).
    used: bool,
    /// Its prepared statements: the id the app knows → the upstream's.
    stmts: HashMap<u32, PreparedStatement>,
    next_stmt: u32,
    /// A statement whose long data (COM_STMT_SEND_LONG_DATA) was too large to send, and why:
    /// its next execute gets that error instead of running.
    long_data_refused: Option<(u32, String)>,
    /// The id of the statement it prepared last: what id 0xFFFFFFFF names (MariaDB's
    /// "the statement just prepared", which lets a connector send PREPARE and EXECUTE together).
    last_prepared: Option<u32>,
    /// The character set it logged in with (what COM_RESET_CONNECTION returns to).
    login_names: String,
    /// What `LAST_INSERT_ID()` returns on this connection.
    last_insert_id: u64,
    /// Its `SET SESSION TRANSACTION ISOLATION LEVEL`, shown as its `@@tx_isolation`.
    isolation: Option<String>,
    /// What the statement being served did, for the audit log and the rate limits.
    report: StatementReport,
}

/// What one statement did: filled while it is served, written to the audit log after.
#[derive(Debug, Default)]
struct StatementReport {
    /// Why the proxy refused it.
    refused: Option<String>,
    /// What went upstream instead of the app's text (emulated transaction control).
    upstream_sql: Option<String>,
    /// The result's masked columns need this reading of the projection.
    projection: MaskedProjection,
    masked: Vec<String>,
    rows: Option<u64>,
    affected: Option<u64>,
    error: Option<String>,
}

#[derive(Debug, Clone)]
struct PreparedStatement {
    upstream_id: u32,
    writes: bool,
    generation: u64,
    /// Transaction control prepared by the app (`BEGIN`, `COMMIT`…): emulated at execute,
    /// never prepared upstream.
    emulated: Option<Verdict>,
    /// What it can reach: a write is checked again at every execute (the catalog may have
    /// changed since the prepare, e.g. a temporary table dropped).
    reach: Reach,
    /// Its text, for the audit log of each execution.
    sql: Arc<str>,
    /// How its result columns are masked (decided at prepare).
    projection: MaskedProjection,
}

impl AppConn {
    fn new(id: u32, db: Option<String>, collation: u8, generation: u64) -> Self {
        let login_names = format!("SET NAMES {}", charset_of(collation));
        Self {
            id,
            db,
            vars: vec![("names".into(), login_names.clone())],
            login_names,
            last_insert_id: 0,
            isolation: None,
            tx: AppTransaction::new(id),
            generation,
            used: false,
            stmts: HashMap::new(),
            next_stmt: 1,
            last_prepared: None,
            long_data_refused: None,
            report: StatementReport::default(),
        }
    }

    fn set_var(&mut self, var: &str, sql: &str) {
        self.vars.retain(|(v, _)| v != var);
        self.vars.push((var.to_owned(), sql.to_owned()));
    }

    fn status(&self) -> u16 {
        let mut s = 0;
        if self.tx.in_transaction() {
            s |= wire::STATUS_IN_TRANS;
        }
        if self.tx.autocommit() {
            s |= wire::STATUS_AUTOCOMMIT;
        }
        s
    }
}

/// The character set named by a handshake collation id (the common ones; utf8mb4 otherwise).
fn charset_of(collation: u8) -> &'static str {
    match collation {
        8 | 47 | 48 | 49 | 94 => "latin1",
        33 | 83 | 192..=215 => "utf8",
        63 => "binary",
        _ => "utf8mb4",
    }
}

#[derive(Clone)]
struct TableFacts {
    at: Instant,
    /// Every catalog row with exactly this schema and name (a temporary table and a base table
    /// may share a name).
    rows: Vec<TableRow>,
}

#[derive(Clone)]
struct TableRow {
    table_type: String,
    engine: String,
    triggers: u64,
    view_definition: String,
}

/// Whether an upper-cased SQL text calls function `name` (`NAME(`, `` `NAME`( ``).
fn calls(sql: &str, name: &str) -> bool {
    sql.match_indices(name).any(|(i, _)| {
        let before = sql[..i].chars().last();
        let after = sql[i + name.len()..].trim_start_matches('`').trim_start();
        let starts_word = !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        starts_word && after.starts_with('(')
    })
}

struct Inner {
    upstream: Option<Upstream>,
    /// A second connection for catalog lookups: no transaction (reading the catalog touches
    /// Aria system tables, which would break SAVEPOINT in the session's transaction) and none
    /// of the developer's settings (which could blind the lookups).
    catalog: Option<Upstream>,
    /// The session's temporary tables, by exact (schema, name) as resolved at creation: a
    /// temporary table shadows a base table of the same name, and exempts only itself.
    temp_tables: HashSet<(String, String)>,
    generation: u64,
    /// Why the previous upstream transaction ended, told to each app connection once.
    lost: Option<String>,
    /// The app connection whose state the upstream currently has.
    on: Option<u32>,
    applied_db: Option<String>,
    applied_vars: Vec<(String, String)>,
    /// What `LAST_INSERT_ID()` returns upstream now.
    applied_last_insert_id: u64,
    stored_functions: Option<(Instant, HashSet<String>)>,
    tables: HashMap<(String, String), TableFacts>,
    statements: u64,
    wrote: bool,
    server: Option<ServerInfo>,
    /// Advanced by every write, RELEASE and ROLLBACK TO (see `txn`).
    epoch: u64,
    /// The app connection whose transaction has written and not ended: other writers wait.
    turn: Option<u32>,
}

/// The upstream server as apps see it in the proxy's handshake.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub version: String,
    pub collation: u8,
    /// MariaDB's bulk execution (COM_STMT_BULK_EXECUTE) is offered: the upstream accepted it.
    pub bulk: bool,
}

/// What `db status` shows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionStatus {
    pub routing_key: String,
    pub age_secs: u64,
    pub statements: u64,
    pub holds_writes: bool,
    pub app_connections: usize,
}

pub struct Session {
    pub key: RoutingKey,
    config: Arc<DbProxyConfig>,
    inner: tokio::sync::Mutex<Inner>,
    next_conn: AtomicU32,
    app_conns: AtomicUsize,
    pub created: Instant,
    last_seen: std::sync::Mutex<Instant>,
    /// Woken when the write turn is released.
    turn_free: tokio::sync::Notify,
    /// What the lock watchdog reads while a statement holds `inner` (see `watchdog`).
    watch: Watch,
    /// Statements per second and rows per minute (see `limits`).
    limits: std::sync::Mutex<SessionLimits>,
    /// The upstream's `max_allowed_packet` (the largest command it takes without closing the
    /// connection); `usize::MAX` until known.
    upstream_max_packet: AtomicUsize,
}

/// Lock-free facts about the session for the lock watchdog, which must never wait for `inner`
/// (a statement holds it while it runs, and a blocked one may hold it for long).
#[derive(Default)]
struct Watch {
    /// Server thread id of the upstream connection; 0: none.
    upstream_id: AtomicU32,
    /// Server thread id of the catalog connection; 0: none.
    catalog_id: AtomicU32,
    /// Tables the current upstream transaction has reached, as lower-case (schema, table): it
    /// holds a metadata lock on each until the transaction ends.
    touched: std::sync::Mutex<HashSet<(String, String)>>,
    /// When the statement being served started, if one is.
    running_since: std::sync::Mutex<Option<Instant>>,
    /// The watchdog killed upstream thread `.0` to protect production, for reason `.1`: the
    /// session's next use (or the statement that was running) reports it.
    protected: std::sync::Mutex<Option<(u32, String)>>,
}

fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks a statement as running for as long as it lives.
struct Running<'a>(&'a Watch);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        *locked(&self.0.running_since) = None;
    }
}

/// What went wrong serving a command, for the app connection.
pub enum Outcome {
    /// The reply was written.
    Done,
    /// The app connection's byte stream failed; stop serving it.
    AppGone,
}

impl Session {
    pub fn new(key: RoutingKey, config: Arc<DbProxyConfig>) -> Self {
        let config_limits = config.limits.clone();
        Self {
            key,
            config,
            inner: tokio::sync::Mutex::new(Inner {
                upstream: None,
                catalog: None,
                temp_tables: HashSet::new(),
                generation: 0,
                lost: None,
                on: None,
                applied_db: None,
                applied_vars: Vec::new(),
                applied_last_insert_id: 0,
                stored_functions: None,
                tables: HashMap::new(),
                statements: 0,
                wrote: false,
                server: None,
                epoch: 0,
                turn: None,
            }),
            turn_free: tokio::sync::Notify::new(),
            next_conn: AtomicU32::new(1),
            app_conns: AtomicUsize::new(0),
            created: Instant::now(),
            last_seen: std::sync::Mutex::new(Instant::now()),
            watch: Watch::default(),
            limits: std::sync::Mutex::new(SessionLimits::new(&config_limits, Instant::now())),
            upstream_max_packet: AtomicUsize::new(usize::MAX),
        }
    }

    /// Server thread id of the session's upstream connection, if it has one.
    pub fn upstream_thread_id(&self) -> Option<u32> {
        Some(self.watch.upstream_id.load(Ordering::Relaxed)).filter(|id| *id != 0)
    }

    /// Server thread id of the session's catalog connection, if it has one.
    pub fn catalog_thread_id(&self) -> Option<u32> {
        Some(self.watch.catalog_id.load(Ordering::Relaxed)).filter(|id| *id != 0)
    }

    /// The tables the current upstream transaction has reached (lower-case schema, table).
    pub fn touched_tables(&self) -> HashSet<(String, String)> {
        locked(&self.watch.touched).clone()
    }

    /// How long the statement being served has been running, if one is.
    pub fn statement_running_for(&self) -> Option<Duration> {
        locked(&self.watch.running_since).map(|t| t.elapsed())
    }

    /// The watchdog is about to kill the session's upstream connection to protect production:
    /// records `why` so that the statement running now, if any, and then every app connection's
    /// next statement get error 1317 saying so. Returns the upstream thread id it applies to —
    /// the one to kill — or `None` if the session has no upstream.
    pub fn protect_production(&self, why: String) -> Option<u32> {
        let id = self.upstream_thread_id()?;
        self.protect_production_of(id, why).then_some(id)
    }

    /// As [`Self::protect_production`], only if the upstream is still thread `thread_id`.
    pub fn protect_production_of(&self, thread_id: u32, why: String) -> bool {
        let mut protected = locked(&self.watch.protected);
        if thread_id == 0 || self.upstream_thread_id() != Some(thread_id) {
            return false;
        }
        *protected = Some((thread_id, why));
        true
    }

    /// Why the watchdog killed the current upstream connection, if it did.
    fn protection(&self) -> Option<String> {
        let protected = locked(&self.watch.protected);
        match &*protected {
            Some((id, why)) if self.upstream_thread_id() == Some(*id) => Some(why.clone()),
            _ => None,
        }
    }

    /// At the top of each use of the session: if the watchdog killed the upstream, the session
    /// is lost now, and the app connections are told why (not with a generic failure later).
    async fn protect_now(&self, inner: &mut Inner) {
        if self.protection().is_none() {
            return;
        }
        if let Some(up) = inner.upstream.take() {
            up.close().await;
        }
        self.lose(inner, "the database connection was killed".into());
    }

    /// For a watchdog that may not kill the upstream: closes it (the server rolls the
    /// transaction back) if no statement is using the session now. `true` if it did.
    pub async fn close_upstream_if_idle(&self) -> bool {
        let Ok(mut inner) = self.inner.try_lock() else {
            return false;
        };
        let Some(up) = inner.upstream.take() else {
            return false;
        };
        up.close().await;
        self.lose(&mut inner, "the database connection was closed".into());
        true
    }

    /// Marks a statement as running until the returned guard drops (the watchdog's backstop
    /// for statement time limits reads it).
    fn running(&self) -> Running<'_> {
        *locked(&self.watch.running_since) = Some(Instant::now());
        Running(&self.watch)
    }

    /// Records the tables a statement reaches, for the watchdog's metadata-lock check.
    fn note_touched(&self, conn: &AppConn, reach: &Reach) {
        if reach.tables.is_empty() {
            return;
        }
        let mut touched = locked(&self.watch.touched);
        for t in &reach.tables {
            let schema = t
                .schema
                .clone()
                .or_else(|| conn.db.clone())
                .unwrap_or_default();
            touched.insert((schema.to_lowercase(), t.name.to_lowercase()));
        }
    }

    fn touch(&self) {
        *self.last_seen.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    pub fn idle_for(&self) -> Option<Duration> {
        (self.app_conns.load(Ordering::Relaxed) == 0).then(|| {
            self.last_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed()
        })
    }

    pub async fn status(&self) -> SessionStatus {
        let inner = self.inner.lock().await;
        SessionStatus {
            routing_key: self.key.to_string(),
            age_secs: self.created.elapsed().as_secs(),
            statements: inner.statements,
            holds_writes: inner.wrote,
            app_connections: self.app_conns.load(Ordering::Relaxed),
        }
    }

    /// Ends the upstream transaction (closing the connection rolls everything back).
    pub async fn end(&self, reason: &str) {
        let mut inner = self.inner.lock().await;
        if let Some(up) = inner.upstream.take() {
            info!(key = %self.key, "database session ended: {}", printable(reason));
            up.close().await;
            self.lose(&mut inner, reason.to_owned());
        }
        if let Some(catalog) = inner.catalog.take() {
            self.watch.catalog_id.store(0, Ordering::Relaxed);
            catalog.close().await;
        }
    }

    /// Opens the upstream and its transaction if there is none.
    async fn ensure_upstream(&self, inner: &mut Inner) -> Result<(), UpstreamError> {
        if inner.upstream.is_some() {
            return Ok(());
        }
        let mut up = Upstream::connect(&self.config.upstream, self.config.max_packet_bytes).await?;
        let isolation = if self.config.consistent_snapshot {
            "REPEATABLE READ"
        } else {
            "READ COMMITTED"
        };
        let mut setup = vec![
            format!("SET SESSION TRANSACTION ISOLATION LEVEL {isolation}"),
            "SET autocommit = 0".to_owned(),
            "SET NAMES utf8mb4".to_owned(),
        ];
        if self.config.statement_timeout_ms > 0 {
            // MariaDB; on MySQL this variable does not exist and the proxy skips it.
            setup.push(format!(
                "SET SESSION max_statement_time = {}",
                self.config.statement_timeout_ms as f64 / 1000.0
            ));
        }
        for sql in &setup {
            if let Err((code, msg)) = up.run(sql).await? {
                if !sql.contains("max_statement_time") {
                    return Err(UpstreamError::Protocol(format!(
                        "session setup `{sql}` failed: {code} {msg}"
                    )));
                }
            }
        }
        let begin = if self.config.consistent_snapshot {
            "START TRANSACTION WITH CONSISTENT SNAPSHOT"
        } else {
            "START TRANSACTION"
        };
        match up.run(begin).await? {
            Ok(c) if c.status.is_some_and(|s| s & wire::STATUS_IN_TRANS != 0) => {}
            Ok(_) => {
                return Err(UpstreamError::Protocol(
                    "START TRANSACTION did not open a transaction".into(),
                ))
            }
            Err((code, msg)) => {
                return Err(UpstreamError::Protocol(format!(
                    "START TRANSACTION failed: {code} {msg}"
                )))
            }
        }
        if let Ok(c) = up.run("SELECT @@max_allowed_packet").await? {
            if let Some(n) = c
                .rows()
                .into_iter()
                .next()
                .and_then(|r| r.into_iter().next())
                .flatten()
                .and_then(|v| v.parse::<usize>().ok())
            {
                self.upstream_max_packet.store(n, Ordering::Relaxed);
            }
        }
        info!(key = %self.key, upstream_id = up.connection_id, "database session started ({isolation})");
        inner.server = Some(ServerInfo {
            version: up.server_version.clone(),
            collation: up.collation,
            bulk: up.bulk,
        });
        locked(&self.watch.touched).clear();
        self.watch
            .upstream_id
            .store(up.connection_id, Ordering::Relaxed);
        inner.upstream = Some(up);
        inner.generation += 1;
        inner.on = None;
        inner.temp_tables.clear();
        inner.applied_db = None;
        inner.applied_vars = vec![("names".into(), "SET NAMES utf8mb4".into())];
        inner.tables.clear();
        inner.stored_functions = None;
        Ok(())
    }

    /// A COM_STMT_SEND_LONG_DATA (or COM_STMT_CLOSE) too large for the upstream: not sent,
    /// and, as a server does with long data it could not take, the statement's next execute
    /// fails with the reason (these commands have no reply of their own).
    pub fn refuse_long_data(&self, conn: &mut AppConn, payload: &[u8], limit: usize) {
        if let Some(id) = statement_id(conn, payload) {
            let why = format!(
                "Parameter of prepared statement {id} is bigger than 'max_allowed_packet' bytes: \
                 {} bytes, the database accepts {limit} (DevInProd did not send it)",
                payload.len()
            );
            conn.long_data_refused = Some((id, why));
        }
    }

    /// The largest command the upstream takes (its `max_allowed_packet`), once known.
    pub fn upstream_max_packet(&self) -> usize {
        self.upstream_max_packet.load(Ordering::Relaxed)
    }

    /// What to present to apps in the handshake (connects the upstream if needed).
    pub async fn server_info(&self) -> Result<ServerInfo, UpstreamError> {
        let mut inner = self.inner.lock().await;
        self.ensure_upstream(&mut inner).await?;
        Ok(inner.server.clone().unwrap_or_else(|| ServerInfo {
            version: "5.5.5-10.11.0-MariaDB".into(),
            collation: 45,
            bulk: false,
        }))
    }

    /// A new app connection (after its handshake): counts it and gives it an id.
    pub async fn open_conn(
        self: &Arc<Self>,
        db: Option<String>,
        collation: u8,
    ) -> (AppConn, ConnGuard) {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.app_conns.fetch_add(1, Ordering::Relaxed);
        self.touch();
        let generation = self.inner.lock().await.generation;
        (
            AppConn::new(id, db, collation, generation),
            ConnGuard(self.clone()),
        )
    }

    /// Records the loss of the upstream transaction.
    fn lose(&self, inner: &mut Inner, why: String) {
        // The watchdog's reason, when it killed this upstream, says more than the symptom.
        let why = match self.protection() {
            Some(reason) => format!("to protect production: {reason}"),
            None => why,
        };
        self.watch.upstream_id.store(0, Ordering::Relaxed);
        *locked(&self.watch.protected) = None;
        warn!(key = %self.key, "database session reset: {}", printable(&why));
        inner.upstream = None;
        inner.lost = Some(why);
        inner.on = None;
        self.release_turn(inner, None);
    }

    /// Gives up the write turn if `conn` (or anyone, for `None`) holds it and no longer needs it.
    fn release_turn(&self, inner: &mut Inner, conn: Option<&AppConn>) {
        let release = match (inner.turn, conn) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(owner), Some(c)) => owner == c.id && !c.tx.holds_write_turn(),
        };
        if release {
            inner.turn = None;
            self.turn_free.notify_waiters();
        }
    }

    /// If the session was reset since `conn` last ran something, the error to give it.
    fn reset_notice(&self, inner: &Inner, conn: &mut AppConn) -> Option<String> {
        if !conn.used {
            conn.generation = inner.generation;
        }
        if conn.generation == inner.generation {
            return None;
        }
        conn.generation = inner.generation;
        conn.tx.forget();
        let notice = format!(
            "DevInProd reset this database session ({}); everything it had written is gone, and a new session has begun",
            inner.lost.clone().unwrap_or_else(|| "the previous one ended".into())
        );
        conn.report.error = Some(format!("{}: {notice}", wire::ER_SESSION_RESET));
        Some(notice)
    }

    /// The app asked for CLIENT_IGNORE_SPACE at login: a server then adds IGNORE_SPACE to the
    /// connection's sql_mode, and `@@sql_mode` shows it. Emulated the same way for this app
    /// connection only (it changes no lexing the policy relies on: its parser reads `f (x)` as a
    /// call either way). A failure leaves the mode as it was; the login goes on.
    pub async fn ignore_space(&self, conn: &mut AppConn) {
        let mut inner = self.inner.lock().await;
        let applied: Result<(), ServeError> = async {
            self.ensure_upstream(&mut inner).await?;
            self.switch_to(&mut inner, conn).await?;
            let up = upstream(&mut inner)?;
            let set = "SET SESSION sql_mode = CONCAT(@@session.sql_mode, ',IGNORE_SPACE')";
            if up.run(set).await?.is_ok() {
                self.read_back_sql_mode(&mut inner, conn).await?;
            }
            inner.applied_vars = conn.vars.clone();
            Ok(())
        }
        .await;
        if let Err(ServeError::Upstream(e)) = applied {
            self.lose(&mut inner, format!("the database connection failed: {e}"));
        }
    }

    /// Makes the upstream carry `conn`'s database and session variables.
    async fn switch_to(&self, inner: &mut Inner, conn: &AppConn) -> Result<(), UpstreamError> {
        if inner.on == Some(conn.id) {
            return Ok(());
        }
        let Some(up) = inner.upstream.as_mut() else {
            return Ok(());
        };
        if conn.last_insert_id != inner.applied_last_insert_id {
            // LAST_INSERT_ID(n) makes the next LAST_INSERT_ID() return n: each connection sees
            // the id of its own last insert, as on a real server.
            if up
                .run(&format!("DO LAST_INSERT_ID({})", conn.last_insert_id))
                .await?
                .is_ok()
            {
                inner.applied_last_insert_id = conn.last_insert_id;
            }
        }
        if conn.db.is_some() && conn.db != inner.applied_db {
            let db = conn.db.clone().unwrap_or_default();
            if up
                .run(&format!("USE `{}`", db.replace('`', "``")))
                .await?
                .is_ok()
            {
                inner.applied_db = Some(db);
            }
        }
        let mut sent = HashSet::new();
        for (var, _) in inner.applied_vars.clone() {
            if var != "names" && !conn.vars.iter().any(|(v, _)| *v == var) {
                let _ = up.run(&format!("SET SESSION {var} = DEFAULT")).await?;
            }
        }
        for (var, sql) in &conn.vars {
            let current = inner
                .applied_vars
                .iter()
                .find(|(v, _)| v == var)
                .map(|(_, s)| s);
            if current != Some(sql) && sent.insert(sql.clone()) {
                let _ = up.run(sql).await?;
            }
        }
        inner.applied_vars = conn.vars.clone();
        inner.on = Some(conn.id);
        Ok(())
    }

    /// COM_RESET_CONNECTION / COM_CHANGE_USER, emulated for this app connection only: its
    /// transaction is rolled back, its prepared statements and session variables go (the
    /// character set returns to `collation`'s, or the login one), as a server would do.
    pub async fn reset_conn(&self, conn: &mut AppConn, collation: Option<u8>) {
        self.end_conn(conn).await;
        if let Some(c) = collation {
            conn.login_names = format!("SET NAMES {}", charset_of(c));
        }
        conn.vars = vec![("names".into(), conn.login_names.clone())];
        conn.isolation = None;
    }

    /// The app connection ends or resets: its open transaction is rolled back.
    pub async fn end_conn(&self, conn: &mut AppConn) {
        let mut inner = self.inner.lock().await;
        let generation = inner.generation;
        for (_, stmt) in conn.stmts.drain() {
            if stmt.emulated.is_some() {
                continue;
            }
            if let (true, Some(up)) = (stmt.generation == generation, inner.upstream.as_mut()) {
                let mut close = vec![0x19];
                close.extend_from_slice(&stmt.upstream_id.to_le_bytes());
                let _ = up.send(&close).await;
            }
        }
        let plan = conn.tx.end(inner.epoch);
        if plan.advances_epoch {
            inner.epoch += 1;
        }
        self.release_turn(&mut inner, Some(conn));
        if conn.generation == inner.generation && inner.upstream.is_some() {
            for sql in plan.statements {
                if let Ok(Some(_)) = self.run_internal(&mut inner, &sql).await {
                    break;
                }
            }
        }
        if inner.on == Some(conn.id) {
            inner.on = None;
        }
    }
}

/// Every backquoted name in `sql`, in order (doubled backquotes inside a name undone).
fn backquoted_names(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '`' {
            continue;
        }
        let mut name = String::new();
        loop {
            match chars.next() {
                None => return out,
                Some('`') if chars.peek() == Some(&'`') => {
                    chars.next();
                    name.push('`');
                }
                Some('`') => break,
                Some(ch) => name.push(ch),
            }
        }
        out.push(name);
    }
    out
}

fn display(t: &TableName, schema: &str) -> String {
    format!("{schema}.{}", t.name)
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02X}")).collect()
}

/// The columns of a [`Verdict::SessionView`]: name, and whether the value is an integer.
fn view_columns(columns: &[(String, SessionVariable)]) -> Vec<(&str, bool)> {
    columns
        .iter()
        .map(|(name, v)| (name.as_str(), !matches!(v, SessionVariable::Isolation)))
        .collect()
}

const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_RESET: u8 = 0x1A;
const COM_STMT_BULK_EXECUTE: u8 = 0xFA;

/// The app's statement id a COM_STMT_* payload names (0xFFFFFFFF: the one prepared last).
fn statement_id(conn: &AppConn, payload: &[u8]) -> Option<u32> {
    let id = payload
        .get(1..5)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))?;
    if id == u32::MAX {
        conn.last_prepared
    } else {
        Some(id)
    }
}

fn catalog_refusal(why: &str) -> String {
    format!(
        "DevInProd refused the statement: it could not check it against the database's catalog ({why}); \
         it was not run, and the session is unchanged"
    )
}

/// The upstream connection, which the caller has made sure exists.
fn upstream(inner: &mut Inner) -> Result<&mut Upstream, ServeError> {
    inner.upstream.as_mut().ok_or_else(|| {
        ServeError::Upstream(UpstreamError::Protocol("no upstream connection".into()))
    })
}

enum ServeError {
    App,
    Upstream(UpstreamError),
    /// The catalog could not be read: the statement is refused (fail closed), the session
    /// goes on.
    Catalog(String),
}

impl From<UpstreamError> for ServeError {
    fn from(e: UpstreamError) -> Self {
        ServeError::Upstream(e)
    }
}

async fn reply<W: AsyncWrite + Unpin>(app: &mut PacketWriter<W>, packet: Vec<u8>) -> Outcome {
    match app.send(1, &packet).await {
        Ok(_) => Outcome::Done,
        Err(_) => Outcome::AppGone,
    }
}

/// Counts an app connection for as long as it lives.
pub struct ConnGuard(Arc<Session>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.app_conns.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}
