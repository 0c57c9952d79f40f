//! # dbproxy — every developer session in one never-committed transaction
//!
//! Where an app's query goes:
//! 1. The developer's app connects to `devinprod connect --mysql-listen`; each connection is a
//!    QUIC stream to the relay, which stamps it with the developer's routing key and hands it
//!    to a dbproxy ([`DbProxy::handle`], in process for `devinprod up --mysql`, or over QUIC
//!    for a separate `devinprod dbproxy` — [`peer`]).
//! 2. [`conn::serve_app`] speaks MySQL to the app (handshake, commands).
//! 3. Each COM_QUERY is classified by the [`policy`] (fail closed), then served by the
//!    developer's [`session::Session`]: ONE upstream connection with ONE transaction, shared by
//!    all the app's connections, serialised. Transaction control is emulated per app
//!    connection with savepoints ([`txn`]); status flags are rewritten to what that app
//!    connection would see on a real server; writes are checked against the catalog
//!    (transactional engines, no triggers, no stored functions). Before that, the session's
//!    rate limits ([`limits`]) and, when columns are masked, the masking analysis
//!    ([`mask::analysis`]: a masked column may only be selected plainly) run; on the way back,
//!    result rows are masked ([`mask::rows`], keyed permutations from [`mask::strategy`]).
//!    Every statement leaves one line in the audit log ([`audit`]).
//! 4. The session ends — closing the upstream, so the server rolls everything back — when its
//!    app connections have been gone for the grace period, or at its maximum age — or when
//!    the [`watchdog`] kills it because another connection has waited too long on its locks.
//!
//! PostgreSQL (issue 16) is not served yet: [`postgres`] is its wire codec so far.

#![forbid(unsafe_code)]

pub mod audit;
mod config;
pub mod conn;
pub mod limits;
pub mod mask;
pub mod packet;
pub mod peer;
pub mod policy;
pub mod postgres;
pub mod privileges;
pub mod session;
pub mod sql;
pub mod txn;
pub mod upstream;
pub mod watchdog;
pub mod wire;

pub use config::{DbProxyConfig, DbProxyFileConfig};

use proto::{DbStreamHandler, RoutingKey, TunnelStream};
use session::Session;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::info;

/// How often sessions are checked for idleness and age.
const REAPER_INTERVAL: Duration = Duration::from_secs(5);

/// The dbproxy: its configuration and the live sessions by routing key.
pub struct DbProxy {
    config: Arc<DbProxyConfig>,
    sessions: Mutex<HashMap<RoutingKey, Arc<Session>>>,
}

impl DbProxy {
    pub fn new(config: DbProxyConfig) -> Arc<Self> {
        let proxy = Arc::new(Self {
            config: Arc::new(config),
            sessions: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&proxy);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REAPER_INTERVAL).await;
                let Some(proxy) = weak.upgrade() else { return };
                proxy.reap().await;
            }
        });
        watchdog::spawn(&proxy);
        proxy
    }

    pub fn config(&self) -> &DbProxyConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoutingKey, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every live session (for the watchdog).
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.lock().values().cloned().collect()
    }

    /// The session for `key`, created on first use.
    pub fn session(&self, key: &RoutingKey) -> Arc<Session> {
        self.lock()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Session::new(key.clone(), self.config.clone())))
            .clone()
    }

    /// Ends the session of `key` now (its writes are rolled back; its app connections are told
    /// on their next statement, then a new transaction begins). `false` if there was none.
    pub async fn reset(&self, key: &RoutingKey, reason: &str) -> bool {
        // Ended in place: app connections hold this session, and must not end up beside a
        // second one for the same key.
        let session = self.lock().get(key).cloned();
        match session {
            Some(s) => {
                s.end(reason).await;
                true
            }
            None => false,
        }
    }

    async fn reap(&self) {
        let sessions: Vec<Arc<Session>> = self.lock().values().cloned().collect();
        for s in sessions {
            let why = if s.created.elapsed() > self.config.max_session_age {
                Some("it reached its maximum age")
            } else if s
                .idle_for()
                .is_some_and(|idle| idle > self.config.grace_period)
            {
                Some("its developer has been gone longer than the grace period")
            } else {
                None
            };
            if let Some(why) = why {
                info!(key = %s.key, "ending database session: {why}");
                self.lock().remove(&s.key);
                s.end(why).await;
            }
        }
    }

    /// Serves one app connection of the developer `key`.
    pub async fn serve(self: Arc<Self>, key: RoutingKey, stream: TunnelStream) {
        let session = self.session(&key);
        let credentials = self.config.app_credentials.as_ref();
        conn::serve_app(
            session,
            stream.recv,
            stream.send,
            self.config.max_packet_bytes,
            self.config.packet_budget.clone(),
            credentials,
        )
        .await;
    }
}

impl DbStreamHandler for DbProxy {
    fn handle(self: Arc<Self>, key: RoutingKey, stream: TunnelStream) {
        tokio::spawn(self.serve(key, stream));
    }
}
