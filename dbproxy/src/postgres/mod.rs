//! # The PostgreSQL wire protocol (frontend/backend protocol 3.0): the codec, no I/O
//!
//! The first piece of PostgreSQL support (issue 16). Bytes in, typed messages out; typed
//! messages to bytes. Nothing here reads a socket or a clock: the async code that will serve
//! apps moves bytes between sockets and these decoders and builders, so every rule below is
//! unit-tested byte for byte. PostgreSQL is not served yet; this module is only the codec.
//!
//! In the order a connection uses it:
//! - [`startup`]: the app's first packets, which have no type byte — SSLRequest and
//!   GSSENCRequest (answered [`backend::encryption_refused`]), CancelRequest, StartupMessage —
//!   and protocol-version negotiation (3.x is negotiated down to 3.0).
//!   [`startup::StartupDecoder`] yields them one by one.
//! - [`frontend`]: what the app sends after start-up (Query, Parse, Bind, Execute, Sync, the
//!   password and SASL answers, COPY data, …): [`frontend::FrontendDecoder`] yields one
//!   [`frontend::FrontendMessage`] per call.
//! - [`backend`]: what the dbproxy writes to the app (authentication requests,
//!   ParameterStatus, ReadyForQuery, RowDescription, DataRow, …), appended to a `BytesMut`;
//!   ErrorResponse and NoticeResponse are written by [`PgError`].
//! - [`upstream`]: what a real PostgreSQL server sends the dbproxy:
//!   [`upstream::BackendFrameDecoder`] cuts frames with a length bound, and
//!   [`upstream::BackendMessage::parse`] reads the ones the dbproxy must look into.
//!
//! Every decoder is incremental over a `BytesMut` the caller fills: `Ok(None)` means "not
//! complete yet, read more"; a complete message is removed from the buffer; an error means
//! the stream can no longer be trusted (answer with [`PgWireError::to_pg_error`] and close,
//! as the server does). A length is checked against its limit as soon as its 4 bytes are
//! there, before anything waits for (or allocates) the body.
//!
//! ## Why not the `postgres-protocol` crate
//!
//! It is the client side's codec (tokio-postgres): `message::frontend` writes what a client
//! sends and `message::backend` parses what a server sends — the opposite of what the app
//! side needs, where the dbproxy is the server. For the upstream side its parser does not fit
//! either: it reserves whatever capacity a length field claims (up to 4 GiB) before the bytes
//! arrive, has no length limit, reads BackendKeyData as a fixed 4-byte key (protocol 3.2 keys
//! are up to 256 bytes), does not know NegotiateProtocolVersion, and reports `io::Error`s
//! that do not say which side failed. So the codec is written here (the protocol is small and
//! stable), and `postgres-protocol` is a dev-dependency: the tests check this codec against
//! it in both directions, an implementation written by other people.

pub mod backend;
mod body;
pub mod frontend;
mod pg_error;
pub mod startup;
pub mod upstream;

#[cfg(test)]
mod tests;

pub use pg_error::{PgError, Severity, SqlState};

use std::fmt;

/// Which peer sent the bytes that could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// The developer's app (the dbproxy is its server).
    App,
    /// The real PostgreSQL server upstream (the dbproxy is its client).
    Server,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Peer::App => "the app",
            Peer::Server => "the PostgreSQL server",
        })
    }
}

/// How a value is encoded on the wire: a format code of a Bind, FunctionCall or
/// RowDescription. Only 0 and 1 exist; anything else is refused when decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Text,
    Binary,
}

impl Format {
    pub fn code(self) -> i16 {
        match self {
            Format::Text => 0,
            Format::Binary => 1,
        }
    }

    pub fn from_code(code: i16) -> Option<Self> {
        match code {
            0 => Some(Format::Text),
            1 => Some(Format::Binary),
            _ => None,
        }
    }
}

/// An error from the codec: which peer sent what, or what the dbproxy could not encode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PgWireError {
    #[error("{from} sent a message of unknown type {}", describe_tag(*.tag))]
    UnknownMessageType { from: Peer, tag: u8 },
    #[error(
        "{from} sent a {message} whose length field says {length}; the least possible is {minimum}"
    )]
    LengthTooShort {
        from: Peer,
        message: &'static str,
        length: i64,
        minimum: usize,
    },
    #[error("{from} sent a {message} of {length} bytes; the limit is {limit} bytes")]
    TooLong {
        from: Peer,
        message: &'static str,
        length: u64,
        limit: usize,
    },
    #[error("{from} sent a malformed {message}: {problem}")]
    Malformed {
        from: Peer,
        message: &'static str,
        problem: Problem,
    },
    #[error("the app asked for protocol version {major}.{minor}; the dbproxy speaks 3.0 (and takes any 3.x, negotiating it down)")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("the app began TLS at once (sslnegotiation=direct); the dbproxy takes no TLS from apps: connect with sslmode=disable or prefer")]
    DirectTls,
    #[error("the app sent a second {request}")]
    RepeatedRequest { request: &'static str },
    #[error("the app's start-up was already complete (a caller error: the frontend decoder reads from here on)")]
    StartupComplete,
    #[error("the dbproxy cannot encode a {message}: {problem}")]
    Unencodable {
        message: &'static str,
        problem: String,
    },
}

/// What is wrong inside a message whose length was fine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("it ends before its {field}")]
    EndsEarly { field: &'static str },
    #[error("its {field} has no terminating NUL byte")]
    MissingNul { field: &'static str },
    #[error("its {field} is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    #[error("{count} bytes follow its last field")]
    TrailingBytes { count: usize },
    #[error("its {field} is {value}, which is not allowed there")]
    InvalidValue { field: &'static str, value: i64 },
    #[error("it has {count} {what}; the limit is {limit}")]
    TooMany {
        what: &'static str,
        count: usize,
        limit: usize,
    },
    #[error("it has {formats} parameter format codes for {params} parameters (0, 1 or one each)")]
    FormatCountMismatch { formats: usize, params: usize },
    #[error("its parameter {name:?} appears twice")]
    DuplicateParameter { name: String },
    #[error("it has no {field}")]
    Missing { field: &'static str },
}

impl PgWireError {
    /// The FATAL error to send the app before closing its connection, as the server does on
    /// a protocol violation (SQLSTATE 08P01), or on a protocol version it does not speak
    /// (0A000). Meaningful for errors the app caused.
    pub fn to_pg_error(&self) -> PgError {
        let code = match self {
            PgWireError::UnsupportedProtocol { .. } | PgWireError::DirectTls => {
                SqlState::FEATURE_NOT_SUPPORTED
            }
            _ => SqlState::PROTOCOL_VIOLATION,
        };
        PgError::new(Severity::Fatal, code, self.to_string())
    }
}

/// `'Q' (0x51)` for a printable type byte, `0x00` otherwise.
fn describe_tag(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}' (0x{tag:02x})", tag as char)
    } else {
        format!("0x{tag:02x}")
    }
}
