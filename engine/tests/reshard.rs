//! Resharding (`engine::reshard`) against what the API reads.
//!
//! A random history over S shards (items in several warehouses, moves by
//! named principals, holds that are confirmed, released or expire, deletes,
//! products, bundles, per-customer limits and sales, warehouse priorities),
//! drained of live holds, resharded to N shards and back to S. Each time:
//! * every item reads the same (levels, states, version, attributes) from
//!   `shard_of(sku, N)` and from no other shard, with the same history;
//!   every SKU's totals, product, bundle, customer limit and usage and
//!   warehouse priority read the same; deleted items stay deleted;
//! * every new state passes the full check (`check_invariants`), runs at
//!   the latest old log time, and lists exactly the old items;
//! * a terminal reservation is found by id where the lookup rule looks,
//!   reading as before, or counted as forgotten; never half of one.
//!
//! And the refusals: live holds (with their count), differing limits, a
//! bound the merged shard would pass, a shard count of 0.

use std::collections::BTreeSet;

use engine::bundle::Component;
use engine::cmd::{
    AdjustReason, AttrUpdate, Command, Confirm, DeleteItem, Release, SetBundle, SetCustomerLimit, SetProduct,
    SetWarehousePriority,
};
use engine::customer::CustomerLimit;
use engine::ids::{CustomerId, ItemName, Principal, RequestId, ReservationId};
use engine::query::ItemFilter;
use engine::reshard::{HomeShardOnly, ReservationLookup, ReshardError, reshard};
use engine::{Limits, LogEntry, LogId, ShardState, shard_of};
use proptest::prelude::*;

use engine::testing::{adjust, hold, qty, sku, upsert, wh};

const SKUS: [&str; 10] = ["apple", "pear", "plum", "fig", "kiwi", "lime", "date", "yam", "nut", "oat"];
const BUNDLES: [&str; 2] = ["basket", "crate"];
const WAREHOUSES: [&str; 3] = ["w1", "w2", "w3"];
const PRINCIPALS: [&str; 3] = ["alice", "bob", "carol"];
const CUSTOMERS: [&str; 2] = ["c1", "c2"];
const TTL_MS: u64 = 20_000;

#[derive(Clone, Debug)]
enum Op {
    Upsert { sku: usize, warehouse: usize, on_hand: u64 },
    Receive { sku: usize, warehouse: usize, units: u64, principal: usize },
    Hold { skus: (usize, usize), warehouse: usize, quantity: u64, customer: Option<usize> },
    Confirm(usize),
    Release(usize),
    Delete { sku: usize, warehouse: usize },
    Product { sku: usize, name: u8 },
    Bundle { bundle: usize, components: (usize, usize) },
    Limit { sku: usize, units: u64 },
    Priority { sku: usize, first: usize },
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let s = 0..SKUS.len();
    let w = 0..WAREHOUSES.len();
    prop_oneof![
        5 => (s.clone(), w.clone(), 0..20u64).prop_map(|(sku, warehouse, on_hand)| Op::Upsert { sku, warehouse, on_hand }),
        3 => (s.clone(), w.clone(), 1..9u64, 0..PRINCIPALS.len())
            .prop_map(|(sku, warehouse, units, principal)| Op::Receive { sku, warehouse, units, principal }),
        8 => ((s.clone(), s.clone()), w.clone(), 1..4u64, proptest::option::weighted(0.7, 0..CUSTOMERS.len()))
            .prop_map(|(skus, warehouse, quantity, customer)| Op::Hold { skus, warehouse, quantity, customer }),
        4 => (0..40usize).prop_map(Op::Confirm),
        2 => (0..40usize).prop_map(Op::Release),
        1 => (s.clone(), w.clone()).prop_map(|(sku, warehouse)| Op::Delete { sku, warehouse }),
        2 => (s.clone(), 0..4u8).prop_map(|(sku, name)| Op::Product { sku, name }),
        1 => (0..BUNDLES.len(), (s.clone(), s.clone()))
            .prop_map(|(bundle, components)| Op::Bundle { bundle, components }),
        2 => (s.clone(), 1..50u64).prop_map(|(sku, units)| Op::Limit { sku, units }),
        1 => (s, w).prop_map(|(sku, first)| Op::Priority { sku, first }),
        2 => (1..15_000u64).prop_map(Op::Wait),
    ]
}

/// Reservation ids as the server makes them: home is the first line's
/// shard; byte 2 is 1 for a reservation whose parts span shards.
fn rid(home: u32, n: u64, spans: bool) -> ReservationId {
    let mut unique = [0u8; 14];
    unique[0] = u8::from(spans);
    unique[6..].copy_from_slice(&n.to_be_bytes());
    ReservationId::from_parts(u16::try_from(home).unwrap_or(0), unique)
}

/// The server's lookup rule: home shard, or every shard for a spanning id.
struct ApiRule;

impl ReservationLookup for ApiRule {
    fn looks_on(&self, id: &ReservationId, shard: u32, _shards: u32) -> bool {
        id.as_bytes()[2] == 1 || u32::from(id.home_shard()) == shard
    }
}

fn looks_on(id: &ReservationId, shard: u32) -> bool {
    id.as_bytes()[2] == 1 || u32::from(id.home_shard()) == shard
}

/// One part of a reservation: its shard and its lines (SKU, warehouse, units).
type Part<'a> = (u32, Vec<(&'a str, &'a str, u64)>);

struct Cluster {
    shards: Vec<ShardState>,
    index: u64,
    now_ms: u64,
    /// Every reservation made: its id and the shards its parts are on.
    holds: Vec<(ReservationId, Vec<u32>)>,
}

impl Cluster {
    fn new(count: u32) -> Self {
        Self {
            shards: (0..count).map(|shard| ShardState::new(shard, count, Limits::default())).collect(),
            index: 0,
            now_ms: 1_000,
            holds: Vec::new(),
        }
    }

    fn count(&self) -> u32 {
        u32::try_from(self.shards.len()).unwrap_or(u32::MAX)
    }

    /// Applies `commands` on `shard` as one entry, each under a request id
    /// of its own (so the dedup windows fill). Every shard's log index moves
    /// together, which the test does not rely on.
    fn run(&mut self, shard: u32, commands: Vec<Command>) {
        self.index += 1;
        let ids = (0..commands.len() as u64)
            .map(|n| {
                let mut bytes = [0u8; 16];
                bytes[..8].copy_from_slice(&self.index.to_le_bytes());
                bytes[8..].copy_from_slice(&n.to_le_bytes());
                RequestId(bytes)
            })
            .collect();
        let entry = LogEntry::batch_with_ids(LogId::new(1, self.index), self.now_ms, commands, ids);
        let state = &mut self.shards[shard as usize];
        state.apply(&entry).unwrap_or_else(|e| panic!("apply: {e}"));
        if let Err(error) = state.check_invariants() {
            panic!("invariant broken on shard {shard}: {error}");
        }
    }

    fn on_sku(&mut self, sku_text: &str, command: Command) {
        let shard = shard_of(sku_text, self.count());
        self.run(shard, vec![command]);
    }

    fn apply(&mut self, op: &Op) {
        let count = self.count();
        match *op {
            Op::Upsert { sku, warehouse, on_hand } => {
                self.on_sku(SKUS[sku], upsert(SKUS[sku], WAREHOUSES[warehouse], on_hand, 2));
            }
            Op::Receive { sku, warehouse, units, principal } => {
                let mut command =
                    adjust(SKUS[sku], WAREHOUSES[warehouse], i64::try_from(units).unwrap_or(1), AdjustReason::Receive);
                if let Command::Adjust(adjust) = &mut command {
                    adjust.principal = Some(Principal::new(PRINCIPALS[principal]).unwrap_or_else(|e| panic!("{e}")));
                }
                self.on_sku(SKUS[sku], command);
            }
            Op::Hold { skus: (first, second), warehouse, quantity, customer } => {
                let n = self.holds.len() as u64;
                let (a, b) = (SKUS[first], SKUS[second]);
                let (home, other) = (shard_of(a, count), shard_of(b, count));
                let w = WAREHOUSES[warehouse];
                // Two SKUs on two shards: a saga's two parts under one id.
                let parts: Vec<Part> = if first == second {
                    vec![(home, vec![(a, w, quantity)])]
                } else if home == other {
                    vec![(home, vec![(a, w, quantity), (b, w, quantity)])]
                } else {
                    vec![(home, vec![(a, w, quantity)]), (other, vec![(b, w, quantity)])]
                };
                let id = rid(home, n, parts.len() > 1);
                for (shard, lines) in &parts {
                    let mut command = hold(id, lines, TTL_MS, None);
                    if let Command::Hold(hold) = &mut command {
                        hold.customer =
                            customer.map(|c| CustomerId::new(CUSTOMERS[c]).unwrap_or_else(|e| panic!("{e}")));
                    }
                    self.run(*shard, vec![command]);
                }
                self.holds.push((id, parts.iter().map(|(shard, _)| *shard).collect()));
            }
            Op::Confirm(n) | Op::Release(n) => {
                let Some((id, shards)) = self.holds.get(n % self.holds.len().max(1)).cloned() else { return };
                for shard in shards {
                    let command = if matches!(op, Op::Confirm(_)) {
                        Command::Confirm(Confirm { id, principal: None })
                    } else {
                        Command::Release(Release { id, principal: None })
                    };
                    self.run(shard, vec![command]);
                }
            }
            Op::Delete { sku: s, warehouse } => {
                let command = Command::DeleteItem(DeleteItem {
                    sku: sku(SKUS[s]),
                    warehouse: wh(WAREHOUSES[warehouse]),
                    expect_version: None,
                    principal: None,
                });
                self.on_sku(SKUS[s], command);
            }
            Op::Product { sku: s, name } => {
                let command = Command::SetProduct(SetProduct {
                    sku: sku(SKUS[s]),
                    name: AttrUpdate::Set(ItemName::new(format!("Product {name}")).unwrap_or_else(|e| panic!("{e}"))),
                    description: AttrUpdate::Keep,
                    category: AttrUpdate::Keep,
                    price_minor: AttrUpdate::Set(u64::from(name) * 100),
                    currency: AttrUpdate::Keep,
                    image_url: AttrUpdate::Keep,
                    principal: None,
                });
                self.on_sku(SKUS[s], command);
            }
            Op::Bundle { bundle, components: (a, b) } => {
                let mut components = vec![Component { sku: sku(SKUS[a]), quantity: qty(1) }];
                if a != b {
                    components.push(Component { sku: sku(SKUS[b]), quantity: qty(2) });
                }
                let command = Command::SetBundle(SetBundle { sku: sku(BUNDLES[bundle]), components: Some(components) });
                self.on_sku(BUNDLES[bundle], command);
            }
            Op::Limit { sku: s, units } => {
                let limit = CustomerLimit { units, window_ms: Some(60_000) };
                let command = Command::SetCustomerLimit(SetCustomerLimit { sku: sku(SKUS[s]), limit: Some(limit) });
                self.on_sku(SKUS[s], command);
            }
            Op::Priority { sku: s, first } => {
                // The warehouses that stock it (a list naming others is refused).
                let owner = &self.shards[shard_of(SKUS[s], count) as usize];
                let stocked: Vec<String> = owner
                    .sku_items(SKUS[s])
                    .unwrap_or_else(|e| panic!("{e:?}"))
                    .items
                    .into_iter()
                    .map(|item| item.warehouse)
                    .collect();
                let warehouses = (0..stocked.len()).map(|i| wh(&stocked[(first + i) % stocked.len()]));
                let command = Command::SetWarehousePriority(SetWarehousePriority {
                    sku: sku(SKUS[s]),
                    warehouses: Some(warehouses.collect()),
                });
                self.on_sku(SKUS[s], command);
            }
            Op::Wait(ms) => self.now_ms += ms,
        }
    }

    /// Releases every live hold, then applies one empty entry at the same
    /// log time on every shard, so every shard runs at the same time (as
    /// `Tick`s keep a serving cluster's shards close).
    fn drain(&mut self) {
        for (id, shards) in self.holds.clone() {
            for shard in shards {
                self.run(shard, vec![Command::Release(Release { id, principal: None })]);
            }
        }
        self.now_ms += 1;
        for shard in 0..self.count() {
            self.run(shard, Vec::new());
        }
    }
}

/// Everything the API reads of the SKU universe, from `shards`, each read
/// from the SKU's owner (and checked absent elsewhere).
fn reads(shards: &[ShardState]) -> Vec<String> {
    let count = u32::try_from(shards.len()).unwrap_or(u32::MAX);
    let mut out = Vec::new();
    for name in SKUS.iter().chain(&BUNDLES) {
        let owner = &shards[shard_of(name, count) as usize];
        for warehouse in WAREHOUSES {
            let item = owner.get_item(name, warehouse).unwrap_or_else(|e| panic!("{e:?}"));
            for (other, state) in shards.iter().enumerate() {
                if other != owner.shard() as usize {
                    let stray = state.get_item(name, warehouse).unwrap_or_else(|e| panic!("{e:?}"));
                    assert!(stray.is_none(), "{name}/{warehouse} on shard {other}, not its owner {}", owner.shard());
                }
            }
            let history = owner.history(name, warehouse, 1_000).unwrap_or_else(|e| panic!("{e:?}"));
            out.push(format!("{name}/{warehouse}: {item:?} {history:?}"));
        }
        out.push(format!("{name}: {:?}", owner.sku_items(name).unwrap_or_else(|e| panic!("{e:?}"))));
        out.push(format!("{name}: product {:?}", owner.product(name)));
        out.push(format!("{name}: bundle {:?}", owner.bundle(name)));
        out.push(format!("{name}: limit {:?}", owner.customer_limit(name)));
        out.push(format!("{name}: priority {:?}", owner.warehouse_priority(name)));
        for customer in CUSTOMERS {
            out.push(format!("{name}/{customer}: {:?}", owner.customer_usage(name, customer)));
        }
    }
    out
}

/// Every listed item over all shards, sorted: listing order may change.
fn listing(shards: &[ShardState]) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    for state in shards {
        let filter = ItemFilter { limit: 10_000, scan_max: 10_000, ..ItemFilter::default() };
        let page = state.list_items(&filter).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(page.next_cursor.is_none());
        all.extend(page.items.iter().map(|item| format!("{item:?}")));
    }
    all
}

/// Checks `new` against `old`: the reads, the listing, the invariants, log
/// time, and every reservation of `holds` read as before or gone.
fn check_resharded(old: &[ShardState], new: &[ShardState], holds: &[(ReservationId, Vec<u32>)]) {
    for state in new {
        if let Err(error) = state.check_invariants() {
            panic!("new shard {}: {error}", state.shard());
        }
        assert_eq!(state.stats().live_holds, 0);
        assert_eq!(state.stats().request_ids_remembered, 0);
    }
    let now = old.iter().map(ShardState::now_ms).max();
    assert!(new.iter().all(|state| Some(state.now_ms()) == now), "log time moved");
    assert_eq!(reads(old), reads(new));
    assert_eq!(listing(old), listing(new));
    // A reservation reads the same wherever the lookup looks, or is gone
    // from everywhere: never half of one.
    let new_count = u32::try_from(new.len()).unwrap_or(u32::MAX);
    let old_count = u32::try_from(old.len()).unwrap_or(u32::MAX);
    for (id, _) in holds {
        let read = |shards: &[ShardState], count: u32| -> Vec<String> {
            (0..count)
                .filter(|&shard| looks_on(id, shard))
                .filter_map(|shard| shards[shard as usize].reservation(id).unwrap_or_else(|e| panic!("{e:?}")))
                .map(|view| format!("{view:?}"))
                .collect()
        };
        let (before, after) = (read(old, old_count), read(new, new_count));
        let mut sorted = (before.clone(), after.clone());
        sorted.0.sort();
        sorted.1.sort();
        assert!(after.is_empty() || sorted.0 == sorted.1, "reservation {id}: {before:?} became {after:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn resharding_keeps_what_the_api_reads(
        from in 1u32..5,
        to in 1u32..7,
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let mut cluster = Cluster::new(from);
        // Stock first, so most holds have something to hold.
        for sku in 0..SKUS.len() {
            cluster.apply(&Op::Upsert { sku, warehouse: sku % WAREHOUSES.len(), on_hand: 12 });
        }
        for op in &ops {
            cluster.apply(op);
        }
        cluster.drain();
        let terminal: u64 = cluster.shards.iter().map(|s| s.stats().terminal_retained).sum();

        let there = reshard(&cluster.shards, to, &ApiRule).unwrap_or_else(|e| panic!("reshard: {e}"));
        prop_assert_eq!(there.states.len(), to as usize);
        prop_assert_eq!(there.report.terminal_carried + there.report.terminal_forgotten, terminal);
        check_resharded(&cluster.shards, &there.states, &cluster.holds);
        // Deterministic: the same old states give byte-identical new ones.
        let again = reshard(&cluster.shards, to, &ApiRule).unwrap_or_else(|e| panic!("reshard: {e}"));
        let digests = |states: &[ShardState]| states.iter().map(ShardState::digest).collect::<Vec<_>>();
        prop_assert_eq!(digests(&there.states), digests(&again.states));
        let carried: u64 = there.states.iter().map(|s| s.stats().terminal_retained).sum();
        prop_assert_eq!(carried, there.report.terminal_carried);

        let back = reshard(&there.states, from, &ApiRule).unwrap_or_else(|e| panic!("reshard back: {e}"));
        check_resharded(&there.states, &back.states, &cluster.holds);
        prop_assert_eq!(reads(&cluster.shards), reads(&back.states));
        if to == from {
            // The same placement: every terminal reservation stays.
            prop_assert_eq!(there.report.terminal_forgotten, 0);
        }
    }
}

#[test]
fn live_holds_are_refused_with_their_count() {
    let mut cluster = Cluster::new(2);
    cluster.apply(&Op::Upsert { sku: 0, warehouse: 0, on_hand: 10 });
    cluster.apply(&Op::Upsert { sku: 1, warehouse: 0, on_hand: 10 });
    cluster.apply(&Op::Hold { skus: (0, 0), warehouse: 0, quantity: 2, customer: None });
    cluster.apply(&Op::Hold { skus: (1, 1), warehouse: 0, quantity: 1, customer: None });
    let error = reshard(&cluster.shards, 3, &ApiRule).err().unwrap_or_else(|| panic!("live holds resharded"));
    let ReshardError::LiveHolds { total, latest_deadline_ms, .. } = &error else { panic!("{error}") };
    assert_eq!(*total, 2);
    assert_eq!(*latest_deadline_ms, cluster.now_ms + TTL_MS);
    assert!(error.to_string().contains("2 live holds"), "{error}");
    // Drained, it goes through.
    cluster.drain();
    assert!(reshard(&cluster.shards, 3, &ApiRule).is_ok());
}

#[test]
fn a_reservation_whose_parts_would_meet_is_forgotten_whole() {
    let mut cluster = Cluster::new(4);
    // Two SKUs on different shards of 4: a two-part saga.
    let (a, b) = (0..SKUS.len())
        .flat_map(|a| (0..SKUS.len()).map(move |b| (a, b)))
        .find(|&(a, b)| shard_of(SKUS[a], 4) != shard_of(SKUS[b], 4))
        .unwrap_or_else(|| panic!("all SKUs on one shard"));
    cluster.apply(&Op::Upsert { sku: a, warehouse: 0, on_hand: 10 });
    cluster.apply(&Op::Upsert { sku: b, warehouse: 0, on_hand: 10 });
    cluster.apply(&Op::Hold { skus: (a, b), warehouse: 0, quantity: 1, customer: None });
    cluster.apply(&Op::Confirm(0));
    cluster.drain();
    // On one shard both parts meet under one id: neither is kept.
    let one = reshard(&cluster.shards, 1, &ApiRule).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((one.report.terminal_carried, one.report.terminal_forgotten), (0, 2));
    check_resharded(&cluster.shards, &one.states, &cluster.holds);
    // The same placement keeps both.
    let same = reshard(&cluster.shards, 4, &ApiRule).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((same.report.terminal_carried, same.report.terminal_forgotten), (2, 0));
    let id = cluster.holds[0].0;
    let found = same.states.iter().filter(|s| s.reservation(&id).ok().flatten().is_some()).count();
    assert_eq!(found, 2);
    // With the home-only rule a part away from home could not be found:
    // the whole reservation is forgotten.
    let home_only = reshard(&cluster.shards, 4, &HomeShardOnly).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(home_only.report.terminal_forgotten, 2);
}

#[test]
fn bad_requests_are_refused() {
    let mut cluster = Cluster::new(3);
    for (sku, warehouse) in [(0, 0), (1, 0), (2, 1), (3, 2), (4, 0)] {
        cluster.apply(&Op::Upsert { sku, warehouse, on_hand: 1 });
    }
    assert_eq!(reshard(&cluster.shards, 0, &ApiRule).err(), Some(ReshardError::ShardCount(0)));
    assert!(matches!(reshard(&cluster.shards, 70_000, &ApiRule), Err(ReshardError::ShardCount(70_000))));
    assert!(matches!(reshard(&cluster.shards[1..], 2, &ApiRule), Err(ReshardError::NotWhole { .. })));
    assert!(matches!(reshard(&[], 2, &ApiRule), Err(ReshardError::NotWhole { .. })));

    // Limits that differ between shards.
    let mut uneven = Cluster::new(2);
    uneven.shards[1] = ShardState::new(1, 2, Limits { items_per_shard_max: 7, ..Limits::default() });
    assert_eq!(reshard(&uneven.shards, 1, &ApiRule).err(), Some(ReshardError::LimitsDiffer { shard: 1 }));

    // One shard would pass a bound.
    let small = Limits { items_per_shard_max: 3, ..Limits::default() };
    let mut tight = Cluster::new(3);
    tight.shards = (0..3).map(|shard| ShardState::new(shard, 3, small)).collect();
    for sku in 0..SKUS.len() {
        tight.apply(&Op::Upsert { sku, warehouse: 0, on_hand: 1 });
    }
    let items: u64 = tight.shards.iter().map(|s| s.stats().items).sum();
    assert!(items > 3, "only {items} items made");
    let error = reshard(&tight.shards, 1, &ApiRule).err().unwrap_or_else(|| panic!("over the bound"));
    assert!(matches!(error, ReshardError::OverBound { limit: "items_per_shard_max", .. }), "{error}");
    assert!(error.to_string().contains("items_per_shard_max"), "{error}");
}
