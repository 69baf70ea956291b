//! `tally`: the Tally server. The command line lives in `server::cli`.

use std::process::ExitCode;

fn main() -> ExitCode {
    server::cli::run(std::env::args_os())
}
