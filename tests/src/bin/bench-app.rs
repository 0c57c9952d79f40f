//! A minimal, fast HTTP/1.1 app for measuring the tunnel rather than the app:
//! `bench-app ADDR` (e.g. `127.0.0.1:0`; the bound address is printed on stderr) answers
//!
//! - `GET /bytes/N`: N bytes, streamed in 64 KiB chunks of one static buffer (bulk download);
//! - `POST /upload`: consumes the body and answers its length in bytes, as text (bulk upload);
//! - `GET /ws` with a WebSocket upgrade: echoes every message back (WebSocket round trips);
//! - anything else: a 13-byte body, `Hello, world!` (small responses).

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use tokio_tungstenite::tungstenite::protocol::Role;

type Body = UnsyncBoxBody<Bytes, Infallible>;

const CHUNK_LEN: usize = 64 * 1024;
static CHUNK: [u8; CHUNK_LEN] = [b'x'; CHUNK_LEN];

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).boxed_unsync());
    *resp.status_mut() = status;
    resp
}

/// `n` bytes as a stream of 64 KiB frames that all point at the same static buffer.
fn bytes_body(n: u64) -> Response<Body> {
    let chunks = n.div_ceil(CHUNK_LEN as u64);
    let stream = futures_util::stream::iter((0..chunks).map(move |i| {
        let len = (n - i * CHUNK_LEN as u64).min(CHUNK_LEN as u64) as usize;
        Ok::<_, Infallible>(Frame::data(Bytes::from_static(&CHUNK[..len])))
    }));
    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, header::HeaderValue::from(n));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

/// Reads the whole body, keeping only its length.
async fn upload(req: Request<Incoming>) -> Response<Body> {
    let mut body = req.into_body();
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    total += d.len() as u64;
                }
            }
            Err(e) => return full(StatusCode::BAD_REQUEST, format!("body error: {e}")),
        }
    }
    full(StatusCode::OK, total.to_string())
}

/// Answers the upgrade, then echoes every message on the upgraded connection.
fn websocket(mut req: Request<Incoming>) -> Response<Body> {
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return full(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade");
    };
    if !is_upgrade {
        return full(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade");
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        // Polling on after a Close lets tungstenite send the Close reply; the stream then ends.
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                continue;
            }
            if (msg.is_binary() || msg.is_text()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut resp = full(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
    let h = resp.headers_mut();
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path();
    if let Some(n) = path.strip_prefix("/bytes/") {
        return Ok(match n.parse::<u64>() {
            Ok(n) if req.method() == http::Method::GET => bytes_body(n),
            _ => full(StatusCode::BAD_REQUEST, "GET /bytes/N with N a byte count"),
        });
    }
    if path == "/upload" && req.method() == http::Method::POST {
        return Ok(upload(req).await);
    }
    if path == "/ws" {
        return Ok(websocket(req));
    }
    Ok(full(StatusCode::OK, Bytes::from_static(b"Hello, world!")))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("bench-app listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), hyper::service::service_fn(handle))
                .with_upgrades()
                .await;
        });
    }
}
