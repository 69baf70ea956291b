//! A shard's proposer: gathers commands from many callers into one log entry.
//!
//! There is no timer and no sleep. A command waits in the shard's bounded
//! queue only while `entries_in_flight_max` entries are already on their way
//! (appended, replicated, applied); when a slot frees, everything queued (up
//! to `batch_size_max`) becomes the next entry. So under light load an entry
//! carries one command and commits at once, and under heavy load entries grow
//! by themselves to amortise the fsync and the replication round.
//!
//! Each entry is stamped with the shard's log time on this node (`clock`;
//! `apply` keeps log time from going back across leaders). When a hold
//! deadline falls due and nothing else flows,
//! the proposer writes a `Tick`, so holds expire on time without traffic.
//!
//! The proposer also keeps the counters of the write path (`ProposerStats`):
//! batch sizes, commit latency, and expiry lag. Expiry lag is measured here
//! rather than in the state machine because the proposer has what it needs
//! at hand: it runs only on the leader, it holds the clock that stamps log
//! time (offset included), and each entry's `Applied`, with its
//! `ReservationExpired` events, comes back to it microseconds after the
//! apply. Entries a previous leader proposed and this one committed are the
//! gap; they are few and only right after an election.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use engine::histogram::Log2Histogram;
use engine::ids::RequestId;
use engine::{Batch, Command, Event, EventKind, Outcome};
use openraft::async_runtime::WatchReceiver;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::clock::ShardClock;
use crate::error::ProposeError;
use crate::health::{FailureCause, ShardHealth};
use crate::raft_types::{LogBatch, Raft};
use crate::shard_thread::ShardThread;

/// Counters for metrics and benchmarks. All are relaxed atomics, written
/// by the proposer task and its entries' completions, never under a lock.
/// The histograms use `engine::histogram`'s power-of-two buckets.
#[derive(Debug, Default)]
pub struct ProposerStats {
    /// Entries of commands proposed (ticks not included).
    pub entries: AtomicU64,
    pub commands: AtomicU64,
    pub ticks: AtomicU64,
    /// Commands per entry, one value per entry proposed.
    pub batch_size: Log2Histogram,
    /// From handing an entry to Raft to its outcomes coming back (fsynced on
    /// a majority and applied here), in microseconds, per committed entry.
    /// Time queued before the entry was formed is not included.
    pub commit_latency_us: Log2Histogram,
    /// Per expired hold: this node's clock when the entry that expired it
    /// was applied, minus the hold's deadline, in milliseconds.
    pub expiry_lag_ms: Log2Histogram,
}

impl ProposerStats {
    /// Records the expiry lag of every hold `events` expired. The clock is
    /// read once per entry, and only if it expired something.
    fn record_expiries(&self, clock: &ShardClock, events: &[Event]) {
        let mut now_ms = None;
        for event in events {
            if let EventKind::ReservationExpired { deadline_ms, .. } = event.kind {
                let now_ms = *now_ms.get_or_insert_with(|| clock.now_ms());
                self.expiry_lag_ms.record(now_ms.saturating_sub(deadline_ms));
            }
        }
    }
}

/// Commands of one caller that go into the same entry, in order, with one
/// reply for all of them (a single command is a list of one).
struct Pending {
    commands: Vec<Command>,
    request_ids: Vec<RequestId>,
    reply: Reply,
}

/// Where one caller's outcomes go.
type Reply = oneshot::Sender<Result<Vec<Outcome>, ProposeError>>;

/// The sending side of a shard's proposer.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Pending>,
    is_leader: Arc<AtomicBool>,
    health: ShardHealth,
    pub stats: Arc<ProposerStats>,
}

pub struct ProposerSettings {
    pub batch_size_max: usize,
    pub entries_in_flight_max: usize,
    pub queue_max: usize,
}

impl Proposer {
    /// Starts the proposer task of one shard on the current tokio runtime.
    pub fn start(
        raft: Raft,
        settings: ProposerSettings,
        is_leader: Arc<AtomicBool>,
        next_deadline_ms: watch::Receiver<Option<u64>>,
        clock: Arc<ShardClock>,
        thread: Arc<ShardThread>,
        health: ShardHealth,
    ) -> (Proposer, tokio::task::JoinHandle<()>) {
        let (queue, receiver) = mpsc::channel(settings.queue_max.max(1));
        let stats = Arc::new(ProposerStats::default());
        let task = Run {
            raft,
            receiver,
            in_flight: Arc::new(Semaphore::new(settings.entries_in_flight_max.max(1))),
            entries_in_flight_max: settings.entries_in_flight_max.max(1),
            batch_size_max: settings.batch_size_max.max(1),
            is_leader: Arc::clone(&is_leader),
            next_deadline_ms,
            clock,
            stats: Arc::clone(&stats),
            thread,
            carried: None,
            health: health.clone(),
        };
        let handle = tokio::spawn(task.run());
        (Proposer { queue, is_leader, health, stats }, handle)
    }

    /// Proposes a list of commands in one entry (never split across
    /// entries, so the list takes one queue slot and one fsync) and waits
    /// for their outcomes, in order. Refuses at once, with nothing proposed,
    /// when this node does not lead or the queue is full. A single command
    /// is a list of one.
    pub(crate) async fn propose_many(
        &self,
        commands: Vec<Command>,
        request_ids: Vec<RequestId>,
    ) -> Result<Vec<Outcome>, ProposeError> {
        // Both callers (`Node::submit_many_with_ids`, a peer's `Submit`)
        // refuse lists whose lengths differ before they get here.
        debug_assert_eq!(commands.len(), request_ids.len());
        if self.health.is_failed() {
            return Err(ProposeError::Stopped);
        }
        if !self.is_leader.load(Ordering::Acquire) {
            return Err(ProposeError::NotLeader(None));
        }
        let (reply, answer) = oneshot::channel();
        match self.queue.try_send(Pending { commands, request_ids, reply }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(ProposeError::Overloaded),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(ProposeError::Closed),
        }
        answer.await.unwrap_or(Err(ProposeError::Closed))
    }
}

struct Run {
    raft: Raft,
    receiver: mpsc::Receiver<Pending>,
    in_flight: Arc<Semaphore>,
    entries_in_flight_max: usize,
    batch_size_max: usize,
    is_leader: Arc<AtomicBool>,
    next_deadline_ms: watch::Receiver<Option<u64>>,
    clock: Arc<ShardClock>,
    stats: Arc<ProposerStats>,
    thread: Arc<ShardThread>,
    /// A caller's list taken from the queue that did not fit the last entry:
    /// first in the next.
    carried: Option<Pending>,
    /// Once the shard stopped on this node, nothing more is proposed.
    health: ShardHealth,
}

/// How long to wait before ticking again after a tick could not be written.
const TICK_RETRY: Duration = Duration::from_millis(50);
/// How often a follower's proposer looks whether it became leader.
const LEADERSHIP_RECHECK: Duration = Duration::from_millis(100);

impl Run {
    async fn run(mut self) {
        let mut tick_blocked_until: Option<tokio::time::Instant> = None;
        loop {
            if let Some(carried) = self.carried.take() {
                // Queued before anything still in the channel: it goes first.
                let Ok(permit) = Arc::clone(&self.in_flight).acquire_owned().await else {
                    return;
                };
                self.propose_batch(carried, permit);
                continue;
            }
            let tick_in = self.tick_due_in(tick_blocked_until);
            let first = tokio::select! {
                biased;
                pending = self.receiver.recv() => match pending {
                    Some(pending) => Some(pending),
                    None => return,
                },
                _ = sleep_or_forever(tick_in) => None,
                // A new deadline (or leadership) re-plans the timer.
                changed = self.next_deadline_ms.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
            };
            if first.is_none() && !self.is_leader.load(Ordering::Acquire) {
                // Not leading: the timer only re-checks leadership.
                continue;
            }
            let Ok(permit) = Arc::clone(&self.in_flight).acquire_owned().await else {
                return;
            };
            match first {
                Some(first) => self.propose_batch(first, permit),
                // The timer fired: tick, unless commands arrived meanwhile
                // (they move log time themselves).
                None => match self.receiver.try_recv() {
                    Ok(pending) => self.propose_batch(pending, permit),
                    Err(_) => {
                        self.propose_tick(permit);
                        tick_blocked_until = Some(tokio::time::Instant::now() + TICK_RETRY);
                    }
                },
            }
        }
    }

    /// When to tick: only on the leader, only when no entry is in flight
    /// (one in flight moves log time anyway), and only once the next
    /// deadline has passed on this node's clock.
    fn tick_due_in(&self, blocked_until: Option<tokio::time::Instant>) -> Option<Duration> {
        if !self.is_leader.load(Ordering::Acquire) {
            // Leadership has no wake-up of its own here; look again soon.
            return Some(LEADERSHIP_RECHECK);
        }
        let deadline_ms = (*self.next_deadline_ms.borrow())?;
        let now_ms = self.clock.now_ms();
        let mut wait = Duration::from_millis(deadline_ms.saturating_sub(now_ms));
        if let Some(until) = blocked_until {
            wait = wait.max(until.saturating_duration_since(tokio::time::Instant::now()));
        }
        if self.in_flight.available_permits() < self.entries_in_flight_max {
            // Re-check after the entry in flight lands.
            wait = wait.max(TICK_RETRY);
        }
        Some(wait)
    }

    /// The log time of the next entry (see `clock`). Called with the
    /// entry's permit held: idle means no other entry in flight, every
    /// entry in the log applied, and no live hold.
    fn stamp(&self) -> u64 {
        let idle = self.clock.may_catch_up()
            && self.in_flight.available_permits() + 1 == self.entries_in_flight_max
            && self.next_deadline_ms.borrow().is_none()
            && self.all_applied();
        self.clock.stamp_ms(idle)
    }

    fn all_applied(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        metrics.last_applied.map(|id| id.index) >= metrics.last_log_index
    }

    fn propose_tick(&mut self, permit: tokio::sync::OwnedSemaphorePermit) {
        if self.health.is_failed() {
            return;
        }
        let batch = Batch { ts_ms: self.stamp(), commands: vec![Command::Tick], request_ids: Vec::new() };
        self.stats.ticks.fetch_add(1, Ordering::Relaxed);
        let raft = self.raft.clone();
        let stats = Arc::clone(&self.stats);
        let clock = Arc::clone(&self.clock);
        tokio::spawn(async move {
            // A failed tick is retried by the timer; nobody waits on it.
            let result = raft.client_write(LogBatch::new(batch)).await;
            drop(permit);
            if let Ok(response) = result {
                stats.record_expiries(&clock, &response.data.events);
            }
        });
    }

    fn propose_batch(&mut self, first: Pending, permit: tokio::sync::OwnedSemaphorePermit) {
        self.thread.check();
        let mut commands = first.commands;
        let mut request_ids = first.request_ids;
        let mut replies = vec![(first.reply, commands.len())];
        // Whole callers' lists only: a list that would pass `batch_size_max`
        // waits for the next entry (a first list larger than it goes alone).
        while commands.len() < self.batch_size_max {
            let next = match self.carried.take() {
                Some(next) => next,
                None => match self.receiver.try_recv() {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            if commands.len() + next.commands.len() > self.batch_size_max {
                self.carried = Some(next);
                break;
            }
            replies.push((next.reply, next.commands.len()));
            commands.extend(next.commands);
            request_ids.extend(next.request_ids);
        }
        debug_assert_eq!(replies.iter().map(|(_, count)| count).sum::<usize>(), commands.len());
        if self.health.is_failed() {
            // Never appended: the callers may go elsewhere.
            for (reply, _) in replies {
                let _ = reply.send(Err(ProposeError::Stopped));
            }
            return;
        }
        self.stats.entries.fetch_add(1, Ordering::Relaxed);
        self.stats.commands.fetch_add(commands.len() as u64, Ordering::Relaxed);
        self.stats.batch_size.record(commands.len() as u64);
        let batch = Batch { ts_ms: self.stamp(), commands, request_ids };
        let raft = self.raft.clone();
        let stats = Arc::clone(&self.stats);
        let clock = Arc::clone(&self.clock);
        let thread = Arc::clone(&self.thread);
        let health = self.health.clone();
        let started = Instant::now();
        tokio::spawn(async move {
            let result = raft.client_write(LogBatch::new(batch)).await;
            drop(permit);
            thread.check();
            match result {
                Ok(response) => {
                    let elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    stats.commit_latency_us.record(elapsed_us);
                    // Before the replies, so a caller that sees its outcome
                    // also sees the lag of what the entry expired.
                    stats.record_expiries(&clock, &response.data.events);
                    answer(replies, response.data.outcomes, &health);
                }
                Err(error) => {
                    // The entry may have been appended before leadership
                    // moved, so it may yet commit: "unknown", and the node
                    // retries with the same request ids.
                    let reason = error.to_string();
                    for (reply, _) in replies {
                        let _ = reply.send(Err(ProposeError::Unknown(reason.clone())));
                    }
                }
            }
        });
    }
}

/// Hands each caller its outcomes, in entry order: `count` per caller.
fn answer(replies: Vec<(Reply, usize)>, outcomes: Vec<Outcome>, health: &ShardHealth) {
    let expected: usize = replies.iter().map(|(_, count)| count).sum();
    if outcomes.len() != expected {
        // An entry answers every command it carries (engine invariant); a
        // mismatch is a bug, and guessing which outcome is whose would be
        // worse: the shard stops, and every caller hears "unknown".
        let reason = format!("entry answered {} outcomes for {expected} commands", outcomes.len());
        health.fail(FailureCause::InvariantBroken, reason.clone());
        for (reply, _) in replies {
            let _ = reply.send(Err(ProposeError::Unknown(reason.clone())));
        }
        return;
    }
    let mut outcomes = outcomes.into_iter();
    for (reply, count) in replies {
        let _ = reply.send(Ok(outcomes.by_ref().take(count).collect()));
    }
}

async fn sleep_or_forever(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use engine::shard_of;
    use engine::testing::{hold, rid_for, sku_on, upsert};
    use tokio::net::TcpListener;

    use super::*;
    use crate::{ClusterConfig, Member, Node};

    const SHARDS: u32 = 2;

    /// A one-node cluster in `dir`, with every shard led by it.
    async fn single_node(dir: &std::path::Path) -> Node {
        single_node_with(dir, |_| {}).await
    }

    /// `single_node`, with `tune` applied to its config.
    async fn single_node_with(dir: &std::path::Path, tune: impl FnOnce(&mut ClusterConfig)) -> Node {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("addr: {e}")).to_string();
        let config = ClusterConfig {
            node_id: 1,
            listen: addr.clone(),
            members: vec![Member { id: 1, addr }],
            shards: SHARDS,
            data_dir: dir.to_path_buf(),
            shard_threads: 1,
            heartbeat_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            ..ClusterConfig::default()
        };
        let mut config = config;
        tune(&mut config);
        let node = Node::start_on(config, listener).await.unwrap_or_else(|e| panic!("start: {e}"));
        wait_until(Duration::from_secs(10), || node.status().shards.iter().all(|s| s.leader == Some(1))).await;
        node
    }

    async fn wait_until(within: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !done() {
            assert!(Instant::now() < deadline, "condition not met within {within:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn outcomes_that_do_not_match_the_callers_stop_the_shard_and_answer_nobody_wrongly() {
        let health = ShardHealth::detached(0);
        let (first, first_answer) = oneshot::channel();
        let (second, second_answer) = oneshot::channel();
        // Two callers, 1 + 2 commands; the entry answers only two outcomes.
        answer(vec![(first, 1), (second, 2)], vec![Outcome::Ticked, Outcome::Ticked], &health);
        for answer in [first_answer.await, second_answer.await] {
            assert!(matches!(answer, Ok(Err(ProposeError::Unknown(_)))), "{answer:?}");
        }
        let failure = health.failure().unwrap_or_else(|| panic!("the shard did not stop"));
        assert_eq!(failure.cause, FailureCause::InvariantBroken);
        assert!(failure.detail.contains("2 outcomes for 3 commands"), "{}", failure.detail);

        // Matching counts: each caller gets its own, in order.
        let health = ShardHealth::detached(0);
        let (first, first_answer) = oneshot::channel();
        let (second, second_answer) = oneshot::channel();
        let outcomes = vec![Outcome::Ticked, Outcome::LimitsSet, Outcome::Ticked];
        answer(vec![(first, 1), (second, 2)], outcomes, &health);
        assert!(matches!(first_answer.await, Ok(Ok(list)) if list == [Outcome::Ticked]));
        assert!(matches!(second_answer.await, Ok(Ok(list)) if list == [Outcome::LimitsSet, Outcome::Ticked]));
        assert!(!health.is_failed());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_proposed_entry_records_its_batch_size_and_commit_latency() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let node = single_node(dir.path()).await;
        let before = node.stats();

        // Concurrent submits: some share an entry, so entries <= commands.
        let submits = (0..50).map(|n| node.submit(upsert(&format!("batch-{n}"), "w1", 5, 0)));
        for outcome in futures_util::future::join_all(submits).await {
            let outcome = outcome.unwrap_or_else(|e| panic!("submit: {e}"));
            assert!(!outcome.is_refused(), "refused: {outcome:?}");
        }

        let stats = node.stats();
        let entries = stats.entries_proposed - before.entries_proposed;
        let commands = stats.commands_proposed - before.commands_proposed;
        assert_eq!(commands, 50);
        assert!((1..=50).contains(&entries), "{entries} entries");
        // One batch-size value per entry, summing to the commands.
        assert_eq!(stats.batch_size.count() - before.batch_size.count(), entries);
        assert_eq!(stats.batch_size.sum - before.batch_size.sum, commands);
        // Every entry committed, so each has a latency; and each was fsynced.
        assert_eq!(stats.commit_latency_us.count() - before.commit_latency_us.count(), entries);
        assert!(stats.commit_latency_us.sum > before.commit_latency_us.sum);
        assert!(stats.fsync_latency_us.count() > before.fsync_latency_us.count());
        node.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_is_proposed_appended_applied_and_answered_on_its_shards_thread() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        // Snapshots every few entries: their work (the shadow's replay and
        // serialisation on the snapshot thread) is not write-path work.
        let node = single_node_with(dir.path(), |config| config.snapshot_after_entries = 4).await;
        let snapshots = |node: &Node| node.snapshot_stats().iter().map(|s| s.built).sum::<u64>();
        let mut wave = 0;
        while wave < 10 || snapshots(&node) < 2 {
            // Writes from the test's runtime threads, concurrent so entries
            // carry several commands and the flusher batches fsyncs.
            let submits = (0..20).map(|n| node.submit(upsert(&format!("thread-{wave}-{n}"), "w1", 5, 0)));
            for outcome in futures_util::future::join_all(submits).await {
                let outcome = outcome.unwrap_or_else(|e| panic!("submit: {e}"));
                assert!(!outcome.is_refused(), "refused: {outcome:?}");
            }
            wave += 1;
            assert!(wave < 500, "no snapshots: {:?}", node.snapshot_stats());
        }
        let stats = node.stats();
        assert!(stats.entries_proposed > 0);
        // Every propose, append, apply and answer ran on the thread its
        // group claimed: a stage on a runtime worker would count here.
        assert_eq!(stats.write_path_off_thread, 0);
        assert!(node.snapshot_stats().iter().all(|s| s.fallbacks == 0), "{:?}", node.snapshot_stats());
        node.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_list_of_commands_is_one_entry_and_answers_in_order() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let node = single_node(dir.path()).await;
        let name = sku_on(0, SHARDS, "list");
        node.submit(upsert(&name, "w1", 3, 0)).await.unwrap_or_else(|e| panic!("upsert: {e}"));
        let before = node.stats();

        // Five holds of one unit on three units: the first three hold, the
        // last two are refused, each on its own.
        let holds: Vec<Command> =
            (0..5).map(|n| hold(rid_for(n, &name, SHARDS), &[(&name, "w1", 1)], 60_000, None)).collect();
        let outcomes = node.submit_many_to(0, holds).await.unwrap_or_else(|e| panic!("submit_many: {e}"));
        let held: Vec<bool> = outcomes.iter().map(|outcome| matches!(outcome, Outcome::Held { .. })).collect();
        assert_eq!(held, [true, true, true, false, false], "{outcomes:?}");
        assert!(outcomes[3..].iter().all(|o| o.refusal().is_some_and(|r| r.code() == "insufficient_stock")));

        let stats = node.stats();
        assert_eq!(stats.entries_proposed - before.entries_proposed, 1, "one list, one entry");
        assert_eq!(stats.commands_proposed - before.commands_proposed, 5);

        // A list longer than an entry's batch cap still goes whole.
        let upserts: Vec<Command> = (0..)
            .map(|n| format!("{name}-{n}"))
            .filter(|other| shard_of(other, SHARDS) == 0)
            .take(1500)
            .map(|other| upsert(&other, "w1", 1, 0))
            .collect();
        let outcomes = node.submit_many_to(0, upserts).await.unwrap_or_else(|e| panic!("submit_many: {e}"));
        assert_eq!(outcomes.len(), 1500);
        assert!(outcomes.iter().all(|o| !o.is_refused()), "{:?}", outcomes.iter().find(|o| o.is_refused()));
        assert_eq!(node.stats().entries_proposed - stats.entries_proposed, 1);
        node.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_expired_hold_records_its_lag_and_leaves_the_live_count() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let node = single_node(dir.path()).await;
        let timeout = Duration::from_secs(1);
        for command in [
            upsert("lag", "w1", 10, 0),
            hold(rid_for(1, "lag", SHARDS), &[("lag", "w1", 1)], 100, None),
            hold(rid_for(2, "lag", SHARDS), &[("lag", "w1", 1)], 100, None),
        ] {
            let outcome = node.submit(command).await.unwrap_or_else(|e| panic!("submit: {e}"));
            assert!(!outcome.is_refused(), "refused: {outcome:?}");
        }
        assert_eq!(node.live_holds(timeout).await, Some(2));

        // No traffic: the proposer's tick expires both holds.
        wait_until(Duration::from_secs(5), || node.stats().expiry_lag_ms.count() == 2).await;
        let lag = node.stats().expiry_lag_ms;
        // A tick is due at the deadline: the lag is the tick's commit, well
        // under a second even on a busy test machine.
        assert!(lag.sum < 2_000, "lag {lag:?}");
        assert_eq!(node.live_holds(timeout).await, Some(0));
        node.shutdown().await;
    }
}
