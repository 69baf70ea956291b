//! The history of a chaos run: every client operation with its invoke and
//! complete times and its result, as the checker reads it.
//!
//! Times are microseconds since the run started, on this machine's
//! monotonic clock (every process of the run is on this machine). An
//! operation whose answer never came (timeout, connection reset, 5xx) has
//! `Outcome::Unknown` and is treated as having taken effect or not, at any
//! time after its invocation.

use serde::{Deserialize, Serialize};

/// One item of the run: SKU × warehouse.
pub type Item = (String, String);

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Call {
    /// Hold `qty` units of one item (one line, long TTL: holds never expire
    /// during a run unless the schedule says so).
    Hold { sku: String, warehouse: String, qty: u64 },
    /// Confirm a hold this client made (by the id its `Hold` returned).
    Confirm { reservation: String },
    /// Release a hold this client made.
    Release { reservation: String },
    /// Extend a hold this client made; changes no stock.
    Extend { reservation: String, ttl_seconds: u64 },
    /// Add `delta` to an item's on hand (admin adjustment; refused if it
    /// would leave on hand below reserved or below 0).
    Adjust { sku: String, warehouse: String, delta: i64 },
    /// Read an item's levels (a linearizable read).
    Read { sku: String, warehouse: String },
}

/// What came back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// `Hold` acknowledged: the reservation's id and the deadline it was
    /// given (Unix ms, from `expires_at_ms`).
    Held { reservation: String, expires_at_ms: u64 },
    /// `Confirm`, `Release`, `Extend` or `Adjust` acknowledged.
    Done,
    /// `Read` answered.
    Levels { on_hand: u64, reserved: u64 },
    /// Refused with a 4xx: nothing changed. `code` is the problem's code
    /// (`insufficient_stock`, `reservation_expired`, `reservation_released`,
    /// `reservation_confirmed`, `below_reserved`, ...).
    Refused { code: String },
    /// No answer, or one that does not say whether it happened.
    Unknown { why: String },
}

/// One operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history (invocation order).
    pub index: u64,
    pub client: u32,
    /// Node (1-based) the request was sent to.
    pub node: u8,
    pub call: Call,
    pub invoke_us: u64,
    /// When the answer came; for `Unknown`, when the client gave up.
    pub complete_us: u64,
    pub outcome: Outcome,
}

/// A fault the schedule injected, for the report and for availability.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultEvent {
    pub at_us: u64,
    /// e.g. `kill node 2`, `partition {1} | {2,3}`, `heal`.
    pub what: String,
    /// Whether this fault ends a disturbance (`heal`, `restart`, `resume`).
    pub heals: bool,
}

/// The whole record of a run, as the checker takes it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct History {
    pub ops: Vec<Op>,
    pub faults: Vec<FaultEvent>,
    /// Each item's stock when the run started (on hand, nothing reserved).
    pub initial: Vec<(Item, u64)>,
    /// After healing: each node's levels of every item, read with
    /// `?consistency=stale` from that node (its own replica).
    pub final_levels: Vec<NodeLevels>,
    /// After healing: each node's state digest per shard.
    pub digests: Vec<NodeDigests>,
    /// After healing: the state of each reservation a client was told about,
    /// as (reservation id, `HELD` | `CONFIRMED` | `RELEASED` | `EXPIRED` |
    /// `MISSING`), `MISSING` when no node knows the id. Empty when the run
    /// did not collect it (the checker then skips that part of its "no lost
    /// write" check).
    #[serde(default)]
    pub final_holds: Vec<(String, String)>,
    /// Nodes each shard lives on; 0 (a history from before placement):
    /// every node.
    #[serde(default)]
    pub replication_factor: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLevels {
    pub node: u8,
    /// (item, on hand, reserved)
    pub items: Vec<(Item, u64, u64)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDigests {
    pub node: u8,
    /// (shard, last applied index, digest as hex)
    pub shards: Vec<(u32, Option<u64>, String)>,
}
