//! Who may reach a developer route (never production traffic): anyone (local demos), listed
//! client networks, or holders of a staff credential signed with the edge's secret. Otherwise a
//! developer could send a real user a `www-<key>` link and receive that user's production
//! cookies on their laptop. Pure: the clock is passed in.

use ipnet::IpNet;
use ring::hmac;
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

pub struct AccessPolicy {
    mode: AccessMode,
    networks: Vec<IpNet>,
    key: Option<hmac::Key>,
    ttl_secs: u64,
}

impl AccessPolicy {
    pub fn new(
        mode: Option<AccessMode>,
        networks: &[IpNet],
        secret: Option<&str>,
        ttl_secs: u64,
    ) -> Result<Self, AccessConfigError> {
        let mode = mode.ok_or(AccessConfigError::Unset)?;
        let key = match (mode, secret) {
            (AccessMode::Staff, Some(s)) if s.len() >= 32 => {
                Some(hmac::Key::new(hmac::HMAC_SHA256, s.as_bytes()))
            }
            (AccessMode::Staff, _) => return Err(AccessConfigError::NoSecret),
            (_, Some(s)) if s.len() >= 32 => Some(hmac::Key::new(hmac::HMAC_SHA256, s.as_bytes())),
            _ => None,
        };
        if mode == AccessMode::Networks && networks.is_empty() {
            return Err(AccessConfigError::NoNetworks);
        }
        Ok(Self {
            mode,
            networks: networks.to_vec(),
            key,
            ttl_secs,
        })
    }

    pub fn mode(&self) -> AccessMode {
        self.mode
    }

    /// A staff credential valid until `now + ttl`: `v1.<expiry>.<hex hmac>`.
    pub fn issue(&self, now: u64) -> Option<String> {
        let key = self.key.as_ref()?;
        let expiry = now + self.ttl_secs;
        let body = format!("v1.{expiry}");
        let tag = hmac::sign(key, body.as_bytes());
        Some(format!("{body}.{}", hex(tag.as_ref())))
    }

    /// A staff credential, only when this edge uses staff sign-in.
    pub fn issue_staff(&self, now: u64) -> Option<String> {
        if self.mode == AccessMode::Staff {
            self.issue(now)
        } else {
            None
        }
    }

    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    fn verify(&self, token: &str, now: u64) -> bool {
        let Some(key) = &self.key else { return false };
        let Some((body, tag)) = token.rsplit_once('.') else {
            return false;
        };
        let Some(expiry) = body.strip_prefix("v1.").and_then(|e| e.parse::<u64>().ok()) else {
            return false;
        };
        let Some(tag) = unhex(tag) else { return false };
        // Constant-time comparison inside ring.
        expiry > now && hmac::verify(key, body.as_bytes(), &tag).is_ok()
    }

    /// `Ok` if a request from `client` with these headers may reach a developer route;
    /// otherwise why not (for the 403 page).
    pub fn check(&self, client: IpAddr, headers: &http::HeaderMap, now: u64) -> Result<(), String> {
        match self.mode {
            AccessMode::Anyone => Ok(()),
            AccessMode::Networks => {
                if self.networks.iter().any(|n| n.contains(&client)) {
                    Ok(())
                } else {
                    Err(format!("developer routes are open only to the company's networks, and {client} is not one of them"))
                }
            }
            AccessMode::Staff => {
                let presented = headers
                    .get(STAFF_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
                    .or_else(|| cookie(headers, STAFF_COOKIE));
                match presented {
                    Some(t) if self.verify(&t, now) => Ok(()),
                    Some(_) => Err("your DevInProd staff sign-in has expired or is not valid; sign in again at /_devinprod/login".into()),
                    None => Err("developer routes are open only to DevInProd staff; sign in at /_devinprod/login".into()),
                }
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
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
        let p = AccessPolicy::new(Some(AccessMode::Staff), &[], Some(SECRET), 3600).unwrap();
        let token = p.issue(1_000).unwrap();
        let mut h = http::HeaderMap::new();
        h.insert(STAFF_HEADER, token.parse().unwrap());
        assert_eq!(p.check("203.0.113.9".parse().unwrap(), &h, 2_000), Ok(()));
        assert!(p
            .check("203.0.113.9".parse().unwrap(), &h, 5_000)
            .unwrap_err()
            .contains("expired"));
        let forged = token.replace("v1.4600", "v1.9999");
        h.insert(STAFF_HEADER, forged.parse().unwrap());
        assert!(p.check("203.0.113.9".parse().unwrap(), &h, 2_000).is_err());
        let other = AccessPolicy::new(
            Some(AccessMode::Staff),
            &[],
            Some("another secret of thirty-two chars!"),
            3600,
        )
        .unwrap();
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            format!("a=b; {STAFF_COOKIE}={}", other.issue(1_000).unwrap())
                .parse()
                .unwrap(),
        );
        assert!(p.check("203.0.113.9".parse().unwrap(), &h, 2_000).is_err());
        assert!(p
            .check(
                "203.0.113.9".parse().unwrap(),
                &http::HeaderMap::new(),
                2_000
            )
            .unwrap_err()
            .contains("/_devinprod/login"));
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
