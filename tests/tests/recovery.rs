//! Hostile or unlucky database traffic: what no statement may do to the process, and how a
//! session comes back by itself when a connection under it dies.

use mysql_async::prelude::*;
use tests::mariadb::TestDatabase;
use tests::procs::{child_of, kill, KillOnDrop};
use tests::{
    developer_with_mysql, init_tracing, mysql_conn, production_conn, relay_with_dbproxy, Pki,
};

/// Whether the *session's* connection is inside its transaction. An expression, so the server
/// answers: a bare `SELECT @@in_transaction` is the app connection's own emulated state.
const SESSION_IN_TRANSACTION: &str = "SELECT @@in_transaction + 0";

fn server_error(e: mysql_async::Error) -> (u16, String) {
    match e {
        mysql_async::Error::Server(s) => (s.code, s.message),
        other => panic!("expected a server error, got {other}"),
    }
}

/// Issue 15: `SELECT 1` followed by 150,000 `+1` overflowed the stack while the parse tree was
/// dropped, aborting the process that also runs the relay and the edge. Now it is refused with
/// a MySQL error, and the same connection and session go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_nested_too_deep_is_refused_and_the_process_and_session_go_on() {
    init_tracing();
    let db = TestDatabase::new();
    db.admin("CREATE TABLE t (id INT PRIMARY KEY AUTO_INCREMENT, val VARCHAR(50)) ENGINE=InnoDB");
    let pki = Pki::new();
    let (relay, _proxy) = relay_with_dbproxy(&pki, |_| {}).await;
    let dev = developer_with_mysql(&relay, &pki, "alice").await;
    let mut app = mysql_conn(dev.mysql.unwrap(), &db.name).await;
    app.query_drop("INSERT INTO t(val) VALUES ('before')")
        .await
        .unwrap();

    let deep = format!("SELECT 1{}", "+1".repeat(150_000));
    let (code, message) = server_error(app.query_drop(&deep).await.unwrap_err());
    assert_eq!(code, 1227, "{message}");
    assert!(message.contains("too complex"), "{message}");
    assert!(
        message.len() < 1_000,
        "the refusal echoes the statement: {} bytes",
        message.len()
    );
    // An OR chain an ORM could build, far past the limit, through a prepared statement too.
    let ors: Vec<String> = (0..20_000).map(|i| format!("id = {i}")).collect();
    let sql = format!("SELECT * FROM t WHERE {}", ors.join(" OR "));
    let (code, message) = server_error(app.prep(&sql).await.unwrap_err());
    assert_eq!(code, 1227, "{message}");

    let vals: Vec<String> = app.query("SELECT val FROM t").await.unwrap();
    assert_eq!(vals, ["before"], "the session kept its transaction");
    let in_tx: Option<i64> = app.query_first(SESSION_IN_TRANSACTION).await.unwrap();
    assert_eq!(in_tx, Some(1));
}

/// Issue 15: when the session's catalog connection died (the server restarted, or its
/// `wait_timeout` closed it while idle) every statement got 1317 forever. Now the next
/// statement opens a new catalog connection, and the session's transaction is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_recovers_by_itself_when_its_catalog_connection_dies() {
    init_tracing();
    let db = TestDatabase::new();
    for t in ["t", "t0", "t1"] {
        db.admin(&format!(
            "CREATE TABLE {t} (id INT PRIMARY KEY AUTO_INCREMENT, val VARCHAR(50)) ENGINE=InnoDB"
        ));
    }
    let pki = Pki::new();
    let (relay, proxy) = relay_with_dbproxy(&pki, |_| {}).await;
    let dev = developer_with_mysql(&relay, &pki, "alice").await;
    let mut app = mysql_conn(dev.mysql.unwrap(), &db.name).await;
    let mut prod = production_conn(&db.name).await;

    // A write is checked against the catalog: the catalog connection opens.
    app.query_drop("INSERT INTO t(val) VALUES ('one')")
        .await
        .unwrap();
    let session = proxy.sessions().pop().expect("a session");
    for round in 0..2 {
        let catalog = session
            .catalog_thread_id()
            .expect("the write opened a catalog connection");
        prod.query_drop(format!("KILL {catalog}")).await.unwrap();
        // A table the catalog has not been asked about yet, so it has to be asked.
        app.query_drop(format!("INSERT INTO t{round}(val) VALUES ('x')"))
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        app.query_drop(format!("INSERT INTO t(val) VALUES ('after kill {round}')"))
            .await
            .unwrap();
        assert_ne!(session.catalog_thread_id(), Some(catalog));
    }
    let vals: Vec<String> = app.query("SELECT val FROM t ORDER BY id").await.unwrap();
    assert_eq!(vals, ["one", "after kill 0", "after kill 1"]);
    let seen: Vec<String> = prod.query("SELECT val FROM t").await.unwrap();
    assert!(seen.is_empty(), "production sees nothing: {seen:?}");
}

/// Issue 15: after a reset (the watchdog's, `db reset`'s, or a killed upstream's), a connection
/// the app opens *afterwards* failed inside its own connect (1317 during the driver's first
/// statements). Only connections that used the old session are told, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_opened_after_a_reset_connects_cleanly_and_only_old_ones_are_told() {
    init_tracing();
    let db = TestDatabase::new();
    db.admin("CREATE TABLE t (id INT PRIMARY KEY AUTO_INCREMENT, val VARCHAR(50)) ENGINE=InnoDB");
    let pki = Pki::new();
    let (relay, proxy) = relay_with_dbproxy(&pki, |_| {}).await;
    let dev = developer_with_mysql(&relay, &pki, "alice").await;
    let mut old = mysql_conn(dev.mysql.unwrap(), &db.name).await;
    let mut prod = production_conn(&db.name).await;
    old.query_drop("INSERT INTO t(val) VALUES ('lost')")
        .await
        .unwrap();

    // The upstream dies under the session (as when the watchdog kills it to protect production).
    let session = proxy.sessions().pop().expect("a session");
    let upstream = session.upstream_thread_id().expect("an upstream");
    prod.query_drop(format!("KILL {upstream}")).await.unwrap();
    let mut new = mysql_conn(dev.mysql.unwrap(), &db.name).await;
    new.query_drop("SET NAMES utf8mb4").await.unwrap();
    new.query_drop("INSERT INTO t(val) VALUES ('new')")
        .await
        .unwrap();

    let (code, message) = server_error(old.query_drop("SELECT 1").await.unwrap_err());
    assert_eq!(code, 1317, "{message}");
    let vals: Vec<String> = old.query("SELECT val FROM t").await.unwrap();
    assert_eq!(vals, ["new"], "told once, then part of the new session");
}

/// `devinprod up --mysql` runs the dbproxy as a child process: when it dies (here: SIGKILL, as
/// the kernel would end a process that overflowed its stack), the edge in front of production
/// and the relay go on, the child is started again, and developers get a new session; when
/// `up` itself is killed, the child does not outlive it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_survives_its_dbproxy_dying_and_the_dbproxy_never_outlives_up() {
    use std::io::{BufRead, BufReader};
    init_tracing();
    let bin = tests::procs::devinprod_binary();
    let db = TestDatabase::new();
    let dir = tempfile::tempdir().unwrap();
    let production = tests::apps::echo_app("production").await;
    let mut up = std::process::Command::new(&bin)
        .args(["up", "--dir"])
        .arg(dir.path())
        .args(["--mysql", &tests::mariadb::server().url])
        .args(["--production", &format!("http://{production}")])
        .args([
            "--edge-listen",
            "127.0.0.1:0",
            "--relay-listen",
            "127.0.0.1:0",
        ])
        .args(["--admin-listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _kill_up = KillOnDrop(up.id());
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    let mut field = |name: &str| -> String {
        for line in lines.by_ref().map_while(Result::ok).take(20) {
            if let Some(rest) = line.trim().strip_prefix(name) {
                let word = rest.split_whitespace().next().unwrap_or_default();
                return word.trim_start_matches("http://").to_owned();
            }
        }
        panic!("up printed no {name} line");
    };
    let edge: std::net::SocketAddr = field("edge").parse().unwrap();
    let relay: std::net::SocketAddr = field("relay").parse().unwrap();
    let admin = field("admin");
    let token = std::process::Command::new(&bin)
        .args(["token", "create", "--admin", &format!("http://{admin}")])
        .output()
        .unwrap();
    let token = String::from_utf8(token.stdout).unwrap();
    let token = proto::AuthToken::parse(token.trim()).unwrap();
    let mut config = tests::TestClient::agent_config(
        relay,
        &dir.path().join("ca.pem"),
        token,
        "127.0.0.1:9".parse().unwrap(),
    );
    config.mysql_listen = Some("127.0.0.1:0".parse().unwrap());
    let mut dev = tests::TestClient::spawn(config);
    dev.wait_connected().await;
    let mysql = dev.mysql.unwrap();

    let child = child_of(up.id(), "dbproxy").expect("up started a dbproxy process");
    let mut app = until_connected(mysql, &db.name).await;
    let deep = format!("SELECT 1{}", "+1".repeat(150_000));
    let (code, _) = server_error(app.query_drop(&deep).await.unwrap_err());
    assert_eq!(code, 1227);

    kill(child, "KILL");
    let edge_answers = tests::http_client::get(edge, "www.example.com", "/").await;
    assert_eq!(edge_answers.json()["app"], "production");
    let mut app = until_connected(mysql, &db.name).await;
    let one: Option<i64> = app.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
    let restarted = child_of(up.id(), "dbproxy").expect("a new dbproxy process");
    assert_ne!(restarted, child);

    kill(up.id(), "KILL");
    let _ = up.wait();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{restarted}")).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the dbproxy outlived up"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A connection through the tunnel, retried while the dbproxy process (re)connects to the relay.
async fn until_connected(mysql: std::net::SocketAddr, db: &str) -> mysql_async::Conn {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(mysql.ip().to_string())
        .tcp_port(mysql.port())
        .user(Some("app"))
        .db_name(Some(db))
        .prefer_socket(false);
    let mut last = String::new();
    for _ in 0..100 {
        match mysql_async::Conn::new(opts.clone()).await {
            Ok(mut c) => {
                if c.query_drop("SELECT 1").await.is_ok() {
                    return c;
                }
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no database session through up's dbproxy: {last}");
}

/// Issue 15: an 80 MB login packet cost the dbproxy 167 MB before it was refused. A login
/// packet is now refused by its header alone (MariaDB's own error 1153), before its body is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_login_packet_is_refused_by_its_header() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    init_tracing();
    let pki = Pki::new();
    let (relay, _proxy) = relay_with_dbproxy(&pki, |_| {}).await;
    let dev = developer_with_mysql(&relay, &pki, "alice").await;
    let mut tcp = tokio::net::TcpStream::connect(dev.mysql.unwrap())
        .await
        .unwrap();
    let mut greeting = [0u8; 4];
    tcp.read_exact(&mut greeting).await.unwrap();
    let len = u32::from_le_bytes([greeting[0], greeting[1], greeting[2], 0]) as usize;
    let mut rest = vec![0u8; len];
    tcp.read_exact(&mut rest).await.unwrap();
    // A 16 MiB chunk announced ("more follows"), then its first 4 MiB, all written before the
    // reply is read, as a driver does: the refusal must survive the bytes still arriving (a
    // socket closed with unread bytes is reset, and a reset discards the unread reply).
    tcp.write_all(&[0xFF, 0xFF, 0xFF, 1]).await.unwrap();
    let _ = tcp.write_all(&vec![b'x'; 4 << 20]).await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(tests::WAIT, tcp.read_to_end(&mut reply)).await;
    assert!(reply.len() > 7, "no error packet: {reply:?}");
    assert_eq!(reply[4], 0xFF, "an ERR packet");
    assert_eq!(u16::from_le_bytes([reply[5], reply[6]]), 1153);
    assert!(String::from_utf8_lossy(&reply).contains("over the limit"));
}

/// Statements of 16 MiB or more come in several chunks, and the reply's sequence ids must
/// continue from the last chunk's (numbered as if the command were one packet, it is "packet
/// out of order" to a driver). One under the database's `max_allowed_packet` runs; one over it
/// would make the server close the session's connection — rolling back the developer's whole
/// session — so it is refused with MariaDB's own error 1153 instead, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_of_several_chunks_run_or_are_refused_and_the_session_goes_on() {
    init_tracing();
    let db = TestDatabase::new();
    db.admin("CREATE TABLE t (id INT PRIMARY KEY, b LONGBLOB) ENGINE=InnoDB");
    let pki = Pki::new();
    let (relay, _proxy) = relay_with_dbproxy(&pki, |_| {}).await;
    let connect = |addr: std::net::SocketAddr| {
        let opts = mysql_async::OptsBuilder::default()
            .ip_or_hostname(addr.ip().to_string())
            .tcp_port(addr.port())
            .user(Some("app"))
            .db_name(Some(db.name.clone()))
            .prefer_socket(false)
            .max_allowed_packet(Some(64 << 20));
        mysql_async::Conn::new(opts)
    };
    let huge = format!("SELECT LENGTH('{}')", "x".repeat(17 << 20));

    // The private server takes 64 MiB packets: a 17 MiB statement (two chunks) runs.
    let alice = developer_with_mysql(&relay, &pki, "alice").await;
    let mut app = connect(alice.mysql.unwrap()).await.unwrap();
    let len: Option<u64> = app.query_first(huge.as_str()).await.unwrap();
    assert_eq!(len, Some(17 << 20));

    // A session started while the server takes 16 MiB (MariaDB's default): refused.
    db.admin("SET GLOBAL max_allowed_packet = 16777216");
    let bob = developer_with_mysql(&relay, &pki, "bob").await;
    let mut app = connect(bob.mysql.unwrap()).await.unwrap();
    app.query_drop("BEGIN").await.unwrap();
    app.query_drop("INSERT INTO t (id) VALUES (1)")
        .await
        .unwrap();
    let refused = app.query_drop(huge.as_str()).await;
    // A 17 MiB parameter goes as long data (COM_STMT_SEND_LONG_DATA, which has no reply) in
    // 16 MiB chunks, each as large as the server's limit: the execute fails, in step.
    let long_data = app
        .exec_drop(
            "INSERT INTO t (id, b) VALUES (?, ?)",
            (2, vec![b'x'; 17 << 20]),
        )
        .await;
    db.admin("SET GLOBAL max_allowed_packet = 67108864");
    match long_data {
        Err(mysql_async::Error::Server(e)) => {
            assert_eq!(e.code, 1153, "{}", e.message);
            assert!(
                e.message.contains("Parameter of prepared statement"),
                "{}",
                e.message
            );
        }
        other => panic!("expected error 1153 for the long data, got {other:?}"),
    }
    match refused {
        Err(mysql_async::Error::Server(e)) => {
            assert_eq!(e.code, 1153, "{}", e.message);
            assert!(e.message.contains("did not send it"), "{}", e.message);
        }
        other => panic!("expected error 1153, got {other:?}"),
    }
    // The same connection, the same transaction.
    let ids: Vec<i64> = app.query("SELECT id FROM t").await.unwrap();
    assert_eq!(ids, [1]);
    assert_eq!(db.admin("SELECT COUNT(*) FROM t").trim(), "0");
}
