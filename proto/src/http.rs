//! HTTP messages on a stream, as both ends do it: the edge turns a visitor's request into
//! frames and frames back into a response; the developer's client does the reverse.
//!
//! * heads: [`RequestHead`] / [`ResponseHead`] ↔ `http` types, header order and repeats kept,
//!   hop-by-hop headers dropped ([`strip_hop_by_hop`]);
//! * bodies out: [`send_body`] pumps any `http_body::Body` into DATA/Trailers/End frames as it
//!   arrives (no buffering), or Abort if the body fails;
//! * bodies in: [`FrameBody`] is an `http_body::Body` that yields DATA/Trailers as frames
//!   arrive and fails — rather than ending cleanly — on Abort or a stream cut before End.

use crate::frame::{read_frame, write_data, write_frame, Frame, FrameError};
use crate::messages::{Abort, HeaderList, HttpVersion, RequestHead, ResponseHead};
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::Body;
use http_body_util::BodyExt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1), plus those that the
/// connection named in `Connection`. `te: trailers` is end-to-end in practice (gRPC needs it)
/// and is kept; `upgrade`/`connection: upgrade` are kept when `keep_upgrade` (WebSocket).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == http::header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "trailer",
        "transfer-encoding",
    ] {
        headers.remove(name);
    }
    let te_trailers = headers
        .get(http::header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !te_trailers {
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

pub fn headers_to_list(headers: &HeaderMap) -> HeaderList {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

/// A header from the peer that is not a valid HTTP header.
#[derive(Debug, thiserror::Error)]
#[error("invalid header {name:?} from the peer")]
pub struct InvalidHeader {
    pub name: String,
}

pub fn list_to_headers(list: &HeaderList) -> Result<HeaderMap, InvalidHeader> {
    let mut map = HeaderMap::with_capacity(list.len());
    for (name, value) in list {
        let bad = || InvalidHeader { name: name.clone() };
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
        let v = HeaderValue::from_bytes(value).map_err(|_| bad())?;
        map.append(n, v);
    }
    Ok(map)
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
    pub fn from_parts(parts: &http::response::Parts) -> Self {
        ResponseHead {
            status: parts.status.as_u16(),
            version: version_to_wire(parts.version),
            headers: headers_to_list(&parts.headers),
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
            headers: headers_to_list(&parts.headers),
        }
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
    #[error("invalid trailers: {0}")]
    Trailers(InvalidHeader),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the body's source failed: {0}")]
    Source(String),
}

/// Pumps `body` into frames on `w` as it arrives: DATA frames, trailers if any, then `End`.
/// If the body fails, sends `Abort` with the reason and returns the error. Does not finish
/// the stream (a raw pipe may follow).
pub async fn send_body<B, W>(body: B, w: &mut W) -> Result<(), BodyError>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut body = std::pin::pin!(body);
    loop {
        match body.frame().await {
            None => {
                write_frame(w, &Frame::End).await?;
                return Ok(());
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => write_data(w, &data).await?,
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        write_frame(w, &Frame::Trailers(headers_to_list(&trailers))).await?;
                    }
                }
            },
            Some(Err(e)) => {
                let reason = e.to_string();
                // Best effort: the stream may be what failed.
                let _ = write_frame(
                    w,
                    &Frame::Abort(Abort {
                        reason: reason.clone(),
                    }),
                )
                .await;
                return Err(BodyError::Source(reason));
            }
        }
    }
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type ReadFuture = Pin<Box<dyn Future<Output = (Reader, Result<Option<Frame>, FrameError>)> + Send>>;

enum BodyState {
    Idle(Reader),
    Reading(ReadFuture),
    Done,
}

/// An HTTP body read from frames: DATA and trailers until `End`. Hand it to hyper as a request
/// or response body; it streams with backpressure (one frame read per poll).
pub struct FrameBody {
    state: BodyState,
    max_frame_len: usize,
}

impl FrameBody {
    pub fn new(reader: Reader, max_frame_len: usize) -> Self {
        Self {
            state: BodyState::Idle(reader),
            max_frame_len,
        }
    }
}

impl Body for FrameBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        let max = self.max_frame_len;
        loop {
            match std::mem::replace(&mut self.state, BodyState::Done) {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Idle(mut r) => {
                    self.state = BodyState::Reading(Box::pin(async move {
                        let res = read_frame(&mut r, max).await;
                        (r, res)
                    }));
                }
                BodyState::Reading(mut fut) => {
                    let (reader, res) = match fut.as_mut().poll(cx) {
                        Poll::Pending => {
                            self.state = BodyState::Reading(fut);
                            return Poll::Pending;
                        }
                        Poll::Ready(r) => r,
                    };
                    let out = match res {
                        Ok(Some(Frame::Data(d))) => {
                            self.state = BodyState::Idle(reader);
                            if d.is_empty() {
                                continue;
                            }
                            Ok(http_body::Frame::data(d))
                        }
                        Ok(Some(Frame::Trailers(t))) => {
                            self.state = BodyState::Idle(reader);
                            list_to_headers(&t)
                                .map(http_body::Frame::trailers)
                                .map_err(BodyError::Trailers)
                        }
                        Ok(Some(Frame::End)) => return Poll::Ready(None),
                        Ok(Some(Frame::Abort(a))) => Err(BodyError::Aborted(a.reason)),
                        Ok(Some(other)) => Err(BodyError::Unexpected(other.name())),
                        Ok(None) => Err(BodyError::Truncated),
                        Err(e) => Err(BodyError::Frame(e)),
                    };
                    return Poll::Ready(Some(out));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MAX_FRAME_LEN;
    use http_body_util::{BodyExt, Full, StreamBody};

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
