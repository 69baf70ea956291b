//! The model of one item in a window's search: levels and hold states
//! ([`St`]), whether an op's answer fits a state ([`fits`]), and what an op
//! does to it ([`apply`], [`effect_of`]).

use crate::checker::index::{Act, Refusal, Res};

/// Hold states in the search.
pub(super) const NONE: u8 = 0;
pub(super) const HELD: u8 = 1;
pub(super) const CONFIRMED: u8 = 2;
pub(super) const RELEASED: u8 = 3;

/// How an entry takes part in a window's search.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Mode {
    /// An operation of the window: its answer must fit the state.
    Checked,
    /// Acknowledged before the window but still in flight at its start:
    /// its effect applies at some point, its answer is not checked.
    Relaxed,
    /// Outcome unknown: may take effect (if the model allows it) or never.
    Unknown,
}

/// The model state within a window: levels, the states of the holds the
/// window touches (by slot), and how many of each group of pending unknown
/// writes have taken effect.
#[derive(Clone, Debug)]
pub(super) struct St {
    pub(super) on_hand: i64,
    pub(super) reserved: i64,
    pub(super) slots: Vec<u8>,
    pub(super) used: Vec<u32>,
}

impl St {
    fn status(&self, slot: Option<usize>) -> u8 {
        slot.and_then(|s| self.slots.get(s).copied()).unwrap_or(NONE)
    }

    fn set(&mut self, slot: Option<usize>, status: u8) {
        if let Some(s) = slot.and_then(|s| self.slots.get_mut(s)) {
            *s = status;
        }
    }
}

fn refusal_fits(refusal: Refusal, status: u8) -> bool {
    match refusal {
        Refusal::Confirmed => status == CONFIRMED,
        Refusal::Released => status == RELEASED,
        Refusal::NotHeld => status != HELD,
        Refusal::Stock | Refusal::Other => true,
    }
}

/// Whether a checked entry leaves the state as it is (so it may be placed
/// greedily as soon as it fits).
pub(super) fn leaves_state(act: Act, res: Res) -> bool {
    matches!(res, Res::Refused(_)) || matches!(act, Act::Read { .. } | Act::Extend { .. })
}

/// Whether a state-preserving entry's answer fits `st`.
pub(super) fn fits(st: &St, act: Act, slot: Option<usize>, res: Res) -> bool {
    let available = st.on_hand.saturating_sub(st.reserved);
    match (act, res) {
        (Act::Read { on_hand, reserved }, Res::Ack) => st.on_hand == on_hand && st.reserved == reserved,
        (Act::Extend { .. }, Res::Ack) => st.status(slot) == HELD,
        (Act::Hold { qty, .. }, Res::Refused(Refusal::Stock)) => available < qty,
        (Act::Adjust { delta }, Res::Refused(Refusal::Stock)) => !adjust_allowed(st, delta),
        (Act::Confirm { .. } | Act::Release { .. } | Act::Extend { .. }, Res::Refused(refusal)) => {
            refusal_fits(refusal, st.status(slot))
        }
        _ => true,
    }
}

fn adjust_allowed(st: &St, delta: i64) -> bool {
    let on_hand = st.on_hand.saturating_add(delta);
    on_hand >= st.reserved && on_hand >= 0
}

/// Applies a state-changing entry; false when its answer (or, for an
/// unknown write, its taking effect) does not fit the state.
///
/// An unknown write is checked against its hold's state but not against
/// the levels: it may have taken effect before ops whose effects the state
/// already holds (the canonical start of a window applies every completed
/// op and leaves earlier unknown writes pending), so the levels here can be
/// short of what it found. This also lets it always move later past an op
/// that passes without it, which [`Search::enter`](super::search::Search::enter) relies on. The price is
/// a little leniency: an unknown write may have "happened" where the
/// service would have refused it for want of stock (an oversell that
/// results still shows in reads and final levels).
pub(super) fn apply(st: &mut St, act: Act, slot: Option<usize>, mode: Mode) -> bool {
    let check_status = mode != Mode::Relaxed;
    let checked = mode == Mode::Checked;
    match act {
        Act::Hold { qty, .. } => {
            if checked && st.on_hand.saturating_sub(st.reserved) < qty {
                return false;
            }
            st.reserved = st.reserved.saturating_add(qty);
            st.set(slot, HELD);
        }
        Act::Confirm { qty, .. } => {
            if check_status && st.status(slot) != HELD {
                return false;
            }
            st.on_hand = st.on_hand.saturating_sub(qty);
            st.reserved = st.reserved.saturating_sub(qty);
            st.set(slot, CONFIRMED);
        }
        Act::Release { qty, .. } => {
            if check_status && st.status(slot) != HELD {
                return false;
            }
            st.reserved = st.reserved.saturating_sub(qty);
            st.set(slot, RELEASED);
        }
        Act::Adjust { delta } => {
            if checked && !adjust_allowed(st, delta) {
                return false;
            }
            st.on_hand = st.on_hand.saturating_add(delta);
        }
        Act::Extend { .. } | Act::Read { .. } => {}
    }
    true
}

/// What a state-changing op adds to (on hand, reserved) when it takes effect.
pub(super) fn effect_of(act: Act) -> (i64, i64) {
    match act {
        Act::Hold { qty, .. } => (0, qty),
        Act::Confirm { qty, .. } => (qty.saturating_neg(), qty.saturating_neg()),
        Act::Release { qty, .. } => (0, qty.saturating_neg()),
        Act::Adjust { delta } => (delta, 0),
        Act::Extend { .. } | Act::Read { .. } => (0, 0),
    }
}
