//! Bundle definitions against a model: random definitions (valid and not),
//! removals, items created, and holds naming SKUs that may be bundles.
//! After every entry:
//! * a definition is accepted exactly when the model says it is valid and
//!   the SKU has no items, and a removal exactly when the SKU is a bundle;
//! * an item is created exactly when its SKU is no bundle;
//! * a hold naming bundles is refused with exactly the model's bundle lines
//!   and their components, and changes no stock; a hold naming none is
//!   answered as if no bundle existed;
//! * the state's own full check passes, and a snapshot reloads to the same
//!   digest and the same definitions.

use std::collections::BTreeMap;

use engine::bundle::Component;
use engine::cmd::{Command, SetBundle};
use engine::outcome::{BundleLine, Outcome, Refusal};
use engine::testing::{Fixture, hold_any, qty, rid, sku, upsert};
use engine::{InputError, Limits, ShardState};
use proptest::prelude::*;

const SKUS: [&str; 5] = ["A", "B", "C", "K1", "K2"];
const WAREHOUSES: [&str; 2] = ["w1", "w2"];
const COMPONENTS_MAX: u32 = 3;

#[derive(Clone, Debug)]
enum Op {
    Define { sku: usize, components: Vec<(usize, u64)> },
    Remove(usize),
    Stock { sku: usize, warehouse: usize, on_hand: u64 },
    Hold(Vec<(usize, Option<usize>, u64)>),
}

fn op() -> impl Strategy<Value = Op> {
    let sku = 0..SKUS.len();
    prop_oneof![
        3 => (sku.clone(), proptest::collection::vec((0..SKUS.len(), 1..4u64), 0..5))
            .prop_map(|(sku, components)| Op::Define { sku, components }),
        1 => sku.clone().prop_map(Op::Remove),
        3 => (sku.clone(), 0..WAREHOUSES.len(), 0..20u64).prop_map(|(sku, warehouse, on_hand)| Op::Stock { sku, warehouse, on_hand }),
        4 => proptest::collection::vec((sku, proptest::option::of(0..WAREHOUSES.len()), 1..5u64), 1..4).prop_map(Op::Hold),
    ]
}

#[derive(Default)]
struct Model {
    bundles: BTreeMap<usize, Vec<(usize, u64)>>,
    /// SKUs with items.
    stocked: std::collections::BTreeSet<usize>,
}

impl Model {
    fn valid(&self, sku: usize, components: &[(usize, u64)]) -> bool {
        let distinct = components.iter().enumerate().all(|(i, (c, _))| components[..i].iter().all(|(d, _)| d != c));
        !components.is_empty()
            && components.len() <= COMPONENTS_MAX as usize
            && distinct
            && components.iter().all(|(c, _)| *c != sku)
    }
}

fn components_of(components: &[(usize, u64)]) -> Vec<Component> {
    components.iter().map(|(c, q)| Component { sku: sku(SKUS[*c]), quantity: qty(*q) }).collect()
}

/// Every SKU's (on_hand, reserved) per warehouse.
fn levels(state: &ShardState) -> Vec<(u64, u64)> {
    SKUS.iter()
        .flat_map(|name| state.sku_items(name).map(|view| view.items).unwrap_or_default())
        .map(|item| (item.on_hand, item.reserved))
        .collect()
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let limits = Limits { bundle_components_max: COMPONENTS_MAX, ..Limits::default() };
    let mut shard = Fixture::with_limits(limits);
    let mut model = Model::default();
    let mut holds = 0;
    for op in ops {
        match op {
            Op::Define { sku: at, components } => {
                let command =
                    Command::SetBundle(SetBundle { sku: sku(SKUS[at]), components: Some(components_of(&components)) });
                let outcome = shard.one(command);
                if !model.valid(at, &components) {
                    let invalid = matches!(&outcome, Outcome::Refused(Refusal::Invalid(InputError::BadBundle { .. })));
                    prop_assert!(invalid, "{:?} {:?}: {:?}", at, components, outcome);
                } else if model.stocked.contains(&at) {
                    prop_assert!(matches!(outcome, Outcome::Refused(Refusal::SkuHasItems { .. })), "{:?}", outcome);
                } else {
                    prop_assert!(matches!(outcome, Outcome::BundleSet { components: Some(_), .. }), "{:?}", outcome);
                    model.bundles.insert(at, components);
                }
            }
            Op::Remove(at) => {
                let outcome = shard.one(Command::SetBundle(SetBundle { sku: sku(SKUS[at]), components: None }));
                if model.bundles.remove(&at).is_some() {
                    prop_assert!(matches!(outcome, Outcome::BundleSet { components: None, .. }), "{:?}", outcome);
                } else {
                    prop_assert_eq!(outcome, Outcome::Refused(Refusal::BundleNotFound));
                }
            }
            Op::Stock { sku: at, warehouse, on_hand } => {
                let outcome = shard.one(upsert(SKUS[at], WAREHOUSES[warehouse], on_hand, 0));
                if model.bundles.contains_key(&at) {
                    prop_assert_eq!(outcome, Outcome::Refused(Refusal::SkuIsBundle));
                } else {
                    // Lowering on_hand below what is held is refused; either
                    // way the SKU has an item (it had one, or this made it).
                    let created = matches!(outcome, Outcome::Upserted { .. });
                    prop_assert!(
                        created || matches!(outcome, Outcome::Refused(Refusal::BelowReserved { .. })),
                        "{:?}",
                        outcome
                    );
                    model.stocked.insert(at);
                }
            }
            Op::Hold(lines) => {
                holds += 1;
                let named: Vec<(&str, Option<&str>, u64)> =
                    lines.iter().map(|(s, w, q)| (SKUS[*s], w.map(|w| WAREHOUSES[w]), *q)).collect();
                let before = levels(&shard.state);
                let outcome = shard.one(hold_any(rid(holds), &named, 60_000, None));
                let expected: Vec<BundleLine> = lines
                    .iter()
                    .enumerate()
                    .filter_map(|(line, (s, _, _))| {
                        let components = model.bundles.get(s)?;
                        Some(BundleLine { line: u32::try_from(line).ok()?, components: components_of(components) })
                    })
                    .collect();
                if expected.is_empty() {
                    let bundle_refusal = matches!(outcome, Outcome::Refused(Refusal::BundleLines { .. }));
                    prop_assert!(!bundle_refusal, "{:?}", outcome);
                } else {
                    prop_assert_eq!(outcome, Outcome::Refused(Refusal::BundleLines { lines: expected }));
                    prop_assert_eq!(levels(&shard.state), before, "a hold naming a bundle changed stock");
                }
            }
        }
        shard.state.check_invariants().map_err(TestCaseError::fail)?;
    }
    for (at, components) in &model.bundles {
        prop_assert_eq!(shard.state.bundle(SKUS[*at]), Some(components_of(components)));
    }
    let bytes = shard.state.to_snapshot_bytes().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let loaded = ShardState::from_snapshot_bytes(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(loaded.digest(), shard.state.digest());
    prop_assert_eq!(loaded.bundles(None, usize::MAX), shard.state.bundles(None, usize::MAX));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn bundle_definitions_follow_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops)?;
    }
}
