//! gRPC through the tunnel, with tonic on both ends (the bench is in `grpc_app`): unary calls,
//! error statuses, server streams, metadata and trailers.

mod grpc_app;

use grpc_app::*;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_grpc_call_through_the_tunnel_gets_the_apps_reply() {
    let tunnel = Tunnel::start().await;
    for over_quic in [false, true] {
        let (_edge, mut client) = tunnel.visitor(over_quic).await;

        // Small.
        let reply = client
            .say(Request::new(SayRequest {
                text: "hello over gRPC".into(),
                payload: b"abc".to_vec(),
            }))
            .await
            .unwrap_or_else(|s| panic!("Say failed (over_quic={over_quic}): {s:?}"))
            .into_inner();
        assert_eq!(reply.text, "you said: hello over gRPC");
        assert_eq!(reply.payload, b"cba");
        assert_eq!(reply.served_by, "dev-app");

        // Larger than HTTP/2's initial 64 KiB windows, both ways.
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let reply = client
            .say(Request::new(SayRequest {
                text: "big".into(),
                payload: payload.clone(),
            }))
            .await
            .unwrap_or_else(|s| panic!("big Say failed (over_quic={over_quic}): {s:?}"))
            .into_inner();
        assert_eq!(reply.text, "you said: big");
        let reversed: Vec<u8> = payload.iter().rev().copied().collect();
        assert!(
            reply.payload == reversed,
            "the 300 kB payload came back altered (over_quic={over_quic})"
        );

        // Several calls in flight at once on the one HTTP/2 connection.
        let calls = (0..8).map(|i| {
            let mut c = EchoClient {
                inner: client.inner.clone(),
            };
            async move {
                let reply = c
                    .say(Request::new(SayRequest {
                        text: format!("call {i}"),
                        payload: vec![i as u8; 20_000],
                    }))
                    .await
                    .unwrap_or_else(|s| panic!("call {i} failed: {s:?}"))
                    .into_inner();
                assert_eq!(reply.text, format!("you said: call {i}"));
                assert_eq!(reply.payload, vec![i as u8; 20_000]);
            }
        });
        futures_util::future::join_all(calls).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_error_status_reaches_the_caller_with_its_code_message_and_details() {
    let tunnel = Tunnel::start().await;
    for over_quic in [false, true] {
        let (_edge, mut client) = tunnel.visitor(over_quic).await;

        let mut request = Request::new(LookupRequest { id: 42 });
        request
            .metadata_mut()
            .insert("x-visitor-tag", MetadataValue::from_static("lookup-7"));
        let status = client
            .lookup(request)
            .await
            .expect_err("Lookup must fail with the app's status");
        assert_eq!(
            status.code(),
            Code::NotFound,
            "wrong code (over_quic={over_quic}): {status:?}"
        );
        assert_eq!(status.message(), "no widget with id 42");
        assert_eq!(
            status.details(),
            b"\x00\x01\xffdetail bytes",
            "grpc-status-details-bin must come back intact (over_quic={over_quic})"
        );
        assert_eq!(status.metadata().get("x-looked-up").unwrap(), "42");
        assert_eq!(status.metadata().get("x-visitor-tag").unwrap(), "lookup-7");

        // An unknown method: the app's own UNIMPLEMENTED, not something the tunnel made up.
        let status = client
            .missing()
            .await
            .expect_err("an unknown method must fail");
        assert_eq!(
            status.code(),
            Code::Unimplemented,
            "wrong code (over_quic={over_quic}): {status:?}"
        );

        // The connection is still good for the next call.
        let reply = client
            .say(Request::new(SayRequest {
                text: "after the errors".into(),
                payload: Vec::new(),
            }))
            .await
            .unwrap_or_else(|s| panic!("Say after errors failed (over_quic={over_quic}): {s:?}"));
        assert_eq!(reply.into_inner().text, "you said: after the errors");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stream_arrives_message_by_message_then_ends_with_the_apps_error_status() {
    const COUNT: u32 = 5;
    let tunnel = Tunnel::start().await;
    for over_quic in [false, true] {
        tunnel.app.sent.lock().unwrap().clear();
        let (_edge, mut client) = tunnel.visitor(over_quic).await;

        let mut request = Request::new(TicksRequest { count: COUNT });
        request
            .metadata_mut()
            .insert("x-visitor-tag", MetadataValue::from_static("ticks-1"));
        let response = client
            .ticks(request)
            .await
            .unwrap_or_else(|s| panic!("Ticks failed (over_quic={over_quic}): {s:?}"));
        assert_eq!(response.metadata().get("x-served-by").unwrap(), "dev-app");
        assert_eq!(response.metadata().get("x-echo-tag").unwrap(), "ticks-1");
        let mut stream = response.into_inner();

        for seq in 0..COUNT {
            let tick = tokio::time::timeout(STEP, stream.message())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "tick {seq} did not arrive, and the app sends nothing more until it does \
                         (over_quic={over_quic})"
                    )
                })
                .unwrap_or_else(|s| panic!("tick {seq}: error (over_quic={over_quic}): {s:?}"))
                .unwrap_or_else(|| {
                    panic!("stream ended before tick {seq} (over_quic={over_quic})")
                });
            assert_eq!(tick.seq, seq, "ticks out of order (over_quic={over_quic})");
            assert_eq!(tick.note, format!("tick {seq} of {COUNT}"));
            assert_eq!(
                tunnel.app.sent(),
                (0..=seq).collect::<Vec<_>>(),
                "the app had not sent the next tick yet"
            );
            tunnel.app.acks.notify_one();
        }

        let status = tokio::time::timeout(STEP, stream.message())
            .await
            .unwrap_or_else(|_| panic!("the final status never came (over_quic={over_quic})"))
            .expect_err("the stream must end with the app's error status");
        assert_eq!(
            status.code(),
            Code::ResourceExhausted,
            "wrong code (over_quic={over_quic}): {status:?}"
        );
        assert_eq!(status.message(), "tick quota used up after 5 ticks");
        assert_eq!(
            status.metadata().get("x-ticks-sent").unwrap(),
            "5",
            "the app's trailers must come back (over_quic={over_quic})"
        );
        assert_eq!(tunnel.app.sent(), (0..COUNT).collect::<Vec<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_request_metadata_reaches_the_app_and_response_headers_and_trailers_come_back() {
    let tunnel = Tunnel::start().await;
    for over_quic in [false, true] {
        let (_edge, mut client) = tunnel.visitor(over_quic).await;

        let mut request = Request::new(SayRequest {
            text: "with metadata".into(),
            payload: Vec::new(),
        });
        request
            .metadata_mut()
            .insert("x-visitor-tag", MetadataValue::from_static("visitor-123"));
        let blob = [0u8, 1, 2, 0xfe, 0xff, b'\n', b':'];
        request
            .metadata_mut()
            .insert_bin("x-visitor-blob-bin", MetadataValue::from_bytes(&blob));
        let response = client
            .say(request)
            .await
            .unwrap_or_else(|s| panic!("Say failed (over_quic={over_quic}): {s:?}"));

        // Response headers, then the trailers (tonic merges them into the metadata of a unary
        // response): a successful call ends with grpc-status 0 in trailers.
        let md = response.metadata();
        assert_eq!(
            md.get("x-served-by").unwrap(),
            "dev-app",
            "response metadata (over_quic={over_quic})"
        );
        assert_eq!(
            md.get("content-type").unwrap(),
            "application/grpc",
            "(over_quic={over_quic})"
        );
        assert_eq!(
            md.get("grpc-status")
                .map(|v| v.to_str().unwrap().to_owned()),
            Some("0".to_owned()),
            "the OK status must come back in trailers (over_quic={over_quic}): {md:?}"
        );

        let reply = response.into_inner();
        assert_eq!(
            reply.visitor_tag, "visitor-123",
            "x-visitor-tag did not reach the app (over_quic={over_quic})"
        );
        assert_eq!(
            reply.visitor_blob, blob,
            "x-visitor-blob-bin did not reach the app intact (over_quic={over_quic})"
        );
    }
}
