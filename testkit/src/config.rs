//! Typed settings of the `tally` nodes a harness starts, rendered as each
//! node's TOML config.
//!
//! The harness writes `server.listen`, `cluster.node_id`, `cluster.listen`,
//! `cluster.members`, `cluster.dial`, `cluster.shards` and
//! `cluster.data_dir` itself from a [`NodeSpec`]; the common settings have
//! typed setters, and [`Options::set`] writes any other key verbatim.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::process::Program;

/// The settings every node started with these options gets.
#[derive(Clone, Debug)]
pub struct Options {
    /// How a node's process is started.
    pub program: Program,
    pub shards: u32,
    /// section → key → value as TOML text (`"5"`, `"\"json\""`, `"[...]"`).
    settings: BTreeMap<String, BTreeMap<String, String>>,
    pub(crate) env: Vec<(String, String)>,
    /// Where a single node keeps its data, instead of `data/` in its own
    /// directory (e.g. on a small file system of the test's).
    pub(crate) data_dir: Option<PathBuf>,
    /// Where node `n`'s directory (config, logs, data) is made, as
    /// `<root>/node<n>`; by default a temporary directory per node.
    pub(crate) root: Option<PathBuf>,
}

impl Options {
    /// Four shards and the server's defaults for everything else.
    pub fn new(program: Program) -> Options {
        Options { program, shards: 4, settings: BTreeMap::new(), env: Vec::new(), data_dir: None, root: None }
    }

    pub fn shards(mut self, shards: u32) -> Self {
        self.shards = shards;
        self
    }

    /// `[server] log_level`, e.g. `"info,openraft=warn"`.
    pub fn log_level(self, filter: &str) -> Self {
        self.set("server", "log_level", &toml_string(filter))
    }

    /// `[server] debug_clock`: the node accepts clock jumps over HTTP.
    pub fn debug_clock(self, on: bool) -> Self {
        self.set("server", "debug_clock", &on.to_string())
    }

    /// `[cluster] heartbeat_ms`, `election_timeout_min_ms` and
    /// `election_timeout_max_ms`.
    pub fn raft_timing_ms(self, heartbeat: u64, election_min: u64, election_max: u64) -> Self {
        self.set("cluster", "heartbeat_ms", &heartbeat.to_string())
            .set("cluster", "election_timeout_min_ms", &election_min.to_string())
            .set("cluster", "election_timeout_max_ms", &election_max.to_string())
    }

    /// `[cluster] snapshot_after_entries`.
    pub fn snapshot_after_entries(self, entries: u64) -> Self {
        self.set("cluster", "snapshot_after_entries", &entries.to_string())
    }

    /// Sets `key` of `[section]` to `toml_value`, written verbatim:
    /// `.set("api", "ttl_seconds_default", "5")`,
    /// `.set("auth", "keys", r#"[{ name = "ops", role = "admin", sha256 = "..." }]"#)`,
    /// `.set("cluster.wal", "segment_bytes_max", "1048576")`.
    pub fn set(mut self, section: &str, key: &str, toml_value: &str) -> Self {
        self.settings.entry(section.to_owned()).or_default().insert(key.to_owned(), toml_value.to_owned());
        self
    }

    /// Keeps the node's data in `dir` (one node only: a cluster's nodes
    /// would share it).
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// Makes node `n`'s directory `<dir>/node<n>` (kept afterwards) instead
    /// of a temporary one.
    pub fn root(mut self, dir: &Path) -> Self {
        self.root = Some(dir.to_path_buf());
        self
    }

    /// An environment variable for the process (e.g. `TALLY_*` overrides).
    /// The harness removes any `TALLY_*` the runner inherited.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The config file of `node`, keeping its data in `data_dir`.
    pub fn render(&self, node: &NodeSpec, data_dir: &Path) -> String {
        let mut settings = self.settings.clone();
        let server = settings.entry("server".into()).or_default();
        server.insert("listen".into(), toml_string(&node.http_addr.to_string()));
        let cluster = settings.entry("cluster".into()).or_default();
        cluster.insert("node_id".into(), node.node_id.to_string());
        cluster.insert("listen".into(), toml_string(&node.peer_addr.to_string()));
        cluster.insert("members".into(), peer_list(&node.members));
        if !node.dial.is_empty() {
            cluster.insert("dial".into(), peer_list(&node.dial));
        }
        cluster.insert("shards".into(), self.shards.to_string());
        cluster.insert("data_dir".into(), toml_string(&data_dir.to_string_lossy()));
        let mut text = String::from("# Written by the tally test harness (testkit).\n");
        for (section, keys) in &settings {
            text.push_str(&format!("\n[{section}]\n"));
            for (key, value) in keys {
                text.push_str(&format!("{key} = {value}\n"));
            }
        }
        text
    }
}

/// `[{ id = 1, addr = "..." }, ...]`.
fn peer_list(peers: &[(u64, SocketAddr)]) -> String {
    let peers: Vec<String> =
        peers.iter().map(|(id, addr)| format!("{{ id = {id}, addr = {} }}", toml_string(&addr.to_string()))).collect();
    format!("[{}]", peers.join(", "))
}

/// A JSON string literal is a valid TOML basic string.
fn toml_string(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

/// Who a node is and where it and its peers listen.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub node_id: u64,
    pub http_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    /// `cluster.members`: every node's peer address.
    pub members: Vec<(u64, SocketAddr)>,
    /// `cluster.dial`: where this node dials a peer instead of its member
    /// address (e.g. through a fault proxy); empty for none.
    pub dial: Vec<(u64, SocketAddr)>,
}

impl NodeSpec {
    /// A single node on `addrs[0]` (HTTP) and `addrs[1]` (peers).
    pub fn single(http_addr: SocketAddr, peer_addr: SocketAddr) -> NodeSpec {
        NodeSpec { node_id: 1, http_addr, peer_addr, members: vec![(1, peer_addr)], dial: Vec::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sections_with_the_harness_keys_and_the_escape_hatch() {
        let http: SocketAddr = "127.0.0.1:7001".parse().unwrap_or_else(|e| panic!("{e}"));
        let peer: SocketAddr = "127.0.0.1:7002".parse().unwrap_or_else(|e| panic!("{e}"));
        let mut spec = NodeSpec::single(http, peer);
        spec.dial = vec![(2, "127.0.0.1:7003".parse().unwrap_or_else(|e| panic!("{e}")))];
        let options = Options::new(Program::Binary("tally".into()))
            .shards(3)
            .log_level("warn")
            .debug_clock(true)
            .snapshot_after_entries(50)
            .set("cluster.wal", "segment_bytes_max", "1048576");
        let text = options.render(&spec, Path::new("/tmp/d\"x"));
        let expected = "# Written by the tally test harness (testkit).\n\
                        \n[cluster]\ndata_dir = \"/tmp/d\\\"x\"\ndial = [{ id = 2, addr = \"127.0.0.1:7003\" }]\n\
                        listen = \"127.0.0.1:7002\"\nmembers = [{ id = 1, addr = \"127.0.0.1:7002\" }]\nnode_id = 1\n\
                        shards = 3\nsnapshot_after_entries = 50\n\
                        \n[cluster.wal]\nsegment_bytes_max = 1048576\n\
                        \n[server]\ndebug_clock = true\nlisten = \"127.0.0.1:7001\"\nlog_level = \"warn\"\n";
        assert_eq!(text, expected);
    }
}
