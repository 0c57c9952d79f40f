//! Who may connect, who takes over, and coming back after the relay goes away.

use client::AgentExit;
use proto::{Frame, Hello, RefusalCode, Role};
use std::time::Duration;
use tests::apps::echo_app;
use tests::http_client::get;
use tests::raw::{encode, endpoint, send_control_bytes, Answer};
use tests::{init_tracing, Pki, TestClient, TestEdge, TestRelay, WAIT};

#[tokio::test]
async fn a_second_client_with_the_same_token_takes_over_and_the_first_exits_with_the_reason() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let edge = TestEdge::in_process(&relay, None).await;
    let laptop = echo_app("laptop").await;
    let desktop = echo_app("desktop").await;
    let token = relay.issue_token("alice");
    let host = format!("www-{}.example.com", token.routing_key());

    let mut first = TestClient::connect(&relay, &pki, token.clone(), laptop).await;
    assert_eq!(get(edge.addr, &host, "/").await.json()["app"], "laptop");
    let _second = TestClient::connect(&relay, &pki, token, desktop).await;

    match first.exit().await {
        AgentExit::Replaced(reason) => assert!(
            reason.contains("replaced by a newer connection"),
            "{reason}"
        ),
        other => panic!("first client should have been replaced, got {other:?}"),
    }
    assert_eq!(get(edge.addr, &host, "/").await.json()["app"], "desktop");
}

#[tokio::test]
async fn an_unknown_token_is_refused_with_a_reason_and_gets_no_traffic() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let edge = TestEdge::in_process(&relay, None).await;
    let app = echo_app("dev").await;
    let unknown = proto::AuthToken::generate().unwrap();
    let key = unknown.routing_key();
    let mut client = TestClient::spawn(TestClient::agent_config(
        relay.addr,
        &pki.ca(),
        unknown,
        app,
    ));
    match client.exit().await {
        AgentExit::Refused(r) => {
            assert_eq!(r.code, RefusalCode::BadToken);
            assert!(r.reason.contains("unknown token"), "{}", r.reason);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        get(edge.addr, &format!("www-{key}.example.com"), "/")
            .await
            .status,
        502
    );
}

#[tokio::test]
async fn a_revoked_token_is_disconnected_then_refused() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let edge = TestEdge::in_process(&relay, None).await;
    let app = echo_app("dev").await;
    let token = relay.issue_token("mallory");
    let key = token.routing_key();
    let host = format!("www-{key}.example.com");
    let mut client = TestClient::connect(&relay, &pki, token.clone(), app).await;
    assert_eq!(get(edge.addr, &host, "/").await.status, 200);

    // Revoke through the admin API, as `devinprod token revoke` does.
    let url = format!("http://{}/api/tokens/{key}/revoke", relay.admin);
    let resp = reqwest_post(&url).await;
    assert_eq!(resp.0, 200, "{}", resp.1);
    assert!(resp.1.contains("\"disconnected\":true"), "{}", resp.1);
    match client.exit().await {
        AgentExit::Revoked(reason) => assert!(reason.contains("revoked"), "{reason}"),
        other => panic!("expected revocation, got {other:?}"),
    }
    assert_eq!(get(edge.addr, &host, "/").await.status, 502);

    let mut again = TestClient::spawn(TestClient::agent_config(relay.addr, &pki.ca(), token, app));
    match again.exit().await {
        AgentExit::Refused(r) => {
            assert_eq!(r.code, RefusalCode::Revoked);
            assert!(r.reason.contains("revoked by the operator"), "{}", r.reason);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// POST with an empty body; returns status and body text.
async fn reqwest_post(url: &str) -> (u16, String) {
    use http_body_util::{BodyExt, Full};
    let client = tests::http_client::client();
    let req = http::Request::post(url)
        .body(Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, client.request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_malformed_token_in_hello_is_refused_with_a_reason() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let ep = endpoint(&pki.ca(), None, proto::ALPN);
    // A valid Hello, then the token's first character turned into one outside [a-z0-9].
    let hello = Frame::Hello(Hello {
        role: Role::Developer,
        token: Some(proto::AuthToken::generate().unwrap()),
        client_name: "x".into(),
        capabilities: vec![],
    });
    let mut bytes = encode(&hello);
    bytes[10] = b'#';
    match send_control_bytes(&ep, relay.addr, &bytes).await {
        Answer::Frame(Frame::Refusal(r)) => {
            assert_eq!(r.code, RefusalCode::BadHandshake);
            assert!(r.reason.contains("malformed Hello"), "{}", r.reason);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn create_token_is_refused_to_peers_outside_the_admin_allow_list() {
    init_tracing();
    let pki = Pki::new();
    let mut config = TestRelay::config(&pki);
    config.admin_allow = vec!["127.0.0.1/32".parse().unwrap()];
    let relay = TestRelay::start_with(config).await;

    let request = b"POST /api/createToken HTTP/1.1\r\nhost: x\r\nx-forwarded-for: 127.0.0.1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    let from = |ip: &str| {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        let admin = relay.admin;
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind((ip, 0).into()).unwrap();
            let mut s = sock.connect(admin).await.unwrap();
            s.write_all(request).await.unwrap();
            let mut out = String::new();
            tokio::time::timeout(WAIT, s.read_to_string(&mut out))
                .await
                .unwrap()
                .unwrap();
            out
        }
    };
    // 127.0.0.2 is a loopback address too, but not on the allow-list: as good as remote.
    let refused = from("127.0.0.2").await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    assert!(
        refused.contains("this request came from 127.0.0.2"),
        "{refused}"
    );
    assert!(
        relay.relay.tokens().list().is_empty(),
        "a refused request created a token"
    );

    let allowed = from("127.0.0.1").await;
    assert!(allowed.starts_with("HTTP/1.1 200"), "{allowed}");
    assert_eq!(relay.relay.tokens().list().len(), 1);
}

#[tokio::test]
async fn the_client_comes_back_by_itself_after_the_relay_restarts() {
    init_tracing();
    let pki = Pki::new();
    let first = TestRelay::start(&pki).await;
    let addr = first.addr;
    let token = first.issue_token("alice");
    let host = format!("www-{}.example.com", token.routing_key());
    let app = echo_app("dev").await;
    let mut client = TestClient::connect(&first, &pki, token, app).await;
    first.stop().await;

    // Same port, same token store on disk: the token must still be valid.
    let mut config = TestRelay::config(&pki);
    config.listen = addr;
    let second = TestRelay::start_with(config).await;
    tokio::time::timeout(WAIT, client.wait_connected())
        .await
        .expect("no reconnect");
    let edge = TestEdge::in_process(&second, None).await;
    assert_eq!(get(edge.addr, &host, "/").await.json()["app"], "dev");
}

#[tokio::test]
async fn a_separate_edge_reconnects_to_a_restarted_relay() {
    init_tracing();
    let pki = Pki::new();
    let first = TestRelay::start(&pki).await;
    let addr = first.addr;
    let token = first.issue_token("alice");
    let host = format!("www-{}.example.com", token.routing_key());
    let app = echo_app("dev").await;
    let edge = TestEdge::over_quic(&first, &pki, None).await;
    let mut client = TestClient::connect(&first, &pki, token, app).await;
    assert_eq!(get(edge.addr, &host, "/").await.status, 200);
    first.stop().await;

    let mut config = TestRelay::config(&pki);
    config.listen = addr;
    let _second = TestRelay::start_with(config).await;
    tokio::time::timeout(WAIT, client.wait_connected())
        .await
        .expect("no reconnect");
    // The edge notices its connection is gone and makes a new one on the next request.
    let mut status = 0;
    for _ in 0..20 {
        status = get(edge.addr, &host, "/").await.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
}

/// Issue 15: QUIC handshakes are bounded. With Retry demanded of every unproven address, real
/// clients still connect (one more round trip); with no handshake slot left, attempts are
/// refused at once rather than queued.
#[tokio::test]
async fn clients_connect_through_quic_retry_and_attempts_beyond_the_bound_are_refused() {
    init_tracing();
    let pki = Pki::new();
    let mut config = TestRelay::config(&pki);
    config.retry_above_handshakes = 0;
    let relay = TestRelay::start_with(config).await;
    let edge = TestEdge::in_process(&relay, None).await;
    let app = echo_app("dev").await;
    let token = relay.issue_token("alice");
    let host = format!("www-{}.example.com", token.routing_key());
    let _client = TestClient::connect(&relay, &pki, token, app).await;
    assert_eq!(get(edge.addr, &host, "/").await.json()["app"], "dev");

    let mut config = TestRelay::config(&pki);
    config.max_handshakes_per_ip = 0;
    let closed = TestRelay::start_with(config).await;
    let ep = endpoint(&pki.ca(), None, proto::ALPN);
    let started = std::time::Instant::now();
    let attempt = ep.connect(closed.addr, "localhost").unwrap();
    let err = tokio::time::timeout(WAIT, attempt)
        .await
        .expect("refused at once, not left to time out")
        .expect_err("no handshake slot");
    assert!(
        matches!(err, quinn::ConnectionError::ConnectionClosed(_)),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}
