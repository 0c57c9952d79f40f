//! The visitor's request body, watched: when it fails (a malformed chunked encoding, a
//! visitor who hangs up mid-upload), whoever was waiting on the far side fails too — the
//! local app, production — and would be blamed with a 502. The watch tells the edge that the
//! visitor failed first, so the answer is 400.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::oneshot;

/// A request body that reports its first error on a channel, before passing it on: whoever
/// holds the receiver learns of it before anything the error causes downstream.
pub(crate) struct WatchedBody {
    inner: Incoming,
    failed: Option<oneshot::Sender<String>>,
}

/// `body`, and the receiver of why it failed (nothing is sent if it does not).
pub(crate) fn watch(body: Incoming) -> (WatchedBody, oneshot::Receiver<String>) {
    let (tx, rx) = oneshot::channel();
    (
        WatchedBody {
            inner: body,
            failed: Some(tx),
        },
        rx,
    )
}

impl Body for WatchedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = &polled {
            if let Some(tx) = self.failed.take() {
                let _ = tx.send(e.to_string());
            }
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

/// Why the visitor's body failed, if it has by now.
pub(crate) fn failure(rx: &mut oneshot::Receiver<String>) -> Option<String> {
    rx.try_recv().ok()
}
