//! The staff credential, hardened (issue 15): `Secure` over HTTPS, signed for one cookie domain,
//! revoked at sign-out, and never settable by an app.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use tests::apps::echo_app;
use tests::http_client::{client, get, send, Reply};
use tests::tls::WebCert;
use tests::{init_tracing, Pki, TestClient, TestEdge, TestRelay, WAIT};

const SECRET: &str = "a staff secret of at least thirty-two chars";

fn staff_config(production: Option<SocketAddr>, domain: &str) -> edge::EdgeConfig {
    let mut config = TestEdge::config(production);
    config.access = Some(edge::access::AccessMode::Staff);
    config.staff_secret = Some(SECRET.into());
    config.staff_cookie_domain = Some(domain.into());
    config
}

/// `name=value` of the staff cookie set by `reply`, and the whole Set-Cookie line.
fn staff_cookie(reply: &Reply) -> (String, String) {
    let set = reply
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|v| v.starts_with("devinprod_staff="))
        .unwrap_or_else(|| panic!("no staff cookie: {:?}", reply.headers));
    (set.split(';').next().unwrap().to_owned(), set)
}

async fn get_with_cookie(edge: SocketAddr, host: &str, path: &str, cookie: &str) -> Reply {
    send(
        &client(),
        edge,
        "GET",
        host,
        path,
        &[("cookie", cookie)],
        Bytes::new(),
    )
    .await
}

/// One HTTPS GET (HTTP/1.1) through `web`'s CA: status and headers.
async fn https_get(web: &WebCert, edge: SocketAddr, host: &str, path: &str) -> Reply {
    let tls = web.connect(edge, host, b"http/1.1").await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("HTTPS answer in time")
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_staff_cookie_is_secure_whenever_the_visitor_came_over_https() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;

    // Plain HTTP, and a visitor who claims HTTPS without being a trusted proxy: not Secure.
    let plain = TestEdge::start(staff_config(None, "example.com"), relay.relay.registry()).await;
    let (_, set) = staff_cookie(&get(plain.addr, "www.example.com", "/_devinprod/login").await);
    assert!(!set.contains("Secure"), "{set}");
    let claimed = send(
        &client(),
        plain.addr,
        "GET",
        "www.example.com",
        "/_devinprod/login",
        &[("x-forwarded-proto", "https")],
        Bytes::new(),
    )
    .await;
    assert!(!staff_cookie(&claimed).1.contains("Secure"));

    // A TLS terminator in trusted_proxies that says HTTPS: Secure, at sign-in and sign-out.
    let mut config = staff_config(None, "example.com");
    config.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let behind_proxy = TestEdge::start(config, relay.relay.registry()).await;
    for path in ["/_devinprod/login", "/_devinprod/logout"] {
        let reply = send(
            &client(),
            behind_proxy.addr,
            "GET",
            "www.example.com",
            path,
            &[("x-forwarded-proto", "https")],
            Bytes::new(),
        )
        .await;
        let (_, set) = staff_cookie(&reply);
        assert!(set.contains("; Secure"), "{path}: {set}");
        assert!(set.contains("; Domain=example.com"), "{path}: {set}");
        assert!(set.contains("HttpOnly"), "{path}: {set}");
    }

    // The edge terminates TLS itself: Secure.
    let web = WebCert::new();
    let mut config = staff_config(None, "example.com");
    web.serve_with(&mut config);
    let https = TestEdge::start(config, relay.relay.registry()).await;
    let reply = https_get(&web, https.addr, "www.example.com", "/_devinprod/login").await;
    assert_eq!(reply.status, 200);
    let (_, set) = staff_cookie(&reply);
    assert!(set.contains("; Secure"), "{set}");
}

#[tokio::test]
async fn a_staff_token_signed_for_one_domain_is_refused_by_an_edge_for_another() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let dev = echo_app("developer").await;
    let token = relay.issue_token("alice");
    let key = token.routing_key().to_string();
    let _client = TestClient::connect(&relay, &pki, token, dev).await;
    // Two edges with the same secret, serving two domains.
    let com = TestEdge::start(staff_config(None, "example.com"), relay.relay.registry()).await;
    let org = TestEdge::start(staff_config(None, "example.org"), relay.relay.registry()).await;

    let (cookie, _) = staff_cookie(&get(com.addr, "www.example.com", "/_devinprod/login").await);
    let at_com = get_with_cookie(com.addr, &format!("www-{key}.example.com"), "/", &cookie).await;
    assert_eq!(at_com.status, 200, "{}", at_com.text());
    assert_eq!(at_com.json()["app"], "developer");
    let at_org = get_with_cookie(org.addr, &format!("www-{key}.example.org"), "/", &cookie).await;
    assert_eq!(at_org.status, 403, "{}", at_org.text());
    // Nor does the example.com edge take it on a host outside its domain.
    let elsewhere =
        get_with_cookie(com.addr, &format!("www-{key}.example.net"), "/", &cookie).await;
    assert_eq!(elsewhere.status, 403, "{}", elsewhere.text());
    // And the header form of the credential is bound the same way.
    let token = cookie.trim_start_matches("devinprod_staff=");
    let header = send(
        &client(),
        org.addr,
        "GET",
        &format!("www-{key}.example.org"),
        "/",
        &[("x-devinprod-staff", token)],
        Bytes::new(),
    )
    .await;
    assert_eq!(header.status, 403);
}

#[tokio::test]
async fn signing_out_revokes_the_staff_cookie_even_where_it_was_copied() {
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let dev = echo_app("developer").await;
    let token = relay.issue_token("alice");
    let host = format!("www-{}.example.com", token.routing_key());
    let _client = TestClient::connect(&relay, &pki, token, dev).await;
    let edge = TestEdge::start(staff_config(None, "example.com"), relay.relay.registry()).await;

    let (copied, _) = staff_cookie(&get(edge.addr, "www.example.com", "/_devinprod/login").await);
    let (other, _) = staff_cookie(&get(edge.addr, "www.example.com", "/_devinprod/login").await);
    assert_ne!(copied, other, "each sign-in is its own credential");
    assert_eq!(
        get_with_cookie(edge.addr, &host, "/", &copied).await.status,
        200
    );

    let out = get_with_cookie(edge.addr, "www.example.com", "/_devinprod/logout", &copied).await;
    assert_eq!(out.status, 200);
    let (cleared, set) = staff_cookie(&out);
    assert_eq!(cleared, "devinprod_staff=", "{set}");
    assert!(set.contains("Max-Age=0"), "{set}");

    // The copy someone kept no longer opens a developer route, by cookie or header.
    let replay = get_with_cookie(edge.addr, &host, "/", &copied).await;
    assert_eq!(replay.status, 403, "{}", replay.text());
    assert!(replay.text().contains("signed out"), "{}", replay.text());
    let token = copied.trim_start_matches("devinprod_staff=");
    let header = send(
        &client(),
        edge.addr,
        "GET",
        &host,
        "/",
        &[("x-devinprod-staff", token)],
        Bytes::new(),
    )
    .await;
    assert_eq!(header.status, 403);
    // Another staff member's sign-in is untouched.
    assert_eq!(
        get_with_cookie(edge.addr, &host, "/", &other).await.status,
        200
    );
}

/// An app that answers every request with these Set-Cookie headers.
async fn cookie_setting_app(cookies: &'static [&'static str]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| async move {
                    let mut resp = http::Response::builder();
                    for c in cookies {
                        resp = resp.header("set-cookie", *c);
                    }
                    resp.body(http_body_util::Full::new(Bytes::from_static(b"hello")))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_app_cannot_set_the_edges_own_cookies_on_a_visitor() {
    init_tracing();
    const COOKIES: &[&str] = &[
        "session=abc; Path=/",
        "devinprod_staff=v2.1.2.3.4; Domain=example.com; Path=/",
        " devinprod_key = zzzzzz; Path=/",
        "devinprod_key=zzzzzz\t",
        "theme=dark",
    ];
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let dev = cookie_setting_app(COOKIES).await;
    let prod = cookie_setting_app(COOKIES).await;
    let token = relay.issue_token("mallory");
    let key = token.routing_key().to_string();
    let _client = TestClient::connect(&relay, &pki, token, dev).await;
    let edge = TestEdge::start(TestEdge::config(Some(prod)), relay.relay.registry()).await;

    let set_cookies = |reply: &Reply| -> Vec<String> {
        reply
            .headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    };
    for (host, path) in [
        (format!("www-{key}.example.com"), "/".to_owned()),
        ("www.example.com".to_owned(), "/".to_owned()),
    ] {
        let reply = get(edge.addr, &host, &path).await;
        assert_eq!(reply.status, 200, "{host}");
        assert_eq!(
            set_cookies(&reply),
            ["session=abc; Path=/", "theme=dark"],
            "{host}"
        );
    }
    // The edge's own routing cookie, from a link, still gets through, alone of its name.
    let link = get(edge.addr, "www.example.com", &format!("/?devinprod={key}")).await;
    let set = set_cookies(&link);
    let ours: Vec<_> = set
        .iter()
        .filter(|c| c.trim_start().starts_with("devinprod_key"))
        .collect();
    assert_eq!(ours.len(), 1, "{set:?}");
    assert!(
        ours[0].starts_with(&format!("devinprod_key={key};")),
        "{set:?}"
    );
}
