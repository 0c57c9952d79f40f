//! Phase 1 of the edge: find the routing key of a request. Host first (`:authority` in
//! HTTP/2), then the key header. Pure: no I/O, unit-tested byte for byte.

use http::request::Parts;
use proto::RoutingKey;
use regex::{Regex, RegexBuilder};

/// Where a routing key was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    Host,
    Header,
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

    pub fn key_header(&self) -> &http::HeaderName {
        &self.key_header
    }

    pub fn decide(&self, parts: &Parts) -> RouteDecision {
        let host = request_host(parts);
        if let Some(caps) = host.as_deref().and_then(|h| self.host_pattern.captures(h)) {
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

/// The authority the visitor asked for (`host[:port]`): `:authority` (HTTP/2, absolute-form)
/// first, then the `Host` header.
pub fn request_authority(parts: &Parts) -> Option<String> {
    parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
}

/// The host the visitor asked for, without port.
pub fn request_host(parts: &Parts) -> Option<String> {
    let authority = request_authority(parts)?;
    let host = match authority.parse::<http::uri::Authority>() {
        Ok(a) => a.host().to_owned(),
        Err(_) => authority,
    };
    Some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

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
