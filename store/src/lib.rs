//! The log store: the single source of truth.
//!
//! Every accepted command of every session, in order, durably, with proof of who signed it
//! and that it was allowed. Filled in by the store issue; today an empty shell.
