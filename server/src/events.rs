//! The live event stream (`GET /v1/events`) and the buffers behind it.
//!
//! `EventHub` reads every event this node applies, leader or not, so any
//! node can serve every shard's events (DESIGN §7). It keeps three things,
//! each bounded by `[events]` settings:
//!
//! * a ring of the last `retained_max` events, so a client that reconnects
//!   with `Last-Event-ID` gets what it missed with no gap and no duplicate;
//! * a ring of the last `alerts_retained_max` threshold crossings, for
//!   `GET /v1/alerts`;
//! * a broadcast channel to at most `subscribers_max` live subscribers.
//!
//! Every event is turned into its JSON text once, here, however many
//! subscribers read it. A subscriber that falls behind the live channel is
//! cut off with a final `event: lagged` message rather than slowing the hub;
//! it reconnects with `Last-Event-ID` and is replayed from the ring. When the
//! hub itself falls behind the cluster's channel, events are lost on this
//! node, so it empties the ring and cuts every subscriber: a resume across
//! the hole answers `event_id_not_retained` (410) instead of hiding it.
//!
//! `event_json` is the one JSON shape of an event, shared by the stream,
//! `GET /v1/alerts` and the alert sinks (`alerts.rs`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use cluster::NodeEvent;
use engine::event::LevelChange;
use engine::{EventId, EventKind, EventRecord};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, broadcast};

use crate::config::EventsConfig;
use crate::idempotency;

/// The stable JSON shape of one event:
/// `{"id": "<shard>-<index>-<position>", "type", "at_ms", "sku", "warehouse", ...}`
/// and the fields of its kind. `sku` and `warehouse` are `null` for
/// reservation events, which name no item.
pub fn event_json(record: &EventRecord) -> Value {
    let mut value = json!({
        "id": record.id.to_string(),
        "type": kind_name(&record.kind),
        "at_ms": record.at_ms,
        "sku": non_empty(&record.sku),
        "warehouse": non_empty(&record.warehouse),
    });
    let fields = match record.kind {
        EventKind::StockChanged { item: _, cause, levels } => {
            let LevelChange { on_hand_before, on_hand_after, reserved_before, reserved_after, .. } = levels;
            debug_assert!(reserved_before <= on_hand_before, "{}: reserved above on_hand before", record.id);
            debug_assert!(reserved_after <= on_hand_after, "{}: reserved above on_hand after", record.id);
            json!({
                "cause": cause.as_str(),
                "reservation": cause.reservation().map(|id| id.to_string()),
                "on_hand_before": on_hand_before,
                "on_hand_after": on_hand_after,
                "reserved_before": reserved_before,
                "reserved_after": reserved_after,
                "available_before": levels.available_before(),
                "available_after": levels.available_after(),
            })
        }
        EventKind::ThresholdCrossed { item: _, from, to, available, low_stock_threshold } => json!({
            "from": from.as_str(),
            "to": to.as_str(),
            "available": available,
            "low_stock_threshold": low_stock_threshold,
        }),
        EventKind::ReservationExpired { reservation, deadline_ms }
        | EventKind::ReservationHeld { reservation, deadline_ms } => {
            let mut fields = reservation_fields(record, reservation);
            fields["deadline_ms"] = json!(deadline_ms);
            fields
        }
        EventKind::ReservationRefused { reservation }
        | EventKind::ReservationConfirmed { reservation }
        | EventKind::ReservationReleased { reservation } => reservation_fields(record, reservation),
        EventKind::HoldExtended { item: _, reservation, deadline_ms, levels: _ } => json!({
            "reservation": reservation.to_string(),
            "deadline_ms": deadline_ms,
        }),
        EventKind::BackorderFilled { reservation, item: _, units, backordered } => {
            let mut fields = reservation_fields(record, reservation);
            fields["units"] = json!(units);
            fields["backordered"] = json!(backordered);
            fields
        }
    };
    if let (Value::Object(all), Value::Object(fields)) = (&mut value, fields) {
        all.extend(fields);
    }
    value
}

/// What every reservation event carries for a consumer (an order service
/// waiting for InventoryReserved / InventoryReservationFailed): the
/// reservation, the caller's `order_id` if it gave one, who acted, and the
/// lines (for `reservation.refused`, every short line with what was
/// available).
fn reservation_fields(record: &EventRecord, reservation: engine::ids::ReservationId) -> Value {
    let order_id =
        record.idempotency_key.as_deref().and_then(|key| idempotency::caller_key(idempotency::Kind::Order, key));
    let lines: Vec<Value> = record
        .lines
        .iter()
        .map(|line| {
            let mut value = json!({
                "sku": line.sku,
                "warehouse": non_empty(&line.warehouse),
                "quantity": line.quantity,
            });
            if let Some(available) = line.available {
                value["available"] = json!(available);
            }
            value
        })
        .collect();
    json!({
        "reservation": reservation.to_string(),
        "order_id": order_id,
        "principal": record.principal,
        "lines": lines,
    })
}

/// The `type` of an event in JSON and the `event:` field of SSE.
/// (Before the ledger, an expiry was `reservation_expired`; reservation
/// events now share the `reservation.` prefix.)
pub fn kind_name(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::StockChanged { .. } => "stock_changed",
        EventKind::ThresholdCrossed { .. } => "threshold_crossed",
        EventKind::ReservationExpired { .. } => "reservation.expired",
        EventKind::ReservationHeld { .. } => "reservation.held",
        EventKind::ReservationRefused { .. } => "reservation.refused",
        EventKind::ReservationConfirmed { .. } => "reservation.confirmed",
        EventKind::ReservationReleased { .. } => "reservation.released",
        EventKind::HoldExtended { .. } => "hold_extended",
        EventKind::BackorderFilled { .. } => "reservation.backorder_filled",
    }
}

/// Whether the hub publishes an event of this kind. A hold's extension is
/// one event per line for the ledger; consumers are not sent it.
pub fn is_published(kind: &EventKind) -> bool {
    !matches!(kind, EventKind::HoldExtended { .. })
}

fn non_empty(text: &str) -> Value {
    if text.is_empty() { Value::Null } else { Value::String(text.to_owned()) }
}

/// Reads `"<shard>-<index>-<position>"`, the form `EventId` prints; nothing
/// else (no signs, spaces or leading zeros), so one event has one name.
pub fn parse_event_id(text: &str) -> Option<EventId> {
    let mut parts = text.split('-');
    let (shard, index, position) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !(digits(shard) && digits(index) && digits(position)) {
        return None;
    }
    let id = EventId { shard: shard.parse().ok()?, index: index.parse().ok()?, position: position.parse().ok()? };
    (id.to_string() == text).then_some(id)
}

/// One event as the hub keeps and sends it: the record and its JSON text,
/// built once and shared by the rings and every subscriber.
#[derive(Debug)]
pub struct PublishedEvent {
    /// Hub-local arrival number: consecutive, never reused.
    seq: u64,
    record: Arc<EventRecord>,
    /// `event_json` as text, made when first asked for: most events are
    /// retained and never sent, and making it costs more than the hold did.
    data: std::sync::OnceLock<String>,
}

impl PublishedEvent {
    fn new(seq: u64, record: Arc<EventRecord>) -> Self {
        Self { seq, record, data: std::sync::OnceLock::new() }
    }

    pub fn id(&self) -> EventId {
        self.record.id
    }

    pub fn record(&self) -> &EventRecord {
        &self.record
    }

    /// `event_json` of the record, as text.
    pub fn data(&self) -> &str {
        self.data.get_or_init(|| event_json(&self.record).to_string())
    }

    pub fn kind_name(&self) -> &'static str {
        kind_name(&self.record.kind)
    }

    /// Whether a subscription to `sku` gets this event: an item's events by
    /// its SKU, a reservation's by any of its lines' SKUs.
    fn matches(&self, sku: Option<&str>) -> bool {
        sku.is_none_or(|sku| self.record.sku == sku || self.record.lines.iter().any(|line| line.sku == sku))
    }
}

/// What the hub sends its live subscribers.
#[derive(Clone, Debug)]
enum Live {
    Event(Arc<PublishedEvent>),
    /// The hub missed `missed` events from the cluster: nobody can go on
    /// without a hole.
    Gap {
        missed: u64,
    },
    /// The server is shutting down: every stream ends, so a graceful
    /// shutdown does not wait on connections that never finish.
    Closed,
}

/// Why a subscription was refused. The HTTP layer answers `code()`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("already {max} live subscribers")]
    TooManySubscribers { max: usize },
    #[error("Last-Event-ID {0:?} is not an event id (shard-index-position)")]
    BadEventId(String),
    #[error("event {0} is no longer retained; reload and subscribe afresh")]
    NotRetained(EventId),
}

impl SubscribeError {
    /// The stable `code` of the problem response.
    pub fn code(&self) -> &'static str {
        match self {
            SubscribeError::TooManySubscribers { .. } => "too_many_subscribers",
            SubscribeError::BadEventId(_) => "invalid_event_id",
            SubscribeError::NotRetained(_) => "event_id_not_retained",
        }
    }
}

/// Counts for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventStats {
    /// Live subscriptions now.
    pub subscribers: usize,
    /// Events in the resume ring now.
    pub retained: usize,
    /// Alerts in the alerts ring now.
    pub alerts_retained: usize,
    /// Events the hub has taken from the cluster since start.
    pub published: u64,
    /// Events lost because the hub fell behind the cluster's channel.
    pub lagged_missed: u64,
}

/// The rings, under one lock with the live sender so that a subscriber sees
/// every event exactly once: either in its copy of the ring or live.
struct Rings {
    /// In arrival order. A resume finds its event by scanning from the
    /// newest end: resumes are rare and an index kept per event cost more
    /// than the scan (a hash insert and remove on every hold's event).
    events: VecDeque<Arc<PublishedEvent>>,
    alerts: VecDeque<Arc<PublishedEvent>>,
    next_seq: u64,
}

pub struct EventHub {
    retained_max: usize,
    alerts_retained_max: usize,
    subscribers_max: usize,
    rings: Mutex<Rings>,
    live: broadcast::Sender<Live>,
    subscriber_slots: Arc<Semaphore>,
    lagged_missed: AtomicU64,
}

impl EventHub {
    /// Starts the task that reads `events` for as long as the hub lives.
    pub fn start(config: &EventsConfig, events: broadcast::Receiver<NodeEvent>) -> Arc<EventHub> {
        let hub = Arc::new(EventHub::new(config));
        tokio::spawn(read_cluster_events(Arc::downgrade(&hub), events));
        hub
    }

    fn new(config: &EventsConfig) -> EventHub {
        // Half the ring: a subscriber cut off for lagging the live channel
        // is still within the ring when it resumes, unless it waits for
        // another half ring of events before reconnecting.
        let live_capacity = (config.retained_max / 2).max(1);
        let (live, _) = broadcast::channel(live_capacity);
        EventHub {
            retained_max: config.retained_max,
            alerts_retained_max: config.alerts_retained_max,
            subscribers_max: config.subscribers_max,
            rings: Mutex::new(Rings {
                events: VecDeque::with_capacity(config.retained_max.min(1024)),
                alerts: VecDeque::with_capacity(config.alerts_retained_max.min(1024)),
                next_seq: 0,
            }),
            live,
            subscriber_slots: Arc::new(Semaphore::new(config.subscribers_max)),
            lagged_missed: AtomicU64::new(0),
        }
    }

    fn rings(&self) -> MutexGuard<'_, Rings> {
        // A panic while holding the lock leaves the rings consistent enough
        // to serve: every change below is a push or pop of whole entries.
        self.rings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `record` in the rings and sends it to live subscribers.
    fn publish(&self, record: Arc<EventRecord>) {
        let mut rings = self.rings();
        let seq = rings.next_seq;
        rings.next_seq += 1;
        let event = Arc::new(PublishedEvent::new(seq, record));
        if self.retained_max > 0 {
            if rings.events.len() == self.retained_max {
                rings.events.pop_front();
            }
            rings.events.push_back(Arc::clone(&event));
        }
        if self.alerts_retained_max > 0 && matches!(event.record.kind, EventKind::ThresholdCrossed { .. }) {
            if rings.alerts.len() == self.alerts_retained_max {
                rings.alerts.pop_front();
            }
            rings.alerts.push_back(Arc::clone(&event));
        }
        debug_assert!(rings.events.len() <= self.retained_max);
        debug_assert!(rings.events.front().is_none_or(|first| first.seq + rings.events.len() as u64 == seq + 1));
        // Sent under the lock: see `subscribe`. No subscriber is no error.
        let _ = self.live.send(Live::Event(event));
    }

    /// Ends every live stream (at shutdown); clients reconnect elsewhere
    /// with their last event id.
    pub fn close(&self) {
        let _ = self.live.send(Live::Closed);
    }

    /// The hub missed `missed` events: what it retains no longer follows on
    /// without a hole, and neither does any live stream. The alerts ring
    /// stays: it promises recent crossings, not all of them.
    fn gap(&self, missed: u64) {
        self.lagged_missed.fetch_add(missed, Ordering::Relaxed);
        let mut rings = self.rings();
        rings.events.clear();
        let _ = self.live.send(Live::Gap { missed });
    }

    /// A live subscription, optionally filtered to one SKU. With
    /// `last_event_id`, it first replays every retained event after that one,
    /// in this node's arrival order, then goes on live.
    pub fn subscribe(&self, sku: Option<String>, last_event_id: Option<&str>) -> Result<Subscription, SubscribeError> {
        let after = match last_event_id {
            Some(text) => Some(parse_event_id(text).ok_or_else(|| SubscribeError::BadEventId(text.to_owned()))?),
            None => None,
        };
        let slot = match Arc::clone(&self.subscriber_slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => {
                return Err(SubscribeError::TooManySubscribers { max: self.subscribers_max });
            }
        };
        let rings = self.rings();
        // `publish` sends under this lock, so every event is either in the
        // ring now or will arrive on `live`, never both.
        let live = self.live.subscribe();
        let mut replay = VecDeque::new();
        if let Some(after) = after {
            // The newest arrival of that id (an event can arrive twice,
            // across a leader change): replay what came after it.
            let position =
                rings.events.iter().rposition(|event| event.id() == after).ok_or(SubscribeError::NotRetained(after))?;
            replay
                .extend(rings.events.iter().skip(position + 1).filter(|event| event.matches(sku.as_deref())).cloned());
        }
        let live_after_seq = rings.next_seq.checked_sub(1);
        drop(rings);
        Ok(Subscription { replay, live, live_after_seq, sku, lagged: false, _slot: slot })
    }

    /// Up to `limit` retained threshold crossings, newest first, as
    /// `event_json`.
    pub fn recent_alerts(&self, sku: Option<&str>, limit: usize) -> Vec<Value> {
        let alerts: Vec<Arc<PublishedEvent>> =
            self.rings().alerts.iter().rev().filter(|alert| alert.matches(sku)).take(limit).cloned().collect();
        alerts.iter().map(|alert| event_json(&alert.record)).collect()
    }

    pub fn stats(&self) -> EventStats {
        let rings = self.rings();
        EventStats {
            subscribers: self.subscribers_max.saturating_sub(self.subscriber_slots.available_permits()),
            retained: rings.events.len(),
            alerts_retained: rings.alerts.len(),
            published: rings.next_seq,
            lagged_missed: self.lagged_missed.load(Ordering::Relaxed),
        }
    }
}

/// The hub's one reader of the cluster's events. Ends with the cluster's
/// channel or the hub.
async fn read_cluster_events(hub: Weak<EventHub>, mut events: broadcast::Receiver<NodeEvent>) {
    loop {
        let received = events.recv().await;
        let Some(hub) = hub.upgrade() else { return };
        match received {
            Ok(event) if is_published(&event.record.kind) => hub.publish(event.record),
            Ok(_) => {}
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "event hub fell behind the cluster; resumes across the hole will get 410");
                hub.gap(missed);
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// What a subscription yields next.
#[derive(Clone, Debug)]
pub enum Received {
    Event(Arc<PublishedEvent>),
    /// `missed` events were lost between the last one yielded and now; the
    /// subscription is over and yields nothing more. The client resumes
    /// with the last id it got.
    Lagged {
        missed: u64,
    },
}

/// One live subscriber: holds one of `subscribers_max` slots until dropped.
pub struct Subscription {
    /// Retained events after the resume point, bounded by `retained_max`.
    replay: VecDeque<Arc<PublishedEvent>>,
    live: broadcast::Receiver<Live>,
    /// Live events up to this arrival number were in the ring when the
    /// subscription began; `None` if none had arrived.
    live_after_seq: Option<u64>,
    sku: Option<String>,
    lagged: bool,
    _slot: OwnedSemaphorePermit,
}

impl Subscription {
    /// The next event for this subscriber: replayed ones first, then live.
    /// `None` once it has lagged or the hub is gone.
    pub async fn recv(&mut self) -> Option<Received> {
        if self.lagged {
            return None;
        }
        if let Some(event) = self.replay.pop_front() {
            return Some(Received::Event(event));
        }
        loop {
            match self.live.recv().await {
                Ok(Live::Event(event)) => {
                    // Cannot happen while `publish` sends under the ring lock;
                    // kept so a change there costs a duplicate check, not a
                    // duplicate event.
                    if self.live_after_seq.is_some_and(|after| event.seq <= after) {
                        continue;
                    }
                    if event.matches(self.sku.as_deref()) {
                        return Some(Received::Event(event));
                    }
                }
                Ok(Live::Gap { missed }) => {
                    self.lagged = true;
                    return Some(Received::Lagged { missed });
                }
                Err(RecvError::Lagged(missed)) => {
                    self.lagged = true;
                    return Some(Received::Lagged { missed });
                }
                Ok(Live::Closed) | Err(RecvError::Closed) => return None,
            }
        }
    }
}

/// The subscription as `text/event-stream`: each event with `id:` its id,
/// `event:` its type and `data:` its `event_json`; a comment every
/// `keepalive`. A subscriber that lags gets a last `event: lagged` with
/// `data: {"missed": n}` and the stream ends.
pub fn sse_response(subscription: Subscription, keepalive: Duration) -> Response {
    let stream = futures_util::stream::unfold(Some(subscription), |state| async move {
        let mut subscription = state?;
        match subscription.recv().await? {
            Received::Event(event) => {
                let sse = SseEvent::default().id(event.id().to_string()).event(event.kind_name()).data(event.data());
                Some((Ok::<_, Infallible>(sse), Some(subscription)))
            }
            Received::Lagged { missed } => {
                // No `id:`, so the client's Last-Event-ID stays at the last
                // event it really got.
                let sse = SseEvent::default().event("lagged").data(json!({ "missed": missed }).to_string());
                Some((Ok(sse), None))
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(keepalive)).into_response()
}

#[cfg(test)]
mod tests {
    use engine::cmd::AdjustReason;
    use engine::event::{Cause, LevelChange, RecordLine};
    use engine::ids::ReservationId;
    use engine::item::{ItemId, Status};
    use futures_util::StreamExt;

    use super::*;

    const GUARD: Duration = Duration::from_secs(10);

    fn config(retained_max: usize, subscribers_max: usize) -> EventsConfig {
        EventsConfig { retained_max, alerts_retained_max: 4, subscribers_max, keepalive_seconds: 15 }
    }

    fn id(index: u64) -> EventId {
        EventId { shard: 1, index, position: 0 }
    }

    fn stock_changed(index: u64, sku: &str) -> EventRecord {
        let levels = LevelChange {
            on_hand_before: 10,
            on_hand_after: 10,
            reserved_before: 2,
            reserved_after: 5,
            unsellable_before: 0,
            unsellable_after: 0,
        };
        let cause = Cause::Hold(ReservationId::from_bytes([0xab; 16]));
        EventRecord {
            principal: None,
            reference: None,
            idempotency_key: None,
            lines: Vec::new(),
            note: None,
            id: id(index),
            at_ms: 1000 + index,
            sku: sku.into(),
            warehouse: "w1".into(),
            kind: EventKind::StockChanged { item: ItemId(3), cause, levels },
        }
    }

    fn crossing(index: u64, sku: &str) -> EventRecord {
        EventRecord {
            principal: None,
            reference: None,
            idempotency_key: None,
            lines: Vec::new(),
            note: None,
            id: id(index),
            at_ms: 1000 + index,
            sku: sku.into(),
            warehouse: "w1".into(),
            kind: EventKind::ThresholdCrossed {
                item: ItemId(3),
                from: Status::InStock,
                to: Status::LowStock,
                available: 5,
                low_stock_threshold: 5,
            },
        }
    }

    fn node_event(record: EventRecord) -> NodeEvent {
        NodeEvent { record: Arc::new(record), leader: false }
    }

    /// Sends records and waits until the hub has taken them all.
    async fn send_all(hub: &EventHub, cluster: &broadcast::Sender<NodeEvent>, records: Vec<EventRecord>) {
        let target = hub.stats().published + records.len() as u64;
        for record in records {
            cluster.send(node_event(record)).unwrap_or_else(|e| panic!("{e}"));
        }
        tokio::time::timeout(GUARD, async {
            while hub.stats().published < target {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|e| panic!("hub did not take the events: {e}"));
    }

    async fn next_id(subscription: &mut Subscription) -> String {
        match tokio::time::timeout(GUARD, subscription.recv()).await {
            Ok(Some(Received::Event(event))) => event.id().to_string(),
            other => panic!("expected an event, got {other:?}"),
        }
    }

    fn started(config: &EventsConfig) -> (Arc<EventHub>, broadcast::Sender<NodeEvent>) {
        let (cluster, events) = broadcast::channel(64);
        (EventHub::start(config, events), cluster)
    }

    #[test]
    fn stock_changed_json_carries_levels_cause_and_reservation() {
        let value = event_json(&stock_changed(7, "sku-1"));
        assert_eq!(
            value,
            json!({
                "id": "1-7-0", "type": "stock_changed", "at_ms": 1007, "sku": "sku-1", "warehouse": "w1",
                "cause": "hold", "reservation": "ab".repeat(16),
                "on_hand_before": 10, "on_hand_after": 10, "reserved_before": 2, "reserved_after": 5,
                "available_before": 8, "available_after": 5,
            })
        );
        let mut adjust = stock_changed(8, "sku-1");
        adjust.kind = EventKind::StockChanged {
            item: ItemId(3),
            cause: Cause::Adjust(AdjustReason::Damage),
            levels: LevelChange {
                on_hand_before: 4,
                on_hand_after: 3,
                reserved_before: 0,
                reserved_after: 0,
                unsellable_before: 0,
                unsellable_after: 0,
            },
        };
        let value = event_json(&adjust);
        assert_eq!(value["cause"], "damage");
        assert_eq!(value["reservation"], Value::Null);
    }

    #[test]
    fn a_delete_is_a_stock_change_to_zero_with_cause_delete() {
        let mut delete = stock_changed(9, "sku-1");
        delete.kind = EventKind::StockChanged {
            item: ItemId(3),
            cause: Cause::Delete,
            levels: LevelChange {
                on_hand_before: 4,
                on_hand_after: 0,
                reserved_before: 0,
                reserved_after: 0,
                unsellable_before: 0,
                unsellable_after: 0,
            },
        };
        let value = event_json(&delete);
        assert_eq!((&value["cause"], &value["on_hand_after"]), (&json!("delete"), &json!(0)));
        assert_eq!(value["reservation"], Value::Null);
    }

    #[test]
    fn threshold_crossed_json_names_statuses_as_the_api_does() {
        assert_eq!(
            event_json(&crossing(9, "sku-1")),
            json!({
                "id": "1-9-0", "type": "threshold_crossed", "at_ms": 1009, "sku": "sku-1", "warehouse": "w1",
                "from": "IN_STOCK", "to": "LOW_STOCK", "available": 5, "low_stock_threshold": 5,
            })
        );
    }

    #[test]
    fn reservation_events_carry_order_id_principal_and_lines_and_no_item() {
        let order_key = format!("o{sep}shop{sep}order-7", sep = engine::ids::IDEMPOTENCY_KEY_SEPARATOR as char);
        let record = EventRecord {
            id: EventId { shard: 2, index: 40, position: 3 },
            at_ms: 5,
            sku: String::new(),
            warehouse: String::new(),
            kind: EventKind::ReservationExpired { reservation: ReservationId::from_bytes([0x01; 16]), deadline_ms: 4 },
            principal: None,
            note: None,
            reference: None,
            idempotency_key: Some(order_key.clone()),
            lines: vec![RecordLine { sku: "sku-1".into(), warehouse: "w1".into(), quantity: 2, available: None }],
        };
        assert_eq!(
            event_json(&record),
            json!({
                "id": "2-40-3", "type": "reservation.expired", "at_ms": 5, "sku": null, "warehouse": null,
                "reservation": "01".repeat(16), "deadline_ms": 4, "order_id": "order-7", "principal": null,
                "lines": [{ "sku": "sku-1", "warehouse": "w1", "quantity": 2 }],
            })
        );
        let refused = EventRecord {
            kind: EventKind::ReservationRefused { reservation: ReservationId::from_bytes([0x02; 16]) },
            principal: Some("shop".into()),
            lines: vec![RecordLine { sku: "sku-2".into(), warehouse: String::new(), quantity: 9, available: Some(4) }],
            ..record
        };
        assert_eq!(
            event_json(&refused),
            json!({
                "id": "2-40-3", "type": "reservation.refused", "at_ms": 5, "sku": null, "warehouse": null,
                "reservation": "02".repeat(16), "order_id": "order-7", "principal": "shop",
                "lines": [{ "sku": "sku-2", "warehouse": null, "quantity": 9, "available": 4 }],
            })
        );
    }

    #[test]
    fn event_ids_parse_only_in_their_printed_form() {
        assert_eq!(parse_event_id("1-2-3"), Some(EventId { shard: 1, index: 2, position: 3 }));
        for bad in ["", "1-2", "1-2-3-4", "a-2-3", "+1-2-3", "01-2-3", "1--3", " 1-2-3", "4294967296-0-0"] {
            assert_eq!(parse_event_id(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn resume_replays_exactly_the_later_events_then_goes_live() {
        let (hub, cluster) = started(&config(16, 4));
        send_all(&hub, &cluster, (1..=5).map(|i| stock_changed(i, "sku-1")).collect()).await;
        let mut subscription = hub.subscribe(None, Some("1-2-0")).unwrap_or_else(|e| panic!("{e}"));
        send_all(&hub, &cluster, (6..=7).map(|i| stock_changed(i, "sku-1")).collect()).await;
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(next_id(&mut subscription).await);
        }
        assert_eq!(got, ["1-3-0", "1-4-0", "1-5-0", "1-6-0", "1-7-0"]);
        // Nothing more: no duplicate of a replayed event arrives live.
        send_all(&hub, &cluster, vec![stock_changed(8, "sku-1")]).await;
        assert_eq!(next_id(&mut subscription).await, "1-8-0");
    }

    #[tokio::test]
    async fn resume_from_the_newest_event_replays_nothing() {
        let (hub, cluster) = started(&config(16, 4));
        send_all(&hub, &cluster, (1..=3).map(|i| stock_changed(i, "sku-1")).collect()).await;
        let mut subscription = hub.subscribe(None, Some("1-3-0")).unwrap_or_else(|e| panic!("{e}"));
        send_all(&hub, &cluster, vec![stock_changed(4, "sku-1")]).await;
        assert_eq!(next_id(&mut subscription).await, "1-4-0");
    }

    #[tokio::test]
    async fn resume_from_an_evicted_or_unknown_id_is_not_retained() {
        let (hub, cluster) = started(&config(3, 4));
        send_all(&hub, &cluster, (1..=5).map(|i| stock_changed(i, "sku-1")).collect()).await;
        assert_eq!(hub.stats().retained, 3);
        assert_eq!(hub.subscribe(None, Some("1-2-0")).err(), Some(SubscribeError::NotRetained(id(2))));
        assert_eq!(hub.subscribe(None, Some("9-9-9")).err(), Some(SubscribeError::NotRetained(id_of(9, 9, 9))));
        assert!(hub.subscribe(None, Some("1-3-0")).is_ok());
        assert_eq!(hub.stats().subscribers, 0, "refused subscriptions hold no slot");
    }

    fn id_of(shard: u32, index: u64, position: u32) -> EventId {
        EventId { shard, index, position }
    }

    #[tokio::test]
    async fn a_malformed_last_event_id_is_a_bad_event_id() {
        let (hub, _cluster) = started(&config(3, 4));
        let error = hub.subscribe(None, Some("latest")).err();
        assert_eq!(error, Some(SubscribeError::BadEventId("latest".into())));
        assert_eq!(error.map(|e| e.code()), Some("invalid_event_id"));
    }

    #[tokio::test]
    async fn subscribers_beyond_the_limit_are_refused_until_one_leaves() {
        let (hub, _cluster) = started(&config(3, 2));
        let first = hub.subscribe(None, None).unwrap_or_else(|e| panic!("{e}"));
        let _second = hub.subscribe(None, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(hub.stats().subscribers, 2);
        assert_eq!(hub.subscribe(None, None).err(), Some(SubscribeError::TooManySubscribers { max: 2 }));
        drop(first);
        assert!(hub.subscribe(None, None).is_ok());
    }

    #[tokio::test]
    async fn a_sku_filter_applies_to_replay_and_live() {
        let (hub, cluster) = started(&config(16, 4));
        send_all(&hub, &cluster, vec![stock_changed(1, "a"), stock_changed(2, "b"), stock_changed(3, "a")]).await;
        let mut subscription = hub.subscribe(Some("b".into()), Some("1-1-0")).unwrap_or_else(|e| panic!("{e}"));
        send_all(&hub, &cluster, vec![stock_changed(4, "a"), stock_changed(5, "b")]).await;
        assert_eq!(next_id(&mut subscription).await, "1-2-0");
        assert_eq!(next_id(&mut subscription).await, "1-5-0");
    }

    #[tokio::test]
    async fn recent_alerts_are_newest_first_bounded_and_filtered() {
        let (hub, cluster) = started(&config(16, 4));
        let mut records: Vec<EventRecord> = (1..=6).map(|i| crossing(i, if i % 2 == 0 { "a" } else { "b" })).collect();
        records.push(stock_changed(7, "a"));
        send_all(&hub, &cluster, records).await;
        let ids = |alerts: Vec<Value>| alerts.iter().map(|a| a["id"].as_str().unwrap_or("").to_owned()).collect();
        let all: Vec<String> = ids(hub.recent_alerts(None, 10));
        assert_eq!(all, ["1-6-0", "1-5-0", "1-4-0", "1-3-0"], "alerts_retained_max is 4");
        let a: Vec<String> = ids(hub.recent_alerts(Some("a"), 1));
        assert_eq!(a, ["1-6-0"]);
    }

    #[tokio::test]
    async fn a_subscriber_that_lags_the_hub_is_cut_off_without_blocking_it() {
        // Live channel capacity is retained_max / 2 = 2.
        let (hub, cluster) = started(&config(4, 4));
        let mut slow = hub.subscribe(None, None).unwrap_or_else(|e| panic!("{e}"));
        send_all(&hub, &cluster, (1..=5).map(|i| stock_changed(i, "a")).collect()).await;
        match tokio::time::timeout(GUARD, slow.recv()).await {
            Ok(Some(Received::Lagged { missed })) => assert_eq!(missed, 3),
            other => panic!("expected lagged, got {other:?}"),
        }
        assert!(slow.recv().await.is_none());
        // It resumes from the ring, after the last id it got.
        let mut resumed = hub.subscribe(None, Some("1-2-0")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(next_id(&mut resumed).await, "1-3-0");
    }

    #[tokio::test]
    async fn when_the_hub_lags_the_cluster_no_one_resumes_across_the_hole() {
        let hub = Arc::new(EventHub::new(&config(16, 4)));
        let (cluster, events) = broadcast::channel(2);
        let mut live = hub.subscribe(None, None).unwrap_or_else(|e| panic!("{e}"));
        hub.publish(Arc::new(stock_changed(1, "a")));
        // Overflow the cluster channel before the hub reads it.
        for i in 2..=5 {
            cluster.send(node_event(stock_changed(i, "a"))).unwrap_or_else(|e| panic!("{e}"));
        }
        tokio::spawn(read_cluster_events(Arc::downgrade(&hub), events));
        assert_eq!(next_id(&mut live).await, "1-1-0");
        match tokio::time::timeout(GUARD, live.recv()).await {
            Ok(Some(Received::Lagged { missed })) => assert_eq!(missed, 2),
            other => panic!("expected lagged, got {other:?}"),
        }
        assert_eq!(hub.subscribe(None, Some("1-1-0")).err(), Some(SubscribeError::NotRetained(id(1))));
        tokio::time::timeout(GUARD, async {
            while hub.stats().published < 3 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(hub.stats().lagged_missed, 2);
        // After the hole the stream is whole again.
        assert!(hub.subscribe(None, Some("1-4-0")).is_ok());
    }

    #[tokio::test]
    async fn sse_frames_carry_id_type_and_json_then_lagged_ends_the_stream() {
        let (hub, cluster) = started(&config(4, 4));
        let subscription = hub.subscribe(None, None).unwrap_or_else(|e| panic!("{e}"));
        send_all(&hub, &cluster, vec![crossing(1, "a")]).await;
        let response = sse_response(subscription, Duration::from_secs(60));
        assert_eq!(response.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("text/event-stream"));
        let mut body = response.into_body().into_data_stream();
        let frame = tokio::time::timeout(GUARD, body.next()).await.unwrap_or_else(|e| panic!("{e}"));
        let frame = frame.unwrap_or_else(|| panic!("stream ended")).unwrap_or_else(|e| panic!("{e}"));
        let text = String::from_utf8_lossy(&frame).into_owned();
        let expected = format!("id: 1-1-0\nevent: threshold_crossed\ndata: {}\n\n", event_json(&crossing(1, "a")));
        assert_eq!(text, expected);
        // Overflow the live channel (capacity 2): the stream ends with `lagged`.
        send_all(&hub, &cluster, (2..=6).map(|i| stock_changed(i, "a")).collect()).await;
        let mut rest = Vec::new();
        while let Some(frame) = tokio::time::timeout(GUARD, body.next()).await.unwrap_or_else(|e| panic!("{e}")) {
            rest.extend_from_slice(&frame.unwrap_or_else(|e| panic!("{e}")));
        }
        assert_eq!(String::from_utf8_lossy(&rest), "event: lagged\ndata: {\"missed\":3}\n\n");
    }
}
