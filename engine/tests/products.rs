//! Product records and deletes against a model: random upserts, product
//! sets and clears, holds, releases, item deletes and SKU deletes. After
//! every entry:
//! * every item and product reads as the model has it (levels, version;
//!   a deleted item reads as absent, a re-created one starts at version 1);
//! * the SKU view, the full listing and availability show exactly the
//!   model's live items;
//! * a delete is refused `item_has_holds` exactly when a live hold reserves
//!   units of an item it would delete, with the model's counts, and then
//!   changes no item and no product and emits nothing; else each item it
//!   deletes emits one stock change with cause `delete`, `on_hand` to 0;
//! * the state's own full check passes, and at the end a snapshot reloads
//!   to the same digest.

use std::collections::BTreeMap;

use engine::cmd::{AttrUpdate, Command, DeleteItem, DeleteSku, Release, SetProduct};
use engine::event::Cause;
use engine::ids::ItemName;
use engine::outcome::{Outcome, Refusal};
use engine::query::{AvailabilityLine, ItemFilter};
use engine::testing::{Fixture, hold, rid, sku, upsert, wh};
use engine::{EventKind, ShardState};
use proptest::prelude::*;

const SKUS: [&str; 3] = ["A", "B", "C"];
const WAREHOUSES: [&str; 2] = ["w1", "w2"];
/// Long enough that no hold expires within a case.
const TTL_MS: u64 = 3_600_000;

#[derive(Clone, Debug)]
enum Op {
    Upsert { sku: usize, warehouse: usize, on_hand: u64 },
    SetName { sku: usize, name: Option<u8> },
    SetPrice { sku: usize, price_minor: Option<u64> },
    Hold { sku: usize, warehouse: usize, quantity: u64 },
    Release(usize),
    DeleteItem { sku: usize, warehouse: usize },
    DeleteSku(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..SKUS.len(), 0..WAREHOUSES.len(), 0..8u64)
            .prop_map(|(sku, warehouse, on_hand)| Op::Upsert { sku, warehouse, on_hand }),
        2 => (0..SKUS.len(), proptest::option::of(0..3u8)).prop_map(|(sku, name)| Op::SetName { sku, name }),
        1 => (0..SKUS.len(), proptest::option::of(0..5_000u64))
            .prop_map(|(sku, price_minor)| Op::SetPrice { sku, price_minor }),
        3 => (0..SKUS.len(), 0..WAREHOUSES.len(), 1..4u64)
            .prop_map(|(sku, warehouse, quantity)| Op::Hold { sku, warehouse, quantity }),
        2 => (0..30usize).prop_map(Op::Release),
        3 => (0..SKUS.len(), 0..WAREHOUSES.len()).prop_map(|(sku, warehouse)| Op::DeleteItem { sku, warehouse }),
        1 => (0..SKUS.len()).prop_map(Op::DeleteSku),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ModelItem {
    on_hand: u64,
    reserved: u64,
    version: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ModelProduct {
    name: Option<String>,
    price_minor: Option<u64>,
    version: u64,
}

#[derive(Clone, Debug)]
struct ModelHold {
    item: (usize, usize),
    quantity: u64,
    live: bool,
}

#[derive(Default)]
struct Model {
    items: BTreeMap<(usize, usize), ModelItem>,
    products: BTreeMap<usize, ModelProduct>,
    holds: Vec<ModelHold>,
}

impl Model {
    /// Live holds and units they reserve of the given items.
    fn held(&self, items: &[(usize, usize)]) -> (u64, u64) {
        let live = self.holds.iter().filter(|h| h.live && items.contains(&h.item));
        live.fold((0, 0), |(holds, units), h| (holds + 1, units + h.quantity))
    }

    fn set_product(&mut self, sku: usize, change: impl FnOnce(&mut ModelProduct)) {
        let current = self.products.get(&sku).cloned();
        let mut next = current.clone().unwrap_or_default();
        change(&mut next);
        let same = current.as_ref().is_some_and(|c| c.name == next.name && c.price_minor == next.price_minor);
        if !same {
            next.version = current.map_or(1, |c| c.version + 1);
            self.products.insert(sku, next);
        }
    }
}

/// The outcome, and the `(on_hand before, after)` of each delete stock
/// change the entry emitted (and how many events it emitted in all).
fn apply_with_events(shard: &mut Fixture, command: Command) -> (Outcome, Vec<(u64, u64)>, usize) {
    let mut applied = shard.run(vec![command]);
    let deletes = applied
        .events
        .iter()
        .filter_map(|event| match event.kind {
            EventKind::StockChanged { cause: Cause::Delete, levels, .. } => {
                Some((levels.on_hand_before, levels.on_hand_after))
            }
            _ => None,
        })
        .collect();
    let outcome = applied.outcomes.pop().unwrap_or_else(|| panic!("no outcome"));
    (outcome, deletes, applied.events.len())
}

fn name_of(n: u8) -> String {
    format!("Product {n}")
}

/// Everything a refused delete must leave as it was.
fn snapshot_of_reads(state: &ShardState) -> Vec<String> {
    let mut reads = Vec::new();
    for s in SKUS {
        reads.push(format!("{:?}", state.product(s)));
        reads.push(format!("{:?}", state.sku_items(s)));
    }
    reads
}

fn check_reads(state: &ShardState, model: &Model, step: usize) -> Result<(), TestCaseError> {
    for (s, sku_name) in SKUS.iter().enumerate() {
        for (w, warehouse) in WAREHOUSES.iter().enumerate() {
            let got = state.get_item(sku_name, warehouse).map_err(|e| TestCaseError::fail(e.0))?;
            let got =
                got.map(|item| ModelItem { on_hand: item.on_hand, reserved: item.reserved, version: item.version });
            prop_assert_eq!(got, model.items.get(&(s, w)).copied(), "step {}: {}/{}", step, sku_name, warehouse);
        }
        let view = state.sku_items(sku_name).map_err(|e| TestCaseError::fail(e.0))?;
        let expected: u64 = model.items.iter().filter(|((k, _), _)| *k == s).map(|(_, item)| item.on_hand).sum();
        prop_assert_eq!(view.on_hand, expected, "step {}: SKU {} total", step, sku_name);
        let got = state.product(sku_name).map(|p| ModelProduct {
            name: p.name,
            price_minor: p.price_minor,
            version: p.version,
        });
        prop_assert_eq!(got, model.products.get(&s).cloned(), "step {}: product {}", step, sku_name);
    }
    // The full listing shows the live items only.
    let mut listed = 0;
    let mut cursor = 0;
    loop {
        let filter = ItemFilter { cursor, limit: 100, scan_max: 1_000, ..ItemFilter::default() };
        let page = state.list_items(&filter).map_err(|e| TestCaseError::fail(e.0))?;
        listed += page.items.len();
        match page.next_cursor {
            Some(next) => cursor = next,
            None => break,
        }
    }
    prop_assert_eq!(listed, model.items.len(), "step {}: listing", step);
    prop_assert_eq!(state.stats().items, model.items.len() as u64, "step {}: stats", step);
    // Availability: a deleted item does not exist.
    let lines: Vec<AvailabilityLine> = model_keys()
        .map(|(s, w)| AvailabilityLine { sku: SKUS[s].into(), warehouse: WAREHOUSES[w].into(), quantity: 1 })
        .collect();
    let answer = state.availability(&lines);
    for ((s, w), line) in model_keys().zip(&answer.lines) {
        prop_assert_eq!(line.exists, model.items.contains_key(&(s, w)), "step {}: availability", step);
    }
    state.check_invariants().map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))
}

fn model_keys() -> impl Iterator<Item = (usize, usize)> {
    (0..SKUS.len()).flat_map(|s| (0..WAREHOUSES.len()).map(move |w| (s, w)))
}

/// The engine's shard and the model.
struct Run {
    shard: Fixture,
    model: Model,
}

impl Run {
    fn upsert(&mut self, step: usize, s: usize, w: usize, on_hand: u64) -> Result<(), TestCaseError> {
        let outcome = self.shard.one(upsert(SKUS[s], WAREHOUSES[w], on_hand, 0));
        match self.model.items.get_mut(&(s, w)) {
            Some(item) if on_hand < item.reserved => {
                prop_assert!(matches!(outcome, Outcome::Refused(Refusal::BelowReserved { .. })), "step {}", step);
            }
            Some(item) => {
                if item.on_hand != on_hand {
                    item.on_hand = on_hand;
                    item.version += 1;
                }
            }
            None => {
                prop_assert!(matches!(outcome, Outcome::Upserted { created: true, .. }), "step {}", step);
                self.model.items.insert((s, w), ModelItem { on_hand, reserved: 0, version: 1 });
            }
        }
        Ok(())
    }

    fn set_name(&mut self, step: usize, s: usize, name: Option<u8>) -> Result<(), TestCaseError> {
        let update = match name {
            Some(n) => AttrUpdate::Set(ItemName::new(name_of(n)).map_err(|e| TestCaseError::fail(e.to_string()))?),
            None => AttrUpdate::Clear,
        };
        let outcome =
            self.shard.one(Command::SetProduct(SetProduct { name: update, ..SetProduct::keep_all(sku(SKUS[s])) }));
        prop_assert!(matches!(outcome, Outcome::ProductSet { .. }), "step {}: {:?}", step, outcome);
        self.model.set_product(s, |p| p.name = name.map(name_of));
        Ok(())
    }

    fn set_price(&mut self, step: usize, s: usize, price_minor: Option<u64>) -> Result<(), TestCaseError> {
        let outcome = self.shard.one(Command::SetProduct(SetProduct {
            price_minor: price_minor.map_or(AttrUpdate::Clear, AttrUpdate::Set),
            ..SetProduct::keep_all(sku(SKUS[s]))
        }));
        prop_assert!(matches!(outcome, Outcome::ProductSet { .. }), "step {}: {:?}", step, outcome);
        self.model.set_product(s, |p| p.price_minor = price_minor);
        Ok(())
    }

    fn hold(&mut self, step: usize, s: usize, w: usize, quantity: u64) -> Result<(), TestCaseError> {
        let n = self.model.holds.len() as u64 + 1;
        let outcome = self.shard.one(hold(rid(n), &[(SKUS[s], WAREHOUSES[w], quantity)], TTL_MS, None));
        let granted = match self.model.items.get_mut(&(s, w)) {
            Some(item) if item.on_hand - item.reserved >= quantity => {
                item.reserved += quantity;
                item.version += 1;
                true
            }
            _ => false,
        };
        prop_assert_eq!(matches!(outcome, Outcome::Held { .. }), granted, "step {}: {:?}", step, outcome);
        self.model.holds.push(ModelHold { item: (s, w), quantity, live: granted });
        Ok(())
    }

    fn release(&mut self, step: usize, at: usize) -> Result<(), TestCaseError> {
        let outcome = self.shard.one(Command::Release(Release { id: rid(at as u64 + 1), principal: None }));
        let model = &mut self.model;
        if let Some(hold) = model.holds.get_mut(at).filter(|h| h.live) {
            prop_assert!(matches!(outcome, Outcome::Released { replayed: false, .. }), "step {}: {:?}", step, outcome);
            hold.live = false;
            if let Some(item) = model.items.get_mut(&hold.item) {
                item.reserved -= hold.quantity;
                item.version += 1;
            }
        }
        Ok(())
    }

    /// A refused delete: `item_has_holds` with the model's counts, and
    /// nothing changed.
    fn refused_delete(
        &self,
        step: usize,
        outcome: Outcome,
        held: (u64, u64),
        before: &[String],
    ) -> Result<(), TestCaseError> {
        let (holds, reserved) = held;
        prop_assert_eq!(outcome, Outcome::Refused(Refusal::ItemHasHolds { holds, reserved }), "step {}", step);
        prop_assert_eq!(
            snapshot_of_reads(&self.shard.state),
            before,
            "step {}: a refused delete changed something",
            step
        );
        Ok(())
    }

    fn delete_item(&mut self, step: usize, s: usize, w: usize) -> Result<(), TestCaseError> {
        let before = snapshot_of_reads(&self.shard.state);
        let command = Command::DeleteItem(DeleteItem {
            sku: sku(SKUS[s]),
            warehouse: wh(WAREHOUSES[w]),
            expect_version: None,
            principal: None,
        });
        let (outcome, deletes, events) = apply_with_events(&mut self.shard, command);
        let (holds, reserved) = self.model.held(&[(s, w)]);
        let expected: Vec<(u64, u64)> = match (self.model.items.get(&(s, w)), holds) {
            (Some(item), 0) => vec![(item.on_hand, 0)],
            _ => Vec::new(),
        };
        prop_assert_eq!(&deletes, &expected, "step {}: delete events", step);
        prop_assert_eq!(events, expected.len(), "step {}: a delete emits its stock change only", step);
        if !self.model.items.contains_key(&(s, w)) {
            prop_assert_eq!(outcome, Outcome::Refused(Refusal::ItemNotFound), "step {}", step);
        } else if holds > 0 {
            self.refused_delete(step, outcome, (holds, reserved), &before)?;
        } else {
            prop_assert_eq!(outcome, Outcome::Deleted { items: 1, product: false }, "step {}", step);
            self.model.items.remove(&(s, w));
        }
        Ok(())
    }

    fn delete_sku(&mut self, step: usize, s: usize) -> Result<(), TestCaseError> {
        let before = snapshot_of_reads(&self.shard.state);
        let command = Command::DeleteSku(DeleteSku { sku: sku(SKUS[s]), principal: None });
        let (outcome, deletes, events) = apply_with_events(&mut self.shard, command);
        let model = &mut self.model;
        let items: Vec<(usize, usize)> = model.items.keys().copied().filter(|(k, _)| *k == s).collect();
        let (holds, reserved) = model.held(&items);
        let expected: Vec<(u64, u64)> = if holds == 0 {
            // In the order of the shard's warehouses: compare sorted.
            items.iter().map(|key| (model.items[key].on_hand, 0)).collect()
        } else {
            Vec::new()
        };
        let mut sorted = deletes.clone();
        sorted.sort_unstable();
        let mut expected_sorted = expected.clone();
        expected_sorted.sort_unstable();
        prop_assert_eq!(sorted, expected_sorted, "step {}: delete events", step);
        prop_assert_eq!(events, expected.len(), "step {}: a delete emits its stock changes only", step);
        if items.is_empty() && !model.products.contains_key(&s) {
            prop_assert_eq!(outcome, Outcome::Refused(Refusal::ItemNotFound), "step {}", step);
        } else if holds > 0 {
            self.refused_delete(step, outcome, (holds, reserved), &before)?;
        } else {
            let product = model.products.remove(&s).is_some();
            prop_assert_eq!(
                outcome,
                Outcome::Deleted { items: u32::try_from(items.len()).unwrap_or(u32::MAX), product },
                "step {}",
                step
            );
            for key in items {
                model.items.remove(&key);
            }
        }
        Ok(())
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut run = Run { shard: Fixture::new(), model: Model::default() };
    for (step, op) in ops.into_iter().enumerate() {
        run.shard.now_ms += 10;
        match op {
            Op::Upsert { sku: s, warehouse: w, on_hand } => run.upsert(step, s, w, on_hand)?,
            Op::SetName { sku: s, name } => run.set_name(step, s, name)?,
            Op::SetPrice { sku: s, price_minor } => run.set_price(step, s, price_minor)?,
            Op::Hold { sku: s, warehouse: w, quantity } => run.hold(step, s, w, quantity)?,
            Op::Release(at) => run.release(step, at)?,
            Op::DeleteItem { sku: s, warehouse: w } => run.delete_item(step, s, w)?,
            Op::DeleteSku(s) => run.delete_sku(step, s)?,
        }
        check_reads(&run.shard.state, &run.model, step)?;
    }
    let (state, model) = (&run.shard.state, &run.model);
    let bytes = state.to_snapshot_bytes().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let loaded = ShardState::from_snapshot_bytes(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    loaded.check_invariants().map_err(TestCaseError::fail)?;
    prop_assert_eq!(loaded.digest(), state.digest());
    check_reads(&loaded, model, usize::MAX)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn products_and_deletes_follow_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}
