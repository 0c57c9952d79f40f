//! The developer side of one HTTP stream: rebuild the request from frames, send it to the
//! local app, send the response back as frames. Streams both ways; a 101 becomes a raw pipe;
//! a visitor who leaves (STOP_SENDING) cancels the local request.

use crate::app_pool::{AppError, Http1Conn, Http1Pool};
use bytes::Bytes;
use edge::pages::{self, PageFormat};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Body as _;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proto::http::{is_upgrade_request, send_message, strip_hop_by_hop, FrameBody};
use proto::{read_frame, Frame, RequestHead, ResponseHead};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tracing::debug;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;

/// The developer's local app and a connection pool to it.
pub struct LocalApp {
    authority: http::uri::Authority,
    transport: Transport,
}

/// How requests reach the app: pooled HTTP/1.1 connections, or HTTP/2 without TLS (`--h2c`),
/// one multiplexed connection, through hyper-util's client.
enum Transport {
    Http1(Http1Pool),
    H2c(Box<Client<HttpConnector, Body>>),
}

/// Why the local app gave no response: the visitor's page differs (an app that is not up yet
/// is worth reloading for; one that answers garbage is not).
enum LocalFailure {
    /// No connection to it: not started, restarting, or not at this address.
    Unreachable(String),
    /// Connected, but the exchange failed (an invalid response, a connection closed early).
    Failed(String),
}

/// One finished request, for the terminal's access log.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub duration: Duration,
}

/// The access log line, `GET /path 200 1.2ms`. The method and path are a visitor's: escaped.
impl std::fmt::Display for RequestRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} {:.1}ms",
            proto::printable(&self.method),
            proto::printable(&self.path),
            self.status,
            self.duration.as_secs_f64() * 1e3
        )
    }
}

impl LocalApp {
    /// `addr` is `HOST:PORT` (or `http://HOST:PORT`); `h2c` speaks HTTP/2 without TLS to it.
    pub fn new(addr: &str, h2c: bool) -> Result<Self, String> {
        let bare = addr.trim_start_matches("http://").trim_end_matches('/');
        let authority: http::uri::Authority = bare
            .parse()
            .map_err(|_| format!("--http {addr:?} must be HOST:PORT, e.g. 127.0.0.1:3000"))?;
        if authority.port_u16().is_none() {
            return Err(format!("--http {addr:?} needs a port, e.g. 127.0.0.1:3000"));
        }
        let transport = if h2c {
            let mut builder = Client::builder(TokioExecutor::new());
            builder
                .set_host(false)
                .pool_idle_timeout(Duration::from_secs(30))
                .http2_only(true);
            Transport::H2c(Box::new(builder.build_http()))
        } else {
            Transport::Http1(Http1Pool::new(authority.to_string()))
        };
        Ok(Self {
            authority,
            transport,
        })
    }

    /// Whether requests go to the app as HTTP/2 without TLS (`--h2c`).
    fn h2c(&self) -> bool {
        matches!(self.transport, Transport::H2c(_))
    }

    pub fn authority(&self) -> &str {
        self.authority.as_str()
    }

    fn request(
        &self,
        head: &RequestHead,
        mut headers: http::HeaderMap,
        body: Body,
    ) -> Result<Request<Body>, String> {
        // HTTP/1.1 to the app takes the origin form (`/path?q`); hyper-util's HTTP/2 client
        // wants the absolute form.
        let uri = if self.h2c() {
            http::Uri::builder()
                .scheme("http")
                .authority(self.authority.clone())
                .path_and_query(head.path_and_query.as_str())
                .build()
        } else {
            http::Uri::builder()
                .path_and_query(head.path_and_query.as_str())
                .build()
        }
        .map_err(|e| format!("bad request target {:?}: {e}", head.path_and_query))?;
        // A body of unknown length (the visitor's `transfer-encoding: chunked`, a hop-by-hop
        // header the edge dropped, or an HTTP/2 body without content-length) goes to an HTTP/1
        // app chunked. Said explicitly because hyper would otherwise send a GET's body as
        // empty; a request whose End has arrived (`is_end_stream`) gets neither header.
        if !self.h2c()
            && !body.is_end_stream()
            && !headers.contains_key(http::header::CONTENT_LENGTH)
            && !headers.contains_key(http::header::TRANSFER_ENCODING)
        {
            headers.insert(
                http::header::TRANSFER_ENCODING,
                http::HeaderValue::from_static("chunked"),
            );
        }
        if !headers.contains_key(http::header::HOST) && !head.authority.is_empty() {
            if let Ok(v) = head.authority.parse() {
                headers.insert(http::header::HOST, v);
            }
        }
        let mut req = Request::new(body);
        *req.method_mut() = http::Method::from_bytes(head.method.as_bytes())
            .map_err(|_| format!("bad method {:?}", head.method))?;
        *req.uri_mut() = uri;
        *req.version_mut() = if self.h2c() {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        *req.headers_mut() = headers;
        Ok(req)
    }

    /// Serves one stream whose `StreamHeader::Http(head)` has been read.
    pub async fn serve(
        &self,
        mut head: RequestHead,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        max_frame_len: usize,
    ) -> RequestRecord {
        let started = Instant::now();
        let mut record = RequestRecord {
            method: head.method.clone(),
            path: head.path_and_query.clone(),
            status: 0,
            duration: Duration::ZERO,
        };
        let headers = std::mem::take(&mut head.headers).into_map();
        let upgrade = is_upgrade_request(&headers);
        // Read now: the headers go to the app, and an error page is written in this format.
        let format = PageFormat::of(&headers);
        // The request body, and for an upgrade the rest of the stream (the raw pipe after End).
        let (body, pipe_recv): (Body, Option<quinn::RecvStream>) = if upgrade {
            match read_frame(&mut recv, max_frame_len).await {
                Ok(Some(Frame::End)) => (
                    Empty::new().map_err(|n| match n {}).boxed_unsync(),
                    Some(recv),
                ),
                other => {
                    debug!("upgrade request with a body, or a broken stream: {other:?}");
                    let _ = send.reset(quinn::VarInt::from_u32(proto::codes::STREAM_BAD_HEADER));
                    return record;
                }
            }
        } else {
            let mut body = FrameBody::new(Box::new(recv), max_frame_len);
            // A request whose End came with its head reaches the app without a body.
            body.look_ahead_now().await;
            (
                body.map_err(|e| Box::new(e) as BoxError).boxed_unsync(),
                None,
            )
        };
        let req = match self.request(&head, headers, body) {
            Ok(r) => r,
            Err(e) => {
                // The edge passed it, but it cannot be written to the app: it is the request.
                let detail = format!("The developer's client cannot send this request on: {e}.");
                let page = pages::page(StatusCode::BAD_REQUEST, format, "Bad request", &detail);
                return reply_page(&mut send, record, started, page).await;
            }
        };
        let (mut resp, conn) = match self.send_watching(req, &send).await {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                let local = self.authority.as_str();
                let page = match e {
                    LocalFailure::Unreachable(e) => pages::local_app_unreachable(format, local, &e),
                    LocalFailure::Failed(e) => pages::local_app_failed(format, local, &e),
                };
                return reply_page(&mut send, record, started, page).await;
            }
            None => {
                debug!("visitor left before the local app answered; request cancelled");
                record.duration = started.elapsed();
                return record;
            }
        };
        record.status = resp.status().as_u16();
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS && pipe_recv.is_some();
        let on_upgrade = switching.then(|| hyper::upgrade::on(&mut resp));
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, switching);
        let mut head = Vec::with_capacity(256);
        if Frame::ResponseHead(ResponseHead::from_parts(parts))
            .encode(&mut head)
            .is_err()
        {
            let _ = send.reset(quinn::VarInt::from_u32(proto::codes::STREAM_PEER_FAILED));
            record.duration = started.elapsed();
            return record;
        }
        match (on_upgrade, pipe_recv) {
            (Some(on_upgrade), Some(recv)) => {
                if send.write_all(&head).await.is_err() {
                    record.duration = started.elapsed();
                    return record;
                }
                match on_upgrade.await {
                    Ok(upgraded) => {
                        let mut local = TokioIo::new(upgraded);
                        let mut tunnel = tokio::io::join(recv, send);
                        let _ = tokio::io::copy_bidirectional(&mut local, &mut tunnel).await;
                    }
                    Err(e) => debug!("local upgrade failed: {e}"),
                }
            }
            // Head and body in as few writes as the body allows (one, for a small response).
            _ => match send_message(head, body, &mut send).await {
                Ok(()) => {
                    let _ = send.shutdown().await;
                    record.duration = started.elapsed();
                    // Read to its end: the connection can carry the next request.
                    if let (Some(conn), Transport::Http1(pool)) = (conn, &self.transport) {
                        pool.give_back(conn).await;
                    }
                    return record;
                }
                Err(e) => debug!("response body cut: {e}"),
            },
        }
        record.duration = started.elapsed();
        record
    }

    /// Sends `req` to the local app, unless the visitor goes away first (`None`): then the
    /// request future is dropped, which closes the connection to the local app.
    async fn send_watching(
        &self,
        req: Request<Body>,
        send: &quinn::SendStream,
    ) -> Option<Result<(Response<hyper::body::Incoming>, Option<Http1Conn>), LocalFailure>> {
        let stopped = send.stopped();
        let exchange = async {
            match &self.transport {
                Transport::Http1(pool) => pool
                    .send(req)
                    .await
                    .map(|(resp, conn)| (resp, Some(conn)))
                    .map_err(|e| match e {
                        AppError::Connect(_) => LocalFailure::Unreachable(e.to_string()),
                        AppError::Exchange(_) => LocalFailure::Failed(e.to_string()),
                    }),
                Transport::H2c(client) => client
                    .request(req)
                    .await
                    .map(|resp| (resp, None))
                    .map_err(|e| match e.is_connect() {
                        true => LocalFailure::Unreachable(error_chain(&e)),
                        false => LocalFailure::Failed(error_chain(&e)),
                    }),
            }
        };
        tokio::select! {
            r = exchange => Some(r),
            _ = stopped => None,
        }
    }
}

/// Answers the stream with a page the client wrote itself (head and body in one write).
async fn reply_page(
    send: &mut quinn::SendStream,
    mut record: RequestRecord,
    started: Instant,
    page: Response<edge::BoxBody>,
) -> RequestRecord {
    record.status = page.status().as_u16();
    let (parts, body) = page.into_parts();
    let mut prefix = Vec::with_capacity(256);
    if Frame::ResponseHead(ResponseHead::from_parts(parts))
        .encode(&mut prefix)
        .is_ok()
        && send_message(prefix, body, send).await.is_ok()
    {
        let _ = send.shutdown().await;
    }
    record.duration = started.elapsed();
    record
}

/// An error and its causes on one line ("client error (Connect): tcp connect error: Connection
/// refused"), since hyper's top-level message alone says little.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}
