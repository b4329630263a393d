//! The projector: a pure fold of log entries into ECS world state.
//!
//! Filled in by the projector issue; today an empty shell.
