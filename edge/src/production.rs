//! Phase 3b: forward a request without a routing key to production, over a keep-alive
//! connection of the worker's own pool ([`crate::production_pool`]).

use crate::production_pool::ProductionPool;
use crate::visitor_body::BodyFailure;
use crate::{BoxBody, BoxError};
use http::{Request, Response, Uri};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use proto::http::{is_upgrade_request, strip_hop_by_hop};
use std::sync::Arc;
use tracing::debug;

/// The production upstream: its address and one worker's connections to it. Each edge worker
/// thread has its own ([`Production::for_worker`]).
pub struct Production {
    authority: http::uri::Authority,
    pool: Arc<ProductionPool>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProductionError {
    #[error("production URL {0:?} must look like http://host:port")]
    BadUrl(String),
    #[error("production upstream failed: {0}")]
    Upstream(String),
    /// The visitor's request body failed (malformed, cut), and the request with it.
    #[error("the request's body could not be read: {0}")]
    VisitorBody(String),
    /// The visitor's request body stalled (`body_read_timeout_ms`, `body_min_bytes_per_sec`);
    /// the request was aborted.
    #[error("{0}")]
    VisitorStalled(String),
}

impl Production {
    pub fn new(url: &str) -> Result<Self, ProductionError> {
        let uri: Uri = url
            .parse()
            .map_err(|_| ProductionError::BadUrl(url.into()))?;
        let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned())
        else {
            return Err(ProductionError::BadUrl(url.into()));
        };
        if scheme != http::uri::Scheme::HTTP {
            return Err(ProductionError::BadUrl(url.into()));
        }
        Ok(Self::with_authority(authority))
    }

    fn with_authority(authority: http::uri::Authority) -> Self {
        let port = authority.port_u16().unwrap_or(80);
        let pool = ProductionPool::new(format!("{}:{port}", authority.host()));
        Self { authority, pool }
    }

    /// The same upstream with connections of its own, for another worker thread.
    pub fn for_worker(&self) -> Self {
        Self::with_authority(self.authority.clone())
    }

    /// Forwards `req`; its body may keep production waiting as long as `body_pace` allows
    /// (then the request is aborted and its connection closed).
    pub async fn forward(
        &self,
        mut req: Request<Incoming>,
        body_pace: crate::visitor_body::BodyPace,
    ) -> Result<Response<BoxBody>, ProductionError> {
        let upgrade = is_upgrade_request(req.headers()).then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        // The visitor's Host goes to production unchanged, as behind any reverse proxy; an
        // HTTP/2 visitor's `:authority` becomes it.
        if !parts.headers.contains_key(http::header::HOST) {
            if let Some(h) = crate::routing::request_host(&parts).and_then(|h| h.parse().ok()) {
                parts.headers.insert(http::header::HOST, h);
            }
        }
        // Origin form on the wire (`GET /path?query`), whatever form the visitor used.
        let origin_form = match parts.uri.path_and_query() {
            Some(_) if parts.uri.scheme().is_none() && parts.uri.authority().is_none() => None,
            Some(p) => Some(p.clone()),
            None => Some(http::uri::PathAndQuery::from_static("/")),
        };
        if let Some(p) = origin_form {
            parts.uri = Uri::from(p);
        }
        // Production speaks HTTP/1.1 to us whatever the visitor spoke.
        parts.version = http::Version::HTTP_11;
        // Most requests have no body to watch (a GET): no channel for them.
        let (body, mut body_failed) = if body.is_end_stream() {
            (
                body.map_err(|e| Box::new(e) as BoxError).boxed_unsync(),
                None,
            )
        } else {
            let (body, failed) = crate::visitor_body::watch(body, body_pace);
            (body.boxed_unsync(), Some(failed))
        };
        let mut resp = self
            .pool
            .send(Request::from_parts(parts, body))
            .await
            .map_err(
                |e| match body_failed.as_mut().and_then(crate::visitor_body::failure) {
                    // The body failed before the request did: that is why it did.
                    Some(BodyFailure::Broken(why)) => ProductionError::VisitorBody(why),
                    Some(BodyFailure::Stalled(why)) => ProductionError::VisitorStalled(why),
                    None => ProductionError::Upstream(e.to_string()),
                },
            )?;
        let switching = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
        if let (true, Some(on_visitor)) = (switching, upgrade) {
            let on_production = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                match tokio::try_join!(on_visitor, on_production) {
                    Ok((v, p)) => {
                        let (mut v, mut p) = (TokioIo::new(v), TokioIo::new(p));
                        let _ = tokio::io::copy_bidirectional(&mut v, &mut p).await;
                    }
                    Err(e) => debug!("production upgrade failed: {e}"),
                }
            });
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, switching);
        Ok(Response::from_parts(
            parts,
            body.map_err(|e| Box::new(e) as BoxError).boxed_unsync(),
        ))
    }
}
