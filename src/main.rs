//! The `tokengate` binary: parses the command line and hands it to [`tokengate::cli::run`].

use clap::Parser;

/// mimalloc: pingora allocates per request (futures, header maps, buffers); a size-class allocator with
/// thread-local free lists costs fewer instructions than glibc's and keeps per-token index memory tight.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = tokengate::cli::Cli::parse();
    let default_level = match cli.command {
        tokengate::cli::Command::Serve { .. } => "info",
        _ => "warn",
    };
    tokengate::logging::init(default_level);
    match tokengate::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
