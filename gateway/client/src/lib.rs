//! The live protocol's shared core, without I/O: length-prefixed framing with a size guard,
//! and the handshake state machines of both sides.
//!
//! Time and randomness come in as arguments, so both are deterministic and testable; the
//! QUIC and WebRTC transports drive them. This crate never depends on the store or the server
//! side, so viewers and scripted editors can use it.

pub mod compress;
pub mod frame;
pub mod handshake;
pub mod quic;
pub mod webrtc;
