//! MySQL messages the proxy writes itself, and the few fields it reads or patches in what the
//! server sends. Capabilities are fixed on both sides (see [`CAPABILITIES`]) so that result
//! sets pass through byte for byte: classic EOF packets, no session tracking, no compression,
//! no multi-statements, no LOCAL INFILE, no TLS.

use bytes::BufMut;
use mysql_common::constants::{CapabilityFlags, MariadbCapabilities, StatusFlags};
use mysql_common::io::BufMutExt;
use mysql_common::packets::{ErrPacket, HandshakePacket, ServerError, SqlState};
use mysql_common::proto::MySerialize;

/// What the proxy negotiates with the app and with the upstream alike.
pub fn capabilities() -> CapabilityFlags {
    CapabilityFlags::CLIENT_LONG_FLAG
        | CapabilityFlags::CLIENT_CONNECT_WITH_DB
        | CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_TRANSACTIONS
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_MULTI_RESULTS
        | CapabilityFlags::CLIENT_PLUGIN_AUTH
        | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
}

pub const STATUS_IN_TRANS: u16 = 0x0001;
pub const STATUS_AUTOCOMMIT: u16 = 0x0002;
pub const STATUS_MORE_RESULTS: u16 = 0x0008;

/// MySQL error code the proxy uses for every refusal: ER_SPECIFIC_ACCESS_DENIED_ERROR. A
/// server-range code, so drivers report it as a statement error, not a lost connection.
pub const ER_REFUSED: u16 = 1227;
/// ER_UNKNOWN_COM_ERROR, for protocol commands the proxy does not serve.
pub const ER_UNKNOWN_COMMAND: u16 = 1047;
/// ER_LOCK_WAIT_TIMEOUT, for a write that waited too long for the session's write turn.
pub const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
/// ER_QUERY_INTERRUPTED-like code for "the session was reset".
pub const ER_SESSION_RESET: u16 = 1317;
/// A packet over the size limit (the server's own code for it).
pub const ER_NET_PACKET_TOO_LARGE: u16 = 1153;
/// Out of a resource the server shares among connections.
pub const ER_OUT_OF_RESOURCES: u16 = 1041;

pub fn handshake(
    server_version: &str,
    connection_id: u32,
    scramble: &[u8; 20],
    collation: u8,
    bulk: bool,
) -> Vec<u8> {
    let mut part2 = scramble[8..].to_vec();
    part2.push(0);
    let mut part1 = [0u8; 8];
    part1.copy_from_slice(&scramble[..8]);
    let hs = HandshakePacket::new(
        10,
        server_version.as_bytes(),
        connection_id,
        part1,
        Some(part2),
        capabilities(),
        collation,
        StatusFlags::SERVER_STATUS_AUTOCOMMIT,
        Some(&b"mysql_native_password"[..]),
    )
    // MariaDB's extended capabilities (read by clients because CLIENT_MYSQL is not offered):
    // bulk execution only, when the upstream has it. Connectors then send one
    // COM_STMT_BULK_EXECUTE for a batch and read one OK with the total of affected rows.
    .with_mariadb_ext_capabilities(if bulk {
        MariadbCapabilities::MARIADB_CLIENT_STMT_BULK_OPERATIONS
    } else {
        MariadbCapabilities::empty()
    });
    let mut out = Vec::new();
    hs.serialize(&mut out);
    out
}

pub fn ok(affected: u64, last_insert_id: u64, status: u16, warnings: u16) -> Vec<u8> {
    let mut b = vec![0x00];
    b.put_lenenc_int(affected);
    b.put_lenenc_int(last_insert_id);
    b.put_u16_le(status);
    b.put_u16_le(warnings);
    b
}

/// A text result set of string columns: every packet, from column count to the final EOF.
pub fn text_result(columns: &[&str], rows: &[Vec<String>], status: u16) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut count = Vec::new();
    count.put_lenenc_int(columns.len() as u64);
    out.push(count);
    for name in columns {
        let mut c = Vec::new();
        c.put_lenenc_str(b"def");
        for part in [&b""[..], b"", b"", name.as_bytes(), name.as_bytes()] {
            c.put_lenenc_str(part);
        }
        c.put_u8(0x0c);
        c.put_u16_le(45); // utf8mb4_general_ci
        c.put_u32_le(1024);
        c.put_u8(0xFD); // VAR_STRING
        c.put_u16_le(0);
        c.put_u8(0);
        c.put_u16_le(0);
        out.push(c);
    }
    out.push(eof(status, 0));
    for row in rows {
        let mut r = Vec::new();
        for v in row {
            r.put_lenenc_str(v.as_bytes());
        }
        out.push(r);
    }
    out.push(eof(status, 0));
    out
}

/// A value of a result the proxy writes itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Text(String),
}

/// Column definitions of a result the proxy writes itself: BIGINT for integer columns (as the
/// server types `@@autocommit`), VARCHAR otherwise.
pub fn typed_columns(columns: &[(&str, bool)]) -> Vec<Vec<u8>> {
    columns
        .iter()
        .map(|(name, int)| {
            let mut c = Vec::new();
            c.put_lenenc_str(b"def");
            for part in [&b""[..], b"", b"", name.as_bytes(), b""] {
                c.put_lenenc_str(part);
            }
            c.put_u8(0x0c);
            if *int {
                c.put_u16_le(63); // binary
                c.put_u32_le(21);
                c.put_u8(0x08); // LONGLONG
                c.put_u16_le(0x0081); // NOT_NULL | BINARY
            } else {
                c.put_u16_le(45); // utf8mb4_general_ci
                c.put_u32_le(1024);
                c.put_u8(0xFD); // VAR_STRING
                c.put_u16_le(0x0001); // NOT_NULL
            }
            c.put_u8(0);
            c.put_u16_le(0);
            c
        })
        .collect()
}

/// A result set the proxy writes itself, every packet from the column count to the final
/// EOF: text rows, or binary rows (`binary`, for COM_STMT_EXECUTE) — no value is NULL.
pub fn typed_result(
    columns: &[(&str, bool)],
    rows: &[Vec<Value>],
    status: u16,
    binary: bool,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut count = Vec::new();
    count.put_lenenc_int(columns.len() as u64);
    out.push(count);
    out.extend(typed_columns(columns));
    out.push(eof(status, 0));
    for row in rows {
        let mut r = Vec::new();
        if binary {
            r.put_u8(0x00);
            // The NULL bitmap starts at bit 2; nothing is NULL.
            r.extend(std::iter::repeat_n(0u8, (columns.len() + 7 + 2) / 8));
        }
        for v in row {
            match (v, binary) {
                (Value::Int(n), true) => r.put_i64_le(*n),
                (Value::Int(n), false) => r.put_lenenc_str(n.to_string().as_bytes()),
                (Value::Text(t), _) => r.put_lenenc_str(t.as_bytes()),
            }
        }
        out.push(r);
    }
    out.push(eof(status, 0));
    out
}

/// The classic 5-byte EOF packet.
pub fn eof(status: u16, warnings: u16) -> Vec<u8> {
    let mut b = vec![0xFE];
    b.put_u16_le(warnings);
    b.put_u16_le(status);
    b
}

pub fn err(code: u16, sqlstate: &[u8; 5], message: &str) -> Vec<u8> {
    let e = ErrPacket::Error(ServerError::new(
        code,
        Some(SqlState::new(*sqlstate)),
        message.as_bytes().to_vec(),
    ));
    let mut out = Vec::new();
    e.serialize(&mut out);
    out
}

/// An ERR sent in place of the handshake (sequence 0): no capabilities are agreed yet, so no
/// `#SQLSTATE` marker, as servers do.
pub fn err_before_handshake(code: u16, message: &str) -> Vec<u8> {
    let mut b = vec![0xFF];
    b.put_u16_le(code);
    b.extend_from_slice(message.as_bytes());
    b
}

/// A refusal: 1227, SQLSTATE 42000, a message naming what was refused and why.
pub fn refused(message: &str) -> Vec<u8> {
    err(ER_REFUSED, b"42000", message)
}

fn lenenc_len(first: u8) -> usize {
    match first {
        0xFC => 3,
        0xFD => 4,
        0xFE => 9,
        _ => 1,
    }
}

/// Offset of the status flags in an OK packet (`0x00`, lenenc affected, lenenc insert id).
fn ok_status_offset(p: &[u8]) -> Option<usize> {
    let mut i = 1;
    for _ in 0..2 {
        i += lenenc_len(*p.get(i)?);
    }
    (p.len() >= i + 2).then_some(i)
}

/// What kind of packet ends or answers a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ok,
    Err,
    /// The classic EOF (0xFE and under 9 bytes).
    Eof,
    Other,
}

pub fn kind(p: &[u8]) -> Kind {
    match p.first() {
        Some(0x00) if ok_status_offset(p).is_some() => Kind::Ok,
        Some(0xFF) => Kind::Err,
        Some(0xFE) if p.len() < 9 => Kind::Eof,
        _ => Kind::Other,
    }
}

/// The affected-rows count of an OK packet.
pub fn ok_affected_rows(p: &[u8]) -> Option<u64> {
    if kind(p) != Kind::Ok {
        return None;
    }
    mysql_common::io::ParseBuf(&p[1..]).checked_eat_lenenc_int()
}

/// ER_USER_LIMIT_REACHED, for a session over its rate limits.
pub const ER_RATE_LIMITED: u16 = 1226;

/// The last-insert-id of an OK packet (0 when the statement generated none).
pub fn ok_last_insert_id(p: &[u8]) -> Option<u64> {
    if kind(p) != Kind::Ok {
        return None;
    }
    let mut buf = mysql_common::io::ParseBuf(&p[1..]);
    let _affected = buf.checked_eat_lenenc_int()?;
    buf.checked_eat_lenenc_int()
}

/// Status flags of an OK or EOF packet.
pub fn status(p: &[u8]) -> Option<u16> {
    let at = match kind(p) {
        Kind::Ok => ok_status_offset(p)?,
        Kind::Eof if p.len() >= 5 => 3,
        _ => return None,
    };
    Some(u16::from_le_bytes([p[at], p[at + 1]]))
}

/// Rewrites the IN_TRANS and AUTOCOMMIT bits of an OK or EOF packet to what this app
/// connection would see on a real server.
pub fn patch_status(p: &mut [u8], in_trans: bool, autocommit: bool) {
    let at = match kind(p) {
        Kind::Ok => ok_status_offset(p),
        Kind::Eof if p.len() >= 5 => Some(3),
        _ => None,
    };
    if let Some(at) = at {
        let mut s = u16::from_le_bytes([p[at], p[at + 1]]) & !(STATUS_IN_TRANS | STATUS_AUTOCOMMIT);
        if in_trans {
            s |= STATUS_IN_TRANS;
        }
        if autocommit {
            s |= STATUS_AUTOCOMMIT;
        }
        p[at..at + 2].copy_from_slice(&s.to_le_bytes());
    }
}

/// Error code and message of an ERR packet.
pub fn err_info(p: &[u8]) -> Option<(u16, String)> {
    if p.first() != Some(&0xFF) || p.len() < 3 {
        return None;
    }
    let code = u16::from_le_bytes([p[1], p[2]]);
    let msg_at = if p.get(3) == Some(&b'#') { 9 } else { 3 };
    Some((
        code,
        String::from_utf8_lossy(p.get(msg_at..).unwrap_or(&[])).into_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_flags_are_read_and_patched_in_ok_and_eof() {
        let mut p = ok(300, 7, STATUS_IN_TRANS | 0x20, 1);
        assert_eq!(kind(&p), Kind::Ok);
        assert_eq!(status(&p), Some(0x21));
        patch_status(&mut p, false, true);
        assert_eq!(status(&p), Some(0x22));
        let mut e = eof(STATUS_IN_TRANS, 0);
        patch_status(&mut e, true, false);
        assert_eq!(status(&e), Some(STATUS_IN_TRANS));
    }

    #[test]
    fn refusals_are_server_range_errors_with_sqlstate_42000() {
        let p = refused("DevInProd refused DROP TABLE: it commits");
        assert_eq!(
            err_info(&p),
            Some((1227, "DevInProd refused DROP TABLE: it commits".into()))
        );
        assert_eq!(&p[3..9], b"#42000");
    }
}
