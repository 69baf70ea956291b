//! Quantity states of an item, as Shopify models them (issue 17 item 2).
//!
//! Every unit physically in a warehouse is `on_hand`. Of those, some are
//! held for shoppers (`reserved`) and some may not be sold at all:
//! `safety_stock` (a buffer kept back on purpose), `damaged`, and
//! `quality_control` (waiting for inspection). What is left is `available`:
//!
//! ```text
//! on_hand = available + reserved + safety_stock + damaged + quality_control
//! ```
//!
//! `incoming` units are not on hand yet (ordered, in transit), so they count
//! in none of these; moving them into any on-hand state receives them and
//! raises `on_hand`.
//!
//! Backorders (issue 17 item 3) live here too: `backorder_limit` (units a
//! hold may take beyond stock) and `backordered` (units so held, waiting).
//!
//! The levels sit behind one pointer on the item (`Item::states`), `None`
//! while every level is zero and no date is set, so items that never use
//! them pay eight bytes.

use std::fmt;

use rkyv::{Archive, Deserialize, Serialize};

/// A quantity state a move names as its source or destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum QuantityState {
    /// Sellable: what is on hand and neither reserved nor kept back.
    Available,
    /// On hand, never sold: a buffer against miscounts.
    SafetyStock,
    /// On hand, not sellable: broken or spoiled.
    Damaged,
    /// On hand, not sellable until it passes inspection.
    QualityControl,
    /// Not on hand yet: ordered or in transit.
    Incoming,
}

impl QuantityState {
    pub const ALL: [QuantityState; 5] = [
        QuantityState::Available,
        QuantityState::SafetyStock,
        QuantityState::Damaged,
        QuantityState::QualityControl,
        QuantityState::Incoming,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            QuantityState::Available => "available",
            QuantityState::SafetyStock => "safety_stock",
            QuantityState::Damaged => "damaged",
            QuantityState::QualityControl => "quality_control",
            QuantityState::Incoming => "incoming",
        }
    }

    /// Whether units in this state are part of `on_hand`.
    pub fn is_on_hand(self) -> bool {
        self != QuantityState::Incoming
    }
}

impl fmt::Display for QuantityState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for QuantityState {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        QuantityState::ALL.into_iter().find(|state| state.as_str() == text).ok_or(())
    }
}

/// The levels of an item's states other than `available` and `reserved`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct StateLevels {
    pub safety_stock: u64,
    pub damaged: u64,
    pub quality_control: u64,
    pub incoming: u64,
    /// When the incoming units are expected (Unix ms), as the caller set it.
    pub incoming_expected_at_ms: Option<u64>,
    /// Units live holds may take beyond stock (preorders, backorders):
    /// `backordered` never grows past it.
    pub backorder_limit: u64,
    /// Units held beyond stock by live holds, waiting for stock; filled
    /// oldest hold first as stock becomes available, so an item never has
    /// units available and units backordered at once.
    pub backordered: u64,
}

impl StateLevels {
    /// Units on hand that may not be sold: safety stock, damaged, quality
    /// control. Each is at most `QUANTITY_MAX` (10^15), so the sum fits.
    pub fn unsellable(&self) -> u64 {
        self.safety_stock.saturating_add(self.damaged).saturating_add(self.quality_control)
    }

    pub fn is_empty(&self) -> bool {
        *self == StateLevels::default()
    }

    /// The level of a state kept here (`None` for `available`, which is
    /// derived).
    pub fn get(&self, state: QuantityState) -> Option<u64> {
        match state {
            QuantityState::Available => None,
            QuantityState::SafetyStock => Some(self.safety_stock),
            QuantityState::Damaged => Some(self.damaged),
            QuantityState::QualityControl => Some(self.quality_control),
            QuantityState::Incoming => Some(self.incoming),
        }
    }

    /// The level of a state kept here, to change; `None` for `available`.
    pub fn get_mut(&mut self, state: QuantityState) -> Option<&mut u64> {
        match state {
            QuantityState::Available => None,
            QuantityState::SafetyStock => Some(&mut self.safety_stock),
            QuantityState::Damaged => Some(&mut self.damaged),
            QuantityState::QualityControl => Some(&mut self.quality_control),
            QuantityState::Incoming => Some(&mut self.incoming),
        }
    }

    /// The largest level, for the bound check.
    pub fn max_level(&self) -> u64 {
        self.safety_stock
            .max(self.damaged)
            .max(self.quality_control)
            .max(self.incoming)
            .max(self.backorder_limit)
            .max(self.backordered)
    }

    /// Units a new hold may still take beyond stock.
    pub fn backorder_room(&self) -> u64 {
        self.backorder_limit.saturating_sub(self.backordered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_names() {
        for state in QuantityState::ALL {
            assert_eq!(state.as_str().parse::<QuantityState>(), Ok(state));
        }
        assert_eq!("committed".parse::<QuantityState>(), Err(()));
    }

    #[test]
    fn only_incoming_is_not_on_hand() {
        let off: Vec<_> = QuantityState::ALL.into_iter().filter(|s| !s.is_on_hand()).collect();
        assert_eq!(off, vec![QuantityState::Incoming]);
    }

    #[test]
    fn unsellable_sums_the_on_hand_states_kept_back() {
        let levels =
            StateLevels { safety_stock: 2, damaged: 3, quality_control: 4, incoming: 100, ..StateLevels::default() };
        assert_eq!(levels.unsellable(), 9);
        assert!(!levels.is_empty());
        assert!(StateLevels::default().is_empty());
    }
}
