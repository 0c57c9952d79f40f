//! The edge's worker threads (issue 18): visitor connections on every core.
//!
//! With `workers` above 1 (the default on a host with several cores), that many threads accept
//! from the same listening socket, each running its visitor connections on a single-threaded
//! runtime with production connections of its own ([`Worker`]): a request to production never
//! leaves the thread that accepted it, and the production path uses every core, as nginx's
//! worker processes do. An idle worker is the one waiting in `accept`, so new connections go
//! to whoever has time.
//!
//! The calling runtime is worker 0, the **home** worker: in `devinprod up` it also runs the
//! relay, whose QUIC connections to developers are driven there. A plain-HTTP connection that
//! another worker accepts and whose first request names a developer's host (`www-<key>.…`) is
//! handed to the home worker before anything is read from it (the first bytes are peeked, not
//! consumed), so a developer's requests and their QUIC streams run on one thread, back to back,
//! as before there were workers — crossing threads for each request cost the developer path
//! 5–10% of its requests/s (BENCHMARKS.md, round 6). Requests routed by header or cookie, and
//! HTTPS or HTTP/2 connections, stay where they were accepted: they work the same, at the cost
//! of a wake-up of the home thread per request.

use crate::production::Production;
use crate::{visitor_conn, Edge, Visitor, Worker};
use hyper::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

/// How much of a connection's first bytes is peeked for its Host header.
const PEEK_BYTES: usize = 2048;

/// A connection on its way to the home worker, nothing read from it yet.
type Handed = (std::net::TcpStream, SocketAddr);

/// Where developer connections go.
enum Home {
    /// This is the home worker: connections other workers hand over arrive here.
    Here(mpsc::UnboundedReceiver<Handed>),
    /// Another worker: developer connections are handed to the home worker.
    Away(mpsc::UnboundedSender<Handed>),
    /// The only worker.
    Alone,
}

pub(crate) async fn run(
    edge: Arc<Edge>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let (stop, stopped) = watch::channel(false);
    let workers = edge.config.worker_threads();
    let (to_home, at_home) = mpsc::unbounded_channel();
    let mut finished = Vec::new();
    for index in 1..workers {
        match spawn_worker(&edge, index, &listener, stopped.clone(), to_home.clone()) {
            Ok(done) => finished.push(done),
            Err(e) => {
                warn!("cannot start edge worker thread {index}: {e}; going on with {index}");
                break;
            }
        }
    }
    drop(to_home);
    let home = if finished.is_empty() {
        Home::Alone
    } else {
        Home::Here(at_home)
    };
    let serving = serve(edge.clone(), listener, stopped, home);
    tokio::pin!(serving, shutdown);
    tokio::select! {
        _ = &mut shutdown => {}
        _ = &mut serving => {}
    }
    let _ = stop.send(true);
    serving.await;
    // The other workers had the same grace; a little more to notice the stop.
    let bound = Duration::from_millis(edge.config.shutdown_grace_ms) + Duration::from_secs(1);
    for done in finished {
        let _ = tokio::time::timeout(bound, done).await;
    }
}

/// Worker `index`: a thread with a single-threaded runtime serving connections accepted from a
/// duplicate of `listener`'s socket. The receiver resolves when the thread is done.
fn spawn_worker(
    edge: &Arc<Edge>,
    index: usize,
    listener: &TcpListener,
    stopped: watch::Receiver<bool>,
    to_home: mpsc::UnboundedSender<Handed>,
) -> std::io::Result<oneshot::Receiver<()>> {
    let socket: std::net::TcpListener = socket2::SockRef::from(listener).try_clone()?.into();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (done, finished) = oneshot::channel();
    let edge = edge.clone();
    // `edge-PORT-wN`: which listener, which worker (a thread name holds 15 bytes).
    let port = listener.local_addr().map_or(0, |a| a.port());
    std::thread::Builder::new()
        .name(format!("edge-{port}-w{index}"))
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(socket) {
                    Ok(listener) => serve(edge, listener, stopped, Home::Away(to_home)).await,
                    Err(e) => warn!("edge worker {index} cannot listen: {e}"),
                }
            });
            // Connections still open after the grace period end with the runtime.
            drop(runtime);
            let _ = done.send(());
        })?;
    Ok(finished)
}

/// Resolves once the edge's stop flag is set (or its sender is gone).
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// What every connection of one worker shares.
struct Shared {
    edge: Arc<Edge>,
    worker: Arc<Worker>,
    builder: auto::Builder<TokioExecutor>,
    listening: Option<SocketAddr>,
    /// Set on workers other than the home one.
    to_home: Option<mpsc::UnboundedSender<Handed>>,
}

/// One worker's accept loop, until `stopped` turns true; then in-flight requests get
/// `shutdown_grace_ms` to finish.
async fn serve(
    edge: Arc<Edge>,
    listener: TcpListener,
    mut stopped: watch::Receiver<bool>,
    home: Home,
) {
    let worker = Arc::new(Worker {
        production: edge.production.as_ref().map(Production::for_worker),
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // `visitor_conn` runs the head clock instead, so a late head gets a 408 rather than a
        // silent close.
        .header_read_timeout(None)
        .max_buf_size(edge.config.max_header_bytes.max(8192));
    builder
        .http2()
        .max_header_list_size(u32::try_from(edge.config.max_header_bytes).unwrap_or(u32::MAX));
    builder.http2().timer(TokioTimer::new());
    let listening = listener.local_addr().ok();
    let (mut handed, to_home) = match home {
        Home::Here(rx) => (Some(rx), None),
        Home::Away(tx) => (None, Some(tx)),
        Home::Alone => (None, None),
    };
    if to_home.is_none() {
        info!(addr = ?listening, workers = edge.config.worker_threads(), "edge listening");
    }
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let shared = Arc::new(Shared {
        edge,
        worker,
        builder,
        listening,
        to_home,
    });
    loop {
        let (stream, peer, at_home) = tokio::select! {
            () = until_stopped(&mut stopped) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => (stream, peer, false),
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some((stream, peer)) = recv(&mut handed) => match TcpStream::from_std(stream) {
                Ok(stream) => (stream, peer, true),
                Err(e) => {
                    debug!(%peer, "a handed-over connection could not be registered: {e}");
                    continue;
                }
            },
        };
        if !at_home {
            let _ = stream.set_nodelay(true);
        }
        let shared = shared.clone();
        let watcher = graceful.watcher();
        // The TLS handshake (or the peek) runs in the connection's own task: a slow visitor
        // does not hold up the accept loop.
        tokio::spawn(async move { shared.connection(stream, peer, at_home, watcher).await });
    }
    let grace = Duration::from_millis(shared.edge.config.shutdown_grace_ms);
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
}

/// The next handed-over connection, or never on a worker that takes none.
async fn recv(handed: &mut Option<mpsc::UnboundedReceiver<Handed>>) -> Option<Handed> {
    match handed {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Shared {
    async fn connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        at_home: bool,
        watcher: hyper_util::server::graceful::Watcher,
    ) {
        let edge = &self.edge;
        let handshake_timeout = Duration::from_millis(edge.config.header_read_timeout_ms);
        let stream = match (&self.to_home, &edge.tls, at_home) {
            (Some(to_home), None, false) => {
                match self.hand_developers_home(stream, peer, to_home).await {
                    Some(stream) => stream,
                    None => return,
                }
            }
            _ => stream,
        };
        // The port this visitor reached: a listener on a wildcard address has one port, but
        // say what the socket says.
        let local_port = stream
            .local_addr()
            .ok()
            .or(self.listening)
            .map_or(0, |a| a.port());
        let visitor = Arc::new(Visitor::new(peer, local_port, &edge.config.trusted_proxies));
        let phase = Arc::new(visitor_conn::ConnPhase::default());
        let service_phase = phase.clone();
        let (service_edge, worker) = (edge.clone(), self.worker.clone());
        let service = hyper::service::service_fn(move |req| {
            let edge = service_edge.clone();
            let worker = worker.clone();
            let phase = service_phase.clone();
            let visitor = visitor.clone();
            phase.request_started();
            async move {
                let resp = edge.handle(req, &visitor, &worker).await;
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    phase.turn_off();
                }
                Ok::<_, std::convert::Infallible>(
                    resp.map(|body| visitor_conn::PhaseBody::new(body, phase)),
                )
            }
        });
        let idle_timeout = Duration::from_millis(edge.config.visitor_idle_timeout_ms);
        let clocks = (phase, handshake_timeout, idle_timeout);
        let result = match &edge.tls {
            None => {
                let conn = self
                    .builder
                    .serve_connection_with_upgrades(visitor_conn::wrap(stream, clocks), service);
                watcher.watch(conn.into_owned()).await
            }
            Some(acceptor) => {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => {
                        let conn = self.builder.serve_connection_with_upgrades(
                            visitor_conn::wrap(tls_stream, clocks),
                            service,
                        );
                        watcher.watch(conn.into_owned()).await
                    }
                    Ok(Err(e)) => {
                        debug!(%peer, "TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                }
            }
        };
        if let Err(e) = result {
            debug!(%peer, "connection ended: {e}");
        }
    }

    /// Peeks at the connection's first bytes (waiting for them as long as a request head may
    /// take): when its first request names a developer's host, the connection goes to the
    /// home worker and `None` comes back; otherwise it stays here.
    async fn hand_developers_home(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        to_home: &mpsc::UnboundedSender<Handed>,
    ) -> Option<TcpStream> {
        let wait = Duration::from_millis(self.edge.config.header_read_timeout_ms);
        let mut head = [0u8; PEEK_BYTES];
        let n = match tokio::time::timeout(wait, stream.peek(&mut head)).await {
            Ok(Ok(n)) => n,
            // An error: served here, where hyper meets it as it always did.
            Ok(Err(_)) => return Some(stream),
            // Nothing within a head's time: closed, as the head clock closes a connection that
            // sends nothing (`visitor_conn`).
            Err(_) => {
                debug!(%peer, "nothing sent within header_read_timeout_ms: closed");
                return None;
            }
        };
        if !self.edge.router.names_developer_host(&head[..n]) {
            return Some(stream);
        }
        match stream.into_std() {
            Ok(std_stream) => {
                if let Err(mpsc::error::SendError((std_stream, _))) =
                    to_home.send((std_stream, peer))
                {
                    // The home worker has stopped (the edge is shutting down): serve it here.
                    return TcpStream::from_std(std_stream).ok();
                }
                None
            }
            Err(e) => {
                debug!(%peer, "cannot hand the connection over: {e}");
                None
            }
        }
    }
}
