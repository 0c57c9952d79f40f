//! QUIC application error codes used in CONNECTION_CLOSE, RESET_STREAM and STOP_SENDING.
//! Values are wire format: never renumber.

/// Normal close (Ctrl-C, shutdown).
pub const CLOSE_NORMAL: u32 = 0x0;
/// The peer broke the protocol (bad frame, unexpected frame).
pub const CLOSE_PROTOCOL_ERROR: u32 = 0x1;
/// The handshake was refused; the reason is in the `Refusal` frame and the close reason.
pub const CLOSE_REFUSED: u32 = 0x2;
/// A newer connection with the same token took over this session. Do not reconnect.
pub const CLOSE_REPLACED: u32 = 0x3;
/// The token was revoked. Do not reconnect.
pub const CLOSE_REVOKED: u32 = 0x4;
/// The relay is shutting down or restarting; reconnecting later is right.
pub const CLOSE_SHUTTING_DOWN: u32 = 0x5;
/// Too many failed handshakes from this address: the token was not checked. Trying again
/// after a pause is right (the `Refusal` says how long).
pub const CLOSE_THROTTLED: u32 = 0x6;

/// A stream was abandoned by the side that opened it (the visitor went away).
pub const STREAM_CANCELLED: u32 = 0x10;
/// A stream's first frame was not what that stream kind requires.
pub const STREAM_BAD_HEADER: u32 = 0x11;
/// The developer's local app could not be reached or failed mid-message.
pub const STREAM_LOCAL_APP_FAILED: u32 = 0x12;
/// The other half of a spliced stream failed.
pub const STREAM_PEER_FAILED: u32 = 0x13;
/// The developer's connection went silent (no keep-alive answered) before the stream's first
/// byte came back: to the visitor, the developer is offline.
pub const STREAM_DEVELOPER_SILENT: u32 = 0x14;
