//! Apps that stand for production and for developers' local apps.
//!
//! `GET /bytes/<n>` streams `n` bytes of [`pattern`]; every other request is answered with a
//! JSON description of what the app received: its name, method, URI, headers (repeated ones
//! as `a | b`), and the length
//! and SHA-256 of the body.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use tokio::net::TcpListener;

pub type AppBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// The byte at offset `i` of a `/bytes/<n>` response.
pub fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Starts the echo app named `name` on an ephemeral port.
pub async fn echo_app(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| handle(name, req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn handle(
    name: &'static str,
    req: http::Request<Incoming>,
) -> Result<http::Response<AppBody>, std::io::Error> {
    if let Some(n) = req
        .uri()
        .path()
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        const CHUNK: usize = 256 * 1024;
        let chunks = (0..n.div_ceil(CHUNK)).map(move |c| {
            let start = c * CHUNK;
            let end = (start + CHUNK).min(n);
            Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from(
                (start..end).map(pattern).collect::<Vec<u8>>(),
            )))
        });
        let body = StreamBody::new(futures_util::stream::iter(chunks)).boxed_unsync();
        return Ok(http::Response::builder()
            .header("content-length", n.to_string())
            .body(body)
            .unwrap());
    }
    let (parts, body) = req.into_parts();
    let mut hasher = Sha256::new();
    let mut len = 0usize;
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(std::io::Error::other)?;
        if let Some(d) = frame.data_ref() {
            hasher.update(d);
            len += d.len();
        }
    }
    // Repeated headers are reported as all their values in order, joined by " | ".
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .keys()
        .map(|k| {
            let values: Vec<String> = parts
                .headers
                .get_all(k)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            (
                k.as_str().to_owned(),
                serde_json::Value::String(values.join(" | ")),
            )
        })
        .collect();
    let json = serde_json::json!({
        "app": name,
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "headers": headers,
        "body_len": len,
        "body_sha256": hasher.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>(),
    });
    Ok(http::Response::builder()
        .header("content-type", "application/json")
        .header("x-app", name)
        .body(
            Full::new(Bytes::from(json.to_string()))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .unwrap())
}
