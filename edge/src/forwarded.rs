//! Phase 2, the forwarding headers: what the app is told about the visitor and about the
//! address the visitor used, so that it can log the right client and build absolute URLs
//! (redirects, links in mail) that lead back through the edge.

use crate::Visitor;
use http::{HeaderMap, HeaderName, HeaderValue};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// `X-Forwarded-For/-Proto/-Host/-Port`: kept and extended when the peer is a trusted proxy,
/// replaced otherwise (a visitor cannot claim another address, host or port). `host` is the
/// authority the visitor asked for, port included as it was sent; `scheme` is how the
/// visitor reached this edge.
pub(crate) fn set(headers: &mut HeaderMap, visitor: &Visitor, host: &str, scheme: &'static str) {
    // Room for the four headers added below, so the map grows at most once.
    headers.reserve(4);
    if visitor.trusted {
        // A proxy we trust: its claims stand, and the chain gets this hop.
        let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", visitor.ip)).ok(),
            None => Some(visitor.ip_value.clone()),
        };
        if let Some(v) = xff {
            headers.insert(X_FORWARDED_FOR, v);
        }
        if !headers.contains_key(&X_FORWARDED_PORT) {
            let port = port_behind_proxy(headers, host)
                .map_or_else(|| visitor.port_value.clone(), HeaderValue::from);
            headers.insert(X_FORWARDED_PORT, port);
        }
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
        }
        if !headers.contains_key(&X_FORWARDED_HOST) {
            if let Ok(v) = HeaderValue::from_str(host) {
                headers.insert(X_FORWARDED_HOST, v);
            }
        }
        return;
    }
    // Anyone else: whatever the visitor claimed goes, ours replace it.
    let claims = [
        &http::header::FORWARDED,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_HOST,
        &X_FORWARDED_PORT,
        &X_REAL_IP,
    ];
    // A visitor rarely sends any: look once rather than hash each name (hot path).
    if headers.keys().any(|n| claims.contains(&n)) {
        for name in claims {
            headers.remove(name);
        }
    }
    headers.insert(X_FORWARDED_FOR, visitor.ip_value.clone());
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    if let Ok(v) = HeaderValue::from_str(host) {
        headers.insert(X_FORWARDED_HOST, v);
    }
    headers.insert(X_FORWARDED_PORT, visitor.port_value.clone());
}

/// The port a visitor reached a trusted proxy on, when the proxy did not say: the one in the
/// host it forwarded (`X-Forwarded-Host`, else the `host` it sent on), else the default of the
/// scheme it forwarded. The edge's own port is the proxy's, not the visitor's (nginx on 443 in
/// front of an edge on 8080). `None` when the proxy says none of it (the caller falls back to
/// the edge's port).
fn port_behind_proxy(headers: &HeaderMap, host: &str) -> Option<u16> {
    // Each may be a list when several proxies appended to it: the first is the visitor's.
    let first = |name: &HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
    };
    let forwarded_host = first(&X_FORWARDED_HOST).unwrap_or(host);
    if let Some(port) = crate::routing::authority_port(forwarded_host) {
        return Some(port);
    }
    match first(&X_FORWARDED_PROTO) {
        Some(p) if p.eq_ignore_ascii_case("https") => Some(443),
        Some(p) if p.eq_ignore_ascii_case("http") => Some(80),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(trusted: bool, claims: &[(&str, &str)], host: &str) -> HeaderMap {
        let proxies: Vec<ipnet::IpNet> = if trusted {
            vec!["10.0.0.0/8".parse().unwrap()]
        } else {
            Vec::new()
        };
        let visitor = Visitor::new("10.1.2.3:5555".parse().unwrap(), 8080, &proxies);
        let mut headers = HeaderMap::new();
        for (k, v) in claims {
            let name = HeaderName::from_bytes(k.as_bytes()).unwrap();
            headers.append(name, HeaderValue::from_str(v).unwrap());
        }
        set(&mut headers, &visitor, host, "http");
        headers
    }

    #[test]
    fn a_visitors_host_keeps_its_port_and_its_claims_are_replaced() {
        let claims = [
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-port", "1"),
            ("x-forwarded-proto", "https"),
        ];
        let h = forwarded(false, &claims, "www-abc123.example.com:8080");
        assert_eq!(h["x-forwarded-host"], "www-abc123.example.com:8080");
        assert_eq!(h["x-forwarded-port"], "8080");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h.get_all("x-forwarded-port").iter().count(), 1);
    }

    #[test]
    fn behind_a_trusted_proxy_the_port_is_its_claim_or_follows_its_host_and_scheme() {
        let port = |claims: &[(&str, &str)], host| {
            forwarded(true, claims, host)["x-forwarded-port"].clone()
        };
        assert_eq!(port(&[("x-forwarded-port", "8443")], "a.example"), "8443");
        assert_eq!(
            port(
                &[("x-forwarded-host", "shop.example.com:9443")],
                "a.example"
            ),
            "9443"
        );
        assert_eq!(
            port(&[("x-forwarded-proto", "https")], "shop.example.com"),
            "443"
        );
        assert_eq!(
            port(&[("x-forwarded-proto", "HTTP, https")], "shop.example.com"),
            "80"
        );
        // No claim at all: the port of the host the proxy sent on, else the edge's own.
        assert_eq!(port(&[], "shop.example.com:8081"), "8081");
        assert_eq!(port(&[], "shop.example.com"), "8080");
    }
}
