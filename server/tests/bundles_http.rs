//! Bundles over HTTP against a real `tally` process with 4 shards: a
//! reservation line naming a bundle holds every component, all or none, on
//! one shard or across shards; a bundle's availability comes from its
//! components; definitions follow their rules, each refusal with its code.

mod common;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

const SHARDS: u32 = 4;

/// `count` SKUs named `{prefix}-n`, each on a different shard.
fn skus_on_distinct_shards(prefix: &str, count: usize) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for n in 0.. {
        let sku = format!("{prefix}-{n}");
        let shard = engine::shard_of(&sku, SHARDS);
        if found.iter().all(|other| engine::shard_of(other, SHARDS) != shard) {
            found.push(sku);
        }
        if found.len() == count {
            break;
        }
    }
    found
}

async fn stock(http: &Http, sku: &str, warehouse: &str, on_hand: u64) {
    let (status, _, body) = http.put(&item_path(sku, warehouse), json!({ "on_hand": on_hand })).await;
    assert!(status.is_success(), "stock {sku}/{warehouse}: {status} {body}");
}

async fn levels(http: &Http, sku: &str, warehouse: &str) -> (u64, u64) {
    let (status, _, item) = http.get(&item_path(sku, warehouse)).await;
    assert_eq!(status, StatusCode::OK, "{item}");
    (u64_of(&item, "on_hand"), u64_of(&item, "reserved"))
}

async fn define(http: &Http, bundle: &str, components: &[(&str, u64)]) -> (StatusCode, Value) {
    let components: Vec<Value> =
        components.iter().map(|(sku, quantity)| json!({ "sku": sku, "quantity": quantity })).collect();
    let (status, _, body) = http.put(&format!("/v1/bundles/{bundle}"), json!({ "components": components })).await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_holds_every_component_all_or_none_across_shards() {
    let node = TallyProcess::start(options().shards(SHARDS)).await;
    let http = node.http();
    let skus = skus_on_distinct_shards("PART", 2);
    let (a, b) = (skus[0].as_str(), skus[1].as_str());
    stock(http, a, "berlin", 10).await;
    stock(http, b, "berlin", 3).await;
    stock(http, b, "paris", 1).await;
    let (status, body) = define(http, "KIT-1", &[(a, 2), (b, 1)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["components"], json!([{ "sku": a, "quantity": 2 }, { "sku": b, "quantity": 1 }]));

    // Availability: A makes 10 / 2 = 5 bundles, B 4 / 1 = 4 over its two
    // warehouses; Berlin alone (the one warehouse with both) makes 3.
    let (status, _, kit) = http.get("/v1/bundles/KIT-1").await;
    assert_eq!(status, StatusCode::OK, "{kit}");
    assert_eq!(u64_of(&kit, "available"), 4, "{kit}");
    assert_eq!(kit["warehouses"], json!([{ "warehouse": "berlin", "available": 3 }]), "{kit}");
    assert_eq!(u64_of(&kit["components"][0], "bundles"), 5, "{kit}");

    // Two kits, retried with one key: held once.
    let request = json!({ "lines": [{ "sku": "KIT-1", "quantity": 2 }] });
    let (status, _, first) = http.post_with("/v1/reservations", request.clone(), &[("idempotency-key", "kit-1")]).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_lines(&first, &[(a, "berlin", 4), (b, "berlin", 2)]);
    assert_eq!(first["bundles"][0]["sku"], "KIT-1", "{first}");
    assert_eq!(first["bundles"][0]["quantity"], 2, "{first}");
    let (status, headers, again) = http.post_with("/v1/reservations", request, &[("idempotency-key", "kit-1")]).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(again["id"], first["id"], "a retry answers the first reservation");
    assert_eq!(headers.get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));
    assert_eq!(levels(http, a, "berlin").await, (10, 4));

    // Three more need 3 of B; 2 are left: nothing is held, and the short
    // line is the request's, naming its bundle.
    let (status, _, refused) =
        http.post("/v1/reservations", json!({ "lines": [{ "sku": "KIT-1", "quantity": 3 }] })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["code"], "insufficient_stock");
    let short = &refused["lines"][0];
    assert_eq!(
        (short["line"].as_u64(), short["sku"].as_str(), short["bundle"].as_str()),
        (Some(0), Some(b), Some("KIT-1"))
    );
    assert_eq!(levels(http, a, "berlin").await, (10, 4), "a refused bundle holds none of its components");
    assert_eq!(levels(http, b, "paris").await, (1, 0));

    // A bundle line in a warehouse holds every component there; beside a
    // plain line, and in a batch.
    let lines = json!({ "lines": [{ "sku": "KIT-1", "warehouse": "berlin", "quantity": 1 }, { "sku": b, "warehouse": "paris", "quantity": 1 }] });
    let (status, _, mixed) = http.post("/v1/reservations", lines).await;
    assert_eq!(status, StatusCode::CREATED, "{mixed}");
    assert_lines(&mixed, &[(a, "berlin", 2), (b, "berlin", 1), (b, "paris", 1)]);
    let batch = json!({ "requests": [{ "lines": [{ "sku": "KIT-1", "quantity": 1 }] }, { "lines": [{ "sku": "KIT-1", "quantity": 1 }] }] });
    let (status, _, answer) = http.post("/v1/reservations/batch", batch).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // A has 4 left (2 bundles) but B has none: both refused, nothing held.
    assert_eq!(answer["held"], 0, "{answer}");
    assert_eq!(answer["results"][0]["problem"]["code"], "insufficient_stock", "{answer}");
    assert_eq!(levels(http, a, "berlin").await, (10, 6));

    // Confirming sells the components.
    let id = str_of(&first, "id");
    end_reservation(http, id, "confirm").await;
    assert_eq!(levels(http, a, "berlin").await, (6, 2));
    assert_eq!(levels(http, b, "berlin").await, (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_definitions_follow_their_rules() {
    let node = TallyProcess::start(options().shards(SHARDS)).await;
    let http = node.http();
    stock(http, "SHIRT", "berlin", 5).await;

    for (components, code) in [
        (vec![], "invalid_bundle"),
        (vec![("KIT", 1)], "invalid_bundle"),
        (vec![("SHIRT", 1), ("SHIRT", 2)], "invalid_bundle"),
        (vec![("SHIRT", 0)], "quantity_zero"),
    ] {
        let reply = {
            let body: Vec<Value> = components.iter().map(|(s, q)| json!({ "sku": s, "quantity": q })).collect();
            http.put("/v1/bundles/KIT", json!({ "components": body })).await
        };
        assert_problem(&reply, StatusCode::BAD_REQUEST, code);
    }
    // A SKU with stock is no bundle; a bundle SKU takes no stock.
    let reply = http.put("/v1/bundles/SHIRT", json!({ "components": [{ "sku": "CAP", "quantity": 1 }] })).await;
    assert_problem(&reply, StatusCode::CONFLICT, "sku_has_items");
    assert_eq!(define(http, "KIT", &[("SHIRT", 1), ("CAP", 1)]).await.0, StatusCode::OK);
    assert_problem(
        &http.put(&item_path("KIT", "berlin"), json!({ "on_hand": 1 })).await,
        StatusCode::CONFLICT,
        "sku_is_bundle",
    );
    // Bundles do not nest, either way round.
    let reply = http.put("/v1/bundles/BOX", json!({ "components": [{ "sku": "KIT", "quantity": 1 }] })).await;
    assert_problem(&reply, StatusCode::CONFLICT, "bundle_nested");
    let reply = http.put("/v1/bundles/CAP", json!({ "components": [{ "sku": "HAT", "quantity": 1 }] })).await;
    assert_problem(&reply, StatusCode::CONFLICT, "bundle_nested");

    // Listed, read, removed.
    assert_eq!(define(http, "KIT-2", &[("SHIRT", 2)]).await.0, StatusCode::OK);
    let (status, _, page) = http.get("/v1/bundles?limit=1").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        page["bundles"],
        json!([{ "sku": "KIT", "components": [{ "sku": "SHIRT", "quantity": 1 }, { "sku": "CAP", "quantity": 1 }] }])
    );
    let (_, _, next) = http.get(&format!("/v1/bundles?limit=1&cursor={}", str_of(&page, "next_cursor"))).await;
    assert_eq!(next["bundles"][0]["sku"], "KIT-2", "{next}");
    assert_eq!(next["next_cursor"], Value::Null, "{next}");
    // CAP is stocked nowhere: the kit is unavailable.
    let (_, _, kit) = http.get("/v1/bundles/KIT").await;
    assert_eq!((u64_of(&kit, "available"), kit["warehouses"].clone()), (0, json!([])), "{kit}");
    let reply = http.post("/v1/reservations", json!({ "lines": [{ "sku": "KIT", "quantity": 1 }] })).await;
    assert_problem(&reply, StatusCode::CONFLICT, "insufficient_stock");
    assert_eq!(levels(http, "SHIRT", "berlin").await, (5, 0));

    let (status, _, _) = http.request(Method::DELETE, "/v1/bundles/KIT", &[], None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_problem(
        &http.request(Method::DELETE, "/v1/bundles/KIT", &[], None).await,
        StatusCode::NOT_FOUND,
        "bundle_not_found",
    );
    assert_problem(&http.get("/v1/bundles/KIT").await, StatusCode::NOT_FOUND, "bundle_not_found");
    // No longer a bundle: stock may be kept under its SKU.
    stock(http, "KIT", "berlin", 1).await;
}
