//! Per-customer limits against a model: random holds (fixed and allocated
//! lines, several customers, with and without a customer), confirms,
//! releases, expiries, and limits set, changed and removed, at random log
//! times. After every entry:
//! * a hold is granted exactly when the model says every limited SKU stays
//!   within its limit for that customer (live holds counted while a limit
//!   was set, plus sales confirmed under it within the window) and the
//!   stock suffices; refused `customer_limit` with the model's used and
//!   requested units, or `customer_id_required`, otherwise;
//! * what the engine shows of every customer equals the model, and never
//!   passes the limit;
//! * the state's own full check passes (usage equals the live holds that
//!   counted it), and a snapshot reloads to the same digest.

use std::collections::BTreeMap;

use engine::ShardState;
use engine::cmd::{Command, SetCustomerLimit};
use engine::customer::CustomerLimit;
use engine::ids::CustomerId;
use engine::outcome::{Outcome, Refusal};
use engine::testing::{Fixture, end_hold, hold_any, rid, sku};
use proptest::prelude::*;

const SKUS: [&str; 2] = ["A", "B"];
const WAREHOUSES: [&str; 2] = ["w1", "w2"];
const CUSTOMERS: [&str; 3] = ["ann", "bo", "cy"];
const TTL_MS: u64 = 5_000;

#[derive(Clone, Debug)]
enum Op {
    Hold { customer: Option<usize>, lines: Vec<(usize, Option<usize>, u64)>, confirm_now: bool },
    Confirm(usize),
    Release(usize),
    SetLimit { sku: usize, limit: Option<(u64, Option<u64>)> },
}

fn op() -> impl Strategy<Value = Op> {
    let line = (0..SKUS.len(), proptest::option::of(0..WAREHOUSES.len()), 1..4u64);
    prop_oneof![
        5 => (proptest::option::weighted(0.9, 0..CUSTOMERS.len()), proptest::collection::vec(line, 1..3), any::<bool>())
            .prop_map(|(customer, lines, confirm_now)| Op::Hold { customer, lines, confirm_now }),
        2 => (0..40usize).prop_map(Op::Confirm),
        2 => (0..40usize).prop_map(Op::Release),
        1 => (0..SKUS.len(), proptest::option::weighted(0.8, (1..6u64, proptest::option::of(1_000..8_000u64))))
            .prop_map(|(sku, limit)| Op::SetLimit { sku, limit }),
    ]
}

/// A live or ended hold as the model keeps it.
#[derive(Clone, Debug)]
struct ModelHold {
    customer: Option<String>,
    /// Units per SKU counted against the customer's limits.
    counted: Vec<(String, u64)>,
    /// Units per SKU held (for stock).
    units: Vec<(String, u64)>,
    deadline_ms: u64,
    live: bool,
}

#[derive(Default)]
struct Model {
    limits: BTreeMap<String, CustomerLimit>,
    /// (SKU, customer) → sales (at, units) counted under a limit.
    sales: BTreeMap<(String, String), Vec<(u64, u64)>>,
    holds: Vec<ModelHold>,
    /// Units available per SKU (all warehouses).
    available: BTreeMap<String, u64>,
}

impl Model {
    fn held(&self, sku: &str, customer: &str) -> u64 {
        self.holds
            .iter()
            .filter(|hold| hold.live && hold.customer.as_deref() == Some(customer))
            .flat_map(|hold| hold.counted.iter())
            .filter(|(s, _)| s == sku)
            .map(|(_, units)| units)
            .sum()
    }

    fn sold(&self, sku: &str, customer: &str, now_ms: u64) -> u64 {
        let Some(limit) = self.limits.get(sku) else { return 0 };
        self.sales.get(&(sku.to_owned(), customer.to_owned())).map_or(0, |sales| {
            sales
                .iter()
                .filter(|(at, _)| limit.window_ms.is_none_or(|window| at + window > now_ms))
                .map(|(_, units)| units)
                .sum()
        })
    }

    fn expire(&mut self, now_ms: u64) {
        for at in 0..self.holds.len() {
            if self.holds[at].live && self.holds[at].deadline_ms <= now_ms {
                self.end(at, false, now_ms);
            }
        }
    }

    fn end(&mut self, at: usize, confirmed: bool, now_ms: u64) {
        let hold = self.holds[at].clone();
        self.holds[at].live = false;
        for (sku, units) in &hold.units {
            if !confirmed {
                *self.available.entry(sku.clone()).or_default() += units;
            }
        }
        if let (true, Some(customer)) = (confirmed, &hold.customer) {
            for (sku, units) in &hold.counted {
                if self.limits.contains_key(sku) {
                    self.sales.entry((sku.clone(), customer.clone())).or_default().push((now_ms, *units));
                }
            }
        }
    }
}

/// The engine's shard and the model.
struct Run {
    shard: Fixture,
    model: Model,
}

/// What the model expects of a hold under the customer limits.
struct Expected {
    /// Units per SKU, summed over the hold's lines.
    units: Vec<(String, u64)>,
    /// The first limited SKU, when the hold names no customer.
    required: Option<String>,
    /// (SKU, limit, used, requested) for every SKU the hold would take over its limit.
    over: Vec<(String, u64, u64, u64)>,
    /// Units per limited SKU that count against the customer.
    counted: Vec<(String, u64)>,
}

impl Run {
    fn new() -> Self {
        let mut run = Self { shard: Fixture::new(), model: Model::default() };
        for sku_name in SKUS {
            for warehouse in WAREHOUSES {
                run.shard.stock(sku_name, warehouse, 6, 0);
            }
            run.model.available.insert(sku_name.to_owned(), 6 * WAREHOUSES.len() as u64);
        }
        run
    }

    /// The model: units per SKU, then the limit rules (stock is the
    /// engine's to classify: fixed lines need their warehouse).
    fn expect(&self, request: &[(&str, Option<&str>, u64)], customer: Option<&String>) -> Expected {
        let mut units: Vec<(String, u64)> = Vec::new();
        for (s, _, q) in request {
            match units.iter_mut().find(|(name, _)| name == s) {
                Some((_, sum)) => *sum += q,
                None => units.push(((*s).to_owned(), *q)),
            }
        }
        let mut expected = Expected { units: Vec::new(), required: None, over: Vec::new(), counted: Vec::new() };
        for (s, q) in &units {
            let Some(limit) = self.model.limits.get(s) else { continue };
            let Some(c) = customer else {
                expected.required = Some(s.clone());
                break;
            };
            let used = self.model.held(s, c) + self.model.sold(s, c, self.shard.now_ms);
            if used + q > limit.units {
                expected.over.push((s.clone(), limit.units, used, *q));
            } else {
                expected.counted.push((s.clone(), *q));
            }
        }
        expected.units = units;
        expected
    }

    fn hold(
        &mut self,
        step: usize,
        customer: Option<usize>,
        lines: &[(usize, Option<usize>, u64)],
        confirm_now: bool,
    ) -> Result<(), TestCaseError> {
        let n = self.model.holds.len() as u64 + 1;
        let customer = customer.map(|c| CUSTOMERS[c].to_owned());
        let request: Vec<(&str, Option<&str>, u64)> =
            lines.iter().map(|&(s, w, q)| (SKUS[s], w.map(|w| WAREHOUSES[w]), q)).collect();
        let Command::Hold(mut hold) = hold_any(rid(n), &request, TTL_MS, None) else { unreachable!() };
        hold.customer = customer.clone().map(|c| CustomerId::new(c).unwrap_or_else(|e| panic!("{e}")));
        hold.confirm = confirm_now;
        let outcome = self.shard.one(Command::Hold(hold));
        let expected = self.expect(&request, customer.as_ref());
        if check_hold(step, &outcome, &expected)? {
            for (s, q) in &expected.units {
                let available = self.model.available.entry(s.clone()).or_default();
                prop_assert!(*available >= *q, "step {}: oversold {}", step, s);
                *available -= q;
            }
            let deadline_ms = self.shard.now_ms + TTL_MS;
            let Expected { units, counted, .. } = expected;
            self.model.holds.push(ModelHold { customer, counted, units, deadline_ms, live: true });
            if confirm_now {
                let at = self.model.holds.len() - 1;
                self.model.end(at, true, self.shard.now_ms);
            }
        } else {
            // Refused: the model keeps a placeholder so ids stay aligned.
            self.model.holds.push(ModelHold {
                customer,
                counted: Vec::new(),
                units: Vec::new(),
                deadline_ms: 0,
                live: false,
            });
        }
        Ok(())
    }

    fn end(&mut self, step: usize, at: usize, confirm: bool) -> Result<(), TestCaseError> {
        let outcome = self.shard.one(end_hold(rid(at as u64 + 1), confirm));
        if self.model.holds[at].live {
            prop_assert!(
                matches!(
                    outcome,
                    Outcome::Confirmed { replayed: false, .. } | Outcome::Released { replayed: false, .. }
                ),
                "step {}: {:?}",
                step,
                outcome
            );
            self.model.end(at, confirm, self.shard.now_ms);
        }
        Ok(())
    }

    fn set_limit(&mut self, step: usize, s: usize, limit: Option<(u64, Option<u64>)>) -> Result<(), TestCaseError> {
        let limit = limit.map(|(units, window_ms)| CustomerLimit { units, window_ms });
        let command = Command::SetCustomerLimit(SetCustomerLimit { sku: sku(SKUS[s]), limit });
        let outcome = self.shard.one(command);
        prop_assert!(matches!(outcome, Outcome::CustomerLimitSet { .. }), "step {}: {:?}", step, outcome);
        let (model, now_ms) = (&mut self.model, self.shard.now_ms);
        // Sales that left the old window are gone for good.
        if let Some(old) = model.limits.get(SKUS[s]).copied() {
            for ((sku_name, _), sales) in model.sales.iter_mut() {
                if sku_name == SKUS[s] {
                    sales.retain(|(at, _)| old.window_ms.is_none_or(|window| at + window > now_ms));
                }
            }
        }
        match limit {
            Some(limit) => {
                model.limits.insert(SKUS[s].to_owned(), limit);
            }
            None => {
                model.limits.remove(SKUS[s]);
                model.sales.retain(|(sku_name, _), _| sku_name != SKUS[s]);
            }
        }
        Ok(())
    }

    /// Every customer as the engine shows them equals the model.
    fn check_usage(&self, step: usize) -> Result<(), TestCaseError> {
        for s in SKUS {
            for c in CUSTOMERS {
                let usage = self.shard.state.customer_usage(s, c);
                prop_assert_eq!(
                    (usage.held, usage.sold),
                    (self.model.held(s, c), self.model.sold(s, c, self.shard.now_ms)),
                    "step {}: {} of {}",
                    step,
                    c,
                    s
                );
            }
        }
        self.shard.state.check_invariants().map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))
    }
}

/// Checks a hold's outcome against what the model expects; true when it
/// was accepted.
fn check_hold(step: usize, outcome: &Outcome, expected: &Expected) -> Result<bool, TestCaseError> {
    match (outcome, &expected.required, expected.over.is_empty()) {
        (Outcome::Refused(Refusal::CustomerRequired { sku }), Some(required), _) => {
            prop_assert_eq!(sku, required, "step {}", step);
        }
        (_, Some(required), _) => {
            return Err(TestCaseError::fail(format!(
                "step {step}: expected customer_id_required for {required}, got {outcome:?}"
            )));
        }
        (Outcome::Refused(Refusal::CustomerLimit { skus }), None, false) => {
            let got: Vec<_> = skus.iter().map(|o| (o.sku.clone(), o.limit, o.used, o.requested)).collect();
            prop_assert_eq!(&got, &expected.over, "step {}", step);
        }
        (_, None, false) => {
            return Err(TestCaseError::fail(format!(
                "step {step}: expected customer_limit {:?}, got {outcome:?}",
                expected.over
            )));
        }
        (Outcome::Held { replayed: false, .. } | Outcome::Confirmed { replayed: false, .. }, None, true) => {
            return Ok(true);
        }
        (Outcome::Refused(Refusal::InsufficientStock { .. }), None, true) => {}
        (other, None, true) => {
            return Err(TestCaseError::fail(format!("step {step}: unexpected {other:?}")));
        }
    }
    Ok(false)
}

fn run(ops: Vec<(u64, Op)>) -> Result<(), TestCaseError> {
    let mut run = Run::new();
    for (step, (advance, op)) in ops.into_iter().enumerate() {
        run.shard.now_ms += advance;
        run.model.expire(run.shard.now_ms);
        match op {
            Op::Hold { customer, lines, confirm_now } => run.hold(step, customer, &lines, confirm_now)?,
            Op::Confirm(at) | Op::Release(at) if at < run.model.holds.len() => {
                run.end(step, at, matches!(op, Op::Confirm(_)))?;
            }
            Op::Confirm(_) | Op::Release(_) => {
                // No such hold: time still moves, as the model's did.
                run.shard.one(Command::Tick);
            }
            Op::SetLimit { sku: s, limit } => run.set_limit(step, s, limit)?,
        }
        run.check_usage(step)?;
    }
    let state = &run.shard.state;
    let bytes = state.to_snapshot_bytes().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let loaded = ShardState::from_snapshot_bytes(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(loaded.digest(), state.digest());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn customer_limits_follow_the_model(ops in proptest::collection::vec((0..3_000u64, op()), 1..60)) {
        run(ops)?;
    }
}
