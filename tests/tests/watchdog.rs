//! The lock watchdog against a real MariaDB: a developer session that makes a production
//! connection wait on its locks longer than the bound is rolled back, and told why; a developer
//! waiting on production, or on another developer, is not.

use mysql_async::prelude::*;
use std::time::{Duration, Instant};
use tests::mariadb::TestDatabase;
use tests::{
    developer_with_mysql, init_tracing, mysql_conn, production_conn, relay_with_dbproxy, Pki,
    TestClient, WAIT,
};

/// The watchdog's settings in these tests.
const INTERVAL_MS: u64 = 100;
const BOUND_MS: u64 = 500;
/// Production's own lock timeouts: far longer than the watchdog needs.
const PRODUCTION_LOCK_TIMEOUT_SECS: u64 = 30;

fn fast_watchdog(c: &mut dbproxy::DbProxyFileConfig) {
    c.watchdog_interval_ms = INTERVAL_MS;
    c.lock_wait_bound_ms = BOUND_MS;
}

fn server_error(e: mysql_async::Error) -> (u16, String) {
    match e {
        mysql_async::Error::Server(s) => (s.code, s.message),
        other => panic!("expected a server error, got {other}"),
    }
}

async fn table_with_a_row(db: &TestDatabase) {
    db.admin(
        "CREATE TABLE t (id INT PRIMARY KEY, val VARCHAR(50)) ENGINE=InnoDB; \
         INSERT INTO t VALUES (1, 'prod'), (2, 'other')",
    );
}

/// Production's connection, with lock timeouts far beyond the watchdog's bound.
async fn patient_production(db: &TestDatabase) -> mysql_async::Conn {
    let mut prod = tokio::time::timeout(WAIT, production_conn(&db.name))
        .await
        .expect("production connect timed out");
    prod.query_drop(format!(
        "SET SESSION innodb_lock_wait_timeout = {PRODUCTION_LOCK_TIMEOUT_SECS}, \
         SESSION lock_wait_timeout = {PRODUCTION_LOCK_TIMEOUT_SECS}"
    ))
    .await
    .unwrap();
    prod
}

fn session_of(
    proxy: &dbproxy::DbProxy,
    dev: &TestClient,
) -> std::sync::Arc<dbproxy::session::Session> {
    proxy.session(&proto::RoutingKey::parse(&dev.routing_key).unwrap())
}

/// Runs `sql` on production and returns how long it took; it must finish well within
/// production's own lock timeout (the watchdog freed it).
async fn timed_production(prod: &mut mysql_async::Conn, sql: &str) -> Duration {
    let started = Instant::now();
    tokio::time::timeout(WAIT, prod.query_drop(sql))
        .await
        .unwrap_or_else(|_| panic!("production's `{sql}` was still blocked after {WAIT:?}"))
        .unwrap_or_else(|e| panic!("production's `{sql}` failed: {e}"));
    let took = started.elapsed();
    println!("production's `{sql}` waited {took:?} (bound {BOUND_MS} ms, watchdog every {INTERVAL_MS} ms)");
    assert!(
        took >= Duration::from_millis(BOUND_MS),
        "it was not blocked at all ({took:?}): the test did not test anything"
    );
    assert!(
        took < Duration::from_secs(PRODUCTION_LOCK_TIMEOUT_SECS),
        "freed only by its own timeout ({took:?})"
    );
    took
}

fn assert_protected(e: mysql_async::Error, lock: &str) {
    let (code, message) = server_error(e);
    assert_eq!(code, 1317, "{message}");
    assert!(message.contains("to protect production"), "{message}");
    assert!(message.contains(lock), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_developer_row_lock_that_blocks_production_is_rolled_back_and_the_developer_told_why() {
    init_tracing();
    let db = TestDatabase::new();
    table_with_a_row(&db).await;
    let pki = Pki::new();
    let audit_file = pki.path().join("audit.log");
    let (relay, _proxy) = relay_with_dbproxy(&pki, |c| {
        fast_watchdog(c);
        c.audit.path = Some(audit_file.clone());
    })
    .await;
    let dev = developer_with_mysql(&relay, &pki, "alice").await;
    let mut app = mysql_conn(dev.mysql.unwrap(), &db.name).await;
    let mut prod = patient_production(&db).await;

    // The developer's write holds the row lock in the session's open transaction; then idles.
    app.query_drop("UPDATE t SET val = 'dev' WHERE id = 1")
        .await
        .unwrap();
    let took = timed_production(&mut prod, "UPDATE t SET val = 'prod2' WHERE id = 1").await;
    assert!(
        took < Duration::from_millis(BOUND_MS + 20 * INTERVAL_MS),
        "freed {took:?} after it began to wait"
    );

    // The developer's next statement is told, then a new session begins.
    let e = tokio::time::timeout(WAIT, app.query_drop("SELECT val FROM t WHERE id = 1"))
        .await
        .expect("developer statement timed out")
        .unwrap_err();
    assert_protected(e, "row lock");
    let val: Option<String> = app
        .query_first("SELECT val FROM t WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(
        val.as_deref(),
        Some("prod2"),
        "the new session sees production"
    );
    let val: Option<String> = prod
        .query_first("SELECT val FROM t WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(
        val.as_deref(),
        Some("prod2"),
        "production keeps its own value"
    );
    assert_eq!(db.admin("SELECT val FROM t WHERE id = 1").trim(), "prod2");

    // The kill is audited: why, in terms of the production statement's kind and tables only.
    let audit = std::fs::read_to_string(&audit_file).unwrap();
    let killed: serde_json::Value = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["decision"] == "killed")
        .unwrap_or_else(|| panic!("no audit line for the kill: {audit}"));
    assert_eq!(killed["routing_key"], dev.routing_key.as_str());
    assert_eq!(killed["command"], "watchdog");
    assert!(killed["upstream_sql"]
        .as_str()
        .unwrap()
        .starts_with("KILL CONNECTION "));
    let why = killed["reason"].as_str().unwrap();
    assert!(why.contains("row lock"), "{why}");
    assert!(
        !audit.contains("prod2"),
        "production values stay out of the audit log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_developer_statement_running_when_its_session_is_rolled_back_gets_the_reason() {
    init_tracing();
    let db = TestDatabase::new();
    table_with_a_row(&db).await;
    let pki = Pki::new();
    let (relay, _proxy) = relay_with_dbproxy(&pki, fast_watchdog).await;
    let dev = developer_with_mysql(&relay, &pki, "alice").await;
    let mut app = mysql_conn(dev.mysql.unwrap(), &db.name).await;
    let mut prod = patient_production(&db).await;

    app.query_drop("UPDATE t SET val = 'dev' WHERE id = 1")
        .await
        .unwrap();
    // A long statement of the session is running when the watchdog acts.
    let running = tokio::spawn(async move {
        let r = app.query_drop("SELECT SLEEP(10)").await;
        (r, app)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    timed_production(&mut prod, "UPDATE t SET val = 'prod2' WHERE id = 1").await;
    let (r, mut app) = tokio::time::timeout(WAIT, running)
        .await
        .expect("the running statement did not end")
        .unwrap();
    assert_protected(r.unwrap_err(), "row lock");
    let val: Option<String> = app
        .query_first("SELECT val FROM t WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(val.as_deref(), Some("prod2"));
    assert_eq!(db.admin("SELECT val FROM t WHERE id = 1").trim(), "prod2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_production_alter_queued_behind_a_developer_metadata_lock_is_unblocked() {
    init_tracing();
    let db = TestDatabase::new();
    table_with_a_row(&db).await;
    let pki = Pki::new();
    let (relay, _proxy) = relay_with_dbproxy(&pki, fast_watchdog).await;
    let dev = developer_with_mysql(&relay, &pki, "alice").await;
    let mut app = mysql_conn(dev.mysql.unwrap(), &db.name).await;
    let mut prod = patient_production(&db).await;

    // A read inside the session's open transaction holds the table's metadata lock until the
    // transaction ends, which is never.
    let rows: Vec<(i32, String)> = app.query("SELECT id, val FROM t").await.unwrap();
    assert_eq!(rows.len(), 2);
    timed_production(&mut prod, "ALTER TABLE t ADD COLUMN extra INT").await;

    let e = tokio::time::timeout(WAIT, app.query_drop("SELECT val FROM t WHERE id = 1"))
        .await
        .expect("developer statement timed out")
        .unwrap_err();
    assert_protected(e, "metadata lock");
    // The new session sees the new column.
    let extra: Option<Option<i32>> = app
        .query_first("SELECT extra FROM t WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(extra, Some(None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_developer_waiting_on_production_or_on_another_developer_is_not_rolled_back() {
    init_tracing();
    let db = TestDatabase::new();
    table_with_a_row(&db).await;
    let pki = Pki::new();
    let (relay, proxy) = relay_with_dbproxy(&pki, fast_watchdog).await;
    let alice = developer_with_mysql(&relay, &pki, "alice").await;
    let bob = developer_with_mysql(&relay, &pki, "bob").await;
    let mut a = mysql_conn(alice.mysql.unwrap(), &db.name).await;
    let mut b = mysql_conn(bob.mysql.unwrap(), &db.name).await;
    let mut prod = patient_production(&db).await;

    // 1. Production holds a row lock; alice waits on it well past the bound.
    prod.query_drop("BEGIN").await.unwrap();
    prod.query_drop("UPDATE t SET val = 'prod-locked' WHERE id = 1")
        .await
        .unwrap();
    a.query_drop("SELECT 1").await.unwrap();
    let alice_session = session_of(&proxy, &alice);
    let alice_thread = alice_session
        .upstream_thread_id()
        .expect("alice's upstream");
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let r = a
            .query_drop("UPDATE t SET val = 'alice' WHERE id = 1")
            .await;
        (r, started.elapsed(), a)
    });
    tokio::time::sleep(Duration::from_millis(BOUND_MS + 10 * INTERVAL_MS)).await;
    assert!(
        !waiting.is_finished(),
        "alice's write should still be waiting"
    );
    prod.query_drop("COMMIT").await.unwrap();
    let (r, waited, mut a) = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
    r.expect("alice's write goes ahead once production commits");
    println!("alice (developer) waited {waited:?} on production's lock and was not rolled back");
    assert_eq!(
        alice_session.upstream_thread_id(),
        Some(alice_thread),
        "alice's session kept its upstream"
    );
    let val: Option<String> = a
        .query_first("SELECT val FROM t WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(
        val.as_deref(),
        Some("alice"),
        "alice's session kept its work"
    );

    // 2. Alice (a developer) now holds the row lock; bob (another developer) waits on it. The
    //    watchdog leaves both alone: bob's own lock timeout ends his wait.
    b.query_drop("SET innodb_lock_wait_timeout = 3")
        .await
        .unwrap();
    let started = Instant::now();
    let r = tokio::time::timeout(WAIT, b.query_drop("UPDATE t SET val = 'bob' WHERE id = 1"))
        .await
        .expect("bob's write did not end");
    let waited = started.elapsed();
    println!("bob (developer) waited {waited:?} on alice's lock; neither was rolled back");
    let (code, message) = server_error(r.unwrap_err());
    assert_eq!(code, 1205, "bob's own lock wait timeout: {message}");
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
    assert_eq!(alice_session.upstream_thread_id(), Some(alice_thread));
    let val: Option<String> = a
        .query_first("SELECT val FROM t WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(
        val.as_deref(),
        Some("alice"),
        "alice's session still has its work"
    );
    let val: Option<String> = b
        .query_first("SELECT val FROM t WHERE id = 2")
        .await
        .unwrap();
    assert_eq!(val.as_deref(), Some("other"), "bob's session goes on");

    // Production never saw either developer's write.
    assert_eq!(
        db.admin("SELECT val FROM t WHERE id = 1").trim(),
        "prod-locked"
    );
}

/// A database user for the dbproxy with only the documented grants; dropped at the end.
struct MinimalUser {
    name: String,
}

impl Drop for MinimalUser {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| {
            tests::mariadb::server().admin(&format!("DROP USER IF EXISTS '{}'@'%'", self.name))
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_grants_are_enough_for_the_watchdog_to_protect_production() {
    init_tracing();
    let db = TestDatabase::new();
    table_with_a_row(&db).await;
    // DML and temporary tables on the app's schema, PROCESS server-wide: no SUPER, no
    // CONNECTION ADMIN. The sessions and the watchdog run as this user; production does not.
    let user = MinimalUser {
        name: format!("{}_dbproxy", db.name),
    };
    let server = tests::mariadb::server();
    server.admin(&format!(
        "CREATE USER '{u}'@'%' IDENTIFIED BY 'pw'; \
         GRANT SELECT, INSERT, UPDATE, DELETE, CREATE TEMPORARY TABLES ON {db}.* TO '{u}'@'%'; \
         GRANT PROCESS ON *.* TO '{u}'@'%'",
        u = user.name,
        db = db.name
    ));
    let upstream = format!("mysql://{}:pw@{}:{}", user.name, server.host, server.port);
    let pki = Pki::new();
    let (relay, _proxy) = relay_with_dbproxy(&pki, |c| {
        fast_watchdog(c);
        c.upstream = Some(upstream.into());
    })
    .await;
    let dev = developer_with_mysql(&relay, &pki, "alice").await;
    let mut app = mysql_conn(dev.mysql.unwrap(), &db.name).await;
    let mut prod = patient_production(&db).await;

    app.query_drop("UPDATE t SET val = 'dev' WHERE id = 1")
        .await
        .unwrap();
    timed_production(&mut prod, "UPDATE t SET val = 'prod2' WHERE id = 1").await;
    let e = tokio::time::timeout(WAIT, app.query_drop("SELECT 1"))
        .await
        .expect("developer statement timed out")
        .unwrap_err();
    assert_protected(e, "row lock");
    assert_eq!(db.admin("SELECT val FROM t WHERE id = 1").trim(), "prod2");
}
