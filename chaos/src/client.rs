//! The clients of a chaos run: each sends inventory operations on a few hot
//! items to a node picked at random, and records every one, with the times
//! it was invoked and answered and what the answer was, into the history.
//!
//! An answer is `Held`/`Done`/`Levels` (2xx), `Refused` (4xx, and the 503s
//! `unavailable` and `overloaded`, which the API promises applied nothing),
//! or `Unknown`: no answer within the timeout, a broken connection, or any
//! other 5xx, none of which says whether the operation happened. A node
//! that refuses the connection never got the request, so the client tries
//! the next node, as a load balancer would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use parking_lot::Mutex;
use serde_json::Value;
use testkit::{ConnError, Connection, SplitMix};

use crate::history::{Call, Item, Op, Outcome};

/// Time to live of the clients' holds (the API's default longest): none
/// expires during a run shorter than a day.
pub const HOLD_TTL_SECONDS: u64 = 86_400;

/// Where operations are recorded, shared by every client of a run.
pub struct Recorder {
    started: Instant,
    next: AtomicU64,
    ops: Mutex<Vec<Op>>,
}

impl Recorder {
    pub fn new(started: Instant) -> Recorder {
        Recorder { started, next: AtomicU64::new(0), ops: Mutex::new(Vec::new()) }
    }

    pub fn micros(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Every operation, in invocation order.
    pub fn take(&self) -> Vec<Op> {
        let mut ops = std::mem::take(&mut *self.ops.lock());
        ops.sort_by_key(|op| op.index);
        ops
    }
}

/// One request on `conn`, the answer's body as JSON (`Null` when empty or
/// not JSON).
pub(crate) async fn request(
    conn: &mut Connection,
    method: Method,
    path: &str,
    body: Option<String>,
) -> Result<(StatusCode, Value), ConnError> {
    let (status, bytes) = conn.request(method, path, body.map(Bytes::from)).await?;
    let value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
    Ok((status, value))
}

/// What a client does, and where.
pub struct ClientPlan {
    pub index: u32,
    /// HTTP address of each node, node `i + 1` at `nodes[i]`.
    pub nodes: Vec<SocketAddr>,
    pub items: Arc<Vec<Item>>,
    pub seed: u64,
    /// A request with no answer after this is `Unknown`.
    pub timeout: Duration,
    /// Pause between two operations, uniform in this range (ms).
    pub think_ms: (u64, u64),
}

/// The refusal code of an operation no node accepted a connection for.
pub const NOT_SENT: &str = "not_sent";

/// Runs one client until `until`, recording into `recorder`.
pub async fn run(plan: ClientPlan, recorder: Arc<Recorder>, until: Instant) {
    let mut conns: Vec<Connection> = plan.nodes.iter().map(|&addr| Connection::new(addr)).collect();
    let mut rng = SplitMix::new(plan.seed);
    // This client's acknowledged live holds: (reservation, item index).
    let mut live: Vec<String> = Vec::new();
    while Instant::now() < until {
        let node = rng.index(conns.len());
        let item = &plan.items[rng.index(plan.items.len())];
        let roll = rng.below(100);
        let call = if roll < 30 {
            Call::Read { sku: item.0.clone(), warehouse: item.1.clone() }
        } else if roll < 65 || live.is_empty() {
            Call::Hold { sku: item.0.clone(), warehouse: item.1.clone(), qty: 1 + rng.below(3) }
        } else {
            let at = rng.index(live.len());
            match roll {
                65..75 => Call::Confirm { reservation: live.swap_remove(at) },
                75..85 => Call::Release { reservation: live.swap_remove(at) },
                85..90 => Call::Extend { reservation: live[at].clone(), ttl_seconds: HOLD_TTL_SECONDS },
                _ => {
                    let delta = if rng.below(4) == 0 { -1 } else { 3 };
                    Call::Adjust { sku: item.0.clone(), warehouse: item.1.clone(), delta }
                }
            }
        };
        let index = recorder.next.fetch_add(1, Ordering::Relaxed);
        let invoke_us = recorder.micros();
        // Like a load balancer: a node that refuses the connection did not
        // get the request, so the next node is tried; only the last try's
        // node and answer are recorded.
        let mut node = node;
        let mut tries = 0;
        let outcome = loop {
            tries += 1;
            let answer = match tokio::time::timeout(plan.timeout, perform(&mut conns[node], &call)).await {
                Ok(answer) => answer,
                Err(_) => {
                    conns[node].reset();
                    Err(ConnError::Lost(format!("no answer within {:?}", plan.timeout)))
                }
            };
            match answer {
                Ok(outcome) => break outcome,
                Err(ConnError::NotSent(_)) if tries < conns.len() => node = (node + 1) % conns.len(),
                // No node took it: certainly not applied.
                Err(ConnError::NotSent(_)) => break Outcome::Refused { code: NOT_SENT.to_owned() },
                Err(error) => break Outcome::Unknown { why: error.to_string() },
            }
        };
        let complete_us = recorder.micros();
        if let Outcome::Held { reservation, .. } = &outcome {
            live.push(reservation.clone());
        }
        let nobody_listened = matches!(&outcome, Outcome::Refused { code } if code == NOT_SENT);
        let node = u8::try_from(node + 1).unwrap_or(u8::MAX);
        recorder.ops.lock().push(Op { index, client: plan.index, node, call, invoke_us, complete_us, outcome });
        // Think time keeps the history checkable (a few operations in
        // flight per item, not dozens); with every node down, a longer one.
        let pause =
            if nobody_listened { 200 } else { plan.think_ms.0 + rng.below(plan.think_ms.1 - plan.think_ms.0 + 1) };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

fn item_path(sku: &str, warehouse: &str) -> String {
    format!("/v1/items/{sku}/{warehouse}")
}

/// Sends `call` and reads what its answer means.
async fn perform(conn: &mut Connection, call: &Call) -> Result<Outcome, ConnError> {
    let (method, path, body) = match call {
        Call::Hold { sku, warehouse, qty } => (
            Method::POST,
            "/v1/reservations".to_owned(),
            Some(format!(
                "{{\"lines\":[{{\"sku\":\"{sku}\",\"warehouse\":\"{warehouse}\",\"quantity\":{qty}}}],\
                 \"ttl_seconds\":{HOLD_TTL_SECONDS}}}"
            )),
        ),
        Call::Confirm { reservation } => (Method::POST, format!("/v1/reservations/{reservation}/confirm"), None),
        Call::Release { reservation } => (Method::POST, format!("/v1/reservations/{reservation}/release"), None),
        Call::Extend { reservation, ttl_seconds } => (
            Method::POST,
            format!("/v1/reservations/{reservation}/extend"),
            Some(format!("{{\"ttl_seconds\":{ttl_seconds}}}")),
        ),
        Call::Adjust { sku, warehouse, delta } => (
            Method::POST,
            format!("{}/adjustments", item_path(sku, warehouse)),
            Some(format!("{{\"delta\":{delta},\"reason\":\"count\"}}")),
        ),
        Call::Read { sku, warehouse } => (Method::GET, item_path(sku, warehouse), None),
    };
    let (status, body) = request(conn, method, &path, body).await?;
    let code = body["code"].as_str().unwrap_or("");
    if status.is_server_error() {
        // The API promises that `unavailable` (no reachable leader),
        // `overloaded` (queue full) and `shard_stopped` (the shard stopped
        // on that node before anything reached its log) applied nothing:
        // the checker holds it to that by reading them as refusals.
        // Anything else may have.
        if matches!(code, "unavailable" | "overloaded" | "shard_stopped") && !matches!(call, Call::Read { .. }) {
            return Ok(Outcome::Refused { code: code.to_owned() });
        }
        return Ok(Outcome::Unknown { why: format!("{status} {code}") });
    }
    if status.is_client_error() {
        return Ok(Outcome::Refused { code: body["code"].as_str().unwrap_or("unknown").to_owned() });
    }
    Ok(match call {
        Call::Hold { .. } => match (body["id"].as_str(), body["expires_at_ms"].as_u64()) {
            (Some(id), Some(expires_at_ms)) => Outcome::Held { reservation: id.to_owned(), expires_at_ms },
            _ => Outcome::Unknown { why: format!("a {status} hold answer without id: {body}") },
        },
        Call::Read { .. } => match (body["on_hand"].as_u64(), body["reserved"].as_u64()) {
            (Some(on_hand), Some(reserved)) => Outcome::Levels { on_hand, reserved },
            _ => Outcome::Unknown { why: format!("a {status} read without levels: {body}") },
        },
        Call::Confirm { .. } | Call::Release { .. } | Call::Extend { .. } | Call::Adjust { .. } => Outcome::Done,
    })
}
