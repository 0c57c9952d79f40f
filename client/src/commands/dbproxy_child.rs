//! `up --mysql`: the dbproxy runs as a child process of its own, not inside `up`.
//!
//! Why: `up` is the edge in front of production. The dbproxy parses and analyses whatever SQL
//! a developer's app sends; a bug there that aborts the process (a stack overflow, an
//! allocation failure, a panic under `panic = "abort"`) must end that developer's database
//! sessions, never the edge, the relay or the admin API (issue 15: one 300 KB statement took
//! the whole `up` down). So `up` writes the dbproxy's settings to a file only its user can
//! read, starts `devinprod dbproxy` with them, and the child reaches the relay over loopback
//! QUIC with the dbproxy certificate, exactly as a separate dbproxy does. If it dies, `up`
//! starts it again (with a growing pause while it keeps dying), and developers' next
//! statements get a new session. The child watches its standard input, a pipe `up` holds:
//! when `up` is gone, even killed, the pipe closes and the child stops.

use anyhow::Context;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::Command;
use tracing::{info, warn};

/// The hidden `dbproxy` flag that makes it stop when its standard input closes.
pub const STOP_WITH_STDIN_FLAG: &str = "--stop-with-stdin";

/// First pause before starting a child that died; doubled while it keeps dying.
const FIRST_RESTART_PAUSE: Duration = Duration::from_millis(500);
const MAX_RESTART_PAUSE: Duration = Duration::from_secs(30);
/// A child that ran this long before dying is restarted after the first pause again.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// How long a stopping child has to close its sessions before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How to start the child.
pub struct DbproxyChild {
    program: PathBuf,
    config: PathBuf,
    relay: String,
}

impl DbproxyChild {
    /// Writes `file` (the `[dbproxy]` settings of `up`) for a child that reaches the relay
    /// listening on `relay_listen` over loopback, with the PKI in `dir`.
    pub fn prepare(
        mut file: dbproxy::DbProxyFileConfig,
        relay_listen: SocketAddr,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let loopback = match relay_listen {
            SocketAddr::V4(a) if a.ip().is_unspecified() => {
                SocketAddr::from((Ipv4Addr::LOCALHOST, a.port()))
            }
            SocketAddr::V6(a) if a.ip().is_unspecified() => {
                SocketAddr::from((Ipv6Addr::LOCALHOST, a.port()))
            }
            other => other,
        };
        // Any name on the relay's certificate will do: the address is given, the name is only
        // checked against the certificate.
        let relay_cert = certs::PkiPaths::new(dir).cert(certs::Leaf::Relay);
        let names = certs::load_certs(&relay_cert)
            .ok()
            .and_then(|chain| chain.first().map(certs::server_names))
            .unwrap_or_default();
        let name = names
            .iter()
            .find(|n| n.as_str() == "localhost")
            .or(names.first())
            .cloned()
            .with_context(|| format!("{} names no host", relay_cert.display()))?;
        file.relay = Some(loopback.to_string());
        file.relay_server_name = Some(name);
        file.state_dir = dir.to_path_buf();
        let config = dir.join("up-dbproxy.toml");
        let text = toml::to_string(&file).context("cannot write the dbproxy's settings")?;
        write_private(&config, text.as_bytes())
            .with_context(|| format!("cannot write {}", config.display()))?;
        Ok(Self {
            program: std::env::current_exe().context("cannot find the devinprod executable")?,
            config,
            relay: loopback.to_string(),
        })
    }

    /// Keeps the child running until `stop`, then stops it.
    pub async fn supervise(self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut pause = FIRST_RESTART_PAUSE;
        loop {
            let mut child = match Command::new(&self.program)
                .arg("dbproxy")
                .arg("--config")
                .arg(&self.config)
                .arg("--relay")
                .arg(&self.relay)
                .arg(STOP_WITH_STDIN_FLAG)
                .stdin(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
            {
                Ok(child) => child,
                Err(e) => {
                    warn!("cannot start the dbproxy process: {e}");
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tokio::time::sleep(MAX_RESTART_PAUSE) => continue,
                    }
                }
            };
            let started = Instant::now();
            info!(pid = child.id(), "dbproxy process started");
            // Held open for as long as the child should run.
            let stdin = child.stdin.take();
            tokio::select! {
                _ = &mut stop => {
                    drop(stdin);
                    if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
                        let _ = child.kill().await;
                    }
                    return;
                }
                status = child.wait() => {
                    drop(stdin);
                    if started.elapsed() > STABLE_AFTER {
                        pause = FIRST_RESTART_PAUSE;
                    }
                    let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                    warn!(
                        "the dbproxy process ended ({status}): its database sessions were rolled back; \
                         the edge and the relay are unaffected; restarting it in {} ms",
                        pause.as_millis()
                    );
                }
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(MAX_RESTART_PAUSE);
        }
    }
}

/// Completes when standard input reaches its end (the parent closed the pipe, or died).
pub async fn stdin_closed() {
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        // An older file keeps its mode through truncation: set it again.
        if path.exists() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    options.open(path)?.write_all(bytes)
}
