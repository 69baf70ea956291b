//! Quantity states (issue 17 item 2) against a model: random sets of on
//! hand, safety stock and incoming, adjustments, moves between every pair
//! of states, holds, confirms, releases and expiries of one item, at random
//! log times. After every entry:
//! * every outcome is the model's: granted exactly when the model allows
//!   it, refused with the model's code (and figures) otherwise, and a
//!   refusal changes nothing;
//! * the item's levels equal the model's, with
//!   `on_hand = available + reserved + safety_stock + damaged + quality_control`
//!   and the status following `available`;
//! * backorders (issue 17 item 3): a hold takes beyond `available` up to
//!   the backorder room, its lines say how many units wait; new stock
//!   fills them oldest hold first; a confirm waits for them
//!   (`backorder_unfilled`); a release or expiry gives the room back;
//! * the state's full check passes; at the end a snapshot reloads to the
//!   same digest.

use engine::ShardState;
use engine::cmd::{AdjustReason, AttrUpdate, Command, SetStates, UpsertItem};
use engine::item::Status;
use engine::outcome::{Outcome, Refusal};
use engine::states::QuantityState;
use engine::testing::{Fixture, adjust, end_hold, hold, rid, upsert_item};
use proptest::prelude::*;

const SKU: &str = "A";
const WAREHOUSE: &str = "w1";
const THRESHOLD: u64 = 2;
const TTL_MS: u64 = 5_000;

#[derive(Clone, Debug)]
enum Op {
    Set {
        on_hand: Option<u64>,
        safety_stock: Option<u64>,
        incoming: Option<u64>,
        backorder_limit: Option<u64>,
    },
    /// `damage`: a write-off for damage, which takes `damaged` first.
    Adjust {
        delta: i64,
        damage: bool,
    },
    Move {
        from: usize,
        to: usize,
        quantity: u64,
    },
    Hold(u64),
    Confirm(usize),
    Release(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let level = |max: u64| proptest::option::weighted(0.5, 0..max);
    prop_oneof![
        2 => (level(30), level(6), level(10), level(8)).prop_map(|(on_hand, safety_stock, incoming, backorder_limit)| {
            Op::Set { on_hand, safety_stock, incoming, backorder_limit }
        }),
        2 => ((-8i64..8).prop_filter("not zero", |d| *d != 0), any::<bool>())
            .prop_map(|(delta, damage)| Op::Adjust { delta, damage }),
        5 => (0..QuantityState::ALL.len(), 0..QuantityState::ALL.len(), 1..6u64)
            .prop_map(|(from, to, quantity)| Op::Move { from, to, quantity }),
        3 => (1..6u64).prop_map(Op::Hold),
        2 => (0..30usize).prop_map(Op::Confirm),
        2 => (0..30usize).prop_map(Op::Release),
    ]
}

#[derive(Clone, Copy, Debug)]
struct ModelHold {
    units: u64,
    /// Units of `units` waiting for stock.
    backordered: u64,
    deadline_ms: u64,
    live: bool,
}

#[derive(Clone, Debug, Default)]
struct Model {
    on_hand: u64,
    safety_stock: u64,
    damaged: u64,
    quality_control: u64,
    incoming: u64,
    backorder_limit: u64,
    /// Every hold made (refused ones as `None`, so ids stay aligned).
    holds: Vec<Option<ModelHold>>,
    received: u64,
    sold: u64,
}

impl Model {
    fn reserved(&self) -> u64 {
        self.holds.iter().flatten().filter(|h| h.live).map(|h| h.units - h.backordered).sum()
    }

    fn backordered(&self) -> u64 {
        self.holds.iter().flatten().filter(|h| h.live).map(|h| h.backordered).sum()
    }

    /// New stock fills backorders, oldest hold first.
    fn fill(&mut self) {
        for at in 0..self.holds.len() {
            let available = self.available();
            if let Some(hold) = self.holds[at].as_mut().filter(|h| h.live && h.backordered > 0) {
                let units = hold.backordered.min(available);
                hold.backordered -= units;
            }
        }
    }

    fn unsellable(&self) -> u64 {
        self.safety_stock + self.damaged + self.quality_control
    }

    fn available(&self) -> u64 {
        self.on_hand - self.reserved() - self.unsellable()
    }

    fn level(&self, state: QuantityState) -> u64 {
        match state {
            QuantityState::Available => self.available(),
            QuantityState::SafetyStock => self.safety_stock,
            QuantityState::Damaged => self.damaged,
            QuantityState::QualityControl => self.quality_control,
            QuantityState::Incoming => self.incoming,
        }
    }

    fn level_mut(&mut self, state: QuantityState) -> Option<&mut u64> {
        match state {
            QuantityState::Available => None,
            QuantityState::SafetyStock => Some(&mut self.safety_stock),
            QuantityState::Damaged => Some(&mut self.damaged),
            QuantityState::QualityControl => Some(&mut self.quality_control),
            QuantityState::Incoming => Some(&mut self.incoming),
        }
    }

    /// Ends the holds due by `now_ms`; whether any was.
    fn expire(&mut self, now_ms: u64) -> bool {
        let mut expired = false;
        // In deadline order, as the engine expires them: each gives its
        // units back (filling later holds' backorders) before the next ends.
        let mut due: Vec<(u64, usize)> = self
            .holds
            .iter()
            .enumerate()
            .filter_map(|(at, h)| h.filter(|h| h.live && h.deadline_ms <= now_ms).map(|h| (h.deadline_ms, at)))
            .collect();
        due.sort_unstable();
        for (_, at) in due {
            if let Some(hold) = self.holds[at].as_mut() {
                hold.live = false;
                expired = true;
            }
            self.fill();
        }
        expired
    }

    /// The refusal a change of on hand (to `on_hand`) with these unsellable
    /// units gets, if any.
    fn below(&self, on_hand: i64, unsellable: u64) -> Option<&'static str> {
        let reserved = self.reserved();
        if on_hand < 0 || (on_hand as u64) < reserved {
            Some("below_reserved")
        } else if on_hand as u64 - reserved < unsellable {
            Some("below_unsellable")
        } else {
            None
        }
    }
}

fn upsert(on_hand: Option<u64>) -> UpsertItem {
    UpsertItem { on_hand, low_stock_threshold: Some(THRESHOLD), ..upsert_item(SKU, WAREHOUSE) }
}

fn refused_with(outcome: &Outcome, code: &str, step: usize) -> Result<(), TestCaseError> {
    prop_assert_eq!(outcome.refusal().map(Refusal::code), Some(code), "step {}: {:?}", step, outcome);
    Ok(())
}

/// The engine's shard and the model.
struct Run {
    shard: Fixture,
    model: Model,
}

impl Run {
    fn set(&mut self, step: usize, op: &Op) -> Result<Outcome, TestCaseError> {
        let Op::Set { on_hand, safety_stock, incoming, backorder_limit } = *op else { unreachable!() };
        let outcome = self.shard.one(Command::SetStates(Box::new(SetStates {
            safety_stock,
            incoming,
            backorder_limit,
            incoming_expected_at_ms: AttrUpdate::Keep,
            ..SetStates::keep(upsert(on_hand))
        })));
        let model = &mut self.model;
        let new_on_hand = on_hand.unwrap_or(model.on_hand);
        let unsellable = safety_stock.unwrap_or(model.safety_stock) + model.damaged + model.quality_control;
        match model.below(new_on_hand as i64, unsellable) {
            Some(code) => refused_with(&outcome, code, step)?,
            None => {
                prop_assert!(matches!(outcome, Outcome::Upserted { .. }), "step {}: {:?}", step, outcome);
                if new_on_hand > model.on_hand {
                    model.received += new_on_hand - model.on_hand;
                } else {
                    model.received -= model.on_hand - new_on_hand;
                }
                model.on_hand = new_on_hand;
                model.safety_stock = safety_stock.unwrap_or(model.safety_stock);
                model.incoming = incoming.unwrap_or(model.incoming);
                model.backorder_limit = backorder_limit.unwrap_or(model.backorder_limit);
            }
        }
        Ok(outcome)
    }

    fn adjust(&mut self, step: usize, delta: i64, damage: bool) -> Result<Outcome, TestCaseError> {
        let reason = if damage { AdjustReason::Damage } else { AdjustReason::Count };
        let outcome = self.shard.one(adjust(SKU, WAREHOUSE, delta, reason));
        let model = &mut self.model;
        let written_off = if damage && delta < 0 { model.damaged.min(delta.unsigned_abs()) } else { 0 };
        match model.below(model.on_hand as i64 + delta, model.unsellable() - written_off) {
            Some(code) => refused_with(&outcome, code, step)?,
            None => {
                prop_assert!(matches!(outcome, Outcome::Adjusted { .. }), "step {}: {:?}", step, outcome);
                model.damaged -= written_off;
                model.on_hand = model.on_hand.checked_add_signed(delta).unwrap_or(0);
                if delta > 0 {
                    model.received += delta.unsigned_abs();
                } else {
                    model.received -= delta.unsigned_abs();
                }
            }
        }
        Ok(outcome)
    }

    fn move_quantity(&mut self, step: usize, from: usize, to: usize, quantity: u64) -> Result<Outcome, TestCaseError> {
        let (from, to) = (QuantityState::ALL[from], QuantityState::ALL[to]);
        let outcome = self.shard.one(engine::testing::move_quantity(SKU, WAREHOUSE, from, to, quantity));
        let model = &mut self.model;
        if from == to || to == QuantityState::Incoming {
            refused_with(&outcome, "invalid_state", step)?;
        } else if model.level(from) < quantity {
            prop_assert_eq!(
                outcome.refusal(),
                Some(&Refusal::StateShort { state: from, requested: quantity, has: model.level(from) }),
                "step {}",
                step
            );
        } else {
            prop_assert!(matches!(outcome, Outcome::Moved { .. }), "step {}: {:?}", step, outcome);
            if let Some(level) = model.level_mut(from) {
                *level -= quantity;
            }
            if let Some(level) = model.level_mut(to) {
                *level += quantity;
            }
            if from == QuantityState::Incoming {
                model.on_hand += quantity;
                model.received += quantity;
            }
        }
        Ok(outcome)
    }

    fn hold(&mut self, step: usize, quantity: u64) -> Result<Outcome, TestCaseError> {
        let n = self.model.holds.len() as u64 + 1;
        let outcome = self.shard.one(hold(rid(n), &[(SKU, WAREHOUSE, quantity)], TTL_MS, None));
        let model = &mut self.model;
        let room = model.backorder_limit.saturating_sub(model.backordered());
        if quantity <= model.available() + room {
            let backordered = quantity.saturating_sub(model.available());
            let Outcome::Held { lines, .. } = &outcome else {
                return Err(TestCaseError::fail(format!("step {step}: not held: {outcome:?}")));
            };
            prop_assert_eq!(lines[0].backordered, backordered, "step {}", step);
            let hold = ModelHold { units: quantity, backordered, deadline_ms: self.shard.now_ms + TTL_MS, live: true };
            model.holds.push(Some(hold));
        } else {
            refused_with(&outcome, "insufficient_stock", step)?;
            model.holds.push(None);
        }
        Ok(outcome)
    }

    /// Confirms or releases hold `at`; the outcome, and whether it changes
    /// nothing (an ended or unknown hold).
    fn end(&mut self, step: usize, at: usize, confirm: bool) -> Result<(Outcome, bool), TestCaseError> {
        let outcome = self.shard.one(end_hold(rid(at as u64 + 1), confirm));
        let model = &mut self.model;
        if let Some(Some(hold)) = model.holds.get_mut(at)
            && hold.live
            && confirm
            && hold.backordered > 0
        {
            prop_assert_eq!(
                outcome.refusal(),
                Some(&Refusal::BackorderUnfilled { backordered: hold.backordered }),
                "step {}",
                step
            );
        } else if let Some(Some(hold)) = model.holds.get_mut(at)
            && hold.live
        {
            prop_assert!(!outcome.is_refused(), "step {}: {:?}", step, outcome);
            hold.live = false;
            if confirm {
                let units = hold.units;
                model.on_hand -= units;
                model.sold += units;
            }
        } else {
            // An ended or unknown hold: refused, or a replay of the
            // same end; either way nothing changes.
            let replayed =
                matches!(outcome, Outcome::Confirmed { replayed: true, .. } | Outcome::Released { replayed: true, .. });
            prop_assert!(outcome.is_refused() || replayed, "step {}: {:?}", step, outcome);
            return Ok((outcome, true));
        }
        Ok((outcome, false))
    }

    /// The item as the engine shows it equals the model, and a refusal
    /// (with no expiry in its entry) left it as it was.
    fn check_item(&self, step: usize, op: &Op, unchanged: bool, version_before: u64) -> Result<(), TestCaseError> {
        let model = &self.model;
        let item = self
            .shard
            .state
            .get_item(SKU, WAREHOUSE)
            .map_err(|e| TestCaseError::fail(e.to_string()))?
            .ok_or_else(|| TestCaseError::fail("item gone"))?;
        if unchanged {
            prop_assert_eq!(item.version, version_before, "step {}: a refusal changed the item", step);
        }
        let states = item.states;
        prop_assert_eq!(
            (item.on_hand, item.reserved, item.available),
            (model.on_hand, model.reserved(), model.available()),
            "step {}: {:?}",
            step,
            op
        );
        prop_assert_eq!(
            (states.safety_stock, states.damaged, states.quality_control, states.incoming),
            (model.safety_stock, model.damaged, model.quality_control, model.incoming),
            "step {}: {:?}",
            step,
            op
        );
        prop_assert_eq!(
            item.on_hand,
            item.available + item.reserved + states.safety_stock + states.damaged + states.quality_control
        );
        prop_assert_eq!(item.status, Status::of(model.available(), THRESHOLD), "step {}", step);
        prop_assert_eq!(
            (states.backorder_limit, states.backordered),
            (model.backorder_limit, model.backordered()),
            "step {}",
            step
        );
        // Never oversold: every unit sold came in, and what came in and was
        // not sold is on hand.
        prop_assert_eq!(item.on_hand + model.sold, model.received, "step {}", step);
        Ok(())
    }

    /// Every live hold's lines say what of them waits for stock.
    fn check_holds(&self, step: usize) -> Result<(), TestCaseError> {
        for (at, hold) in self.model.holds.iter().enumerate() {
            let Some(hold) = hold.filter(|h| h.live) else { continue };
            let view = self
                .shard
                .state
                .reservation(&rid(at as u64 + 1))
                .map_err(|e| TestCaseError::fail(e.to_string()))?
                .ok_or_else(|| TestCaseError::fail(format!("step {step}: hold {at} gone")))?;
            prop_assert_eq!(view.lines[0].backordered, hold.backordered, "step {}: hold {}", step, at);
        }
        self.shard.state.check_invariants().map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))
    }
}

fn run(ops: Vec<(u64, Op)>) -> Result<(), TestCaseError> {
    let model = Model { on_hand: 10, received: 10, ..Model::default() };
    let mut run = Run { shard: Fixture::new(), model };
    run.shard.one(Command::UpsertItem(upsert(Some(10))));
    for (step, (advance, op)) in ops.into_iter().enumerate() {
        run.shard.now_ms += advance;
        // Expiry runs before the command and changes the item by itself.
        let expired = run.model.expire(run.shard.now_ms);
        let version_before = run.shard.state.get_item(SKU, WAREHOUSE).ok().flatten().map_or(0, |item| item.version);
        let (outcome, changes_nothing) = match op {
            Op::Set { .. } => (run.set(step, &op)?, false),
            Op::Adjust { delta, damage } => (run.adjust(step, delta, damage)?, false),
            Op::Move { from, to, quantity } => (run.move_quantity(step, from, to, quantity)?, false),
            Op::Hold(quantity) => (run.hold(step, quantity)?, false),
            Op::Confirm(at) => run.end(step, at, true)?,
            Op::Release(at) => run.end(step, at, false)?,
        };
        run.model.fill();
        run.check_item(step, &op, (outcome.is_refused() || changes_nothing) && !expired, version_before)?;
        run.check_holds(step)?;
    }
    let state = &run.shard.state;
    let bytes = state.to_snapshot_bytes().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let reloaded = ShardState::from_snapshot_bytes(&bytes).map_err(TestCaseError::fail)?;
    prop_assert_eq!(reloaded.digest(), state.digest());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn quantity_states_follow_the_model(ops in proptest::collection::vec((0..3_000u64, op()), 1..60)) {
        run(ops)?;
    }
}

/// Stock that arrives fills the oldest backordered hold first, with an
/// event per filled reservation; a confirm waits until every unit is there.
#[test]
fn receiving_stock_fills_backorders_oldest_first_and_then_they_confirm() {
    let mut f = Fixture::new();
    let set = Command::SetStates(Box::new(SetStates { backorder_limit: Some(10), ..SetStates::keep(upsert(Some(2))) }));
    assert!(!f.one(set).is_refused());
    // Hold 1 takes the 2 on the shelf and backorders 3; hold 2 backorders 4.
    let first = f.one(hold(rid(1), &[(SKU, WAREHOUSE, 5)], TTL_MS, None));
    assert!(matches!(&first, Outcome::Held { lines, .. } if lines[0].backordered == 3), "{first:?}");
    let second = f.one(hold(rid(2), &[(SKU, WAREHOUSE, 4)], TTL_MS, None));
    assert!(matches!(&second, Outcome::Held { lines, .. } if lines[0].backordered == 4), "{second:?}");
    // Room is 10 - 7 = 3: a hold of 4 is short.
    let third = f.one(hold(rid(3), &[(SKU, WAREHOUSE, 4)], TTL_MS, None));
    assert_eq!(third.refusal().map(Refusal::code), Some("insufficient_stock"));
    let confirm = end_hold(rid(1), true);
    assert_eq!(f.one(confirm.clone()), Outcome::Refused(Refusal::BackorderUnfilled { backordered: 3 }));
    // 5 arrive: 3 fill hold 1 (the oldest), 2 go to hold 2.
    let applied = f.run(vec![adjust(SKU, WAREHOUSE, 5, AdjustReason::Receive)]);
    let filled: Vec<_> = applied
        .events
        .iter()
        .filter_map(|event| match event.kind {
            engine::EventKind::BackorderFilled { reservation, units, backordered, .. } => {
                Some((reservation, units, backordered))
            }
            _ => None,
        })
        .collect();
    assert_eq!(filled, vec![(rid(1), 3, 0), (rid(2), 2, 2)]);
    let Outcome::Adjusted { item } = &applied.outcomes[0] else { panic!("{:?}", applied.outcomes) };
    assert_eq!((item.on_hand, item.reserved, item.available, item.states.backordered), (7, 7, 0, 2));
    // Hold 1 is whole now and sells; hold 2 still waits for 2, and its
    // release gives back what it had and its room.
    assert!(matches!(f.one(confirm), Outcome::Confirmed { replayed: false, .. }));
    let release = end_hold(rid(2), false);
    assert!(!f.one(release).is_refused());
    let item = f.state.get_item(SKU, WAREHOUSE).ok().flatten().unwrap_or_else(|| panic!("no item"));
    assert_eq!((item.on_hand, item.reserved, item.available, item.states.backordered), (2, 0, 2, 0));
    f.state.check_invariants().unwrap_or_else(|e| panic!("{e}"));
}
