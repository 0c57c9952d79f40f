//! Identity types that can only hold valid values: an [`AuthToken`] is always 40 characters of
//! `[a-z0-9]`, a [`RoutingKey`] always 6. Parse once at the boundary; everything past it can
//! trust the type.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Length of an [`AuthToken`] in characters.
pub const TOKEN_LEN: usize = 40;
/// Length of a [`RoutingKey`] in characters (the token's first characters).
pub const ROUTING_KEY_LEN: usize = 6;

const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// Why a string is not a valid token or routing key. The message never repeats the input:
/// it may be a secret pasted in the wrong place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} must be {expected} characters long, got {got}")]
    Length {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{what} may contain only lowercase letters a-z and digits 0-9 (found {found:?} at position {position})")]
    Character {
        what: &'static str,
        found: char,
        position: usize,
    },
}

fn check(what: &'static str, s: &str, expected: usize) -> Result<(), IdError> {
    let got = s.chars().count();
    if got != expected {
        return Err(IdError::Length {
            what,
            expected,
            got,
        });
    }
    if let Some((position, found)) = s
        .chars()
        .enumerate()
        .find(|(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
    {
        return Err(IdError::Character {
            what,
            found,
            position,
        });
    }
    Ok(())
}

/// A developer's secret: 40 characters `[a-z0-9]` from the OS CSPRNG (≈ 206 bits).
///
/// Lowercase only, because its first 6 characters are the [`RoutingKey`] that appears in host
/// names, which browsers lowercase. `Debug` and `Display` show only the routing key, so a token
/// never lands in a log by accident; [`AuthToken::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AuthToken(String);

impl AuthToken {
    /// Parses a token exactly as issued (surrounding whitespace, e.g. from a file, is ignored).
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let s = s.trim();
        check("a token", s, TOKEN_LEN)?;
        Ok(Self(s.to_owned()))
    }

    /// A fresh token from the operating system's CSPRNG, drawn uniformly over the alphabet
    /// (rejection sampling: no modulo bias).
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut out = String::with_capacity(TOKEN_LEN);
        let mut buf = [0u8; 64];
        while out.len() < TOKEN_LEN {
            getrandom::fill(&mut buf)?;
            for b in buf {
                // 252 = 7 * 36: accept only bytes below it so every symbol is equally likely.
                if b < 252 && out.len() < TOKEN_LEN {
                    out.push(ALPHABET[(b % 36) as usize] as char);
                }
            }
        }
        Ok(Self(out))
    }

    /// The routing key: the token's first [`ROUTING_KEY_LEN`] characters.
    pub fn routing_key(&self) -> RoutingKey {
        RoutingKey(self.0[..ROUTING_KEY_LEN].to_owned())
    }

    /// The secret itself, for sending it in `Hello` or printing it once at creation.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AuthToken {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::parse(&s)
    }
}

impl From<AuthToken> for String {
    fn from(t: AuthToken) -> String {
        t.0
    }
}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthToken({}…)", &self.0[..ROUTING_KEY_LEN])
    }
}

/// The public part of a token: the 6 characters in `www-<key>.example.com`. Always stored
/// lowercase; [`RoutingKey::parse`] accepts any case because host names are case-insensitive.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RoutingKey(String);

impl RoutingKey {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let lower = s.trim().to_ascii_lowercase();
        check("a routing key", &lower, ROUTING_KEY_LEN)?;
        Ok(Self(lower))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RoutingKey {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::parse(&s)
    }
}

impl From<RoutingKey> for String {
    fn from(k: RoutingKey) -> String {
        k.0
    }
}

impl fmt::Debug for RoutingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoutingKey({})", self.0)
    }
}

impl fmt::Display for RoutingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a peer of the relay is. Developers prove it with a token, infrastructure peers with a
/// client certificate whose URI SAN is [`Role::uri`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    Developer,
    Edge,
    DbProxy,
}

impl Role {
    /// The URI SAN that a certificate for this role carries, e.g. `devinprod://role/edge`.
    pub fn uri(self) -> &'static str {
        match self {
            Role::Developer => "devinprod://role/developer",
            Role::Edge => "devinprod://role/edge",
            Role::DbProxy => "devinprod://role/dbproxy",
        }
    }

    pub fn from_uri(uri: &str) -> Option<Role> {
        [Role::Developer, Role::Edge, Role::DbProxy]
            .into_iter()
            .find(|r| r.uri() == uri)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Developer => "developer",
            Role::Edge => "edge",
            Role::DbProxy => "dbproxy",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_valid_and_distinct() {
        let a = AuthToken::generate().unwrap();
        let b = AuthToken::generate().unwrap();
        assert_eq!(AuthToken::parse(a.expose()).unwrap(), a);
        assert_ne!(a, b);
        assert_eq!(a.routing_key().as_str(), &a.expose()[..6]);
    }

    #[test]
    fn token_rejects_wrong_length_and_characters_without_echoing_it() {
        let err = AuthToken::parse("short").unwrap_err();
        assert_eq!(err.to_string(), "a token must be 40 characters long, got 5");
        let upper = "A".repeat(40);
        let err = AuthToken::parse(&upper).unwrap_err();
        assert!(matches!(
            err,
            IdError::Character {
                found: 'A',
                position: 0,
                ..
            }
        ));
        assert!(AuthToken::parse(&format!("{}-", "a".repeat(39))).is_err());
        assert!(AuthToken::parse(&format!("{}é", "a".repeat(39))).is_err());
    }

    #[test]
    fn token_debug_hides_the_secret() {
        let t = AuthToken::generate().unwrap();
        let shown = format!("{t:?}");
        assert!(!shown.contains(t.expose()));
        assert!(shown.contains(t.routing_key().as_str()));
    }

    #[test]
    fn routing_key_is_case_insensitive() {
        assert_eq!(RoutingKey::parse("AbC123").unwrap().as_str(), "abc123");
        assert!(RoutingKey::parse("abc12").is_err());
        assert!(RoutingKey::parse("abc12_").is_err());
    }

    #[test]
    fn roles_round_trip_through_their_uri() {
        for r in [Role::Developer, Role::Edge, Role::DbProxy] {
            assert_eq!(Role::from_uri(r.uri()), Some(r));
        }
        assert_eq!(Role::from_uri("devinprod://role/admin"), None);
    }
}
