//! The gateway: runs the log store as a service.
//!
//! Filled in by the gateway issue; today an empty shell.
