//! Dead peers noticed in seconds (issue 15): a laptop that lost its network, or a relay that
//! died, is known gone to visitors in about three seconds — the silence bound — instead of the
//! thirty of the QUIC idle timeout. The processes are real `devinprod` processes, killed with
//! SIGKILL: nothing is said on the wire, as when a network disappears.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tests::apps::echo_app;
use tests::http_client::{get, Reply};
use tests::procs::{devinprod_binary, kill, KillOnDrop};
use tests::{init_tracing, Pki, TestClient, TestEdge, TestRelay};

/// Longest a visitor may wait for an answer once the peer is gone: the 3 s silence bound, a
/// sampling period, and slack for a loaded machine.
const ANSWER_WITHIN: Duration = Duration::from_secs(6);

/// Requests `host` until `done` accepts a reply, each request bounded by [`ANSWER_WITHIN`];
/// returns that reply.
async fn poll_until(edge: SocketAddr, host: &str, done: impl Fn(&Reply) -> bool) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let asked = Instant::now();
        let reply = tokio::time::timeout(ANSWER_WITHIN, get(edge, host, "/"))
            .await
            .unwrap_or_else(|_| panic!("a visitor waited more than {ANSWER_WITHIN:?}"));
        if done(&reply) {
            return reply;
        }
        assert!(Instant::now() < deadline, "never: last {}", reply.status);
        let spent = asked.elapsed();
        tokio::time::sleep(Duration::from_millis(200).saturating_sub(spent)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_developer_whose_laptop_vanished_is_offline_to_visitors_within_seconds() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let edge = TestEdge::in_process(&relay, None).await;
    let app = echo_app("laptop").await;
    let token = relay.issue_token("alice");
    let key = token.routing_key();
    let host = format!("www-{key}.example.com");
    let mut connect = Command::new(devinprod_binary())
        .args(["connect", "--quiet", "--relay", &relay.addr.to_string()])
        .arg("--ca")
        .arg(pki.ca())
        .args(["--http", &app.to_string(), "--token", token.expose()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(connect.id());
    poll_until(edge.addr, &host, |r| r.status == 200).await;

    kill(connect.id(), "KILL");
    let _ = connect.wait();
    let killed = Instant::now();
    let reply = poll_until(edge.addr, &host, |r| r.status == 502).await;
    let body = String::from_utf8_lossy(&reply.body);
    assert!(body.contains("Developer offline"), "{body}");
    assert!(
        killed.elapsed() < ANSWER_WITHIN,
        "offline only after {:?}",
        killed.elapsed()
    );
    // The connection itself is kept until the idle timeout: a laptop back from a Wi-Fi blip
    // carries on where it was.
    assert!(relay.relay.registry().get(&key).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_edge_tells_visitors_within_seconds_that_the_relay_is_gone() {
    init_tracing();
    let pki = Pki::new();
    let bin = devinprod_binary();
    let mut relay = Command::new(&bin)
        .args([
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--state-dir")
        .arg(pki.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(relay.id());
    // "relay listening on ADDR (QUIC/UDP), admin API on http://ADMIN"
    let line = BufReader::new(relay.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("relay listening on"))
        .expect("the relay's address");
    let words: Vec<&str> = line.split_whitespace().collect();
    let relay_addr: SocketAddr = words[3].parse().unwrap();
    let admin = words.last().unwrap().to_string();
    let token = Command::new(&bin)
        .args(["token", "create", "--admin", &admin])
        .output()
        .unwrap();
    let token = proto::AuthToken::parse(String::from_utf8_lossy(&token.stdout).trim()).unwrap();
    let host = format!("www-{}.example.com", token.routing_key());

    let mut config = TestEdge::config(None);
    config.state_dir = pki.path().to_owned();
    let connector = edge::RelayConnector::new(&config, &relay_addr.to_string()).unwrap();
    let edge = TestEdge::start(config, std::sync::Arc::new(connector)).await;
    let app = echo_app("laptop").await;
    let mut dev = TestClient::spawn(TestClient::agent_config(relay_addr, &pki.ca(), token, app));
    dev.wait_connected().await;
    poll_until(edge.addr, &host, |r| r.status == 200).await;

    kill(relay.id(), "KILL");
    let _ = relay.wait();
    let killed = Instant::now();
    let reply = poll_until(edge.addr, &host, |r| r.status == 502).await;
    let body = String::from_utf8_lossy(&reply.body);
    assert!(
        body.contains("Relay unavailable") || body.contains("Developer offline"),
        "{body}"
    );
    assert!(
        killed.elapsed() < ANSWER_WITHIN,
        "told after {:?}",
        killed.elapsed()
    );
    // And again: every visitor, not only the first, is answered within the bound.
    for _ in 0..3 {
        poll_until(edge.addr, &host, |r| r.status == 502).await;
    }
}
