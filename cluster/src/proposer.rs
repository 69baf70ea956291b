//! A shard's proposer: gathers commands from many callers into one log entry.
//!
//! There is no timer and no sleep. A command waits in the shard's bounded
//! queue only while `entries_in_flight_max` entries are already on their way
//! (appended, replicated, applied); when a slot frees, everything queued (up
//! to `batch_size_max`) becomes the next entry. So under light load an entry
//! carries one command and commits at once, and under heavy load entries grow
//! by themselves to amortise the fsync and the replication round.
//!
//! Each entry is stamped with the leader's clock, kept monotonic
//! (`max(now, last)`). When a hold deadline falls due and nothing else flows,
//! the proposer writes a `Tick`, so holds expire on time without traffic.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use engine::ids::RequestId;
use engine::{Batch, Command, Outcome};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::error::ProposeError;
use crate::types::Raft;

/// The leader's clock: wall time in ms, plus an offset tests and chaos runs
/// can move to simulate a clock jump on one node.
#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    pub fn now_ms(&self) -> u64 {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let wall = i64::try_from(wall).unwrap_or(i64::MAX);
        u64::try_from(wall.saturating_add(self.offset_ms.load(Ordering::Relaxed))).unwrap_or(0)
    }

    /// Moves this node's clock by `offset_ms` (negative: back in time).
    pub fn set_offset_ms(&self, offset_ms: i64) {
        self.offset_ms.store(offset_ms, Ordering::Relaxed);
    }
}

/// Counters for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct ProposerStats {
    pub entries: std::sync::atomic::AtomicU64,
    pub commands: std::sync::atomic::AtomicU64,
    pub ticks: std::sync::atomic::AtomicU64,
}

struct Pending {
    command: Command,
    request_id: RequestId,
    reply: oneshot::Sender<Result<Outcome, ProposeError>>,
}

/// The sending side of a shard's proposer.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Pending>,
    is_leader: Arc<AtomicBool>,
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
        clock: Arc<Clock>,
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
            last_ts_ms: 0,
            stats: Arc::clone(&stats),
        };
        let handle = tokio::spawn(task.run());
        (Proposer { queue, is_leader, stats }, handle)
    }

    /// Proposes one command and waits for its outcome. Refuses at once, with
    /// nothing proposed, when this node does not lead or the queue is full.
    pub(crate) async fn propose(&self, command: Command, request_id: RequestId) -> Result<Outcome, ProposeError> {
        if !self.is_leader.load(Ordering::Acquire) {
            return Err(ProposeError::NotLeader(None));
        }
        let (reply, answer) = oneshot::channel();
        match self.queue.try_send(Pending { command, request_id, reply }) {
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
    clock: Arc<Clock>,
    last_ts_ms: u64,
    stats: Arc<ProposerStats>,
}

/// How long to wait before ticking again after a tick could not be written.
const TICK_RETRY: Duration = Duration::from_millis(50);
/// How often a follower's proposer looks whether it became leader.
const LEADERSHIP_RECHECK: Duration = Duration::from_millis(100);

impl Run {
    async fn run(mut self) {
        let mut tick_blocked_until: Option<tokio::time::Instant> = None;
        loop {
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

    fn stamp(&mut self) -> u64 {
        self.last_ts_ms = self.last_ts_ms.max(self.clock.now_ms());
        self.last_ts_ms
    }

    fn propose_tick(&mut self, permit: tokio::sync::OwnedSemaphorePermit) {
        let batch = Batch { ts_ms: self.stamp(), commands: vec![Command::Tick], request_ids: Vec::new() };
        self.stats.ticks.fetch_add(1, Ordering::Relaxed);
        let raft = self.raft.clone();
        tokio::spawn(async move {
            // A failed tick is retried by the timer; nobody waits on it.
            let _ = raft.client_write(batch).await;
            drop(permit);
        });
    }

    fn propose_batch(&mut self, first: Pending, permit: tokio::sync::OwnedSemaphorePermit) {
        let mut pending = Vec::with_capacity(self.batch_size_max.min(64));
        pending.push(first);
        while pending.len() < self.batch_size_max {
            match self.receiver.try_recv() {
                Ok(next) => pending.push(next),
                Err(_) => break,
            }
        }
        let mut commands = Vec::with_capacity(pending.len());
        let mut request_ids = Vec::with_capacity(pending.len());
        let mut replies = Vec::with_capacity(pending.len());
        for Pending { command, request_id, reply } in pending {
            commands.push(command);
            request_ids.push(request_id);
            replies.push(reply);
        }
        self.stats.entries.fetch_add(1, Ordering::Relaxed);
        self.stats.commands.fetch_add(commands.len() as u64, Ordering::Relaxed);
        let batch = Batch { ts_ms: self.stamp(), commands, request_ids };
        let raft = self.raft.clone();
        tokio::spawn(async move {
            let result = raft.client_write(batch).await;
            drop(permit);
            match result {
                Ok(response) => {
                    let outcomes = response.data.outcomes;
                    debug_assert_eq!(outcomes.len(), replies.len());
                    for (reply, outcome) in replies.into_iter().zip(outcomes) {
                        let _ = reply.send(Ok(outcome));
                    }
                }
                Err(error) => {
                    // The entry may have been appended before leadership
                    // moved, so it may yet commit: "unknown", and the node
                    // retries with the same request ids.
                    let reason = error.to_string();
                    for reply in replies {
                        let _ = reply.send(Err(ProposeError::Unknown(reason.clone())));
                    }
                }
            }
        });
    }
}

async fn sleep_or_forever(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}
