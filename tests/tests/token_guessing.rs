//! Token guessing is throttled per source address: after `failed_hello_burst` failed token
//! checks, the relay refuses that address's Hellos at once without checking their token, until
//! the address has earned another try (`failed_hellos_per_sec`). Other addresses, and the
//! developer whose good token shares the address, are not locked out for good.

use proto::{AuthToken, Frame, Hello, RefusalCode, Role};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tests::raw::{encode, send_control_bytes, Answer};
use tests::{init_tracing, Pki, TestClient, TestRelay};

fn developer_hello(token: AuthToken) -> Vec<u8> {
    encode(&Frame::Hello(Hello {
        role: Role::Developer,
        token: Some(token),
        client_name: "guesser".into(),
        capabilities: vec![],
    }))
}

/// A raw client endpoint on `local` (any address of 127.0.0.0/8 is this machine).
fn endpoint_on(pki: &Pki, local: &str) -> quinn::Endpoint {
    let roots = certs::load_roots(&pki.ca()).unwrap();
    let tls = certs::peer_client_config(roots, None, proto::ALPN).unwrap();
    let local: SocketAddr = local.parse().unwrap();
    certs::client_endpoint(local, tls, quinn::TransportConfig::default()).unwrap()
}

async fn refusal(ep: &quinn::Endpoint, relay: SocketAddr, token: AuthToken) -> proto::Refusal {
    match send_control_bytes(ep, relay, &developer_hello(token)).await {
        Answer::Frame(Frame::Refusal(r)) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn failed_token_checks_beyond_the_burst_are_refused_unchecked_until_the_address_slows_down() {
    init_tracing();
    let pki = Pki::new();
    let mut config = TestRelay::config(&pki);
    config.failed_hello_burst = 3;
    config.failed_hellos_per_sec = 1;
    let relay = TestRelay::start_with(config).await;
    let good = relay.issue_token("alice");
    let guesser = endpoint_on(&pki, "127.0.0.1:0");

    for i in 0..3 {
        let r = refusal(&guesser, relay.addr, AuthToken::generate().unwrap()).await;
        assert_eq!(r.code, RefusalCode::BadToken, "guess {i}: {}", r.reason);
        assert!(r.reason.contains("unknown token"), "{}", r.reason);
    }

    // Beyond the burst, even a good token from that address is refused, promptly and
    // without being checked; the reason says so and when to come back.
    let started = Instant::now();
    let r = refusal(&guesser, relay.addr, good.clone()).await;
    assert!(started.elapsed() < Duration::from_secs(3), "refused slowly");
    assert_eq!(r.code, RefusalCode::BadHandshake, "a code clients retry on");
    for words in [
        "too many failed token checks from 127.0.0.1",
        "3 in a row and then 1 per second",
        "try again in",
        "your token was not checked",
    ] {
        assert!(r.reason.contains(words), "{words:?} not in {}", r.reason);
    }
    // Another address is checked as usual.
    let elsewhere = endpoint_on(&pki, "127.0.0.2:0");
    let r = refusal(&elsewhere, relay.addr, AuthToken::generate().unwrap()).await;
    assert_eq!(r.code, RefusalCode::BadToken, "{}", r.reason);

    // The developer behind the guesser's address gets in once it has earned a try back: the
    // real client takes the throttle's refusal as one to retry, not as final.
    let mut client = TestClient::spawn(TestClient::agent_config(
        relay.addr,
        &pki.ca(),
        good,
        "127.0.0.1:9".parse().unwrap(),
    ));
    client.wait_connected().await;
}
