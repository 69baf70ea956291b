//! A reservation: an all-or-nothing hold on items of one shard, with a deadline.
//!
//! `HELD → CONFIRMED | RELEASED | EXPIRED`; terminal states never change. A
//! terminal reservation is kept for a bounded time (`Limits`) so a retried
//! confirm or release answers the same, then forgotten.

use rkyv::{Archive, Deserialize, Serialize};

use crate::customer::CustomerHold;
use crate::ids::{IdempotencyKey, ReservationId};
use crate::item::ItemId;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum ReservationState {
    Held,
    Confirmed,
    Released,
    Expired,
}

impl ReservationState {
    pub fn is_terminal(self) -> bool {
        self != ReservationState::Held
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReservationState::Held => "HELD",
            ReservationState::Confirmed => "CONFIRMED",
            ReservationState::Released => "RELEASED",
            ReservationState::Expired => "EXPIRED",
        }
    }
}

/// One held item and how many units of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct HeldLine {
    pub item: ItemId,
    pub quantity: u64,
    /// Units of `quantity` held beyond stock (a backorder), not yet filled;
    /// the rest are reserved from stock. Always 0 on a confirmed line.
    pub backordered: u64,
}

impl HeldLine {
    /// Units of the line reserved from stock.
    pub fn from_stock(&self) -> u64 {
        self.quantity - self.backordered
    }
}

/// The lines of a reservation, summed per item. One line is the flash-sale
/// case, so it is stored without a heap allocation.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub(crate) enum Lines {
    One(HeldLine),
    Many(Vec<HeldLine>),
}

impl Lines {
    pub fn as_slice(&self) -> &[HeldLine] {
        match self {
            Lines::One(line) => std::slice::from_ref(line),
            Lines::Many(lines) => lines,
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [HeldLine] {
        match self {
            Lines::One(line) => std::slice::from_mut(line),
            Lines::Many(lines) => lines,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub(crate) struct Reservation {
    pub id: ReservationId,
    pub state: ReservationState,
    /// Order of creation in the shard; breaks ties between equal deadlines so
    /// expiry order never depends on the timer wheel's internal order.
    pub seq: u64,
    pub created_at_ms: u64,
    pub deadline_ms: u64,
    /// Log time it left `HELD`; 0 while held.
    pub ended_at_ms: u64,
    pub lines: Lines,
    pub idempotency_key: Option<IdempotencyKey>,
    /// The customer and the SKUs this hold counted against per-customer
    /// limits (`customer.rs`); `None` when it counted none.
    pub customer: Option<Box<CustomerHold>>,
}

impl Reservation {
    /// Moves a held reservation to a terminal state. A terminal reservation
    /// never changes again: asserting it here turns a logic slip into a crash
    /// a test finds.
    pub fn end(&mut self, state: ReservationState, at_ms: u64) {
        debug_assert_eq!(self.state, ReservationState::Held, "terminal reservation {} changed", self.id);
        debug_assert!(state.is_terminal());
        self.state = state;
        self.ended_at_ms = at_ms;
    }
}
