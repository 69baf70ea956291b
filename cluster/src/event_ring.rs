//! The newest events of each shard a node applied, kept so that nodes that
//! do not host the shard can relay them (`node::relay`, docs/SCALE-OUT.md
//! §6). Bounded by `event_relay_buffer_max` per shard.

use std::collections::VecDeque;
use std::sync::Arc;

use engine::event::{EventId, EventRecord};
use parking_lot::Mutex;

/// The newest events of each shard this node applied.
#[derive(Debug)]
pub struct EventRing {
    shards: Vec<Mutex<ShardRing>>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct ShardRing {
    records: VecDeque<Arc<EventRecord>>,
    /// The newest event dropped to keep `capacity`.
    dropped: Option<EventId>,
}

/// Most events one answer carries, whatever the asker asks.
pub const ANSWER_MAX: u32 = 1024;

/// A host's answer to a relay.
#[derive(Debug, PartialEq, Eq)]
pub struct RelayAnswer {
    pub records: Vec<EventRecord>,
    /// The newest event the host keeps for the shard.
    pub newest: Option<EventId>,
    /// Whether events after the asker's cursor were dropped here.
    pub lost: bool,
}

impl EventRing {
    pub fn new(shards: u32, capacity: usize) -> Arc<EventRing> {
        Arc::new(EventRing { shards: (0..shards).map(|_| Mutex::default()).collect(), capacity: capacity.max(1) })
    }

    /// Keeps `record` (applied here, in log order). A record not after the
    /// newest kept starts the shard's ring over: the shard's group here
    /// started again from an older point (a replica that moved away and
    /// back catches up from the leader's snapshot and log).
    pub fn push(&self, record: &Arc<EventRecord>) {
        let Some(ring) = self.shards.get(record.id.shard as usize) else { return };
        let mut ring = ring.lock();
        if ring.records.back().is_some_and(|last| last.id >= record.id) {
            *ring = ShardRing::default();
        }
        if ring.records.len() == self.capacity {
            ring.dropped = ring.records.pop_front().map(|dropped| dropped.id);
        }
        ring.records.push_back(Arc::clone(record));
    }

    /// Forgets what was kept of `shard` (its group stopped here).
    pub fn clear(&self, shard: u32) {
        if let Some(ring) = self.shards.get(shard as usize) {
            *ring.lock() = ShardRing::default();
        }
    }

    /// The newest event kept for `shard`.
    pub fn newest(&self, shard: u32) -> Option<EventId> {
        self.shards.get(shard as usize)?.lock().records.back().map(|record| record.id)
    }

    /// Up to `max` events of `shard` after `after`; with `None`, none (the
    /// asker starts from `newest`).
    pub fn after(&self, shard: u32, after: Option<EventId>, max: u32) -> RelayAnswer {
        let Some(ring) = self.shards.get(shard as usize) else {
            return RelayAnswer { records: Vec::new(), newest: None, lost: false };
        };
        let ring = ring.lock();
        let newest = ring.records.back().map(|record| record.id);
        let Some(after) = after else {
            return RelayAnswer { records: Vec::new(), newest, lost: false };
        };
        let lost = ring.dropped.is_some_and(|dropped| dropped > after);
        let start = ring.records.partition_point(|record| record.id <= after);
        let records = ring
            .records
            .range(start..)
            .take(max.min(ANSWER_MAX) as usize)
            .map(|record| EventRecord::clone(record))
            .collect();
        RelayAnswer { records, newest, lost }
    }
}

/// The cursor a relay starts from when the host keeps no event of the
/// shard yet: before every event (log index 0 is the group's first
/// membership, which makes none).
pub fn before_every_event(shard: u32) -> EventId {
    EventId { shard, index: 0, position: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::event::EventKind;

    fn record(shard: u32, index: u64) -> Arc<EventRecord> {
        Arc::new(EventRecord {
            id: EventId { shard, index, position: 0 },
            at_ms: index,
            sku: "s".into(),
            warehouse: "w".into(),
            kind: EventKind::ReservationExpired {
                reservation: engine::ids::ReservationId::from_parts(0, [0; 14]),
                deadline_ms: 0,
            },
            principal: None,
            note: None,
            reference: None,
            idempotency_key: None,
            lines: Vec::new(),
        })
    }

    #[test]
    fn a_ring_answers_what_follows_a_cursor_and_says_when_some_was_dropped() {
        let ring = EventRing::new(2, 3);
        assert_eq!(ring.after(1, None, 10), RelayAnswer { records: Vec::new(), newest: None, lost: false });
        for index in 1..=4 {
            ring.push(&record(1, index));
        }
        let ids = |answer: RelayAnswer| answer.records.iter().map(|r| r.id.index).collect::<Vec<_>>();
        // Kept: 2, 3, 4 (1 was dropped).
        assert_eq!(ring.newest(1).map(|id| id.index), Some(4));
        assert_eq!(ring.after(1, None, 10).records, Vec::new());
        assert_eq!(ids(ring.after(1, Some(record(1, 2).id), 10)), [3, 4]);
        assert_eq!(ids(ring.after(1, Some(record(1, 2).id), 1)), [3]);
        assert!(!ring.after(1, Some(record(1, 1).id), 10).lost, "nothing after 1 was dropped");
        let behind = ring.after(1, Some(before_every_event(1)), 10);
        assert!(behind.lost, "event 1 was dropped");
        assert_eq!(ids(behind), [2, 3, 4]);
        assert_eq!(ring.newest(0), None);
        // The shard's group started over here: older ids start the ring
        // over instead of breaking its order.
        ring.push(&record(1, 2));
        assert_eq!(ids(ring.after(1, Some(before_every_event(1)), 10)), [2]);
        ring.clear(1);
        assert_eq!(ring.newest(1), None);
    }
}
