//! A real 3-node Tally cluster on loopback with a fault proxy on every
//! directed peer link, and the faults the schedule applies to it.
//!
//! Node `i` dials node `j` through proxy `i→j` (`cluster.dial` in node `i`'s
//! config), so a partition is a proxy rule and needs no root or special
//! network. A connection `i` dials carries `i`'s requests to `j` forward and
//! `j`'s answers back, so "`i` cannot reach `j`" blackholes the forward
//! direction of `i→j` and the backward direction of `j→i` (the answers `i`
//! would send to `j`'s requests).
//!
//! Processes are real `tally` servers: the `tally` binary given, or this
//! program re-run as `<program> tally serve …` (the same `server::cli`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::proxy::{Flow, Proxy, Rule};

/// Nodes in the cluster.
pub const NODES: u8 = 3;
/// Longest wait for a node to answer `/readyz` 200 after a start.
const READY_WAIT: Duration = Duration::from_secs(60);

/// How to start a `tally` process.
#[derive(Clone, Debug)]
pub enum Program {
    /// A `tally` binary.
    Binary(PathBuf),
    /// This executable, with `tally` as its first argument.
    SelfExec(PathBuf),
}

impl Program {
    fn command(&self) -> Command {
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

/// Settings of the cluster.
#[derive(Clone, Debug)]
pub struct Settings {
    pub shards: u32,
    /// Seeds the proxies' drop and jitter randomness.
    pub seed: u64,
    /// Extra `[cluster]` lines for every node's config (timeouts, etc.).
    pub cluster_extra: String,
}

struct Node {
    id: u8,
    http: SocketAddr,
    peer: SocketAddr,
    config: PathBuf,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

/// The running cluster.
pub struct ChaosCluster {
    program: Program,
    nodes: Vec<Node>,
    /// `proxies[(from - 1) * NODES + (to - 1)]`, `None` on the diagonal.
    proxies: Vec<Option<Proxy>>,
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| format!("no free port: {e}"))
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn link(from: u8, to: u8) -> usize {
    usize::from(from - 1) * usize::from(NODES) + usize::from(to - 1)
}

impl ChaosCluster {
    /// Starts three nodes with their data and logs under `dir` and waits
    /// until every node is ready.
    pub async fn start(program: Program, dir: &Path, settings: &Settings) -> Result<ChaosCluster, String> {
        let mut nodes = Vec::new();
        for id in 1..=NODES {
            let node_dir = dir.join(format!("node{id}"));
            std::fs::create_dir_all(&node_dir).map_err(|e| format!("{}: {e}", node_dir.display()))?;
            nodes.push(Node {
                id,
                http: loopback(free_port()?),
                peer: loopback(free_port()?),
                config: node_dir.join("tally.toml"),
                data: node_dir.join("data"),
                log: node_dir.join("tally.log"),
                child: None,
                paused: false,
            });
        }
        let mut proxies = Vec::new();
        for from in 1..=NODES {
            for to in 1..=NODES {
                if from == to {
                    proxies.push(None);
                    continue;
                }
                let target = nodes[usize::from(to - 1)].peer;
                let seed = settings.seed.wrapping_mul(31).wrapping_add(u64::from(from) * 7 + u64::from(to));
                let proxy = Proxy::start(format!("{from}->{to}"), target, seed)
                    .await
                    .map_err(|e| format!("proxy {from}->{to}: {e}"))?;
                proxies.push(Some(proxy));
            }
        }
        let members: Vec<String> =
            nodes.iter().map(|n| format!("{{ id = {}, addr = \"{}\" }}", n.id, n.peer)).collect();
        for node in &nodes {
            let dial: Vec<String> = nodes
                .iter()
                .filter(|other| other.id != node.id)
                .filter_map(|other| {
                    proxies[link(node.id, other.id)]
                        .as_ref()
                        .map(|proxy| format!("{{ id = {}, addr = \"{}\" }}", other.id, proxy.addr()))
                })
                .collect();
            let config = format!(
                "[server]\nlisten = \"{}\"\nlog_level = \"info,openraft=warn\"\ndebug_clock = true\n\n[cluster]\nnode_id = {}\nlisten = \"{}\"\n\
                 members = [{}]\ndial = [{}]\nshards = {}\ndata_dir = \"{}\"\n{}\n",
                node.http,
                node.id,
                node.peer,
                members.join(", "),
                dial.join(", "),
                settings.shards,
                node.data.display(),
                settings.cluster_extra
            );
            std::fs::write(&node.config, config).map_err(|e| format!("{}: {e}", node.config.display()))?;
        }
        let mut cluster = ChaosCluster { program, nodes, proxies };
        for id in 1..=NODES {
            cluster.spawn(id)?;
        }
        for id in 1..=NODES {
            cluster.wait_ready(id).await?;
        }
        Ok(cluster)
    }

    fn node(&self, id: u8) -> &Node {
        &self.nodes[usize::from(id - 1)]
    }

    fn node_mut(&mut self, id: u8) -> &mut Node {
        &mut self.nodes[usize::from(id - 1)]
    }

    /// The HTTP address of node `id` (1-based).
    pub fn http(&self, id: u8) -> SocketAddr {
        self.node(id).http
    }

    /// Whether node `id` has a process (it may be paused).
    pub fn is_running(&self, id: u8) -> bool {
        self.node(id).child.is_some()
    }

    pub fn is_paused(&self, id: u8) -> bool {
        self.node(id).paused
    }

    fn spawn(&mut self, id: u8) -> Result<(), String> {
        let program = self.program.clone();
        let node = self.node_mut(id);
        if node.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(|e| format!("{}: {e}", node.log.display()))?;
        let child = program
            .command()
            .arg("serve")
            .arg("--config")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start node {id}: {e}"))?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    /// Waits until node `id` answers `/readyz` with 200 (it has a leader for
    /// every shard), or fails if its process exits or the wait runs out.
    pub async fn wait_ready(&mut self, id: u8) -> Result<(), String> {
        let started = Instant::now();
        loop {
            let addr = self.node(id).http;
            if let Some(child) = self.node_mut(id).child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("node {id} exited: {status}"));
            }
            if get_status(addr, "/readyz").await == Some(200) {
                return Ok(());
            }
            if started.elapsed() > READY_WAIT {
                return Err(format!("node {id} not ready within {READY_WAIT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn signal(&self, id: u8, signal: &str) -> Result<(), String> {
        let Some(pid) = self.node(id).child.as_ref().and_then(Child::id) else {
            return Err(format!("node {id} is not running"));
        };
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .await
            .map_err(|e| format!("kill -{signal} {pid}: {e}"))?;
        if status.success() { Ok(()) } else { Err(format!("kill -{signal} {pid}: {status}")) }
    }

    /// `kill -9` node `id` and reaps it.
    pub async fn kill(&mut self, id: u8) -> Result<(), String> {
        if self.node(id).paused {
            // A stopped process dies of SIGKILL too; nothing to resume.
            self.node_mut(id).paused = false;
        }
        self.signal(id, "KILL").await?;
        if let Some(mut child) = self.node_mut(id).child.take() {
            let _ = child.wait().await;
        }
        Ok(())
    }

    /// Starts node `id` again on its data directory (wiped if `wipe`).
    pub async fn restart(&mut self, id: u8, wipe: bool) -> Result<(), String> {
        if self.is_running(id) {
            self.kill(id).await?;
        }
        if wipe {
            let data = self.node(id).data.clone();
            if data.exists() {
                std::fs::remove_dir_all(&data).map_err(|e| format!("wipe {}: {e}", data.display()))?;
            }
        }
        self.spawn(id)
    }

    /// SIGSTOP: the process freezes with its sockets open. Returns once the
    /// kernel shows it stopped: the signal is delivered asynchronously, and
    /// a process still running for a moment after `kill` returns would
    /// answer requests the schedule thinks it cannot.
    pub async fn pause(&mut self, id: u8) -> Result<(), String> {
        self.signal(id, "STOP").await?;
        self.node_mut(id).paused = true;
        let Some(pid) = self.node(id).child.as_ref().and_then(Child::id) else {
            return Err(format!("node {id} is not running"));
        };
        let started = Instant::now();
        while !is_stopped(pid) {
            if started.elapsed() > Duration::from_secs(5) {
                return Err(format!("node {id} (pid {pid}) did not stop within 5 s of SIGSTOP"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// SIGCONT after `pause`.
    pub async fn resume(&mut self, id: u8) -> Result<(), String> {
        self.signal(id, "CONT").await?;
        self.node_mut(id).paused = false;
        Ok(())
    }

    fn proxy(&self, from: u8, to: u8) -> Option<&Proxy> {
        self.proxies.get(link(from, to)).and_then(Option::as_ref)
    }

    /// What the proxy of link `from → to` has seen.
    pub fn link_stats(&self, from: u8, to: u8) -> Option<crate::proxy::ProxyStats> {
        self.proxy(from, to).map(Proxy::stats)
    }

    /// Every link back to passing everything.
    pub fn heal(&self) {
        for proxy in self.proxies.iter().flatten() {
            proxy.set(Rule::PASS);
        }
    }

    /// Cuts every link between nodes of different `sides` (both ways); links
    /// within a side pass. Nodes in no side are cut from everyone.
    pub fn partition(&self, sides: &[&[u8]]) {
        let side_of = |id: u8| sides.iter().position(|side| side.contains(&id));
        for from in 1..=NODES {
            for to in 1..=NODES {
                let Some(proxy) = self.proxy(from, to) else { continue };
                let same = side_of(from).is_some() && side_of(from) == side_of(to);
                if same {
                    proxy.set(Rule::PASS);
                } else {
                    proxy.set(Rule::blackhole());
                    proxy.cut();
                }
            }
        }
    }

    /// Cuts `a` and `b` from each other (both ways); every other link keeps
    /// its rule.
    pub fn cut_between(&self, a: u8, b: u8) {
        for (from, to) in [(a, b), (b, a)] {
            if let Some(proxy) = self.proxy(from, to) {
                proxy.set(Rule::blackhole());
                proxy.cut();
            }
        }
    }

    /// `from`'s messages stop reaching `to`; `to`'s still reach `from`.
    pub fn one_way(&self, from: u8, to: u8) {
        if let Some(proxy) = self.proxy(from, to) {
            let rule = proxy.rule();
            proxy.set(Rule { forward: Flow::Blackhole, ..rule });
        }
        if let Some(proxy) = self.proxy(to, from) {
            let rule = proxy.rule();
            proxy.set(Rule { backward: Flow::Blackhole, ..rule });
        }
    }

    /// Every link drops `fraction` of its frames and delays the rest by
    /// `delay_ms` plus up to `jitter_ms`. `fraction == 0` only delays.
    pub fn degrade(&self, fraction: f64, delay_ms: u64, jitter_ms: u64) {
        let flow = if fraction > 0.0 { Flow::Drop { fraction } } else { Flow::Delay { ms: delay_ms, jitter_ms } };
        for proxy in self.proxies.iter().flatten() {
            proxy.set(Rule { forward: flow, backward: flow, refuse: false });
        }
    }

    /// Stops every node (SIGKILL after SIGCONT) and every proxy.
    pub async fn stop(mut self) {
        for id in 1..=NODES {
            if self.is_paused(id) {
                let _ = self.resume(id).await;
            }
            if self.is_running(id) {
                let _ = self.kill(id).await;
            }
        }
        for proxy in self.proxies.into_iter().flatten() {
            proxy.stop().await;
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

/// `GET path` on `addr` with a one-shot HTTP/1.1 request; the status, or
/// `None` when nothing answered within a second.
pub async fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(1), attempt).await.ok().flatten()
}
