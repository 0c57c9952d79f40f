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

pub use rules::MaskRules;

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
