//! A dbproxy running as its own process: one QUIC connection to the relay with the dbproxy
//! role certificate; the relay opens one stream per app database connection, starting with
//! `StreamHeader::Db` naming the developer.

use crate::{DbProxy, DbProxyFileConfig};
use proto::{codes, handshake, read_frame, Frame, Hello, Role, StreamHeader, TunnelStream};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Time the relay has to send a stream's header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between attempts to reach the relay.
const RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(transparent)]
    Certs(#[from] certs::CertsError),
}

/// Connects to the relay and serves its streams until `shutdown`, reconnecting as needed.
pub async fn run(
    proxy: Arc<DbProxy>,
    file: &DbProxyFileConfig,
    relay: &str,
    shutdown: impl Future<Output = ()>,
) -> Result<(), PeerError> {
    let relay = certs::RelayAddress::parse(relay, file.relay_server_name.as_deref())?;
    let roots = certs::load_roots(&file.ca_path())?;
    let identity = certs::Identity::load(&file.cert_path(), &file.key_path())?;
    let tls = certs::peer_client_config(roots, Some(identity), proto::ALPN)?;
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(4096u32.into());
    transport.keep_alive_interval(Some(Duration::from_secs(10)));
    let endpoint = relay.client_endpoint(tls, transport)?;
    tokio::pin!(shutdown);
    loop {
        let attempt = async {
            let conn = endpoint
                .connect(relay.resolve()?, &relay.server_name)
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            let hello = Hello {
                role: Role::DbProxy,
                token: None,
                client_name: "dbproxy".into(),
                capabilities: vec!["db".into()],
            };
            handshake(&mut send, &mut recv, hello)
                .await
                .map_err(|e| e.to_string())?;
            info!(relay = %relay.spec, "dbproxy connected to relay");
            loop {
                let (send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
                let proxy = proxy.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(
                        HEADER_TIMEOUT,
                        read_frame(&mut recv, proto::MAX_FRAME_LEN),
                    )
                    .await
                    {
                        Ok(Ok(Some(Frame::StreamHeader(StreamHeader::Db(h)))))
                            if h.routing_key.is_some() =>
                        {
                            let key = h.routing_key.expect("checked just above");
                            proxy
                                .serve(
                                    key,
                                    TunnelStream {
                                        send: Box::new(send),
                                        recv: Box::new(recv),
                                    },
                                )
                                .await;
                        }
                        other => {
                            warn!("stream from the relay without a database header: {other:?}");
                            let mut send = send;
                            let _ = send.reset(quinn::VarInt::from_u32(codes::STREAM_BAD_HEADER));
                        }
                    }
                });
            }
            #[allow(unreachable_code)]
            Ok::<(), String>(())
        };
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = attempt => {
                if let Err(e) = r {
                    warn!(relay = %relay.spec, "relay connection: {}; retrying in {}s", proto::printable(&e), RETRY.as_secs());
                }
            }
        }
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}
