//! A simulated correct, atomic Tally for the linearizability tests: random
//! clients, latencies, unknown outcomes and linearization points, whose
//! histories any sound checker must pass.

use std::collections::{BTreeSet, HashMap};

use crate::checker::tests::{WH, levels, refused, unknown};
use crate::history::{Call, History, Item, NodeDigests, NodeLevels, Op, Outcome};

type Rng = testkit::SplitMix;

pub(super) struct Sim {
    pub(super) clients: u32,
    pub(super) ops: usize,
    pub(super) items: usize,
    pub(super) initial: u64,
    pub(super) unknown_per_mille: u64,
    pub(super) latency_us_max: u64,
    pub(super) think_us_max: u64,
    /// Known ops take effect in the last this-many per mille of their
    /// interval (1000: anywhere in it).
    pub(super) effect_tail_per_mille: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// An operation takes effect (its linearization point).
    Apply(usize),
    Complete(usize),
    Invoke(u32),
}

struct TrueHold {
    item: usize,
    qty: u64,
    state: &'static str,
}

/// The simulated Tally's true state.
struct Truth {
    names: Vec<Item>,
    on_hand: Vec<u64>,
    reserved: Vec<u64>,
    holds: HashMap<String, TrueHold>,
    next_id: u64,
}

impl Truth {
    fn position(&self, sku: &str) -> usize {
        self.names.iter().position(|n| n.0 == sku).unwrap_or(0)
    }

    /// `call` takes effect (its linearization point): its outcome.
    fn apply(&mut self, call: &Call) -> Outcome {
        match call {
            Call::Hold { sku, qty, .. } => {
                let item = self.position(sku);
                if self.on_hand[item] - self.reserved[item] >= *qty {
                    self.reserved[item] += qty;
                    self.next_id += 1;
                    let id = format!("r{}", self.next_id);
                    self.holds.insert(id.clone(), TrueHold { item, qty: *qty, state: "HELD" });
                    Outcome::Held { reservation: id, expires_at_ms: 1_000_000 }
                } else {
                    refused("insufficient_stock")
                }
            }
            Call::Confirm { reservation } | Call::Release { reservation } | Call::Extend { reservation, .. } => {
                match self.holds.get_mut(reservation) {
                    Some(h) if h.state == "HELD" => {
                        match call {
                            Call::Confirm { .. } => {
                                self.on_hand[h.item] -= h.qty;
                                self.reserved[h.item] -= h.qty;
                                h.state = "CONFIRMED";
                            }
                            Call::Release { .. } => {
                                self.reserved[h.item] -= h.qty;
                                h.state = "RELEASED";
                            }
                            _ => {}
                        }
                        Outcome::Done
                    }
                    Some(h) if h.state == "CONFIRMED" => refused("reservation_confirmed"),
                    _ => refused("reservation_released"),
                }
            }
            Call::Adjust { sku, delta, .. } => {
                let item = self.position(sku);
                let after = self.on_hand[item] as i64 + delta;
                if after >= self.reserved[item] as i64 && after >= 0 {
                    self.on_hand[item] = after as u64;
                    Outcome::Done
                } else {
                    refused("below_reserved")
                }
            }
            Call::Read { sku, .. } => {
                let item = self.position(sku);
                levels(self.on_hand[item], self.reserved[item])
            }
        }
    }
}

/// A client's next call: on a random item, or on one of its holds (`mine`).
fn next_call(sim: &Sim, rng: &mut Rng, names: &[Item], mine: &[String]) -> Call {
    let item = rng.index(sim.items);
    let (sku, warehouse) = names[item].clone();
    let roll = rng.below(100);
    if roll < 20 && !mine.is_empty() {
        Call::Confirm { reservation: mine[rng.index(mine.len())].clone() }
    } else if roll < 32 && !mine.is_empty() {
        Call::Release { reservation: mine[rng.index(mine.len())].clone() }
    } else if roll < 36 && !mine.is_empty() {
        Call::Extend { reservation: mine[rng.index(mine.len())].clone(), ttl_seconds: 60 }
    } else if roll < 46 {
        let delta = rng.below(9) as i64 - 3;
        Call::Adjust { sku, warehouse, delta: if delta == 0 { 2 } else { delta } }
    } else if roll < 70 {
        Call::Read { sku, warehouse }
    } else {
        Call::Hold { sku, warehouse, qty: 1 + rng.below(3) }
    }
}

/// Simulates a correct, atomic Tally: each operation takes effect at a
/// random instant inside its interval (in its last
/// `effect_tail_per_mille`; an unknown one possibly long after it, or
/// never), clients run one operation at a time.
pub(super) fn simulate(sim: &Sim, seed: u64) -> History {
    let mut rng = Rng::new(seed);
    let mut truth = Truth {
        names: (0..sim.items).map(|i| (format!("sku-{i}"), WH.to_string())).collect(),
        on_hand: vec![sim.initial; sim.items],
        reserved: vec![0; sim.items],
        holds: HashMap::new(),
        next_id: 0,
    };
    let mut client_holds: Vec<Vec<String>> = vec![Vec::new(); sim.clients as usize];
    let mut ops: Vec<Op> = Vec::new();
    let mut events: BTreeSet<(u64, Ev)> = (0..sim.clients).map(|c| (rng.below(100), Ev::Invoke(c))).collect();
    while let Some((now, ev)) = events.pop_first() {
        match ev {
            Ev::Invoke(client) => {
                if ops.len() >= sim.ops {
                    continue;
                }
                let call = next_call(sim, &mut rng, &truth.names, &client_holds[client as usize]);
                let latency = 1 + rng.below(sim.latency_us_max);
                let is_unknown = rng.below(1000) < sim.unknown_per_mille;
                let at = ops.len();
                ops.push(Op {
                    index: at as u64,
                    client,
                    node: 1 + u8::try_from(rng.below(3)).unwrap_or(0),
                    call,
                    invoke_us: now,
                    complete_us: now + latency,
                    outcome: if is_unknown { unknown() } else { Outcome::Done },
                });
                let effect = !is_unknown || rng.below(1000) < 500;
                if effect {
                    // Unknown ones may take effect after the client gave up.
                    let effect_us = if is_unknown {
                        now + rng.below(3 * latency + 1)
                    } else {
                        let tail = latency * sim.effect_tail_per_mille / 1000;
                        now + latency - rng.below(tail + 1)
                    };
                    events.insert((effect_us, Ev::Apply(at)));
                }
                events.insert((now + latency, Ev::Complete(at)));
            }
            Ev::Apply(at) => {
                let outcome = truth.apply(&ops[at].call);
                if !matches!(ops[at].outcome, Outcome::Unknown { .. }) {
                    ops[at].outcome = outcome;
                }
            }
            Ev::Complete(at) => {
                let client = ops[at].client as usize;
                match (&ops[at].call, &ops[at].outcome) {
                    (_, Outcome::Held { reservation, .. }) => client_holds[client].push(reservation.clone()),
                    (
                        Call::Confirm { reservation } | Call::Release { reservation },
                        Outcome::Done | Outcome::Unknown { .. } | Outcome::Refused { .. },
                    ) => client_holds[client].retain(|r| r != reservation),
                    _ => {}
                }
                events.insert((now + 1 + rng.below(sim.think_us_max + 1), Ev::Invoke(ops[at].client)));
            }
        }
    }
    let final_levels = (1..=3)
        .map(|node| NodeLevels {
            node,
            items: (0..sim.items).map(|i| (truth.names[i].clone(), truth.on_hand[i], truth.reserved[i])).collect(),
        })
        .collect();
    let digests =
        (1..=3).map(|node| NodeDigests { node, shards: vec![(0, Some(ops.len() as u64), "d".into())] }).collect();
    let final_holds = truth.holds.iter().map(|(id, h)| (id.clone(), h.state.to_string())).collect();
    History {
        ops,
        faults: Vec::new(),
        initial: truth.names.iter().map(|n| (n.clone(), sim.initial)).collect(),
        final_levels,
        digests,
        final_holds,
        replication_factor: 0,
    }
}
