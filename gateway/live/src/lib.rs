//! The live protocol's core, without I/O and without an async runtime: length-prefixed framing
//! with a size guard, the handshake state machines of both sides, frame compression, the
//! server's per-session fan-out ([`fanout::FanOut`]) and the viewer's mirror
//! ([`mirror::Mirror`]).
//!
//! Time and randomness come in as arguments and nothing here opens a socket, spawns a thread
//! or reads a clock, so every piece is deterministic and can be driven by a simulation. The
//! gateway's QUIC and WebRTC endpoints and the client's transports are adapters over it.

pub mod compress;
pub mod fanout;
pub mod frame;
pub mod handshake;
pub mod mirror;
