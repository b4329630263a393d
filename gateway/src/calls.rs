//! A tower layer around the gRPC services: counts every error status by method and code, and
//! answers a request over the transport's size limit as the payload guard does.
//!
//! Errors travel as `grpc-status` either in the response head (tonic's trailers-only form) or
//! in the trailers; the layer reads both.

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
    RB: http_body::Body + Send + 'static,
{
    type Response = http::Response<CountedBody<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_string();
        let layer = self.layer.clone();
        let in_flight = layer.obs.call_started();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            let counted = inspect(resp.headers_mut(), &layer, &method);
            Ok(resp.map(|body| CountedBody { inner: Box::pin(body), layer, method, counted, _in_flight: in_flight }))
        })
    }
}

/// Counts an error status in `headers` (a response head or trailers); answers a request over the
/// size limit with the payload guard's code. Returns whether there was a status to count.
fn inspect(headers: &mut http::HeaderMap, layer: &CountErrors, method: &str) -> bool {
    let Some(code) = headers.get("grpc-status").and_then(|v| v.to_str().ok()?.parse::<i32>().ok()) else {
        return false;
    };
    if code == 0 {
        return true;
    }
    let message = headers.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or("");
    let too_large = message.contains("message%20length%20too%20large") || message.contains("message length too large");
    let code = if code == OUT_OF_RANGE && too_large {
        // The transport refused the request before any handler saw it.
        layer.obs.request_too_large();
        let text = format!(
            "payload_guard_drops: the request exceeds the {}-byte limit of a gRPC request",
            layer.max_request_bytes
        );
        headers.insert("grpc-status", http::HeaderValue::from(RESOURCE_EXHAUSTED));
        headers.insert("grpc-message", http::HeaderValue::from_str(&text.replace(' ', "%20")).expect("ASCII message"));
        RESOURCE_EXHAUSTED
    } else {
        code
    };
    layer.obs.request_error(method, code);
    true
}

/// A response body whose trailers are inspected as they pass.
pub struct CountedBody<B> {
    inner: Pin<Box<B>>,
    layer: CountErrors,
    method: String,
    /// The status was already counted from the response head.
    counted: bool,
    /// Ends the call in `theta_grpc_calls_in_flight` when the body is done or dropped.
    _in_flight: crate::metrics::CallInFlight,
}

impl<B: http_body::Body> http_body::Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() && !this.counted => {
                let mut trailers = frame.into_trailers().unwrap_or_else(|_| unreachable!("checked is_trailers"));
                this.counted = inspect(&mut trailers, &this.layer, &this.method);
                Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
