//! The session's one connection to the real database: login, then commands whose responses are
//! either relayed packet by packet to an app connection or collected for the proxy's own use.

use crate::packet::{Packet, PacketError, PacketReader, PacketWriter};
use crate::wire::{self, Kind};
use mysql_common::auth::plugins::mysql_native_password::scramble_native;
use mysql_common::constants::{CapabilityFlags, MariadbCapabilities};
use mysql_common::io::ParseBuf;
use mysql_common::packets::{AuthPlugin, AuthSwitchRequest, HandshakePacket, HandshakeResponse};
use mysql_common::proto::MySerialize;
use tokio::io::AsyncWrite;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Where the upstream is and how to log in: `mysql://user:password@host:port`.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub user: String,
    pub password: String,
    pub host: String,
    pub port: u16,
}

impl std::fmt::Debug for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        write!(f, "mysql://{}@{}:{}", self.user, self.host, self.port)
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl UpstreamUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "database URL must look like mysql://user:password@host:3306 (got {:?})",
                redact(url)
            )
        };
        let rest = url
            .strip_prefix("mysql://")
            .or_else(|| url.strip_prefix("mariadb://"))
            .ok_or_else(bad)?;
        let rest = rest.split(['/', '?']).next().unwrap_or_default();
        let (creds, hostport) = rest.rsplit_once('@').ok_or_else(bad)?;
        let (user, password) = creds.split_once(':').unwrap_or((creds, ""));
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad())?),
            None => (hostport, 3306),
        };
        if user.is_empty() || host.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            user: percent_decode(user),
            password: percent_decode(password),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
        })
    }
}

/// `url` with its password replaced, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..s + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to the database at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("the database refused the login: {0}")]
    Login(String),
    #[error("the database asked for auth plugin {0}, which the dbproxy does not support (use mysql_native_password for its user)")]
    AuthPlugin(String),
    #[error("database connection: {0}")]
    Packet(#[from] PacketError),
    #[error("the database sent something unexpected: {0}")]
    Protocol(String),
}

impl From<std::io::Error> for UpstreamError {
    fn from(e: std::io::Error) -> Self {
        UpstreamError::Packet(PacketError::Io(e))
    }
}

/// Where a response is, packet by packet. Pure; fed every packet of one response in order.
#[derive(Debug)]
pub struct ResponseTracker {
    phase: Phase,
    /// A prepare response: no rows follow its column definitions.
    prepare: bool,
    /// Status flags of the last OK/EOF that ended a result or the response.
    pub status: Option<u16>,
    /// Code and message if the response ended with ERR.
    pub error: Option<(u16, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    First,
    Columns(u64),
    ColumnsEof,
    Rows,
    /// COM_FIELD_LIST: column definitions until EOF.
    FieldList,
    /// COM_STMT_PREPARE: its OK (statement id and counts) comes first.
    PrepareFirst,
    /// Parameter definitions still to come, then columns.
    Params(u64, u64),
    ParamsEof(u64),
    Done,
}

/// What a packet was, for a relaying caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// Carries status flags that the caller may patch (OK, or EOF ending rows or a response).
    Status,
    /// The OK of COM_STMT_PREPARE: statement id at bytes 1..5.
    PrepareOk,
    /// The column count that opens a result set.
    ResultStart,
    /// A column definition of a result set (or of a prepare response's columns).
    Column,
    /// A row of a result set (text or binary, as the command asked).
    Row,
    Other,
}

impl ResponseTracker {
    fn starting(phase: Phase) -> Self {
        Self {
            phase,
            prepare: phase == Phase::PrepareFirst,
            status: None,
            error: None,
        }
    }

    pub fn new() -> Self {
        Self::starting(Phase::First)
    }

    pub fn field_list() -> Self {
        Self::starting(Phase::FieldList)
    }

    pub fn prepare() -> Self {
        Self::starting(Phase::PrepareFirst)
    }

    /// After the columns of a prepare response there are no rows.
    fn columns_then(&mut self, columns: u64) {
        self.phase = if columns > 0 {
            Phase::Columns(columns)
        } else {
            Phase::Done
        };
    }

    pub fn done(&self) -> bool {
        self.phase == Phase::Done
    }

    fn finish(&mut self, status: Option<u16>) {
        self.status = status.or(self.status);
        let more = status.is_some_and(|s| s & wire::STATUS_MORE_RESULTS != 0);
        self.phase = if more { Phase::First } else { Phase::Done };
    }

    pub fn feed(&mut self, p: &[u8]) -> Result<Position, UpstreamError> {
        let k = wire::kind(p);
        match self.phase {
            Phase::Done => Err(UpstreamError::Protocol(
                "packet after the end of a response".into(),
            )),
            Phase::First => match (p.first(), k) {
                (_, Kind::Ok) => {
                    self.finish(wire::status(p));
                    Ok(Position::Status)
                }
                (_, Kind::Err) => {
                    self.error = wire::err_info(p);
                    self.phase = Phase::Done;
                    Ok(Position::Other)
                }
                (Some(0xFB), _) => Err(UpstreamError::Protocol(
                    "the server asked for a LOCAL INFILE".into(),
                )),
                _ => {
                    let n = ParseBuf(p).eat_lenenc_int();
                    if n == 0 {
                        return Err(UpstreamError::Protocol("result set with no columns".into()));
                    }
                    self.phase = Phase::Columns(n);
                    Ok(Position::ResultStart)
                }
            },
            Phase::PrepareFirst => match p.first() {
                Some(0x00) if p.len() >= 12 => {
                    let columns = u64::from(u16::from_le_bytes([p[5], p[6]]));
                    let params = u64::from(u16::from_le_bytes([p[7], p[8]]));
                    if params > 0 {
                        self.phase = Phase::Params(params, columns);
                    } else {
                        self.columns_then(columns);
                    }
                    Ok(Position::PrepareOk)
                }
                Some(0xFF) => {
                    self.error = wire::err_info(p);
                    self.phase = Phase::Done;
                    Ok(Position::Other)
                }
                _ => Err(UpstreamError::Protocol(
                    "malformed COM_STMT_PREPARE response".into(),
                )),
            },
            Phase::Params(n, columns) => {
                self.phase = if n > 1 {
                    Phase::Params(n - 1, columns)
                } else {
                    Phase::ParamsEof(columns)
                };
                Ok(Position::Other)
            }
            Phase::ParamsEof(columns) => {
                if k != Kind::Eof {
                    return Err(UpstreamError::Protocol(
                        "missing EOF after parameter definitions".into(),
                    ));
                }
                self.columns_then(columns);
                Ok(Position::Status)
            }
            Phase::Columns(n) => {
                self.phase = if n > 1 {
                    Phase::Columns(n - 1)
                } else {
                    Phase::ColumnsEof
                };
                Ok(Position::Column)
            }
            Phase::ColumnsEof | Phase::FieldList if k == Kind::Err => {
                self.error = wire::err_info(p);
                self.phase = Phase::Done;
                Ok(Position::Other)
            }
            Phase::ColumnsEof => {
                if k != Kind::Eof {
                    return Err(UpstreamError::Protocol(
                        "missing EOF after column definitions".into(),
                    ));
                }
                if self.prepare {
                    self.phase = Phase::Done;
                    return Ok(Position::Status);
                }
                self.phase = Phase::Rows;
                // This EOF carries status flags too, and connectors read them
                // (mysql-connector-python took the session's IN_TRANS for its own).
                Ok(Position::Status)
            }
            Phase::FieldList => {
                if k == Kind::Eof {
                    self.finish(wire::status(p));
                    return Ok(Position::Status);
                }
                Ok(Position::Other)
            }
            Phase::Rows => match k {
                Kind::Eof => {
                    self.finish(wire::status(p));
                    Ok(Position::Status)
                }
                Kind::Err => {
                    self.error = wire::err_info(p);
                    self.phase = Phase::Done;
                    Ok(Position::Other)
                }
                // A row (text rows may start with 0x00 or 0xFF-less bytes).
                _ => Ok(Position::Row),
            },
        }
    }
}

impl Default for ResponseTracker {
    fn default() -> Self {
        Self::new()
    }
}

/// A collected response of a command the proxy sends for itself.
#[derive(Debug)]
pub struct Collected {
    pub packets: Vec<Vec<u8>>,
    pub status: Option<u16>,
    pub error: Option<(u16, String)>,
}

impl Collected {
    /// Text rows of the (first) result set, as optional strings.
    pub fn rows(&self) -> Vec<Vec<Option<String>>> {
        let mut out = Vec::new();
        let Some(first) = self.packets.first() else {
            return out;
        };
        let ncols = ParseBuf(first).eat_lenenc_int() as usize;
        // column count, column defs, EOF, rows..., EOF
        for p in self.packets.iter().skip(ncols + 2) {
            if wire::kind(p) == Kind::Eof {
                break;
            }
            let mut buf = ParseBuf(p);
            let mut row = Vec::with_capacity(ncols);
            for _ in 0..ncols {
                if buf.0.first() == Some(&0xFB) {
                    buf.skip(1);
                    row.push(None);
                } else {
                    row.push(Some(
                        String::from_utf8_lossy(buf.eat_lenenc_str()).into_owned(),
                    ));
                }
            }
            out.push(row);
        }
        out
    }
}

pub struct Upstream {
    reader: PacketReader<OwnedReadHalf>,
    writer: PacketWriter<OwnedWriteHalf>,
    pub server_version: String,
    pub collation: u8,
    pub connection_id: u32,
    /// The server accepted MariaDB's COM_STMT_BULK_EXECUTE on this connection.
    pub bulk: bool,
}

impl Upstream {
    pub async fn connect(url: &UpstreamUrl, max_packet: usize) -> Result<Self, UpstreamError> {
        let addr = format!("{}:{}", url.host, url.port);
        let stream = TcpStream::connect(&addr)
            .await
            .map_err(|source| UpstreamError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        let mut reader = PacketReader::new(r, max_packet);
        let mut writer = PacketWriter::new(w);
        let first = reader.read().await?;
        if wire::kind(&first.payload) == Kind::Err {
            let (code, msg) = wire::err_info(&first.payload).unwrap_or((0, String::new()));
            return Err(UpstreamError::Login(format!("{code}: {msg}")));
        }
        let hs: HandshakePacket = ParseBuf(&first.payload)
            .parse(())
            .map_err(|e| UpstreamError::Protocol(format!("bad handshake: {e}")))?;
        let nonce = hs.nonce();
        let caps = wire::capabilities() & hs.capabilities();
        // MariaDB's extended capabilities ride in the handshake only when the server leaves out
        // CLIENT_MYSQL (bit 0); of them, the proxy asks for bulk execution alone (it forwards
        // an app's COM_STMT_BULK_EXECUTE, see `wire::handshake`).
        let bulk = !hs
            .capabilities()
            .contains(CapabilityFlags::CLIENT_LONG_PASSWORD)
            && hs
                .mariadb_ext_capabilities()
                .contains(MariadbCapabilities::MARIADB_CLIENT_STMT_BULK_OPERATIONS);
        let auth = scramble_native(&nonce, url.password.as_bytes())
            .map(|x| x.to_vec())
            .unwrap_or_default();
        let resp = HandshakeResponse::new(
            Some(auth),
            hs.server_version_parsed().unwrap_or((5, 5, 5)),
            Some(url.user.as_bytes()),
            None::<&[u8]>,
            Some(AuthPlugin::MysqlNativePassword),
            caps,
            None,
            max_packet as u32,
        )
        .with_mariadb_ext_capabilities(if bulk {
            MariadbCapabilities::MARIADB_CLIENT_STMT_BULK_OPERATIONS
        } else {
            MariadbCapabilities::empty()
        });
        let mut buf = Vec::new();
        resp.serialize(&mut buf);
        let mut seq = writer.send(first.seq.wrapping_add(1), &buf).await?;
        loop {
            let p = reader.read().await?;
            match p.payload.first() {
                Some(0x00) => break,
                Some(0xFF) => {
                    let (code, msg) = wire::err_info(&p.payload).unwrap_or((0, String::new()));
                    return Err(UpstreamError::Login(format!("{code}: {msg}")));
                }
                Some(0xFE) => {
                    let sw: AuthSwitchRequest = ParseBuf(&p.payload)
                        .parse(())
                        .map_err(|e| UpstreamError::Protocol(format!("bad auth switch: {e}")))?;
                    let data = match sw.auth_plugin() {
                        AuthPlugin::MysqlNativePassword => {
                            scramble_native(sw.plugin_data(), url.password.as_bytes())
                                .map(|x| x.to_vec())
                                .unwrap_or_default()
                        }
                        other => return Err(UpstreamError::AuthPlugin(format!("{other:?}"))),
                    };
                    seq = writer.send(p.seq.wrapping_add(1), &data).await?;
                }
                _ => {
                    return Err(UpstreamError::AuthPlugin(
                        hs.auth_plugin_name_str()
                            .map(|s| s.into_owned())
                            .unwrap_or_default(),
                    ))
                }
            }
        }
        let _ = seq;
        Ok(Self {
            reader,
            writer,
            server_version: hs.server_version_str().into_owned(),
            collation: hs.default_collation(),
            connection_id: hs.connection_id(),
            bulk,
        })
    }

    /// Sends a command packet (sequence 0).
    pub async fn send(&mut self, payload: &[u8]) -> Result<(), UpstreamError> {
        self.writer.send(0, payload).await?;
        Ok(())
    }

    pub async fn read(&mut self) -> Result<Packet, UpstreamError> {
        Ok(self.reader.read().await?)
    }

    /// Runs `sql` and collects the whole response (for the proxy's own small queries).
    pub async fn query(&mut self, sql: &str) -> Result<Collected, UpstreamError> {
        let mut payload = vec![0x03];
        payload.extend_from_slice(sql.as_bytes());
        self.send(&payload).await?;
        let mut tracker = ResponseTracker::new();
        let mut packets = Vec::new();
        while !tracker.done() {
            let p = self.read().await?;
            tracker.feed(&p.payload)?;
            packets.push(p.payload);
        }
        Ok(Collected {
            packets,
            status: tracker.status,
            error: tracker.error,
        })
    }

    /// Runs `sql`; an ERR response becomes `Err(Ok((code, message)))`.
    pub async fn run(
        &mut self,
        sql: &str,
    ) -> Result<Result<Collected, (u16, String)>, UpstreamError> {
        let c = self.query(sql).await?;
        Ok(match c.error.clone() {
            Some(e) => Err(e),
            None => Ok(c),
        })
    }

    pub async fn close(mut self) {
        let _ = self.writer.send(0, &[0x01]).await;
        self.writer.shutdown().await;
    }
}

/// Relays one response from `upstream` to an app connection, patching status flags. If the
/// app connection fails, the rest of the response is still read (and dropped): the upstream is
/// shared, and must stay in step. Returns the tracker and whether the app got everything.
pub async fn relay_response<W: AsyncWrite + Unpin>(
    upstream: &mut Upstream,
    mut tracker: ResponseTracker,
    app: &mut PacketWriter<W>,
    mut seq: u8,
    mut on_packet: impl FnMut(Position, &mut Vec<u8>),
) -> Result<(ResponseTracker, bool), UpstreamError> {
    let mut queued = 0usize;
    let mut app_ok = true;
    while !tracker.done() {
        let mut p = upstream.read().await?;
        let position = tracker.feed(&p.payload)?;
        on_packet(position, &mut p.payload);
        if !app_ok {
            continue;
        }
        seq = app.queue(seq, &p.payload);
        queued += p.payload.len();
        // Flush as we go so large results stream, and at the end.
        if (queued > 64 * 1024 || tracker.done()) && app.flush().await.is_err() {
            app_ok = false;
        }
        if queued > 64 * 1024 {
            queued = 0;
        }
    }
    Ok((tracker, app_ok))
}
