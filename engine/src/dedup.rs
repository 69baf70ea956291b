//! The request-id dedup window: a retried command applies once.
//!
//! Why it exists: the cluster layer proposes every command with a request id
//! (`crate::ids::RequestId`). When Raft cannot say whether a proposal
//! committed (the leader changed while it was in flight), the proposer sends
//! the same command again with the same id, and both copies may end up in
//! the log. The state machine is the one place where the copies meet, in log
//! order and on every replica, so it is where the second is recognised: it
//! changes nothing, emits no events, and answers the first copy's outcome.
//!
//! What it costs and where it stops: the window remembers each id with its
//! outcome and the log time it applied, oldest first, and is bounded twice,
//! like everything a shard keeps for retries: by count
//! (`Limits::dedup_window_max`) and by log time (`dedup_retention_ms`). An id
//! that has left the window is unknown again, so a retry that arrives later
//! than that applies afresh; proposers must stop retrying well inside it.
//!
//! Layout follows the rest of the state. `DedupWindow` (the FIFO, and the
//! sequence number of its front) is persisted: snapshots carry it and the
//! digest covers it. `DedupIndex` maps an id to its record's sequence number;
//! it is derived, rebuilt on load, and only probed, never iterated, so its
//! per-process hash seed cannot reach an outcome. Sequence numbers are u32
//! and wrap: they only tell apart the records of one window, which holds
//! fewer than 2^32 (`dedup_window_max` is a u32), and 4-byte entries keep
//! the index half the size, so more of it stays in cache.

use std::collections::VecDeque;
use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};
use rkyv::{Archive, Deserialize, Serialize};

use crate::ids::RequestId;
use crate::outcome::Outcome;

/// One command remembered: its id, when it applied, and what it answered.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub(crate) struct DedupRecord {
    pub request_id: RequestId,
    /// Log time of the entry that applied the command.
    pub at_ms: u64,
    pub outcome: Outcome,
}

/// The remembered commands, oldest first. Part of `Persisted`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub(crate) struct DedupWindow {
    /// Sequence number of `records[0]`; record `i` has `front_seq + i`
    /// (wrapping).
    pub front_seq: u32,
    pub records: VecDeque<DedupRecord>,
}

impl DedupWindow {
    pub fn len(&self) -> usize {
        self.records.len()
    }

    fn seq_at(&self, position: usize) -> u32 {
        // Positions are below `dedup_window_max`, a u32; wrapping is meant.
        self.front_seq.wrapping_add(u32::try_from(position).unwrap_or(u32::MAX))
    }

    fn get(&self, seq: u32) -> Option<&DedupRecord> {
        usize::try_from(seq.wrapping_sub(self.front_seq)).ok().and_then(|position| self.records.get(position))
    }
}

/// Request id → sequence number of its record. Derived from `DedupWindow`.
/// Sequence numbers (4 bytes) rather than (id, seq) pairs (20), so the table
/// stays small; a probe reads the record only when 7 bits of hash match.
#[derive(Debug, Default)]
pub(crate) struct DedupIndex {
    hasher: DefaultHashBuilder,
    table: HashTable<u32>,
}

/// A request id the window does not hold, with its hash, so remembering it
/// after the command applied does not hash it again.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Vacant {
    hash: u64,
}

impl DedupIndex {
    /// Indexes every record of a window (after a snapshot loads).
    pub fn rebuild(window: &DedupWindow) -> Self {
        let mut index = Self { hasher: DefaultHashBuilder::default(), table: HashTable::with_capacity(window.len()) };
        for (position, record) in window.records.iter().enumerate() {
            let hash = index.hasher.hash_one(record.request_id);
            let hasher = &index.hasher;
            index.table.insert_unique(hash, window.seq_at(position), |&seq| rehash(hasher, window, seq));
        }
        index
    }

    /// The remembered outcome of `request_id` if it is in the window;
    /// otherwise the token `push` takes to remember it.
    pub fn find<'w>(&self, window: &'w DedupWindow, request_id: &RequestId) -> Result<&'w Outcome, Vacant> {
        let hash = self.hasher.hash_one(request_id);
        match self.find_hashed(window, request_id, hash).and_then(|seq| window.get(seq)) {
            Some(record) => Ok(&record.outcome),
            None => Err(Vacant { hash }),
        }
    }

    fn find_seq(&self, window: &DedupWindow, request_id: &RequestId) -> Option<u32> {
        self.find_hashed(window, request_id, self.hasher.hash_one(request_id))
    }

    fn find_hashed(&self, window: &DedupWindow, request_id: &RequestId, hash: u64) -> Option<u32> {
        self.table.find(hash, |&seq| window.get(seq).is_some_and(|record| record.request_id == *request_id)).copied()
    }

    /// Remembers a command that was just applied, forgetting the oldest
    /// first if the window is full (first, so the FIFO never grows past its
    /// bound and reallocates). The caller has checked that the id is not in
    /// the window (`vacant` is its answer). A window of 0 (refused by
    /// `Limits::validate`, but `ShardState::new` takes limits as given)
    /// remembers nothing.
    pub fn push(&mut self, window: &mut DedupWindow, vacant: Vacant, record: DedupRecord, window_max: u32) {
        debug_assert!(self.find_seq(window, &record.request_id).is_none(), "request id remembered twice");
        debug_assert_eq!(vacant.hash, self.hasher.hash_one(record.request_id), "token of another id");
        debug_assert!(window.records.back().is_none_or(|last| last.at_ms <= record.at_ms), "log time went back");
        if window_max == 0 {
            return;
        }
        while window.len() >= window_max as usize {
            self.pop_front(window);
        }
        let seq = window.seq_at(window.len());
        window.records.push_back(record);
        let (table, hasher) = (&mut self.table, &self.hasher);
        table.insert_unique(vacant.hash, seq, |&other| rehash(hasher, window, other));
    }

    /// Forgets, oldest first, every record over `window_max` or older than
    /// `retention_ms` at log time `now_ms`. Records are in log-time order, so
    /// the first one kept ends the scan.
    pub fn forget(&mut self, window: &mut DedupWindow, now_ms: u64, window_max: u32, retention_ms: u64) {
        while let Some(front) = window.records.front() {
            let expired = front.at_ms.saturating_add(retention_ms) < now_ms;
            if !expired && window.len() <= window_max as usize {
                break;
            }
            self.pop_front(window);
        }
    }

    fn pop_front(&mut self, window: &mut DedupWindow) {
        let seq = window.front_seq;
        let Some(record) = window.records.pop_front() else {
            return;
        };
        window.front_seq = seq.wrapping_add(1);
        let hash = self.hasher.hash_one(record.request_id);
        if let Ok(entry) = self.table.find_entry(hash, |&other| other == seq) {
            entry.remove();
        }
    }

    /// The window's invariants: within both bounds, in log-time order, ids
    /// unique, and index and FIFO agreeing record for record (so the
    /// sequence numbers are contiguous from the front). O(window).
    pub fn check(&self, window: &DedupWindow, now_ms: u64, window_max: u32, retention_ms: u64) -> Result<(), String> {
        if window.len() > window_max as usize {
            return Err(format!("dedup window holds {} ids; the maximum is {window_max}", window.len()));
        }
        if self.table.len() != window.len() {
            return Err(format!("dedup index has {} ids, the window {}", self.table.len(), window.len()));
        }
        let mut previous_ms = 0;
        for (position, record) in window.records.iter().enumerate() {
            if record.at_ms < previous_ms || record.at_ms > now_ms {
                return Err(format!("dedup record {} at {} is out of log-time order", record.request_id, record.at_ms));
            }
            if record.at_ms.saturating_add(retention_ms) < now_ms {
                return Err(format!("dedup record {} outlived its retention", record.request_id));
            }
            previous_ms = record.at_ms;
            // A duplicate id would be found at its first copy's seq.
            if self.find_seq(window, &record.request_id) != Some(window.seq_at(position)) {
                return Err(format!("dedup record {} is not indexed at its position", record.request_id));
            }
        }
        Ok(())
    }
}

fn rehash(hasher: &DefaultHashBuilder, window: &DedupWindow, seq: u32) -> u64 {
    hasher.hash_one(window.get(seq).map_or(RequestId([0; 16]), |record| record.request_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::{AdjustReason, Command, Confirm, Expect, SetLimits, Transfer, UpsertItem};
    use crate::config::Limits;
    use crate::ids::IdempotencyKey;
    use crate::outcome::Refusal;
    use crate::state::ShardState;
    use crate::testing::{Fixture, adjust, hold, qty, rid, sku, upsert_item, wh};

    fn req(n: u8) -> RequestId {
        RequestId([n; 16])
    }

    /// Runs one command tagged with `request_id`; returns its outcome and
    /// how many events the entry emitted.
    fn once(f: &mut Fixture, request_id: RequestId, command: Command) -> (Outcome, usize) {
        let mut applied = f.run_with_ids(vec![command], vec![request_id]);
        (applied.outcomes.remove(0), applied.events.len())
    }

    #[test]
    fn retried_adjust_with_same_request_id_applies_once() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        let (first, events) = once(&mut f, req(1), adjust("SKU-1", "berlin", 5, AdjustReason::Receive));
        assert!(matches!(&first, Outcome::Adjusted { item } if item.on_hand == 15), "{first:?}");
        assert!(events > 0);
        f.now_ms += 1_000;
        let (retry, retry_events) = once(&mut f, req(1), adjust("SKU-1", "berlin", 5, AdjustReason::Receive));
        assert_eq!(retry, first, "the retry answers the first outcome");
        assert_eq!(retry_events, 0, "a duplicate emits nothing");
        assert_eq!(f.levels("SKU-1", "berlin"), (15, 0));
        assert_eq!(f.state.get_item("SKU-1", "berlin").ok().flatten().map(|v| v.version), Some(2));
    }

    #[test]
    fn retried_transfer_with_same_request_id_applies_once() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        let transfer = Command::Transfer(Transfer {
            note: None,
            reference: None,
            sku: sku("SKU-1"),
            from: wh("berlin"),
            to: wh("paris"),
            quantity: qty(4),
            principal: None,
        });
        let (first, _) = once(&mut f, req(2), transfer.clone());
        assert!(matches!(first, Outcome::Transferred { .. }), "{first:?}");
        let (retry, events) = once(&mut f, req(2), transfer);
        assert_eq!((retry, events), (first, 0));
        assert_eq!(f.levels("SKU-1", "berlin"), (6, 0));
        assert_eq!(f.levels("SKU-1", "paris"), (4, 0));
    }

    #[test]
    fn retried_create_only_upsert_with_same_request_id_answers_created_not_exists() {
        let mut f = Fixture::new();
        let create = Command::UpsertItem(UpsertItem {
            on_hand: Some(7),
            expect: Expect::Absent,
            ..upsert_item("SKU-1", "berlin")
        });
        let (first, _) = once(&mut f, req(3), create.clone());
        assert!(matches!(&first, Outcome::Upserted { created: true, .. }), "{first:?}");
        let (retry, events) = once(&mut f, req(3), create.clone());
        assert_eq!((retry, events), (first, 0));
        // The same command without the id is a new request, and is refused.
        let fresh = f.one(create);
        assert_eq!(fresh, Outcome::Refused(Refusal::ItemExists { version: 1 }));
    }

    #[test]
    fn retried_hold_with_same_request_id_holds_once_and_answers_the_first_outcome() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        let (first, _) = once(&mut f, req(4), hold(rid(1), &[("SKU-1", "berlin", 3)], 60_000, None));
        assert!(matches!(first, Outcome::Held { replayed: false, .. }), "{first:?}");
        // Even a retry that names another reservation holds nothing: the
        // request id, not the command, says it is the same request.
        let (retry, events) = once(&mut f, req(4), hold(rid(2), &[("SKU-1", "berlin", 3)], 60_000, None));
        assert_eq!((retry, events), (first, 0));
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 3));
        assert!(f.state.reservation(&rid(2)).ok().flatten().is_none());
    }

    #[test]
    fn retried_confirm_with_same_request_id_answers_the_first_outcome_with_its_key_after_a_snapshot() {
        // Retention 0: the reservation is forgotten as it is confirmed, so
        // only the window still knows its key.
        let limits = Limits { terminal_retention_ms: 0, terminal_retained_max: 0, ..Limits::default() };
        let mut f = Fixture::with_limits(limits);
        f.stock("SKU-1", "berlin", 10, 0);
        let key = IdempotencyKey::new("order:77").ok();
        f.one(hold(rid(1), &[("SKU-1", "berlin", 3)], 60_000, key.clone()));
        let (first, _) = once(&mut f, req(10), Command::Confirm(Confirm { principal: None, id: rid(1) }));
        assert!(
            matches!(first, Outcome::Confirmed { replayed: false, ref idempotency_key, .. } if *idempotency_key == key),
            "{first:?}"
        );
        assert!(f.state.reservation(&rid(1)).ok().flatten().is_none(), "forgotten at once");
        let bytes = f.state.to_snapshot_bytes().unwrap_or_else(|e| panic!("{e}"));
        let restored = ShardState::from_snapshot_bytes(&bytes).unwrap_or_else(|e| panic!("{e}"));
        let mut g = Fixture { state: restored, index: f.index, now_ms: f.now_ms + 10 };
        let (retry, events) = once(&mut g, req(10), Command::Confirm(Confirm { principal: None, id: rid(1) }));
        assert_eq!((retry, events), (first, 0));
        assert_eq!(g.levels("SKU-1", "berlin"), (7, 0));
    }

    #[test]
    fn a_refused_first_outcome_is_answered_again_though_the_retry_would_now_succeed() {
        let mut f = Fixture::new();
        let (first, _) = once(&mut f, req(5), adjust("SKU-1", "berlin", 5, AdjustReason::Receive));
        assert_eq!(first, Outcome::Refused(Refusal::ItemNotFound));
        f.stock("SKU-1", "berlin", 10, 0);
        let (retry, events) = once(&mut f, req(5), adjust("SKU-1", "berlin", 5, AdjustReason::Receive));
        assert_eq!((retry, events), (first, 0));
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 0));
    }

    #[test]
    fn a_duplicate_within_one_batch_answers_the_first_outcome() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        let applied = f.run_with_ids(
            vec![
                adjust("SKU-1", "berlin", 5, AdjustReason::Receive),
                adjust("SKU-1", "berlin", 1, AdjustReason::Receive),
                adjust("SKU-1", "berlin", 5, AdjustReason::Receive),
            ],
            vec![req(6), req(7), req(6)],
        );
        assert_eq!(applied.outcomes[2], applied.outcomes[0]);
        assert_eq!(f.levels("SKU-1", "berlin"), (16, 0));
        assert_eq!(f.state.stats().request_ids_remembered, 2);
    }

    #[test]
    fn the_window_forgets_the_oldest_id_past_its_count_and_that_id_then_applies_again() {
        // The window's bound: a retry after `dedup_window_max` newer ids is a
        // new request. Proposers must retry well within the window.
        let mut f = Fixture::with_limits(Limits { dedup_window_max: 2, ..Limits::default() });
        f.stock("SKU-1", "berlin", 10, 0);
        once(&mut f, req(1), adjust("SKU-1", "berlin", 1, AdjustReason::Receive));
        once(&mut f, req(2), adjust("SKU-1", "berlin", 1, AdjustReason::Receive));
        once(&mut f, req(3), adjust("SKU-1", "berlin", 1, AdjustReason::Receive));
        assert_eq!(f.state.stats().request_ids_remembered, 2);
        assert_eq!(f.levels("SKU-1", "berlin"), (13, 0));
        once(&mut f, req(2), adjust("SKU-1", "berlin", 1, AdjustReason::Receive));
        assert_eq!(f.levels("SKU-1", "berlin"), (13, 0), "id 2 is still remembered");
        once(&mut f, req(1), adjust("SKU-1", "berlin", 1, AdjustReason::Receive));
        assert_eq!(f.levels("SKU-1", "berlin"), (14, 0), "id 1 was forgotten, so it applied again");
    }

    #[test]
    fn the_window_forgets_ids_older_than_its_retention_and_they_then_apply_again() {
        let mut f = Fixture::with_limits(Limits { dedup_retention_ms: 5_000, ..Limits::default() });
        f.stock("SKU-1", "berlin", 10, 0);
        once(&mut f, req(1), adjust("SKU-1", "berlin", 1, AdjustReason::Receive));
        f.now_ms += 5_000;
        once(&mut f, req(1), adjust("SKU-1", "berlin", 1, AdjustReason::Receive));
        assert_eq!(f.levels("SKU-1", "berlin"), (11, 0), "remembered up to and at its retention");
        f.now_ms += 1;
        f.run(vec![Command::Tick]);
        assert_eq!(f.state.stats().request_ids_remembered, 0, "forgotten once past it, with or without ids");
        once(&mut f, req(1), adjust("SKU-1", "berlin", 1, AdjustReason::Receive));
        assert_eq!(f.levels("SKU-1", "berlin"), (12, 0));
    }

    #[test]
    fn lowering_the_window_through_set_limits_forgets_the_oldest_ids_at_once() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        for n in 1..=3 {
            once(&mut f, req(n), adjust("SKU-1", "berlin", 1, AdjustReason::Receive));
        }
        let limits = Limits { dedup_window_max: 1, ..Limits::default() };
        assert_eq!(f.one(Command::SetLimits(SetLimits { limits })), Outcome::LimitsSet);
        assert_eq!(f.state.stats().request_ids_remembered, 1);
        once(&mut f, req(3), adjust("SKU-1", "berlin", 1, AdjustReason::Receive));
        assert_eq!(f.levels("SKU-1", "berlin"), (13, 0), "the newest id is kept");
    }

    #[test]
    fn a_snapshot_keeps_the_window_and_a_retry_after_restore_applies_once() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        let (first, _) = once(&mut f, req(8), hold(rid(1), &[("SKU-1", "berlin", 2)], 60_000, None));
        once(&mut f, req(9), adjust("SKU-1", "berlin", 3, AdjustReason::Receive));
        let bytes = f.state.to_snapshot_bytes().unwrap_or_else(|e| panic!("{e}"));
        let restored = ShardState::from_snapshot_bytes(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(restored.digest(), f.state.digest());
        assert_eq!(restored.stats().request_ids_remembered, 2);
        let mut g = Fixture { state: restored, index: f.index, now_ms: f.now_ms + 10 };
        let (retry, events) = once(&mut g, req(8), hold(rid(1), &[("SKU-1", "berlin", 2)], 60_000, None));
        assert_eq!((retry, events), (first, 0));
        assert_eq!(g.levels("SKU-1", "berlin"), (13, 2));
    }

    #[test]
    fn the_window_is_in_the_digest() {
        let mut a = Fixture::new();
        let mut b = Fixture::new();
        a.stock("SKU-1", "berlin", 10, 0);
        b.stock("SKU-1", "berlin", 10, 0);
        once(&mut a, req(1), Command::Tick);
        b.one(Command::Tick);
        assert_ne!(a.state.digest(), b.state.digest());
    }

    #[test]
    fn request_ids_not_one_per_command_are_ignored() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        let commands = vec![
            adjust("SKU-1", "berlin", 1, AdjustReason::Receive),
            adjust("SKU-1", "berlin", 1, AdjustReason::Receive),
        ];
        let applied = f.run_with_ids(commands.clone(), vec![req(1)]);
        assert!(applied.outcomes.iter().all(|o| !o.is_refused()));
        f.run_with_ids(commands, vec![req(1), req(1), req(1)]);
        assert_eq!(f.levels("SKU-1", "berlin"), (14, 0), "every command applied");
        assert_eq!(f.state.stats().request_ids_remembered, 0, "no id remembered");
    }

    #[test]
    fn sequence_numbers_wrap_without_losing_an_id() {
        let mut f = Fixture::with_limits(Limits { dedup_window_max: 3, ..Limits::default() });
        f.stock("SKU-1", "berlin", 10, 0);
        // An empty window may start anywhere; start just before the wrap.
        f.state.persisted.dedup.front_seq = u32::MAX - 1;
        for n in 1..=5 {
            once(&mut f, req(n), adjust("SKU-1", "berlin", 1, AdjustReason::Receive));
        }
        assert_eq!(f.state.persisted.dedup.front_seq, 0, "two ids forgotten, the front wrapped");
        for n in 3..=5 {
            once(&mut f, req(n), adjust("SKU-1", "berlin", 1, AdjustReason::Receive));
        }
        assert_eq!(f.levels("SKU-1", "berlin"), (15, 0), "ids on both sides of the wrap are remembered");
        once(&mut f, req(1), adjust("SKU-1", "berlin", 1, AdjustReason::Receive));
        assert_eq!(f.levels("SKU-1", "berlin"), (16, 0), "a forgotten id applies again");
    }

    #[test]
    fn a_window_with_a_repeated_id_is_refused_on_load() {
        let mut f = Fixture::new();
        once(&mut f, req(1), Command::Tick);
        once(&mut f, req(2), Command::Tick);
        let mut state = f.state;
        state.persisted.dedup.records[1].request_id = req(1);
        let bytes = state.to_snapshot_bytes().unwrap_or_else(|e| panic!("{e}"));
        let loaded = ShardState::from_snapshot_bytes(&bytes);
        assert!(loaded.is_err_and(|e| e.contains("not indexed")));
    }
}
