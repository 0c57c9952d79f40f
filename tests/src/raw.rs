//! Talking to a relay without the real client: raw QUIC connections and hand-made frames, to
//! test what the relay does with peers that misbehave.

use proto::{read_frame, Frame, MAX_FRAME_LEN};
use std::net::SocketAddr;
use std::path::Path;

/// A client endpoint trusting `ca`, presenting `identity` (cert, key) if given, offering `alpn`.
pub fn endpoint(ca: &Path, identity: Option<(&Path, &Path)>, alpn: &[u8]) -> quinn::Endpoint {
    let roots = certs::load_roots(ca).unwrap();
    let id = identity.map(|(c, k)| certs::Identity::load(c, k).unwrap());
    let tls = certs::peer_client_config(roots, id, alpn).unwrap();
    certs::client_endpoint(
        "127.0.0.1:0".parse().unwrap(),
        tls,
        quinn::TransportConfig::default(),
    )
    .unwrap()
}

/// What the relay answered to a control stream.
#[derive(Debug)]
pub enum Answer {
    Frame(Frame),
    /// The connection was closed: code and reason.
    Closed(u64, String),
    /// The connection failed some other way (e.g. during the TLS handshake).
    Failed(String),
}

/// Connects, opens the control stream, writes `bytes`, and reads the relay's answer.
pub async fn send_control_bytes(ep: &quinn::Endpoint, relay: SocketAddr, bytes: &[u8]) -> Answer {
    let conn = match ep.connect(relay, "localhost").unwrap().await {
        Ok(c) => c,
        Err(e) => return Answer::Failed(e.to_string()),
    };
    let (mut send, mut recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return Answer::Failed(e.to_string()),
    };
    if let Err(e) = send.write_all(bytes).await {
        return Answer::Failed(e.to_string());
    }
    let answer = tokio::time::timeout(crate::WAIT, read_frame(&mut recv, MAX_FRAME_LEN))
        .await
        .expect("relay neither answered nor closed");
    match answer {
        Ok(Some(f)) => Answer::Frame(f),
        _ => match tokio::time::timeout(crate::WAIT, conn.closed()).await {
            Ok(quinn::ConnectionError::ApplicationClosed(c)) => Answer::Closed(
                c.error_code.into_inner(),
                String::from_utf8_lossy(&c.reason).into_owned(),
            ),
            Ok(other) => Answer::Failed(other.to_string()),
            Err(_) => Answer::Failed("no answer and no close".into()),
        },
    }
}

pub fn encode(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    frame.encode(&mut out).unwrap();
    out
}
