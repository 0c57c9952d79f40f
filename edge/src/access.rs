//! Who may reach a developer route (never production traffic): anyone (local demos), listed
//! client networks, or holders of a staff credential signed with the edge's secret. Otherwise a
//! developer could send a real user a `www-<key>` link and receive that user's production
//! cookies on their laptop. Pure: the clock is passed in.

pub use crate::staff::SignOut;
use crate::staff::StaffTokens;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// The staff credential's cookie.
pub const STAFF_COOKIE: &str = "devinprod_staff";
/// The staff credential's header (for tools and API clients).
pub const STAFF_HEADER: &str = "x-devinprod-staff";

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AccessMode {
    /// Anyone who reaches the edge (loopback demos).
    Anyone,
    /// Clients whose address is in `allowed_networks`.
    Networks,
    /// Holders of a staff credential (from `/_devinprod/login`, signed with `staff_secret`).
    Staff,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccessConfigError {
    #[error("`access` is not set: choose \"staff\" (with staff_secret), \"networks\" (with allowed_networks) or \"anyone\" (local use only)")]
    Unset,
    #[error("access = \"staff\" needs staff_secret (at least 32 characters)")]
    NoSecret,
    #[error("access = \"networks\" needs allowed_networks")]
    NoNetworks,
}

/// Who may reach developer routes, as configured; for `"staff"`, the [`StaffTokens`] too.
pub struct AccessPolicy {
    mode: AccessMode,
    networks: Vec<IpNet>,
    staff: Option<StaffTokens>,
}

/// Signed-out staff tokens remembered by default (see `max_revoked_staff_tokens`).
pub const DEFAULT_MAX_REVOKED_STAFF_TOKENS: usize = 10_000;

impl AccessPolicy {
    /// A policy whose staff tokens are bound to the host they were issued on (no cookie domain).
    pub fn new(
        mode: Option<AccessMode>,
        networks: &[IpNet],
        secret: Option<&str>,
        ttl_secs: u64,
    ) -> Result<Self, AccessConfigError> {
        Self::with_cookie_domain(
            mode,
            networks,
            secret,
            ttl_secs,
            None,
            DEFAULT_MAX_REVOKED_STAFF_TOKENS,
        )
    }

    /// A policy whose staff tokens are bound to `cookie_domain` (`staff_cookie_domain`) when
    /// given, and which remembers at most `max_revoked` signed-out tokens.
    pub fn with_cookie_domain(
        mode: Option<AccessMode>,
        networks: &[IpNet],
        secret: Option<&str>,
        ttl_secs: u64,
        cookie_domain: Option<&str>,
        max_revoked: usize,
    ) -> Result<Self, AccessConfigError> {
        let mode = mode.ok_or(AccessConfigError::Unset)?;
        let staff = match (mode, secret) {
            (AccessMode::Staff, Some(s)) if s.len() >= 32 => {
                Some(StaffTokens::new(s, ttl_secs, cookie_domain, max_revoked))
            }
            (AccessMode::Staff, _) => return Err(AccessConfigError::NoSecret),
            _ => None,
        };
        if mode == AccessMode::Networks && networks.is_empty() {
            return Err(AccessConfigError::NoNetworks);
        }
        Ok(Self {
            mode,
            networks: networks.to_vec(),
            staff,
        })
    }

    pub fn mode(&self) -> AccessMode {
        self.mode
    }

    /// A staff credential for a sign-in on `host`, valid until `now + ttl`; `None` when this
    /// edge does not use staff sign-in or `host` is outside `staff_cookie_domain`.
    pub fn issue_staff(&self, now: u64, host: &str) -> Option<String> {
        self.staff.as_ref()?.issue(now, host)
    }

    /// Signs out the staff credential this request carries (cookie or header), if any.
    pub fn sign_out(&self, headers: &http::HeaderMap, host: &str, now: u64) -> SignOut {
        match (&self.staff, presented(headers)) {
            (Some(staff), Some(token)) => staff.revoke(&token, host, now),
            _ => SignOut::Nothing,
        }
    }

    pub fn ttl_secs(&self) -> u64 {
        self.staff.as_ref().map_or(0, StaffTokens::ttl_secs)
    }

    /// [`AccessPolicy::check_host`] for the host in the `Host` header.
    pub fn check(&self, client: IpAddr, headers: &http::HeaderMap, now: u64) -> Result<(), String> {
        let host = headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(|h| crate::routing::host_and_port(h).0)
            .unwrap_or("");
        self.check_host(client, headers, host, now)
    }

    /// `Ok` if a request from `client` for `host` (port removed) with these headers may reach a
    /// developer route; otherwise why not (for the 403 page).
    pub fn check_host(
        &self,
        client: IpAddr,
        headers: &http::HeaderMap,
        host: &str,
        now: u64,
    ) -> Result<(), String> {
        match self.mode {
            AccessMode::Anyone => Ok(()),
            AccessMode::Networks => {
                if self.networks.iter().any(|n| n.contains(&client)) {
                    Ok(())
                } else {
                    Err(format!("developer routes are open only to the company's networks, and {client} is not one of them"))
                }
            }
            AccessMode::Staff => match presented(headers) {
                Some(t) if self.staff.as_ref().is_some_and(|s| s.verify(&t, host, now)) => Ok(()),
                Some(_) => Err("your DevInProd staff sign-in has expired, was signed out or is not valid here; sign in again at /_devinprod/login".into()),
                None => Err("developer routes are open only to DevInProd staff; sign in at /_devinprod/login".into()),
            },
        }
    }
}

/// The staff credential a request presents: the header, else the cookie.
fn presented(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get(STAFF_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| cookie(headers, STAFF_COOKIE))
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The value of cookie `name`, if the request has it.
pub fn cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Removes the edge's own cookies (routing, staff) and the staff header, so they never reach
/// an app: a developer's app must not collect staff credentials.
pub fn strip_edge_credentials(headers: &mut http::HeaderMap, cookie_names: &[&str]) {
    // A constant: `from_static` outside a const context validates the name on every call.
    const STAFF: http::HeaderName = http::HeaderName::from_static(STAFF_HEADER);
    headers.remove(STAFF);
    // Nothing to rewrite (the common case): one Cookie header, or none, naming none of ours.
    let cookies = headers.get_all(http::header::COOKIE);
    let mut values = cookies.iter();
    if let (first, None) = (values.next(), values.next()) {
        let ours = first.and_then(|v| v.to_str().ok()).is_some_and(|v| {
            v.split(';')
                .any(|c| cookie_names.contains(&c.trim().split('=').next().unwrap_or("")))
        });
        // An unreadable value is left to the rewrite below, which drops it as before.
        if !ours && first.is_none_or(|v| v.to_str().is_ok()) {
            return;
        }
    }
    let kept: Vec<String> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .filter(|c| !cookie_names.iter().any(|n| c.split('=').next() == Some(n)))
        .map(str::to_owned)
        .collect();
    headers.remove(http::header::COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = http::HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(http::header::COOKIE, v);
        }
    }
}

/// Removes from a response every `Set-Cookie` that would set one of the edge's own cookies
/// (`cookie_names`, e.g. the routing and staff cookies) on the visitor, and returns the names
/// it removed. Cookie names are case-sensitive (RFC 6265), but browsers trim the whitespace
/// around a name, so ` devinprod_staff =x` is ours too; a value without `=` is a name-less
/// cookie to browsers, judged by the same trimmed text to be safe.
pub fn strip_edge_set_cookies(headers: &mut http::HeaderMap, cookie_names: &[&str]) -> Vec<String> {
    let ours = |v: &http::HeaderValue| {
        let bytes = v.as_bytes();
        let mut pair = bytes
            .split(|b| *b == b';')
            .next()
            .unwrap_or(bytes)
            .trim_ascii();
        // `=devinprod_key=x`: a cookie with an empty name, which browsers send back as its
        // value alone — `devinprod_key=x`. Judged by that value.
        while let Some(rest) = pair.strip_prefix(b"=") {
            pair = rest.trim_ascii();
        }
        let name = pair.split(|b| *b == b'=').next().unwrap_or(pair);
        let name = name.trim_ascii();
        cookie_names
            .iter()
            .any(|n| n.as_bytes() == name)
            .then(|| String::from_utf8_lossy(name).into_owned())
    };
    // The common case: no Set-Cookie of ours, nothing rebuilt.
    if !headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .any(|v| ours(v).is_some())
    {
        return Vec::new();
    }
    let mut removed = Vec::new();
    let kept: Vec<http::HeaderValue> = headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter(|v| match ours(v) {
            Some(name) => {
                removed.push(name);
                false
            }
            None => true,
        })
        .cloned()
        .collect();
    headers.remove(http::header::SET_COOKIE);
    for v in kept {
        headers.append(http::header::SET_COOKIE, v);
    }
    removed
}

/// The client's address: the socket peer, or — when the peer is a trusted proxy — the
/// rightmost address in `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &http::HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.iter().any(|n| n.contains(&peer)) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .collect();
    forwarded
        .into_iter()
        .rev()
        .find(|ip| !trusted.iter().any(|n| n.contains(ip)))
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn staff_tokens_verify_until_they_expire_and_forgeries_fail() {
        let p = AccessPolicy::with_cookie_domain(
            Some(AccessMode::Staff),
            &[],
            Some(SECRET),
            3600,
            Some("example.com"),
            10,
        )
        .unwrap();
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let host = "www-k3yx9q.example.com";
        let token = p.issue_staff(1_000, "www.example.com").unwrap();
        let mut h = http::HeaderMap::new();
        h.insert(STAFF_HEADER, token.parse().unwrap());
        assert_eq!(p.check_host(ip, &h, host, 2_000), Ok(()));
        assert!(p
            .check_host(ip, &h, host, 5_000)
            .unwrap_err()
            .contains("expired"));
        let forged = token.replacen(".4600.", ".9999.", 1);
        h.insert(STAFF_HEADER, forged.parse().unwrap());
        assert!(p.check_host(ip, &h, host, 2_000).is_err());
        let other = AccessPolicy::with_cookie_domain(
            Some(AccessMode::Staff),
            &[],
            Some("another secret of thirty-two chars!"),
            3600,
            Some("example.com"),
            10,
        )
        .unwrap();
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            format!(
                "a=b; {STAFF_COOKIE}={}",
                other.issue_staff(1_000, host).unwrap()
            )
            .parse()
            .unwrap(),
        );
        assert!(p.check_host(ip, &h, host, 2_000).is_err());
        assert!(p
            .check_host(ip, &http::HeaderMap::new(), host, 2_000)
            .unwrap_err()
            .contains("/_devinprod/login"));
        // Signed out: refused from then on, on every host.
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            format!("{STAFF_COOKIE}={token}").parse().unwrap(),
        );
        assert_eq!(p.check_host(ip, &h, host, 2_000), Ok(()));
        assert_eq!(p.sign_out(&h, "www.example.com", 2_000), SignOut::Revoked);
        assert!(p.check_host(ip, &h, host, 2_001).is_err());
        // The Host header stands for the host in `check`.
        h.insert(
            http::header::HOST,
            "www-k3yx9q.example.com:8080".parse().unwrap(),
        );
        let fresh = p.issue_staff(2_000, "example.com").unwrap();
        h.insert(STAFF_HEADER, fresh.parse().unwrap());
        assert_eq!(p.check(ip, &h, 2_001), Ok(()));
    }

    #[test]
    fn configurations_that_cannot_work_are_refused() {
        assert_eq!(
            AccessPolicy::new(None, &[], None, 1).err(),
            Some(AccessConfigError::Unset)
        );
        assert_eq!(
            AccessPolicy::new(Some(AccessMode::Staff), &[], Some("short"), 1).err(),
            Some(AccessConfigError::NoSecret)
        );
        assert_eq!(
            AccessPolicy::new(Some(AccessMode::Networks), &[], None, 1).err(),
            Some(AccessConfigError::NoNetworks)
        );
    }

    #[test]
    fn networks_are_judged_on_the_real_client_address() {
        let p = AccessPolicy::new(
            Some(AccessMode::Networks),
            &["10.0.0.0/8".parse().unwrap()],
            None,
            1,
        )
        .unwrap();
        let trusted: Vec<IpNet> = vec!["192.168.1.1/32".parse().unwrap()];
        let mut h = http::HeaderMap::new();
        h.insert("x-forwarded-for", "10.1.2.3, 6.6.6.6".parse().unwrap());
        // From the trusted proxy: the rightmost untrusted address is the client (6.6.6.6).
        let ip = client_ip("192.168.1.1".parse().unwrap(), &h, &trusted);
        assert_eq!(ip, "6.6.6.6".parse::<IpAddr>().unwrap());
        assert!(p.check(ip, &h, 0).is_err());
        // From anyone else, X-Forwarded-For is ignored.
        assert_eq!(
            client_ip("10.9.9.9".parse().unwrap(), &h, &trusted),
            "10.9.9.9".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn an_app_cannot_set_the_edges_cookies() {
        let mut h = http::HeaderMap::new();
        for v in [
            "session=abc; Path=/",
            "devinprod_staff=v2.forged; Domain=example.com; Path=/",
            " devinprod_key\t= k3yx9q",
            "devinprod_key",
            "Devinprod_Key=other-cookie",
            "devinprod_keyring=other-cookie",
            "theme=dark",
            // Name-less cookies: browsers send them back as `devinprod_key=…`.
            "=devinprod_key=k3yx9q; Path=/deeper",
            " = devinprod_staff=v2.x",
        ] {
            h.append(http::header::SET_COOKIE, v.parse().unwrap());
        }
        let removed = strip_edge_set_cookies(&mut h, &[STAFF_COOKIE, "devinprod_key"]);
        assert_eq!(
            removed,
            [
                "devinprod_staff",
                "devinprod_key",
                "devinprod_key",
                "devinprod_key",
                "devinprod_staff"
            ]
        );
        let left: Vec<_> = h
            .get_all(http::header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(
            left,
            [
                "session=abc; Path=/",
                "Devinprod_Key=other-cookie",
                "devinprod_keyring=other-cookie",
                "theme=dark"
            ]
        );
    }

    #[test]
    fn the_edge_credentials_never_reach_an_app() {
        let mut h = http::HeaderMap::new();
        h.insert(STAFF_HEADER, "x".parse().unwrap());
        h.insert(
            http::header::COOKIE,
            "session=abc; devinprod_staff=t; devinprod_key=k3yx9q; theme=dark"
                .parse()
                .unwrap(),
        );
        strip_edge_credentials(&mut h, &[STAFF_COOKIE, "devinprod_key"]);
        assert!(h.get(STAFF_HEADER).is_none());
        assert_eq!(h[http::header::COOKIE], "session=abc; theme=dark");
    }
}
