//! `devinprod relay`, `devinprod edge` and `devinprod up`: flags over config files over
//! defaults, then the servers from the `relay` and `edge` libraries.

use crate::cli::{DbproxyArgs, EdgeArgs, RelayArgs, UpArgs};
use crate::config_file;
use anyhow::{bail, Context};
use edge::{Edge, EdgeConfig, RelayConnector};
use relay::{Relay, RelayConfig, TokenStore};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The `up --config` file: the same keys as the separate files, in tables.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct UpFile {
    relay: RelayConfig,
    edge: EdgeConfig,
    dbproxy: Option<dbproxy::DbProxyFileConfig>,
}

fn relay_config(args: &RelayArgs) -> anyhow::Result<RelayConfig> {
    let mut c: RelayConfig = match &args.config {
        Some(p) => config_file::load(p)?,
        None => RelayConfig::default(),
    };
    if let Some(v) = args.listen {
        c.listen = v;
    }
    if let Some(v) = args.admin_listen {
        c.admin_listen = v;
    }
    if let Some(v) = &args.state_dir {
        c.state_dir = v.clone();
    }
    if !args.public_urls.is_empty() {
        c.public_urls = args.public_urls.clone();
    }
    if !args.admin_allow.is_empty() {
        c.admin_allow = args.admin_allow.clone();
    }
    Ok(c)
}

fn edge_config(args: &EdgeArgs) -> anyhow::Result<EdgeConfig> {
    let mut c: EdgeConfig = match &args.config {
        Some(p) => config_file::load(p)?,
        None => EdgeConfig::default(),
    };
    if let Some(v) = args.listen {
        c.listen = v;
    }
    if let Some(v) = &args.production {
        c.production = Some(v.clone());
    }
    if let Some(v) = &args.relay {
        c.relay = Some(v.clone());
    }
    if let Some(v) = &args.state_dir {
        c.state_dir = v.clone();
    }
    if let Some(v) = args.access {
        c.access = Some(v.into());
    }
    // The edge's worker threads are its visitor-connection workers (`workers`); its own
    // runtime, which keeps the connection to the relay, has one thread (`main.rs`).
    if let Some(v) = args.runtime.threads {
        c.workers = Some(usize::from(v));
    }
    for (flag, slot) in [
        (&args.ca, &mut c.ca),
        (&args.cert, &mut c.cert),
        (&args.key, &mut c.key),
    ] {
        if let Some(v) = flag {
            *slot = Some(v.clone());
        }
    }
    Ok(c)
}

async fn bind_tcp(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

/// Servers started by `relay`, `edge`, `up` or `demo`, stopped together.
pub struct Running {
    tasks: JoinSet<()>,
    stop: watch::Sender<bool>,
}

impl Running {
    fn new() -> Self {
        Self {
            tasks: JoinSet::new(),
            stop: watch::channel(false).0,
        }
    }

    fn stop_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            // Either a stop was sent or the sender is gone: both mean stop.
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    /// Waits for `signal`, or for any server to end by itself, then stops everything.
    pub async fn serve_until(mut self, signal: impl std::future::Future<Output = ()>) {
        tokio::select! {
            _ = signal => {}
            _ = self.tasks.join_next() => {}
        }
        self.shutdown().await;
    }

    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

pub async fn relay(args: RelayArgs) -> anyhow::Result<i32> {
    let config = relay_config(&args)?;
    let relay = Relay::from_config(config.clone()).context("cannot start the relay")?;
    let endpoint = relay.bind().with_context(|| {
        format!(
            "cannot start the relay's QUIC listener (create the PKI with `devinprod certs init --dir {}`)",
            config.state_dir.display()
        )
    })?;
    let admin = bind_tcp(config.admin_listen, "admin API").await?;
    println!(
        "relay listening on {} (QUIC/UDP), admin API on http://{}",
        endpoint.local_addr().context("relay address")?,
        admin.local_addr().context("admin address")?
    );
    let mut running = Running::new();
    running
        .tasks
        .spawn(relay.clone().run(endpoint, running.stop_signal()));
    running
        .tasks
        .spawn(relay::serve_admin(relay, admin, running.stop_signal()));
    running.serve_until(super::shutdown_signal()).await;
    Ok(0)
}

pub async fn edge(args: EdgeArgs) -> anyhow::Result<i32> {
    let config = edge_config(&args)?;
    let Some(relay_addr) = config.relay.clone() else {
        bail!("the edge needs the relay's address: --relay HOST:PORT (or `relay` in edge.toml)");
    };
    let connector = RelayConnector::new(&config, &relay_addr)
        .context("cannot set up the connection to the relay")?;
    let listener = bind_tcp(config.listen, "edge").await?;
    let edge =
        Edge::new(config.clone(), Arc::new(connector)).context("invalid edge configuration")?;
    println!(
        "edge listening on http://{} → relay {relay_addr}",
        listener.local_addr()?
    );
    let mut running = Running::new();
    running
        .tasks
        .spawn(edge.run(listener, running.stop_signal()));
    running.serve_until(super::shutdown_signal()).await;
    Ok(0)
}

/// What `up` started, for `up` itself and for `demo`.
pub struct Stack {
    pub relay: Arc<Relay>,
    /// The dbproxy's database (password hidden), when `--mysql` was given.
    pub db_upstream: Option<String>,
    pub dir: PathBuf,
    pub relay_addr: SocketAddr,
    pub edge_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub production: Option<String>,
    pub running: Running,
}

/// Starts relay + admin API + edge in this process. `tokens` replaces the token store on disk
/// (the demo keeps its throwaway token in memory).
pub async fn start_stack(args: &UpArgs, tokens: Option<TokenStore>) -> anyhow::Result<Stack> {
    let file: UpFile = match &args.config {
        Some(p) => config_file::load(p)?,
        None => UpFile::default(),
    };
    let (mut rc, mut ec) = (file.relay, file.edge);
    let dir = args.dir.clone().unwrap_or_else(|| rc.state_dir.clone());
    rc.state_dir = dir.clone();
    ec.state_dir = dir.clone();
    if let Some(v) = args.relay_listen {
        rc.listen = v;
    }
    if let Some(v) = args.admin_listen {
        rc.admin_listen = v;
    }
    if let Some(v) = args.edge_listen {
        ec.listen = v;
    }
    if let Some(v) = &args.production {
        ec.production = Some(v.clone());
    }
    if let Some(v) = args.edge_workers {
        ec.workers = Some(usize::from(v));
    }
    if ec.access.is_none() {
        if ec.listen.ip().is_loopback() {
            // Only this machine can reach a loopback edge: fine for local use and demos.
            ec.access = Some(edge::access::AccessMode::Anyone);
        } else {
            bail!(
                "the edge listens on {}, beyond this machine: choose who may reach developer routes with \
                 `access` in the [edge] table (\"staff\" with staff_secret, \"networks\" with allowed_networks, or \"anyone\")",
                ec.listen
            );
        }
    }
    if !args.public_urls.is_empty() {
        rc.public_urls = args.public_urls.clone();
    }

    // Adopt whatever `certs init` wrote; create only what is missing.
    certs::ensure_pki(&dir, &[])
        .with_context(|| format!("cannot prepare the PKI in {}", dir.display()))?;
    let relay = match tokens {
        Some(t) => Relay::new(rc.clone(), t),
        None => Relay::from_config(rc.clone()).context("cannot open the token store")?,
    };
    let endpoint = relay
        .bind()
        .with_context(|| format!("cannot listen on {} (relay, UDP)", rc.listen))?;
    let relay_addr = endpoint.local_addr().context("relay address")?;
    let admin = bind_tcp(rc.admin_listen, "admin API").await?;
    let admin_addr = admin.local_addr()?;
    let edge_listener = bind_tcp(ec.listen, "edge").await?;
    let edge_addr = edge_listener.local_addr()?;
    // With a database, the dbproxy runs as a child process (see `dbproxy_child`): whatever a
    // developer's SQL does to it, the edge and the relay in this process go on.
    let mut dc = file.dbproxy.unwrap_or_default();
    if let Some(url) = &args.mysql {
        dc.upstream = Some(url.clone());
    }
    let db_upstream = dc
        .upstream
        .as_ref()
        .map(|u| dbproxy::upstream::redact(u.expose()));
    let dbproxy_child = if dc.upstream.is_some() {
        // Its settings are checked here too, so that `up` fails at start on a bad one.
        dc.check().map_err(|e| anyhow::anyhow!("dbproxy: {e}"))?;
        Some(super::dbproxy_child::DbproxyChild::prepare(
            dc, relay_addr, &dir,
        )?)
    } else {
        None
    };
    // In one process the edge reaches developers through the relay's registry directly.
    let edge = Edge::new(ec.clone(), relay.registry()).context("invalid edge configuration")?;

    let mut running = Running::new();
    running
        .tasks
        .spawn(relay.clone().run(endpoint, running.stop_signal()));
    running.tasks.spawn(relay::serve_admin(
        relay.clone(),
        admin,
        running.stop_signal(),
    ));
    running
        .tasks
        .spawn(edge.run(edge_listener, running.stop_signal()));
    if let Some(child) = dbproxy_child {
        running.tasks.spawn(child.supervise(running.stop_signal()));
    }
    Ok(Stack {
        relay,
        db_upstream,
        dir,
        relay_addr,
        edge_addr,
        admin_addr,
        production: ec.production,
        running,
    })
}

pub async fn up(args: UpArgs) -> anyhow::Result<i32> {
    let stack = start_stack(&args, None).await?;
    println!("DevInProd is up (state in {}).", stack.dir.display());
    println!(
        "  edge   http://{}  (production: {})",
        stack.edge_addr,
        stack.production.as_deref().unwrap_or("none configured")
    );
    println!("  relay  {} (QUIC/UDP)", stack.relay_addr);
    println!("  admin  http://{}", stack.admin_addr);
    if let Some(db) = &stack.db_upstream {
        println!("  dbproxy → {db}  (developers: connect with --mysql-listen 127.0.0.1:13306)");
    }
    println!();
    println!("Next, for each developer:");
    println!(
        "  export DEVINPROD_TOKEN=$(devinprod token create --admin http://{})",
        stack.admin_addr
    );
    println!(
        "  devinprod connect --relay {} --ca {} --http 127.0.0.1:3000",
        stack.relay_addr,
        stack.dir.join("ca.pem").display()
    );
    stack.running.serve_until(super::shutdown_signal()).await;
    Ok(0)
}

pub async fn dbproxy(args: DbproxyArgs) -> anyhow::Result<i32> {
    let mut file: dbproxy::DbProxyFileConfig = match &args.config {
        Some(p) => config_file::load(p)?,
        None => dbproxy::DbProxyFileConfig::default(),
    };
    if let Some(v) = &args.mysql {
        file.upstream = Some(v.clone());
    }
    if let Some(v) = &args.relay {
        file.relay = Some(v.clone());
    }
    if let Some(v) = &args.state_dir {
        file.state_dir = v.clone();
    }
    let checked = file.check().map_err(|e| anyhow::anyhow!("dbproxy: {e}"))?;
    let Some(relay_addr) = file.relay.clone() else {
        bail!(
            "the dbproxy needs the relay's address: --relay HOST:PORT (or `relay` in dbproxy.toml)"
        );
    };
    println!(
        "dbproxy → {} via relay {relay_addr}",
        dbproxy::upstream::redact(file.upstream.as_ref().map_or("", proto::Secret::expose))
    );
    warn_about_privileges(&checked).await;
    let proxy = dbproxy::DbProxy::new(checked);
    let stop_with_stdin = args.stop_with_stdin;
    let shutdown = async move {
        if stop_with_stdin {
            tokio::select! {
                _ = super::shutdown_signal() => {}
                _ = super::dbproxy_child::stdin_closed() => {}
            }
        } else {
            super::shutdown_signal().await
        }
    };
    dbproxy::peer::run(proxy, &file, &relay_addr, shutdown)
        .await
        .context("dbproxy")?;
    Ok(0)
}

/// Tells the operator when the dbproxy's database user holds more than sessions need.
async fn warn_about_privileges(config: &dbproxy::DbProxyConfig) {
    match dbproxy::privileges::check(config).await {
        Ok(warnings) => {
            for w in &warnings {
                eprintln!("warning: {w}; sessions need only SELECT, INSERT, UPDATE, DELETE and CREATE TEMPORARY TABLES on the app's schemas (and PROCESS)");
            }
        }
        Err(e) => eprintln!("warning: cannot check the dbproxy's database privileges yet: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_up_config_with_an_inline_masking_secret_is_accepted() {
        // DESIGN.md's contract, as written there.
        let key = "00112233445566778899aabbccddeeff0f1e2d3c4b5a69788796a5b4c3d2e1f0";
        let text = format!(
            "[dbproxy.masking]\nsecret = \"{key}\"\n[dbproxy.masking.columns]\n\
             \"shop.customers.email\" = \"email\"\n\"shop.customers.ssn\"   = \"digits\"\n"
        );
        let file: UpFile = config_file::parse(&text).unwrap();
        let masking = file.dbproxy.unwrap().masking;
        assert_eq!(
            masking.secret.as_ref().map(proto::Secret::expose),
            Some(key)
        );
        assert_eq!(masking.columns.len(), 2);
    }
}
