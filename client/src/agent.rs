//! The developer's agent: holds one QUIC connection to the relay, serves the streams the relay
//! opens on it, and comes back by itself when the relay restarts or the network drops.
//!
//! [`Agent::run`] loops: connect → `Hello` → `Welcome` → serve until the connection ends →
//! back off (jittered, exponential) → connect again. It stops for good when the relay refuses
//! the token, when a newer connection with the same token takes over, when the token is
//! revoked, or on shutdown — each reported as an [`AgentExit`].

use crate::local::LocalApp;
use crate::local::RequestRecord;
use proto::{
    codes, handshake, read_frame, AuthToken, Frame, HandshakeError, Hello, Refusal, Role,
    StreamHeader,
};
use rand::RngExt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info};

/// Everything `devinprod connect` needs.
#[derive(Clone)]
pub struct AgentConfig {
    /// `HOST:PORT` of the relay (UDP).
    pub relay: String,
    /// TLS name expected on the relay's certificate; default: the host part of `relay`.
    pub server_name: Option<String>,
    pub token: AuthToken,
    /// CA that issued the relay's certificate; default: the public web PKI roots.
    pub ca: Option<PathBuf>,
    /// The local app, `HOST:PORT`.
    pub http: String,
    pub h2c: bool,
    /// Shown to the operator in `token list` and in "replaced by" messages.
    pub client_name: String,
    pub keep_alive: Duration,
    pub idle_timeout: Duration,
    /// Concurrent requests the relay may have open on this connection.
    pub max_concurrent_streams: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub max_frame_len: usize,
    /// Local address for the app's MySQL connections (`--mysql-listen`), if any.
    pub mysql_listen: Option<SocketAddr>,
}

impl AgentConfig {
    pub fn new(relay: String, token: AuthToken, http: String) -> Self {
        Self {
            relay,
            server_name: None,
            token,
            ca: None,
            http,
            h2c: false,
            client_name: host_name(),
            keep_alive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_concurrent_streams: 1024,
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            max_frame_len: proto::MAX_FRAME_LEN,
            mysql_listen: None,
        }
    }
}

/// What the agent tells its user as it goes.
#[derive(Debug, Clone)]
pub enum AgentEvent {
    Connected {
        routing_key: String,
        public_urls: Vec<String>,
        session: u64,
    },
    /// Lost or could not reach the relay; trying again after `retry_in`.
    Disconnected {
        reason: String,
        retry_in: Duration,
    },
    Request(RequestRecord),
}

/// Why the agent stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentExit {
    /// Shutdown was asked for (Ctrl-C).
    Shutdown,
    /// The relay refused this token; retrying cannot help.
    Refused(Refusal),
    /// A newer connection with the same token took over.
    Replaced(String),
    /// The token was revoked while connected.
    Revoked(String),
}

impl AgentExit {
    /// Exit status for the command line: 0 only for a requested shutdown.
    pub fn exit_code(&self) -> i32 {
        match self {
            AgentExit::Shutdown => 0,
            AgentExit::Refused(_) | AgentExit::Revoked(_) => 2,
            AgentExit::Replaced(_) => 3,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Certs(#[from] certs::CertsError),
    #[error("relay address {0:?} must be HOST:PORT")]
    BadRelay(String),
    #[error("{0}")]
    LocalApp(String),
    #[error("cannot listen for MySQL connections on {addr}: {source}")]
    MysqlListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Failure of one connection attempt.
enum AttemptError {
    /// Permanent: stop.
    Exit(AgentExit),
    /// Transient: back off and retry.
    Retry(String),
}

pub struct Agent {
    config: AgentConfig,
    endpoint: quinn::Endpoint,
    relay: certs::RelayAddress,
    local: Arc<LocalApp>,
    events: Arc<dyn Fn(AgentEvent) + Send + Sync>,
    current: crate::mysql::CurrentConnection,
    mysql_listener: std::sync::Mutex<Option<tokio::net::TcpListener>>,
}

impl Agent {
    pub fn new(
        config: AgentConfig,
        events: Arc<dyn Fn(AgentEvent) + Send + Sync>,
    ) -> Result<Self, AgentError> {
        let relay = certs::RelayAddress::parse(&config.relay, config.server_name.as_deref())
            .map_err(|_| AgentError::BadRelay(config.relay.clone()))?;
        let roots = match &config.ca {
            Some(ca) => certs::load_roots(ca)?,
            None => rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        let tls = certs::peer_client_config(roots, None, proto::ALPN)?;
        let mut transport = quinn::TransportConfig::default();
        transport.max_concurrent_bidi_streams(config.max_concurrent_streams.into());
        transport.max_concurrent_uni_streams(0u32.into());
        transport.keep_alive_interval(Some(config.keep_alive));
        transport.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(config.idle_timeout).unwrap_or(quinn::VarInt::MAX.into()),
        ));
        let endpoint = relay.client_endpoint(tls, transport)?;
        let local =
            Arc::new(LocalApp::new(&config.http, config.h2c).map_err(AgentError::LocalApp)?);
        // Bound now, so a busy port is an error at start rather than a surprise later.
        let mysql_listener = match config.mysql_listen {
            Some(addr) => {
                let l = std::net::TcpListener::bind(addr)
                    .and_then(|l| l.set_nonblocking(true).map(|_| l))
                    .and_then(tokio::net::TcpListener::from_std)
                    .map_err(|source| AgentError::MysqlListen { addr, source })?;
                Some(l)
            }
            None => None,
        };
        Ok(Self {
            config,
            endpoint,
            relay,
            local,
            events,
            current: Arc::default(),
            mysql_listener: std::sync::Mutex::new(mysql_listener),
        })
    }

    /// Runs until one of the [`AgentExit`] reasons.
    /// The address of the local MySQL listener, if there is one.
    pub fn mysql_addr(&self) -> Option<SocketAddr> {
        self.mysql_listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> AgentExit {
        let listener = self
            .mysql_listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let mysql = listener
            .map(|l| AbortOnDrop(tokio::spawn(crate::mysql::serve(l, self.current.clone()))));
        let exit = self.run_connection(shutdown).await;
        drop(mysql);
        exit
    }

    fn set_current(&self, tunnel: Option<crate::mysql::DbTunnel>) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = tunnel;
    }

    async fn run_connection(&self, shutdown: impl Future<Output = ()>) -> AgentExit {
        tokio::pin!(shutdown);
        let mut backoff = self.config.backoff_initial;
        loop {
            let attempt = tokio::select! {
                _ = &mut shutdown => return AgentExit::Shutdown,
                a = self.connect() => a,
            };
            let reason = match attempt {
                Ok(conn) => {
                    backoff = self.config.backoff_initial;
                    let served = self.serve(&conn, &mut shutdown).await;
                    self.set_current(None);
                    match served {
                        Ok(exit) => {
                            conn.close(
                                quinn::VarInt::from_u32(codes::CLOSE_NORMAL),
                                b"client shutting down",
                            );
                            // Let the close reach the relay, briefly.
                            let _ = tokio::time::timeout(
                                Duration::from_secs(1),
                                self.endpoint.wait_idle(),
                            )
                            .await;
                            return exit;
                        }
                        Err(AttemptError::Exit(exit)) => return exit,
                        Err(AttemptError::Retry(reason)) => reason,
                    }
                }
                Err(AttemptError::Exit(exit)) => return exit,
                Err(AttemptError::Retry(reason)) => reason,
            };
            // Full jitter in [backoff/2, backoff]: a relay restart does not get every client
            // back in the same millisecond.
            let half = backoff / 2;
            let retry_in = half + half.mul_f64(rand::rng().random::<f64>());
            (self.events)(AgentEvent::Disconnected { reason, retry_in });
            tokio::select! {
                _ = &mut shutdown => return AgentExit::Shutdown,
                _ = tokio::time::sleep(retry_in) => {}
            }
            backoff = (backoff * 2).min(self.config.backoff_max);
        }
    }

    async fn connect(&self) -> Result<quinn::Connection, AttemptError> {
        let remote = self.relay.resolve().map_err(AttemptError::Retry)?;
        let connecting = self
            .endpoint
            .connect(remote, &self.relay.server_name)
            .map_err(|e| {
                AttemptError::Retry(format!("cannot connect to {}: {e}", self.config.relay))
            })?;
        let conn = connecting
            .await
            .map_err(|e| classify_close(&e, &self.config.relay))?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| classify_close(&e, &self.config.relay))?;
        let hello = Hello {
            role: Role::Developer,
            token: Some(self.config.token.clone()),
            client_name: self.config.client_name.clone(),
            capabilities: vec!["http".into()],
        };
        match handshake(&mut send, &mut recv, hello).await {
            Ok(welcome) => {
                // Recorded before telling anyone, so whoever reacts to `Connected` can use it.
                let max_streams = welcome.limits.max_concurrent_streams;
                self.set_current(Some(crate::mysql::DbTunnel::new(conn.clone(), max_streams)));
                let routing_key = welcome
                    .routing_key
                    .map(|k| k.to_string())
                    .unwrap_or_else(|| self.config.token.routing_key().to_string());
                (self.events)(AgentEvent::Connected {
                    routing_key,
                    public_urls: welcome.public_urls,
                    session: welcome.session,
                });
                Ok(conn)
            }
            Err(HandshakeError::Refused(r)) if r.code.is_permanent() => {
                Err(AttemptError::Exit(AgentExit::Refused(r)))
            }
            Err(HandshakeError::Refused(r)) => Err(AttemptError::Retry(r.reason)),
            // The Refusal frame may be lost to the close; the close carries the same reason.
            Err(e) => match conn.close_reason() {
                Some(c) => Err(classify_close(&c, &self.config.relay)),
                None => {
                    let c = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
                    match c {
                        Ok(c) => Err(classify_close(&c, &self.config.relay)),
                        Err(_) => Err(AttemptError::Retry(format!("handshake failed: {e}"))),
                    }
                }
            },
        }
    }

    /// Serves streams until the connection ends (`Err`) or shutdown (`Ok(Shutdown)`).
    async fn serve(
        &self,
        conn: &quinn::Connection,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<AgentExit, AttemptError> {
        loop {
            let (send, recv) = tokio::select! {
                _ = shutdown.as_mut() => return Ok(AgentExit::Shutdown),
                s = conn.accept_bi() => s.map_err(|e| classify_close(&e, &self.config.relay))?,
            };
            let local = self.local.clone();
            let events = self.events.clone();
            let max = self.config.max_frame_len;
            // Boxed: the stream's future is over a kilobyte, and tokio moves a task's future
            // several times between spawn and completion (memcpy was ~5% of the client's
            // instructions per small request); a box is moved as a pointer.
            tokio::spawn(Box::pin(async move {
                if let Some(record) = serve_stream(&local, send, recv, max).await {
                    events(AgentEvent::Request(record));
                }
            }));
        }
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Time the relay has to send a stream's header after opening it.
const STREAM_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

async fn serve_stream(
    local: &LocalApp,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    max: usize,
) -> Option<RequestRecord> {
    let header = tokio::time::timeout(STREAM_HEADER_TIMEOUT, read_frame(&mut recv, max)).await;
    match header {
        Ok(Ok(Some(Frame::StreamHeader(StreamHeader::Http(head))))) => {
            Some(local.serve(head, send, recv, max).await)
        }
        other => {
            debug!("stream without a valid header: {other:?}");
            let code = quinn::VarInt::from_u32(codes::STREAM_BAD_HEADER);
            let _ = send.reset(code);
            let _ = recv.stop(code);
            None
        }
    }
}

/// Turns how a connection ended into "stop" or "retry".
fn classify_close(e: &quinn::ConnectionError, relay: &str) -> AttemptError {
    if let quinn::ConnectionError::ApplicationClosed(close) = e {
        let reason = String::from_utf8_lossy(&close.reason).into_owned();
        let code = u32::try_from(close.error_code.into_inner()).unwrap_or(u32::MAX);
        info!(
            code,
            "relay closed the connection: {}",
            proto::printable(&reason)
        );
        match code {
            codes::CLOSE_REPLACED => return AttemptError::Exit(AgentExit::Replaced(reason)),
            codes::CLOSE_REVOKED => return AttemptError::Exit(AgentExit::Revoked(reason)),
            codes::CLOSE_REFUSED => {
                return AttemptError::Exit(AgentExit::Refused(Refusal {
                    code: proto::RefusalCode::BadToken,
                    reason,
                }))
            }
            _ => return AttemptError::Retry(format!("relay closed the connection: {reason}")),
        }
    }
    AttemptError::Retry(format!("connection to relay {relay} lost: {e}"))
}

/// This machine's name, for the operator's session list.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "devinprod-client".into())
}
