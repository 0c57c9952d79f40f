//! A developer session: ONE upstream connection holding ONE transaction that is never
//! committed, shared by every app connection of the developer (their app's pool). Commands
//! from app connections are serialised on it; each app connection's own state (database,
//! session variables, character set, its transaction) is re-applied when the upstream switches
//! to it.
//!
//! If the upstream transaction is lost (deadlock, server restart, a dropped connection), the
//! session says so loudly: every app connection gets an error on its next command, and a new
//! transaction starts after that. It never continues in autocommit.

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

    /// Serves one COM_QUERY, and audits it.
    pub async fn query<W: AsyncWrite + Unpin>(
        &self,
        conn: &mut AppConn,
        sql: &str,
        payload: &[u8],
        app: &mut PacketWriter<W>,
    ) -> Outcome {
        let started = Instant::now();
        conn.report = StatementReport::default();
        let outcome = self.query_inner(conn, sql, payload, app).await;
        self.audit(conn, "query", sql, started);
        outcome
    }

    async fn query_inner<W: AsyncWrite + Unpin>(
        &self,
        conn: &mut AppConn,
        sql: &str,
        payload: &[u8],
        app: &mut PacketWriter<W>,
    ) -> Outcome {
        self.touch();
        let classified = classify(sql);
        if let Verdict::Refuse(why) = &classified.verdict {
            info!(key = %self.key, conn = conn.id, kind = %classified.kind, "refused: {}", printable(why));
            return reply(app, self.refusal(conn, why)).await;
        }
        if let Err(packet) = self.admit(conn, &classified.verdict) {
            return reply(app, packet).await;
        }
        match self.mask_check(sql, &classified.reach, conn) {
            Ok(projection) => conn.report.projection = projection,
            Err(why) => return reply(app, self.refusal(conn, &why)).await,
        }
        // Writes, and user savepoints (they move what a ROLLBACK would undo), wait their turn.
        // (Outside a transaction they place nothing, and need no turn.)
        let tx_open = conn.tx.in_transaction() || !conn.tx.autocommit();
        let writes = match &classified.verdict {
            Verdict::Forward(Forward { writes }) => *writes,
            Verdict::Tx(
                TxControl::Savepoint(_) | TxControl::Release(_) | TxControl::RollbackTo(_),
            ) => tx_open,
            _ => false,
        };
        let mut inner = match self.lock_for(conn.id, writes).await {
            Ok(inner) => inner,
            Err(msg) => {
                return reply(app, wire::err(wire::ER_LOCK_WAIT_TIMEOUT, b"HY000", &msg)).await
            }
        };
        let mut retried = false;
        loop {
            let before = app.packets();
            let r = self
                .serve(
                    &mut inner,
                    conn,
                    &classified.verdict,
                    &classified.reach,
                    payload,
                    app,
                )
                .await;
            let told_app = app.packets() != before;
            if let Some(outcome) = self
                .settle(&mut inner, conn, r, told_app, &mut retried, app)
                .await
            {
                return outcome;
            }
        }
    }

    /// After one attempt at a statement: its outcome, or `None` to try it once more. That is
    /// when the upstream failed before the app was told anything, on an app connection that
    /// has run nothing yet: a new connection must not fail inside its own connect because the
    /// session's upstream died while it was idle (the session reconnects on the retry).
    async fn settle<W: AsyncWrite + Unpin>(
        &self,
        inner: &mut Inner,
        conn: &mut AppConn,
        attempt: Result<Outcome, ServeError>,
        told_app: bool,
        retried: &mut bool,
        app: &mut PacketWriter<W>,
    ) -> Option<Outcome> {
        match attempt {
            Ok(outcome) => {
                conn.used = true;
                Some(outcome)
            }
            Err(ServeError::Upstream(e)) if !conn.used && !*retried && !told_app => {
                *retried = true;
                self.lose(inner, format!("the database connection failed: {e}"));
                None
            }
            Err(e) => Some(self.failed(inner, conn, e, app).await),
        }
    }

    /// Records a refusal for the audit log; the packet to send.
    fn refusal(&self, conn: &mut AppConn, why: &str) -> Vec<u8> {
        conn.report.refused = Some(why.to_owned());
        wire::refused(why)
    }

    /// The rate limits, before a statement that reaches the server. `Err`: the error to send.
    fn admit(&self, conn: &mut AppConn, verdict: &Verdict) -> Result<(), Vec<u8>> {
        if !matches!(
            verdict,
            Verdict::Forward(_)
                | Verdict::SessionSet { .. }
                | Verdict::CreateTemporary(_)
                | Verdict::Use(_)
        ) {
            return Ok(());
        }
        let now = Instant::now();
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        let admitted = limits.admit_statement(now).and_then(|()| {
            if matches!(verdict, Verdict::Forward(Forward { writes: false })) {
                limits.admit_rows(now)
            } else {
                Ok(())
            }
        });
        admitted.map_err(|e| {
            conn.report.refused = Some(e.message.clone());
            wire::err(wire::ER_RATE_LIMITED, b"42000", &e.message)
        })
    }

    /// The masking analysis of a statement that reaches tables (see `mask::analysis`).
    fn mask_check(
        &self,
        sql: &str,
        reach: &Reach,
        conn: &AppConn,
    ) -> Result<MaskedProjection, String> {
        let Some(masking) = &self.config.masking else {
            return Ok(MaskedProjection::default());
        };
        if reach.tables.is_empty() {
            return Ok(MaskedProjection::default());
        }
        let statement = parse_statement(sql).ok_or_else(|| {
            "DevInProd refused a statement it could not analyse for masked columns".to_owned()
        })?;
        crate::mask::analysis::check(&statement, &masking.rules, conn.db.as_deref())
    }

    /// Writes the audit record of the statement `conn` just ran, and charges its rows.
    fn audit(&self, conn: &mut AppConn, command: &'static str, sql: &str, started: Instant) {
        let report = std::mem::take(&mut conn.report);
        if let Some(rows) = report.rows {
            self.limits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .charge_rows(rows, Instant::now());
        }
        let decision = if report.refused.is_some() {
            Decision::Refused
        } else if !report.masked.is_empty() {
            Decision::Rewritten
        } else if report.upstream_sql.is_some() {
            Decision::Emulated
        } else {
            Decision::Allowed
        };
        let reason = report.refused.clone().or_else(|| {
            (!report.masked.is_empty())
                .then(|| format!("masked in the result: {}", report.masked.join(", ")))
        });
        self.config.audit.record(AuditRecord {
            time: String::new(),
            routing_key: self.key.to_string(),
            conn: conn.id,
            command,
            sql: sql.to_owned(),
            upstream_sql: report.upstream_sql,
            decision,
            reason,
            rows: report.rows,
            affected: report.affected,
            duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            error: report.error,
            masked_columns: report.masked,
        });
    }

    /// The session, once `conn_id` may go ahead: a write waits while another connection's
    /// transaction that has written is open (its ROLLBACK would otherwise undo this write too).
    /// Reads never wait.
    async fn lock_for(
        &self,
        conn_id: u32,
        writes: bool,
    ) -> Result<tokio::sync::MutexGuard<'_, Inner>, String> {
        let deadline = tokio::time::Instant::now() + self.config.write_turn_timeout;
        loop {
            let inner = self.inner.lock().await;
            let owner = inner.turn;
            if !writes || owner.is_none() || owner == Some(conn_id) {
                return Ok(inner);
            }
            let notified = self.turn_free.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            drop(inner);
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(format!(
                    "DevInProd: this write waited {} ms for another connection of the same session \
                     (connection {}) to end its transaction, which has uncommitted writes; commit or \
                     roll that one back first",
                    self.config.write_turn_timeout.as_millis(),
                    owner.unwrap_or_default()
                ));
            }
        }
    }

    /// Turns a failure of the upstream while serving `conn` into the session's loss and the
    /// error the app connection gets.
    async fn failed<W: AsyncWrite + Unpin>(
        &self,
        inner: &mut Inner,
        conn: &mut AppConn,
        e: ServeError,
        app: &mut PacketWriter<W>,
    ) -> Outcome {
        match e {
            ServeError::App => Outcome::AppGone,
            ServeError::Catalog(e) => reply(app, self.refusal(conn, &catalog_refusal(&e))).await,
            ServeError::Upstream(e) => {
                let protected = self.protection();
                self.lose(inner, format!("the database connection failed: {e}"));
                conn.generation = inner.generation;
                conn.tx.forget();
                let msg = match protected {
                    Some(why) => {
                        // Told now: the next session (the next `ensure_upstream` counts it) is
                        // this connection's own, not news to it.
                        conn.generation = inner.generation + 1;
                        format!(
                            "DevInProd reset this database session to protect production: {why}; \
                             everything it had written is gone, and a new session begins with the next statement"
                        )
                    }
                    None => format!(
                        "DevInProd lost the database session ({e}); everything it had written is gone"
                    ),
                };
                reply(app, wire::err(wire::ER_SESSION_RESET, b"70100", &msg)).await
            }
        }
    }

    /// COM_STMT_PREPARE: the same policy and catalog checks as a text query; the statement id
    /// the app sees is its own connection's.
    pub async fn prepare<W: AsyncWrite + Unpin>(
        &self,
        conn: &mut AppConn,
        payload: &[u8],
        app: &mut PacketWriter<W>,
    ) -> Outcome {
        let started = Instant::now();
        conn.report = StatementReport::default();
        let sql = String::from_utf8_lossy(&payload[1..]).into_owned();
        let outcome = self.prepare_checked(conn, &sql, payload, app).await;
        self.audit(conn, "prepare", &sql, started);
        outcome
    }

    async fn prepare_checked<W: AsyncWrite + Unpin>(
        &self,
        conn: &mut AppConn,
        sql: &str,
        payload: &[u8],
        app: &mut PacketWriter<W>,
    ) -> Outcome {
        self.touch();
        let classified = classify(sql);
        let reach = classified.reach.clone();
        match self.mask_check(sql, &reach, conn) {
            Ok(projection) => conn.report.projection = projection,
            Err(why) => return reply(app, self.refusal(conn, &why)).await,
        }
        let f = match classified.verdict {
            Verdict::Forward(f) => f,
            Verdict::SessionView(columns) => {
                // Answered at each execute from the connection's own state, like its text form.
                let app_id = conn.next_stmt;
                conn.next_stmt += 1;
                conn.last_prepared = Some(app_id);
                let generation = self.inner.lock().await.generation;
                let names = view_columns(&columns);
                conn.stmts.insert(
                    app_id,
                    PreparedStatement {
                        upstream_id: 0,
                        writes: false,
                        generation,
                        emulated: Some(Verdict::SessionView(columns.clone())),
                        reach: Reach::default(),
                        sql: sql.into(),
                        projection: MaskedProjection::default(),
                    },
                );
                let mut ok = vec![0x00];
                ok.extend_from_slice(&app_id.to_le_bytes());
                ok.extend_from_slice(&(names.len() as u16).to_le_bytes());
                ok.extend_from_slice(&[0, 0, 0, 0, 0]);
                let mut seq = app.queue(1, &ok);
                for c in wire::typed_columns(&names) {
                    seq = app.queue(seq, &c);
                }
                app.queue(seq, &wire::eof(conn.status(), 0));
                return match app.flush().await {
                    Ok(()) => Outcome::Done,
                    Err(_) => Outcome::AppGone,
                };
            }
            Verdict::Refuse(why) => return reply(app, self.refusal(conn, &why)).await,
            v @ (Verdict::Tx(_) | Verdict::SetAutocommit(_) | Verdict::Swallow) => {
                // Prepared transaction control (sysbench, some ORMs): answered here, no params,
                // no columns; emulated when executed.
                let app_id = conn.next_stmt;
                conn.next_stmt += 1;
                conn.last_prepared = Some(app_id);
                let generation = self.inner.lock().await.generation;
                conn.stmts.insert(
                    app_id,
                    PreparedStatement {
                        upstream_id: 0,
                        writes: false,
                        generation,
                        emulated: Some(v),
                        reach: Reach::default(),
                        sql: sql.into(),
                        projection: MaskedProjection::default(),
                    },
                );
                let mut ok = vec![0x00];
                ok.extend_from_slice(&app_id.to_le_bytes());
                ok.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
                return reply(app, ok).await;
            }
            _ => {
                let why = format!(
                    "DevInProd refused to prepare {}: only queries and data changes can be prepared; send it as a text query",
                    classified.kind
                );
                return reply(app, self.refusal(conn, &why)).await;
            }
        };
        let mut inner = self.inner.lock().await;
        let mut retried = false;
        loop {
            let before = app.packets();
            let r = self
                .prepare_in(&mut inner, conn, &f, &reach, payload, app)
                .await;
            let told_app = app.packets() != before;
            if let Some(outcome) = self
                .settle(&mut inner, conn, r, told_app, &mut retried, app)
                .await
            {
                return outcome;
            }
        }
    }

    async fn prepare_in<W: AsyncWrite + Unpin>(
        &self,
        inner: &mut Inner,
        conn: &mut AppConn,
        f: &Forward,
        reach: &Reach,
        payload: &[u8],
        app: &mut PacketWriter<W>,
    ) -> Result<Outcome, ServeError> {
        self.protect_now(inner).await;
        self.ensure_upstream(inner).await?;
        if let Some(notice) = self.reset_notice(inner, conn) {
            conn.stmts.clear();
            return Ok(reply(app, wire::err(wire::ER_SESSION_RESET, b"70100", &notice)).await);
        }
        self.switch_to(inner, conn).await?;
        if let Some(why) = self.check_catalog(inner, conn, reach).await? {
            return Ok(reply(app, self.refusal(conn, &why)).await);
        }
        // Preparing opens the tables, which takes their metadata locks.
        self.note_touched(conn, reach);
        let app_id = conn.next_stmt;
        let mut upstream_id = None;
        let (in_trans, autocommit) = (conn.tx.in_transaction(), conn.tx.autocommit());
        let up = upstream(inner)?;
        up.send(payload).await?;
        let (tracker, app_ok) = relay_response(
            up,
            ResponseTracker::prepare(),
            app,
            1,
            |position, p| match position {
                Position::PrepareOk => {
                    upstream_id = Some(u32::from_le_bytes([p[1], p[2], p[3], p[4]]));
                    p[1..5].copy_from_slice(&app_id.to_le_bytes());
                }
                Position::Status => wire::patch_status(p, in_trans, autocommit),
                _ => {}
            },
        )
        .await?;
        if let (Some(upstream_id), None) = (upstream_id, tracker.error) {
            conn.next_stmt += 1;
            conn.last_prepared = Some(app_id);
            conn.stmts.insert(
                app_id,
                PreparedStatement {
                    upstream_id,
                    writes: f.writes,
                    generation: inner.generation,
                    emulated: None,
                    reach: reach.clone(),
                    sql: String::from_utf8_lossy(&payload[1..]).into(),
                    projection: conn.report.projection.clone(),
                },
            );
        }
        if !app_ok {
            return Err(ServeError::App);
        }
        Ok(Outcome::Done)
    }

    /// COM_STMT_EXECUTE / COM_STMT_RESET: the app's statement id becomes the upstream's; an
    /// execute that writes takes the write turn and follows the savepoint rules of a text write.
    pub async fn execute<W: AsyncWrite + Unpin>(
        &self,
        conn: &mut AppConn,
        payload: &[u8],
        app: &mut PacketWriter<W>,
    ) -> Outcome {
        let started = Instant::now();
        conn.report = StatementReport::default();
        let outcome = self.execute_inner(conn, payload, app).await;
        let kind = match payload.first() {
            Some(&COM_STMT_EXECUTE) => Some("execute"),
            Some(&COM_STMT_BULK_EXECUTE) => Some("bulk execute"),
            _ => None,
        };
        if let Some(kind) = kind {
            let sql = statement_id(conn, payload)
                .and_then(|id| conn.stmts.get(&id))
                .map(|s| s.sql.clone())
                .unwrap_or_else(|| "".into());
            self.audit(conn, kind, &sql, started);
        }
        outcome
    }

    async fn execute_inner<W: AsyncWrite + Unpin>(
        &self,
        conn: &mut AppConn,
        payload: &[u8],
        app: &mut PacketWriter<W>,
    ) -> Outcome {
        self.touch();
        let id = statement_id(conn, payload);
        let Some(stmt) = id.and_then(|id| conn.stmts.get(&id)).cloned() else {
            return reply(
                app,
                wire::err(
                    1243,
                    b"HY000",
                    "Unknown prepared statement handler given to DevInProd",
                ),
            )
            .await;
        };
        let bulk = payload[0] == COM_STMT_BULK_EXECUTE;
        let is_execute = payload[0] == COM_STMT_EXECUTE || bulk;
        conn.report.projection = stmt.projection.clone();
        if bulk {
            // Flags after the id: 64 asks for a result per parameter row (a capability the
            // proxy does not offer, so its replies could not be relayed as one); a statement
            // the proxy answers itself has no upstream statement to run in bulk.
            let flags = payload
                .get(5..7)
                .map_or(0, |f| u16::from_le_bytes([f[0], f[1]]));
            let why = if flags & 64 != 0 {
                Some("DevInProd refused a bulk execution with unit results: it is not offered here")
            } else if stmt.emulated.is_some() {
                Some("DevInProd refused a bulk execution of a statement it answers itself (run it one set of parameters at a time)")
            } else {
                None
            };
            if let Some(why) = why {
                return reply(app, wire::refused(why)).await;
            }
        }
        if is_execute && stmt.emulated.is_none() {
            let verdict = Verdict::Forward(Forward {
                writes: stmt.writes,
            });
            if let Err(packet) = self.admit(conn, &verdict) {
                return reply(app, packet).await;
            }
        }
        if payload[0] == COM_STMT_EXECUTE && payload.get(5).is_some_and(|flags| flags & 0x07 != 0) {
            return reply(
                app,
                wire::refused("DevInProd refused a cursor: server-side cursors are not supported"),
            )
            .await;
        }
        if let Some(verdict) = &stmt.emulated {
            let mut inner = self.inner.lock().await;
            if !is_execute {
                return reply(app, wire::ok(0, 0, conn.status(), 0)).await;
            }
            let r = self
                .serve(&mut inner, conn, verdict, &Reach::default(), payload, app)
                .await;
            return match r {
                Ok(o) => o,
                Err(e) => self.failed(&mut inner, conn, e, app).await,
            };
        }
        let writes = is_execute && stmt.writes;
        let mut inner = match self.lock_for(conn.id, writes).await {
            Ok(inner) => inner,
            Err(msg) => {
                return reply(app, wire::err(wire::ER_LOCK_WAIT_TIMEOUT, b"HY000", &msg)).await
            }
        };
        let r = self
            .execute_in(&mut inner, conn, stmt, writes, payload, app)
            .await;
        match r {
            Ok(o) => o,
            Err(e) => self.failed(&mut inner, conn, e, app).await,
        }
    }

    async fn execute_in<W: AsyncWrite + Unpin>(
        &self,
        inner: &mut Inner,
        conn: &mut AppConn,
        stmt: PreparedStatement,
        writes: bool,
        payload: &[u8],
        app: &mut PacketWriter<W>,
    ) -> Result<Outcome, ServeError> {
        self.protect_now(inner).await;
        let _running = self.running();
        self.ensure_upstream(inner).await?;
        if let Some(notice) = self.reset_notice(inner, conn) {
            conn.stmts.clear();
            return Ok(reply(app, wire::err(wire::ER_SESSION_RESET, b"70100", &notice)).await);
        }
        if stmt.generation != inner.generation {
            let msg = "Unknown prepared statement handler: it belonged to a session that was reset";
            return Ok(reply(app, wire::err(1243, b"HY000", msg)).await);
        }
        self.switch_to(inner, conn).await?;
        if writes {
            if let Some(why) = self.check_catalog(inner, conn, &stmt.reach).await? {
                return Ok(reply(app, self.refusal(conn, &why)).await);
            }
        }
        self.note_touched(conn, &stmt.reach);
        let mut upstream_payload = payload.to_vec();
        upstream_payload[1..5].copy_from_slice(&stmt.upstream_id.to_le_bytes());
        let reads_tables = !stmt.reach.tables.is_empty();
        self.forward(inner, conn, writes, reads_tables, &upstream_payload, app)
            .await
    }

    /// Sends a statement that passed the policy (text or prepared) and relays its response.
    /// A write holds the write turn while it runs (and after, if its transaction stays open),
    /// and (re)places the connection's savepoint first when needed.
    async fn forward<W: AsyncWrite + Unpin>(
        &self,
        inner: &mut Inner,
        conn: &mut AppConn,
        writes: bool,
        reads_tables: bool,
        payload: &[u8],
        app: &mut PacketWriter<W>,
    ) -> Result<Outcome, ServeError> {
        inner.statements += 1;
        if !writes {
            // With autocommit off a server opens a transaction when a statement touches a
            // (transactional) table; `SELECT 1` opens none (connectors check IN_TRANS after it).
            if reads_tables {
                conn.tx.before_read();
            }
            self.relay(inner, conn, payload, app).await?;
            return Ok(Outcome::Done);
        }
        inner.turn = Some(conn.id);
        if let Some(sql) = conn.tx.before_write(inner.epoch) {
            if let Some(err) = self.run_internal(inner, &sql).await? {
                self.release_turn(inner, Some(conn));
                return Ok(reply(app, err).await);
            }
        }
        let result = self.relay(inner, conn, payload, app).await;
        inner.epoch += 1;
        if let Ok(true) = result {
            inner.wrote = true;
            conn.tx.after_write(inner.epoch);
        }
        self.release_turn(inner, Some(conn));
        result.map(|_| Outcome::Done)
    }

    /// COM_STMT_CLOSE and COM_STMT_SEND_LONG_DATA: forwarded with the upstream's id; no reply.
    pub async fn statement_no_reply(&self, conn: &mut AppConn, payload: &[u8]) {
        let Some(id) = statement_id(conn, payload) else {
            return;
        };
        let stmt = if payload[0] == 0x19 {
            conn.stmts.remove(&id)
        } else {
            conn.stmts.get(&id).cloned()
        };
        let Some(stmt) = stmt.filter(|s| s.emulated.is_none()) else {
            return;
        };
        let mut inner = self.inner.lock().await;
        if stmt.generation != inner.generation {
            return;
        }
        if let Some(up) = inner.upstream.as_mut() {
            let mut upstream_payload = payload.to_vec();
            upstream_payload[1..5].copy_from_slice(&stmt.upstream_id.to_le_bytes());
            if let Err(e) = up.send(&upstream_payload).await {
                self.lose(&mut inner, format!("the database connection failed: {e}"));
            }
        }
    }

    async fn serve<W: AsyncWrite + Unpin>(
        &self,
        inner: &mut Inner,
        conn: &mut AppConn,
        verdict: &Verdict,
        reach: &Reach,
        payload: &[u8],
        app: &mut PacketWriter<W>,
    ) -> Result<Outcome, ServeError> {
        self.protect_now(inner).await;
        let _running = self.running();
        self.ensure_upstream(inner).await?;
        if let Some(notice) = self.reset_notice(inner, conn) {
            return Ok(reply(app, wire::err(wire::ER_SESSION_RESET, b"70100", &notice)).await);
        }
        self.switch_to(inner, conn).await?;
        // Everything that reaches tables or functions on the server is checked against the
        // catalog first, whatever its kind (a SET can call a function; CREATE TEMPORARY TABLE
        // … AS SELECT can read a view).
        if matches!(
            verdict,
            Verdict::Forward(_) | Verdict::SessionSet { .. } | Verdict::CreateTemporary(_)
        ) {
            if let Some(why) = self.check_catalog(inner, conn, reach).await? {
                info!(key = %self.key, conn = conn.id, "refused: {}", printable(&why));
                return Ok(reply(app, self.refusal(conn, &why)).await);
            }
        }
        self.note_touched(conn, reach);
        match verdict {
            Verdict::Forward(f) => {
                let reads_tables = !reach.tables.is_empty();
                self.forward(inner, conn, f.writes, reads_tables, payload, app)
                    .await
            }
            Verdict::Tx(control) => {
                let plan = conn.tx.control(control, inner.epoch);
                self.run_plan_then_ok(inner, conn, plan, app).await
            }
            Verdict::SetAutocommit(on) => {
                let plan = conn.tx.set_autocommit(*on, inner.epoch);
                self.run_plan_then_ok(inner, conn, plan, app).await
            }
            Verdict::Swallow => Ok(reply(app, wire::ok(0, 0, conn.status(), 0)).await),
            Verdict::SessionIsolation(level) => {
                conn.isolation = Some(level.clone());
                Ok(reply(app, wire::ok(0, 0, conn.status(), 0)).await)
            }
            Verdict::SessionView(columns) => {
                let default_isolation = if self.config.consistent_snapshot {
                    "REPEATABLE-READ"
                } else {
                    "READ-COMMITTED"
                };
                let flag = |on: bool| wire::Value::Int(i64::from(on));
                let row: Vec<wire::Value> = columns
                    .iter()
                    .map(|(_, v)| match v {
                        SessionVariable::Autocommit => flag(conn.tx.autocommit()),
                        SessionVariable::InTransaction => flag(conn.tx.in_transaction()),
                        SessionVariable::ReadOnly => flag(false),
                        SessionVariable::Isolation => wire::Value::Text(
                            conn.isolation
                                .clone()
                                .unwrap_or_else(|| default_isolation.into()),
                        ),
                    })
                    .collect();
                let names = view_columns(columns);
                let binary = payload.first() == Some(&COM_STMT_EXECUTE);
                let mut seq = 1;
                for p in wire::typed_result(&names, &[row], conn.status(), binary) {
                    seq = app.queue(seq, &p);
                }
                Ok(match app.flush().await {
                    Ok(()) => Outcome::Done,
                    Err(_) => Outcome::AppGone,
                })
            }
            Verdict::Use(db) => {
                if self.relay(inner, conn, payload, app).await? {
                    conn.db = Some(db.clone());
                    inner.applied_db = Some(db.clone());
                }
                Ok(Outcome::Done)
            }
            Verdict::SessionSet {
                vars,
                autocommit,
                upstream_sql,
                read_back_sql_mode,
            } => {
                // autocommit is emulated first (turning it on commits the app's transaction),
                // so that the OK of the rest shows the connection's new state.
                if let Some(on) = autocommit {
                    let plan = conn.tx.set_autocommit(*on, inner.epoch);
                    if let Some(err) = self.run_plan(inner, conn, plan).await? {
                        return Ok(reply(app, err).await);
                    }
                }
                let (sql, upstream_payload) = match upstream_sql {
                    Some(sql) => {
                        conn.report.upstream_sql = Some(sql.clone());
                        let mut p = vec![0x03];
                        p.extend_from_slice(sql.as_bytes());
                        (sql.clone(), p)
                    }
                    None => (
                        String::from_utf8_lossy(&payload[1..]).into_owned(),
                        payload.to_vec(),
                    ),
                };
                if self.relay(inner, conn, &upstream_payload, app).await? {
                    for v in vars {
                        conn.set_var(v, &sql);
                    }
                    if *read_back_sql_mode {
                        self.read_back_sql_mode(inner, conn).await?;
                    }
                    inner.applied_vars = conn.vars.clone();
                }
                Ok(Outcome::Done)
            }
            Verdict::CreateTemporary(t) => {
                if self.relay(inner, conn, payload, app).await? {
                    if let Some(schema) = t.schema.clone().or_else(|| conn.db.clone()) {
                        inner.temp_tables.insert((schema, t.name.clone()));
                    }
                }
                Ok(Outcome::Done)
            }
            Verdict::DropTemporary(ts) => {
                // Forgotten even when the statement fails: MariaDB drops the tables it found
                // before reporting one it did not, and a name still taken for a temporary
                // table would let writes reach the base table of that name unchecked.
                let result = self.relay(inner, conn, payload, app).await;
                for t in ts {
                    if let Some(schema) = t.schema.clone().or_else(|| conn.db.clone()) {
                        inner.temp_tables.remove(&(schema, t.name.clone()));
                    }
                }
                result?;
                Ok(Outcome::Done)
            }
            Verdict::Admin(AdminCommand::Status) => {
                let columns = [
                    "routing_key",
                    "age_secs",
                    "statements",
                    "holds_writes",
                    "app_connections",
                ];
                let row = vec![
                    self.key.to_string(),
                    self.created.elapsed().as_secs().to_string(),
                    inner.statements.to_string(),
                    if inner.wrote { "yes" } else { "no" }.to_owned(),
                    self.app_conns.load(Ordering::Relaxed).to_string(),
                ];
                let mut seq = 1;
                for p in wire::text_result(&columns, &[row], conn.status()) {
                    seq = app.queue(seq, &p);
                }
                Ok(match app.flush().await {
                    Ok(()) => Outcome::Done,
                    Err(_) => Outcome::AppGone,
                })
            }
            Verdict::Admin(AdminCommand::Reset) => {
                if let Some(up) = inner.upstream.take() {
                    up.close().await;
                }
                self.lose(inner, "reset by the developer (devinprod db reset)".into());
                inner.statements = 0;
                inner.wrote = false;
                Ok(reply(app, wire::ok(0, 0, wire::STATUS_AUTOCOMMIT, 0)).await)
            }
            Verdict::Refuse(why) => Ok(reply(app, self.refusal(conn, why)).await),
        }
    }

    /// Sends the app's command and relays the response with this connection's status flags;
    /// then makes sure the upstream is still inside its transaction. `Ok(true)` if it succeeded.
    async fn relay<W: AsyncWrite + Unpin>(
        &self,
        inner: &mut Inner,
        conn: &mut AppConn,
        payload: &[u8],
        app: &mut PacketWriter<W>,
    ) -> Result<bool, ServeError> {
        let tracker = if payload.first() == Some(&0x04) {
            ResponseTracker::field_list()
        } else {
            ResponseTracker::new()
        };
        let (in_trans, autocommit) = (conn.tx.in_transaction(), conn.tx.autocommit());
        let up = upstream(inner)?;
        up.send(payload).await?;
        let mut inserted = None;
        let mut affected = None;
        // Every result is looked at, masking configured: a column the analysis did not expect
        // to be masked is still masked if its definition names a masked column.
        // A prepared statement's rows are binary, in bulk too (INSERT … RETURNING).
        let binary = matches!(
            payload.first(),
            Some(&COM_STMT_EXECUTE | &COM_STMT_BULK_EXECUTE)
        );
        let masking_on = self.config.masking.is_some();
        let mut masker = self
            .config
            .masking
            .as_ref()
            .map(|m| ResultMasker::new(&m.rules, &m.masker, &conn.report.projection, binary));
        let mut rows = 0u64;
        let (tracker, app_ok) = relay_response(up, tracker, app, 1, |position, p| {
            match position {
                Position::Status => {
                    if let Some(id) = wire::ok_last_insert_id(p).filter(|id| *id != 0) {
                        inserted = Some(id);
                    }
                    if let Some(n) = wire::ok_affected_rows(p) {
                        affected = Some(n);
                    }
                    wire::patch_status(p, in_trans, autocommit);
                }
                Position::Row => rows += 1,
                Position::Other if masking_on && p.first() == Some(&0xFF) => {
                    if let Some((code, msg)) = wire::err_info(p) {
                        if let Some(withheld) = crate::mask::withhold_values(code, &msg) {
                            let state: [u8; 5] = p
                                .get(4..9)
                                .and_then(|s| s.try_into().ok())
                                .unwrap_or(*b"HY000");
                            *p = wire::err(code, &state, &withheld);
                        }
                    }
                }
                _ => {}
            }
            if let Some(m) = masker.as_mut() {
                m.on_packet(position, p);
            }
        })
        .await?;
        let masked = masker.map(|m| m.masked).unwrap_or_default();
        if rows > 0 || affected.is_none() {
            conn.report.rows = Some(rows);
        }
        conn.report.affected = affected;
        conn.report.masked = masked;
        conn.report.error = tracker.error.as_ref().map(|(code, msg)| {
            let msg = masking_on
                .then(|| crate::mask::withhold_values(*code, msg))
                .flatten()
                .unwrap_or_else(|| msg.clone());
            format!("{code}: {msg}")
        });
        if let Some(id) = inserted {
            conn.last_insert_id = id;
            inner.applied_last_insert_id = id;
        }
        self.check_still_in_transaction(inner, tracker.status, tracker.error.is_some())
            .await?;
        if !app_ok {
            return Err(ServeError::App);
        }
        Ok(tracker.error.is_none())
    }

    /// After every reply: the server's own IN_TRANS flag must still be set. After an error (a
    /// deadlock rolls back everything) it is asked for explicitly.
    async fn check_still_in_transaction(
        &self,
        inner: &mut Inner,
        status: Option<u16>,
        failed: bool,
    ) -> Result<(), ServeError> {
        let status = match (status, failed) {
            (Some(s), false) => Some(s),
            _ => {
                let up = inner.upstream.as_mut().ok_or_else(|| {
                    ServeError::Upstream(UpstreamError::Protocol("no upstream".into()))
                })?;
                up.run("DO 0").await?.ok().and_then(|c| c.status)
            }
        };
        if status.is_some_and(|s| s & wire::STATUS_IN_TRANS == 0) {
            if let Some(up) = inner.upstream.take() {
                up.close().await;
            }
            self.lose(inner, "the database ended the session's transaction (a deadlock or a server-side rollback)".into());
        }
        Ok(())
    }

    /// Runs a statement of the proxy's own; an ERR becomes the packet to give the app.
    async fn run_internal(
        &self,
        inner: &mut Inner,
        sql: &str,
    ) -> Result<Option<Vec<u8>>, ServeError> {
        let up = upstream(inner)?;
        let c = up.query(sql).await?;
        match c.error {
            Some((code, msg)) => {
                // Hide the proxy's savepoint prefix from the message where it shows.
                let p = c
                    .packets
                    .last()
                    .cloned()
                    .unwrap_or_else(|| wire::err(code, b"HY000", &msg));
                self.check_still_in_transaction(inner, None, true).await?;
                Ok(Some(p))
            }
            None => {
                self.check_still_in_transaction(inner, c.status, false)
                    .await?;
                Ok(None)
            }
        }
    }

    async fn run_plan_then_ok<W: AsyncWrite + Unpin>(
        &self,
        inner: &mut Inner,
        conn: &mut AppConn,
        plan: Plan,
        app: &mut PacketWriter<W>,
    ) -> Result<Outcome, ServeError> {
        Ok(match self.run_plan(inner, conn, plan).await? {
            Some(err) => reply(app, err).await,
            None => reply(app, wire::ok(0, 0, conn.status(), 0)).await,
        })
    }

    /// Runs the statements of an emulated transaction control; `Some`: the error to send.
    async fn run_plan(
        &self,
        inner: &mut Inner,
        conn: &mut AppConn,
        plan: Plan,
    ) -> Result<Option<Vec<u8>>, ServeError> {
        conn.report.upstream_sql = Some(plan.statements.join("; "));
        if let Some((code, message)) = plan.error {
            return Ok(Some(wire::err(code, b"42000", &message)));
        }
        if plan.takes_turn {
            inner.turn = Some(conn.id);
        }
        if plan.advances_epoch {
            inner.epoch += 1;
        }
        let mut failed = None;
        for sql in &plan.statements {
            if let Some(err) = self.run_internal(inner, sql).await? {
                failed = Some(err);
                break;
            }
        }
        self.release_turn(inner, Some(conn));
        Ok(failed)
    }

    /// After a SET of sql_mode: what this connection replays is the resulting value, not an
    /// expression (`CONCAT(@@sql_mode, …)` replayed would build on another connection's modes).
    async fn read_back_sql_mode(
        &self,
        inner: &mut Inner,
        conn: &mut AppConn,
    ) -> Result<(), ServeError> {
        let up = upstream(inner)?;
        if let Ok(c) = up.run("SELECT @@session.sql_mode").await? {
            if let Some(Some(mode)) = c
                .rows()
                .into_iter()
                .next()
                .and_then(|r| r.into_iter().next())
            {
                // Mode names are letters, digits, '_' and ','; anything else is not replayed.
                if mode
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ',')
                {
                    conn.set_var("sql_mode", &format!("SET SESSION sql_mode = '{mode}'"));
                }
            }
        }
        Ok(())
    }

    /// Catalog checks on what a statement can reach. Fail closed: a write must name base
    /// tables that exist (exact name), are InnoDB and have no triggers — or the session's own
    /// temporary tables; no stored function or UDF may be called, directly or through a view.
    async fn check_catalog(
        &self,
        inner: &mut Inner,
        conn: &AppConn,
        reach: &Reach,
    ) -> Result<Option<String>, ServeError> {
        let stored = if reach.functions.is_empty() && reach.tables.is_empty() {
            HashSet::new()
        } else {
            self.stored_functions(inner).await?
        };
        if let Some(name) = reach.functions.iter().find(|n| stored.contains(*n)) {
            return Ok(Some(format!(
                "DevInProd refused a call to stored function {name}(): stored functions may write to \
                 non-transactional tables or commit, which a rollback would not undo"
            )));
        }
        for t in &reach.tables {
            let writes = reach.write_tables.contains(t);
            let Some(schema) = t.schema.clone().or_else(|| conn.db.clone()) else {
                if writes {
                    return Ok(Some(format!(
                        "DevInProd refused a write to {}: no database is selected on this connection; \
                         USE one or qualify the table",
                        t.name
                    )));
                }
                continue;
            };
            let name = display(t, &schema);
            // A temporary table of the session shadows any other table of that name.
            if inner
                .temp_tables
                .contains(&(schema.clone(), t.name.clone()))
            {
                continue;
            }
            let rows = self.table_facts(inner, &schema, &t.name).await?.rows;
            for r in &rows {
                if r.table_type == "VIEW" {
                    if writes {
                        return Ok(Some(format!(
                            "DevInProd refused a write through view {name}: writes through views cannot be \
                             proven to stay inside the transaction"
                        )));
                    }
                    let definition = r.view_definition.to_ascii_uppercase();
                    if definition.trim().is_empty() {
                        return Ok(Some(format!(
                            "DevInProd refused a read of view {name}: its definition is not visible to the \
                             dbproxy (grant it SHOW VIEW), so its functions cannot be checked"
                        )));
                    }
                    if let Some(masked) = self.masked_behind_view(inner, &r.view_definition).await?
                    {
                        return Ok(Some(format!(
                            "DevInProd refused a read of view {name}: it reads {masked}, which has masked \
                             columns, and a view can compute with them before they could be masked; \
                             query the table itself"
                        )));
                    }
                    if let Some(f) = stored.iter().find(|f| calls(&definition, f)) {
                        return Ok(Some(format!(
                            "DevInProd refused a read of view {name}: it calls stored function {f}(), which may \
                             write outside the transaction"
                        )));
                    }
                }
            }
            if !writes {
                continue;
            }
            let [r] = rows.as_slice() else {
                return Ok(Some(if rows.is_empty() {
                    format!("DevInProd refused a write to {name}: no such table (names are matched exactly)")
                } else {
                    format!(
                        "DevInProd refused a write to {name}: the name is ambiguous in the catalog"
                    )
                }));
            };
            if r.table_type != "BASE TABLE" {
                return Ok(Some(format!(
                    "DevInProd refused a write involving {name}: it is a {}, and writes to it cannot be \
                     proven to stay inside the transaction",
                    r.table_type.to_ascii_lowercase()
                )));
            }
            if !r.engine.eq_ignore_ascii_case("InnoDB") {
                return Ok(Some(format!(
                    "DevInProd refused a write involving {name}: its engine {} is not transactional, \
                     so the write would survive the session's rollback",
                    r.engine
                )));
            }
            if r.triggers > 0 {
                return Ok(Some(format!(
                    "DevInProd refused a write to {name}: it has triggers, which may write outside the transaction"
                )));
            }
        }
        Ok(None)
    }

    /// With masking on: the masked table a view's definition reads, directly or through other
    /// views (MariaDB stores definitions with every name in backquotes, fully qualified).
    async fn masked_behind_view(
        &self,
        inner: &mut Inner,
        definition: &str,
    ) -> Result<Option<String>, ServeError> {
        let Some(masking) = self.config.masking.clone() else {
            return Ok(None);
        };
        let masked_names: HashSet<&str> = masking.rules.tables().map(|(_, t)| t.as_str()).collect();
        let mut pending = vec![definition.to_owned()];
        let mut seen = HashSet::new();
        while let Some(def) = pending.pop() {
            let names = backquoted_names(&def);
            // Any name that is a masked table's, in any position (conservative).
            if let Some(n) = names
                .iter()
                .map(|n| crate::mask::fold(n))
                .find(|n| masked_names.contains(n.as_str()))
            {
                return Ok(Some(n));
            }
            for pair in names.windows(2) {
                let key = (pair[0].clone(), pair[1].clone());
                if !def.contains(&format!("{}`.`{}", pair[0], pair[1])) || !seen.insert(key) {
                    continue;
                }
                if seen.len() > 64 {
                    return Ok(Some(
                        "more nested views than the dbproxy follows (64)".into(),
                    ));
                }
                let facts = self.table_facts(inner, &pair[0], &pair[1]).await?;
                pending.extend(
                    facts
                        .rows
                        .into_iter()
                        .filter(|r| r.table_type == "VIEW")
                        .map(|r| r.view_definition),
                );
            }
        }
        Ok(None)
    }

    /// Runs a catalog query on the session's catalog connection, opened on first use. A
    /// connection that failed (the server restarted, or its `wait_timeout` closed it while
    /// idle) is dropped and the query retried once on a new one; if that fails too, the
    /// statement being checked is refused ([`ServeError::Catalog`]) — the session's own
    /// transaction is untouched either way, and the next statement tries again.
    async fn catalog_query(
        &self,
        inner: &mut Inner,
        sql: &str,
    ) -> Result<Result<Collected, (u16, String)>, ServeError> {
        let mut last = String::new();
        for _attempt in 0..2 {
            if inner.catalog.is_none() {
                match self.open_catalog().await {
                    Ok(up) => {
                        self.watch
                            .catalog_id
                            .store(up.connection_id, Ordering::Relaxed);
                        inner.catalog = Some(up);
                    }
                    Err(e) => {
                        last = e;
                        continue;
                    }
                }
            }
            let Some(up) = inner.catalog.as_mut() else {
                continue;
            };
            match up.run(sql).await {
                Ok(result) => return Ok(result),
                Err(e) => {
                    warn!(key = %self.key, "catalog connection failed: {e}; opening a new one");
                    last = e.to_string();
                    self.watch.catalog_id.store(0, Ordering::Relaxed);
                    inner.catalog = None;
                }
            }
        }
        Err(ServeError::Catalog(last))
    }

    async fn open_catalog(&self) -> Result<Upstream, String> {
        let mut up = Upstream::connect(&self.config.upstream, self.config.max_packet_bytes)
            .await
            .map_err(|e| e.to_string())?;
        match up.run("SET NAMES utf8mb4").await {
            Ok(Ok(_)) => Ok(up),
            Ok(Err((code, msg))) => Err(format!("catalog connection setup failed: {code} {msg}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Stored functions (information_schema.ROUTINES) and UDFs (mysql.func, when readable).
    async fn stored_functions(&self, inner: &mut Inner) -> Result<HashSet<String>, ServeError> {
        if let Some((at, set)) = &inner.stored_functions {
            if at.elapsed() < CATALOG_TTL {
                return Ok(set.clone());
            }
        }
        let rows = match self
            .catalog_query(
                inner,
                "SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_TYPE = 'FUNCTION'",
            )
            .await?
        {
            Ok(c) => c.rows(),
            Err((code, msg)) => {
                return Err(ServeError::Catalog(format!(
                    "catalog query failed: {code} {msg}"
                )))
            }
        };
        let mut set: HashSet<String> = rows
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .map(|s| s.to_ascii_uppercase())
            .collect();
        // UDFs live in mysql.func; a dbproxy user without SELECT on it cannot see them (the
        // README asks for that grant).
        if let Ok(c) = self
            .catalog_query(inner, "SELECT name FROM mysql.func")
            .await?
        {
            set.extend(
                c.rows()
                    .into_iter()
                    .filter_map(|r| r.into_iter().next().flatten())
                    .map(|s| s.to_ascii_uppercase()),
            );
        }
        inner.stored_functions = Some((Instant::now(), set.clone()));
        Ok(set)
    }

    async fn table_facts(
        &self,
        inner: &mut Inner,
        schema: &str,
        name: &str,
    ) -> Result<TableFacts, ServeError> {
        let key = (schema.to_owned(), name.to_owned());
        if let Some(f) = inner
            .tables
            .get(&key)
            .filter(|f| f.at.elapsed() < CATALOG_TTL)
        {
            return Ok(f.clone());
        }
        // Hex literals compared as bytes: no quoting rule can change their meaning, and the
        // match is exact (a case-insensitive match could pick `Audit` for `audit`).
        let sql = format!(
            "SELECT t.TABLE_TYPE, COALESCE(t.ENGINE, ''), \
             (SELECT COUNT(*) FROM information_schema.TRIGGERS g \
              WHERE g.EVENT_OBJECT_SCHEMA = t.TABLE_SCHEMA AND g.EVENT_OBJECT_TABLE = t.TABLE_NAME), \
             COALESCE((SELECT v.VIEW_DEFINITION FROM information_schema.VIEWS v \
              WHERE v.TABLE_SCHEMA = t.TABLE_SCHEMA AND v.TABLE_NAME = t.TABLE_NAME), '') \
             FROM information_schema.TABLES t \
             WHERE BINARY t.TABLE_SCHEMA = X'{}' AND BINARY t.TABLE_NAME = X'{}'",
            hex(schema),
            hex(name)
        );
        let rows = match self.catalog_query(inner, &sql).await? {
            Ok(c) => c.rows(),
            Err((code, msg)) => {
                return Err(ServeError::Catalog(format!(
                    "catalog query failed: {code} {msg}"
                )))
            }
        };
        let rows = rows
            .into_iter()
            .map(|r| {
                let get = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
                TableRow {
                    table_type: get(0),
                    engine: get(1),
                    // Unreadable counts are treated as "has triggers": fail closed.
                    triggers: get(2).parse().unwrap_or(1),
                    view_definition: get(3),
                }
            })
            .collect();
        let facts = TableFacts {
            at: Instant::now(),
            rows,
        };
        inner.tables.insert(key, facts.clone());
        Ok(facts)
    }

    /// COM_INIT_DB, and the database named at login.
    pub async fn use_db<W: AsyncWrite + Unpin>(
        &self,
        conn: &mut AppConn,
        db: &str,
        app: &mut PacketWriter<W>,
        seq: u8,
    ) -> Outcome {
        let mut inner = self.inner.lock().await;
        let mut result = self.use_db_upstream(&mut inner, db).await;
        if let Err(e) = &result {
            // A dead upstream ends the session (told to the connections that used it); this
            // one tries again on a new session if it has lost nothing.
            self.lose(&mut inner, format!("the database connection failed: {e}"));
            if !conn.used {
                result = self.use_db_upstream(&mut inner, db).await;
            }
        }
        let packet = match result {
            Ok(c) => match c.error {
                None => {
                    conn.db = Some(db.to_owned());
                    inner.applied_db = Some(db.to_owned());
                    // The upstream now has this connection's database but maybe another's
                    // settings: the next statement of any connection re-applies its own.
                    inner.on = None;
                    wire::ok(0, 0, conn.status(), 0)
                }
                Some(_) => c
                    .packets
                    .last()
                    .cloned()
                    .unwrap_or_else(|| wire::refused("USE failed")),
            },
            Err(e) => wire::err(
                wire::ER_SESSION_RESET,
                b"70100",
                &format!("DevInProd cannot reach the database: {e}"),
            ),
        };
        match app.send(seq, &packet).await {
            Ok(_) => Outcome::Done,
            Err(_) => Outcome::AppGone,
        }
    }

    async fn use_db_upstream(
        &self,
        inner: &mut Inner,
        db: &str,
    ) -> Result<Collected, UpstreamError> {
        self.protect_now(inner).await;
        self.ensure_upstream(inner).await?;
        let up = inner
            .upstream
            .as_mut()
            .ok_or_else(|| UpstreamError::Protocol("no upstream".into()))?;
        up.query(&format!("USE `{}`", db.replace('`', "``"))).await
    }

    /// COM_FIELD_LIST: read-only, forwarded.
    pub async fn field_list<W: AsyncWrite + Unpin>(
        &self,
        conn: &mut AppConn,
        payload: &[u8],
        app: &mut PacketWriter<W>,
    ) -> Outcome {
        let mut inner = self.inner.lock().await;
        let r = async {
            self.protect_now(&mut inner).await;
            self.ensure_upstream(&mut inner).await?;
            self.switch_to(&mut inner, conn).await?;
            self.relay(&mut inner, conn, payload, app)
                .await
                .map(|_| Outcome::Done)
        }
        .await;
        match r {
            Ok(o) => o,
            Err(ServeError::App) => Outcome::AppGone,
            Err(ServeError::Catalog(e)) => {
                reply(app, self.refusal(conn, &catalog_refusal(&e))).await
            }
            Err(ServeError::Upstream(e)) => {
                self.lose(&mut inner, format!("the database connection failed: {e}"));
                reply(
                    app,
                    wire::err(
                        wire::ER_SESSION_RESET,
                        b"70100",
                        &format!("DevInProd lost the database session ({e})"),
                    ),
                )
                .await
            }
        }
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

/// The upstream connection, which the caller has made sure exists.
/// The columns of a [`Verdict::SessionView`]: name, and whether the value is an integer.
fn view_columns(columns: &[(String, SessionVariable)]) -> Vec<(&str, bool)> {
    columns
        .iter()
        .map(|(name, v)| (name.as_str(), !matches!(v, SessionVariable::Isolation)))
        .collect()
}

/// The app's statement id a COM_STMT_* payload names (0xFFFFFFFF: the one prepared last).
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_BULK_EXECUTE: u8 = 0xFA;

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
