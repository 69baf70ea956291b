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
use crate::states::QuantityState;

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
    /// The item was deleted: its `on_hand` went to 0 (`cmd/delete.rs`).
    Delete,
    /// Units moved between quantity states (`states.rs`). Out of
    /// `incoming` it raises `on_hand` (received).
    Move {
        from: QuantityState,
        to: QuantityState,
        quantity: u64,
    },
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
            Cause::Delete => "delete",
            Cause::Move { .. } => "move",
        }
    }

    pub fn reservation(self) -> Option<ReservationId> {
        match self {
            Cause::Hold(id) | Cause::Confirm(id) | Cause::Release(id) | Cause::Expire(id) => Some(id),
            Cause::Upsert
            | Cause::Adjust(_)
            | Cause::TransferIn
            | Cause::TransferOut
            | Cause::Delete
            | Cause::Move { .. } => None,
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
    /// Units on hand kept back (safety stock, damaged, quality control),
    /// so `available = on_hand - reserved - unsellable` before and after.
    pub unsellable_before: u64,
    pub unsellable_after: u64,
}

impl LevelChange {
    pub fn available_before(&self) -> u64 {
        self.on_hand_before.saturating_sub(self.reserved_before).saturating_sub(self.unsellable_before)
    }

    pub fn available_after(&self) -> u64 {
        self.on_hand_after.saturating_sub(self.reserved_after).saturating_sub(self.unsellable_after)
    }
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
    /// A hold was granted: every line is reserved.
    ReservationHeld { reservation: ReservationId, deadline_ms: u64 },
    /// A hold was refused for stock: `describe` lists every short line (the
    /// one refusal that emits an event; it changes nothing).
    ReservationRefused { reservation: ReservationId },
    /// A held reservation was sold.
    ReservationConfirmed { reservation: ReservationId },
    /// A held reservation was given back.
    ReservationReleased { reservation: ReservationId },
    /// A held reservation's deadline moved later: one per line, so the
    /// ledger records the item (its levels do not change).
    HoldExtended { item: ItemId, reservation: ReservationId, deadline_ms: u64, levels: LevelChange },
    /// Stock arrived for a held line's backorder: `units` of it are now
    /// reserved from stock, `backordered` still wait.
    BackorderFilled { reservation: ReservationId, item: ItemId, units: u64, backordered: u64 },
}

impl EventKind {
    /// The reservation this event is about, if any.
    pub fn reservation(&self) -> Option<ReservationId> {
        match *self {
            EventKind::StockChanged { cause, .. } => cause.reservation(),
            EventKind::ThresholdCrossed { .. } => None,
            EventKind::ReservationExpired { reservation, .. }
            | EventKind::ReservationHeld { reservation, .. }
            | EventKind::ReservationRefused { reservation }
            | EventKind::ReservationConfirmed { reservation }
            | EventKind::ReservationReleased { reservation }
            | EventKind::HoldExtended { reservation, .. }
            | EventKind::BackorderFilled { reservation, .. } => Some(reservation),
        }
    }
}

/// `Event::command` of events no command caused (expiry before a batch).
pub const NO_COMMAND: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct Event {
    pub id: EventId,
    /// Log time of the entry that caused it.
    pub at_ms: u64,
    /// Position in the entry's batch of the command that caused it, or
    /// [`NO_COMMAND`] (expiry runs before the batch's commands). `describe`
    /// reads the principal, note and reference there.
    pub command: u32,
    pub kind: EventKind,
}

/// One line of a reservation event, named.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct RecordLine {
    pub sku: String,
    /// Empty for a refused line that named no warehouse.
    pub warehouse: String,
    pub quantity: u64,
    /// For a short line of a refused hold: what was available.
    pub available: Option<u64>,
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
    /// Who caused it: the API key name the command carried (`None` for
    /// expiry and for commands that carried none).
    pub principal: Option<String>,
    /// The caller's note and document reference, from the command.
    pub note: Option<String>,
    pub reference: Option<String>,
    /// The reservation's idempotency key as stored (the HTTP layer reads the
    /// order id out of it), for events about a reservation.
    pub idempotency_key: Option<String>,
    /// The reservation's lines, for reservation events (the short ones for
    /// `ReservationRefused`); empty otherwise.
    pub lines: Vec<RecordLine>,
}
