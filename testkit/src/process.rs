//! `tally serve` child processes: one node ([`TallyProcess`]) or several on
//! loopback sharing one member list ([`TallyCluster`]).
//!
//! A node writes its config into its own directory (a temporary one, or
//! `<root>/node<n>` with [`Options::root`]), spawns `tally serve --config
//! ...` with stdout and stderr in files there, waits for `GET /readyz` to
//! answer 200, and can be killed with SIGKILL, stopped with SIGTERM, paused
//! with SIGSTOP and restarted on the same data directory and ports. When the
//! caller panics, every live process prints the tail of its logs and keeps
//! its directory, so a failure can be read after the fact.
//!
//! Ports are picked by binding `127.0.0.1:0` and releasing the port; another
//! process may take it in between, so a start whose node exits with "address
//! in use" is retried on fresh ports.
//!
//! Waits are bounded (a hung server fails the caller instead of hanging it)
//! and generous: they guard against failure, they never measure speed.

use std::fs::File;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};

use crate::config::{NodeSpec, Options};
use crate::http::Http;

/// Longest wait for a started process to answer `/readyz` with 200.
pub const READY_WAIT_MAX: Duration = Duration::from_secs(60);
/// Longest wait for a SIGTERM'd process to exit.
pub const EXIT_WAIT_MAX: Duration = Duration::from_secs(30);
/// Longest wait for a SIGSTOP'd process to show as stopped.
const PAUSE_WAIT_MAX: Duration = Duration::from_secs(5);
/// Starts on fresh ports after "address in use" before giving up.
const START_ATTEMPTS_MAX: u32 = 3;
/// Restarts on the same ports after "address in use" before giving up.
const RESTART_ATTEMPTS_MAX: u32 = 20;
/// Lines of each log printed when the caller panics.
const LOG_TAIL_LINES: usize = 200;
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How to start a `tally` process.
#[derive(Clone, Debug)]
pub enum Program {
    /// A `tally` binary.
    Binary(PathBuf),
    /// An executable that runs the server when `tally` is its first
    /// argument (tally-bench and tally-chaos have such a hidden
    /// subcommand, so they always start the code they were built with).
    SelfExec(PathBuf),
}

impl Program {
    /// `tally_bin` if given, else this very executable re-run as
    /// `<exe> tally ...`.
    pub fn binary_or_self(tally_bin: Option<PathBuf>) -> Result<Program, String> {
        match tally_bin {
            Some(path) => Ok(Program::Binary(path)),
            None => std::env::current_exe()
                .map(Program::SelfExec)
                .map_err(|e| format!("cannot find this program to start tally: {e}")),
        }
    }

    /// The command that runs `tally`, before its own arguments.
    pub fn command(&self) -> Command {
        match self {
            Program::Binary(path) => Command::new(path),
            Program::SelfExec(path) => {
                let mut command = Command::new(path);
                command.arg("tally");
                command
            }
        }
    }
}

/// `count` distinct loopback addresses that were free a moment ago.
pub fn free_addrs(count: usize) -> Vec<SocketAddr> {
    // Held together until all are picked, so they differ from each other.
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("binding a free port: {e}")))
        .collect();
    listeners.iter().map(|l| l.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"))).collect()
}

// ---------------------------------------------------------------------------
// One process

/// Why a process did not become ready.
#[derive(Debug)]
pub enum StartError {
    /// It exited because a port was taken; worth a retry on other ports.
    AddrInUse,
    Exited(ExitStatus),
    TimedOut(Duration),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::AddrInUse => write!(f, "exited: address in use"),
            StartError::Exited(status) => write!(f, "exited before ready: {status}"),
            StartError::TimedOut(waited) => write!(f, "/readyz did not answer 200 within {waited:?}"),
        }
    }
}

/// One `tally serve` child process with its own directory (config, data,
/// logs). Dropping it kills the process.
/// One `tally serve` child process with its own directory (config, data,
/// logs). Dropping it kills the process.
pub struct TallyProcess {
    pub node_id: u64,
    pub http_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    http: Http,
    program: Program,
    /// The temporary directory, if the node has one; `None` once kept for
    /// a failed caller to be inspected.
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    data_dir: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// Stopped with SIGSTOP and not continued yet.
    paused: bool,
    /// Spawns so far; each one's output starts with a marker line.
    starts: u32,
}

impl TallyProcess {
    /// Starts a single node and waits until it is ready; panics if it does
    /// not become ready.
    pub async fn start(options: Options) -> TallyProcess {
        for attempt in 1..=START_ATTEMPTS_MAX {
            let addrs = free_addrs(2);
            let mut node = TallyProcess::start_unprobed_on(addrs[0], addrs[1], &options);
            match wait_all_ready(&mut [&mut node], READY_WAIT_MAX).await {
                Ok(()) => return node,
                Err((_, StartError::AddrInUse)) if attempt < START_ATTEMPTS_MAX => continue,
                Err((id, error)) => panic!("tally node {id} did not start: {error}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Starts a single node and does not wait for it: for a node the
    /// plain-HTTP readiness probe cannot reach (HTTPS). The caller waits
    /// in its own way and checks `is_running`.
    pub fn start_unprobed(options: Options) -> TallyProcess {
        let addrs = free_addrs(2);
        TallyProcess::start_unprobed_on(addrs[0], addrs[1], &options)
    }

    fn start_unprobed_on(http_addr: SocketAddr, peer_addr: SocketAddr, options: &Options) -> TallyProcess {
        TallyProcess::launch(NodeSpec::single(http_addr, peer_addr), options).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Spawns node `node_id` on the given addresses with `members` as its
    /// `cluster.members` (a node that joins an existing cluster names its
    /// nodes, not itself); does not wait. With `options.data_dir` it uses
    /// that data directory (e.g. one `tally restore` built).
    pub fn launch_as(
        options: &Options,
        node_id: u64,
        http_addr: SocketAddr,
        peer_addr: SocketAddr,
        members: Vec<(u64, SocketAddr)>,
    ) -> TallyProcess {
        let spec = NodeSpec { node_id, http_addr, peer_addr, members, dial: Vec::new() };
        TallyProcess::launch(spec, options).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Writes the config of `spec` and spawns the process; does not wait.
    pub fn launch(spec: NodeSpec, options: &Options) -> Result<TallyProcess, String> {
        let (dir, root) = match &options.root {
            Some(root) => {
                let root = root.join(format!("node{}", spec.node_id));
                std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
                (None, root)
            }
            None => {
                let dir = tempfile::Builder::new()
                    .prefix(&format!("tally-testkit-node{}-", spec.node_id))
                    .tempdir()
                    .map_err(|e| format!("tempdir: {e}"))?;
                let root = dir.path().to_path_buf();
                (Some(dir), root)
            }
        };
        let data_dir = options.data_dir.clone().unwrap_or_else(|| root.join("data"));
        let config = options.render(&spec, &data_dir);
        let path = root.join("tally.toml");
        std::fs::write(&path, config).map_err(|e| format!("writing {}: {e}", path.display()))?;
        let mut process = TallyProcess {
            node_id: spec.node_id,
            http_addr: spec.http_addr,
            peer_addr: spec.peer_addr,
            http: Http::new(spec.http_addr),
            program: options.program.clone(),
            dir,
            root,
            data_dir,
            env: options.env.clone(),
            child: None,
            paused: false,
            starts: 0,
        };
        process.spawn()?;
        Ok(process)
    }

    /// Sets (or with `None` removes) an environment variable of the
    /// process's next starts, e.g. `TALLY_CLUSTER__MEMBERS` for a node that
    /// rejoins as a new member.
    pub fn set_env(&mut self, name: &str, value: Option<&str>) {
        self.env.retain(|(key, _)| key != name);
        if let Some(value) = value {
            self.env.push((name.to_owned(), value.to_owned()));
        }
    }

    /// Spawns the process on its config (it must not be running); does not
    /// wait.
    pub fn spawn(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            return Err(format!("node {} is already running", self.node_id));
        }
        self.starts += 1;
        let marker = format!("==== testkit: start #{} of node {} ====\n", self.starts, self.node_id);
        let stdout = self.open_log("stdout.log", &marker)?;
        let stderr = self.open_log("stderr.log", &marker)?;
        let mut command = self.program.command();
        command
            .arg("serve")
            .arg("--config")
            .arg(self.config_path())
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        // The runner's own TALLY_* settings must not leak into the node.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("TALLY_") {
                command.env_remove(name);
            }
        }
        // Logs go to files: no colour codes in them.
        command.env("NO_COLOR", "1");
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = command.spawn().map_err(|e| format!("spawning {:?}: {e}", self.program))?;
        self.child = Some(child);
        self.paused = false;
        // Pooled connections to a previous run are dead.
        self.http = Http::new(self.http_addr);
        Ok(())
    }

    fn open_log(&self, name: &str, marker: &str) -> Result<File, String> {
        let path = self.root.join(name);
        let mut file = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        file.write_all(marker.as_bytes()).map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(file)
    }

    /// The client of this node (shared keep-alive pool).
    pub fn http(&self) -> &Http {
        &self.http
    }

    /// A new client of this node with a connection pool of its own.
    pub fn client(&self) -> Http {
        Http::new(self.http_addr)
    }

    pub fn dir(&self) -> &Path {
        &self.root
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join("tally.toml")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running (reaps it if it exited). A
    /// paused process is running.
    pub fn is_running(&mut self) -> bool {
        self.poll_exit().is_none()
    }

    /// Whether the process has been spawned and not seen to exit (does not
    /// reap it).
    pub fn has_process(&self) -> bool {
        self.child.is_some()
    }

    /// Whether the process is stopped by [`TallyProcess::pause`].
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// The exit status if the process has exited.
    fn poll_exit(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                self.paused = false;
                Some(status)
            }
            Ok(None) => None,
            Err(e) => panic!("node {}: try_wait: {e}", self.node_id),
        }
    }

    /// One look at the process: `Some(Ok)` ready, `Some(Err)` dead, `None`
    /// not yet.
    async fn probe_ready(&mut self) -> Option<Result<(), StartError>> {
        if let Some(status) = self.poll_exit() {
            let logs = self.logs().to_ascii_lowercase();
            let in_use = logs.contains("address already in use") || logs.contains("addrinuse");
            return Some(Err(if in_use { StartError::AddrInUse } else { StartError::Exited(status) }));
        }
        let probe = Http::with_timeout(self.http_addr, Duration::from_secs(2));
        match probe.try_request(Method::GET, "/readyz", &[], None).await {
            Ok((StatusCode::OK, _, _)) => Some(Ok(())),
            _ => None,
        }
    }

    /// Waits until `/readyz` answers 200, the process exits, or
    /// [`READY_WAIT_MAX`] passes.
    pub async fn wait_ready(&mut self) -> Result<(), StartError> {
        self.wait_ready_within(READY_WAIT_MAX).await
    }

    /// Waits until `/readyz` answers 200, the process exits, or `wait`
    /// passes (a node with much data to load may need longer than
    /// [`READY_WAIT_MAX`]).
    pub async fn wait_ready_within(&mut self, wait: Duration) -> Result<(), StartError> {
        wait_all_ready(&mut [self], wait).await.map_err(|(_, e)| e)
    }

    /// Waits until ready or panics (the logs print as the panic unwinds).
    pub async fn ready(&mut self) {
        if let Err(error) = self.wait_ready().await {
            panic!("tally node {} did not become ready: {error}", self.node_id);
        }
    }

    /// Waits until `/healthz` answers 200 (the process serves HTTP, whether
    /// or not the cluster is ready).
    pub async fn healthy(&mut self) {
        let deadline = Instant::now() + READY_WAIT_MAX;
        loop {
            if let Some(status) = self.poll_exit() {
                panic!("tally node {} exited before /healthz answered: {status}", self.node_id);
            }
            let probe = Http::with_timeout(self.http_addr, Duration::from_secs(2));
            if let Ok((StatusCode::OK, _, _)) = probe.try_request(Method::GET, "/healthz", &[], None).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tally node {}: /healthz not 200 within {READY_WAIT_MAX:?}",
                self.node_id
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// SIGKILL: no shutdown, no flush (a paused process dies too). Waits
    /// until the process is gone.
    pub fn kill_9(&mut self) {
        self.paused = false;
        if let Some(mut child) = self.child.take() {
            // `Child::kill` is SIGKILL on unix; it fails only if the process
            // was already reaped, which `take` rules out.
            if let Err(e) = child.kill() {
                panic!("node {}: kill: {e}", self.node_id);
            }
            if let Err(e) = child.wait() {
                panic!("node {}: wait after kill: {e}", self.node_id);
            }
        }
    }

    /// Sends `signal` (`"TERM"`, `"STOP"`, `"CONT"`) to the process.
    pub fn signal(&self, signal: &str) -> Result<(), String> {
        let pid = self.pid().ok_or_else(|| format!("node {} is not running", self.node_id))?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .map_err(|e| format!("running kill -{signal} {pid}: {e}"))?;
        if status.success() { Ok(()) } else { Err(format!("kill -{signal} {pid}: {status}")) }
    }

    /// SIGTERM (a graceful stop) and waits for the exit, at most
    /// [`EXIT_WAIT_MAX`]; answers the exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.try_terminate(EXIT_WAIT_MAX).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// SIGTERM and waits for the exit, at most `wait`; after that it kills
    /// the process and answers `Err`.
    pub async fn try_terminate(&mut self, wait: Duration) -> Result<ExitStatus, String> {
        if self.paused {
            self.resume()?;
        }
        self.signal("TERM")?;
        self.wait_exit(Instant::now() + wait).await
    }

    /// Waits for the process to exit until `deadline`; after that it kills
    /// the process and answers `Err`.
    async fn wait_exit(&mut self, deadline: Instant) -> Result<ExitStatus, String> {
        let wait = deadline.saturating_duration_since(Instant::now());
        loop {
            if let Some(status) = self.poll_exit() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill_9();
                return Err(format!("node {} did not exit within {wait:?} of SIGTERM", self.node_id));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// SIGSTOP: the process freezes with its sockets open. Returns once the
    /// kernel shows it stopped: the signal is delivered asynchronously, and
    /// a process still running for a moment after `kill` returns would
    /// answer requests the caller thinks it cannot.
    pub async fn pause(&mut self) -> Result<(), String> {
        self.signal("STOP")?;
        self.paused = true;
        let pid = self.pid().ok_or_else(|| format!("node {} is not running", self.node_id))?;
        let started = Instant::now();
        while !is_stopped(pid) {
            if started.elapsed() > PAUSE_WAIT_MAX {
                return Err(format!(
                    "node {} (pid {pid}) did not stop within {PAUSE_WAIT_MAX:?} of SIGSTOP",
                    self.node_id
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// SIGCONT after [`TallyProcess::pause`].
    pub fn resume(&mut self) -> Result<(), String> {
        self.signal("CONT")?;
        self.paused = false;
        Ok(())
    }

    /// Removes the data directory (the process must not be running).
    pub fn wipe_data(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            return Err(format!("node {} is running: its data cannot be wiped", self.node_id));
        }
        if self.data_dir.exists() {
            std::fs::remove_dir_all(&self.data_dir).map_err(|e| format!("wipe {}: {e}", self.data_dir.display()))?;
        }
        Ok(())
    }

    /// Starts the process again on the same config, data directory and
    /// ports (killing it first if it runs) and waits until it is ready.
    pub async fn restart(&mut self) {
        self.kill_9();
        for attempt in 1..=RESTART_ATTEMPTS_MAX {
            if let Err(error) = self.spawn() {
                panic!("tally node {} did not restart: {error}", self.node_id);
            }
            match self.wait_ready().await {
                Ok(()) => return,
                // Our own ports: another process grabbed one meanwhile, or
                // the old socket is not released yet. Wait and try again.
                Err(StartError::AddrInUse) if attempt < RESTART_ATTEMPTS_MAX => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(error) => panic!("tally node {} did not restart: {error}", self.node_id),
            }
        }
    }

    /// Everything the process wrote to stdout and stderr, over all starts.
    pub fn logs(&self) -> String {
        let read = |name: &str| std::fs::read(self.root.join(name)).unwrap_or_default();
        format!(
            "--- stdout ---\n{}--- stderr ---\n{}",
            String::from_utf8_lossy(&read("stdout.log")),
            String::from_utf8_lossy(&read("stderr.log"))
        )
    }

    /// Prints the last lines of both logs to stderr (the caller's output).
    pub fn print_logs(&self) {
        for name in ["stdout.log", "stderr.log"] {
            let text = std::fs::read(self.root.join(name)).unwrap_or_default();
            let text = String::from_utf8_lossy(&text);
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(LOG_TAIL_LINES);
            eprintln!(
                "----- node {} {name} ({} of {} lines, in {}) -----",
                self.node_id,
                lines.len() - from,
                lines.len(),
                self.root.display()
            );
            for line in &lines[from..] {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for TallyProcess {
    fn drop(&mut self) {
        self.kill_9();
        if std::thread::panicking() {
            self.print_logs();
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("----- node {} directory kept for inspection: {} -----", self.node_id, kept.display());
            }
        }
    }
}

/// Whether the kernel shows process `pid` stopped (state `T` in
/// `/proc/<pid>/stat`). Where there is no `/proc`, it is taken as stopped.
fn is_stopped(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return true };
    // "pid (comm) state ...": comm may hold spaces and parentheses.
    stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
}

/// Waits until every node answers `/readyz` 200. The first node that exits
/// or the deadline ends the wait, naming the node.
async fn wait_all_ready(nodes: &mut [&mut TallyProcess], wait: Duration) -> Result<(), (u64, StartError)> {
    let deadline = Instant::now() + wait;
    let mut ready = vec![false; nodes.len()];
    loop {
        for (node, ready) in nodes.iter_mut().zip(ready.iter_mut()) {
            if *ready {
                // Ready once is not enough if it died since.
                if let Some(status) = node.poll_exit() {
                    return Err((node.node_id, StartError::Exited(status)));
                }
                continue;
            }
            match node.probe_ready().await {
                Some(Ok(())) => *ready = true,
                Some(Err(error)) => return Err((node.node_id, error)),
                None => {}
            }
        }
        if ready.iter().all(|r| *r) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let id = nodes.iter().zip(&ready).find(|(_, r)| !**r).map_or(0, |(n, _)| n.node_id);
            return Err((id, StartError::TimedOut(wait)));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

// ---------------------------------------------------------------------------
// A cluster of processes

/// `size` processes on loopback, node ids `1..=size`, one member list.
pub struct TallyCluster {
    nodes: Vec<TallyProcess>,
}

impl TallyCluster {
    /// Starts every node and waits until all are ready; panics if one does
    /// not become ready.
    pub async fn start(size: u64, options: Options) -> TallyCluster {
        TallyCluster::try_start(size, options).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts every node and waits until all are ready.
    pub async fn try_start(size: u64, options: Options) -> Result<TallyCluster, String> {
        if options.data_dir.is_some() {
            return Err("a cluster's nodes cannot share one data directory".into());
        }
        let count = usize::try_from(size).map_err(|e| format!("cluster size {size}: {e}"))?;
        for attempt in 1..=START_ATTEMPTS_MAX {
            let addrs = free_addrs(2 * count);
            let (http_addrs, peer_addrs) = addrs.split_at(count);
            let members: Vec<(u64, SocketAddr)> = (1..=size).zip(peer_addrs.iter().copied()).collect();
            let mut nodes = Vec::with_capacity(count);
            for (&(node_id, peer_addr), &http_addr) in members.iter().zip(http_addrs) {
                let spec = NodeSpec { node_id, http_addr, peer_addr, members: members.clone(), dial: Vec::new() };
                nodes.push(TallyProcess::launch(spec, &options)?);
            }
            let mut waiting: Vec<&mut TallyProcess> = nodes.iter_mut().collect();
            match wait_all_ready(&mut waiting, READY_WAIT_MAX).await {
                Ok(()) => return Ok(TallyCluster { nodes }),
                Err((_, StartError::AddrInUse)) if attempt < START_ATTEMPTS_MAX => {
                    // A fixed root is reused by the next attempt: the dead
                    // nodes' data must not be in the way.
                    for node in &mut nodes {
                        node.kill_9();
                        node.wipe_data()?;
                    }
                }
                Err((id, error)) => return Err(format!("tally cluster: node {id} did not start: {error}")),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// A cluster of nodes the caller launched (e.g. with their own
    /// `cluster.dial`).
    pub fn from_nodes(nodes: Vec<TallyProcess>) -> TallyCluster {
        TallyCluster { nodes }
    }

    /// Node `id` (1-based).
    pub fn node(&self, id: u64) -> &TallyProcess {
        self.nodes
            .iter()
            .find(|n| n.node_id == id)
            .unwrap_or_else(|| panic!("no node {id} in a cluster of {}", self.nodes.len()))
    }

    pub fn node_mut(&mut self, id: u64) -> &mut TallyProcess {
        let size = self.nodes.len();
        self.nodes.iter_mut().find(|n| n.node_id == id).unwrap_or_else(|| panic!("no node {id} in a cluster of {size}"))
    }

    /// Node `id`'s client.
    pub fn http(&self, id: u64) -> &Http {
        self.node(id).http()
    }

    pub fn nodes(&self) -> &[TallyProcess] {
        &self.nodes
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.node_id).collect()
    }

    /// SIGTERM to every running node at once, then waits for them to exit,
    /// at most `wait` in all; a node still running then is killed (`Err`).
    pub async fn try_terminate_all(&mut self, wait: Duration) -> Result<(), String> {
        let deadline = Instant::now() + wait;
        let mut errors = Vec::new();
        for node in &mut self.nodes {
            if node.is_paused() {
                node.resume()?;
            }
            if node.has_process() {
                node.signal("TERM")?;
            }
        }
        for node in &mut self.nodes {
            if node.has_process()
                && let Err(error) = node.wait_exit(deadline).await
            {
                errors.push(error);
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
    }

    /// Waits until every running node is ready again (a node killed and not
    /// restarted is left out).
    pub async fn ready(&mut self) {
        if let Err(error) = self.try_ready().await {
            panic!("{error}");
        }
    }

    /// Waits until every running node is ready again.
    pub async fn try_ready(&mut self) -> Result<(), String> {
        let mut running: Vec<&mut TallyProcess> = self.nodes.iter_mut().filter(|n| n.child.is_some()).collect();
        wait_all_ready(&mut running, READY_WAIT_MAX)
            .await
            .map_err(|(id, error)| format!("tally cluster: node {id} is not ready: {error}"))
    }
}
