//! Masking of sensitive columns: the values production returns are replaced, on their way to
//! the developer's app, by realistic stand-ins that cannot be turned back into the real ones
//! without the proxy's secret key.
//!
//! [`strategy`] holds the pure part: what a masking strategy of `dbproxy.toml` is, and how a
//! value is masked (and, for the bijective strategies, unmasked) with the key.

pub mod analysis;
pub mod rows;
mod rules;
pub mod strategy;

pub use rules::{fold, MaskRules};

/// The masking rules with their key, as the sessions use them.
pub struct Masking {
    pub rules: MaskRules,
    pub masker: strategy::Masker,
}

impl Masking {
    pub fn new(rules: MaskRules, key: &[u8; 32]) -> Self {
        Self {
            rules,
            masker: strategy::Masker::new(key),
        }
    }
}

/// Never prints the key.
impl std::fmt::Debug for Masking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masking")
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

/// Server errors and warnings whose message quotes a value: a duplicate key (which may hold a
/// masked column next to the one written), an implicit conversion of a masked value.
const VALUE_ECHOING_CODES: &[u16] = &[1062, 1292, 1366, 1367, 1411, 1525, 1586, 1918];

/// With masking on, the message of a value-echoing error or warning with its quoted values
/// withheld (`None` when `code` quotes none). Key and function names stay.
pub fn withhold_values(code: u16, message: &str) -> Option<String> {
    if !VALUE_ECHOING_CODES.contains(&code) {
        return None;
    }
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find('\'') {
        let (before, quoted) = rest.split_at(start);
        out.push_str(before);
        let Some(end) = quoted[1..].find('\'') else {
            // An unterminated quote: withhold the rest.
            out.push_str("'(withheld by DevInProd)");
            return Some(out);
        };
        let keep = ["key ", "function "]
            .iter()
            .any(|w| before.trim_end_matches(' ').ends_with(w.trim_end()));
        if keep {
            out.push_str(&quoted[..end + 2]);
        } else {
            out.push_str("'(withheld by DevInProd)'");
        }
        rest = &quoted[end + 2..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::withhold_values;

    #[test]
    fn values_in_errors_are_withheld_and_names_kept() {
        assert_eq!(
            withhold_values(1062, "Duplicate entry '2-alice@corp.com' for key 'uq'").unwrap(),
            "Duplicate entry '(withheld by DevInProd)' for key 'uq'"
        );
        assert_eq!(
            withhold_values(1292, "Truncated incorrect DECIMAL value: 'Person.1@x.com'").unwrap(),
            "Truncated incorrect DECIMAL value: '(withheld by DevInProd)'"
        );
        assert_eq!(withhold_values(1146, "Table 'a.b' doesn't exist"), None);
    }
}
