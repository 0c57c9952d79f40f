//! Malformed HTTP on raw sockets, from a visitor and from a developer's app: each gets the
//! status that blames the side at fault — 400 for the visitor's, 502 for the developer's —
//! with a page, never an empty reply, and nothing ambiguous is passed on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tests::apps::echo_app;
use tests::h2raw::{self, RawFrame};
use tests::{init_tracing, Pki, TestClient, TestEdge, TestRelay, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A relay, an edge with a production app, and a connected developer whose app is `dev`.
struct Stage {
    edge: TestEdge,
    dev_host: String,
    _client: TestClient,
    _relay: TestRelay,
    _pki: Pki,
}

impl Stage {
    async fn new(dev: SocketAddr) -> Self {
        init_tracing();
        let pki = Pki::new();
        let relay = TestRelay::start(&pki).await;
        let production = echo_app("production").await;
        let edge = TestEdge::in_process(&relay, Some(production)).await;
        let token = relay.issue_token("malformed");
        let dev_host = format!("www-{}.example.com", token.routing_key());
        let client = TestClient::connect(&relay, &pki, token, dev).await;
        Self {
            edge,
            dev_host,
            _client: client,
            _relay: relay,
            _pki: pki,
        }
    }
}

/// Writes `raw` to a new connection to `addr` and reads what comes back until the peer closes
/// or goes quiet for a second (a keep-alive connection after its answer).
async fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) if !out.is_empty() => break,
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_malformed_chunked_body_from_a_visitor_is_a_400_on_developer_and_production_routes() {
    let stage = Stage::new(echo_app("developer").await).await;
    for host in [stage.dev_host.as_str(), "www.example.com"] {
        // A good chunk, then a chunk size that is not hexadecimal.
        let raw = format!(
            "POST /upload HTTP/1.1\r\nhost: {host}\r\ntransfer-encoding: chunked\r\n\r\n\
             5\r\nhello\r\nzz\r\nnot a chunk\r\n0\r\n\r\n"
        );
        let answer = raw_exchange(stage.edge.addr, raw.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 "),
            "{host}: the visitor's fault, not the app's: {answer}"
        );
        assert!(answer.contains("Bad request body"), "{host}: {answer}");
    }
}

#[tokio::test]
async fn two_host_headers_are_a_400_whichever_comes_first() {
    let stage = Stage::new(echo_app("developer").await).await;
    let dev = stage.dev_host.as_str();
    for (first, second) in [
        (dev, "www.example.com"),
        ("www.example.com", dev),
        (dev, dev),
    ] {
        let raw = format!("GET / HTTP/1.1\r\nhost: {first}\r\nhost: {second}\r\n\r\n");
        let answer = raw_exchange(stage.edge.addr, raw.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 "),
            "Host {first} then {second}: {answer}"
        );
        assert!(answer.contains("Host"), "{answer}");
        assert!(!answer.contains("\"app\""), "no app may answer: {answer}");
    }
}

#[tokio::test]
async fn a_request_target_naming_another_host_than_the_host_header_is_a_400() {
    let stage = Stage::new(echo_app("developer").await).await;
    let dev = stage.dev_host.as_str();
    for (target, host) in [(dev, "www.example.com"), ("www.example.com", dev)] {
        let raw = format!("GET http://{target}/x HTTP/1.1\r\nhost: {host}\r\n\r\n");
        let answer = raw_exchange(stage.edge.addr, raw.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 "),
            "target {target}, Host {host}: {answer}"
        );
        assert!(!answer.contains("\"app\""), "no app may answer: {answer}");
    }

    // The same host, written differently (case, the scheme's default port): one host, served.
    let upper = dev.to_uppercase();
    let raw =
        format!("GET http://{upper}:80/x HTTP/1.1\r\nhost: {dev}\r\nconnection: close\r\n\r\n");
    let answer = raw_exchange(stage.edge.addr, raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("\"app\":\"developer\""), "{answer}");

    // HTTP/2: `:authority` is the target's authority; a Host header naming another is refused.
    let tcp = tokio::net::TcpStream::connect(stage.edge.addr)
        .await
        .unwrap();
    let fields = [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/x"),
        (":authority", dev),
        ("host", "www.example.com"),
    ];
    let frames = h2raw::exchange(tcp, &fields, None, WAIT).await;
    assert_eq!(
        frames.first().and_then(h2raw::status),
        Some(400),
        "{}",
        RawFrame::describe(&frames)
    );
}

/// A developer's app that answers every request with two different lengths.
async fn two_lengths_app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tokio::time::timeout(WAIT, s.read(&mut buf)).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
                    )
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_local_app_answering_with_two_different_lengths_is_a_502_that_blames_the_app() {
    let stage = Stage::new(two_lengths_app().await).await;
    let raw = format!(
        "GET / HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
        stage.dev_host
    );
    let answer = raw_exchange(stage.edge.addr, raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
    assert!(answer.contains("Local app failed"), "{answer}");
    assert!(answer.contains("content-length"), "{answer}");
    assert!(!answer.contains("hello"), "{answer}");
}

/// A developer's client that answers every request with `answer` (encoded frames), whatever
/// it asked: a modified or broken client, which the edge must not trust to have checked its
/// app's answer.
struct ScriptedDeveloper {
    answer: Vec<u8>,
}

impl proto::StreamOpener for ScriptedDeveloper {
    fn open(&self, _key: proto::RoutingKey, _prelude: Vec<u8>) -> proto::OpenFuture<'_> {
        let answer = self.answer.clone();
        Box::pin(async move {
            let (edge_side, developer_side) = tokio::io::duplex(64 * 1024);
            let (mut from_edge, mut to_edge) = tokio::io::split(developer_side);
            tokio::spawn(async move {
                let _ = to_edge.write_all(&answer).await;
                let _ = to_edge.shutdown().await;
                let mut sink = Vec::new();
                let _ = tokio::time::timeout(WAIT, from_edge.read_to_end(&mut sink)).await;
            });
            let (recv, send) = tokio::io::split(edge_side);
            Ok(proto::TunnelStream {
                send: Box::new(send),
                recv: Box::new(recv),
            })
        })
    }
}

fn response(status: u16, headers: &[(&str, &str)], body: &'static [u8]) -> Vec<u8> {
    let mut map = http::HeaderMap::new();
    for (k, v) in headers {
        let name = http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        map.append(name, http::HeaderValue::from_str(v).unwrap());
    }
    let mut out = tests::raw::encode(&proto::Frame::ResponseHead(proto::ResponseHead {
        status,
        version: proto::HttpVersion::Http11,
        headers: proto::Headers(map),
    }));
    out.extend(tests::raw::encode(&proto::Frame::Data(
        bytes::Bytes::from_static(body),
    )));
    out.extend(tests::raw::encode(&proto::Frame::End));
    out
}

#[tokio::test]
async fn a_developer_response_the_edge_cannot_write_is_a_502_page_never_an_empty_reply() {
    init_tracing();
    let answers = [
        (
            "two lengths",
            response(
                200,
                &[("content-length", "5"), ("content-length", "6")],
                b"hello!",
            ),
        ),
        (
            "a list of lengths",
            response(200, &[("content-length", "5, 6")], b"hello!"),
        ),
        (
            "a length that is no number",
            response(200, &[("content-length", "five")], b"hello"),
        ),
        (
            "an interim status as the answer",
            response(103, &[], b"hello"),
        ),
    ];
    for (what, answer) in answers {
        let developer = Arc::new(ScriptedDeveloper { answer });
        let edge = TestEdge::start(TestEdge::config(None), developer).await;
        let raw = "GET / HTTP/1.1\r\nhost: www-abc123.example.com\r\nconnection: close\r\n\r\n";
        let answer = raw_exchange(edge.addr, raw.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 502 "),
            "{what}: the developer's fault, with a status line: {answer:?}"
        );
        assert!(
            answer.contains("Developer's app failed"),
            "{what}: {answer}"
        );
        assert!(!answer.contains("hello"), "{what}: {answer}");
    }

    // Repeats of one length are legal, and pass as one.
    let answer = response(
        200,
        &[("content-length", "5"), ("content-length", "5")],
        b"hello",
    );
    let edge = TestEdge::start(
        TestEdge::config(None),
        Arc::new(ScriptedDeveloper { answer }),
    )
    .await;
    let raw = "GET / HTTP/1.1\r\nhost: www-abc123.example.com\r\nconnection: close\r\n\r\n";
    let answer = raw_exchange(edge.addr, raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(answer.matches("content-length: 5").count(), 1, "{answer}");
    assert!(answer.ends_with("\r\n\r\nhello"), "{answer}");
}
