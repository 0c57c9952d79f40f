//! Where requests go: developer by host or header, everyone else to production.

use bytes::Bytes;
use tests::apps::{echo_app, sha256_hex};
use tests::http_client::{client, get, send};
use tests::{init_tracing, Pki, TestClient, TestEdge, TestRelay};

#[tokio::test]
async fn developer_request_arrives_intact_and_keyless_requests_reach_production() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let prod = echo_app("production").await;
    let dev = echo_app("developer").await;
    let edge = TestEdge::in_process(&relay, Some(prod)).await;
    let token = relay.issue_token("alice");
    let key = token.routing_key().to_string();
    let _client = TestClient::connect(&relay, &pki, token, dev).await;

    let body = Bytes::from_static(b"{\"order\": 42, \"note\": \"caf\xc3\xa9\"}");
    let reply = send(
        &client(),
        edge.addr,
        "PATCH",
        &format!("www-{key}.example.com"),
        "/orders/42?expand=items&x=%20y",
        &[
            ("x-custom", "one"),
            ("x-repeated", "a"),
            ("x-repeated", "b"),
            ("x-forwarded-for", "6.6.6.6"),
        ],
        body.clone(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = reply.json();
    assert_eq!(seen["app"], "developer");
    assert_eq!(seen["method"], "PATCH");
    assert_eq!(seen["uri"], "/orders/42?expand=items&x=%20y");
    assert_eq!(seen["headers"]["x-custom"], "one");
    assert_eq!(seen["headers"]["x-repeated"], "a | b");
    // The app sees the production host; the visitor's stays in X-Forwarded-Host.
    assert_eq!(seen["headers"]["host"], "www.example.com");
    assert_eq!(seen["body_len"], body.len());
    assert_eq!(seen["body_sha256"], sha256_hex(&body));
    // A visitor cannot claim another address: the edge replaces it with the socket's.
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "http");
    assert_eq!(
        seen["headers"]["x-forwarded-host"],
        format!("www-{key}.example.com")
    );

    // Same path, no key: production.
    let reply = get(
        edge.addr,
        "www.example.com",
        "/orders/42?expand=items&x=%20y",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["app"], "production");
    assert_eq!(reply.json()["uri"], "/orders/42?expand=items&x=%20y");
}

#[tokio::test]
async fn routing_header_reaches_the_developer_and_is_removed() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let prod = echo_app("production").await;
    let dev = echo_app("developer").await;
    let edge = TestEdge::in_process(&relay, Some(prod)).await;
    let token = relay.issue_token("alice");
    let key = token.routing_key().to_string();
    let _client = TestClient::connect(&relay, &pki, token, dev).await;

    let reply = send(
        &client(),
        edge.addr,
        "GET",
        "www.example.com",
        "/h",
        &[("X-DevInProd-Key", &key)],
        Bytes::new(),
    )
    .await;
    assert_eq!(reply.json()["app"], "developer");
    assert!(
        reply.json()["headers"].get("x-devinprod-key").is_none(),
        "routing header leaked to the app"
    );

    let reply = send(
        &client(),
        edge.addr,
        "GET",
        "www.example.com",
        "/h",
        &[("x-devinprod-key", "not-a-key")],
        Bytes::new(),
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.text());
}

/// Behind a load balancer listed in `trusted_proxies`, the edge keeps what it says about the
/// visitor and adds its own hop; from anyone else, those claims are replaced.
#[tokio::test]
async fn a_trusted_proxy_forwarding_chain_is_extended_and_a_visitors_is_replaced() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let dev = echo_app("developer").await;
    let mut config = tests::TestEdge::config(None);
    config.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    let trusting = tests::TestEdge::start(config, relay.relay.registry()).await;
    let untrusting = TestEdge::in_process(&relay, None).await;
    let token = relay.issue_token("alice");
    let key = token.routing_key().to_string();
    let _client = TestClient::connect(&relay, &pki, token, dev).await;

    let claims = [
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "shop.example.com"),
        ("x-real-ip", "203.0.113.7"),
    ];
    let host = format!("www-{key}.example.com");
    // What the developer's app saw of a request with those claims, through `edge`.
    let seen_through = |edge| {
        let (host, claims) = (&host, &claims);
        async move {
            send(&client(), edge, "GET", host, "/", claims, Bytes::new())
                .await
                .json()
        }
    };
    let seen = seen_through(trusting.addr).await;
    assert_eq!(seen["app"], "developer");
    assert_eq!(seen["headers"]["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    assert_eq!(seen["headers"]["x-forwarded-host"], "shop.example.com");
    assert_eq!(seen["headers"]["x-real-ip"], "203.0.113.7");

    let seen = seen_through(untrusting.addr).await;
    assert_eq!(seen["app"], "developer");
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "http");
    assert_eq!(seen["headers"]["x-forwarded-host"], host);
    assert!(seen["headers"].get("x-real-ip").is_none(), "{seen}");
}

#[tokio::test]
async fn two_developers_each_receive_only_their_own_requests() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let prod = echo_app("production").await;
    let alice_app = echo_app("alice").await;
    let bob_app = echo_app("bob").await;
    let edge = TestEdge::in_process(&relay, Some(prod)).await;
    let alice = relay.issue_token("alice");
    let bob = relay.issue_token("bob");
    let (ka, kb) = (
        alice.routing_key().to_string(),
        bob.routing_key().to_string(),
    );
    let _a = TestClient::connect(&relay, &pki, alice, alice_app).await;
    let _b = TestClient::connect(&relay, &pki, bob, bob_app).await;

    for _ in 0..5 {
        assert_eq!(
            get(edge.addr, &format!("www-{ka}.example.com"), "/")
                .await
                .json()["app"],
            "alice"
        );
        assert_eq!(
            get(edge.addr, &format!("www-{kb}.example.com"), "/")
                .await
                .json()["app"],
            "bob"
        );
    }
    // Browsers lowercase host names, but a hand-typed capitalised host must still match.
    let shouted = format!("WWW-{}.Example.COM", ka.to_uppercase());
    assert_eq!(get(edge.addr, &shouted, "/").await.json()["app"], "alice");
}

#[tokio::test]
async fn offline_developer_gets_a_502_that_says_so_in_html_or_text() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let prod = echo_app("production").await;
    let edge = TestEdge::in_process(&relay, Some(prod)).await;
    let key = relay
        .issue_token("nobody-connected")
        .routing_key()
        .to_string();

    let plain = get(edge.addr, &format!("www-{key}.example.com"), "/").await;
    assert_eq!(plain.status, 502);
    assert!(
        plain
            .text()
            .contains(&format!("No developer is connected for routing key {key}")),
        "{}",
        plain.text()
    );
    assert!(plain.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));

    let html = send(
        &client(),
        edge.addr,
        "GET",
        &format!("www-{key}.example.com"),
        "/",
        &[("accept", "text/html,*/*")],
        Bytes::new(),
    )
    .await;
    assert_eq!(html.status, 502);
    assert!(html.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(html.text().contains("<h1>Developer offline</h1>"));
}

#[tokio::test]
async fn separate_edge_over_quic_routes_developers_and_reports_offline_ones() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let prod = echo_app("production").await;
    let dev = echo_app("developer").await;
    let edge = TestEdge::over_quic(&relay, &pki, Some(prod)).await;
    let token = relay.issue_token("alice");
    let key = token.routing_key().to_string();
    let _client = TestClient::connect(&relay, &pki, token, dev).await;

    let body = Bytes::from(vec![7u8; 300_000]);
    let reply = send(
        &client(),
        edge.addr,
        "POST",
        &format!("www-{key}.example.com"),
        "/via-quic",
        &[],
        body.clone(),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["app"], "developer");
    assert_eq!(reply.json()["body_sha256"], sha256_hex(&body));
    assert_eq!(
        get(edge.addr, "www.example.com", "/").await.json()["app"],
        "production"
    );
    let offline = get(edge.addr, "www-zzzzzz.example.com", "/").await;
    assert_eq!(offline.status, 502);
    assert!(offline.text().contains("zzzzzz"), "{}", offline.text());
}

#[tokio::test]
async fn local_app_down_gives_the_visitor_a_502_naming_the_local_address() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let edge = TestEdge::in_process(&relay, None).await;
    // A port with nothing listening: bind, note the port, close.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let token = relay.issue_token("alice");
    let key = token.routing_key().to_string();
    let _client = TestClient::connect(&relay, &pki, token, dead).await;
    let reply = get(edge.addr, &format!("www-{key}.example.com"), "/").await;
    assert_eq!(reply.status, 502);
    assert!(
        reply
            .text()
            .contains(&format!("cannot reach your local app at {dead}")),
        "{}",
        reply.text()
    );
}

#[tokio::test]
async fn a_routing_link_sets_a_cookie_that_sticks_and_can_be_cleared() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let prod = echo_app("production").await;
    let dev = echo_app("developer").await;
    let edge = TestEdge::in_process(&relay, Some(prod)).await;
    let token = relay.issue_token("alice");
    let key = token.routing_key().to_string();
    let _client = TestClient::connect(&relay, &pki, token, dev).await;

    let first = get(
        edge.addr,
        "www.example.com",
        &format!("/shop?devinprod={key}&page=2"),
    )
    .await;
    assert_eq!(first.json()["app"], "developer");
    assert_eq!(
        first.json()["uri"],
        "/shop?page=2",
        "the routing link never reaches the app"
    );
    let set = first.headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set.starts_with(&format!("devinprod_key={key};")) && set.contains("HttpOnly"),
        "{set}"
    );

    let cookie = format!("devinprod_key={key}");
    let again = send(
        &client(),
        edge.addr,
        "GET",
        "www.example.com",
        "/cart",
        &[("cookie", &cookie)],
        Bytes::new(),
    )
    .await;
    assert_eq!(
        again.json()["app"],
        "developer",
        "the cookie keeps the browsing session on the developer"
    );

    let off = send(
        &client(),
        edge.addr,
        "GET",
        "www.example.com",
        "/?devinprod=off",
        &[("cookie", &cookie)],
        Bytes::new(),
    )
    .await;
    assert_eq!(off.json()["app"], "production");
    assert!(off.headers["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
}

#[tokio::test]
async fn on_missing_error_shows_a_self_refreshing_page_and_production_falls_back() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let prod = echo_app("production").await;
    let key = relay.issue_token("offline").routing_key().to_string();
    let host = format!("www-{key}.example.com");

    let default_edge = TestEdge::over_quic(&relay, &pki, Some(prod)).await;
    let page = send(
        &client(),
        default_edge.addr,
        "GET",
        &host,
        "/",
        &[("accept", "text/html")],
        Bytes::new(),
    )
    .await;
    assert_eq!(page.status, 502);
    assert!(
        page.text().contains("<meta http-equiv=\"refresh\""),
        "{}",
        page.text()
    );
    assert_eq!(page.headers["retry-after"], "5");

    let mut config = tests::TestEdge::config(Some(prod));
    config.on_missing = edge::OnMissing::Production;
    config.state_dir = pki.path().to_owned();
    let connector = edge::RelayConnector::new(&config, &relay.addr.to_string()).unwrap();
    let fallback = TestEdge::start(config, std::sync::Arc::new(connector)).await;
    let body = Bytes::from_static(b"keep me");
    let reply = send(
        &client(),
        fallback.addr,
        "POST",
        &host,
        "/checkout",
        &[],
        body.clone(),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["app"], "production");
    assert_eq!(
        reply.json()["body_sha256"],
        sha256_hex(&body),
        "the body reached production intact"
    );
}

#[tokio::test]
async fn staff_only_developer_routes_refuse_visitors_and_serve_signed_in_staff() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let prod = echo_app("production").await;
    let dev = echo_app("developer").await;
    let mut config = tests::TestEdge::config(Some(prod));
    config.access = Some(edge::access::AccessMode::Staff);
    config.staff_secret = Some("a staff secret of at least thirty-two chars".into());
    // One sign-in covers every www-<key> host (the token is signed for this domain).
    config.staff_cookie_domain = Some("example.com".into());
    let edge = TestEdge::start(config, relay.relay.registry()).await;
    let token = relay.issue_token("alice");
    let key = token.routing_key().to_string();
    let host = format!("www-{key}.example.com");
    let _client = TestClient::connect(&relay, &pki, token, dev).await;

    // A visitor (a real user sent a link) is refused, and no routing cookie is set.
    let refused = get(edge.addr, &host, "/").await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert!(
        refused.text().contains("only to DevInProd staff"),
        "{}",
        refused.text()
    );
    let link = get(edge.addr, "www.example.com", &format!("/?devinprod={key}")).await;
    assert_eq!(link.status, 403);
    assert!(link.headers.get("set-cookie").is_none());
    // Production is unaffected.
    assert_eq!(
        get(edge.addr, "www.example.com", "/").await.json()["app"],
        "production"
    );

    // Staff sign in (the operator puts this path behind SSO) and get through.
    let login = get(edge.addr, "www.example.com", "/_devinprod/login").await;
    assert_eq!(login.status, 200);
    let set = login.headers["set-cookie"].to_str().unwrap();
    let staff_cookie = set.split(';').next().unwrap().to_owned();
    assert!(staff_cookie.starts_with("devinprod_staff=v2."), "{set}");
    assert!(set.contains("; Domain=example.com"), "{set}");
    let cookies = format!("{staff_cookie}; session=user-session");
    let served = send(
        &client(),
        edge.addr,
        "GET",
        &host,
        "/",
        &[("cookie", &cookies)],
        Bytes::new(),
    )
    .await;
    assert_eq!(served.status, 200);
    assert_eq!(served.json()["app"], "developer");
    // The staff credential never reaches the developer's app; the app's own cookies do.
    assert_eq!(served.json()["headers"]["cookie"], "session=user-session");

    let forged = send(
        &client(),
        edge.addr,
        "GET",
        &host,
        "/",
        &[("cookie", "devinprod_staff=v1.99999999999.00")],
        Bytes::new(),
    )
    .await;
    assert_eq!(forged.status, 403);
}

#[tokio::test]
async fn limits_and_timeouts_answer_with_their_status_never_a_hang() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    // An app that accepts and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let token = relay.issue_token("slow");
    let host = format!("www-{}.example.com", token.routing_key());
    let _client = TestClient::connect(&relay, &pki, token, silent).await;
    let mut config = tests::TestEdge::config(None);
    config.response_timeout_ms = 600;
    config.max_requests_per_developer = 1;
    config.max_request_body_bytes = 10;
    config.max_header_bytes = 8192;
    let edge = TestEdge::start(config, relay.relay.registry()).await;

    // 504: the developer's app does not start answering in time. Meanwhile, 503 for a second
    // request: one in flight is the limit here.
    let first = {
        let host = host.clone();
        tokio::spawn(async move { get(edge.addr, &host, "/slow").await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let busy = get(edge.addr, &host, "/also").await;
    assert_eq!(busy.status, 503, "{}", busy.text());
    let slow = first.await.unwrap();
    assert_eq!(slow.status, 504, "{}", slow.text());
    assert!(
        slow.text()
            .contains("did not start answering within 600 ms"),
        "{}",
        slow.text()
    );

    // 413: a declared body over the limit.
    let big = send(
        &client(),
        edge.addr,
        "POST",
        &host,
        "/upload",
        &[],
        Bytes::from(vec![0u8; 100]),
    )
    .await;
    assert_eq!(big.status, 413, "{}", big.text());

    // 431: a request head over the limit.
    let huge = "x".repeat(20_000);
    let too_long = send(
        &client(),
        edge.addr,
        "GET",
        &host,
        "/",
        &[("x-big", &huge)],
        Bytes::new(),
    )
    .await;
    assert_eq!(too_long.status, 431);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_on_the_edge_with_a_wildcard_certificate_verified_by_curl_over_http1_and_http2() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let dev = echo_app("developer").await;
    let token = relay.issue_token("tls");
    let key = token.routing_key().to_string();
    let _client = TestClient::connect(&relay, &pki, token, dev).await;
    // A wildcard certificate for the public names, from its own CA.
    let web = tempfile::tempdir().unwrap();
    certs::ensure_pki(web.path(), &["*.example.com".into()]).unwrap();
    let mut config = tests::TestEdge::config(None);
    config.tls_cert = Some(web.path().join("relay.pem"));
    config.tls_key = Some(web.path().join("relay.key"));
    let edge = TestEdge::start(config, relay.relay.registry()).await;

    let host = format!("www-{key}.example.com");
    for http in ["--http1.1", "--http2"] {
        let args = vec![
            "-sS".to_owned(),
            http.to_owned(),
            "--cacert".to_owned(),
            web.path().join("ca.pem").display().to_string(),
            "--resolve".to_owned(),
            format!("{host}:{}:127.0.0.1", edge.addr.port()),
            "-w".to_owned(),
            "\n%{http_version}".to_owned(),
            format!("https://{host}:{}/secure?x=1", edge.addr.port()),
        ];
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl")
                .args(args)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "curl {http}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, version) = text.rsplit_once('\n').unwrap();
        let seen: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(seen["app"], "developer");
        assert_eq!(seen["uri"], "/secure?x=1");
        assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
        assert_eq!(version, if http == "--http2" { "2" } else { "1.1" }, "ALPN");
    }
}

#[tokio::test]
async fn a_visitor_stalling_mid_head_gets_408_and_an_idle_one_is_closed_while_a_slow_upload_is_not()
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let app = tests::apps::echo_app("developer").await;
    let token = relay.issue_token("slow");
    let host = format!("www-{}.example.com", token.routing_key());
    let _dev = TestClient::connect(&relay, &pki, token, app).await;
    let mut config = tests::TestEdge::config(None);
    config.header_read_timeout_ms = 300;
    config.visitor_idle_timeout_ms = 300;
    let edge = TestEdge::start(config, relay.relay.registry()).await;

    // A head that starts and stalls: 408, then the connection closes.
    let mut s = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: www.example.com\r\nx-slow: ")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(tests::WAIT, s.read_to_end(&mut out))
        .await
        .expect("the edge kept a stalled visitor")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert_eq!(
        text.matches("HTTP/1.1").count(),
        1,
        "one answer only: {text}"
    );

    // A connection that never sends anything is closed without a response.
    let mut s = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(tests::WAIT, s.read_to_end(&mut out))
        .await
        .expect("the edge kept a silent visitor")
        .unwrap();
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));

    // An upload slower than both clocks (pauses of 3x the timeouts between body chunks) is
    // not cut off: the clocks only run between requests. Then the keep-alive connection,
    // idle after its response, is closed quietly.
    let mut s = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    s.write_all(
        format!("POST /upload HTTP/1.1\r\nhost: {host}\r\ncontent-length: 6\r\n\r\nab").as_bytes(),
    )
    .await
    .unwrap();
    for chunk in [&b"cd"[..], &b"ef"[..]] {
        tokio::time::sleep(std::time::Duration::from_millis(900)).await;
        s.write_all(chunk).await.unwrap();
    }
    let mut out = Vec::new();
    tokio::time::timeout(tests::WAIT, s.read_to_end(&mut out))
        .await
        .expect("the edge kept an idle keep-alive connection")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(text.contains("\"body_len\":6"), "{text}");
    assert!(!text.contains("408"), "{text}");
}

/// Sends `raw` on a new connection to the edge and returns the response's JSON body (the echo
/// app's report), read until the connection closes (`connection: close` in `raw`).
async fn raw_exchange(edge: std::net::SocketAddr, raw: &str) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(edge).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the edge answered and closed")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = text.split_once("\r\n\r\n").expect("a response head").1;
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test]
async fn body_framing_reaches_the_app_as_the_visitor_sent_it() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let dev = echo_app("developer").await;
    let edge = TestEdge::in_process(&relay, None).await;
    let token = relay.issue_token("framing");
    let host = format!("www-{}.example.com", token.routing_key());
    let _client = TestClient::connect(&relay, &pki, token, dev).await;

    // A POST without a body stays without one: no `transfer-encoding: chunked` invented.
    let seen = raw_exchange(
        edge.addr,
        &format!("POST /empty HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["body_len"], 0);
    assert!(seen["headers"].get("transfer-encoding").is_none(), "{seen}");

    // A chunked body on a GET (search APIs do this) arrives whole, still chunked: the edge
    // drops the hop-by-hop header and the client must not let the body fall to length 0.
    let seen = raw_exchange(
        edge.addr,
        &format!(
            "GET /search HTTP/1.1\r\nhost: {host}\r\ntransfer-encoding: chunked\r\n\
             connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["body_len"], 11);
    assert_eq!(seen["body_sha256"], tests::apps::sha256_hex(b"hello world"));
    assert_eq!(seen["headers"]["transfer-encoding"], "chunked");

    // A body with its length keeps it.
    let seen = raw_exchange(
        edge.addr,
        &format!(
            "PUT /item HTTP/1.1\r\nhost: {host}\r\ncontent-length: 3\r\nconnection: close\r\n\r\nabc"
        ),
    )
    .await;
    assert_eq!(seen["body_len"], 3);
    assert_eq!(seen["headers"]["content-length"], "3");
    assert!(seen["headers"].get("transfer-encoding").is_none(), "{seen}");
}

/// A local app that answers each request with the number of the connection it came on, and
/// closes a connection after it has been idle for `idle_close`.
async fn numbered_connections_app(idle_close: std::time::Duration) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut n = 0u32;
        while let Ok((mut s, _)) = listener.accept().await {
            n += 1;
            let conn = n;
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let read = tokio::time::timeout(idle_close, s.read(&mut chunk)).await;
                    let Ok(Ok(got)) = read else { return }; // idle too long, or an error: close
                    if got == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..got]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let body = format!("conn-{conn}");
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn the_client_reuses_app_connections_and_replaces_ones_the_app_closed() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let edge = TestEdge::in_process(&relay, None).await;
    let app = numbered_connections_app(std::time::Duration::from_millis(800)).await;
    let token = relay.issue_token("alice");
    let host = format!("www-{}.example.com", token.routing_key());
    let _client = TestClient::connect(&relay, &pki, token, app).await;

    let first = get(edge.addr, &host, "/").await;
    assert_eq!((first.status, first.text()), (200, "conn-1".to_owned()));
    // Kept alive and reused: the next request comes on the same connection.
    let second = get(edge.addr, &host, "/").await;
    assert_eq!((second.status, second.text()), (200, "conn-1".to_owned()));
    // The app closes the idle connection; the next request gets a new one, not an error.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let third = get(edge.addr, &host, "/").await;
    assert_eq!((third.status, third.text()), (200, "conn-2".to_owned()));
}

/// Production traffic is served by every edge worker thread (`workers`), each over kept-alive
/// connections of its own: many visitors' requests reach production intact over few
/// connections, and stopping the edge ends its worker threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_is_served_by_the_edge_workers_over_kept_alive_connections() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    init_tracing();
    // A production app that counts the connections it accepted.
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let prod = listener.local_addr().unwrap();
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: http::Request<_>| async move {
                    let body = format!("production saw {}", req.uri());
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(Bytes::from(body)),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let mut config = TestEdge::config(Some(prod));
    config.workers = Some(3);
    let edge = TestEdge::start(config, relay.relay.registry()).await;

    // This edge's worker threads (`edge-PORT-wN`; other tests run edges in this process too).
    let prefix = format!("edge-{}-w", edge.addr.port());
    let workers = || {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.starts_with(&prefix))
            .count()
    };
    // Worker 0 is the caller's runtime; 1 and 2 are threads, started as the edge starts.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while workers() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no edge worker threads"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(workers(), 2);

    const VISITORS: usize = 48;
    const EACH: usize = 10;
    let http = client();
    let mut tasks = Vec::new();
    for v in 0..VISITORS {
        let http = http.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                let path = format!("/v{v}/r{i}?q=1");
                let reply = send(
                    &http,
                    edge.addr,
                    "GET",
                    "shop.example.com",
                    &path,
                    &[],
                    Bytes::new(),
                )
                .await;
                assert_eq!(reply.status, 200, "{}", reply.text());
                assert_eq!(reply.text(), format!("production saw {path}"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let opened = accepted.load(Ordering::SeqCst);
    assert!(
        opened <= VISITORS + 8,
        "{} requests took {opened} connections to production: they are not kept alive",
        VISITORS * EACH
    );

    // A developer's visitors: connections that other workers accept are handed to the home
    // worker after a peek at their first bytes; every request, the first included, arrives
    // whole (a POST body too), and each connection is served to its end.
    let token = relay.issue_token("workers");
    let host = format!("www-{}.example.com", token.routing_key());
    let _dev = TestClient::connect(&relay, &pki, token, echo_app("developer").await).await;
    let mut tasks = Vec::new();
    for v in 0..16 {
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            // A client of its own: its own connection, whichever worker accepts it.
            let http = client();
            for i in 0..5 {
                let body = Bytes::from(format!("visitor {v} request {i}"));
                let reply = send(
                    &http,
                    edge.addr,
                    "POST",
                    &host,
                    &format!("/v{v}/{i}"),
                    &[],
                    body.clone(),
                )
                .await;
                assert_eq!(reply.status, 200, "{}", reply.text());
                let seen = reply.json();
                assert_eq!(seen["app"], "developer");
                assert_eq!(seen["uri"], format!("/v{v}/{i}"));
                assert_eq!(seen["body_len"], body.len());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    drop(edge);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while workers() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the edge's worker threads outlived it"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
