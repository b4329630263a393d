//! A tower layer around the gRPC services: counts every error status by method and code, and
//! answers a request over the transport's size limit as the payload guard does.
//!
//! Errors returned before a response starts travel as `grpc-status` in the response head
//! (tonic's trailers-only form), which is where this layer reads them; errors that end a stream
//! after it started travel in trailers and are counted by the handler that ends the stream.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::metrics::Observability;

/// The layer.
#[derive(Clone)]
pub struct CountErrors {
    obs: Arc<Observability>,
    max_request_bytes: usize,
}

impl CountErrors {
    /// Counts into `obs`; `max_request_bytes` is the services' decoding limit.
    pub fn new(obs: Arc<Observability>, max_request_bytes: usize) -> CountErrors {
        CountErrors { obs, max_request_bytes }
    }
}

impl<S> tower::Layer<S> for CountErrors {
    type Service = CountErrorsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountErrorsService { inner, layer: self.clone() }
    }
}

/// The service the layer makes.
#[derive(Clone)]
pub struct CountErrorsService<S> {
    inner: S,
    layer: CountErrors,
}

/// gRPC code `OUT_OF_RANGE`, which tonic gives a message over the decoding limit.
const OUT_OF_RANGE: i32 = 11;
/// gRPC code `RESOURCE_EXHAUSTED`, the documented code of an oversized request.
const RESOURCE_EXHAUSTED: i32 = 8;

impl<S, B, RB> tower::Service<http::Request<B>> for CountErrorsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_string();
        let layer = self.layer.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            let headers = resp.headers_mut();
            let Some(code) = headers.get("grpc-status").and_then(|v| v.to_str().ok()?.parse::<i32>().ok()) else {
                return Ok(resp);
            };
            if code == 0 {
                return Ok(resp);
            }
            let message = headers.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or("");
            let code = if code == OUT_OF_RANGE && message.contains("message length too large") {
                // The transport refused the request before any handler saw it.
                layer.obs.request_too_large();
                let text = format!(
                    "payload_guard_drops: the request exceeds the {}-byte limit of a gRPC request",
                    layer.max_request_bytes
                );
                headers.insert("grpc-status", http::HeaderValue::from(RESOURCE_EXHAUSTED));
                headers.insert(
                    "grpc-message",
                    http::HeaderValue::from_str(&text.replace(' ', "%20")).expect("ASCII message"),
                );
                RESOURCE_EXHAUSTED
            } else {
                code
            };
            layer.obs.request_error(&method, code);
            Ok(resp)
        })
    }
}
