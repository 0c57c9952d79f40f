//! QUIC endpoints for every DevInProd peer: a UDP socket with enlarged buffers (the kernel
//! default drops packets under load), handed to quinn with the TLS config from [`crate::tls`].

use crate::CertsError;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::sync::Arc;

/// UDP send and receive buffer size asked of the kernel (it may grant less).
pub const UDP_BUFFER_BYTES: usize = 4 << 20;

fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Best effort: some systems refuse to change it, and dual-stack is only a nicety.
        let _ = socket.set_only_v6(false);
    }
    // Best effort: the kernel caps these at net.core.{r,w}mem_max without failing.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
    reset_secret: Option<&[u8]>,
) -> Result<quinn::Endpoint, CertsError> {
    let socket = udp_socket(addr).map_err(|e| CertsError::Bind { addr, source: e })?;
    let config = match reset_secret {
        Some(secret) => {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
            // Connection IDs carry a keyed hash that the endpoint checks before anything else;
            // with a random key, a restarted server would drop its old IDs unanswered instead
            // of resetting them. Derive that key from the same persistent secret.
            let tag = ring::hmac::sign(&key, b"devinprod connection id key");
            let mut cid_key = [0u8; 8];
            cid_key.copy_from_slice(&tag.as_ref()[..8]);
            let cid_key = u64::from_le_bytes(cid_key);
            let mut config = quinn::EndpointConfig::new(Arc::new(key));
            config.cid_generator(move || {
                Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
            });
            // quinn sends at most one stateless reset per 20 ms by default: after a crash,
            // 1,000 clients knocking at once were told over 20 s, and the unlucky ones waited
            // out their idle timeout (scale-bench). The keyed connection IDs above already drop
            // garbage before it can trigger a reset, so a reset per millisecond is safe.
            config.min_reset_interval(std::time::Duration::from_millis(1));
            config
        }
        None => quinn::EndpointConfig::default(),
    };
    quinn::Endpoint::new(config, server, socket, Arc::new(quinn::TokioRuntime))
        .map_err(|e| CertsError::Bind { addr, source: e })
}

/// A QUIC server endpoint bound to `addr` (port 0 picks a free port).
///
/// `reset_secret` keys QUIC stateless resets. A server that keeps it across restarts (see
/// [`crate::load_or_create_secret`]) can reset the connections of its previous life, so their
/// clients learn at their next packet that it restarted instead of waiting for the idle timeout.
pub fn server_endpoint(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    transport: quinn::TransportConfig,
    reset_secret: Option<&[u8]>,
) -> Result<quinn::Endpoint, CertsError> {
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| CertsError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    endpoint(addr, Some(config), reset_secret)
}

/// A QUIC client endpoint bound to `bind` (usually `0.0.0.0:0` or `[::]:0`) whose default
/// client config uses `tls`.
pub fn client_endpoint(
    bind: SocketAddr,
    tls: rustls::ClientConfig,
    transport: quinn::TransportConfig,
) -> Result<quinn::Endpoint, CertsError> {
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| CertsError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    let mut ep = endpoint(bind, None, None)?;
    ep.set_default_client_config(config);
    Ok(ep)
}

/// The unspecified address of the same family as `remote`, port 0: where a client binds.
pub fn unspecified_for(remote: SocketAddr) -> SocketAddr {
    match remote {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    }
}

/// A relay as its peers are told where it is (`HOST:PORT`): the TLS name its certificate must
/// carry, and the address to dial — resolved again at each (re)connection, since DNS may move it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayAddress {
    /// As given, e.g. `relay.example.com:4433` or `[::1]:4433`.
    pub spec: String,
    pub server_name: String,
}

impl RelayAddress {
    /// `server_name` overrides the TLS name (default: the host part of `spec`).
    pub fn parse(spec: &str, server_name: Option<&str>) -> Result<Self, CertsError> {
        let (host, port) = spec.rsplit_once(':').ok_or_else(|| {
            CertsError::Inconsistent(format!("relay address {spec:?} must be HOST:PORT"))
        })?;
        if port.parse::<u16>().is_err() || host.is_empty() {
            return Err(CertsError::Inconsistent(format!(
                "relay address {spec:?} must be HOST:PORT"
            )));
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(Self {
            spec: spec.to_owned(),
            server_name: server_name
                .map(str::to_owned)
                .unwrap_or_else(|| host.to_owned()),
        })
    }

    pub fn resolve(&self) -> Result<SocketAddr, String> {
        use std::net::ToSocketAddrs;
        self.spec
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.spec))?
            .next()
            .ok_or_else(|| format!("cannot resolve {}: no address", self.spec))
    }

    /// A client endpoint of the right address family for this relay.
    pub fn client_endpoint(
        &self,
        tls: rustls::ClientConfig,
        transport: quinn::TransportConfig,
    ) -> Result<quinn::Endpoint, CertsError> {
        let family = self
            .resolve()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        client_endpoint(unspecified_for(family), tls, transport)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_addresses_give_their_tls_name() {
        let a = RelayAddress::parse("relay.example.com:4433", None).unwrap();
        assert_eq!(a.server_name, "relay.example.com");
        assert_eq!(
            RelayAddress::parse("[::1]:4433", None).unwrap().server_name,
            "::1"
        );
        assert_eq!(
            RelayAddress::parse("10.0.0.1:4433", Some("relay.internal"))
                .unwrap()
                .server_name,
            "relay.internal"
        );
        assert!(RelayAddress::parse("relay.example.com", None).is_err());
        assert!(RelayAddress::parse(":4433", None).is_err());
        assert_eq!(
            RelayAddress::parse("127.0.0.1:4433", None)
                .unwrap()
                .resolve()
                .unwrap(),
            "127.0.0.1:4433".parse().unwrap()
        );
    }
}
