//! The separate edge's [`StreamOpener`]: one QUIC connection to the relay (mTLS with the edge
//! role certificate), re-established on demand, one stream per request starting with `Route`.

use crate::config::EdgeConfig;
use certs::liveness::{GuardedRecv, Liveness};
use proto::{
    handshake, read_frame, Frame, Hello, OpenError, OpenFuture, Role, RouteReply, RouteRequest,
    RoutingKey, StreamOpener, TunnelStream,
};
use std::sync::Arc;
use std::time::Duration;
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
    /// The relay connection, and when the relay was last heard from on it.
    conn: Mutex<Option<(quinn::Connection, Arc<Liveness>)>>,
    silence_bound: Duration,
    open_timeout: Duration,
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
            silence_bound: Duration::from_millis(config.silence_bound_ms),
            open_timeout: Duration::from_millis(config.relay_open_timeout_ms),
        })
    }

    /// The live connection, or a new one (handshake included). A connection to a relay that
    /// went silent (down, restarting, unreachable) is given up for a new attempt.
    async fn connection(&self) -> Result<(quinn::Connection, Arc<Liveness>), OpenError> {
        let mut guard = self.conn.lock().await;
        if let Some((c, liveness)) = guard.as_ref() {
            if c.close_reason().is_none() && !liveness.is_silent() {
                return Ok((c.clone(), liveness.clone()));
            }
            if c.close_reason().is_none() {
                warn!(relay = %self.relay.spec, "the relay went silent; connecting anew");
                c.close(
                    quinn::VarInt::from_u32(proto::codes::CLOSE_NORMAL),
                    b"silent",
                );
            }
            *guard = None;
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
        let liveness = Liveness::watch(&conn, self.silence_bound);
        *guard = Some((conn.clone(), liveness.clone()));
        Ok((conn, liveness))
    }

    /// Opens a developer's stream, the whole path bounded in time: a visitor learns within
    /// `relay_open_timeout_ms` that the relay is gone, not at the QUIC idle timeout.
    async fn open_stream(
        &self,
        key: RoutingKey,
        prelude: Vec<u8>,
    ) -> Result<TunnelStream, OpenError> {
        match tokio::time::timeout(self.open_timeout, self.open_stream_now(key, prelude)).await {
            Ok(opened) => opened,
            Err(_) => Err(OpenError::RelayUnavailable(format!(
                "the relay {} did not answer within {} ms",
                self.relay.spec,
                self.open_timeout.as_millis()
            ))),
        }
    }

    async fn open_stream_now(
        &self,
        key: RoutingKey,
        prelude: Vec<u8>,
    ) -> Result<TunnelStream, OpenError> {
        let (conn, liveness) = self.connection().await?;
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
            recv: Box::new(GuardedRecv::new(recv, liveness)),
        })
    }
}

impl StreamOpener for RelayConnector {
    fn open(&self, key: RoutingKey, prelude: Vec<u8>) -> OpenFuture<'_> {
        Box::pin(self.open_stream(key, prelude))
    }
}
