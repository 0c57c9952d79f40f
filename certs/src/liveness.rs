//! Whether a QUIC peer is still there, known within seconds rather than at the idle timeout.
//!
//! A laptop that loses its network sends nothing more, and its connection lives on until the
//! idle timeout (30 s, long on purpose: a Wi-Fi blip must not end a developer's session). Until
//! then every visitor routed to it waited for nothing (issue 15). So each end sends QUIC
//! keep-alives every second (`keep_alive_interval`), every keep-alive is answered by an ACK,
//! and a [`Liveness`] watches the count of datagrams received on the connection: a peer from
//! which nothing arrived for its `silence_bound` is *silent*. Nobody is routed to a silent peer
//! and a stream waiting for its first byte from it fails ([`GuardedRecv`]) — but the connection
//! stays open, and the peer is routable again as soon as it is heard from.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, ReadBuf};

/// How long a peer may be heard from nothing before it is silent, by default: three missed
/// one-second keep-alives.
pub const DEFAULT_SILENCE_BOUND: Duration = Duration::from_secs(3);
/// The keep-alive interval both ends use, so that a live peer is heard from every second.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// How often the datagram count is read.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// When a connection's peer was last heard from (see the module doc).
pub struct Liveness {
    start: Instant,
    /// Milliseconds after `start` when the received-datagram count last grew.
    heard_at_ms: AtomicU64,
    bound: Duration,
    silent: tokio::sync::Notify,
}

impl Liveness {
    /// Watches `conn` until it closes (one task, sampling four times a second).
    pub fn watch(conn: &quinn::Connection, bound: Duration) -> Arc<Self> {
        let liveness = Arc::new(Self {
            start: Instant::now(),
            heard_at_ms: AtomicU64::new(0),
            bound,
            silent: tokio::sync::Notify::new(),
        });
        let weak = Arc::downgrade(&liveness);
        let conn = conn.clone();
        tokio::spawn(async move {
            let mut received = conn.stats().udp_rx.datagrams;
            let mut was_silent = false;
            loop {
                tokio::select! {
                    _ = conn.closed() => {
                        if let Some(l) = weak.upgrade() {
                            l.silent.notify_waiters();
                        }
                        return;
                    }
                    _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                }
                let Some(l) = weak.upgrade() else { return };
                let now = conn.stats().udp_rx.datagrams;
                if now != received {
                    received = now;
                    l.heard_at_ms.store(l.elapsed_ms(), Ordering::Relaxed);
                }
                let silent = l.is_silent();
                if silent && !was_silent {
                    l.silent.notify_waiters();
                }
                was_silent = silent;
            }
        });
        liveness
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// How long since a datagram last arrived from the peer (as of the last sample).
    pub fn silent_for(&self) -> Duration {
        let heard = self.heard_at_ms.load(Ordering::Relaxed);
        Duration::from_millis(self.elapsed_ms().saturating_sub(heard))
    }

    /// Nothing arrived from the peer for longer than the bound.
    pub fn is_silent(&self) -> bool {
        self.silent_for() > self.bound
    }

    /// Completes once the peer is silent (at once if it is already).
    pub async fn until_silent(&self) {
        loop {
            let notified = self.silent.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_silent() {
                return;
            }
            notified.await;
            if self.is_silent() {
                return;
            }
        }
    }
}

/// A stream's receiving side that fails, until its first byte, when the peer falls silent:
/// a request waiting for a response head from a peer that is gone gets an answer in seconds.
/// Once data flowed it reads like the stream itself (a long download may outlive a blip).
pub struct GuardedRecv<R> {
    inner: R,
    silent: Option<Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
}

/// The error a [`GuardedRecv`] fails with; [`is_silence`] recognises it.
const SILENCE: &str = "the peer went silent (no keep-alive answered)";

/// Whether `e` is the error of a [`GuardedRecv`] whose peer went silent.
pub fn is_silence(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::TimedOut && e.to_string() == SILENCE
}

impl<R> GuardedRecv<R> {
    pub fn new(inner: R, liveness: Arc<Liveness>) -> Self {
        Self {
            inner,
            silent: Some(Box::pin(async move { liveness.until_silent().await })),
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for GuardedRecv<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.silent = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let went_silent = this
                    .silent
                    .as_mut()
                    .is_some_and(|silent| silent.as_mut().poll(cx).is_ready());
                if !went_silent {
                    return Poll::Pending;
                }
                this.silent = None;
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    SILENCE,
                )))
            }
        }
    }
}
