//! What the load generator drives: a target (Tally, Redis+Lua, PostgreSQL)
//! started on loopback, and connections to it that perform the inventory
//! operations of the workloads.
//!
//! Every target keeps the same model: an item (SKU × warehouse) has
//! `on_hand` and `reserved`; a hold of `qty` succeeds only while
//! `on_hand - reserved >= qty` and then adds `qty` to `reserved` and records
//! the hold under its id; a confirm of a live hold takes `qty` off both; a
//! release takes it off `reserved`; an adjustment adds a signed delta to
//! `on_hand` unless that would leave it below `reserved`. Every acknowledged
//! change is durable as the target is configured (fsynced for Tally, Redis
//! `appendfsync always` and PostgreSQL `synchronous_commit = on`).

use std::future::Future;

/// One item to create before a workload, with its starting stock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemSpec {
    pub sku: String,
    pub warehouse: String,
    pub on_hand: u64,
}

/// One hold to place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldRequest {
    pub sku: String,
    pub warehouse: String,
    pub qty: u64,
    /// The hold's id, chosen by the caller (unique in a run). A target that
    /// picks its own ids (Tally) answers with its own in `Held`.
    pub id: String,
    /// Time to live; a long one keeps holds from expiring during a workload.
    pub ttl_ms: u64,
}

/// The answer to a hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HoldResult {
    /// Acknowledged (and durable): the id to confirm or release it by.
    Held(String),
    /// Refused for lack of stock; nothing changed.
    Refused,
    /// No answer or an error: it may or may not have happened.
    Unknown(String),
}

/// The answer to a confirm, release or adjustment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeResult {
    /// Acknowledged (and durable).
    Done,
    /// Refused: the hold was not live, or the adjustment would leave
    /// `on_hand` below `reserved`; nothing changed.
    Refused,
    /// No answer or an error: it may or may not have happened.
    Unknown(String),
}

/// An item's levels as read back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ItemState {
    pub on_hand: u64,
    pub reserved: u64,
}

/// A hold's state as read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldState {
    Held,
    Confirmed,
    Released,
    Expired,
    /// The target has no record of the id.
    Missing,
}

/// Why a target could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The peer's program is not installed: the target is skipped with this
    /// message (it names the script that installs it).
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    Failed(String),
}

/// A connection to a target. Each client of a workload owns one; every
/// method is one round trip (a batch is one round trip too).
pub trait Conn: Send + 'static {
    /// Places one hold.
    fn hold(&mut self, hold: &HoldRequest) -> impl Future<Output = HoldResult> + Send;
    /// Places many independent holds in one round trip (Tally's batch
    /// endpoint, a Redis pipeline, one PostgreSQL transaction); one result
    /// each, in order.
    fn hold_batch(&mut self, holds: &[HoldRequest]) -> impl Future<Output = Vec<HoldResult>> + Send;
    /// Confirms a live hold: the units are sold.
    fn confirm(&mut self, id: &str) -> impl Future<Output = ChangeResult> + Send;
    /// Releases a live hold: the units are available again.
    fn release(&mut self, id: &str) -> impl Future<Output = ChangeResult> + Send;
    /// Adds `delta` to an item's `on_hand`.
    fn adjust(&mut self, sku: &str, warehouse: &str, delta: i64) -> impl Future<Output = ChangeResult> + Send;
    /// Reads one item's levels.
    fn read(&mut self, sku: &str, warehouse: &str) -> impl Future<Output = Result<ItemState, String>> + Send;
    /// Reads many items' levels (after a workload), in order.
    fn read_many(&mut self, items: &[(String, String)]) -> impl Future<Output = Result<Vec<ItemState>, String>> + Send;
    /// Reads holds' states (after a workload), in order.
    fn hold_states(&mut self, ids: &[String]) -> impl Future<Output = Result<Vec<HoldState>, String>> + Send;
}
