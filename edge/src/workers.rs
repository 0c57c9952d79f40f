//! The edge's worker threads (issue 18): visitor connections on every core.
//!
//! With `workers` above 1 (the default on a host with several cores), that many threads accept
//! from the same listening socket, each running its visitor connections on a single-threaded
//! runtime with production connections of its own ([`Worker`]): a request to production never
//! leaves the thread that accepted it, and the production path uses every core, as nginx's
//! worker processes do. The kernel wakes every worker for a new connection and the first to
//! run takes it, so a burst of connections can land on one worker: a worker that serves at
//! least two more connections than another hands a connection it accepts to the one with the
//! fewest (through that worker's inbox, before anything is read from it).
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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

/// How much of a connection's first bytes is peeked for its Host header.
const PEEK_BYTES: usize = 2048;

/// The workers together: each one's inbox for connections handed to it, and how many visitor
/// connections each serves.
struct Crew {
    inboxes: Vec<mpsc::UnboundedSender<Handed>>,
    live: Vec<AtomicUsize>,
}

/// Why a connection was handed to another worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    /// The accepting worker had more connections than another: served as if accepted there.
    Balance,
    /// Its first request names a developer's host: served on the home worker, as is.
    Developer,
}

/// A connection on its way to another worker, nothing read from it yet, already counted there.
struct Handed {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    count: Counted,
    reason: Reason,
}

/// One connection in a worker's count, until dropped.
struct Counted {
    crew: Arc<Crew>,
    worker: usize,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.crew.live[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Crew {
    fn count(self: &Arc<Self>, worker: usize) -> Counted {
        self.live[worker].fetch_add(1, Ordering::Relaxed);
        Counted {
            crew: self.clone(),
            worker,
        }
    }

    /// The worker a connection accepted by `me` should go to instead: one with at least two
    /// fewer connections. The kernel wakes every worker for a new connection and whichever
    /// runs first accepts it, so a burst (a load balancer's or a browser's connections opened
    /// at once) could land on one worker while the other cores idle (measured: one worker
    /// with twice the CPU of the other, 9–13% of the machine idle).
    fn less_busy_than(&self, me: usize) -> Option<usize> {
        let mine = self.live[me].load(Ordering::Relaxed);
        let (least, fewest) = self
            .live
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .enumerate()
            .min_by_key(|&(_, n)| n)?;
        (fewest + 1 < mine).then_some(least)
    }

    /// Sends `stream` to `worker`, counted there; gives it back if that worker has stopped.
    fn hand(
        self: &Arc<Self>,
        worker: usize,
        stream: TcpStream,
        peer: SocketAddr,
        reason: Reason,
    ) -> Result<(), Option<TcpStream>> {
        let stream = stream.into_std().map_err(|e| {
            debug!(%peer, "cannot hand the connection over: {e}");
            None
        })?;
        let handed = Handed {
            stream,
            peer,
            count: self.count(worker),
            reason,
        };
        self.inboxes[worker]
            .send(handed)
            .map_err(|mpsc::error::SendError(h)| TcpStream::from_std(h.stream).ok())
    }
}

pub(crate) async fn run(
    edge: Arc<Edge>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let (stop, stopped) = watch::channel(false);
    let wanted = edge.config.worker_threads();
    let (inboxes, mut outboxes): (Vec<_>, Vec<_>) =
        (0..wanted).map(|_| mpsc::unbounded_channel()).unzip();
    let crew = Arc::new(Crew {
        inboxes,
        live: (0..wanted).map(|_| AtomicUsize::new(0)).collect(),
    });
    let home_inbox = outboxes.remove(0);
    let mut finished = Vec::new();
    for (index, inbox) in (1..wanted).zip(outboxes) {
        match spawn_worker(&edge, index, &listener, stopped.clone(), &crew, inbox) {
            Ok(done) => finished.push(done),
            Err(e) => {
                // A worker that never started takes no connection: it looks busy for good.
                crew.live[index].store(usize::MAX / 2, Ordering::Relaxed);
                warn!("cannot start edge worker thread {index}: {e}");
            }
        }
    }
    let crew = (!finished.is_empty()).then_some(crew);
    let serving = serve(edge.clone(), listener, stopped, 0, crew, home_inbox);
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
/// duplicate of `listener`'s socket, and those handed to it. The receiver resolves when the
/// thread is done.
fn spawn_worker(
    edge: &Arc<Edge>,
    index: usize,
    listener: &TcpListener,
    stopped: watch::Receiver<bool>,
    crew: &Arc<Crew>,
    inbox: mpsc::UnboundedReceiver<Handed>,
) -> std::io::Result<oneshot::Receiver<()>> {
    let socket: std::net::TcpListener = socket2::SockRef::from(listener).try_clone()?.into();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (done, finished) = oneshot::channel();
    let (edge, crew) = (edge.clone(), crew.clone());
    // `edge-PORT-wN`: which listener, which worker (a thread name holds 15 bytes).
    let port = listener.local_addr().map_or(0, |a| a.port());
    std::thread::Builder::new()
        .name(format!("edge-{port}-w{index}"))
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(socket) {
                    Ok(listener) => serve(edge, listener, stopped, index, Some(crew), inbox).await,
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
    /// This worker's number (0: the home worker).
    index: usize,
    /// The other workers, when there are any.
    crew: Option<Arc<Crew>>,
}

/// One worker's accept loop, until `stopped` turns true; then in-flight requests get
/// `shutdown_grace_ms` to finish.
async fn serve(
    edge: Arc<Edge>,
    listener: TcpListener,
    mut stopped: watch::Receiver<bool>,
    index: usize,
    crew: Option<Arc<Crew>>,
    mut inbox: mpsc::UnboundedReceiver<Handed>,
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
    if index == 0 {
        info!(addr = ?listening, workers = crew.as_ref().map_or(1, |c| c.live.len()), "edge listening");
    }
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let shared = Arc::new(Shared {
        edge,
        worker,
        builder,
        listening,
        index,
        crew,
    });
    loop {
        let (stream, peer, count, reason) = tokio::select! {
            () = until_stopped(&mut stopped) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    match &shared.crew {
                        None => (stream, peer, None, None),
                        Some(crew) => match crew.less_busy_than(index) {
                            Some(other) => match crew.hand(other, stream, peer, Reason::Balance) {
                                Ok(()) => continue,
                                Err(Some(stream)) => (stream, peer, Some(crew.count(index)), None),
                                Err(None) => continue,
                            },
                            None => (stream, peer, Some(crew.count(index)), None),
                        },
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(handed) = inbox.recv() => match TcpStream::from_std(handed.stream) {
                Ok(stream) => (stream, handed.peer, Some(handed.count), Some(handed.reason)),
                Err(e) => {
                    debug!(peer = %handed.peer, "a handed-over connection could not be registered: {e}");
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let watcher = graceful.watcher();
        // The TLS handshake (or the peek) runs in the connection's own task: a slow visitor
        // does not hold up the accept loop.
        tokio::spawn(async move {
            shared
                .connection(stream, peer, count, reason, watcher)
                .await
        });
    }
    let grace = Duration::from_millis(shared.edge.config.shutdown_grace_ms);
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
}

impl Shared {
    /// Serves one visitor connection; `_count` keeps it in this worker's count until it ends.
    async fn connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        _count: Option<Counted>,
        reason: Option<Reason>,
        watcher: hyper_util::server::graceful::Watcher,
    ) {
        let edge = &self.edge;
        let handshake_timeout = Duration::from_millis(edge.config.header_read_timeout_ms);
        let stream = match (&self.crew, &edge.tls) {
            (Some(crew), None) if self.index != 0 && reason != Some(Reason::Developer) => {
                match self.hand_developers_home(crew, stream, peer).await {
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
        crew: &Arc<Crew>,
        stream: TcpStream,
        peer: SocketAddr,
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
        // Served here only if the home worker has stopped (the edge is shutting down).
        crew.hand(0, stream, peer, Reason::Developer)
            .err()
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crew(live: &[usize]) -> Arc<Crew> {
        Arc::new(Crew {
            inboxes: live.iter().map(|_| mpsc::unbounded_channel().0).collect(),
            live: live.iter().map(|&n| AtomicUsize::new(n)).collect(),
        })
    }

    #[test]
    fn a_worker_two_connections_ahead_hands_new_ones_to_the_least_busy() {
        assert_eq!(crew(&[0, 0]).less_busy_than(0), None);
        assert_eq!(crew(&[1, 0]).less_busy_than(0), None);
        assert_eq!(crew(&[2, 0]).less_busy_than(0), Some(1));
        assert_eq!(crew(&[5, 3, 1]).less_busy_than(1), Some(2));
        assert_eq!(crew(&[5, 3, 1]).less_busy_than(2), None);
        // A worker that never started looks busy for good: never chosen.
        assert_eq!(crew(&[9, usize::MAX / 2]).less_busy_than(0), None);
    }

    #[test]
    fn a_count_lasts_as_long_as_its_connection() {
        let c = crew(&[0, 0]);
        let first = c.count(1);
        let second = c.count(1);
        assert_eq!(c.live[1].load(Ordering::Relaxed), 2);
        drop(first);
        assert_eq!(c.live[1].load(Ordering::Relaxed), 1);
        drop(second);
        assert_eq!(c.live[1].load(Ordering::Relaxed), 0);
    }
}
