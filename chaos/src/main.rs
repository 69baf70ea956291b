//! `tally-chaos`: see `chaos/README.md`.
//!
//! `tally-chaos run` starts a real cluster (3 nodes, or `--nodes N`), runs clients and a fault
//! schedule against it, checks the history and writes it all to a folder.
//! `tally-chaos tally …` is the `tally` binary itself (`server::cli`), which
//! the harness starts for each node, so a run always drives the server code
//! it was built with.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chaos::run::{self, RunOptions};
use chaos::schedule::Schedule;
use clap::{Parser, Subcommand};
use testkit::Program;

#[derive(Debug, Parser)]
#[command(
    name = "tally-chaos",
    version,
    about = "A real Tally cluster (3 to 9 nodes) under faults, with a history checker"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run clients and faults against a fresh cluster, then check.
    Run(RunArgs),
    /// Check a run's saved `history.json` again (e.g. with a larger budget).
    Check {
        /// The `history.json` a run wrote.
        history: PathBuf,
        /// Time the linearizability search may spend, in all.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        check_budget: Duration,
    },
    /// The `tally` server itself (what the harness starts for each node).
    #[command(hide = true)]
    Tally(server::cli::Embedded),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// How long the clients run: `90s`, `2m`, `30m`, `1h`.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    duration: Duration,
    /// Seeds the fault schedule, its targets, the clients and the proxies.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// `random`, `all` (every fault kind, each once per round), or a
    /// comma-separated list of kinds: kill, kill-leader, pause,
    /// partition-one, partition-leader, bridge, one-way, drop, delay,
    /// wipe-restart, kill-all, clock-jump, add-node, remove-node.
    #[arg(long, default_value = "random", value_parser = Schedule::parse)]
    schedule: Schedule,
    /// The run's folder (history, report, node data and logs); default
    /// `target/chaos/seed-<seed>-<unix time>`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 24)]
    clients: u32,
    /// Nodes in the cluster, 3 to 9.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(3..=9))]
    nodes: u8,
    /// Nodes each shard lives on (`cluster.replication_factor`); 0, the
    /// default: every node. Below `--nodes`, the schedule draws no
    /// add-node or remove-node fault (the server refuses them for such a
    /// cluster).
    #[arg(long, default_value_t = 0)]
    replication_factor: u32,
    /// Shards (Raft groups) per node.
    #[arg(long, default_value_t = 3)]
    shards: u32,
    /// Hot SKUs the clients work on.
    #[arg(long, default_value_t = 5)]
    items: u32,
    /// Each hot SKU's stock at the start.
    #[arg(long, default_value_t = 400)]
    stock: u64,
    /// Run this `tally` binary for the nodes instead of this program's own
    /// copy of the server.
    #[arg(long)]
    tally: Option<PathBuf>,
    /// Time the linearizability search may spend, in all.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    check_budget: Duration,
}

/// `90s`, `2m`, `1h`, `1500ms`, or a number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("`{text}` is not a duration like 90s, 2m or 1h"))?;
    let millis = match unit {
        "ms" => number,
        "" | "s" => number.saturating_mul(1_000),
        "m" => number.saturating_mul(60_000),
        "h" => number.saturating_mul(3_600_000),
        _ => return Err(format!("`{text}`: the unit is one of ms, s, m, h")),
    };
    Ok(Duration::from_millis(millis))
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Tally(tally) => tally.run(),
        Cmd::Run(args) => run_command(args),
        Cmd::Check { history, check_budget } => check_command(&history, check_budget),
    }
}

fn check_command(path: &std::path::Path, budget: Duration) -> ExitCode {
    let history: chaos::history::History = match std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(history) => history,
        Err(error) => {
            eprintln!("tally-chaos: {}: {error}", path.display());
            return ExitCode::from(2);
        }
    };
    let options = chaos::checker::CheckOptions { linearizability_budget: budget, ..Default::default() };
    let report = chaos::checker::check(&history, &options);
    println!("{}", report.summary());
    if report.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn run_command(args: RunArgs) -> ExitCode {
    let program = match Program::binary_or_self(args.tally) {
        Ok(program) => program,
        Err(error) => {
            eprintln!("tally-chaos: {error}");
            return ExitCode::from(2);
        }
    };
    let out = args.out.unwrap_or_else(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        PathBuf::from("target/chaos").join(format!("seed-{}-{now}", args.seed))
    });
    let mut options = RunOptions::new(program, out.clone(), args.duration, args.seed);
    options.schedule = args.schedule;
    options.clients = args.clients.max(1);
    options.nodes = args.nodes;
    options.replication_factor = args.replication_factor;
    options.shards = args.shards.max(1);
    options.items = args.items.max(1);
    options.stock = args.stock;
    options.check.linearizability_budget = args.check_budget;
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tally-chaos: no runtime: {error}");
            return ExitCode::from(2);
        }
    };
    eprintln!("tally-chaos: running for {:?} into {}", args.duration, out.display());
    match runtime.block_on(run::run(&options)) {
        Ok(report) => {
            println!("{}", report.summary());
            println!("history and report: {}", out.display());
            if report.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(error) => {
            eprintln!("tally-chaos: the run could not be made: {error}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3_600)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1_500)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("2d").is_err());
        assert!(parse_duration("m").is_err());
    }
}
