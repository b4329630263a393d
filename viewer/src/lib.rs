//! The viewer: renders a session's projection.
//!
//! Filled in by the viewer issue; today an empty shell.
