//! Responses the edge writes itself: what a visitor sees when something is not there.

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};

use crate::BoxBody;

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
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
    request_headers: &HeaderMap,
    title: &str,
    detail: &str,
) -> Response<BoxBody> {
    let (body, content_type) = if wants_html(request_headers) {
        (
            format!(
                "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
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
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

pub fn developer_offline(
    request_headers: &HeaderMap,
    key: &proto::RoutingKey,
) -> Response<BoxBody> {
    page(
        StatusCode::BAD_GATEWAY,
        request_headers,
        "Developer offline",
        &format!(
            "No developer is connected for routing key {key}. The developer must run \
             `devinprod connect` with the token of this key."
        ),
    )
}
