//! A real Tally cluster of N nodes (3 by default) on loopback with a fault proxy on every
//! directed peer link, and the faults the schedule applies to it.
//!
//! Node `i` dials node `j` through proxy `i→j` (`cluster.dial` in node `i`'s
//! config), so a partition is a proxy rule and needs no root or special
//! network. A connection `i` dials carries `i`'s requests to `j` forward and
//! `j`'s answers back, so "`i` cannot reach `j`" blackholes the forward
//! direction of `i→j` and the backward direction of `j→i` (the answers `i`
//! would send to `j`'s requests).
//!
//! Processes are real `tally` servers started by the shared harness
//! (`testkit`): the `tally` binary given, or this program re-run as
//! `<program> tally serve …` (the same `server::cli`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use testkit::{Http, NodeSpec, Options, Program, TallyCluster, TallyProcess, free_addrs};

use crate::proxy::{Flow, Proxy, Rule};

/// Most nodes a chaos cluster has (a proxy on each of the N·(N-1) links).
pub const NODES_MAX: u8 = 9;

/// Settings of the cluster.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Nodes in the cluster, 1 to `NODES_MAX`; every node is a voter of
    /// every shard.
    pub nodes: u8,
    pub shards: u32,
    /// Seeds the proxies' drop and jitter randomness.
    pub seed: u64,
    /// Extra `[cluster]` settings for every node (timeouts, etc.): key and
    /// TOML value.
    pub cluster_extra: Vec<(String, String)>,
    /// Whether shards follow the placement rule (`cluster.replication_factor`
    /// among `cluster_extra`): node additions and removals move replicas,
    /// and a heal restores the placement's shape, not "every node holds
    /// every shard".
    pub placed: bool,
}

/// The running cluster: node `i` is `i`'s directory `<dir>/node<i>`.
pub struct ChaosCluster {
    nodes: TallyCluster,
    /// Node `size + 1`: started with the members but not among them, so it
    /// waits to be added (the `add-node` fault adds and removes it).
    spare: TallyProcess,
    /// Nodes in the cluster (the spare not counted).
    size: u8,
    /// `Settings::placed`.
    placed: bool,
    /// `proxies[(from - 1) * (size + 1) + (to - 1)]` over every node and the
    /// spare, `None` on the diagonal.
    proxies: Vec<Option<Proxy>>,
}

fn link(size: u8, from: u8, to: u8) -> usize {
    usize::from(from - 1) * usize::from(size + 1) + usize::from(to - 1)
}

/// The variable that overrides a node's `cluster.members`.
const MEMBERS_ENV: &str = "TALLY_CLUSTER__MEMBERS";
/// Longest wait for a node addition or removal to finish.
const MEMBERSHIP_WAIT: Duration = Duration::from_secs(180);

impl ChaosCluster {
    /// Starts `settings.nodes` nodes with their data and logs under `dir`
    /// and waits until every node is ready.
    pub async fn start(program: Program, dir: &Path, settings: &Settings) -> Result<ChaosCluster, String> {
        let size = settings.nodes;
        if !(1..=NODES_MAX).contains(&size) {
            return Err(format!("a chaos cluster has 1 to {NODES_MAX} nodes, not {size}"));
        }
        let total = size + 1;
        let addrs = free_addrs(2 * usize::from(total));
        let (http, peer) = addrs.split_at(usize::from(total));
        let members: Vec<(u64, SocketAddr)> = (1..=u64::from(size)).zip(peer.iter().copied()).collect();
        let mut proxies = Vec::new();
        for from in 1..=total {
            for to in 1..=total {
                if from == to {
                    proxies.push(None);
                    continue;
                }
                let target = peer[usize::from(to - 1)];
                let seed = settings.seed.wrapping_mul(31).wrapping_add(u64::from(from) * 7 + u64::from(to));
                let proxy = Proxy::start(format!("{from}->{to}"), target, seed)
                    .await
                    .map_err(|e| format!("proxy {from}->{to}: {e}"))?;
                proxies.push(Some(proxy));
            }
        }
        let mut options =
            Options::new(program).shards(settings.shards).log_level("info,openraft=warn").debug_clock(true).root(dir);
        for (key, value) in &settings.cluster_extra {
            options = options.set("cluster", key, value);
        }
        let mut nodes = Vec::new();
        for id in 1..=total {
            let dial = (1..=total)
                .filter(|other| *other != id)
                .filter_map(|other| proxies[link(size, id, other)].as_ref().map(|p| (u64::from(other), p.addr())))
                .collect();
            let index = usize::from(id - 1);
            let spec = NodeSpec {
                node_id: u64::from(id),
                http_addr: http[index],
                peer_addr: peer[index],
                members: members.clone(),
                dial,
            };
            nodes.push(TallyProcess::launch(spec, &options)?);
        }
        let spare = nodes.pop().ok_or("no spare node")?;
        let mut nodes = TallyCluster::from_nodes(nodes);
        nodes.try_ready().await?;
        Ok(ChaosCluster { nodes, spare, size, placed: settings.placed, proxies })
    }

    /// Whether each shard lives on fewer nodes than there are.
    pub fn is_placed(&self) -> bool {
        self.placed
    }

    /// Nodes in the cluster.
    pub fn size(&self) -> u8 {
        self.size
    }

    /// Every node's id, 1 to `size`.
    pub fn ids(&self) -> std::ops::RangeInclusive<u8> {
        1..=self.size
    }

    fn node(&self, id: u8) -> &TallyProcess {
        if id == self.spare() { &self.spare } else { self.nodes.node(u64::from(id)) }
    }

    fn node_mut(&mut self, id: u8) -> &mut TallyProcess {
        if id == self.spare() { &mut self.spare } else { self.nodes.node_mut(u64::from(id)) }
    }

    /// The spare node's id: `size + 1`.
    pub fn spare(&self) -> u8 {
        self.size + 1
    }

    /// The HTTP address of node `id` (1-based).
    pub fn http(&self, id: u8) -> SocketAddr {
        self.node(id).http_addr
    }

    /// Whether node `id` has a process (it may be paused).
    pub fn is_running(&self, id: u8) -> bool {
        self.node(id).has_process()
    }

    pub fn is_paused(&self, id: u8) -> bool {
        self.node(id).is_paused()
    }

    /// Waits until node `id` answers `/readyz` with 200 (it has a leader for
    /// every shard), or fails if its process exits or the wait runs out.
    pub async fn wait_ready(&mut self, id: u8) -> Result<(), String> {
        self.node_mut(id).wait_ready().await.map_err(|e| format!("node {id}: {e}"))
    }

    /// `kill -9` node `id` (paused or not) and reaps it.
    pub async fn kill(&mut self, id: u8) -> Result<(), String> {
        if !self.is_running(id) {
            return Err(format!("node {id} is not running"));
        }
        self.node_mut(id).kill_9();
        Ok(())
    }

    /// Starts node `id` again on its data directory (wiped if `wipe`);
    /// does not wait for it.
    pub async fn restart(&mut self, id: u8, wipe: bool) -> Result<(), String> {
        let node = self.node_mut(id);
        node.kill_9();
        if wipe {
            node.wipe_data()?;
        }
        node.spawn()
    }

    /// SIGSTOP: the process freezes with its sockets open; returns once the
    /// kernel shows it stopped.
    pub async fn pause(&mut self, id: u8) -> Result<(), String> {
        self.node_mut(id).pause().await
    }

    /// SIGCONT after `pause`.
    pub async fn resume(&mut self, id: u8) -> Result<(), String> {
        self.node_mut(id).resume()
    }

    fn proxy(&self, from: u8, to: u8) -> Option<&Proxy> {
        self.proxies.get(link(self.size, from, to)).and_then(Option::as_ref)
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
        for from in self.ids() {
            for to in self.ids() {
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

    /// Asks node `via` to add node `id` to every shard (`POST
    /// /v1/admin/nodes`) and waits until the change is done.
    pub async fn add_node(&self, via: u8, id: u8) -> Result<(), String> {
        let body = json!({ "id": id, "addr": self.node(id).peer_addr.to_string() });
        self.change_membership(via, Method::POST, "/v1/admin/nodes".to_owned(), Some(body)).await
    }

    /// Asks node `via` to remove node `id` from every shard (`DELETE
    /// /v1/admin/nodes/{id}`) and waits until the change is done.
    pub async fn remove_node(&self, via: u8, id: u8) -> Result<(), String> {
        self.change_membership(via, Method::DELETE, format!("/v1/admin/nodes/{id}"), None).await
    }

    async fn change_membership(
        &self,
        via: u8,
        method: Method,
        path: String,
        body: Option<Value>,
    ) -> Result<(), String> {
        let http = self.node(via).client();
        let what = format!("{method} {path} on node {via}");
        let (status, _, answer) =
            http.try_request(method, &path, &[], body.as_ref()).await.map_err(|e| format!("{what}: {e}"))?;
        // Already where it should be (the view that asked for the change
        // may have lagged the log): nothing to do.
        if matches!(answer["code"].as_str(), Some("node_not_member" | "node_already_member")) {
            return Ok(());
        }
        if status != StatusCode::ACCEPTED {
            return Err(format!("{what}: {status} {answer}"));
        }
        let deadline = Instant::now() + MEMBERSHIP_WAIT;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let Ok((_, _, nodes)) = http.try_request(Method::GET, "/v1/admin/nodes", &[], None).await else { continue };
            match nodes["change"]["state"].as_str() {
                Some("done") => return Ok(()),
                Some("failed") => return Err(format!("{what}: failed: {}", nodes["change"]["error"])),
                _ => {}
            }
        }
        Err(format!("{what}: not done within {MEMBERSHIP_WAIT:?}"))
    }

    /// Kills node `id`, wipes it and starts it empty, naming the other
    /// nodes but not itself as members, so it waits to be added (a node
    /// that joins afresh); `joined` undoes the naming once it is added.
    pub async fn restart_as_new(&mut self, id: u8) -> Result<(), String> {
        let others: Vec<String> = self
            .ids()
            .filter(|other| *other != id)
            .map(|other| format!("{{ id = {other}, addr = \"{}\" }}", self.node(other).peer_addr))
            .collect();
        let node = self.node_mut(id);
        node.kill_9();
        node.wipe_data()?;
        if id <= self.size {
            let node = self.node_mut(id);
            node.set_env(MEMBERS_ENV, Some(&format!("[{}]", others.join(", "))));
        }
        self.node_mut(id).spawn()
    }

    /// Node `id` is a member again: its later starts read the members from
    /// its config (its data has the membership).
    pub fn joined(&mut self, id: u8) {
        self.node_mut(id).set_env(MEMBERS_ENV, None);
    }

    /// Per node (the spare too), the shards it is a voter of, each shard's
    /// voters as its leader (or, leaderless, any host) reports them in
    /// `GET /v1/cluster`, over every running node.
    pub async fn replicas_held(&self) -> Result<BTreeMap<u8, u64>, String> {
        let mut voters: BTreeMap<u64, (bool, Vec<u64>)> = BTreeMap::new();
        for id in (1..=self.spare()).filter(|id| self.is_running(*id)) {
            let Ok((_, _, status)) = self.node(id).client().try_request(Method::GET, "/v1/cluster", &[], None).await
            else {
                continue;
            };
            for shard in status["shards"].as_array().into_iter().flatten() {
                let Some(number) = shard["shard"].as_u64() else { continue };
                let leads = shard["leader"].as_u64() == Some(u64::from(id));
                let set: Vec<u64> =
                    shard["voters"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect();
                let entry = voters.entry(number).or_insert((false, Vec::new()));
                if leads || (!entry.0 && entry.1.is_empty()) {
                    *entry = (leads, set);
                }
            }
        }
        if voters.is_empty() {
            return Err("no running node reports a shard".to_owned());
        }
        let mut held = BTreeMap::new();
        for voter in voters.values().flat_map(|(_, set)| set) {
            if let Ok(id) = u8::try_from(*voter) {
                *held.entry(id).or_insert(0) += 1;
            }
        }
        Ok(held)
    }

    /// The shard count, and per node (the spare too) the number of shards
    /// it is a voter of, as node `via`'s groups see them.
    pub async fn voter_of(&self, via: u8) -> Result<(u64, Vec<(u8, u64)>), String> {
        let http = self.node(via).client();
        let (_, _, nodes) = http
            .try_request(Method::GET, "/v1/admin/nodes", &[], None)
            .await
            .map_err(|e| format!("GET /v1/admin/nodes on node {via}: {e}"))?;
        let shards = nodes["shards"].as_u64().ok_or_else(|| format!("node {via}: no shard count in {nodes}"))?;
        let voters = nodes["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|node| {
                let id = u8::try_from(node["id"].as_u64()?).ok()?;
                Some((id, node["voter_of"].as_u64().unwrap_or(0)))
            })
            .collect();
        Ok((shards, voters))
    }

    /// Stops every node (SIGKILL, paused or not) and every proxy.
    pub async fn stop(mut self) {
        for id in self.ids() {
            self.node_mut(id).kill_9();
        }
        self.spare.kill_9();
        for proxy in self.proxies.into_iter().flatten() {
            proxy.stop().await;
        }
    }
}

/// `GET path` on `addr`; the status, or `None` when nothing answered within
/// a second.
pub async fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let http = Http::with_timeout(addr, Duration::from_secs(1));
    http.try_request(Method::GET, path, &[], None).await.ok().map(|(status, _, _)| status.as_u16())
}
