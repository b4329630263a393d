//! The gateway: where the store and the projector meet, and the service that exposes them
//! over gRPC, QUIC and WebRTC.
//!
//! - [`server`]: `theta serve`: the gRPC services (append, replay, audit, admin; health and
//!   reflection), the Prometheus endpoint, periodic checkpoints, graceful shutdown;
//! - [`grpc`]: the `theta.v1` services over a store; [`status`]: errors to status codes;
//!   [`auth`]: read credentials, roles and per-key read limits; [`calls`]: error counting;
//! - [`history`]: a session's projection at any seq from the nearest checkpoint plus a replay;
//! - [`quic`]: the QUIC endpoint; [`link`]: one live connection whatever the transport;
//!   [`peers`]: per-address limits on live connections;
//!   [`live`]: live projections and fan-out to viewers; [`webrtc`]: the WebRTC peer;
//! - [`web`]: the browser viewer's assets; [`http`]: the public web port (page, WebRTC
//!   signalling) and the private metrics port.

pub mod auth;
pub mod calls;
mod convert;
pub mod grpc;
pub mod history;
pub mod http;
pub mod link;
pub mod live;
pub mod metrics;
pub mod peers;
pub mod quic;
pub mod server;
pub mod status;
pub mod web;
pub mod webrtc;

pub use server::{Running, ServeConfig, ServeError, TlsFiles, start, start_with_store};
