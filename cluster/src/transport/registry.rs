//! Every connection of a transport: the slot of each peer (its address and
//! outgoing connection) and the incoming connections, so that a changed
//! address, `shutdown` and fault injection can find and close them.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::TransportError;
use super::conn::{Closer, Connection};
use crate::raft_types::NodeId;

/// Every connection of a transport, so that `block` and `shutdown` can close
/// them.
#[derive(Default)]
pub(super) struct Registry {
    pub(super) peers: Mutex<Peers>,
    pub(super) incoming: Mutex<Incoming>,
}

#[derive(Default)]
pub(super) struct Peers {
    pub(super) closed: bool,
    pub(super) slots: HashMap<NodeId, Arc<PeerSlot>>,
}

#[derive(Default)]
pub(super) struct Incoming {
    closed: bool,
    id_next: u64,
    /// Bounded by `connections_incoming_max`.
    pub(super) links: HashMap<u64, (NodeId, Arc<Closer>)>,
}

impl Registry {
    pub(super) fn slot(&self, peer: NodeId) -> Result<Arc<PeerSlot>, TransportError> {
        let peers = self.peers.lock();
        if peers.closed {
            return Err(TransportError::Closed);
        }
        peers
            .slots
            .get(&peer)
            .cloned()
            .ok_or_else(|| TransportError::Unreachable(format!("no address known for node {peer}")))
    }

    pub(super) fn close_all(&self) {
        let slots: Vec<Arc<PeerSlot>> = {
            let mut peers = self.peers.lock();
            peers.closed = true;
            peers.slots.drain().map(|(_, slot)| slot).collect()
        };
        for slot in slots {
            slot.retire();
        }
        let closers: Vec<Arc<Closer>> = {
            let mut incoming = self.incoming.lock();
            incoming.closed = true;
            incoming.links.drain().map(|(_, (_, closer))| closer).collect()
        };
        for closer in closers {
            closer.close();
        }
    }

    /// `None` once the transport is shut down.
    pub(super) fn register_incoming(&self, peer: NodeId, closer: Arc<Closer>) -> Option<u64> {
        let mut incoming = self.incoming.lock();
        if incoming.closed {
            return None;
        }
        let id = incoming.id_next;
        incoming.id_next += 1;
        incoming.links.insert(id, (peer, closer));
        Some(id)
    }

    pub(super) fn deregister_incoming(&self, id: u64) {
        self.incoming.lock().links.remove(&id);
    }
}

/// Where a peer listens and the connection to it, if any.
pub(super) struct PeerSlot {
    pub(super) addr: String,
    live: Mutex<Live>,
    /// Held while connecting, so that one caller connects at a time.
    pub(super) connecting: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Live {
    /// Replaced by another address or shut down: installs nothing more.
    retired: bool,
    connection: Option<Arc<Connection>>,
}

impl PeerSlot {
    pub(super) fn new(addr: String) -> PeerSlot {
        PeerSlot { addr, live: Mutex::default(), connecting: tokio::sync::Mutex::new(()) }
    }

    pub(super) fn open_connection(&self) -> Option<Arc<Connection>> {
        self.live.lock().connection.as_ref().filter(|connection| connection.shared.is_open()).cloned()
    }

    /// False when the slot is retired; the caller then closes `connection`.
    pub(super) fn install(&self, connection: Arc<Connection>) -> bool {
        let mut live = self.live.lock();
        if live.retired {
            return false;
        }
        live.connection = Some(connection);
        true
    }

    pub(super) fn drop_connection(&self) {
        let connection = self.live.lock().connection.take();
        if let Some(connection) = connection {
            connection.shared.close();
        }
    }

    pub(super) fn retire(&self) {
        let connection = {
            let mut live = self.live.lock();
            live.retired = true;
            live.connection.take()
        };
        if let Some(connection) = connection {
            connection.shared.close();
        }
    }
}
