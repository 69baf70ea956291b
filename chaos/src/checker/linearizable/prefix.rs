//! The canonical start of a window: every acknowledged effect that
//! completed before the cut applied ([`Prefix`]), the acknowledged ops in
//! flight across it, and the earlier unknown writes still free to take
//! effect, grouped by what they would do ([`GroupKey`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::model::{CONFIRMED, HELD, RELEASED};
use crate::checker::index::{Act, HoldInfo, Pos, Res};

/// Unknown writes taken as having happened, by group, with counts.
pub(super) type Hint = BTreeMap<GroupKey, u32>;

/// Pending unknown writes from before a window, grouped: unknown holds of
/// the same size (nobody knows their ids) are interchangeable, and so are
/// unknown adjustments of the same delta; a hold's unknown confirm (or
/// release) can only take effect once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum GroupKey {
    Hold(i64),
    Adjust(i64),
    Confirm(usize),
    Release(usize),
}

impl GroupKey {
    pub(super) fn of(act: Act) -> Option<GroupKey> {
        match act {
            Act::Hold { qty, .. } => Some(GroupKey::Hold(qty)),
            Act::Adjust { delta } => Some(GroupKey::Adjust(delta)),
            Act::Confirm { hold, .. } => Some(GroupKey::Confirm(hold)),
            Act::Release { hold, .. } => Some(GroupKey::Release(hold)),
            Act::Extend { .. } | Act::Read { .. } => None,
        }
    }

    pub(super) fn act(self, holds: &[HoldInfo]) -> Act {
        match self {
            GroupKey::Hold(qty) => Act::Hold { qty, hold: None },
            GroupKey::Adjust(delta) => Act::Adjust { delta },
            GroupKey::Confirm(hold) => Act::Confirm { hold, qty: holds[hold].qty },
            GroupKey::Release(hold) => Act::Release { hold, qty: holds[hold].qty },
        }
    }
}

pub(super) fn invoke_at(seq: &[Pos], at: usize) -> u64 {
    seq.get(at).map_or(u64::MAX, |p| p.invoke_us)
}

/// The canonical state at a cut, built by sweeping the item's operations.
/// Cuts must be visited in increasing order.
#[derive(Clone, Debug)]
pub(super) struct Prefix {
    /// Operations before this position are swept.
    pub(super) next: usize,
    pub(super) on_hand: i64,
    pub(super) reserved: i64,
    pub(super) status: HashMap<usize, u8>,
    /// Acknowledged state-changing operations in flight at the cut:
    /// (complete, position).
    pub(super) in_flight: BTreeSet<(u64, usize)>,
    pub(super) pending: BTreeMap<GroupKey, u32>,
}

impl Prefix {
    pub(super) fn new(initial: i64) -> Prefix {
        Prefix {
            next: 0,
            on_hand: initial,
            reserved: 0,
            status: HashMap::new(),
            in_flight: BTreeSet::new(),
            pending: BTreeMap::new(),
        }
    }

    /// Moves the cut to just before position `cut`.
    pub(super) fn advance(&mut self, seq: &[Pos], cut: usize) {
        debug_assert!(cut >= self.next, "cuts go forward");
        let cut_us = invoke_at(seq, cut);
        for (at, p) in seq.iter().enumerate().take(cut).skip(self.next) {
            match p.res {
                Res::Unknown => {
                    if let Some(key) = GroupKey::of(p.act) {
                        let count = self.pending.entry(key).or_insert(0);
                        *count = match key {
                            GroupKey::Confirm(_) | GroupKey::Release(_) => 1,
                            GroupKey::Hold(_) | GroupKey::Adjust(_) => count.saturating_add(1),
                        };
                    }
                }
                Res::Ack if p.act.changes_state() => {
                    if p.complete_us < cut_us {
                        self.take_effect(p.act);
                    } else {
                        self.in_flight.insert((p.complete_us, at));
                    }
                }
                Res::Ack | Res::Refused(_) => {}
            }
        }
        self.next = self.next.max(cut);
        while let Some(&(complete_us, at)) = self.in_flight.first() {
            if complete_us >= cut_us {
                break;
            }
            self.in_flight.remove(&(complete_us, at));
            self.take_effect(seq[at].act);
        }
    }

    /// Applies an acknowledged effect. A hold's end overrides its start
    /// whichever is swept first.
    fn take_effect(&mut self, act: Act) {
        match act {
            Act::Hold { qty, hold } => {
                self.reserved = self.reserved.saturating_add(qty);
                if let Some(hold) = hold {
                    self.status.entry(hold).or_insert(HELD);
                }
            }
            Act::Confirm { hold, qty } => {
                self.on_hand = self.on_hand.saturating_sub(qty);
                self.reserved = self.reserved.saturating_sub(qty);
                self.status.insert(hold, CONFIRMED);
            }
            Act::Release { hold, qty } => {
                self.reserved = self.reserved.saturating_sub(qty);
                self.status.insert(hold, RELEASED);
            }
            Act::Adjust { delta } => self.on_hand = self.on_hand.saturating_add(delta),
            Act::Extend { .. } | Act::Read { .. } => {}
        }
    }
}
