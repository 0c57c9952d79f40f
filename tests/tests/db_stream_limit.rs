//! A developer's connection carries at most `max_streams_per_developer` database streams at
//! once. An app connection beyond that is refused at once with the error a MySQL server sends
//! when it is full (1040), saying why — never left hanging — and the next one succeeds as soon
//! as another closes.

use mysql_async::prelude::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tests::mariadb::TestDatabase;
use tests::{
    developer_with_mysql, init_tracing, mysql_conn, relay_config_with_dbproxy, Pki, TestRelay,
};

/// A refusal must come well within this; a hang is what the test guards against.
const PROMPT: Duration = Duration::from_secs(5);

fn opts(addr: SocketAddr, db: &str) -> mysql_async::Opts {
    mysql_async::OptsBuilder::default()
        .ip_or_hostname(addr.ip().to_string())
        .tcp_port(addr.port())
        .user(Some("app"))
        .pass(Some("whatever"))
        .db_name(Some(db))
        .prefer_socket(false)
        .into()
}

/// Opens one connection too many and checks it is refused promptly with 1040, naming the limit.
async fn assert_refused_as_too_many(addr: SocketAddr, db: &str, limit: u32) {
    let started = Instant::now();
    let attempt = tokio::time::timeout(PROMPT, mysql_async::Conn::new(opts(addr, db)))
        .await
        .expect("the connection beyond the limit hung instead of being refused");
    let err = match attempt {
        Ok(_) => panic!("the connection beyond the limit of {limit} was accepted"),
        Err(mysql_async::Error::Server(e)) => e,
        Err(other) => panic!("expected a MySQL error packet, got {other}"),
    };
    assert_eq!(err.code, 1040, "{err:?}");
    assert!(
        err.message
            .contains(&format!("{limit} concurrent database")),
        "the message says what the limit is: {}",
        err.message
    );
    assert!(started.elapsed() < PROMPT);
}

/// Connects, retrying while the freed stream makes its way back (bounded in count and time).
async fn connect_after_a_close(addr: SocketAddr, db: &str) -> mysql_async::Conn {
    let deadline = Instant::now() + PROMPT;
    for _ in 0..50 {
        match mysql_async::Conn::new(opts(addr, db)).await {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                tracing::info!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no connection after another closed: {e}"),
        }
    }
    panic!("no connection after another closed within 50 attempts")
}

async fn fill_refuse_and_reuse(limit: u32) {
    init_tracing();
    let db = TestDatabase::new();
    let pki = Pki::new();
    let mut config = TestRelay::config(&pki);
    config.max_streams_per_developer = limit;
    let (relay, _proxy) = relay_config_with_dbproxy(config, |_| {}).await;
    let dev = developer_with_mysql(&relay, &pki, "alice").await;
    let addr = dev.mysql.unwrap();

    let mut open = Vec::new();
    for _ in 0..limit {
        open.push(mysql_conn(addr, &db.name).await);
    }
    assert_refused_as_too_many(addr, &db.name, limit).await;
    // Still full: refused again, and the open connections still work.
    assert_refused_as_too_many(addr, &db.name, limit).await;
    let one: Option<i64> = open[0].query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));

    open.pop().unwrap().disconnect().await.unwrap();
    let mut again = connect_after_a_close(addr, &db.name).await;
    let two: Option<i64> = again.query_first("SELECT 2").await.unwrap();
    assert_eq!(two, Some(2));
    assert_refused_as_too_many(addr, &db.name, limit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_connection_beyond_the_stream_limit_gets_too_many_connections_at_once() {
    fill_refuse_and_reuse(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_129th_app_connection_at_the_default_limit_is_refused_not_left_hanging() {
    assert_eq!(relay::RelayConfig::default().max_streams_per_developer, 128);
    fill_refuse_and_reuse(128).await;
}
