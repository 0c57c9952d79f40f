//! A string that must never be printed: a password, a database URL holding one, a signing or
//! masking key, a token given on the command line.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Holds a secret string. Its `Debug` shows only that there is one, so a configuration or
/// argument struct that derives `Debug` cannot leak it into a log or a panic message. It has
/// no `Display`: reading it takes a deliberate [`Secret::expose`]. Serialized as the plain
/// string, so config files keep their form.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

/// For command-line parsers (clap takes any `FromStr`).
impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;

    #[test]
    fn debug_never_shows_the_secret_but_serde_keeps_it() {
        let s = Secret::from("hunter2-hunter2");
        let shown = format!("{s:?} {:?} {:#?}", Some(&s), vec![s.clone()]);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redacted"));
        assert_eq!(s.expose(), "hunter2-hunter2");
        let mut encoded = Vec::new();
        bincode::serde::encode_into_std_write(&s, &mut encoded, bincode::config::standard())
            .unwrap();
        let (back, _): (Secret, _) =
            bincode::serde::decode_from_slice(&encoded, bincode::config::standard()).unwrap();
        assert_eq!(back, s);
    }
}
