//! The admin API: plain HTTP/1.1 on a local address, JSON in and out.
//!
//! | method | path | does |
//! | --- | --- | --- |
//! | POST | `/api/createToken` (body optional: `{"name": "alice"}`) | issues a token |
//! | GET | `/api/tokens` | lists tokens (never the secrets) and whether each is connected |
//! | POST | `/api/tokens/<key>/revoke` | revokes a token and closes its live connection |
//! | GET | `/api/sessions` | lists connected developers |
//! | GET | `/api/health` | `{"ok":true}` |
//!
//! Every request is judged by the TCP peer address against `admin_allow` before anything
//! else; headers such as `X-Forwarded-For` are never consulted.

use crate::Relay;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::json;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

/// Largest request body the admin API reads.
const MAX_ADMIN_BODY: usize = 64 * 1024;
/// Header read timeout for admin connections.
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateTokenBody {
    #[serde(default)]
    name: Option<String>,
}

/// Serves the admin API on `listener` until `shutdown` completes.
pub async fn serve_admin(
    relay: Arc<Relay>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!("admin accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let relay = relay.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let relay = relay.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&relay, peer, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                debug!(%peer, "admin connection: {e}");
            }
        });
    }
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    reply(status, json!({ "error": message.into() }))
}

async fn handle(relay: &Relay, peer: SocketAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
    // Normalise v4-mapped v6 addresses so that 127.0.0.0/8 matches ::ffff:127.0.0.1.
    let ip = peer.ip().to_canonical();
    if !relay.config.admin_allow.iter().any(|net| net.contains(&ip)) {
        warn!(%peer, path = %req.uri().path(), "admin request refused: peer not allowed");
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "the admin API accepts requests only from {}; this request came from {ip}",
                relay
                    .config
                    .admin_allow
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method().clone(), segments.as_slice()) {
        (Method::POST, ["api", "createToken"]) => create_token(relay, req).await,
        (Method::GET, ["api", "tokens"]) => list_tokens(relay),
        (Method::POST, ["api", "tokens", key, "revoke"]) => revoke(relay, key),
        (Method::GET, ["api", "sessions"]) => reply(StatusCode::OK, json!(relay.registry.infos())),
        (Method::GET, ["api", "health"]) => reply(StatusCode::OK, json!({ "ok": true })),
        (_, ["api", "createToken"]) | (_, ["api", "tokens", ..]) | (_, ["api", "sessions"]) => {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} is not allowed on {path}", req.method()),
            )
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint at {path}"),
        ),
    }
}

async fn create_token(relay: &Relay, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match Limited::new(req.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("cannot read request body: {e}"),
            )
        }
    };
    let parsed: CreateTokenBody = if body.iter().all(|b| b.is_ascii_whitespace()) {
        CreateTokenBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(p) => p,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("body must be empty or JSON like {{\"name\": \"alice\"}}: {e}"),
                )
            }
        }
    };
    let name = parsed.name.unwrap_or_default();
    match relay.tokens.create(&name) {
        Ok((token, record)) => {
            let name = proto::printable(&record.name);
            info!(key = %record.routing_key, %name, "token created");
            reply(
                StatusCode::OK,
                json!({
                    "token": token.expose(),
                    "routing_key": record.routing_key,
                    "name": record.name,
                    "public_urls": relay.config.public_urls_for(&record.routing_key),
                }),
            )
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn list_tokens(relay: &Relay) -> Response<Full<Bytes>> {
    let tokens: Vec<_> = relay
        .tokens
        .list()
        .into_iter()
        .map(|r| {
            let session = relay.registry.get(&r.routing_key);
            json!({
                "routing_key": r.routing_key,
                "name": r.name,
                "created_at": r.created_at,
                "revoked_at": r.revoked_at,
                "connected": session.is_some(),
                "client_name": session.as_ref().map(|s| s.client_name.clone()),
            })
        })
        .collect();
    reply(StatusCode::OK, json!(tokens))
}

fn revoke(relay: &Relay, key: &str) -> Response<Full<Bytes>> {
    let key = match proto::RoutingKey::parse(key) {
        Ok(k) => k,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match relay.revoke(&key) {
        Ok(Some(disconnected)) => reply(
            StatusCode::OK,
            json!({ "routing_key": key, "revoked": true, "disconnected": disconnected }),
        ),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("no token with routing key {key}"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
