//! Responses the edge writes itself: what a visitor sees when something is not there.

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};

use crate::BoxBody;

/// Seconds between reloads of the "developer offline" and "local app unreachable" pages.
pub const OFFLINE_REFRESH_SECS: u32 = 5;

/// How a visitor wants the edge's own pages: HTML for a browser (its `Accept` names
/// `text/html`), plain text otherwise. Read once from the request, so the request's headers
/// need not be kept (cloned) for a page that is rarely written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageFormat {
    html: bool,
}

impl PageFormat {
    pub fn of(request_headers: &HeaderMap) -> Self {
        let html = request_headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/html"));
        Self { html }
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A page with `status`, a title and a sentence, as HTML for browsers and plain text otherwise.
pub fn page(
    status: StatusCode,
    format: PageFormat,
    title: &str,
    detail: &str,
) -> Response<BoxBody> {
    page_with_refresh(status, format, title, detail, None)
}

fn page_with_refresh(
    status: StatusCode,
    format: PageFormat,
    title: &str,
    detail: &str,
    refresh_secs: Option<u32>,
) -> Response<BoxBody> {
    let refresh = refresh_secs
        .map(|s| format!("<meta http-equiv=\"refresh\" content=\"{s}\">"))
        .unwrap_or_default();
    let (body, content_type) = if format.html {
        (
            format!(
                "<!doctype html>\n<html><head><meta charset=\"utf-8\">{refresh}<title>{t}</title></head>\
                 <body><h1>{t}</h1><p>{d}</p><hr><p>DevInProd edge</p></body></html>\n",
                t = escape(title),
                d = escape(detail)
            ),
            "text/html; charset=utf-8",
        )
    } else {
        (format!("{title}\n{detail}\n"), "text/plain; charset=utf-8")
    };
    let mut resp = Response::new(crate::full(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    if let Some(s) = refresh_secs {
        headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from(s));
    }
    resp
}

/// 502 for a routing key whose developer is not connected; in a browser it reloads itself
/// every few seconds, so it turns into the developer's app as soon as they reconnect.
pub fn developer_offline(format: PageFormat, key: &proto::RoutingKey) -> Response<BoxBody> {
    page_with_refresh(
        StatusCode::BAD_GATEWAY,
        format,
        "Developer offline",
        &format!(
            "No developer is connected for routing key {key}. The developer must run \
             `devinprod connect` with the token of this key; this page reloads every \
             {OFFLINE_REFRESH_SECS} s until they do."
        ),
        Some(OFFLINE_REFRESH_SECS),
    )
}

/// 502 when the relay cannot be reached (down, restarting, silent): it reloads itself like
/// [`developer_offline`], since the route comes back by itself with the relay.
pub fn relay_unavailable(format: PageFormat, detail: &str) -> Response<BoxBody> {
    page_with_refresh(
        StatusCode::BAD_GATEWAY,
        format,
        "Relay unavailable",
        &format!(
            "The edge cannot reach the DevInProd relay: {detail}. This page reloads every \
             {OFFLINE_REFRESH_SECS} s."
        ),
        Some(OFFLINE_REFRESH_SECS),
    )
}

/// 502 for a developer who is connected but whose client cannot reach their local app (not
/// started yet, restarting, wrong `--http`). Like the offline page it reloads itself in a
/// browser, so it turns into the app as soon as the app answers. The developer's client
/// writes it (only it knows), with this template so that both pages look and behave alike.
pub fn local_app_unreachable(format: PageFormat, local: &str, error: &str) -> Response<BoxBody> {
    page_with_refresh(
        StatusCode::BAD_GATEWAY,
        format,
        "Local app unreachable",
        &format!(
            "The developer's `devinprod connect` is running, but cannot reach your local app \
             at {local}: {error}. Start the app (or check `--http`); this page reloads every \
             {OFFLINE_REFRESH_SECS} s until it answers."
        ),
        Some(OFFLINE_REFRESH_SECS),
    )
}

/// 502 for a local app that was reached but did not answer properly (an invalid response, a
/// connection closed before the answer). Written by the developer's client, like
/// [`local_app_unreachable`]; not reloading: the same request would fail the same way.
pub fn local_app_failed(format: PageFormat, local: &str, error: &str) -> Response<BoxBody> {
    page(
        StatusCode::BAD_GATEWAY,
        format,
        "Local app failed",
        &format!("The developer's local app at {local} did not answer properly: {error}."),
    )
}

/// 400 for a request whose body could not be read (a malformed chunked encoding, a cut
/// upload): the visitor's fault, whatever the app or production made of the half they got.
pub fn bad_request_body(format: PageFormat, why: &str) -> Response<BoxBody> {
    page(
        StatusCode::BAD_REQUEST,
        format,
        "Bad request body",
        &format!("The edge could not read this request's body: {why}."),
    )
}

/// 408 for a request whose body stalled (`body_read_timeout_ms`) or came too slowly
/// (`body_min_bytes_per_sec`): the upstream request was aborted, and the connection closes
/// after this answer (the rest of the body is not read).
pub fn body_timeout(format: PageFormat, why: &str) -> Response<BoxBody> {
    let mut resp = page(
        StatusCode::REQUEST_TIMEOUT,
        format,
        "Request body timed out",
        &format!("The edge gave up on this request's body: {why}."),
    );
    resp.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    resp
}
