//! The `theta` command: a thin shell over the library crates.

use std::process::ExitCode;

mod cli;
mod client;
mod demo;
mod serve;
mod storecmd;
mod view;

fn main() -> ExitCode {
    match cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("theta: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
