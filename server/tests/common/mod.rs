//! Black-box harness for end-to-end tests: starts the real `tally` binary as a
//! child process and talks to it over HTTP only, the way a client would.
//!
//! The machinery (processes, clusters, the HTTP client, ports) is the shared
//! `testkit` crate; this module adds the test settings every node gets
//! ([`options`]) and the server-specific assertions.

#![allow(dead_code, unused_imports)]

use std::time::Instant;

use hyper::header::CONTENT_TYPE;
use hyper::{Method, StatusCode};
use serde_json::Value;
pub use testkit::{
    EXIT_WAIT_MAX, Http, Options, READY_WAIT_MAX, REQUEST_TIMEOUT, RETRY_WINDOW, Reply, StartError, TallyCluster,
    TallyProcess, eventually, free_addrs,
};
use testkit::{Program, retry_delay};

/// The settings a test gives every node it starts: this package's `tally`
/// binary, four shards, quick elections and quiet openraft.
pub fn options() -> Options {
    Options::new(Program::Binary(env!("CARGO_BIN_EXE_tally").into()))
        // openraft's info lines would bury the server's own.
        .log_level("info,openraft=warn")
        .raft_timing_ms(100, 400, 800)
}

// ---------------------------------------------------------------------------
// Assertions and small helpers

/// `value[key]` as a u64; panics naming the key and the value.
pub fn u64_of(value: &Value, key: &str) -> u64 {
    value[key].as_u64().unwrap_or_else(|| panic!("{key:?} is not a u64 in {value}"))
}

/// `value[key]` as a string; panics naming the key and the value.
pub fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or_else(|| panic!("{key:?} is not a string in {value}"))
}

/// Asserts the reply is a problem+json with this status and `code`.
pub fn assert_problem(reply: &Reply, status: StatusCode, code: &str) {
    let (got, headers, body) = reply;
    assert_eq!(*got, status, "expected {status} {code}, got {got}: {body}");
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(content_type.starts_with("application/problem+json"), "content-type {content_type:?} for {body}");
    assert_eq!(body["code"].as_str(), Some(code), "problem code in {body}");
    assert_eq!(body["status"].as_u64(), Some(u64::from(status.as_u16())), "problem status in {body}");
}

/// Ends a held reservation with `action` (`"confirm"` or `"release"`),
/// retrying 503s, and answers the reservation as the server last showed it.
/// An attempt that answered 503 may still have been applied, so after one a
/// later refusal is accepted if the reservation is in fact in the wanted
/// state (`CONFIRMED` or `RELEASED`).
pub async fn end_reservation(http: &Http, id: &str, action: &str) -> Value {
    let wanted = match action {
        "confirm" => "CONFIRMED",
        "release" => "RELEASED",
        _ => panic!("unknown reservation action {action:?}"),
    };
    let path = format!("/v1/reservations/{id}/{action}");
    let deadline = Instant::now() + RETRY_WINDOW;
    let mut unavailable_seen = false;
    loop {
        let (status, headers, body) = http.post_empty(&path).await;
        match status {
            StatusCode::OK => {
                assert_eq!(body["state"].as_str(), Some(wanted), "{action} {id}: {body}");
                return body;
            }
            StatusCode::SERVICE_UNAVAILABLE if Instant::now() < deadline => {
                unavailable_seen = true;
                tokio::time::sleep(retry_delay(&headers)).await;
            }
            _ if unavailable_seen => {
                let (_, _, reservation) = http.retry(Method::GET, &format!("/v1/reservations/{id}"), &[], None).await;
                assert_eq!(
                    reservation["state"].as_str(),
                    Some(wanted),
                    "{action} {id} answered {status} {body} after a 503; the reservation is {reservation}"
                );
                return reservation;
            }
            _ => panic!("{action} {id} answered {status}: {body}"),
        }
    }
}

/// Asserts a reservation's lines are exactly `lines` as
/// `(sku, warehouse, quantity)`, in any order (a reservation over several
/// shards lists its lines shard by shard). Other fields of a line are not
/// looked at.
pub fn assert_lines(reservation: &Value, lines: &[(&str, &str, u64)]) {
    let got = reservation["lines"].as_array().unwrap_or_else(|| panic!("no lines in {reservation}"));
    let mut got: Vec<(&str, &str, u64)> =
        got.iter().map(|line| (str_of(line, "sku"), str_of(line, "warehouse"), u64_of(line, "quantity"))).collect();
    let mut wanted = lines.to_vec();
    got.sort_unstable();
    wanted.sort_unstable();
    assert_eq!(got, wanted, "lines of {reservation}");
}

/// `/v1/items/{sku}/{warehouse}`.
pub fn item_path(sku: &str, warehouse: &str) -> String {
    format!("/v1/items/{sku}/{warehouse}")
}
