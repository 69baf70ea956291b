//! The admin page (`/admin`) and the storefront widget (`/widget.js`) in a
//! real browser: headless Chromium from Debian's `chromium` package, driven
//! over WebDriver by its `chromedriver` (tests/webdriver), against the real
//! `tally` binary (tests/common).
//!
//! Without Chromium the tests pass with a "skipped" note, unless
//! `BROWSER_TESTS_REQUIRED` is set (CI sets it): then they fail.
//! `scripts/install-peers.sh` installs both packages.
//!
//! With `SCREENSHOTS_DIR` set, the screenshot test writes `admin.png` and
//! `widget.png` there; the README shows the copies in `docs/`:
//!
//! ```sh
//! SCREENSHOTS_DIR=docs cargo test -p tally-server --test browser screenshots
//! ```
//!
//! The tests run one at a time (one Chromium and one tally each), so a
//! bound measured here is not shared with a second browser on the machine.

mod common;
mod webdriver;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use webdriver::{Browser, WAIT_MAX, installed_or_skip};

/// One browser test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const ADMIN_KEY: &str = "browser-test-admin-key";
const READ_KEY: &str = "browser-test-read-key";
/// The issue's bound: a reservation made over HTTP shows in the widget
/// within a second of its answer. The widget is pushed events; it never polls.
const WIDGET_UPDATE_MAX: Duration = Duration::from_secs(1);
const ENTER: &str = "\u{E007}";

// ---------------------------------------------------------------------------
// Setup

/// A node with an admin key and a read key; `cors_origin` is a storefront's
/// origin allowed to call the API (and then anonymous reads are on too).
async fn start_tally(cors_origin: Option<&str>) -> TallyProcess {
    let keys = [("ops", "admin", ADMIN_KEY), ("shop", "read", READ_KEY)]
        .iter()
        .map(|(name, role, key)| {
            format!("{{ name = \"{name}\", role = \"{role}\", sha256 = \"{}\" }}", server::auth::hash_key(key))
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut options = options().shards(2).set("auth", "keys", &format!("[{keys}]"));
    if let Some(origin) = cors_origin {
        options = options.set("auth", "anonymous_read", "true").set(
            "server",
            "cors_origins",
            &format!("[{}]", Value::String(origin.to_owned())),
        );
    }
    TallyProcess::start(options).await
}

/// Calls the API as the admin, the way another operator or a shop would,
/// beside the browser.
struct Api(Http);

impl Api {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let bearer = format!("Bearer {ADMIN_KEY}");
        self.0.request(method, path, &[("authorization", bearer.as_str())], body.as_ref()).await
    }

    async fn expect(&self, method: Method, path: &str, body: Value, status: StatusCode) -> Value {
        let (got, _, answer) = self.call(method.clone(), path, Some(body)).await;
        assert_eq!(got, status, "{method} {path}: {answer}");
        answer
    }

    /// Creates or sets an item; answers it.
    async fn stock(&self, sku: &str, warehouse: &str, on_hand: u64, threshold: u64, name: &str) -> Value {
        let body = json!({ "on_hand": on_hand, "low_stock_threshold": threshold, "name": name });
        let (status, _, item) = self.call(Method::PUT, &item_path(sku, warehouse), Some(body)).await;
        assert!(status == StatusCode::OK || status == StatusCode::CREATED, "PUT {sku}/{warehouse}: {status} {item}");
        item
    }

    async fn set_on_hand(&self, sku: &str, warehouse: &str, on_hand: u64) -> Value {
        self.expect(Method::PUT, &item_path(sku, warehouse), json!({ "on_hand": on_hand }), StatusCode::OK).await
    }

    async fn item(&self, sku: &str, warehouse: &str) -> Value {
        let (status, _, item) = self.call(Method::GET, &item_path(sku, warehouse), None).await;
        assert_eq!(status, StatusCode::OK, "{item}");
        item
    }

    /// Holds `quantity` of one item for ten minutes; answers the reservation.
    async fn hold(&self, sku: &str, warehouse: &str, quantity: u64) -> Value {
        let body =
            json!({ "lines": [{ "sku": sku, "warehouse": warehouse, "quantity": quantity }], "ttl_seconds": 600 });
        self.expect(Method::POST, "/v1/reservations", body, StatusCode::CREATED).await
    }

    async fn release(&self, id: &str) {
        self.expect(Method::POST, &format!("/v1/reservations/{id}/release"), json!({}), StatusCode::OK).await;
    }

    async fn adjust(&self, sku: &str, warehouse: &str, delta: i64, reason: &str) {
        let path = format!("{}/adjustments", item_path(sku, warehouse));
        self.expect(Method::POST, &path, json!({ "delta": delta, "reason": reason }), StatusCode::OK).await;
    }

    async fn transfer(&self, sku: &str, from: &str, to: &str, quantity: u64) {
        let body = json!({ "sku": sku, "from": from, "to": to, "quantity": quantity, "reason": "rebalance" });
        self.expect(Method::POST, "/v1/transfers", body, StatusCode::OK).await;
    }
}

/// Opens `/admin` and signs in with `key`, by keyboard.
async fn sign_in(browser: &Browser, node: &TallyProcess, key: &str) {
    browser.goto(&format!("http://{}/admin", node.http_addr)).await;
    browser.type_into("#key", &format!("{key}{ENTER}")).await;
    browser.wait_for("#app").await;
    wait_stream_live(browser).await;
}

/// Waits until the page's event stream is open: later changes reach it.
async fn wait_stream_live(browser: &Browser) {
    let script = "return document.getElementById('feed-state').dataset.state === 'live';";
    browser.wait_until("the admin page's event stream is live", WAIT_MAX, script, vec![]).await;
}

/// Opens a SKU through the search form, by keyboard.
async fn open_sku(browser: &Browser, sku: &str) {
    browser.type_into("#search-input", &format!("{sku}{ENTER}")).await;
    browser.wait_for_text("#sku-name", sku).await;
}

/// A shop's web server on another origin than Tally: answers `GET /` with
/// `page` and anything else with 404. Its thread lives as long as the test
/// process.
fn storefront(listener: TcpListener, page: String) {
    let page = Arc::new(page);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let page = Arc::clone(&page);
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let mut head = Vec::new();
                let mut buffer = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                    match stream.read(&mut buffer) {
                        Ok(0) | Err(_) => return,
                        Ok(read) => head.extend_from_slice(&buffer[..read]),
                    }
                }
                let found = head.starts_with(b"GET / ") || head.starts_with(b"GET /? ");
                let (status, body) = if found { ("200 OK", page.as_str()) } else { ("404 Not Found", "") };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
}

fn loopback_listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("binding the storefront: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"));
    (listener, addr)
}

/// A product page that embeds the widget both ways: a script tag with
/// `data-sku` (one warehouse, anonymous) and marked elements (a whole SKU
/// with a read key and `data-low`).
fn product_page(tally: SocketAddr) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Trail Runner 42</title>
<style>
  body {{ font: 16px/1.5 "DejaVu Sans", sans-serif; color: #1f2937; background: #f6f4f0; margin: 0; padding: 24px; }}
  #shop > div:last-child {{ flex: 1; }}
  #shop {{ display: flex; gap: 24px; width: 760px; padding: 24px; background: #fff; border-radius: 14px; border: 1px solid #e5e1da; }}
  .photo {{ width: 260px; height: 200px; border-radius: 10px; background: linear-gradient(135deg, #fcd9b8, #f59e6b); display: grid; place-items: center; font-size: 64px; color: #fff; font-weight: 700; }}
  h1 {{ margin: 0 0 4px; font-size: 24px; }} .price {{ font-size: 20px; font-weight: 700; margin: 0 0 14px; }}
  ul {{ list-style: none; padding: 0; margin: 0; }} li {{ display: flex; justify-content: space-between; gap: 24px; padding: 8px 0; border-top: 1px solid #eee; }}
  button {{ margin-top: 14px; font: inherit; font-weight: 600; padding: 10px 18px; border: 0; border-radius: 8px; background: #111827; color: #fff; }}
</style></head>
<body>
<div id="shop">
  <div class="photo" aria-hidden="true">42</div>
  <div>
    <h1>Trail Runner 42</h1>
    <p class="price">€ 129.00</p>
    <ul>
      <li id="berlin">Berlin store <script src="http://{tally}/widget.js" data-sku="SHOE-42" data-warehouse="berlin"></script></li>
      <li>Paris store <span id="paris" data-tally-sku="SHOE-42" data-tally-warehouse="paris" data-tally-key="{READ_KEY}"></span></li>
      <li>Madrid store <span id="madrid" data-tally-sku="SHOE-42" data-tally-warehouse="madrid"></span></li>
      <li>Online, all warehouses <span id="total" data-tally-sku="SHOE-42" data-tally-key="{READ_KEY}" data-tally-low="5"></span></li>
    </ul>
    <button type="button">Add to cart</button>
  </div>
</div>
</body></html>"#
    )
}

/// Waits, at most `bound`, until the badge `selector` reads `text`; answers how long it took.
async fn badge_reads(browser: &Browser, selector: &str, text: &str, bound: Duration) -> Duration {
    let started = Instant::now();
    let script = "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;";
    loop {
        let shown = browser.execute(script, vec![json!(selector), json!(text)]).await;
        if shown == json!(text) {
            return started.elapsed();
        }
        if started.elapsed() >= bound {
            let badges = browser
                .execute(
                    "return [...document.querySelectorAll('.tally-stock')].map(e =>                      `${e.id || e.parentElement.id}: ${e.textContent} (${JSON.stringify(e.dataset)})`).join('\\n');",
                    vec![],
                )
                .await;
            browser
                .fail(&format!(
                    "badge {selector} does not read {text:?} within {bound:?}; it reads {shown}.\nBadges:\n{}",
                    badges.as_str().unwrap_or_default()
                ))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The badge the script-tag form inserts right after its script.
const BERLIN_BADGE: &str = "#berlin .tally-stock";

// ---------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_keeps_the_key_for_the_tab_and_failures_show_their_problem() {
    if !installed_or_skip("signing_in") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut node = start_tally(None).await;
    let browser = Browser::start().await;

    // The page itself needs no key; the API does.
    browser.goto(&format!("http://{}/admin", node.http_addr)).await;
    browser.wait_for("#signin-form").await;
    browser.type_into("#key", &format!("not-a-key{ENTER}")).await;
    browser.wait_for("#banner").await;
    assert_eq!(browser.text("#banner-code").await, "unauthorized");
    assert!(browser.text("#banner-title").await.contains("refused"));
    assert!(browser.text("#banner-detail").await.contains("unknown API key"));

    browser.type_into("#key", &format!("{ADMIN_KEY}{ENTER}")).await;
    browser.wait_for("#app").await;
    wait_stream_live(&browser).await;
    let script = "return document.getElementById('banner').hidden;";
    assert_eq!(browser.execute(script, vec![]).await, json!(true), "the banner goes once signed in");
    let stored = browser.execute("return sessionStorage.getItem('tally.admin.key');", vec![]).await;
    assert_eq!(stored, json!(ADMIN_KEY), "the key is kept in session storage");
    let focused = browser.execute("return document.activeElement.id;", vec![]).await;
    assert_eq!(focused, json!("search-input"), "signing in puts the focus on the search field");
    // The cluster panel shows this node and both shards' leaders.
    browser.wait_for_text("#cluster-summary", "This node").await;
    let shards = browser.execute("return document.querySelectorAll('#shards tbody tr').length;", vec![]).await;
    assert_eq!(shards, json!(2));
    browser.wait_for_text("#shards tbody tr[data-shard='0']", "node 1").await;
    // The node controls answer with the API's problem: no node 9 to
    // remove, and node 1 is a voter of every shard already.
    browser.type_into("#node-remove-id", &format!("9{ENTER}")).await;
    browser.wait_for_text("#banner-code", "node_not_member").await;
    browser.type_into("#node-add-id", "1").await;
    browser.type_into("#node-add-addr", &format!("{}{ENTER}", node.peer_addr)).await;
    browser.wait_for_text("#banner-code", "node_already_member").await;
    browser.click("#banner-close").await;

    // A reload keeps the session: no second sign-in.
    browser.refresh().await;
    browser.wait_for("#app").await;
    wait_stream_live(&browser).await;

    // A server that goes away shows as a network error, not a blank page.
    node.kill_9();
    browser.wait_for_text("#banner-code", "network_error").await;
    assert!(browser.text("#banner-title").await.contains("No answer from Tally"));
    browser.wait_for("#app").await;

    // Signing out forgets the key.
    browser.click("#sign-out").await;
    browser.wait_for("#signin-form").await;
    let stored = browser.execute("return sessionStorage.getItem('tally.admin.key');", vec![]).await;
    assert_eq!(stored, Value::Null);
    browser.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_that_lost_a_race_shows_the_newer_value_and_can_be_reapplied() {
    if !installed_or_skip("etag_conflict") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let node = start_tally(None).await;
    let api = Api(node.client());
    api.stock("SHOE-42", "berlin", 10, 3, "Trail Runner 42").await;
    let browser = Browser::start().await;
    sign_in(&browser, &node, ADMIN_KEY).await;
    open_sku(&browser, "SHOE").await;

    edit_conflict_then_reapplied(&browser, &api).await;
    adjust_refused_then_accepted(&browser, &api).await;
    customer_limit_set_and_removed(&browser, &api).await;
    product_record_saved(&browser, &api).await;
    held_warehouse_delete_refused(&browser, &api).await;
    bundle_defined_and_removed(&browser, &api).await;
    priority_set_and_removed(&browser, &api).await;
    quantity_states_moved_and_set(&browser, &api).await;
    browser.quit().await;
}

/// The form opens with the item's ETag; someone else then changes it.
async fn edit_conflict_then_reapplied(browser: &Browser, api: &Api) {
    browser.click("button[data-edit='berlin']").await;
    browser.wait_for("#edit-form").await;
    let theirs = api.set_on_hand("SHOE-42", "berlin", 17).await;
    browser.type_into("#edit-on-hand", &format!("25{ENTER}")).await;

    // 412: the newer value is shown beside ours, nothing is overwritten.
    browser.wait_for("#conflict").await;
    let conflict = browser.text("#conflict-detail").await;
    assert!(conflict.contains("on hand 17"), "{conflict}");
    assert!(conflict.contains("Your values: on hand 25"), "{conflict}");
    let shown_version = browser.execute("return document.getElementById('conflict').dataset.version;", vec![]).await;
    assert_eq!(shown_version, json!(u64_of(&theirs, "version").to_string()));
    assert_eq!(u64_of(&api.item("SHOE-42", "berlin").await, "on_hand"), 17, "the stale edit changed nothing");

    // Re-applying sends our value with the newer ETag.
    browser.click("#conflict-reapply").await;
    browser.wait_for_text("#sku-notice", "Saved SHOE-42 in berlin: on hand 25").await;
    let item = api.item("SHOE-42", "berlin").await;
    assert_eq!(u64_of(&item, "on_hand"), 25);
    assert_eq!(u64_of(&item, "version"), u64_of(&theirs, "version") + 1);
    browser.wait_for_text("#warehouses tr[data-warehouse='berlin'] td[data-field='on_hand']", "25").await;
    // The history reloads after the save: wait for its newest movement.
    let movements = browser.wait_for_text("#history tbody", "17 → 25").await;
    assert!(movements.contains("10 → 17") && movements.contains("17 → 25"), "{movements}");
}

/// A refused adjustment shows the API's problem: title, code and detail.
async fn adjust_refused_then_accepted(browser: &Browser, api: &Api) {
    api.hold("SHOE-42", "berlin", 5).await;
    browser.type_into("#adjust-delta", "-24").await;
    browser.wait_for("#adjust-reason").await;
    browser.execute("document.getElementById('adjust-reason').value = 'damage';", vec![]).await;
    browser.click("#adjust-form button[type=submit]").await;
    browser.wait_for_text("#banner-code", "below_reserved").await;
    assert!(browser.text("#banner-title").await.contains("Conflict (HTTP 409)"));
    assert!(browser.text("#banner-detail").await.contains("below the 5 units reserved"));
    // And an accepted one goes through.
    browser.type_into("#adjust-delta", &format!("-3{ENTER}")).await;
    browser.wait_for_text("#sku-notice", "on hand now 22").await;
    assert_eq!(u64_of(&api.item("SHOE-42", "berlin").await, "on_hand"), 22);
    // The item's ledger shows every movement, the hold too, with its levels.
    browser.wait_for_text("#ledger tbody", "adjust (damage)").await;
    let ledger = browser.text("#ledger tbody").await;
    assert!(ledger.contains("hold") && ledger.contains("25 → 22") && ledger.contains("0 → 5"), "{ledger}");
}

/// The SKU's limit per customer: set with a window, shown, then removed.
async fn customer_limit_set_and_removed(browser: &Browser, api: &Api) {
    assert!(browser.text("#limit-now").await.contains("No limit"));
    browser.type_into("#limit-units", "2").await;
    browser.type_into("#limit-window", &format!("24{ENTER}")).await;
    browser.wait_for_text("#sku-notice", "Limit set: 2 per customer").await;
    browser.wait_for_text("#limit-now", "2 per customer, within 24 h").await;
    let (_, _, sku) = api.call(Method::GET, "/v1/items/SHOE-42", None).await;
    assert_eq!((u64_of(&sku, "limit_per_customer"), u64_of(&sku, "limit_window_seconds")), (2, 86_400), "{sku}");
    browser.click("#limit-remove").await;
    browser.wait_for_text("#sku-notice", "Limit removed").await;
    browser.wait_for_text("#limit-now", "No limit").await;
    let (_, _, sku) = api.call(Method::GET, "/v1/items/SHOE-42", None).await;
    assert_eq!(sku["limit_per_customer"], Value::Null, "{sku}");
}

/// The SKU's product record: saved from the form, read back by the API.
async fn product_record_saved(browser: &Browser, api: &Api) {
    assert!(browser.text("#product-now").await.contains("No product record"));
    browser.type_into("#product-name", "Trail Runner").await;
    browser.type_into("#product-currency", "eur").await;
    browser.type_into("#product-price", &format!("89.9{ENTER}")).await;
    browser.wait_for_text("#sku-notice", "Product saved (version 1)").await;
    browser.wait_for_text("#product-now", "Version 1").await;
    let (_, _, sku) = api.call(Method::GET, "/v1/items/SHOE-42", None).await;
    let product = &sku["product"];
    assert_eq!(
        (str_of(product, "name"), str_of(product, "price"), str_of(product, "currency")),
        ("Trail Runner", "89.90", "EUR"),
        "{sku}"
    );
}

/// Deleting a held warehouse is refused with the API's problem; an
/// unheld one goes, and leaves the table.
async fn held_warehouse_delete_refused(browser: &Browser, api: &Api) {
    browser.click("button[data-delete='berlin']").await;
    browser.wait_for_text("#banner-code", "item_has_holds").await;
    assert_eq!(u64_of(&api.item("SHOE-42", "berlin").await, "reserved"), 5, "a refused delete changed nothing");
    api.stock("SHOE-42", "paris", 4, 0, "Trail Runner 42").await;
    browser.click("#sku-refresh").await;
    browser.wait_for("button[data-delete='paris']").await;
    browser.click("button[data-delete='paris']").await;
    browser.wait_for_text("#sku-notice", "Deleted SHOE-42 in paris").await;
    let (status, _, _) = api.call(Method::GET, "/v1/items/SHOE-42/paris", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let rows = browser.execute("return document.querySelectorAll('#warehouses tbody tr').length;", vec![]).await;
    assert_eq!(rows, json!(1));
}

/// A bundle: defined on the page, listed with the availability its
/// component allows (as the API computes it), then removed.
async fn bundle_defined_and_removed(browser: &Browser, api: &Api) {
    browser.type_into("#bundle-sku", "SHOE-PAIR-BOX").await;
    browser.type_into("#bundle-components", "SHOE-42 2").await;
    browser.click("#bundle-form button[type=submit]").await;
    browser.wait_for_text("#bundle-notice", "Saved SHOE-PAIR-BOX: 1 component").await;
    let (status, _, bundle) = api.call(Method::GET, "/v1/bundles/SHOE-PAIR-BOX", None).await;
    assert_eq!(status, StatusCode::OK, "{bundle}");
    assert_eq!(bundle["components"][0]["quantity"], 2, "{bundle}");
    let row = "#bundles tr[data-bundle='SHOE-PAIR-BOX']";
    browser.wait_for_text(row, "SHOE-42 × 2").await;
    assert!(browser.text(row).await.contains(&u64_of(&bundle, "available").to_string()), "{bundle}");
    browser.click(&format!("{row} button")).await;
    browser.wait_for_text("#bundle-notice", "Removed SHOE-PAIR-BOX").await;
    let (status, _, _) = api.call(Method::GET, "/v1/bundles/SHOE-PAIR-BOX", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// The SKU's warehouse priority: set, shown, then removed.
async fn priority_set_and_removed(browser: &Browser, api: &Api) {
    api.stock("SHOE-42", "paris", 4, 0, "Trail Runner 42").await;
    assert!(browser.text("#priority-now").await.contains("No priority"));
    browser.type_into("#priority-list", &format!("paris, berlin{ENTER}")).await;
    browser.wait_for_text("#sku-notice", "Warehouse priority set: paris, berlin").await;
    browser.wait_for_text("#priority-now", "takes paris, berlin first").await;
    let (_, _, sku) = api.call(Method::GET, "/v1/items/SHOE-42", None).await;
    assert_eq!(sku["warehouse_priority"], json!(["paris", "berlin"]), "{sku}");
    browser.click("#priority-remove").await;
    browser.wait_for_text("#sku-notice", "Warehouse priority removed").await;
    browser.wait_for_text("#priority-now", "No priority").await;
    let (_, _, sku) = api.call(Method::GET, "/v1/items/SHOE-42", None).await;
    assert_eq!(sku["warehouse_priority"], json!([]), "{sku}");
}

/// Quantity states: 4 found broken move from available to damaged, then
/// 3 are kept back as safety stock; the table shows both.
async fn quantity_states_moved_and_set(browser: &Browser, api: &Api) {
    browser.execute("document.getElementById('move-from').value = 'available';", vec![]).await;
    browser.execute("document.getElementById('move-to').value = 'damaged';", vec![]).await;
    browser.type_into("#move-quantity", &format!("4{ENTER}")).await;
    browser.wait_for_text("#sku-notice", "Moved 4 in berlin from available to damaged: available now 13").await;
    browser.wait_for_text("#warehouses tr[data-warehouse='berlin'] td[data-field='states']", "damaged 4").await;
    browser.type_into("#levels-safety", "3").await;
    browser.type_into("#levels-backorder", &format!("4{ENTER}")).await;
    browser.wait_for_text("#sku-notice", "safety stock 3").await;
    browser.wait_for_text("#warehouses tr[data-warehouse='berlin'] td[data-field='states']", "backorder limit 4").await;
    browser.wait_for_text("#warehouses tr[data-warehouse='berlin'] td[data-field='available']", "10").await;
    let item = api.item("SHOE-42", "berlin").await;
    assert_eq!(
        ["on_hand", "reserved", "available", "damaged", "safety_stock", "backorder_limit"]
            .map(|key| u64_of(&item, key)),
        [22, 5, 10, 4, 3, 4],
        "{item}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_made_over_http_shows_in_the_widget_within_a_second() {
    if !installed_or_skip("widget") {
        return;
    }
    let _serial = SERIAL.lock().await;
    // The shop is on another origin than Tally, as on a real storefront.
    let (listener, shop) = loopback_listener();
    let node = start_tally(Some(&format!("http://{shop}"))).await;
    let api = Api(node.client());
    api.stock("SHOE-42", "berlin", 10, 3, "Trail Runner 42").await;
    api.stock("SHOE-42", "paris", 4, 2, "Trail Runner 42").await;
    api.stock("SHOE-42", "madrid", 0, 2, "Trail Runner 42").await;
    storefront(listener, product_page(node.http_addr));
    let browser = Browser::start().await;
    browser.goto(&format!("http://{shop}/")).await;

    // Every badge reads its stock and follows the stream before anything moves.
    badge_reads(&browser, BERLIN_BADGE, "In stock", WAIT_MAX).await;
    badge_reads(&browser, "#paris", "In stock", WAIT_MAX).await;
    badge_reads(&browser, "#madrid", "Out of stock", WAIT_MAX).await;
    badge_reads(&browser, "#total", "In stock", WAIT_MAX).await;
    let live = "return [...document.querySelectorAll('.tally-stock')].every(e => e.dataset.live === 'true');";
    browser.wait_until("every badge's stream is live", WAIT_MAX, live, vec![]).await;

    // Berlin: 10 on hand, low at 3. A hold of 8 leaves 2.
    let first = api.hold("SHOE-42", "berlin", 8).await;
    badge_reads(&browser, BERLIN_BADGE, "Only 2 left", WIDGET_UPDATE_MAX).await;
    badge_reads(&browser, "#total", "In stock", WIDGET_UPDATE_MAX).await;
    // Paris: 4, low at 2. Two held leave 2; the SKU has 4 left, under its data-low of 5.
    api.hold("SHOE-42", "paris", 2).await;
    badge_reads(&browser, "#paris", "Only 2 left", WIDGET_UPDATE_MAX).await;
    badge_reads(&browser, "#total", "Only 4 left", WIDGET_UPDATE_MAX).await;
    // The last two in Berlin.
    api.hold("SHOE-42", "berlin", 2).await;
    badge_reads(&browser, BERLIN_BADGE, "Out of stock", WIDGET_UPDATE_MAX).await;
    // A released hold gives the units back.
    api.release(str_of(&first, "id")).await;
    badge_reads(&browser, BERLIN_BADGE, "In stock", WIDGET_UPDATE_MAX).await;
    badge_reads(&browser, "#total", "In stock", WIDGET_UPDATE_MAX).await;

    let states = browser
        .execute("return [...document.querySelectorAll('.tally-stock')].map(e => e.dataset.state).join(',');", vec![])
        .await;
    assert_eq!(states, json!("in,low,out,in"));
    browser.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_threshold_crossing_shows_in_the_feed_and_the_stock_alerts() {
    if !installed_or_skip("threshold_feed") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let node = start_tally(None).await;
    let api = Api(node.client());
    api.stock("HAT-7", "berlin", 5, 2, "Wool Beanie").await;
    let browser = Browser::start().await;
    sign_in(&browser, &node, ADMIN_KEY).await;
    open_sku(&browser, "HAT-7").await;
    let script = "return document.querySelector('#low-list li[data-sku]') === null;";
    assert_eq!(browser.execute(script, vec![]).await, json!(true), "nothing is low yet");

    // 5 → 2 available, low at 2: IN_STOCK → LOW_STOCK.
    api.adjust("HAT-7", "berlin", -3, "damage").await;
    let crossing = "#feed li[data-type='threshold_crossed'][data-sku='HAT-7'][data-to='LOW_STOCK']";
    let text = browser.wait_for_text(crossing, "IN STOCK → LOW STOCK").await;
    assert!(text.contains("available 2, low at 2"), "{text}");
    browser.wait_for("#low-list li[data-sku='HAT-7']").await;
    browser.wait_for_text("#warehouses tr[data-warehouse='berlin'] td[data-field='status']", "LOW STOCK").await;

    // A hold of the last two: LOW_STOCK → OUT_OF_STOCK, and the hold shows as live.
    let hold = api.hold("HAT-7", "berlin", 2).await;
    let id = str_of(&hold, "id").to_owned();
    browser.wait_for("#feed li[data-type='threshold_crossed'][data-sku='HAT-7'][data-to='OUT_OF_STOCK']").await;
    browser.wait_for("#out-list li[data-sku='HAT-7']").await;
    let row = format!("#holds tr[data-reservation='{id}']");
    browser.wait_for_text(&row, "berlin").await;

    // Releasing it from the page gives the units back.
    browser.click(&format!("{row} button")).await;
    browser.wait_for_text("#sku-notice", "Released reservation").await;
    let script = "return document.querySelector(arguments[0]) === null;";
    browser.wait_until("the released hold leaves the table", WAIT_MAX, script, vec![json!(row)]).await;
    let (_, _, reservation) = api.call(Method::GET, &format!("/v1/reservations/{id}"), None).await;
    assert_eq!(str_of(&reservation, "state"), "RELEASED");

    // A hold found by its order id can be released from the page too.
    let body = json!({ "lines": [{ "sku": "HAT-7", "warehouse": "berlin", "quantity": 1 }], "order_id": "order-77" });
    api.expect(Method::POST, "/v1/reservations", body, StatusCode::CREATED).await;
    browser.type_into("#lookup-id", &format!("order-77{ENTER}")).await;
    browser.wait_for("#lookup-result dd[data-state='HELD']").await;
    browser.click("#lookup-result button.danger").await;
    browser.wait_for("#lookup-result dd[data-state='RELEASED']").await;
    let (_, _, order) = api.call(Method::GET, "/v1/orders/order-77", None).await;
    assert_eq!(str_of(&order, "state"), "RELEASED");
    browser.quit().await;
}

/// Renders the admin page and the widget with a realistic store and checks
/// that every panel has content; with `SCREENSHOTS_DIR` set, saves them as
/// `admin.png` and `widget.png` (the README's, under docs/).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshots_show_the_admin_page_and_the_widget_with_stock() {
    if !installed_or_skip("screenshots") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let (listener, shop) = loopback_listener();
    let node = start_tally(Some(&format!("http://{shop}"))).await;
    let api = Api(node.client());
    for (sku, warehouse, on_hand, threshold, name) in [
        ("SHOE-42", "berlin", 120, 10, "Trail Runner 42"),
        ("SHOE-42", "paris", 12, 6, "Trail Runner 42"),
        ("SHOE-42", "madrid", 0, 4, "Trail Runner 42"),
        ("HAT-7", "berlin", 3, 5, "Wool Beanie"),
        ("SOCK-3", "paris", 0, 10, "Merino Socks"),
        ("JACKET-9", "berlin", 40, 5, "Rain Jacket"),
        ("BAG-12", "madrid", 2, 3, "Day Pack"),
    ] {
        api.stock(sku, warehouse, on_hand, threshold, name).await;
    }
    api.adjust("SHOE-42", "berlin", 30, "receive").await;
    api.adjust("SHOE-42", "berlin", -2, "damage").await;
    storefront(listener, product_page(node.http_addr));

    let browser = Browser::start().await;
    sign_in(&browser, &node, ADMIN_KEY).await;
    open_sku(&browser, "SHOE-42").await;
    // Traffic while the page watches: holds, a transfer, a crossing.
    let holds = [("berlin", 2), ("berlin", 1), ("paris", 3), ("berlin", 4)];
    for (warehouse, quantity) in holds {
        api.hold("SHOE-42", warehouse, quantity).await;
    }
    api.transfer("SHOE-42", "berlin", "madrid", 6).await;
    api.hold("SHOE-42", "paris", 4).await;
    api.adjust("HAT-7", "berlin", -1, "loss").await;
    browser.wait_for("#holds tbody tr:nth-child(5)[data-reservation]").await;
    browser.wait_for("#feed li:nth-child(8)").await;
    browser.wait_for("#feed li[data-type='threshold_crossed']").await;
    browser.wait_for("#out-list li[data-sku='SOCK-3']").await;
    // The lists follow the crossings: Paris went low, Madrid came back.
    browser.wait_for("#low-list li[data-sku='SHOE-42'][data-warehouse='paris']").await;
    let script = "return document.querySelector(\"#out-list li[data-sku='SHOE-42']\") === null;";
    browser.wait_until("Madrid leaves the out-of-stock list", WAIT_MAX, script, vec![]).await;
    browser.wait_for_text("#history tbody", "transfer").await;
    browser.wait_for_text("#warehouses tr[data-warehouse='madrid'] td[data-field='on_hand']", "6").await;
    // Tall enough for the movements; out of focus: no focus ring in the picture.
    browser.set_window_size(1440, 1460).await;
    browser.execute("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0);", vec![]).await;
    let admin = browser.screenshot().await;

    browser.goto(&format!("http://{shop}/")).await;
    badge_reads(&browser, BERLIN_BADGE, "In stock", WAIT_MAX).await;
    badge_reads(&browser, "#paris", "Only 5 left", WAIT_MAX).await;
    badge_reads(&browser, "#madrid", "In stock", WAIT_MAX).await;
    api.hold("SHOE-42", "madrid", 4).await;
    badge_reads(&browser, "#madrid", "Only 2 left", WAIT_MAX).await;
    api.hold("SHOE-42", "madrid", 2).await;
    badge_reads(&browser, "#madrid", "Out of stock", WAIT_MAX).await;
    let widget = browser.element_screenshot("#shop").await;

    for (name, png) in [("admin.png", &admin), ("widget.png", &widget)] {
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "{name} is not a real PNG");
        if let Some(dir) = webdriver::screenshots_dir() {
            let path = dir.join(name);
            std::fs::write(&path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            eprintln!("wrote {}", path.display());
        }
    }
    browser.quit().await;
}
