//! The gateway's HTTP ports: a deliberately small HTTP/1.1 responder (one request per
//! connection, bounded reads) for the public web port (the browser viewer page and WebRTC
//! signalling) and the private metrics port (Prometheus `/metrics`). Both answer `/healthz`.
//! They are separate listeners by default, so that operators can expose the page and keep
//! metrics private; one address for both serves both.

use std::borrow::Cow;

use theta_store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::metrics::Observability;

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
    obs: std::sync::Arc<Observability>,
    store: std::sync::Arc<Store>,
    webrtc: Option<std::sync::Arc<crate::webrtc::WebRtcEndpoint>>,
) {
    loop {
        let Ok((mut conn, peer)) = listener.accept().await else { continue };
        let (obs, store, webrtc) = (obs.clone(), store.clone(), webrtc.clone());
        tokio::spawn(async move {
            let (head, body) = match read_request(&mut conn).await {
                Ok(r) => r,
                Err(Some(status)) => {
                    let msg = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    let _ = conn.write_all(msg.as_bytes()).await;
                    let _ = conn.shutdown().await;
                    return;
                }
                Err(None) => return,
            };
            let target = head.split_whitespace().nth(1).unwrap_or("");
            let path = target.split(['?', '#']).next().unwrap_or("").to_string();
            let method = head.split_whitespace().next().unwrap_or("").to_string();
            // HEAD is GET without the body.
            let head_only = method == "HEAD";
            let method = if head_only { "GET".to_string() } else { method };
            const TEXT: &str = "text/plain; charset=utf-8";
            // Static bodies (the page, fixed messages) are sent without copying.
            let (status, ctype, body): (&str, &str, Cow<'static, [u8]>) = match (method.as_str(), path.as_str()) {
                ("GET", "/metrics") if routes.metrics => {
                    ("200 OK", "text/plain; version=0.0.4; charset=utf-8", obs.render(&store).into_bytes().into())
                }
                ("GET", "/healthz") => ("200 OK", TEXT, b"ok\n"[..].into()),
                ("GET", "/" | "/index.html") if routes.web => {
                    ("200 OK", "text/html; charset=utf-8", crate::web::INDEX_HTML.into())
                }
                ("GET", "/viewer.js") if routes.web => {
                    ("200 OK", "text/javascript; charset=utf-8", crate::web::VIEWER_JS.into())
                }
                ("POST", "/webrtc/offer") if routes.web => match &webrtc {
                    None => ("404 Not Found", TEXT, b"WebRTC is off on this server\n"[..].into()),
                    Some(w) => match w.answer(&body, peer.ip()).await {
                        Ok(answer) => ("200 OK", "application/json", answer.into()),
                        Err(e @ crate::webrtc::WebRtcError::BadOffer(_)) => {
                            obs.signalling_refused();
                            ("400 Bad Request", TEXT, format!("{e}\n").into_bytes().into())
                        }
                        Err(e @ crate::webrtc::WebRtcError::AddressLimit(_)) => {
                            ("429 Too Many Requests", TEXT, format!("{e}\n").into_bytes().into())
                        }
                        Err(e) => ("500 Internal Server Error", TEXT, format!("{e}\n").into_bytes().into()),
                    },
                },
                ("GET", _) => ("404 Not Found", TEXT, routes.not_found().as_bytes().into()),
                _ => (
                    "405 Method Not Allowed",
                    TEXT,
                    b"GET /, /viewer.js, /metrics, /healthz; POST /webrtc/offer\n"[..].into(),
                ),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            if !head_only {
                let _ = conn.write_all(&body).await;
            }
            let _ = conn.shutdown().await;
        });
    }
}

/// Largest request head and body accepted, bytes.
const MAX_HEAD: usize = 8 * 1024;
const MAX_BODY: usize = 64 * 1024;

/// Reads one request (head up to 8 KiB, body by Content-Length up to 64 KiB) within 5 s.
/// Errors carry the status to answer with, if any.
async fn read_request(conn: &mut tokio::net::TcpStream) -> Result<(String, Vec<u8>), Option<&'static str>> {
    let read = async {
        let mut buf = Vec::with_capacity(1_024);
        let mut chunk = [0u8; 4_096];
        let end = loop {
            let n = conn.read(&mut chunk).await.map_err(|_| None)?;
            if n == 0 {
                return Err(None);
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD {
                return Err(Some("431 Request Header Fields Too Large"));
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let len = head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if len > MAX_BODY {
            return Err(Some("413 Payload Too Large"));
        }
        let mut body = buf[end..].to_vec();
        while body.len() < len {
            let n = conn.read(&mut chunk).await.map_err(|_| None)?;
            if n == 0 {
                return Err(None);
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(len);
        Ok((head, body))
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), read).await.unwrap_or(Err(None))
}
