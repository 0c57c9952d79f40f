//! Keep-alive HTTP/1.1 connections to production, one pool per edge worker thread.
//!
//! Why not hyper-util's pooled client (which the edge used before): for every response with a
//! body it spawns a task that waits for the connection to become idle again, and its checkout
//! hashes the pool key and locks a pool shared by every thread. Here the response body hands
//! its connection back when it has been read to the end ([`PooledBody`]), with no task and no
//! wait; a connection whose dispatcher has not yet seen the end is skipped at checkout until
//! it is ready. Each worker thread has its own pool, so a connection's task always runs on
//! the thread that uses it (no cross-thread wake-up per request), as nginx's workers each
//! keep their own upstream connections.

use crate::BoxBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tracing::debug;

/// An idle connection older than this is closed rather than reused: servers close theirs
/// after a while (nginx: 75 s, Node: 5 s), and a request sent just as they do would fail.
/// hyper-util's default was 90 s; a reused connection that turns out closed is retried anyway.
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// A connection handed back that has not become ready within this is dropped (the server is
/// still sending a body nobody reads, say).
const READY_WAIT: Duration = Duration::from_secs(1);
/// Idle connections kept at most per worker; more are closed when handed back.
const MAX_IDLE: usize = 256;
/// A new connection to production must be established within this: an address that drops
/// packets would otherwise hold the visitor for the kernel's SYN retries (about two minutes).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why production could not be asked.
#[derive(Debug)]
pub enum PoolError {
    /// No connection: nothing listens there.
    Connect(std::io::Error),
    /// The connection failed during the exchange.
    Exchange(hyper::Error),
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolError::Connect(e) => write!(f, "cannot connect to production: {e}"),
            PoolError::Exchange(e) => {
                write!(f, "{e}")?;
                let mut source = std::error::Error::source(e);
                while let Some(s) = source {
                    write!(f, ": {s}")?;
                    source = s.source();
                }
                Ok(())
            }
        }
    }
}

struct Idle {
    conn: SendRequest<BoxBody>,
    since: Instant,
}

/// The idle connections of one worker to one production address.
pub struct ProductionPool {
    /// `HOST:PORT` to connect to.
    addr: String,
    idle: Mutex<Vec<Idle>>,
}

impl ProductionPool {
    pub fn new(addr: String) -> Arc<Self> {
        Arc::new(Self {
            addr,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Sends `req` (its URI in origin form, its `Host` set) and returns the response, whose
    /// body gives the connection back to the pool once read to the end.
    pub async fn send(
        self: &Arc<Self>,
        mut req: http::Request<BoxBody>,
    ) -> Result<http::Response<PooledBody>, PoolError> {
        if let Some(mut conn) = self.checkout() {
            match conn.try_send_request(req).await {
                Ok(resp) => return Ok(self.lend(resp, conn)),
                Err(mut e) => match e.take_message() {
                    // Not started: production had closed the idle connection. Once more, on a
                    // new one (a request that started is never sent twice).
                    Some(unsent) => {
                        debug!("idle connection to production was closed: {}", e.error());
                        req = unsent;
                    }
                    None => return Err(PoolError::Exchange(e.into_error())),
                },
            }
        }
        let mut conn = self.connect().await?;
        let resp = conn.send_request(req).await.map_err(PoolError::Exchange)?;
        Ok(self.lend(resp, conn))
    }

    fn lend(
        self: &Arc<Self>,
        resp: http::Response<Incoming>,
        conn: SendRequest<BoxBody>,
    ) -> http::Response<PooledBody> {
        resp.map(|inner| PooledBody {
            inner,
            lease: Some((conn, self.clone())),
            ended: false,
        })
    }

    /// The most recently used connection that is ready; stale, closed and overdue ones are
    /// dropped on the way, ones not ready yet (just handed back) are kept.
    fn checkout(&self) -> Option<SendRequest<BoxBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let entry = &idle[i];
            let age = now.saturating_duration_since(entry.since);
            if entry.conn.is_ready() && age < IDLE_TIMEOUT {
                return Some(idle.swap_remove(i).conn);
            }
            if entry.conn.is_closed() || age >= READY_WAIT {
                idle.swap_remove(i);
            }
        }
        None
    }

    fn give_back(&self, conn: SendRequest<BoxBody>) {
        if conn.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<SendRequest<BoxBody>, PoolError> {
        let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr)).await
        {
            Ok(connected) => connected.map_err(PoolError::Connect)?,
            Err(_) => {
                return Err(PoolError::Connect(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
                )))
            }
        };
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(PoolError::Exchange)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!("connection to production ended: {e}");
            }
        });
        Ok(sender)
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.lock().unwrap().len()
    }
}

/// A production response's body: hands its connection back to the pool once it has been
/// read to the end; dropped before that, the connection goes with it (hyper closes it).
pub struct PooledBody {
    inner: Incoming,
    lease: Option<(SendRequest<BoxBody>, Arc<ProductionPool>)>,
    ended: bool,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((conn, pool)) = self.lease.take() {
            pool.give_back(conn);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.ended = true,
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.ended = true,
            Poll::Ready(Some(Err(_))) => {
                this.lease = None;
            }
            _ => {}
        }
        if this.ended {
            this.release();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body with nothing in it (HEAD, 204, 304) is never polled.
        if self.ended || self.inner.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers every request on a connection with `body`, counting connections.
    async fn server(
        body: &'static str,
        close_after: Option<usize>,
    ) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut served = 0;
                    let mut pending = Vec::new();
                    loop {
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            pending.drain(..end + 4);
                            let resp = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if s.write_all(resp.as_bytes()).await.is_err() {
                                return;
                            }
                            served += 1;
                            if close_after == Some(served) {
                                return;
                            }
                        }
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn get() -> http::Request<BoxBody> {
        http::Request::builder()
            .uri("/")
            .header("host", "shop.example")
            .body(crate::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn a_connection_read_to_the_end_is_reused() {
        let (addr, accepted) = server("hello", None).await;
        let pool = ProductionPool::new(addr);
        for _ in 0..5 {
            let resp = pool.send(get()).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"hello");
            // Let the connection's task see the end of the exchange.
            tokio::task::yield_now().await;
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_unread_takes_its_connection_with_it() {
        let (addr, accepted) = server("hello", None).await;
        let pool = ProductionPool::new(addr);
        let resp = pool.send(get()).await.unwrap();
        drop(resp);
        assert_eq!(pool.idle_count(), 0);
        let resp = pool.send(get()).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_production_closed_while_idle_is_replaced_without_an_error() {
        // Production closes each connection after one answer: every later request finds
        // its pooled connection closed and must go out on a new one, never fail.
        let (addr, accepted) = server("hello", Some(1)).await;
        let pool = ProductionPool::new(addr);
        for _ in 0..4 {
            let resp = pool.send(get()).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"hello");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pool = ProductionPool::new(format!("127.0.0.1:{port}"));
        match pool.send(get()).await {
            Err(PoolError::Connect(_)) => {}
            other => panic!("expected a connect error, got {:?}", other.map(|_| ())),
        }
    }
}
