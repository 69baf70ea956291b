//! Live events and alerts against the real binary: the SSE stream
//! (`GET /v1/events`, resumable with `Last-Event-ID`), recent alerts
//! (`GET /v1/alerts`) and signed webhook delivery of threshold crossings to
//! a receiver the test runs itself.

mod common;

use std::time::Duration;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::post;
use bytes::Bytes;
use common::*;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::mpsc;

/// Longest wait for one SSE event or one webhook delivery (a guard only).
const EVENT_WAIT_MAX: Duration = Duration::from_secs(15);
const WEBHOOK_SECRET: &str = "s3cret";

/// One Server-Sent Event: `id:`, `event:` and `data:` as JSON.
#[derive(Debug, Clone)]
struct SseEvent {
    id: String,
    kind: String,
    data: Value,
}

/// An open `GET /v1/events` stream, read frame by frame.
struct SseStream {
    body: Incoming,
    buffer: String,
}

impl SseStream {
    /// Subscribes; once the response head is back the subscription exists,
    /// so every later write is on the stream.
    async fn open(addr: std::net::SocketAddr, query: &str, last_event_id: Option<&str>) -> SseStream {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let mut builder =
            Request::builder().uri(format!("http://{addr}/v1/events{query}")).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            builder = builder.header("last-event-id", id);
        }
        let request = builder.body(Empty::new()).unwrap_or_else(|e| panic!("building the SSE request: {e}"));
        let response = tokio::time::timeout(REQUEST_TIMEOUT, client.request(request))
            .await
            .unwrap_or_else(|_| panic!("no SSE response head"))
            .unwrap_or_else(|e| panic!("GET /v1/events: {e:?}"));
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
        assert!(content_type.starts_with("text/event-stream"), "content-type {content_type:?}");
        SseStream { body: response.into_body(), buffer: String::new() }
    }

    /// The next event (comments and keep-alives skipped); panics if none
    /// comes within [`EVENT_WAIT_MAX`].
    async fn next(&mut self) -> SseEvent {
        tokio::time::timeout(EVENT_WAIT_MAX, self.next_unbounded())
            .await
            .unwrap_or_else(|_| panic!("no SSE event within {EVENT_WAIT_MAX:?}; buffered: {:?}", self.buffer))
    }

    async fn next_unbounded(&mut self) -> SseEvent {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = parse_block(&block) {
                    return event;
                }
            }
            let frame = self
                .body
                .frame()
                .await
                .unwrap_or_else(|| panic!("the SSE stream ended; buffered: {:?}", self.buffer))
                .unwrap_or_else(|e| panic!("reading the SSE stream: {e:?}"));
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(&String::from_utf8_lossy(&data).replace("\r\n", "\n"));
            }
        }
    }

    /// Events until one satisfies `last`, that one included.
    async fn until(&mut self, last: impl Fn(&SseEvent) -> bool) -> Vec<SseEvent> {
        let mut events = Vec::new();
        loop {
            let event = self.next().await;
            let done = last(&event);
            events.push(event);
            if done {
                return events;
            }
        }
    }
}

fn parse_block(block: &str) -> Option<SseEvent> {
    let (mut id, mut kind, mut data) = (None, None, String::new());
    for line in block.lines() {
        if let Some(value) = line.strip_prefix("id:") {
            id = Some(value.trim_start().to_owned());
        } else if let Some(value) = line.strip_prefix("event:") {
            kind = Some(value.trim_start().to_owned());
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push_str(value.strip_prefix(' ').unwrap_or(value));
        }
    }
    let data = serde_json::from_str(&data).unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {block:?}"));
    Some(SseEvent { id: id?, kind: kind?, data })
}

/// What the test's webhook receiver got: headers and raw body.
struct Delivery {
    headers: HeaderMap,
    body: Bytes,
}

/// A receiver on a free loopback port that answers 200 to every
/// `POST /hook` and hands each request to the test.
async fn start_webhook_receiver() -> (std::net::SocketAddr, mpsc::Receiver<Delivery>) {
    let (tx, rx) = mpsc::channel(64);
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(Delivery { headers, body }).await;
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("binding the webhook receiver: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, rx)
}

/// `sha256=` and the lowercase hex HMAC-SHA256 of `body`, computed here
/// independently of the server's code.
fn expected_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|e| panic!("an HMAC key of any length is valid: {e}"));
    mac.update(body);
    let code = mac.finalize().into_bytes();
    let hex: String = code.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("sha256={hex}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_that_crosses_the_threshold_is_streamed_resumable_listed_and_sent_signed() {
    let (hook_addr, mut deliveries) = start_webhook_receiver().await;
    let webhooks = format!(
        "[{{ url = \"http://{hook_addr}/hook\", secret = \"{WEBHOOK_SECRET}\", backoff_first_ms = 50, backoff_max_ms = 500 }}]"
    );
    let node = TallyProcess::start(options().shards(2).set("alerts", "webhooks", &webhooks)).await;
    let http = node.http();
    let (sku, warehouse) = ("ev-mug", "w1");

    let (status, _, body) =
        http.put(&item_path(sku, warehouse), json!({ "on_hand": 10, "low_stock_threshold": 5 })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut live = SseStream::open(node.http_addr, &format!("?sku={sku}"), None).await;

    // 10 on hand, threshold 5: holding 6 leaves 4 available, LOW_STOCK.
    let (status, _, held) = http
        .post("/v1/reservations", json!({ "lines": [{ "sku": sku, "warehouse": warehouse, "quantity": 6 }] }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{held}");
    let seen = live.until(|event| event.kind == "threshold_crossed").await;

    // The stream may also carry the upsert's change: its event reaches the
    // hub after the PUT's answer, so possibly after the stream opened.
    let changed = seen
        .iter()
        .find(|event| event.kind == "stock_changed" && event.data["cause"] == "hold")
        .unwrap_or_else(|| panic!("no stock_changed of the hold before the crossing: {seen:?}"));
    assert_eq!(changed.data["type"], "stock_changed");
    assert_eq!(changed.data["id"], changed.id.as_str(), "the SSE id is the event's id");
    assert_eq!(changed.data["sku"], sku);
    assert_eq!(changed.data["reservation"], held["id"], "{:?}", changed.data);
    assert_eq!((&changed.data["reserved_before"], &changed.data["reserved_after"]), (&json!(0), &json!(6)));
    assert_eq!(changed.data["available_after"], 4);
    let crossing = seen.last().unwrap_or_else(|| panic!("no events"));
    assert_eq!(crossing.data["type"], "threshold_crossed");
    assert_eq!((&crossing.data["from"], &crossing.data["to"]), (&json!("IN_STOCK"), &json!("LOW_STOCK")));
    assert_eq!((&crossing.data["available"], &crossing.data["low_stock_threshold"]), (&json!(4), &json!(5)));
    assert_eq!(crossing.data["sku"], sku);
    assert_eq!(crossing.data["warehouse"], warehouse);

    // Resuming after the first event replays exactly the ones after it.
    let first = &seen[0];
    let mut resumed = SseStream::open(node.http_addr, &format!("?sku={sku}"), Some(&first.id)).await;
    let mut replayed = Vec::new();
    for _ in 1..seen.len() {
        replayed.push(resumed.next().await.id);
    }
    let expected: Vec<String> = seen[1..].iter().map(|event| event.id.clone()).collect();
    assert_eq!(replayed, expected, "Last-Event-ID {} resumes right after it", first.id);
    drop(resumed);
    let malformed = http.request(hyper::Method::GET, "/v1/events", &[("last-event-id", "not-an-id")], None).await;
    assert_problem(&malformed, StatusCode::BAD_REQUEST, "invalid_event_id");

    let (status, _, alerts) = http.get(&format!("/v1/alerts?sku={sku}")).await;
    assert_eq!(status, StatusCode::OK, "{alerts}");
    let listed = alerts["alerts"].as_array().unwrap_or_else(|| panic!("no alerts in {alerts}"));
    assert_eq!(listed.len(), 1, "{alerts}");
    assert_eq!(listed[0]["id"], crossing.id.as_str(), "{alerts}");
    assert_eq!(listed[0]["to"], "LOW_STOCK", "{alerts}");

    let delivery = tokio::time::timeout(EVENT_WAIT_MAX, deliveries.recv())
        .await
        .unwrap_or_else(|_| panic!("no webhook delivery within {EVENT_WAIT_MAX:?}"))
        .unwrap_or_else(|| panic!("the webhook receiver stopped"));
    let header = |name: &str| delivery.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(
        header("x-tally-signature"),
        Some(expected_signature(WEBHOOK_SECRET, &delivery.body)),
        "the signature is sha256=HMAC-SHA256(secret, body)"
    );
    assert_eq!(header("x-tally-event-id").as_deref(), Some(crossing.id.as_str()));
    assert!(header("content-type").is_some_and(|t| t.starts_with("application/json")));
    let sent: Value = serde_json::from_slice(&delivery.body).unwrap_or_else(|e| panic!("webhook body not JSON: {e}"));
    assert_eq!(sent["type"], "threshold_crossed", "{sent}");
    assert_eq!(sent["to"], "LOW_STOCK", "{sent}");
    assert_eq!(sent["sku"], sku, "{sent}");
    assert_ne!(
        expected_signature("another secret", &delivery.body),
        expected_signature(WEBHOOK_SECRET, &delivery.body),
        "the signature depends on the secret"
    );
}

/// What an order service waits for: `reservation.held` / `.refused` (every
/// short line) / `.confirmed`, with the order id, on the stream and to a
/// webhook that subscribed to those types for a SKU prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservation_events_carry_the_order_and_reach_the_webhooks_that_subscribed() {
    let (hook_addr, mut deliveries) = start_webhook_receiver().await;
    let webhooks = format!(
        "[{{ url = \"http://{hook_addr}/hook\", secret = \"{WEBHOOK_SECRET}\", backoff_first_ms = 50, \
         event_types = [\"reservation.held\", \"reservation.refused\", \"reservation.confirmed\"], \
         sku_prefixes = [\"ord-\"] }}]"
    );
    let node = TallyProcess::start(options().shards(2).set("alerts", "webhooks", &webhooks)).await;
    let http = node.http();
    for sku in ["ord-mug", "other-mug"] {
        let (status, _, body) = http.put(&item_path(sku, "w1"), json!({ "on_hand": 5 })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let mut live = SseStream::open(node.http_addr, "?sku=ord-mug", None).await;

    // Another SKU's hold: not sent to the webhook (prefix), nor on this stream.
    let (status, _, _) = http
        .post("/v1/reservations", json!({ "lines": [{ "sku": "other-mug", "warehouse": "w1", "quantity": 1 }] }))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let line = |quantity: u64| json!([{ "sku": "ord-mug", "warehouse": "w1", "quantity": quantity }]);
    let (status, _, held) = http.post("/v1/reservations", json!({ "lines": line(2), "order_id": "order-1" })).await;
    assert_eq!(status, StatusCode::CREATED, "{held}");
    let (status, _, refused) = http.post("/v1/reservations", json!({ "lines": line(9), "order_id": "order-2" })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    let (status, _, confirmed) = http.post_empty("/v1/orders/order-1/confirm").await;
    assert_eq!(status, StatusCode::OK, "{confirmed}");

    let seen = live.until(|event| event.kind == "reservation.confirmed").await;
    let of = |kind: &str| {
        seen.iter().find(|event| event.kind == kind).unwrap_or_else(|| panic!("no {kind} in {seen:?}")).data.clone()
    };
    let on_stream = of("reservation.held");
    assert_eq!((&on_stream["order_id"], &on_stream["reservation"]), (&json!("order-1"), &held["id"]), "{on_stream}");
    assert_eq!(on_stream["lines"], json!([{ "sku": "ord-mug", "warehouse": "w1", "quantity": 2 }]));
    let short = of("reservation.refused");
    assert_eq!(short["order_id"], "order-2", "{short}");
    assert_eq!(short["lines"], json!([{ "sku": "ord-mug", "warehouse": "w1", "quantity": 9, "available": 3 }]));
    assert_eq!(of("reservation.confirmed")["order_id"], "order-1");

    let mut sent = Vec::new();
    while sent.len() < 3 {
        let delivery = tokio::time::timeout(EVENT_WAIT_MAX, deliveries.recv())
            .await
            .unwrap_or_else(|_| panic!("only {sent:?} delivered within {EVENT_WAIT_MAX:?}"))
            .unwrap_or_else(|| panic!("the webhook receiver stopped"));
        let body: Value = serde_json::from_slice(&delivery.body).unwrap_or_else(|e| panic!("not JSON: {e}"));
        sent.push((body["type"].as_str().unwrap_or_default().to_owned(), body["order_id"].clone()));
    }
    assert_eq!(
        sent,
        vec![
            ("reservation.held".to_owned(), json!("order-1")),
            ("reservation.refused".to_owned(), json!("order-2")),
            ("reservation.confirmed".to_owned(), json!("order-1")),
        ],
        "the subscribed types for ord-* only, in order"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(deliveries.try_recv().is_err(), "nothing else: no stock changes, no other SKU");
}
