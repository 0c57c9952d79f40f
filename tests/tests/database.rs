//! The database sandbox against a real MariaDB: one never-committed transaction per developer
//! session, reached through the tunnel with a real driver.

use mysql_async::prelude::*;
use tests::mariadb::TestDatabase;
use tests::{
    developer_with_mysql, init_tracing, mysql_conn, production_conn, relay_with_dbproxy, Pki,
};

/// Whether the *session's* connection is inside its transaction. An expression, so the server
/// answers: a bare `SELECT @@in_transaction` is the app connection's own emulated state.
const SESSION_IN_TRANSACTION: &str = "SELECT @@in_transaction + 0";

fn server_error(e: mysql_async::Error) -> (u16, String, String) {
    match e {
        mysql_async::Error::Server(s) => (s.code, s.state, s.message),
        other => panic!("expected a server error, got {other}"),
    }
}

async fn vals(conn: &mut mysql_async::Conn, table: &str) -> Vec<String> {
    conn.query(format!("SELECT val FROM {table} ORDER BY id"))
        .await
        .unwrap()
}

fn checksum(db: &TestDatabase, table: &str) -> String {
    db.admin(&format!("CHECKSUM TABLE {table}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_sequence_behaves_as_an_app_expects_and_production_never_sees_it() {
    init_tracing();
    let db = TestDatabase::new();
    db.admin("CREATE TABLE t (id INT PRIMARY KEY AUTO_INCREMENT, val VARCHAR(50)) ENGINE=InnoDB; INSERT INTO t(val) VALUES ('prod')");
    let before = checksum(&db, "t");
    let pki = Pki::new();
    let (relay, _proxy) = relay_with_dbproxy(&pki, |_| {}).await;
    let dev = developer_with_mysql(&relay, &pki, "alice").await;
    let mut app = mysql_conn(dev.mysql.unwrap(), &db.name).await;
    let mut prod = production_conn(&db.name).await;

    app.query_drop("BEGIN").await.unwrap();
    app.query_drop("INSERT INTO t(val) VALUES ('test')")
        .await
        .unwrap();
    app.query_drop("COMMIT").await.unwrap();
    assert_eq!(vals(&mut app, "t").await, ["prod", "test"]);
    app.query_drop("BEGIN").await.unwrap();
    app.query_drop("UPDATE t SET val='new val'").await.unwrap();
    assert_eq!(vals(&mut app, "t").await, ["new val", "new val"]);
    app.query_drop("ROLLBACK").await.unwrap();
    assert_eq!(
        vals(&mut app, "t").await,
        ["prod", "test"],
        "ROLLBACK undid the UPDATE only"
    );
    app.query_drop("DELETE FROM t").await.unwrap();
    app.query_drop("COMMIT").await.unwrap();
    assert!(vals(&mut app, "t").await.is_empty());

    // Production saw none of it, and is not blocked by it (READ COMMITTED, no locks on read).
    assert_eq!(vals(&mut prod, "t").await, ["prod"]);
    assert_eq!(checksum(&db, "t"), before);
    // The upstream is still inside its one transaction.
    let in_tx: Option<i64> = app.query_first(SESSION_IN_TRANSACTION).await.unwrap();
    assert_eq!(in_tx, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_shared_by_its_connections_and_invisible_to_others_and_gone_when_it_ends() {
    init_tracing();
    let db = TestDatabase::new();
    db.admin("CREATE TABLE t (id INT PRIMARY KEY AUTO_INCREMENT, val VARCHAR(50)) ENGINE=InnoDB");
    let before = checksum(&db, "t");
    let pki = Pki::new();
    let (relay, proxy) = relay_with_dbproxy(&pki, |_| {}).await;
    let alice = developer_with_mysql(&relay, &pki, "alice").await;
    let bob = developer_with_mysql(&relay, &pki, "bob").await;
    let mut a1 = mysql_conn(alice.mysql.unwrap(), &db.name).await;
    let mut a2 = mysql_conn(alice.mysql.unwrap(), &db.name).await;
    let mut b1 = mysql_conn(bob.mysql.unwrap(), &db.name).await;
    let mut prod = production_conn(&db.name).await;

    a1.query_drop("INSERT INTO t(val) VALUES ('alice was here')")
        .await
        .unwrap();
    a1.query_drop("UPDATE t SET val = 'alice again' WHERE val = 'alice was here'")
        .await
        .unwrap();
    assert_eq!(
        vals(&mut a2, "t").await,
        ["alice again"],
        "the pool's other connection sees the session's work"
    );
    assert!(
        vals(&mut b1, "t").await.is_empty(),
        "another developer's session does not"
    );
    assert!(vals(&mut prod, "t").await.is_empty(), "production does not");
    assert_eq!(checksum(&db, "t"), before);

    // Ending the session (as `db reset` or the grace period does) rolls everything back.
    let key = proto::RoutingKey::parse(&alice.routing_key).unwrap();
    assert!(proxy.reset(&key, "test").await);
    let mut a3 = mysql_conn(alice.mysql.unwrap(), &db.name).await;
    assert!(vals(&mut a3, "t").await.is_empty());
    assert_eq!(checksum(&db, "t"), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_escape_hatch_is_refused_and_the_session_stays_in_its_transaction() {
    init_tracing();
    let db = TestDatabase::new();
    db.admin(
        "CREATE TABLE t (id INT PRIMARY KEY, val VARCHAR(50)) ENGINE=InnoDB; INSERT INTO t VALUES (1, 'prod');
         CREATE TABLE m (id INT PRIMARY KEY) ENGINE=MyISAM;
         CREATE TABLE audited (id INT PRIMARY KEY) ENGINE=InnoDB;
         CREATE TABLE audit_log (id INT) ENGINE=MyISAM;
         CREATE TRIGGER audited_ins AFTER INSERT ON audited FOR EACH ROW INSERT INTO audit_log VALUES (NEW.id);
         DELIMITER //
         CREATE FUNCTION sneaky() RETURNS INT MODIFIES SQL DATA BEGIN INSERT INTO m VALUES (99); RETURN 1; END //
         CREATE PROCEDURE p() BEGIN COMMIT; END //
         DELIMITER ;",
    );
    let checksums = |db: &TestDatabase| ["t", "m", "audited", "audit_log"].map(|t| checksum(db, t));
    let before = checksums(&db);
    let pki = Pki::new();
    let (relay, _proxy) = relay_with_dbproxy(&pki, |_| {}).await;
    let dev = developer_with_mysql(&relay, &pki, "mallory").await;
    let mut app = mysql_conn(dev.mysql.unwrap(), &db.name).await;
    app.query_drop("UPDATE t SET val = 'dev' WHERE id = 1")
        .await
        .unwrap();

    let hatches = [
        ("CREATE TABLE x (id INT)", "implicitly"),
        ("DROP TABLE t", "implicitly"),
        ("ALTER TABLE t ADD COLUMN y INT", "only reads"),
        ("TRUNCATE TABLE t", "implicitly"),
        ("/*!50000 DROP TABLE t */", "executable"),
        ("/*M!100100 DROP TABLE t */ SELECT 1", "executable"),
        ("SELECT 1; COMMIT", "one statement"),
        ("PREPARE s FROM 'COMMIT'", "classified"),
        ("CALL p()", "procedures"),
        ("XA START 'x'", "classified"),
        ("LOCK TABLES t WRITE", "blocks production"),
        (
            "LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE t",
            "classified",
        ),
        ("SELECT GET_LOCK('devinprod-test', 0)", "named locks"),
        ("INSERT INTO m VALUES (1)", "MyISAM"),
        ("INSERT INTO audited VALUES (1)", "triggers"),
        ("SELECT sneaky()", "stored function"),
        ("HANDLER t OPEN", "classified"),
        ("SET GLOBAL max_connections = 1000", "server-wide"),
        (
            "SELECT * FROM t INTO OUTFILE '/tmp/devinprod-leak'",
            "classified",
        ),
        ("COMMIT AND CHAIN", "chained"),
        ("CREATE USER 'mallory'@'%'", "CREATE USER"),
        ("GRANT ALL ON *.* TO 'mallory'@'%'", "account"),
        (
            "BEGIN NOT ATOMIC INSERT INTO t VALUES (2, 'x'); COMMIT; END",
            "classified",
        ),
        (
            "SET STATEMENT max_statement_time = 0 FOR DELETE FROM t",
            "classified",
        ),
        ("EXECUTE IMMEDIATE 'COMMIT'", "not visible"),
        ("SELECT LOAD_FILE('/etc/passwd')", "files"),
        ("FLUSH TABLES", "only reads"),
        ("SHUTDOWN", "classified"),
        ("KILL 1", "other connections"),
        ("BACKUP STAGE START", "classified"),
        ("ANALYZE TABLE t", "only reads"),
        ("SET sql_log_bin = 0", "only session variables"),
        ("SET completion_type = 1", "only session variables"),
        ("SELECT SETVAL(s, 10)", "not rolled back"),
        (
            "SET autocommit = 1, sql_log_bin = 0",
            "only session variables",
        ),
    ];
    for (sql, why) in hatches {
        let (code, state, message) = server_error(app.query_drop(sql).await.unwrap_err());
        assert_eq!((code, state.as_str()), (1227, "42000"), "{sql}: {message}");
        assert!(message.contains(why), "{sql}: {message}");
    }
    // Still the same session: its uncommitted UPDATE is there, and it is in its transaction.
    let val: Option<String> = app
        .query_first("SELECT val FROM t WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(val.as_deref(), Some("dev"));
    let in_tx: Option<i64> = app.query_first(SESSION_IN_TRANSACTION).await.unwrap();
    assert_eq!(in_tx, Some(1));
    let locks: Option<i64> = production_conn(&db.name)
        .await
        .query_first("SELECT IS_FREE_LOCK('devinprod-test')")
        .await
        .unwrap();
    assert_eq!(locks, Some(1), "no named lock was taken");
    assert_eq!(checksums(&db), before, "production unchanged");
    assert_eq!(
        db.admin("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()")
            .trim(),
        "4"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_share_reads_and_take_turns_to_write() {
    init_tracing();
    let db = TestDatabase::new();
    db.admin("CREATE TABLE t (id INT PRIMARY KEY AUTO_INCREMENT, val VARCHAR(50)) ENGINE=InnoDB");
    let pki = Pki::new();
    let (relay, _proxy) = relay_with_dbproxy(&pki, |c| c.write_turn_timeout_ms = 800).await;
    let dev = developer_with_mysql(&relay, &pki, "alice").await;
    let mut a = mysql_conn(dev.mysql.unwrap(), &db.name).await;
    let mut b = mysql_conn(dev.mysql.unwrap(), &db.name).await;
    // A pool of autocommit-off connections that only read never blocks.
    for c in [&mut a, &mut b] {
        c.query_drop("SET autocommit = 0").await.unwrap();
        let n: Option<i64> = c.query_first("SELECT COUNT(*) FROM t").await.unwrap();
        assert_eq!(n, Some(0));
    }
    a.query_drop("INSERT INTO t(val) VALUES ('from a')")
        .await
        .unwrap();
    // B reads A's uncommitted work (one session, one transaction: documented)…
    assert_eq!(vals(&mut b, "t").await, ["from a"]);
    // …but B's write waits for A's transaction, which has written, to end.
    let b_write = tokio::spawn(async move {
        let r = b.query_drop("INSERT INTO t(val) VALUES ('from b')").await;
        (b, r)
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !b_write.is_finished(),
        "B's write went ahead of A's open transaction"
    );
    a.query_drop("COMMIT").await.unwrap();
    let (mut b, r) = b_write.await.unwrap();
    r.unwrap();
    // B's rollback undoes B's work only.
    b.query_drop("ROLLBACK").await.unwrap();
    assert_eq!(vals(&mut a, "t").await, ["from a"]);

    // A write that waits too long gets a clear error instead of hanging.
    a.query_drop("UPDATE t SET val = 'held'").await.unwrap();
    let (code, _, message) = server_error(b.query_drop("DELETE FROM t").await.unwrap_err());
    assert_eq!(code, 1205, "{message}");
    assert!(message.contains("waited 800 ms"), "{message}");
    a.query_drop("ROLLBACK").await.unwrap();
    b.query_drop("DELETE FROM t").await.unwrap();
    assert!(vals(&mut a, "t").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_with_production_resets_the_session_loudly() {
    init_tracing();
    let db = TestDatabase::new();
    db.admin(
        "CREATE TABLE t (id INT PRIMARY KEY, val INT) ENGINE=InnoDB; INSERT INTO t VALUES (1, 0), (2, 0);
         CREATE TABLE heavy (id INT PRIMARY KEY, v INT) ENGINE=InnoDB;
         INSERT INTO heavy SELECT seq, 0 FROM seq_1_to_200",
    );
    let pki = Pki::new();
    let (relay, _proxy) = relay_with_dbproxy(&pki, |c| c.statement_timeout_ms = 20_000).await;
    let dev = developer_with_mysql(&relay, &pki, "alice").await;
    let mut app = mysql_conn(dev.mysql.unwrap(), &db.name).await;
    let mut prod = production_conn(&db.name).await;

    // Production holds more undo (200 rows), so InnoDB picks the developer as the victim.
    prod.query_drop("START TRANSACTION").await.unwrap();
    prod.query_drop("UPDATE heavy SET v = v + 1").await.unwrap();
    app.query_drop("UPDATE t SET val = 1 WHERE id = 1")
        .await
        .unwrap();
    prod.query_drop("UPDATE t SET val = 2 WHERE id = 2")
        .await
        .unwrap();
    let dev_wait = tokio::spawn(async move {
        let r = app.query_drop("UPDATE t SET val = 1 WHERE id = 2").await;
        (app, r)
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let prod_result = prod.query_drop("UPDATE t SET val = 2 WHERE id = 1").await;
    let (mut app, dev_result) = dev_wait.await.unwrap();
    assert!(
        prod_result.is_ok(),
        "production should win: {prod_result:?}"
    );
    let (code, _, _) = server_error(dev_result.unwrap_err());
    assert_eq!(
        code, 1213,
        "the developer's statement is the deadlock victim"
    );
    prod.query_drop("ROLLBACK").await.unwrap();

    // Never a silent autocommit: the next statement is told the session was reset.
    let (code, _, message) = server_error(app.query_drop("SELECT 1").await.unwrap_err());
    assert_eq!(code, 1317);
    assert!(message.contains("reset this database session"), "{message}");
    // Then a fresh session serves it, inside a transaction again.
    let in_tx: Option<i64> = app.query_first(SESSION_IN_TRANSACTION).await.unwrap();
    assert_eq!(in_tx, Some(1));
    assert_eq!(
        db.admin("SELECT val FROM t ORDER BY id")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["0", "0"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mariadb_command_line_client_works_through_the_tunnel() {
    init_tracing();
    let db = TestDatabase::new();
    db.admin("CREATE TABLE t (id INT PRIMARY KEY, val VARCHAR(50)) ENGINE=InnoDB; INSERT INTO t VALUES (1, 'prod')");
    let pki = Pki::new();
    let (relay, _proxy) = relay_with_dbproxy(&pki, |_| {}).await;
    let dev = developer_with_mysql(&relay, &pki, "alice").await;
    let addr = dev.mysql.unwrap();
    let name = db.name.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("mariadb")
            .args(["-uanyone", "-h127.0.0.1", &format!("-P{}", addr.port()), "-N", "-B", &name])
            .args(["-e", "BEGIN; UPDATE t SET val = 'dev' WHERE id = 1; COMMIT; SELECT val FROM t; SELECT @@in_transaction + 0;"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "dev\n1\n");
    assert_eq!(db.admin("SELECT val FROM t").trim(), "prod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_work_through_the_tunnel_with_the_same_policy() {
    init_tracing();
    let db = TestDatabase::new();
    db.admin("CREATE TABLE t (id INT PRIMARY KEY AUTO_INCREMENT, val VARCHAR(50), n DOUBLE) ENGINE=InnoDB; INSERT INTO t(val, n) VALUES ('prod', 1.5)");
    let before = checksum(&db, "t");
    let pki = Pki::new();
    let (relay, _proxy) = relay_with_dbproxy(&pki, |_| {}).await;
    let dev = developer_with_mysql(&relay, &pki, "alice").await;
    let mut a = mysql_conn(dev.mysql.unwrap(), &db.name).await;
    let mut b = mysql_conn(dev.mysql.unwrap(), &db.name).await;

    // Binary protocol both ways: parameters in, typed rows out.
    // Transaction control may be prepared too (sysbench does): emulated like its text form.
    a.exec_drop("BEGIN", ()).await.unwrap();
    a.exec_drop("INSERT INTO t(val, n) VALUES (?, ?)", ("dev", 2.25))
        .await
        .unwrap();
    let rows: Vec<(i64, String, f64)> = a
        .exec("SELECT id, val, n FROM t WHERE n > ? ORDER BY id", (0.0,))
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![(1, "prod".to_owned(), 1.5), (2, "dev".to_owned(), 2.25)]
    );
    a.exec_drop("ROLLBACK", ()).await.unwrap();
    let rows: Vec<String> = b.exec("SELECT val FROM t ORDER BY id", ()).await.unwrap();
    assert_eq!(
        rows,
        ["prod"],
        "the prepared ROLLBACK undid the prepared INSERT"
    );

    // Each connection's statement ids are its own; both can prepare and run in turn.
    for i in 0..5 {
        let stmt_a = a.prep("SELECT ? + 1").await.unwrap();
        let stmt_b = b.prep("SELECT ? * 2").await.unwrap();
        let x: Option<i64> = a.exec_first(&stmt_a, (i,)).await.unwrap();
        let y: Option<i64> = b.exec_first(&stmt_b, (i,)).await.unwrap();
        assert_eq!((x, y), (Some(i + 1), Some(i * 2)));
        a.close(stmt_a).await.unwrap();
    }

    // The policy applies at prepare time.
    let (code, _, message) = server_error(a.prep("DROP TABLE t").await.unwrap_err());
    assert_eq!(code, 1227, "{message}");
    let (code, _, message) = server_error(a.prep("SELECT GET_LOCK(?, 1)").await.unwrap_err());
    assert_eq!(code, 1227, "{message}");
    assert_eq!(checksum(&db, "t"), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sysbench_oltp_read_write_runs_through_the_tunnel_without_errors_or_traces() {
    init_tracing();
    let db = TestDatabase::new();
    let server = tests::mariadb::server();
    let sysbench = |args: Vec<String>| {
        std::process::Command::new("sysbench")
            .args(args)
            .output()
            .expect("sysbench is required (apt-get install -y sysbench; .ci/run installs it)")
    };
    let common = |host: &str, port: u16, user: &str, password: &str| {
        vec![
            "oltp_read_write".to_owned(),
            format!("--mysql-host={host}"),
            format!("--mysql-port={port}"),
            format!("--mysql-user={user}"),
            format!("--mysql-password={password}"),
            format!("--mysql-db={}", db.name),
            "--tables=2".into(),
            "--table-size=500".into(),
        ]
    };
    // The table set is prepared directly (that is DDL, which sessions may not run).
    let mut prepare = common(&server.host, server.port, &server.user, &server.password);
    prepare.push("prepare".into());
    let out = tokio::task::spawn_blocking(move || sysbench(prepare))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = db.admin("CHECKSUM TABLE sbtest1, sbtest2");

    let pki = Pki::new();
    let (relay, _proxy) = relay_with_dbproxy(&pki, |_| {}).await;
    let dev = developer_with_mysql(&relay, &pki, "bench").await;
    let mut run = common("127.0.0.1", dev.mysql.unwrap().port(), "dev", "any");
    run.extend([
        "--threads=2".into(),
        "--time=3".into(),
        "--report-interval=0".into(),
        "run".into(),
    ]);
    let out = tokio::task::spawn_blocking(move || sysbench(run))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let transactions: u64 = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("transactions:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(transactions > 0, "{stdout}");
    assert!(
        stdout.contains("ignored errors:                      0"),
        "{stdout}"
    );
    assert_eq!(
        db.admin("CHECKSUM TABLE sbtest1, sbtest2"),
        before,
        "production unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_keeps_its_own_settings_and_reset_or_change_user_are_emulated() {
    init_tracing();
    let db = TestDatabase::new();
    let other = TestDatabase::new();
    db.admin("CREATE TABLE t (id INT PRIMARY KEY AUTO_INCREMENT, val VARCHAR(50)) ENGINE=InnoDB");
    let pki = Pki::new();
    let (relay, _proxy) = relay_with_dbproxy(&pki, |_| {}).await;
    let dev = developer_with_mysql(&relay, &pki, "alice").await;
    let mut a = mysql_conn(dev.mysql.unwrap(), &db.name).await;
    let mut b = mysql_conn(dev.mysql.unwrap(), &db.name).await;
    let default_tz: Option<String> = b.query_first("SELECT @@time_zone").await.unwrap();

    // Session variables belong to the connection that set them, though the upstream is shared.
    a.query_drop("SET time_zone = '+05:00', sql_mode = 'PAD_CHAR_TO_FULL_LENGTH'")
        .await
        .unwrap();
    for _ in 0..3 {
        let tz_a: Option<String> = a.query_first("SELECT @@time_zone").await.unwrap();
        let tz_b: Option<String> = b.query_first("SELECT @@time_zone").await.unwrap();
        assert_eq!(tz_a.as_deref(), Some("+05:00"));
        assert_eq!(tz_b, default_tz);
        let mode_b: Option<String> = b.query_first("SELECT @@sql_mode").await.unwrap();
        assert!(!mode_b
            .unwrap_or_default()
            .contains("PAD_CHAR_TO_FULL_LENGTH"));
    }

    // COM_RESET_CONNECTION: A's open transaction and settings go; the session stays.
    b.query_drop("INSERT INTO t(val) VALUES ('b kept')")
        .await
        .unwrap();
    a.query_drop("BEGIN").await.unwrap();
    a.query_drop("INSERT INTO t(val) VALUES ('a undone')")
        .await
        .unwrap();
    a.reset().await.unwrap();
    let tz_a: Option<String> = a.query_first("SELECT @@time_zone").await.unwrap();
    assert_eq!(tz_a, default_tz);
    assert_eq!(vals(&mut b, "t").await, ["b kept"]);
    let in_tx: Option<i64> = a.query_first(SESSION_IN_TRANSACTION).await.unwrap();
    assert_eq!(
        in_tx,
        Some(1),
        "the session's transaction survives an app connection's reset"
    );

    // COM_CHANGE_USER: also never forwarded; the new database applies to this connection only.
    a.query_drop("BEGIN").await.unwrap();
    a.query_drop("INSERT INTO t(val) VALUES ('a undone too')")
        .await
        .unwrap();
    let opts = mysql_async::ChangeUserOpts::default()
        .with_user(Some("someone-else".into()))
        .with_db_name(Some(other.name.clone()));
    a.change_user(opts).await.unwrap();
    let current: Option<String> = a.query_first("SELECT DATABASE()").await.unwrap();
    assert_eq!(current.as_deref(), Some(other.name.as_str()));
    let current_b: Option<String> = b.query_first("SELECT DATABASE()").await.unwrap();
    assert_eq!(current_b.as_deref(), Some(db.name.as_str()));
    assert_eq!(vals(&mut b, "t").await, ["b kept"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_status_reports_the_session_and_db_reset_rolls_it_back_loudly() {
    init_tracing();
    let db = TestDatabase::new();
    db.admin("CREATE TABLE t (id INT PRIMARY KEY AUTO_INCREMENT, val VARCHAR(50)) ENGINE=InnoDB");
    let pki = Pki::new();
    let (relay, _proxy) = relay_with_dbproxy(&pki, |_| {}).await;
    let dev = developer_with_mysql(&relay, &pki, "alice").await;
    let listener = dev.mysql.unwrap().to_string();
    let mut app = mysql_conn(dev.mysql.unwrap(), &db.name).await;
    app.query_drop("INSERT INTO t(val) VALUES ('to be reset')")
        .await
        .unwrap();

    let row: Option<(String, u64, u64, String, u64)> =
        app.query_first("DEVINPROD STATUS").await.unwrap();
    let (key, _age, statements, holds_writes, connections) = row.unwrap();
    assert_eq!(key, dev.routing_key);
    assert!(statements >= 1);
    assert_eq!(holds_writes, "yes");
    assert_eq!(connections, 1);
    // What `devinprod db status` runs.
    assert_eq!(client::commands::db::status(&listener).await.unwrap(), 0);

    // `devinprod db reset`: everything is rolled back; the app is told, then goes on.
    assert_eq!(client::commands::db::reset(&listener).await.unwrap(), 0);
    let (code, _, message) = server_error(app.query_drop("SELECT 1").await.unwrap_err());
    assert_eq!(code, 1317);
    assert!(message.contains("devinprod db reset"), "{message}");
    assert!(vals(&mut app, "t").await.is_empty());
    let row: Option<(String, u64, u64, String, u64)> =
        app.query_first("DEVINPROD STATUS").await.unwrap();
    assert_eq!(row.unwrap().3, "no");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_packets_last_insert_ids_and_reconnects_behave_as_on_a_real_server() {
    init_tracing();
    let db = TestDatabase::new();
    db.admin("CREATE TABLE t (id INT PRIMARY KEY AUTO_INCREMENT, val LONGTEXT) ENGINE=InnoDB");
    let max: u64 = db
        .admin("SELECT @@max_allowed_packet")
        .trim()
        .parse()
        .unwrap();
    assert!(
        max >= 40 << 20,
        "this test needs max_allowed_packet >= 40M on the server (the private one has 64M)"
    );
    let pki = Pki::new();
    let (relay, _proxy) = relay_with_dbproxy(&pki, |_| {}).await;
    let token = relay.issue_token("alice");
    let mut config = tests::TestClient::agent_config(
        relay.addr,
        &pki.ca(),
        token.clone(),
        "127.0.0.1:9".parse().unwrap(),
    );
    config.mysql_listen = Some("127.0.0.1:0".parse().unwrap());
    let mut first = tests::TestClient::spawn(config.clone());
    first.wait_connected().await;
    let mut a = mysql_conn(first.mysql.unwrap(), &db.name).await;
    let mut b = mysql_conn(first.mysql.unwrap(), &db.name).await;

    // Packets over 16 MB, both ways (split into several MySQL chunks).
    let big = "x".repeat(17 << 20);
    a.exec_drop("INSERT INTO t(val) VALUES (?)", (big.clone(),))
        .await
        .unwrap();
    let id_a: Option<u64> = a.query_first("SELECT LAST_INSERT_ID()").await.unwrap();
    let back: Option<String> = a
        .query_first("SELECT val FROM t WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(back.map(|v| v.len()), Some(big.len()));

    // LAST_INSERT_ID() is per connection, though the upstream is shared.
    b.query_drop("INSERT INTO t(val) VALUES ('small')")
        .await
        .unwrap();
    let id_b: Option<u64> = b.query_first("SELECT LAST_INSERT_ID()").await.unwrap();
    let id_a_again: Option<u64> = a.query_first("SELECT LAST_INSERT_ID()").await.unwrap();
    assert_eq!((id_a, id_b, id_a_again), (Some(1), Some(2), Some(1)));

    // The session survives the developer's client going away and coming back (grace period).
    drop((a, b));
    first.shutdown().await;
    let mut second = tests::TestClient::spawn(config);
    second.wait_connected().await;
    let mut c = mysql_conn(second.mysql.unwrap(), &db.name).await;
    let n: Option<i64> = c.query_first("SELECT COUNT(*) FROM t").await.unwrap();
    assert_eq!(n, Some(2), "the session's uncommitted rows are still there");
    assert_eq!(
        db.admin("SELECT COUNT(*) FROM t").trim(),
        "0",
        "and production still has none"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn developer_credentials_are_checked_when_the_operator_sets_them() {
    init_tracing();
    let db = TestDatabase::new();
    let pki = Pki::new();
    let (relay, _proxy) = relay_with_dbproxy(&pki, |c| {
        c.app_user = Some("app".into());
        c.app_password = Some("s3cret".into());
    })
    .await;
    let dev = developer_with_mysql(&relay, &pki, "alice").await;
    let addr = dev.mysql.unwrap();
    let opts = |user: &str, pass: &str| {
        mysql_async::OptsBuilder::default()
            .ip_or_hostname(addr.ip().to_string())
            .tcp_port(addr.port())
            .user(Some(user))
            .pass(Some(pass))
            .db_name(Some(db.name.clone()))
            .prefer_socket(false)
    };
    let (code, state, message) = server_error(
        mysql_async::Conn::new(opts("app", "wrong"))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, state.as_str()), (1045, "28000"), "{message}");
    let mut ok = mysql_async::Conn::new(opts("app", "s3cret")).await.unwrap();
    let one: Option<i64> = ok.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_statement_is_stopped_by_the_session_time_limit_and_the_session_survives() {
    init_tracing();
    let db = TestDatabase::new();
    db.admin("CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB");
    let pki = Pki::new();
    let (relay, _proxy) = relay_with_dbproxy(&pki, |c| c.statement_timeout_ms = 500).await;
    let dev = developer_with_mysql(&relay, &pki, "alice").await;
    let mut app = mysql_conn(dev.mysql.unwrap(), &db.name).await;
    app.query_drop("INSERT INTO t VALUES (1)").await.unwrap();
    let started = std::time::Instant::now();
    let r: Result<Option<i64>, _> = app.query_first("SELECT SLEEP(30)").await;
    // MariaDB either fails the statement (1969) or interrupts SLEEP and returns 1.
    match r {
        Ok(v) => assert_eq!(v, Some(1)),
        Err(e) => assert_eq!(server_error(e).0, 1969),
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "the time limit did not apply"
    );
    let n: Option<i64> = app.query_first("SELECT COUNT(*) FROM t").await.unwrap();
    assert_eq!(
        n,
        Some(1),
        "the session and its work survive a stopped statement"
    );
}

/// The attacks an adversarial review found (each one worked before its fix); all must now be
/// refused or emulated, and production stays unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_bypasses_of_the_policy_stay_closed() {
    init_tracing();
    let db = TestDatabase::new();
    let other = TestDatabase::new();
    db.admin(
        "CREATE TABLE t (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(50)) ENGINE=InnoDB;
         CREATE TABLE m (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(50)) ENGINE=MyISAM;
         CREATE TABLE m2 (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(50)) ENGINE=MyISAM;
         CREATE TABLE AUDIT2 (id INT) ENGINE=MyISAM;
         CREATE TABLE Audit (id INT) ENGINE=InnoDB;
         CREATE TABLE audit (id INT) ENGINE=MyISAM;
         DELIMITER //
         CREATE FUNCTION wf(x VARCHAR(50)) RETURNS INT MODIFIES SQL DATA BEGIN INSERT INTO m(v) VALUES (x); RETURN 1; END //
         DELIMITER ;
         CREATE VIEW vw AS SELECT wf('via view') AS r",
    );
    other.admin("CREATE TABLE only_b (id INT) ENGINE=MyISAM");
    let tables = ["t", "m", "m2", "AUDIT2", "Audit", "audit"];
    let checksums = |db: &TestDatabase| tables.map(|t| checksum(db, t));
    let before = checksums(&db);
    let before_b = checksum(&other, "only_b");
    let pki = Pki::new();
    let (relay, _proxy) = relay_with_dbproxy(&pki, |_| {}).await;
    let dev = developer_with_mysql(&relay, &pki, "mallory").await;
    let mut a = mysql_conn(dev.mysql.unwrap(), &db.name).await;
    let refused = |r: Result<(), mysql_async::Error>, what: &str| {
        let (code, _, message) = server_error(r.unwrap_err());
        assert!(code == 1227 || code == 1305, "{what}: {code} {message}");
        message
    };

    // 1. Settings under which the server would read quotes differently than the policy.
    refused(
        a.query_drop("SET sql_mode='NO_BACKSLASH_ESCAPES'").await,
        "NO_BACKSLASH_ESCAPES",
    );
    refused(a.query_drop("SET NAMES gbk").await, "gbk");
    // 2. Settings that would blind the catalog checks.
    refused(
        a.query_drop("SET sql_select_limit = 0").await,
        "sql_select_limit",
    );
    refused(
        a.query_drop("INSERT INTO m(v) VALUES ('x')").await,
        "MyISAM write",
    );
    // 3. Another connection's USE must not move this one's database.
    a.query_drop("SELECT 1").await.unwrap();
    let mut b = mysql_conn(dev.mysql.unwrap(), &other.name).await;
    let msg = refused(
        a.query_drop("INSERT INTO only_b VALUES (42)").await,
        "only_b",
    );
    assert!(msg.contains("no such table"), "{msg}");
    let current: Option<String> = a.query_first("SELECT DATABASE()").await.unwrap();
    assert_eq!(current.as_deref(), Some(db.name.as_str()));
    // 4. Temporary tables exempt only themselves.
    a.query_drop(format!(
        "CREATE TEMPORARY TABLE {}.m (id INT, v VARCHAR(50))",
        other.name
    ))
    .await
    .unwrap();
    refused(
        a.query_drop("INSERT INTO m(v) VALUES ('x')").await,
        "temp elsewhere",
    );
    a.query_drop("CREATE TEMPORARY TABLE audit2 (id INT)")
        .await
        .unwrap();
    refused(
        a.query_drop("INSERT INTO AUDIT2 VALUES (1)").await,
        "case of a temp name",
    );
    a.query_drop("CREATE TEMPORARY TABLE m2 (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(50))")
        .await
        .unwrap();
    let stmt = a.prep("INSERT INTO m2(v) VALUES (?)").await.unwrap();
    a.exec_drop(&stmt, ("fine: the temporary table",))
        .await
        .unwrap();
    a.query_drop("DROP TEMPORARY TABLE m2").await.unwrap();
    refused(
        a.exec_drop(&stmt, ("now the real MyISAM m2",)).await,
        "prepared after drop",
    );
    // A DROP that fails on a second name still drops the first (MariaDB), so the name is no
    // longer a temporary table's. (Found by the masking review.)
    a.query_drop("CREATE TEMPORARY TABLE m2 (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(50))")
        .await
        .unwrap();
    a.query_drop("DROP TEMPORARY TABLE m2, no_such_table")
        .await
        .unwrap_err();
    refused(
        a.query_drop("INSERT INTO m2(v) VALUES ('after a failed drop')")
            .await,
        "temporary name after a DROP that failed",
    );
    // 5. Exact names: `audit` is the MyISAM one, whatever `Audit` is.
    refused(
        a.query_drop("INSERT INTO audit VALUES (7)").await,
        "case-insensitive lookup",
    );
    // 6. Stored functions however they are reached.
    refused(
        a.query_drop("SELECT * FROM vw").await,
        "view calling a function",
    );
    refused(
        a.query_drop("SET @x = wf('x')").await,
        "SET calling a function",
    );
    refused(
        a.query_drop("CREATE TEMPORARY TABLE tt AS SELECT wf('x') AS r")
            .await,
        "CREATE AS SELECT",
    );
    // 7. One connection's savepoints cannot undo another's work.
    a.query_drop("BEGIN").await.unwrap();
    a.query_drop("INSERT INTO t(v) VALUES ('A1')")
        .await
        .unwrap();
    b.query_drop(format!("USE {}", db.name)).await.unwrap();
    b.query_drop("SAVEPOINT s").await.unwrap();
    a.query_drop("INSERT INTO t(v) VALUES ('A2')")
        .await
        .unwrap();
    refused(
        b.query_drop("ROLLBACK TO SAVEPOINT s").await,
        "foreign savepoint",
    );
    a.query_drop("COMMIT").await.unwrap();
    assert_eq!(
        vals_col(&mut b, "SELECT v FROM t ORDER BY id").await,
        ["A1", "A2"]
    );

    assert_eq!(checksums(&db), before, "production unchanged");
    assert_eq!(checksum(&other, "only_b"), before_b);
}

async fn vals_col(conn: &mut mysql_async::Conn, sql: &str) -> Vec<String> {
    conn.query(sql).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_dbproxy_serves_sessions_through_the_relay_and_its_absence_is_explained() {
    init_tracing();
    let db = TestDatabase::new();
    db.admin("CREATE TABLE t (id INT PRIMARY KEY, val VARCHAR(20)) ENGINE=InnoDB; INSERT INTO t VALUES (1, 'prod')");
    let pki = Pki::new();
    let relay = tests::TestRelay::start(&pki).await;
    let dev = developer_with_mysql(&relay, &pki, "alice").await;
    let addr = dev.mysql.unwrap();

    // No dbproxy yet: the app is told why, as a MySQL error.
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(addr.ip().to_string())
        .tcp_port(addr.port())
        .user(Some("app"))
        .prefer_socket(false);
    let (code, _, message) = server_error(mysql_async::Conn::new(opts).await.unwrap_err());
    assert_eq!(code, 1227);
    assert!(
        message.contains("no database proxy is connected"),
        "{message}"
    );

    // An app connecting before the dbproxy does waits for it (`dbproxy_wait_ms`, 5 s): one
    // attempt, started first, succeeds once the dbproxy connects (`up` starts its dbproxy as a
    // child process, and apps start as soon as `connect` says Connected).
    let first_try = tokio::spawn({
        let opts = mysql_async::OptsBuilder::default()
            .ip_or_hostname(addr.ip().to_string())
            .tcp_port(addr.port())
            .user(Some("app"))
            .db_name(Some(db.name.clone()))
            .prefer_socket(false);
        async move { mysql_async::Conn::new(opts).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    // A dbproxy process of its own (here its library, over real QUIC with its role cert).
    let file = dbproxy::DbProxyFileConfig {
        upstream: Some(tests::mariadb::server().url.clone().into()),
        state_dir: pki.path().to_owned(),
        ..Default::default()
    };
    let proxy = dbproxy::DbProxy::new(file.check().unwrap());
    let relay_addr = relay.addr.to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let peer = tokio::spawn(async move {
        dbproxy::peer::run(proxy, &file, &relay_addr, async {
            let _ = stopped.await;
        })
        .await
    });
    let mut app = first_try
        .await
        .unwrap()
        .expect("the app connection that waited for the dbproxy");
    app.query_drop("UPDATE t SET val = 'dev' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(vals(&mut app, "t").await, ["dev"]);
    assert_eq!(db.admin("SELECT val FROM t").trim(), "prod");
    let _ = stop.send(());
    let _ = tokio::time::timeout(tests::WAIT, peer).await;
}
