//! The movement ledger over HTTP: `GET /v1/ledger` and `tally ledger export`
//! against a real `tally` process, with API keys so the principal is the
//! key's name; and its bad parameters, each with its own code.

mod common;

use std::collections::BTreeMap;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const ADMIN_KEY: &str = "ledger-admin-key";
const SHOP_KEY: &str = "ledger-shop-key";

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
}

fn keys() -> String {
    let keys: Vec<String> = [("ops", "admin", ADMIN_KEY), ("shop", "reserve", SHOP_KEY)]
        .iter()
        .map(|(name, role, key)| {
            format!("{{ name = \"{name}\", role = \"{role}\", sha256 = \"{}\" }}", sha256_hex(key))
        })
        .collect();
    format!("[{}]", keys.join(", "))
}

async fn call(http: &Http, method: Method, path: &str, key: &str, body: Option<Value>) -> Value {
    let auth = format!("Bearer {key}");
    let (status, _, answer) = http.request(method.clone(), path, &[("authorization", &auth)], body.as_ref()).await;
    assert!(status.is_success(), "{method} {path}: {status} {answer}");
    answer
}

/// Every page of `query`, `limit` at a time.
async fn ledger(http: &Http, query: &str, limit: usize) -> Vec<Value> {
    let auth = format!("Bearer {SHOP_KEY}");
    let mut entries = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/ledger?limit={limit}{query}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let (status, _, page) = http.request(Method::GET, &path, &[("authorization", &auth)], None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {page}");
        entries.extend(page["entries"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return entries,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_records_who_why_and_the_levels_of_every_movement_and_exports_them() {
    let node = TallyProcess::start(options().shards(4).set("auth", "keys", &keys())).await;
    let http = node.http();
    let sku = "led-boot";
    let id = make_movements(http, sku).await;
    // The ledger is written from the applied log after the answers go
    // out: wait until it holds the seven movements.
    let entries =
        eventually("the ledger records the seven movements", std::time::Duration::from_secs(30), async || {
            let entries = ledger(http, &format!("&sku={sku}"), 1000).await;
            (entries.len() >= 7).then_some(entries)
        })
        .await;
    check_entries(&entries, &id);
    check_reconciliation(http, sku, &entries).await;
    check_pages_and_filters(http, sku, &entries).await;
    check_bad_parameters(http).await;
    check_export(&node, sku, &entries);
}

/// An upsert, an adjustment with a note and a reference, a transfer, and a
/// hold that is extended and confirmed; the hold's id.
async fn make_movements(http: &Http, sku: &str) -> String {
    call(http, Method::PUT, &item_path(sku, "berlin"), ADMIN_KEY, Some(json!({ "on_hand": 10 }))).await;
    call(
        http,
        Method::POST,
        &format!("{}/adjustments", item_path(sku, "berlin")),
        ADMIN_KEY,
        Some(json!({ "delta": 5, "reason": "receive", "note": "pallet 7 of 9", "reference": "DN-4711" })),
    )
    .await;
    call(
        http,
        Method::POST,
        "/v1/transfers",
        ADMIN_KEY,
        Some(json!({ "sku": sku, "from": "berlin", "to": "paris", "quantity": 4, "reason": "rebalance", "reference": "TO-1" })),
    )
    .await;
    let held = call(
        http,
        Method::POST,
        "/v1/reservations",
        SHOP_KEY,
        Some(json!({ "lines": [{ "sku": sku, "warehouse": "berlin", "quantity": 3 }], "order_id": "ord-77" })),
    )
    .await;
    let id = held["id"].as_str().unwrap_or_default().to_owned();
    call(http, Method::POST, &format!("/v1/reservations/{id}/extend"), SHOP_KEY, Some(json!({ "ttl_seconds": 900 })))
        .await;
    call(http, Method::POST, &format!("/v1/reservations/{id}/confirm"), SHOP_KEY, None).await;
    id
}

fn check_entries(entries: &[Value], id: &str) {
    let kinds: Vec<(&str, &str)> =
        entries.iter().map(|e| (e["kind"].as_str().unwrap_or(""), e["warehouse"].as_str().unwrap_or(""))).collect();
    assert_eq!(
        kinds,
        [
            ("upsert", "berlin"),
            ("adjust", "berlin"),
            ("transfer_out", "berlin"),
            ("transfer_in", "paris"),
            ("hold", "berlin"),
            ("extend", "berlin"),
            ("confirm", "berlin"),
        ],
        "{entries:#?}"
    );
    let adjust = &entries[1];
    assert_eq!(
        (&adjust["principal"], &adjust["reason"], &adjust["note"]),
        (&json!("ops"), &json!("receive"), &json!("pallet 7 of 9"))
    );
    assert_eq!(adjust["reference"]["document"], "DN-4711");
    assert_eq!(
        (&adjust["quantity"], &adjust["on_hand_before"], &adjust["on_hand_after"]),
        (&json!(5), &json!(10), &json!(15))
    );
    for side in &entries[2..4] {
        assert_eq!((&side["note"], &side["reference"]["document"]), (&json!("rebalance"), &json!("TO-1")), "{side}");
    }
    assert_eq!(entries[2]["quantity"], -4);
    let hold = &entries[4];
    assert_eq!((&hold["principal"], &hold["quantity"]), (&json!("shop"), &json!(3)));
    assert_eq!((&hold["reference"]["order_id"], &hold["reference"]["reservation_id"]), (&json!("ord-77"), &json!(id)));
    let confirm = &entries[6];
    assert_eq!((&confirm["on_hand_before"], &confirm["on_hand_after"]), (&json!(11), &json!(8)));
    assert_eq!((&confirm["reserved_before"], &confirm["reserved_after"]), (&json!(3), &json!(0)));
    assert!(entries.iter().all(|e| e["at"].as_str().is_some_and(|at| at.ends_with('Z'))));
}

/// Reconciliation: per item, the ledger's deltas are its levels.
async fn check_reconciliation(http: &Http, sku: &str, entries: &[Value]) {
    let mut sums: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for entry in entries {
        let delta =
            |before: &str, after: &str| entry[after].as_i64().unwrap_or(0) - entry[before].as_i64().unwrap_or(0);
        let sum = sums.entry(entry["warehouse"].as_str().unwrap_or("").to_owned()).or_default();
        sum.0 += delta("on_hand_before", "on_hand_after");
        sum.1 += delta("reserved_before", "reserved_after");
    }
    for (warehouse, (on_hand, reserved)) in &sums {
        let item = call(http, Method::GET, &item_path(sku, warehouse), SHOP_KEY, None).await;
        assert_eq!(
            (item["on_hand"].as_i64(), item["reserved"].as_i64()),
            (Some(*on_hand), Some(*reserved)),
            "{warehouse}"
        );
    }
}

/// Small pages walk the same sequence; filters keep what they name.
async fn check_pages_and_filters(http: &Http, sku: &str, entries: &[Value]) {
    assert_eq!(ledger(http, &format!("&sku={sku}"), 2).await, entries);
    let paris = ledger(http, &format!("&sku={sku}&warehouse=paris&kind=transfer_in"), 10).await;
    assert_eq!(paris, vec![entries[3].clone()]);
    let since = entries[4]["at"].as_str().unwrap_or_default().replace(':', "%3A");
    assert!(ledger(http, &format!("&sku={sku}&since={since}"), 10).await.len() >= 3);
    assert!(ledger(http, &format!("&sku={sku}&until=1999-01-01T00%3A00%3A00Z"), 10).await.is_empty());
}

/// Bad parameters: 400 with their own codes.
async fn check_bad_parameters(http: &Http) {
    let auth = format!("Bearer {SHOP_KEY}");
    for (query, code) in [
        ("kind=teleport", "invalid_kind"),
        ("since=yesterday", "invalid_time"),
        ("until=2026-13-01T00%3A00%3A00Z", "invalid_time"),
        ("cursor=not-a-cursor", "invalid_cursor"),
        ("limit=0", "invalid_limit"),
        ("limit=1001", "invalid_limit"),
        ("colour=red", "invalid_query"),
    ] {
        let reply = http.request(Method::GET, &format!("/v1/ledger?{query}"), &[("authorization", &auth)], None).await;
        assert_problem(&reply, StatusCode::BAD_REQUEST, code);
    }
    let anonymous = http.get("/v1/ledger").await;
    assert_eq!(anonymous.0, StatusCode::UNAUTHORIZED, "reads need a key: {}", anonymous.2);
}

/// `tally ledger export`: every entry, as CSV and as JSON lines.
fn check_export(node: &TallyProcess, sku: &str, entries: &[Value]) {
    let csv_path = node.dir().join("ledger.csv");
    let jsonl_path = node.dir().join("ledger.jsonl");
    for (format, path) in [("csv", &csv_path), ("jsonl", &jsonl_path)] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(["ledger", "export", "--format", format, "--sku", sku, "--page-limit", "3", "--out"])
            .arg(path)
            .args(["--url", &format!("http://{}", node.http_addr)])
            .env("TALLY_API_KEY", SHOP_KEY)
            .output()
            .unwrap_or_else(|e| panic!("running tally ledger export: {e}"));
        assert!(output.status.success(), "export {format}: {}", String::from_utf8_lossy(&output.stderr));
    }
    let jsonl = std::fs::read_to_string(&jsonl_path).unwrap_or_else(|e| panic!("{e}"));
    let exported: Vec<Value> =
        jsonl.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"))).collect();
    assert_eq!(exported, entries);
    let csv = std::fs::read_to_string(&csv_path).unwrap_or_else(|e| panic!("{e}"));
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), entries.len() + 1, "{csv}");
    assert!(rows[0].starts_with("id,at,kind,sku,warehouse,quantity,"), "{}", rows[0]);
    assert!(
        rows[2].contains(",adjust,led-boot,berlin,5,10,15,0,0,ops,receive,pallet 7 of 9,,,DN-4711,"),
        "{}",
        rows[2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_item_leaves_the_ledger_with_a_delete_to_zero_and_still_reconciles() {
    let node = TallyProcess::start(options().shards(2).set("auth", "keys", &keys())).await;
    let http = node.http();
    let sku = "led-del";
    let path = item_path(sku, "berlin");
    call(http, Method::PUT, &path, ADMIN_KEY, Some(json!({ "on_hand": 10 }))).await;
    let adjust = json!({ "delta": -3, "reason": "damage" });
    call(http, Method::POST, &format!("{path}/adjustments"), ADMIN_KEY, Some(adjust)).await;
    call(http, Method::DELETE, &path, ADMIN_KEY, None).await;
    call(http, Method::PUT, &path, ADMIN_KEY, Some(json!({ "on_hand": 4 }))).await;

    // The ledger is written from the applied log after the answers go
    // out: wait until it holds the four movements.
    let entries = eventually("the ledger records the four movements", std::time::Duration::from_secs(30), async || {
        let entries = ledger(http, &format!("&sku={sku}"), 100).await;
        (entries.len() >= 4).then_some(entries)
    })
    .await;
    let seen: Vec<(&str, i64, i64)> = entries
        .iter()
        .map(|e| {
            let level = |key: &str| e[key].as_i64().unwrap_or(-1);
            (e["kind"].as_str().unwrap_or(""), level("on_hand_before"), level("on_hand_after"))
        })
        .collect();
    assert_eq!(seen, [("upsert", 0, 10), ("adjust", 10, 7), ("delete", 7, 0), ("upsert", 0, 4)], "{entries:#?}");
    assert_eq!(entries[2]["principal"], "ops");
    // The deltas still sum to the item as it now is.
    let sum: i64 = seen.iter().map(|(_, before, after)| after - before).sum();
    let item = call(http, Method::GET, &path, SHOP_KEY, None).await;
    assert_eq!((item["on_hand"].as_i64(), item["version"].as_i64()), (Some(sum), Some(1)));
    assert_eq!(ledger(http, &format!("&sku={sku}&kind=delete"), 10).await, vec![entries[2].clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_ledger_off_says_so() {
    let node = TallyProcess::start(options().shards(1).set("ledger", "enabled", "false")).await;
    let reply = node.http().get("/v1/ledger").await;
    assert_problem(&reply, StatusCode::NOT_FOUND, "ledger_disabled");
    assert!(!node.data_dir().join("ledger").exists(), "no ledger files");
}
