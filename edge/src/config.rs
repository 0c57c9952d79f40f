//! The edge's configuration (`edge.toml`, or the `[edge]` table of `up --config`). Every key is
//! optional; defaults live in [`EdgeConfig::default`] and nowhere else.

use crate::access::AccessMode;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// TCP address of the public HTTP listener.
    pub listen: SocketAddr,
    /// Serve HTTPS with this certificate chain (PEM; a wildcard `*.example.com` is the normal
    /// case) and `tls_key`; ALPN offers h2 and http/1.1. Unset: plain HTTP (behind a TLS
    /// terminator such as nginx, Caddy or a cloud load balancer).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Production upstream, e.g. `http://127.0.0.1:3000`: where requests without a routing key
    /// go. Without one, such requests get 502.
    pub production: Option<String>,
    /// Regular expression over the host name (port removed) with a named group `key`; matched
    /// case-insensitively.
    pub host_pattern: String,
    /// What replaces the part of the host that `host_pattern` matched (`www-<key>.`) before
    /// the request reaches the developer's app, so it sees the production host
    /// (`www-k3yx9q.example.com` → `www.example.com`). `None` keeps the visitor's host.
    pub dev_host_prefix: Option<String>,
    /// Request header that names a routing key when the host does not. Removed before the
    /// request goes anywhere.
    pub key_header: String,
    /// Peers whose `X-Forwarded-*`/`Forwarded` headers are believed (e.g. a TLS terminator in
    /// front of the edge). From anyone else, those headers are replaced.
    pub trusted_proxies: Vec<IpNet>,
    /// `HOST:PORT` of the relay, for an edge running as its own process. (`devinprod up` runs
    /// the edge in the relay's process and ignores this.)
    pub relay: Option<String>,
    /// TLS name to expect on the relay's certificate. Default: the host part of `relay`.
    pub relay_server_name: Option<String>,
    /// Where the edge's PKI files live unless given one by one below.
    pub state_dir: PathBuf,
    /// CA that issued the relay's certificate. Default: `<state_dir>/ca.pem`.
    pub ca: Option<PathBuf>,
    /// The edge's client certificate (role edge). Default: `<state_dir>/edge.pem`.
    pub cert: Option<PathBuf>,
    /// The edge's private key. Default: `<state_dir>/edge.key`.
    pub key: Option<PathBuf>,
    /// Time a visitor has to send a request head, in milliseconds. A head that started but
    /// did not finish gets 408; a new connection that sent nothing is closed.
    pub header_read_timeout_ms: u64,
    /// A visitor's keep-alive connection idle this long between requests is closed, in
    /// milliseconds. (Upgraded connections such as WebSockets and HTTP/2 are not affected.)
    pub visitor_idle_timeout_ms: u64,
    /// Largest request head (request line and headers) a visitor may send; beyond it: 431.
    pub max_header_bytes: usize,
    /// Time the developer's app has to start answering (response head), in ms; beyond: 504.
    pub response_timeout_ms: u64,
    /// Longest wait for the next piece of a visitor's request body, in milliseconds, while the
    /// edge is ready to take it (production or the developer's side is reading); beyond it
    /// the visitor gets 408 (if the response has not started) and the upstream request is
    /// aborted, which frees its production connection.
    pub body_read_timeout_ms: u64,
    /// A request body must come at least this fast on average: the visitor may keep the far
    /// side waiting `body_read_timeout_ms` in all, plus one second per this many bytes it has
    /// sent; beyond it, as for a stall (0: no minimum rate).
    pub body_min_bytes_per_sec: u64,
    /// Largest declared request body (Content-Length) for a developer route; beyond: 413.
    /// 0: no limit.
    pub max_request_body_bytes: u64,
    /// Requests in flight to one developer at once; beyond: 503 (their laptop is not a farm).
    pub max_requests_per_developer: usize,
    /// Keep-alive toward the relay, in milliseconds: each is answered, so a live relay is
    /// heard from at least this often.
    pub keep_alive_interval_ms: u64,
    /// The relay connection is dead after this much silence, in milliseconds.
    pub idle_timeout_ms: u64,
    /// A relay heard from nothing for this long is given up: requests waiting on it fail, and
    /// the next one connects anew, in milliseconds.
    pub silence_bound_ms: u64,
    /// The whole of opening a developer's stream through the relay — connecting, the
    /// handshake and the relay's routing answer — must finish within this, in milliseconds;
    /// beyond it the visitor gets "Relay unavailable" (a self-refreshing page).
    pub relay_open_timeout_ms: u64,
    /// Who may reach developer routes: "anyone" (loopback demos), "networks" (with
    /// `allowed_networks`) or "staff" (with `staff_secret`). No default for a standalone edge:
    /// it must be chosen; `devinprod up`/`demo` on loopback use "anyone".
    pub access: Option<AccessMode>,
    /// Client networks allowed with `access = "networks"`.
    pub allowed_networks: Vec<IpNet>,
    /// Secret (32+ characters) that signs staff credentials, for `access = "staff"`. Never
    /// shown by `Debug`.
    pub staff_secret: Option<proto::Secret>,
    /// How long a staff sign-in lasts, in seconds.
    pub staff_ttl_secs: u64,
    /// Domain of the staff cookie (e.g. `example.com`, so it covers every `www-<key>` host).
    /// Staff tokens are signed for it: another edge (another domain, same secret) refuses
    /// them. Unset: a host-only cookie, and a token good only on the host that issued it.
    pub staff_cookie_domain: Option<String>,
    /// Signed-out staff tokens remembered (in memory, each until it expires) so that a copy of
    /// the cookie stops working at sign-out. When that many live ones are remembered, the next
    /// sign-out revokes every staff token issued so far (all staff sign in again).
    pub max_revoked_staff_tokens: usize,
    /// What a request for a developer who is not connected gets: `"error"` (a 502 page that
    /// says so and refreshes itself until they are back) or `"production"`.
    pub on_missing: OnMissing,
    /// Largest frame read from a tunnel stream.
    pub max_frame_len: u32,
    /// How long a shutting-down edge lets in-flight requests finish, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// Threads that serve visitor connections, each with a single-threaded runtime and
    /// connections to production of its own (as nginx's worker processes): the production
    /// path uses this many cores. Unset: one per CPU core.
    pub workers: Option<usize>,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls_cert: None,
            tls_key: None,
            production: None,
            host_pattern: "^www-(?P<key>[a-z0-9]{6})[.-]".into(),
            dev_host_prefix: Some("www.".into()),
            key_header: "x-devinprod-key".into(),
            trusted_proxies: Vec::new(),
            relay: None,
            relay_server_name: None,
            state_dir: PathBuf::from(".devinprod"),
            ca: None,
            cert: None,
            key: None,
            header_read_timeout_ms: 30_000,
            visitor_idle_timeout_ms: 75_000,
            max_header_bytes: 64 * 1024,
            response_timeout_ms: 60_000,
            body_read_timeout_ms: 30_000,
            body_min_bytes_per_sec: 500,
            max_request_body_bytes: 0,
            max_requests_per_developer: 256,
            keep_alive_interval_ms: 1_000,
            idle_timeout_ms: 30_000,
            silence_bound_ms: 3_000,
            relay_open_timeout_ms: 3_000,
            access: None,
            allowed_networks: Vec::new(),
            staff_secret: None,
            staff_ttl_secs: 12 * 3600,
            staff_cookie_domain: None,
            max_revoked_staff_tokens: crate::access::DEFAULT_MAX_REVOKED_STAFF_TOKENS,
            on_missing: OnMissing::Error,
            max_frame_len: proto::MAX_FRAME_LEN as u32,
            shutdown_grace_ms: 5_000,
            workers: None,
        }
    }
}

/// Most visitor-connection worker threads an edge starts.
pub const MAX_WORKERS: usize = 1024;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnMissing {
    Error,
    Production,
}

impl EdgeConfig {
    /// How slowly a visitor may send a request body (see [`crate::visitor_body`]).
    /// Visitor-connection worker threads: `workers`, else one per CPU core (at least 1, at
    /// most [`MAX_WORKERS`]).
    pub fn worker_threads(&self) -> usize {
        self.workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .clamp(1, MAX_WORKERS)
    }

    pub fn body_pace(&self) -> crate::visitor_body::BodyPace {
        crate::visitor_body::BodyPace {
            idle: std::time::Duration::from_millis(self.body_read_timeout_ms),
            min_bytes_per_sec: self.body_min_bytes_per_sec,
        }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.ca
            .clone()
            .unwrap_or_else(|| self.state_dir.join("ca.pem"))
    }
    pub fn cert_path(&self) -> PathBuf {
        self.cert
            .clone()
            .unwrap_or_else(|| self.state_dir.join("edge.pem"))
    }
    pub fn key_path(&self) -> PathBuf {
        self.key
            .clone()
            .unwrap_or_else(|| self.state_dir.join("edge.key"))
    }

    pub(crate) fn transport(&self) -> quinn::TransportConfig {
        let mut t = quinn::TransportConfig::default();
        t.max_concurrent_bidi_streams(0u32.into());
        t.max_concurrent_uni_streams(0u32.into());
        t.keep_alive_interval(Some(Duration::from_millis(self.keep_alive_interval_ms)));
        let idle = quinn::IdleTimeout::try_from(Duration::from_millis(self.idle_timeout_ms))
            .unwrap_or(quinn::VarInt::MAX.into());
        t.max_idle_timeout(Some(idle));
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_the_config_never_shows_the_staff_secret() {
        let secret = "a staff secret of at least thirty-two chars";
        let config = EdgeConfig {
            staff_secret: Some(secret.into()),
            ..EdgeConfig::default()
        };
        let shown = format!("{config:?} {config:#?}");
        assert!(!shown.contains(secret), "{shown}");
        assert!(shown.contains("staff_secret"), "{shown}");
    }
}
