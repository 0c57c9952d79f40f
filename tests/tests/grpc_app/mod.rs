//! The gRPC bench the gRPC test files share: a real gRPC stack on both ends of the tunnel. A
//! tonic server is the developer's app (h2c, the agent's `h2c = true`), a tonic client is the
//! visitor, dialing the edge's port while naming `www-<key>.example.com` as the authority, as
//! it would after DNS pointed it at the edge.
//!
//! There is no protoc here, so the messages and the service are written by hand exactly the way
//! tonic's generated code is (prost messages, a `tower::Service` routing on the path, and
//! `tonic::server::Grpc` / `tonic::client::Grpc` doing the framing). The service is what protoc
//! would build from:
//!
//! ```proto
//! syntax = "proto3";
//! package devinprod.test;
//! service Echo {
//!   rpc Say(SayRequest) returns (SayReply);
//!   rpc Lookup(LookupRequest) returns (SayReply);
//!   rpc Ticks(TicksRequest) returns (stream Tick);
//! }
//! ```

// Each test file uses part of the bench.
#![allow(dead_code)]

use bytes::Bytes;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tests::{init_tracing, Pki, TestClient, TestEdge, TestRelay, WAIT};
use tokio::sync::Notify;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};
use tonic_prost::ProstCodec;

/// How long one streamed message may take to arrive. The server sends the next one only after
/// this one arrived, so a message held back anywhere on the way stalls here.
pub const STEP: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Messages (as prost-build would generate them).

#[derive(Clone, PartialEq, prost::Message)]
pub struct SayRequest {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SayReply {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
    /// Set only by the server.
    #[prost(string, tag = "3")]
    pub served_by: String,
    /// The `x-visitor-tag` request metadata, as the server saw it.
    #[prost(string, tag = "4")]
    pub visitor_tag: String,
    /// The `x-visitor-blob-bin` binary metadata, as the server decoded it.
    #[prost(bytes = "vec", tag = "5")]
    pub visitor_blob: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LookupRequest {
    #[prost(uint64, tag = "1")]
    pub id: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TicksRequest {
    #[prost(uint32, tag = "1")]
    pub count: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Tick {
    #[prost(uint32, tag = "1")]
    pub seq: u32,
    #[prost(string, tag = "2")]
    pub note: String,
}

pub const SAY: &str = "/devinprod.test.Echo/Say";
pub const LOOKUP: &str = "/devinprod.test.Echo/Lookup";
pub const TICKS: &str = "/devinprod.test.Echo/Ticks";

// ---------------------------------------------------------------------------------------------
// The developer's app: a tonic server (as tonic-build would generate it, plus the handlers).

/// What the app shares with the test.
#[derive(Default)]
pub struct AppState {
    /// One notification per tick the visitor has received; the server waits for it before
    /// sending anything more.
    pub acks: Notify,
    /// The ticks the server has handed to tonic so far, in order.
    pub sent: Mutex<Vec<u32>>,
}

impl AppState {
    pub fn sent(&self) -> Vec<u32> {
        self.sent.lock().unwrap().clone()
    }
}

fn served_by() -> MetadataValue<tonic::metadata::Ascii> {
    MetadataValue::from_static("dev-app")
}

fn visitor_tag(md: &MetadataMap) -> String {
    md.get("x-visitor-tag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;
type TickStream = Pin<Box<dyn futures_util::Stream<Item = Result<Tick, Status>> + Send + 'static>>;

struct SaySvc;

impl tonic::server::UnaryService<SayRequest> for SaySvc {
    type Response = SayReply;
    type Future = BoxFuture<Response<SayReply>, Status>;

    fn call(&mut self, request: Request<SayRequest>) -> Self::Future {
        Box::pin(async move {
            let tag = visitor_tag(request.metadata());
            let blob = match request.metadata().get_bin("x-visitor-blob-bin") {
                Some(v) => v
                    .to_bytes()
                    .map_err(|_| Status::invalid_argument("bad x-visitor-blob-bin"))?
                    .to_vec(),
                None => Vec::new(),
            };
            let req = request.into_inner();
            let mut response = Response::new(SayReply {
                text: format!("you said: {}", req.text),
                payload: req.payload.iter().rev().copied().collect(),
                served_by: "dev-app".into(),
                visitor_tag: tag,
                visitor_blob: blob,
            });
            response.metadata_mut().insert("x-served-by", served_by());
            Ok(response)
        })
    }
}

struct LookupSvc;

impl tonic::server::UnaryService<LookupRequest> for LookupSvc {
    type Response = SayReply;
    type Future = BoxFuture<Response<SayReply>, Status>;

    fn call(&mut self, request: Request<LookupRequest>) -> Self::Future {
        Box::pin(async move {
            let tag = visitor_tag(request.metadata());
            let id = request.into_inner().id;
            let mut metadata = MetadataMap::new();
            metadata.insert("x-looked-up", id.to_string().parse().unwrap());
            metadata.insert("x-visitor-tag", tag.parse().unwrap());
            Err(Status::with_details_and_metadata(
                Code::NotFound,
                format!("no widget with id {id}"),
                Bytes::from_static(b"\x00\x01\xffdetail bytes"),
                metadata,
            ))
        })
    }
}

struct TicksSvc(Arc<AppState>);

impl tonic::server::ServerStreamingService<TicksRequest> for TicksSvc {
    type Response = Tick;
    type ResponseStream = TickStream;
    type Future = BoxFuture<Response<TickStream>, Status>;

    fn call(&mut self, request: Request<TicksRequest>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let tag = visitor_tag(request.metadata());
            let count = request.into_inner().count;
            let stream = futures_util::stream::unfold(0u32, move |seq| {
                let state = state.clone();
                async move {
                    if seq > count {
                        return None;
                    }
                    if seq > 0 {
                        // Nothing more goes out until the visitor has the previous tick.
                        if tokio::time::timeout(WAIT, state.acks.notified())
                            .await
                            .is_err()
                        {
                            let status = Status::deadline_exceeded(format!(
                                "the visitor never acknowledged tick {}",
                                seq - 1
                            ));
                            return Some((Err(status), count + 1));
                        }
                    }
                    if seq == count {
                        let mut trailers = MetadataMap::new();
                        trailers.insert("x-ticks-sent", count.to_string().parse().unwrap());
                        let status = Status::with_metadata(
                            Code::ResourceExhausted,
                            format!("tick quota used up after {count} ticks"),
                            trailers,
                        );
                        return Some((Err(status), seq + 1));
                    }
                    state.sent.lock().unwrap().push(seq);
                    let tick = Tick {
                        seq,
                        note: format!("tick {seq} of {count}"),
                    };
                    Some((Ok(tick), seq + 1))
                }
            });
            let mut response = Response::new(Box::pin(stream) as TickStream);
            response.metadata_mut().insert("x-served-by", served_by());
            response
                .metadata_mut()
                .insert("x-echo-tag", tag.parse().unwrap());
            Ok(response)
        })
    }
}

/// The generated `EchoServer`.
#[derive(Clone)]
struct EchoServer {
    state: Arc<AppState>,
}

impl tonic::server::NamedService for EchoServer {
    const NAME: &'static str = "devinprod.test.Echo";
}

impl<B> tower::Service<http::Request<B>> for EchoServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match req.uri().path() {
            SAY => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                Ok(grpc.unary(SaySvc, req).await)
            }),
            LOOKUP => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                Ok(grpc.unary(LookupSvc, req).await)
            }),
            TICKS => {
                let svc = TicksSvc(self.state.clone());
                Box::pin(async move {
                    let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                    Ok(grpc.server_streaming(svc, req).await)
                })
            }
            _ => Box::pin(async move { Ok(Status::unimplemented("").into_http()) }),
        }
    }
}

/// Starts the tonic server (HTTP/2 only, so h2c with prior knowledge) on an ephemeral port.
pub async fn grpc_app(state: Arc<AppState>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .serve_with_incoming(EchoServer { state }, incoming)
            .await
            .expect("gRPC app");
    });
    addr
}

// ---------------------------------------------------------------------------------------------
// The visitor: a tonic client (as tonic-build would generate it).

pub struct EchoClient {
    pub inner: tonic::client::Grpc<Channel>,
}

impl EchoClient {
    /// A channel to `www-<key>.example.com` whose connections all go to the edge's address.
    pub async fn via_edge(edge: SocketAddr, host: &str) -> Self {
        let endpoint = Endpoint::from_shared(format!("http://{host}")).unwrap();
        let connector = tower::service_fn(move |_uri: http::Uri| async move {
            tokio::net::TcpStream::connect(edge)
                .await
                .map(hyper_util::rt::TokioIo::new)
        });
        let channel = tokio::time::timeout(WAIT, endpoint.connect_with_connector(connector))
            .await
            .expect("connecting to the edge timed out")
            .expect("connect to the edge");
        Self {
            inner: tonic::client::Grpc::new(channel),
        }
    }

    /// The same through an HTTPS edge: TLS (ALPN h2) under the channel's plain HTTP/2.
    pub async fn via_tls_edge(
        edge: SocketAddr,
        host: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Self {
        let endpoint = Endpoint::from_shared(format!("http://{host}")).unwrap();
        let name = host.to_owned();
        let connector = tower::service_fn(move |_uri: http::Uri| {
            let (tls, name) = (tls.clone(), name.clone());
            async move {
                let stream = tests::tls::connect(tls, edge, &name).await;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        });
        let channel = tokio::time::timeout(WAIT, endpoint.connect_with_connector(connector))
            .await
            .expect("connecting to the edge timed out")
            .expect("connect to the edge");
        Self {
            inner: tonic::client::Grpc::new(channel),
        }
    }

    pub async fn ready(&mut self) {
        tokio::time::timeout(WAIT, self.inner.ready())
            .await
            .expect("channel not ready in time")
            .expect("channel ready");
    }

    pub async fn say(
        &mut self,
        request: Request<SayRequest>,
    ) -> Result<Response<SayReply>, Status> {
        self.ready().await;
        let path = http::uri::PathAndQuery::from_static(SAY);
        tokio::time::timeout(WAIT, self.inner.unary(request, path, ProstCodec::default()))
            .await
            .expect("Say timed out")
    }

    pub async fn lookup(
        &mut self,
        request: Request<LookupRequest>,
    ) -> Result<Response<SayReply>, Status> {
        self.ready().await;
        let path = http::uri::PathAndQuery::from_static(LOOKUP);
        tokio::time::timeout(WAIT, self.inner.unary(request, path, ProstCodec::default()))
            .await
            .expect("Lookup timed out")
    }

    pub async fn ticks(
        &mut self,
        request: Request<TicksRequest>,
    ) -> Result<Response<tonic::Streaming<Tick>>, Status> {
        self.ready().await;
        let path = http::uri::PathAndQuery::from_static(TICKS);
        tokio::time::timeout(
            WAIT,
            self.inner
                .server_streaming(request, path, ProstCodec::default()),
        )
        .await
        .expect("Ticks timed out")
    }

    /// A method the app does not have.
    pub async fn missing(&mut self) -> Result<Response<SayReply>, Status> {
        self.ready().await;
        let path = http::uri::PathAndQuery::from_static("/devinprod.test.Echo/Missing");
        let request = Request::new(SayRequest::default());
        tokio::time::timeout(WAIT, self.inner.unary(request, path, ProstCodec::default()))
            .await
            .expect("Missing timed out")
    }
}

// ---------------------------------------------------------------------------------------------
// The tunnel.

pub struct Tunnel {
    pub app: Arc<AppState>,
    /// The gRPC app itself, for comparing what it sends with what the visitor gets.
    pub app_addr: SocketAddr,
    pub host: String,
    pub pki: Pki,
    pub relay: TestRelay,
    _client: TestClient,
}

impl Tunnel {
    /// A relay and a developer whose agent serves the gRPC app over h2c.
    pub async fn start() -> Self {
        init_tracing();
        let pki = Pki::new();
        let relay = TestRelay::start(&pki).await;
        let app = Arc::new(AppState::default());
        let addr = grpc_app(app.clone()).await;
        let token = relay.issue_token("grpc");
        let host = format!("www-{}.example.com", token.routing_key());
        let mut config = TestClient::agent_config(relay.addr, &pki.ca(), token, addr);
        config.h2c = true;
        let mut client = TestClient::spawn(config);
        client.routing_key = client.wait_connected().await;
        Self {
            app,
            app_addr: addr,
            host,
            pki,
            relay,
            _client: client,
        }
    }

    /// An edge of either kind, and a gRPC client talking to the app through it.
    pub async fn visitor(&self, over_quic: bool) -> (TestEdge, EchoClient) {
        let edge = if over_quic {
            TestEdge::over_quic(&self.relay, &self.pki, None).await
        } else {
            TestEdge::in_process(&self.relay, None).await
        };
        let client = EchoClient::via_edge(edge.addr, &self.host).await;
        (edge, client)
    }
}
