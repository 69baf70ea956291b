//! `tally_outcomes_total` counts the engine outcome of every write, whatever
//! path it takes: a plain submit, a one-shard hold, a batch's list, each
//! part of a hold across shards, a confirm.

mod common;

use common::*;
use hyper::StatusCode;
use serde_json::json;

const SHARDS: u32 = 2;

/// `tally_outcomes_total{code}` now (0 before its first sample).
async fn outcomes(http: &Http, code: &str) -> u64 {
    let (status, _, text) = http.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let text = text.as_str().unwrap_or_else(|| panic!("metrics are not text"));
    let series = format!("tally_outcomes_total{{code=\"{code}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(series.as_str()))
        // A counter prints as an integer (`6`), or as a float with no fraction.
        .map_or(0, |value| {
            let whole = value.trim().trim_end_matches(".0");
            whole.parse::<u64>().unwrap_or_else(|e| panic!("{series}{value}: {e}"))
        })
}

/// Two SKUs on different shards.
fn skus() -> (String, String) {
    let first = "M-0".to_owned();
    let second = (1..)
        .map(|n| format!("M-{n}"))
        .find(|sku| engine::shard_of(sku, SHARDS) != engine::shard_of(&first, SHARDS))
        .unwrap_or_else(|| panic!("no second shard"));
    (first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_path_counts_its_outcome() {
    let node = TallyProcess::start(options().shards(SHARDS)).await;
    let http = node.http();
    let (a, b) = skus();
    for sku in [&a, &b] {
        let (status, _, body) = http.put(&item_path(sku, "w1"), json!({ "on_hand": 10 })).await;
        assert!(status.is_success(), "{body}");
    }
    let ok_before = outcomes(http, "ok").await;
    let short_before = outcomes(http, "insufficient_stock").await;

    // One shard: held (1), then refused.
    let (status, _, held) =
        http.post("/v1/reservations", json!({ "lines": [{ "sku": a, "warehouse": "w1", "quantity": 1 }] })).await;
    assert_eq!(status, StatusCode::CREATED, "{held}");
    let (status, _, _) =
        http.post("/v1/reservations", json!({ "lines": [{ "sku": a, "warehouse": "w1", "quantity": 99 }] })).await;
    assert_eq!(status, StatusCode::CONFLICT);
    // A batch of two on one shard (2), a hold across both shards (2 parts),
    // and a confirm (1).
    let one = json!({ "lines": [{ "sku": b, "warehouse": "w1", "quantity": 1 }] });
    let (status, _, batch) = http.post("/v1/reservations/batch", json!({ "requests": [one.clone(), one] })).await;
    assert_eq!((status, batch["held"].as_u64()), (StatusCode::OK, Some(2)), "{batch}");
    let across = json!({ "lines": [{ "sku": a, "warehouse": "w1", "quantity": 1 }, { "sku": b, "warehouse": "w1", "quantity": 1 }] });
    let (status, _, body) = http.post("/v1/reservations", across).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    end_reservation(http, str_of(&held, "id"), "confirm").await;

    assert_eq!(outcomes(http, "ok").await - ok_before, 6);
    assert_eq!(outcomes(http, "insufficient_stock").await - short_before, 1);
}
