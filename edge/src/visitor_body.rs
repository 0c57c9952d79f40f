//! The visitor's request body, watched: when it fails (a malformed chunked encoding, a
//! visitor who hangs up mid-upload) or stalls, whoever was waiting on the far side fails too —
//! the local app, production — and would be blamed with a 502. The watch tells the edge that
//! the visitor failed first, so the answer is 400 (or 408 for a stall).
//!
//! The stall clock (`body_read_timeout_ms`) runs only while the far side is asking for more
//! (the body is polled and the visitor has nothing): a far side that is slow to read (back
//! pressure) does not count against the visitor. A visitor that sends a byte now and then,
//! just inside that bound, is held to a minimum rate too (`body_min_bytes_per_sec`, as
//! Apache's mod_reqtimeout MinRate): all the time it has kept the far side waiting may not
//! exceed `body_read_timeout_ms` plus one second per `body_min_bytes_per_sec` bytes it sent.
//! When either runs out, the body fails, which aborts the upstream request: hyper's client
//! drops its production connection, and the tunnel sends an `Abort` frame to the developer's
//! side.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

/// How slowly a visitor may send a request body while the far side waits for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyPace {
    /// Longest wait for the next piece.
    pub idle: Duration,
    /// Each this many bytes received buys one more second of waiting in all; 0: no minimum.
    pub min_bytes_per_sec: u64,
}

impl BodyPace {
    /// The total waiting a visitor that has sent `received` bytes is allowed.
    fn allowance(&self, received: u64) -> Option<Duration> {
        (self.min_bytes_per_sec > 0).then(|| {
            self.idle + Duration::from_secs_f64(received as f64 / self.min_bytes_per_sec as f64)
        })
    }
}

/// Why a visitor's body failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyFailure {
    /// Malformed or cut off: 400.
    Broken(String),
    /// Nothing arrived for `idle` while the far side waited, or too little in all: 408.
    Stalled(String),
}

/// The error a stalled body ends with, as the far side sees it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Stalled(String);

/// A request body that reports its first error on a channel, before passing it on: whoever
/// holds the receiver learns of it before anything the error causes downstream.
pub(crate) struct WatchedBody {
    inner: Incoming,
    failed: Option<oneshot::Sender<BodyFailure>>,
    pace: BodyPace,
    /// Bytes received so far, and the far side's waiting on the visitor so far (not counting
    /// the wait in progress, which started at `waiting_since`).
    received: u64,
    waited: Duration,
    waiting_since: Option<Instant>,
    /// The stall clock; created the first time the visitor keeps the far side waiting.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether the clock is running (the last poll found nothing).
    armed: bool,
    done: bool,
}

/// `body`, and the receiver of why it failed (nothing is sent if it does not). `pace` bounds
/// how long the visitor may keep the far side waiting.
pub(crate) fn watch(
    body: Incoming,
    pace: BodyPace,
) -> (WatchedBody, oneshot::Receiver<BodyFailure>) {
    let (tx, rx) = oneshot::channel();
    (
        WatchedBody {
            inner: body,
            failed: Some(tx),
            pace,
            received: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: None,
            armed: false,
            done: false,
        },
        rx,
    )
}

impl WatchedBody {
    fn report(&mut self, failure: BodyFailure) {
        if let Some(tx) = self.failed.take() {
            let _ = tx.send(failure);
        }
    }
}

impl Body for WatchedBody {
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                this.report(BodyFailure::Broken(e.to_string()));
                this.done = true;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(other) => {
                this.armed = false;
                if let Some(since) = this.waiting_since.take() {
                    this.waited += since.elapsed();
                }
                match &other {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            this.received += data.len() as u64;
                        }
                    }
                    None => this.done = true,
                    Some(Err(_)) => {}
                }
                Poll::Ready(other.map(|r| r.map_err(|e| Box::new(e) as crate::BoxError)))
            }
            Poll::Pending => {
                let now = Instant::now();
                let since = *this.waiting_since.get_or_insert(now);
                // The wait ends at the idle bound, or sooner where the minimum rate says so.
                let mut deadline = since + this.pace.idle;
                let mut too_slow = false;
                if let Some(allowance) = this.pace.allowance(this.received) {
                    let by_rate = since + allowance.saturating_sub(this.waited);
                    if by_rate < deadline {
                        deadline = by_rate;
                        too_slow = true;
                    }
                }
                let timer = match &mut this.timer {
                    Some(t) => {
                        if !this.armed {
                            t.as_mut().reset(deadline);
                        }
                        t
                    }
                    None => this
                        .timer
                        .insert(Box::pin(tokio::time::sleep_until(deadline))),
                };
                this.armed = true;
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let why = if too_slow {
                    format!(
                        "the visitor sent {} bytes of request body in {} ms of waiting, \
                         slower than {} bytes/s",
                        this.received,
                        (this.waited + now.saturating_duration_since(since)).as_millis(),
                        this.pace.min_bytes_per_sec
                    )
                } else {
                    format!(
                        "the visitor sent no request body data for {} ms",
                        this.pace.idle.as_millis()
                    )
                };
                this.report(BodyFailure::Stalled(why.clone()));
                this.done = true;
                Poll::Ready(Some(Err(Box::new(Stalled(why)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why the visitor's body failed, if it has by now.
pub(crate) fn failure(rx: &mut oneshot::Receiver<BodyFailure>) -> Option<BodyFailure> {
    rx.try_recv().ok()
}
