//! Alert sinks: threshold crossings delivered outside the node, to a
//! JSON-lines file and to webhooks.
//!
//! Only the shard's leader publishes to sinks (DESIGN §7), so a sink takes an
//! event only if it is a `ThresholdCrossed` applied while this node led the
//! shard. Delivery is at-least-once: a retried POST or a leader change may
//! send an alert twice, and consumers dedupe by its id (`X-Tally-Event-Id`,
//! and `id` in the body, which is `events::event_json`).
//!
//! One task reads the cluster's events and only ever pushes into the sinks'
//! queues, each bounded (`queue_max` per webhook, `file_queue_max` for the
//! file) and dropping its oldest alert when full, so a slow disk or a dead
//! webhook never holds memory, the event stream or the writes that feed it.
//! Each sink drains its queue in its own task:
//!
//! * the file sink appends a batch of lines and syncs it to disk once per
//!   batch;
//! * a webhook sink POSTs one alert at a time, in order, signed with
//!   `X-Tally-Signature: sha256=<hex HMAC-SHA256(secret, body)>`, and retries
//!   with doubling backoff up to `attempts_max` before dropping it.
//!
//! Everything given up on is counted in `AlertStats` and logged.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use cluster::NodeEvent;
use engine::{EventKind, EventRecord};
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue, USER_AGENT};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::config::{AlertsConfig, WebhookConfig};
use crate::events::{event_json, is_published, kind_name};

/// Lines appended and synced at once by the file sink.
pub const FILE_BATCH_LINES_MAX: usize = 1024;

/// `X-Tally-Event-Id`: the alert's event id, for deduplication.
pub const EVENT_ID_HEADER: &str = "x-tally-event-id";
/// `X-Tally-Signature`: `sha256=` and `sign(secret, body)`.
pub const SIGNATURE_HEADER: &str = "x-tally-signature";

/// Lowercase hex HMAC-SHA256 of `body` under `secret`: what a webhook
/// receiver recomputes to check `X-Tally-Signature`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length, so this never fails; if it did, an
    // empty signature fails every check rather than passing one.
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret) else { return String::new() };
    mac.update(body);
    crate::hex(&mac.finalize().into_bytes())
}

/// Counts for `/metrics`, summed over the sinks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AlertStats {
    /// Webhook POSTs answered 2xx.
    pub delivered: u64,
    /// Lines appended to the alert file.
    pub file_lines: u64,
    /// Webhook attempts that failed (refused, timed out, not 2xx) and file
    /// writes that failed.
    pub failed_attempts: u64,
    /// Alerts given up on: pushed out of a full queue, out of attempts, or
    /// in a failed file write.
    pub dropped: u64,
    /// Alerts waiting in the sinks' queues.
    pub queued: usize,
    /// Events lost because the reader fell behind the cluster's channel.
    pub missed: u64,
}

/// The sinks of one node.
pub struct Alerts {
    file: Option<Arc<FileSink>>,
    webhooks: Vec<Arc<WebhookSink>>,
    missed: AtomicU64,
}

impl Alerts {
    /// Starts the reader of `events` and one task per sink. With no sink
    /// configured nothing is started.
    pub fn start(config: &AlertsConfig, events: broadcast::Receiver<NodeEvent>) -> Arc<Alerts> {
        let file = config.file.clone().map(|path| Arc::new(FileSink { path, sink: Sink::new(config.file_queue_max) }));
        let webhooks: Vec<Arc<WebhookSink>> = config
            .webhooks
            .iter()
            .map(|config| {
                Arc::new(WebhookSink {
                    config: config.clone(),
                    uri: config.url.parse().map_err(|e: hyper::http::uri::InvalidUri| e.to_string()),
                    sink: Sink::new(config.queue_max),
                })
            })
            .collect();
        let alerts = Arc::new(Alerts { file, webhooks, missed: AtomicU64::new(0) });
        if alerts.file.is_none() && alerts.webhooks.is_empty() {
            return alerts;
        }
        if let Some(file) = &alerts.file {
            tokio::spawn(run_file(Arc::clone(file)));
        }
        for webhook in &alerts.webhooks {
            tokio::spawn(run_webhook(Arc::clone(webhook)));
        }
        tokio::spawn(read_cluster_events(Arc::clone(&alerts), events));
        alerts
    }

    fn sinks(&self) -> impl Iterator<Item = &Sink> {
        self.file.iter().map(|file| &file.sink).chain(self.webhooks.iter().map(|webhook| &webhook.sink))
    }

    pub fn stats(&self) -> AlertStats {
        let mut stats = AlertStats { missed: self.missed.load(Ordering::Relaxed), ..AlertStats::default() };
        for webhook in &self.webhooks {
            stats.delivered += webhook.sink.delivered.load(Ordering::Relaxed);
        }
        if let Some(file) = &self.file {
            stats.file_lines = file.sink.delivered.load(Ordering::Relaxed);
        }
        for sink in self.sinks() {
            stats.failed_attempts += sink.failed_attempts.load(Ordering::Relaxed);
            stats.dropped += sink.dropped.load(Ordering::Relaxed);
            stats.queued += sink.queue.len();
        }
        stats
    }

    /// Best effort at shutdown: waits up to `wait` for every queue to empty
    /// and every delivery in flight to end. True if they did. Alerts still
    /// in the cluster's channel are not waited for.
    pub async fn flush(&self, wait: Duration) -> bool {
        let idle = || self.sinks().all(|sink| sink.queue.len() == 0 && sink.in_flight.load(Ordering::Acquire) == 0);
        tokio::time::timeout(wait, async {
            // Polling is fine here: this runs once, at shutdown.
            while !idle() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .is_ok()
    }
}

/// One alert ready to send: shared by every sink.
#[derive(Debug)]
struct Alert {
    id: String,
    /// The event's type, for the log.
    kind: &'static str,
    /// `event_json` of the crossing.
    body: Bytes,
}

/// The sinks that take `event`: leader events only, threshold crossings
/// for the file, and what each webhook subscribed to.
fn sinks_of<'a>(alerts: &'a Alerts, event: &NodeEvent) -> Vec<&'a Sink> {
    if !event.leader || !is_published(&event.record.kind) {
        return Vec::new();
    }
    let file = alerts.file.iter().filter(|_| is_crossing(&event.record)).map(|file| &file.sink);
    let webhooks = alerts
        .webhooks
        .iter()
        .filter(|webhook| subscribed(&webhook.config, &event.record))
        .map(|webhook| &webhook.sink);
    file.chain(webhooks).collect()
}

/// `event` as its sinks send it.
fn alert_of(event: &NodeEvent) -> Alert {
    let body = Bytes::from(event_json(&event.record).to_string());
    Alert { id: event.record.id.to_string(), kind: kind_name(&event.record.kind), body }
}

fn is_crossing(record: &EventRecord) -> bool {
    matches!(record.kind, EventKind::ThresholdCrossed { .. })
}

/// Whether a webhook subscribed to `event`: by type, and by SKU prefix (a
/// reservation event names its SKUs in its lines).
fn subscribed(config: &WebhookConfig, record: &EventRecord) -> bool {
    let kind = kind_name(&record.kind);
    if !config.event_types.iter().any(|t| t == kind) {
        return false;
    }
    if config.sku_prefixes.is_empty() {
        return true;
    }
    let matches = |sku: &str| config.sku_prefixes.iter().any(|prefix| sku.starts_with(prefix.as_str()));
    matches(&record.sku) || record.lines.iter().any(|line| matches(&line.sku))
}

/// The one reader of the cluster's events: never awaits anything but the
/// next event. When the channel closes it closes the queues; the sinks
/// finish what they hold and stop.
async fn read_cluster_events(alerts: Arc<Alerts>, mut events: broadcast::Receiver<NodeEvent>) {
    loop {
        match events.recv().await {
            Ok(event) => {
                // The JSON body is made only for an event some sink takes:
                // most events (every hold's) go to none.
                let sinks = sinks_of(&alerts, &event);
                if sinks.is_empty() {
                    continue;
                }
                let alert = Arc::new(alert_of(&event));
                for sink in sinks {
                    sink.push(Arc::clone(&alert));
                }
            }
            Err(RecvError::Lagged(missed)) => {
                alerts.missed.fetch_add(missed, Ordering::Relaxed);
                tracing::warn!(missed, "alert sinks fell behind the cluster; crossings among these events are lost");
            }
            Err(RecvError::Closed) => break,
        }
    }
    for sink in alerts.sinks() {
        sink.queue.close();
    }
}

/// What every sink has: its queue and its counts.
struct Sink {
    queue: Queue<Arc<Alert>>,
    /// Alerts that reached their destination.
    delivered: AtomicU64,
    failed_attempts: AtomicU64,
    dropped: AtomicU64,
    /// Alerts taken from the queue and not yet delivered or dropped.
    in_flight: AtomicUsize,
}

impl Sink {
    fn new(queue_max: usize) -> Self {
        Self {
            queue: Queue::new(queue_max),
            delivered: AtomicU64::new(0),
            failed_attempts: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn push(&self, alert: Arc<Alert>) {
        if let Some(oldest) = self.queue.push(alert) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(event_id = %oldest.id, kind = oldest.kind, "alert queue full; dropped its oldest alert");
        }
    }
}

/// A bounded FIFO for one consumer that drops its oldest item when full, so
/// the producer never waits.
struct Queue<T> {
    state: Mutex<QueueState<T>>,
    ready: Notify,
    len_max: usize,
}

struct QueueState<T> {
    items: VecDeque<T>,
    closed: bool,
}

impl<T> Queue<T> {
    fn new(len_max: usize) -> Self {
        Self {
            state: Mutex::new(QueueState { items: VecDeque::with_capacity(len_max.min(1024)), closed: false }),
            ready: Notify::new(),
            len_max,
        }
    }

    fn state(&self) -> MutexGuard<'_, QueueState<T>> {
        // Every change is a whole push or pop: a poisoned queue is still whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `item`; returns the oldest item if it had to go to make room
    /// (or `item` itself when `len_max` is 0).
    fn push(&self, item: T) -> Option<T> {
        let mut state = self.state();
        if self.len_max == 0 {
            return Some(item);
        }
        let dropped = if state.items.len() >= self.len_max { state.items.pop_front() } else { None };
        state.items.push_back(item);
        debug_assert!(state.items.len() <= self.len_max);
        drop(state);
        // One consumer: a stored permit wakes it even if it is not waiting yet.
        self.ready.notify_one();
        dropped
    }

    /// Waits for items and moves up to `max` of them into `into`. False once
    /// the queue is closed and empty.
    async fn pop_into(&self, max: usize, into: &mut Vec<T>) -> bool {
        loop {
            {
                let mut state = self.state();
                if !state.items.is_empty() {
                    let count = state.items.len().min(max.max(1));
                    into.extend(state.items.drain(..count));
                    return true;
                }
                if state.closed {
                    return false;
                }
            }
            self.ready.notified().await;
        }
    }

    fn close(&self) {
        self.state().closed = true;
        self.ready.notify_one();
    }

    fn len(&self) -> usize {
        self.state().items.len()
    }
}

/// The JSON-lines file: one `event_json` per line.
struct FileSink {
    path: PathBuf,
    sink: Sink,
}

async fn run_file(file: Arc<FileSink>) {
    let mut open: Option<tokio::fs::File> = None;
    let mut batch = Vec::with_capacity(FILE_BATCH_LINES_MAX.min(64));
    let mut lines = Vec::new();
    while file.sink.queue.pop_into(FILE_BATCH_LINES_MAX, &mut batch).await {
        file.sink.in_flight.store(batch.len(), Ordering::Release);
        lines.clear();
        for alert in &batch {
            lines.extend_from_slice(&alert.body);
            lines.push(b'\n');
        }
        let count = batch.len() as u64;
        match append(&mut open, &file.path, &lines).await {
            Ok(()) => {
                file.sink.delivered.fetch_add(count, Ordering::Relaxed);
            }
            Err(error) => {
                // Reopen next time: the file may have been moved or the disk
                // freed meanwhile.
                open = None;
                file.sink.failed_attempts.fetch_add(1, Ordering::Relaxed);
                file.sink.dropped.fetch_add(count, Ordering::Relaxed);
                tracing::error!(path = %file.path.display(), %error, lost = count, "cannot append alerts");
            }
        }
        batch.clear();
        file.sink.in_flight.store(0, Ordering::Release);
    }
}

/// Appends `lines` to the file at `path`, opening it if needed, and syncs the
/// data to disk, so an alert counted as delivered survives a crash.
async fn append(open: &mut Option<tokio::fs::File>, path: &Path, lines: &[u8]) -> std::io::Result<()> {
    let file = match open {
        Some(file) => file,
        None => open.insert(tokio::fs::OpenOptions::new().create(true).append(true).open(path).await?),
    };
    file.write_all(lines).await?;
    file.flush().await?;
    file.sync_data().await
}

/// One webhook: its settings, its parsed URL and its queue.
struct WebhookSink {
    config: WebhookConfig,
    uri: Result<Uri, String>,
    sink: Sink,
}

async fn run_webhook(webhook: Arc<WebhookSink>) {
    let timeout = Duration::from_millis(webhook.config.timeout_ms);
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(timeout));
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    if let Err(error) = &webhook.uri {
        tracing::error!(url = %webhook.config.url, %error, "bad webhook url; its alerts will be dropped");
    }
    let mut batch = Vec::with_capacity(1);
    while webhook.sink.queue.pop_into(1, &mut batch).await {
        for alert in batch.drain(..) {
            webhook.sink.in_flight.store(1, Ordering::Release);
            deliver(&client, &webhook, &alert).await;
            webhook.sink.in_flight.store(0, Ordering::Release);
        }
    }
}

/// Sends `alert` until it is answered 2xx or `attempts_max` attempts have
/// failed, waiting `backoff_first_ms`, then twice as long each time up to
/// `backoff_max_ms`, between attempts.
async fn deliver(client: &Client<HttpConnector, Full<Bytes>>, webhook: &WebhookSink, alert: &Alert) {
    let config = &webhook.config;
    let Ok(uri) = &webhook.uri else {
        webhook.sink.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let signature = format!("sha256={}", sign(config.secret.expose(), &alert.body));
    let attempts_max = config.attempts_max.max(1);
    let mut backoff_ms = config.backoff_first_ms.min(config.backoff_max_ms);
    for attempt in 1..=attempts_max {
        match post(client, uri, config.timeout_ms, alert, &signature).await {
            Ok(()) => {
                webhook.sink.delivered.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(error) => {
                webhook.sink.failed_attempts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(url = %config.url, event_id = %alert.id, attempt, %error, "webhook attempt failed");
            }
        }
        if attempt < attempts_max {
            tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
            backoff_ms = backoff_ms.saturating_mul(2).min(config.backoff_max_ms);
        }
    }
    webhook.sink.dropped.fetch_add(1, Ordering::Relaxed);
    tracing::error!(url = %config.url, event_id = %alert.id, attempts_max, "webhook gave up on an alert");
}

/// One attempt: `Ok` on a 2xx answer within `timeout_ms`.
async fn post(
    client: &Client<HttpConnector, Full<Bytes>>,
    uri: &Uri,
    timeout_ms: u64,
    alert: &Alert,
    signature: &str,
) -> Result<(), String> {
    let request = Request::builder()
        .method(Method::POST)
        .uri(uri.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header(USER_AGENT, concat!("tally/", env!("CARGO_PKG_VERSION")))
        .header(EVENT_ID_HEADER, alert.id.as_str())
        .header(SIGNATURE_HEADER, signature)
        .body(Full::new(alert.body.clone()))
        .map_err(|e| e.to_string())?;
    // The response body is not read: only the status matters, and an
    // unread body just costs the pooled connection.
    match tokio::time::timeout(Duration::from_millis(timeout_ms), client.request(request)).await {
        Err(_) => Err(format!("no answer within {timeout_ms} ms")),
        Ok(Err(error)) => Err(error.to_string()),
        Ok(Ok(response)) if response.status().is_success() => Ok(()),
        Ok(Ok(response)) => Err(format!("answered {}", response.status())),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use axum::Router;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use engine::event::{Cause, LevelChange};
    use engine::item::{ItemId, Status};
    use engine::{EventId, EventRecord};
    use serde_json::Value;
    use tokio::sync::mpsc;

    use super::*;

    const GUARD: Duration = Duration::from_secs(10);
    const SECRET: &str = "s3cret";

    fn crossing(index: u64, leader: bool) -> NodeEvent {
        let record = EventRecord {
            principal: None,
            reference: None,
            idempotency_key: None,
            lines: Vec::new(),
            note: None,
            id: EventId { shard: 0, index, position: 1 },
            at_ms: 77,
            sku: "sku-1".into(),
            warehouse: "w1".into(),
            kind: EventKind::ThresholdCrossed {
                item: ItemId(1),
                from: Status::LowStock,
                to: Status::OutOfStock,
                available: 0,
                low_stock_threshold: 3,
            },
        };
        NodeEvent { record: Arc::new(record), leader }
    }

    fn stock_changed(index: u64) -> NodeEvent {
        let levels = LevelChange {
            on_hand_before: 1,
            on_hand_after: 0,
            reserved_before: 0,
            reserved_after: 0,
            unsellable_before: 0,
            unsellable_after: 0,
        };
        let record = EventRecord {
            principal: None,
            reference: None,
            idempotency_key: None,
            lines: Vec::new(),
            note: None,
            id: EventId { shard: 0, index, position: 0 },
            at_ms: 77,
            sku: "sku-1".into(),
            warehouse: "w1".into(),
            kind: EventKind::StockChanged { item: ItemId(1), cause: Cause::Upsert, levels },
        };
        NodeEvent { record: Arc::new(record), leader: true }
    }

    fn webhook(url: &str) -> WebhookConfig {
        WebhookConfig {
            url: url.into(),
            secret: cluster::Secret::new(SECRET),
            queue_max: 16,
            attempts_max: 3,
            backoff_first_ms: 1,
            backoff_max_ms: 2,
            timeout_ms: 5_000,
            ..WebhookConfig::default()
        }
    }

    struct Received {
        headers: HeaderMap,
        body: Bytes,
    }

    /// A webhook receiver on 127.0.0.1 that answers `statuses` in turn, then
    /// 200, and reports every request.
    async fn receiver(statuses: Vec<u16>) -> (String, mpsc::Receiver<Received>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (tx, rx) = mpsc::channel(64);
        let statuses = Arc::new(Mutex::new(VecDeque::from(statuses)));
        let app = Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: Bytes| {
                let (tx, statuses) = (tx.clone(), Arc::clone(&statuses));
                async move {
                    let _ = tx.send(Received { headers, body }).await;
                    let code = statuses.lock().unwrap_or_else(PoisonError::into_inner).pop_front().unwrap_or(200);
                    StatusCode::from_u16(code).unwrap_or_else(|e| panic!("{e}"))
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/hook"), rx)
    }

    /// A URL where nothing listens: connections are refused.
    async fn dead_url() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        drop(listener);
        format!("http://{addr}/hook")
    }

    async fn next(requests: &mut mpsc::Receiver<Received>) -> Received {
        match tokio::time::timeout(GUARD, requests.recv()).await {
            Ok(Some(received)) => received,
            other => panic!("no request: {:?}", other.map(|r| r.map(|r| r.body))),
        }
    }

    fn header<'a>(received: &'a Received, name: &str) -> &'a str {
        received.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_else(|| panic!("no {name}"))
    }

    /// Waits (as a failure guard, not a speed check) until `done` holds.
    async fn wait_until(alerts: &Alerts, done: impl Fn(AlertStats) -> bool) -> AlertStats {
        tokio::time::timeout(GUARD, async {
            loop {
                let stats = alerts.stats();
                if done(stats) {
                    return stats;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("stats never got there: {:?}", alerts.stats()))
    }

    fn send(cluster: &broadcast::Sender<NodeEvent>, event: NodeEvent) {
        cluster.send(event).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn a_webhook_takes_the_event_types_and_sku_prefixes_it_subscribed_to() {
        let mut config = webhook("http://127.0.0.1:1/");
        assert!(subscribed(&config, &crossing(1, true).record), "crossings by default");
        assert!(!subscribed(&config, &stock_changed(2).record));
        config.event_types = vec!["reservation.held".into(), "reservation.refused".into()];
        config.sku_prefixes = vec!["SHOE-".into()];
        let held = |sku: &str| EventRecord {
            kind: EventKind::ReservationHeld {
                reservation: engine::ids::ReservationId::from_bytes([7; 16]),
                deadline_ms: 9,
            },
            sku: String::new(),
            warehouse: String::new(),
            lines: vec![engine::event::RecordLine {
                sku: sku.into(),
                warehouse: "w1".into(),
                quantity: 1,
                available: None,
            }],
            ..(*crossing(3, true).record).clone()
        };
        assert!(subscribed(&config, &held("SHOE-42")), "a line's SKU matches the prefix");
        assert!(!subscribed(&config, &held("HAT-1")), "no line matches");
        assert!(!subscribed(&config, &crossing(4, true).record), "crossings no longer subscribed");
    }

    #[test]
    fn sign_is_hmac_sha256_in_lowercase_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_full_queue_drops_its_oldest_item() {
        let queue = Queue::new(2);
        assert_eq!(queue.push(1), None);
        assert_eq!(queue.push(2), None);
        assert_eq!(queue.push(3), Some(1));
        assert_eq!(queue.len(), 2);
        assert_eq!(Queue::new(0).push(9), Some(9));
    }

    #[tokio::test]
    async fn a_queue_hands_over_what_it_holds_then_ends_when_closed() {
        let queue = Queue::new(8);
        for i in 0..5 {
            queue.push(i);
        }
        queue.close();
        let mut batch = Vec::new();
        assert!(queue.pop_into(3, &mut batch).await);
        assert!(queue.pop_into(3, &mut batch).await);
        assert_eq!(batch, [0, 1, 2, 3, 4]);
        assert!(!queue.pop_into(3, &mut batch).await);
    }

    #[tokio::test]
    async fn a_webhook_gets_leader_crossings_signed_and_nothing_else() {
        let (url, mut requests) = receiver(Vec::new()).await;
        let (cluster, events) = broadcast::channel(64);
        let alerts = Alerts::start(
            &AlertsConfig { file: None, webhooks: vec![webhook(&url)], ..AlertsConfig::default() },
            events,
        );
        send(&cluster, crossing(1, false));
        send(&cluster, stock_changed(2));
        send(&cluster, crossing(3, true));
        let received = next(&mut requests).await;
        assert_eq!(header(&received, "content-type"), "application/json");
        assert_eq!(header(&received, "x-tally-event-id"), "0-3-1");
        let signature = format!("sha256={}", sign(SECRET.as_bytes(), &received.body));
        assert_eq!(header(&received, "x-tally-signature"), signature);
        let body: Value = serde_json::from_slice(&received.body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(body, event_json(&crossing(3, true).record));
        let stats = wait_until(&alerts, |s| s.delivered == 1).await;
        assert_eq!((stats.failed_attempts, stats.dropped, stats.queued), (0, 0, 0));
        assert!(requests.try_recv().is_err(), "only the leader crossing is sent");
    }

    #[tokio::test]
    async fn a_failed_post_is_retried_with_the_same_id_and_body() {
        let (url, mut requests) = receiver(vec![500]).await;
        let (cluster, events) = broadcast::channel(64);
        let alerts = Alerts::start(
            &AlertsConfig { file: None, webhooks: vec![webhook(&url)], ..AlertsConfig::default() },
            events,
        );
        send(&cluster, crossing(5, true));
        let first = next(&mut requests).await;
        let second = next(&mut requests).await;
        assert_eq!(header(&first, "x-tally-event-id"), header(&second, "x-tally-event-id"));
        assert_eq!(first.body, second.body);
        let stats = wait_until(&alerts, |s| s.delivered == 1).await;
        assert_eq!((stats.failed_attempts, stats.dropped), (1, 0));
    }

    #[tokio::test]
    async fn a_dead_webhook_does_not_hold_up_a_live_one() {
        let (url, mut requests) = receiver(Vec::new()).await;
        // Its retries would wait a minute: the live webhook must not.
        let dead = WebhookConfig { backoff_first_ms: 60_000, backoff_max_ms: 60_000, ..webhook(&dead_url().await) };
        let (cluster, events) = broadcast::channel(64);
        let alerts = Alerts::start(
            &AlertsConfig { file: None, webhooks: vec![dead, webhook(&url)], ..AlertsConfig::default() },
            events,
        );
        send(&cluster, crossing(1, true));
        send(&cluster, crossing(2, true));
        assert_eq!(header(&next(&mut requests).await, "x-tally-event-id"), "0-1-1");
        assert_eq!(header(&next(&mut requests).await, "x-tally-event-id"), "0-2-1");
        let stats = wait_until(&alerts, |s| s.delivered == 2 && s.failed_attempts >= 1).await;
        assert_eq!(stats.dropped, 0);
    }

    #[tokio::test]
    async fn a_dead_webhook_drops_each_alert_after_attempts_max() {
        let (cluster, events) = broadcast::channel(64);
        let config = AlertsConfig { file: None, webhooks: vec![webhook(&dead_url().await)], ..AlertsConfig::default() };
        let alerts = Alerts::start(&config, events);
        send(&cluster, crossing(1, true));
        send(&cluster, crossing(2, true));
        let stats = wait_until(&alerts, |s| s.dropped == 2).await;
        assert_eq!((stats.delivered, stats.failed_attempts, stats.queued), (0, 6, 0));
        assert!(alerts.flush(GUARD).await);
    }

    #[tokio::test]
    async fn the_file_gets_one_json_line_per_leader_crossing() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("alerts.jsonl");
        let (cluster, events) = broadcast::channel(64);
        let alerts = Alerts::start(
            &AlertsConfig { file: Some(path.clone()), webhooks: Vec::new(), ..AlertsConfig::default() },
            events,
        );
        send(&cluster, crossing(1, false));
        send(&cluster, stock_changed(2));
        send(&cluster, crossing(3, true));
        send(&cluster, crossing(4, false));
        send(&cluster, crossing(5, true));
        // Events are taken in order: once the last leader crossing is
        // written, every event before it has been looked at.
        wait_until(&alerts, |s| s.file_lines == 2).await;
        let text = tokio::fs::read_to_string(&path).await.unwrap_or_else(|e| panic!("{e}"));
        let lines: Vec<Value> =
            text.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}"))).collect();
        assert_eq!(lines, [event_json(&crossing(3, true).record), event_json(&crossing(5, true).record)]);
        assert!(text.ends_with('\n'));
    }

    #[tokio::test]
    async fn crossings_lost_to_a_lagging_reader_are_counted() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("alerts.jsonl");
        let (cluster, events) = broadcast::channel(2);
        for index in 1..=4 {
            send(&cluster, crossing(index, true));
        }
        let alerts = Alerts::start(
            &AlertsConfig { file: Some(path.clone()), webhooks: Vec::new(), ..AlertsConfig::default() },
            events,
        );
        let stats = wait_until(&alerts, |s| s.file_lines == 2).await;
        assert_eq!(stats.missed, 2);
        let text = tokio::fs::read_to_string(&path).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(text.lines().all(|line| line.contains("\"id\":\"0-3-1\"") || line.contains("\"id\":\"0-4-1\"")));
    }
}
