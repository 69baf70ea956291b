//! Events: what `apply` tells the world besides each command's outcome.
//!
//! Events are outcomes of `apply`, so every replica computes the same events
//! with the same ids `(shard, log index, position)`. Only a shard's leader
//! publishes them; consumers dedupe by id across leader changes.
//!
//! Inside the engine an event names its item by `ItemId`, which keeps `apply`
//! free of string copies; `ShardState::describe` turns it into an
//! `EventRecord` with the SKU and warehouse for publishing.

use std::fmt;

use rkyv::{Archive, Deserialize, Serialize};

use crate::cmd::AdjustReason;
use crate::ids::ReservationId;
use crate::item::{ItemId, Status};

/// `(shard, log index, position in the entry's events)`: unique and identical
/// on every replica.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct EventId {
    pub shard: u32,
    pub index: u64,
    pub position: u32,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.shard, self.index, self.position)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What changed the stock of an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum Cause {
    Upsert,
    Adjust(AdjustReason),
    TransferIn,
    TransferOut,
    Hold(ReservationId),
    Confirm(ReservationId),
    Release(ReservationId),
    Expire(ReservationId),
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Upsert => "upsert",
            Cause::Adjust(reason) => reason.as_str(),
            Cause::TransferIn => "transfer_in",
            Cause::TransferOut => "transfer_out",
            Cause::Hold(_) => "hold",
            Cause::Confirm(_) => "confirm",
            Cause::Release(_) => "release",
            Cause::Expire(_) => "expire",
        }
    }

    pub fn reservation(self) -> Option<ReservationId> {
        match self {
            Cause::Hold(id) | Cause::Confirm(id) | Cause::Release(id) | Cause::Expire(id) => Some(id),
            Cause::Upsert | Cause::Adjust(_) | Cause::TransferIn | Cause::TransferOut => None,
        }
    }
}

/// Stock levels before and after a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct LevelChange {
    pub on_hand_before: u64,
    pub on_hand_after: u64,
    pub reserved_before: u64,
    pub reserved_after: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum EventKind {
    /// `on_hand` or `reserved` (so `available`) of an item changed.
    StockChanged { item: ItemId, cause: Cause, levels: LevelChange },
    /// An item's status changed: one event per crossing.
    ThresholdCrossed { item: ItemId, from: Status, to: Status, available: u64, low_stock_threshold: u64 },
    /// A hold reached its deadline and its units went back.
    ReservationExpired { reservation: ReservationId, deadline_ms: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct Event {
    pub id: EventId,
    /// Log time of the entry that caused it.
    pub at_ms: u64,
    pub kind: EventKind,
}

/// An event with its item named, ready to publish.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct EventRecord {
    pub id: EventId,
    pub at_ms: u64,
    /// SKU and warehouse of the item, empty for reservation events.
    pub sku: String,
    pub warehouse: String,
    pub kind: EventKind,
}
