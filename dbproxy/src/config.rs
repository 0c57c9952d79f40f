//! The dbproxy's configuration (`dbproxy.toml`, or the `[dbproxy]` table of `up --config`).
//! Every key is optional except where the database is; defaults live here and nowhere else.

use crate::audit::{AuditConfig, AuditLog};
use crate::limits::RateLimitConfig;
use crate::mask::{MaskRules, Masking};
use crate::upstream::UpstreamUrl;
use proto::Secret;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// As written in the file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DbProxyFileConfig {
    /// The database: `mysql://user:password@host:3306`. The password never appears in logs
    /// (nor does the URL in `Debug`).
    pub upstream: Option<Secret>,
    /// `HOST:PORT` of the relay, for a dbproxy running as its own process.
    pub relay: Option<String>,
    /// TLS name on the relay's certificate. Default: the host part of `relay`.
    pub relay_server_name: Option<String>,
    /// Where `ca.pem`, `dbproxy.pem`, `dbproxy.key` live unless given below.
    pub state_dir: PathBuf,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// A session whose app connections are all gone ends after this long, in seconds
    /// (closing the upstream rolls everything back).
    pub grace_period_secs: u64,
    /// A session ends at this age whatever happens, in seconds.
    pub max_session_age_secs: u64,
    /// Per-statement time limit on the upstream (MariaDB `max_statement_time`), in ms; 0: none.
    pub statement_timeout_ms: u64,
    /// REPEATABLE READ with a consistent snapshot instead of READ COMMITTED.
    pub consistent_snapshot: bool,
    /// Largest MySQL packet accepted from an app or the database.
    pub max_packet_bytes: usize,
    /// Memory all large packets (64 KiB and more) read from apps may hold at once, in bytes,
    /// each counted three times (the copies parsing its statement makes), at most all of it;
    /// a packet that finds no room within 2 s gets error 1041 and its connection is closed.
    pub max_packet_memory_bytes: usize,
    /// How long a write waits while another app connection of the same session has an open
    /// transaction with writes, in ms; then it fails with a clear error.
    pub write_turn_timeout_ms: u64,
    /// How often the lock watchdog looks for connections waiting on a developer session's
    /// locks, in ms; 0 turns it off (see `watchdog`).
    pub watchdog_interval_ms: u64,
    /// How long another (production) connection may wait for a lock a developer session holds
    /// — a row lock, or a table's metadata lock — before the watchdog rolls that session back
    /// (kills its upstream connection), in ms.
    pub lock_wait_bound_ms: u64,
    /// If set, apps must log in with this user and `app_password` (mysql_native_password);
    /// otherwise any user and password are accepted (the tunnel already authenticated the
    /// developer).
    pub app_user: Option<String>,
    pub app_password: Option<Secret>,
    /// Columns masked on their way to developers (`[masking]`).
    pub masking: MaskingFileConfig,
    /// The audit log: one JSON line per statement (`[audit]`).
    pub audit: AuditFileConfig,
    /// Per-session rate limits (`[limits]`).
    pub limits: LimitsFileConfig,
}

/// `[masking]`: `columns = { "shop.users.email" = "email", … }`, and the key: `secret_file`
/// (recommended) or `secret`, never both.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MaskingFileConfig {
    /// The key inline: 64 hexadecimal digits, the 32 random bytes of the key (e.g. from
    /// `openssl rand -hex 32`) — the same key a `secret_file` holding those bytes is, so moving
    /// it between the two forms changes no mask. A passphrase is refused: the key must be
    /// random. Prefer `secret_file`: config files get copied, shared and shown.
    pub secret: Option<Secret>,
    /// 32 random bytes that key every synthetic value. Default (without `secret`):
    /// `<state_dir>/mask.key`, created (mode 0600) on first use. Keep it: a new key masks every
    /// value differently.
    pub secret_file: Option<PathBuf>,
    /// `"schema.table.column" = "strategy"`: email, name, phone, digits, hash, null,
    /// fixed:VALUE, redact or redact:PREFIX:SUFFIX.
    pub columns: BTreeMap<String, String>,
}

/// `[audit]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditFileConfig {
    /// The JSON-lines file. Unset: audit records go to the log (tracing) only.
    pub path: Option<PathBuf>,
    /// Rotate when the file would grow past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`audit.log.1` … `audit.log.N`).
    pub keep_files: usize,
    /// Each line carries the SHA-256 of the previous one, so an edited or removed line shows.
    pub hash_chain: bool,
    /// SQL longer than this is cut in the log (the statement itself runs whole).
    pub max_sql_bytes: usize,
}

impl Default for AuditFileConfig {
    fn default() -> Self {
        Self {
            path: None,
            max_bytes: 100 << 20,
            keep_files: 10,
            hash_chain: true,
            max_sql_bytes: 16 << 10,
        }
    }
}

/// `[limits]`: token buckets per developer session; beyond them, statements get a clear error.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsFileConfig {
    /// Statements per second (bursts of as many). 0: no limit.
    pub statements_per_sec: u32,
    /// Rows returned per minute. 0: no limit.
    pub rows_per_min: u64,
}

impl Default for LimitsFileConfig {
    fn default() -> Self {
        Self {
            statements_per_sec: 10_000,
            rows_per_min: 1_000_000,
        }
    }
}

impl Default for DbProxyFileConfig {
    fn default() -> Self {
        Self {
            upstream: None,
            relay: None,
            relay_server_name: None,
            state_dir: PathBuf::from(".devinprod"),
            ca: None,
            cert: None,
            key: None,
            grace_period_secs: 600,
            max_session_age_secs: 8 * 3600,
            statement_timeout_ms: 30_000,
            consistent_snapshot: false,
            max_packet_bytes: 64 << 20,
            max_packet_memory_bytes: 256 << 20,
            write_turn_timeout_ms: 10_000,
            watchdog_interval_ms: 250,
            lock_wait_bound_ms: 1000,
            app_user: None,
            app_password: None,
            masking: MaskingFileConfig::default(),
            audit: AuditFileConfig::default(),
            limits: LimitsFileConfig::default(),
        }
    }
}

/// Checked configuration.
#[derive(Debug, Clone)]
pub struct DbProxyConfig {
    pub upstream: UpstreamUrl,
    pub grace_period: Duration,
    pub max_session_age: Duration,
    pub statement_timeout_ms: u64,
    pub consistent_snapshot: bool,
    pub max_packet_bytes: usize,
    /// Shared by every app connection of this dbproxy.
    pub packet_budget: crate::packet::PacketBudget,
    pub write_turn_timeout: Duration,
    /// Zero: no watchdog.
    pub watchdog_interval: Duration,
    pub lock_wait_bound: Duration,
    /// User and password apps must present, when the operator sets them.
    pub app_credentials: Option<(String, Secret)>,
    /// Masking rules and their key, when any column is masked.
    pub masking: Option<Arc<Masking>>,
    pub audit: Arc<AuditLog>,
    pub limits: RateLimitConfig,
}

impl DbProxyFileConfig {
    pub fn check(&self) -> Result<DbProxyConfig, String> {
        let url = self
            .upstream
            .as_ref()
            .ok_or("the dbproxy needs its database: `upstream = \"mysql://user:password@host:3306\"` (or --mysql URL)")?;
        Ok(DbProxyConfig {
            upstream: UpstreamUrl::parse(url.expose())?,
            grace_period: Duration::from_secs(self.grace_period_secs),
            max_session_age: Duration::from_secs(self.max_session_age_secs),
            statement_timeout_ms: self.statement_timeout_ms,
            consistent_snapshot: self.consistent_snapshot,
            max_packet_bytes: self.max_packet_bytes,
            packet_budget: match self.max_packet_memory_bytes {
                n if n < self.max_packet_bytes => {
                    return Err(format!(
                        "max_packet_memory_bytes ({n}) must be at least max_packet_bytes ({})",
                        self.max_packet_bytes
                    ))
                }
                n => crate::packet::PacketBudget::new(n),
            },
            write_turn_timeout: Duration::from_millis(self.write_turn_timeout_ms),
            watchdog_interval: Duration::from_millis(self.watchdog_interval_ms),
            lock_wait_bound: match self.lock_wait_bound_ms {
                0 => return Err("lock_wait_bound_ms must be at least 1 (ms)".into()),
                ms => Duration::from_millis(ms),
            },
            app_credentials: match (&self.app_user, &self.app_password) {
                (Some(u), p) => Some((u.clone(), p.clone().unwrap_or_default())),
                (None, Some(_)) => return Err("app_password is set without app_user".into()),
                (None, None) => None,
            },
            masking: self.masking()?,
            audit: Arc::new(match &self.audit.path {
                None => AuditLog::disabled(),
                Some(path) => AuditLog::open(AuditConfig {
                    path: Some(path.clone()),
                    max_bytes: self.audit.max_bytes,
                    keep_files: self.audit.keep_files,
                    hash_chain: self.audit.hash_chain,
                    max_sql_bytes: self.audit.max_sql_bytes,
                })
                .map_err(|e| format!("audit.path {}: {e}", path.display()))?,
            }),
            limits: RateLimitConfig {
                statements_per_sec: (self.limits.statements_per_sec > 0)
                    .then_some(self.limits.statements_per_sec),
                rows_per_min: (self.limits.rows_per_min > 0).then_some(self.limits.rows_per_min),
            },
        })
    }

    fn masking(&self) -> Result<Option<Arc<Masking>>, String> {
        let rules = MaskRules::parse(&self.masking.columns)?;
        // The inline key is checked even before any column is masked: a config error shows at
        // once, not on the day masking is turned on.
        let inline = match (&self.masking.secret, &self.masking.secret_file) {
            (Some(_), Some(_)) => {
                return Err("masking: set either secret or secret_file, not both \
                            (secret_file is recommended)"
                    .into())
            }
            (Some(secret), None) => Some(inline_mask_key(secret)?),
            (None, _) => None,
        };
        if rules.is_empty() {
            return Ok(None);
        }
        let key = match inline {
            Some(key) => key,
            None => {
                let path = self
                    .masking
                    .secret_file
                    .clone()
                    .unwrap_or_else(|| self.state_dir.join("mask.key"));
                let secret = certs::load_or_create_secret(&path, 32)
                    .map_err(|e| format!("masking.secret_file: {e}"))?;
                secret.try_into().map_err(|_| {
                    format!("masking.secret_file {}: expected 32 bytes", path.display())
                })?
            }
        };
        Ok(Some(Arc::new(Masking::new(rules, &key))))
    }

    pub fn ca_path(&self) -> PathBuf {
        self.ca
            .clone()
            .unwrap_or_else(|| self.state_dir.join("ca.pem"))
    }
    pub fn cert_path(&self) -> PathBuf {
        self.cert
            .clone()
            .unwrap_or_else(|| self.state_dir.join("dbproxy.pem"))
    }
    pub fn key_path(&self) -> PathBuf {
        self.key
            .clone()
            .unwrap_or_else(|| self.state_dir.join("dbproxy.key"))
    }
}

/// `[masking] secret`: 64 hexadecimal digits, read as the 32 bytes of the key. Errors never
/// quote the secret.
fn inline_mask_key(secret: &Secret) -> Result<[u8; 32], String> {
    const EXPECTED: &str = "expected 64 hexadecimal digits (the 32 random bytes of the key, \
                            e.g. from `openssl rand -hex 32`)";
    let text = secret.expose().as_bytes();
    if text.len() != 64 {
        return Err(format!(
            "masking.secret: {EXPECTED}, got {} characters",
            secret.expose().chars().count()
        ));
    }
    let mut key = [0u8; 32];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        let digit = |b: u8| (b as char).to_digit(16);
        match (digit(pair[0]), digit(pair[1])) {
            // Both below 16: the byte fits.
            (Some(hi), Some(lo)) => key[i] = (hi * 16 + lo) as u8,
            _ => {
                return Err(format!(
                    "masking.secret: {EXPECTED}; character {} or {} is not one",
                    2 * i + 1,
                    2 * i + 2
                ))
            }
        }
    }
    Ok(key)
}

#[cfg(test)]
mod tests;
