//! A real in-process cluster over loopback sockets (the command builders
//! are `engine::testing`).
// Node ids index a vector of 3; test code, not input.
#![allow(clippy::cast_possible_truncation)]
#![allow(dead_code)]

use std::time::{Duration, Instant};

use cluster::{ClusterConfig, Member, Node, NodeId, Secret};
use engine::Outcome;
use engine::testing::{hold, rid_for};
use tokio::net::TcpListener;

pub mod raw_peer;

/// The secret every test cluster shares, so every cluster test runs the
/// authenticated handshake.
pub const TEST_SECRET: &str = "tally-test-cluster-secret-0123456789";

pub fn expect_ok(outcome: &Outcome) {
    assert!(!outcome.is_refused(), "refused: {outcome:?}");
}

/// Settings that make elections quick on loopback.
pub fn fast_config(node_id: NodeId, shards: u32, members: Vec<Member>, dir: &std::path::Path) -> ClusterConfig {
    ClusterConfig {
        node_id,
        listen: members.iter().find(|m| m.id == node_id).map(|m| m.addr.clone()).unwrap_or_default(),
        members,
        secret: Some(Secret::new(TEST_SECRET)),
        shards,
        data_dir: dir.to_path_buf(),
        shard_threads: 1,
        heartbeat_ms: 50,
        election_timeout_min_ms: 250,
        election_timeout_max_ms: 500,
        rpc_timeout_ms: 1_000,
        retry_window_ms: 6_000,
        rebalance_interval_ms: 500,
        ..ClusterConfig::default()
    }
}

/// Attempts at one write before a test calls it failed; each attempt
/// already retries through elections for `retry_window_ms`.
pub const WRITE_ATTEMPTS_MAX: u32 = 5;

/// Starts a node in no member list, on `template`'s settings and members
/// (the cluster it waits to be added to), with its own port and directory.
pub async fn start_joiner(template: &ClusterConfig, id: NodeId) -> (Node, String, tempfile::TempDir) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}")).to_string();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut config = template.clone();
    config.node_id = id;
    config.listen = addr.clone();
    config.data_dir = dir.path().to_path_buf();
    let node = Node::start_on(config, listener).await.unwrap_or_else(|e| panic!("start {id}: {e}"));
    (node, addr, dir)
}

/// Holds one unit of `skus[n % len]` (of `shards` shards) under reservation
/// id `n` through `node`, until it is acknowledged: a retry repeats the same
/// command (the same reservation id), which the shard answers with the
/// first outcome.
pub async fn hold_until_acknowledged(node: &Node, skus: &[String], n: u64, shards: u32) {
    let sku = &skus[(n % skus.len() as u64) as usize];
    let command = hold(rid_for(n, sku, shards), &[(sku, "w1", 1)], 3_600_000, None);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match node.submit(command.clone()).await {
            Ok(outcome) => {
                assert!(matches!(outcome, Outcome::Held { .. }), "hold {n}: {outcome:?}");
                return;
            }
            Err(error) => assert!(attempt < WRITE_ATTEMPTS_MAX, "hold {n} failed {attempt} times: {error}"),
        }
    }
}

pub struct TestCluster {
    pub dirs: Vec<tempfile::TempDir>,
    pub configs: Vec<ClusterConfig>,
    pub nodes: Vec<Option<Node>>,
}

impl TestCluster {
    /// Starts `size` nodes with `shards` shards each; `tune` adjusts every config.
    pub async fn start(size: u64, shards: u32, tune: impl Fn(&mut ClusterConfig)) -> TestCluster {
        let mut listeners = Vec::new();
        let mut members = Vec::new();
        for id in 1..=size {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
            let addr = listener.local_addr().unwrap_or_else(|e| panic!("addr: {e}")).to_string();
            members.push(Member { id, addr });
            listeners.push(listener);
        }
        let mut cluster = TestCluster { dirs: Vec::new(), configs: Vec::new(), nodes: Vec::new() };
        for (index, listener) in listeners.into_iter().enumerate() {
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
            let mut config = fast_config(index as u64 + 1, shards, members.clone(), dir.path());
            tune(&mut config);
            let node = Node::start_on(config.clone(), listener).await.unwrap_or_else(|e| panic!("start node: {e}"));
            cluster.dirs.push(dir);
            cluster.configs.push(config);
            cluster.nodes.push(Some(node));
        }
        cluster
    }

    pub fn node(&self, id: NodeId) -> &Node {
        self.nodes[id as usize - 1].as_ref().unwrap_or_else(|| panic!("node {id} is down"))
    }

    pub fn live(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().flatten()
    }

    pub async fn kill(&mut self, id: NodeId) {
        if let Some(node) = self.nodes[id as usize - 1].take() {
            node.shutdown().await;
        }
    }

    /// Restarts node `id` on its old address and data (wiped first if asked).
    pub async fn restart(&mut self, id: NodeId, wipe: bool) {
        let config = self.configs[id as usize - 1].clone();
        if wipe {
            std::fs::remove_dir_all(&config.data_dir).unwrap_or_else(|e| panic!("wipe: {e}"));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(&config.listen).await {
                Ok(listener) => break listener,
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("rebind {}: {error}", config.listen),
            }
        };
        let node = Node::start_on(config, listener).await.unwrap_or_else(|e| panic!("restart node {id}: {e}"));
        self.nodes[id as usize - 1] = Some(node);
    }

    /// Waits until every shard has a live leader that every live node
    /// hosting it agrees on.
    pub async fn wait_for_leaders(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let statuses: Vec<_> = self.live().map(Node::status).collect();
            let shards = self.configs.first().map_or(0, |config| config.shards);
            let agreed = (0..shards).all(|shard| {
                let leaders: Vec<_> =
                    statuses.iter().flat_map(|s| &s.shards).filter(|s| s.shard == shard).map(|s| s.leader).collect();
                let leader = leaders.first().copied().flatten();
                leader.is_some_and(|leader| self.nodes[leader as usize - 1].is_some())
                    && leaders.iter().all(|other| *other == leader)
            });
            if agreed {
                return;
            }
            assert!(Instant::now() < deadline, "no agreed leaders within {within:?}: {statuses:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Leader of `shard` as node `via` sees it (`via` must host the shard).
    pub fn leader_of(&self, via: NodeId, shard: u32) -> Option<NodeId> {
        self.node(via).status().shards.iter().find(|s| s.shard == shard).and_then(|s| s.leader)
    }

    /// Waits until every live node hosting a shard applied the same index
    /// of it, with the same digest, then returns each shard's (equal state
    /// on every replica).
    pub async fn converged_digests(&self, within: Duration) -> Vec<(Option<u64>, u128)> {
        let deadline = Instant::now() + within;
        let shards = self.configs.first().map_or(0, |config| config.shards) as usize;
        loop {
            let mut by_shard: Vec<Vec<(Option<u64>, u128)>> = vec![Vec::new(); shards];
            for node in self.live() {
                for (shard, applied, digest) in node.digests().await.unwrap_or_else(|e| panic!("digests: {e}")) {
                    by_shard[shard as usize].push((applied, digest));
                }
            }
            if by_shard.iter().all(|hosts| !hosts.is_empty() && hosts.windows(2).all(|pair| pair[0] == pair[1])) {
                return by_shard.into_iter().map(|mut hosts| hosts.swap_remove(0)).collect();
            }
            assert!(Instant::now() < deadline, "replicas did not converge within {within:?}: {by_shard:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn shutdown(mut self) {
        for id in 1..=self.nodes.len() as u64 {
            self.kill(id).await;
        }
    }
}
