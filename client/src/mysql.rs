//! `connect --mysql-listen`: a local MySQL listener for the developer's app. Each connection
//! becomes one database stream to the relay, which hands it to the dbproxy of this developer's
//! session; the bytes are MySQL protocol, untouched. When that cannot happen, the app gets a
//! MySQL error packet saying why, not a silently closed socket.

use proto::{printable, read_frame, write_frame, DbStreamHeader, Frame, RouteReply, StreamHeader};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

/// The relay connection the agent currently holds, if any, with its database stream budget.
pub type CurrentConnection = Arc<Mutex<Option<DbTunnel>>>;

/// One relay connection as the MySQL listener uses it: the connection, and one permit per
/// database stream the relay allows on it (`Welcome.limits.max_concurrent_streams`, the relay's
/// `max_streams_per_developer`).
#[derive(Clone)]
pub struct DbTunnel {
    conn: quinn::Connection,
    streams: Arc<Semaphore>,
    max_streams: u32,
}

impl DbTunnel {
    pub fn new(conn: quinn::Connection, max_streams: u32) -> Self {
        Self {
            conn,
            streams: Arc::new(Semaphore::new(max_streams as usize)),
            max_streams,
        }
    }
}

/// Time the relay has to say whether the database is there.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a connection that got a stream permit waits for the relay's stream credit: the
/// credit of a stream that just closed may be a moment behind the permit it released.
const STREAM_CREDIT_WAIT: Duration = Duration::from_secs(5);

/// Error codes of the initial ERR packet, as a MySQL server uses them.
const ER_CON_COUNT_ERROR: u16 = 1040; // "Too many connections"
const ER_SPECIFIC_ACCESS_DENIED: u16 = 1227; // a server-range error: drivers report it

/// A MySQL ERR packet as a server that refuses a connection sends it: sequence 0, and without
/// the `#SQLSTATE` marker, since no capabilities are agreed yet (clients read it that way).
pub fn error_packet(code: u16, message: &str) -> Vec<u8> {
    let mut payload = vec![0xFF];
    payload.extend_from_slice(&code.to_le_bytes());
    payload.extend_from_slice(message.as_bytes());
    let len = payload.len().min(0xFF_FFFF);
    let mut out = (len as u32).to_le_bytes()[..3].to_vec();
    out.push(0);
    out.extend_from_slice(&payload[..len]);
    out
}

/// Why an app connection was refused, and the error code the app sees.
struct Refused {
    code: u16,
    why: String,
}

impl Refused {
    fn other(why: impl Into<String>) -> Self {
        Self {
            code: ER_SPECIFIC_ACCESS_DENIED,
            why: why.into(),
        }
    }
    fn too_many(max: u32, detail: &str) -> Self {
        Self {
            code: ER_CON_COUNT_ERROR,
            why: format!(
                "too many database connections: your connection to the relay allows {max} \
                 concurrent database streams (the relay's max_streams_per_developer) and {detail}; \
                 close some of the app's connections or make its pool smaller"
            ),
        }
    }
}

/// Accepts the app's connections until the listener fails.
pub async fn serve(listener: TcpListener, current: CurrentConnection) {
    loop {
        let (mut tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                debug!("mysql listener accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let tunnel = current.lock().unwrap_or_else(|p| p.into_inner()).clone();
        tokio::spawn(async move {
            match open(tunnel).await {
                Ok((permit, send, recv)) => {
                    splice(&mut tcp, recv, send).await;
                    // The stream is done: its permit goes back for the app's next connection.
                    drop(permit);
                    linger(tcp).await;
                }
                Err(refused) => {
                    if refused.code == ER_CON_COUNT_ERROR {
                        warn!(%peer, "database connection refused: {}", refused.why);
                    } else {
                        debug!(%peer, "database connection refused: {}", refused.why);
                    }
                    let message = format!("DevInProd: {}", refused.why);
                    let _ = tcp.write_all(&error_packet(refused.code, &message)).await;
                    linger(tcp).await;
                }
            }
        });
    }
}

/// Copies both ways until both are done. Unlike `copy_bidirectional`, a direction that fails
/// does not end the other: when the dbproxy refuses a packet and stops reading while the app is
/// still sending it, the refusal on its way back still reaches the app.
async fn splice<R, W>(tcp: &mut tokio::net::TcpStream, mut recv: R, mut send: W)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let (mut from_app, mut to_app) = tcp.split();
    let down = async {
        let _ = tokio::io::copy(&mut recv, &mut to_app).await;
        let _ = to_app.shutdown().await;
    };
    let up = async {
        let _ = tokio::io::copy(&mut from_app, &mut send).await;
        let _ = send.shutdown().await;
    };
    tokio::pin!(down, up);
    tokio::select! {
        // The app has said all: the database side's answers still come.
        _ = &mut up => down.await,
        // The database side is done (or gone): the app has `LINGER` to finish what it was
        // sending, not as long as an idle pooled connection stays open.
        _ = &mut down => {
            let _ = tokio::time::timeout(LINGER, up).await;
        }
    }
}

/// How long bytes an app still sends are read and dropped before its socket is closed.
const LINGER: Duration = Duration::from_secs(2);

/// Closes an app's connection without destroying what it has not read yet. Closing a socket
/// with unread bytes makes the kernel reset the connection, and a reset discards the data the
/// app has not read: the error packet that refused its oversized packet while it was still
/// sending it. So: FIN first, then read and drop what still comes, for at most `LINGER`.
async fn linger(mut tcp: tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let _ = tcp.shutdown().await;
    let mut sink = vec![0u8; 16 * 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = tcp.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Opens one database stream on the current relay connection, within its stream budget; the
/// permit is held for as long as the stream is.
async fn open(
    tunnel: Option<DbTunnel>,
) -> Result<(OwnedSemaphorePermit, quinn::SendStream, quinn::RecvStream), Refused> {
    let Some(tunnel) = tunnel else {
        return Err(Refused::other(
            "not connected to the relay right now (devinprod connect is reconnecting)",
        ));
    };
    // Refused at once when every stream is in use: QUIC would have this connection wait, and
    // the app hang, until another closes.
    let permit = tunnel
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| Refused::too_many(tunnel.max_streams, "all are in use"))?;
    let (mut send, mut recv) =
        match tokio::time::timeout(STREAM_CREDIT_WAIT, tunnel.conn.open_bi()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(Refused::other(relay_failed(e))),
            Err(_) => {
                let detail = format!(
                    "the relay did not release the streams of closed connections within {}s",
                    STREAM_CREDIT_WAIT.as_secs()
                );
                return Err(Refused::too_many(tunnel.max_streams, &detail));
            }
        };
    let header = Frame::StreamHeader(StreamHeader::Db(DbStreamHeader { routing_key: None }));
    if let Err(e) = write_frame(&mut send, &header).await {
        return Err(Refused::other(relay_failed(e)));
    }
    match tokio::time::timeout(ROUTE_TIMEOUT, read_frame(&mut recv, proto::MAX_FRAME_LEN)).await {
        Ok(Ok(Some(Frame::RouteReply(RouteReply::Connected)))) => Ok((permit, send, recv)),
        Ok(Ok(Some(Frame::RouteReply(RouteReply::Refused(why))))) => {
            // The relay's words reach the app's error message and this log: escaped.
            Err(Refused::other(format!(
                "the relay refused: {}",
                printable(&why)
            )))
        }
        other => Err(Refused::other(format!(
            "the relay did not open the database stream ({other:?})"
        ))),
    }
}

/// A failed relay connection, whose message may quote the relay's close reason.
fn relay_failed(e: impl std::fmt::Display) -> String {
    format!("the relay connection failed: {}", printable(&e.to_string()))
}
