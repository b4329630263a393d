//! Theta's gRPC API, `theta.v1`: generated messages, clients and servers.
//!
//! The service definitions live in `proto/proto/theta.proto`; docs/PROTOCOL.md ("gRPC")
//! describes them for clients in any language.

#![allow(missing_docs, clippy::all)]

/// Messages, clients (`*_client`) and servers (`*_server`) of `theta.v1`.
pub mod v1 {
    tonic::include_proto!("theta.v1");
}

/// The encoded file descriptor set, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("theta_descriptor");
