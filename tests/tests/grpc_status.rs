//! A gRPC call that fails before any message is answered "trailers-only": ONE HTTP/2 HEADERS
//! frame with END_STREAM that carries `grpc-status`. It must reach the visitor as that one
//! frame, through every kind of edge: gRPC's C core (Python, Ruby, C++…) and Go clients read a
//! HEADERS frame followed by an empty DATA frame as a stream that ended without a status
//! (UNKNOWN "Stream removed"), and lose the app's code and message. tonic is lenient there,
//! so the frames themselves are checked with a bare HTTP/2 client (`tests::h2raw`).

mod grpc_app;

use grpc_app::*;
use std::net::SocketAddr;
use tests::h2raw::{self, RawFrame};
use tests::tls::WebCert;
use tests::{TestEdge, WAIT};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request};

/// `LookupRequest { id: 42 }` as one gRPC message: uncompressed, length 2, field 1 = 42.
const LOOKUP_42: &[u8] = &[0, 0, 0, 0, 2, 0x08, 42];

/// Rounds per edge: a trailers-only answer must not depend on how the frames happened to be
/// packed on the way.
const ROUNDS: usize = 5;

fn lookup_fields<'a>(scheme: &'a str, host: &'a str) -> [(&'a str, &'a str); 6] {
    [
        (":method", "POST"),
        (":scheme", scheme),
        (":path", LOOKUP),
        (":authority", host),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
}

fn assert_one_headers_frame(frames: &[RawFrame], what: &str) {
    assert!(
        frames.len() == 1 && frames[0].kind == h2raw::HEADERS && frames[0].ends_stream(),
        "{what}: a trailers-only answer must be one HEADERS frame with END_STREAM, got {}",
        RawFrame::describe(frames)
    );
}

async fn lookup_over_h2c(addr: SocketAddr, host: &str) -> Vec<RawFrame> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    h2raw::exchange(tcp, &lookup_fields("http", host), Some(LOOKUP_42), WAIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_error_before_any_message_reaches_the_visitor_as_one_headers_frame() {
    let tunnel = Tunnel::start().await;
    // The premise: the app itself answers so.
    let direct = lookup_over_h2c(tunnel.app_addr, &tunnel.host).await;
    assert_one_headers_frame(&direct, "the app itself");

    for over_quic in [false, true] {
        let edge = if over_quic {
            TestEdge::over_quic(&tunnel.relay, &tunnel.pki, None).await
        } else {
            TestEdge::in_process(&tunnel.relay, None).await
        };
        for round in 0..ROUNDS {
            let frames = lookup_over_h2c(edge.addr, &tunnel.host).await;
            assert_one_headers_frame(
                &frames,
                &format!("h2c edge (over_quic={over_quic}), round {round}"),
            );
        }
    }

    let web = WebCert::new();
    let mut config = TestEdge::config(None);
    web.serve_with(&mut config);
    let edge = TestEdge::start(config, tunnel.relay.relay.registry()).await;
    for round in 0..ROUNDS {
        let tls = web.connect(edge.addr, &tunnel.host, b"h2").await;
        let fields = lookup_fields("https", &tunnel.host);
        let frames = h2raw::exchange(tls, &fields, Some(LOOKUP_42), WAIT).await;
        assert_one_headers_frame(&frames, &format!("HTTPS edge, round {round}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_error_code_and_message_reach_a_tonic_client_through_an_https_edge() {
    let tunnel = Tunnel::start().await;
    let web = WebCert::new();
    let mut config = TestEdge::config(None);
    web.serve_with(&mut config);
    let edge = TestEdge::start(config, tunnel.relay.relay.registry()).await;
    let mut client =
        EchoClient::via_tls_edge(edge.addr, &tunnel.host, web.client_config(b"h2")).await;

    let mut request = Request::new(LookupRequest { id: 7 });
    request
        .metadata_mut()
        .insert("x-visitor-tag", MetadataValue::from_static("over-tls"));
    let status = client
        .lookup(request)
        .await
        .expect_err("Lookup must fail with the app's status");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "no widget with id 7");
    assert_eq!(status.metadata().get("x-visitor-tag").unwrap(), "over-tls");

    // The connection is still good for a successful call.
    let reply = client
        .say(Request::new(SayRequest {
            text: "after the error".into(),
            payload: Vec::new(),
        }))
        .await
        .unwrap_or_else(|s| panic!("Say after the error failed: {s:?}"));
    assert_eq!(reply.into_inner().text, "you said: after the error");
}
