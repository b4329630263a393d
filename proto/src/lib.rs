//! The gRPC API (`theta.v1`).
//!
//! Filled in by the gateway issue; today an empty shell.
