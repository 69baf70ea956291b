//! `tally-chaos`: see `chaos/README.md`.
//!
//! `tally-chaos tally …` is the `tally` binary itself (`server::cli`), which
//! the harness starts for each node, so a run always drives the server code
//! it was built with. The `run` command (clients, fault schedule, checker)
//! is not written yet.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tally-chaos", version, about = "A real 3-node Tally cluster under faults, with a history checker")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The `tally` server itself (what the harness starts for each node).
    #[command(hide = true, disable_help_flag = true)]
    Tally {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Tally { args } => {
            let mut argv = vec![std::ffi::OsString::from("tally")];
            argv.extend(args);
            server::cli::run(argv)
        }
    }
}
