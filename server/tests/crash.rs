//! Durability against the real binary: a node killed with SIGKILL in the
//! middle of a stream of holds comes back with every hold it acknowledged,
//! and with nothing it never took.
//!
//! A 201 means the hold is fsynced (DESIGN.md §5), so it must survive. A
//! request that was in flight at the kill got no answer: it may or may not
//! have been applied, so it only widens the upper bound.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

const SKUS: [&str; 5] = ["crash-a", "crash-b", "crash-c", "crash-d", "crash-e"];
const WAREHOUSE: &str = "w1";
/// Far more than the test can hold: no hold is ever short of stock.
const ON_HAND: u64 = 1_000_000;
/// Clients sending holds at once; each has at most one request in flight.
const CLIENTS: usize = 4;
/// Acknowledged holds per round before the kill.
const ACKS_BEFORE_KILL: usize = 150;
/// Kill, restart, check; the second round recovers a WAL that was itself
/// recovered from a crash.
const ROUNDS: usize = 2;
/// Long enough that nothing expires while the test runs.
const TTL_SECONDS: u64 = 3_600;
/// Guard against a node that never acknowledges enough holds.
const STREAM_WAIT_MAX: Duration = Duration::from_secs(60);

/// One hold a client sent, as `(sku, quantity)` lines.
#[derive(Clone, Debug)]
struct Sent {
    key: String,
    body: Value,
    lines: Vec<(&'static str, u64)>,
}

#[derive(Clone, Default)]
struct Ledger {
    /// Answered 201: (reservation id, the hold).
    acked: Vec<(String, Sent)>,
    /// No answer (the kill): maybe applied, maybe not.
    in_flight: Vec<Sent>,
}

impl Ledger {
    fn reserved_by_sku(holds: impl Iterator<Item = Sent>) -> BTreeMap<&'static str, u64> {
        let mut total: BTreeMap<&'static str, u64> = SKUS.iter().map(|s| (*s, 0)).collect();
        for sent in holds {
            for (sku, quantity) in sent.lines {
                *total.entry(sku).or_default() += quantity;
            }
        }
        total
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_hold_survives_kill_9() {
    let mut node = TallyProcess::start(options()).await;
    for sku in SKUS {
        let (status, _, item) = node.http().put(&item_path(sku, WAREHOUSE), json!({ "on_hand": ON_HAND })).await;
        assert_eq!(status, StatusCode::CREATED, "creating {sku}: {item}");
    }

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    for round in 0..ROUNDS {
        let acked_before = lock(&ledger).acked.len();
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| tokio::spawn(send_holds(node.client(), round, client, Arc::clone(&ledger))))
            .collect();
        // Kill mid-stream: the clients are still sending.
        let deadline = Instant::now() + STREAM_WAIT_MAX;
        while lock(&ledger).acked.len() < acked_before + ACKS_BEFORE_KILL {
            assert!(Instant::now() < deadline, "round {round}: {ACKS_BEFORE_KILL} holds not acknowledged in time");
            if clients.iter().any(|c| c.is_finished()) {
                // A client stops only on a panic or when the node stops
                // answering; either way, before the kill it is a failure.
                for client in clients {
                    if client.is_finished() {
                        client.await.unwrap_or_else(|e| panic!("round {round}: a client failed: {e}"));
                    }
                }
                panic!("round {round}: the node stopped answering before the kill: {:?}", lock(&ledger).in_flight);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        node.kill_9();
        for client in clients {
            client.await.unwrap_or_else(|e| panic!("round {round}: a client failed: {e}"));
        }

        node.restart().await;
        let snapshot = lock(&ledger).clone();
        check_recovered(node.http(), &snapshot, round).await;
    }

    // The dedup record survived two crashes too: a retry of the very first
    // hold answers the same reservation and holds nothing more.
    let (first_id, first) = lock(&ledger).acked[0].clone();
    let before = read_reserved(node.http()).await;
    let (status, headers, body) = node
        .http()
        .retry(Method::POST, "/v1/reservations", &[("Idempotency-Key", &first.key)], Some(&first.body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "replaying the first hold: {body}");
    assert_eq!(str_of(&body, "id"), first_id, "a replay answers the first reservation: {body}");
    assert_eq!(
        headers.get("idempotent-replayed").and_then(|v| v.to_str().ok()),
        Some("true"),
        "a replay says so: {headers:?}"
    );
    assert_eq!(read_reserved(node.http()).await, before, "a replay holds nothing more");

    // And the recovered node takes new holds.
    let (status, _, body) = node
        .http()
        .post(
            "/v1/reservations",
            json!({ "lines": [{ "sku": SKUS[0], "warehouse": WAREHOUSE, "quantity": 1 }], "ttl_seconds": TTL_SECONDS }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "a hold after recovery: {body}");
    assert_eq!(read_reserved(node.http()).await[SKUS[0]], before[SKUS[0]] + 1);
}

/// Sends holds one after another until the node stops answering. Most hold
/// one SKU; every fifth holds two (a reservation over two shards, most
/// likely). 503s are retried under the same `Idempotency-Key`.
async fn send_holds(http: Http, round: usize, client: usize, ledger: Arc<Mutex<Ledger>>) {
    for n in 0usize.. {
        let sku = SKUS[(client + n) % SKUS.len()];
        let quantity = 1 + (n % 3) as u64;
        let mut lines = vec![(sku, quantity)];
        if n % 5 == 4 {
            lines.push((SKUS[(client + n + 1) % SKUS.len()], 1));
        }
        let key = format!("crash-r{round}-c{client}-n{n}");
        let body = json!({
            "lines": lines.iter().map(|(sku, quantity)| json!({ "sku": sku, "warehouse": WAREHOUSE, "quantity": quantity })).collect::<Vec<_>>(),
            "ttl_seconds": TTL_SECONDS,
        });
        let sent = Sent { key, body, lines };
        loop {
            match http
                .try_request(Method::POST, "/v1/reservations", &[("Idempotency-Key", &sent.key)], Some(&sent.body))
                .await
            {
                Ok((StatusCode::CREATED, _, reservation)) => {
                    let id = str_of(&reservation, "id").to_owned();
                    lock(&ledger).acked.push((id, sent));
                    break;
                }
                Ok((StatusCode::SERVICE_UNAVAILABLE, _, _)) => tokio::time::sleep(Duration::from_millis(50)).await,
                Ok((status, _, problem)) => panic!("client {client}: hold {} answered {status}: {problem}", sent.key),
                // The node is gone: this hold is in doubt, and so is the
                // stream. Stop.
                Err(_) => {
                    lock(&ledger).in_flight.push(sent);
                    return;
                }
            }
        }
    }
}

/// After a restart: every acknowledged hold is there and held, and each
/// item's `reserved` lies between the acknowledged total and that plus what
/// was in flight at the kills.
async fn check_recovered(http: &Http, ledger: &Ledger, round: usize) {
    for (id, sent) in &ledger.acked {
        let (status, _, reservation) = http.retry(Method::GET, &format!("/v1/reservations/{id}"), &[], None).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "round {round}: acknowledged hold {id} ({}) is lost: {reservation}",
            sent.key
        );
        assert_eq!(str_of(&reservation, "state"), "HELD", "round {round}: {reservation}");
        let lines: Vec<(&str, &str, u64)> = sent.lines.iter().map(|(sku, q)| (*sku, WAREHOUSE, *q)).collect();
        assert_lines(&reservation, &lines);
    }
    let acked = Ledger::reserved_by_sku(ledger.acked.iter().map(|(_, sent)| sent.clone()));
    let in_flight = Ledger::reserved_by_sku(ledger.in_flight.iter().cloned());
    for sku in SKUS {
        let (status, _, item) = http.retry(Method::GET, &item_path(sku, WAREHOUSE), &[], None).await;
        assert_eq!(status, StatusCode::OK, "round {round}: {item}");
        let reserved = u64_of(&item, "reserved");
        assert!(
            reserved >= acked[sku],
            "round {round}: {sku} reserved {reserved} < {} acknowledged: an acknowledged hold was lost: {item}",
            acked[sku]
        );
        assert!(
            reserved <= acked[sku] + in_flight[sku],
            "round {round}: {sku} reserved {reserved} > {} acknowledged + {} in flight: a hold appeared from nowhere \
             or applied twice: {item}",
            acked[sku],
            in_flight[sku]
        );
        assert_eq!(u64_of(&item, "on_hand"), ON_HAND, "round {round}: holds never change on_hand: {item}");
        assert_eq!(u64_of(&item, "available"), ON_HAND - reserved, "round {round}: {item}");
    }
    eprintln!(
        "round {round}: {} acknowledged, {} in flight at the kills, all acknowledged recovered",
        ledger.acked.len(),
        ledger.in_flight.len()
    );
}

async fn read_reserved(http: &Http) -> BTreeMap<&'static str, u64> {
    let mut reserved = BTreeMap::new();
    for sku in SKUS {
        let (status, _, item) = http.retry(Method::GET, &item_path(sku, WAREHOUSE), &[], None).await;
        assert_eq!(status, StatusCode::OK, "{item}");
        reserved.insert(sku, u64_of(&item, "reserved"));
    }
    reserved
}

/// The ledger's lock; a panicking client cannot leave it half-written (each
/// update is one push), so a poisoned lock is still good to read.
fn lock(ledger: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(PoisonError::into_inner)
}
