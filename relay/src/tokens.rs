//! The token store: which tokens exist, which are revoked. Persisted as JSON (mode 0600) so
//! tokens survive restarts; only a SHA-256 of each token is stored, never the token itself.
//! A token is 40 characters from a 36-symbol alphabet (≈ 206 bits), so a fast hash is enough:
//! there is nothing to brute-force.

use proto::{AuthToken, RoutingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;

/// What the store knows of one token (never the token).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    pub routing_key: RoutingKey,
    pub name: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    pub revoked_at: Option<u64>,
    /// Hex SHA-256 of the whole token.
    sha256: String,
}

/// The result of checking a token presented in `Hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Valid(TokenRecord),
    Unknown,
    Revoked,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenStoreError {
    #[error("token store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token store {path} is not valid: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("the operating system's random generator failed: {0}")]
    Random(String),
    #[error("no free routing key found after {0} attempts")]
    KeysExhausted(usize),
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    tokens: Vec<TokenRecord>,
}

/// Tokens by routing key. Every mutation is written to disk before it is acknowledged.
pub struct TokenStore {
    path: Option<PathBuf>,
    tokens: Mutex<BTreeMap<RoutingKey, TokenRecord>>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn digest(token: &AuthToken) -> String {
    Sha256::digest(token.expose().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl TokenStore {
    /// A store that lives only in memory (tests, throwaway demos).
    pub fn in_memory() -> Self {
        Self {
            path: None,
            tokens: Mutex::new(BTreeMap::new()),
        }
    }

    /// Opens (or starts) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, TokenStoreError> {
        let io = |source| TokenStoreError::Io {
            path: path.to_owned(),
            source,
        };
        let file: StoreFile = match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| TokenStoreError::Corrupt {
                path: path.to_owned(),
                detail: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StoreFile::default(),
            Err(e) => return Err(io(e)),
        };
        let tokens = file
            .tokens
            .into_iter()
            .map(|r| (r.routing_key.clone(), r))
            .collect();
        Ok(Self {
            path: Some(path.to_owned()),
            tokens: Mutex::new(tokens),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<RoutingKey, TokenRecord>> {
        // A panic while holding this lock cannot leave the map half-updated (each mutation is
        // one insert), so a poisoned lock is still consistent.
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Issues a new token whose routing key no existing token (revoked ones included) has, so
    /// an old `www-<key>` link never reaches a different developer.
    pub fn create(&self, name: &str) -> Result<(AuthToken, TokenRecord), TokenStoreError> {
        const ATTEMPTS: usize = 64;
        let mut tokens = self.lock();
        for _ in 0..ATTEMPTS {
            let token =
                AuthToken::generate().map_err(|e| TokenStoreError::Random(e.to_string()))?;
            let key = token.routing_key();
            if tokens.contains_key(&key) {
                continue;
            }
            let record = TokenRecord {
                routing_key: key.clone(),
                name: name.to_owned(),
                created_at: now_secs(),
                revoked_at: None,
                sha256: digest(&token),
            };
            tokens.insert(key.clone(), record.clone());
            if let Err(e) = self.persist(&tokens) {
                tokens.remove(&key);
                return Err(e);
            }
            return Ok((token, record));
        }
        Err(TokenStoreError::KeysExhausted(ATTEMPTS))
    }

    /// Checks a token in constant time (the comparison of digests does not stop at the first
    /// differing byte). The lookup by routing key is not secret: the key is public in URLs.
    pub fn verify(&self, token: &AuthToken) -> Verdict {
        let tokens = self.lock();
        let Some(record) = tokens.get(&token.routing_key()) else {
            return Verdict::Unknown;
        };
        let presented = digest(token);
        if !bool::from(presented.as_bytes().ct_eq(record.sha256.as_bytes())) {
            return Verdict::Unknown;
        }
        if record.revoked_at.is_some() {
            return Verdict::Revoked;
        }
        Verdict::Valid(record.clone())
    }

    /// Marks the token with this routing key revoked. `Ok(false)` if there is none.
    pub fn revoke(&self, key: &RoutingKey) -> Result<bool, TokenStoreError> {
        let mut tokens = self.lock();
        let Some(record) = tokens.get_mut(key) else {
            return Ok(false);
        };
        if record.revoked_at.is_none() {
            record.revoked_at = Some(now_secs());
            self.persist(&tokens)?;
        }
        Ok(true)
    }

    pub fn list(&self) -> Vec<TokenRecord> {
        self.lock().values().cloned().collect()
    }

    /// Writes the store atomically: a temporary file (mode 0600) renamed over the old one.
    fn persist(&self, tokens: &BTreeMap<RoutingKey, TokenRecord>) -> Result<(), TokenStoreError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let io = |source| TokenStoreError::Io {
            path: path.clone(),
            source,
        };
        let file = StoreFile {
            tokens: tokens.values().cloned().collect(),
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| TokenStoreError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("json.tmp");
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        {
            use std::io::Write;
            let mut f = opts.open(&tmp).map_err(io)?;
            f.write_all(text.as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_survive_reopen_and_are_not_stored_in_clear() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let store = TokenStore::open(&path).unwrap();
        let (token, record) = store.create("alice").unwrap();
        assert_eq!(record.routing_key, token.routing_key());
        let on_disk = std::fs::read_to_string(&path).unwrap();
        assert!(!on_disk.contains(token.expose()));
        let reopened = TokenStore::open(&path).unwrap();
        assert!(matches!(reopened.verify(&token), Verdict::Valid(r) if r.name == "alice"));
        assert!(reopened.revoke(&token.routing_key()).unwrap());
        assert_eq!(
            TokenStore::open(&path).unwrap().verify(&token),
            Verdict::Revoked
        );
    }

    #[test]
    fn a_token_with_a_known_key_but_wrong_secret_is_unknown() {
        let store = TokenStore::in_memory();
        let (token, _) = store.create("bob").unwrap();
        let forged =
            AuthToken::parse(&format!("{}{}", token.routing_key(), "0".repeat(34))).unwrap();
        assert_eq!(store.verify(&forged), Verdict::Unknown);
        assert_eq!(
            store.verify(&AuthToken::generate().unwrap()),
            Verdict::Unknown
        );
    }

    #[test]
    fn routing_keys_are_never_reused() {
        let store = TokenStore::in_memory();
        let keys: std::collections::HashSet<_> = (0..500)
            .map(|_| store.create("x").unwrap().1.routing_key)
            .collect();
        assert_eq!(keys.len(), 500);
    }

    #[test]
    fn a_corrupt_store_file_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        std::fs::write(&path, "{not json").unwrap();
        let err = TokenStore::open(&path).err().unwrap().to_string();
        assert!(err.contains("tokens.json"), "{err}");
    }
}
