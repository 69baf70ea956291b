//! The transport's counters: atomics bumped on the hot path, read together
//! as `TransportStats`.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Transport;

/// Counters since the transport was made. Bytes include frame headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
    /// Outgoing connections established (handshake done).
    pub connects: u64,
    pub connect_failures: u64,
    /// Incoming connections accepted (handshake done).
    pub accepts: u64,
    /// Incoming connections closed at once: `connections_incoming_max` were
    /// open.
    pub connections_refused: u64,
    /// Incoming handshakes that failed: no or a malformed hello, a wrong
    /// proof (another secret), a node id this node does not admit, or no
    /// handshake within `connect_timeout_ms`.
    pub handshakes_refused: u64,
    /// Incoming connections closed for sending nothing for
    /// `idle_timeout_ms` with no request running.
    pub idle_closed: u64,
    /// Calls that ran out of time.
    pub timeouts: u64,
    /// Connections closed for breaking the protocol or failing I/O, and
    /// answers that did not decode.
    pub errors: u64,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) frames_sent: AtomicU64,
    pub(super) bytes_sent: AtomicU64,
    pub(super) frames_received: AtomicU64,
    pub(super) bytes_received: AtomicU64,
    pub(super) connects: AtomicU64,
    pub(super) connect_failures: AtomicU64,
    pub(super) accepts: AtomicU64,
    pub(super) connections_refused: AtomicU64,
    pub(super) handshakes_refused: AtomicU64,
    pub(super) idle_closed: AtomicU64,
    pub(super) timeouts: AtomicU64,
    pub(super) errors: AtomicU64,
}

pub(super) fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl Transport {
    pub fn stats(&self) -> TransportStats {
        let c = &self.inner.common.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        TransportStats {
            frames_sent: get(&c.frames_sent),
            bytes_sent: get(&c.bytes_sent),
            frames_received: get(&c.frames_received),
            bytes_received: get(&c.bytes_received),
            connects: get(&c.connects),
            connect_failures: get(&c.connect_failures),
            accepts: get(&c.accepts),
            connections_refused: get(&c.connections_refused),
            handshakes_refused: get(&c.handshakes_refused),
            idle_closed: get(&c.idle_closed),
            timeouts: get(&c.timeouts),
            errors: get(&c.errors),
        }
    }
}
