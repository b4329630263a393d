//! Theta's client side. The live client: QUIC, and WebRTC as the fallback, over the I/O-free
//! core of `theta-live` (framing, handshake, compression and the mirror, re-exported here for
//! the viewers and scripted editors that use this crate). The history client: the `theta.v1`
//! gRPC services with read credentials, signed appends and proofs checked locally. Commands
//! from their JSON description.
//!
//! This crate never depends on the store or the server side.

pub use theta_live::{compress, frame, handshake, mirror};

pub mod command_json;
pub mod history;
pub mod quic;
pub mod webrtc;
