//! Phase 3a: forward a request to a developer over a tunnel stream and turn the frames that
//! come back into a response. Bodies stream both ways; a 101 turns the stream into a raw pipe.

use crate::visitor_body::BodyFailure;
use crate::{BoxBody, BoxError};
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use proto::http::{is_upgrade_request, send_message, strip_hop_by_hop, FrameBody, RequestHeadRef};
use proto::{read_frame, Frame, FrameError, TunnelStream};
use tokio::io::AsyncWriteExt;
use tracing::debug;

/// Why a tunnelled request got no response from the developer's app; each maps to a page.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The visitor's request body failed (malformed, cut): the visitor's fault, whatever the
    /// developer's side made of it.
    #[error("the request's body could not be read: {0}")]
    Visitor(String),
    /// The visitor's request body stalled (`body_read_timeout_ms`, `body_min_bytes_per_sec`);
    /// the request was aborted.
    #[error("{0}")]
    VisitorStalled(String),
    #[error("the developer's client failed: {0}")]
    Developer(String),
    #[error("the developer's client sent an invalid response: {0}")]
    BadResponse(String),
    /// The developer's client (or the relay) went silent before the response began: to the
    /// visitor, the developer is offline.
    #[error("the developer's connection went silent")]
    Silent,
}

fn visitor_failed(why: BodyFailure) -> TunnelError {
    match why {
        BodyFailure::Broken(why) => TunnelError::Visitor(why),
        BodyFailure::Stalled(why) => TunnelError::VisitorStalled(why),
    }
}

fn developer_failed(e: FrameError) -> TunnelError {
    match e {
        FrameError::Io(io) if went_silent(&io) => TunnelError::Silent,
        FrameError::Io(io) => TunnelError::Developer(io.to_string()),
        FrameError::Truncated | FrameError::MissingFrame { .. } => {
            TunnelError::Developer("the stream ended before a response head".into())
        }
        other => TunnelError::BadResponse(other.to_string()),
    }
}

/// Whether a read failed because the developer's connection went silent: in process (a
/// [`certs::liveness::GuardedRecv`]) or told by the relay (STREAM_DEVELOPER_SILENT).
fn went_silent(e: &std::io::Error) -> bool {
    certs::liveness::is_silence(e)
        || e.get_ref()
            .and_then(|inner| inner.downcast_ref::<quinn::ReadError>())
            .is_some_and(|r| {
                matches!(r, quinn::ReadError::Reset(code)
                    if *code == quinn::VarInt::from_u32(proto::codes::STREAM_DEVELOPER_SILENT))
            })
}

/// The frames that open a request's stream: its head, and `End` when nothing follows — no body,
/// or an upgrade (after which the stream is a raw pipe). Given to the opener as its prelude.
pub fn prelude(head: &RequestHeadRef<'_>, ends: bool) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(512);
    head.encode(&mut out)?;
    if ends {
        Frame::End.encode(&mut out)?;
    }
    Ok(out)
}

/// Whether a request's prelude ends it: see [`prelude`].
pub fn ends_with_head(headers: &http::HeaderMap, body: &Incoming) -> bool {
    is_upgrade_request(headers) || body.is_end_stream()
}

/// A gRPC "trailers-only" response: `grpc-status` in the head, which gRPC allows only when the
/// head is the whole response (HTTP/2 HEADERS with END_STREAM, no messages, no trailers).
fn is_trailers_only(headers: &http::HeaderMap) -> bool {
    const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    headers.contains_key(GRPC_STATUS)
}

/// Sends the rest of `req` on `stream`, whose [`prelude`] the opener has sent (with `End` when
/// [`ends_with_head`]), and turns the frames that come back into a response. The visitor's
/// body may keep the developer's side waiting as long as `body_pace` allows.
pub async fn forward(
    stream: TunnelStream,
    mut req: Request<Incoming>,
    max_frame_len: usize,
    body_pace: crate::visitor_body::BodyPace,
) -> Result<Response<BoxBody>, TunnelError> {
    let TunnelStream { mut send, mut recv } = stream;
    let upgrade = is_upgrade_request(req.headers()).then(|| hyper::upgrade::on(&mut req));

    let mut upgrade_send = None;
    let mut body_failed = None;
    if upgrade.is_some() {
        // After End the stream becomes a raw pipe.
        upgrade_send = Some(send);
    } else if req.body().is_end_stream() {
        // No body (most GETs): the prelude was the whole request; the stream's end follows it
        // at once, usually in the same packet.
        let _ = send.shutdown().await;
    } else {
        // The request body streams in its own task, so the response can start (and, for
        // gRPC, stream) while the upload is still going. The task ends with the visitor's
        // body, or when the stream is stopped by the other side.
        let (body, failed) = crate::visitor_body::watch(req.into_body(), body_pace);
        body_failed = Some(failed);
        tokio::spawn(async move {
            match send_message(Vec::new(), body, &mut send).await {
                Ok(()) => {
                    let _ = send.shutdown().await;
                }
                Err(e) => debug!("request body not delivered: {e}"),
            }
        });
    }

    // A visitor's body that fails makes the developer's side fail too (the body is aborted),
    // and it would answer 502: the watch reports the visitor's failure before that abort is
    // even sent, so it is seen first, while waiting or once the head is in.
    let first = read_frame(&mut recv, max_frame_len);
    let first = match body_failed.as_mut() {
        Some(failed) => tokio::select! {
            biased;
            Ok(why) = failed => return Err(visitor_failed(why)),
            read = first => read,
        },
        None => first.await,
    };
    if let Some(why) = body_failed.as_mut().and_then(crate::visitor_body::failure) {
        return Err(visitor_failed(why));
    }
    let head = match first.map_err(developer_failed)? {
        Some(Frame::ResponseHead(h)) => h,
        Some(Frame::Abort(a)) => return Err(TunnelError::Developer(a.reason)),
        Some(other) => {
            return Err(TunnelError::BadResponse(format!(
                "expected a response head, got {}",
                other.name()
            )))
        }
        None => {
            return Err(TunnelError::Developer(
                "the stream ended before a response head".into(),
            ))
        }
    };

    let status = http::StatusCode::from_u16(head.status)
        .map_err(|_| TunnelError::BadResponse(format!("status {} is not valid", head.status)))?;
    let switching = status == http::StatusCode::SWITCHING_PROTOCOLS;
    if status.is_informational() && !switching {
        // hyper writes interim responses itself; as the final answer, it would write none.
        return Err(TunnelError::BadResponse(format!(
            "status {status} is not a final response"
        )));
    }
    let mut headers = head.headers.into_map();
    strip_hop_by_hop(&mut headers, switching);
    crate::checks::one_content_length(&mut headers).map_err(TunnelError::BadResponse)?;

    let mut resp = Response::new(crate::empty());
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    match (switching, upgrade, upgrade_send) {
        (true, Some(on_upgrade), Some(send)) => {
            tokio::spawn(async move {
                let visitor = match on_upgrade.await {
                    Ok(u) => u,
                    Err(e) => {
                        debug!("visitor upgrade failed: {e}");
                        return;
                    }
                };
                let mut visitor = TokioIo::new(visitor);
                let mut tunnel = tokio::io::join(recv, send);
                if let Err(e) = tokio::io::copy_bidirectional(&mut visitor, &mut tunnel).await {
                    debug!("upgraded connection ended: {e}");
                }
            });
        }
        (true, _, _) => {
            return Err(TunnelError::BadResponse(
                "101 Switching Protocols to a request that did not ask to upgrade".into(),
            ))
        }
        _ => {
            let mut body = FrameBody::new(recv, max_frame_len);
            if is_trailers_only(resp.headers()) {
                // hyper's HTTP/2 server ends the stream with the head only if the body is
                // already known to be empty; otherwise it sends HEADERS, then an empty DATA
                // frame, which gRPC's C core and Go clients read as a call without a status.
                // The head says nothing follows, so its End is at most a packet behind it; the
                // caller's response timeout bounds the wait for a client that never sends it.
                body.wait_for_next_frame().await;
            }
            *resp.body_mut() = body.map_err(|e| Box::new(e) as BoxError).boxed_unsync();
        }
    }
    Ok(resp)
}
