//! # The DevInProd wire protocol
//!
//! **The declarations in this crate are the wire format.** Anything that talks to a relay —
//! the developer's client, an edge, a dbproxy — speaks exactly this; nothing here opens a socket.
//!
//! ## Connections
//! QUIC with ALPN [`ALPN`] (`devinprod/1`), TLS 1.3 only. The first bidirectional stream a
//! connecting peer opens is its **control stream**: it sends [`Frame::Hello`] (protocol version
//! in front, then role, token for developers, a name, capabilities) and the relay answers
//! [`Frame::Welcome`] or [`Frame::Refusal`] and, after a refusal, closes the connection with
//! [`codes::CLOSE_REFUSED`]. The relay ends a session with a QUIC CONNECTION_CLOSE whose code is
//! one of [`codes`] and whose reason is a sentence for a human (`CLOSE_REPLACED`,
//! `CLOSE_REVOKED`: do not reconnect; `CLOSE_SHUTTING_DOWN`: reconnect later).
//!
//! ## Streams
//! * edge → relay: [`Frame::Route`] naming the developer, the relay answers one
//!   [`Frame::RouteReply`], then splices the rest of the stream untouched onto a new stream of
//!   the developer's connection.
//! * relay → developer: [`Frame::StreamHeader`] (`Http(RequestHead)`), then the request body as
//!   [`Frame::Data`], optional [`Frame::Trailers`], [`Frame::End`]. The response comes back as
//!   [`Frame::ResponseHead`], DATA, optional trailers, End. A sender that gives up sends
//!   [`Frame::Abort`] (or just stops: a stream that ends without `End` is a failed message).
//!   After a `101 Switching Protocols` response head and the request's `End`, both directions
//!   are a raw byte pipe (WebSocket).
//! * developer → relay: [`Frame::StreamHeader`] (`Db`, no key) for each app database
//!   connection; the relay answers [`Frame::RouteReply`] and splices the stream to a dbproxy,
//!   whose stream starts with `StreamHeader::Db` carrying the developer's authenticated key.
//!   After the header: MySQL protocol bytes, untouched.
//!
//! ## Compatibility rules
//! * Frame layout ([`frame`]) and the [`Refusal`] message are frozen forever, so any peer can
//!   read why it was refused.
//! * Within one [`PROTOCOL_VERSION`]: new frame kinds, new enum variants *appended* at the end,
//!   nothing else. A receiver that meets an unknown kind fails that stream, not the connection.
//! * Anything else (a new field, a reordered field, a changed meaning) bumps the version. The
//!   relay refuses a Hello of another version with `RefusalCode::UnsupportedVersion`.
//! * `tests::golden_*` pin the bytes of every frame: if one fails, you changed the wire format.
//!
//! ## Helpers every crate uses
//! Not wire format, but needed by every peer: [`printable`] escapes a peer's string before it
//! reaches a terminal or a log, and [`Secret`] keeps a password or key out of `Debug`.

#![forbid(unsafe_code)]

pub mod codes;
pub mod frame;
pub mod handshake;
pub mod headers;
pub mod http;
pub mod ids;
pub mod messages;
pub mod printable;
pub mod seam;
pub mod secret;

pub use frame::{
    read_frame, read_required, write_data, write_frame, Frame, FrameError, MAX_FRAME_LEN,
    PROTOCOL_VERSION,
};
pub use handshake::{handshake, HandshakeError};
pub use ids::{AuthToken, IdError, Role, RoutingKey};
pub use messages::*;
pub use printable::printable;
pub use seam::{DbStreamHandler, OpenError, OpenFuture, StreamOpener, TunnelStream};
pub use secret::Secret;

/// The ALPN protocol id of every DevInProd QUIC connection.
pub const ALPN: &[u8] = b"devinprod/1";

#[cfg(test)]
mod tests;
