//! The QUIC side of the relay: accept a connection, run the Hello handshake, then serve it by
//! role — a developer is registered and waits for streams; an edge opens one stream per
//! request, which is spliced onto the developer's connection.

use crate::registry::DeveloperSession;
use crate::splice::splice_watched;
use crate::throttle::Admission;
use crate::tokens::Verdict;
use crate::Relay;
use certs::liveness::Liveness;
use proto::{
    codes, printable, read_frame, write_frame, Frame, FrameError, Hello, Limits, OpenError,
    Refusal, RefusalCode, Role, RouteReply, Welcome,
};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::time::timeout;
use tracing::{debug, info, info_span, warn, Instrument};

/// How long the relay waits for a refused peer to read its Refusal before closing.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// Longest close reason sent (it must fit in one packet).
const MAX_REASON_LEN: usize = 400;

pub(crate) fn vi(code: u32) -> quinn::VarInt {
    quinn::VarInt::from_u32(code)
}

/// Closes `conn` with `code` and a human-readable `reason`.
pub(crate) fn close(conn: &quinn::Connection, code: u32, reason: &str) {
    let mut end = reason.len().min(MAX_REASON_LEN);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    conn.close(vi(code), &reason.as_bytes()[..end]);
}

/// Who the peer turned out to be after the handshake.
enum Admitted {
    Developer(DeveloperSession),
    Infrastructure(Role),
}

impl Relay {
    /// Serves one incoming connection until it closes.
    pub(crate) async fn handle_incoming(
        self: Arc<Self>,
        incoming: quinn::Incoming,
        slot: crate::handshakes::HandshakeSlot,
    ) {
        let remote = incoming.remote_address();
        // The QUIC handshake is bounded too: a half-open one would otherwise hold its state
        // until the idle timeout.
        let conn = match timeout(self.config.handshake_timeout(), incoming).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                // Wrong ALPN, a certificate from another CA, garbage: the peer's problem.
                debug!(%remote, "QUIC/TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                debug!(%remote, "QUIC/TLS handshake timed out");
                return;
            }
        };
        let admitted = match timeout(self.config.handshake_timeout(), self.admit(&conn)).await {
            Ok(Some(a)) => a,
            Ok(None) => return,
            Err(_) => {
                close(
                    &conn,
                    codes::CLOSE_PROTOCOL_ERROR,
                    "no Hello within the handshake timeout",
                );
                return;
            }
        };
        // Admitted (or refused above): no longer an attempt.
        drop(slot);
        if let Admitted::Infrastructure(_) = admitted {
            conn.set_max_concurrent_bi_streams(self.config.max_streams_per_peer.into());
        }
        match admitted {
            Admitted::Developer(session) => self.serve_developer(session).await,
            Admitted::Infrastructure(Role::Edge) => self.serve_edge(conn).await,
            Admitted::Infrastructure(Role::DbProxy) => {
                let id = self.next_session_id.fetch_add(1, Ordering::Relaxed);
                info!(%remote, "dbproxy connected");
                let liveness = Liveness::watch(&conn, self.config.silence_bound());
                self.dbproxies
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((id, conn.clone(), liveness));
                self.dbproxy_joined.notify_waiters();
                let why = conn.closed().await;
                self.dbproxies
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|(i, _, _)| *i != id);
                info!(%remote, "dbproxy gone: {}", printable(&why.to_string()));
            }
            Admitted::Infrastructure(role) => {
                info!(%remote, %role, "peer of an unexpected role; closing");
                close(
                    &conn,
                    codes::CLOSE_PROTOCOL_ERROR,
                    "no service for this role",
                );
            }
        }
    }

    /// Reads Hello on the control stream and answers Welcome or Refusal.
    async fn admit(&self, conn: &quinn::Connection) -> Option<Admitted> {
        let remote = conn.remote_address();
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                debug!(%remote, "closed before opening a control stream: {e}");
                return None;
            }
        };
        let max = self.config.max_frame_len as usize;
        let hello = match read_frame(&mut recv, max).await {
            Ok(Some(Frame::Hello(h))) => h,
            Ok(Some(other)) => {
                let reason = format!("expected Hello on the control stream, got {}", other.name());
                return self
                    .refuse(conn, send, RefusalCode::BadHandshake, reason)
                    .await;
            }
            Ok(None) => return None,
            Err(FrameError::UnsupportedVersion { peer, ours }) => {
                let reason = format!(
                    "this relay speaks DevInProd protocol version {ours}, the client speaks \
                     version {peer}: install a devinprod that matches the relay"
                );
                return self
                    .refuse(conn, send, RefusalCode::UnsupportedVersion, reason)
                    .await;
            }
            Err(e) => {
                let reason = format!("malformed Hello: {e}");
                return self
                    .refuse(conn, send, RefusalCode::BadHandshake, reason)
                    .await;
            }
        };
        let developer = hello.role == Role::Developer;
        if developer {
            if let Admission::Throttled { retry_after } =
                self.throttle.admit(remote.ip(), Instant::now())
            {
                return self.refuse_throttled(conn, send, retry_after).await;
            }
        }
        let role = match self.check_hello(conn, &hello) {
            Ok(role) => role,
            Err((code, reason)) => {
                let token_failed = matches!(code, RefusalCode::BadToken | RefusalCode::Revoked);
                if developer && token_failed && self.throttle.failed(remote.ip(), Instant::now()) {
                    info!(
                        %remote,
                        "too many failed token checks from this address: its Hellos are refused \
                         unchecked until it slows down (failed_hello_burst, failed_hellos_per_sec)"
                    );
                }
                return self.refuse(conn, send, code, reason).await;
            }
        };
        let id = self.next_session_id.fetch_add(1, Ordering::Relaxed);
        let routing_key = hello.token.as_ref().map(|t| t.routing_key());
        let welcome = Welcome {
            session: id,
            public_urls: routing_key
                .as_ref()
                .map(|k| self.config.public_urls_for(k))
                .unwrap_or_default(),
            routing_key: routing_key.clone(),
            limits: Limits {
                max_concurrent_streams: self.config.max_streams_per_developer,
                max_frame_len: self.config.max_frame_len,
                keep_alive_ms: self
                    .config
                    .keep_alive_interval_ms
                    .try_into()
                    .unwrap_or(u32::MAX),
            },
        };
        let admitted = match (role, routing_key) {
            (Role::Developer, Some(routing_key)) => {
                let session = DeveloperSession {
                    id,
                    routing_key,
                    client_name: hello.client_name,
                    remote,
                    connected_at: SystemTime::now(),
                    liveness: Liveness::watch(conn, self.config.silence_bound()),
                    conn: conn.clone(),
                };
                // Routable before Welcome: a client told it is connected gets its first
                // visitor at once, not "offline" for the moment until it is registered.
                self.register(&session);
                Admitted::Developer(session)
            }
            (role, _) => Admitted::Infrastructure(role),
        };
        if let Err(e) = write_frame(&mut send, &Frame::Welcome(welcome)).await {
            debug!(%remote, "could not send Welcome: {e}");
            if let Admitted::Developer(s) = &admitted {
                self.registry.remove_if_current(&s.routing_key, s.id);
            }
            return None;
        }
        // The control stream carries nothing after Welcome; closing our half is harmless.
        let _ = send.finish();
        Some(admitted)
    }

    /// Makes `session` the route for its key, closing the connection it replaces.
    fn register(&self, session: &DeveloperSession) {
        if let Some(old) = self.registry.insert(session.clone()) {
            let reason = format!(
                "replaced by a newer connection with the same token from {} ({})",
                session.client_name, session.remote
            );
            info!(old_session = old.id, "{}", printable(&reason));
            close(&old.conn, codes::CLOSE_REPLACED, &reason);
        }
    }

    /// Decides whether `hello` may enter, by role.
    fn check_hello(
        &self,
        conn: &quinn::Connection,
        hello: &Hello,
    ) -> Result<Role, (RefusalCode, String)> {
        let cert_role = peer_cert(conn).map(|c| certs::peer_role(&c));
        match hello.role {
            Role::Developer => {
                let Some(token) = &hello.token else {
                    return Err((
                        RefusalCode::BadToken,
                        "a developer connection must present a token".into(),
                    ));
                };
                match self.tokens.verify(token) {
                    Verdict::Valid(_) => {}
                    Verdict::Unknown => {
                        return Err((
                            RefusalCode::BadToken,
                            format!(
                                "unknown token (routing key {}): check it, or ask the operator for a new one",
                                token.routing_key()
                            ),
                        ))
                    }
                    Verdict::Revoked => {
                        return Err((
                            RefusalCode::Revoked,
                            format!("the token for routing key {} was revoked by the operator", token.routing_key()),
                        ))
                    }
                }
                if self.config.require_developer_cert && cert_role.is_none() {
                    return Err((
                        RefusalCode::RoleNotAuthorized,
                        "this relay also requires a developer client certificate issued by its CA"
                            .into(),
                    ));
                }
                Ok(Role::Developer)
            }
            role @ (Role::Edge | Role::DbProxy) => {
                if cert_role == Some(Some(role)) {
                    Ok(role)
                } else {
                    Err((
                        RefusalCode::RoleNotAuthorized,
                        format!(
                            "the {role} role requires a client certificate issued by this relay's CA \
                             with the URI SAN {}",
                            role.uri()
                        ),
                    ))
                }
            }
        }
    }

    async fn refuse(
        &self,
        conn: &quinn::Connection,
        send: quinn::SendStream,
        code: RefusalCode,
        reason: String,
    ) -> Option<Admitted> {
        info!(remote = %conn.remote_address(), ?code, "refused: {}", printable(&reason));
        send_refusal(conn, send, code, reason, codes::CLOSE_REFUSED).await
    }

    /// A developer's Hello from an address that failed too many token checks: refused without
    /// checking its token (so guessing gains nothing), with a code a client retries on.
    /// Logged at debug only: an attacker would otherwise fill the log.
    async fn refuse_throttled(
        &self,
        conn: &quinn::Connection,
        send: quinn::SendStream,
        retry_after: Duration,
    ) -> Option<Admitted> {
        let remote = conn.remote_address();
        debug!(%remote, "refused unchecked: too many failed token checks from this address");
        let reason = format!(
            "too many failed token checks from {}: this relay allows {} in a row and then {} per \
             second per address; try again in {:.1} s (your token was not checked)",
            remote.ip(),
            self.config.failed_hello_burst,
            self.config.failed_hellos_per_sec,
            retry_after.as_secs_f64().max(0.1)
        );
        // BadHandshake: the one code a client does not take as final; the token may be good
        // (an address shared with someone who guessed).
        let code = RefusalCode::BadHandshake;
        send_refusal(conn, send, code, reason, codes::CLOSE_THROTTLED).await
    }
}

/// Sends a Refusal on the control stream, gives it a moment to arrive, and closes with
/// `close_code` and the same reason.
async fn send_refusal(
    conn: &quinn::Connection,
    mut send: quinn::SendStream,
    code: RefusalCode,
    reason: String,
    close_code: u32,
) -> Option<Admitted> {
    let frame = Frame::Refusal(Refusal {
        code,
        reason: reason.clone(),
    });
    if write_frame(&mut send, &frame).await.is_ok() && send.finish().is_ok() {
        // Give the Refusal a chance to arrive before the close discards it; the close
        // reason repeats it for a peer that misses it.
        let _ = timeout(REFUSAL_LINGER, send.stopped()).await;
    }
    close(conn, close_code, &reason);
    None
}

impl Relay {
    async fn serve_developer(self: Arc<Self>, session: DeveloperSession) {
        let span = info_span!("developer", key = %session.routing_key, session = session.id);
        async move {
            // The client's name is the developer's choice: escaped, like every peer string logged.
            let name = printable(&session.client_name);
            info!(remote = %session.remote, %name, "developer connected");
            // Developers open one stream per app database connection.
            loop {
                match session.conn.accept_bi().await {
                    Ok((send, recv)) => {
                        let relay = self.clone();
                        let key = session.routing_key.clone();
                        tokio::spawn(async move { relay.route_db_stream(key, send, recv).await });
                    }
                    Err(e) => {
                        info!("developer gone: {}", printable(&e.to_string()));
                        break;
                    }
                }
            }
            self.registry
                .remove_if_current(&session.routing_key, session.id);
        }
        .instrument(span)
        .await
    }

    async fn serve_edge(self: Arc<Self>, conn: quinn::Connection) {
        let remote = conn.remote_address();
        info!(%remote, "edge connected");
        loop {
            let (send, recv) = match conn.accept_bi().await {
                Ok(s) => s,
                Err(e) => {
                    info!(%remote, "edge gone: {}", printable(&e.to_string()));
                    return;
                }
            };
            let relay = self.clone();
            tokio::spawn(async move { relay.route_edge_stream(send, recv).await });
        }
    }

    /// One edge stream: read its Route frame, open a stream to that developer, reply, splice.
    async fn route_edge_stream(
        &self,
        mut edge_send: quinn::SendStream,
        mut edge_recv: quinn::RecvStream,
    ) {
        let max = self.config.max_frame_len as usize;
        let route = match timeout(
            self.config.handshake_timeout(),
            read_frame(&mut edge_recv, max),
        )
        .await
        {
            Ok(Ok(Some(Frame::Route(r)))) => r,
            other => {
                warn!("edge stream without a valid Route frame: {other:?}");
                let _ = edge_send.reset(vi(codes::STREAM_BAD_HEADER));
                let _ = edge_recv.stop(vi(codes::STREAM_BAD_HEADER));
                return;
            }
        };
        let reply = match self.registry.open_stream(&route.key).await {
            Ok((dev_send, dev_recv, liveness)) => {
                if write_frame(&mut edge_send, &Frame::RouteReply(RouteReply::Connected))
                    .await
                    .is_ok()
                {
                    // A developer gone silent before answering: the edge is told at once
                    // (STREAM_DEVELOPER_SILENT) instead of waiting out the idle timeout.
                    let silent = async move { liveness.until_silent().await };
                    splice_watched((edge_send, edge_recv), (dev_send, dev_recv), silent).await;
                }
                return;
            }
            Err(OpenError::DeveloperOffline(_)) => RouteReply::Offline,
            Err(e) => RouteReply::Refused(e.to_string()),
        };
        let _ = write_frame(&mut edge_send, &Frame::RouteReply(reply)).await;
        let _ = edge_send.finish();
        let _ = edge_recv.stop(vi(codes::STREAM_CANCELLED));
    }
}

impl Relay {
    /// A developer's database stream: check its header, then hand it to the dbproxy with the
    /// developer's own routing key (whatever the client wrote in it).
    async fn route_db_stream(
        &self,
        key: proto::RoutingKey,
        mut dev_send: quinn::SendStream,
        mut dev_recv: quinn::RecvStream,
    ) {
        let max = self.config.max_frame_len as usize;
        match timeout(
            self.config.handshake_timeout(),
            read_frame(&mut dev_recv, max),
        )
        .await
        {
            Ok(Ok(Some(Frame::StreamHeader(proto::StreamHeader::Db(_))))) => {}
            other => {
                debug!(%key, "developer stream without a database header: {other:?}");
                let _ = dev_send.reset(vi(codes::STREAM_BAD_HEADER));
                let _ = dev_recv.stop(vi(codes::STREAM_BAD_HEADER));
                return;
            }
        }
        let handler = self
            .db_handler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(handler) = handler {
            if write_frame(&mut dev_send, &Frame::RouteReply(RouteReply::Connected))
                .await
                .is_ok()
            {
                handler.handle(
                    key,
                    proto::TunnelStream {
                        send: Box::new(dev_send),
                        recv: Box::new(dev_recv),
                    },
                );
            }
            return;
        }
        // No live dbproxy yet (one starting with `up`, or restarting): wait a bounded time for
        // one, so that an app connecting right after `connect` says Connected is not refused.
        let deadline = tokio::time::Instant::now() + self.config.dbproxy_wait();
        let peer = loop {
            let joined = self.dbproxy_joined.notified();
            tokio::pin!(joined);
            joined.as_mut().enable();
            if let Some(peer) = self.live_dbproxy(&key) {
                break Some(peer);
            }
            if tokio::time::Instant::now() >= deadline {
                break None;
            }
            // A silent dbproxy heard from again is no event: look again every 250 ms too.
            let _ = timeout(Duration::from_millis(250), joined).await;
        };
        let opened = match peer {
            None => Err(format!(
                "no database proxy is connected to the relay (it waited {} ms for one)",
                self.config.dbproxy_wait_ms
            )),
            Some((conn, liveness)) => match conn.open_bi().await {
                Ok((mut send, recv)) => {
                    let header =
                        Frame::StreamHeader(proto::StreamHeader::Db(proto::DbStreamHeader {
                            routing_key: Some(key.clone()),
                        }));
                    match write_frame(&mut send, &header).await {
                        Ok(()) => Ok((send, recv, liveness)),
                        Err(e) => Err(format!("the database proxy failed: {e}")),
                    }
                }
                Err(e) => Err(format!("the database proxy is unreachable: {e}")),
            },
        };
        match opened {
            Ok((db_send, db_recv, liveness)) => {
                if write_frame(&mut dev_send, &Frame::RouteReply(RouteReply::Connected))
                    .await
                    .is_ok()
                {
                    // A dbproxy gone silent before its greeting: the app's connection fails
                    // at once instead of at the idle timeout.
                    let silent = async move { liveness.until_silent().await };
                    splice_watched((dev_send, dev_recv), (db_send, db_recv), silent).await;
                }
            }
            Err(reason) => {
                info!(%key, "database stream refused: {}", printable(&reason));
                let _ = write_frame(
                    &mut dev_send,
                    &Frame::RouteReply(RouteReply::Refused(reason)),
                )
                .await;
                let _ = dev_send.finish();
            }
        }
    }
}

impl Relay {
    /// The dbproxy for `key`'s streams: the same for every stream of a session, as long as the
    /// set of live peers holds (a silent one — a dbproxy that died or lost its network — is
    /// skipped at once).
    fn live_dbproxy(&self, key: &proto::RoutingKey) -> Option<(quinn::Connection, Arc<Liveness>)> {
        let peers = self.dbproxies.lock().unwrap_or_else(|p| p.into_inner());
        let live: Vec<(&quinn::Connection, &Arc<Liveness>)> = peers
            .iter()
            .filter(|(_, _, liveness)| !liveness.is_silent())
            .map(|(_, conn, liveness)| (conn, liveness))
            .collect();
        let hash = key
            .as_str()
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        (!live.is_empty()).then(|| {
            let (conn, liveness) = live[(hash % live.len() as u64) as usize];
            (conn.clone(), liveness.clone())
        })
    }
}

/// The peer's end-entity certificate, if it presented one (rustls verified its chain).
fn peer_cert(conn: &quinn::Connection) -> Option<rustls::pki_types::CertificateDer<'static>> {
    let identity = conn.peer_identity()?;
    let chain = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    chain.into_iter().next()
}
