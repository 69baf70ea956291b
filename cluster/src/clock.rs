//! Log time: the time a shard's leader stamps on the entries it proposes
//! (DESIGN §3), which hold deadlines, expiry ticks and retention windows are
//! measured against.
//!
//! **The promise: a hold never expires before its TTL has passed in real
//! time.** Expiry runs when an entry whose log time reaches the deadline is
//! applied, so the promise holds if log time never runs ahead of real time
//! between two entries of a shard's log: for entries `k` before `j`,
//! `ts(j) - ts(k) <= real time between their stamps`. Log time may run
//! *slower* (holds then expire late), never faster.
//!
//! **How.** Each shard has its own log time on each node (`ShardClock`),
//! carried on the monotonic clock from one entry of *that shard's* log: the
//! estimate is "log time was `ts` when this node saw the entry at position
//! `p`", and log time now is `ts` plus the monotonic time since. Which entry
//! counts is the rule that keeps the promise (`Lineage::observe`):
//!
//! * an entry of a newer term replaces the estimate, even when it is lower:
//!   the new leader's stamps are the log from now on, and an estimate taken
//!   from an older leader may be ahead of them;
//! * within one term (one leader) the freshest estimate wins;
//! * entries of older terms are ignored;
//! * a truncation that removes the estimate's entry falls back to the log
//!   time the shard has applied (committed entries are never truncated).
//!
//! Every estimate is then at most the stamping leader's own clock (it was
//! observed when or after it was stamped), and a new leader continues from
//! the latest leader's entries it holds, so no leader stamps ahead of the
//! log before it. Two earlier forms of this clock broke the promise under
//! load (chaos FINDINGS.md #4): one clock per node, fed by every shard's
//! entries, jumped forward when an entry of another shard arrived with less
//! replication delay than the last; and a node that restarted read its wall
//! clock, ahead of a log time that had lagged behind it by every election's
//! replication delay.
//!
//! **The wall clock** is read only for a shard with no entry at all (a new
//! cluster), and for one catch-up after a restart: a node recovers each
//! shard's estimate from its own disk (its last entry, observed at start),
//! so log time does not count the time the node was down. While that
//! recovered estimate has not been replaced by another leader's entries,
//! the leader may move log time forward to its wall clock once, and only
//! when the shard is idle — no live hold, nothing in flight, every entry
//! applied (`Proposer`) — so no hold can expire early because of it. A
//! wrong wall clock at that moment is not detected (as before); a wall
//! clock that jumps on a running node moves nothing (FINDINGS.md #1).
//! Log time can lag the wall clock by every election's replication delay,
//! and, after a whole cluster was down, by the downtime until the shard
//! first goes idle under a restarted leader; `tally_shard_log_time_behind_wall_ms`
//! shows it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use engine::LogId;
use parking_lot::Mutex;

/// A node's clocks: one per shard, over one wall clock.
#[derive(Debug)]
pub struct Clock {
    wall: Arc<Wall>,
    shards: Vec<Arc<ShardClock>>,
}

impl Clock {
    pub fn new(shards: u32) -> Self {
        let wall = Arc::new(Wall::default());
        let shards = (0..shards).map(|_| Arc::new(ShardClock::new(Arc::clone(&wall)))).collect();
        Self { wall, shards }
    }

    /// The clock of `shard` (None: no such shard).
    pub fn shard(&self, shard: u32) -> Option<&Arc<ShardClock>> {
        self.shards.get(shard as usize)
    }

    /// This node's wall clock in Unix ms, with its offset.
    pub fn wall_ms(&self) -> u64 {
        self.wall.now_ms()
    }

    /// The latest log time among this node's shards.
    pub fn latest_ms(&self) -> u64 {
        self.shards.iter().map(|shard| shard.now_ms()).max().unwrap_or_else(|| self.wall_ms())
    }

    /// Per shard: the wall clock minus log time, in ms (see
    /// `ShardClock::behind_wall_ms`).
    pub fn behind_wall_ms(&self) -> Vec<i64> {
        self.shards.iter().map(|shard| shard.behind_wall_ms()).collect()
    }

    /// Moves this node's wall clock by `offset_ms` (negative: back in time).
    /// Tests and chaos runs use it to simulate a clock jump.
    pub fn set_offset_ms(&self, offset_ms: i64) {
        self.wall.offset_ms.store(offset_ms, Ordering::Relaxed);
    }
}

/// The wall clock, with an offset, and the monotonic base every estimate is
/// carried on.
#[derive(Debug)]
struct Wall {
    offset_ms: AtomicI64,
    base: Instant,
}

impl Default for Wall {
    fn default() -> Self {
        Self { offset_ms: AtomicI64::new(0), base: Instant::now() }
    }
}

impl Wall {
    fn now_ms(&self) -> u64 {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let wall = i64::try_from(wall).unwrap_or(i64::MAX);
        u64::try_from(wall.saturating_add(self.offset_ms.load(Ordering::Relaxed))).unwrap_or(0)
    }

    fn since_base_ms(&self) -> i64 {
        i64::try_from(self.base.elapsed().as_millis()).unwrap_or(i64::MAX)
    }
}

/// One shard's log time on this node. Its writers (the proposer, the log
/// store, the state machine) all run on the shard's thread, so the lock is
/// never contended there; other threads only read.
#[derive(Debug)]
pub struct ShardClock {
    wall: Arc<Wall>,
    lineage: Mutex<Lineage>,
    /// Log time of the last entry the shard applied here (for truncation).
    applied_ms: AtomicU64,
}

impl ShardClock {
    fn new(wall: Arc<Wall>) -> Self {
        Self { wall, lineage: Mutex::new(Lineage::default()), applied_ms: AtomicU64::new(0) }
    }

    /// Log time now, in ms.
    pub fn now_ms(&self) -> u64 {
        let lineage = *self.lineage.lock();
        to_ms(lineage.now(self.wall.since_base_ms(), self.wall.now_ms()))
    }

    /// This node's wall clock minus the shard's log time, in ms (negative:
    /// log time is ahead).
    pub fn behind_wall_ms(&self) -> i64 {
        let wall = i64::try_from(self.wall.now_ms()).unwrap_or(i64::MAX);
        wall.saturating_sub(i64::try_from(self.now_ms()).unwrap_or(i64::MAX))
    }

    /// At start: the shard's last entry on this node's disk was at `at` with
    /// log time `ts_ms` (see the module docs: the time the node was down is
    /// not counted).
    pub fn recover(&self, at: LogId, ts_ms: u64) {
        self.lineage.lock().recover(at, ts_ms, self.wall.since_base_ms());
        self.applied(ts_ms);
    }

    /// An entry at `at`, stamped `ts_ms`, was just appended to this node's
    /// log. `leading`: this node leads the shard (the entry is its own).
    pub fn observe(&self, at: LogId, ts_ms: u64, leading: bool) {
        self.lineage.lock().observe(at, ts_ms, self.wall.since_base_ms(), leading);
    }

    /// The log was cut after `keep` (None: all of it); `kept_ms` is the
    /// stamp of the last entry kept that has one (0: none).
    pub fn truncated(&self, keep: Option<LogId>, kept_ms: u64) {
        let floor_ms = self.applied_ms.load(Ordering::Acquire).max(kept_ms);
        self.lineage.lock().truncated(keep, floor_ms, self.wall.since_base_ms());
    }

    /// The shard applied entries up to log time `log_time_ms` here (or
    /// installed a snapshot at it).
    pub fn applied(&self, log_time_ms: u64) {
        self.applied_ms.fetch_max(log_time_ms, Ordering::AcqRel);
    }

    /// Whether the one catch-up to the wall clock after a restart is still
    /// allowed (the proposer checks idleness only then).
    pub fn may_catch_up(&self) -> bool {
        self.lineage.lock().recovered
    }

    /// The time the leader stamps on its next entry. `idle`: the shard has
    /// no live hold, no entry in flight and nothing unapplied, so moving log
    /// time forward cannot expire anything early (the one catch-up after a
    /// restart, see the module docs).
    pub fn stamp_ms(&self, idle: bool) -> u64 {
        let since_base = self.wall.since_base_ms();
        let mut lineage = self.lineage.lock();
        if idle {
            let wall = i64::try_from(self.wall.now_ms()).unwrap_or(i64::MAX);
            lineage.catch_up(wall, since_base);
        }
        to_ms(lineage.now(since_base, self.wall.now_ms()))
    }
}

fn to_ms(log_time_ms: i64) -> u64 {
    u64::try_from(log_time_ms).unwrap_or(0)
}

/// Where a shard's log time estimate comes from, and the rules that move it.
/// Pure: every method takes the monotonic time (ms since the node's base),
/// so the rules are tested without waiting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Lineage {
    /// The entry the estimate was taken from (None: none yet, so the wall
    /// clock is log time).
    from: Option<LogId>,
    /// Log time at the monotonic base: log time now is
    /// `origin_ms + since_base_ms`.
    origin_ms: i64,
    /// The estimate was recovered from this node's disk at start and no
    /// other leader's entry has replaced it: the one catch-up to the wall
    /// clock is still allowed.
    recovered: bool,
}

impl Lineage {
    pub(crate) fn now(&self, since_base_ms: i64, wall_ms: u64) -> i64 {
        match self.from {
            None => i64::try_from(wall_ms).unwrap_or(i64::MAX),
            Some(_) => self.origin_ms.saturating_add(since_base_ms),
        }
    }

    pub(crate) fn recover(&mut self, at: LogId, ts_ms: u64, since_base_ms: i64) {
        *self = Self { from: Some(at), origin_ms: origin(ts_ms, since_base_ms), recovered: true };
    }

    pub(crate) fn observe(&mut self, at: LogId, ts_ms: u64, since_base_ms: i64, leading: bool) {
        let origin = origin(ts_ms, since_base_ms);
        match self.from {
            // The first entry ever seen on a node that had none: a new
            // cluster's first stamps (taken off a wall clock).
            None => {
                self.from = Some(at);
                self.origin_ms = origin;
            }
            Some(from) if at.term > from.term => {
                self.from = Some(at);
                self.origin_ms = origin;
            }
            Some(from) if at.term == from.term => {
                if at.index > from.index {
                    self.from = Some(at);
                }
                self.origin_ms = self.origin_ms.max(origin);
            }
            // An entry of an older term than the estimate's (a leader's log
            // being re-sent after a truncation): not the log's latest.
            Some(_) => return,
        }
        if !leading {
            // Another leader's stamps: its lineage is the log's now.
            self.recovered = false;
        }
    }

    /// The log was cut after `keep`. `floor_ms`: the larger of the log
    /// time applied here and the stamp of the last entry kept (0: nothing
    /// applied and no stamped entry kept).
    pub(crate) fn truncated(&mut self, keep: Option<LogId>, floor_ms: u64, since_base_ms: i64) {
        let Some(from) = self.from else {
            return;
        };
        if keep.is_some_and(|keep| keep.index >= from.index) {
            return;
        }
        if floor_ms == 0 {
            // Nothing applied here and no stamped entry left, in a cluster
            // whose first entries were just cut: log time starts over from
            // the wall clock, as in a new cluster.
            *self = Self::default();
            return;
        }
        // The estimate's entry is gone. What is kept (applied entries, and
        // entries kept but not yet applied, which may still commit) was
        // stamped at most at `floor_ms`; observed now, it is a safe
        // estimate, and taking the lower of it and the old one only slows
        // log time down. (Falling back to the wall clock while entries were
        // kept let the next stamp run ahead of theirs: the model test's
        // seed c17ef66a.)
        self.from = Some(keep.unwrap_or_default());
        self.origin_ms = self.origin_ms.min(origin(floor_ms, since_base_ms));
    }

    pub(crate) fn catch_up(&mut self, wall_ms: i64, since_base_ms: i64) {
        match self.from {
            Some(_) if self.recovered => {
                self.origin_ms = self.origin_ms.max(wall_ms.saturating_sub(since_base_ms));
                self.recovered = false;
            }
            // No entry yet: log time already is the wall clock.
            _ => {}
        }
    }
}

fn origin(ts_ms: u64, since_base_ms: i64) -> i64 {
    i64::try_from(ts_ms).unwrap_or(i64::MAX).saturating_sub(since_base_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(term: u64, index: u64) -> LogId {
        LogId::new(term, index)
    }

    #[test]
    fn a_shard_with_no_entry_runs_on_the_wall_clock() {
        let lineage = Lineage::default();
        assert_eq!(lineage.now(5, 1_000), 1_000);
    }

    #[test]
    fn log_time_is_carried_on_the_monotonic_clock_from_the_entry_seen() {
        let mut lineage = Lineage::default();
        lineage.observe(id(1, 1), 1_000, 10, false);
        // 250 ms later on the monotonic clock, whatever the wall says.
        assert_eq!(lineage.now(260, 99_999_999), 1_250);
    }

    #[test]
    fn within_a_term_the_freshest_estimate_wins() {
        let mut lineage = Lineage::default();
        lineage.observe(id(1, 1), 1_000, 10, false);
        // Seen late (more replication delay): a lower estimate, ignored.
        lineage.observe(id(1, 2), 1_005, 100, false);
        assert_eq!(lineage.now(100, 0), 1_090);
        // Seen sooner: a higher one, taken.
        lineage.observe(id(1, 3), 1_200, 110, false);
        assert_eq!(lineage.now(110, 0), 1_200);
    }

    #[test]
    fn a_newer_terms_entry_replaces_the_estimate_even_when_lower() {
        let mut lineage = Lineage::default();
        lineage.observe(id(1, 7), 5_000, 0, false);
        // The next leader's clock lags the last one: its stamps are the log
        // now, and holds it stamped must not expire by the old estimate.
        lineage.observe(id(2, 9), 4_900, 10, false);
        assert_eq!(lineage.now(10, 0), 4_900);
    }

    #[test]
    fn an_older_terms_entry_moves_nothing() {
        let mut lineage = Lineage::default();
        lineage.observe(id(3, 5), 1_000, 0, false);
        lineage.observe(id(2, 6), 9_000, 0, false);
        assert_eq!(lineage.now(0, 0), 1_000);
    }

    #[test]
    fn a_truncation_below_the_estimate_falls_back_to_the_applied_log_time() {
        let mut lineage = Lineage::default();
        lineage.observe(id(1, 10), 2_000, 0, false);
        // Cut after 8: entry 10 is gone; the shard applied up to log time
        // 1_500, observed now (t = 100).
        lineage.truncated(Some(id(1, 8)), 1_500, 100);
        assert_eq!(lineage.now(100, 0), 1_500);
        // The next leader's entries at 9 onward (a newer term) take over.
        lineage.observe(id(2, 9), 1_450, 100, false);
        assert_eq!(lineage.now(100, 0), 1_450);
    }

    #[test]
    fn a_truncation_above_the_estimate_moves_nothing() {
        let mut lineage = Lineage::default();
        lineage.observe(id(1, 5), 2_000, 0, false);
        lineage.truncated(Some(id(1, 5)), 100, 50);
        assert_eq!(lineage.now(50, 0), 2_050);
    }

    #[test]
    fn a_recovered_estimate_catches_up_to_the_wall_clock_once() {
        let mut lineage = Lineage::default();
        // Down for 60 s: the disk's last entry says 1_000.
        lineage.recover(id(4, 100), 1_000, 0);
        assert_eq!(lineage.now(0, 61_000), 1_000);
        lineage.catch_up(61_000, 0);
        assert_eq!(lineage.now(0, 0), 61_000);
        // Once: a later jump of the wall clock moves nothing.
        lineage.catch_up(999_000, 10);
        assert_eq!(lineage.now(10, 0), 61_010);
    }

    #[test]
    fn no_catch_up_once_another_leaders_entries_replaced_the_recovered_estimate() {
        let mut lineage = Lineage::default();
        lineage.recover(id(4, 100), 1_000, 0);
        lineage.observe(id(5, 101), 1_100, 0, false);
        lineage.catch_up(61_000, 0);
        assert_eq!(lineage.now(0, 0), 1_100);
    }

    #[test]
    fn a_leaders_own_entries_keep_the_catch_up_allowed() {
        let mut lineage = Lineage::default();
        lineage.recover(id(4, 100), 1_000, 0);
        // Elected after the restart, busy: its own entries carry on.
        lineage.observe(id(5, 101), 1_000, 5, true);
        lineage.catch_up(61_000, 5);
        assert_eq!(lineage.now(5, 0), 61_000);
    }

    #[test]
    fn a_running_nodes_wall_clock_moves_nothing() {
        let mut lineage = Lineage::default();
        lineage.observe(id(1, 1), 1_000, 0, false);
        lineage.catch_up(50_000_000, 0);
        assert_eq!(lineage.now(0, 50_000_000), 1_000);
    }

    /// A 3-node shard, modelled: a leader stamps entries with its lineage,
    /// followers receive them late and out of step, leaders change, nodes
    /// crash and restart (recovering from their logs), conflicting entries
    /// are cut. Whatever happens, log time never runs ahead of real time
    /// between two committed entries: the promise that no hold expires
    /// early (the one catch-up after a restart is left out; it only runs
    /// with no hold live, and has its own tests above).
    mod model {
        use proptest::prelude::*;

        use super::super::*;

        #[derive(Clone, Debug)]
        enum Step {
            /// Real time moves on this many ms.
            Advance(u8),
            /// The leader stamps and appends an entry.
            Stamp,
            /// The leader sends a follower its next entries (up to this many).
            Deliver(usize, u8),
            /// This node is elected, if its log is as up to date as another's.
            Elect(usize),
            Crash(usize),
            Restart(usize),
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                4 => (0u8..30).prop_map(Step::Advance),
                4 => Just(Step::Stamp),
                4 => (0usize..3, 1u8..4).prop_map(|(node, count)| Step::Deliver(node, count)),
                1 => (0usize..3).prop_map(Step::Elect),
                1 => (0usize..3).prop_map(Step::Crash),
                1 => (0usize..3).prop_map(Step::Restart),
            ]
        }

        #[derive(Clone, Copy, Debug, PartialEq)]
        struct Stamped {
            at: LogId,
            ts_ms: u64,
            /// Real time when it was stamped.
            real_ms: i64,
        }

        struct Node {
            lineage: Lineage,
            log: Vec<Stamped>,
            boot_ms: i64,
            up: bool,
        }

        struct Shard {
            now_ms: i64,
            nodes: Vec<Node>,
            leader: Option<usize>,
            term: u64,
            committed: Vec<Stamped>,
        }

        impl Shard {
            fn since_base(&self, node: usize) -> i64 {
                self.now_ms - self.nodes[node].boot_ms
            }

            /// Log time this node has applied: its entries that are committed.
            fn applied_ms(&self, node: usize) -> u64 {
                let log = &self.nodes[node].log;
                let prefix = log.iter().zip(&self.committed).take_while(|(a, b)| a == b).count();
                log[..prefix].iter().map(|e| e.ts_ms).max().unwrap_or(0)
            }

            fn last(&self, node: usize) -> (u64, usize) {
                let log = &self.nodes[node].log;
                (log.last().map_or(0, |e| e.at.term), log.len())
            }

            fn run(&mut self, step: Step) {
                match step {
                    Step::Advance(ms) => self.now_ms += i64::from(ms),
                    Step::Stamp => {
                        let Some(leader) = self.leader else { return };
                        let since = self.since_base(leader);
                        let wall = u64::try_from(self.now_ms).unwrap_or(0);
                        let node = &mut self.nodes[leader];
                        let ts_ms = to_ms(node.lineage.now(since, wall));
                        let at = LogId::new(self.term, node.log.len() as u64 + 1);
                        node.log.push(Stamped { at, ts_ms, real_ms: self.now_ms });
                        node.lineage.observe(at, ts_ms, since, true);
                        self.commit();
                    }
                    Step::Deliver(follower, count) => {
                        let Some(leader) = self.leader else { return };
                        if follower == leader || !self.nodes[follower].up {
                            return;
                        }
                        let since = self.since_base(follower);
                        let applied = self.applied_ms(follower);
                        let source = self.nodes[leader].log.clone();
                        let node = &mut self.nodes[follower];
                        let common = node.log.iter().zip(&source).take_while(|(a, b)| a == b).count();
                        if common < node.log.len() {
                            node.log.truncate(common);
                            let kept_ms = node.log.last().map_or(0, |e| e.ts_ms);
                            node.lineage.truncated(node.log.last().map(|e| e.at), applied.max(kept_ms), since);
                        }
                        for entry in source.iter().skip(common).take(usize::from(count)) {
                            node.log.push(*entry);
                            node.lineage.observe(entry.at, entry.ts_ms, since, false);
                        }
                        self.commit();
                    }
                    Step::Elect(candidate) => {
                        if !self.nodes[candidate].up {
                            return;
                        }
                        let mine = self.last(candidate);
                        let voter = (0..3).any(|v| v != candidate && self.nodes[v].up && self.last(v) <= mine);
                        if voter {
                            self.term += 1;
                            self.leader = Some(candidate);
                        }
                    }
                    Step::Crash(node) => {
                        self.nodes[node].up = false;
                        if self.leader == Some(node) {
                            self.leader = None;
                        }
                    }
                    Step::Restart(node) => {
                        if self.nodes[node].up {
                            return;
                        }
                        let applied = self.applied_ms(node);
                        let n = &mut self.nodes[node];
                        n.up = true;
                        n.boot_ms = self.now_ms;
                        n.lineage = Lineage::default();
                        if let Some(last) = n.log.last() {
                            n.lineage.recover(last.at, last.ts_ms.max(applied), 0);
                        }
                    }
                }
            }

            /// Entries of the leader's term on two of three logs commit, with
            /// everything before them.
            fn commit(&mut self) {
                let Some(leader) = self.leader else { return };
                let log = self.nodes[leader].log.clone();
                for index in (self.committed.len()..log.len()).rev() {
                    let holders =
                        self.nodes.iter().filter(|n| n.log.len() > index && n.log[..=index] == log[..=index]).count();
                    if holders >= 2 && log[index].at.term == self.term {
                        assert_eq!(log[..self.committed.len()], self.committed[..], "a committed entry was lost");
                        self.committed = log[..=index].to_vec();
                        return;
                    }
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            #[test]
            fn log_time_never_runs_ahead_of_real_time_between_committed_entries(
                steps in proptest::collection::vec(step(), 1..400),
                start_ms in 1_000_000i64..2_000_000,
            ) {
                let nodes = (0..3).map(|_| Node { lineage: Lineage::default(), log: Vec::new(), boot_ms: 0, up: true });
                let mut shard = Shard { now_ms: start_ms, nodes: nodes.collect(), leader: Some(0), term: 1, committed: Vec::new() };
                for step in steps {
                    shard.run(step);
                }
                // Log time as apply sees it: the largest stamp so far.
                let mut effective = Vec::with_capacity(shard.committed.len());
                let mut log_time_ms = 0;
                for entry in &shard.committed {
                    log_time_ms = log_time_ms.max(entry.ts_ms);
                    effective.push((log_time_ms, entry.real_ms));
                }
                for (j, (later_ms, later_real)) in effective.iter().enumerate() {
                    for (earlier_ms, earlier_real) in &effective[..j] {
                        let log_elapsed = i64::try_from(later_ms - earlier_ms).unwrap_or(i64::MAX);
                        prop_assert!(
                            log_elapsed <= later_real - earlier_real,
                            "log time ran {} ms in {} ms of real time",
                            log_elapsed,
                            later_real - earlier_real
                        );
                    }
                }
            }
        }
    }
}
