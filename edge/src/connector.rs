//! The separate edge's [`StreamOpener`]: one QUIC connection to the relay (mTLS with the edge
//! role certificate), re-established on demand, one stream per request starting with `Route`.

use crate::config::EdgeConfig;
use proto::{
    handshake, read_frame, Frame, Hello, OpenError, OpenFuture, Role, RouteReply, RouteRequest,
    RoutingKey, StreamOpener, TunnelStream,
};
use tokio::sync::Mutex;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error(transparent)]
    Certs(#[from] certs::CertsError),
}

pub struct RelayConnector {
    endpoint: quinn::Endpoint,
    relay: certs::RelayAddress,
    conn: Mutex<Option<quinn::Connection>>,
}

impl RelayConnector {
    pub fn new(config: &EdgeConfig, relay: &str) -> Result<Self, ConnectorError> {
        let relay = certs::RelayAddress::parse(relay, config.relay_server_name.as_deref())?;
        let roots = certs::load_roots(&config.ca_path())?;
        let identity = certs::Identity::load(&config.cert_path(), &config.key_path())?;
        let tls = certs::peer_client_config(roots, Some(identity), proto::ALPN)?;
        let endpoint = relay.client_endpoint(tls, config.transport())?;
        Ok(Self {
            endpoint,
            relay,
            conn: Mutex::new(None),
        })
    }

    /// The live connection, or a new one (handshake included).
    async fn connection(&self) -> Result<quinn::Connection, OpenError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref().filter(|c| c.close_reason().is_none()) {
            return Ok(c.clone());
        }
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            OpenError::RelayUnavailable(format!("{what} {}: {e}", self.relay.spec))
        };
        let remote = self.relay.resolve().map_err(OpenError::RelayUnavailable)?;
        let conn = self
            .endpoint
            .connect(remote, &self.relay.server_name)
            .map_err(|e| unavailable("cannot connect to relay", &e))?
            .await
            .map_err(|e| unavailable("cannot connect to relay", &e))?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| unavailable("relay connection failed", &e))?;
        let hello = Hello {
            role: Role::Edge,
            token: None,
            client_name: "edge".into(),
            capabilities: vec!["http".into()],
        };
        let welcome = handshake(&mut send, &mut recv, hello)
            .await
            .map_err(|e| unavailable("relay handshake with", &e))?;
        info!(relay = %self.relay.spec, session = welcome.session, "edge connected to relay");
        *guard = Some(conn.clone());
        Ok(conn)
    }

    async fn open_stream(
        &self,
        key: RoutingKey,
        prelude: Vec<u8>,
    ) -> Result<TunnelStream, OpenError> {
        let conn = self.connection().await?;
        let (mut send, recv) = conn.open_bi().await.map_err(|e| {
            warn!(
                "relay connection lost: {}",
                proto::printable(&e.to_string())
            );
            OpenError::RelayUnavailable(format!("relay connection lost: {e}"))
        })?;
        // Route and the request's head leave together; the relay passes the head on once the
        // developer's stream is open, or discards it when the developer is offline.
        let mut first = Vec::with_capacity(64 + prelude.len());
        Frame::Route(RouteRequest { key: key.clone() })
            .encode(&mut first)
            .map_err(|e| OpenError::RelayUnavailable(e.to_string()))?;
        first.extend_from_slice(&prelude);
        send.write_all(&first)
            .await
            .map_err(|e| OpenError::RelayUnavailable(e.to_string()))?;
        // The relay's answer tells "offline" apart before the request's body is read, so the
        // edge can still answer from production (`on_missing = "production"`).
        let mut recv = recv;
        match read_frame(&mut recv, proto::MAX_FRAME_LEN).await {
            Ok(Some(Frame::RouteReply(RouteReply::Connected))) => {}
            Ok(Some(Frame::RouteReply(RouteReply::Offline))) => {
                return Err(OpenError::DeveloperOffline(key))
            }
            Ok(Some(Frame::RouteReply(RouteReply::Refused(why)))) => {
                return Err(OpenError::DeveloperConnectionFailed(format!(
                    "the relay refused the stream: {why}"
                )))
            }
            other => {
                return Err(OpenError::RelayUnavailable(format!(
                    "no routing answer from the relay: {other:?}"
                )))
            }
        }
        Ok(TunnelStream {
            send: Box::new(send),
            recv: Box::new(recv),
        })
    }
}

impl StreamOpener for RelayConnector {
    fn open(&self, key: RoutingKey, prelude: Vec<u8>) -> OpenFuture<'_> {
        Box::pin(self.open_stream(key, prelude))
    }
}
