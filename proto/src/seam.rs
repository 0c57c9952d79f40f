//! The seam between the edge and the relay: "open a stream to routing key K".
//!
//! The relay implements it directly on its registry (the all-in-one `devinprod up` pays no
//! loopback QUIC hop); a separate edge process implements it with a QUIC connection to the
//! relay. The edge does not know which one it has.
//!
//! A [`TunnelStream`] speaks the HTTP framing of [`crate::frame`] end to end with the
//! developer's client: an opener through a remote relay has already consumed the relay's
//! [`crate::RouteReply`], so "offline" is an [`OpenError`] before the request reaches anyone.
//!
//! The request's first frames (its head, and `End` when it has no body) are handed to
//! [`StreamOpener::open`] as a *prelude*: a remote opener sends them in the same packet as its
//! `Route` frame instead of waiting a round trip for the relay's answer first. A relay that
//! answers "offline" discards them; the request's body has not been read yet, so the edge can
//! still send the whole request to production.

use crate::ids::RoutingKey;
use std::future::Future;
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncWrite};

/// The two halves of a bidirectional stream to a developer's client.
pub struct TunnelStream {
    pub send: Box<dyn AsyncWrite + Send + Unpin>,
    pub recv: Box<dyn AsyncRead + Send + Unpin>,
}

/// Why a stream could not be opened; each variant maps to what the visitor sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// No developer with this routing key is connected (the visitor gets a 502 that says so).
    #[error("no developer is connected for routing key {0}")]
    DeveloperOffline(RoutingKey),
    /// The relay could not be reached or failed (502, operator's problem).
    #[error("relay unavailable: {0}")]
    RelayUnavailable(String),
    /// The developer's connection exists but refused or failed to open a stream (e.g. it is
    /// at its concurrent stream limit and went away while waiting).
    #[error("developer's connection failed: {0}")]
    DeveloperConnectionFailed(String),
}

pub type OpenFuture<'a> =
    Pin<Box<dyn Future<Output = Result<TunnelStream, OpenError>> + Send + 'a>>;

/// Opens one stream per HTTP request toward the developer holding `key`, and sends `prelude`
/// (encoded frames) on it first.
pub trait StreamOpener: Send + Sync + 'static {
    fn open(&self, key: RoutingKey, prelude: Vec<u8>) -> OpenFuture<'_>;
}

/// Where the relay hands a developer's database stream: the in-process dbproxy of
/// `devinprod up --mysql`, or (in a separate relay) the connection to a dbproxy peer. `key` is
/// the developer's routing key as the relay authenticated it, never what the client claims.
pub trait DbStreamHandler: Send + Sync + 'static {
    fn handle(self: std::sync::Arc<Self>, key: RoutingKey, stream: TunnelStream);
}
