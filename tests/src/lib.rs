//! Test harness: real relays, edges, clients and apps on 127.0.0.1 with ephemeral ports.
//! Every wait is bounded; everything stops when its handle is dropped or stopped.

#![forbid(unsafe_code)]

pub mod apps;
pub mod bench;
pub mod benchkit;
pub mod h2raw;
pub mod http_client;
pub mod mariadb;
pub mod nginx;
pub mod postgres;
pub mod procs;
pub mod quic_flood;
pub mod raw;
pub mod tls;

use client::{Agent, AgentConfig, AgentEvent, AgentExit};
use edge::{Edge, EdgeConfig, RelayConnector};
use proto::AuthToken;
use relay::{Relay, RelayConfig, TokenStore};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Upper bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(20);

/// A fresh database name (`dip_` and 12 random hex digits), for a test's own database on a
/// shared server (MariaDB or PostgreSQL).
pub fn unique_db_name() -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).unwrap();
    format!(
        "dip_{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A PKI in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        certs::ensure_pki(dir.path(), &[]).expect("PKI");
        Self { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn ca(&self) -> PathBuf {
        self.path().join("ca.pem")
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// A relay with its admin API, in this process.
pub struct TestRelay {
    pub relay: Arc<Relay>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl TestRelay {
    pub fn config(pki: &Pki) -> RelayConfig {
        RelayConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            state_dir: pki.path().to_owned(),
            ..RelayConfig::default()
        }
    }

    pub async fn start(pki: &Pki) -> Self {
        Self::start_with(Self::config(pki)).await
    }

    /// Starts a relay whose tokens live in `config.tokens_path()` (on disk, under the PKI dir).
    pub async fn start_with(config: RelayConfig) -> Self {
        let relay = Relay::from_config(config.clone()).expect("relay");
        Self::start_relay(relay).await
    }

    pub async fn start_in_memory(pki: &Pki) -> Self {
        Self::start_relay(Relay::new(Self::config(pki), TokenStore::in_memory())).await
    }

    async fn start_relay(relay: Arc<Relay>) -> Self {
        let endpoint = relay.bind().expect("bind relay");
        let addr = endpoint.local_addr().unwrap();
        let admin_listener = tokio::net::TcpListener::bind(relay.config().admin_listen)
            .await
            .unwrap();
        let admin = admin_listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = futures_util::future::FutureExt::shared(async move {
            let _ = stopped.await;
        });
        let tasks = vec![
            tokio::spawn(relay.clone().run(endpoint, stopped.clone())),
            tokio::spawn(relay::serve_admin(relay.clone(), admin_listener, stopped)),
        ];
        Self {
            relay,
            addr,
            admin,
            stop: Some(stop),
            tasks,
        }
    }

    pub fn issue_token(&self, name: &str) -> AuthToken {
        self.relay.tokens().create(name).expect("token").0
    }

    /// Stops the relay gracefully (clients are told to reconnect) and waits for it.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(WAIT, t).await;
        }
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// An edge in this process, on an ephemeral port.
pub struct TestEdge {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl TestEdge {
    pub fn config(production: Option<SocketAddr>) -> EdgeConfig {
        EdgeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            production: production.map(|p| format!("http://{p}")),
            access: Some(edge::access::AccessMode::Anyone),
            ..EdgeConfig::default()
        }
    }

    /// The all-in-one wiring: the edge asks the relay's registry directly.
    pub async fn in_process(relay: &TestRelay, production: Option<SocketAddr>) -> Self {
        Self::start(Self::config(production), relay.relay.registry()).await
    }

    /// A separate edge: QUIC to the relay with the edge role certificate.
    pub async fn over_quic(relay: &TestRelay, pki: &Pki, production: Option<SocketAddr>) -> Self {
        let mut config = Self::config(production);
        config.state_dir = pki.path().to_owned();
        let connector = RelayConnector::new(&config, &relay.addr.to_string()).expect("connector");
        Self::start(config, Arc::new(connector)).await
    }

    pub async fn start(config: EdgeConfig, opener: Arc<dyn proto::StreamOpener>) -> Self {
        let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let edge = Edge::new(config, opener).expect("edge");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(edge.run(listener, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }
}

impl Drop for TestEdge {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.abort();
    }
}

/// A developer's client (the real agent, over QUIC) serving `local`.
pub struct TestClient {
    pub events: mpsc::UnboundedReceiver<AgentEvent>,
    pub routing_key: String,
    /// The client's local MySQL listener, when configured.
    pub mysql: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<AgentExit>>,
}

impl TestClient {
    pub fn agent_config(
        relay: SocketAddr,
        ca: &Path,
        token: AuthToken,
        local: SocketAddr,
    ) -> AgentConfig {
        let mut c = AgentConfig::new(relay.to_string(), token, local.to_string());
        c.ca = Some(ca.to_owned());
        c.client_name = "test client".into();
        c.backoff_initial = Duration::from_millis(50);
        c.backoff_max = Duration::from_millis(500);
        c
    }

    /// Starts the agent without waiting for anything.
    pub fn spawn(config: AgentConfig) -> Self {
        let (tx, events) = mpsc::unbounded_channel();
        let agent = Agent::new(
            config,
            Arc::new(move |e| {
                let _ = tx.send(e);
            }),
        )
        .expect("agent");
        let mysql = agent.mysql_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            agent
                .run(async move {
                    let _ = stopped.await;
                })
                .await
        });
        Self {
            events,
            routing_key: String::new(),
            mysql,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Starts the agent and waits until it is connected.
    pub async fn connect(
        relay: &TestRelay,
        pki: &Pki,
        token: AuthToken,
        local: SocketAddr,
    ) -> Self {
        let mut c = Self::spawn(Self::agent_config(relay.addr, &pki.ca(), token, local));
        c.routing_key = c.wait_connected().await;
        c
    }

    /// Waits for the next `Connected` event; returns the routing key.
    pub async fn wait_connected(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ev = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .expect("client did not connect in time")
                .expect("client stopped before connecting");
            if let AgentEvent::Connected { routing_key, .. } = ev {
                return routing_key;
            }
        }
    }

    /// Waits for the agent to stop by itself and returns why.
    pub async fn exit(&mut self) -> AgentExit {
        let task = self.task.take().expect("exit already taken");
        tokio::time::timeout(WAIT, task)
            .await
            .expect("client did not exit in time")
            .expect("client task panicked")
    }

    /// Asks the agent to stop (like Ctrl-C) and returns how it ended.
    pub async fn shutdown(mut self) -> AgentExit {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.exit().await
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// A relay with an in-process dbproxy on the test database server (`devinprod up --mysql`).
pub async fn relay_with_dbproxy(
    pki: &Pki,
    tune: impl FnOnce(&mut dbproxy::DbProxyFileConfig),
) -> (TestRelay, Arc<dbproxy::DbProxy>) {
    relay_config_with_dbproxy(TestRelay::config(pki), tune).await
}

/// [`relay_with_dbproxy`] with a relay configuration of the test's own (from
/// [`TestRelay::config`]).
pub async fn relay_config_with_dbproxy(
    config: RelayConfig,
    tune: impl FnOnce(&mut dbproxy::DbProxyFileConfig),
) -> (TestRelay, Arc<dbproxy::DbProxy>) {
    let relay = TestRelay::start_with(config).await;
    let mut file = dbproxy::DbProxyFileConfig {
        upstream: Some(mariadb::server().url.clone().into()),
        ..Default::default()
    };
    tune(&mut file);
    let proxy = dbproxy::DbProxy::new(file.check().expect("dbproxy config"));
    relay.relay.set_db_handler(proxy.clone());
    (relay, proxy)
}

/// A developer connected with a local MySQL listener on an ephemeral port.
pub async fn developer_with_mysql(relay: &TestRelay, pki: &Pki, name: &str) -> TestClient {
    let token = relay.issue_token(name);
    // The HTTP side is not used by database tests; any address will do.
    let mut config =
        TestClient::agent_config(relay.addr, &pki.ca(), token, "127.0.0.1:9".parse().unwrap());
    config.mysql_listen = Some("127.0.0.1:0".parse().unwrap());
    let mut c = TestClient::spawn(config);
    c.routing_key = c.wait_connected().await;
    c
}

/// A MySQL connection (mysql_async, a real driver) to `addr`, using database `db`.
pub async fn mysql_conn(addr: SocketAddr, db: &str) -> mysql_async::Conn {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(addr.ip().to_string())
        .tcp_port(addr.port())
        .user(Some("app"))
        .pass(Some("whatever"))
        .db_name(Some(db))
        .prefer_socket(false);
    tokio::time::timeout(WAIT, mysql_async::Conn::new(opts))
        .await
        .expect("mysql connect timed out")
        .expect("mysql connect")
}

/// A direct connection to the database server, as production would have.
pub async fn production_conn(db: &str) -> mysql_async::Conn {
    let s = mariadb::server();
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(s.host.clone())
        .tcp_port(s.port)
        .user(Some(s.user.clone()))
        .pass((!s.password.is_empty()).then(|| s.password.clone()))
        .db_name(Some(db))
        .prefer_socket(false);
    mysql_async::Conn::new(opts)
        .await
        .expect("production connection")
}
