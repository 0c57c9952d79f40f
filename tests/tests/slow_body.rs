//! Slow request bodies (issue 15): a visitor whose body stalls for `body_read_timeout_ms` gets
//! 408 and the upstream request is aborted — production's connection is freed — on both the
//! production and the developer path; so does one that trickles in a byte at a time, each
//! inside the bound but slower than `body_min_bytes_per_sec` in all (slowloris); a slow but
//! steady upload is not cut off.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tests::{init_tracing, Pki, TestClient, TestEdge, TestRelay, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const BODY_TIMEOUT_MS: u64 = 500;

/// What an app saw of a request's body, and of its connection.
#[derive(Debug, PartialEq)]
enum Seen {
    /// The body arrived whole, this many bytes.
    Body(usize),
    /// Reading the body failed (the request was aborted).
    BodyFailed,
    /// A connection ended.
    ConnectionClosed,
}

/// An app that reads every request's body, answers `{"app": name, "body_len": n}`, and reports
/// what it saw on `seen`.
async fn recording_app(name: &'static str) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let per_request = tx.clone();
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let tx = per_request.clone();
                        async move {
                            let body = req.into_body().collect().await;
                            let len = match body {
                                Ok(b) => b.to_bytes().len(),
                                Err(e) => {
                                    let _ = tx.send(Seen::BodyFailed);
                                    return Err(e);
                                }
                            };
                            let _ = tx.send(Seen::Body(len));
                            let json = serde_json::json!({"app": name, "body_len": len});
                            Ok(http::Response::new(Full::new(Bytes::from(
                                json.to_string(),
                            ))))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                let _ = tx.send(Seen::ConnectionClosed);
            });
        }
    });
    (addr, rx)
}

/// Waits (bounded) until `seen` reports `what`; panics with what came instead.
async fn wait_for(seen: &mut mpsc::UnboundedReceiver<Seen>, what: Seen) {
    let mut others = Vec::new();
    let found = tokio::time::timeout(WAIT, async {
        while let Some(s) = seen.recv().await {
            if s == what {
                return true;
            }
            others.push(s);
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "waited for {what:?}, saw {others:?}");
}

/// Sends a head declaring 1000 bytes and 10 of them, stalls, and returns the edge's answer
/// (read until it closes) and how long it took.
async fn stall_mid_body(edge: SocketAddr, host: &str) -> (String, Duration) {
    let mut s = tokio::net::TcpStream::connect(edge).await.unwrap();
    let started = Instant::now();
    s.write_all(
        format!("POST /upload HTTP/1.1\r\nhost: {host}\r\ncontent-length: 1000\r\n\r\n0123456789")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("the edge held a stalled body past every bound")
        .unwrap();
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

/// Uploads 1000 bytes in 10 pieces, one every 200 ms (each pause under the body timeout, the
/// whole upload four times it), and returns the answer.
async fn slow_steady_upload(edge: SocketAddr, host: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(edge).await.unwrap();
    s.write_all(
        format!("POST /upload HTTP/1.1\r\nhost: {host}\r\ncontent-length: 1000\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.write_all(&[b'x'; 100]).await.unwrap();
    }
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("answer in time")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_stalled_request_body_gets_408_and_its_upstream_request_is_aborted() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let (prod, mut prod_seen) = recording_app("production").await;
    let (dev, mut dev_seen) = recording_app("developer").await;
    let token = relay.issue_token("slow-body");
    let dev_host = format!("www-{}.example.com", token.routing_key());
    let _client = TestClient::connect(&relay, &pki, token, dev).await;
    let mut config = TestEdge::config(Some(prod));
    config.body_read_timeout_ms = BODY_TIMEOUT_MS;
    let edge = TestEdge::start(config, relay.relay.registry()).await;

    for (host, seen) in [
        ("www.example.com", &mut prod_seen),
        (dev_host.as_str(), &mut dev_seen),
    ] {
        let (answer, took) = stall_mid_body(edge.addr, host).await;
        assert!(answer.starts_with("HTTP/1.1 408 "), "{host}: {answer}");
        assert!(answer.contains("500 ms"), "{host}: {answer}");
        assert!(
            took >= Duration::from_millis(BODY_TIMEOUT_MS - 50),
            "{host}: 408 after {took:?}, before the timeout"
        );
        assert!(
            took < Duration::from_millis(BODY_TIMEOUT_MS * 10),
            "{host}: 408 only after {took:?}"
        );
        // The app behind saw the request aborted, not a short body.
        wait_for(seen, Seen::BodyFailed).await;
    }
    // Production's connection was closed, not left holding a half-read request.
    wait_for(&mut prod_seen, Seen::ConnectionClosed).await;
}

#[tokio::test]
async fn a_slow_but_steady_upload_is_not_cut_off() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let (prod, mut prod_seen) = recording_app("production").await;
    let (dev, mut dev_seen) = recording_app("developer").await;
    let token = relay.issue_token("steady");
    let dev_host = format!("www-{}.example.com", token.routing_key());
    let _client = TestClient::connect(&relay, &pki, token, dev).await;
    let mut config = TestEdge::config(Some(prod));
    config.body_read_timeout_ms = BODY_TIMEOUT_MS;
    // The uploads below send 500 bytes/s: well over this minimum.
    config.body_min_bytes_per_sec = 100;
    let edge = TestEdge::start(config, relay.relay.registry()).await;

    let (to_prod, to_dev) = tokio::join!(
        slow_steady_upload(edge.addr, "www.example.com"),
        slow_steady_upload(edge.addr, &dev_host)
    );
    for (answer, app) in [(to_prod, "production"), (to_dev, "developer")] {
        assert!(answer.starts_with("HTTP/1.1 200 "), "{app}: {answer}");
        assert!(answer.contains(&format!("\"app\":\"{app}\"")), "{answer}");
        assert!(answer.contains("\"body_len\":1000"), "{app}: {answer}");
    }
    wait_for(&mut prod_seen, Seen::Body(1000)).await;
    wait_for(&mut dev_seen, Seen::Body(1000)).await;
}

/// Sends a head declaring 1000 bytes, then one byte every 300 ms (each pause inside the body
/// timeout) until the edge answers; returns the answer and how long it took.
async fn trickle_body(edge: SocketAddr, host: &str) -> (String, Duration) {
    let s = tokio::net::TcpStream::connect(edge).await.unwrap();
    let (mut rx, mut tx) = s.into_split();
    let started = Instant::now();
    tx.write_all(
        format!("POST /upload HTTP/1.1\r\nhost: {host}\r\ncontent-length: 1000\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let writer = tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if tx.write_all(b"x").await.is_err() {
                break;
            }
        }
    });
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, rx.read_to_end(&mut out))
        .await
        .expect("the edge held a trickling body past every bound")
        .unwrap();
    writer.abort();
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn a_body_trickling_in_under_the_minimum_rate_gets_408_and_its_upstream_request_is_aborted() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let (prod, mut prod_seen) = recording_app("production").await;
    let (dev, mut dev_seen) = recording_app("developer").await;
    let token = relay.issue_token("slowloris");
    let dev_host = format!("www-{}.example.com", token.routing_key());
    let _client = TestClient::connect(&relay, &pki, token, dev).await;
    let mut config = TestEdge::config(Some(prod));
    config.body_read_timeout_ms = BODY_TIMEOUT_MS;
    config.body_min_bytes_per_sec = 100;
    let edge = TestEdge::start(config, relay.relay.registry()).await;

    for (host, seen) in [
        ("www.example.com", &mut prod_seen),
        (dev_host.as_str(), &mut dev_seen),
    ] {
        let (answer, took) = trickle_body(edge.addr, host).await;
        assert!(answer.starts_with("HTTP/1.1 408 "), "{host}: {answer}");
        assert!(
            answer.contains("slower than 100 bytes/s"),
            "{host}: {answer}"
        );
        // 500 ms of waiting, plus 10 ms per byte sent: under a second of 300 ms pauses.
        assert!(
            took < Duration::from_secs(5),
            "{host}: 408 only after {took:?}"
        );
        wait_for(seen, Seen::BodyFailed).await;
    }
    wait_for(&mut prod_seen, Seen::ConnectionClosed).await;
}
