//! `connect --mysql-listen`: a local MySQL listener for the developer's app. Each connection
//! becomes one database stream to the relay, which hands it to the dbproxy of this developer's
//! session; the bytes are MySQL protocol, untouched. When that cannot happen, the app gets a
//! MySQL error packet saying why, not a silently closed socket.

use proto::{read_frame, write_frame, DbStreamHeader, Frame, RouteReply, StreamHeader};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

/// The relay connection the agent currently holds, if any.
pub type CurrentConnection = Arc<Mutex<Option<quinn::Connection>>>;

/// Time the relay has to say whether the database is there.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// A MySQL ERR packet as a server that refuses a connection sends it: sequence 0, and without
/// the `#SQLSTATE` marker, since no capabilities are agreed yet (clients read it that way).
pub fn error_packet(message: &str) -> Vec<u8> {
    // 1227: a server-range error, so drivers report it instead of retrying blindly.
    let mut payload = vec![0xFF];
    payload.extend_from_slice(&1227u16.to_le_bytes());
    payload.extend_from_slice(message.as_bytes());
    let len = payload.len().min(0xFF_FFFF);
    let mut out = (len as u32).to_le_bytes()[..3].to_vec();
    out.push(0);
    out.extend_from_slice(&payload[..len]);
    out
}

/// Accepts the app's connections until the listener fails.
pub async fn serve(listener: TcpListener, current: CurrentConnection) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                debug!("mysql listener accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let conn = current.lock().unwrap_or_else(|p| p.into_inner()).clone();
        tokio::spawn(async move {
            if let Err(reason) = bridge(tcp, conn).await {
                debug!(%peer, "database connection refused: {reason}");
            }
        });
    }
}

async fn refuse(tcp: &mut TcpStream, why: String) -> Result<(), String> {
    let _ = tcp
        .write_all(&error_packet(&format!("DevInProd: {why}")))
        .await;
    let _ = tcp.shutdown().await;
    Err(why)
}

async fn bridge(mut tcp: TcpStream, conn: Option<quinn::Connection>) -> Result<(), String> {
    let Some(conn) = conn else {
        return refuse(
            &mut tcp,
            "not connected to the relay right now (devinprod connect is reconnecting)".into(),
        )
        .await;
    };
    let (mut send, mut recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return refuse(&mut tcp, format!("the relay connection failed: {e}")).await,
    };
    let header = Frame::StreamHeader(StreamHeader::Db(DbStreamHeader { routing_key: None }));
    if let Err(e) = write_frame(&mut send, &header).await {
        return refuse(&mut tcp, format!("the relay connection failed: {e}")).await;
    }
    match tokio::time::timeout(ROUTE_TIMEOUT, read_frame(&mut recv, proto::MAX_FRAME_LEN)).await {
        Ok(Ok(Some(Frame::RouteReply(RouteReply::Connected)))) => {}
        Ok(Ok(Some(Frame::RouteReply(RouteReply::Refused(why))))) => {
            return refuse(&mut tcp, why).await
        }
        other => {
            return refuse(
                &mut tcp,
                format!("the relay did not open the database stream ({other:?})"),
            )
            .await
        }
    }
    let mut tunnel = tokio::io::join(recv, send);
    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut tunnel).await;
    Ok(())
}
