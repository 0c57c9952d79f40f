//! The first packets of an app's connection. They have no type byte: an Int32 length
//! (counting itself), an Int32 code, then a body. The code tells them apart: SSLRequest and
//! GSSENCRequest ask for encryption (the dbproxy answers 'N', and the app goes on in the
//! clear), CancelRequest asks to cancel another connection's query (and is the whole
//! connection), anything else is a StartupMessage whose code is the protocol version.
//!
//! The server's rules are kept: at most [`MAX_STARTUP_PACKET_LENGTH`] bytes after the length
//! word, each encryption request at most once, major version 3 only. A newer 3.x minor version (3.2 is
//! PostgreSQL 18's) and `_pq_.` protocol options are negotiated down with
//! NegotiateProtocolVersion ([`StartupMessage::negotiation`]), as a server that speaks 3.0
//! does.

use super::body::Body;
use super::{Peer, PgWireError, Problem};
use bytes::{Buf, Bytes, BytesMut};
use std::fmt;

/// The most bytes a start-up packet may hold after its length word: the server's own limit
/// (`MAX_STARTUP_PACKET_LENGTH` in its `pqcomm.h`, checked against the length minus 4).
pub const MAX_STARTUP_PACKET_LENGTH: usize = 10_000;
/// The length word itself.
const LENGTH_WORD: usize = 4;
/// The most parameters a StartupMessage may carry. The server has no count of its own (only
/// the packet length); drivers send about ten.
pub const MAX_STARTUP_PARAMETERS: usize = 64;
/// The code of an SSLRequest (1234 << 16 | 5679).
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
/// The code of a GSSENCRequest (1234 << 16 | 5680).
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// The code of a CancelRequest (1234 << 16 | 5678).
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
/// The shortest and longest cancel keys: 4 bytes in protocol 3.0, up to 256 since 3.2.
pub const MIN_CANCEL_KEY_LENGTH: usize = 4;
pub const MAX_CANCEL_KEY_LENGTH: usize = 256;
/// A packet's length field and its code.
const HEADER_LENGTH: usize = 8;
/// The first byte of a TLS ClientHello (a handshake record): what an app that negotiates TLS
/// directly (PostgreSQL 17's `sslnegotiation=direct`) sends instead of an SSLRequest.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// Start-up parameters with this prefix are protocol options, not settings.
const PROTOCOL_OPTION_PREFIX: &str = "_pq_.";

/// A protocol version: major in the high 16 bits of the code, minor in the low ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProtocolVersion {
    pub major: u16,
    pub minor: u16,
}

impl ProtocolVersion {
    /// The version the dbproxy speaks.
    pub const V3_0: ProtocolVersion = ProtocolVersion { major: 3, minor: 0 };

    pub fn from_code(code: u32) -> Self {
        Self {
            major: (code >> 16) as u16,
            minor: (code & 0xFFFF) as u16,
        }
    }

    pub fn code(self) -> u32 {
        (u32::from(self.major) << 16) | u32::from(self.minor)
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// One start-up packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// Answer [`super::backend::encryption_refused`]; the app then sends its next packet.
    SslRequest,
    /// Answer [`super::backend::encryption_refused`]; the app then sends its next packet.
    GssEncRequest,
    /// The whole connection: cancel that connection's query, send nothing, close.
    Cancel(CancelRequest),
    /// Answer with authentication; the frontend decoder reads what follows.
    Startup(StartupMessage),
}

/// A request to cancel the query running on the connection that was given this process id
/// and secret key (in BackendKeyData).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelRequest {
    pub process_id: u32,
    /// 4 bytes in protocol 3.0; 4 to 256 bytes since 3.2.
    pub secret_key: Bytes,
}

/// The StartupMessage: the protocol version the app asked for and its parameters in the
/// order sent. It always names a user (the decoder refuses one that does not, as the server
/// does) and never names a parameter twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    pub version: ProtocolVersion,
    parameters: Vec<(String, String)>,
    protocol_options: Vec<(String, String)>,
}

/// What NegotiateProtocolVersion tells the app: the newest version the dbproxy speaks (for
/// the major version asked) and the protocol options it does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolNegotiation {
    pub newest_version: ProtocolVersion,
    pub unrecognized_options: Vec<String>,
}

impl StartupMessage {
    /// Every parameter (user, database, options, application_name, client_encoding, any
    /// setting) in the order sent; `_pq_.` protocol options are not among them.
    pub fn parameters(&self) -> &[(String, String)] {
        &self.parameters
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.parameters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn user(&self) -> &str {
        self.get("user").unwrap_or_default()
    }

    /// The database, which is the user's name when none (or an empty one) was given.
    pub fn database(&self) -> &str {
        match self.get("database") {
            Some(db) if !db.is_empty() => db,
            _ => self.user(),
        }
    }

    pub fn application_name(&self) -> Option<&str> {
        self.get("application_name")
    }

    /// Command-line options for the server process (`-c name=value …`).
    pub fn options(&self) -> Option<&str> {
        self.get("options")
    }

    /// Set (true, on, yes, 1, database) when the app asks for a replication connection.
    pub fn replication(&self) -> Option<&str> {
        self.get("replication")
    }

    /// The `_pq_.` protocol options asked for, in the order sent.
    pub fn protocol_options(&self) -> &[(String, String)] {
        &self.protocol_options
    }

    /// What to answer with NegotiateProtocolVersion before authentication, or `None` when
    /// the app asked for exactly 3.0 and no protocol option (the dbproxy knows none).
    pub fn negotiation(&self) -> Option<ProtocolNegotiation> {
        if self.version == ProtocolVersion::V3_0 && self.protocol_options.is_empty() {
            return None;
        }
        Some(ProtocolNegotiation {
            newest_version: ProtocolVersion::V3_0,
            unrecognized_options: self
                .protocol_options
                .iter()
                .map(|(name, _)| name.clone())
                .collect(),
        })
    }
}

/// Decodes an app's start-up packets from the bytes it sent, one per call: any number of
/// encryption requests (each kind at most once), then one StartupMessage or CancelRequest,
/// after which the start-up is complete and the caller reads on with
/// [`super::frontend::FrontendDecoder`] (bytes already buffered stay in the buffer for it).
#[derive(Debug, Default)]
pub struct StartupDecoder {
    ssl_requested: bool,
    gss_requested: bool,
    complete: bool,
}

impl StartupDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// True once a StartupMessage or CancelRequest was decoded.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The next packet, removed from `buf`; `Ok(None)` until `buf` holds all of it.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<StartupPacket>, PgWireError> {
        if self.complete {
            return Err(PgWireError::StartupComplete);
        }
        if buf.first() == Some(&TLS_HANDSHAKE_RECORD) {
            return Err(PgWireError::DirectTls);
        }
        let Some(header) = buf.get(..4) else {
            return Ok(None);
        };
        let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        if (length as usize) < HEADER_LENGTH {
            return Err(PgWireError::LengthTooShort {
                from: Peer::App,
                message: "start-up packet",
                length: length.into(),
                minimum: HEADER_LENGTH,
            });
        }
        if length as usize > LENGTH_WORD + MAX_STARTUP_PACKET_LENGTH {
            return Err(PgWireError::TooLong {
                from: Peer::App,
                message: "start-up packet",
                length: length.into(),
                limit: LENGTH_WORD + MAX_STARTUP_PACKET_LENGTH,
            });
        }
        if buf.len() < length as usize {
            return Ok(None);
        }
        let mut packet = buf.split_to(length as usize).freeze();
        packet.advance(LENGTH_WORD);
        let code = packet.get_u32();
        let packet = match code {
            SSL_REQUEST_CODE => {
                encryption_request(&mut self.ssl_requested, "SSLRequest", packet)?;
                StartupPacket::SslRequest
            }
            GSSENC_REQUEST_CODE => {
                encryption_request(&mut self.gss_requested, "GSSENCRequest", packet)?;
                StartupPacket::GssEncRequest
            }
            CANCEL_REQUEST_CODE => StartupPacket::Cancel(cancel_request(packet)?),
            version => StartupPacket::Startup(startup_message(
                ProtocolVersion::from_code(version),
                packet,
            )?),
        };
        self.complete = matches!(packet, StartupPacket::Cancel(_) | StartupPacket::Startup(_));
        Ok(Some(packet))
    }
}

fn encryption_request(
    already: &mut bool,
    request: &'static str,
    body: Bytes,
) -> Result<(), PgWireError> {
    if *already {
        return Err(PgWireError::RepeatedRequest { request });
    }
    *already = true;
    Body::new(Peer::App, request, body).finish()
}

fn cancel_request(body: Bytes) -> Result<CancelRequest, PgWireError> {
    let mut body = Body::new(Peer::App, "CancelRequest", body);
    let process_id = body.u32("process id")?;
    let key_length = body.remaining();
    if !(MIN_CANCEL_KEY_LENGTH..=MAX_CANCEL_KEY_LENGTH).contains(&key_length) {
        return Err(body.malformed(Problem::InvalidValue {
            field: "secret key's length",
            value: key_length as i64,
        }));
    }
    Ok(CancelRequest {
        process_id,
        secret_key: body.rest(),
    })
}

fn startup_message(version: ProtocolVersion, body: Bytes) -> Result<StartupMessage, PgWireError> {
    if version.major != ProtocolVersion::V3_0.major {
        return Err(PgWireError::UnsupportedProtocol {
            major: version.major,
            minor: version.minor,
        });
    }
    let mut body = Body::new(Peer::App, "StartupMessage", body);
    let mut parameters: Vec<(String, String)> = Vec::new();
    let mut protocol_options: Vec<(String, String)> = Vec::new();
    loop {
        let name = body.cstr("parameter name")?;
        if name.is_empty() {
            break;
        }
        let value = body.cstr("parameter value")?;
        let count = parameters.len() + protocol_options.len() + 1;
        if count > MAX_STARTUP_PARAMETERS {
            return Err(body.malformed(Problem::TooMany {
                what: "parameters",
                count,
                limit: MAX_STARTUP_PARAMETERS,
            }));
        }
        // A name given twice is refused rather than resolved: a proxy that checked the first
        // `user` while the server used the second would be fooled.
        if parameters
            .iter()
            .chain(&protocol_options)
            .any(|(n, _)| *n == name)
        {
            return Err(body.malformed(Problem::DuplicateParameter { name }));
        }
        if name.starts_with(PROTOCOL_OPTION_PREFIX) {
            protocol_options.push((name, value));
        } else {
            parameters.push((name, value));
        }
    }
    body.finish()?;
    let message = StartupMessage {
        version,
        parameters,
        protocol_options,
    };
    if message.user().is_empty() {
        return Err(PgWireError::Malformed {
            from: Peer::App,
            message: "StartupMessage",
            problem: Problem::Missing { field: "user" },
        });
    }
    Ok(message)
}
