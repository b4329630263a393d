//! The live client: QUIC, and WebRTC as the fallback, over the I/O-free core of `theta-live`
//! (framing, handshake, compression and the mirror, re-exported here for the viewers and
//! scripted editors that use this crate).
//!
//! This crate never depends on the store or the server side.

pub use theta_live::{compress, frame, handshake, mirror};

pub mod quic;
pub mod webrtc;
