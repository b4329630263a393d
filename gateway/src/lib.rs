//! The gateway: where the store and the projector meet, and (in later issues) the service
//! that exposes them over gRPC, QUIC and WebRTC.
//!
//! Today it holds [`history`]: opening a session's projection at any seq from the nearest
//! checkpoint plus a replay, writing those checkpoints, and one entity's history.

pub mod history;
