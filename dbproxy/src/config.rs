//! The dbproxy's configuration (`dbproxy.toml`, or the `[dbproxy]` table of `up --config`).
//! Every key is optional except where the database is; defaults live here and nowhere else.

use crate::upstream::UpstreamUrl;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// As written in the file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DbProxyFileConfig {
    /// The database: `mysql://user:password@host:3306`. The password never appears in logs.
    pub upstream: Option<String>,
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
    /// How long a write waits while another app connection of the same session has an open
    /// transaction with writes, in ms; then it fails with a clear error.
    pub write_turn_timeout_ms: u64,
    /// If set, apps must log in with this user and `app_password` (mysql_native_password);
    /// otherwise any user and password are accepted (the tunnel already authenticated the
    /// developer).
    pub app_user: Option<String>,
    pub app_password: Option<String>,
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
            write_turn_timeout_ms: 10_000,
            app_user: None,
            app_password: None,
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
    pub write_turn_timeout: Duration,
    /// User and password apps must present, when the operator sets them.
    pub app_credentials: Option<(String, String)>,
}

impl DbProxyFileConfig {
    pub fn check(&self) -> Result<DbProxyConfig, String> {
        let url = self
            .upstream
            .as_deref()
            .ok_or("the dbproxy needs its database: `upstream = \"mysql://user:password@host:3306\"` (or --mysql URL)")?;
        Ok(DbProxyConfig {
            upstream: UpstreamUrl::parse(url)?,
            grace_period: Duration::from_secs(self.grace_period_secs),
            max_session_age: Duration::from_secs(self.max_session_age_secs),
            statement_timeout_ms: self.statement_timeout_ms,
            consistent_snapshot: self.consistent_snapshot,
            max_packet_bytes: self.max_packet_bytes,
            write_turn_timeout: Duration::from_millis(self.write_turn_timeout_ms),
            app_credentials: match (&self.app_user, &self.app_password) {
                (Some(u), p) => Some((u.clone(), p.clone().unwrap_or_default())),
                (None, Some(_)) => return Err("app_password is set without app_user".into()),
                (None, None) => None,
            },
        })
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
