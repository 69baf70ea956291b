//! Fault injection for tests: simulated partitions, no root needed.
//! Compiled only into test builds and builds with the `fault-injection`
//! feature.
//!
//! `Faults::block(peer)` simulates a partition: it closes this node's
//! connections to and from `peer` and refuses new ones, so calls on either side
//! fail at once with `Unreachable` rather than waiting out their timeouts. A
//! request that arrives from a blocked peer closes its connection unanswered.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::RwLock;

use super::conn::Closer;
use super::registry::Registry;
use super::{Common, Transport};
use crate::raft_types::NodeId;

/// The peers fault injection blocks, in `Common`.
pub(super) type Blocked = RwLock<HashSet<NodeId>>;

/// Simulated partitions, shared inside a `Transport`.
pub struct Faults {
    common: Arc<Common>,
    registry: Arc<Registry>,
}

impl Faults {
    pub(super) fn new(common: Arc<Common>, registry: Arc<Registry>) -> Faults {
        Faults { common, registry }
    }

    /// Drop everything to and from `peer` until healed: closes the
    /// connections to and from it, fails calls to it at once with
    /// `Unreachable`, and closes, unanswered, any connection on which it
    /// connects or sends a request (so its calls fail at once too).
    pub fn block(&self, peer: NodeId) {
        self.common.blocked.write().insert(peer);
        self.registry.close_peer(peer);
    }

    pub fn heal(&self, peer: NodeId) {
        self.common.blocked.write().remove(&peer);
    }

    pub fn heal_all(&self) {
        self.common.blocked.write().clear();
    }

    pub fn is_blocked(&self, peer: NodeId) -> bool {
        self.common.is_blocked(peer)
    }
}

impl Registry {
    fn close_peer(&self, peer: NodeId) {
        let slot = self.peers.lock().slots.get(&peer).cloned();
        if let Some(slot) = slot {
            slot.drop_connection();
        }
        let closers: Vec<Arc<Closer>> = {
            let incoming = self.incoming.lock();
            incoming.links.values().filter(|(from, _)| *from == peer).map(|(_, closer)| closer.clone()).collect()
        };
        // Closed outside the lock: a closed link deregisters itself.
        for closer in closers {
            closer.close();
        }
    }
}

impl Transport {
    /// Fault injection for tests (simulated partitions; no root needed).
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }
}
