//! The dbproxy's PostgreSQL codec (issue 16) against a real PostgreSQL server (a private one,
//! `tests::postgres`): what the server sends is cut and read by the codec's upstream side —
//! the start-up answers, rows and NULLs, errors — and the transaction states the emulation will
//! have to reproduce exactly (an error inside a transaction block: 25P02 for each later
//! statement until ROLLBACK; a multi-statement Query succeeds or fails as one) are the server's
//! own, read here through the codec.

use bytes::{BufMut, BytesMut};
use dbproxy::postgres::backend::TransactionStatus;
use dbproxy::postgres::upstream::{AuthenticationRequest, BackendFrameDecoder, BackendMessage};
use tests::postgres::{server, TestPgDatabase};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client's side of one connection, reading with the dbproxy's upstream decoder.
struct Client {
    tcp: TcpStream,
    buf: BytesMut,
    frames: BackendFrameDecoder,
}

impl Client {
    async fn next(&mut self) -> BackendMessage {
        loop {
            if let Some(frame) = self.frames.decode(&mut self.buf).expect("a valid frame") {
                return BackendMessage::parse(frame).expect("a message the codec reads");
            }
            let n = tokio::time::timeout(tests::WAIT, self.tcp.read_buf(&mut self.buf))
                .await
                .expect("the server answers")
                .unwrap();
            assert!(n > 0, "the server closed the connection");
        }
    }

    /// Messages up to and including ReadyForQuery.
    async fn until_ready(&mut self) -> Vec<BackendMessage> {
        let mut out = Vec::new();
        loop {
            let m = self.next().await;
            let ready = matches!(m, BackendMessage::ReadyForQuery(_));
            out.push(m);
            if ready {
                return out;
            }
        }
    }

    async fn query(&mut self, sql: &str) -> Vec<BackendMessage> {
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        self.tcp.write_all(&message(b'Q', &body)).await.unwrap();
        self.until_ready().await
    }
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.put_i32(body.len() as i32 + 4);
    m.extend_from_slice(body);
    m
}

fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    body.put_i32(196_608);
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut m = Vec::new();
    m.put_i32(body.len() as i32 + 4);
    m.extend_from_slice(&body);
    m
}

fn ready(m: &[BackendMessage]) -> Option<TransactionStatus> {
    match m.last() {
        Some(BackendMessage::ReadyForQuery(s)) => Some(*s),
        _ => None,
    }
}

fn error_codes(m: &[BackendMessage]) -> Vec<String> {
    m.iter()
        .filter_map(|m| match m {
            BackendMessage::ErrorResponse(e) => Some(e.code.to_string()),
            _ => None,
        })
        .collect()
}

fn tags(m: &[BackendMessage]) -> Vec<String> {
    m.iter()
        .filter_map(|m| match m {
            BackendMessage::CommandComplete { tag } => Some(tag.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn the_codec_reads_a_real_postgresql_and_its_transaction_states() {
    let db = TestPgDatabase::new();
    db.admin("CREATE TABLE t (id int PRIMARY KEY, val text)");
    let srv = server();
    let mut tcp = TcpStream::connect(srv.addr()).await.unwrap();

    // SSLRequest: a server without TLS answers the one byte 'N', then takes the start-up.
    let mut ssl = Vec::new();
    ssl.put_i32(8);
    ssl.put_i32(80_877_103);
    tcp.write_all(&ssl).await.unwrap();
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N");
    tcp.write_all(&startup(&[
        ("user", &srv.user),
        ("database", &db.name),
        ("application_name", "devinprod-codec-test"),
        ("client_encoding", "UTF8"),
    ]))
    .await
    .unwrap();
    let mut c = Client {
        tcp,
        buf: BytesMut::new(),
        frames: BackendFrameDecoder::new(1 << 20),
    };
    let hello = c.until_ready().await;
    assert!(matches!(
        hello.first(),
        Some(BackendMessage::Authentication(AuthenticationRequest::Ok))
    ));
    let param = |name: &str| {
        hello.iter().find_map(|m| match m {
            BackendMessage::ParameterStatus { name: n, value } if n == name => Some(value.clone()),
            _ => None,
        })
    };
    assert_eq!(param("client_encoding").as_deref(), Some("UTF8"));
    assert_eq!(
        param("application_name").as_deref(),
        Some("devinprod-codec-test")
    );
    assert!(param("server_version").is_some());
    assert!(hello.iter().any(|m| matches!(
        m,
        BackendMessage::BackendKeyData { secret_key, .. } if secret_key.len() == 4
    )));
    assert_eq!(ready(&hello), Some(TransactionStatus::Idle));

    // Rows and NULLs.
    let rows = c.query("SELECT 1 AS one, NULL::text AS nothing").await;
    match &rows[0] {
        BackendMessage::RowDescription(fields) => {
            let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
            assert_eq!(names, ["one", "nothing"]);
            assert_eq!((fields[0].type_oid, fields[1].type_oid), (23, 25));
        }
        other => panic!("expected RowDescription, got {other:?}"),
    }
    match &rows[1] {
        BackendMessage::DataRow(values) => {
            assert_eq!(values[0].as_deref(), Some(&b"1"[..]));
            assert_eq!(values[1], None);
        }
        other => panic!("expected DataRow, got {other:?}"),
    }
    assert_eq!(tags(&rows), ["SELECT 1"]);
    assert_eq!(ready(&rows), Some(TransactionStatus::Idle));

    // An error inside a transaction block fails the block: 25P02 until ROLLBACK.
    let failed = c
        .query("BEGIN; INSERT INTO t VALUES (1, 'a'); SELECT 1/0")
        .await;
    assert_eq!(tags(&failed), ["BEGIN", "INSERT 0 1"]);
    assert_eq!(error_codes(&failed), ["22012"]);
    assert_eq!(ready(&failed), Some(TransactionStatus::Failed));
    let refused = c.query("SELECT 1").await;
    assert_eq!(error_codes(&refused), ["25P02"]);
    assert_eq!(ready(&refused), Some(TransactionStatus::Failed));
    let rolled_back = c.query("ROLLBACK").await;
    assert_eq!(tags(&rolled_back), ["ROLLBACK"]);
    assert_eq!(ready(&rolled_back), Some(TransactionStatus::Idle));

    // Outside a block, a multi-statement Query is one implicit transaction: all or nothing.
    let implicit = c
        .query("INSERT INTO t VALUES (2, 'b'); INSERT INTO t VALUES (2, 'again')")
        .await;
    assert_eq!(error_codes(&implicit), ["23505"]);
    assert_eq!(ready(&implicit), Some(TransactionStatus::Idle));
    assert_eq!(db.admin("SELECT count(*) FROM t").trim(), "0");

    // A statement that fails before running (unknown table) in a block, then ROLLBACK TO.
    let savepoint = c
        .query("BEGIN; SAVEPOINT s; SELECT * FROM no_such_table")
        .await;
    assert_eq!(error_codes(&savepoint), ["42P01"]);
    assert_eq!(ready(&savepoint), Some(TransactionStatus::Failed));
    let back = c.query("ROLLBACK TO SAVEPOINT s").await;
    assert_eq!(ready(&back), Some(TransactionStatus::InTransaction));
    let commit = c.query("COMMIT").await;
    assert_eq!(tags(&commit), ["COMMIT"]);
    assert_eq!(ready(&commit), Some(TransactionStatus::Idle));

    c.tcp.write_all(&message(b'X', &[])).await.unwrap();
}
