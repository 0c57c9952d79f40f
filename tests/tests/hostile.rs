//! Bad input from any peer: a clear refusal, never a panic, a hang or harm to other sessions.

use proto::{Frame, Hello, RefusalCode, Role};
use tests::apps::echo_app;
use tests::http_client::get;
use tests::raw::{encode, endpoint, send_control_bytes, Answer};
use tests::{init_tracing, Pki, TestClient, TestEdge, TestRelay, WAIT};

fn edge_identity(pki: &Pki) -> (std::path::PathBuf, std::path::PathBuf) {
    (pki.path().join("edge.pem"), pki.path().join("edge.key"))
}

/// A relay with one connected developer, and a way to check it still serves them.
struct Scene {
    pki: Pki,
    relay: TestRelay,
    edge: TestEdge,
    host: String,
    _client: TestClient,
}

impl Scene {
    async fn new() -> Self {
        init_tracing();
        let pki = Pki::new();
        let relay = TestRelay::start(&pki).await;
        let edge = TestEdge::in_process(&relay, None).await;
        let token = relay.issue_token("bystander");
        let host = format!("www-{}.example.com", token.routing_key());
        let app = echo_app("bystander").await;
        let client = TestClient::connect(&relay, &pki, token, app).await;
        Self {
            pki,
            relay,
            edge,
            host,
            _client: client,
        }
    }

    async fn bystander_still_served(&self) {
        let reply = get(self.edge.addr, &self.host, "/still-here").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["app"], "bystander");
    }
}

#[tokio::test]
async fn non_quic_udp_garbage_is_ignored() {
    let scene = Scene::new().await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..200u32 {
        let len = (i as usize * 37) % 1400 + 1;
        let datagram: Vec<u8> = (0..len).map(|j| (j as u32 * 31 + i * 17) as u8).collect();
        sock.send_to(&datagram, scene.relay.addr).await.unwrap();
    }
    // A long-header-looking packet with a nonsense version (triggers version negotiation).
    let mut fake = vec![0xc0, 0x1a, 0x2b, 0x3c, 0x4d, 8];
    fake.extend_from_slice(&[9; 8]);
    fake.extend_from_slice(&[0; 1200]);
    sock.send_to(&fake, scene.relay.addr).await.unwrap();
    scene.bystander_still_served().await;
}

#[tokio::test]
async fn quic_with_a_wrong_alpn_is_refused_at_the_handshake() {
    let scene = Scene::new().await;
    let ep = endpoint(&scene.pki.ca(), None, b"h3");
    match send_control_bytes(&ep, scene.relay.addr, b"").await {
        Answer::Failed(reason) => assert!(
            reason.to_lowercase().contains("alpn") || reason.contains("120"),
            "{reason}"
        ),
        other => panic!("expected a failed handshake, got {other:?}"),
    }
    scene.bystander_still_served().await;
}

#[tokio::test]
async fn a_control_stream_that_is_not_bincode_is_refused_with_a_reason() {
    let scene = Scene::new().await;
    let ep = endpoint(&scene.pki.ca(), None, proto::ALPN);
    for garbage in [
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![0x01, 0, 0, 0, 3, 0, 1, 0xff],
        vec![0x7f, 0, 0, 0, 0],
        vec![0x01, 0xff, 0xff, 0xff, 0xff],
    ] {
        match send_control_bytes(&ep, scene.relay.addr, &garbage).await {
            Answer::Frame(Frame::Refusal(r)) => {
                assert_eq!(r.code, RefusalCode::BadHandshake, "{}", r.reason)
            }
            Answer::Closed(code, reason) => {
                assert_eq!(code, u64::from(proto::codes::CLOSE_REFUSED), "{reason}")
            }
            other => panic!("garbage {garbage:?} got {other:?}"),
        }
    }
    scene.bystander_still_served().await;
}

#[tokio::test]
async fn a_peer_of_another_protocol_version_is_told_so() {
    let scene = Scene::new().await;
    let ep = endpoint(&scene.pki.ca(), None, proto::ALPN);
    let mut bytes = encode(&Frame::Hello(Hello {
        role: Role::Developer,
        token: None,
        client_name: "from the future".into(),
        capabilities: vec![],
    }));
    bytes[5..7].copy_from_slice(&9u16.to_be_bytes());
    match send_control_bytes(&ep, scene.relay.addr, &bytes).await {
        Answer::Frame(Frame::Refusal(r)) => {
            assert_eq!(r.code, RefusalCode::UnsupportedVersion);
            assert!(r.reason.contains("version 9"), "{}", r.reason);
        }
        other => panic!("expected a version refusal, got {other:?}"),
    }
    scene.bystander_still_served().await;
}

#[tokio::test]
async fn a_silent_peer_is_dropped_after_the_handshake_timeout() {
    init_tracing();
    let pki = Pki::new();
    let mut config = TestRelay::config(&pki);
    config.handshake_timeout_ms = 300;
    let relay = TestRelay::start_with(config).await;
    let ep = endpoint(&pki.ca(), None, proto::ALPN);
    let conn = ep.connect(relay.addr, "localhost").unwrap().await.unwrap();
    // Opens nothing, says nothing.
    let closed = tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("relay kept a silent peer");
    assert!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(_)),
        "{closed}"
    );
}

#[tokio::test]
async fn claiming_the_edge_role_without_an_edge_certificate_is_refused() {
    let scene = Scene::new().await;
    let hello = encode(&Frame::Hello(Hello {
        role: Role::Edge,
        token: None,
        client_name: "impostor".into(),
        capabilities: vec![],
    }));
    // No certificate at all.
    let ep = endpoint(&scene.pki.ca(), None, proto::ALPN);
    match send_control_bytes(&ep, scene.relay.addr, &hello).await {
        Answer::Frame(Frame::Refusal(r)) => {
            assert_eq!(r.code, RefusalCode::RoleNotAuthorized);
            assert!(r.reason.contains("devinprod://role/edge"), "{}", r.reason);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A genuine certificate of the CA, but for the dbproxy role.
    let db = (
        scene.pki.path().join("dbproxy.pem"),
        scene.pki.path().join("dbproxy.key"),
    );
    let ep = endpoint(&scene.pki.ca(), Some((&db.0, &db.1)), proto::ALPN);
    match send_control_bytes(&ep, scene.relay.addr, &hello).await {
        Answer::Frame(Frame::Refusal(r)) => assert_eq!(r.code, RefusalCode::RoleNotAuthorized),
        other => panic!("expected a refusal, got {other:?}"),
    }
    scene.bystander_still_served().await;
}

#[tokio::test]
async fn an_edge_certificate_from_another_ca_is_refused() {
    let scene = Scene::new().await;
    let other = Pki::new();
    let (cert, key) = edge_identity(&other);
    // Trusts the right relay CA, presents an edge cert signed by another CA.
    let ep = endpoint(&scene.pki.ca(), Some((&cert, &key)), proto::ALPN);
    let hello = encode(&Frame::Hello(Hello {
        role: Role::Edge,
        token: None,
        client_name: "foreign".into(),
        capabilities: vec![],
    }));
    match send_control_bytes(&ep, scene.relay.addr, &hello).await {
        Answer::Frame(Frame::Welcome(_)) => panic!("a foreign CA's edge was welcomed"),
        Answer::Frame(Frame::Refusal(r)) => panic!("refused too late, at Hello: {}", r.reason),
        Answer::Failed(_) | Answer::Closed(..) => {}
        Answer::Frame(other) => panic!("unexpected {other:?}"),
    }
    scene.bystander_still_served().await;
}

#[tokio::test]
async fn an_edge_stream_that_does_not_start_with_route_is_reset_and_the_edge_stays_up() {
    let scene = Scene::new().await;
    let (cert, key) = edge_identity(&scene.pki);
    let ep = endpoint(&scene.pki.ca(), Some((&cert, &key)), proto::ALPN);
    let conn = ep
        .connect(scene.relay.addr, "localhost")
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let welcome = proto::handshake(
        &mut send,
        &mut recv,
        Hello {
            role: Role::Edge,
            token: None,
            client_name: "edge".into(),
            capabilities: vec![],
        },
    )
    .await
    .expect("a real edge is welcomed");
    assert!(welcome.routing_key.is_none());

    for garbage in [
        b"\x00\x00garbage not bincode".to_vec(),
        vec![0x11, 0, 0, 0, 2, 0xff, 0xff],
        encode(&Frame::End),
    ] {
        let (mut s, mut r) = conn.open_bi().await.unwrap();
        s.write_all(&garbage).await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(WAIT, r.read(&mut buf))
            .await
            .expect("relay hung on a bad stream");
        assert!(
            matches!(read, Err(quinn::ReadError::Reset(code)) if code.into_inner() == u64::from(proto::codes::STREAM_BAD_HEADER)),
            "{read:?}"
        );
    }
    // The edge's connection is still good for real streams.
    let (mut s, mut r) = conn.open_bi().await.unwrap();
    let key = scene.host[4..10].to_owned();
    proto::write_frame(
        &mut s,
        &Frame::Route(proto::RouteRequest {
            key: proto::RoutingKey::parse(&key).unwrap(),
        }),
    )
    .await
    .unwrap();
    let reply = tokio::time::timeout(WAIT, proto::read_frame(&mut r, proto::MAX_FRAME_LEN))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, Some(Frame::RouteReply(proto::RouteReply::Connected)));
    scene.bystander_still_served().await;
}

/// Issue 15: QUIC handshakes that are never finished (a flood of Initials from addresses that
/// never answer: 10,000 once took a relay from 26 to 567 MB) cost bounded state. From one
/// address at most `max_handshakes_per_ip` are kept; from many, beyond `retry_above_handshakes`
/// an unproven address gets a stateless Retry instead of state; and a real developer connects
/// in the middle of the flood while the connected one stays served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unfinished_handshakes_is_bounded_and_keeps_no_developer_out() {
    use tests::quic_flood::{loopback_sources, send_initials};
    let scene = Scene::new().await;
    let config = scene.relay.relay.config().clone();
    let tls = || {
        certs::peer_client_config(
            certs::load_roots(&scene.pki.ca()).unwrap(),
            None,
            proto::ALPN,
        )
        .unwrap()
    };
    let pause = std::time::Duration::from_millis(5);
    let one = ["127.0.0.1".parse().unwrap()];
    let sent = send_initials(
        scene.relay.addr,
        "127.0.0.1",
        tls(),
        &one,
        1_000,
        100,
        pause,
    )
    .await
    .unwrap();
    assert_eq!(sent.initials, 1_000);
    let pending = scene.relay.relay.pending_handshakes();
    assert!(
        pending > 0,
        "the Initials started no handshake: the flood proves nothing"
    );
    assert!(
        pending <= config.max_handshakes_per_ip,
        "{pending} handshakes kept for one address (limit {})",
        config.max_handshakes_per_ip
    );

    let flood = tokio::spawn({
        let (addr, tls) = (scene.relay.addr, tls());
        async move {
            send_initials(
                addr,
                "127.0.0.1",
                tls,
                &loopback_sources(100),
                4_000,
                100,
                pause,
            )
            .await
        }
    });
    let token = scene.relay.issue_token("newcomer");
    let app = echo_app("newcomer").await;
    let newcomer = TestClient::connect(&scene.relay, &scene.pki, token, app).await;
    let sent = flood.await.unwrap().unwrap();
    assert_eq!(sent.initials, 4_000);
    let pending = scene.relay.relay.pending_handshakes();
    assert!(
        pending <= config.retry_above_handshakes,
        "{pending} handshakes kept after a flood from 100 addresses (Retry above {})",
        config.retry_above_handshakes
    );
    scene.bystander_still_served().await;
    let reply = get(
        scene.edge.addr,
        &format!("www-{}.example.com", newcomer.routing_key),
        "/",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["app"], "newcomer");
}
