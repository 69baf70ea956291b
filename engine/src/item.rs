//! An item: one SKU in one warehouse, its stock levels and its recent movements.
//!
//! The struct is kept small because a shard holds millions of them: the SKU
//! lives in the shard's string arena (offset and length here), the warehouse
//! is an interned 16-bit id, rarely used attributes sit behind one pointer, and
//! the movement history grows only as movements happen.

use rkyv::{Archive, Deserialize, Serialize};

use crate::ids::{ItemName, ReservationId};
use crate::states::StateLevels;

/// The index of an item in its shard. A deleted item stays as a tombstone
/// (`product.rs`) and its slot only ever comes back for the same SKU and
/// warehouse, so an id names one SKU × warehouse for the shard's life, the
/// same on every replica (ids are handed out in log order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct ItemId(pub u32);

/// Stock status, derived from `available` and the low-stock threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum Status {
    InStock,
    LowStock,
    OutOfStock,
}

impl Status {
    /// `OUT_OF_STOCK` if nothing is available, `LOW_STOCK` if at most the
    /// threshold is, else `IN_STOCK`.
    pub fn of(available: u64, low_stock_threshold: u64) -> Status {
        if available == 0 {
            Status::OutOfStock
        } else if available <= low_stock_threshold {
            Status::LowStock
        } else {
            Status::InStock
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::InStock => "IN_STOCK",
            Status::LowStock => "LOW_STOCK",
            Status::OutOfStock => "OUT_OF_STOCK",
        }
    }
}

/// Why stock moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum MovementReason {
    /// Goods received from a supplier.
    Receive,
    /// A customer return put back on the shelf.
    Return,
    /// Damaged goods written off.
    Damage,
    /// Lost or stolen goods written off.
    Loss,
    /// A stock count corrected the figure.
    Count,
    /// A sale made outside Tally (a till, another channel).
    Sale,
    /// Any other correction.
    Correction,
    /// `on_hand` set outright by an upsert.
    Set,
    /// Moved in from another warehouse of the same SKU.
    TransferIn,
    /// Moved out to another warehouse of the same SKU.
    TransferOut,
    /// Sold through a confirmed reservation.
    Confirmed,
}

impl MovementReason {
    pub fn as_str(self) -> &'static str {
        match self {
            MovementReason::Receive => "receive",
            MovementReason::Return => "return",
            MovementReason::Damage => "damage",
            MovementReason::Loss => "loss",
            MovementReason::Count => "count",
            MovementReason::Sale => "sale",
            MovementReason::Correction => "correction",
            MovementReason::Set => "set",
            MovementReason::TransferIn => "transfer_in",
            MovementReason::TransferOut => "transfer_out",
            MovementReason::Confirmed => "confirmed",
        }
    }
}

/// Who caused a movement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum Who {
    /// No principal was named.
    System,
    /// A principal, interned in the shard's principal table.
    Principal(u16),
    /// The reservation whose confirmation sold the units.
    Reservation(ReservationId),
}

/// One change of `on_hand`. Holds and releases change `reserved` only and are
/// not movements: they are visible as events and on the reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct Movement {
    pub at_ms: u64,
    pub delta: i64,
    pub on_hand_after: u64,
    pub who: Who,
    pub reason: MovementReason,
}

impl Movement {
    pub fn on_hand_before(&self) -> u64 {
        self.on_hand_after.saturating_add_signed(-self.delta)
    }
}

/// Descriptive attributes, set on few items, so kept behind one pointer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Attrs {
    pub name: Option<ItemName>,
    pub unit_price_minor: Option<u64>,
}

impl Attrs {
    pub(crate) fn is_empty(&self) -> bool {
        self.name.is_none() && self.unit_price_minor.is_none()
    }
}

/// Stock of one SKU in one warehouse.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub(crate) struct Item {
    pub on_hand: u64,
    pub reserved: u64,
    pub low_stock_threshold: u64,
    /// Starts at 1 and grows by one on every change of the item.
    pub version: u64,
    pub updated_at_ms: u64,
    /// Where the SKU's bytes start in the shard's string arena.
    pub sku_offset: u32,
    pub sku_len: u8,
    /// Next slot to overwrite once `history` is full (a ring).
    pub history_head: u8,
    pub warehouse: u16,
    pub attrs: Option<Box<Attrs>>,
    pub history: Vec<Movement>,
    /// Safety stock, damaged, quality control and incoming units
    /// (`states.rs`); `None` while all are zero and no date is set.
    pub states: Option<Box<StateLevels>>,
}

impl Item {
    /// On hand, less what is reserved and what may not be sold (safety
    /// stock, damaged, quality control).
    pub fn available(&self) -> u64 {
        let committed = self.committed();
        debug_assert!(committed <= self.on_hand, "reserved + unsellable {committed} > on_hand {}", self.on_hand);
        self.on_hand.saturating_sub(committed)
    }

    /// Units on hand that are not available: reserved plus unsellable.
    pub fn committed(&self) -> u64 {
        self.reserved.saturating_add(self.levels().unsellable())
    }

    /// The item's state levels (all zero if it has none).
    pub fn levels(&self) -> StateLevels {
        self.states.as_deref().copied().unwrap_or_default()
    }

    /// Stores state levels, dropping the box when they are all zero so
    /// equal levels are always stored the same way.
    pub fn set_levels(&mut self, levels: StateLevels) {
        self.states = (!levels.is_empty()).then(|| Box::new(levels));
    }

    pub fn status(&self) -> Status {
        Status::of(self.available(), self.low_stock_threshold)
    }

    /// Records a movement, overwriting the oldest once `capacity` are kept.
    /// The vector grows by doubling from one, so an item with one movement
    /// pays for one.
    pub fn record(&mut self, movement: Movement, capacity: usize) {
        if capacity == 0 {
            return;
        }
        if self.history.len() < capacity {
            if self.history.len() == self.history.capacity() {
                let grow = self.history.len().max(1).min(capacity - self.history.len());
                self.history.reserve_exact(grow);
            }
            self.history.push(movement);
            return;
        }
        // Full (or longer than a capacity lowered since): overwrite in ring order.
        let len = self.history.len();
        let head = usize::from(self.history_head) % len;
        self.history[head] = movement;
        self.history_head = u8::try_from((head + 1) % len).unwrap_or(0);
    }

    /// Movements, newest first.
    pub fn movements(&self) -> impl Iterator<Item = &Movement> {
        let len = self.history.len();
        let head = if len == 0 { 0 } else { usize::from(self.history_head) % len };
        // Oldest is at `head` once the ring has wrapped, at 0 before; either way
        // walking back from `head - 1` visits newest to oldest.
        (1..=len).map(move |back| &self.history[(head + len - back) % len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item() -> Item {
        Item {
            on_hand: 0,
            reserved: 0,
            low_stock_threshold: 0,
            version: 1,
            updated_at_ms: 0,
            sku_offset: 0,
            sku_len: 0,
            history_head: 0,
            warehouse: 0,
            attrs: None,
            history: Vec::new(),
            states: None,
        }
    }

    fn movement(at_ms: u64) -> Movement {
        Movement { at_ms, delta: 1, on_hand_after: at_ms, who: Who::System, reason: MovementReason::Receive }
    }

    #[test]
    fn status_follows_available_and_threshold() {
        assert_eq!(Status::of(0, 5), Status::OutOfStock);
        assert_eq!(Status::of(5, 5), Status::LowStock);
        assert_eq!(Status::of(6, 5), Status::InStock);
        assert_eq!(Status::of(1, 0), Status::InStock);
    }

    #[test]
    fn history_keeps_the_newest_movements_newest_first() {
        let mut item = item();
        for at in 1..=10 {
            item.record(movement(at), 4);
        }
        let seen: Vec<u64> = item.movements().map(|m| m.at_ms).collect();
        assert_eq!(seen, vec![10, 9, 8, 7]);
        assert_eq!(item.history.len(), 4);
    }

    #[test]
    fn history_before_wrapping_is_newest_first() {
        let mut item = item();
        for at in 1..=3 {
            item.record(movement(at), 8);
        }
        let seen: Vec<u64> = item.movements().map(|m| m.at_ms).collect();
        assert_eq!(seen, vec![3, 2, 1]);
        assert!(item.history.capacity() <= 4, "grows by doubling from one");
    }

    #[test]
    fn movement_knows_the_level_before_it() {
        let m = Movement { at_ms: 1, delta: -3, on_hand_after: 7, who: Who::System, reason: MovementReason::Damage };
        assert_eq!(m.on_hand_before(), 10);
    }
}
