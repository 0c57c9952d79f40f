//! Bodies stream through the tunnel: nothing waits for the end of a message.

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tests::{init_tracing, Pki, TestClient, TestEdge, TestRelay, WAIT};
use tokio::sync::mpsc;

/// An app that answers one server-sent-events stream, one event per message on `events`.
async fn sse_app(events: mpsc::UnboundedReceiver<String>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let events = std::sync::Arc::new(tokio::sync::Mutex::new(Some(events)));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let events = events.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let events = events.clone();
                    async move {
                        let rx = events.lock().await.take().expect("one SSE stream per test");
                        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                            rx.recv().await.map(|e| {
                                (
                                    Ok::<_, std::convert::Infallible>(http_body::Frame::data(
                                        Bytes::from(format!("data: {e}\n\n")),
                                    )),
                                    rx,
                                )
                            })
                        });
                        let resp = http::Response::builder()
                            .header("content-type", "text/event-stream")
                            .body(StreamBody::new(stream))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_arrive_one_by_one_through_both_edge_kinds() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    for over_quic in [false, true] {
        let (tx, rx) = mpsc::unbounded_channel();
        let app = sse_app(rx).await;
        let token = relay.issue_token("sse");
        let host = format!("www-{}.example.com", token.routing_key());
        let _client = TestClient::connect(&relay, &pki, token, app).await;
        let edge = if over_quic {
            TestEdge::over_quic(&relay, &pki, None).await
        } else {
            TestEdge::in_process(&relay, None).await
        };

        let req = http::Request::get(format!("http://{}/events", edge.addr))
            .header("host", host)
            .header("accept", "text/event-stream")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let http: hyper_util::client::legacy::Client<_, http_body_util::Empty<Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        tx.send("first".into()).unwrap();
        let resp = tokio::time::timeout(WAIT, http.request(req))
            .await
            .unwrap()
            .unwrap();
        if resp.status() != 200 {
            let status = resp.status();
            let text = resp.into_body().collect().await.map(|b| b.to_bytes());
            panic!("over_quic={over_quic}: {status} {text:?}");
        }
        let mut body = resp.into_body();
        for i in 0..5 {
            if i > 0 {
                tx.send(format!("event {i}")).unwrap();
            }
            // The next event is only sent once this one has arrived: buffering anywhere on
            // the way would stall here.
            let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "event {i} did not arrive before the next was sent (over_quic={over_quic})"
                    )
                })
                .unwrap()
                .unwrap();
            let data = frame.into_data().unwrap();
            let expected = if i == 0 {
                "first".to_owned()
            } else {
                format!("event {i}")
            };
            assert_eq!(data, Bytes::from(format!("data: {expected}\n\n")));
        }
        drop(tx);
        assert!(
            tokio::time::timeout(WAIT, body.frame())
                .await
                .unwrap()
                .is_none(),
            "the stream ends when the app ends it"
        );
    }
}

/// A WebSocket echo app (a real WebSocket server).
async fn websocket_echo_app() -> std::net::SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                // Polling on after a Close lets tungstenite send the Close reply and finish the
                // handshake; the stream then ends.
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() {
                        continue;
                    }
                    if ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Sends Close and reads until the stream ends: whether the server's Close came back (the
/// close handshake completed).
async fn close_cleanly<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    ws.close(None).await.unwrap();
    let mut closed = false;
    while let Ok(Some(msg)) = tokio::time::timeout(WAIT, ws.next()).await {
        match msg {
            Ok(Message::Close(_)) => closed = true,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    closed
}

/// A WebSocket to production (no routing key) is upgraded through the edge's production pool:
/// it echoes, closes cleanly, and the upgraded connection never goes back to the pool (the
/// next upgrades go out normally).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_to_production_upgrades_through_the_edge_and_the_pool_stays_sound() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let ws_app = websocket_echo_app().await;
    let mut config = TestEdge::config(Some(ws_app));
    // One worker: every connection shares one production pool.
    config.workers = Some(1);
    let edge = TestEdge::start(config, relay.relay.registry()).await;
    for round in 0..3 {
        let mut request = format!("ws://{}/socket", edge.addr)
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("host", "shop.example.com".parse().unwrap());
        let tcp = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
        let (mut ws, resp) =
            tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, tcp))
                .await
                .unwrap()
                .unwrap();
        assert_eq!(resp.status(), 101, "round {round}");
        let text = format!("hello production, round {round}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let echo = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echo, Message::text(text));
        assert!(
            close_cleanly(&mut ws).await,
            "no Close frame came back (round {round})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_text_and_a_1_mib_binary_message_echo_through_the_tunnel_then_close_cleanly() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let app = websocket_echo_app().await;
    let token = relay.issue_token("ws");
    let host = format!("www-{}.example.com", token.routing_key());
    let _client = TestClient::connect(&relay, &pki, token, app).await;
    for over_quic in [false, true] {
        let edge = if over_quic {
            TestEdge::over_quic(&relay, &pki, None).await
        } else {
            TestEdge::in_process(&relay, None).await
        };
        let mut request = format!("ws://{}/socket", edge.addr)
            .into_client_request()
            .unwrap();
        request.headers_mut().insert("host", host.parse().unwrap());
        let tcp = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
        let (mut ws, resp) =
            tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, tcp))
                .await
                .unwrap()
                .unwrap();
        assert_eq!(resp.status(), 101);

        ws.send(Message::text("hello through the tunnel"))
            .await
            .unwrap();
        let echo = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echo, Message::text("hello through the tunnel"));

        let big: Vec<u8> = (0..(1 << 20)).map(|i| (i * 31 % 251) as u8).collect();
        ws.send(Message::binary(big.clone())).await.unwrap();
        let echo = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            echo.into_data().as_ref(),
            big.as_slice(),
            "1 MiB binary message (over_quic={over_quic})"
        );

        assert!(
            close_cleanly(&mut ws).await,
            "no Close frame came back (over_quic={over_quic})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_who_leaves_mid_upload_cancels_the_request_at_the_developers_app() {
    use tokio::io::AsyncWriteExt;
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    // The app reports how the request body ended: complete, or cut.
    let (outcome_tx, mut outcome_rx) = mpsc::unbounded_channel::<&'static str>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = outcome_tx.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let mut body = req.into_body();
                            let outcome = loop {
                                match body.frame().await {
                                    None => break "complete",
                                    Some(Err(_)) => break "cut",
                                    Some(Ok(_)) => {}
                                }
                            };
                            let _ = tx.send(outcome);
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Empty::<Bytes>::new(),
                            ))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let token = relay.issue_token("upload");
    let host = format!("www-{}.example.com", token.routing_key());
    let _client = TestClient::connect(&relay, &pki, token, app).await;
    let edge = TestEdge::in_process(&relay, None).await;

    let mut visitor = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    let head = format!("POST /upload HTTP/1.1\r\nhost: {host}\r\ncontent-length: 1000000\r\n\r\n");
    visitor.write_all(head.as_bytes()).await.unwrap();
    visitor.write_all(&[b'x'; 200_000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(visitor);
    let outcome = tokio::time::timeout(WAIT, outcome_rx.recv())
        .await
        .expect("the app never saw the request end")
        .unwrap();
    assert_eq!(
        outcome, "cut",
        "the developer's app must see the upload cut, not a complete body"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_developer_app_that_dies_mid_response_gives_the_visitor_an_error_not_a_hang() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    // Promises 100 000 bytes, sends 10, dies.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n0123456789")
                .await;
            drop(s);
        }
    });
    let token = relay.issue_token("dies");
    let host = format!("www-{}.example.com", token.routing_key());
    let _client = TestClient::connect(&relay, &pki, token, app).await;
    for over_quic in [false, true] {
        let edge = if over_quic {
            TestEdge::over_quic(&relay, &pki, None).await
        } else {
            TestEdge::in_process(&relay, None).await
        };
        let http: hyper_util::client::legacy::Client<_, http_body_util::Empty<Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let req = http::Request::get(format!("http://{}/", edge.addr))
            .header("host", &host)
            .body(http_body_util::Empty::new())
            .unwrap();
        // The error may surface at the head (hyper aborts before flushing it) or in the body;
        // what matters is that it comes, quickly, and is not a short success.
        let outcome = tokio::time::timeout(WAIT, async {
            let resp = http.request(req).await.map_err(|e| e.to_string())?;
            resp.into_body()
                .collect()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await
        .expect("the visitor hangs on a dead app");
        assert!(
            outcome.is_err(),
            "a truncated response must be an error, not a short success (over_quic={over_quic})"
        );
    }
}

/// An HTTP/2 (h2c, prior knowledge) app that answers like a gRPC server: a body, then trailers
/// with `grpc-status: 3` and the request's body length.
async fn h2c_grpc_like_app() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let version = format!("{:?}", req.version());
                        let got = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes().len())
                            .unwrap_or(0);
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", "3".parse().unwrap());
                        trailers.insert("x-received", got.to_string().parse().unwrap());
                        let frames = vec![
                            Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(
                                format!("app saw {version}"),
                            ))),
                            Ok(http_body::Frame::trailers(trailers)),
                        ];
                        let resp = http::Response::builder()
                            .header("content-type", "application/grpc")
                            .body(StreamBody::new(futures_util::stream::iter(frames)))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
            });
        }
    });
    addr
}

/// Sends `req` over a fresh HTTP/2 (prior knowledge) connection to `edge`, whatever host its
/// URI names (as a browser resolving `www-<key>.example.com` to the edge would).
async fn h2_request(
    edge: std::net::SocketAddr,
    req: http::Request<http_body_util::Full<Bytes>>,
) -> http::Response<hyper::body::Incoming> {
    let tcp = tokio::net::TcpStream::connect(edge).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_visitors_reach_http1_and_h2c_apps_and_grpc_trailers_come_back() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let edge = TestEdge::in_process(&relay, None).await;

    // An HTTP/2 visitor, an HTTP/1.1 app.
    let h1_app = tests::apps::echo_app("h1 app").await;
    let token = relay.issue_token("h1");
    let h1_host = format!("www-{}.example.com", token.routing_key());
    let _h1 = TestClient::connect(&relay, &pki, token, h1_app).await;
    let req = http::Request::post(format!("http://{h1_host}/over-h2"))
        .body(http_body_util::Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let resp = h2_request(edge.addr, req).await;
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["app"], "h1 app");
    assert_eq!(seen["body_len"], 5);

    // An HTTP/2 visitor, an h2c app answering with gRPC-style trailers.
    let h2_app = h2c_grpc_like_app().await;
    let token = relay.issue_token("grpc");
    let grpc_host = format!("www-{}.example.com", token.routing_key());
    let mut config = TestClient::agent_config(relay.addr, &pki.ca(), token, h2_app);
    config.h2c = true;
    let mut grpc = TestClient::spawn(config);
    grpc.wait_connected().await;
    let req = http::Request::post(format!("http://{grpc_host}/pkg.Service/Method"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(Bytes::from(vec![0u8; 70_000])))
        .unwrap();
    let resp = h2_request(edge.addr, req).await;
    assert_eq!(resp.status(), 200);
    let collected = tokio::time::timeout(WAIT, resp.into_body().collect())
        .await
        .unwrap()
        .unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("trailers must reach the caller");
    assert_eq!(trailers["grpc-status"], "3");
    assert_eq!(trailers["x-received"], "70000");
    assert_eq!(
        collected.to_bytes(),
        Bytes::from_static(b"app saw HTTP/2.0")
    );
}
