//! `tally`: the Tally server. The command line lives in `server::cli`.

use std::process::ExitCode;

/// mimalloc, not the system allocator: a request allocates and frees many
/// small objects on one thread and frees them on another, which glibc's
/// allocator handled with ~30% of the server's CPU under load
/// (PERFORMANCE.md, "bench").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    server::cli::run(std::env::args_os())
}
