//! What an app and a visitor see of each other's HTTP through the edge, beyond the body:
//! HTTP/1.1 trailers both ways, the forwarding headers an app builds absolute URLs from, and
//! the page a visitor gets when the developer's local app cannot be reached.

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use tests::apps::echo_app;
use tests::http_client::{client, send};
use tests::{init_tracing, Pki, TestClient, TestEdge, TestRelay, WAIT};

type Frames = StreamBody<
    futures_util::stream::Iter<
        std::vec::IntoIter<Result<http_body::Frame<Bytes>, std::convert::Infallible>>,
    >,
>;

fn frames(data: &[&'static str], trailers: Option<http::HeaderMap>) -> Frames {
    let mut out: Vec<_> = data
        .iter()
        .map(|d| Ok(http_body::Frame::data(Bytes::from_static(d.as_bytes()))))
        .collect();
    if let Some(t) = trailers {
        out.push(Ok(http_body::Frame::trailers(t)));
    }
    StreamBody::new(futures_util::stream::iter(out))
}

/// A local app (hyper, HTTP/1.1) whose answer is a chunked body with trailers announced in
/// `Trailer` — which hyper sends only to a request that carried `TE: trailers`. It says in
/// `x-te-seen` which `TE` it got, and echoes the request trailer `x-request-sum`.
async fn trailers_app(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        let te = req
                            .headers()
                            .get_all("te")
                            .iter()
                            .map(|v| v.to_str().unwrap_or("?").to_owned())
                            .collect::<Vec<_>>()
                            .join(" | ");
                        let got = req.into_body().collect().await;
                        let request_sum = got
                            .as_ref()
                            .ok()
                            .and_then(|c| c.trailers()?.get("x-request-sum").cloned())
                            .unwrap_or(http::HeaderValue::from_static("none"));
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("x-checksum", http::HeaderValue::from_static("14"));
                        trailers.insert("x-request-sum", request_sum);
                        let resp = http::Response::builder()
                            .header("x-app", name)
                            .header("x-te-seen", if te.is_empty() { "none".into() } else { te })
                            .header("trailer", "x-checksum, x-request-sum")
                            .body(frames(&["hello ", "trailers"], Some(trailers)))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// One request over a fresh HTTP/1.1 connection (hyper's client) to `edge`; the response's
/// head, body and trailers.
async fn h1_exchange(
    edge: SocketAddr,
    req: http::Request<Frames>,
) -> (http::response::Parts, http_body_util::Collected<Bytes>) {
    let tcp = tokio::net::TcpStream::connect(edge).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("answer in time")
        .expect("an answer");
    let (parts, body) = resp.into_parts();
    let collected = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("body in time")
        .expect("whole body");
    (parts, collected)
}

#[tokio::test]
async fn http1_trailers_go_both_ways_for_a_visitor_that_accepts_them() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let production = trailers_app("production").await;
    let dev = trailers_app("developer").await;
    let edge = TestEdge::in_process(&relay, Some(production)).await;
    let token = relay.issue_token("trailers");
    let dev_host = format!("www-{}.example.com", token.routing_key());
    let _client = TestClient::connect(&relay, &pki, token, dev).await;

    for (host, app) in [
        (dev_host.as_str(), "developer"),
        ("www.example.com", "production"),
    ] {
        // A request with a trailer of its own, from a visitor that accepts trailers.
        let mut request_trailers = http::HeaderMap::new();
        request_trailers.insert("x-request-sum", http::HeaderValue::from_static("42"));
        let req = http::Request::post("/upload")
            .header("host", host)
            .header("te", "trailers")
            .header("trailer", "x-request-sum")
            .body(frames(&["abc"], Some(request_trailers)))
            .unwrap();
        let (head, got) = h1_exchange(edge.addr, req).await;
        assert_eq!(head.status, 200, "{app}");
        assert_eq!(head.headers["x-app"], app);
        assert_eq!(
            head.headers["x-te-seen"], "trailers",
            "{app}: TE reaches the app"
        );
        let trailers = got
            .trailers()
            .cloned()
            .unwrap_or_else(|| panic!("{app}: the app's trailers must reach the visitor"));
        assert_eq!(trailers["x-checksum"], "14", "{app}");
        assert_eq!(
            trailers["x-request-sum"], "42",
            "{app}: the visitor's trailer must reach the app"
        );
        assert_eq!(got.to_bytes(), Bytes::from_static(b"hello trailers"));

        // TE as RFC 9110 has a sender write it (named in Connection) and with codings the
        // visitor accepts for its own hop: the app gets `trailers` alone, the visitor them.
        let req = http::Request::get("/")
            .header("host", host)
            .header("te", "gzip;q=0.5, trailers")
            .header("connection", "TE")
            .body(frames(&[], None))
            .unwrap();
        let (head, got) = h1_exchange(edge.addr, req).await;
        assert_eq!(head.headers["x-te-seen"], "trailers", "{app}");
        let trailers = got.trailers().cloned().expect("trailers");
        assert_eq!(trailers["x-checksum"], "14", "{app}");
        assert_eq!(trailers["x-request-sum"], "none", "{app}");
    }
}

/// An app builds absolute URLs (redirects, links in mail) from `X-Forwarded-Host` and
/// `X-Forwarded-Port`: the host keeps the port the visitor wrote, and the port says which of
/// the edge's ports the visitor came in on, whatever the visitor claimed; behind a trusted
/// proxy, the proxy's word counts.
#[tokio::test]
async fn the_app_sees_the_visitors_host_with_its_port_and_the_port_it_came_in_on() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let dev = echo_app("developer").await;
    let production = echo_app("production").await;
    let edge = TestEdge::in_process(&relay, Some(production)).await;
    let mut config = TestEdge::config(Some(production));
    config.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    let behind_proxy = TestEdge::start(config, relay.relay.registry()).await;
    let token = relay.issue_token("ports");
    let key = token.routing_key().to_string();
    let _client = TestClient::connect(&relay, &pki, token, dev).await;

    let port = edge.addr.port().to_string();
    let forged = [
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-port", "1"),
    ];
    for (name, app) in [
        (format!("www-{key}.example.com"), "developer"),
        ("www.example.com".to_owned(), "production"),
    ] {
        let host = format!("{name}:{port}");
        let seen = send(
            &client(),
            edge.addr,
            "GET",
            &host,
            "/",
            &forged,
            Bytes::new(),
        )
        .await
        .json();
        assert_eq!(seen["app"], app);
        assert_eq!(seen["headers"]["x-forwarded-host"], host.as_str(), "{app}");
        assert_eq!(seen["headers"]["x-forwarded-port"], port.as_str(), "{app}");
        assert_eq!(seen["headers"]["x-forwarded-proto"], "http", "{app}");

        // A host written without its port: the port the visitor came in on is still known.
        let seen = send(&client(), edge.addr, "GET", &name, "/", &[], Bytes::new())
            .await
            .json();
        assert_eq!(seen["headers"]["x-forwarded-host"], name.as_str(), "{app}");
        assert_eq!(seen["headers"]["x-forwarded-port"], port.as_str(), "{app}");

        // A TLS terminator on 443 in front of the edge: its claims stand; when it names no
        // port, the visitor's is its scheme's, not the edge's.
        let proxied = [
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "shop.example.com"),
        ];
        let seen = send(
            &client(),
            behind_proxy.addr,
            "GET",
            &name,
            "/",
            &proxied,
            Bytes::new(),
        )
        .await
        .json();
        assert_eq!(
            seen["headers"]["x-forwarded-host"], "shop.example.com",
            "{app}"
        );
        assert_eq!(seen["headers"]["x-forwarded-port"], "443", "{app}");
        let claimed = [("x-forwarded-port", "8443"), ("x-forwarded-proto", "https")];
        let seen = send(
            &client(),
            behind_proxy.addr,
            "GET",
            &name,
            "/",
            &claimed,
            Bytes::new(),
        )
        .await
        .json();
        assert_eq!(seen["headers"]["x-forwarded-port"], "8443", "{app}");
    }
}

/// The developer is connected but their app is not up (yet): a browser gets a page that
/// reloads itself, like the "developer offline" one, so it becomes the app once it answers;
/// anything else gets plain text. Both name the local address and say it is the local app.
#[tokio::test]
async fn an_unreachable_local_app_gives_browsers_a_self_refreshing_page_and_others_text() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let edge = TestEdge::in_process(&relay, None).await;
    // A port with nothing listening: bind, note the port, close.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let token = relay.issue_token("down");
    let host = format!("www-{}.example.com", token.routing_key());
    let _client = TestClient::connect(&relay, &pki, token, dead).await;

    let browser = [("accept", "text/html,application/xhtml+xml,*/*;q=0.8")];
    let page = send(
        &client(),
        edge.addr,
        "GET",
        &host,
        "/",
        &browser,
        Bytes::new(),
    )
    .await;
    assert_eq!(page.status, 502, "{}", page.text());
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(page.headers["retry-after"], "5");
    assert_eq!(page.headers["cache-control"], "no-store");
    let html = page.text();
    assert!(
        html.contains("<meta http-equiv=\"refresh\" content=\"5\">"),
        "{html}"
    );
    assert!(
        html.contains("<title>Local app unreachable</title>"),
        "{html}"
    );
    assert!(
        html.contains(&format!("cannot reach your local app at {dead}")),
        "{html}"
    );

    let text = send(
        &client(),
        edge.addr,
        "GET",
        &host,
        "/",
        &[("accept", "*/*")],
        Bytes::new(),
    )
    .await;
    assert_eq!(text.status, 502);
    assert_eq!(text.headers["content-type"], "text/plain; charset=utf-8");
    assert!(
        text.text().starts_with("Local app unreachable\n"),
        "{}",
        text.text()
    );
    assert!(text
        .text()
        .contains(&format!("cannot reach your local app at {dead}")));
}
