//! Unfinished QUIC handshakes, as a flood of them reaches a server: every Initial is a real
//! client's first datagram (built by quinn-proto, which does no I/O), sent once from a UDP socket
//! that never answers what comes back. What the server keeps for each is the cost of the flood;
//! the relay bounds it (`relay::handshakes`). Used by the hostile tests and the scale benchmark.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a flood sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct FloodSent {
    pub initials: usize,
    pub secs: f64,
}

/// Sends `count` Initials to `target`, spread evenly over sockets bound to `sources` (loopback
/// addresses: any 127.x.y.z is this host), `per_batch` at a time with `pause` between batches
/// (so that a loopback receive buffer is not what limits the server).
pub async fn send_initials(
    target: SocketAddr,
    server_name: &str,
    tls: rustls::ClientConfig,
    sources: &[IpAddr],
    count: usize,
    per_batch: usize,
    pause: Duration,
) -> Result<FloodSent, String> {
    let crypto = quinn_proto::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| format!("QUIC client config: {e}"))?;
    let config = quinn_proto::ClientConfig::new(Arc::new(crypto));
    let mut sockets = Vec::with_capacity(sources.len());
    for ip in sources {
        let s = tokio::net::UdpSocket::bind(SocketAddr::new(*ip, 0))
            .await
            .map_err(|e| format!("bind {ip}: {e}"))?;
        sockets.push(s);
    }
    if sockets.is_empty() {
        return Err("no source address".into());
    }
    let mut endpoint = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        false,
        None,
    );
    let started = Instant::now();
    let mut buf = Vec::with_capacity(1500);
    let mut sent = 0;
    while sent < count {
        for _ in 0..per_batch.max(1).min(count - sent) {
            let now = Instant::now();
            let (_, mut conn) = endpoint
                .connect(now, config.clone(), target, server_name)
                .map_err(|e| format!("connect: {e}"))?;
            buf.clear();
            let Some(t) = conn.poll_transmit(now, 1, &mut buf) else {
                return Err("quinn-proto produced no Initial".into());
            };
            let socket = &sockets[sent % sockets.len()];
            socket
                .send_to(&buf[..t.size], target)
                .await
                .map_err(|e| format!("send: {e}"))?;
            sent += 1;
            // `conn` is dropped unanswered: the handshake it started is never finished.
        }
        tokio::time::sleep(pause).await;
    }
    Ok(FloodSent {
        initials: sent,
        secs: started.elapsed().as_secs_f64(),
    })
}

/// `n` distinct loopback source addresses, 127.0.1.1 onwards (127.0.0.0/8 is all this host).
pub fn loopback_sources(n: usize) -> Vec<IpAddr> {
    (0..n)
        .map(|i| IpAddr::from([127, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8]))
        .collect()
}
