//! The HTTP API as a client sees it: every route of README's table against
//! the real `tally` binary, with the status, problem code and JSON shape it
//! promises, and the rule that a refused write changes nothing.
//!
//! Processes are few (each start costs about a second and the machine may be
//! small): one open node with four shards serves the item, reservation,
//! bad-input and operations specifications, each a sequence of named rules
//! on SKUs of its own; one node with API keys serves the auth rules. A rule
//! that fails is reported by name and the others still run.

mod common;

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::FutureExt as _;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, RETRY_AFTER};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Longest wait for a 1-second hold to expire with no other traffic.
const EXPIRY_WAIT_MAX: Duration = Duration::from_secs(10);

/// Runs each named rule in turn on `$http`; reports every rule that
/// panicked by name, after all have run.
macro_rules! rules {
    ($http:expr; $($rule:ident),* $(,)?) => {{
        let mut failed: Vec<&str> = Vec::new();
        $(
            if AssertUnwindSafe($rule($http)).catch_unwind().await.is_err() {
                failed.push(stringify!($rule));
            }
        )*
        assert!(failed.is_empty(), "rules that failed (their panics are printed above): {failed:?}");
    }};
}

// ---------------------------------------------------------------------------
// Helpers

/// One request with a raw body and an optional content type, for what the
/// JSON client cannot send (bad JSON, oversize bodies).
async fn raw(http: &Http, method: Method, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Reply {
    let headers: Vec<(&str, &str)> = content_type.map(|value| (CONTENT_TYPE.as_str(), value)).into_iter().collect();
    let (status, headers, bytes) = raw_bytes(http, method, path, &headers, body).await;
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (status, headers, value)
}

/// One request with raw headers and body, answering the body's bytes as
/// sent (for comparing answers byte for byte).
async fn raw_bytes(
    http: &Http,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, HeaderMap, Bytes) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut builder = Request::builder().method(method).uri(format!("http://{}{path}", http.addr()));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(Bytes::from(body))).unwrap_or_else(|e| panic!("building {path}: {e}"));
    let exchange = async {
        let response = client.request(request).await.unwrap_or_else(|e| panic!("{path}: {e:?}"));
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap_or_else(|e| panic!("{path}: reading the body: {e:?}")).to_bytes();
        (parts.status, parts.headers, bytes)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange).await.unwrap_or_else(|_| panic!("{path}: no answer"))
}

/// Creates (or sets) an item; asserts 200 or 201 and answers its body.
async fn put_item(http: &Http, sku: &str, warehouse: &str, on_hand: u64, threshold: u64) -> Value {
    let (status, _, body) =
        http.put(&item_path(sku, warehouse), json!({ "on_hand": on_hand, "low_stock_threshold": threshold })).await;
    assert!(status == StatusCode::CREATED || status == StatusCode::OK, "PUT {sku}/{warehouse}: {status} {body}");
    body
}

/// The item as the server shows it now; asserts 200.
async fn item(http: &Http, sku: &str, warehouse: &str) -> Value {
    let (status, _, body) = http.get(&item_path(sku, warehouse)).await;
    assert_eq!(status, StatusCode::OK, "GET {sku}/{warehouse}: {body}");
    body
}

/// `(on_hand, reserved, version)` of an item.
async fn levels(http: &Http, sku: &str, warehouse: &str) -> (u64, u64, u64) {
    let body = item(http, sku, warehouse).await;
    (u64_of(&body, "on_hand"), u64_of(&body, "reserved"), u64_of(&body, "version"))
}

/// Holds `lines` as `(sku, warehouse, quantity)`; asserts 201 and answers
/// the reservation.
async fn reserve(http: &Http, lines: &[(&str, &str, u64)]) -> Value {
    let lines: Vec<Value> = lines
        .iter()
        .map(|(sku, warehouse, quantity)| json!({ "sku": sku, "warehouse": warehouse, "quantity": quantity }))
        .collect();
    let (status, _, body) = http.post("/v1/reservations", json!({ "lines": lines })).await;
    assert_eq!(status, StatusCode::CREATED, "reserving: {body}");
    body
}

fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    reply.1.get(name).and_then(|v| v.to_str().ok())
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
}

// ---------------------------------------------------------------------------
// Items

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_api_follows_its_contract() {
    let node = TallyProcess::start(options().shards(4)).await;
    rules!(node.http();
        put_creates_with_201_and_etag_1_then_updates_with_200,
        put_with_if_none_match_star_on_an_existing_item_is_item_exists,
        put_with_a_stale_if_match_is_version_mismatch_and_a_current_one_succeeds,
        put_with_an_if_match_etag_that_is_no_version_is_version_mismatch,
        put_with_an_if_match_list_applies_at_any_listed_version,
        get_with_the_current_etag_in_if_none_match_is_304,
        get_of_a_missing_item_is_item_not_found,
        sku_view_sums_every_warehouse,
        listing_filters_by_status_and_pages_through_every_item_once,
        adjustments_move_on_hand_and_never_below_reserved,
        history_lists_movements_newest_first_with_reasons,
        transfers_move_stock_atomically_between_warehouses,
        availability_sums_duplicate_lines_and_names_missing_items,
        an_ndjson_import_creates_updates_and_reports_each_bad_row,
        a_csv_import_reads_quoted_fields_and_refuses_a_bad_header_whole,
        an_import_across_shards_applies_every_row_once_and_again_changes_nothing,
        an_export_lists_every_item_and_imports_back_unchanged,
        imports_refuse_other_media_and_overlong_rows,
        a_skus_product_is_set_read_and_cleared_field_by_field,
        product_fields_that_break_a_rule_are_400_and_change_nothing,
        deleting_an_item_is_204_then_404_and_a_later_put_starts_at_version_1,
        a_delete_with_live_holds_is_item_has_holds_and_changes_nothing,
        quantity_states_follow_the_readme_example,
        a_refused_move_or_state_change_changes_nothing,
        backorders_follow_the_readme_example,
    );
}

async fn a_skus_product_is_set_read_and_cleared_field_by_field(http: &Http) {
    let body = json!({
        "name": "Runner 42", "description": "Light.\nMesh upper.", "category": "shoes",
        "price": "89.90", "currency": "EUR", "image_url": "https://img.example.com/p.jpg",
    });
    let (status, _, created) = http.put("/v1/items/pr-1", body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let product = &created["product"];
    assert_eq!(
        (str_of(product, "name"), str_of(product, "price"), u64_of(product, "price_minor")),
        ("Runner 42", "89.90", 8990)
    );
    assert_eq!((str_of(product, "currency"), u64_of(product, "version")), ("EUR", 1));
    assert_eq!(str_of(product, "description"), "Light.\nMesh upper.");
    assert_eq!(u64_of(product, "created_at_ms"), u64_of(product, "updated_at_ms"));
    assert!(str_of(product, "created_at").ends_with('Z'), "{product}");
    // A number price, a cleared field, the rest kept.
    let (status, _, changed) = http.put("/v1/items/pr-1", json!({ "price": 79.9, "image_url": null })).await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    let product = &changed["product"];
    assert_eq!(
        (str_of(product, "price"), u64_of(product, "price_minor"), u64_of(product, "version")),
        ("79.90", 7990, 2)
    );
    assert_eq!((&product["image_url"], str_of(product, "category")), (&Value::Null, "shoes"));
    // A SKU with a product and no stock reads with no warehouses.
    let (status, _, view) = http.get("/v1/items/pr-1").await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["warehouses"], json!([]));
    assert_eq!(str_of(&view["product"], "name"), "Runner 42");
    // Stocked, the product shows beside the warehouses; a limit PUT keeps it.
    put_item(http, "pr-1", "w1", 5, 0).await;
    set_limit(http, "pr-1", json!({ "limit_per_customer": 2 })).await;
    let (_, _, view) = http.get("/v1/items/pr-1").await;
    assert_eq!((u64_of(&view, "on_hand"), u64_of(&view["product"], "price_minor")), (5, 7990));
    assert_eq!(u64_of(&view, "limit_per_customer"), 2);
    // And a product PUT keeps the limit.
    http.put("/v1/items/pr-1", json!({ "category": "running" })).await;
    let (_, _, view) = http.get("/v1/items/pr-1").await;
    assert_eq!((u64_of(&view, "limit_per_customer"), str_of(&view["product"], "category")), (2, "running"));
}

async fn product_fields_that_break_a_rule_are_400_and_change_nothing(http: &Http) {
    let (status, _, _) = http.put("/v1/items/pr-2", json!({ "name": "Mug", "price": "3.50" })).await;
    assert_eq!(status, StatusCode::CREATED);
    for (body, code) in [
        (json!({ "price": "3.505" }), "invalid_price"),
        (json!({ "price": "-1" }), "invalid_price"),
        (json!({ "price": true }), "invalid_price"),
        (json!({ "price": "99999999999999.00" }), "quantity_too_large"),
        (json!({ "currency": "eur" }), "field_bad_character"),
        (json!({ "currency": "EURO" }), "field_bad_length"),
        (json!({ "image_url": "javascript:alert(1)" }), "field_bad_character"),
        (json!({ "image_url": format!("https://x/{}", "a".repeat(2048)) }), "field_too_long"),
        (json!({ "description": "a".repeat(4097) }), "field_too_long"),
        (json!({ "category": "a\nb" }), "field_bad_character"),
        (json!({ "name": "" }), "field_empty"),
        (json!({ "name": "Cup", "limit_per_customer": 2 }), "invalid_body"),
    ] {
        let reply = http.put("/v1/items/pr-2", body.clone()).await;
        assert_problem(&reply, StatusCode::BAD_REQUEST, code);
    }
    let (_, _, view) = http.get("/v1/items/pr-2").await;
    let product = &view["product"];
    assert_eq!((str_of(product, "name"), str_of(product, "price"), u64_of(product, "version")), ("Mug", "3.50", 1));
}

async fn deleting_an_item_is_204_then_404_and_a_later_put_starts_at_version_1(http: &Http) {
    put_item(http, "del-1", "w1", 7, 0).await;
    put_item(http, "del-1", "w1", 9, 0).await;
    put_item(http, "del-1", "w2", 1, 0).await;
    let path = item_path("del-1", "w1");
    let stale = http.request(Method::DELETE, &path, &[("if-match", "\"1\"")], None).await;
    assert_problem(&stale, StatusCode::PRECONDITION_FAILED, "version_mismatch");
    assert_eq!(levels(http, "del-1", "w1").await, (9, 0, 2), "a refused delete changes nothing");
    let (status, _, body) = http.request(Method::DELETE, &path, &[("if-match", "\"2\"")], None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_problem(&http.get(&path).await, StatusCode::NOT_FOUND, "item_not_found");
    assert_problem(&http.delete(&path, Value::Null).await, StatusCode::NOT_FOUND, "item_not_found");
    // Gone from the SKU view and from availability.
    let (_, _, view) = http.get("/v1/items/del-1").await;
    assert_eq!((view["warehouses"].as_array().map(Vec::len), u64_of(&view, "on_hand")), (Some(1), 1));
    let (_, _, answer) =
        http.post("/v1/availability", json!({ "lines": [{ "sku": "del-1", "warehouse": "w1", "quantity": 1 }] })).await;
    assert_eq!(answer["lines"][0]["exists"], json!(false), "{answer}");
    // And from exports: only the other warehouse is left.
    let (_, _, lines) = exported(http, "ndjson", "del-1").await;
    let warehouses: Vec<Value> =
        lines.iter().map(|line| serde_json::from_str::<Value>(line).unwrap_or_default()["warehouse"].clone()).collect();
    assert_eq!(warehouses, vec![json!("w2")], "{lines:?}");
    // A later PUT creates it afresh.
    let created = http.put(&path, json!({ "on_hand": 3 })).await;
    assert_eq!(created.0, StatusCode::CREATED, "{}", created.2);
    assert_eq!(header(&created, "etag"), Some("\"1\""));
    // Deleting the SKU takes every warehouse and its product, then 404.
    http.put("/v1/items/del-1", json!({ "name": "Gone soon" })).await;
    let (status, _, _) = http.delete("/v1/items/del-1", Value::Null).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_problem(&http.get("/v1/items/del-1").await, StatusCode::NOT_FOUND, "item_not_found");
    assert_problem(&http.delete("/v1/items/del-1", Value::Null).await, StatusCode::NOT_FOUND, "item_not_found");
}

async fn a_delete_with_live_holds_is_item_has_holds_and_changes_nothing(http: &Http) {
    put_item(http, "del-2", "w1", 10, 0).await;
    put_item(http, "del-2", "w2", 10, 0).await;
    let held = reserve(http, &[("del-2", "w1", 2)]).await;
    for path in [item_path("del-2", "w1"), "/v1/items/del-2".to_owned()] {
        let refused = http.delete(&path, Value::Null).await;
        assert_problem(&refused, StatusCode::CONFLICT, "item_has_holds");
        assert_eq!((u64_of(&refused.2, "holds"), u64_of(&refused.2, "reserved")), (1, 2));
    }
    assert_eq!(levels(http, "del-2", "w1").await, (10, 2, 2));
    assert_eq!(levels(http, "del-2", "w2").await, (10, 0, 1));
    end_reservation(http, str_of(&held, "id"), "release").await;
    let (status, _, _) = http.delete("/v1/items/del-2", Value::Null).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // The ended reservation still reads with the deleted item's names.
    let (status, _, reservation) = http.get(&format!("/v1/reservations/{}", str_of(&held, "id"))).await;
    assert_eq!(status, StatusCode::OK, "{reservation}");
    assert_lines(&reservation, &[("del-2", "w1", 2)]);
}

async fn put_creates_with_201_and_etag_1_then_updates_with_200(http: &Http) {
    let path = item_path("it-put", "w1");
    let created = http.put(&path, json!({ "on_hand": 10, "low_stock_threshold": 2, "name": "Mug" })).await;
    assert_eq!(created.0, StatusCode::CREATED, "{}", created.2);
    assert_eq!(header(&created, "etag"), Some("\"1\""));
    assert_eq!(u64_of(&created.2, "on_hand"), 10);
    assert_eq!(u64_of(&created.2, "available"), 10);
    assert_eq!(str_of(&created.2, "status"), "IN_STOCK");
    assert_eq!(str_of(&created.2, "name"), "Mug");

    let updated = http.put(&path, json!({ "on_hand": 7 })).await;
    assert_eq!(updated.0, StatusCode::OK, "{}", updated.2);
    assert_eq!(header(&updated, "etag"), Some("\"2\""));
    assert_eq!(u64_of(&updated.2, "on_hand"), 7);
    assert_eq!(u64_of(&updated.2, "low_stock_threshold"), 2, "an absent field is kept");
    assert_eq!(str_of(&updated.2, "name"), "Mug", "an absent field is kept");
}

async fn put_with_if_none_match_star_on_an_existing_item_is_item_exists(http: &Http) {
    let path = item_path("it-inm", "w1");
    let first = http.request(Method::PUT, &path, &[("if-none-match", "*")], Some(&json!({ "on_hand": 5 }))).await;
    assert_eq!(first.0, StatusCode::CREATED, "a create-only PUT of a new item creates it: {}", first.2);
    let again = http.request(Method::PUT, &path, &[("if-none-match", "*")], Some(&json!({ "on_hand": 9 }))).await;
    assert_problem(&again, StatusCode::PRECONDITION_FAILED, "item_exists");
    assert_eq!(levels(http, "it-inm", "w1").await, (5, 0, 1), "the refused PUT changed nothing");
}

async fn put_with_a_stale_if_match_is_version_mismatch_and_a_current_one_succeeds(http: &Http) {
    let path = item_path("it-ifm", "w1");
    put_item(http, "it-ifm", "w1", 5, 0).await;
    put_item(http, "it-ifm", "w1", 6, 0).await;
    let stale = http.request(Method::PUT, &path, &[("if-match", "\"1\"")], Some(&json!({ "on_hand": 1 }))).await;
    assert_problem(&stale, StatusCode::PRECONDITION_FAILED, "version_mismatch");
    assert_eq!(levels(http, "it-ifm", "w1").await, (6, 0, 2), "the refused PUT changed nothing");
    let current = http.request(Method::PUT, &path, &[("if-match", "\"2\"")], Some(&json!({ "on_hand": 1 }))).await;
    assert_eq!(current.0, StatusCode::OK, "{}", current.2);
    assert_eq!(header(&current, "etag"), Some("\"3\""));
    assert_eq!(levels(http, "it-ifm", "w1").await, (1, 0, 3));
}

async fn put_with_an_if_match_etag_that_is_no_version_is_version_mismatch(http: &Http) {
    let path = item_path("it-ifm-tag", "w1");
    put_item(http, "it-ifm-tag", "w1", 5, 0).await;
    let body = json!({ "on_hand": 1 });
    // Well-formed ETags that no version of an item has: 412, as RFC 9110 says.
    for tag in ["\"abc\"", "W/\"abc\"", "\"\"", "\"a\", \"b\""] {
        let refused = http.request(Method::PUT, &path, &[("if-match", tag)], Some(&body)).await;
        assert_problem(&refused, StatusCode::PRECONDITION_FAILED, "version_mismatch");
        assert_eq!(refused.2["version"], 1, "the problem names the item's version: {}", refused.2);
    }
    let missing = item_path("it-ifm-none", "w1");
    let refused = http.request(Method::PUT, &missing, &[("if-match", "\"abc\"")], Some(&body)).await;
    assert_problem(&refused, StatusCode::PRECONDITION_FAILED, "version_mismatch");
    assert!(refused.2["version"].is_null(), "no item, no version: {}", refused.2);
    // Headers that are no ETag list at all stay 400.
    for value in ["abc", "\"abc", "\"1\" \"2\""] {
        let malformed = http.request(Method::PUT, &path, &[("if-match", value)], Some(&body)).await;
        assert_problem(&malformed, StatusCode::BAD_REQUEST, "invalid_precondition");
    }
    // Bad input is still 400 before the precondition is looked at.
    let too_large = json!({ "on_hand": 1_000_000_000_000_001_u64 });
    let refused = http.request(Method::PUT, &path, &[("if-match", "\"abc\"")], Some(&too_large)).await;
    assert_problem(&refused, StatusCode::BAD_REQUEST, "quantity_too_large");
    assert_eq!(levels(http, "it-ifm-tag", "w1").await, (5, 0, 1), "the refused PUTs changed nothing");
    assert_eq!(http.get(&missing).await.0, StatusCode::NOT_FOUND, "nor created anything");
}

async fn put_with_an_if_match_list_applies_at_any_listed_version(http: &Http) {
    let path = item_path("it-ifm-list", "w1");
    put_item(http, "it-ifm-list", "w1", 5, 0).await;
    put_item(http, "it-ifm-list", "w1", 6, 0).await;
    let listed =
        http.request(Method::PUT, &path, &[("if-match", "\"1\", \"x\", \"2\"")], Some(&json!({ "on_hand": 7 }))).await;
    assert_eq!(listed.0, StatusCode::OK, "{}", listed.2);
    assert_eq!(levels(http, "it-ifm-list", "w1").await, (7, 0, 3));
    let stale = http.request(Method::PUT, &path, &[("if-match", "\"1\", \"2\"")], Some(&json!({ "on_hand": 1 }))).await;
    assert_problem(&stale, StatusCode::PRECONDITION_FAILED, "version_mismatch");
    assert_eq!(stale.2["version"], 3, "{}", stale.2);
    assert_eq!(levels(http, "it-ifm-list", "w1").await, (7, 0, 3), "the refused PUT changed nothing");
}

async fn get_with_the_current_etag_in_if_none_match_is_304(http: &Http) {
    let path = item_path("it-304", "w1");
    put_item(http, "it-304", "w1", 3, 0).await;
    let fresh = http.get(&path).await;
    assert_eq!(fresh.0, StatusCode::OK);
    let tag = header(&fresh, "etag").unwrap_or_else(|| panic!("no ETag on GET: {:?}", fresh.1)).to_owned();
    assert_eq!(tag, "\"1\"");
    let cached = http.request(Method::GET, &path, &[("if-none-match", &tag)], None).await;
    assert_eq!(cached.0, StatusCode::NOT_MODIFIED, "{}", cached.2);
    assert_eq!(cached.2, Value::Null, "a 304 has no body");
    put_item(http, "it-304", "w1", 4, 0).await;
    let changed = http.request(Method::GET, &path, &[("if-none-match", &tag)], None).await;
    assert_eq!(changed.0, StatusCode::OK, "an old ETag does not match a changed item");
    assert_eq!(header(&changed, "etag"), Some("\"2\""));
}

async fn get_of_a_missing_item_is_item_not_found(http: &Http) {
    assert_problem(&http.get(&item_path("it-missing", "w1")).await, StatusCode::NOT_FOUND, "item_not_found");
    assert_problem(&http.get("/v1/items/it-missing").await, StatusCode::NOT_FOUND, "item_not_found");
    let history = http.get("/v1/items/it-missing/w1/history").await;
    assert_problem(&history, StatusCode::NOT_FOUND, "item_not_found");
}

async fn sku_view_sums_every_warehouse(http: &Http) {
    put_item(http, "it-sku", "w1", 10, 0).await;
    put_item(http, "it-sku", "w2", 5, 0).await;
    reserve(http, &[("it-sku", "w2", 2)]).await;
    let (status, _, body) = http.get("/v1/items/it-sku").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((u64_of(&body, "on_hand"), u64_of(&body, "reserved"), u64_of(&body, "available")), (15, 2, 13));
    let warehouses = body["warehouses"].as_array().unwrap_or_else(|| panic!("no warehouses in {body}"));
    let mut names: Vec<&str> = warehouses.iter().map(|w| str_of(w, "warehouse")).collect();
    names.sort_unstable();
    assert_eq!(names, ["w1", "w2"]);
}

async fn listing_filters_by_status_and_pages_through_every_item_once(http: &Http) {
    // A warehouse of its own, so other rules' items stay out of the listing.
    let warehouse = "wlist";
    let low = ["ls-low-a", "ls-low-b", "ls-low-c", "ls-low-d", "ls-low-e"];
    for sku in low {
        put_item(http, sku, warehouse, 2, 5).await;
    }
    put_item(http, "ls-out", warehouse, 0, 5).await;
    put_item(http, "ls-in", warehouse, 50, 5).await;

    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    for _page in 0..100 {
        let mut path = format!("/v1/items?status=LOW_STOCK&warehouse={warehouse}&limit=1");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let (status, _, body) = http.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        let items = body["items"].as_array().unwrap_or_else(|| panic!("no items in {body}"));
        assert!(items.len() <= 1, "limit=1 answered {} items", items.len());
        for item in items {
            assert_eq!(str_of(item, "status"), "LOW_STOCK", "{item}");
            seen.push(str_of(item, "sku").to_owned());
        }
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => {
                assert!(body["next_cursor"].is_null(), "{body}");
                cursor = None;
                break;
            }
        }
    }
    assert!(cursor.is_none(), "the listing did not end within 100 pages");
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "a page repeated an item: {seen:?}");
    assert_eq!(sorted, low, "LOW_STOCK lists exactly the low items");

    let (status, _, body) = http.get(&format!("/v1/items?status=OUT_OF_STOCK&warehouse={warehouse}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let out: Vec<&str> =
        body["items"].as_array().map(|a| a.iter().map(|i| str_of(i, "sku")).collect()).unwrap_or_default();
    assert_eq!(out, ["ls-out"], "{body}");
    assert_problem(&http.get("/v1/items?status=SOMETIMES").await, StatusCode::BAD_REQUEST, "invalid_status");
    assert_problem(&http.get("/v1/items?cursor=nonsense").await, StatusCode::BAD_REQUEST, "invalid_cursor");
    assert_problem(&http.get("/v1/items?limit=0").await, StatusCode::BAD_REQUEST, "invalid_limit");
}

async fn adjustments_move_on_hand_and_never_below_reserved(http: &Http) {
    let path = "/v1/items/it-adj/w1/adjustments";
    put_item(http, "it-adj", "w1", 10, 0).await;
    let received = http.post(path, json!({ "delta": 5, "reason": "receive" })).await;
    assert_eq!(received.0, StatusCode::OK, "{}", received.2);
    assert_eq!(u64_of(&received.2, "on_hand"), 15);
    let damaged = http.post(path, json!({ "delta": -3, "reason": "damage" })).await;
    assert_eq!(damaged.0, StatusCode::OK, "{}", damaged.2);
    assert_eq!(u64_of(&damaged.2, "on_hand"), 12);

    reserve(http, &[("it-adj", "w1", 10)]).await;
    let before = levels(http, "it-adj", "w1").await;
    assert_eq!((before.0, before.1), (12, 10));
    let below = http.post(path, json!({ "delta": -3, "reason": "loss" })).await;
    assert_problem(&below, StatusCode::CONFLICT, "below_reserved");
    let bad_reason = http.post(path, json!({ "delta": 1, "reason": "magic" })).await;
    assert_problem(&bad_reason, StatusCode::BAD_REQUEST, "invalid_reason");
    let zero = http.post(path, json!({ "delta": 0, "reason": "count" })).await;
    assert_problem(&zero, StatusCode::BAD_REQUEST, "quantity_zero");
    assert_eq!(levels(http, "it-adj", "w1").await, before, "refused adjustments changed nothing");
    let missing =
        http.post("/v1/items/it-adj-missing/w1/adjustments", json!({ "delta": 1, "reason": "receive" })).await;
    assert_problem(&missing, StatusCode::NOT_FOUND, "item_not_found");
}

/// The README's "quantity states" example, step by step.
async fn quantity_states_follow_the_readme_example(http: &Http) {
    let moves = "/v1/items/MUG-7/berlin/moves";
    let (status, _, created) = http
        .put(
            &item_path("MUG-7", "berlin"),
            json!({ "on_hand": 20, "safety_stock": 2, "incoming": 50, "incoming_expected_at": "2026-12-20T09:00:00Z" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        (u64_of(&created, "on_hand"), u64_of(&created, "available"), u64_of(&created, "safety_stock")),
        (20, 18, 2)
    );
    assert_eq!(u64_of(&created, "incoming"), 50);
    assert_eq!(created["incoming_expected_at"], "2026-12-20T09:00:00.000Z");
    assert_eq!(created["incoming_expected_at_ms"], 1_797_757_200_000u64);

    let broken = http
        .post(moves, json!({ "from": "available", "to": "damaged", "quantity": 3, "note": "dropped pallet" }))
        .await;
    assert_eq!(broken.0, StatusCode::OK, "{}", broken.2);
    let arrived = http
        .post(moves, json!({ "from": "incoming", "to": "quality_control", "quantity": 50, "reference": "PO-1881" }))
        .await;
    assert_eq!(arrived.0, StatusCode::OK, "{}", arrived.2);
    let body = &arrived.2;
    assert_eq!(
        ["on_hand", "available", "damaged", "quality_control", "incoming"].map(|key| u64_of(body, key)),
        [70, 15, 3, 50, 0]
    );
    let passed = http.post(moves, json!({ "from": "quality_control", "to": "available", "quantity": 48 })).await;
    assert_eq!(passed.0, StatusCode::OK, "{}", passed.2);
    assert_eq!(["on_hand", "available", "quality_control"].map(|key| u64_of(&passed.2, key)), [70, 63, 2]);
    let written_off = http.post("/v1/items/MUG-7/berlin/adjustments", json!({ "delta": -3, "reason": "damage" })).await;
    assert_eq!(written_off.0, StatusCode::OK, "{}", written_off.2);
    assert_eq!(["on_hand", "available", "damaged"].map(|key| u64_of(&written_off.2, key)), [67, 63, 0]);
    let short = http.post(moves, json!({ "from": "damaged", "to": "available", "quantity": 1 })).await;
    assert_problem(&short, StatusCode::CONFLICT, "insufficient_stock");
    assert_eq!((&short.2["state"], &short.2["requested"], &short.2["has"]), (&json!("damaged"), &json!(1), &json!(0)));
    // The moves are in the item's history only when on hand moved (the receipt).
    let (status, _, history) = http.get("/v1/items/MUG-7/berlin/history").await;
    assert_eq!(status, StatusCode::OK);
    let reasons: Vec<&str> =
        history["movements"].as_array().into_iter().flatten().filter_map(|m| m["reason"].as_str()).collect();
    assert_eq!(reasons, ["damage", "receive", "set"]);
}

async fn a_refused_move_or_state_change_changes_nothing(http: &Http) {
    let moves = "/v1/items/it-states/w1/moves";
    put_item(http, "it-states", "w1", 10, 0).await;
    reserve(http, &[("it-states", "w1", 8)]).await;
    let before = item(http, "it-states", "w1").await;
    for (body, status, code) in [
        (json!({ "from": "available", "to": "damaged", "quantity": 3 }), StatusCode::CONFLICT, "insufficient_stock"),
        (json!({ "from": "available", "to": "available", "quantity": 1 }), StatusCode::BAD_REQUEST, "invalid_state"),
        (json!({ "from": "available", "to": "incoming", "quantity": 1 }), StatusCode::BAD_REQUEST, "invalid_state"),
        (json!({ "from": "committed", "to": "damaged", "quantity": 1 }), StatusCode::BAD_REQUEST, "invalid_state"),
        (json!({ "from": "available", "to": "damaged", "quantity": 0 }), StatusCode::BAD_REQUEST, "quantity_zero"),
    ] {
        let reply = http.post(moves, body.clone()).await;
        assert_problem(&reply, status, code);
    }
    let missing = http
        .post("/v1/items/it-states-missing/w1/moves", json!({ "from": "damaged", "to": "available", "quantity": 1 }))
        .await;
    assert_problem(&missing, StatusCode::NOT_FOUND, "item_not_found");
    let path = item_path("it-states", "w1");
    let kept_back = http.put(&path, json!({ "safety_stock": 3 })).await;
    assert_problem(&kept_back, StatusCode::CONFLICT, "below_unsellable");
    assert_eq!((&kept_back.2["reserved"], &kept_back.2["unsellable"]), (&json!(8), &json!(3)));
    let bad_time = http.put(&path, json!({ "incoming": 5, "incoming_expected_at": "next tuesday" })).await;
    assert_problem(&bad_time, StatusCode::BAD_REQUEST, "invalid_time");
    assert_eq!(item(http, "it-states", "w1").await, before, "refused writes changed nothing");
    // Within what is left, safety stock is taken, and nothing may take it back.
    let (status, _, kept) = http.put(&path, json!({ "safety_stock": 2 })).await;
    assert_eq!(status, StatusCode::OK, "{kept}");
    assert_eq!((u64_of(&kept, "available"), u64_of(&kept, "safety_stock")), (0, 2));
    assert_eq!(kept["status"], "OUT_OF_STOCK");
    let loss = http.post("/v1/items/it-states/w1/adjustments", json!({ "delta": -1, "reason": "loss" })).await;
    assert_problem(&loss, StatusCode::CONFLICT, "below_unsellable");
}

/// The README's "backorders and preorders" example, step by step, and the
/// rules around it.
async fn backorders_follow_the_readme_example(http: &Http) {
    let (status, _, created) =
        http.put(&item_path("LAMP-3", "berlin"), json!({ "on_hand": 1, "backorder_limit": 10 })).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!((u64_of(&created, "backorder_limit"), u64_of(&created, "backordered")), (10, 0));
    let line = json!([{ "sku": "LAMP-3", "warehouse": "berlin", "quantity": 3 }]);
    let (status, _, held) =
        http.post("/v1/reservations", json!({ "order_id": "pre-1", "ttl_seconds": 3600, "lines": line })).await;
    assert_eq!(status, StatusCode::CREATED, "{held}");
    assert_eq!(held["lines"], json!([{ "sku": "LAMP-3", "warehouse": "berlin", "quantity": 3, "backordered": 2 }]));
    let lamp = item(http, "LAMP-3", "berlin").await;
    assert_eq!(["on_hand", "reserved", "available", "backordered"].map(|key| u64_of(&lamp, key)), [1, 1, 0, 2]);
    // Past the limit: 10 - 2 = 8 more may wait, not 9.
    let over = http
        .post("/v1/reservations", json!({ "lines": [{ "sku": "LAMP-3", "warehouse": "berlin", "quantity": 9 }] }))
        .await;
    assert_problem(&over, StatusCode::CONFLICT, "insufficient_stock");
    // A direct sale never backorders.
    let sale = http
        .post(
            "/v1/reservations",
            json!({ "commit": true, "lines": [{ "sku": "LAMP-3", "warehouse": "berlin", "quantity": 1 }] }),
        )
        .await;
    assert_problem(&sale, StatusCode::CONFLICT, "insufficient_stock");
    let early = raw(http, Method::POST, "/v1/orders/pre-1/confirm", None, Vec::new()).await;
    assert_problem(&early, StatusCode::CONFLICT, "backorder_unfilled");
    assert_eq!(early.2["backordered"], 2);
    assert_eq!(item(http, "LAMP-3", "berlin").await, lamp, "refused writes changed nothing");
    let received = http.post("/v1/items/LAMP-3/berlin/adjustments", json!({ "delta": 5, "reason": "receive" })).await;
    assert_eq!(received.0, StatusCode::OK, "{}", received.2);
    assert_eq!(["on_hand", "reserved", "available", "backordered"].map(|key| u64_of(&received.2, key)), [6, 3, 3, 0]);
    let (status, _, order) = http.get("/v1/orders/pre-1").await;
    assert_eq!(status, StatusCode::OK, "{order}");
    assert_eq!(order["lines"][0]["backordered"], 0, "{order}");
    let confirmed = raw(http, Method::POST, "/v1/orders/pre-1/confirm", None, Vec::new()).await;
    assert_eq!(confirmed.0, StatusCode::OK, "{}", confirmed.2);
    assert_eq!(confirmed.2["state"], "CONFIRMED");
    let sold = item(http, "LAMP-3", "berlin").await;
    assert_eq!(["on_hand", "reserved", "available"].map(|key| u64_of(&sold, key)), [3, 0, 3]);
}

async fn history_lists_movements_newest_first_with_reasons(http: &Http) {
    let path = "/v1/items/it-hist/w1/adjustments";
    put_item(http, "it-hist", "w1", 10, 0).await;
    for (delta, reason) in [(4, "receive"), (-1, "damage"), (2, "return")] {
        let (status, _, body) = http.post(path, json!({ "delta": delta, "reason": reason })).await;
        assert_eq!(status, StatusCode::OK, "{reason}: {body}");
    }
    let (status, _, body) = http.get("/v1/items/it-hist/w1/history").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let movements = body["movements"].as_array().unwrap_or_else(|| panic!("no movements in {body}"));
    assert!(movements.len() >= 3, "{body}");
    let newest: Vec<(&str, i64, u64, u64)> = movements[..3]
        .iter()
        .map(|m| {
            let delta = m["delta"].as_i64().unwrap_or_else(|| panic!("delta in {m}"));
            (str_of(m, "reason"), delta, u64_of(m, "on_hand_before"), u64_of(m, "on_hand_after"))
        })
        .collect();
    assert_eq!(newest, [("return", 2, 13, 15), ("damage", -1, 14, 13), ("receive", 4, 10, 14)]);
    let (status, _, body) = http.get("/v1/items/it-hist/w1/history?limit=1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["movements"].as_array().map(Vec::len), Some(1), "{body}");
}

async fn transfers_move_stock_atomically_between_warehouses(http: &Http) {
    put_item(http, "it-xfer", "w1", 10, 0).await;
    put_item(http, "it-xfer", "w2", 1, 0).await;
    let moved = http.post("/v1/transfers", json!({ "sku": "it-xfer", "from": "w1", "to": "w2", "quantity": 4 })).await;
    assert_eq!(moved.0, StatusCode::OK, "{}", moved.2);
    assert_eq!(u64_of(&moved.2["from"], "on_hand"), 6);
    assert_eq!(u64_of(&moved.2["to"], "on_hand"), 5);
    let (w1, w2) = (levels(http, "it-xfer", "w1").await, levels(http, "it-xfer", "w2").await);
    assert_eq!((w1.0, w2.0), (6, 5));

    let same = http.post("/v1/transfers", json!({ "sku": "it-xfer", "from": "w1", "to": "w1", "quantity": 1 })).await;
    assert_problem(&same, StatusCode::BAD_REQUEST, "same_warehouse");
    let too_many =
        http.post("/v1/transfers", json!({ "sku": "it-xfer", "from": "w1", "to": "w2", "quantity": 100 })).await;
    assert_eq!(too_many.0, StatusCode::CONFLICT, "{}", too_many.2);
    assert_eq!(levels(http, "it-xfer", "w1").await, w1, "a refused transfer leaves the source unchanged");
    assert_eq!(levels(http, "it-xfer", "w2").await, w2, "a refused transfer leaves the target unchanged");
    let history = http.get("/v1/items/it-xfer/w2/history").await;
    assert_eq!(history.0, StatusCode::OK);
    assert_eq!(history.2["movements"][0]["reason"], "transfer_in", "{}", history.2);
}

async fn availability_sums_duplicate_lines_and_names_missing_items(http: &Http) {
    put_item(http, "it-avail", "w1", 5, 0).await;
    let one = http
        .post("/v1/availability", json!({ "lines": [{ "sku": "it-avail", "warehouse": "w1", "quantity": 3 }] }))
        .await;
    assert_eq!(one.0, StatusCode::OK, "{}", one.2);
    assert_eq!(one.2["all_available"], true, "{}", one.2);
    assert_eq!(u64_of(&one.2["lines"][0], "available"), 5);

    let twice = json!({ "lines": [
        { "sku": "it-avail", "warehouse": "w1", "quantity": 3 },
        { "sku": "it-avail", "warehouse": "w1", "quantity": 3 },
    ] });
    let (status, _, body) = http.post("/v1/availability", twice).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["all_available"], false, "3 + 3 of the same item is more than 5: {body}");

    let missing = json!({ "lines": [
        { "sku": "it-avail", "quantity": 2 },
        { "sku": "it-avail-missing", "warehouse": "w1", "quantity": 1 },
    ] });
    let (status, _, body) = http.post("/v1/availability", missing).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["all_available"], false, "{body}");
    assert_eq!((&body["lines"][0]["exists"], &body["lines"][0]["enough"]), (&json!(true), &json!(true)), "{body}");
    assert_eq!((&body["lines"][1]["exists"], &body["lines"][1]["enough"]), (&json!(false), &json!(false)), "{body}");
    let empty = http.post("/v1/availability", json!({ "lines": [] })).await;
    assert_problem(&empty, StatusCode::BAD_REQUEST, "invalid_lines");
}

// ---------------------------------------------------------------------------
// Reservations

// ---------------------------------------------------------------------------
// Bulk import and export

/// Posts an import body; answers the reply.
async fn import(http: &Http, content_type: &str, id: Option<&str>, body: &str) -> Reply {
    let mut headers = vec![(CONTENT_TYPE.as_str(), content_type)];
    if let Some(id) = id {
        headers.push(("import-id", id));
    }
    let (status, headers, bytes) = raw_bytes(http, Method::POST, "/v1/items:import", &headers, body.into()).await;
    let value =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, headers, value)
}

/// The `(row, code)` pairs of an import report's errors.
fn row_errors(report: &Value) -> Vec<(u64, String)> {
    report["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors in {report}"))
        .iter()
        .map(|error| (u64_of(error, "row"), str_of(error, "code").to_owned()))
        .collect()
}

async fn an_ndjson_import_creates_updates_and_reports_each_bad_row(http: &Http) {
    put_item(http, "bulk-a", "w1", 5, 0).await;
    // Three units held on bulk-b/w1: an import may not set on_hand below them.
    put_item(http, "bulk-b", "w1", 10, 0).await;
    reserve(http, &[("bulk-b", "w1", 3)]).await;
    let body = concat!(
        "{\"sku\":\"bulk-a\",\"warehouse\":\"w1\",\"on_hand\":7,\"name\":\"Tee\"}\n",
        "{\"sku\":\"bulk-c\",\"warehouse\":\"w1\",\"on_hand\":4,\"unit_price_minor\":1999}\n",
        "\n",
        "not json\n",
        "{\"sku\":\"bulk-b\",\"warehouse\":\"w1\",\"on_hand\":2}\n",
        "{\"sku\":\"bulk-d\",\"warehouse\":\"w1\",\"colour\":\"red\"}\n",
        "{\"sku\":\"\",\"warehouse\":\"w1\",\"on_hand\":1}\n",
        "{\"sku\":\"bulk-d\",\"warehouse\":\"w2\",\"on_hand\":0}",
    );
    let (status, _, report) = import(http, "application/x-ndjson", Some("bulk-ndjson-1"), body).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(str_of(&report, "state"), "done");
    assert_eq!(
        (u64_of(&report, "rows"), u64_of(&report, "created"), u64_of(&report, "updated"), u64_of(&report, "failed")),
        (7, 2, 1, 4),
        "{report}"
    );
    let errors = row_errors(&report);
    let expected = [(3, "invalid_row"), (4, "below_reserved"), (5, "invalid_row"), (6, "field_empty")];
    assert_eq!(errors.len(), expected.len(), "{report}");
    for (row, code) in expected {
        assert!(errors.contains(&(row, code.to_owned())), "row {row} {code} in {report}");
    }
    // The blank line is no row, but it is a line: row 4 is on line 5.
    let below = report["errors"].as_array().and_then(|e| e.iter().find(|e| e["row"] == 4)).cloned().unwrap_or_default();
    assert_eq!((u64_of(&below, "line"), str_of(&below, "sku")), (5, "bulk-b"));
    let a = item(http, "bulk-a", "w1").await;
    assert_eq!((u64_of(&a, "on_hand"), str_of(&a, "name")), (7, "Tee"));
    assert_eq!(u64_of(&item(http, "bulk-c", "w1").await, "unit_price_minor"), 1999);
    assert_eq!(levels(http, "bulk-b", "w1").await.0, 10, "a refused row changes nothing");
    // The same import again: every good row is as it was.
    let (status, _, again) = import(http, "application/x-ndjson", Some("bulk-ndjson-1"), body).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!((u64_of(&again, "created"), u64_of(&again, "updated"), u64_of(&again, "unchanged")), (0, 0, 3));
    // Its progress stays readable by id.
    let (status, _, progress) = http.get("/v1/imports/bulk-ndjson-1").await;
    assert_eq!(status, StatusCode::OK, "{progress}");
    assert_eq!((str_of(&progress, "state"), u64_of(&progress, "unchanged")), ("done", 3));
    let (status, _, list) = http.get("/v1/imports").await;
    assert_eq!(status, StatusCode::OK);
    assert!(list["imports"].as_array().is_some_and(|all| all.iter().any(|i| i["id"] == "bulk-ndjson-1")), "{list}");
    assert_problem(&http.get("/v1/imports/no-such-import").await, StatusCode::NOT_FOUND, "import_not_found");
}

async fn a_csv_import_reads_quoted_fields_and_refuses_a_bad_header_whole(http: &Http) {
    let body = "sku,warehouse,on_hand,name,low_stock_threshold\r\n\
                bulk-csv,w1,12,\"Tee, \"\"red\"\"\",2\r\n\
                bulk-csv,w2,,,\r\n\
                bulk-csv,w3,lots,,\r\n";
    let (status, _, report) = import(http, "text/csv", None, body).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!((u64_of(&report, "rows"), u64_of(&report, "created"), u64_of(&report, "failed")), (3, 2, 1));
    assert_eq!(row_errors(&report), [(3, "invalid_row".to_owned())]);
    let one = item(http, "bulk-csv", "w1").await;
    assert_eq!((u64_of(&one, "on_hand"), str_of(&one, "name")), (12, "Tee, \"red\""));
    assert_eq!(u64_of(&one, "low_stock_threshold"), 2);
    assert_eq!(u64_of(&item(http, "bulk-csv", "w2").await, "on_hand"), 0);
    // A header that names an unknown column: nothing is imported.
    let reply = import(http, "text/csv", None, "sku,warehouse,colour\nbulk-csv-x,w1,red\n").await;
    assert_problem(&reply, StatusCode::BAD_REQUEST, "invalid_header");
    assert_problem(&http.get(&item_path("bulk-csv-x", "w1")).await, StatusCode::NOT_FOUND, "item_not_found");
    let reply = import(http, "text/csv", None, "sku,on_hand\nbulk-csv-x,1\n").await;
    assert_problem(&reply, StatusCode::BAD_REQUEST, "invalid_header");
}

async fn an_import_across_shards_applies_every_row_once_and_again_changes_nothing(http: &Http) {
    // More rows than one proposal carries (512), spread over the 4 shards.
    let rows = 3000;
    let body: String = (0..rows)
        .map(|i| format!("{{\"sku\":\"bulk-many-{i}\",\"warehouse\":\"w{}\",\"on_hand\":{}}}\n", i % 3, i % 50))
        .collect();
    let (status, _, report) = import(http, "application/x-ndjson", None, &body).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!((u64_of(&report, "rows"), u64_of(&report, "created"), u64_of(&report, "failed")), (rows, rows, 0));
    for i in [0, 1, 511, 512, 1999, 2999] {
        let one = item(http, &format!("bulk-many-{i}"), &format!("w{}", i % 3)).await;
        assert_eq!(u64_of(&one, "on_hand"), i % 50, "bulk-many-{i}");
        assert_eq!(u64_of(&one, "version"), 1, "bulk-many-{i} was written once");
    }
    let (status, _, again) = import(http, "application/x-ndjson", None, &body).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!((u64_of(&again, "unchanged"), u64_of(&again, "created"), u64_of(&again, "updated")), (rows, 0, 0));
}

/// Every line of an export whose SKU starts with `prefix`.
async fn exported(http: &Http, format: &str, prefix: &str) -> (StatusCode, HeaderMap, Vec<String>) {
    let path = format!("/v1/items:export?format={format}");
    let (status, headers, bytes) = raw_bytes(http, Method::GET, &path, &[], Vec::new()).await;
    let text = String::from_utf8(bytes.to_vec()).unwrap_or_else(|e| panic!("{e}"));
    let ours = |line: &&str| match format {
        "csv" => line.starts_with(prefix) || line.starts_with("sku,"),
        _ => serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"))["sku"]
            .as_str()
            .is_some_and(|sku| sku.starts_with(prefix)),
    };
    let lines = text.lines().filter(ours).map(str::to_owned).collect();
    (status, headers, lines)
}

async fn an_export_lists_every_item_and_imports_back_unchanged(http: &Http) {
    let (status, headers, csv) = exported(http, "csv", "bulk-").await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get(CONTENT_TYPE).is_some_and(|v| v.to_str().unwrap_or_default().starts_with("text/csv")));
    assert_eq!(
        csv.first().map(String::as_str),
        Some(
            "sku,warehouse,on_hand,reserved,available,low_stock_threshold,status,version,updated_at_ms,name,unit_price_minor"
        )
    );
    // 3000 bulk-many items, bulk-a/b/c, bulk-csv w1 and w2, bulk-d w2.
    assert_eq!(csv.len() - 1, 3000 + 3 + 2 + 1, "one line per item");
    assert!(csv.iter().any(|line| line.starts_with("bulk-csv,w1,12,0,12,2,IN_STOCK,") && line.ends_with(",\"Tee, \"\"red\"\"\",")));
    assert!(csv.iter().any(|line| line.starts_with("bulk-b,w1,10,3,7,")), "reserved units are exported");
    let (status, headers, ndjson) = exported(http, "ndjson", "bulk-").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()), Some("application/x-ndjson"));
    assert_eq!(ndjson.len(), 3000 + 6);
    let first: Value = serde_json::from_str(&ndjson[0]).unwrap_or_else(|e| panic!("{e}: {}", ndjson[0]));
    assert!(first["sku"].is_string() && first["reserved"].is_u64() && first["version"].is_u64(), "{first}");
    // Both exports import as they are, and change nothing.
    let csv_body = csv.join("\n");
    let (status, _, report) = import(http, "text/csv", None, &csv_body).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!((u64_of(&report, "unchanged"), u64_of(&report, "failed")), (3006, 0), "{report}");
    let (status, _, report) = import(http, "application/x-ndjson", None, &ndjson.join("\n")).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!((u64_of(&report, "unchanged"), u64_of(&report, "failed")), (3006, 0), "{report}");
    assert_problem(&http.get("/v1/items:export?format=xml").await, StatusCode::BAD_REQUEST, "invalid_format");
}

async fn imports_refuse_other_media_and_overlong_rows(http: &Http) {
    let reply = import(http, "application/json", None, "{\"sku\":\"bulk-x\",\"warehouse\":\"w1\"}").await;
    assert_problem(&reply, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    let reply = import(http, "application/x-ndjson", Some("no spaces"), "").await;
    assert_problem(&reply, StatusCode::BAD_REQUEST, "invalid_import_id");
    // A row over import.line_bytes_max (8192) fails alone; the next is read.
    let long = format!("{{\"sku\":\"bulk-long\",\"warehouse\":\"w1\",\"name\":\"{}\"}}\n", "n".repeat(9000));
    let body = format!("{long}{{\"sku\":\"bulk-after-long\",\"warehouse\":\"w1\",\"on_hand\":1}}\n");
    let (status, _, report) = import(http, "application/x-ndjson", None, &body).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(row_errors(&report), [(1, "line_too_long".to_owned())]);
    assert_eq!(u64_of(&item(http, "bulk-after-long", "w1").await, "on_hand"), 1);
    assert_problem(&http.get(&item_path("bulk-long", "w1")).await, StatusCode::NOT_FOUND, "item_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_api_follows_its_contract() {
    let node = TallyProcess::start(options().shards(4)).await;
    rules!(node.http();
        a_reservation_is_created_held_with_an_expiry,
        a_retry_with_the_same_idempotency_key_replays_and_holds_once,
        insufficient_stock_lists_every_short_line,
        confirm_takes_the_units_and_a_second_confirm_replays,
        release_gives_the_units_back_and_ended_reservations_refuse_the_other_end,
        delete_releases,
        extend_moves_the_deadline_later,
        commit_true_confirms_at_once,
        a_hold_expires_on_its_own_and_then_cannot_be_confirmed,
        a_reservation_across_shards_is_all_or_nothing,
        a_line_without_warehouse_takes_the_most_available_first,
        allocation_follows_priority_and_split_as_the_readme_shows,
        warehouse_priority_lists_are_checked_and_set_alone,
        request_lines_say_where_each_line_came_from_across_shards,
        writes_answer_the_bytes_a_read_after_them_shows,
        an_order_is_found_and_confirmed_by_its_order_id,
        an_idempotency_key_never_answers_an_order_of_the_same_text,
        order_ids_take_128_printable_characters_and_name_their_field,
        a_batch_answers_one_result_per_request_in_order,
        bad_and_unknown_reservation_ids_are_refused,
        a_customer_holds_up_to_the_skus_limit_across_warehouses,
        racing_holds_of_one_customer_never_pass_the_limit,
        a_limit_is_set_changed_and_removed_with_its_rules,
        a_partial_confirm_sells_fewer_and_releases_the_rest,
        a_partial_confirm_across_shards_is_checked_before_any_part_sells,
        a_backorder_on_one_shard_holds_up_the_confirm_of_every_part,
    );
}

/// Holds `lines` for `customer`; answers the reply.
async fn reserve_for(http: &Http, customer: Option<&str>, lines: &[(&str, Option<&str>, u64)]) -> Reply {
    let lines: Vec<Value> = lines
        .iter()
        .map(|(sku, warehouse, quantity)| json!({ "sku": sku, "warehouse": warehouse, "quantity": quantity }))
        .collect();
    let mut body = json!({ "lines": lines });
    if let Some(customer) = customer {
        body["customer_id"] = json!(customer);
    }
    http.post("/v1/reservations", body).await
}

async fn set_limit(http: &Http, sku: &str, body: Value) -> Value {
    let (status, _, reply) = http.put(&format!("/v1/items/{sku}"), body).await;
    assert_eq!(status, StatusCode::OK, "PUT /v1/items/{sku}: {reply}");
    reply
}

async fn a_customer_holds_up_to_the_skus_limit_across_warehouses(http: &Http) {
    put_item(http, "rs-limit", "w1", 100, 0).await;
    put_item(http, "rs-limit", "w2", 100, 0).await;
    let set = set_limit(http, "rs-limit", json!({ "limit_per_customer": 3 })).await;
    assert_eq!((u64_of(&set, "limit_per_customer"), &set["limit_window_seconds"]), (3, &Value::Null));
    let (status, _, body) = reserve_for(http, Some("alice@example.com"), &[("rs-limit", Some("w1"), 2)]).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // The limit is per SKU: the other warehouse counts too.
    let refused = reserve_for(http, Some("alice@example.com"), &[("rs-limit", Some("w2"), 2)]).await;
    assert_problem(&refused, StatusCode::CONFLICT, "customer_limit");
    let over = &refused.2["skus"][0];
    assert_eq!(
        (str_of(over, "sku"), u64_of(over, "limit_per_customer"), u64_of(over, "used"), u64_of(over, "remaining")),
        ("rs-limit", 3, 2, 1)
    );
    assert_eq!(u64_of(&refused.2, "remaining"), 1);
    assert_eq!(levels(http, "rs-limit", "w2").await.1, 0, "a refused hold holds nothing");
    // An allocated line counts the same.
    let (status, _, _) = reserve_for(http, Some("alice@example.com"), &[("rs-limit", None, 1)]).await;
    assert_eq!(status, StatusCode::CREATED);
    // Another customer has a limit of their own; no customer is refused.
    let (status, _, _) = reserve_for(http, Some("bob"), &[("rs-limit", Some("w2"), 3)]).await;
    assert_eq!(status, StatusCode::CREATED);
    let refused = reserve_for(http, None, &[("rs-limit", Some("w2"), 1)]).await;
    assert_problem(&refused, StatusCode::BAD_REQUEST, "customer_id_required");
    assert_eq!(str_of(&refused.2, "sku"), "rs-limit");
    let bad = reserve_for(http, Some("no spaces please"), &[("rs-limit", Some("w2"), 1)]).await;
    assert_problem(&bad, StatusCode::BAD_REQUEST, "field_bad_character");
    // The SKU view shows the limit, and a customer's standing.
    let (status, _, view) = http.get("/v1/items/rs-limit?customer_id=alice@example.com").await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(u64_of(&view, "limit_per_customer"), 3);
    let customer = &view["customer"];
    assert_eq!((u64_of(customer, "held"), u64_of(customer, "sold"), u64_of(customer, "remaining")), (3, 0, 0));
    // Releasing gives the units back to the customer.
    let (_, _, first) = http.get("/v1/items/rs-limit?customer_id=bob").await;
    assert_eq!(u64_of(&first["customer"], "remaining"), 0);
}

async fn racing_holds_of_one_customer_never_pass_the_limit(http: &Http) {
    put_item(http, "rs-race", "w1", 1000, 0).await;
    set_limit(http, "rs-race", json!({ "limit_per_customer": 5 })).await;
    let addr = http.addr();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            tokio::spawn(async move {
                let client = Http::new(addr);
                reserve_for(&client, Some("eve"), &[("rs-race", Some("w1"), 1)]).await.0
            })
        })
        .collect();
    let mut held = 0;
    for task in tasks {
        match task.await.unwrap_or_else(|e| panic!("{e}")) {
            StatusCode::CREATED => held += 1,
            StatusCode::CONFLICT => {}
            other => panic!("a racing hold answered {other}"),
        }
    }
    assert_eq!(held, 5, "exactly the limit is held");
    assert_eq!(levels(http, "rs-race", "w1").await.1, 5);
}

async fn a_limit_is_set_changed_and_removed_with_its_rules(http: &Http) {
    assert_problem(
        &http.put("/v1/items/rs-nolimit", json!({ "limit_per_customer": 2 })).await,
        StatusCode::NOT_FOUND,
        "item_not_found",
    );
    put_item(http, "rs-window", "w1", 100, 0).await;
    for (body, code) in [
        (json!({ "limit_per_customer": 0 }), "quantity_zero"),
        (json!({ "limit_per_customer": 2, "limit_window_seconds": 0 }), "quantity_zero"),
        (json!({ "limit_window_seconds": 60 }), "window_without_limit"),
        (json!({ "limit_per_customer": -1 }), "invalid_body"),
    ] {
        assert_problem(&http.put("/v1/items/rs-window", body.clone()).await, StatusCode::BAD_REQUEST, code);
    }
    let set = set_limit(http, "rs-window", json!({ "limit_per_customer": 2, "limit_window_seconds": 3600 })).await;
    assert_eq!(u64_of(&set, "limit_window_seconds"), 3600);
    // A confirmed sale counts within the window.
    let (status, _, held) = reserve_for(http, Some("carol"), &[("rs-window", Some("w1"), 2)]).await;
    assert_eq!(status, StatusCode::CREATED, "{held}");
    end_reservation(http, str_of(&held, "id"), "confirm").await;
    let refused = reserve_for(http, Some("carol"), &[("rs-window", Some("w1"), 1)]).await;
    assert_problem(&refused, StatusCode::CONFLICT, "customer_limit");
    // Raising the limit keeps what carol bought.
    let set = set_limit(http, "rs-window", json!({ "limit_per_customer": 3, "limit_window_seconds": 3600 })).await;
    assert_eq!(u64_of(&set, "customers"), 1);
    let (status, _, _) = reserve_for(http, Some("carol"), &[("rs-window", Some("w1"), 1)]).await;
    assert_eq!(status, StatusCode::CREATED);
    // Removing it: no customer needed, nothing counted.
    let removed = set_limit(http, "rs-window", json!({ "limit_per_customer": null })).await;
    assert_eq!(removed["limit_per_customer"], Value::Null);
    let (status, _, _) = reserve_for(http, None, &[("rs-window", Some("w1"), 10)]).await;
    assert_eq!(status, StatusCode::CREATED);
}

async fn a_partial_confirm_sells_fewer_and_releases_the_rest(http: &Http) {
    put_item(http, "rs-part", "w1", 10, 0).await;
    put_item(http, "rs-part", "w2", 10, 0).await;
    let held = reserve(http, &[("rs-part", "w1", 4), ("rs-part", "w2", 2)]).await;
    let path = format!("/v1/reservations/{}/confirm", str_of(&held, "id"));
    let over = http.post(&path, json!({ "lines": [{ "sku": "rs-part", "warehouse": "w1", "quantity": 5 }] })).await;
    assert_problem(&over, StatusCode::CONFLICT, "confirm_over_held");
    assert_eq!((u64_of(&over.2, "line"), u64_of(&over.2, "held")), (0, 4));
    let nothing = json!({ "lines": [{ "sku": "rs-part", "warehouse": "w1", "quantity": 0 }, { "sku": "rs-part", "warehouse": "w2", "quantity": 0 }] });
    assert_problem(&http.post(&path, nothing).await, StatusCode::BAD_REQUEST, "quantity_zero");
    assert_eq!(levels(http, "rs-part", "w1").await.1, 4, "refused confirms change nothing");
    // Sell 1 of the 4 in w1; w2, not listed, sells both.
    let (status, _, body) =
        http.post(&path, json!({ "lines": [{ "sku": "rs-part", "warehouse": "w1", "quantity": 1 }] })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(str_of(&body, "state"), "CONFIRMED");
    assert_lines(&body, &[("rs-part", "w1", 1), ("rs-part", "w2", 2)]);
    assert_eq!(levels(http, "rs-part", "w1").await.0, 9);
    assert_eq!(levels(http, "rs-part", "w1").await.1, 0);
    assert_eq!(levels(http, "rs-part", "w2").await.0, 8);
    // A retry answers the same, with or without the body.
    let (status, _, again) = http.post_empty(&path).await;
    assert_eq!(status, StatusCode::OK);
    assert_lines(&again, &[("rs-part", "w1", 1), ("rs-part", "w2", 2)]);
    assert_eq!(levels(http, "rs-part", "w1").await.0, 9);
}

async fn a_partial_confirm_across_shards_is_checked_before_any_part_sells(http: &Http) {
    let (first, other) = skus_on_two_shards(http, "rs-part-x").await;
    let held = reserve(http, &[(&first, "w1", 3), (&other, "w1", 3)]).await;
    let path = format!("/v1/reservations/{}/confirm", str_of(&held, "id"));
    let before = (levels(http, &first, "w1").await, levels(http, &other, "w1").await);
    let over = json!({ "lines": [{ "sku": first, "warehouse": "w1", "quantity": 2 }, { "sku": other, "warehouse": "w1", "quantity": 4 }] });
    assert_problem(&http.post(&path, over).await, StatusCode::CONFLICT, "confirm_over_held");
    assert_eq!((levels(http, &first, "w1").await, levels(http, &other, "w1").await), before, "no part sold");
    let partial = json!({ "lines": [{ "sku": first, "warehouse": "w1", "quantity": 2 }] });
    let (status, _, body) = http.post(&path, partial).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(levels(http, &first, "w1").await.0, before.0.0 - 2);
    assert_eq!(levels(http, &other, "w1").await.0, before.1.0 - 3);
    assert_eq!(
        (levels(http, &first, "w1").await.1, levels(http, &other, "w1").await.1),
        (before.0.1 - 3, before.1.1 - 3)
    );
}

async fn a_reservation_is_created_held_with_an_expiry(http: &Http) {
    put_item(http, "rs-new", "w1", 10, 0).await;
    let (status, _, body) = http
        .post(
            "/v1/reservations",
            json!({ "lines": [{ "sku": "rs-new", "warehouse": "w1", "quantity": 3 }], "ttl_seconds": 60 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(str_of(&body, "state"), "HELD");
    assert_lines(&body, &[("rs-new", "w1", 3)]);
    let id = str_of(&body, "id");
    assert_eq!(id.len(), 32, "{id}");
    assert!(str_of(&body, "expires_at").ends_with('Z'), "{body}");
    let expires = u64_of(&body, "expires_at_ms");
    let created = u64_of(&body, "created_at_ms");
    assert!(expires > created, "{body}");
    let (status, _, got) = http.get(&format!("/v1/reservations/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(str_of(&got, "state"), "HELD");
    assert_eq!(u64_of(&got, "expires_at_ms"), expires);
    assert_eq!(levels(http, "rs-new", "w1").await.1, 3);
}

async fn a_retry_with_the_same_idempotency_key_replays_and_holds_once(http: &Http) {
    put_item(http, "rs-idem", "w1", 10, 0).await;
    let body = json!({ "lines": [{ "sku": "rs-idem", "warehouse": "w1", "quantity": 4 }] });
    let key = [("idempotency-key", "rs-idem-key-1")];
    let first = http.post_with("/v1/reservations", body.clone(), &key).await;
    assert_eq!(first.0, StatusCode::CREATED, "{}", first.2);
    assert_eq!(header(&first, "idempotent-replayed"), None, "a first create is not a replay");
    let again = http.post_with("/v1/reservations", body, &key).await;
    assert_eq!(again.0, StatusCode::CREATED, "{}", again.2);
    assert_eq!(header(&again, "idempotent-replayed"), Some("true"));
    assert_eq!(again.2["id"], first.2["id"]);
    assert_eq!(levels(http, "rs-idem", "w1").await.1, 4, "the stock is held once");
}

async fn insufficient_stock_lists_every_short_line(http: &Http) {
    put_item(http, "rs-short", "w1", 2, 0).await;
    put_item(http, "rs-short", "w2", 1, 0).await;
    put_item(http, "rs-short", "w3", 10, 0).await;
    let body = json!({ "lines": [
        { "sku": "rs-short", "warehouse": "w1", "quantity": 5 },
        { "sku": "rs-short", "warehouse": "w3", "quantity": 1 },
        { "sku": "rs-short", "warehouse": "w2", "quantity": 3 },
    ] });
    let refused = http.post("/v1/reservations", body).await;
    assert_problem(&refused, StatusCode::CONFLICT, "insufficient_stock");
    let lines = refused.2["lines"].as_array().unwrap_or_else(|| panic!("no lines in {}", refused.2));
    let mut short: Vec<(u64, &str, u64, u64)> = lines
        .iter()
        .map(|l| (u64_of(l, "line"), str_of(l, "warehouse"), u64_of(l, "requested"), u64_of(l, "available")))
        .collect();
    short.sort_unstable();
    assert_eq!(short, [(0, "w1", 5, 2), (2, "w2", 3, 1)], "{}", refused.2);
    for warehouse in ["w1", "w2", "w3"] {
        assert_eq!(levels(http, "rs-short", warehouse).await.1, 0, "nothing is held in {warehouse}");
    }
}

async fn confirm_takes_the_units_and_a_second_confirm_replays(http: &Http) {
    put_item(http, "rs-confirm", "w1", 10, 0).await;
    let held = reserve(http, &[("rs-confirm", "w1", 3)]).await;
    let path = format!("/v1/reservations/{}/confirm", str_of(&held, "id"));
    let (status, _, body) = http.post_empty(&path).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(str_of(&body, "state"), "CONFIRMED");
    let (on_hand, reserved, _) = levels(http, "rs-confirm", "w1").await;
    assert_eq!((on_hand, reserved), (7, 0), "a confirm takes on_hand and reserved down by the quantity");
    let (status, _, body) = http.post_empty(&path).await;
    assert_eq!(status, StatusCode::OK, "a second confirm replays the first: {body}");
    assert_eq!(str_of(&body, "state"), "CONFIRMED");
    assert_eq!(levels(http, "rs-confirm", "w1").await.0, 7, "a replayed confirm takes nothing more");
}

async fn release_gives_the_units_back_and_ended_reservations_refuse_the_other_end(http: &Http) {
    put_item(http, "rs-release", "w1", 10, 0).await;
    let confirmed = reserve(http, &[("rs-release", "w1", 2)]).await;
    let confirmed_id = str_of(&confirmed, "id");
    assert_eq!(http.post_empty(&format!("/v1/reservations/{confirmed_id}/confirm")).await.0, StatusCode::OK);
    let late = http.post_empty(&format!("/v1/reservations/{confirmed_id}/release")).await;
    assert_problem(&late, StatusCode::CONFLICT, "reservation_confirmed");

    let held = reserve(http, &[("rs-release", "w1", 3)]).await;
    let id = str_of(&held, "id");
    assert_eq!(levels(http, "rs-release", "w1").await.1, 3);
    let (status, _, body) = http.post_empty(&format!("/v1/reservations/{id}/release")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(str_of(&body, "state"), "RELEASED");
    assert_eq!(levels(http, "rs-release", "w1").await.0, 8);
    assert_eq!(levels(http, "rs-release", "w1").await.1, 0, "a release gives the units back");
    let confirm = http.post_empty(&format!("/v1/reservations/{id}/confirm")).await;
    assert_problem(&confirm, StatusCode::CONFLICT, "reservation_released");
    assert_eq!(levels(http, "rs-release", "w1").await.0, 8, "a refused confirm takes nothing");
}

async fn delete_releases(http: &Http) {
    put_item(http, "rs-delete", "w1", 10, 0).await;
    let held = reserve(http, &[("rs-delete", "w1", 4)]).await;
    let (status, _, body) = http.delete(&format!("/v1/reservations/{}", str_of(&held, "id")), Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(str_of(&body, "state"), "RELEASED");
    assert_eq!(levels(http, "rs-delete", "w1").await.1, 0);
}

async fn extend_moves_the_deadline_later(http: &Http) {
    put_item(http, "rs-extend", "w1", 10, 0).await;
    let (status, _, held) = http
        .post(
            "/v1/reservations",
            json!({ "lines": [{ "sku": "rs-extend", "warehouse": "w1", "quantity": 1 }], "ttl_seconds": 30 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{held}");
    let id = str_of(&held, "id");
    let (status, _, extended) =
        http.post(&format!("/v1/reservations/{id}/extend"), json!({ "ttl_seconds": 3600 })).await;
    assert_eq!(status, StatusCode::OK, "{extended}");
    assert_eq!(str_of(&extended, "state"), "HELD");
    assert!(
        // From now + 30 s to now + 1 h: later by nearly an hour.
        u64_of(&extended, "expires_at_ms") >= u64_of(&held, "expires_at_ms") + 3_000_000,
        "the deadline moved to now + 1 h: {held} -> {extended}"
    );
    let zero = http.post(&format!("/v1/reservations/{id}/extend"), json!({ "ttl_seconds": 0 })).await;
    assert_problem(&zero, StatusCode::BAD_REQUEST, "ttl_out_of_range");
    let (_, _, after) = http.get(&format!("/v1/reservations/{id}")).await;
    assert_eq!(after["expires_at_ms"], extended["expires_at_ms"], "a refused extend keeps the deadline");
}

async fn commit_true_confirms_at_once(http: &Http) {
    put_item(http, "rs-commit", "w1", 10, 0).await;
    let (status, _, body) = http
        .post(
            "/v1/reservations",
            json!({ "lines": [{ "sku": "rs-commit", "warehouse": "w1", "quantity": 4 }], "commit": true }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(str_of(&body, "state"), "CONFIRMED");
    assert_eq!(levels(http, "rs-commit", "w1").await.0, 6);
    assert_eq!(levels(http, "rs-commit", "w1").await.1, 0);
}

async fn a_hold_expires_on_its_own_and_then_cannot_be_confirmed(http: &Http) {
    put_item(http, "rs-expire", "w1", 10, 0).await;
    let (status, _, held) = http
        .post(
            "/v1/reservations",
            json!({ "lines": [{ "sku": "rs-expire", "warehouse": "w1", "quantity": 5 }], "ttl_seconds": 1 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{held}");
    let id = str_of(&held, "id").to_owned();
    let path = format!("/v1/reservations/{id}");
    // No other request in between: the server must expire it by itself.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    eventually("the 1 s hold shows EXPIRED", EXPIRY_WAIT_MAX, async || {
        let (status, _, body) = http.get(&path).await;
        (status == StatusCode::OK && body["state"] == "EXPIRED").then_some(())
    })
    .await;
    assert_eq!(levels(http, "rs-expire", "w1").await.0, 10);
    assert_eq!(levels(http, "rs-expire", "w1").await.1, 0, "an expired hold gives its units back");
    let confirm = http.post_empty(&format!("{path}/confirm")).await;
    assert_problem(&confirm, StatusCode::CONFLICT, "reservation_expired");
}

/// Two SKUs on different shards, found by trying names: a reservation over
/// both spans shards, and says so with `parts`.
async fn skus_on_two_shards(http: &Http, prefix: &str) -> (String, String) {
    let first = format!("{prefix}-0");
    put_item(http, &first, "w1", 10, 0).await;
    for index in 1..64 {
        let other = format!("{prefix}-{index}");
        put_item(http, &other, "w1", 10, 0).await;
        let held = reserve(http, &[(&first, "w1", 1), (&other, "w1", 1)]).await;
        let (status, _, _) = http.post_empty(&format!("/v1/reservations/{}/release", str_of(&held, "id"))).await;
        assert_eq!(status, StatusCode::OK);
        if held.get("parts").is_some() {
            return (first, other);
        }
    }
    panic!("no two of 64 SKUs on different shards")
}

async fn a_reservation_across_shards_is_all_or_nothing(http: &Http) {
    let (a, b) = skus_on_two_shards(http, "rs-xs").await;
    put_item(http, &b, "w1", 2, 0).await;
    let body = json!({ "lines": [
        { "sku": a, "warehouse": "w1", "quantity": 5 },
        { "sku": b, "warehouse": "w1", "quantity": 3 },
    ] });
    let refused = http.post("/v1/reservations", body).await;
    assert_problem(&refused, StatusCode::CONFLICT, "insufficient_stock");
    assert_eq!(refused.2["lines"].as_array().map(Vec::len), Some(1), "{}", refused.2);
    assert_eq!(refused.2["lines"][0]["sku"], b.as_str(), "{}", refused.2);
    assert_eq!(levels(http, &a, "w1").await.1, 0, "the part held on the other shard was given back");
    assert_eq!(levels(http, &b, "w1").await.1, 0);

    let held = reserve(http, &[(&a, "w1", 5), (&b, "w1", 2)]).await;
    assert!(held.get("parts").is_some(), "{held}");
    let (status, _, confirmed) = http.post_empty(&format!("/v1/reservations/{}/confirm", str_of(&held, "id"))).await;
    assert_eq!(status, StatusCode::OK, "{confirmed}");
    assert_eq!(str_of(&confirmed, "state"), "CONFIRMED");
    assert_eq!(levels(http, &a, "w1").await.0, 5);
    assert_eq!(levels(http, &b, "w1").await.0, 0);
}

async fn a_backorder_on_one_shard_holds_up_the_confirm_of_every_part(http: &Http) {
    let (a, b) = skus_on_two_shards(http, "rs-bo").await;
    let (status, _, body) = http.put(&item_path(&b, "w1"), json!({ "on_hand": 1, "backorder_limit": 5 })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let held = reserve(http, &[(&a, "w1", 2), (&b, "w1", 3)]).await;
    assert!(held.get("parts").is_some(), "{held}");
    let path = format!("/v1/reservations/{}/confirm", str_of(&held, "id"));
    let early = http.post_empty(&path).await;
    assert_problem(&early, StatusCode::CONFLICT, "backorder_unfilled");
    assert_eq!(early.2["backordered"], 2, "{}", early.2);
    assert_eq!(levels(http, &a, "w1").await.0, 10, "no part sold");
    let received =
        http.post(&format!("/v1/items/{b}/w1/adjustments"), json!({ "delta": 2, "reason": "receive" })).await;
    assert_eq!(received.0, StatusCode::OK, "{}", received.2);
    let (status, _, confirmed) = http.post_empty(&path).await;
    assert_eq!(status, StatusCode::OK, "{confirmed}");
    assert_eq!((levels(http, &a, "w1").await.0, levels(http, &b, "w1").await.0), (8, 0));
}

async fn a_line_without_warehouse_takes_the_most_available_first(http: &Http) {
    put_item(http, "rs-alloc", "w1", 3, 0).await;
    put_item(http, "rs-alloc", "w2", 7, 0).await;
    let (status, _, body) =
        http.post("/v1/reservations", json!({ "lines": [{ "sku": "rs-alloc", "quantity": 8 }] })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_lines(&body, &[("rs-alloc", "w2", 7), ("rs-alloc", "w1", 1)]);
    assert_eq!(levels(http, "rs-alloc", "w2").await.1, 7);
    assert_eq!(levels(http, "rs-alloc", "w1").await.1, 1);
    let short = http.post("/v1/reservations", json!({ "lines": [{ "sku": "rs-alloc", "quantity": 3 }] })).await;
    assert_problem(&short, StatusCode::CONFLICT, "insufficient_stock");
    assert_eq!(levels(http, "rs-alloc", "w1").await.1, 1, "a refused allocation holds nothing");
}

/// `request_lines[line].allocations` of a create's answer as
/// `(warehouse, quantity)`.
fn allocations_of(body: &Value, line: usize) -> Vec<(String, u64)> {
    let line = &body["request_lines"][line];
    line["allocations"]
        .as_array()
        .unwrap_or_else(|| panic!("no allocations: {body}"))
        .iter()
        .map(|a| (str_of(a, "warehouse").to_owned(), u64_of(a, "quantity")))
        .collect()
}

fn pairs(expected: &[(&str, u64)]) -> Vec<(String, u64)> {
    expected.iter().map(|(w, q)| ((*w).to_owned(), *q)).collect()
}

/// README's "Where units come from" example, as written.
async fn allocation_follows_priority_and_split_as_the_readme_shows(http: &Http) {
    put_item(http, "BOOT-7", "berlin", 3, 0).await;
    put_item(http, "BOOT-7", "paris", 8, 0).await;
    put_item(http, "BOOT-7", "rome", 5, 0).await;
    let set = set_limit(http, "BOOT-7", json!({ "warehouse_priority": ["berlin", "rome"] })).await;
    assert_eq!(set, json!({ "sku": "BOOT-7", "warehouse_priority": ["berlin", "rome"] }));
    let body = json!({ "allocation": "priority", "lines": [{ "sku": "BOOT-7", "quantity": 6 }] });
    let (status, _, held) = http.post("/v1/reservations", body).await;
    assert_eq!(status, StatusCode::CREATED, "{held}");
    assert_lines(&held, &[("BOOT-7", "berlin", 3), ("BOOT-7", "rome", 3)]);
    assert_eq!(allocations_of(&held, 0), pairs(&[("berlin", 3), ("rome", 3)]));
    let line = &held["request_lines"][0];
    assert_eq!((u64_of(line, "line"), &line["warehouse"], u64_of(line, "quantity")), (0, &Value::Null, 6));
    let body = json!({ "allocation": "priority", "split": false, "lines": [{ "sku": "BOOT-7", "quantity": 7 }] });
    let (status, _, held) = http.post("/v1/reservations", body).await;
    assert_eq!(status, StatusCode::CREATED, "{held}");
    assert_eq!(allocations_of(&held, 0), pairs(&[("paris", 7)]));
    let body = json!({ "split": false, "lines": [{ "sku": "BOOT-7", "quantity": 3 }] });
    let short = http.post("/v1/reservations", body).await;
    assert_problem(&short, StatusCode::CONFLICT, "insufficient_stock");
    let line = &short.2["lines"][0];
    assert_eq!((u64_of(line, "line"), u64_of(line, "requested"), u64_of(line, "available")), (0, 3, 2));
    assert_eq!(levels(http, "BOOT-7", "rome").await.1, 3, "a refused hold holds nothing");
    // Split (the default), the same 3 are found in two warehouses.
    let (status, _, held) =
        http.post("/v1/reservations", json!({ "lines": [{ "sku": "BOOT-7", "quantity": 3 }] })).await;
    assert_eq!(status, StatusCode::CREATED, "{held}");
    assert_eq!(allocations_of(&held, 0), pairs(&[("rome", 2), ("paris", 1)]));
    let (_, _, view) = http.get("/v1/items/BOOT-7").await;
    assert_eq!(view["warehouse_priority"], json!(["berlin", "rome"]), "{view}");
    // A batch's requests take the same options, each on its own.
    put_item(http, "rs-batch-alloc", "w1", 2, 0).await;
    put_item(http, "rs-batch-alloc", "w2", 2, 0).await;
    let request = |split: bool| {
        json!({ "split": split, "warehouse_priority": ["w2"],
        "lines": [{ "sku": "rs-batch-alloc", "quantity": 3 }] })
    };
    let (status, _, body) =
        http.post("/v1/reservations/batch", json!({ "requests": [request(false), request(true)] })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["problem"]["code"], "insufficient_stock", "{body}");
    assert_eq!(allocations_of(&body["results"][1]["reservation"], 0), pairs(&[("w2", 2), ("w1", 1)]), "{body}");
}

async fn warehouse_priority_lists_are_checked_and_set_alone(http: &Http) {
    put_item(http, "rs-prio", "w1", 10, 0).await;
    put_item(http, "rs-prio", "w2", 10, 0).await;
    set_limit(http, "rs-prio", json!({ "limit_per_customer": 4 })).await;
    let too_long: Vec<String> = (0..33).map(|n| format!("w{n}")).collect();
    for body in [
        json!({ "warehouse_priority": ["w1", "w3"] }),
        json!({ "warehouse_priority": ["w1", "w1"] }),
        json!({ "warehouse_priority": too_long }),
    ] {
        let reply = http.put("/v1/items/rs-prio", body.clone()).await;
        assert_problem(&reply, StatusCode::BAD_REQUEST, "invalid_warehouse_priority");
    }
    let reply = http.put("/v1/items/rs-prio", json!({ "warehouse_priority": ["no spaces"] })).await;
    assert_problem(&reply, StatusCode::BAD_REQUEST, "field_bad_character");
    assert_problem(
        &http.put("/v1/items/rs-prio-none", json!({ "warehouse_priority": ["w1"] })).await,
        StatusCode::NOT_FOUND,
        "item_not_found",
    );
    // The list alone leaves the limit as it was.
    let set = set_limit(http, "rs-prio", json!({ "warehouse_priority": ["w2"] })).await;
    assert_eq!(set, json!({ "sku": "rs-prio", "warehouse_priority": ["w2"] }));
    let (_, _, view) = http.get("/v1/items/rs-prio").await;
    assert_eq!((u64_of(&view, "limit_per_customer"), &view["warehouse_priority"]), (4, &json!(["w2"])), "{view}");
    // The default (most available) ignores lists: a tie goes by name.
    let (status, _, held) = reserve_for(http, Some("carol"), &[("rs-prio", None, 1)]).await;
    assert_eq!(status, StatusCode::CREATED, "{held}");
    assert_eq!(allocations_of(&held, 0), pairs(&[("w1", 1)]));
    // `priority` follows the SKU's list, though w1 now has less.
    let body =
        json!({ "customer_id": "carol", "allocation": "priority", "lines": [{ "sku": "rs-prio", "quantity": 1 }] });
    let (status, _, held) = http.post("/v1/reservations", body).await;
    assert_eq!(status, StatusCode::CREATED, "{held}");
    assert_eq!(allocations_of(&held, 0), pairs(&[("w2", 1)]));
    // A request's options: priority lists checked the same way.
    for body in [
        json!({ "warehouse_priority": ["w1", "w1"], "lines": [{ "sku": "rs-prio", "quantity": 1 }] }),
        json!({ "allocation": "most_available", "warehouse_priority": ["w1"], "lines": [{ "sku": "rs-prio", "quantity": 1 }] }),
        json!({ "warehouse_priority": too_long, "lines": [{ "sku": "rs-prio", "quantity": 1 }] }),
    ] {
        let reply = http.post("/v1/reservations", body).await;
        assert_problem(&reply, StatusCode::BAD_REQUEST, "invalid_warehouse_priority");
    }
    let bad = http
        .post("/v1/reservations", json!({ "allocation": "nearest", "lines": [{ "sku": "rs-prio", "quantity": 1 }] }))
        .await;
    assert_problem(&bad, StatusCode::BAD_REQUEST, "invalid_body");
    // The request's list overrides the SKU's; one that stocks nothing is skipped.
    let body = json!({ "customer_id": "carol", "warehouse_priority": ["elsewhere", "w1"],
        "lines": [{ "sku": "rs-prio", "quantity": 1 }] });
    let (status, _, other) = http.post("/v1/reservations", body).await;
    assert_eq!(status, StatusCode::CREATED, "{other}");
    assert_eq!(allocations_of(&other, 0), pairs(&[("w1", 1)]));
    // null removes the list and leaves the limit.
    let cleared = set_limit(http, "rs-prio", json!({ "warehouse_priority": null })).await;
    assert_eq!(cleared, json!({ "sku": "rs-prio", "warehouse_priority": [] }));
    let (_, _, view) = http.get("/v1/items/rs-prio").await;
    assert_eq!((u64_of(&view, "limit_per_customer"), &view["warehouse_priority"]), (4, &json!([])), "{view}");
    // A body with a bad limit applies nothing of itself, the list neither.
    let bad = http.put("/v1/items/rs-prio", json!({ "warehouse_priority": ["w1"], "limit_per_customer": 0 })).await;
    assert_problem(&bad, StatusCode::BAD_REQUEST, "quantity_zero");
    let (_, _, view) = http.get("/v1/items/rs-prio").await;
    assert_eq!((u64_of(&view, "limit_per_customer"), &view["warehouse_priority"]), (4, &json!([])), "{view}");
}

async fn request_lines_say_where_each_line_came_from_across_shards(http: &Http) {
    let (a, b) = skus_on_two_shards(http, "rs-rl").await;
    put_item(http, &a, "w1", 4, 0).await;
    put_item(http, &a, "w2", 4, 0).await;
    put_item(http, &b, "w1", 2, 0).await;
    put_item(http, &b, "w2", 9, 0).await;
    let request = json!({ "warehouse_priority": ["w1"], "lines": [
        { "sku": b, "quantity": 5 },
        { "sku": a, "warehouse": "w2", "quantity": 1 },
        { "sku": a, "quantity": 6 },
    ] });
    let headers = [("idempotency-key", "rs-rl-key")];
    let (_, first) = post_bytes(http, "/v1/reservations", Some(&request), &headers, StatusCode::CREATED).await;
    let held: Value = serde_json::from_slice(&first).unwrap_or_else(|e| panic!("{e}"));
    assert!(held.get("parts").is_some(), "{held}");
    assert_eq!(allocations_of(&held, 0), pairs(&[("w1", 2), ("w2", 3)]), "{held}");
    assert_eq!(allocations_of(&held, 1), pairs(&[("w2", 1)]), "{held}");
    // In the order of the reservation's lines: w2 first, named by line 1.
    assert_eq!(allocations_of(&held, 2), pairs(&[("w2", 2), ("w1", 4)]), "{held}");
    let lines: Vec<u64> = (0..3).map(|i| u64_of(&held["request_lines"][i], "line")).collect();
    assert_eq!(lines, [0, 1, 2], "in request order");
    // A retry answers the same, allocations recomputed from the stored lines.
    let (_, again) = post_bytes(http, "/v1/reservations", Some(&request), &headers, StatusCode::CREATED).await;
    assert_eq!(String::from_utf8_lossy(&again), String::from_utf8_lossy(&first));
    // Confirmed at once (one shard): the same shape.
    put_item(http, "rs-rl-commit", "w1", 2, 0).await;
    put_item(http, "rs-rl-commit", "w2", 3, 0).await;
    let body = json!({ "commit": true, "lines": [{ "sku": "rs-rl-commit", "quantity": 4 }] });
    let (status, _, sold) = http.post("/v1/reservations", body).await;
    assert_eq!(status, StatusCode::CREATED, "{sold}");
    assert_eq!(str_of(&sold, "state"), "CONFIRMED");
    assert_eq!(allocations_of(&sold, 0), pairs(&[("w2", 3), ("w1", 1)]), "{sold}");
}

/// A POST of `body` (JSON, if any) with `headers`; asserts `status` and
/// answers the headers and the body's bytes.
async fn post_bytes(
    http: &Http,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
    status: StatusCode,
) -> (HeaderMap, Bytes) {
    let mut headers = headers.to_vec();
    let body = match body {
        Some(json) => {
            headers.push((CONTENT_TYPE.as_str(), "application/json"));
            json.to_string().into_bytes()
        }
        None => Vec::new(),
    };
    let (got, headers, bytes) = raw_bytes(http, Method::POST, path, &headers, body).await;
    assert_eq!(got, status, "POST {path}: {}", String::from_utf8_lossy(&bytes));
    (headers, bytes)
}

/// Asserts a write's answer is, byte for byte, what `GET
/// /v1/reservations/{id}` shows right after it; answers the bytes.
async fn assert_read_shows(http: &Http, id: &str, what: &str, written: &Bytes) {
    let (status, _, read) = raw_bytes(http, Method::GET, &format!("/v1/reservations/{id}"), &[], Vec::new()).await;
    assert_eq!(status, StatusCode::OK, "GET {id} after {what}: {}", String::from_utf8_lossy(&read));
    assert_eq!(
        String::from_utf8_lossy(written),
        String::from_utf8_lossy(&read),
        "{what} answered other bytes than the read after it"
    );
}

/// What a create answered (`written`) is the bytes a read of the
/// reservation shows, and then its `request_lines`, which only a create
/// answers (issue 17 item 5; they are not stored): the read's bytes with
/// `,"request_lines":[…]` before the closing brace.
async fn assert_create_shows(http: &Http, id: &str, what: &str, written: &Bytes) {
    let (status, _, read) = raw_bytes(http, Method::GET, &format!("/v1/reservations/{id}"), &[], Vec::new()).await;
    assert_eq!(status, StatusCode::OK, "GET {id} after {what}: {}", String::from_utf8_lossy(&read));
    let (written, read) = (String::from_utf8_lossy(written), String::from_utf8_lossy(&read));
    let (before, after) = written
        .split_once(",\"request_lines\":")
        .unwrap_or_else(|| panic!("{what}: a create lists its request lines: {written}"));
    assert_eq!(format!("{before}}}"), read, "{what} answered other bytes than the read after it");
    let lines = after.strip_suffix('}').unwrap_or_else(|| panic!("{what}: request_lines come last: {written}"));
    let lines: Value = serde_json::from_str(lines).unwrap_or_else(|e| panic!("{what}: {e}: {written}"));
    assert!(lines.is_array(), "{what}: {written}");
}

/// A reservation as `writes_answer_the_bytes_a_read_after_them_shows` makes
/// and ends it.
struct Shape<'a> {
    lines: &'a Value,
    /// The `Idempotency-Key` header, if any.
    key: Option<&'a str>,
    order_id: Option<&'a str>,
    /// `"confirm"` or `"release"`.
    end: &'a str,
    /// Extend and end through `/v1/orders/{order_id}` rather than the id.
    by_order: bool,
}

/// Holds, extends, ends and ends again reservations of every shape (one
/// shard or several; no key, an `Idempotency-Key`, an `order_id`; by id and
/// by order): every answer is the same bytes as the read after it, though
/// the writes answer from their own outcomes. A second confirm or release
/// answers the first's bytes again; a retried create with the same key or
/// order replays the hold's bytes.
async fn writes_answer_the_bytes_a_read_after_them_shows(http: &Http) {
    put_item(http, "rs-same", "w1", 100, 0).await;
    put_item(http, "rs-same", "w2", 100, 0).await;
    let (a, b) = skus_on_two_shards(http, "rs-same-xs").await;
    put_item(http, &a, "w1", 100, 0).await;
    put_item(http, &b, "w1", 100, 0).await;
    let one_shard = json!([
        { "sku": "rs-same", "warehouse": "w2", "quantity": 2 },
        { "sku": "rs-same", "quantity": 3 },
        { "sku": "rs-same", "warehouse": "w1", "quantity": 1 },
    ]);
    let two_shards = json!([
        { "sku": b, "warehouse": "w1", "quantity": 1 },
        { "sku": a, "warehouse": "w1", "quantity": 2 },
        { "sku": b, "quantity": 1 },
    ]);
    let shape = |lines, key, order_id, end, by_order| Shape { lines, key, order_id, end, by_order };
    let shapes = [
        shape(&one_shard, None, None, "confirm", false),
        shape(&one_shard, Some("rs-same-key-1"), None, "release", false),
        shape(&one_shard, None, Some("rs-same-order-1"), "confirm", true),
        shape(&one_shard, Some("rs-same-key-2"), Some("rs-same-order-2"), "release", false),
        shape(&two_shards, None, None, "release", false),
        shape(&two_shards, Some("rs-same-key-3"), None, "confirm", false),
        shape(&two_shards, None, Some("rs-same-order-3"), "release", true),
        shape(&two_shards, Some("rs-same-key-4"), Some("rs-same-order-4"), "confirm", false),
    ];
    for Shape { lines, key, order_id, end, by_order } in shapes {
        let what = format!("{end} of {lines} with key {key:?} and order {order_id:?}");
        let mut request = json!({ "lines": lines, "ttl_seconds": 60 });
        if let Some(order_id) = order_id {
            request["order_id"] = json!(order_id);
        }
        let headers: Vec<(&str, &str)> = key.map(|key| ("idempotency-key", key)).into_iter().collect();
        let (_, held) = post_bytes(http, "/v1/reservations", Some(&request), &headers, StatusCode::CREATED).await;
        let held_json: Value = serde_json::from_slice(&held).unwrap_or_else(|e| panic!("{what}: {e}"));
        let id = str_of(&held_json, "id");
        assert_eq!(held_json.get("parts").is_some(), lines == &two_shards, "{what}: {held_json}");
        assert_eq!(held_json["order_id"].as_str(), order_id, "{what}: {held_json}");
        assert_create_shows(http, id, &format!("the hold before {what}"), &held).await;
        if key.is_some() || order_id.is_some() {
            let (replayed_headers, replayed) =
                post_bytes(http, "/v1/reservations", Some(&request), &headers, StatusCode::CREATED).await;
            assert_eq!(replayed_headers.get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));
            assert_eq!(replayed, held, "a retried create answers the hold's bytes: {what}");
        }

        let base = match (by_order, order_id) {
            (true, Some(order_id)) => format!("/v1/orders/{order_id}"),
            _ => format!("/v1/reservations/{id}"),
        };
        let extend = json!({ "ttl_seconds": 3600 });
        let (_, extended) = post_bytes(http, &format!("{base}/extend"), Some(&extend), &[], StatusCode::OK).await;
        assert_read_shows(http, id, &format!("the extend before {what}"), &extended).await;
        assert_ne!(extended, held, "{what}: the extend moved the deadline");

        let (_, ended) = post_bytes(http, &format!("{base}/{end}"), None, &[], StatusCode::OK).await;
        assert_read_shows(http, id, &what, &ended).await;
        let (_, again) = post_bytes(http, &format!("{base}/{end}"), None, &[], StatusCode::OK).await;
        assert_eq!(
            String::from_utf8_lossy(&again),
            String::from_utf8_lossy(&ended),
            "the second {end} answers the first's bytes: {what}"
        );
        assert_read_shows(http, id, &format!("the second {what}"), &again).await;
    }
}

async fn an_order_is_found_and_confirmed_by_its_order_id(http: &Http) {
    put_item(http, "rs-order", "w1", 10, 0).await;
    let (status, _, held) = http
        .post(
            "/v1/reservations",
            json!({ "lines": [{ "sku": "rs-order", "warehouse": "w1", "quantity": 2 }], "order_id": "order-77" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{held}");
    assert_eq!(str_of(&held, "order_id"), "order-77");
    let (status, _, got) = http.get("/v1/orders/order-77").await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["id"], held["id"]);
    assert_eq!(str_of(&got, "state"), "HELD");
    let (status, _, confirmed) = http.post_empty("/v1/orders/order-77/confirm").await;
    assert_eq!(status, StatusCode::OK, "{confirmed}");
    assert_eq!(str_of(&confirmed, "state"), "CONFIRMED");
    assert_eq!(levels(http, "rs-order", "w1").await.0, 8);
    assert_problem(&http.get("/v1/orders/order-none").await, StatusCode::NOT_FOUND, "order_not_found");
}

async fn an_idempotency_key_never_answers_an_order_of_the_same_text(http: &Http) {
    put_item(http, "rs-ns", "w1", 10, 0).await;
    let line = json!([{ "sku": "rs-ns", "warehouse": "w1", "quantity": 1 }]);
    let (status, _, order) = http.post("/v1/reservations", json!({ "lines": line, "order_id": "ns-1" })).await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    // Before namespaces, this header was the engine key of order ns-1.
    let keyed =
        http.post_with("/v1/reservations", json!({ "lines": line }), &[("idempotency-key", "order:ns-1")]).await;
    assert_eq!(keyed.0, StatusCode::CREATED, "{}", keyed.2);
    assert_ne!(keyed.2["id"], order["id"], "a key is not an order: {}", keyed.2);
    assert!(header(&keyed, "idempotent-replayed").is_none(), "nothing was replayed");
    assert!(keyed.2["order_id"].is_null(), "a keyed reservation has no order: {}", keyed.2);
    // Nor does an order answer a key of the same text.
    let by_key = http.post_with("/v1/reservations", json!({ "lines": line }), &[("idempotency-key", "ns-2")]).await;
    assert_eq!(by_key.0, StatusCode::CREATED, "{}", by_key.2);
    let (status, _, by_order) = http.post("/v1/reservations", json!({ "lines": line, "order_id": "ns-2" })).await;
    assert_eq!(status, StatusCode::CREATED, "{by_order}");
    assert_ne!(by_order["id"], by_key.2["id"]);
    let (status, _, found) = http.get("/v1/orders/ns-1").await;
    assert_eq!((status, &found["id"]), (StatusCode::OK, &order["id"]), "{found}");
    assert_problem(&http.get("/v1/orders/order:ns-1").await, StatusCode::NOT_FOUND, "order_not_found");
    assert_eq!(levels(http, "rs-ns", "w1").await.1, 4, "four reservations, one unit each");
}

async fn order_ids_take_128_printable_characters_and_name_their_field(http: &Http) {
    put_item(http, "rs-oid", "w1", 10, 0).await;
    let line = json!([{ "sku": "rs-oid", "warehouse": "w1", "quantity": 1 }]);
    let longest = "o".repeat(128);
    let (status, _, held) = http.post("/v1/reservations", json!({ "lines": line, "order_id": longest })).await;
    assert_eq!(status, StatusCode::CREATED, "{held}");
    assert_eq!(held["order_id"], longest.as_str());
    assert_eq!(http.get(&format!("/v1/orders/{longest}")).await.0, StatusCode::OK);
    for (order_id, code) in [("o".repeat(129), "field_too_long"), ("has space".into(), "field_bad_character")] {
        let refused = http.post("/v1/reservations", json!({ "lines": line, "order_id": order_id })).await;
        assert_problem(&refused, StatusCode::BAD_REQUEST, code);
        assert_eq!(refused.2["field"], "order_id", "{}", refused.2);
    }
    let key = "k".repeat(129);
    let refused = http.post_with("/v1/reservations", json!({ "lines": line }), &[("idempotency-key", &key)]).await;
    assert_problem(&refused, StatusCode::BAD_REQUEST, "field_too_long");
    assert_eq!(refused.2["field"], "idempotency_key", "{}", refused.2);
    assert_eq!(levels(http, "rs-oid", "w1").await.1, 1, "the refused requests held nothing");
}

async fn a_batch_answers_one_result_per_request_in_order(http: &Http) {
    put_item(http, "rs-batch", "w1", 5, 0).await;
    let line = |quantity: u64| json!({ "lines": [{ "sku": "rs-batch", "warehouse": "w1", "quantity": quantity }] });
    let requests = json!({ "requests": [line(2), line(100), line(0)] });
    let (status, _, body) = http.post("/v1/reservations/batch", requests).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().unwrap_or_else(|| panic!("no results in {body}"));
    assert_eq!(results.len(), 3, "{body}");
    assert_eq!(results[0]["status"], 201, "{body}");
    assert_eq!(results[0]["reservation"]["state"], "HELD", "{body}");
    assert_eq!(results[1]["status"], 409, "{body}");
    assert_eq!(results[1]["problem"]["code"], "insufficient_stock", "{body}");
    assert_eq!(results[2]["status"], 400, "{body}");
    assert_eq!(results[2]["problem"]["code"], "quantity_zero", "{body}");
    assert_eq!(body["held"], 1, "{body}");
    assert_eq!(levels(http, "rs-batch", "w1").await.1, 2, "only the good request holds");

    let oversize: Vec<Value> = (0..1025).map(|_| line(1)).collect();
    let refused = http.post("/v1/reservations/batch", json!({ "requests": oversize })).await;
    assert_problem(&refused, StatusCode::BAD_REQUEST, "invalid_batch_size");
    let unknown =
        json!({ "requests": [{ "lines": [{ "sku": "rs-batch", "warehouse": "w1", "quantity": 1 }], "colour": 1 }] });
    assert_problem(&http.post("/v1/reservations/batch", unknown).await, StatusCode::BAD_REQUEST, "invalid_body");
    let empty = http.post("/v1/reservations/batch", json!({ "requests": [] })).await;
    assert_problem(&empty, StatusCode::BAD_REQUEST, "invalid_batch_size");
    assert_eq!(levels(http, "rs-batch", "w1").await.1, 2, "a refused batch holds nothing");

    // Many SKUs (so several shards), a line to allocate, a request across
    // shards, and a key repeated inside the batch: each answers as alone.
    let skus: Vec<String> = (0..8).map(|n| format!("rs-batch-{n}")).collect();
    for sku in &skus {
        put_item(http, sku, "w1", 3, 0).await;
    }
    let mut requests: Vec<Value> = Vec::new();
    for round in 0..4 {
        for sku in &skus {
            requests.push(json!({ "lines": [{ "sku": sku, "warehouse": "w1", "quantity": 1 }], "order_id": format!("{sku}-{round}") }));
        }
    }
    let keyed =
        json!({ "lines": [{ "sku": skus[0], "warehouse": "w1", "quantity": 1 }], "idempotency_key": "batch-dup" });
    requests.push(json!({ "lines": [{ "sku": skus[1], "quantity": 1 }] }));
    requests.push(json!({ "lines": [{ "sku": skus[2], "warehouse": "w1", "quantity": 1 }, { "sku": skus[3], "warehouse": "w1", "quantity": 1 }] }));
    let (status, _, body) = http.post("/v1/reservations/batch", json!({ "requests": requests })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().unwrap_or_else(|| panic!("no results in {body}"));
    assert_eq!(results.len(), 34, "{body}");
    for (index, result) in results[..32].iter().enumerate() {
        // Three units each: rounds 0..3 hold, round 3 is short.
        let (round, sku) = (index / 8, &skus[index % 8]);
        if round < 3 {
            assert_eq!(result["status"], 201, "request {index}: {result}");
            assert_eq!(result["reservation"]["order_id"], format!("{sku}-{round}"), "{result}");
            assert_eq!(result["reservation"]["lines"][0]["sku"], sku.as_str(), "{result}");
        } else {
            assert_eq!(result["problem"]["code"], "insufficient_stock", "request {index}: {result}");
        }
    }
    assert_eq!(results[32]["problem"]["code"], "insufficient_stock", "all three of the SKU's units are held");
    assert_eq!(results[33]["problem"]["code"], "insufficient_stock", "{}", results[33]);
    assert_eq!(body["held"], 24, "{body}");
    for sku in &skus {
        assert_eq!(levels(http, sku, "w1").await.1, 3, "{sku}");
    }

    // Compact: ids and states only; a key repeated in one batch holds once.
    put_item(http, &skus[0], "w1", 10, 0).await;
    let requests = json!({ "requests": [keyed, keyed, line(1)] });
    let (status, _, body) = http.post("/v1/reservations/batch?view=compact", requests).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().unwrap_or_else(|| panic!("no results in {body}"));
    assert_eq!(results[0]["status"], 201, "{body}");
    assert_eq!(results[0]["state"], "HELD", "{body}");
    assert!(results[0].get("reservation").is_none() && results[0].get("replayed").is_none(), "{body}");
    assert_eq!(results[1]["id"], results[0]["id"], "{body}");
    assert_eq!(results[1]["replayed"], true, "{body}");
    assert_eq!(str_of(&results[2], "id").len(), 32, "{body}");
    assert_eq!(levels(http, &skus[0], "w1").await.1, 4, "three held before, one by the key");
    let (status, _, body) = http.post("/v1/reservations/batch?view=compact", json!({ "requests": [line(1000)] })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0], json!({ "status": 409, "code": "insufficient_stock" }), "{body}");
    assert_problem(
        &http.post("/v1/reservations/batch?view=tiny", json!({ "requests": [line(1)] })).await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    );
}

async fn bad_and_unknown_reservation_ids_are_refused(http: &Http) {
    for path in ["/v1/reservations/not-an-id", "/v1/reservations/xyz/confirm"] {
        let reply = if path.ends_with("confirm") { http.post_empty(path).await } else { http.get(path).await };
        assert_problem(&reply, StatusCode::BAD_REQUEST, "invalid_reservation_id");
    }
    let unknown = "00000000000000000000000000000000";
    assert_problem(
        &http.get(&format!("/v1/reservations/{unknown}")).await,
        StatusCode::NOT_FOUND,
        "reservation_not_found",
    );
    let confirm = http.post_empty(&format!("/v1/reservations/{unknown}/confirm")).await;
    assert_problem(&confirm, StatusCode::NOT_FOUND, "reservation_not_found");
    let release = http.post_empty(&format!("/v1/reservations/{unknown}/release")).await;
    assert_problem(&release, StatusCode::NOT_FOUND, "reservation_not_found");
}

// ---------------------------------------------------------------------------
// Bad input

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_4xx_problem_and_writes_nothing() {
    let node = TallyProcess::start(options().shards(2)).await;
    rules!(node.http();
        malformed_json_is_invalid_json,
        wrong_types_negative_numbers_and_unknown_fields_are_invalid_body,
        a_body_without_json_content_type_is_415,
        zero_and_oversize_quantities_are_refused,
        ttl_outside_its_range_is_ttl_out_of_range,
        a_body_over_the_limit_is_body_too_large,
        unknown_routes_are_404_and_wrong_methods_405,
    );
}

/// A fresh item for a bad-input rule, and its state to compare with later.
async fn fixture(http: &Http, sku: &str) -> Value {
    put_item(http, sku, "w1", 10, 2).await;
    reserve(http, &[(sku, "w1", 1)]).await;
    item(http, sku, "w1").await
}

async fn assert_unchanged(http: &Http, sku: &str, before: &Value) {
    assert_eq!(&item(http, sku, "w1").await, before, "a refused request changed {sku}");
    let (status, _, history) = http.get(&format!("/v1/items/{sku}/w1/history")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(history["movements"].as_array().map(Vec::len), Some(1), "only the create is recorded: {history}");
}

async fn malformed_json_is_invalid_json(http: &Http) {
    let before = fixture(http, "bi-json").await;
    let json = Some("application/json");
    for (method, path) in [
        (Method::PUT, item_path("bi-json", "w1")),
        (Method::POST, "/v1/items/bi-json/w1/adjustments".to_owned()),
        (Method::POST, "/v1/reservations".to_owned()),
        (Method::POST, "/v1/transfers".to_owned()),
    ] {
        let reply = raw(http, method.clone(), &path, json, b"{on_hand: 1".to_vec()).await;
        assert_problem(&reply, StatusCode::BAD_REQUEST, "invalid_json");
    }
    assert_unchanged(http, "bi-json", &before).await;
}

async fn wrong_types_negative_numbers_and_unknown_fields_are_invalid_body(http: &Http) {
    let before = fixture(http, "bi-body").await;
    let path = item_path("bi-body", "w1");
    for body in [
        json!({ "on_hand": "ten" }),
        json!({ "on_hand": -1 }),
        json!({ "on_hand": 1, "colour": "red" }),
        json!({ "low_stock_threshold": true }),
    ] {
        assert_problem(&http.put(&path, body).await, StatusCode::BAD_REQUEST, "invalid_body");
    }
    let adjust = "/v1/items/bi-body/w1/adjustments";
    for body in [
        json!({ "delta": 1.5, "reason": "receive" }),
        json!({ "delta": 1 }),
        json!({ "delta": 1, "reason": "receive", "x": 1 }),
    ] {
        assert_problem(&http.post(adjust, body).await, StatusCode::BAD_REQUEST, "invalid_body");
    }
    for body in [
        json!({ "lines": [{ "sku": "bi-body", "warehouse": "w1", "quantity": -1 }] }),
        json!({ "lines": [{ "sku": "bi-body", "warehouse": "w1", "quantity": 1, "note": "x" }] }),
        json!({ "lines": "all" }),
    ] {
        assert_problem(&http.post("/v1/reservations", body).await, StatusCode::BAD_REQUEST, "invalid_body");
    }
    assert_unchanged(http, "bi-body", &before).await;
}

async fn a_body_without_json_content_type_is_415(http: &Http) {
    let before = fixture(http, "bi-ctype").await;
    let body = br#"{"on_hand": 1}"#.to_vec();
    let none = raw(http, Method::PUT, &item_path("bi-ctype", "w1"), None, body.clone()).await;
    assert_problem(&none, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    let text = raw(http, Method::PUT, &item_path("bi-ctype", "w1"), Some("text/plain"), body).await;
    assert_problem(&text, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    let reservation = http.request(Method::POST, "/v1/reservations", &[], None).await;
    assert_problem(&reservation, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    assert_unchanged(http, "bi-ctype", &before).await;
}

async fn zero_and_oversize_quantities_are_refused(http: &Http) {
    let before = fixture(http, "bi-qty").await;
    let line = |quantity: u64| json!({ "lines": [{ "sku": "bi-qty", "warehouse": "w1", "quantity": quantity }] });
    assert_problem(&http.post("/v1/reservations", line(0)).await, StatusCode::BAD_REQUEST, "quantity_zero");
    let huge = 1_000_000_000_000_000_001;
    assert_problem(&http.post("/v1/reservations", line(huge)).await, StatusCode::BAD_REQUEST, "quantity_too_large");
    let transfer = |quantity: u64| json!({ "sku": "bi-qty", "from": "w1", "to": "w2", "quantity": quantity });
    assert_problem(&http.post("/v1/transfers", transfer(0)).await, StatusCode::BAD_REQUEST, "quantity_zero");
    assert_problem(&http.post("/v1/transfers", transfer(huge)).await, StatusCode::BAD_REQUEST, "quantity_too_large");
    let put = http.put(&item_path("bi-qty", "w1"), json!({ "on_hand": huge })).await;
    assert_problem(&put, StatusCode::BAD_REQUEST, "quantity_too_large");
    let availability = json!({ "lines": [{ "sku": "bi-qty", "warehouse": "w1", "quantity": 0 }] });
    assert_problem(&http.post("/v1/availability", availability).await, StatusCode::BAD_REQUEST, "quantity_zero");
    assert_unchanged(http, "bi-qty", &before).await;
}

async fn ttl_outside_its_range_is_ttl_out_of_range(http: &Http) {
    let before = fixture(http, "bi-ttl").await;
    for ttl in [0, 86_401, u64::MAX] {
        let body = json!({ "lines": [{ "sku": "bi-ttl", "warehouse": "w1", "quantity": 1 }], "ttl_seconds": ttl });
        assert_problem(&http.post("/v1/reservations", body).await, StatusCode::BAD_REQUEST, "ttl_out_of_range");
    }
    assert_unchanged(http, "bi-ttl", &before).await;
}

async fn a_body_over_the_limit_is_body_too_large(http: &Http) {
    let before = fixture(http, "bi-large").await;
    // Valid JSON a little over the default 1 MiB `server.body_bytes_max`.
    let name = "x".repeat((1 << 20) + 1024);
    let body = serde_json::to_vec(&json!({ "on_hand": 1, "name": name })).unwrap_or_else(|e| panic!("{e}"));
    let reply = raw(http, Method::PUT, &item_path("bi-large", "w1"), Some("application/json"), body).await;
    assert_problem(&reply, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    assert_unchanged(http, "bi-large", &before).await;
}

async fn unknown_routes_are_404_and_wrong_methods_405(http: &Http) {
    assert_problem(&http.get("/v1/nothing-here").await, StatusCode::NOT_FOUND, "not_found");
    assert_problem(&http.get("/v2/items").await, StatusCode::NOT_FOUND, "not_found");
    // (DELETE of an item is a route since items can be deleted: PATCH is not.)
    assert_problem(
        &http.request(Method::PATCH, "/v1/items/bi-x/w1", &[], None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    assert_problem(&http.delete("/v1/items/bi-x/w1", Value::Null).await, StatusCode::NOT_FOUND, "item_not_found");
    assert_problem(&http.get("/v1/transfers").await, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert_problem(&http.post("/v1/items", json!({})).await, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_array_where_an_object_is_expected_is_invalid_body() {
    let node = TallyProcess::start(options().shards(1)).await;
    let http = node.http();
    let before = fixture(http, "bi-array").await;
    let put = http.put(&item_path("bi-array", "w1"), json!([1, 2])).await;
    assert_problem(&put, StatusCode::BAD_REQUEST, "invalid_body");
    let adjust = http.post("/v1/items/bi-array/w1/adjustments", json!([-5, "damage"])).await;
    assert_problem(&adjust, StatusCode::BAD_REQUEST, "invalid_body");
    assert_unchanged(http, "bi-array", &before).await;
}

// ---------------------------------------------------------------------------
// Operations

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_routes_answer_health_metrics_cluster_and_openapi() {
    let node = TallyProcess::start(options().shards(2)).await;
    let http = node.http();
    let (status, _, body) = http.get("/healthz").await;
    assert_eq!((status, &body["status"]), (StatusCode::OK, &json!("ok")), "{body}");
    let (status, _, body) = http.get("/readyz").await;
    assert_eq!((status, &body["status"]), (StatusCode::OK, &json!("ready")), "{body}");

    let (status, _, cluster) = http.get("/v1/cluster").await;
    assert_eq!(status, StatusCode::OK, "{cluster}");
    let shards = cluster["shards"].as_array().unwrap_or_else(|| panic!("no shards in {cluster}"));
    assert_eq!(shards.len(), 2, "{cluster}");
    assert!(shards.iter().all(|s| s["leader"] == 1), "node 1 leads every shard: {cluster}");
    let (status, _, digests) = http.get("/v1/cluster/digests").await;
    assert_eq!(status, StatusCode::OK, "{digests}");
    let shards = digests["shards"].as_array().unwrap_or_else(|| panic!("no shards in {digests}"));
    assert_eq!(shards.len(), 2, "{digests}");
    for shard in shards {
        let digest = shard["digest"].as_str().unwrap_or_else(|| panic!("no digest in {digests}"));
        assert!(digest.len() == 32 && digest.bytes().all(|b| b.is_ascii_hexdigit()), "{digests}");
        assert!(shard["applied_index"].is_u64(), "{digests}");
    }

    // A request first, so the counter has a sample.
    assert_eq!(http.get(&item_path("op-none", "w1")).await.0, StatusCode::NOT_FOUND);
    let metrics = http.get("/metrics").await;
    assert_eq!(metrics.0, StatusCode::OK);
    assert!(header(&metrics, "content-type").is_some_and(|t| t.starts_with("text/plain")), "{:?}", metrics.1);
    let text = metrics.2.as_str().unwrap_or_else(|| panic!("metrics are not text: {}", metrics.2));
    assert!(text.contains("tally_http_requests_total"), "{text}");

    let (status, _, openapi) = http.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(openapi["openapi"].is_string(), "{openapi}");
    assert!(openapi["paths"].is_object(), "{openapi}");
}

// ---------------------------------------------------------------------------
// Auth

const ADMIN_KEY: &str = "test-admin-key";
const RESERVE_KEY: &str = "test-reserve-key";
const READ_KEY: &str = "test-read-key";
const BURST_KEY: &str = "test-burst-key";
/// Every key's bucket: enough for each rule, small enough to empty quickly.
const RATE_BURST: u32 = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_authenticate_authorize_and_rate_limit() {
    let keys: Vec<String> = [
        ("ops", "admin", ADMIN_KEY),
        ("shop", "reserve", RESERVE_KEY),
        ("viewer", "read", READ_KEY),
        ("burst", "read", BURST_KEY),
    ]
    .iter()
    .map(|(name, role, key)| format!("{{ name = \"{name}\", role = \"{role}\", sha256 = \"{}\" }}", sha256_hex(key)))
    .collect();
    let options = options()
        .shards(1)
        .set("auth", "keys", &format!("[{}]", keys.join(", ")))
        .set("auth", "rate_per_second", "1")
        .set("auth", "rate_burst", &RATE_BURST.to_string());
    let node = TallyProcess::start(options).await;
    rules!(node.http();
        requests_without_a_valid_key_are_unauthorized,
        health_and_readiness_need_no_key,
        a_read_key_reads_but_cannot_write,
        a_reserve_key_reserves_but_cannot_adjust,
        an_admin_key_may_do_everything,
        a_key_over_its_burst_is_rate_limited_with_retry_after,
    );
}

const SHOP_KEY: &str = "test-shop-key";
const WEB_KEY: &str = "test-web-key";

/// Two API keys that both reserve, with the same idempotency keys and order
/// ids: issue 15 item 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_and_order_ids_are_scoped_per_api_key() {
    let keys: Vec<String> = [("ops", "admin", ADMIN_KEY), ("shop", "reserve", SHOP_KEY), ("web", "reserve", WEB_KEY)]
        .iter()
        .map(|(name, role, key)| {
            format!("{{ name = \"{name}\", role = \"{role}\", sha256 = \"{}\" }}", sha256_hex(key))
        })
        .collect();
    let node = TallyProcess::start(options().shards(2).set("auth", "keys", &format!("[{}]", keys.join(", ")))).await;
    let http = node.http();
    let (ops, shop, web) = (bearer(ADMIN_KEY), bearer(SHOP_KEY), bearer(WEB_KEY));
    let created = http
        .request(Method::PUT, &item_path("ik-scope", "w1"), &[("authorization", &ops)], Some(&json!({ "on_hand": 20 })))
        .await;
    assert_eq!(created.0, StatusCode::CREATED, "{}", created.2);
    let line = json!([{ "sku": "ik-scope", "warehouse": "w1", "quantity": 1 }]);
    let hold = |auth: &str, key: Option<&str>, order: Option<&str>| {
        let mut body = json!({ "lines": line });
        if let Some(order) = order {
            body["order_id"] = json!(order);
        }
        let mut headers = vec![("authorization", auth.to_owned())];
        if let Some(key) = key {
            headers.push(("idempotency-key", key.to_owned()));
        }
        async move {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            http.request(Method::POST, "/v1/reservations", &headers, Some(&body)).await
        }
    };

    // The same Idempotency-Key from two API keys: two reservations.
    let shop_keyed = hold(&shop, Some("cart-1"), None).await;
    let web_keyed = hold(&web, Some("cart-1"), None).await;
    assert_eq!(
        (shop_keyed.0, web_keyed.0),
        (StatusCode::CREATED, StatusCode::CREATED),
        "{} {}",
        shop_keyed.2,
        web_keyed.2
    );
    assert_ne!(shop_keyed.2["id"], web_keyed.2["id"], "one key's Idempotency-Key never answers another's");
    assert!(header(&web_keyed, "idempotent-replayed").is_none());
    let again = hold(&shop, Some("cart-1"), None).await;
    assert_eq!(
        (again.0, &again.2["id"]),
        (StatusCode::CREATED, &shop_keyed.2["id"]),
        "a retry by the same key replays"
    );
    assert_eq!(header(&again, "idempotent-replayed"), Some("true"));

    // The same order_id from two API keys: two orders, each read by its own key only.
    let shop_order = hold(&shop, None, Some("order-9")).await;
    let web_order = hold(&web, None, Some("order-9")).await;
    assert_eq!(
        (shop_order.0, web_order.0),
        (StatusCode::CREATED, StatusCode::CREATED),
        "{} {}",
        shop_order.2,
        web_order.2
    );
    assert_ne!(shop_order.2["id"], web_order.2["id"], "one key's order never answers another's");
    assert_eq!(shop_order.2["order_id"], "order-9", "the body shows the caller's order id: {}", shop_order.2);
    assert_eq!(web_order.2["order_id"], "order-9");
    for (auth, mine) in [(&shop, &shop_order.2), (&web, &web_order.2)] {
        let got = http.request(Method::GET, "/v1/orders/order-9", &[("authorization", auth)], None).await;
        assert_eq!((got.0, &got.2["id"]), (StatusCode::OK, &mine["id"]), "each key reads its own order: {}", got.2);
    }
    let other = http.request(Method::GET, "/v1/orders/order-9", &[("authorization", &ops)], None).await;
    assert_problem(&other, StatusCode::NOT_FOUND, "order_not_found");
    // Ending one key's order leaves the other's.
    let confirmed = http.request(Method::POST, "/v1/orders/order-9/confirm", &[("authorization", &web)], None).await;
    assert_eq!((confirmed.0, &confirmed.2["id"]), (StatusCode::OK, &web_order.2["id"]), "{}", confirmed.2);
    let path = format!("/v1/reservations/{}", str_of(&shop_order.2, "id"));
    let untouched = http.request(Method::GET, &path, &[("authorization", &shop)], None).await;
    assert_eq!(str_of(&untouched.2, "state"), "HELD", "{}", untouched.2);

    // A batch's keys are scoped the same way, and meet the header's.
    let batch = json!({ "requests": [{ "lines": line, "idempotency_key": "cart-1" }] });
    for (auth, mine) in [(&shop, &shop_keyed.2), (&web, &web_keyed.2)] {
        let answer =
            http.request(Method::POST, "/v1/reservations/batch", &[("authorization", auth)], Some(&batch)).await;
        assert_eq!(answer.0, StatusCode::OK, "{}", answer.2);
        let result = &answer.2["results"][0];
        assert_eq!((&result["reservation"]["id"], &result["replayed"]), (&mine["id"], &json!(true)), "{result}");
    }
    let item = http.request(Method::GET, &item_path("ik-scope", "w1"), &[("authorization", &ops)], None).await;
    assert_eq!((u64_of(&item.2, "on_hand"), u64_of(&item.2, "reserved")), (19, 3), "four holds, one sold: {}", item.2);
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

async fn requests_without_a_valid_key_are_unauthorized(http: &Http) {
    assert_problem(&http.get("/v1/items").await, StatusCode::UNAUTHORIZED, "unauthorized");
    let wrong = bearer("not-a-key");
    assert_problem(
        &http.request(Method::GET, "/v1/items", &[("authorization", &wrong)], None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let not_bearer = http.request(Method::GET, "/v1/items", &[("authorization", ADMIN_KEY)], None).await;
    assert_problem(&not_bearer, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_problem(
        &http.put(&item_path("au-none", "w1"), json!({ "on_hand": 1 })).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_problem(&http.get("/metrics").await, StatusCode::UNAUTHORIZED, "unauthorized");
}

async fn health_and_readiness_need_no_key(http: &Http) {
    assert_eq!(http.get("/healthz").await.0, StatusCode::OK);
    assert_eq!(http.get("/readyz").await.0, StatusCode::OK);
}

async fn a_read_key_reads_but_cannot_write(http: &Http) {
    let admin = bearer(ADMIN_KEY);
    let read = bearer(READ_KEY);
    let created = http
        .request(Method::PUT, &item_path("au-read", "w1"), &[("authorization", &admin)], Some(&json!({ "on_hand": 5 })))
        .await;
    assert_eq!(created.0, StatusCode::CREATED, "{}", created.2);
    let got = http.request(Method::GET, &item_path("au-read", "w1"), &[("authorization", &read)], None).await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.2);
    let put = http
        .request(Method::PUT, &item_path("au-read", "w1"), &[("authorization", &read)], Some(&json!({ "on_hand": 1 })))
        .await;
    assert_problem(&put, StatusCode::FORBIDDEN, "forbidden");
    let hold = json!({ "lines": [{ "sku": "au-read", "warehouse": "w1", "quantity": 1 }] });
    let reserve = http.request(Method::POST, "/v1/reservations", &[("authorization", &read)], Some(&hold)).await;
    assert_problem(&reserve, StatusCode::FORBIDDEN, "forbidden");
    let after = http.request(Method::GET, &item_path("au-read", "w1"), &[("authorization", &read)], None).await;
    assert_eq!((u64_of(&after.2, "on_hand"), u64_of(&after.2, "reserved")), (5, 0), "forbidden writes change nothing");
}

async fn a_reserve_key_reserves_but_cannot_adjust(http: &Http) {
    let admin = bearer(ADMIN_KEY);
    let shop = bearer(RESERVE_KEY);
    let created = http
        .request(Method::PUT, &item_path("au-shop", "w1"), &[("authorization", &admin)], Some(&json!({ "on_hand": 5 })))
        .await;
    assert_eq!(created.0, StatusCode::CREATED, "{}", created.2);
    let hold = json!({ "lines": [{ "sku": "au-shop", "warehouse": "w1", "quantity": 2 }] });
    let held = http.request(Method::POST, "/v1/reservations", &[("authorization", &shop)], Some(&hold)).await;
    assert_eq!(held.0, StatusCode::CREATED, "{}", held.2);
    let adjust = json!({ "delta": 5, "reason": "receive" });
    let refused = http
        .request(Method::POST, "/v1/items/au-shop/w1/adjustments", &[("authorization", &shop)], Some(&adjust))
        .await;
    assert_problem(&refused, StatusCode::FORBIDDEN, "forbidden");
    let put = http
        .request(Method::PUT, &item_path("au-shop", "w1"), &[("authorization", &shop)], Some(&json!({ "on_hand": 9 })))
        .await;
    assert_problem(&put, StatusCode::FORBIDDEN, "forbidden");
    let after = http.request(Method::GET, &item_path("au-shop", "w1"), &[("authorization", &shop)], None).await;
    assert_eq!((u64_of(&after.2, "on_hand"), u64_of(&after.2, "reserved")), (5, 2), "{}", after.2);
}

async fn an_admin_key_may_do_everything(http: &Http) {
    let admin = bearer(ADMIN_KEY);
    let auth = [("authorization", admin.as_str())];
    let created = http.request(Method::PUT, &item_path("au-admin", "w1"), &auth, Some(&json!({ "on_hand": 5 }))).await;
    assert_eq!(created.0, StatusCode::CREATED, "{}", created.2);
    let adjust = json!({ "delta": 5, "reason": "receive" });
    let adjusted = http.request(Method::POST, "/v1/items/au-admin/w1/adjustments", &auth, Some(&adjust)).await;
    assert_eq!(adjusted.0, StatusCode::OK, "{}", adjusted.2);
    let hold = json!({ "lines": [{ "sku": "au-admin", "warehouse": "w1", "quantity": 2 }] });
    let held = http.request(Method::POST, "/v1/reservations", &auth, Some(&hold)).await;
    assert_eq!(held.0, StatusCode::CREATED, "{}", held.2);
    let history = http.request(Method::GET, "/v1/items/au-admin/w1/history", &auth, None).await;
    assert_eq!(history.0, StatusCode::OK, "{}", history.2);
    assert_eq!(history.2["movements"][0]["by"], "ops", "the history names the key: {}", history.2);
    assert_eq!(http.request(Method::GET, "/metrics", &auth, None).await.0, StatusCode::OK);
}

async fn a_key_over_its_burst_is_rate_limited_with_retry_after(http: &Http) {
    let burst = bearer(BURST_KEY);
    let auth = [("authorization", burst.as_str())];
    let mut limited: Option<Reply> = None;
    // The bucket holds RATE_BURST and refills one a second: well before
    // 3 × RATE_BURST quick requests, one is refused.
    for _ in 0..3 * RATE_BURST {
        let reply = http.request(Method::GET, "/v1/cluster", &auth, None).await;
        if reply.0 == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(reply);
            break;
        }
        assert_eq!(reply.0, StatusCode::OK, "{}", reply.2);
    }
    let limited = limited.unwrap_or_else(|| panic!("no 429 within {} requests", 3 * RATE_BURST));
    assert_problem(&limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let retry_after = limited.1.get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    assert!(retry_after.is_some_and(|s| s >= 1), "Retry-After in whole seconds: {:?}", limited.1);
    let admin = bearer(ADMIN_KEY);
    let other = http.request(Method::GET, "/v1/cluster", &[("authorization", &admin)], None).await;
    assert_eq!(other.0, StatusCode::OK, "another key has a bucket of its own");
    assert_eq!(http.get("/healthz").await.0, StatusCode::OK, "health is never rate limited");
}
