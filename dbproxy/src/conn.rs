//! One app connection: the MySQL handshake toward the app (any user and password: the tunnel
//! already authenticated the developer), then its commands, each served by the session.

use crate::packet::{PacketBudget, PacketError, PacketReader, PacketWriter};
use crate::session::{Outcome, Session};
use crate::wire;
use mysql_common::auth::plugins::mysql_native_password::scramble_native;
use mysql_common::constants::CapabilityFlags;
use mysql_common::io::ParseBuf;
use mysql_common::packets::HandshakeResponse;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info};

const COM_QUIT: u8 = 0x01;
const COM_INIT_DB: u8 = 0x02;
const COM_QUERY: u8 = 0x03;
const COM_FIELD_LIST: u8 = 0x04;
const COM_PING: u8 = 0x0e;
const COM_CHANGE_USER: u8 = 0x11;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
/// MariaDB's array execution of a prepared statement (one packet, many parameter rows).
const COM_STMT_BULK_EXECUTE: u8 = 0xFA;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
const COM_STMT_CLOSE: u8 = 0x19;
const COM_STMT_RESET: u8 = 0x1a;
const COM_STMT_FETCH: u8 = 0x1c;
const COM_SET_OPTION: u8 = 0x1b;
const COM_RESET_CONNECTION: u8 = 0x1f;

fn scramble() -> [u8; 20] {
    let mut s = [0u8; 20];
    // A failed OS RNG still leaves a valid (if predictable) scramble; the password is not
    // checked anyway (the tunnel authenticates the developer).
    let _ = getrandom::fill(&mut s);
    for b in &mut s {
        // Clients read the scramble as NUL-terminated.
        *b = (*b % 94) + 33;
    }
    s
}

/// Largest login packet (handshake response) an app may send: real ones are well under 1 KiB,
/// connection attributes included.
const MAX_LOGIN_BYTES: usize = 64 * 1024;

/// The error an app gets before its connection is closed because a packet could not be read.
fn read_failure(e: &PacketError) -> Option<Vec<u8>> {
    match e {
        PacketError::TooLarge(len, max) => Some(wire::err(
            wire::ER_NET_PACKET_TOO_LARGE,
            b"08S01",
            &format!("DevInProd: a packet of {len} bytes is over the limit of {max} bytes (max_packet_bytes)"),
        )),
        PacketError::Busy(_) => Some(wire::err(wire::ER_OUT_OF_RESOURCES, b"HY000", &format!("DevInProd: {e}"))),
        PacketError::Io(_) | PacketError::Closed => None,
    }
}

/// Serves one app connection on `reader`/`writer` for `session`.
pub async fn serve_app<R, W>(
    session: Arc<Session>,
    reader: R,
    writer: W,
    max_packet: usize,
    budget: PacketBudget,
    credentials: Option<&(String, proto::Secret)>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // A login packet is a few hundred bytes; an 80 MB one cost 167 MB before it was refused.
    let mut reader = PacketReader::new(reader, MAX_LOGIN_BYTES).with_budget(budget);
    let mut writer = PacketWriter::new(writer);
    let server = match session.server_info().await {
        Ok(v) => v,
        Err(e) => {
            let msg = format!("DevInProd cannot open the database session: {e}");
            let _ = writer
                .send(0, &wire::err(wire::ER_REFUSED, b"08004", &msg))
                .await;
            return;
        }
    };
    let scramble = scramble();
    // Connection ids shown to the app are the proxy's own.
    if writer
        .send(
            0,
            &wire::handshake(&server.version, 0, &scramble, server.collation, server.bulk),
        )
        .await
        .is_err()
    {
        return;
    }
    let login = match reader.read().await {
        Ok(p) => p,
        Err(e) => {
            if let Some(packet) = read_failure(&e) {
                let _ = writer.send(1, &packet).await;
            }
            return;
        }
    };
    reader.set_max_len(max_packet);
    let reply_seq = login.seq.wrapping_add(1);
    let caps = login
        .payload
        .get(..4)
        .map(|b| CapabilityFlags::from_bits_truncate(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        .unwrap_or_else(CapabilityFlags::empty);
    if login.payload.len() == 32 && caps.contains(CapabilityFlags::CLIENT_SSL) {
        let msg = "TLS is not offered here: the connection already runs inside the encrypted DevInProd tunnel (use ssl-mode=DISABLED or PREFERRED)";
        let _ = writer.send(reply_seq, &wire::refused(msg)).await;
        return;
    }
    // Clients set capability bits the server did not offer but lay the packet out for the
    // intersection; parse it as negotiated, as a server does.
    let mut negotiated_login = login.payload.clone();
    let negotiated = caps & wire::capabilities();
    if negotiated_login.len() >= 4 {
        negotiated_login[..4].copy_from_slice(&negotiated.bits().to_le_bytes());
    }
    let resp: HandshakeResponse = match ParseBuf(&negotiated_login).parse(()) {
        Ok(r) => r,
        Err(e) => {
            let _ = writer
                .send(
                    reply_seq,
                    &wire::refused(&format!("malformed login packet: {e}")),
                )
                .await;
            return;
        }
    };
    if let Some((user, password)) = credentials {
        let expected = scramble_native(&scramble, password.expose().as_bytes())
            .map(|s| s.to_vec())
            .unwrap_or_default();
        if resp.user() != user.as_bytes() || resp.scramble_buf() != expected.as_slice() {
            let msg = format!(
                "Access denied for user '{}' (DevInProd checks the developer credentials the operator set)",
                String::from_utf8_lossy(resp.user())
            );
            let _ = writer
                .send(reply_seq, &wire::err(1045, b"28000", &msg))
                .await;
            return;
        }
    }
    let db = resp
        .db_name()
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .filter(|d| !d.is_empty());
    let (mut conn, _guard) = session.open_conn(None, resp.collation()).await;
    debug!(key = %session.key, conn = conn.id, user = %proto::printable(&String::from_utf8_lossy(resp.user())), "app connection");
    if caps.contains(CapabilityFlags::CLIENT_IGNORE_SPACE) {
        session.ignore_space(&mut conn).await;
    }
    match &db {
        Some(db) => {
            if let Outcome::AppGone = session.use_db(&mut conn, db, &mut writer, reply_seq).await {
                return;
            }
            if conn.db.is_none() {
                // The USE failed and its error was sent: a server ends the login there.
                return;
            }
        }
        None => {
            if writer
                .send(reply_seq, &wire::ok(0, 0, wire::STATUS_AUTOCOMMIT, 0))
                .await
                .is_err()
            {
                return;
            }
        }
    }

    loop {
        let packet = match reader.read().await {
            Ok(p) => p,
            Err(PacketError::Closed) => break,
            Err(e) => {
                debug!(key = %session.key, conn = conn.id, "app connection failed: {e}");
                if let Some(packet) = read_failure(&e) {
                    // Not numbered after the previous command's chunks.
                    writer.reply_to(0);
                    let _ = writer.send(1, &packet).await;
                }
                break;
            }
        };
        writer.reply_to(packet.seq);
        let payload = packet.payload;
        let Some(&command) = payload.first() else {
            break;
        };
        // Larger than the database accepts: a server closes the connection on such a packet,
        // which would end the developer's whole session. Refused here; the app's connection
        // goes on (the packet was read whole).
        // (A server refuses a packet of exactly its limit too.) A command that has no reply
        // (long data, close) gets none: its error waits for the statement's next execute, as
        // on a server, so the app's replies stay in step.
        let limit = session.upstream_max_packet();
        if payload.len() >= limit {
            if matches!(command, COM_STMT_SEND_LONG_DATA | COM_STMT_CLOSE) {
                session.refuse_long_data(&mut conn, &payload, limit);
                continue;
            }
            let msg = format!(
                "Got a packet bigger than 'max_allowed_packet' bytes: {} bytes, the database accepts {limit} (DevInProd did not send it)",
                payload.len()
            );
            let packet = wire::err(wire::ER_NET_PACKET_TOO_LARGE, b"08S01", &msg);
            if let Outcome::AppGone = send(&mut writer, packet).await {
                break;
            }
            continue;
        }
        let outcome = match command {
            COM_QUIT => break,
            COM_QUERY => {
                // Borrowed when valid UTF-8: a large statement is not copied here.
                let sql = String::from_utf8_lossy(&payload[1..]);
                session.query(&mut conn, &sql, &payload, &mut writer).await
            }
            COM_INIT_DB => {
                let db = String::from_utf8_lossy(&payload[1..]).into_owned();
                session.use_db(&mut conn, &db, &mut writer, 1).await
            }
            COM_PING => send(&mut writer, wire::ok(0, 0, status(&conn), 0)).await,
            COM_FIELD_LIST => session.field_list(&mut conn, &payload, &mut writer).await,
            COM_RESET_CONNECTION => {
                // Emulated: the app connection's transaction and settings go, the session's stay.
                session.reset_conn(&mut conn, None).await;
                send(&mut writer, wire::ok(0, 0, wire::STATUS_AUTOCOMMIT, 0)).await
            }
            COM_SET_OPTION => {
                // Multi-statements stay off whatever the app asks; the server answers EOF here.
                send(&mut writer, wire::eof(status(&conn), 0)).await
            }
            COM_STMT_PREPARE => session.prepare(&mut conn, &payload, &mut writer).await,
            COM_STMT_EXECUTE | COM_STMT_RESET => {
                session.execute(&mut conn, &payload, &mut writer).await
            }
            // Offered in the handshake only when the upstream has it (MariaDB).
            COM_STMT_BULK_EXECUTE if server.bulk => {
                session.execute(&mut conn, &payload, &mut writer).await
            }
            // These two get no reply on a real server either.
            COM_STMT_SEND_LONG_DATA | COM_STMT_CLOSE => {
                session.statement_no_reply(&mut conn, &payload).await;
                Outcome::Done
            }
            COM_STMT_FETCH => {
                let msg = "DevInProd refused COM_STMT_FETCH: server-side cursors are not supported";
                send(&mut writer, wire::refused(msg)).await
            }
            COM_CHANGE_USER => {
                // Emulated, never forwarded: a reset of this app connection plus its new
                // default database (any user is accepted, as at login).
                let change = parse_change_user(&payload[1..]);
                session.reset_conn(&mut conn, change.collation).await;
                match change.db {
                    Some(db) => session.use_db(&mut conn, &db, &mut writer, 1).await,
                    None => send(&mut writer, wire::ok(0, 0, wire::STATUS_AUTOCOMMIT, 0)).await,
                }
            }
            other => {
                send(
                    &mut writer,
                    wire::err(
                        wire::ER_UNKNOWN_COMMAND,
                        b"42000",
                        &format!("DevInProd does not serve protocol command 0x{other:02x}"),
                    ),
                )
                .await
            }
        };
        if let Outcome::AppGone = outcome {
            break;
        }
    }
    session.end_conn(&mut conn).await;
    info!(key = %session.key, conn = conn.id, "app connection closed");
}

/// What COM_CHANGE_USER asks for: user NUL, auth (length-prefixed), database NUL, charset.
struct ChangeUser {
    db: Option<String>,
    collation: Option<u8>,
}

fn take_cstr(rest: &mut &[u8]) -> Option<Vec<u8>> {
    let end = rest.iter().position(|&b| b == 0)?;
    let s = rest[..end].to_vec();
    *rest = &rest[end + 1..];
    Some(s)
}

fn parse_change_user(body: &[u8]) -> ChangeUser {
    let mut rest = body;
    let _user = take_cstr(&mut rest);
    if let Some((&len, tail)) = rest.split_first() {
        rest = tail.get(usize::from(len)..).unwrap_or(&[]);
    }
    let db = take_cstr(&mut rest)
        .map(|d| String::from_utf8_lossy(&d).into_owned())
        .filter(|d| !d.is_empty());
    let collation = rest.first().copied();
    ChangeUser { db, collation }
}

fn status(conn: &crate::session::AppConn) -> u16 {
    let mut s = 0;
    if conn.tx.in_transaction() {
        s |= wire::STATUS_IN_TRANS;
    }
    if conn.tx.autocommit() {
        s |= wire::STATUS_AUTOCOMMIT;
    }
    s
}

async fn send<W: AsyncWrite + Unpin>(w: &mut PacketWriter<W>, packet: Vec<u8>) -> Outcome {
    match w.send(1, &packet).await {
        Ok(_) => Outcome::Done,
        Err(_) => Outcome::AppGone,
    }
}
