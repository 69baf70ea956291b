//! A flash sale against the real binary: many clients race for a few units
//! of one SKU on a single node, and the node never sells a unit twice.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::json;
use tokio::sync::Barrier;

const CLIENTS: usize = 200;
const UNITS: u64 = 100;
const SKU: &str = "flash-sale-1";
const WAREHOUSE: &str = "w1";

/// What one racing client ended with.
enum Attempt {
    /// Held one unit and confirmed it: the reservation id.
    Bought(String),
    /// Refused with 409 `insufficient_stock`.
    SoldOut,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_clients_racing_for_a_hundred_units_buy_exactly_a_hundred() {
    let node = TallyProcess::start(options()).await;
    let (status, _, item) =
        node.http().put(&item_path(SKU, WAREHOUSE), json!({ "on_hand": UNITS, "low_stock_threshold": 10 })).await;
    assert_eq!(status, StatusCode::CREATED, "creating the item: {item}");

    let attempts = race(&node, |http, client_index| async move { buy_one(&http, client_index).await }).await;
    let mut bought = BTreeSet::new();
    let mut sold_out = 0u64;
    for attempt in attempts {
        match attempt {
            Attempt::Bought(id) => assert!(bought.insert(id.clone()), "reservation {id} was given to two clients"),
            Attempt::SoldOut => sold_out += 1,
        }
    }
    assert_eq!(bought.len() as u64, UNITS, "confirmed purchases");
    assert_eq!(sold_out, CLIENTS as u64 - UNITS, "every other client is refused with insufficient_stock");

    let (status, _, item) = node.http().get(&item_path(SKU, WAREHOUSE)).await;
    assert_eq!(status, StatusCode::OK, "{item}");
    assert_eq!(u64_of(&item, "on_hand"), 0, "every unit sold, none oversold: {item}");
    assert_eq!(u64_of(&item, "reserved"), 0, "no hold left behind: {item}");
    assert_eq!(u64_of(&item, "available"), 0, "{item}");
    assert_eq!(str_of(&item, "status"), "OUT_OF_STOCK", "{item}");

    for id in &bought {
        let (status, _, reservation) = node.http().get(&format!("/v1/reservations/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{reservation}");
        assert_eq!(str_of(&reservation, "state"), "CONFIRMED", "{reservation}");
    }
}

/// Runs `client` once per each of `CLIENTS` clients, each on its own
/// connection, opened (and checked with `/healthz`) before all start at
/// once; answers what each returned, by client index.
async fn race<T, F, Fut>(node: &TallyProcess, client: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(Http, usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let start = Arc::new(Barrier::new(CLIENTS));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|client_index| {
            let http = node.client();
            let start = Arc::clone(&start);
            let run = client(http.clone(), client_index);
            tokio::spawn(async move {
                let (status, _, _) = http.get("/healthz").await;
                assert_eq!(status, StatusCode::OK, "client {client_index}: /healthz");
                start.wait().await;
                run.await
            })
        })
        .collect();
    let mut answers = Vec::with_capacity(CLIENTS);
    for task in tasks {
        answers.push(task.await.unwrap_or_else(|e| panic!("a client task failed: {e}")));
    }
    answers
}

/// Holds one unit and, if that succeeds, confirms it. 503s are retried: the
/// hold carries an `Idempotency-Key`, so a retry never holds twice.
async fn buy_one(http: &Http, client_index: usize) -> Attempt {
    let key = format!("flash-client-{client_index}");
    let hold = json!({
        "lines": [{ "sku": SKU, "warehouse": WAREHOUSE, "quantity": 1 }],
        "ttl_seconds": 600,
        "order_id": format!("order-{client_index}"),
    });
    let reply = http.retry(Method::POST, "/v1/reservations", &[("Idempotency-Key", &key)], Some(&hold)).await;
    match reply.0 {
        StatusCode::CREATED => {}
        StatusCode::CONFLICT => {
            assert_problem(&reply, StatusCode::CONFLICT, "insufficient_stock");
            return Attempt::SoldOut;
        }
        status => panic!("client {client_index}: hold answered {status}: {}", reply.2),
    }
    let reservation = reply.2;
    assert_eq!(str_of(&reservation, "state"), "HELD", "client {client_index}: {reservation}");
    assert_lines(&reservation, &[(SKU, WAREHOUSE, 1)]);
    let id = str_of(&reservation, "id").to_owned();
    end_reservation(http, &id, "confirm").await;
    Attempt::Bought(id)
}

/// Allocation is one atomic step in the engine: clients racing for units of
/// a SKU spread over warehouses, naming none, are never refused while a
/// unit is left anywhere (a read-then-hold allocation was, when another
/// client took the units it had read).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_racing_without_a_warehouse_get_every_unit_of_every_warehouse() {
    const SPREAD_SKU: &str = "flash-spread-1";
    const WAREHOUSES: [&str; 3] = ["north", "south", "west"];
    const PER_WAREHOUSE: u64 = 40;
    let node = TallyProcess::start(options()).await;
    for warehouse in WAREHOUSES {
        let (status, _, item) =
            node.http().put(&item_path(SPREAD_SKU, warehouse), json!({ "on_hand": PER_WAREHOUSE })).await;
        assert_eq!(status, StatusCode::CREATED, "creating the item: {item}");
    }
    let units = PER_WAREHOUSE * WAREHOUSES.len() as u64;
    let replies = race(&node, |http, client_index| async move {
        let key = format!("spread-client-{client_index}");
        let hold = json!({ "lines": [{ "sku": SPREAD_SKU, "quantity": 1 }], "ttl_seconds": 600 });
        http.retry(Method::POST, "/v1/reservations", &[("Idempotency-Key", &key)], Some(&hold)).await
    })
    .await;
    let mut held_in: Vec<String> = Vec::new();
    let mut refused = 0u64;
    for reply in replies {
        match reply.0 {
            StatusCode::CREATED => held_in.push(str_of(&reply.2["lines"][0], "warehouse").to_owned()),
            StatusCode::CONFLICT => {
                assert_problem(&reply, StatusCode::CONFLICT, "insufficient_stock");
                refused += 1;
            }
            status => panic!("hold answered {status}: {}", reply.2),
        }
    }
    assert_eq!(held_in.len() as u64, units, "every unit held, none refused while stock was left");
    assert_eq!(refused, CLIENTS as u64 - units);
    for warehouse in WAREHOUSES {
        assert_eq!(held_in.iter().filter(|w| *w == warehouse).count() as u64, PER_WAREHOUSE, "{warehouse}");
        let (_, _, item) = node.http().get(&item_path(SPREAD_SKU, warehouse)).await;
        assert_eq!((u64_of(&item, "reserved"), u64_of(&item, "available")), (PER_WAREHOUSE, 0), "{item}");
    }
}
