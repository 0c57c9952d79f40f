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
) -> Result<quinn::Endpoint, CertsError> {
    let socket = udp_socket(addr).map_err(|e| CertsError::Bind { addr, source: e })?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| CertsError::Bind { addr, source: e })
}

/// A QUIC server endpoint bound to `addr` (port 0 picks a free port).
pub fn server_endpoint(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    transport: quinn::TransportConfig,
) -> Result<quinn::Endpoint, CertsError> {
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| CertsError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    endpoint(addr, Some(config))
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
    let mut ep = endpoint(bind, None)?;
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
