//! The gateway's HTTP ports, served by hyper (HTTP/1.1): the public web port (the browser
//! viewer page and WebRTC signalling) and the private metrics port (Prometheus `/metrics`).
//! Both answer `/healthz`. They are separate listeners by default, so that operators can expose
//! the page and keep metrics private; one address for both serves both. Requests are bounded:
//! the head to 8 KiB (431), the body to 64 KiB (413), the head must arrive within 5 s, and a
//! connection carries one request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use theta_store::Store;
use tokio::net::TcpListener;

use crate::metrics::Observability;
use crate::webrtc::WebRtcEndpoint;

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routes {
    /// `GET /metrics`.
    pub metrics: bool,
    /// `GET /`, `GET /viewer.js`, `POST /webrtc/offer`.
    pub web: bool,
}

impl Routes {
    /// The private metrics port.
    pub const METRICS: Routes = Routes { metrics: true, web: false };
    /// The public web port.
    pub const WEB: Routes = Routes { metrics: false, web: true };
    /// Both on one port.
    pub const ALL: Routes = Routes { metrics: true, web: true };

    fn not_found(self) -> &'static str {
        match (self.metrics, self.web) {
            (true, true) => "not found: try / (the viewer page) or /metrics\n",
            (true, false) => "not found: this is the metrics port; try /metrics\n",
            _ => "not found: try / (the viewer page)\n",
        }
    }
}

/// Serves one HTTP listener until the task is dropped, with the routes of `routes`.
pub async fn serve_http(
    listener: TcpListener,
    routes: Routes,
    obs: Arc<Observability>,
    store: Arc<Store>,
    webrtc: Option<Arc<WebRtcEndpoint>>,
) {
    loop {
        let Ok((conn, peer)) = listener.accept().await else { continue };
        let (obs, store, webrtc) = (obs.clone(), store.clone(), webrtc.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (obs, store, webrtc) = (obs.clone(), store.clone(), webrtc.clone());
                async move { Ok::<_, std::convert::Infallible>(answer(req, peer, routes, &obs, &store, webrtc).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .keep_alive(false)
                .serve_connection(TokioIo::new(conn), service)
                .await;
        });
    }
}

/// Largest request head (hyper's smallest read buffer) and body accepted, bytes.
const MAX_HEAD: usize = 8 * 1024;
const MAX_BODY: usize = 64 * 1024;
/// How long a client may take to send a request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to send the body after the head.
const BODY_TIMEOUT: Duration = Duration::from_secs(5);

const TEXT: &str = "text/plain; charset=utf-8";

/// The response to one request.
async fn answer(
    req: Request<Incoming>,
    peer: SocketAddr,
    routes: Routes,
    obs: &Observability,
    store: &Store,
    webrtc: Option<Arc<WebRtcEndpoint>>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    // HEAD is GET without the body (hyper leaves the body out).
    let method = if req.method() == Method::HEAD { Method::GET } else { req.method().clone() };
    let reply = |status: StatusCode, ctype: &'static str, body: Bytes| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, ctype)
            .header(header::CACHE_CONTROL, "no-cache")
            .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
            .body(Full::new(body))
            .expect("a valid response")
    };
    let text = |status: StatusCode, msg: String| reply(status, TEXT, Bytes::from(msg));
    match (&method, path.as_str()) {
        (&Method::GET, "/metrics") if routes.metrics => {
            reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", obs.render(store).into())
        }
        // A store stopped by a storage failure still serves reads, but takes no appends.
        (&Method::GET, "/healthz") if store.storage_failed() => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            Bytes::from_static(b"storage failing: appends refused until it works again\n"),
        ),
        (&Method::GET, "/healthz") => reply(StatusCode::OK, TEXT, Bytes::from_static(b"ok\n")),
        (&Method::GET, "/" | "/index.html") if routes.web => {
            reply(StatusCode::OK, "text/html; charset=utf-8", Bytes::from_static(crate::web::INDEX_HTML))
        }
        (&Method::GET, "/viewer.js") if routes.web => {
            reply(StatusCode::OK, "text/javascript; charset=utf-8", Bytes::from_static(crate::web::VIEWER_JS))
        }
        (&Method::POST, "/webrtc/offer") if routes.web => {
            let Some(w) = webrtc else {
                return text(StatusCode::NOT_FOUND, "WebRTC is off on this server\n".into());
            };
            let body = match tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), MAX_BODY).collect()).await
            {
                Ok(Ok(b)) => b.to_bytes(),
                Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                    obs.signalling_refused();
                    return text(StatusCode::PAYLOAD_TOO_LARGE, format!("the offer is over {MAX_BODY} bytes\n"));
                }
                Ok(Err(_)) | Err(_) => {
                    return text(StatusCode::REQUEST_TIMEOUT, "the request body did not arrive\n".into());
                }
            };
            match w.answer(&body, peer.ip()).await {
                Ok(answer) => reply(StatusCode::OK, "application/json", Bytes::from(answer)),
                Err(e @ crate::webrtc::WebRtcError::BadOffer(_)) => {
                    obs.signalling_refused();
                    text(StatusCode::BAD_REQUEST, format!("{e}\n"))
                }
                Err(e @ crate::webrtc::WebRtcError::AddressLimit(_)) => {
                    text(StatusCode::TOO_MANY_REQUESTS, format!("{e}\n"))
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        (&Method::GET, _) => text(StatusCode::NOT_FOUND, routes.not_found().into()),
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "GET /, /viewer.js, /metrics, /healthz; POST /webrtc/offer\n".into()),
    }
}
