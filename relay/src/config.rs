//! The relay's configuration (`relay.toml`, or the `[relay]` table of `up --config`). Every key
//! is optional; defaults live in [`RelayConfig::default`] and nowhere else.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// UDP address of the QUIC listener.
    pub listen: SocketAddr,
    /// TCP address of the admin API (token create/list/revoke, sessions).
    pub admin_listen: SocketAddr,
    /// Peer networks the admin API answers; judged by the socket's peer address, never by a
    /// header. Anything else gets 403.
    pub admin_allow: Vec<IpNet>,
    /// Where the PKI files and the token store live unless given one by one below.
    pub state_dir: PathBuf,
    /// Token store (JSON, hashes only). Default: `<state_dir>/tokens.json`.
    pub tokens_file: Option<PathBuf>,
    /// The relay's certificate chain. Default: `<state_dir>/relay.pem`.
    pub cert: Option<PathBuf>,
    /// The relay's private key. Default: `<state_dir>/relay.key`.
    pub key: Option<PathBuf>,
    /// CA that issues the edge/dbproxy (and optional developer) client certs.
    /// Default: `<state_dir>/ca.pem`.
    pub ca: Option<PathBuf>,
    /// Preview URLs sent to a developer in `Welcome`; `{key}` becomes the routing key.
    pub public_urls: Vec<String>,
    /// Keep-alive the relay sends, in milliseconds: each is answered, so a live peer is heard
    /// from at least this often.
    pub keep_alive_interval_ms: u64,
    /// A peer heard from nothing for this long is not routed to (visitors get "Developer
    /// offline" at once; a request waiting on it fails), in milliseconds. Its connection stays
    /// open until `idle_timeout_ms`, so it is routable again as soon as it is heard from.
    pub silence_bound_ms: u64,
    /// A developer's database stream that finds no live dbproxy waits this long for one to
    /// connect (one starting with `up`, or restarting) before it is refused, in milliseconds.
    pub dbproxy_wait_ms: u64,
    /// A connection silent for this long is dead, in milliseconds.
    pub idle_timeout_ms: u64,
    /// Time a peer has to open its control stream and send Hello, in milliseconds; also the
    /// time an edge stream has to name its routing key.
    pub handshake_timeout_ms: u64,
    /// Concurrent streams an edge or dbproxy may open toward the relay (edges open one per
    /// request).
    pub max_streams_per_peer: u32,
    /// Concurrent streams a developer's client may open toward the relay (one per database
    /// connection of its app). Kept small because QUIC reserves per-connection state for every
    /// stream a peer may open: this is most of what an idle developer costs the relay. Sent to
    /// the client in `Welcome`; its MySQL listener refuses the connection beyond it with error
    /// 1040. The QUIC allowance is a little larger ([`developer_stream_allowance`]).
    pub max_streams_per_developer: u32,
    /// Largest frame the relay reads (control frames only; bodies are spliced unread).
    pub max_frame_len: u32,
    /// Bytes a peer may have in flight toward the relay on one connection, all its streams
    /// together (QUIC's connection flow-control window; quinn's default is unlimited, and each
    /// of a developer's 128 streams could then fill its own 1.25 MB window).
    pub receive_window_bytes: u32,
    /// Also require a developer client certificate issued by the CA (in addition to a token).
    pub require_developer_cert: bool,
    /// Connection attempts in their handshake at once, in all; beyond: refused at once. Each
    /// holds ~54 KB of TLS and QUIC state until it completes or times out.
    pub max_pending_handshakes: usize,
    /// Connection attempts in their handshake at once from one IP address; beyond: refused.
    pub max_handshakes_per_ip: usize,
    /// With more attempts than this in their handshake, an address that has not proven it
    /// receives the relay's packets gets a stateless QUIC Retry first (a spoofed source never
    /// answers it). 0: always.
    pub retry_above_handshakes: usize,
    /// Failed developer Hellos (unknown, malformed, revoked or missing token) one source
    /// address may make in a row before its Hellos are refused without their token being
    /// checked. IPv6 addresses count per /64. 0 turns the throttle off.
    pub failed_hello_burst: u32,
    /// Failed Hellos per second a throttled address earns back. 0 turns the throttle off.
    pub failed_hellos_per_sec: u32,
    /// Source addresses whose failures are remembered at most (about 50 bytes each); when the
    /// table is full, the address quiet for longest is forgotten.
    pub failed_hello_sources: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 4480)),
            admin_allow: vec![
                "127.0.0.0/8".parse().expect("valid literal network"),
                "::1/128".parse().expect("valid literal network"),
            ],
            state_dir: PathBuf::from(".devinprod"),
            tokens_file: None,
            cert: None,
            key: None,
            ca: None,
            public_urls: vec!["http://www-{key}.localhost:8080".into()],
            keep_alive_interval_ms: 1_000,
            silence_bound_ms: 3_000,
            dbproxy_wait_ms: 5_000,
            idle_timeout_ms: 30_000,
            handshake_timeout_ms: 10_000,
            max_streams_per_peer: 4096,
            max_streams_per_developer: 128,
            max_frame_len: proto::MAX_FRAME_LEN as u32,
            receive_window_bytes: 16 << 20,
            require_developer_cert: false,
            max_pending_handshakes: 1_024,
            max_handshakes_per_ip: 64,
            retry_above_handshakes: 128,
            failed_hello_burst: 10,
            failed_hellos_per_sec: 2,
            failed_hello_sources: 4096,
        }
    }
}

impl RelayConfig {
    pub fn tokens_path(&self) -> PathBuf {
        self.tokens_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("tokens.json"))
    }
    pub fn cert_path(&self) -> PathBuf {
        self.cert
            .clone()
            .unwrap_or_else(|| self.state_dir.join("relay.pem"))
    }
    pub fn key_path(&self) -> PathBuf {
        self.key
            .clone()
            .unwrap_or_else(|| self.state_dir.join("relay.key"))
    }
    pub fn ca_path(&self) -> PathBuf {
        self.ca
            .clone()
            .unwrap_or_else(|| self.state_dir.join("ca.pem"))
    }
    /// Secret that keys QUIC stateless resets, kept across restarts so that a restarted relay
    /// can tell the clients of its previous life at once (`<state_dir>/reset.key`).
    pub fn reset_key_path(&self) -> PathBuf {
        self.state_dir.join("reset.key")
    }
    pub fn handshake_limits(&self) -> crate::handshakes::HandshakeLimits {
        crate::handshakes::HandshakeLimits {
            max_pending: self.max_pending_handshakes,
            max_per_ip: self.max_handshakes_per_ip,
            retry_above: self.retry_above_handshakes,
        }
    }
    pub fn dbproxy_wait(&self) -> Duration {
        Duration::from_millis(self.dbproxy_wait_ms)
    }
    pub fn silence_bound(&self) -> Duration {
        Duration::from_millis(self.silence_bound_ms)
    }
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// The QUIC transport parameters for every connection of this relay.
    pub fn transport(&self) -> quinn::TransportConfig {
        let mut t = quinn::TransportConfig::default();
        // Every peer starts with the developer's allowance; edges and dbproxies are raised to
        // `max_streams_per_peer` once their certificate says what they are.
        t.max_concurrent_bidi_streams(
            developer_stream_allowance(self.max_streams_per_developer).into(),
        );
        t.max_concurrent_uni_streams(0u32.into());
        t.receive_window(self.receive_window_bytes.into());
        t.keep_alive_interval(Some(Duration::from_millis(self.keep_alive_interval_ms)));
        // Saturate instead of failing: an absurd timeout is still "effectively never".
        let idle = quinn::IdleTimeout::try_from(Duration::from_millis(self.idle_timeout_ms))
            .unwrap_or(quinn::VarInt::MAX.into());
        t.max_idle_timeout(Some(idle));
        t
    }

    pub(crate) fn throttle_limits(&self) -> crate::throttle::ThrottleLimits {
        crate::throttle::ThrottleLimits {
            burst: self.failed_hello_burst,
            per_sec: self.failed_hellos_per_sec,
            max_sources: self.failed_hello_sources,
        }
    }

    pub fn public_urls_for(&self, key: &proto::RoutingKey) -> Vec<String> {
        self.public_urls
            .iter()
            .map(|u| u.replace("{key}", key.as_str()))
            .collect()
    }
}

/// The QUIC stream allowance that lets a developer's client keep `max_streams` database streams
/// open, as `Welcome` promises, without waiting for stream credit.
///
/// quinn gives a peer back the credit of its closed streams only once more than an eighth of
/// the allowance has been freed (to save packets), and the control stream uses one more. With
/// an allowance of exactly `max_streams`, a client would have one stream less than promised
/// from the start and, once full, would wait for 17 of the app's connections (at 128) to close
/// before a new one could open. With `max_streams + max_streams / 7 + 2` (148 at 128), an eighth
/// of it plus the control stream is always spare: `allowance - allowance / 8 >= max_streams + 1`.
/// The client itself keeps to `max_streams`.
pub fn developer_stream_allowance(max_streams: u32) -> u32 {
    max_streams.saturating_add(max_streams / 7 + 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quic_allowance_covers_the_promised_streams_despite_batched_credit() {
        for n in (0..=5000).chain([u32::MAX / 2]) {
            let a = u64::from(developer_stream_allowance(n));
            assert!(a - a / 8 > u64::from(n), "{n}: allowance {a}");
        }
        assert_eq!(developer_stream_allowance(128), 148);
        assert_eq!(developer_stream_allowance(u32::MAX), u32::MAX, "saturates");
    }
}
