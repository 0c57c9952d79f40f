//! The visitor's request body, watched: when it fails (a malformed chunked encoding, a
//! visitor who hangs up mid-upload) or stalls, whoever was waiting on the far side fails too —
//! the local app, production — and would be blamed with a 502. The watch tells the edge that
//! the visitor failed first, so the answer is 400 (or 408 for a stall).
//!
//! The stall clock (`body_read_timeout_ms`) runs only while the far side is asking for more
//! (the body is polled and the visitor has nothing): a far side that is slow to read (back
//! pressure) does not count against the visitor. When it runs out, the body fails, which
//! aborts the upstream request: hyper's client drops its production connection, and the
//! tunnel sends an `Abort` frame to the developer's side.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Sleep;

/// Why a visitor's body failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyFailure {
    /// Malformed or cut off: 400.
    Broken(String),
    /// Nothing arrived for this long while the far side waited: 408.
    Stalled(Duration),
}

/// The error a stalled body ends with, as the far side sees it.
#[derive(Debug, thiserror::Error)]
#[error("the visitor sent no request body data for {} ms", .0.as_millis())]
pub(crate) struct Stalled(Duration);

/// A request body that reports its first error on a channel, before passing it on: whoever
/// holds the receiver learns of it before anything the error causes downstream.
pub(crate) struct WatchedBody {
    inner: Incoming,
    failed: Option<oneshot::Sender<BodyFailure>>,
    idle: Duration,
    /// The stall clock; created the first time the visitor keeps the far side waiting.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether the clock is running (the last poll found nothing).
    armed: bool,
    done: bool,
}

/// `body`, and the receiver of why it failed (nothing is sent if it does not). `idle` is the
/// longest the visitor may keep the far side waiting for the next frame.
pub(crate) fn watch(
    body: Incoming,
    idle: Duration,
) -> (WatchedBody, oneshot::Receiver<BodyFailure>) {
    let (tx, rx) = oneshot::channel();
    (
        WatchedBody {
            inner: body,
            failed: Some(tx),
            idle,
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
                if other.is_none() {
                    this.done = true;
                }
                Poll::Ready(other.map(|r| r.map_err(|e| Box::new(e) as crate::BoxError)))
            }
            Poll::Pending => {
                let deadline = tokio::time::Instant::now() + this.idle;
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
                let idle = this.idle;
                this.report(BodyFailure::Stalled(idle));
                this.done = true;
                Poll::Ready(Some(Err(Box::new(Stalled(idle)))))
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
