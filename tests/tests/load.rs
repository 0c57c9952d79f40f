//! Many requests and big bodies over one client connection.

use bytes::Bytes;
use tests::apps::{echo_app, pattern, sha256_hex};
use tests::http_client::{client, send};
use tests::{init_tracing, Pki, TestClient, TestEdge, TestRelay};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_through_one_client_all_succeed_with_their_own_bodies() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let dev = echo_app("dev").await;
    let edge = TestEdge::in_process(&relay, None).await;
    let token = relay.issue_token("alice");
    let host = format!("www-{}.example.com", token.routing_key());
    let _client = TestClient::connect(&relay, &pki, token, dev).await;

    let http = client();
    let requests = (0..200).map(|i| {
        let (http, host) = (http.clone(), host.clone());
        async move {
            let body = Bytes::from(format!("request number {i} ").repeat(i % 7 + 1));
            let reply = send(
                &http,
                edge.addr,
                "POST",
                &host,
                &format!("/n/{i}"),
                &[],
                body.clone(),
            )
            .await;
            (i, body, reply)
        }
    });
    let results = futures_util::future::join_all(requests).await;
    assert_eq!(results.len(), 200);
    for (i, body, reply) in results {
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
        let seen = reply.json();
        assert_eq!(seen["uri"], format!("/n/{i}"));
        assert_eq!(
            seen["body_sha256"],
            sha256_hex(&body),
            "request {i} got another's body"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabyte_bodies_pass_both_ways_with_matching_checksums() {
    init_tracing();
    const SIZE: usize = 50 * 1024 * 1024;
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let dev = echo_app("dev").await;
    let edge = TestEdge::over_quic(&relay, &pki, None).await;
    let token = relay.issue_token("alice");
    let host = format!("www-{}.example.com", token.routing_key());
    let _client = TestClient::connect(&relay, &pki, token, dev).await;
    let http = client();

    // Upload: the app reports the length and checksum of what it received.
    let upload = Bytes::from((0..SIZE).map(|i| (i * 7 % 253) as u8).collect::<Vec<u8>>());
    let reply = send(
        &http,
        edge.addr,
        "PUT",
        &host,
        "/upload",
        &[],
        upload.clone(),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["body_len"], SIZE);
    assert_eq!(reply.json()["body_sha256"], sha256_hex(&upload));

    // Download: the app streams a known pattern.
    let reply = send(
        &http,
        edge.addr,
        "GET",
        &host,
        &format!("/bytes/{SIZE}"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), SIZE);
    let expected: Vec<u8> = (0..SIZE).map(pattern).collect();
    assert_eq!(sha256_hex(&reply.body), sha256_hex(&expected));
}
