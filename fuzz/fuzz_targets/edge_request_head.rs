//! A visitor's request head, as the edge handles it before anything is forwarded: parsed as
//! hyper parses it (httparse), then routing (Host, `:authority`, header, cookie, query
//! parameter), the access check, the forwarded head's encoding — no panic whatever the bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

struct Fixtures {
    finder: edge::routing::RouteFinder,
    access: edge::access::AccessPolicy,
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| Fixtures {
        finder: edge::routing::RouteFinder::new("^www-(?P<key>[a-z0-9]{6})[.-]", "x-devinprod-key")
            .expect("pattern"),
        access: edge::access::AccessPolicy::new(
            Some(edge::access::AccessMode::Staff),
            &[],
            Some("a staff secret of thirty-two chars or more"),
            3600,
        )
        .expect("policy"),
    })
}

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(data) else { return };
    let mut builder = http::Request::builder()
        .method(req.method.unwrap_or("GET"))
        .uri(req.path.unwrap_or("/"));
    for h in req.headers.iter() {
        builder = builder.header(h.name, h.value);
    }
    let Ok(request) = builder.body(()) else { return };
    let (mut parts, ()) = request.into_parts();
    let f = fixtures();
    let _ = f.finder.route(&parts);
    if let Some(authority) = edge::routing::request_authority(&parts) {
        let _ = f.finder.production_authority(authority, "www.");
    }
    let _ = edge::routing::request_host(&parts);
    let _ = edge::routing::query_param(parts.uri.query(), "devinprod");
    let _ = edge::routing::without_query_param(&parts.uri, "devinprod");
    let _ = f.access.check([127, 0, 0, 1].into(), &parts.headers, 1_000_000);
    let _ = edge::access::client_ip([10, 0, 0, 1].into(), &parts.headers, &[]);
    edge::access::strip_edge_credentials(&mut parts.headers, &["devinprod_key", "devinprod_staff"]);
    let head = proto::http::RequestHeadRef {
        parts: &parts,
        scheme: "http",
        authority: edge::routing::request_authority(&parts).unwrap_or("www.example.com"),
        host: None,
    };
    let mut out = Vec::new();
    let _ = head.encode(&mut out);
});
