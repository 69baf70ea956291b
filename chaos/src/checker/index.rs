//! What each operation means to the model: the history sorted out per
//! item, every op classified as an [`Act`] (what it does) and a [`Res`]
//! (what its answer tells), and the holds clients were told about. Every
//! check reads the history through this [`Index`].

use std::collections::HashMap;

use crate::history::{Call, History, Item, Outcome};

/// What an operation does to its item. Holds are numbered per run (index
/// into [`Index::holds`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Act {
    /// `hold` is `None` when nobody knows the id (unknown outcome).
    Hold {
        qty: i64,
        hold: Option<usize>,
    },
    Confirm {
        hold: usize,
        qty: i64,
    },
    Release {
        hold: usize,
        qty: i64,
    },
    Extend {
        hold: usize,
    },
    Adjust {
        delta: i64,
    },
    Read {
        on_hand: i64,
        reserved: i64,
    },
}

impl Act {
    pub(super) fn hold(self) -> Option<usize> {
        match self {
            Act::Hold { hold, .. } => hold,
            Act::Confirm { hold, .. } | Act::Release { hold, .. } | Act::Extend { hold } => Some(hold),
            Act::Adjust { .. } | Act::Read { .. } => None,
        }
    }

    /// Whether an acknowledged operation of this kind changes levels or
    /// hold states.
    pub(super) fn changes_state(self) -> bool {
        matches!(self, Act::Hold { .. } | Act::Confirm { .. } | Act::Release { .. } | Act::Adjust { .. })
    }
}

/// What an operation's answer tells the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Res {
    /// `Held`, `Done` or `Levels`: it took effect with exactly this answer.
    Ack,
    Refused(Refusal),
    Unknown,
}

/// What a refusal says about the state it was decided in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Refusal {
    /// `insufficient_stock` (hold) or `below_reserved` (adjust): the model
    /// must refuse it too.
    Stock,
    /// `reservation_confirmed`.
    Confirmed,
    /// `reservation_released`.
    Released,
    /// `reservation_expired`, `reservation_not_found`: not held.
    NotHeld,
    /// Any other code (validation, limits): says nothing about the state.
    Other,
}

pub(super) fn refusal_of(call: &Call, code: &str) -> Refusal {
    match (call, code) {
        (Call::Hold { .. }, "insufficient_stock") | (Call::Adjust { .. }, "below_reserved") => Refusal::Stock,
        (Call::Confirm { .. } | Call::Release { .. } | Call::Extend { .. }, "reservation_confirmed") => {
            Refusal::Confirmed
        }
        (Call::Confirm { .. } | Call::Release { .. } | Call::Extend { .. }, "reservation_released") => {
            Refusal::Released
        }
        (
            Call::Confirm { .. } | Call::Release { .. } | Call::Extend { .. },
            "reservation_expired" | "reservation_not_found",
        ) => Refusal::NotHeld,
        _ => Refusal::Other,
    }
}

pub(super) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A hold some client was told about (`Held` with an id).
#[derive(Clone, Debug)]
pub(super) struct HoldInfo {
    pub(super) item: usize,
    pub(super) qty: i64,
    /// Position in `History::ops` of the `Hold` that returned it.
    pub(super) op: usize,
    pub(super) id: String,
}

/// One operation of one item, as the linearizability search sees it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Pos {
    /// Position in `History::ops`.
    pub(super) op: usize,
    pub(super) invoke_us: u64,
    /// `u64::MAX` for unknown outcomes: they may take effect at any time.
    pub(super) complete_us: u64,
    pub(super) act: Act,
    pub(super) res: Res,
}

/// The history sorted out per item.
pub(super) struct Index {
    pub(super) items: Vec<Item>,
    pub(super) initial: Vec<i64>,
    pub(super) holds: Vec<HoldInfo>,
    /// Per history op: its item and meaning, `None` when it has none.
    pub(super) classified: Vec<Option<(usize, Act, Res)>>,
    /// Per item: the operations the search needs, sorted by invocation.
    pub(super) seqs: Vec<Vec<Pos>>,
    pub(super) notes: Vec<String>,
}

impl Index {
    pub(super) fn build(history: &History) -> Index {
        let mut interned = Interned::of_initial(history);
        // Holds first: a confirm names its hold by id.
        let told = Told::collect(history, &mut interned);
        let (classified, unattributed) = classify(history, &told);
        let mut notes = Vec::new();
        if unattributed > 0 {
            notes.push(format!(
                "{unattributed} confirm/release/extend operation(s) name a reservation no Hold returned; not checked"
            ));
        }
        if told.duplicate_held > 0 {
            notes.push(format!(
                "{} Hold(s) returned an id already returned before (replays); counted once",
                told.duplicate_held
            ));
        }
        let seqs = sequences(history, &classified, interned.items.len());
        let Interned { items, initial, .. } = interned;
        Index { items, initial, holds: told.holds, classified, seqs, notes }
    }
}

/// The items in order of first mention, with their initial stock.
struct Interned {
    items: Vec<Item>,
    item_of: HashMap<Item, usize>,
    initial: Vec<i64>,
}

impl Interned {
    /// The items of the history's initial stock.
    fn of_initial(history: &History) -> Interned {
        let mut interned = Interned { items: Vec::new(), item_of: HashMap::new(), initial: Vec::new() };
        for (item, on_hand) in &history.initial {
            let at = interned.intern(item.clone());
            interned.initial[at] = to_i64(*on_hand);
        }
        interned
    }

    fn intern(&mut self, item: Item) -> usize {
        let Interned { items, item_of, initial } = self;
        *item_of.entry(item.clone()).or_insert_with(|| {
            items.push(item);
            initial.push(0);
            items.len() - 1
        })
    }
}

/// The holds clients were told about, and the item of every op that names
/// one directly.
struct Told<'h> {
    holds: Vec<HoldInfo>,
    hold_by_id: HashMap<&'h str, usize>,
    duplicate_held: usize,
    op_item: Vec<Option<usize>>,
}

impl<'h> Told<'h> {
    fn collect(history: &'h History, interned: &mut Interned) -> Told<'h> {
        let mut holds: Vec<HoldInfo> = Vec::new();
        let mut hold_by_id: HashMap<&str, usize> = HashMap::new();
        let mut duplicate_held = 0usize;
        let mut op_item: Vec<Option<usize>> = vec![None; history.ops.len()];
        for (at, op) in history.ops.iter().enumerate() {
            match &op.call {
                Call::Hold { sku, warehouse, qty } => {
                    let item = interned.intern((sku.clone(), warehouse.clone()));
                    op_item[at] = Some(item);
                    if let Outcome::Held { reservation, .. } = &op.outcome {
                        if hold_by_id.contains_key(reservation.as_str()) {
                            duplicate_held += 1;
                        } else {
                            hold_by_id.insert(reservation, holds.len());
                            holds.push(HoldInfo { item, qty: to_i64(*qty), op: at, id: reservation.clone() });
                        }
                    }
                }
                Call::Adjust { sku, warehouse, .. } | Call::Read { sku, warehouse } => {
                    op_item[at] = Some(interned.intern((sku.clone(), warehouse.clone())));
                }
                Call::Confirm { .. } | Call::Release { .. } | Call::Extend { .. } => {}
            }
        }
        Told { holds, hold_by_id, duplicate_held, op_item }
    }
}

/// Per history op: its item and meaning, `None` when it has none.
type Classified = Vec<Option<(usize, Act, Res)>>;

/// Per history op: its item and meaning; and how many ops name a
/// reservation no `Hold` returned.
fn classify(history: &History, told: &Told) -> (Classified, usize) {
    let Told { holds, hold_by_id, op_item, .. } = told;
    let mut unattributed = 0usize;
    let mut classified = Vec::with_capacity(history.ops.len());
    for (at, op) in history.ops.iter().enumerate() {
        let res = match &op.outcome {
            Outcome::Held { .. } | Outcome::Done | Outcome::Levels { .. } => Res::Ack,
            Outcome::Refused { code } => Res::Refused(refusal_of(&op.call, code)),
            Outcome::Unknown { .. } => Res::Unknown,
        };
        let meaning = match &op.call {
            Call::Hold { qty, .. } => {
                let hold = match &op.outcome {
                    Outcome::Held { reservation, .. } => match hold_by_id.get(reservation.as_str()) {
                        Some(&h) if holds[h].op == at => Some(h),
                        // A second `Held` with an id already seen is a
                        // replayed answer, not a second hold.
                        _ => {
                            classified.push(None);
                            continue;
                        }
                    },
                    _ => None,
                };
                op_item[at].map(|item| (item, Act::Hold { qty: to_i64(*qty), hold }, res))
            }
            Call::Confirm { reservation } | Call::Release { reservation } | Call::Extend { reservation, .. } => {
                match hold_by_id.get(reservation.as_str()) {
                    None => {
                        unattributed += 1;
                        None
                    }
                    Some(&hold) => {
                        let qty = holds[hold].qty;
                        let act = match &op.call {
                            Call::Confirm { .. } => Act::Confirm { hold, qty },
                            Call::Release { .. } => Act::Release { hold, qty },
                            _ => Act::Extend { hold },
                        };
                        Some((holds[hold].item, act, res))
                    }
                }
            }
            Call::Adjust { delta, .. } => op_item[at].map(|item| (item, Act::Adjust { delta: *delta }, res)),
            Call::Read { .. } => match op.outcome {
                Outcome::Levels { on_hand, reserved } => op_item[at]
                    .map(|item| (item, Act::Read { on_hand: to_i64(on_hand), reserved: to_i64(reserved) }, res)),
                // A read that did not return levels tells nothing.
                _ => None,
            },
        };
        classified.push(meaning);
    }
    (classified, unattributed)
}

/// Per item: the operations the search needs, sorted by invocation.
fn sequences(history: &History, classified: &[Option<(usize, Act, Res)>], items: usize) -> Vec<Vec<Pos>> {
    let mut seqs: Vec<Vec<Pos>> = vec![Vec::new(); items];
    for (at, meaning) in classified.iter().enumerate() {
        let Some((item, act, res)) = *meaning else { continue };
        let op = &history.ops[at];
        let keep = match res {
            // An unknown read or extend changes nothing and shows nothing.
            Res::Unknown => act.changes_state(),
            Res::Refused(Refusal::Other) => false,
            Res::Ack | Res::Refused(_) => true,
        };
        if !keep {
            continue;
        }
        let complete_us = if res == Res::Unknown { u64::MAX } else { op.complete_us.max(op.invoke_us) };
        seqs[item].push(Pos { op: at, invoke_us: op.invoke_us, complete_us, act, res });
    }
    for seq in &mut seqs {
        seq.sort_by_key(|p| (p.invoke_us, p.op));
    }
    seqs
}
