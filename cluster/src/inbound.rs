//! Snapshots being received from leaders, chunk by chunk, and the bounds
//! on what they hold.
//!
//! A leader streams a snapshot to a follower as `SnapshotChunk` requests
//! (`network.rs`), each acknowledged before the next; the follower keeps
//! the bytes here until the last chunk arrives and then installs the whole
//! image. Without bounds, any peer could make a node hold memory by
//! starting transfers and never finishing them. So:
//!
//! * a transfer is keyed by (peer, shard): a new transfer from the same
//!   peer for the same shard replaces the old one;
//! * one peer has at most `per_peer_max` transfers in progress; a chunk that
//!   would start another is refused (the leader retries later);
//! * the bytes held, over every peer, are at most `bytes_max`
//!   (`snapshot_bytes_max`). A chunk that would go beyond first evicts
//!   transfers that started after its own, newest first, so the oldest
//!   transfer always makes progress; if that is not enough, its own
//!   transfer is dropped and the chunk refused;
//! * a transfer that receives no chunk for `idle_timeout` is abandoned and
//!   dropped (`expire`, called on every chunk and by the node's sweeper).
//!
//! Chunks arrive in order: a chunk must start where the transfer's bytes
//! end, and a new transfer at 0. Anything else drops the transfer.
//!
//! The bytes counted are the image bytes received; their buffer's capacity
//! is at most twice that (`Vec` growth). An image taken out by its last
//! chunk is no longer counted here: it is being installed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::raft_types::NodeId;

/// The bounds; see the module docs.
#[derive(Clone, Copy, Debug)]
pub struct InboundLimits {
    pub per_peer_max: usize,
    pub bytes_max: u64,
    pub idle_timeout: Duration,
}

/// What becomes of a chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Stored; more chunks are expected.
    Stored,
    /// The last chunk: the whole image, no longer held here.
    Complete(Vec<u8>),
    /// Not stored, with why; the transfer is gone (or never started).
    Refused(String),
}

/// Figures for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InboundStats {
    /// Transfers in progress.
    pub transfers: u64,
    /// Image bytes they hold.
    pub bytes: u64,
    /// Transfers dropped or refused: abandoned (timed out), replaced,
    /// evicted for bytes, over the per-peer bound, out of order.
    pub dropped: u64,
}

struct Transfer {
    transfer: u64,
    /// Order in which transfers started; eviction takes the newest first.
    started: u64,
    image: Vec<u8>,
    last_chunk_at: Instant,
}

/// Every snapshot transfer in progress on this node.
pub struct InboundSnapshots {
    limits: InboundLimits,
    transfers: HashMap<(NodeId, u32), Transfer>,
    bytes: u64,
    started_next: u64,
    dropped: u64,
}

impl InboundSnapshots {
    pub fn new(limits: InboundLimits) -> Self {
        InboundSnapshots { limits, transfers: HashMap::new(), bytes: 0, started_next: 0, dropped: 0 }
    }

    pub fn stats(&self) -> InboundStats {
        InboundStats { transfers: self.transfers.len() as u64, bytes: self.bytes, dropped: self.dropped }
    }

    /// Takes one chunk of `transfer` from `from` for `shard`, at `now`.
    #[allow(clippy::too_many_arguments)]
    pub fn receive(
        &mut self,
        from: NodeId,
        shard: u32,
        transfer: u64,
        offset: u64,
        data: Vec<u8>,
        last: bool,
        now: Instant,
    ) -> Chunk {
        self.expire(now);
        let key = (from, shard);
        if self.transfers.get(&key).is_some_and(|current| current.transfer != transfer) {
            // A new transfer from the same leader replaces an abandoned one.
            self.drop_transfer(key);
        }
        if !self.transfers.contains_key(&key) {
            if offset != 0 {
                self.dropped += 1;
                return Chunk::Refused(format!("snapshot chunk at {offset} of a transfer not in progress"));
            }
            let from_peer = self.transfers.keys().filter(|(peer, _)| *peer == from).count();
            if from_peer >= self.limits.per_peer_max {
                self.dropped += 1;
                return Chunk::Refused(format!(
                    "node {from} already has {from_peer} snapshot transfers in progress here \
                     (snapshot_transfers_per_peer_max)"
                ));
            }
            let started = self.started_next;
            self.started_next += 1;
            self.transfers.insert(key, Transfer { transfer, started, image: Vec::new(), last_chunk_at: now });
        }
        let Some(current) = self.transfers.get(&key) else {
            return Chunk::Refused("snapshot transfer vanished".to_string()); // inserted above
        };
        let held = current.image.len() as u64;
        if offset != held {
            self.drop_transfer(key);
            return Chunk::Refused(format!("snapshot chunk at {offset}, expected {held}"));
        }
        let adding = data.len() as u64;
        if held.saturating_add(adding) > self.limits.bytes_max {
            self.drop_transfer(key);
            return Chunk::Refused(format!(
                "snapshot larger than snapshot_bytes_max ({} bytes)",
                self.limits.bytes_max
            ));
        }
        let started = current.started;
        if !self.make_room(adding, started) {
            self.drop_transfer(key);
            return Chunk::Refused(format!(
                "snapshots being received would hold more than snapshot_bytes_max ({} bytes)",
                self.limits.bytes_max
            ));
        }
        let Some(current) = self.transfers.get_mut(&key) else {
            return Chunk::Refused("snapshot transfer vanished".to_string()); // make_room spares it
        };
        if current.image.is_empty() {
            current.image = data;
        } else {
            current.image.extend_from_slice(&data);
        }
        current.last_chunk_at = now;
        self.bytes += adding;
        debug_assert_eq!(self.bytes, self.transfers.values().map(|t| t.image.len() as u64).sum::<u64>());
        debug_assert!(self.bytes <= self.limits.bytes_max);
        if !last {
            return Chunk::Stored;
        }
        match self.transfers.remove(&key) {
            Some(done) => {
                self.bytes -= done.image.len() as u64;
                Chunk::Complete(done.image)
            }
            None => Chunk::Refused("snapshot transfer vanished".to_string()),
        }
    }

    /// Drops every transfer that received nothing for the idle timeout.
    pub fn expire(&mut self, now: Instant) {
        let idle_timeout = self.limits.idle_timeout;
        let abandoned: Vec<(NodeId, u32)> = self
            .transfers
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(t.last_chunk_at) >= idle_timeout)
            .map(|(key, _)| *key)
            .collect();
        for key in abandoned {
            tracing::debug!(peer = key.0, shard = key.1, "snapshot transfer abandoned; dropped");
            self.drop_transfer(key);
        }
    }

    /// Evicts transfers that started after `started`, newest first, until
    /// `adding` more bytes fit; false if they do not.
    fn make_room(&mut self, adding: u64, started: u64) -> bool {
        while self.bytes.saturating_add(adding) > self.limits.bytes_max {
            let newest = self
                .transfers
                .iter()
                .filter(|(_, t)| t.started > started)
                .max_by_key(|(_, t)| t.started)
                .map(|(key, _)| *key);
            let Some(key) = newest else { return false };
            tracing::debug!(peer = key.0, shard = key.1, "snapshot transfer evicted for an older one's bytes");
            self.drop_transfer(key);
        }
        true
    }

    fn drop_transfer(&mut self, key: (NodeId, u32)) {
        if let Some(gone) = self.transfers.remove(&key) {
            self.bytes -= gone.image.len() as u64;
            self.dropped += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbound(per_peer_max: usize, bytes_max: u64) -> InboundSnapshots {
        InboundSnapshots::new(InboundLimits { per_peer_max, bytes_max, idle_timeout: Duration::from_secs(10) })
    }

    #[test]
    fn a_transfer_in_order_completes_with_its_bytes_and_holds_nothing_after() {
        let mut inbound = inbound(2, 100);
        let now = Instant::now();
        assert_eq!(inbound.receive(2, 0, 7, 0, vec![1, 2], false, now), Chunk::Stored);
        assert_eq!(inbound.stats(), InboundStats { transfers: 1, bytes: 2, dropped: 0 });
        assert_eq!(inbound.receive(2, 0, 7, 2, vec![3], true, now), Chunk::Complete(vec![1, 2, 3]));
        assert_eq!(inbound.stats(), InboundStats::default());
    }

    #[test]
    fn a_peer_beyond_its_transfer_bound_is_refused() {
        let mut inbound = inbound(2, 1000);
        let now = Instant::now();
        for shard in 0..100 {
            let _ = inbound.receive(2, shard, u64::from(shard), 0, vec![0; 10], false, now);
        }
        assert_eq!(inbound.stats().transfers, 2);
        assert_eq!(inbound.stats().bytes, 20);
        // Another peer has bounds of its own.
        assert_eq!(inbound.receive(3, 0, 1, 0, vec![0; 10], false, now), Chunk::Stored);
    }

    #[test]
    fn bytes_over_the_bound_evict_newer_transfers_first_and_the_oldest_progresses() {
        let mut inbound = inbound(8, 100);
        let now = Instant::now();
        assert_eq!(inbound.receive(2, 0, 1, 0, vec![0; 40], false, now), Chunk::Stored);
        assert_eq!(inbound.receive(3, 0, 1, 0, vec![0; 40], false, now), Chunk::Stored);
        // The newer one cannot grow past the bound: it is dropped.
        assert!(matches!(inbound.receive(3, 0, 1, 40, vec![0; 40], false, now), Chunk::Refused(_)));
        assert_eq!(inbound.stats().bytes, 40);
        assert_eq!(inbound.receive(3, 0, 2, 0, vec![0; 40], false, now), Chunk::Stored);
        // The older one evicts the newer to grow.
        assert_eq!(inbound.receive(2, 0, 1, 40, vec![0; 40], false, now), Chunk::Stored);
        assert_eq!(inbound.stats(), InboundStats { transfers: 1, bytes: 80, dropped: 2 });
    }

    #[test]
    fn one_snapshot_over_the_bound_is_refused_and_dropped() {
        let mut inbound = inbound(8, 100);
        let now = Instant::now();
        assert_eq!(inbound.receive(2, 0, 1, 0, vec![0; 60], false, now), Chunk::Stored);
        assert!(matches!(inbound.receive(2, 0, 1, 60, vec![0; 60], false, now), Chunk::Refused(_)));
        assert_eq!(inbound.stats(), InboundStats { transfers: 0, bytes: 0, dropped: 1 });
    }

    #[test]
    fn chunks_out_of_order_drop_the_transfer() {
        let mut inbound = inbound(8, 100);
        let now = Instant::now();
        assert!(matches!(inbound.receive(2, 0, 1, 5, vec![0; 5], false, now), Chunk::Refused(_)));
        assert_eq!(inbound.receive(2, 0, 1, 0, vec![0; 5], false, now), Chunk::Stored);
        assert!(matches!(inbound.receive(2, 0, 1, 3, vec![0; 5], false, now), Chunk::Refused(_)));
        assert_eq!(inbound.stats().transfers, 0);
    }

    #[test]
    fn a_new_transfer_replaces_the_old_one_of_the_same_peer_and_shard() {
        let mut inbound = inbound(8, 100);
        let now = Instant::now();
        assert_eq!(inbound.receive(2, 0, 1, 0, vec![0; 30], false, now), Chunk::Stored);
        assert_eq!(inbound.receive(2, 0, 2, 0, vec![0; 10], false, now), Chunk::Stored);
        assert_eq!(inbound.stats(), InboundStats { transfers: 1, bytes: 10, dropped: 1 });
    }

    #[test]
    fn an_abandoned_transfer_is_dropped_after_the_idle_timeout() {
        let mut inbound = inbound(8, 100);
        let start = Instant::now();
        assert_eq!(inbound.receive(2, 0, 1, 0, vec![0; 30], false, start), Chunk::Stored);
        assert_eq!(inbound.receive(2, 1, 1, 0, vec![0; 30], false, start + Duration::from_secs(5)), Chunk::Stored);
        inbound.expire(start + Duration::from_secs(10));
        assert_eq!(inbound.stats(), InboundStats { transfers: 1, bytes: 30, dropped: 1 });
        inbound.expire(start + Duration::from_secs(15));
        assert_eq!(inbound.stats(), InboundStats { transfers: 0, bytes: 0, dropped: 2 });
    }
}
