//! The messages carried in frames. Field order is wire format (bincode encodes in order):
//! only ever append fields in a new protocol version, never reorder; only append enum variants.

use crate::ids::{AuthToken, Role, RoutingKey};
use serde::{Deserialize, Serialize};

/// First frame on a connection's control stream, sent by the connecting peer.
/// (The protocol version travels in front of it, outside the bincode body: see
/// [`crate::frame::Frame::Hello`].)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub role: Role,
    /// Required for [`Role::Developer`]; infrastructure peers authenticate with their certificate.
    pub token: Option<AuthToken>,
    /// Free text a human recognises in `token list` and in a "replaced by" message (host name).
    pub client_name: String,
    /// Optional features the peer understands, e.g. `"http"`. Unknown ones are ignored.
    pub capabilities: Vec<String>,
}

/// The relay's acceptance of a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Unique per accepted connection, for logs on both sides.
    pub session: u64,
    /// The developer's routing key (absent for infrastructure peers).
    pub routing_key: Option<RoutingKey>,
    /// Where the developer's copy can be reached, e.g. `http://www-k3yx9q.example.com`.
    pub public_urls: Vec<String>,
    pub limits: Limits,
}

/// Limits the relay applies to this connection, so the peer can size itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_concurrent_streams: u32,
    pub max_frame_len: u32,
    /// The keep-alive interval the relay expects from the peer, in milliseconds.
    pub keep_alive_ms: u32,
}

/// A typed refusal of a [`Hello`] (or of a version). Its layout is frozen across all protocol
/// versions so that any peer can read why it was turned away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub code: RefusalCode,
    /// A sentence for a human, e.g. "token revoked by the operator".
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalCode {
    /// The token is unknown to this relay or malformed.
    BadToken,
    /// The token was revoked.
    Revoked,
    /// The peer speaks a protocol version this relay does not.
    UnsupportedVersion,
    /// The role claimed in Hello is not backed by the certificate presented.
    RoleNotAuthorized,
    /// Anything else wrong with the handshake (unexpected frame, missing token, …).
    BadHandshake,
}

impl RefusalCode {
    /// Whether retrying with the same credentials can ever succeed. A client exits on a
    /// permanent refusal instead of reconnecting forever.
    pub fn is_permanent(self) -> bool {
        !matches!(self, RefusalCode::BadHandshake)
    }
}

/// First frame of every non-control stream between a developer client, the relay and a
/// dbproxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamHeader {
    /// An HTTP request: the head follows in the header itself; then DATA frames, optional
    /// trailers and `End`.
    Http(RequestHead),
    /// A database connection: after this frame, MySQL protocol bytes, untouched, both ways.
    Db(DbStreamHeader),
}

/// Header of a database stream. A developer's client opens one per app connection with
/// `routing_key: None`; the relay forwards it to a dbproxy with the key it authenticated, and
/// answers the client with a [`RouteReply`] first (`Connected`, or why not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbStreamHeader {
    pub routing_key: Option<RoutingKey>,
}

/// First frame of a stream that an infrastructure peer (the edge) opens on its own connection
/// to the relay: which developer the rest of the stream is for. The relay answers with one
/// [`RouteReply`] frame and then splices the stream, bytes untouched, onto a new stream of that
/// developer's connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRequest {
    pub key: RoutingKey,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteReply {
    /// The developer is connected; everything after this frame comes from their client.
    Connected,
    /// No developer holds this routing key right now.
    Offline,
    /// The relay will not route this stream, with a reason for the operator's logs.
    Refused(String),
}

/// HTTP version of a request or response as seen at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HttpVersion {
    Http10,
    Http11,
    Http2,
}

pub use crate::headers::Headers;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestHead {
    pub method: String,
    /// `http` or `https`, as the visitor used it.
    pub scheme: String,
    /// The host the visitor asked for (`Host` or `:authority`).
    pub authority: String,
    /// Path and query, e.g. `/search?q=1`.
    pub path_and_query: String,
    pub version: HttpVersion,
    pub headers: Headers,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseHead {
    pub status: u16,
    pub version: HttpVersion,
    pub headers: Headers,
}

/// Why the sender of an HTTP stream gives up mid-message. The receiver turns it into the
/// matching failure (a truncated response, a reset request) instead of a clean end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Abort {
    pub reason: String,
}
