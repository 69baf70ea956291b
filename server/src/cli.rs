//! The `tally` command line.
//!
//! `tally serve` starts a node: with no arguments a single node on
//! 127.0.0.1:8080 with its data in `./data`; `--config` names a TOML file
//! (see `config/example.toml`), `TALLY_*` variables and flags override it.
//! `tally hash-key` prints the hash an API key is configured by. `tally
//! ledger export` writes a running node's movement ledger (`export.rs`).

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
    /// The movement ledger of a running node.
    #[command(subcommand)]
    Ledger(LedgerCmd),
}

#[derive(Debug, Subcommand)]
enum LedgerCmd {
    /// Write the ledger (or the part the filters keep) as JSON lines or CSV.
    Export(crate::export::ExportArgs),
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
