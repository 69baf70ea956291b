//! The node: every shard's Raft group on this process, and the API the
//! server layer calls.
//!
//! * `submit` routes a command to its shard. On the shard's leader it goes to
//!   the proposer; elsewhere it is forwarded to the leader over the peer
//!   connection and the outcome relayed back. Through an election it retries
//!   for a bounded window, always with the same request id, so a command
//!   whose first attempt did commit is never applied twice.
//! * `read` is linearizable: the leader confirms its leadership for a read
//!   index (asked over the peer connection when this node is a follower), and
//!   the local shard actor answers once it has applied up to that index.
//!   `read_stale` answers from local state at once and says so.
//! * Bootstrap: the member preferred for a group (members by id, round
//!   robin) initializes it, once, after asking its peers that none has it.
//!   Restarts resume from the WAL and the newest snapshot. While up, a
//!   preferred leader gets its groups back (rebalancing).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::Addr;
use engine::actor::{Read, ShardActor, ShardPool};
use engine::ids::RequestId;
use engine::snapshot::SnapshotStore;
use engine::wal::{ArchiveConfig, ArchiveStats, EntryFrame, SegmentFile, Wal};
use engine::{Command, Limits, Outcome, ShardState, shard_of};
use openraft::async_runtime::WatchReceiver;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, TransferLeaderRequest, VoteRequest};
use openraft::{ChangeMembers, ReadPolicy, ServerState, SnapshotPolicy};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::config::ClusterConfig;
use crate::error::{AdminError, ProposeError, ReadError, StartError, SubmitError};
use crate::forwarder::{ForwardError, Forwarder, ForwarderSettings};
use crate::health::{FailureCause, Health, ShardFailure, ShardHealth};
use crate::inbound::{Chunk, InboundLimits, InboundSnapshots};
use crate::ledger::Ledger;
use crate::log_store::LogStore;
use crate::network::{GroupNetwork, Router};
use crate::proposer::{Proposer, ProposerSettings, ProposerStats};
use crate::shadow::{Shadow, SnapshotThread};
use crate::shard_thread::ShardThread;
use crate::state_machine::{NodeEvent, Publisher, SnapshotCounters, SnapshotStats, StateMachine};
use crate::transport::{Handler, Transport, TransportConfig, TransportStats};
use crate::types::{
    Entry, MembershipImage, NodeId, PeerNode, Raft, Snapshot, SnapshotMeta, entry_from_frame, log_id_from_engine,
    log_id_to_engine, vote_from_engine, vote_to_engine,
};
use crate::wire::{AdminOp, AppendResult, Request, Response, SnapshotDone};

/// One shard's Raft group on this node.
struct Group {
    shard: u32,
    raft: Raft,
    proposer: Proposer,
    forwarder: Forwarder,
    actor: Addr<ShardActor>,
    is_leader: Arc<AtomicBool>,
    log: LogStore,
    /// The thread the group's write path runs on.
    thread: Arc<ShardThread>,
    /// Snapshots built, fallbacks to the actor, last build time.
    snapshot_counters: Arc<SnapshotCounters>,
    /// Whether the group still runs on this node (see `health`).
    health: ShardHealth,
    /// The log archive's counters, when `archive_dir` is set.
    archive: Option<Arc<ArchiveStats>>,
}

/// What an online backup of one shard copies: its newest snapshot (in
/// `snapshot_dir`) and the WAL segments after it, up to `applied`.
#[derive(Clone, Debug)]
pub struct BackupView {
    pub shard: u32,
    pub snapshot_dir: PathBuf,
    /// The last entry this node applied when asked: in the WAL, and the
    /// index the backup of this shard is taken at.
    pub applied: Option<engine::LogId>,
    /// The live segments, oldest first; the last one is being appended to.
    pub segments: Vec<SegmentFile>,
}

struct Inner {
    id: NodeId,
    config: ClusterConfig,
    transport: Transport,
    groups: Vec<Group>,
    pool: Mutex<Option<ShardPool>>,
    events: broadcast::Sender<NodeEvent>,
    clock: Arc<Clock>,
    /// Request ids: this node's id, a per-boot nonce, a counter.
    request_prefix: [u8; 8],
    request_seq: AtomicU64,
    /// Snapshots being received, bounded (`inbound`).
    inbound: Mutex<InboundSnapshots>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    shut_down: AtomicBool,
    /// Every shard's health on this node.
    health: Arc<Health>,
    /// The movement ledger, if on.
    ledger: Option<Arc<Ledger>>,
}

/// A running node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

/// What a stale read answers: the value and the log position it reflects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale<R> {
    pub value: R,
    pub applied_index: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardStatus {
    pub shard: u32,
    pub leader: Option<NodeId>,
    pub role: String,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    /// On the leader: entries each follower is behind the leader's log.
    pub lag: BTreeMap<NodeId, u64>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// Why the shard stopped on this node, if it did (then `leader` is
    /// `None` and `role` is `"Stopped"`: this node no longer follows it).
    pub failure: Option<ShardFailure>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    pub node_id: NodeId,
    /// Every node named in any group's membership, with its address.
    pub nodes: BTreeMap<NodeId, String>,
    pub shards: Vec<ShardStatus>,
}

/// Counters across the node's shards, for metrics and benchmarks. They only
/// grow (a restart starts them at zero). The histograms are power-of-two
/// buckets (`engine::histogram`: bucket i holds values in `(2^(i-1), 2^i]`,
/// the last one everything above 2^30) summed over the shards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub entries_proposed: u64,
    pub commands_proposed: u64,
    pub ticks_proposed: u64,
    pub fsyncs: u64,
    pub fsync_us_total: u64,
    /// Log entries this node's WALs encoded (entries it wrote as leader).
    pub wal_entries_encoded: u64,
    /// Log entries appended as the leader's frames (entries it replicated).
    pub wal_entries_verbatim: u64,
    /// Log entries read back (to apply or replicate) from memory, and from
    /// disk with a decode.
    pub wal_entries_read_from_memory: u64,
    pub wal_entries_read_from_disk: u64,
    /// Commands per entry this node proposed as leader.
    pub batch_size: engine::histogram::Log2Buckets,
    /// Propose to outcome, per entry this node proposed, in microseconds.
    pub commit_latency_us: engine::histogram::Log2Buckets,
    /// Duration of each WAL sync round (fdatasync of every dirty segment),
    /// in microseconds.
    pub fsync_latency_us: engine::histogram::Log2Buckets,
    /// Per hold expired by an entry this node proposed as leader: the
    /// leader's clock at apply minus the deadline, in milliseconds.
    pub expiry_lag_ms: engine::histogram::Log2Buckets,
    /// Stages of the write path (propose, append, apply, answer) that ran
    /// off their shard's thread: 0 while DESIGN §10's thread model holds.
    pub write_path_off_thread: u64,
    /// Snapshot transfers from leaders in progress here, and the image
    /// bytes they hold (at most `snapshot_size_max` together).
    pub snapshot_transfers_inbound: u64,
    pub snapshot_inbound_bytes: u64,
    /// Inbound snapshot transfers dropped or refused: abandoned for
    /// `snapshot_transfer_idle_timeout_ms`, replaced, evicted for bytes,
    /// beyond `snapshot_transfers_per_peer_max`, out of order.
    pub snapshot_transfers_dropped: u64,
    /// The peer transport's counters (connections, handshakes refused, ...).
    pub peer: TransportStats,
}

/// The limits a shard with no snapshot starts from, on every replica and
/// in every shadow (`shadow`): later ones come through the log
/// (`SetLimits`), since limits shape outcomes.
pub fn initial_limits() -> Limits {
    Limits::default()
}

/// How far back from the end of a shard's log its last batch is looked for
/// at start; blank and membership entries come a few at a time.
const RECOVER_LOOK_BACK_MAX: u64 = 64;
const BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(200);
/// How often abandoned snapshot transfers are looked for: a quarter of
/// their idle timeout, within these.
const SWEEP_EVERY_MIN: Duration = Duration::from_millis(10);
const SWEEP_EVERY_MAX: Duration = Duration::from_secs(1);

/// The bounded retry of `submit`, `read` and admin operations: exponential
/// backoff from 10 ms to 200 ms, for at most `retry_window_ms`.
struct Retry {
    deadline: Instant,
    backoff: Duration,
}

impl Retry {
    fn new(window_ms: u64) -> Self {
        Self { deadline: Instant::now() + Duration::from_millis(window_ms), backoff: BACKOFF_FIRST }
    }

    /// Time left in the window (at least the first backoff).
    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now()).max(BACKOFF_FIRST)
    }

    /// Sleeps before the next attempt; false when the window has no room
    /// left for one, and the caller gives up.
    async fn pause(&mut self) -> bool {
        if Instant::now() + self.backoff > self.deadline {
            return false;
        }
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        true
    }
}

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
        // Protected mode, on the address actually bound (`validate` judged
        // the configured one).
        let bound =
            listener.local_addr().map_err(|source| StartError::Listen { addr: config.listen.clone(), source })?;
        if config.secret.is_none() && !bound.ip().to_canonical().is_loopback() {
            return Err(StartError::Config(format!(
                "the peer port is bound to {bound}, not loopback, and no secret is set: set cluster.secret \
                 (or TALLY_CLUSTER__SECRET) to the same random value on every node"
            )));
        }
        check_identity(&config)?;
        let id = config.node_id;

        // Shard state: the newest snapshot, or empty; the WAL's committed
        // suffix is re-applied by openraft once the group starts.
        let mut states = Vec::with_capacity(config.shards as usize);
        let mut stores = Vec::with_capacity(config.shards as usize);
        let mut wals = Vec::with_capacity(config.shards as usize);
        // Where each shard's log time is recovered from when its log is
        // empty: the snapshot's last entry and log time.
        let mut snapshot_times = Vec::with_capacity(config.shards as usize);
        let mut archives = Vec::with_capacity(config.shards as usize);
        for shard in 0..config.shards {
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
            archives.push(archive);
            wals.push(wal);
            snapshot_times.push(state.last_applied().map(|at| (at, state.now_ms())));
            states.push(state);
            stores.push(snapshots);
        }
        let threads = if config.shard_threads == 0 { ShardPool::default_arbiters() } else { config.shard_threads };
        let pool = ShardPool::start(states, threads).map_err(StartError::Threads)?;

        let transport = Transport::new(
            id,
            TransportConfig {
                frame_size_max: config.frame_size_max,
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
        let router = Router::new(transport.clone(), config.snapshot_chunk_size, config.wal.record_size_max as usize);
        let (events, _) = broadcast::channel(config.event_buffer_max.max(1));
        let clock = Arc::new(Clock::new(config.shards));

        let raft_config = openraft::Config {
            cluster_name: "tally".into(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_timeout_min_ms,
            election_timeout_max: config.election_timeout_max_ms,
            max_payload_entries: config.append_entries_max,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_after_entries),
            max_in_snapshot_log_to_keep: config.log_entries_kept_after_snapshot,
            snapshot_max_chunk_size: config.snapshot_chunk_size as u64,
            install_snapshot_timeout: config.rpc_timeout_ms.max(config.heartbeat_ms),
            // A node whose data directory was wiped comes back with an empty
            // log. Without this, the leader's replication to it panics on
            // the "reverted" log; with it, the leader starts that follower
            // over (log or snapshot). The wiped node also forgot its vote:
            // ARCHITECTURE.md says what that risks and how to avoid it.
            allow_log_reversion: Some(true),
            ..openraft::Config::default()
        };
        let raft_config =
            Arc::new(raft_config.validate().map_err(|e| StartError::Raft { shard: 0, reason: e.to_string() })?);

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
        let mut groups = Vec::with_capacity(config.shards as usize);
        let mut tasks = Vec::new();
        for ((((shard, wal), snapshots), snapshot_time), archive) in
            (0..config.shards).zip(wals).zip(stores).zip(snapshot_times).zip(archives)
        {
            let actor = pool
                .shard(shard)
                .cloned()
                .ok_or_else(|| StartError::Raft { shard, reason: "no actor for the shard".into() })?;
            let is_leader = Arc::new(AtomicBool::new(false));
            let shard_clock = Arc::clone(
                clock
                    .shard(shard)
                    .ok_or_else(|| StartError::Raft { shard, reason: "no clock for the shard".into() })?,
            );
            let (deadline_tx, deadline_rx) = watch::channel(None);
            let publisher =
                Publisher { is_leader: Arc::clone(&is_leader), events: events.clone(), ledger: ledger_sender.clone() };
            let mut state_machine =
                StateMachine::new(shard, actor.clone(), snapshots.clone(), publisher, Arc::new(deadline_tx));
            if let Some(snapshot_thread) = &snapshot_thread {
                let shadow = Shadow::new(
                    wal.reader(),
                    snapshots,
                    shard,
                    config.shards,
                    initial_limits(),
                    config.append_entries_max,
                );
                state_machine = state_machine.with_shadow(shadow, snapshot_thread.clone());
            }
            let thread = Arc::new(ShardThread::default());
            let shard_health = health.shard(shard);
            let state_machine = state_machine.with_thread(Arc::clone(&thread)).with_health(shard_health.clone());
            let state_machine = state_machine.with_clock(Arc::clone(&shard_clock));
            let snapshot_counters = state_machine.counters();
            let log = LogStore::new(wal)
                .with_clock(Arc::clone(&shard_clock), Arc::clone(&is_leader))
                .with_thread(Arc::clone(&thread))
                .with_health(shard_health.clone());
            // Log time resumes from this node's own log (its last batch) or
            // snapshot, never from its wall clock (see `clock`).
            let last_stamped = log.last_stamped(RECOVER_LOOK_BACK_MAX)?;
            match (last_stamped, snapshot_time) {
                (Some((at, ts_ms)), Some((snapshot_at, snapshot_ms))) => {
                    shard_clock.recover(at.max(snapshot_at), ts_ms.max(snapshot_ms))
                }
                (Some((at, ts_ms)), None) | (None, Some((at, ts_ms))) => shard_clock.recover(at, ts_ms),
                // A new shard: log time starts on the wall clock.
                (None, None) => {}
            }
            let network = GroupNetwork { router: router.clone(), group: shard };
            let settings = ProposerSettings {
                batch_size_max: config.batch_size_max,
                entries_in_flight_max: config.entries_in_flight_max,
                queue_max: config.queue_per_shard_max,
            };
            // The group, its proposer and its leadership watch start on the
            // actor's arbiter, so every task they spawn runs on the shard's
            // thread (DESIGN §10, `shard_thread`).
            let arbiter = pool
                .arbiter(shard)
                .cloned()
                .ok_or_else(|| StartError::Raft { shard, reason: "no thread for the shard".into() })?;
            let (started_tx, started_rx) = tokio::sync::oneshot::channel();
            let on_shard_thread = {
                let (raft_config, clock, is_leader, thread, log, shard_health) = (
                    Arc::clone(&raft_config),
                    Arc::clone(&shard_clock),
                    Arc::clone(&is_leader),
                    Arc::clone(&thread),
                    log.clone(),
                    shard_health.clone(),
                );
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
                                shard_health.clone(),
                            );
                            let watch_task = tokio::spawn(watch_leadership(raft.clone(), id, is_leader, shard_health));
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
            let (raft, proposer, group_tasks) = started_rx
                .await
                .map_err(|_| StartError::Raft { shard, reason: "the shard's thread stopped while starting".into() })?
                .map_err(|reason| StartError::Raft { shard, reason })?;
            tasks.extend(group_tasks);
            let (forwarder, forwarder_task) = Forwarder::start(
                transport.clone(),
                ForwarderSettings {
                    shard,
                    batch_size_max: config.batch_size_max,
                    in_flight_max: config.entries_in_flight_max,
                    queue_max: config.queue_per_shard_max,
                    timeout: Duration::from_millis(config.rpc_timeout_ms),
                },
            );
            tasks.push(forwarder_task);
            groups.push(Group {
                shard,
                raft,
                proposer,
                forwarder,
                actor,
                is_leader,
                log,
                thread,
                snapshot_counters,
                health: shard_health,
                archive,
            });
        }

        let mut request_prefix = [0u8; 8];
        request_prefix[..4].copy_from_slice(&u32::try_from(id).unwrap_or(u32::MAX).to_le_bytes());
        // Distinct per boot, so ids from before a restart never repeat.
        let boot = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        request_prefix[4..].copy_from_slice(&(xor_fold(boot) ^ std::process::id()).to_le_bytes());

        let inbound = Mutex::new(InboundSnapshots::new(inbound_limits(&config)));
        let node = Node {
            inner: Arc::new(Inner {
                id,
                config,
                transport: transport.clone(),
                groups,
                pool: Mutex::new(Some(pool)),
                events,
                clock,
                request_prefix,
                request_seq: AtomicU64::new(0),
                inbound,
                tasks: Mutex::new(tasks),
                shut_down: AtomicBool::new(false),
                health: Arc::clone(&health),
                ledger,
            }),
        };
        let serve = transport.serve(listener, Arc::new(Service { node: Arc::downgrade(&node.inner) }));
        node.inner.tasks.lock().push(serve);
        let bootstrap = tokio::spawn(bootstrap(node.clone()));
        node.inner.tasks.lock().push(bootstrap);
        let react = tokio::spawn(react_to_failures(Arc::downgrade(&node.inner), health));
        node.inner.tasks.lock().push(react);
        if node.inner.config.rebalance_interval_ms > 0 {
            let rebalance = tokio::spawn(rebalance(Arc::downgrade(&node.inner)));
            node.inner.tasks.lock().push(rebalance);
        }
        let sweep = tokio::spawn(sweep_inbound_snapshots(Arc::downgrade(&node.inner)));
        node.inner.tasks.lock().push(sweep);
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn shard_count(&self) -> u32 {
        self.inner.config.shards
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    /// This node's log time, one clock per shard over one wall clock (tests
    /// and chaos runs move the wall clock).
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// The peer transport, for fault injection in tests.
    pub fn transport(&self) -> &Transport {
        &self.inner.transport
    }

    /// The shard a command belongs to: its SKU's shard, or the home shard in
    /// its reservation id.
    pub fn shard_for(&self, command: &Command) -> Result<u32, SubmitError> {
        let shards = self.inner.config.shards;
        let shard = match command {
            Command::Confirm(c) => u32::from(c.id.home_shard()),
            Command::ConfirmPart(c) => u32::from(c.id.home_shard()),
            Command::Release(c) => u32::from(c.id.home_shard()),
            Command::Extend(c) => u32::from(c.id.home_shard()),
            other => match other.routing_sku() {
                Some(sku) => shard_of(sku, shards),
                None => return Err(SubmitError::Invalid("this command names no shard; use submit_to".into())),
            },
        };
        if shard >= shards {
            return Err(SubmitError::Invalid(format!("shard {shard} does not exist (shards: {shards})")));
        }
        Ok(shard)
    }

    /// Submits a command to its shard and waits for its outcome.
    pub async fn submit(&self, command: Command) -> Result<Outcome, SubmitError> {
        let shard = self.shard_for(&command)?;
        self.submit_to(shard, command).await
    }

    /// Submits a command to `shard` (e.g. `SetLimits`, which names no SKU).
    pub async fn submit_to(&self, shard: u32, command: Command) -> Result<Outcome, SubmitError> {
        let request_id = self.next_request_id();
        self.submit_with_id(shard, command, request_id).await
    }

    /// Submits with a caller-chosen request id: a retry of the same id is
    /// answered with the first outcome and applied once (within the shard's
    /// dedup window).
    pub async fn submit_with_id(
        &self,
        shard: u32,
        command: Command,
        request_id: RequestId,
    ) -> Result<Outcome, SubmitError> {
        let mut outcomes = self.submit_many_with_ids(shard, vec![command], vec![request_id]).await?;
        // A real check: the lists below are checked where they are split,
        // and a second outcome would belong to someone else.
        match (outcomes.pop(), outcomes.is_empty()) {
            (Some(outcome), true) => Ok(outcome),
            (answered, _) => Err(SubmitError::Unknown {
                shard,
                reason: format!("{} outcomes for one command", outcomes.len() + usize::from(answered.is_some())),
            }),
        }
    }

    /// Submits a list of commands to `shard` as one proposal (one entry,
    /// one fsync, one replication round) and answers their outcomes in
    /// order. Each command is applied on its own (a refusal of one does not
    /// undo the others), once, under its own request id.
    pub async fn submit_many_to(&self, shard: u32, commands: Vec<Command>) -> Result<Vec<Outcome>, SubmitError> {
        let request_ids = commands.iter().map(|_| self.next_request_id()).collect();
        self.submit_many_with_ids(shard, commands, request_ids).await
    }

    /// `submit_many_to` with caller-chosen request ids, retried as
    /// `submit_with_id` is.
    pub async fn submit_many_with_ids(
        &self,
        shard: u32,
        commands: Vec<Command>,
        request_ids: Vec<RequestId>,
    ) -> Result<Vec<Outcome>, SubmitError> {
        if commands.len() != request_ids.len() {
            return Err(SubmitError::Invalid("one request id per command".into()));
        }
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        let group = inner.group(shard).ok_or_else(|| SubmitError::Invalid(format!("shard {shard} does not exist")))?;
        let mut retry = Retry::new(inner.config.retry_window_ms);
        // Whether some attempt may have reached a log; then running out of
        // retries means "unknown", not "not applied".
        let mut maybe_applied: Option<String> = None;
        loop {
            if inner.shut_down.load(Ordering::Acquire) {
                return Err(SubmitError::ShuttingDown);
            }
            if let Some(failure) = group.health.failure() {
                return Err(stopped_submit(maybe_applied, failure));
            }
            let leader = group.raft.current_leader().await;
            let attempt = match leader {
                Some(leader) if leader == inner.id => {
                    // A leader cut off from its majority cannot commit and may
                    // not notice at once: the wait is bounded by the window.
                    let proposal = group.proposer.propose_many(commands.clone(), request_ids.clone());
                    let answer = tokio::time::timeout(retry.remaining(), proposal)
                        .await
                        .unwrap_or_else(|_| Err(ProposeError::Unknown("not committed within the retry window".into())));
                    match answer {
                        Ok(outcome) => return Ok(outcome),
                        Err(ProposeError::Overloaded) => {
                            return Err(SubmitError::Overloaded { shard, retry_after_ms: 100 });
                        }
                        Err(ProposeError::Closed) => return Err(SubmitError::ShuttingDown),
                        Err(ProposeError::NotLeader(_) | ProposeError::Stopped) => None,
                        Err(ProposeError::Unknown(reason)) => Some(reason),
                    }
                }
                Some(leader) => match group.forwarder.forward_many(leader, commands.clone(), request_ids.clone()).await
                {
                    Ok(outcome) => return Ok(outcome),
                    Err(ForwardError::Overloaded) => {
                        return Err(SubmitError::Overloaded { shard, retry_after_ms: 100 });
                    }
                    Err(ForwardError::Closed) => return Err(SubmitError::ShuttingDown),
                    Err(ForwardError::NotLeader) => None,
                    Err(ForwardError::Unknown(reason)) => Some(reason),
                },
                None => None,
            };
            if let Some(reason) = attempt {
                maybe_applied = Some(reason);
            }
            // The shard may have stopped under this attempt: say so now,
            // not after the retry window.
            if let Some(failure) = group.health.failure() {
                return Err(stopped_submit(maybe_applied, failure));
            }
            if !retry.pause().await {
                return Err(match maybe_applied {
                    Some(reason) => SubmitError::Unknown { shard, reason },
                    None => SubmitError::Unavailable { shard, retry_after_ms: inner.config.election_timeout_max_ms },
                });
            }
        }
    }

    /// Reads `shard` linearizably: the answer reflects every write
    /// acknowledged before the read began.
    pub async fn read<R: Send + 'static>(
        &self,
        shard: u32,
        read: impl FnOnce(&ShardState) -> R + Send + 'static,
    ) -> Result<R, ReadError> {
        let inner = &self.inner;
        let group = inner.group(shard).ok_or_else(|| ReadError::Invalid(format!("shard {shard} does not exist")))?;
        if let Some(failure) = group.health.failure() {
            return Err(ReadError::stopped(failure));
        }
        let index = self.read_index(group).await?;
        let timeout = inner.rpc_timeout();
        // Wait until this node has applied what the leader committed.
        if let Some(index) = index
            && group.raft.wait(Some(timeout)).applied_index_at_least(Some(index), "linearizable read").await.is_err()
        {
            return Err(ReadError::Unavailable { shard, retry_after_ms: inner.config.election_timeout_max_ms });
        }
        let answer = group.actor.send(Read::new(read)).await.map_err(|_| ReadError::ShuttingDown)?;
        Ok(answer.0)
    }

    /// Reads this node's copy of `shard` at once. It may be behind the leader.
    pub async fn read_stale<R: Send + 'static>(
        &self,
        shard: u32,
        read: impl FnOnce(&ShardState) -> R + Send + 'static,
    ) -> Result<Stale<R>, ReadError> {
        let group =
            self.inner.group(shard).ok_or_else(|| ReadError::Invalid(format!("shard {shard} does not exist")))?;
        // A stopped copy is no longer kept up (or not to be trusted).
        if let Some(failure) = group.health.failure() {
            return Err(ReadError::stopped(failure));
        }
        let answer = group
            .actor
            .send(Read::new(move |state| {
                let applied_index = state.last_applied().map(|id| id.index);
                (read(state), applied_index)
            }))
            .await
            .map_err(|_| ReadError::ShuttingDown)?;
        let (value, applied_index) = answer.0;
        Ok(Stale { value, applied_index })
    }

    async fn read_index(&self, group: &Group) -> Result<Option<u64>, ReadError> {
        let inner = &self.inner;
        let shard = group.shard;
        let mut retry = Retry::new(inner.config.retry_window_ms);
        loop {
            if inner.shut_down.load(Ordering::Acquire) {
                return Err(ReadError::ShuttingDown);
            }
            if let Some(failure) = group.health.failure() {
                return Err(ReadError::stopped(failure));
            }
            match group.raft.current_leader().await {
                Some(leader) if leader == inner.id => {
                    let confirm = group.raft.ensure_linearizable(ReadPolicy::ReadIndex);
                    if let Ok(Ok(read)) = tokio::time::timeout(inner.rpc_timeout(), confirm).await {
                        return Ok(Some(read.index()));
                    }
                }
                Some(leader) => {
                    let request = Request::ReadIndex { group: shard };
                    if let Ok(Response::ReadIndex { index }) =
                        inner.transport.call(leader, &request, inner.rpc_timeout()).await
                    {
                        return Ok(index);
                    }
                }
                None => {}
            }
            if !retry.pause().await {
                return Err(ReadError::Unavailable { shard, retry_after_ms: inner.config.election_timeout_max_ms });
            }
        }
    }

    /// Every event this node applies, named and marked with whether this node
    /// led the shard, in log order per shard. A subscriber that falls `event_buffer_max` behind misses events
    /// (it sees `Lagged`) rather than slowing the shards.
    /// The movement ledger of this node, if `ledger.enabled`.
    pub fn ledger(&self) -> Option<&Arc<Ledger>> {
        self.inner.ledger.as_ref()
    }

    pub fn events(&self) -> broadcast::Receiver<NodeEvent> {
        self.inner.events.subscribe()
    }

    /// Nodes, and per shard: leader, term, indexes and follower lag.
    pub fn status(&self) -> ClusterStatus {
        let mut nodes = BTreeMap::new();
        let mut shards = Vec::with_capacity(self.inner.groups.len());
        for group in &self.inner.groups {
            let metrics = group.raft.metrics().borrow_watched().clone();
            let membership = metrics.membership_config.membership();
            for (id, node) in membership.nodes() {
                nodes.insert(*id, node.addr.clone());
            }
            let last = metrics.last_log_index.unwrap_or(0);
            let lag = metrics
                .replication
                .as_ref()
                .map(|replication| {
                    replication
                        .iter()
                        .map(|(id, matched)| (*id, last.saturating_sub(matched.as_ref().map_or(0, |m| m.index))))
                        .collect()
                })
                .unwrap_or_default();
            let failure = group.health.failure();
            shards.push(ShardStatus {
                shard: group.shard,
                leader: if failure.is_some() { None } else { metrics.current_leader },
                role: if failure.is_some() { "Stopped".to_owned() } else { format!("{:?}", metrics.state) },
                term: metrics.current_term,
                last_log_index: metrics.last_log_index,
                committed_index: metrics.local_committed.as_ref().map(|id| id.index),
                applied_index: metrics.last_applied.as_ref().map(|id| id.index),
                snapshot_index: metrics.snapshot.as_ref().map(|id| id.index),
                purged_index: metrics.purged.as_ref().map(|id| id.index),
                lag,
                voters: membership.voter_ids().collect(),
                learners: membership.learner_ids().collect(),
                failure,
            });
        }
        ClusterStatus { node_id: self.inner.id, nodes, shards }
    }

    /// The shards that stopped on this node, and why (see `health`). Empty
    /// while every shard runs.
    pub fn failures(&self) -> Vec<ShardFailure> {
        self.inner.health.failures()
    }

    /// Stops `shard` on this node because a check outside the cluster layer
    /// found its state broken (a read that met a corrupt lookup): the same
    /// stop as a failed WAL or a failed state check (see `health`).
    pub fn stop_shard(&self, shard: u32, detail: impl Into<String>) {
        if let Some(group) = self.inner.group(shard) {
            group.health.fail(FailureCause::InvariantBroken, detail);
        }
    }

    /// Test hook: the next fsync of `shard`'s WAL fails with EIO, as on a
    /// failing disk (`fault-injection` builds only).
    #[cfg(feature = "fault-injection")]
    pub fn inject_fsync_failure(&self, shard: u32) {
        if let Some(group) = self.inner.group(shard) {
            group.log.fail_next_sync();
        }
    }

    /// Test hook: breaks `shard`'s state on this node, as a bug would
    /// (`engine::actor::BreakInvariant`): the next snapshot built by the
    /// actor, or the next lookup of the broken name, finds it
    /// (`fault-injection` builds only).
    #[cfg(feature = "fault-injection")]
    pub async fn inject_broken_invariant(&self, shard: u32, how: engine::actor::BreakInvariant) {
        if let Some(group) = self.inner.group(shard) {
            let _ = group.actor.send(how).await;
        }
    }

    /// Counters summed over this node's shards.
    pub fn stats(&self) -> NodeStats {
        let mut stats = NodeStats::default();
        for group in &self.inner.groups {
            let proposer: &ProposerStats = &group.proposer.stats;
            stats.entries_proposed += proposer.entries.load(Ordering::Relaxed);
            stats.commands_proposed += proposer.commands.load(Ordering::Relaxed);
            stats.ticks_proposed += proposer.ticks.load(Ordering::Relaxed);
            stats.batch_size.merge(&proposer.batch_size.snapshot());
            stats.commit_latency_us.merge(&proposer.commit_latency_us.snapshot());
            stats.expiry_lag_ms.merge(&proposer.expiry_lag_ms.snapshot());
            let wal = group.log.wal_stats();
            stats.fsyncs += wal.syncs;
            stats.fsync_us_total += wal.sync_us_total;
            stats.wal_entries_encoded += wal.entries_encoded;
            stats.wal_entries_verbatim += wal.entries_verbatim;
            stats.wal_entries_read_from_memory += wal.entries_read_from_memory;
            stats.wal_entries_read_from_disk += wal.entries_read_from_disk;
            stats.fsync_latency_us.merge(&wal.sync_latency_us);
            stats.write_path_off_thread += group.thread.off_thread();
        }
        let inbound = self.inner.inbound.lock().stats();
        stats.snapshot_transfers_inbound = inbound.transfers;
        stats.snapshot_inbound_bytes = inbound.bytes;
        stats.snapshot_transfers_dropped = inbound.dropped;
        stats.peer = self.inner.transport.stats();
        stats
    }

    /// Per shard: snapshots this node built, fallbacks from the shadow to
    /// the actor, and how long the last build took.
    pub fn snapshot_stats(&self) -> Vec<SnapshotStats> {
        self.inner.groups.iter().map(|group| group.snapshot_counters.stats(group.shard)).collect()
    }

    /// Live holds summed over this node's copy of every shard. Every replica
    /// applies the same holds, so this is the cluster's count as far as this
    /// node has applied, not a share of it. A shard actor answers between
    /// applies, so this may wait behind them: `None` when some shard does
    /// not answer within `timeout`.
    pub async fn live_holds(&self, timeout: Duration) -> Option<u64> {
        let reads = self.inner.groups.iter().map(|group| group.actor.send(Read::new(|state| state.stats().live_holds)));
        let answers = tokio::time::timeout(timeout, futures_util::future::join_all(reads)).await.ok()?;
        answers.into_iter().map(|answer| answer.ok().map(|answer| answer.0)).sum()
    }

    /// State digest of each shard as this node has applied it, with the
    /// applied index (replicas that applied the same log agree).
    pub async fn digests(&self) -> Result<Vec<(Option<u64>, u128)>, ReadError> {
        let mut digests = Vec::with_capacity(self.inner.groups.len());
        for group in &self.inner.groups {
            let answer = group
                .actor
                .send(Read::new(|state| (state.last_applied().map(|id| id.index), state.digest())))
                .await
                .map_err(|_| ReadError::ShuttingDown)?;
            digests.push(answer.0);
        }
        Ok(digests)
    }

    /// Per shard: what an online backup copies (`BackupView`). Asks each
    /// actor for its applied id, a message that costs the shard nothing
    /// more than a read.
    pub async fn backup_views(&self) -> Result<Vec<BackupView>, ReadError> {
        let mut views = Vec::with_capacity(self.inner.groups.len());
        for group in &self.inner.groups {
            let answer =
                group.actor.send(Read::new(|state| state.last_applied())).await.map_err(|_| ReadError::ShuttingDown)?;
            views.push(BackupView {
                shard: group.shard,
                snapshot_dir: shard_dir(&self.inner.config.data_dir, group.shard).join("snapshots"),
                applied: answer.0,
                segments: group.log.wal_reader().segment_files(),
            });
        }
        Ok(views)
    }

    /// Per shard: the log archive's counters (`None` without `archive_dir`).
    pub fn archive_stats(&self) -> Vec<Option<Arc<ArchiveStats>>> {
        self.inner.groups.iter().map(|group| group.archive.clone()).collect()
    }

    /// Adds `node` (at `addr`) to every group as a learner and waits until
    /// each has caught up. Admin operation; never automatic.
    pub async fn add_learner(&self, node: NodeId, addr: String) -> Result<(), AdminError> {
        if node == 0 {
            return Err(AdminError::Invalid("node ids start at 1".into()));
        }
        self.inner.transport.set_peer(node, addr.clone());
        self.admin_all(AdminOp::AddLearner { node, addr }).await
    }

    /// Makes `voters` the voter set of every group (joint consensus inside
    /// openraft). With `retain`, removed voters stay as learners.
    pub async fn change_voters(&self, voters: Vec<NodeId>, retain: bool) -> Result<(), AdminError> {
        if voters.is_empty() {
            return Err(AdminError::Invalid("a group needs at least one voter".into()));
        }
        self.admin_all(AdminOp::ChangeVoters { voters, retain }).await
    }

    /// Removes `node` from every group: from the voters, then as a learner.
    pub async fn remove_node(&self, node: NodeId) -> Result<(), AdminError> {
        for group in &self.inner.groups {
            let metrics = group.raft.metrics().borrow_watched().clone();
            let voters: Vec<NodeId> =
                metrics.membership_config.membership().voter_ids().filter(|id| *id != node).collect();
            if voters.is_empty() {
                return Err(AdminError::Invalid(format!("removing {node} would leave shard {} no voter", group.shard)));
            }
            self.admin_one(group.shard, AdminOp::ChangeVoters { voters, retain: false }).await?;
        }
        Ok(())
    }

    async fn admin_all(&self, op: AdminOp) -> Result<(), AdminError> {
        for shard in 0..self.inner.config.shards {
            self.admin_one(shard, op.clone()).await?;
        }
        Ok(())
    }

    async fn admin_one(&self, shard: u32, op: AdminOp) -> Result<(), AdminError> {
        let inner = &self.inner;
        let group = inner.group(shard).ok_or_else(|| AdminError::Invalid(format!("shard {shard} does not exist")))?;
        let mut retry = Retry::new(inner.config.retry_window_ms);
        loop {
            match group.raft.current_leader().await {
                Some(leader) if leader == inner.id => {
                    return apply_admin(&group.raft, op).await.map_err(|reason| AdminError::Failed { shard, reason });
                }
                Some(leader) => {
                    let request = Request::Admin { group: shard, op: op.clone() };
                    // Catching a learner up can take a while: a longer timeout.
                    match inner.transport.call(leader, &request, inner.rpc_timeout() * 15).await {
                        Ok(Response::AdminDone) => return Ok(()),
                        Ok(Response::Refused(reason)) => return Err(AdminError::Failed { shard, reason }),
                        _ => {}
                    }
                }
                None => {}
            }
            if !retry.pause().await {
                return Err(AdminError::Unavailable { shard });
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
        inner.transport.shutdown();
        for task in inner.tasks.lock().drain(..) {
            task.abort();
        }
        for group in &inner.groups {
            let _ = group.raft.shutdown().await;
        }
        let pool = inner.pool.lock().take();
        if let Some(pool) = pool {
            // Joining the actor threads blocks; keep it off the runtime's workers.
            let _ = tokio::task::spawn_blocking(move || pool.stop()).await;
        }
    }

    fn next_request_id(&self) -> RequestId {
        let seq = self.inner.request_seq.fetch_add(1, Ordering::Relaxed);
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.inner.request_prefix);
        bytes[8..].copy_from_slice(&seq.to_le_bytes());
        RequestId(bytes)
    }
}

fn xor_fold(value: u128) -> u32 {
    let mut folded = 0u32;
    for chunk in value.to_le_bytes().chunks(4) {
        let mut word = [0u8; 4];
        word.copy_from_slice(chunk);
        folded ^= u32::from_le_bytes(word);
    }
    folded
}

impl Inner {
    fn group(&self, shard: u32) -> Option<&Group> {
        self.groups.get(shard as usize)
    }

    fn rpc_timeout(&self) -> Duration {
        Duration::from_millis(self.config.rpc_timeout_ms)
    }
}

async fn apply_admin(raft: &Raft, op: AdminOp) -> Result<(), String> {
    match op {
        AdminOp::AddLearner { node, addr } => {
            raft.add_learner(node, PeerNode { addr }, true).await.map(|_| ()).map_err(|e| e.to_string())
        }
        AdminOp::ChangeVoters { voters, retain } => {
            let voters: BTreeSet<NodeId> = voters.into_iter().collect();
            raft.change_membership(ChangeMembers::ReplaceAllVoters(voters), retain)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    }
}

/// Keeps `is_leader` true exactly while this node leads the group, and
/// records a group whose core stopped on its own (openraft stops it on any
/// storage error, and on a panic) as failed, if nothing recorded why first.
async fn watch_leadership(raft: Raft, id: NodeId, is_leader: Arc<AtomicBool>, health: ShardHealth) {
    let mut metrics = raft.metrics();
    loop {
        let (leading, stopped) = {
            let m = metrics.borrow_and_update();
            (m.state == ServerState::Leader && m.current_leader == Some(id), m.running_state.clone().err())
        };
        is_leader.store(leading && !health.is_failed(), Ordering::Release);
        let closed = metrics.changed().await.is_err();
        let stopped = stopped.or_else(|| metrics.borrow_watched().running_state.clone().err());
        if let Some(fatal) = stopped {
            is_leader.store(false, Ordering::Release);
            if !matches!(fatal, openraft::error::Fatal::Stopped) {
                health.fail(FailureCause::RaftStopped, format!("the group's raft core stopped: {fatal}"));
            }
            return;
        }
        if closed {
            is_leader.store(false, Ordering::Release);
            return;
        }
    }
}

/// What a submit answers once its shard stopped: unknown if an attempt may
/// have reached the log before the stop (it may still commit through the
/// other nodes, or after a restart), else "stopped", which applied nothing.
fn stopped_submit(maybe_applied: Option<String>, failure: ShardFailure) -> SubmitError {
    match maybe_applied {
        Some(reason) => SubmitError::Unknown { shard: failure.shard, reason: format!("{reason}; then {failure}") },
        None => SubmitError::stopped(failure),
    }
}

/// Reacts to each shard that stops on this node (`health`), once: stops its
/// Raft core, so the node appends, acknowledges and votes nothing more for
/// it, and if this node led it, hands the leadership to the most caught-up
/// other voter (`hand_over`), so the others serve it without waiting out an
/// election timeout.
async fn react_to_failures(inner: std::sync::Weak<Inner>, health: Arc<Health>) {
    let mut handled: BTreeSet<u32> = BTreeSet::new();
    loop {
        health.changed().await;
        if health.is_closed() {
            return;
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        for failure in health.failures() {
            if !handled.insert(failure.shard) {
                continue;
            }
            let Some(group) = inner.group(failure.shard) else {
                continue;
            };
            group.is_leader.store(false, Ordering::Release);
            let _ = group.raft.shutdown().await;
            hand_over(&inner, group).await;
        }
    }
}

/// After `group`'s core stopped on this node: if it led the group, asks the
/// other voters to elect the most caught-up of them at once. openraft's
/// own `transfer_leader` needs a running core; this sends the same request
/// it would (`TransferLeader`), from the last view the core published: every
/// voter drops the old leader's lease, and the target, once its log holds
/// what this node saw it match, starts an election. Raft's vote still
/// decides: a target missing committed entries cannot win. Without this the
/// others elect a leader anyway, one election timeout later.
async fn hand_over(inner: &Inner, group: &Group) {
    let metrics = group.raft.metrics().borrow_watched().clone();
    if metrics.current_leader != Some(inner.id) {
        return;
    }
    let others: Vec<NodeId> =
        metrics.membership_config.membership().voter_ids().filter(|voter| *voter != inner.id).collect();
    let matched =
        |voter: &NodeId| metrics.replication.as_ref().and_then(|replication| replication.get(voter).cloned()).flatten();
    let Some(target) = others.iter().copied().max_by_key(|voter| matched(voter).map(|log_id| log_id.index)) else {
        return;
    };
    let request = Request::TransferLeader {
        group: group.shard,
        from_leader: vote_to_engine(&metrics.vote),
        to: target,
        last_log_id: matched(&target).as_ref().map(log_id_to_engine),
    };
    tracing::warn!(shard = group.shard, to = target, "handing the stopped shard's leadership to another voter");
    let calls = others.iter().map(|voter| inner.transport.call(*voter, &request, inner.rpc_timeout()));
    for (voter, answer) in others.iter().zip(futures_util::future::join_all(calls).await) {
        match answer {
            Ok(Response::TransferLeader(Ok(()))) => {}
            other => tracing::warn!(shard = group.shard, voter, ?other, "leadership hand-over not taken"),
        }
    }
}

/// Initializes the groups this node is preferred for, unless a peer already
/// has them (this node's data was wiped: it must rejoin, not start anew).
async fn bootstrap(node: Node) {
    let inner = &node.inner;
    let members: BTreeMap<NodeId, PeerNode> =
        inner.config.members.iter().map(|m| (m.id, PeerNode { addr: m.addr.clone() })).collect();
    if !members.contains_key(&inner.id) {
        return;
    }
    let voters: Vec<NodeId> = members.keys().copied().collect();
    for group in &inner.groups {
        if ClusterConfig::preferred_leader(&voters, group.shard) != Some(inner.id) {
            continue;
        }
        if group.raft.is_initialized().await.unwrap_or(true) {
            continue;
        }
        let mut known_elsewhere = false;
        for peer in voters.iter().filter(|peer| **peer != inner.id) {
            let probe = Request::Probe { group: group.shard };
            if let Ok(Response::Probe { initialized: true }) =
                inner.transport.call(*peer, &probe, inner.rpc_timeout()).await
            {
                known_elsewhere = true;
                break;
            }
        }
        if known_elsewhere {
            tracing::info!(shard = group.shard, "group exists on a peer; waiting to be caught up");
            continue;
        }
        if let Err(error) = group.raft.initialize(members.clone()).await {
            tracing::warn!(shard = group.shard, %error, "initialize failed");
        }
    }
}

/// Hands each group back to its preferred leader when that node is a caught
/// up voter, so leaders stay spread after a node returns.
async fn rebalance(inner: std::sync::Weak<Inner>) {
    let interval = match inner.upgrade() {
        Some(inner) => Duration::from_millis(inner.config.rebalance_interval_ms),
        None => return,
    };
    loop {
        tokio::time::sleep(interval).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        for group in &inner.groups {
            if !group.is_leader.load(Ordering::Acquire) {
                continue;
            }
            let metrics = group.raft.metrics().borrow_watched().clone();
            let voters: Vec<NodeId> = metrics.membership_config.membership().voter_ids().collect();
            let Some(preferred) = ClusterConfig::preferred_leader(&voters, group.shard) else {
                continue;
            };
            if preferred == inner.id {
                continue;
            }
            let last = metrics.last_log_index.unwrap_or(0);
            let caught_up = metrics
                .replication
                .as_ref()
                .and_then(|replication| replication.get(&preferred).cloned())
                .flatten()
                .is_some_and(|matched| last.saturating_sub(matched.index) <= 16);
            // And it answers: a node whose copy of the group stopped (its
            // WAL failed) matches for a while after it stopped answering,
            // and a hand-over to it would leave the group leaderless until
            // the next election, again and again.
            let answer_max = Duration::from_millis(inner.config.election_timeout_min_ms);
            let answering = metrics
                .heartbeat
                .as_ref()
                .and_then(|heartbeat| heartbeat.get(&preferred).cloned())
                .flatten()
                .is_some_and(|acked| openraft::Instant::elapsed(&*acked) <= answer_max);
            if caught_up && answering {
                tracing::info!(shard = group.shard, to = preferred, "handing leadership to its preferred node");
                let _ = group.raft.trigger().transfer_leader(preferred).await;
            }
        }
    }
}

/// Answers peers' requests.
struct Service {
    node: std::sync::Weak<Inner>,
}

impl Handler for Service {
    fn handle(
        &self,
        from: NodeId,
        request: Request,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send + 'static>> {
        let node = self.node.clone();
        Box::pin(async move {
            let Some(inner) = node.upgrade() else {
                return Response::Unavailable("node is shutting down".into());
            };
            if inner.shut_down.load(Ordering::Acquire) {
                return Response::Unavailable("node is shutting down".into());
            }
            let shard = request.group();
            let Some(group) = inner.group(shard) else {
                return Response::Refused(format!("shard {shard} does not exist here"));
            };
            serve(&inner, group, from, request).await
        })
    }

    /// A node this one knows: a configured member, a voter or learner of
    /// any group's membership, or a peer the transport was told about (an
    /// added learner, a dial address). A node whose groups have no
    /// membership yet (waiting to be added) knows only its configured
    /// members; its first leader must be among them.
    fn admits(&self, peer: NodeId) -> bool {
        let Some(inner) = self.node.upgrade() else {
            return false;
        };
        if peer == inner.id {
            return false;
        }
        if inner.config.members.iter().chain(&inner.config.dial).any(|member| member.id == peer)
            || inner.transport.knows_peer(peer)
        {
            return true;
        }
        inner.groups.iter().any(|group| {
            let metrics = group.raft.metrics();
            let metrics = metrics.borrow_watched();
            metrics.membership_config.membership().nodes().any(|(id, _)| *id == peer)
        })
    }
}

async fn serve(inner: &Arc<Inner>, group: &Group, from: NodeId, request: Request) -> Response {
    let raft = &group.raft;
    match request {
        Request::AppendEntries { vote, prev_log_id, frames, leader_commit, .. } => {
            let record_size_max = inner.config.wal.record_size_max as usize;
            let entries: Result<Vec<_>, _> = frames
                .into_iter()
                .map(|frame| entry_from_frame(EntryFrame::from_received(frame), record_size_max))
                .collect();
            let entries = match entries {
                Ok(entries) => entries,
                Err(error) => return Response::Refused(error.to_string()),
            };
            if let Err(reason) = check_append_follows(prev_log_id, &entries) {
                return Response::Refused(reason);
            }
            let rpc = AppendEntriesRequest {
                vote: vote_from_engine(vote),
                prev_log_id: prev_log_id.map(log_id_from_engine),
                entries,
                leader_commit: leader_commit.map(log_id_from_engine),
            };
            match raft.append_entries(rpc).await {
                Ok(response) => Response::AppendEntries(match response {
                    AppendEntriesResponse::Success => AppendResult::Success,
                    AppendEntriesResponse::PartialSuccess(last) => {
                        AppendResult::PartialSuccess(last.as_ref().map(log_id_to_engine))
                    }
                    AppendEntriesResponse::Conflict => AppendResult::Conflict,
                    AppendEntriesResponse::HigherVote(vote) => AppendResult::HigherVote(vote_to_engine(&vote)),
                }),
                Err(error) => Response::Unavailable(error.to_string()),
            }
        }
        Request::Vote { pre_vote, vote, last_log_id, leadership_transfer, .. } => {
            let rpc = VoteRequest {
                vote: vote_from_engine(vote),
                last_log_id: last_log_id.map(log_id_from_engine),
                leadership_transfer,
            };
            let answer = if pre_vote { raft.pre_vote(rpc).await } else { raft.vote(rpc).await };
            match answer {
                Ok(response) => Response::Vote {
                    vote: vote_to_engine(&response.vote),
                    vote_granted: response.vote_granted,
                    last_log_id: response.last_log_id.as_ref().map(log_id_to_engine),
                },
                Err(error) => Response::Unavailable(error.to_string()),
            }
        }
        Request::SnapshotChunk { group: shard, transfer, offset, data, done } => {
            receive_snapshot_chunk(inner, raft, from, shard, transfer, offset, data, done).await
        }
        Request::TransferLeader { from_leader, to, last_log_id, .. } => {
            let request =
                TransferLeaderRequest::new(vote_from_engine(from_leader), to, last_log_id.map(log_id_from_engine));
            match raft.handle_transfer_leader(request).await {
                Ok(Ok(())) => Response::TransferLeader(Ok(())),
                Ok(Err(error)) => Response::TransferLeader(Err(error.to_string())),
                Err(error) => Response::Unavailable(error.to_string()),
            }
        }
        Request::Submit { commands, request_ids, .. } => {
            if commands.len() != request_ids.len() {
                return Response::Refused("one request id per command".into());
            }
            // One list, one entry (with whatever else is queued): a
            // follower's forwarded batch costs the leader one proposal.
            match group.proposer.propose_many(commands, request_ids).await {
                Ok(outcomes) => Response::Submitted(outcomes),
                Err(ProposeError::NotLeader(_)) => Response::NotLeader { leader: raft.current_leader().await },
                // Stopped here: nothing proposed; the caller finds the new leader.
                Err(ProposeError::Stopped) => Response::NotLeader { leader: None },
                Err(ProposeError::Overloaded) => Response::Overloaded,
                Err(ProposeError::Closed) => Response::Unavailable("node is shutting down".into()),
                // The entry may commit yet: the caller retries under the same
                // request ids (applied once).
                Err(ProposeError::Unknown(reason)) => Response::Unknown(reason),
            }
        }
        Request::ReadIndex { .. } => {
            if group.health.is_failed() {
                return Response::NotLeader { leader: None };
            }
            if !group.is_leader.load(Ordering::Acquire) {
                return Response::NotLeader { leader: raft.current_leader().await };
            }
            let confirm = raft.ensure_linearizable(ReadPolicy::ReadIndex);
            match tokio::time::timeout(inner.rpc_timeout(), confirm).await {
                Ok(Ok(read)) => Response::ReadIndex { index: Some(read.index()) },
                _ => Response::NotLeader { leader: raft.current_leader().await },
            }
        }
        Request::Admin { op, .. } => {
            if !group.is_leader.load(Ordering::Acquire) {
                return Response::NotLeader { leader: raft.current_leader().await };
            }
            match apply_admin(raft, op).await {
                Ok(()) => Response::AdminDone,
                Err(reason) => Response::Refused(reason),
            }
        }
        Request::Probe { .. } => Response::Probe { initialized: raft.is_initialized().await.unwrap_or(false) },
    }
}

/// The shape openraft assumes of an append and does not check: entries one
/// index apart from just after `prev_log_id`, terms never falling. A peer
/// that breaks it tripped an assertion in openraft's core (a debug build)
/// or had the WAL refuse the write, a storage error that stops the group
/// (a release build); it is refused here instead, like any bad request.
fn check_append_follows(prev_log_id: Option<engine::log::LogId>, entries: &[Entry]) -> Result<(), String> {
    let mut last = prev_log_id;
    for entry in entries {
        let log_id = log_id_to_engine(&entry.log_id);
        let expected = match last {
            None => Some(0),
            Some(last) => last.index.checked_add(1),
        };
        if Some(log_id.index) != expected || last.is_some_and(|last| log_id.term < last.term) {
            return Err(format!("entry {log_id:?} does not follow {last:?}"));
        }
        last = Some(log_id);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn receive_snapshot_chunk(
    inner: &Arc<Inner>,
    raft: &Raft,
    from: NodeId,
    shard: u32,
    transfer: u64,
    offset: u64,
    data: Vec<u8>,
    done: Option<SnapshotDone>,
) -> Response {
    let last = done.is_some();
    let chunk = inner.inbound.lock().receive(from, shard, transfer, offset, data, last, Instant::now());
    let image = match chunk {
        Chunk::Stored => return Response::SnapshotChunkStored,
        Chunk::Refused(reason) => return Response::Refused(reason),
        Chunk::Complete(image) => image,
    };
    let Some(done) = done else {
        return Response::SnapshotChunkStored; // `last` was false: not reached
    };
    if image.len() as u64 != done.total_len {
        return Response::Refused(format!("snapshot is {} bytes, expected {}", image.len(), done.total_len));
    }
    // openraft treats a snapshot its state machine cannot install as a
    // storage failure and stops the group: a damaged image (a buggy leader,
    // or bytes altered on the path, which frames do not authenticate) must
    // be refused here, before it gets there. It is decoded twice.
    let (image, checked) = match tokio::task::spawn_blocking(move || {
        let checked = SnapshotStore::check_image(&image);
        (image, checked)
    })
    .await
    {
        Ok(checked) => checked,
        Err(error) => return Response::Unavailable(format!("checking the snapshot: {error}")),
    };
    match checked {
        Err(error) => return Response::Refused(error.to_string()),
        Ok(meta) if meta.shard != shard || meta.last_applied != done.last_log_id => {
            return Response::Refused(format!(
                "snapshot of shard {} at {:?} offered to shard {shard} as {:?}",
                meta.shard, meta.last_applied, done.last_log_id
            ));
        }
        Ok(_) => {}
    }
    let membership = if done.membership.is_empty() {
        openraft::StoredMembership::default()
    } else {
        match MembershipImage::decode(&done.membership) {
            Ok(membership) => {
                openraft::StoredMembership::new(done.membership_log_id.map(log_id_from_engine), membership)
            }
            Err(error) => return Response::Refused(error.to_string()),
        }
    };
    let meta = SnapshotMeta { last_log_id: done.last_log_id.map(log_id_from_engine), last_membership: membership };
    let snapshot = Snapshot { meta, snapshot: image };
    match raft.install_full_snapshot(vote_from_engine(done.vote), snapshot).await {
        Ok(response) => Response::SnapshotInstalled { vote: vote_to_engine(&response.vote) },
        Err(error) => Response::Unavailable(error.to_string()),
    }
}

/// The bounds on snapshots being received, from the node's settings.
fn inbound_limits(config: &ClusterConfig) -> InboundLimits {
    InboundLimits {
        per_peer_max: config.snapshot_transfers_per_peer_max.max(1),
        bytes_max: config.snapshot_size_max,
        idle_timeout: Duration::from_millis(config.snapshot_transfer_idle_timeout_ms.max(1)),
    }
}

/// Drops abandoned snapshot transfers even when no chunk arrives to do it,
/// a few times per idle timeout, until the node goes.
async fn sweep_inbound_snapshots(node: std::sync::Weak<Inner>) {
    let every = {
        let Some(inner) = node.upgrade() else { return };
        (inbound_limits(&inner.config).idle_timeout / 4).clamp(SWEEP_EVERY_MIN, SWEEP_EVERY_MAX)
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = node.upgrade() else { return };
        if inner.shut_down.load(Ordering::Acquire) {
            return;
        }
        inner.inbound.lock().expire(Instant::now());
    }
}
