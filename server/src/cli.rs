//! The `tally` command line.
//!
//! `tally serve` starts a node: with no arguments a single node on
//! 127.0.0.1:8080 with its data in `./data`; `--config` names a TOML file
//! (see `config/example.toml`), `TALLY_*` variables and flags override it.
//! `tally hash-key` prints the hash an API key is configured by. `tally
//! ledger export` writes a running node's movement ledger (`export.rs`).
//! `tally backup`, `restore` and `reshard` are in `backup/`.
//! `tally node add|remove` grows or shrinks a running cluster (`nodes.rs`).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{Config, LogFormat, Overrides};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tally", version, about = "Tally: a sharded, replicated, in-memory inventory engine")]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start a node (the default).
    Serve(ServeArgs),
    /// Print the SHA-256 of an API key, for `auth.keys[].sha256`.
    HashKey {
        /// The key; generate one with e.g. `openssl rand -hex 32`.
        key: String,
    },
    /// Load and check a configuration, print it resolved, and exit.
    CheckConfig(ServeArgs),
    /// Print the OpenAPI document.
    Openapi,
    /// Take an online backup of a running node (`--to DIR`), or check one
    /// (`tally backup verify DIR`).
    #[command(args_conflicts_with_subcommands = true)]
    Backup(BackupArgs),
    /// Build a new data directory from a backup (and the log archive) at a
    /// point in log time. Offline: run it with no node on NEW.
    Restore(RestoreArgs),
    /// Rebuild a backup of S shards as a backup of N shards (offline; then
    /// `tally restore` it and start with `--shards N`). See docs/RESHARDING.md.
    Reshard(ReshardArgs),
    /// The movement ledger of a running node.
    #[command(subcommand)]
    Ledger(LedgerCmd),
    /// Add a node to, or remove one from, a running cluster, one shard at a
    /// time (`/v1/admin/nodes`): every shard, or with
    /// `cluster.replication_factor` set the shards the placement moves.
    Node(NodeArgs),
}

#[derive(Debug, clap::Args)]
struct NodeArgs {
    #[command(subcommand)]
    action: NodeAction,
    /// The HTTP address of a node of the cluster (plain HTTP); for a
    /// removal, one that stays.
    #[arg(long, env = "TALLY_URL", default_value = "http://127.0.0.1:8080", global = true)]
    url: String,
    /// An admin API key (none when the node has no keys).
    #[arg(long, env = "TALLY_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,
}

#[derive(Debug, Subcommand)]
enum NodeAction {
    /// Add a started node (fresh data directory, `cluster.members` naming
    /// the cluster's members) as a voter of every shard, or of its share of
    /// them with `cluster.replication_factor` set; waits until done.
    Add {
        /// The new node's id (its cluster.node_id).
        #[arg(long)]
        id: u64,
        /// The new node's peer address (its cluster.listen), host:port.
        #[arg(long)]
        addr: String,
    },
    /// Remove a node from every shard (its replicas move to the others with
    /// `cluster.replication_factor` set); waits until done. Stop it
    /// afterwards.
    Remove {
        /// The node to remove.
        #[arg(long)]
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
enum LedgerCmd {
    /// Write the ledger (or the part the filters keep) as JSON lines or CSV.
    Export(crate::export::ExportArgs),
}

#[derive(Debug, clap::Args)]
struct BackupArgs {
    #[command(subcommand)]
    action: Option<BackupAction>,
    /// The backup's directory on the node's machine (absolute; new or empty;
    /// inside the node's backup.root when that is set).
    #[arg(long)]
    to: Option<PathBuf>,
    /// The node's HTTP address (plain HTTP).
    #[arg(long, env = "TALLY_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An admin API key (none when the node has no keys).
    #[arg(long, env = "TALLY_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

#[derive(Debug, Subcommand)]
enum BackupAction {
    /// Check a backup: checksums, references, a replay to the manifest's digests.
    Verify {
        /// The backup's directory.
        dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct RestoreArgs {
    /// The backup's directory. Repeat it for the backups of several nodes
    /// of a placed cluster (each holds the shards its node hosted): every
    /// shard must be in one of them.
    #[arg(long, required = true)]
    from: Vec<PathBuf>,
    /// The log archive (backup.archive_dir of the node backed up): replay
    /// on past the backup with the segments archived after it.
    #[arg(long)]
    archive: Option<PathBuf>,
    /// Stop before the first entry stamped with a log time after this
    /// (RFC 3339, e.g. 2026-12-06T18:30:00Z), on every shard.
    #[arg(long, conflicts_with = "until_index")]
    until: Option<String>,
    /// Stop after log index N. Each shard has its own log: every shard
    /// stops at its own index N or at the end of its log.
    #[arg(long)]
    until_index: Option<u64>,
    /// The new data directory (must not exist or be empty).
    #[arg(long)]
    data_dir: PathBuf,
    /// The restored node's id (cluster.node_id when you start it).
    #[arg(long, default_value_t = 1)]
    node_id: u64,
    /// The restored node's peer address (cluster.listen when you start it).
    #[arg(long, default_value = "127.0.0.1:7001")]
    peer_addr: String,
}

#[derive(Debug, clap::Args)]
struct ReshardArgs {
    /// The backup to reshard (it must verify, and hold no live holds).
    #[arg(long)]
    from: PathBuf,
    /// The new shard count (1 to 65535).
    #[arg(long)]
    shards: u32,
    /// The new backup's directory (must not exist or be empty).
    #[arg(long)]
    to: PathBuf,
}

#[derive(Debug, Default, clap::Args)]
struct ServeArgs {
    /// A TOML configuration file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// HTTP listen address (server.listen).
    #[arg(long)]
    listen: Option<String>,
    /// Data directory (cluster.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Shard count, fixed for the life of the data directory (cluster.shards).
    #[arg(long)]
    shards: Option<u32>,
    /// This node's id (cluster.node_id).
    #[arg(long)]
    node_id: Option<u64>,
    /// Peer transport listen address (cluster.listen).
    #[arg(long)]
    peer_listen: Option<String>,
    /// Log format: text or json (server.log_format).
    #[arg(long, value_parser = parse_format)]
    log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `server=debug,info` (server.log_level).
    #[arg(long)]
    log_level: Option<String>,
}

fn parse_format(text: &str) -> Result<LogFormat, String> {
    match text {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("text or json".into()),
    }
}

fn load(args: &ServeArgs) -> Result<Config, String> {
    let overrides = Overrides {
        listen: args.listen.clone(),
        data_dir: args.data_dir.clone(),
        shards: args.shards,
        node_id: args.node_id,
        peer_listen: args.peer_listen.clone(),
        log_format: args.log_format,
        log_level: args.log_level.clone(),
    };
    Config::load(args.config.as_deref(), std::env::vars(), &overrides).map_err(|e| e.to_string())
}

fn init_logs(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.server.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.server.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    let config = match load(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tally: {error}");
            return ExitCode::from(2);
        }
    };
    init_logs(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tally: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let running = crate::app::start(config).await?;
        running.serve(shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "tally stopped with an error");
            eprintln!("tally: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The hidden `tally` subcommand of the tools that start real server
/// processes (tally-bench, tally-chaos): `<tool> tally serve ...` is the
/// `tally` binary they were built with. One definition for both.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub struct Embedded {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<std::ffi::OsString>,
}

impl Embedded {
    /// Runs `tally` on the arguments that followed the subcommand.
    pub fn run(self) -> ExitCode {
        run(std::iter::once(std::ffi::OsString::from("tally")).chain(self.args))
    }
}

/// Runs the `tally` command line on `args` (the first is the program name)
/// and returns its exit code. The `tally` binary is this function; tools
/// that need a real server process (the bench, chaos) re-run themselves
/// through it, so they always drive the code they were built with.
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    match cli.command.unwrap_or(Cmd::Serve(ServeArgs::default())) {
        Cmd::Serve(args) => serve(&args),
        Cmd::HashKey { key } => {
            println!("{}", crate::auth::hash_key(&key));
            ExitCode::SUCCESS
        }
        Cmd::CheckConfig(args) => match load(&args) {
            Ok(config) => match toml::to_string_pretty(&config) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("tally: {error}");
                    ExitCode::FAILURE
                }
            },
            Err(error) => {
                eprintln!("tally: {error}");
                ExitCode::from(2)
            }
        },
        Cmd::Backup(args) => backup(&args),
        Cmd::Node(args) => node(&args),
        Cmd::Restore(args) => restore(&args),
        Cmd::Reshard(args) => reshard(&args),
        Cmd::Ledger(LedgerCmd::Export(args)) => {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("tally: cannot start the runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(crate::export::export(&args)) {
                Ok(written) => {
                    eprintln!("tally: {written} ledger entries written");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("tally: ledger export: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Openapi => {
            println!("{}", serde_json::to_string_pretty(&crate::openapi::document()).unwrap_or_default());
            ExitCode::SUCCESS
        }
    }
}

fn backup(args: &BackupArgs) -> ExitCode {
    if let Some(BackupAction::Verify { dir }) = &args.action {
        return match crate::backup::verify::verify_backup(dir) {
            Ok(verified) => {
                let manifest = &verified.manifest;
                for (shard, replayed) in manifest.shards.iter().zip(&verified.entries_replayed) {
                    println!(
                        "shard {}: snapshot {:?}, {replayed} entries replayed to index {:?}, digest {} ok",
                        shard.shard, shard.snapshot_index, shard.last_index, shard.digest
                    );
                }
                println!("backup {} verified: {} files, {} bytes", dir.display(), manifest.files, manifest.bytes);
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("tally: backup {} failed verification: {error}", dir.display());
                ExitCode::FAILURE
            }
        };
    }
    let Some(to) = &args.to else {
        eprintln!("tally: say where: tally backup --to DIR, or tally backup verify DIR");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tally: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let to = to.to_string_lossy().into_owned();
    match runtime.block_on(crate::backup::client::request_backup(&args.url, args.api_key.as_deref(), &to)) {
        Ok(status) => {
            println!("{}", serde_json::to_string_pretty(&status).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tally: backup to {to} failed: {error}");
            ExitCode::FAILURE
        }
    }
}

fn node(args: &NodeArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tally: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let (change, what) = match &args.action {
        NodeAction::Add { id, addr } => {
            (crate::nodes::NodeChange::Add { id: *id, addr: addr.clone() }, format!("adding node {id} ({addr})"))
        }
        NodeAction::Remove { id } => (crate::nodes::NodeChange::Remove { id: *id }, format!("removing node {id}")),
    };
    let progress = |line: &str| eprintln!("tally: {what}: {line}");
    match runtime.block_on(crate::nodes::run_change(&args.url, args.api_key.as_deref(), &change, progress)) {
        Ok(status) => {
            println!("{}", serde_json::to_string_pretty(&status).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tally: {what} failed: {error}");
            ExitCode::FAILURE
        }
    }
}

fn restore(args: &RestoreArgs) -> ExitCode {
    use crate::backup::Until;
    let until = match (&args.until, args.until_index) {
        (Some(text), _) => match crate::backup::restore::parse_rfc3339_ms(text) {
            Ok(ms) => Until::LogTime(ms),
            Err(error) => {
                eprintln!("tally: --until: {error}");
                return ExitCode::from(2);
            }
        },
        (None, Some(index)) => Until::IndexOrEnd(index),
        (None, None) => Until::End,
    };
    let request = crate::backup::restore::RestoreRequest {
        from: args.from.clone(),
        archive: args.archive.clone(),
        until,
        data_dir: args.data_dir.clone(),
        node_id: args.node_id,
        peer_addr: args.peer_addr.clone(),
    };
    let started = std::time::Instant::now();
    match crate::backup::restore::restore(&request) {
        Ok(shards) => {
            for shard in &shards {
                let short = match args.until_index {
                    Some(index) if shard.index != Some(index) => " (its log ends before --until-index)",
                    _ => "",
                };
                println!(
                    "shard {}: index {:?} term {:?} log time {} ms, {} entries replayed, digest {}{short}",
                    shard.shard, shard.index, shard.term, shard.log_time_ms, shard.entries_replayed, shard.digest
                );
            }
            println!(
                "restored into {} in {} ms; start it with: tally serve --data-dir {} --node-id {} --shards {} \
                 --peer-listen {}",
                args.data_dir.display(),
                started.elapsed().as_millis(),
                args.data_dir.display(),
                args.node_id,
                shards.len(),
                args.peer_addr
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tally: restore failed: {error}");
            ExitCode::FAILURE
        }
    }
}

fn reshard(args: &ReshardArgs) -> ExitCode {
    let request =
        crate::backup::reshard::ReshardRequest { from: args.from.clone(), to: args.to.clone(), shards: args.shards };
    let started = std::time::Instant::now();
    match crate::backup::reshard::reshard(&request) {
        Ok(summary) => {
            let report = &summary.report;
            for shard in &summary.manifest.shards {
                println!(
                    "shard {}: index {:?} term {:?} log time {} ms, digest {}",
                    shard.shard, shard.last_index, shard.last_term, shard.log_time_ms, shard.digest
                );
            }
            println!(
                "resharded {} shards into {}: {} items ({} deleted), {} products, {} bundles, {} customer limits, \
                 {} customer usages, {} warehouse priorities; {} terminal reservations carried, {} forgotten; \
                 {} request ids forgotten",
                report.old_shards,
                report.new_shards,
                report.items,
                report.tombstones,
                report.products,
                report.bundles,
                report.customer_limits,
                report.customer_usages,
                report.warehouse_priorities,
                report.terminal_carried,
                report.terminal_forgotten,
                report.request_ids_forgotten
            );
            println!(
                "wrote {} in {} ms; restore it with: tally restore --from {} --data-dir NEW (no --archive), \
                 then start with --shards {}",
                args.to.display(),
                started.elapsed().as_millis(),
                args.to.display(),
                report.new_shards
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tally: reshard failed: {error}");
            ExitCode::FAILURE
        }
    }
}
