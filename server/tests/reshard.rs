//! `tally reshard` end to end on real `tally` processes (issue 19): a
//! backup taken from a running node of 4 shards is refused while it holds
//! a live hold, resharded to 8 once drained, restored, and served by a
//! node started with 8 shards, which reads every item back as it was.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use common::{Http, Options, TallyProcess, free_addrs, item_path, options, str_of};
use hyper::StatusCode;
use serde_json::{Value, json};
use server::backup::Until;
use server::backup::restore::{RestoreRequest, restore};
use server::backup::verify::verify_backup;

const CUSTOMER: &str = "cust-1";
const BUNDLE: &str = "kit-1";

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("tally-reshard-test-").tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"))
}

async fn take_backup(http: &Http, to: &Path) {
    let (status, _, body) = http.post("/v1/admin/backup", json!({ "to": to.to_string_lossy() })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "done", "{body}");
}

/// `tally reshard …`: its exit status and what it wrote to stdout and stderr.
fn reshard_cli(args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .arg("reshard")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running tally reshard: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn path(dir: &Path) -> &str {
    dir.to_str().unwrap_or_else(|| panic!("{} is not UTF-8", dir.display()))
}

/// Every item of `skus` in `warehouses` as the node answers it (absent: 404),
/// every SKU's view (warehouses, product, customer limit), one customer's
/// usage and the bundle.
async fn read_items(http: &Http, skus: &[String], warehouses: &[&str]) -> BTreeMap<String, Value> {
    let mut items = BTreeMap::new();
    for path in [format!("/v1/items/sku-0?customer_id={CUSTOMER}"), format!("/v1/bundles/{BUNDLE}")]
        .into_iter()
        .chain(skus.iter().map(|sku| format!("/v1/items/{sku}")))
    {
        let (status, _, body) = http.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        items.insert(path, body);
    }
    for sku in skus {
        for warehouse in warehouses {
            let (status, _, body) = http.get(&item_path(sku, warehouse)).await;
            let value = match status {
                StatusCode::OK => body,
                StatusCode::NOT_FOUND => Value::Null,
                other => panic!("reading {sku}/{warehouse}: {other} {body}"),
            };
            items.insert(format!("{sku}/{warehouse}"), value);
        }
    }
    items
}

/// Every file under `dir`, recursively.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}

async fn start_restored(options: Options, data_dir: &Path, peer: SocketAddr) -> TallyProcess {
    let http_addr = free_addrs(1)[0];
    let options = options.data_dir(data_dir);
    let mut node = TallyProcess::launch_as(&options, 1, http_addr, peer, vec![(1, peer)]);
    node.ready().await;
    node
}

/// Stocks the source node: items in one or two warehouses, products with
/// a per-customer limit, a bundle, two sales and a live hold: the hold and
/// the second sale.
async fn stock(http: &Http, skus: &[String]) -> (Value, Value) {
    for (n, sku) in skus.iter().enumerate() {
        let (status, _, body) = http.put(&item_path(sku, "w1"), json!({ "on_hand": 10 + n })).await;
        assert!(status.is_success(), "{status} {body}");
        if n % 3 == 0 {
            let (status, _, body) = http.put(&item_path(sku, "w2"), json!({ "on_hand": n })).await;
            assert!(status.is_success(), "{status} {body}");
        }
    }
    // Products with a per-customer limit, a bundle, a customer's sale.
    for n in 0..10 {
        let product = json!({ "name": format!("Product {n}"), "price": "1.50", "currency": "EUR" });
        for body in [product, json!({ "limit_per_customer": 5 })] {
            let (status, _, answer) = http.put(&format!("/v1/items/sku-{n}"), body).await;
            assert!(status.is_success(), "{status} {answer}");
        }
    }
    let components = json!({ "components": [{ "sku": "sku-3", "quantity": 1 }, { "sku": "sku-4", "quantity": 2 }] });
    let (status, _, answer) = http.put(&format!("/v1/bundles/{BUNDLE}"), components).await;
    assert!(status.is_success(), "{status} {answer}");
    let sale = json!({ "customer_id": CUSTOMER, "lines": [{ "sku": "sku-0", "quantity": 2 }], "commit": true });
    let (status, _, answer) = http.post("/v1/reservations", sale).await;
    assert!(status.is_success(), "{status} {answer}");
    // A sale (a terminal reservation) and a live hold.
    let sale = json!({ "customer_id": CUSTOMER, "lines": [{ "sku": "sku-1", "warehouse": "w1", "quantity": 2 }], "commit": true });
    let (status, _, sold) = http.post("/v1/reservations", sale).await;
    assert!(status.is_success(), "{status} {sold}");
    let hold = json!({ "customer_id": CUSTOMER, "lines": [{ "sku": "sku-2", "warehouse": "w1", "quantity": 3 }] });
    let (status, _, held) = http.post("/v1/reservations", hold).await;
    assert!(status.is_success(), "{status} {held}");
    (held, sold)
}

/// A copy of the backup `from` at `to` whose manifest lies about the
/// first shard's digest.
fn lying_copy(from: &Path, to: &Path) {
    std::fs::create_dir(to).unwrap_or_else(|e| panic!("{e}"));
    for entry in walk(from) {
        let relative = entry.strip_prefix(from).unwrap_or_else(|e| panic!("{e}"));
        let target = to.join(relative);
        std::fs::create_dir_all(target.parent().unwrap_or(to)).unwrap_or_else(|e| panic!("{e}"));
        std::fs::copy(&entry, &target).unwrap_or_else(|e| panic!("{e}"));
    }
    let manifest_path = to.join("manifest.json");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"));
    let digest = str_of(&manifest["shards"][0], "digest").to_owned();
    let text = std::fs::read_to_string(&manifest_path).unwrap_or_default().replace(&digest, &"0".repeat(32));
    std::fs::write(&manifest_path, text).unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_four_shards_reshards_to_eight_and_serves_every_item() {
    let dir = tempdir();
    let mut node = TallyProcess::start(options().shards(4)).await;
    let http = node.client();
    let skus: Vec<String> = (0..40).map(|n| format!("sku-{n}")).collect();
    let warehouses = ["w1", "w2"];
    let (held, sold) = stock(&http, &skus).await;

    // With a live hold the reshard is refused, saying how many, and
    // writes nothing.
    let with_hold = dir.path().join("with-hold");
    take_backup(&http, &with_hold).await;
    let refused = dir.path().join("refused");
    let (ok, text) = reshard_cli(&["--from", path(&with_hold), "--shards", "8", "--to", path(&refused)]);
    assert!(!ok, "resharded a backup with a live hold: {text}");
    assert!(text.contains("1 live holds"), "{text}");
    assert!(!refused.exists(), "a refused reshard left {}", refused.display());

    // Drained, it goes through.
    let id = str_of(&held, "id").to_owned();
    let (status, _, body) = http.post(&format!("/v1/reservations/{id}/release"), json!({})).await;
    assert!(status.is_success(), "{status} {body}");
    let before = read_items(&http, &skus, &warehouses).await;
    let drained = dir.path().join("drained");
    take_backup(&http, &drained).await;
    node.terminate().await;

    // Bad input: a shard count of 0, a target that is not empty.
    let eight = dir.path().join("eight");
    let (ok, text) = reshard_cli(&["--from", path(&drained), "--shards", "0", "--to", path(&eight)]);
    assert!(!ok && text.contains("--shards must be in 1..=65535"), "{text}");
    let (ok, text) = reshard_cli(&["--from", path(&drained), "--shards", "8", "--to", path(&drained)]);
    assert!(!ok && text.contains("is not empty"), "{text}");
    let (ok, text) = reshard_cli(&["--from", path(&eight), "--shards", "8", "--to", path(&dir.path().join("x"))]);
    assert!(!ok && text.contains("manifest.json"), "{text}");

    // A backup whose manifest lies about a digest does not verify: refused.
    let lying = dir.path().join("lying");
    lying_copy(&drained, &lying);
    let (ok, text) = reshard_cli(&["--from", path(&lying), "--shards", "8", "--to", path(&eight)]);
    assert!(!ok && text.contains("does not verify"), "{text}");
    assert!(!eight.exists(), "a refused reshard left {}", eight.display());

    let (ok, text) = reshard_cli(&["--from", path(&drained), "--shards", "8", "--to", path(&eight)]);
    assert!(ok, "{text}");
    assert!(text.contains("resharded 4 shards into 8"), "{text}");
    let verified = verify_backup(&eight).unwrap_or_else(|e| panic!("the resharded backup: {e}"));
    assert_eq!(verified.manifest.shard_count, 8);
    assert_eq!(verified.manifest.resharded_from, Some(4));

    // A restore replays no archive of the old shards after it.
    let peer = free_addrs(1)[0];
    let request = |data_dir: &Path, archive: Option<&Path>| RestoreRequest {
        from: vec![eight.clone()],
        archive: archive.map(Path::to_path_buf),
        until: Until::End,
        data_dir: data_dir.to_path_buf(),
        node_id: 1,
        peer_addr: peer.to_string(),
    };
    let error = restore(&request(&dir.path().join("with-archive"), Some(dir.path())))
        .err()
        .unwrap_or_else(|| panic!("restored a resharded backup with an archive"));
    assert!(error.to_string().contains("without --archive"), "{error}");
    let data = dir.path().join("restored");
    let restored = restore(&request(&data, None)).unwrap_or_else(|e| panic!("restore: {e}"));
    assert_eq!(restored.len(), 8);

    let node = start_restored(options().shards(8), &data, peer).await;
    let (status, _, cluster) = node.http().get("/v1/cluster").await;
    assert_eq!(status, StatusCode::OK, "{cluster}");
    assert_eq!(cluster["shards"].as_array().map(Vec::len), Some(8), "{cluster}");
    let after = read_items(node.http(), &skus, &warehouses).await;
    assert_eq!(before, after);
    // Not vacuous: the customer's sale and the bundle read as made.
    let usage = &after[&format!("/v1/items/sku-0?customer_id={CUSTOMER}")];
    assert_eq!(usage["customer"]["sold"], json!(2), "{usage}");
    assert_eq!(after[&format!("/v1/bundles/{BUNDLE}")]["components"][1]["sku"], json!("sku-4"));
    // The released hold's units are available, and the node takes writes
    // under the carried limit: 5 per customer, 2 already sold of sku-0.
    assert_eq!(after["sku-2/w1"]["reserved"], json!(0), "{}", after["sku-2/w1"]);
    let hold = json!({ "customer_id": CUSTOMER, "lines": [{ "sku": "sku-2", "warehouse": "w1", "quantity": 3 }] });
    let (status, _, body) = node.http().post("/v1/reservations", hold).await;
    assert!(status.is_success(), "{status} {body}");
    let over = json!({ "customer_id": CUSTOMER, "lines": [{ "sku": "sku-0", "warehouse": "w1", "quantity": 4 }] });
    let reply = node.http().post("/v1/reservations", over).await;
    common::assert_problem(&reply, StatusCode::CONFLICT, "customer_limit");
    let (status, _, body) = node.http().get(&item_path("sku-2", "w1")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["reserved"], json!(3), "{body}");
    // The sale reads as before if its reservation was carried, else 404.
    let sold_id = str_of(&sold, "id");
    let (status, _, body) = node.http().get(&format!("/v1/reservations/{sold_id}")).await;
    assert!(status == StatusCode::OK || status == StatusCode::NOT_FOUND, "{status} {body}");
    if status == StatusCode::OK {
        assert_eq!(body["state"], sold["state"], "{body}");
    }
}
