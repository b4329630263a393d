//! The `theta` command: a thin shell over the library crates.

use std::process::ExitCode;

mod cli;
mod client;
mod demo;
mod serve;
mod storecmd;
mod view;

/// jemalloc: the server allocates a message per entry on its read and append paths, on many
/// threads at once; glibc's allocator cost about a fifth of a ReadLog stream's CPU and its
/// arena locks showed up as contention; mimalloc halved the store's durable append rate
/// (docs/PERFORMANCE.md, "gRPC").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    match cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("theta: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
