//! Every shard's events on every node, hosted or not (docs/SCALE-OUT.md §6).
//!
//! A node streams (`Node::events`) the events its own groups apply. For a
//! shard it does not serve itself (`route`), a task relays them from a node
//! that does: every `event_relay_interval_ms` it asks one
//! (`Request::Events`; the leader it knows first, then the map's voters,
//! then every peer) for the shard's events after the last one it relayed,
//! and publishes them as this node's, marked not led here (sinks with
//! outside effects take leader events only, DESIGN §7). Every replica
//! applies the same events with the same ids, so the answer is the same
//! whichever host gives it, and a relay that changes host neither skips
//! nor repeats. It starts from "now", as a local subscriber does.
//!
//! Hosts answer from their `EventRing` (the newest `event_relay_buffer_max`
//! events per shard). A relay that fell further behind (its node was cut
//! off) is told some were lost, logs it, and goes on from what is kept:
//! like a slow subscriber's `lagged`, the live stream is not the record
//! (the shard's log and the ledger are).

use std::sync::{Arc, Weak};
use std::time::Duration;

use engine::event::EventId;

use super::Inner;
use super::route::Route;
use crate::event_ring::before_every_event;
use crate::raft_types::NodeId;
use crate::state_machine::NodeEvent;
use crate::wire::{Request, Response};

/// Events asked for in one call.
const RELAY_BATCH_MAX: u32 = 512;

/// Relays `shard`'s events to this node's stream while it does not serve
/// the shard itself; ends with the node.
pub(super) async fn relay_events(node: Weak<Inner>, shard: u32) {
    let mut cursor: Option<EventId> = None;
    loop {
        let Some(inner) = node.upgrade() else { return };
        if inner.shut_down.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let interval = Duration::from_millis(inner.config.event_relay_interval_ms.max(1));
        let target = match inner.route(shard) {
            None => return,
            // Served here: its events come from its own group. A relay that
            // starts again later goes on from the last one applied here.
            Some(Route::Local(_)) => {
                cursor = inner.event_ring.newest(shard).or(cursor);
                None
            }
            Some(Route::Remote(route)) => route.target(&inner.route_peers()),
        };
        let more = match target {
            Some(target) => relay_once(&inner, shard, target, &mut cursor).await,
            None => false,
        };
        drop(inner);
        if !more {
            tokio::time::sleep(interval).await;
        }
    }
}

/// One call to `target`; publishes what it answers. Answers whether it was
/// a full batch (more may be waiting).
async fn relay_once(inner: &Inner, shard: u32, target: NodeId, cursor: &mut Option<EventId>) -> bool {
    let Some(route) = inner.routes.get(shard as usize) else { return false };
    let request = Request::Events { group: shard, after: *cursor, max: RELAY_BATCH_MAX };
    match inner.transport.call(target, &request, inner.rpc_timeout()).await {
        Ok(Response::Events { records, newest, lost }) => {
            let Some(after) = *cursor else {
                // The first answer says where the relay starts: now.
                *cursor = Some(newest.unwrap_or_else(|| before_every_event(shard)));
                return false;
            };
            if lost {
                tracing::warn!(shard, from = target, ?after, "events of the shard were lost to this node's stream");
            }
            let more = records.len() >= RELAY_BATCH_MAX as usize;
            for record in records {
                if record.id.shard != shard || cursor.is_some_and(|seen| record.id <= seen) {
                    continue;
                }
                *cursor = Some(record.id);
                // No subscriber is not an error: the events are in the log.
                let _ = inner.events.send(NodeEvent { record: Arc::new(record), leader: false });
            }
            more
        }
        Ok(Response::NotHosted { leader }) => {
            route.redirect(target, leader);
            false
        }
        _ => {
            route.forget(target);
            false
        }
    }
}
