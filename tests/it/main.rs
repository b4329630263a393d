//! End-to-end tests of the `theta` command, as a user runs it.

mod architecture;
mod browser;
mod cli;
mod soak;
mod store;
mod xr;
