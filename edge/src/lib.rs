//! # edge — the reverse proxy in front of production
//!
//! Every request goes through four named phases in [`Edge::handle`]:
//! 1. **find key** — [`routing::RouteFinder`]: `www-<key>.…` in the Host (`:authority` in
//!    HTTP/2), else the `X-DevInProd-Key` header, else a `?devinprod=<key>` link (which sets
//!    the `devinprod_key` cookie), else that cookie;
//! 2. **prepare** — hop-by-hop headers stripped, the routing header removed, `X-Forwarded-*`
//!    set from the socket (a client-supplied one is believed only from `trusted_proxies`);
//! 3. **forward** — with a key: one stream through the [`proto::StreamOpener`] (a developer
//!    who is offline gets a self-refreshing 502, or production with `on_missing = "production"`)
//!    ([`tunnel::forward`]), which is the relay's registry in `devinprod up` or a
//!    [`connector::RelayConnector`] for a separate edge; without: [`production::Production`];
//! 4. **log** — one line per request with method, path, key, status and duration.
//!
//! Before any of that, each visitor connection is wrapped by `visitor_conn`: a request head
//! that starts and stalls gets 408, a keep-alive connection idle too long is closed.
//!
//! Failures become pages that say which side failed ([`pages`]): 502 developer offline, 502
//! relay unavailable, 502 bad answer from the developer's client, 502 production failed (and
//! 502 local app unreachable, which the developer's client writes with the same template).

#![forbid(unsafe_code)]

pub mod access;
mod checks;
mod config;
pub mod connector;
mod forwarded;
pub mod pages;
pub mod production;
mod production_pool;
pub mod routing;
mod staff;
pub mod tunnel;
pub mod visitor_body;
mod visitor_conn;
mod workers;

pub use config::{EdgeConfig, OnMissing};
pub use connector::{ConnectorError, RelayConnector};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use production::Production;
use proto::http::RequestHeadRef;
use proto::{OpenError, StreamOpener};
use routing::{KeySource, RouteDecision, RouteFinder};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tracing::{info, warn};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response the edge sends.
pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

pub(crate) fn full(b: Bytes) -> BoxBody {
    Full::new(b).map_err(|never| match never {}).boxed_unsync()
}

/// One request in flight to a developer; dropping it ends the count.
struct InFlight<'a> {
    edge: &'a Edge,
    key: proto::RoutingKey,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut in_flight = self
            .edge
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = in_flight.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                in_flight.remove(&self.key);
            }
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn empty() -> BoxBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error(transparent)]
    Routing(#[from] routing::RoutingConfigError),
    #[error(transparent)]
    Production(#[from] production::ProductionError),
    #[error(transparent)]
    Connector(#[from] ConnectorError),
    #[error(transparent)]
    Access(#[from] access::AccessConfigError),
    #[error("edge TLS: {0}")]
    Tls(#[from] certs::CertsError),
    #[error("edge TLS needs both tls_cert and tls_key")]
    TlsHalfConfigured,
}

/// Where a request went, for its access-log line: formatted only when that line is logged.
enum Target {
    Developer(proto::RoutingKey),
    /// The developer was offline and `on_missing = "production"` answered.
    ProductionFallback(proto::RoutingKey),
    Offline(proto::RoutingKey),
    Refused(proto::RoutingKey),
    TooLarge(proto::RoutingKey),
    Busy(proto::RoutingKey),
    Invalid,
    Production,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Developer(key) => write!(f, "developer:{key}"),
            Target::ProductionFallback(key) => write!(f, "production (developer {key} offline)"),
            Target::Offline(key) => write!(f, "offline:{key}"),
            Target::Refused(key) => write!(f, "refused:{key}"),
            Target::TooLarge(key) => write!(f, "too-large:{key}"),
            Target::Busy(key) => write!(f, "busy:{key}"),
            Target::Invalid => f.write_str("invalid"),
            Target::Production => f.write_str("production"),
        }
    }
}

/// A visitor's connection as the edge sees it, worked out once per connection rather than
/// once per request (formatting the address was a few percent of the edge's instructions).
#[derive(Debug, Clone)]
pub struct Visitor {
    /// The socket's peer.
    pub addr: SocketAddr,
    /// The peer's IP, IPv4-mapped IPv6 addresses as IPv4.
    ip: std::net::IpAddr,
    /// The peer is one of `trusted_proxies`: its `X-Forwarded-For` is believed and extended.
    trusted: bool,
    /// `ip` as an `X-Forwarded-For` value.
    ip_value: HeaderValue,
    /// The edge's port that the connection came in on, as an `X-Forwarded-Port` value.
    port_value: HeaderValue,
}

impl Visitor {
    /// A connection from `addr` to the edge's port `local_port`.
    pub fn new(addr: SocketAddr, local_port: u16, trusted_proxies: &[ipnet::IpNet]) -> Self {
        let ip = addr.ip().to_canonical();
        Visitor {
            addr,
            ip,
            trusted: trusted_proxies.iter().any(|n| n.contains(&ip)),
            // An IP address is always a valid header value.
            ip_value: HeaderValue::from_str(&ip.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            port_value: HeaderValue::from(local_port),
        }
    }
}

/// What one worker thread of the edge keeps for itself (see [`workers`]).
pub struct Worker {
    /// Its own connections to production.
    production: Option<Production>,
}

/// The edge: configuration, route finder, the way to developers and the way to production.
/// Build it with [`Edge::new`], then drive [`Edge::run`] with a listener and a shutdown future.
pub struct Edge {
    config: EdgeConfig,
    /// HTTPS, when `tls_cert`/`tls_key` are set.
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// `https` or `http`, as visitors reach this edge.
    scheme: &'static str,
    /// Requests in flight per developer (for `max_requests_per_developer`).
    in_flight: std::sync::Mutex<std::collections::HashMap<proto::RoutingKey, usize>>,
    router: RouteFinder,
    access: access::AccessPolicy,
    opener: Arc<dyn StreamOpener>,
    /// Production's address, checked at start; each worker connects with its own copy.
    production: Option<Production>,
}

impl Edge {
    pub fn new(config: EdgeConfig, opener: Arc<dyn StreamOpener>) -> Result<Arc<Self>, EdgeError> {
        let router = RouteFinder::new(&config.host_pattern, &config.key_header)?;
        let production = config
            .production
            .as_deref()
            .map(Production::new)
            .transpose()?;
        let access = access::AccessPolicy::with_cookie_domain(
            config.access,
            &config.allowed_networks,
            config.staff_secret.as_ref().map(proto::Secret::expose),
            config.staff_ttl_secs,
            config.staff_cookie_domain.as_deref(),
            config.max_revoked_staff_tokens,
        )?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                let identity = certs::Identity::load(cert, key)?;
                let tls = certs::web_server_config(identity, &[&b"h2"[..], &b"http/1.1"[..]])?;
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
            }
            (None, None) => None,
            _ => return Err(EdgeError::TlsHalfConfigured),
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        Ok(Arc::new(Self {
            config,
            tls,
            scheme,
            in_flight: std::sync::Mutex::new(std::collections::HashMap::new()),
            router,
            access,
            opener,
            production,
        }))
    }

    /// Serves HTTP/1.1 and HTTP/2 (prior knowledge) on `listener` until `shutdown` completes,
    /// then lets in-flight requests finish for `shutdown_grace_ms`: on `workers` threads, see
    /// [`workers`].
    pub async fn run(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        workers::run(self, listener, shutdown).await
    }

    /// One request, phase by phase.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        visitor: &Visitor,
        worker: &Worker,
    ) -> Response<BoxBody> {
        let peer = visitor.addr;
        let started = Instant::now();
        let method = req.method().clone();
        // For the log lines: a clone of the URI shares its bytes (no copy of the path).
        let uri = req.uri().clone();
        let path = uri.path();
        let (mut parts, body) = req.into_parts();

        // Phase 0: a request that names its host two ways is refused before anything reads it.
        if let Some(why) = checks::ambiguous_host(&parts) {
            info!(%peer, %method, %path, target = "invalid", status = 400, "request: {why}");
            let format = pages::PageFormat::of(&parts.headers);
            return pages::page(StatusCode::BAD_REQUEST, format, "Ambiguous host", &why);
        }

        if let Some(resp) = self.staff_sign_in(&parts, visitor) {
            return resp;
        }

        // Phase 1: find key (and what to do with the routing cookie), and whether this visitor
        // may reach a developer route at all.
        let (mut decision, mut cookie) = self.router.route(&parts);
        let client = access::client_ip(peer.ip(), &parts.headers, &self.config.trusted_proxies);
        let mut refused = None;
        if let RouteDecision::Developer(key, _) = &decision {
            let host = routing::request_host(&parts).unwrap_or_default();
            if let Err(why) = self
                .access
                .check_host(client, &parts.headers, host, unix_now())
            {
                refused = Some((key.clone(), why));
                decision = RouteDecision::Production;
                cookie = None;
            }
        }

        // The routing cookie is `Secure` for a visitor who came over HTTPS, like the staff one.
        let secure_cookie = cookie.is_some() && self.visitor_https(&parts.headers, visitor);

        // Phase 2: prepare.
        let host = routing::request_authority(&parts)
            .map(routing::without_userinfo)
            .unwrap_or_default()
            .to_owned();
        let upgrade = proto::http::is_upgrade_request(&parts.headers);
        proto::http::strip_hop_by_hop(&mut parts.headers, upgrade);
        parts.headers.remove(self.router.key_header());
        parts.uri = routing::without_query_param(&parts.uri, routing::LINK_PARAM);
        access::strip_edge_credentials(
            &mut parts.headers,
            &[access::STAFF_COOKIE, routing::COOKIE],
        );
        forwarded::set(&mut parts.headers, visitor, &host, self.scheme);
        let format = pages::PageFormat::of(&parts.headers);

        // Limits of developer routes: the declared body size, and requests in flight (the
        // guard counts this request until its response head is out).
        let mut early = None;
        let mut _in_flight = None;
        if let (RouteDecision::Developer(key, _), None) = (&decision, &refused) {
            if self.too_large(&parts.headers) {
                let detail = format!(
                    "Requests to a developer's copy may carry at most {} bytes.",
                    self.config.max_request_body_bytes
                );
                early = Some((
                    pages::page(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format,
                        "Request too large",
                        &detail,
                    ),
                    Target::TooLarge(key.clone()),
                ));
            } else {
                match self.enter(key) {
                    Some(guard) => _in_flight = Some(guard),
                    None => {
                        let detail = format!(
                            "The developer for routing key {key} already has {} requests in flight; try again shortly.",
                            self.config.max_requests_per_developer
                        );
                        early = Some((
                            pages::page(
                                StatusCode::SERVICE_UNAVAILABLE,
                                format,
                                "Developer busy",
                                &detail,
                            ),
                            Target::Busy(key.clone()),
                        ));
                    }
                }
            }
        }

        // Phase 3: forward.
        let (mut resp, target) = match decision {
            _ if early.is_some() => early
                .take()
                .unwrap_or_else(|| unreachable!("checked by the guard")),
            _ if refused.is_some() => {
                let (key, why) = refused
                    .take()
                    .unwrap_or_else(|| unreachable!("checked by the guard"));
                (
                    pages::page(
                        StatusCode::FORBIDDEN,
                        format,
                        "Developer route refused",
                        &format!("This address leads to a developer's copy of the site (routing key {key}): {why}."),
                    ),
                    Target::Refused(key),
                )
            }
            RouteDecision::Invalid(reason) => (
                pages::page(StatusCode::BAD_REQUEST, format, "Bad routing key", &reason),
                Target::Invalid,
            ),
            RouteDecision::Developer(key, source) => {
                let visitor_authority = routing::request_authority(&parts).unwrap_or_default();
                let mut production = None;
                if let (KeySource::Host, Some(prefix)) = (source, &self.config.dev_host_prefix) {
                    production = self
                        .router
                        .production_authority(visitor_authority, prefix)
                        .and_then(|prod| Some((HeaderValue::from_str(&prod).ok()?, prod)));
                }
                // The developer's app sees the production host (X-Forwarded-Host keeps the
                // visitor's). Only the tunnelled head changes: `parts` stays as the visitor
                // sent it, for production if the developer turns out to be offline. The head
                // is encoded from `parts` as they are, without a copy (`RequestHeadRef`).
                let head = RequestHeadRef {
                    parts: &parts,
                    scheme: self.scheme,
                    authority: production
                        .as_ref()
                        .map_or(visitor_authority, |(_, prod)| prod.as_str()),
                    host: production.as_ref().map(|(value, _)| value),
                };
                let ends = tunnel::ends_with_head(&parts.headers, &body);
                let opened = match tunnel::prelude(&head, ends) {
                    Ok(prelude) => self.opener.open(key.clone(), prelude).await,
                    Err(e) => Err(OpenError::DeveloperConnectionFailed(e.to_string())),
                };
                match opened {
                    Ok(stream) => {
                        let req = Request::from_parts(parts, body);
                        let max = self.config.max_frame_len as usize;
                        let timeout = Duration::from_millis(self.config.response_timeout_ms);
                        let pace = self.config.body_pace();
                        let resp = match tokio::time::timeout(timeout, tunnel::forward(stream, req, max, pace)).await {
                        Ok(Ok(r)) => r,
                        Ok(Err(tunnel::TunnelError::Silent)) => pages::developer_offline(format, &key),
                        Ok(Err(tunnel::TunnelError::Visitor(why))) => pages::bad_request_body(format, &why),
                        Ok(Err(tunnel::TunnelError::VisitorStalled(why))) => pages::body_timeout(format, &why),
                        Ok(Err(e)) => pages::page(
                            StatusCode::BAD_GATEWAY,
                            format,
                            "Developer's app failed",
                            &format!("Routing key {key}: {e}"),
                        ),
                        Err(_) => pages::page(
                            StatusCode::GATEWAY_TIMEOUT,
                            format,
                            "Developer's app too slow",
                            &format!(
                                "The developer's app for routing key {key} did not start answering within {} ms.",
                                self.config.response_timeout_ms
                            ),
                        ),
                    };
                        (resp, Target::Developer(key))
                    }
                    Err(OpenError::DeveloperOffline(_))
                        if self.config.on_missing == OnMissing::Production =>
                    {
                        let resp = self
                            .to_production(worker, Request::from_parts(parts, body), format)
                            .await;
                        (resp, Target::ProductionFallback(key))
                    }
                    Err(OpenError::DeveloperOffline(_)) => {
                        (pages::developer_offline(format, &key), Target::Offline(key))
                    }
                    Err(OpenError::RelayUnavailable(e)) => {
                        (pages::relay_unavailable(format, &e), Target::Developer(key))
                    }
                    Err(e) => (
                        pages::page(
                            StatusCode::BAD_GATEWAY,
                            format,
                            "Developer's app failed",
                            &format!("Routing key {key}: {e}"),
                        ),
                        Target::Developer(key),
                    ),
                }
            }
            RouteDecision::Production => {
                let resp = self
                    .to_production(worker, Request::from_parts(parts, body), format)
                    .await;
                (resp, Target::Production)
            }
        };
        // The edge's own cookies are the edge's to set: a developer's app that sets them could
        // pin a visitor to its route, or plant a staff cookie of its choosing. Production's
        // responses are filtered too: it is trusted, but has no business setting these either
        // (the edge sets the routing cookie itself, from `?devinprod=`), and one rule for every
        // response is one less thing to get wrong (a fallback to production, say).
        if resp.headers().contains_key(http::header::SET_COOKIE) {
            let removed = access::strip_edge_set_cookies(
                resp.headers_mut(),
                &[access::STAFF_COOKIE, routing::COOKIE],
            );
            for name in removed {
                warn!(
                    %peer, %path, %target,
                    "response tried to set the edge's cookie {:?}: removed",
                    proto::printable(&name)
                );
            }
        }
        if let Some(action) = cookie {
            let mut set = routing::set_cookie(&action);
            if secure_cookie {
                set.push_str("; Secure");
            }
            if let Ok(v) = HeaderValue::from_str(&set) {
                resp.headers_mut().append(http::header::SET_COOKIE, v);
            }
        }

        // Phase 4: log.
        info!(
            %peer, %method, %path, %target, status = resp.status().as_u16(),
            ms = started.elapsed().as_secs_f64() * 1e3, "request"
        );
        resp
    }

    fn too_large(&self, headers: &http::HeaderMap) -> bool {
        let limit = self.config.max_request_body_bytes;
        limit > 0
            && headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|n| n > limit)
    }

    /// Counts a request in flight to `key` for as long as the guard lives; `None` at the limit.
    fn enter(&self, key: &proto::RoutingKey) -> Option<InFlight<'_>> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let n = in_flight.entry(key.clone()).or_insert(0);
        if *n >= self.config.max_requests_per_developer {
            return None;
        }
        *n += 1;
        Some(InFlight {
            edge: self,
            key: key.clone(),
        })
    }

    /// Whether the visitor reached us over HTTPS: this edge terminates TLS, or a trusted proxy
    /// in front of it says so (`X-Forwarded-Proto: https`, its first value being the visitor's).
    fn visitor_https(&self, headers: &http::HeaderMap, visitor: &Visitor) -> bool {
        self.scheme == "https"
            || (visitor.trusted
                && headers
                    .get("x-forwarded-proto")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split(',').next())
                    .is_some_and(|p| p.trim().eq_ignore_ascii_case("https")))
    }

    /// `/_devinprod/login` and `/_devinprod/logout`, on any host: the staff sign-in. The
    /// operator puts these paths behind the company's SSO proxy; whoever reaches them is staff.
    /// The cookie is `Secure` when the visitor came over HTTPS; its token is signed for
    /// `staff_cookie_domain` (else this host); signing out revokes it for good (see `staff`).
    fn staff_sign_in(
        &self,
        parts: &http::request::Parts,
        visitor: &Visitor,
    ) -> Option<Response<BoxBody>> {
        let path = parts.uri.path();
        if path != "/_devinprod/login" && path != "/_devinprod/logout" {
            return None;
        }
        let format = pages::PageFormat::of(&parts.headers);
        let host = routing::request_host(parts).unwrap_or_default();
        let mut attributes = String::from("Path=/; HttpOnly; SameSite=Lax");
        if self.visitor_https(&parts.headers, visitor) {
            attributes.push_str("; Secure");
        }
        if let Some(d) = &self.config.staff_cookie_domain {
            attributes.push_str("; Domain=");
            attributes.push_str(d);
        }
        let now = unix_now();
        let (title, detail, cookie) = if path == "/_devinprod/logout" {
            let detail = match self.access.sign_out(&parts.headers, host, now) {
                access::SignOut::RevokedAll => {
                    warn!(
                        peer = %visitor.addr,
                        "staff sign-out: {} signed-out tokens already remembered \
                         (max_revoked_staff_tokens): every staff sign-in so far is revoked",
                        self.config.max_revoked_staff_tokens
                    );
                    "You are no longer signed in as DevInProd staff (and this credential no longer works anywhere)."
                }
                access::SignOut::Revoked => {
                    "You are no longer signed in as DevInProd staff (and this credential no longer works anywhere)."
                }
                access::SignOut::Nothing => "You are no longer signed in as DevInProd staff.",
            };
            (
                "Signed out",
                detail.to_owned(),
                format!("{}=; Max-Age=0; {attributes}", access::STAFF_COOKIE),
            )
        } else if self.access.mode() != access::AccessMode::Staff {
            return Some(pages::page(
                StatusCode::NOT_FOUND,
                format,
                "No staff sign-in",
                "This edge does not use staff sign-in (access is not \"staff\").",
            ));
        } else if let Some(token) = self.access.issue_staff(now, host) {
            let ttl = self.access.ttl_secs();
            (
                "Signed in",
                format!("You are signed in as DevInProd staff for {} hours: developer routes (www-<key>) now open for you.", ttl / 3600),
                format!("{}={token}; Max-Age={ttl}; {attributes}", access::STAFF_COOKIE),
            )
        } else {
            return Some(pages::page(
                StatusCode::BAD_REQUEST,
                format,
                "No staff sign-in here",
                "Staff sign in on a host under this edge's staff_cookie_domain.",
            ));
        };
        let mut resp = pages::page(StatusCode::OK, format, title, &detail);
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().insert(http::header::SET_COOKIE, v);
        }
        Some(resp)
    }

    async fn to_production(
        &self,
        worker: &Worker,
        req: Request<Incoming>,
        format: pages::PageFormat,
    ) -> Response<BoxBody> {
        match &worker.production {
            None => pages::page(
                StatusCode::BAD_GATEWAY,
                format,
                "No production upstream",
                "This edge has no production upstream configured and the request names no developer.",
            ),
            Some(p) => match p
                .forward(req, self.config.body_pace())
                .await
            {
                Ok(r) => r,
                Err(production::ProductionError::VisitorBody(why)) => {
                    pages::bad_request_body(format, &why)
                }
                Err(production::ProductionError::VisitorStalled(why)) => {
                    pages::body_timeout(format, &why)
                }
                Err(e) => pages::page(StatusCode::BAD_GATEWAY, format, "Production failed", &e.to_string()),
            },
        }
    }
}
