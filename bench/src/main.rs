//! `tally-bench`: see `bench/README.md`.
//!
//! `tally-bench run` measures every target × workload and writes
//! `results.md`, `results.json` and SVG plots into `--out`. It exits 1 when
//! any run found oversell or a lost acknowledged write (`http-floor`'s runs
//! have nothing to check and find none), or a target that should have run
//! failed to, so the smoke run in the test suite fails on a correctness
//! bug; a missed speed goal is reported, not an error.
//!
//! `tally-bench roll` restarts every node of a 5-node cluster in turn under
//! the flash-sale load (`roll.rs`) and exits 1 on any failed write,
//! oversell or lost hold.
//!
//! `tally-bench tally …` is the `tally` binary itself (`server::cli`), which
//! the bench starts when no `--tally-bin` is given.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bench::load::Timing;
use bench::results::Report;
use bench::runner::{Plan, TargetKind};
use bench::workload::{Shape, Workload};
use clap::{Parser, Subcommand};
use testkit::Program;

/// The allocator of the `tally` binary (see `server/src/main.rs`), since
/// this program runs the server too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "tally-bench", version, about = "Holds per second and latency: Tally beside Redis and PostgreSQL")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the benchmark.
    Run(RunArgs),
    /// Time `POST /v1/items:import` of N new items (and their export) on a fresh node.
    Import(ImportArgs),
    /// Online backup and restore of a big node: times and the write p99 meanwhile.
    Backup(BackupArgs),
    /// Rolling restart of a cluster under the flash-sale load: zero failed writes, and the p99 during the roll.
    Roll(RollArgs),
    /// Holds/s as a placed cluster grows (3, 5, 6 nodes, each shard on 3), every node capped at the same CPU share.
    Scale(ScaleArgs),
    /// The `tally` server itself (what the bench starts by default).
    #[command(hide = true)]
    Tally(server::cli::Embedded),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Targets, comma-separated: tally, tally-3, http-floor, redis-always, redis-everysec, postgres.
    /// http-floor is GET /healthz on one tally node with the same clients and timing, the HTTP
    /// limit of the machine; the report gives tally's and tally-3's throughput as a percentage of it.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "tally,tally-3,http-floor,redis-always,redis-everysec,postgres"
    )]
    targets: Vec<String>,
    /// Workloads, comma-separated: flash-sale, uniform, mixed, batch (= batch-16,batch-256,batch-1024), batch-N, expiry.
    #[arg(long, value_delimiter = ',', default_value = "flash-sale,uniform,mixed,batch,expiry")]
    workloads: Vec<String>,
    /// Concurrent clients (connections) of every workload.
    #[arg(long, default_value_t = 50)]
    clients: u32,
    /// Further client counts for flash-sale, for throughput against clients.
    #[arg(long, value_delimiter = ',', default_value = "1,10,200")]
    sweep: Vec<u32>,
    /// Seconds measured per run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds run before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// SKUs of uniform, mixed and batch.
    #[arg(long, default_value_t = 100_000)]
    skus: usize,
    /// Units the flash-sale race sells out at the end (exactly this many holds must succeed).
    #[arg(long, default_value_t = 1_000)]
    sellout_units: u64,
    /// Holds per second offered by the expiry workload (1 s holds).
    #[arg(long, default_value_t = 2_000.0)]
    expiry_rate: f64,
    /// Skip the open-loop flash-sale run at half the closed-loop peak.
    #[arg(long)]
    no_half_load: bool,
    /// A short run of every target and workload (about a second each), as the test suite runs it.
    #[arg(long)]
    smoke: bool,
    /// The `tally` binary to measure; by default this program re-runs itself as `tally-bench tally`.
    #[arg(long)]
    tally_bin: Option<PathBuf>,
    /// Folder for results.md, results.json and the plots.
    #[arg(long, default_value = "bench/results/latest")]
    out: PathBuf,
    /// Folder the targets keep their data in during the run (a fresh temporary folder by default).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct BackupArgs {
    /// Items, spread over the shards by placement.
    #[arg(long, default_value_t = 1_000_000)]
    items: u64,
    /// Live holds (one unit each, an hour long), spread over the items.
    #[arg(long, default_value_t = 1_000_000)]
    holds: u64,
    #[arg(long, default_value_t = 2)]
    shards: u32,
    /// Backups and restores measured (the report gives medians).
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// Folder for the node's data, the backups and the restores (a fresh temporary folder by default).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The `tally` binary to measure; by default this program re-runs itself as `tally-bench tally`.
    #[arg(long)]
    tally_bin: Option<PathBuf>,
}

fn backup(args: &BackupArgs) -> ExitCode {
    let temporary = match &args.dir {
        Some(_) => None,
        None => match tempfile::Builder::new().prefix("tally-bench-backup-").tempdir() {
            Ok(dir) => Some(dir),
            Err(error) => {
                eprintln!("tally-bench: no temporary folder: {error}");
                return ExitCode::FAILURE;
            }
        },
    };
    let Some(dir) = args.dir.clone().or_else(|| temporary.as_ref().map(|t| t.path().to_owned())) else {
        return ExitCode::FAILURE;
    };
    let program = match program(args.tally_bin.as_ref()) {
        Ok(program) => program,
        Err(error) => {
            eprintln!("tally-bench: {error}");
            return ExitCode::FAILURE;
        }
    };
    if args.runs == 0 || args.shards == 0 || args.items == 0 {
        eprintln!("tally-bench: runs, shards and items must be at least 1");
        return ExitCode::from(2);
    }
    let plan = bench::backup::BackupPlan {
        items: args.items,
        holds: args.holds,
        shards: args.shards,
        runs: args.runs,
        dir,
        program,
    };
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(bench::backup::run(&plan)) {
        Ok(figures) => {
            println!("\n{}", bench::backup::markdown(&plan, &figures));
            bench::backup::clean(&plan.dir);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tally-bench: backup bench failed: {error}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, clap::Args)]
struct RollArgs {
    /// Nodes of the cluster, restarted one after another.
    #[arg(long, default_value_t = 5)]
    nodes: u64,
    /// Shards (Raft groups) of every node.
    #[arg(long, default_value_t = 2)]
    shards: u32,
    /// Concurrent flash-sale clients, spread over the nodes.
    #[arg(long, default_value_t = 50)]
    clients: u32,
    /// Seconds of load before anything is measured.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds of steady load measured with every node up, before the roll.
    #[arg(long, default_value_t = 10.0)]
    before: f64,
    /// Seconds to wait after a restarted node has caught up, before stopping the next.
    #[arg(long, default_value_t = 5.0)]
    settle: f64,
    /// Seconds a write is retried (same Idempotency-Key, next node) before it counts as failed.
    #[arg(long, default_value_t = 30.0)]
    write_window: f64,
    /// Seconds to wait for one attempt's answer.
    #[arg(long, default_value_t = 10.0)]
    attempt_timeout: f64,
    /// Units the clients race for after the roll (exactly this many holds must succeed).
    #[arg(long, default_value_t = 1_000)]
    sellout_units: u64,
    /// The `tally` binary to run; by default this program re-runs itself as `tally-bench tally`.
    #[arg(long)]
    tally_bin: Option<PathBuf>,
    /// Folder for roll.json and roll.md.
    #[arg(long, default_value = "bench/results/latest/roll")]
    out: PathBuf,
    /// Folder for the nodes' directories (a fresh temporary folder by default; kept when the run fails).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ScaleArgs {
    /// Node counts, comma-separated: one fresh cluster each.
    #[arg(long, value_delimiter = ',', default_value = "3,5,6")]
    nodes: Vec<u64>,
    /// Nodes each shard lives on (`cluster.replication_factor`).
    #[arg(long, default_value_t = 3)]
    replication_factor: u32,
    /// Shards of the cluster.
    #[arg(long, default_value_t = 12)]
    shards: u32,
    /// CPUs each node may use (a cgroup CPU quota; needs root). Six nodes
    /// at 0.25 leave half of a 2-core machine to the clients.
    #[arg(long, default_value_t = 0.25)]
    cpu_per_node: f64,
    /// Concurrent clients, spread over the nodes.
    #[arg(long, default_value_t = 96)]
    clients: u32,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Seconds measured per cluster.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// SKUs the holds spread over.
    #[arg(long, default_value_t = 10_000)]
    skus: usize,
    /// The `tally` binary to run; by default this program re-runs itself as `tally-bench tally`.
    #[arg(long)]
    tally_bin: Option<PathBuf>,
    /// Folder for results.json and results.md.
    #[arg(long, default_value = "bench/results/latest/scale")]
    out: PathBuf,
}

fn scale(args: &ScaleArgs) -> ExitCode {
    let program = match program(args.tally_bin.as_ref()) {
        Ok(program) => program,
        Err(error) => {
            eprintln!("tally-bench: {error}");
            return ExitCode::FAILURE;
        }
    };
    let bad_nodes = args.nodes.is_empty() || args.nodes.iter().any(|n| *n == 0 || *n > 9);
    if bad_nodes || args.replication_factor == 0 || args.shards == 0 || args.clients == 0 || args.skus == 0 {
        eprintln!("tally-bench: nodes 1 to 9 each; replication factor, shards, clients and skus at least 1");
        return ExitCode::from(2);
    }
    let seconds_ok = [args.warmup, args.duration].iter().all(|s| s.is_finite() && *s >= 0.0 && *s <= 86_400.0);
    if !seconds_ok || args.duration <= 0.0 || !(args.cpu_per_node > 0.0 && args.cpu_per_node <= 64.0) {
        eprintln!("tally-bench: times are seconds from 0 to 86400 (--duration above 0), --cpu-per-node above 0");
        return ExitCode::from(2);
    }
    let dir = match tempfile::Builder::new().prefix("tally-bench-scale-").tempdir() {
        Ok(dir) => dir,
        Err(error) => {
            eprintln!("tally-bench: no temporary folder: {error}");
            return ExitCode::FAILURE;
        }
    };
    let plan = bench::scale::ScalePlan {
        nodes: args.nodes.clone(),
        replication_factor: args.replication_factor,
        shards: args.shards,
        cpu_per_node: args.cpu_per_node,
        clients: args.clients,
        timing: Timing {
            warmup: Duration::from_secs_f64(args.warmup),
            measure: Duration::from_secs_f64(args.duration),
        },
        skus: args.skus,
        program,
        data_dir: dir.path().to_path_buf(),
    };
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(bench::scale::run(&plan)) {
        Ok(report) => {
            if let Err(error) = bench::scale::write(&report, &args.out) {
                eprintln!("tally-bench: write {}: {error}", args.out.display());
                return ExitCode::FAILURE;
            }
            println!("results in {}", args.out.display());
            if report.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(error) => {
            eprintln!("tally-bench scale: {error}");
            ExitCode::FAILURE
        }
    }
}

fn roll(args: &RollArgs) -> ExitCode {
    let program = match program(args.tally_bin.as_ref()) {
        Ok(program) => program,
        Err(error) => {
            eprintln!("tally-bench: {error}");
            return ExitCode::FAILURE;
        }
    };
    let seconds = [args.warmup, args.before, args.settle, args.write_window, args.attempt_timeout];
    if args.nodes < 2 || args.shards == 0 || args.clients == 0 || args.sellout_units == 0 {
        eprintln!("tally-bench: nodes must be at least 2, shards, clients and sellout units at least 1");
        return ExitCode::from(2);
    }
    if seconds.iter().any(|s| !(s.is_finite() && *s >= 0.0 && *s <= 86_400.0)) || args.before <= 0.0 {
        eprintln!("tally-bench: times are seconds from 0 to 86400, and --before above 0");
        return ExitCode::from(2);
    }
    let dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => match tempfile::Builder::new().prefix("tally-bench-roll-").tempdir() {
            Ok(dir) => dir.keep(),
            Err(error) => {
                eprintln!("tally-bench: no temporary folder: {error}");
                return ExitCode::FAILURE;
            }
        },
    };
    let plan = bench::roll::RollPlan {
        nodes: args.nodes,
        shards: args.shards,
        clients: args.clients,
        warmup: Duration::from_secs_f64(args.warmup),
        before: Duration::from_secs_f64(args.before),
        settle: Duration::from_secs_f64(args.settle),
        write_window: Duration::from_secs_f64(args.write_window),
        attempt_timeout: Duration::from_secs_f64(args.attempt_timeout),
        shape: Shape {
            skus: 1,
            stock: 1_000_000_000,
            sellout_units: args.sellout_units,
            ttl_ms: 3_600_000,
            expiry_ttl_ms: 1_000,
        },
        program,
        dir,
    };
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let mut result = bench::roll::RollResult {
        started: bench::report::now_rfc3339(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: bench::report::machine(),
        nodes: plan.nodes,
        shards: plan.shards,
        clients: plan.clients,
        settle_s: args.settle,
        write_window_s: args.write_window,
        ..bench::roll::RollResult::default()
    };
    println!("tally-bench roll on {}: {} nodes, {} clients", result.machine, plan.nodes, plan.clients);
    if let Err(error) = runtime.block_on(bench::roll::run(&plan, &mut result)) {
        result.problems.push(error);
        result.passed = false;
    }
    println!("\n{}", result.markdown());
    bench::roll::clean(&plan.dir, plan.nodes, result.passed);
    if let Err(error) = bench::roll::write(&result, &args.out) {
        eprintln!("tally-bench: cannot write results to {}: {error}", args.out.display());
        return ExitCode::FAILURE;
    }
    println!("results: {}", args.out.join("roll.json").display());
    if result.passed { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

#[derive(Debug, clap::Args)]
struct ImportArgs {
    /// Items (rows) per import.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Warehouses the rows spread over (SKUs are rows / warehouses).
    #[arg(long, default_value_t = 4)]
    warehouses: u64,
    /// Runs, each on a fresh node; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// The `tally` binary to measure; by default this program re-runs itself as `tally-bench tally`.
    #[arg(long)]
    tally_bin: Option<PathBuf>,
}

fn import(args: ImportArgs) -> ExitCode {
    let program = match program(args.tally_bin.as_ref()) {
        Ok(program) => program,
        Err(error) => {
            eprintln!("tally-bench: {error}");
            return ExitCode::FAILURE;
        }
    };
    if args.rows == 0 || args.warehouses == 0 || args.runs == 0 {
        eprintln!("tally-bench: rows, warehouses and runs must be at least 1");
        return ExitCode::from(2);
    }
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    println!("tally-bench import on {}: {} rows, {} runs", bench::report::machine(), args.rows, args.runs);
    let body = bench::import::ndjson_rows(args.rows, args.warehouses);
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        let dir = match tempfile::Builder::new().prefix("tally-bench-import-").tempdir() {
            Ok(dir) => dir,
            Err(error) => {
                eprintln!("tally-bench: no temporary folder: {error}");
                return ExitCode::FAILURE;
            }
        };
        match runtime.block_on(bench::import::run_once(&program, dir.path(), args.rows, body.clone())) {
            Ok(measured) => {
                println!(
                    "run {run}: import {:.2} s ({:.0} rows/s), export {:.2} s ({} bytes)",
                    measured.import.as_secs_f64(),
                    args.rows as f64 / measured.import.as_secs_f64(),
                    measured.export.as_secs_f64(),
                    measured.exported_bytes
                );
                runs.push(measured);
            }
            Err(error) => {
                eprintln!("tally-bench: run {run} failed: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    let import = bench::import::median(runs.iter().map(|r| r.import).collect());
    let export = bench::import::median(runs.iter().map(|r| r.export).collect());
    println!(
        "median of {}: import {:.2} s ({:.0} rows/s), export {:.2} s",
        runs.len(),
        import.as_secs_f64(),
        args.rows as f64 / import.as_secs_f64(),
        export.as_secs_f64()
    );
    ExitCode::SUCCESS
}

/// The `tally` to start: `--tally-bin`, or this program re-run as `tally`.
fn program(tally_bin: Option<&PathBuf>) -> Result<Program, String> {
    Program::binary_or_self(tally_bin.cloned())
}

fn plan(args: &RunArgs, data_dir: PathBuf) -> Result<Plan, String> {
    let targets = args.targets.iter().map(|t| TargetKind::parse(t)).collect::<Result<Vec<_>, _>>()?;
    let mut workloads = Vec::new();
    for name in &args.workloads {
        workloads.extend(Workload::parse(name)?);
    }
    if args.clients == 0 || args.sweep.contains(&0) {
        return Err("clients must be at least 1".into());
    }
    if !(args.duration >= 1.0 && args.warmup >= 0.0 && args.expiry_rate > 0.0) {
        return Err("duration must be at least 1 s, warmup at least 0, expiry rate above 0".into());
    }
    let program = program(args.tally_bin.as_ref())?;
    let mut plan = Plan {
        targets,
        workloads,
        clients: args.clients,
        sweep: args.sweep.clone(),
        timing: Timing {
            warmup: Duration::from_secs_f64(args.warmup),
            measure: Duration::from_secs_f64(args.duration),
        },
        shape: Shape {
            skus: args.skus.max(1),
            stock: 1_000_000_000,
            sellout_units: args.sellout_units.max(1),
            ttl_ms: 3_600_000,
            expiry_ttl_ms: 1_000,
        },
        half_load: !args.no_half_load,
        expiry_rate: args.expiry_rate,
        program,
        data_dir,
    };
    if args.smoke {
        plan.clients = plan.clients.min(8);
        plan.sweep = vec![2];
        plan.timing = Timing { warmup: Duration::from_millis(200), measure: Duration::from_secs(1) };
        plan.shape.skus = plan.shape.skus.min(200);
        plan.shape.sellout_units = plan.shape.sellout_units.min(200);
        plan.expiry_rate = plan.expiry_rate.min(100.0);
    }
    Ok(plan)
}

fn run(args: RunArgs) -> ExitCode {
    let temporary = match &args.data_dir {
        Some(_) => None,
        None => match tempfile::Builder::new().prefix("tally-bench-").tempdir() {
            Ok(dir) => Some(dir),
            Err(error) => {
                eprintln!("tally-bench: no temporary folder: {error}");
                return ExitCode::FAILURE;
            }
        },
    };
    let data_dir = args.data_dir.clone().or_else(|| temporary.as_ref().map(|t| t.path().to_owned()));
    let plan = match data_dir.ok_or_else(|| "no data folder".to_owned()).and_then(|dir| plan(&args, dir)) {
        Ok(plan) => plan,
        Err(error) => {
            eprintln!("tally-bench: {error}");
            return ExitCode::from(2);
        }
    };
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let mut report = Report {
        started: bench::report::now_rfc3339(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: bench::report::machine(),
        ..Report::default()
    };
    println!("tally-bench on {}", report.machine);
    runtime.block_on(bench::runner::run(&plan, &mut report));
    report.goals = bench::report::goals(&report, plan.clients);
    report.floor_shares = bench::report::floor_shares(&report);
    if let Err(error) = write(&report, &args.out) {
        eprintln!("tally-bench: cannot write results to {}: {error}", args.out.display());
        return ExitCode::FAILURE;
    }
    let markdown = bench::report::markdown(&report);
    println!("\n{markdown}");
    println!("results: {}", args.out.display());
    let failed = report.skipped.iter().any(|s| s.failed);
    if failed {
        eprintln!("tally-bench: a target or workload failed to run (see \"Skipped\")");
    }
    if report.runs.iter().any(|r| r.check.failed()) || failed { ExitCode::from(1) } else { ExitCode::SUCCESS }
}

fn write(report: &Report, out: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(out)?;
    let json = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(out.join("results.json"), json)?;
    std::fs::write(out.join("results.md"), bench::report::markdown(report))?;
    bench::plot::write_plots(report, &out.join("plots"))?;
    Ok(())
}

/// The bench's tokio runtime; `None` (said on stderr) if it cannot start.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => Some(runtime),
        Err(error) => {
            eprintln!("tally-bench: cannot start the runtime: {error}");
            None
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run(args) => run(args),
        Cmd::Import(args) => import(args),
        Cmd::Backup(args) => backup(&args),
        Cmd::Roll(args) => roll(&args),
        Cmd::Scale(args) => scale(&args),
        Cmd::Tally(tally) => tally.run(),
    }
}
