//! Framing: every frame is `kind: u8 | len: u32 big-endian | payload[len]`.
//!
//! `Data` payloads are raw bytes (no encoding, no copy beyond the read); every other payload is
//! bincode 2 (`standard()` config) of the message in [`crate::messages`], except `Hello`, whose
//! payload starts with the protocol version as a big-endian `u16` *outside* the bincode body, so
//! a relay can refuse a peer of another version without understanding the rest.
//!
//! Nothing is decoded without a limit: a frame longer than the reader's maximum is an error
//! before any payload byte is read, and bincode itself runs with the same ceiling.

use crate::messages::{
    Abort, Headers, Hello, Refusal, ResponseHead, RouteReply, RouteRequest, StreamHeader, Welcome,
};
use bytes::{Buf, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol version this build speaks. Bump it for any change that an older peer would
/// misread (see the crate documentation for what is compatible).
pub const PROTOCOL_VERSION: u16 = 1;

/// Absolute ceiling on a frame's payload. Readers may use a lower limit.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Size of the fixed frame header (kind + length).
pub const FRAME_HEADER_LEN: usize = 5;

/// Largest DATA payload a sender puts in one frame.
pub const MAX_DATA_CHUNK: usize = 64 * 1024;

const KIND_HELLO: u8 = 0x01;
const KIND_WELCOME: u8 = 0x02;
const KIND_REFUSAL: u8 = 0x03;
const KIND_STREAM_HEADER: u8 = 0x10;
const KIND_ROUTE: u8 = 0x11;
const KIND_ROUTE_REPLY: u8 = 0x12;
const KIND_RESPONSE_HEAD: u8 = 0x20;
const KIND_DATA: u8 = 0x21;
const KIND_TRAILERS: u8 = 0x22;
const KIND_END: u8 = 0x23;
const KIND_ABORT: u8 = 0x24;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// One frame of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Control stream, connecting peer → relay.
    Hello(Hello),
    /// Control stream, relay → peer: accepted.
    Welcome(Welcome),
    /// Control stream, relay → peer: refused (then the connection closes).
    Refusal(Refusal),
    /// First frame of a stream toward a developer client.
    StreamHeader(StreamHeader),
    /// First frame of a stream an edge opens toward the relay.
    Route(RouteRequest),
    /// The relay's answer to [`Frame::Route`].
    RouteReply(RouteReply),
    /// HTTP response head (status 101 turns the stream into a raw byte pipe after it).
    ResponseHead(ResponseHead),
    /// A piece of an HTTP body.
    Data(Bytes),
    /// HTTP trailers (gRPC's `grpc-status`), after the last DATA frame.
    Trailers(Headers),
    /// The HTTP message is complete.
    End,
    /// The sender gives up on this message; the receiver must not treat it as complete.
    Abort(Abort),
}

/// What can go wrong reading or writing frames. Each variant says what the peer did.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLong { len: usize, max: usize },
    #[error("stream ended in the middle of a frame")]
    Truncated,
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    #[error("malformed {kind} frame: {detail}")]
    Malformed { kind: &'static str, detail: String },
    #[error("peer speaks protocol version {peer}, this side speaks {ours}")]
    UnsupportedVersion { peer: u16, ours: u16 },
    #[error("expected a {expected} frame, got {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("stream ended before a {expected} frame")]
    MissingFrame { expected: &'static str },
}

impl Frame {
    /// The frame's name, for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "Hello",
            Frame::Welcome(_) => "Welcome",
            Frame::Refusal(_) => "Refusal",
            Frame::StreamHeader(_) => "StreamHeader",
            Frame::Route(_) => "Route",
            Frame::RouteReply(_) => "RouteReply",
            Frame::ResponseHead(_) => "ResponseHead",
            Frame::Data(_) => "Data",
            Frame::Trailers(_) => "Trailers",
            Frame::End => "End",
            Frame::Abort(_) => "Abort",
        }
    }

    fn kind(&self) -> u8 {
        match self {
            Frame::Hello(_) => KIND_HELLO,
            Frame::Welcome(_) => KIND_WELCOME,
            Frame::Refusal(_) => KIND_REFUSAL,
            Frame::StreamHeader(_) => KIND_STREAM_HEADER,
            Frame::Route(_) => KIND_ROUTE,
            Frame::RouteReply(_) => KIND_ROUTE_REPLY,
            Frame::ResponseHead(_) => KIND_RESPONSE_HEAD,
            Frame::Data(_) => KIND_DATA,
            Frame::Trailers(_) => KIND_TRAILERS,
            Frame::End => KIND_END,
            Frame::Abort(_) => KIND_ABORT,
        }
    }

    /// Appends the encoded frame (header and payload) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        encode_frame(out, self.kind(), |out| match self {
            Frame::Hello(m) => {
                out.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
                encode_body(m, out, "Hello")
            }
            Frame::Welcome(m) => encode_body(m, out, "Welcome"),
            Frame::Refusal(m) => encode_body(m, out, "Refusal"),
            Frame::StreamHeader(m) => encode_body(m, out, "StreamHeader"),
            Frame::Route(m) => encode_body(m, out, "Route"),
            Frame::RouteReply(m) => encode_body(m, out, "RouteReply"),
            Frame::ResponseHead(m) => encode_body(m, out, "ResponseHead"),
            Frame::Data(b) => {
                out.extend_from_slice(b);
                Ok(())
            }
            Frame::Trailers(m) => encode_body(m, out, "Trailers"),
            Frame::End => Ok(()),
            Frame::Abort(m) => encode_body(m, out, "Abort"),
        })
    }

    /// Appends a `StreamHeader` frame whose payload is `header`: any value that serializes
    /// as a [`StreamHeader`] does (the edge's borrowed request head,
    /// [`crate::http::RequestHeadRef`]).
    pub(crate) fn encode_stream_header<T: Serialize>(
        header: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), FrameError> {
        encode_frame(out, KIND_STREAM_HEADER, |out| {
            encode_body(header, out, "StreamHeader")
        })
    }

    /// Decodes one frame's payload given its kind. The whole payload must be consumed.
    pub fn decode(kind: u8, payload: Bytes) -> Result<Frame, FrameError> {
        Ok(match kind {
            KIND_HELLO => {
                if payload.len() < 2 {
                    return Err(FrameError::Malformed {
                        kind: "Hello",
                        detail: "missing protocol version".into(),
                    });
                }
                let peer = u16::from_be_bytes([payload[0], payload[1]]);
                if peer != PROTOCOL_VERSION {
                    return Err(FrameError::UnsupportedVersion {
                        peer,
                        ours: PROTOCOL_VERSION,
                    });
                }
                Frame::Hello(decode_body(&payload[2..], "Hello")?)
            }
            KIND_WELCOME => Frame::Welcome(decode_body(&payload, "Welcome")?),
            KIND_REFUSAL => Frame::Refusal(decode_body(&payload, "Refusal")?),
            KIND_STREAM_HEADER => Frame::StreamHeader(decode_body(&payload, "StreamHeader")?),
            KIND_ROUTE => Frame::Route(decode_body(&payload, "Route")?),
            KIND_ROUTE_REPLY => Frame::RouteReply(decode_body(&payload, "RouteReply")?),
            KIND_RESPONSE_HEAD => Frame::ResponseHead(decode_body(&payload, "ResponseHead")?),
            KIND_DATA => Frame::Data(payload),
            KIND_TRAILERS => Frame::Trailers(decode_body(&payload, "Trailers")?),
            KIND_END => {
                if !payload.is_empty() {
                    return Err(FrameError::Malformed {
                        kind: "End",
                        detail: format!("{} unexpected payload bytes", payload.len()),
                    });
                }
                Frame::End
            }
            KIND_ABORT => Frame::Abort(decode_body(&payload, "Abort")?),
            other => return Err(FrameError::UnknownKind(other)),
        })
    }

    /// Decodes one complete frame from the front of `buf`, if `buf` holds one. Returns the frame
    /// and how many bytes it used; `Ok(None)` means more bytes are needed.
    pub fn decode_from(buf: &[u8], max_len: usize) -> Result<Option<(Frame, usize)>, FrameError> {
        let Some((kind, len)) = complete_frame(buf, max_len)? else {
            return Ok(None);
        };
        let total = FRAME_HEADER_LEN + len;
        let frame = Frame::decode(kind, Bytes::copy_from_slice(&buf[FRAME_HEADER_LEN..total]))?;
        Ok(Some((frame, total)))
    }
}

impl Frame {
    /// Takes one complete frame off the front of `buf`, if `buf` holds one, without copying its
    /// payload (a DATA frame's bytes share `buf`'s allocation). `Ok(None)`: more bytes needed.
    pub fn split_from(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, FrameError> {
        let Some((kind, len)) = complete_frame(buf, max_len)? else {
            return Ok(None);
        };
        let mut frame = buf.split_to(FRAME_HEADER_LEN + len);
        frame.advance(FRAME_HEADER_LEN);
        Frame::decode(kind, frame.freeze()).map(Some)
    }

    /// How many more bytes `buf` needs before the frame at its front is complete (at least
    /// the header). The length is not checked here; [`Frame::split_from`] does that.
    pub fn bytes_missing(buf: &[u8]) -> usize {
        if buf.len() < FRAME_HEADER_LEN {
            return FRAME_HEADER_LEN - buf.len();
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        (FRAME_HEADER_LEN + len.min(MAX_FRAME_LEN)).saturating_sub(buf.len())
    }
}

/// The kind and payload length of the frame at the front of `buf`, once `buf` holds all of it
/// (the length is checked against `max_len` as soon as the header is there).
fn complete_frame(buf: &[u8], max_len: usize) -> Result<Option<(u8, usize)>, FrameError> {
    let Some(header) = buf.first_chunk::<FRAME_HEADER_LEN>() else {
        return Ok(None);
    };
    let (kind, len) = parse_header(*header, max_len)?;
    Ok((buf.len() >= FRAME_HEADER_LEN + len).then_some((kind, len)))
}

/// The header of a DATA frame of `len` bytes (`len` at most [`MAX_DATA_CHUNK`]).
pub(crate) fn data_header(len: usize) -> [u8; FRAME_HEADER_LEN] {
    let mut header = [0u8; FRAME_HEADER_LEN];
    header[0] = KIND_DATA;
    // len <= MAX_DATA_CHUNK, far below u32::MAX.
    header[1..].copy_from_slice(&(len as u32).to_be_bytes());
    header
}

fn parse_header(h: [u8; FRAME_HEADER_LEN], max_len: usize) -> Result<(u8, usize), FrameError> {
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
    let max = max_len.min(MAX_FRAME_LEN);
    if len > max {
        return Err(FrameError::TooLong { len, max });
    }
    Ok((h[0], len))
}

/// Appends one frame of `kind`: its header, the payload `payload` appends, then the length in
/// the header. A payload that fails to encode, or is longer than any reader accepts, leaves
/// nothing of the frame in `out`.
fn encode_frame(
    out: &mut Vec<u8>,
    kind: u8,
    payload: impl FnOnce(&mut Vec<u8>) -> Result<(), FrameError>,
) -> Result<(), FrameError> {
    let start = out.len();
    out.push(kind);
    out.extend_from_slice(&[0; 4]);
    if let Err(e) = payload(out) {
        out.truncate(start);
        return Err(e);
    }
    let len = out.len() - start - FRAME_HEADER_LEN;
    if len > MAX_FRAME_LEN {
        out.truncate(start);
        return Err(FrameError::TooLong {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    // `len <= MAX_FRAME_LEN < u32::MAX`, checked just above.
    out[start + 1..start + FRAME_HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

fn encode_body<T: Serialize>(
    m: &T,
    out: &mut Vec<u8>,
    kind: &'static str,
) -> Result<(), FrameError> {
    bincode::serde::encode_into_std_write(m, out, config()).map_err(|e| FrameError::Malformed {
        kind,
        detail: e.to_string(),
    })?;
    Ok(())
}

fn decode_body<T: DeserializeOwned>(payload: &[u8], kind: &'static str) -> Result<T, FrameError> {
    let (value, used): (T, usize) =
        bincode::serde::decode_from_slice(payload, config()).map_err(|e| {
            FrameError::Malformed {
                kind,
                // A message's own check (an invalid header name) reads better without bincode's
                // `OtherString("…")` around it.
                detail: match e {
                    bincode::error::DecodeError::OtherString(s) => s,
                    e => e.to_string(),
                },
            }
        })?;
    if used != payload.len() {
        return Err(FrameError::Malformed {
            kind,
            detail: format!("{} trailing bytes", payload.len() - used),
        });
    }
    Ok(value)
}

/// Reads one frame. `Ok(None)` is a clean end of stream *between* frames; an end inside a frame
/// is [`FrameError::Truncated`].
pub async fn read_frame<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    max_len: usize,
) -> Result<Option<Frame>, FrameError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    let mut filled = 0;
    while filled < FRAME_HEADER_LEN {
        let n = r.read(&mut header[filled..]).await?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        filled += n;
    }
    let (kind, len) = parse_header(header, max_len)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    Frame::decode(kind, Bytes::from(payload)).map(Some)
}

/// Reads one frame that must be there (end of stream is [`FrameError::MissingFrame`]).
pub async fn read_required<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    max_len: usize,
    expected: &'static str,
) -> Result<Frame, FrameError> {
    read_frame(r, max_len)
        .await?
        .ok_or(FrameError::MissingFrame { expected })
}

/// Writes one frame (a single write of header and payload).
pub async fn write_frame<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    frame: &Frame,
) -> Result<(), FrameError> {
    let mut buf = Vec::with_capacity(64);
    frame.encode(&mut buf)?;
    w.write_all(&buf).await?;
    Ok(())
}

/// Writes `data` as one or more DATA frames of at most [`MAX_DATA_CHUNK`] bytes, without
/// building intermediate [`Frame`] values.
pub async fn write_data<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    data: &[u8],
) -> Result<(), FrameError> {
    for chunk in data.chunks(MAX_DATA_CHUNK) {
        w.write_all(&data_header(chunk.len())).await?;
        w.write_all(chunk).await?;
    }
    Ok(())
}
