//! Time limits on a visitor's connection that hyper cannot express: a `408 Request Timeout`
//! for an HTTP/1 request head that starts but does not finish in `header_read_timeout_ms`
//! (hyper's own header timeout closes the socket without a word, and a visitor behind a
//! load balancer then sees an unexplained reset), and a silent close of a keep-alive
//! connection idle between requests for `visitor_idle_timeout_ms`.
//!
//! [`VisitorIo`] wraps the socket; [`ConnPhase`] is shared with the connection's service,
//! which tells it when a request head has been parsed ([`ConnPhase::request_started`]) and
//! when its response has been written ([`PhaseBody`] dropped). The clocks only run *between*
//! requests, so a slow upload or a long download is never cut off here. HTTP/2 connections
//! (the `PRI` preface) and upgraded connections (WebSocket after a 101) are left alone: h2
//! has its own keep-alive, and an upgraded stream is a pipe.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

const BETWEEN: u8 = 0;
const IN_REQUEST: u8 = 1;
/// HTTP/2 or upgraded: no clocks from here on.
const OFF: u8 = 2;

const TIMEOUT_RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 62\r\n\r\nDevInProd edge: the request head did not arrive in time (408)\n";

/// Where the connection is in its request cycle; shared by [`VisitorIo`] and the service.
#[derive(Debug, Default)]
pub struct ConnPhase {
    phase: AtomicU8,
    /// The connection's reader, parked while a request was in flight: it must wake to start
    /// the idle clock once the response is out.
    reader: futures_util::task::AtomicWaker,
}

impl ConnPhase {
    /// A request head was parsed: its clock stops.
    pub fn request_started(&self) {
        let _ =
            self.phase
                .compare_exchange(BETWEEN, IN_REQUEST, Ordering::AcqRel, Ordering::Acquire);
    }
    /// The response was written (or abandoned): the connection waits for the next head.
    fn response_finished(&self) {
        if self
            .phase
            .compare_exchange(IN_REQUEST, BETWEEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.reader.wake();
        }
    }
    /// HTTP/2, or upgraded to a raw pipe.
    pub fn turn_off(&self) {
        self.phase.store(OFF, Ordering::Release);
    }
    fn get(&self) -> u8 {
        self.phase.load(Ordering::Acquire)
    }
}

/// A response body that marks the response finished when hyper drops it.
pub struct PhaseBody<B> {
    inner: B,
    phase: Arc<ConnPhase>,
}

impl<B> PhaseBody<B> {
    pub fn new(inner: B, phase: Arc<ConnPhase>) -> Self {
        Self { inner, phase }
    }
}

impl<B> Drop for PhaseBody<B> {
    fn drop(&mut self) {
        self.phase.response_finished();
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for PhaseBody<B> {
    type Data = Bytes;
    type Error = B::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Which clock runs. Both use the connection's one timer, reset rather than created anew
/// for each request (a timer per phase was an allocation and two timer-wheel updates per
/// request; a reset to a later deadline only records it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clock {
    /// Between requests, nothing read yet: the idle clock.
    Idle,
    /// Part of a head has arrived: the head clock.
    Head,
    None,
}

enum State {
    Serving,
    /// Writing the 408; then EOF to hyper.
    Refusing {
        written: usize,
    },
    Closed,
}

/// `io` with its clocks, ready for hyper: `(phase, header timeout, idle timeout)`.
pub fn wrap<T>(
    io: T,
    (phase, header_timeout, idle_timeout): (Arc<ConnPhase>, Duration, Duration),
) -> hyper_util::rt::TokioIo<VisitorIo<T>> {
    hyper_util::rt::TokioIo::new(VisitorIo::new(io, phase, header_timeout, idle_timeout))
}

/// A visitor's socket (TCP or TLS) with the head and idle clocks.
pub struct VisitorIo<T> {
    inner: T,
    phase: Arc<ConnPhase>,
    header_timeout: Duration,
    idle_timeout: Duration,
    clock: Clock,
    /// The running clock's deadline (meaningless while `clock` is `None`).
    timer: Pin<Box<Sleep>>,
    state: State,
    /// The first bytes of the connection, until we know whether it is HTTP/2.
    preface: Vec<u8>,
}

impl<T> VisitorIo<T> {
    pub fn new(
        inner: T,
        phase: Arc<ConnPhase>,
        header_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            inner,
            phase,
            header_timeout,
            idle_timeout,
            // A new connection gets the header time for its first request, as nginx does; if
            // nothing at all arrives by then it is closed without a word.
            clock: Clock::Idle,
            timer: Box::pin(tokio::time::sleep(header_timeout)),
            state: State::Serving,
            preface: Vec::with_capacity(3),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> VisitorIo<T> {
    fn start(&mut self, clock: Clock, limit: Duration) {
        self.timer
            .as_mut()
            .reset(tokio::time::Instant::now() + limit);
        self.clock = clock;
    }

    /// Keeps the clock in step with the phase; `Ready` when a clock has run out.
    fn poll_clock(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.phase.reader.register(cx.waker());
        match self.phase.get() {
            BETWEEN => {
                if self.clock == Clock::None {
                    self.start(Clock::Idle, self.idle_timeout);
                }
            }
            _ => self.clock = Clock::None,
        }
        match self.clock {
            Clock::Idle | Clock::Head => self.timer.as_mut().poll(cx),
            Clock::None => Poll::Pending,
        }
    }

    fn saw_bytes(&mut self, bytes: &[u8]) {
        if self.preface.len() < 3 {
            let take = (3 - self.preface.len()).min(bytes.len());
            self.preface.extend_from_slice(&bytes[..take]);
            if self.preface.len() == 3 && self.preface == b"PRI" {
                self.phase.turn_off();
                self.clock = Clock::None;
                return;
            }
        }
        if self.phase.get() == BETWEEN {
            if let Clock::Idle | Clock::None = self.clock {
                self.start(Clock::Head, self.header_timeout);
            }
        }
    }

    /// Writes the 408 and closes; `Ready` once done (or once the visitor is gone).
    fn poll_refuse(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while let State::Refusing { written } = &mut self.state {
            if *written < TIMEOUT_RESPONSE.len() {
                match ready!(Pin::new(&mut self.inner).poll_write(cx, &TIMEOUT_RESPONSE[*written..]))
                {
                    Ok(0) | Err(_) => self.state = State::Closed,
                    Ok(n) => *written += n,
                }
            } else {
                let _ = ready!(Pin::new(&mut self.inner).poll_shutdown(cx));
                self.state = State::Closed;
            }
        }
        Poll::Ready(())
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for VisitorIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.state {
                State::Closed => return Poll::Ready(Ok(())),
                State::Refusing { .. } => {
                    ready!(this.poll_refuse(cx));
                    continue;
                }
                State::Serving => {}
            }
            if this.poll_clock(cx).is_ready() {
                match std::mem::replace(&mut this.clock, Clock::None) {
                    Clock::Head => {
                        tracing::debug!("visitor's request head timed out: 408");
                        this.state = State::Refusing { written: 0 };
                    }
                    _ => {
                        tracing::debug!("visitor's keep-alive connection idle: closing");
                        this.state = State::Closed;
                    }
                }
                continue;
            }
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let filled = buf.filled();
            if filled.len() > before {
                this.saw_bytes(&filled[before..]);
            }
            return Poll::Ready(Ok(()));
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for VisitorIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.state {
            State::Serving => Pin::new(&mut this.inner).poll_write(cx, data),
            // Whatever hyper says after our 408 (its own error page for a cut-off head) would
            // be a second, contradicting answer.
            _ => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.state {
            State::Serving => Pin::new(&mut this.inner).poll_flush(cx),
            _ => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.state {
            State::Serving => Pin::new(&mut this.inner).poll_shutdown(cx),
            _ => Poll::Ready(Ok(())),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.state {
            State::Serving => Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
            _ => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
