//! The staff sign-in behind nginx, as the sample `edge/deploy/nginx.conf` sets it up (ports and
//! paths substituted): nginx refuses `/_devinprod/login` to a visitor the SSO does not know,
//! hands the staff cookie to one it does, and that cookie opens a developer route. A real
//! nginx, curl (with a cookie jar, as a browser keeps cookies), and a stand-in for
//! oauth2-proxy's `/oauth2/auth` endpoint.

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::Path;
use tests::apps::echo_app;
use tests::nginx::{free_port, Nginx};
use tests::tls::WebCert;
use tests::{init_tracing, Pki, TestClient, TestEdge, TestRelay};

/// The SSO's session cookie that the stand-in knows.
const SSO_SESSION: &str = "_oauth2_proxy=alice-signed-in";

/// A stand-in for oauth2-proxy: `/oauth2/auth` answers 202 to a request carrying the SSO
/// session cookie and 401 otherwise; `/oauth2/sign_in` is its sign-in page (403).
async fn sso() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: http::Request<_>| async move {
                    let signed_in = req
                        .headers()
                        .get_all("cookie")
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .any(|v| v.split(';').any(|c| c.trim() == SSO_SESSION));
                    let (status, body) = match req.uri().path() {
                        "/oauth2/auth" if signed_in => (202, ""),
                        "/oauth2/auth" => (401, ""),
                        _ => (403, "SSO: sign in with your company account"),
                    };
                    let _ = req.into_body();
                    http::Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::from_static(body.as_bytes())))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// The sample with the test's addresses: each sample value must be there to be replaced.
fn sample_config(port: u16, edge: SocketAddr, sso: SocketAddr, web: &WebCert) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../edge/deploy/nginx.conf");
    let sample = std::fs::read_to_string(&path).expect("the sample nginx config");
    let cert_dir = web.ca().parent().unwrap().to_owned();
    let replacements = [
        ("listen 443 ssl", format!("listen 127.0.0.1:{port} ssl")),
        (
            "/etc/ssl/wildcard.example.com.pem",
            cert_dir.join("relay.pem").display().to_string(),
        ),
        (
            "/etc/ssl/wildcard.example.com.key",
            cert_dir.join("relay.key").display().to_string(),
        ),
        ("127.0.0.1:8080", edge.to_string()),
        ("127.0.0.1:4180", sso.to_string()),
    ];
    let mut conf = sample;
    for (from, to) in replacements {
        assert!(conf.contains(from), "the sample no longer has {from:?}");
        conf = conf.replace(from, &to);
    }
    conf
}

/// What curl got: status, response headers (lower-case names) and body.
struct Got {
    status: u16,
    head: String,
    body: String,
}

/// `curl` over HTTPS through nginx to `https://host:port path`, with extra arguments.
async fn curl(web: &WebCert, port: u16, host: &str, path: &str, extra: &[String]) -> Got {
    let mut args = vec![
        "-sS".to_owned(),
        "--max-time".to_owned(),
        "20".to_owned(),
        "-i".to_owned(),
        "--cacert".to_owned(),
        web.ca().display().to_string(),
        "--resolve".to_owned(),
        format!("{host}:{port}:127.0.0.1"),
    ];
    args.extend_from_slice(extra);
    args.push(format!("https://{host}:{port}{path}"));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(&args)
            .output()
            .expect("curl (a missing curl is a failure)")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    Got {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_the_sample_nginx_only_sso_users_get_the_staff_cookie_and_it_opens_developer_routes()
{
    init_tracing();
    let pki = Pki::new();
    let relay = TestRelay::start(&pki).await;
    let dev = echo_app("developer").await;
    let token = relay.issue_token("alice");
    let key = token.routing_key().to_string();
    let _client = TestClient::connect(&relay, &pki, token, dev).await;
    let mut config = TestEdge::config(None);
    config.access = Some(edge::access::AccessMode::Staff);
    config.staff_secret = Some("a staff secret of at least thirty-two chars".into());
    config.staff_cookie_domain = Some("example.com".into());
    config.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let edge = TestEdge::start(config, relay.relay.registry()).await;
    let sso = sso().await;
    let web = WebCert::new();
    let port = free_port();
    let nginx = Nginx::start(&sample_config(port, edge.addr, sso, &web), port);
    let host = format!("www-{key}.example.com");
    let jar = nginx.dir().join("cookies.txt");
    let jar_args = |flag: &str| vec![flag.to_owned(), jar.display().to_string()];

    // Not signed in to the SSO: nginx sends the visitor to the SSO's sign-in, and no staff
    // cookie is handed out, whatever the spelling of the path.
    for path in [
        "/_devinprod/login",
        "//_devinprod/login",
        "/_devinprod/./login",
        "/_devinprod/%6Cogin",
        "/_devinprod/login?next=/",
    ] {
        let refused = curl(&web, port, &host, path, &jar_args("-c")).await;
        assert_eq!(refused.status, 403, "{path}: {}", refused.head);
        assert!(
            refused.body.contains("SSO: sign in"),
            "{path}: {}",
            refused.body
        );
        assert!(
            !refused.head.contains("devinprod_staff"),
            "{path}: {}",
            refused.head
        );
    }
    // Nor does a developer route open without it.
    let closed = curl(&web, port, &host, "/", &[]).await;
    assert_eq!(closed.status, 403, "{}", closed.body);
    assert!(
        closed.body.contains("only to DevInProd staff"),
        "{}",
        closed.body
    );

    // Signed in to the SSO: the staff cookie, Secure (nginx says HTTPS and is trusted), for
    // the whole domain.
    let mut args = jar_args("-c");
    args.extend(["-H".to_owned(), format!("cookie: {SSO_SESSION}")]);
    let signed_in = curl(&web, port, &host, "/_devinprod/login", &args).await;
    assert_eq!(
        signed_in.status,
        200,
        "{}\n{}",
        signed_in.head,
        nginx.error_log()
    );
    let set = signed_in
        .head
        .lines()
        .find(|l| l.starts_with("set-cookie: devinprod_staff="))
        .unwrap_or_else(|| panic!("no staff cookie: {}", signed_in.head))
        .to_owned();
    assert!(set.contains("; secure"), "{set}");
    assert!(set.contains("; domain=example.com"), "{set}");

    // The cookie, as curl's jar keeps it, opens the developer route (on any www-<key> host of
    // the domain), and never reaches the developer's app.
    let opened = curl(&web, port, &host, "/hello", &jar_args("-b")).await;
    assert_eq!(opened.status, 200, "{}", opened.body);
    let seen: serde_json::Value = serde_json::from_str(&opened.body).unwrap();
    assert_eq!(seen["app"], "developer");
    assert_eq!(seen["uri"], "/hello");
    assert!(seen["headers"].get("cookie").is_none(), "{seen}");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
}
