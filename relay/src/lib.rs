//! # relay — where developers, edges and dbproxies meet
//!
//! A request's path through this crate:
//! 1. [`Relay::run`] accepts QUIC connections ([`server`]); each opens a control stream and
//!    sends `Hello`. Developers are checked against the [`TokenStore`] (constant time, hashes
//!    only), edges and dbproxies by the role in their client certificate. Answer: `Welcome` or
//!    a `Refusal` with a reason. An address that failed too many token checks is refused
//!    without its token being checked until it has waited ([`throttle`]).
//! 2. A developer is put in the [`SessionRegistry`] under its routing key; a newer connection
//!    with the same token replaces it, and the old one is closed with `CLOSE_REPLACED`.
//! 3. An edge opens one stream per HTTP request, starting with a `Route` frame. The relay looks
//!    the key up, opens a stream on the developer's connection, answers `RouteReply` and
//!    splices the two streams ([`splice`]) without parsing what they carry.
//!    In `devinprod up` the edge skips this hop: the registry itself is its [`proto::StreamOpener`].
//! 4. A developer opens one stream per app database connection (`StreamHeader::Db`); the
//!    relay stamps it with the developer's routing key and hands it to the dbproxy (in process,
//!    or the dbproxy peer chosen by key, so a session always lands on the same one).
//! 5. The admin API ([`admin`]) issues, lists and revokes tokens, for loopback peers only.

#![forbid(unsafe_code)]

pub mod admin;
mod config;
pub mod handshakes;
mod registry;
mod server;
mod splice;
mod throttle;
mod tokens;

pub use admin::serve_admin;
pub use config::{developer_stream_allowance, RelayConfig};
pub use registry::{DeveloperSession, SessionInfo, SessionRegistry};
pub use tokens::{TokenRecord, TokenStore, TokenStoreError, Verdict};

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tracing::info;

/// Length of the stateless-reset secret kept in the state directory.
const RESET_SECRET_LEN: usize = 64;

/// How long a shutting-down relay waits for its peers to acknowledge the close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Certs(#[from] certs::CertsError),
    #[error(transparent)]
    Tokens(#[from] TokenStoreError),
}

/// The relay: configuration, token store and session registry. Create it with [`Relay::new`],
/// bind with [`Relay::bind`], then drive [`Relay::run`] (and [`serve_admin`]) with a shutdown
/// future.
pub struct Relay {
    pub(crate) config: RelayConfig,
    pub(crate) tokens: Arc<TokenStore>,
    pub(crate) registry: Arc<SessionRegistry>,
    pub(crate) next_session_id: AtomicU64,
    /// Where developers' database streams go: an in-process dbproxy, if set…
    pub(crate) db_handler: std::sync::Mutex<Option<Arc<dyn proto::DbStreamHandler>>>,
    /// …otherwise the connected dbproxy peers: id, connection, and when each was last heard
    /// from.
    pub(crate) dbproxies:
        std::sync::Mutex<Vec<(u64, quinn::Connection, Arc<certs::liveness::Liveness>)>>,
    /// Told when a dbproxy connects (database streams may be waiting for one).
    pub(crate) dbproxy_joined: tokio::sync::Notify,
    /// Connection attempts still in their handshake (bounded: see `handshakes`).
    pub(crate) handshakes: Arc<handshakes::HandshakeGate>,
    /// Failed developer Hellos per source address (token guessing).
    pub(crate) throttle: throttle::HelloThrottle,
}

impl Relay {
    pub fn new(config: RelayConfig, tokens: TokenStore) -> Arc<Self> {
        Arc::new(Self {
            throttle: throttle::HelloThrottle::new(config.throttle_limits()),
            config,
            tokens: Arc::new(tokens),
            registry: Arc::new(SessionRegistry::default()),
            next_session_id: AtomicU64::new(1),
            db_handler: std::sync::Mutex::new(None),
            dbproxies: std::sync::Mutex::new(Vec::new()),
            dbproxy_joined: tokio::sync::Notify::new(),
            handshakes: Arc::default(),
        })
    }

    /// Opens the token store named by the config and creates the relay.
    pub fn from_config(config: RelayConfig) -> Result<Arc<Self>, RelayError> {
        let tokens = TokenStore::open(&config.tokens_path())?;
        Ok(Self::new(config, tokens))
    }

    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// QUIC handshakes in progress now (at most `max_pending_handshakes`).
    pub fn pending_handshakes(&self) -> usize {
        self.handshakes.pending()
    }

    pub fn tokens(&self) -> &Arc<TokenStore> {
        &self.tokens
    }

    /// The registry, which is also the in-process [`proto::StreamOpener`] for an edge.
    pub fn registry(&self) -> Arc<SessionRegistry> {
        self.registry.clone()
    }

    /// Hands developers' database streams to `handler` in this process (`devinprod up --mysql`)
    /// instead of to dbproxy peers.
    pub fn set_db_handler(&self, handler: Arc<dyn proto::DbStreamHandler>) {
        *self.db_handler.lock().unwrap_or_else(|p| p.into_inner()) = Some(handler);
    }

    /// Binds the QUIC endpoint on `config.listen` with the relay's certificate, and the CA
    /// that client certificates must chain to.
    pub fn bind(&self) -> Result<quinn::Endpoint, RelayError> {
        let identity = certs::Identity::load(&self.config.cert_path(), &self.config.key_path())?;
        let roots = certs::load_roots(&self.config.ca_path())?;
        let tls = certs::relay_server_config(identity, roots, proto::ALPN)?;
        let reset_secret =
            certs::load_or_create_secret(&self.config.reset_key_path(), RESET_SECRET_LEN)?;
        Ok(certs::server_endpoint(
            self.config.listen,
            tls,
            self.config.transport(),
            Some(&reset_secret),
        )?)
    }

    /// Accepts connections on `endpoint` until `shutdown` completes, then closes every
    /// connection with `CLOSE_SHUTTING_DOWN` (clients reconnect) and waits briefly for peers
    /// to acknowledge.
    pub async fn run(
        self: Arc<Self>,
        endpoint: quinn::Endpoint,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        info!(addr = ?endpoint.local_addr().ok(), "relay listening");
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                incoming = endpoint.accept() => match incoming {
                    Some(incoming) => {
                        let (admission, slot) = self.handshakes.admit(
                            incoming.remote_address().ip(),
                            incoming.remote_address_validated(),
                            self.config.handshake_limits(),
                        );
                        match (admission, slot) {
                            (handshakes::Admission::Accept, Some(slot)) => {
                                tokio::spawn(self.clone().handle_incoming(incoming, slot));
                            }
                            (handshakes::Admission::Retry, _) if incoming.may_retry() => {
                                let _ = incoming.retry();
                            }
                            _ => incoming.refuse(),
                        }
                    }
                    None => break,
                },
            }
        }
        info!("relay shutting down");
        endpoint.close(
            quinn::VarInt::from_u32(proto::codes::CLOSE_SHUTTING_DOWN),
            b"relay shutting down",
        );
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, endpoint.wait_idle()).await;
    }

    /// Revokes the token for `key` and closes its live connection. `Ok(None)`: no such token;
    /// `Ok(Some(true))`: a connection was closed.
    pub fn revoke(&self, key: &proto::RoutingKey) -> Result<Option<bool>, TokenStoreError> {
        if !self.tokens.revoke(key)? {
            return Ok(None);
        }
        let live = self.registry.take(key);
        if let Some(session) = &live {
            server::close(
                &session.conn,
                proto::codes::CLOSE_REVOKED,
                "the token of this session was revoked by the operator",
            );
        }
        info!(%key, disconnected = live.is_some(), "token revoked");
        Ok(Some(live.is_some()))
    }
}
