//! The staff credential: a token signed with `staff_secret`, bound to the edge's cookie domain,
//! revocable by signing out. Pure apart from the random id: the clock is passed in.
//!
//! A token is `v2.<issued>.<expiry>.<id>.<tag>`: Unix seconds, 16 random bytes in hex, and an
//! HMAC-SHA256 in hex over `v2.<issued>.<expiry>.<id>` *and the domain it was issued for*. The
//! domain is not in the token: the verifier supplies its own (`staff_cookie_domain`, else the
//! request's host), so a token signed by an edge for `example.com` fails on an edge for
//! `example.org` that shares the secret, and without `staff_cookie_domain` a token is good only
//! on the host that issued it (which is where a host-only cookie goes anyway).
//!
//! **Revocation** (`/_devinprod/logout`): the token's id is remembered, with its expiry, until
//! it expires; a remembered id is refused. At most `capacity` ids are remembered: when a new one
//! finds the set full of unexpired ids, the edge revokes *every* token issued up to now (a
//! "not before" cut-off) and forgets the set, failing closed: all staff sign in again, and no
//! signed-out token ever works again. Only tokens that verify are remembered, so only staff can
//! fill the set. The set lives in memory: a restart forgets it (rotate `staff_secret` to revoke
//! every token for good).

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use std::collections::HashMap;
use std::sync::Mutex;

/// Longest token read: anything longer is not one of ours (and is not parsed).
const MAX_TOKEN_LEN: usize = 160;
const ID_LEN: usize = 16;

/// Signs, verifies and revokes staff tokens.
pub(crate) struct StaffTokens {
    key: hmac::Key,
    ttl_secs: u64,
    /// `staff_cookie_domain`, lowercase, without a leading or trailing dot.
    domain: Option<String>,
    rng: SystemRandom,
    revoked: Mutex<Revoked>,
}

struct Revoked {
    /// Id → expiry of signed-out tokens.
    ids: HashMap<[u8; ID_LEN], u64>,
    capacity: usize,
    /// Tokens issued at or before this second are refused (0: none).
    cut_off: u64,
}

/// What signing out did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignOut {
    /// No valid token was presented: nothing to revoke.
    Nothing,
    /// This token is revoked.
    Revoked,
    /// The revocation set was full: every token issued so far is revoked.
    RevokedAll,
}

/// A parsed token, not yet verified.
struct Token<'a> {
    signed: &'a str,
    issued: u64,
    expiry: u64,
    id: [u8; ID_LEN],
    tag: Vec<u8>,
}

impl<'a> Token<'a> {
    fn parse(token: &'a str) -> Option<Self> {
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let (signed, tag) = token.rsplit_once('.')?;
        let mut fields = signed.split('.');
        let (Some("v2"), Some(issued), Some(expiry), Some(id), None) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return None;
        };
        let number = |s: &str| {
            (!s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u64>().ok())
                .flatten()
        };
        Some(Self {
            signed,
            issued: number(issued)?,
            expiry: number(expiry)?,
            id: crate::access::unhex(id)?.try_into().ok()?,
            tag: crate::access::unhex(tag)?,
        })
    }
}

/// `host` lowercase, without a trailing dot.
fn normal(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

impl StaffTokens {
    pub(crate) fn new(secret: &str, ttl_secs: u64, domain: Option<&str>, capacity: usize) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
            ttl_secs,
            domain: domain
                .map(|d| normal(d.trim_start_matches('.')))
                .filter(|d| !d.is_empty()),
            rng: SystemRandom::new(),
            revoked: Mutex::new(Revoked {
                ids: HashMap::new(),
                capacity,
                cut_off: 0,
            }),
        }
    }

    pub(crate) fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// The domain a token used on `host` must be bound to: `staff_cookie_domain` when `host` is
    /// it or below it, the host itself when there is none; `None` when `host` is outside the
    /// configured domain (no token is good there).
    fn binding(&self, host: &str) -> Option<String> {
        let host = normal(host);
        match &self.domain {
            None => (!host.is_empty()).then_some(host),
            Some(d) => {
                let below = host
                    .strip_suffix(d.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'));
                below.then(|| d.clone())
            }
        }
    }

    /// What the tag covers: the token's signed part and the domain. `|` occurs in neither
    /// (the signed part is digits, hex and dots), so no two pairs give the same message.
    fn message(signed: &str, domain: &str) -> String {
        format!("{signed}|{domain}")
    }

    /// A token for a sign-in on `host` at `now`; `None` if `host` is outside the cookie domain
    /// (or the system's random source failed).
    pub(crate) fn issue(&self, now: u64, host: &str) -> Option<String> {
        let domain = self.binding(host)?;
        let mut id = [0u8; ID_LEN];
        self.rng.fill(&mut id).ok()?;
        let signed = format!(
            "v2.{now}.{}.{}",
            now.saturating_add(self.ttl_secs),
            crate::access::hex(&id)
        );
        let tag = hmac::sign(&self.key, Self::message(&signed, &domain).as_bytes());
        Some(format!("{signed}.{}", crate::access::hex(tag.as_ref())))
    }

    /// The token, if it is genuine for `host`, unexpired at `now` (revocation not checked).
    fn genuine<'a>(&self, token: &'a str, host: &str, now: u64) -> Option<Token<'a>> {
        let t = Token::parse(token)?;
        let domain = self.binding(host)?;
        // Constant-time comparison inside ring.
        let same = hmac::verify(
            &self.key,
            Self::message(t.signed, &domain).as_bytes(),
            &t.tag,
        )
        .is_ok();
        (same && t.expiry > now && t.issued <= t.expiry).then_some(t)
    }

    /// Whether `token` lets a visitor of `host` through at `now`.
    pub(crate) fn verify(&self, token: &str, host: &str, now: u64) -> bool {
        let Some(t) = self.genuine(token, host, now) else {
            return false;
        };
        let revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        t.issued > revoked.cut_off && !revoked.ids.contains_key(&t.id)
    }

    /// Signs `token` out: from now on it is refused, on every host.
    pub(crate) fn revoke(&self, token: &str, host: &str, now: u64) -> SignOut {
        let Some(t) = self.genuine(token, host, now) else {
            return SignOut::Nothing;
        };
        let mut revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        if t.issued <= revoked.cut_off || revoked.ids.contains_key(&t.id) {
            return SignOut::Revoked;
        }
        if revoked.ids.len() >= revoked.capacity {
            revoked.ids.retain(|_, expiry| *expiry > now);
        }
        if revoked.ids.len() >= revoked.capacity {
            // Everything issued up to now — and, should the clock have stepped back, up to
            // the newest token this one or a remembered one says was issued — so that no
            // token forgotten here works again.
            let newest_remembered = revoked
                .ids
                .values()
                .map(|expiry| expiry.saturating_sub(self.ttl_secs))
                .max()
                .unwrap_or(0);
            revoked.cut_off = now.max(t.issued).max(newest_remembered);
            revoked.ids = HashMap::new();
            return SignOut::RevokedAll;
        }
        revoked.ids.insert(t.id, t.expiry);
        SignOut::Revoked
    }

    /// Ids remembered now (for tests of the bound).
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ids
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_token_is_bound_to_the_cookie_domain_it_was_issued_for() {
        let a = StaffTokens::new(SECRET, 3600, Some(".Example.com"), 10);
        let t = a.issue(1_000, "www.example.com").unwrap();
        assert!(a.verify(&t, "www-k3yx9q.example.com", 2_000));
        assert!(a.verify(&t, "EXAMPLE.com.", 2_000));
        assert!(!a.verify(&t, "www-k3yx9q.example.org", 2_000));
        assert!(!a.verify(&t, "www-k3yx9q.badexample.com", 2_000));
        assert!(a.issue(1_000, "www.example.org").is_none());
        // Another edge, same secret, another domain.
        let b = StaffTokens::new(SECRET, 3600, Some("example.org"), 10);
        assert!(!b.verify(&t, "www.example.org", 2_000));
        let from_b = b.issue(1_000, "www.example.org").unwrap();
        assert!(!a.verify(&from_b, "www.example.com", 2_000));
        // A parent domain's edge does not take a subdomain edge's tokens either.
        let sub = StaffTokens::new(SECRET, 3600, Some("shop.example.com"), 10);
        let from_sub = sub.issue(1_000, "www.shop.example.com").unwrap();
        assert!(!a.verify(&from_sub, "www.shop.example.com", 2_000));
        // No cookie domain: good on the issuing host only.
        let host_only = StaffTokens::new(SECRET, 3600, None, 10);
        let t = host_only.issue(1_000, "www-k3yx9q.example.com").unwrap();
        assert!(host_only.verify(&t, "www-k3yx9q.example.com", 2_000));
        assert!(!host_only.verify(&t, "www-zzzzzz.example.com", 2_000));
    }

    #[test]
    fn tokens_expire_and_altered_ones_fail() {
        let s = StaffTokens::new(SECRET, 3600, Some("example.com"), 10);
        let t = s.issue(1_000, "example.com").unwrap();
        assert!(s.verify(&t, "example.com", 4_599));
        assert!(!s.verify(&t, "example.com", 4_600));
        let later = t.replacen(".4600.", ".9999.", 1);
        assert_ne!(later, t);
        assert!(!s.verify(&later, "example.com", 2_000));
        for bad in [
            "",
            "v2",
            "v2.1.2.3.4",
            &format!("{t}0"),
            &"v".repeat(10_000),
        ] {
            assert!(!s.verify(bad, "example.com", 2_000), "{bad}");
        }
        // Old-style (v1) tokens are not domain-bound: refused.
        assert!(!s.verify("v1.4600.00", "example.com", 2_000));
    }

    #[test]
    fn signing_out_revokes_the_token_and_the_set_stays_bounded() {
        let s = StaffTokens::new(SECRET, 100, Some("example.com"), 3);
        let kept = s.issue(1_000, "example.com").unwrap();
        let t = s.issue(1_000, "example.com").unwrap();
        assert_eq!(s.revoke(&t, "example.com", 1_001), SignOut::Revoked);
        assert!(!s.verify(&t, "www-k3yx9q.example.com", 1_002));
        assert!(s.verify(&kept, "example.com", 1_002));
        assert_eq!(
            s.revoke("v2.forged", "example.com", 1_002),
            SignOut::Nothing
        );
        assert_eq!(s.remembered(), 1);
        // Two more fill the set; expired ids make room again.
        for _ in 0..2 {
            let t = s.issue(1_000, "example.com").unwrap();
            assert_eq!(s.revoke(&t, "example.com", 1_003), SignOut::Revoked);
        }
        assert_eq!(s.remembered(), 3);
        let fresh = s.issue(1_050, "example.com").unwrap();
        assert_eq!(s.revoke(&fresh, "example.com", 1_100), SignOut::Revoked);
        assert_eq!(s.remembered(), 1, "the expired ids were forgotten");
        // A full set of live ids: everything issued so far is revoked, and the set is emptied.
        for _ in 0..2 {
            let t = s.issue(1_100, "example.com").unwrap();
            assert_eq!(s.revoke(&t, "example.com", 1_101), SignOut::Revoked);
        }
        let one_more = s.issue(1_101, "example.com").unwrap();
        let bystander = s.issue(1_101, "example.com").unwrap();
        assert_eq!(
            s.revoke(&one_more, "example.com", 1_102),
            SignOut::RevokedAll
        );
        assert_eq!(s.remembered(), 0);
        assert!(!s.verify(&one_more, "example.com", 1_103));
        assert!(!s.verify(&bystander, "example.com", 1_103));
        assert!(!s.verify(&fresh, "example.com", 1_103));
        let after = s.issue(1_103, "example.com").unwrap();
        assert!(s.verify(&after, "example.com", 1_104));
    }
}
