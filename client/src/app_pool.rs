//! Keep-alive HTTP/1.1 connections to the developer's local app.
//!
//! Why not hyper-util's pooled client: for every response with a body it spawns a task that
//! waits for the connection to become idle again, and its checkout, key hashing and request
//! rewriting cost about a tenth of the client's instructions per small request (profiled,
//! BENCHMARKS.md). Here the stream's own task hands the connection back once it has forwarded
//! the whole response ([`Http1Pool::give_back`]), and a request that a reused connection
//! could not even start (the app closed it while idle) is retried once on a new one, as
//! hyper-util does.

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tracing::debug;

use crate::local::Body;

/// An idle connection older than this is closed rather than reused: apps close theirs after a
/// while, and a request sent just as they do would fail.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a handed-back connection may take to become idle again.
const READY_WAIT: Duration = Duration::from_secs(1);
/// Idle connections kept at most; more are closed when handed back.
const MAX_IDLE: usize = 256;

/// A connection to the app, lent for one exchange.
pub type Http1Conn = SendRequest<Body>;

/// Why the local app could not be asked.
#[derive(Debug)]
pub enum AppError {
    /// No connection: the app is not listening, or not at this address.
    Connect(std::io::Error),
    /// The connection failed during the exchange.
    Exchange(hyper::Error),
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Connect(e) => write!(f, "tcp connect error: {e}"),
            AppError::Exchange(e) => f.write_str(&crate::local::error_chain(e)),
        }
    }
}

pub struct Http1Pool {
    /// `HOST:PORT` of the local app.
    addr: String,
    idle: Mutex<Vec<(SendRequest<Body>, Instant)>>,
}

impl Http1Pool {
    pub fn new(addr: String) -> Self {
        Self {
            addr,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Sends `req` (its URI in origin form) and returns the response head with the connection,
    /// to be handed back with [`Http1Pool::give_back`] once the response body has been read.
    pub async fn send(
        &self,
        mut req: hyper::Request<Body>,
    ) -> Result<(hyper::Response<Incoming>, SendRequest<Body>), AppError> {
        if let Some(mut conn) = self.checkout() {
            match conn.try_send_request(req).await {
                Ok(resp) => return Ok((resp, conn)),
                Err(mut e) => match e.take_message() {
                    // Not started: the app had closed the idle connection. Once more, fresh.
                    Some(unsent) => {
                        debug!("idle connection to the local app was closed: {}", e.error());
                        req = unsent;
                    }
                    None => return Err(AppError::Exchange(e.into_error())),
                },
            }
        }
        let mut conn = self.connect().await?;
        let resp = conn.send_request(req).await.map_err(AppError::Exchange)?;
        Ok((resp, conn))
    }

    /// Hands a connection back after its response was read to the end; one the app closed,
    /// upgraded or still busy is dropped instead.
    pub async fn give_back(&self, mut conn: SendRequest<Body>) {
        // The connection task notices the end of the body on its next poll; this waits for
        // that (a wake-up, no I/O) rather than spawning a task to wait for it. A connection
        // still busy after a while (the app answered before reading a long request body) is
        // not worth keeping.
        if !matches!(
            tokio::time::timeout(READY_WAIT, conn.ready()).await,
            Ok(Ok(()))
        ) {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push((conn, Instant::now()));
        }
    }

    /// The most recently used idle connection that is still open and fresh.
    fn checkout(&self) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((conn, since)) = idle.pop() {
            if since.elapsed() < IDLE_TIMEOUT && conn.is_ready() {
                return Some(conn);
            }
        }
        None
    }

    async fn connect(&self) -> Result<SendRequest<Body>, AppError> {
        let tcp = TcpStream::connect(&self.addr)
            .await
            .map_err(AppError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(AppError::Exchange)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!("connection to the local app ended: {e}");
            }
        });
        Ok(sender)
    }
}
