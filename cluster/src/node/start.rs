//! Starting and stopping a node: the data directory's identity, each
//! shard's snapshot, WAL and archive, the shard actors, the peer transport,
//! every shard's Raft group on its own thread, and the background tasks
//! (peer service, bootstrap, failure reaction, rebalancing, the snapshot
//! sweeper). `start_on` runs these as named steps, in this order.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use actix::{Addr, ArbiterHandle};
use engine::actor::ShardActor;
use engine::actor::ShardPool;
use engine::snapshot::SnapshotStore;
use engine::wal::{ArchiveConfig, ArchiveStats, Wal};
use engine::{Limits, ShardState};
use openraft::SnapshotPolicy;
use parking_lot::{Mutex, RwLock};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use super::bootstrap::bootstrap;
use super::hosting::load_placement;
use super::leadership::{hand_over_on_stop, react_to_failures, rebalance, watch_leadership};
use super::membership::learn_member_addresses;
use super::peer_service::Service;
use super::relay::relay_events;
use super::route::ShardRoute;
use super::snapshot_inbound::{inbound_limits, sweep_inbound_snapshots};
use super::submit::request_prefix;
use super::{Group, Inner, Node};
use crate::clock::{Clock, ShardClock};
use crate::config::ClusterConfig;
use crate::error::StartError;
use crate::event_ring::EventRing;
use crate::forwarder::{Forwarder, ForwarderSettings};
use crate::health::{Health, ShardHealth};
use crate::inbound::InboundSnapshots;
use crate::ledger::{Ledger, LedgerSender};
use crate::log_store::LogStore;
use crate::network::{GroupNetwork, Router};
use crate::placement::{self, Placement};
use crate::proposer::{Proposer, ProposerSettings};
use crate::raft_types::{NodeId, Raft};
use crate::shadow::{Shadow, SnapshotThread};
use crate::shard_thread::ShardThread;
use crate::state_machine::{NodeEvent, Publisher, StateMachine};
use crate::transport::{Transport, TransportConfig};

/// The limits a shard with no snapshot starts from, on every replica and
/// in every shadow (`shadow`): later ones come through the log
/// (`SetLimits`), since limits shape outcomes.
pub fn initial_limits() -> Limits {
    Limits::default()
}

/// How far back from the end of a shard's log its last batch is looked for
/// at start; blank and membership entries come a few at a time.
const RECOVER_LOOK_BACK_MAX: u64 = 64;

/// A shard's directory in a data directory.
pub fn shard_dir(data_dir: &Path, shard: u32) -> PathBuf {
    data_dir.join(format!("shard-{shard:05}"))
}

fn data_dir_error(path: &Path, reason: impl ToString) -> StartError {
    StartError::DataDir { path: path.display().to_string(), reason: reason.to_string() }
}

/// The data directory remembers the node id and shard count it was made
/// for: placement depends on the shard count, so opening with another count
/// would silently send SKUs to the wrong shard.
pub fn check_identity(config: &ClusterConfig) -> Result<(), StartError> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(|e| data_dir_error(dir, e))?;
    let path = dir.join("IDENTITY");
    let expected = format!("node_id = {}\nshards = {}\n", config.node_id, config.shards);
    match std::fs::read_to_string(&path) {
        Ok(found) if found == expected => Ok(()),
        Ok(found) => {
            Err(data_dir_error(&path, format!("was made for {:?}, config says {:?}", found.trim(), expected.trim())))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let temp = dir.join("IDENTITY.tmp");
            std::fs::write(&temp, expected.as_bytes()).map_err(|e| data_dir_error(&temp, e))?;
            std::fs::File::open(&temp).and_then(|f| f.sync_all()).map_err(|e| data_dir_error(&temp, e))?;
            std::fs::rename(&temp, &path).map_err(|e| data_dir_error(&path, e))?;
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| data_dir_error(dir, e))?;
            Ok(())
        }
        Err(error) => Err(data_dir_error(&path, error)),
    }
}

impl Node {
    /// Opens the data directory, starts every shard's actor and Raft group,
    /// listens for peers and starts bootstrap. Call inside a tokio runtime.
    pub async fn start(config: ClusterConfig) -> Result<Node, StartError> {
        // Checked before binding, so a bad config is reported as such.
        config.validate().map_err(StartError::Config)?;
        let listener = TcpListener::bind(&config.listen)
            .await
            .map_err(|source| StartError::Listen { addr: config.listen.clone(), source })?;
        Self::start_on(config, listener).await
    }

    /// `start`, on a listener the caller bound (tests bind port 0 first).
    pub async fn start_on(config: ClusterConfig, listener: TcpListener) -> Result<Node, StartError> {
        config.validate().map_err(StartError::Config)?;
        check_protected_mode(&config, &listener)?;
        check_identity(&config)?;
        let id = config.node_id;

        // Which shards live here (every one unless placed), and their
        // state: the newest snapshot, or empty; the WAL's committed suffix
        // is re-applied by openraft once the group starts.
        let placement = plan_placement(&config)?;
        let hosted = hosted_shards(&config, &placement);
        let (states, files) = open_shards(&config, &hosted)?;
        let threads = if config.shard_threads == 0 { ShardPool::default_arbiters() } else { config.shard_threads };
        let pool = ShardPool::start(states, threads).map_err(StartError::Threads)?;

        let transport = start_transport(&config);
        let router = Router::new(transport.clone(), config.snapshot_chunk_bytes, config.wal.record_bytes_max as usize);
        let (events, _) = broadcast::channel(config.event_buffer_max.max(1));
        let clock = Arc::new(Clock::new(config.shards));
        let raft_config = raft_config(&config)?;

        // One thread builds every shard's shadow snapshots, one at a time.
        let snapshot_thread = if config.snapshot_from_shadow {
            Some(SnapshotThread::start(config.shards as usize).map_err(StartError::Threads)?)
        } else {
            None
        };
        let (ledger, ledger_sender) = if config.ledger.enabled {
            let (ledger, sender) = Ledger::start(&config.data_dir.join("ledger"), config.shards, config.ledger.clone())
                .map_err(StartError::Threads)?;
            (Some(ledger), Some(sender))
        } else {
            (None, None)
        };
        let health = Health::new(config.shards);
        let event_ring = EventRing::new(config.shards, config.event_relay_buffer_max);
        let kit = GroupKit {
            actors: (0..config.shards).filter_map(|shard| pool.shard(shard).cloned()).collect(),
            arbiters: (0..config.shards).filter_map(|shard| pool.arbiter(shard).cloned()).collect(),
            router,
            raft_config,
            snapshot_thread,
            ledger_sender,
        };
        let context = GroupContext {
            id,
            config: &config,
            kit: &kit,
            transport: &transport,
            events: &events,
            clock: &clock,
            health: &health,
            event_ring: &event_ring,
            joining: false,
        };
        let mut groups = Vec::with_capacity(config.shards as usize);
        let mut routes = Vec::with_capacity(config.shards as usize);
        let mut tasks = Vec::new();
        for ((shard, files), placed) in (0..config.shards).zip(files).zip(&placement.shards) {
            groups.push(match files {
                Some(files) => Some(start_group(&context, shard, files).await?),
                None => None,
            });
            let (route, forwarder_task) = start_route(&config, &transport, shard, placed.voters.clone());
            tasks.push(forwarder_task);
            routes.push(route);
        }

        let request_prefix = request_prefix(id);
        let inbound = Mutex::new(InboundSnapshots::new(inbound_limits(&config)));
        let node = Node {
            inner: Arc::new(Inner {
                id,
                config,
                transport: transport.clone(),
                groups: RwLock::new(groups),
                kit: Mutex::new(Some(Arc::new(kit))),
                hosting: tokio::sync::Mutex::new(()),
                routes,
                placement: RwLock::new(placement),
                pool: Mutex::new(Some(pool)),
                events,
                clock,
                request_prefix,
                request_seq: AtomicU64::new(0),
                inbound,
                tasks: Mutex::new(tasks),
                shut_down: AtomicBool::new(false),
                health: Arc::clone(&health),
                event_ring,
                ledger,
                membership: Mutex::new(None),
            }),
        };
        node.spawn_background(listener, health);
        Ok(node)
    }

    /// The tasks a started node runs until it stops: the peer service,
    /// bootstrap, the reaction to stopped shards, rebalancing (when on),
    /// and the sweeper of abandoned snapshot transfers (each group runs its
    /// own tasks: `start_group`).
    fn spawn_background(&self, listener: TcpListener, health: Arc<Health>) {
        let serve = self.inner.transport.serve(listener, Arc::new(Service { node: Arc::downgrade(&self.inner) }));
        self.inner.tasks.lock().push(serve);
        let bootstrap = tokio::spawn(bootstrap(self.clone()));
        self.inner.tasks.lock().push(bootstrap);
        let react = tokio::spawn(react_to_failures(Arc::downgrade(&self.inner), health));
        self.inner.tasks.lock().push(react);
        if self.inner.config.rebalance_interval_ms > 0 {
            let rebalance = tokio::spawn(rebalance(Arc::downgrade(&self.inner)));
            self.inner.tasks.lock().push(rebalance);
        }
        let sweep = tokio::spawn(sweep_inbound_snapshots(Arc::downgrade(&self.inner)));
        self.inner.tasks.lock().push(sweep);
        if self.inner.config.follows_placement() {
            for shard in 0..self.inner.config.shards {
                let relay = tokio::spawn(relay_events(Arc::downgrade(&self.inner), shard));
                self.inner.tasks.lock().push(relay);
            }
        }
    }
    /// Stops the node: peers see it go at once; Raft groups, proposers and
    /// shard actors stop. Durable state stays on disk for a restart.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        if inner.shut_down.swap(true, Ordering::AcqRel) {
            return;
        }
        // Groups stopping from here on are not failures.
        inner.health.close();
        // While the peers still answer: what this node leads goes to another
        // voter now rather than after an election timeout.
        hand_over_on_stop(inner).await;
        inner.transport.shutdown();
        for task in inner.tasks.lock().drain(..) {
            task.abort();
        }
        // No group starts from here on; the ledger's queue closes with the
        // last group's state machine.
        let _hosting = inner.hosting.lock().await;
        drop(inner.kit.lock().take());
        for group in inner.hosted_groups() {
            group.stop_tasks();
            let _ = group.raft.shutdown().await;
        }
        let pool = inner.pool.lock().take();
        if let Some(pool) = pool {
            // Joining the actor threads blocks; keep it off the runtime's workers.
            let _ = tokio::task::spawn_blocking(move || pool.stop()).await;
        }
    }
}

/// Protected mode, on the address actually bound (`validate` judged the
/// configured one).
fn check_protected_mode(config: &ClusterConfig, listener: &TcpListener) -> Result<(), StartError> {
    let bound = listener.local_addr().map_err(|source| StartError::Listen { addr: config.listen.clone(), source })?;
    if config.secret.is_none() && !bound.ip().to_canonical().is_loopback() {
        return Err(StartError::Config(format!(
            "the peer port is bound to {bound}, not loopback, and no secret is set: set cluster.secret \
             (or TALLY_CLUSTER__SECRET) to the same random value on every node"
        )));
    }
    Ok(())
}

/// What a shard has on disk, opened: its snapshots, its WAL (with the
/// archive attached when `archive_dir` is set), and where its log time is
/// recovered from when its log is empty: the snapshot's last entry and log
/// time.
pub(super) struct ShardFiles {
    snapshots: SnapshotStore,
    wal: Wal,
    snapshot_time: Option<(engine::LogId, u64)>,
    archive: Option<Arc<ArchiveStats>>,
}

/// This node's map: the one it saved last (a node add or remove moved the
/// shards since the cluster started: `hosting`), else where the placement
/// rule puts each shard among the configured members
/// (`replication_factor`; every member when it is 0 or at least their
/// count).
fn plan_placement(config: &ClusterConfig) -> Result<Placement, StartError> {
    if let Some(saved) = load_placement(&config.data_dir, config.shards) {
        return Ok(saved);
    }
    let members: Vec<NodeId> = config.members.iter().map(|member| member.id).collect();
    placement::plan(&members, config.shards, config.replicas(), None)
        .map_err(|error| StartError::Config(format!("placement: {error}")))
}

/// Per shard, whether this node hosts it: every shard when shards do not
/// follow the placement rule (each node holds all, as a node waiting to be
/// added does); else the shards its map gives this node (none for a node
/// waiting to be added: the mover starts its groups), and any it already
/// has data for (a restart never drops a replica by itself).
fn hosted_shards(config: &ClusterConfig, placement: &Placement) -> Vec<bool> {
    (0..config.shards)
        .zip(&placement.shards)
        .map(|(shard, placed)| {
            !config.follows_placement()
                || placed.voters.contains(&config.node_id)
                || has_data(&shard_dir(&config.data_dir, shard))
        })
        .collect()
}

/// Whether a shard's directory holds a WAL segment or a snapshot.
pub(super) fn has_data(dir: &Path) -> bool {
    let non_empty = |sub: &str| std::fs::read_dir(dir.join(sub)).is_ok_and(|mut entries| entries.next().is_some());
    non_empty("wal") || non_empty("snapshots")
}

/// Opens the snapshots and WAL of every shard this node hosts, in shard
/// order: the state each shard starts from (its newest snapshot, or empty)
/// and its files. A shard hosted elsewhere gets an empty state (its actor
/// stays idle) and no files.
fn open_shards(
    config: &ClusterConfig,
    hosted: &[bool],
) -> Result<(Vec<ShardState>, Vec<Option<ShardFiles>>), StartError> {
    let mut states = Vec::with_capacity(config.shards as usize);
    let mut files = Vec::with_capacity(config.shards as usize);
    for (shard, hosted) in (0..config.shards).zip(hosted) {
        if !hosted {
            states.push(ShardState::new(shard, config.shards, initial_limits()));
            files.push(None);
            continue;
        }
        let (state, shard_files) = open_shard(config, shard)?;
        files.push(Some(shard_files));
        states.push(state);
    }
    Ok((states, files))
}

/// Opens one shard's snapshots and WAL (creating them when new): the state
/// it starts from (its newest snapshot, or empty) and its files.
pub(super) fn open_shard(config: &ClusterConfig, shard: u32) -> Result<(ShardState, ShardFiles), StartError> {
    let dir = shard_dir(&config.data_dir, shard);
    let snapshots = SnapshotStore::open(dir.join("snapshots"), config.snapshots_kept)?;
    let state = match snapshots.load_latest()? {
        Some((_, state)) => state,
        None => ShardState::new(shard, config.shards, initial_limits()),
    };
    let mut wal = Wal::open(dir.join("wal"), config.wal)?;
    let archive = match &config.archive_dir {
        Some(archive_dir) => Some(wal.set_archive(ArchiveConfig {
            dir: archive_dir.join(format!("shard-{shard:05}")),
            retry_ms: config.archive_retry_ms,
        })?),
        None => None,
    };
    let snapshot_time = state.last_applied().map(|at| (at, state.now_ms()));
    Ok((state, ShardFiles { snapshots, wal, snapshot_time, archive }))
}

/// The peer transport, told where every other configured member listens.
fn start_transport(config: &ClusterConfig) -> Transport {
    let id = config.node_id;
    let transport = Transport::new(
        id,
        TransportConfig {
            frame_bytes_max: config.frame_bytes_max,
            connect_timeout_ms: config.connect_timeout_ms,
            secret: config.secret.clone(),
            idle_timeout_ms: config.peer_idle_timeout_ms,
            requests_in_flight_max: config.peer_requests_in_flight_max,
            connections_incoming_max: config.peer_connections_incoming_max,
            dial: config.dial.iter().map(|m| (m.id, m.addr.clone())).collect(),
            ..TransportConfig::default()
        },
    );
    for member in &config.members {
        if member.id != id {
            transport.set_peer(member.id, member.addr.clone());
        }
    }
    transport
}

/// openraft's settings for every group, from the node's.
fn raft_config(config: &ClusterConfig) -> Result<Arc<openraft::Config>, StartError> {
    let raft_config = openraft::Config {
        cluster_name: "tally".into(),
        heartbeat_interval: config.heartbeat_ms,
        election_timeout_min: config.election_timeout_min_ms,
        election_timeout_max: config.election_timeout_max_ms,
        max_payload_entries: config.append_entries_max,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_after_entries),
        max_in_snapshot_log_to_keep: config.log_entries_kept_after_snapshot,
        snapshot_max_chunk_size: config.snapshot_chunk_bytes as u64,
        install_snapshot_timeout: config.rpc_timeout_ms.max(config.heartbeat_ms),
        // A node whose data directory was wiped comes back with an empty
        // log. Without this, the leader's replication to it panics on
        // the "reverted" log; with it, the leader starts that follower
        // over (log or snapshot). The wiped node also forgot its vote:
        // ARCHITECTURE.md says what that risks and how to avoid it.
        allow_log_reversion: Some(true),
        ..openraft::Config::default()
    };
    Ok(Arc::new(raft_config.validate().map_err(|e| StartError::Raft { shard: 0, reason: e.to_string() })?))
}

/// What starting a group needs beyond the node's config and its shared
/// channels: every shard's actor and thread, the peer router, openraft's
/// settings, the snapshot thread and the ledger's queue. The node keeps it
/// so that a group can start at run time (`hosting`).
pub(super) struct GroupKit {
    actors: Vec<Addr<ShardActor>>,
    arbiters: Vec<ArbiterHandle>,
    router: Router,
    raft_config: Arc<openraft::Config>,
    snapshot_thread: Option<SnapshotThread>,
    ledger_sender: Option<LedgerSender>,
}

impl GroupKit {
    /// `shard`'s actor.
    pub(super) fn actor(&self, shard: u32) -> Option<&Addr<ShardActor>> {
        self.actors.get(shard as usize)
    }
}

/// What every group's start shares.
pub(super) struct GroupContext<'a> {
    pub(super) id: NodeId,
    pub(super) config: &'a ClusterConfig,
    pub(super) kit: &'a GroupKit,
    pub(super) transport: &'a Transport,
    pub(super) events: &'a broadcast::Sender<NodeEvent>,
    pub(super) clock: &'a Clock,
    pub(super) health: &'a Arc<Health>,
    pub(super) event_ring: &'a Arc<EventRing>,
    /// Whether the groups join a shard that runs elsewhere (`hosting`):
    /// until their membership names this node a voter, this node serves
    /// the shard through its voters.
    pub(super) joining: bool,
}

/// One shard's route from this node (`route`) and its forwarder's task;
/// `voters` are where the placement put the shard.
fn start_route(
    config: &ClusterConfig,
    transport: &Transport,
    shard: u32,
    voters: Vec<NodeId>,
) -> (ShardRoute, JoinHandle<()>) {
    let (forwarder, task) = Forwarder::start(
        transport.clone(),
        ForwarderSettings {
            shard,
            batch_size_max: config.batch_size_max,
            in_flight_max: config.entries_in_flight_max,
            queue_max: config.queue_per_shard_max,
            timeout: Duration::from_millis(config.rpc_timeout_ms),
        },
    );
    (ShardRoute::new(forwarder, voters), task)
}

/// Starts one shard's group: its state machine and log store on the
/// shard's files, its log time recovered, its Raft core, proposer and
/// leadership watch on the shard's thread, and the learning of its
/// members' addresses.
pub(super) async fn start_group(
    context: &GroupContext<'_>,
    shard: u32,
    files: ShardFiles,
) -> Result<Arc<Group>, StartError> {
    let ShardFiles { snapshots, wal, snapshot_time, archive } = files;
    let config = context.config;
    let actor = context
        .kit
        .actor(shard)
        .cloned()
        .ok_or_else(|| StartError::Raft { shard, reason: "no actor for the shard".into() })?;
    let is_leader = Arc::new(AtomicBool::new(false));
    let shard_clock = Arc::clone(
        context
            .clock
            .shard(shard)
            .ok_or_else(|| StartError::Raft { shard, reason: "no clock for the shard".into() })?,
    );
    let (deadline_tx, deadline_rx) = watch::channel(None);
    let publisher = Publisher {
        is_leader: Arc::clone(&is_leader),
        events: context.events.clone(),
        ledger: context.kit.ledger_sender.clone(),
        ring: config.follows_placement().then(|| Arc::clone(context.event_ring)),
    };
    let mut state_machine =
        StateMachine::new(shard, actor.clone(), snapshots.clone(), publisher, Arc::new(deadline_tx));
    if let Some(snapshot_thread) = &context.kit.snapshot_thread {
        let shadow =
            Shadow::new(wal.reader(), snapshots, shard, config.shards, initial_limits(), config.append_entries_max);
        state_machine = state_machine.with_shadow(shadow, snapshot_thread.clone());
    }
    let thread = Arc::new(ShardThread::default());
    let shard_health = context.health.shard(shard);
    let state_machine = state_machine.with_thread(Arc::clone(&thread)).with_health(shard_health.clone());
    let state_machine = state_machine.with_clock(Arc::clone(&shard_clock));
    let snapshot_counters = state_machine.counters();
    let log = LogStore::new(wal)
        .with_clock(Arc::clone(&shard_clock), Arc::clone(&is_leader))
        .with_thread(Arc::clone(&thread))
        .with_health(shard_health.clone());
    recover_clock(&log, &shard_clock, snapshot_time)?;
    let core = GroupCore {
        network: GroupNetwork { router: context.kit.router.clone(), group: shard },
        log: log.clone(),
        state_machine,
        settings: ProposerSettings {
            batch_size_max: config.batch_size_max,
            entries_in_flight_max: config.entries_in_flight_max,
            queue_max: config.queue_per_shard_max,
        },
        deadline_rx,
        clock: shard_clock,
        is_leader: Arc::clone(&is_leader),
        thread: Arc::clone(&thread),
        health: shard_health.clone(),
    };
    let (raft, proposer, group_tasks) = start_core(context, shard, core).await?;
    let excluded = Arc::new(AtomicBool::new(context.joining));
    let mut tasks = Vec::from(group_tasks);
    let learn = learn_member_addresses(raft.clone(), context.transport.clone(), Arc::clone(&excluded), context.joining);
    tasks.push(tokio::spawn(learn));
    Ok(Arc::new(Group {
        shard,
        raft,
        proposer,
        actor,
        is_leader,
        log,
        thread,
        snapshot_counters,
        health: shard_health,
        archive,
        excluded,
        tasks: Mutex::new(tasks),
    }))
}

/// Log time resumes from this node's own log (its last batch) or
/// snapshot, never from its wall clock (see `clock`).
fn recover_clock(
    log: &LogStore,
    shard_clock: &ShardClock,
    snapshot_time: Option<(engine::LogId, u64)>,
) -> Result<(), StartError> {
    let last_stamped = log.last_stamped(RECOVER_LOOK_BACK_MAX)?;
    match (last_stamped, snapshot_time) {
        (Some((at, ts_ms)), Some((snapshot_at, snapshot_ms))) => {
            shard_clock.recover(at.max(snapshot_at), ts_ms.max(snapshot_ms))
        }
        (Some((at, ts_ms)), None) | (None, Some((at, ts_ms))) => shard_clock.recover(at, ts_ms),
        // A new shard: log time starts on the wall clock.
        (None, None) => {}
    }
    Ok(())
}

/// What a group's Raft core, proposer and leadership watch start from.
struct GroupCore {
    network: GroupNetwork,
    log: LogStore,
    state_machine: StateMachine,
    settings: ProposerSettings,
    deadline_rx: watch::Receiver<Option<u64>>,
    clock: Arc<ShardClock>,
    is_leader: Arc<AtomicBool>,
    thread: Arc<ShardThread>,
    health: ShardHealth,
}

/// The group's Raft core, its proposer and its leadership watch start on
/// the actor's arbiter, so every task they spawn runs on the shard's
/// thread (DESIGN §10, `shard_thread`).
async fn start_core(
    context: &GroupContext<'_>,
    shard: u32,
    core: GroupCore,
) -> Result<(Raft, Proposer, [JoinHandle<()>; 2]), StartError> {
    let id = context.id;
    let arbiter = context
        .kit
        .arbiters
        .get(shard as usize)
        .cloned()
        .ok_or_else(|| StartError::Raft { shard, reason: "no thread for the shard".into() })?;
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let on_shard_thread = {
        let raft_config = Arc::clone(&context.kit.raft_config);
        let GroupCore { network, log, state_machine, settings, deadline_rx, clock, is_leader, thread, health } = core;
        async move {
            thread.claim();
            let started = match Raft::new(id, raft_config, network, log, state_machine).await {
                Ok(raft) => {
                    let (proposer, proposer_task) = Proposer::start(
                        raft.clone(),
                        settings,
                        Arc::clone(&is_leader),
                        deadline_rx,
                        clock,
                        thread,
                        health.clone(),
                    );
                    let watch_task = tokio::spawn(watch_leadership(raft.clone(), id, is_leader, health));
                    Ok((raft, proposer, [proposer_task, watch_task]))
                }
                Err(error) => Err(error.to_string()),
            };
            let _ = started_tx.send(started);
        }
    };
    if !arbiter.spawn(on_shard_thread) {
        return Err(StartError::Raft { shard, reason: "the shard's thread has stopped".into() });
    }
    started_rx
        .await
        .map_err(|_| StartError::Raft { shard, reason: "the shard's thread stopped while starting".into() })?
        .map_err(|reason| StartError::Raft { shard, reason })
}
