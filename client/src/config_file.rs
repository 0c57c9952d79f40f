//! Strict TOML loading: unknown keys are errors, and every error names the file, the key and
//! what was expected.

use anyhow::{anyhow, Context};
use serde::de::DeserializeOwned;
use std::path::Path;

pub fn load<T: DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    parse(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
}

pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    let de = toml::Deserializer::parse(text).map_err(|e| one_line(&e.to_string()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let msg = one_line(&e.inner().to_string());
        if key == "." || key.is_empty() {
            msg
        } else {
            format!("key `{key}`: {msg}")
        }
    })
}

/// toml renders errors over several lines with a caret; keep the location and the message.
fn one_line(s: &str) -> String {
    let lines: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let location = lines
        .iter()
        .find(|l| l.starts_with("TOML parse error"))
        .map(|l| l.trim_start_matches("TOML parse error "));
    let message = lines.last().copied().unwrap_or(s);
    match location {
        Some(loc) if !message.starts_with("TOML parse error") => format!("{message} ({loc})"),
        _ => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_key_and_the_expectation() {
        let e = parse::<relay::RelayConfig>("listen = 5\n").unwrap_err();
        assert!(e.contains("key `listen`"), "{e}");
        assert!(e.contains("expected"), "{e}");
        let e = parse::<relay::RelayConfig>("lsiten = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(e.contains("unknown field `lsiten`"), "{e}");
        let e = parse::<edge::EdgeConfig>("header_read_timeout_ms = \"soon\"\n").unwrap_err();
        assert!(e.contains("header_read_timeout_ms"), "{e}");
    }

    #[test]
    fn every_key_is_optional() {
        assert_eq!(
            parse::<relay::RelayConfig>("").unwrap(),
            relay::RelayConfig::default()
        );
        assert_eq!(
            parse::<edge::EdgeConfig>("").unwrap(),
            edge::EdgeConfig::default()
        );
    }
}
