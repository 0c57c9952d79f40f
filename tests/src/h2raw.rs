//! A bare HTTP/2 client (prior knowledge, over any byte stream) that reports the frames a
//! server sent, for what client libraries hide: whether a response was ONE HEADERS frame
//! (a gRPC "trailers-only" error) or a HEADERS frame and an empty DATA frame, which gRPC's C
//! core and Go clients read as a stream without a status.

use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The one request's stream.
const STREAM: u32 = 1;
/// More frames than any answer these tests ask for: a server that keeps sending is a failure.
const MAX_FRAMES: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl RawFrame {
    pub fn ends_stream(&self) -> bool {
        matches!(self.kind, DATA | HEADERS) && self.flags & END_STREAM != 0
    }

    /// `HEADERS`, `DATA(0 bytes, END_STREAM)`…: for assertion messages.
    pub fn describe(frames: &[RawFrame]) -> String {
        let names: Vec<String> = frames
            .iter()
            .map(|f| {
                let kind = match f.kind {
                    DATA => "DATA",
                    HEADERS => "HEADERS",
                    RST_STREAM => "RST_STREAM",
                    GOAWAY => "GOAWAY",
                    CONTINUATION => "CONTINUATION",
                    _ => "other",
                };
                let end = if f.ends_stream() { ", END_STREAM" } else { "" };
                format!("{kind}({} bytes{end})", f.payload.len())
            })
            .collect();
        names.join(" ")
    }
}

/// An HPACK string literal, not Huffman-coded.
fn hpack_string(out: &mut Vec<u8>, s: &str) {
    hpack_int(out, 0x00, 7, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// An HPACK integer with an `n`-bit prefix, `first` holding the bits above it (RFC 7541 §5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// Literal header fields without indexing, new names: no table state to get wrong.
fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_string(&mut out, name);
        hpack_string(&mut out, value);
    }
    out
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Sends one request on stream 1 — `fields` with pseudo-headers first, then `body` as one
/// DATA frame if given — and returns the frames the server sent on that stream until it ended
/// it (or reset it, or went away), within `wait`.
pub async fn exchange<S>(
    mut io: S,
    fields: &[(&str, &str)],
    body: Option<&[u8]>,
    wait: Duration,
) -> Vec<RawFrame>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    let head_flags = END_HEADERS | if body.is_none() { END_STREAM } else { 0 };
    out.extend(frame(HEADERS, head_flags, STREAM, &header_block(fields)));
    if let Some(body) = body {
        out.extend(frame(DATA, END_STREAM, STREAM, body));
    }
    io.write_all(&out).await.expect("send the request");

    let deadline = tokio::time::Instant::now() + wait;
    let mut frames = Vec::new();
    for _ in 0..MAX_FRAMES {
        let mut head = [0u8; 9];
        tokio::time::timeout_at(deadline, io.read_exact(&mut head))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the stream did not end in time; so far: {}",
                    RawFrame::describe(&frames)
                )
            })
            .expect("read a frame header");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        tokio::time::timeout_at(deadline, io.read_exact(&mut payload))
            .await
            .expect("frame payload in time")
            .expect("read a frame payload");
        let f = RawFrame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        };
        match f.kind {
            SETTINGS if f.flags & ACK == 0 => {
                io.write_all(&frame(SETTINGS, ACK, 0, &[]))
                    .await
                    .expect("ack settings");
            }
            PING if f.flags & ACK == 0 => {
                io.write_all(&frame(PING, ACK, 0, &f.payload))
                    .await
                    .expect("answer ping");
            }
            GOAWAY => {
                frames.push(f);
                return frames;
            }
            _ if f.stream == STREAM => {
                let last = f.ends_stream() || f.kind == RST_STREAM;
                frames.push(f);
                if last {
                    return frames;
                }
            }
            _ => {}
        }
    }
    panic!(
        "more than {MAX_FRAMES} frames: {}",
        RawFrame::describe(&frames)
    );
}

/// The `:status` of a HEADERS frame when the server sent it as an entry of HPACK's static
/// table (200, 204, 206, 304, 400, 404, 500: what HTTP/2 servers do for those), which needs no
/// decoder state; `None` for anything else.
pub fn status(f: &RawFrame) -> Option<u16> {
    const PADDED: u8 = 0x8;
    const PRIORITY: u8 = 0x20;
    if f.kind != HEADERS {
        return None;
    }
    let mut block = &f.payload[..];
    if f.flags & PADDED != 0 {
        let pad = *block.first()? as usize;
        block = block.get(1..block.len().checked_sub(pad)?)?;
    }
    if f.flags & PRIORITY != 0 {
        block = block.get(5..)?;
    }
    // An indexed field (high bit), static indexes 8..=14 (RFC 7541 Appendix A).
    match block.first()? {
        0x88 => Some(200),
        0x89 => Some(204),
        0x8a => Some(206),
        0x8b => Some(304),
        0x8c => Some(400),
        0x8d => Some(404),
        0x8e => Some(500),
        _ => None,
    }
}
