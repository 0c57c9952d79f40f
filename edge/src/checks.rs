//! Messages the edge refuses to pass on because they can be read two ways, so that the edge,
//! production and the developer's app never act on different readings of one message
//! (request smuggling, routing by one host and serving another). A request's problems are
//! the visitor's (400); a developer's response's are the developer's (502).

use http::header::{CONTENT_LENGTH, HOST};
use http::request::Parts;
use http::{HeaderMap, HeaderValue};

/// Why the request names its host ambiguously, if it does: two `Host` headers (the edge
/// would route by one and the app might serve the other), or a request target (HTTP/1.1
/// absolute form, HTTP/2 `:authority`) whose authority is not the `Host` header's. Rejected
/// rather than resolved by RFC 9112 §3.2.2's "the target wins", so that the routing, the Host
/// the app sees and what any proxy before the edge saw cannot disagree.
pub(crate) fn ambiguous_host(parts: &Parts) -> Option<String> {
    let mut hosts = parts.headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Some("The request has more than one Host header.".into());
    }
    let (Some(target), Some(host)) = (parts.uri.authority(), host) else {
        return None;
    };
    let default_port = match parts.uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    let same = host
        .to_str()
        .ok()
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .is_some_and(|h| {
            h.host().eq_ignore_ascii_case(target.host())
                && h.port_u16().unwrap_or(default_port) == target.port_u16().unwrap_or(default_port)
        });
    (!same).then(|| {
        format!(
            "The request target names host {target} but the Host header names {}.",
            String::from_utf8_lossy(host.as_bytes())
        )
    })
}

/// Makes a developer's `Content-Length` one value, or says why it cannot be: values that
/// disagree or are not numbers leave the body's length unknowable, and hyper would refuse to
/// write such a head at all (the visitor got an empty reply, no status line). Repeats of one
/// value (`5` and `5`, or `5, 5`) are legal and become one `5`.
pub(crate) fn one_content_length(headers: &mut HeaderMap) -> Result<(), String> {
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return Ok(());
    };
    // The usual case: one plain number.
    if values.next().is_none() && length_of(first.as_bytes()).is_some() {
        return Ok(());
    }
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for item in value.as_bytes().split(|&b| b == b',') {
            match (length_of(item.trim_ascii()), length) {
                (None, _) => return Err(describe(headers)),
                (Some(n), Some(prev)) if n != prev => return Err(describe(headers)),
                (Some(n), _) => length = Some(n),
            }
        }
    }
    if let Some(n) = length {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(())
}

/// Digits only (no sign, no space), within u64.
fn length_of(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn describe(headers: &HeaderMap) -> String {
    let values: Vec<String> = headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    format!(
        "its Content-Length is ambiguous ({}), so the body's length is unknown",
        values.join(" / ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, hosts: &[&str]) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        for h in hosts {
            b = b.header("host", *h);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn one_host_named_once_or_alike_passes_and_anything_else_is_ambiguous() {
        assert_eq!(ambiguous_host(&parts("/", &["a.example"])), None);
        assert_eq!(ambiguous_host(&parts("/", &[])), None);
        assert_eq!(ambiguous_host(&parts("http://a.example/", &[])), None);
        assert_eq!(
            ambiguous_host(&parts("http://A.example:80/", &["a.EXAMPLE"])),
            None
        );
        assert_eq!(
            ambiguous_host(&parts("https://a.example/", &["a.example:443"])),
            None
        );
        assert!(ambiguous_host(&parts("/", &["a.example", "a.example"])).is_some());
        assert!(ambiguous_host(&parts("/", &["a.example", "b.example"])).is_some());
        assert!(ambiguous_host(&parts("http://a.example/", &["b.example"])).is_some());
        assert!(ambiguous_host(&parts("http://a.example/", &["a.example:8080"])).is_some());
        assert!(ambiguous_host(&parts("https://a.example/", &["a.example:80"])).is_some());
        assert!(ambiguous_host(&parts("http://a.example/", &["a.example/x"])).is_some());
    }

    fn lengths(values: &[&str]) -> (Result<(), String>, Vec<String>) {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(CONTENT_LENGTH, HeaderValue::from_str(v).unwrap());
        }
        let r = one_content_length(&mut h);
        let after = h
            .get_all(CONTENT_LENGTH)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        (r, after)
    }

    #[test]
    fn one_content_length_or_an_error_naming_the_values() {
        assert_eq!(lengths(&["5"]), (Ok(()), vec!["5".to_owned()]));
        assert_eq!(lengths(&[]), (Ok(()), vec![]));
        assert_eq!(lengths(&["5", "5"]), (Ok(()), vec!["5".to_owned()]));
        assert_eq!(lengths(&["5, 5"]), (Ok(()), vec!["5".to_owned()]));
        for bad in [
            &["5", "6"][..],
            &["5, 6"],
            &["-1"],
            &["five"],
            &[""],
            &["5,"],
            &["99999999999999999999999"],
        ] {
            let (r, _) = lengths(bad);
            let why = r.expect_err("ambiguous");
            assert!(why.contains("Content-Length"), "{why}");
        }
    }
}
