//! The session registry: routing key → the developer's live QUIC connection. It is also the
//! relay's in-process [`StreamOpener`], which `devinprod up` hands to its edge.

use certs::liveness::{GuardedRecv, Liveness};
use proto::{OpenError, OpenFuture, RoutingKey, StreamOpener, TunnelStream};
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// One connected developer.
#[derive(Clone)]
pub struct DeveloperSession {
    /// Unique per accepted connection; tells an old connection from its replacement.
    pub id: u64,
    pub routing_key: RoutingKey,
    pub client_name: String,
    pub remote: SocketAddr,
    pub connected_at: SystemTime,
    pub conn: quinn::Connection,
    /// When the developer's client was last heard from: no route to a silent one.
    pub liveness: Arc<Liveness>,
}

/// What the admin API shows of a session.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    pub id: u64,
    pub routing_key: RoutingKey,
    pub client_name: String,
    pub remote: String,
    pub connected_secs: u64,
}

#[derive(Default)]
pub struct SessionRegistry {
    sessions: Mutex<HashMap<RoutingKey, DeveloperSession>>,
}

impl SessionRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoutingKey, DeveloperSession>> {
        // Every critical section is a single map operation: a poisoned map is still consistent.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `session`, returning the session it replaces (same routing key), if any.
    /// The caller closes the replaced connection with [`codes::CLOSE_REPLACED`].
    pub fn insert(&self, session: DeveloperSession) -> Option<DeveloperSession> {
        self.lock().insert(session.routing_key.clone(), session)
    }

    /// Removes the session for `key` only if it is still session `id` (not its replacement).
    pub fn remove_if_current(&self, key: &RoutingKey, id: u64) {
        let mut sessions = self.lock();
        if sessions.get(key).is_some_and(|s| s.id == id) {
            sessions.remove(key);
        }
    }

    pub fn get(&self, key: &RoutingKey) -> Option<DeveloperSession> {
        self.lock().get(key).cloned()
    }

    /// Removes and returns the session for `key` (revocation).
    pub fn take(&self, key: &RoutingKey) -> Option<DeveloperSession> {
        self.lock().remove(key)
    }

    pub fn all(&self) -> Vec<DeveloperSession> {
        self.lock().values().cloned().collect()
    }

    pub fn infos(&self) -> Vec<SessionInfo> {
        let mut v: Vec<SessionInfo> = self
            .lock()
            .values()
            .map(|s| SessionInfo {
                id: s.id,
                routing_key: s.routing_key.clone(),
                client_name: s.client_name.clone(),
                remote: s.remote.to_string(),
                connected_secs: s.connected_at.elapsed().map(|d| d.as_secs()).unwrap_or(0),
            })
            .collect();
        v.sort_by(|a, b| a.routing_key.cmp(&b.routing_key));
        v
    }

    /// Opens a stream on the developer's connection for `key`; also returns the connection's
    /// liveness, which the stream's reader should watch until its first byte. A developer whose
    /// client went silent (a laptop that lost its network) is offline at once.
    pub async fn open_stream(
        &self,
        key: &RoutingKey,
    ) -> Result<(quinn::SendStream, quinn::RecvStream, Arc<Liveness>), OpenError> {
        // Only the connection and its liveness are cloned (reference counts): this runs for
        // every request.
        let (conn, liveness) = self
            .lock()
            .get(key)
            .map(|s| (s.conn.clone(), s.liveness.clone()))
            .ok_or_else(|| OpenError::DeveloperOffline(key.clone()))?;
        if liveness.is_silent() {
            return Err(OpenError::DeveloperOffline(key.clone()));
        }
        let (send, recv) = conn.open_bi().await.map_err(|e| match e {
            // The developer left between the lookup and the open: to the visitor, offline.
            quinn::ConnectionError::ApplicationClosed(_)
            | quinn::ConnectionError::ConnectionClosed(_)
            | quinn::ConnectionError::Reset
            | quinn::ConnectionError::TimedOut
            | quinn::ConnectionError::LocallyClosed => OpenError::DeveloperOffline(key.clone()),
            other => OpenError::DeveloperConnectionFailed(other.to_string()),
        })?;
        Ok((send, recv, liveness))
    }
}

/// The all-in-one path: the edge asks the registry directly, no QUIC hop to the relay.
impl StreamOpener for SessionRegistry {
    fn open(&self, key: RoutingKey, prelude: Vec<u8>) -> OpenFuture<'_> {
        Box::pin(async move {
            let (mut send, recv, liveness) = self.open_stream(&key).await?;
            send.write_all(&prelude)
                .await
                .map_err(|e| OpenError::DeveloperConnectionFailed(e.to_string()))?;
            Ok(TunnelStream {
                send: Box::new(send),
                recv: Box::new(GuardedRecv::new(recv, liveness)),
            })
        })
    }
}
