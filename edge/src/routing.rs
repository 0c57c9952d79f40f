//! Phase 1 of the edge: find the routing key of a request. Host first (`:authority` in
//! HTTP/2), then the key header, then a `?devinprod=<key>` link (which also sets the cookie),
//! then the `devinprod_key` cookie. Pure: no I/O, unit-tested byte for byte.

use http::request::Parts;
use proto::RoutingKey;
use regex::{Regex, RegexBuilder};

/// Where a routing key was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    Host,
    Header,
    /// `?devinprod=<key>` in the URL.
    Link,
    Cookie,
}

/// The query parameter that sets (`=<key>`) or clears (`=off`) the routing cookie.
pub const LINK_PARAM: &str = "devinprod";
/// The cookie that keeps a browsing session on one developer.
pub const COOKIE: &str = "devinprod_key";

/// What the response should do with the routing cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CookieAction {
    Set(RoutingKey),
    Clear,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteDecision {
    /// The request is for this developer.
    Developer(RoutingKey, KeySource),
    /// No routing key: production answers.
    Production,
    /// The request names a key that cannot be one (the visitor gets 400 with this reason).
    Invalid(String),
}

/// Finds routing keys in requests, as configured.
#[derive(Debug, Clone)]
pub struct RouteFinder {
    host_pattern: Regex,
    key_header: http::HeaderName,
}

#[derive(Debug, thiserror::Error)]
pub enum RoutingConfigError {
    #[error("host_pattern {pattern:?} is not a valid regular expression: {detail}")]
    BadPattern { pattern: String, detail: String },
    #[error("host_pattern {0:?} has no named group `key`, e.g. (?P<key>[a-z0-9]{{6}})")]
    NoKeyGroup(String),
    #[error("key_header {0:?} is not a valid header name")]
    BadHeader(String),
}

impl RouteFinder {
    pub fn new(host_pattern: &str, key_header: &str) -> Result<Self, RoutingConfigError> {
        let re = RegexBuilder::new(host_pattern)
            .case_insensitive(true)
            .build()
            .map_err(|e| RoutingConfigError::BadPattern {
                pattern: host_pattern.into(),
                detail: e.to_string(),
            })?;
        if !re.capture_names().any(|n| n == Some("key")) {
            return Err(RoutingConfigError::NoKeyGroup(host_pattern.into()));
        }
        let key_header = http::HeaderName::from_bytes(key_header.as_bytes())
            .map_err(|_| RoutingConfigError::BadHeader(key_header.into()))?;
        Ok(Self {
            host_pattern: re,
            key_header,
        })
    }

    /// The production host for a request routed by host: the matched `www-<key>.` part
    /// replaced by `prefix` (the port, if any, kept). `None` if the host did not match.
    pub fn production_authority(&self, authority: &str, prefix: &str) -> Option<String> {
        let (host, port) = host_and_port(authority);
        let m = self.host_pattern.find(host)?;
        let mut out = String::with_capacity(authority.len() + prefix.len());
        out.push_str(&host[..m.start()]);
        out.push_str(prefix);
        out.push_str(&host[m.end()..]);
        if let Some(port) = port {
            out.push(':');
            out.push_str(port);
        }
        Some(out)
    }

    pub fn key_header(&self) -> &http::HeaderName {
        &self.key_header
    }

    /// The decision, and what to do with the routing cookie.
    pub fn route(&self, parts: &Parts) -> (RouteDecision, Option<CookieAction>) {
        let decision = self.decide(parts);
        if matches!(
            decision,
            RouteDecision::Developer(_, KeySource::Host | KeySource::Header)
                | RouteDecision::Invalid(_)
        ) {
            return (decision, None);
        }
        match query_param(parts.uri.query(), LINK_PARAM).as_deref() {
            Some("off") => (RouteDecision::Production, Some(CookieAction::Clear)),
            Some(value) => match RoutingKey::parse(value) {
                Ok(k) => (
                    RouteDecision::Developer(k.clone(), KeySource::Link),
                    Some(CookieAction::Set(k)),
                ),
                Err(_) => (
                    RouteDecision::Invalid(format!(
                        "?{LINK_PARAM}= must be a 6-character routing key [a-z0-9] or `off`"
                    )),
                    None,
                ),
            },
            None => {
                match crate::access::cookie(&parts.headers, COOKIE).map(|v| RoutingKey::parse(&v)) {
                    Some(Ok(k)) => (RouteDecision::Developer(k, KeySource::Cookie), None),
                    // A stale or forged cookie: production, and the cookie goes.
                    Some(Err(_)) => (RouteDecision::Production, Some(CookieAction::Clear)),
                    None => (decision, None),
                }
            }
        }
    }

    /// Whether the first request in `head` (the raw bytes a visitor sent first, perhaps only
    /// part of them) names a developer's host in its `Host` header. A hint for where to serve
    /// the connection (`workers`), never a routing decision: [`RouteFinder::route`] decides
    /// each request as it comes. `false` when the bytes do not show a Host line.
    pub fn names_developer_host(&self, head: &[u8]) -> bool {
        let mut lines = head.split(|b| *b == b'\n');
        lines.next(); // the request line
        for line in lines {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                break;
            }
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            if !line[..colon].eq_ignore_ascii_case(b"host") {
                continue;
            }
            let Ok(value) = std::str::from_utf8(&line[colon + 1..]) else {
                return false;
            };
            let host = host_and_port(value.trim()).0;
            return self.host_pattern.is_match(host);
        }
        false
    }

    /// Host and header only.
    pub fn decide(&self, parts: &Parts) -> RouteDecision {
        let host = request_host(parts);
        // `is_match` first: most hosts are production's, and it needs no capture slots.
        if let Some(caps) = host
            .filter(|h| self.host_pattern.is_match(h))
            .and_then(|h| self.host_pattern.captures(h))
        {
            if let Some(m) = caps.name("key") {
                return match RoutingKey::parse(m.as_str()) {
                    Ok(k) => RouteDecision::Developer(k, KeySource::Host),
                    Err(e) => RouteDecision::Invalid(format!("host names a bad routing key: {e}")),
                };
            }
        }
        if let Some(v) = parts.headers.get(&self.key_header) {
            return match v
                .to_str()
                .map_err(|_| ())
                .and_then(|s| RoutingKey::parse(s).map_err(|_| ()))
            {
                Ok(k) => RouteDecision::Developer(k, KeySource::Header),
                Err(()) => RouteDecision::Invalid(format!(
                    "the {} header must be a 6-character routing key [a-z0-9]",
                    self.key_header
                )),
            };
        }
        RouteDecision::Production
    }
}

/// The first value of query parameter `name` (no percent-decoding: keys are `[a-z0-9]`).
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// `uri` without query parameter `name` (so the routing link never reaches an app).
pub fn without_query_param(uri: &http::Uri, name: &str) -> http::Uri {
    let Some(query) = uri.query() else {
        return uri.clone();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| kv.split('=').next() != Some(name))
        .collect();
    let path_and_query = if kept.is_empty() {
        uri.path().to_owned()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = path_and_query.parse().ok();
    http::Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

/// The `Set-Cookie` value for `action`.
pub fn set_cookie(action: &CookieAction) -> String {
    match action {
        CookieAction::Set(k) => format!("{COOKIE}={k}; Path=/; HttpOnly; SameSite=Lax"),
        CookieAction::Clear => format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"),
    }
}

/// The authority the visitor asked for (`host[:port]`): `:authority` (HTTP/2, absolute-form)
/// first, then the `Host` header. Borrowed: this runs several times per request.
pub fn request_authority(parts: &Parts) -> Option<&str> {
    parts.uri.authority().map(|a| a.as_str()).or_else(|| {
        parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// The host the visitor asked for, without port (or user info): what
/// `http::uri::Authority::host` gives for a valid authority, without parsing one per request.
/// Anything else is returned whole.
pub fn request_host(parts: &Parts) -> Option<&str> {
    request_authority(parts).map(|a| host_and_port(a).0)
}

/// The port of `authority` (`host:port`), if it names one.
pub fn authority_port(authority: &str) -> Option<u16> {
    host_and_port(authority).1?.parse().ok()
}

/// `authority` without `user[:password]@`: what a request may carry in an absolute-form target
/// but no header should repeat.
pub fn without_userinfo(authority: &str) -> &str {
    authority.rsplit_once('@').map_or(authority, |(_, h)| h)
}

/// `authority` split as `Authority::host` and `Authority::port_u16` would (an empty port is
/// none), borrowed. Anything that is not `[user@]host[:port]` is returned whole as the host.
pub(crate) fn host_and_port(authority: &str) -> (&str, Option<&str>) {
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, rest) = if host_port.starts_with('[') {
        // An IPv6 literal keeps its brackets, as in `Authority::host`.
        match host_port.find(']') {
            Some(end) => host_port.split_at(end + 1),
            None => return (authority, None),
        }
    } else {
        match host_port.rsplit_once(':') {
            Some((host, _)) => host_port.split_at(host.len()),
            None => (host_port, ""),
        }
    };
    match rest.strip_prefix(':') {
        None if rest.is_empty() => (host, None),
        Some("") => (host, None),
        Some(port) if port.bytes().all(|b| b.is_ascii_digit()) => (host, Some(port)),
        _ => (host_port, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bytes_of_a_connection_show_whether_it_names_a_developer_host() {
        let r = RouteFinder::new(
            &crate::EdgeConfig::default().host_pattern,
            "x-devinprod-key",
        )
        .unwrap();
        let yes = |head: &str| r.names_developer_host(head.as_bytes());
        assert!(yes(
            "GET / HTTP/1.1\r\nHost: www-k3yx9q.example.com\r\n\r\n"
        ));
        assert!(yes(
            "GET / HTTP/1.1\r\nAccept: */*\r\nHOST:  WWW-K3YX9Q.example.com:8080\r\n"
        ));
        assert!(yes("GET / HTTP/1.1\nhost: www-k3yx9q-shop.example.com\n\n"));
        // Production hosts, no Host yet, a Host after the head, HTTP/2's preface, nothing.
        assert!(!yes("GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n"));
        assert!(!yes("GET / HTTP/1.1\r\nAccept: */*\r\n"));
        assert!(!yes(
            "GET / HTTP/1.1\r\n\r\nHost: www-k3yx9q.example.com\r\n"
        ));
        assert!(!yes("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(!yes(""));
        assert!(!r.names_developer_host(b"GET / HTTP/1.1\r\nHost: www-k3yx9q.exa\xffmple\r\n"));
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn finder() -> RouteFinder {
        RouteFinder::new("^www-(?P<key>[a-z0-9]{6})[.-]", "x-devinprod-key").unwrap()
    }

    #[test]
    fn request_host_matches_what_authority_parsing_gives() {
        for authority in [
            "www-abc123.example.com",
            "www-abc123.example.com:8080",
            "WWW-AbC123.Example.com:443",
            "user:pw@example.com:80",
            "[::1]",
            "[::1]:8443",
            "127.0.0.1:3000",
            "example.com:",
        ] {
            let parsed: http::uri::Authority = authority.parse().unwrap();
            let p = parts("/", &[("host", authority)]);
            assert_eq!(request_host(&p), Some(parsed.host()), "{authority}");
            let port = host_and_port(authority)
                .1
                .map(|p| p.parse::<u16>().unwrap());
            assert_eq!(port, parsed.port_u16(), "{authority}");
        }
        let absolute = parts("http://www-abc123.example.com:81/x", &[("host", "other")]);
        assert_eq!(request_host(&absolute), Some("www-abc123.example.com"));
        assert_eq!(request_host(&parts("/", &[])), None);
    }

    #[test]
    fn host_key_is_found_case_insensitively_and_port_ignored() {
        let p = parts("/", &[("host", "WWW-AbC123.Example.com:8080")]);
        assert_eq!(
            finder().decide(&p),
            RouteDecision::Developer(RoutingKey::parse("abc123").unwrap(), KeySource::Host)
        );
    }

    #[test]
    fn http2_authority_counts_as_host() {
        let p = parts("https://www-abc123.example.com/x", &[]);
        assert!(matches!(
            finder().decide(&p),
            RouteDecision::Developer(_, KeySource::Host)
        ));
    }

    #[test]
    fn host_wins_over_header_and_header_works_alone() {
        let p = parts(
            "/",
            &[
                ("host", "www-aaaaaa.example.com"),
                ("x-devinprod-key", "bbbbbb"),
            ],
        );
        assert_eq!(
            finder().decide(&p),
            RouteDecision::Developer(RoutingKey::parse("aaaaaa").unwrap(), KeySource::Host)
        );
        let p = parts(
            "/",
            &[("host", "www.example.com"), ("x-devinprod-key", "BBBBBB")],
        );
        assert_eq!(
            finder().decide(&p),
            RouteDecision::Developer(RoutingKey::parse("bbbbbb").unwrap(), KeySource::Header)
        );
    }

    #[test]
    fn no_key_means_production_and_a_bad_header_is_invalid() {
        assert_eq!(
            finder().decide(&parts("/", &[("host", "www.example.com")])),
            RouteDecision::Production
        );
        assert_eq!(
            finder().decide(&parts("/", &[("host", "www-abc.example.com")])),
            RouteDecision::Production
        );
        assert!(matches!(
            finder().decide(&parts("/", &[("x-devinprod-key", "nope")])),
            RouteDecision::Invalid(_)
        ));
    }

    #[test]
    fn links_set_and_clear_the_cookie_and_host_or_header_win_over_it() {
        let f = finder();
        let (d, c) = f.route(&parts(
            "/shop?devinprod=AbC123&x=1",
            &[("host", "www.example.com")],
        ));
        assert_eq!(
            d,
            RouteDecision::Developer(RoutingKey::parse("abc123").unwrap(), KeySource::Link)
        );
        assert_eq!(
            c,
            Some(CookieAction::Set(RoutingKey::parse("abc123").unwrap()))
        );
        let (d, c) = f.route(&parts(
            "/",
            &[
                ("host", "www.example.com"),
                ("cookie", "a=1; devinprod_key=abc123"),
            ],
        ));
        assert_eq!(
            d,
            RouteDecision::Developer(RoutingKey::parse("abc123").unwrap(), KeySource::Cookie)
        );
        assert_eq!(c, None);
        let (d, c) = f.route(&parts(
            "/?devinprod=off",
            &[
                ("host", "www.example.com"),
                ("cookie", "devinprod_key=abc123"),
            ],
        ));
        assert_eq!(
            (d, c),
            (RouteDecision::Production, Some(CookieAction::Clear))
        );
        let (d, _) = f.route(&parts(
            "/",
            &[
                ("host", "www-zzzzzz.example.com"),
                ("cookie", "devinprod_key=abc123"),
            ],
        ));
        assert_eq!(
            d,
            RouteDecision::Developer(RoutingKey::parse("zzzzzz").unwrap(), KeySource::Host)
        );
        let (d, _) = f.route(&parts(
            "/",
            &[
                ("x-devinprod-key", "yyyyyy"),
                ("cookie", "devinprod_key=abc123"),
            ],
        ));
        assert_eq!(
            d,
            RouteDecision::Developer(RoutingKey::parse("yyyyyy").unwrap(), KeySource::Header)
        );
        let (d, c) = f.route(&parts("/", &[("cookie", "devinprod_key=../etc")]));
        assert_eq!(
            (d, c),
            (RouteDecision::Production, Some(CookieAction::Clear))
        );
    }

    #[test]
    fn the_routing_link_is_removed_from_the_url() {
        let uri: http::Uri = "/shop?a=1&devinprod=abc123&b=2".parse().unwrap();
        assert_eq!(without_query_param(&uri, LINK_PARAM), "/shop?a=1&b=2");
        let uri: http::Uri = "/shop?devinprod=abc123".parse().unwrap();
        assert_eq!(without_query_param(&uri, LINK_PARAM), "/shop");
    }

    #[test]
    fn the_developer_sees_the_production_host() {
        let f = finder();
        assert_eq!(
            f.production_authority("www-abc123.example.com", "www.")
                .as_deref(),
            Some("www.example.com")
        );
        assert_eq!(
            f.production_authority("WWW-ABC123.example.com:8443", "www.")
                .as_deref(),
            Some("www.example.com:8443")
        );
        assert_eq!(
            f.production_authority("www-abc123-shop.example.com", "")
                .as_deref(),
            Some("shop.example.com")
        );
        assert_eq!(f.production_authority("www.example.com", "www."), None);
    }

    #[test]
    fn a_pattern_without_a_key_group_is_refused() {
        assert!(matches!(
            RouteFinder::new("^www-", "x"),
            Err(RoutingConfigError::NoKeyGroup(_))
        ));
        assert!(matches!(
            RouteFinder::new("(", "x"),
            Err(RoutingConfigError::BadPattern { .. })
        ));
    }
}
