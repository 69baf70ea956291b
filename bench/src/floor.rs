//! The `http-floor` target: the most requests per second this machine's
//! HTTP path gives, to read Tally's figures against.
//!
//! The runner starts one `tally` node exactly as for the `tally` target
//! (same program, same config, afresh for each workload) and drives it
//! with the same clients: one [`Connection`] keep-alive connection each, as many
//! as the workload has, closed or open loop on the same timing. Only the
//! request differs: every one is `GET /healthz`, which touches no shard,
//! no log and no disk. What is left is the bench's HTTP client, the
//! kernel's loopback, hyper and axum, so no Tally request on this machine
//! can be answered faster; the report prints Tally's throughput as a
//! percentage of it.

use std::net::SocketAddr;

use hyper::{Method, StatusCode};

use crate::load::{Step, Stepper};
use testkit::Connection;

/// The request of every `http-floor` step.
const HEALTHZ: &str = "/healthz";

/// Why `http-floor` runs have no oversell or lost-write check.
pub const NOT_CHECKED: &str = "GET /healthz holds nothing: there is no oversell or lost write to check";

/// One client of `http-floor`: one connection, one `GET /healthz` a step.
pub struct FloorClient {
    http: Connection,
}

impl FloorClient {
    pub fn new(addr: SocketAddr) -> FloorClient {
        FloorClient { http: Connection::new(addr) }
    }
}

impl Stepper for FloorClient {
    async fn step(&mut self) -> Step {
        match self.http.request(Method::GET, HEALTHZ, None).await {
            Ok((StatusCode::OK, _)) => Step::default(),
            // Any other answer, or none, is an error, as a failed hold is.
            Ok(_) | Err(_) => Step { errors: 1, ..Step::default() },
        }
    }
}
