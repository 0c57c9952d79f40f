//! HTTP messages on a stream, as both ends do it: the edge turns a visitor's request into
//! frames and frames back into a response; the developer's client does the reverse.
//!
//! * heads: [`RequestHead`] / [`ResponseHead`] ↔ `http` types, header order and repeats kept,
//!   hop-by-hop headers dropped ([`strip_hop_by_hop`]);
//! * bodies out: [`send_body`] pumps any `http_body::Body` into DATA/Trailers/End frames as it
//!   arrives (no buffering), or Abort if the body fails;
//! * bodies in: [`FrameBody`] is an `http_body::Body` that yields DATA/Trailers as frames
//!   arrive and fails — rather than ending cleanly — on Abort or a stream cut before End.

use crate::frame::{Frame, FrameError, MAX_DATA_CHUNK};
use crate::messages::{Abort, Headers, HttpVersion, RequestHead, ResponseHead};
use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::Body;
use http_body_util::BodyExt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Names as constants: removing by `&str` parses the name again on every call, which was a few
/// percent of the edge's instructions per request.
/// `Trailer` is not among them: it is end to end (RFC 9110 §6.6.2), and hyper's HTTP/1.1
/// encoder sends only the trailer fields that the message's `Trailer` names.
const HOP_BY_HOP: [HeaderName; 5] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TRANSFER_ENCODING,
];

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1), plus those that the
/// connection named in `Connection`. Of `TE`, the `trailers` token is kept (as `te: trailers`,
/// even when `Connection` names `TE`, as RFC 9110 §10.1.4 asks a sender to): it says the
/// visitor accepts trailers, without which an HTTP/1.1 server sends none and gRPC refuses the
/// call. Transfer codings the visitor accepts concern its own hop only and go.
/// `upgrade`/`connection: upgrade` are kept when `keep_upgrade` (WebSocket).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of these, or only `Connection: keep-alive` (or `close`, as
    // most servers and browsers send): one pass over the (few) names present is far cheaper
    // than hashing and probing for each of the eight, twice per request at the edge, and
    // parsing the names `Connection` lists (callgrind: ~2,000 instructions per response).
    if !keep_upgrade {
        let (mut connection, mut other) = (false, false);
        for n in headers.keys() {
            if n == http::header::CONNECTION {
                connection = true;
            } else if n == http::header::UPGRADE
                || n == http::header::TE
                || HOP_BY_HOP.contains(n)
                || n.as_str() == "close"
            {
                other = true;
            }
        }
        if !connection && !other {
            return;
        }
        let only_persistence = || {
            headers
                .get_all(http::header::CONNECTION)
                .iter()
                .flat_map(|v| v.as_bytes().split(|&b| b == b','))
                .all(|token| {
                    let token = token.trim_ascii();
                    token.eq_ignore_ascii_case(b"keep-alive")
                        || token.eq_ignore_ascii_case(b"close")
                })
        };
        // `Connection` names no header that is present: it alone goes.
        if !other && only_persistence() {
            headers.remove(http::header::CONNECTION);
            return;
        }
    }
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == http::header::UPGRADE))
        .collect();
    let te_trailers = headers
        .get_all(http::header::TE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"trailers"));
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    } else {
        headers.remove(http::header::TE);
    }
    if keep_upgrade {
        headers.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
    } else {
        headers.remove(http::header::CONNECTION);
        headers.remove(http::header::UPGRADE);
    }
}

/// Whether a request asks to switch protocols (HTTP/1.1 `Connection: upgrade` + `Upgrade`).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::UPGRADE)
        && headers
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

pub fn version_to_wire(v: http::Version) -> HttpVersion {
    match v {
        http::Version::HTTP_09 | http::Version::HTTP_10 => HttpVersion::Http10,
        http::Version::HTTP_2 | http::Version::HTTP_3 => HttpVersion::Http2,
        _ => HttpVersion::Http11,
    }
}

pub fn version_from_wire(v: HttpVersion) -> http::Version {
    match v {
        HttpVersion::Http10 => http::Version::HTTP_10,
        HttpVersion::Http11 => http::Version::HTTP_11,
        HttpVersion::Http2 => http::Version::HTTP_2,
    }
}

impl ResponseHead {
    /// Takes the response's parts: their header map becomes the head's, uncopied.
    pub fn from_parts(parts: http::response::Parts) -> Self {
        ResponseHead {
            status: parts.status.as_u16(),
            version: version_to_wire(parts.version),
            headers: Headers(parts.headers),
        }
    }
}

impl RequestHead {
    /// The request's path and query (`/` when the request had none).
    pub fn from_parts(parts: &http::request::Parts, scheme: &str, authority: &str) -> Self {
        RequestHead {
            method: parts.method.as_str().to_owned(),
            scheme: scheme.to_owned(),
            authority: authority.to_owned(),
            path_and_query: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| "/".into()),
            version: version_to_wire(parts.version),
            headers: Headers(parts.headers.clone()),
        }
    }
}

/// A request head borrowed from the visitor's request, for the edge's hot path: it encodes to
/// the very bytes of `Frame::StreamHeader(StreamHeader::Http(head))` for the [`RequestHead`]
/// that [`RequestHead::from_parts`] (with `host` inserted) would give — a test pins that — but
/// without copying the request's strings and header map into one first.
pub struct RequestHeadRef<'a> {
    pub parts: &'a http::request::Parts,
    /// `http` or `https`, as the visitor used it.
    pub scheme: &'a str,
    /// The host the visitor asked for (`Host` or `:authority`), or its production name.
    pub authority: &'a str,
    /// Replaces the request's `Host` header in the head (the developer's app sees the
    /// production host), as `HeaderMap::insert` would.
    pub host: Option<&'a HeaderValue>,
}

impl RequestHeadRef<'_> {
    /// Appends the `StreamHeader` frame that opens the request's stream.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        Frame::encode_stream_header(&HttpStreamHeader(self), out)
    }
}

/// `StreamHeader::Http(RequestHead { .. })` as serde's derive writes it: variant 0 of
/// `StreamHeader`, then the head's fields in declaration order.
struct HttpStreamHeader<'h, 'a>(&'h RequestHeadRef<'a>);

impl serde::Serialize for HttpStreamHeader<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_variant("StreamHeader", 0, "Http", &RequestHeadFields(self.0))
    }
}

struct RequestHeadFields<'h, 'a>(&'h RequestHeadRef<'a>);

impl serde::Serialize for RequestHeadFields<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let head = self.0;
        let mut st = s.serialize_struct("RequestHead", 6)?;
        st.serialize_field("method", head.parts.method.as_str())?;
        st.serialize_field("scheme", head.scheme)?;
        st.serialize_field("authority", head.authority)?;
        st.serialize_field(
            "path_and_query",
            head.parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        )?;
        st.serialize_field("version", &version_to_wire(head.parts.version))?;
        st.serialize_field(
            "headers",
            &crate::headers::HeadersWithHost {
                map: &head.parts.headers,
                host: head.host,
            },
        )?;
        st.end()
    }
}

/// Why a body could not be sent or received in full.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the sender aborted the message: {0}")]
    Aborted(String),
    #[error("the stream ended before the message was complete")]
    Truncated,
    #[error("unexpected {0} frame inside a message body")]
    Unexpected(&'static str),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the body's source failed: {0}")]
    Source(String),
}

/// Pumps `body` into frames on `w` as it arrives: DATA frames, trailers if any, then `End`.
/// If the body fails, sends `Abort` with the reason and returns the error. Does not finish
/// the stream (a raw pipe may follow). Same as [`send_message`] with nothing in front.
pub async fn send_body<B, W>(body: B, w: &mut W) -> Result<(), BodyError>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
    W: AsyncWrite + Unpin + ?Sized,
{
    send_message(Vec::new(), body, w).await
}

/// A DATA payload at least this long is written straight from the body's buffer instead of
/// being copied into the pending write.
const COPY_LIMIT: usize = 16 * 1024;

/// Sends `prefix` (already encoded frames, usually the message's head) followed by `body` as
/// frames, like [`send_body`], in as few writes as possible.
///
/// Why: every write to a QUIC stream wakes the connection's driver, which may send a packet
/// before the next write arrives. A small response written as head, DATA header, DATA and End
/// used to leave in two or three packets, each costing a send, a receive, a decryption and a
/// wake-up on both sides. Here, frames the body yields without waiting accumulate in one buffer
/// that is written when the body would wait, when it holds [`MAX_DATA_CHUNK`] bytes, or at the
/// end — so a small message is one write. Nothing is held back waiting for more: as soon as
/// the body has nothing ready, what is pending goes out.
pub async fn send_message<B, W>(prefix: Vec<u8>, body: B, w: &mut W) -> Result<(), BodyError>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut body = std::pin::pin!(body);
    let mut pending = prefix;
    loop {
        // Poll once without waiting; only if the body has nothing ready is the buffer flushed
        // before waiting for it.
        let ready = std::future::poll_fn(|cx| match body.as_mut().poll_frame(cx) {
            Poll::Ready(item) => Poll::Ready(Some(item)),
            Poll::Pending => Poll::Ready(None),
        })
        .await;
        let item = match ready {
            Some(item) => item,
            None => {
                flush(w, &mut pending).await?;
                body.frame().await
            }
        };
        match item {
            None => {
                Frame::End.encode(&mut pending)?;
                flush(w, &mut pending).await?;
                return Ok(());
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    for chunk in data.chunks(MAX_DATA_CHUNK) {
                        pending.extend_from_slice(&crate::frame::data_header(chunk.len()));
                        if chunk.len() >= COPY_LIMIT {
                            flush(w, &mut pending).await?;
                            w.write_all(chunk).await.map_err(FrameError::Io)?;
                        } else {
                            pending.extend_from_slice(chunk);
                        }
                    }
                    if pending.len() >= MAX_DATA_CHUNK {
                        flush(w, &mut pending).await?;
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        Frame::Trailers(Headers(trailers)).encode(&mut pending)?;
                    }
                }
            },
            Some(Err(e)) => {
                let reason = e.to_string();
                // Best effort: the stream may be what failed. What was pending goes first, so
                // the receiver sees the same bytes, then the abort.
                let abort = Frame::Abort(Abort {
                    reason: reason.clone(),
                });
                if abort.encode(&mut pending).is_ok() {
                    let _ = flush(w, &mut pending).await;
                }
                return Err(BodyError::Source(reason));
            }
        }
    }
}

async fn flush<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    pending: &mut Vec<u8>,
) -> Result<(), FrameError> {
    if !pending.is_empty() {
        w.write_all(pending).await?;
        pending.clear();
    }
    Ok(())
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;

/// How much a [`FrameBody`] asks its reader for at least, so that a small frame and the
/// `End` behind it come in one read.
const READ_AHEAD: usize = 8 * 1024;

/// An HTTP body read from frames: DATA and trailers until `End`. Hand it to hyper as a request
/// or response body; it streams with backpressure (at most one frame read ahead).
///
/// It reads ahead by one frame for a reason: when the frame after a DATA frame is `End` and
/// has already arrived, the body reports [`Body::is_end_stream`] at once. hyper then finishes
/// the message without polling again (it stops after `content-length` bytes anyway), the
/// stream's own end is read, and the QUIC stream closes cleanly — instead of being dropped
/// half-read, which makes QUIC send STOP_SENDING, a packet each way per request for nothing.
pub struct FrameBody {
    reader: Reader,
    /// Bytes read and not yet decoded; DATA payloads are split off it without a copy.
    buf: BytesMut,
    max_frame_len: usize,
    /// A frame read ahead and not yet yielded.
    peeked: Option<Result<Frame, BodyError>>,
    /// `End` was read (or an error returned): nothing more comes out.
    done: bool,
}

impl FrameBody {
    pub fn new(reader: Reader, max_frame_len: usize) -> Self {
        Self {
            reader,
            buf: BytesMut::new(),
            max_frame_len,
            peeked: None,
            done: false,
        }
    }

    /// Looks at what has already arrived, without waiting: a body whose `End` is there is
    /// empty from now on ([`Body::is_end_stream`]). The developer's client calls this before
    /// handing a request to hyper, so that a request without a body goes to the app without
    /// one (no `transfer-encoding: chunked` added to a body-less POST).
    pub async fn look_ahead_now(&mut self) {
        std::future::poll_fn(|cx| {
            if !self.done && self.peeked.is_none() {
                let _ = self.look_ahead(cx);
            }
            Poll::Ready(())
        })
        .await
    }

    /// Waits for the next frame (or the stream's failure) and keeps it for the first poll: a
    /// body whose `End` comes next is empty from then on ([`Body::is_end_stream`]). For a head
    /// that says nothing follows it — a gRPC "trailers-only" answer — so that the edge's HTTP/2
    /// server sends it as one HEADERS frame with END_STREAM instead of HEADERS and an empty
    /// DATA frame. The caller bounds the wait.
    pub async fn wait_for_next_frame(&mut self) {
        std::future::poll_fn(|cx| {
            if self.done || self.peeked.is_some() {
                return Poll::Ready(());
            }
            self.look_ahead(cx)
        })
        .await
    }

    /// The next frame: decoded from the buffer, reading more when it holds no whole frame.
    /// `Ok(None)` is the stream's clean end between frames.
    fn poll_next_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Frame>, FrameError>> {
        loop {
            if let Some(frame) = Frame::split_from(&mut self.buf, self.max_frame_len)? {
                return Poll::Ready(Ok(Some(frame)));
            }
            let wanted = Frame::bytes_missing(&self.buf).max(READ_AHEAD);
            self.buf.reserve(wanted);
            let read = {
                let fut = self.reader.read_buf(&mut self.buf);
                std::pin::pin!(fut).poll(cx)
            };
            match read {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(FrameError::Io(e))),
                Poll::Ready(Ok(0)) if self.buf.is_empty() => return Poll::Ready(Ok(None)),
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(FrameError::Truncated)),
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    /// If the next frame has arrived, takes it: `End` ends the body now, anything else waits
    /// in `peeked` for the next poll. `Pending` when it has not arrived.
    fn look_ahead(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.poll_next_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(Some(Frame::End))) => self.finish(cx),
            Poll::Ready(other) => self.peeked = Some(body_frame(other)),
        }
        Poll::Ready(())
    }

    /// After `End`: reads the stream's own end if it is already there (it travels with `End`),
    /// so the stream is closed rather than abandoned. Only one poll: if the end has not arrived
    /// yet, the body still ends now. Bytes after `End` are not part of the message whatever
    /// they are; dropping the reader then stops the sender.
    fn finish(&mut self, cx: &mut Context<'_>) {
        self.done = true;
        if self.buf.is_empty() {
            let _ = self.poll_next_frame(cx);
        }
    }
}

/// A frame inside a body, or why there is none: the stream may not end before `End`.
fn body_frame(read: Result<Option<Frame>, FrameError>) -> Result<Frame, BodyError> {
    match read {
        Ok(Some(frame)) => Ok(frame),
        Ok(None) => Err(BodyError::Truncated),
        Err(e) => Err(BodyError::Frame(e)),
    }
}

impl Body for FrameBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            let frame = match this.peeked.take() {
                Some(frame) => frame,
                None => match this.poll_next_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(read) => body_frame(read),
                },
            };
            let out = match frame {
                Ok(Frame::Data(d)) => {
                    if d.is_empty() {
                        continue;
                    }
                    let _ = this.look_ahead(cx);
                    Ok(http_body::Frame::data(d))
                }
                Ok(Frame::Trailers(t)) => {
                    let _ = this.look_ahead(cx);
                    Ok(http_body::Frame::trailers(t.0))
                }
                Ok(Frame::End) => {
                    this.finish(cx);
                    return Poll::Ready(None);
                }
                Ok(Frame::Abort(a)) => Err(BodyError::Aborted(a.reason)),
                Ok(other) => Err(BodyError::Unexpected(other.name())),
                Err(e) => Err(e),
            };
            if out.is_err() {
                this.done = true;
                this.peeked = None;
            }
            return Poll::Ready(Some(out));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.peeked.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{write_data, write_frame};
    use crate::MAX_FRAME_LEN;
    use http_body_util::{BodyExt, Full, StreamBody};

    /// The borrowed head must be byte for byte the owned one: the developer's client decodes
    /// it as a `StreamHeader`, and older clients must keep reading it.
    #[test]
    fn borrowed_request_head_encodes_as_the_owned_one() {
        let production = HeaderValue::from_static("www.example.com:8443");
        let requests = [
            http::Request::builder()
                .method("POST")
                .uri("/shop?a=1&b=2")
                .version(http::Version::HTTP_10)
                .header("host", "www-abc123.example.com:8443")
                .header("accept", "text/html")
                .header("set-cookie", "a=1")
                .header("set-cookie", "b=2")
                .header("x-bin", HeaderValue::from_bytes(b"\xffok").unwrap()),
            // Host repeated (hyper lets it through), and not first.
            http::Request::builder()
                .uri("http://www-abc123.example.com/")
                .header("accept", "*/*")
                .header("host", "one")
                .header("host", "two")
                .header("x-after", "1"),
            // No Host at all (HTTP/2 with :authority only), no path.
            http::Request::builder()
                .uri("http://www-abc123.example.com")
                .version(http::Version::HTTP_2),
        ];
        for (i, builder) in requests.into_iter().enumerate() {
            let (parts, ()) = builder.body(()).unwrap().into_parts();
            for host in [None, Some(&production)] {
                let mut owned = RequestHead::from_parts(&parts, "https", "www-abc123.example.com");
                if let Some(h) = host {
                    owned.headers.0.insert(http::header::HOST, h.clone());
                }
                let mut want = Vec::new();
                Frame::StreamHeader(crate::StreamHeader::Http(owned))
                    .encode(&mut want)
                    .unwrap();
                let mut got = vec![0xAA]; // appends after what is there
                RequestHeadRef {
                    parts: &parts,
                    scheme: "https",
                    authority: "www-abc123.example.com",
                    host,
                }
                .encode(&mut got)
                .unwrap();
                assert_eq!(got[1..], want[..], "request {i}, host override {host:?}");
            }
        }
    }

    #[tokio::test]
    async fn body_with_trailers_survives_the_round_trip() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("3"));
        let frames = vec![
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from_static(b"ab"))),
            Ok(http_body::Frame::data(Bytes::from_static(b"cd"))),
            Ok(http_body::Frame::trailers(trailers.clone())),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let mut wire = Vec::new();
        send_body(body, &mut wire).await.unwrap();
        let got = FrameBody::new(Box::new(std::io::Cursor::new(wire)), MAX_FRAME_LEN)
            .collect()
            .await
            .unwrap();
        assert_eq!(got.trailers(), Some(&trailers));
        assert_eq!(got.to_bytes(), Bytes::from_static(b"abcd"));
    }

    #[tokio::test]
    async fn a_body_cut_before_end_is_an_error_not_a_short_success() {
        let mut wire = Vec::new();
        send_body(Full::new(Bytes::from_static(b"hello")), &mut wire)
            .await
            .unwrap();
        wire.truncate(wire.len() - 5); // drop the End frame
        let err = FrameBody::new(Box::new(std::io::Cursor::new(wire)), MAX_FRAME_LEN)
            .collect()
            .await
            .unwrap_err();
        assert!(matches!(err, BodyError::Truncated), "{err}");
    }

    #[tokio::test]
    async fn an_aborted_body_reports_the_reason() {
        let mut wire = Vec::new();
        write_data(&mut wire, b"part").await.unwrap();
        write_frame(
            &mut wire,
            &Frame::Abort(Abort {
                reason: "app crashed".into(),
            }),
        )
        .await
        .unwrap();
        let err = FrameBody::new(Box::new(std::io::Cursor::new(wire)), MAX_FRAME_LEN)
            .collect()
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the sender aborted the message: app crashed"
        );
    }

    /// An `AsyncWrite` into a shared buffer that counts its writes.
    #[derive(Clone, Default)]
    struct Wire {
        bytes: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
        writes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Wire {
        fn frames(&self) -> Vec<Frame> {
            let mut buf = BytesMut::from(&self.bytes.lock().unwrap()[..]);
            let mut out = Vec::new();
            while let Some(f) = Frame::split_from(&mut buf, MAX_FRAME_LEN).unwrap() {
                out.push(f);
            }
            assert!(buf.is_empty(), "a partial frame is left");
            out
        }
    }

    impl AsyncWrite for Wire {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.bytes.lock().unwrap().extend_from_slice(data);
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_small_message_leaves_in_one_write_head_first() {
        let mut head = Vec::new();
        Frame::ResponseHead(ResponseHead {
            status: 200,
            version: HttpVersion::Http11,
            headers: Headers(HeaderMap::from_iter([(
                http::header::CONTENT_LENGTH,
                HeaderValue::from_static("13"),
            )])),
        })
        .encode(&mut head)
        .unwrap();
        let mut wire = Wire::default();
        send_message(
            head,
            Full::new(Bytes::from_static(b"Hello, world!")),
            &mut wire,
        )
        .await
        .unwrap();
        // One write: one QUIC packet instead of head, DATA header, DATA and End apart.
        assert_eq!(wire.writes.load(std::sync::atomic::Ordering::SeqCst), 1);
        let frames = wire.frames();
        assert!(matches!(&frames[0], Frame::ResponseHead(h) if h.status == 200));
        assert_eq!(frames[1], Frame::Data(Bytes::from_static(b"Hello, world!")));
        assert_eq!(frames[2], Frame::End);
        assert_eq!(frames.len(), 3);
    }

    #[tokio::test]
    async fn nothing_is_held_back_while_the_body_waits() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, String>>(4);
        let body = http_body_util::StreamBody::new(futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|item| (item, rx)) },
        ));
        let wire = Wire::default();
        let mut writer = wire.clone();
        let sender =
            tokio::spawn(async move { send_message(b"HEAD".to_vec(), body, &mut writer).await });
        tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"first"))))
            .await
            .unwrap();
        // The first chunk must reach the wire while the body has nothing more to give
        // (a server-sent event, a gRPC message): coalescing never adds latency.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if wire.bytes.lock().unwrap().ends_with(b"first") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "first chunk held back"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(wire.bytes.lock().unwrap().starts_with(b"HEAD"));
        tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"second"))))
            .await
            .unwrap();
        drop(tx);
        sender.await.unwrap().unwrap();
        let bytes = wire.bytes.lock().unwrap().clone();
        let mut rest = BytesMut::from(&bytes[4..]);
        let mut frames = Vec::new();
        while let Some(f) = Frame::split_from(&mut rest, MAX_FRAME_LEN).unwrap() {
            frames.push(f);
        }
        assert_eq!(
            frames,
            vec![
                Frame::Data(Bytes::from_static(b"first")),
                Frame::Data(Bytes::from_static(b"second")),
                Frame::End
            ]
        );
    }

    /// A reader over fixed bytes that remembers whether it reported the end of the stream.
    struct Ending {
        data: std::io::Cursor<Vec<u8>>,
        end_read: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl AsyncRead for Ending {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let before = buf.filled().len();
            let r = Pin::new(&mut self.data).poll_read(cx, buf);
            if buf.filled().len() == before && buf.remaining() > 0 {
                self.end_read
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            r
        }
    }

    #[tokio::test]
    async fn the_body_ends_with_its_last_data_and_reads_the_stream_to_its_end() {
        let mut wire = Vec::new();
        send_body(Full::new(Bytes::from_static(b"Hello, world!")), &mut wire)
            .await
            .unwrap();
        let end_read = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = Ending {
            data: std::io::Cursor::new(wire),
            end_read: end_read.clone(),
        };
        let mut body = FrameBody::new(Box::new(reader), MAX_FRAME_LEN);
        assert!(!body.is_end_stream());
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(
            first.into_data().unwrap(),
            Bytes::from_static(b"Hello, world!")
        );
        // hyper stops polling after content-length bytes: the body must already know it is
        // complete, and must have read the stream's end, so QUIC closes the stream cleanly
        // instead of sending STOP_SENDING.
        assert!(body.is_end_stream());
        assert!(end_read.load(std::sync::atomic::Ordering::SeqCst));
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn look_ahead_makes_a_body_less_request_empty_before_it_is_polled() {
        let mut wire = Vec::new();
        Frame::End.encode(&mut wire).unwrap();
        let mut body = FrameBody::new(Box::new(std::io::Cursor::new(wire)), MAX_FRAME_LEN);
        body.look_ahead_now().await;
        assert!(body.is_end_stream());

        // With DATA first, the body is not empty and keeps that frame for its first poll.
        let mut wire = Vec::new();
        send_body(Full::new(Bytes::from_static(b"x")), &mut wire)
            .await
            .unwrap();
        let mut body = FrameBody::new(Box::new(std::io::Cursor::new(wire)), MAX_FRAME_LEN);
        body.look_ahead_now().await;
        assert!(!body.is_end_stream());
        assert_eq!(
            body.collect().await.unwrap().to_bytes(),
            Bytes::from_static(b"x")
        );
    }

    #[tokio::test]
    async fn waiting_for_the_next_frame_makes_a_head_only_message_empty_when_end_comes_late() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut body = FrameBody::new(Box::new(rx), MAX_FRAME_LEN);
        let waiter = tokio::spawn(async move {
            body.wait_for_next_frame().await;
            body
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "nothing has arrived yet");
        let mut end = Vec::new();
        Frame::End.encode(&mut end).unwrap();
        tx.write_all(&end).await.unwrap();
        drop(tx);
        let body = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("End arrived")
            .unwrap();
        assert!(body.is_end_stream());
    }

    #[test]
    fn hop_by_hop_headers_are_stripped_and_named_ones_too() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-end-to-end", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["te", "x-end-to-end"]);
    }

    #[test]
    fn connection_keep_alive_or_close_alone_is_removed_and_what_it_names_too() {
        for (connection, extra, kept) in [
            ("keep-alive", None, vec!["x-end-to-end"]),
            ("Keep-Alive, close", None, vec!["x-end-to-end"]),
            // A header that `close` names goes too (the long way).
            ("close", Some("close"), vec!["x-end-to-end"]),
            ("keep-alive", Some("keep-alive"), vec!["x-end-to-end"]),
            ("keep-alive, x-hop", Some("x-hop"), vec!["x-end-to-end"]),
        ] {
            let mut h = HeaderMap::new();
            h.insert("connection", HeaderValue::from_str(connection).unwrap());
            if let Some(name) = extra {
                h.insert(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_static("1"),
                );
            }
            h.insert("x-end-to-end", HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut h, false);
            let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
            assert_eq!(names, kept, "Connection: {connection}, extra {extra:?}");
        }
    }

    #[test]
    fn te_keeps_only_trailers_and_trailer_stays() {
        let cases: [(&[&str], &[&str], Option<&str>); 5] = [
            (&["trailers"], &[], Some("trailers")),
            (&["gzip;q=0.5, Trailers"], &[], Some("trailers")),
            (&["deflate", "trailers"], &["TE"], Some("trailers")),
            (&["gzip, deflate"], &[], None),
            (&["trailersx"], &["te, close"], None),
        ];
        for (te, connection, want) in cases {
            let mut h = HeaderMap::new();
            for v in te {
                h.append("te", HeaderValue::from_str(v).unwrap());
            }
            for v in connection {
                h.append("connection", HeaderValue::from_str(v).unwrap());
            }
            h.insert("trailer", HeaderValue::from_static("x-checksum"));
            strip_hop_by_hop(&mut h, false);
            let got: Vec<_> = h.get_all("te").iter().collect();
            assert_eq!(got, want.into_iter().collect::<Vec<_>>(), "TE {te:?}");
            assert_eq!(h.get("trailer").unwrap(), "x-checksum", "TE {te:?}");
            assert!(h.get("connection").is_none());
        }
    }

    #[test]
    fn upgrade_requests_keep_their_upgrade_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(is_upgrade_request(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
    }
}
