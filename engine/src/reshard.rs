//! Resharding offline: the states of S shards rebuilt as the states of N.
//!
//! `tally reshard` (server/src/backup/reshard.rs) reads a backup of S
//! shards, replays each to its backup index, hands the states here, and
//! writes the N states this returns as a new backup. Nothing here runs in
//! `apply`: it is a pure function of the old states and N, deterministic
//! (old shards in order, each in slot order; ordered maps; no clock), and
//! every state it returns has passed the full load check of a snapshot
//! (`ShardState::from_snapshot_bytes`: references, then every rule).
//!
//! What moves where (docs/RESHARDING.md says why):
//!
//! * Every per-SKU record goes to `shard_of(sku, N)`: items (tombstones
//!   too) with their levels, states, attributes, versions and histories;
//!   products, bundles, warehouse priority lists, per-customer limits and
//!   per-customer usage. The warehouse and principal tables and the SKU
//!   arena are rebuilt per new shard (a history's principal is re-interned
//!   by name).
//! * Live holds are refused (`ReshardError::LiveHolds`): a hold's id names
//!   its home shard, which the routing reads, and a hold's lines may land
//!   on several new shards, so no placement keeps both the reserved counts
//!   and lookup by id right. Drain them first.
//! * A terminal reservation is carried when each of its parts (one per
//!   old shard) has every line on one new shard, a lookup of its id looks
//!   there (`ReservationLookup`), and no other part lands there too;
//!   otherwise all its parts are forgotten early, as its retention would
//!   have forgotten them, and counted in the report.
//! * The dedup window of request ids is emptied: request ids are made per
//!   boot of a node and used only by that node's own retries, none of
//!   which outlives a stop of the whole cluster.
//! * Log time: every new shard starts at the latest log time of any old
//!   shard, so nothing dated in log time (deadlines of later holds, sales
//!   in a customer's window, retention) runs early or late. Its last
//!   applied id has the highest term and the highest index of any old
//!   shard, so new events sort after every old one, and its membership is
//!   the first old shard's (a restore rewrites it anyway).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use hashbrown::HashMap;

use crate::config::Limits;
use crate::dedup::DedupWindow;
use crate::ids::ReservationId;
use crate::item::{Item, ItemId, Who};
use crate::placement::shard_of;
use crate::raft_log::{LogId, StoredMembership};
use crate::reservation::{Reservation, ReservationState};
use crate::state::{PRINCIPAL_OTHER, Persisted, STATE_FORMAT, ShardState};

/// The most shards a cluster may have, here as for `cluster.shards`.
pub use crate::placement::SHARDS_MAX;

/// Where the API looks for a reservation by id once there are `shards`
/// shards: whether it looks on `shard`. The server's rule (an id carries
/// its home shard, or that its parts are on every shard) lives in the
/// server, so it is passed in.
pub trait ReservationLookup {
    fn looks_on(&self, id: &ReservationId, shard: u32, shards: u32) -> bool;
}

/// The home-shard rule alone: a reservation is looked for on its home.
#[derive(Clone, Copy, Debug, Default)]
pub struct HomeShardOnly;

impl ReservationLookup for HomeShardOnly {
    fn looks_on(&self, id: &ReservationId, shard: u32, _shards: u32) -> bool {
        u32::from(id.home_shard()) == shard
    }
}

/// Why the states cannot be resharded. Nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReshardError {
    #[error("a cluster has 1 to {SHARDS_MAX} shards, not {0}")]
    ShardCount(u32),
    #[error("the old states are not shards 0 to {expected} of {expected_count} in order: {detail}")]
    NotWhole { expected: u32, expected_count: u32, detail: String },
    #[error(
        "{total} live holds ({}); the latest deadline is log time {latest_deadline_ms} ms. A hold's id names its \
         home shard, so holds are not carried: stop taking new holds, confirm or release them (or let them \
         expire), and take a new backup",
        .per_shard.iter().map(|(shard, count)| format!("shard {shard}: {count}")).collect::<Vec<_>>().join(", ")
    )]
    LiveHolds { total: u64, per_shard: Vec<(u32, u64)>, latest_deadline_ms: u64 },
    #[error(
        "shard {shard} has other limits than shard 0: start the cluster once (it sets its configured limits on every shard) and take a new backup"
    )]
    LimitsDiffer { shard: u32 },
    #[error(
        "new shard {shard} would hold {count} {what}, over engine.{limit} ({max}): raise it first, or reshard to more shards"
    )]
    OverBound { shard: u32, what: &'static str, limit: &'static str, count: u64, max: u64 },
    #[error("new shard {shard} does not load: {detail}")]
    Invalid { shard: u32, detail: String },
}

/// What a reshard did, over all new shards.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReshardReport {
    pub old_shards: u32,
    pub new_shards: u32,
    /// Item slots moved (tombstones included).
    pub items: u64,
    pub tombstones: u64,
    pub products: u64,
    pub bundles: u64,
    pub customer_limits: u64,
    pub customer_usages: u64,
    pub warehouse_priorities: u64,
    /// Terminal reservations kept, and forgotten because no new shard both
    /// holds all their lines and is where a lookup of their id looks.
    pub terminal_carried: u64,
    pub terminal_forgotten: u64,
    /// Request ids the old dedup windows held (emptied).
    pub request_ids_forgotten: u64,
    /// The new shards' log time: the latest of the old shards'.
    pub log_time_ms: u64,
}

/// The new states, shard `i` at position `i`, and the report.
#[derive(Debug)]
pub struct Resharded {
    pub states: Vec<ShardState>,
    pub report: ReshardReport,
}

/// One new shard while it is built.
struct Builder {
    shard: u32,
    items: Vec<Item>,
    sku_arena: Vec<u8>,
    warehouses: Vec<String>,
    warehouse_ids: HashMap<String, u16>,
    principals: Vec<String>,
    principal_ids: HashMap<String, u16>,
    tombstones: BTreeSet<u32>,
    /// (ended_at_ms, old shard, old slot, reservation), sorted before use.
    terminal: Vec<(u64, u32, u32, Reservation)>,
    customers: crate::customer::CustomerLimits,
    bundles: crate::bundle::Bundles,
    products: BTreeMap<String, crate::product::Product>,
    warehouse_priority: BTreeMap<String, Vec<String>>,
}

impl Builder {
    fn new(shard: u32) -> Self {
        Self {
            shard,
            items: Vec::new(),
            sku_arena: Vec::new(),
            warehouses: Vec::new(),
            warehouse_ids: HashMap::new(),
            principals: Vec::new(),
            principal_ids: HashMap::new(),
            tombstones: BTreeSet::new(),
            terminal: Vec::new(),
            customers: crate::customer::CustomerLimits::default(),
            bundles: crate::bundle::Bundles::default(),
            products: BTreeMap::new(),
            warehouse_priority: BTreeMap::new(),
        }
    }

    /// The warehouse's id in this shard's table, added if new.
    fn warehouse_id(&mut self, name: &str, limits: &Limits) -> Result<u16, ReshardError> {
        if let Some(&id) = self.warehouse_ids.get(name) {
            return Ok(id);
        }
        let max = limits.warehouses_per_shard_max;
        if self.warehouses.len() >= usize::from(max) {
            let count = self.warehouses.len() + 1;
            return Err(over(self.shard, "warehouses", "warehouses_per_shard_max", count, u64::from(max)));
        }
        let id = u16::try_from(self.warehouses.len()).unwrap_or(u16::MAX);
        self.warehouses.push(name.to_owned());
        self.warehouse_ids.insert(name.to_owned(), id);
        Ok(id)
    }

    /// The principal's id in this shard's table, added if new; the table
    /// stops short of `PRINCIPAL_OTHER`, as `ShardState::who`'s does.
    fn principal_id(&mut self, name: &str, limits: &Limits) -> Result<u16, ReshardError> {
        if let Some(&id) = self.principal_ids.get(name) {
            return Ok(id);
        }
        let max = usize::from(limits.principals_per_shard_max).min(usize::from(PRINCIPAL_OTHER));
        if self.principals.len() >= max {
            let count = self.principals.len() + 1;
            return Err(over(
                self.shard,
                "principals named in histories",
                "principals_per_shard_max",
                count,
                max as u64,
            ));
        }
        let id = u16::try_from(self.principals.len()).unwrap_or(PRINCIPAL_OTHER);
        self.principals.push(name.to_owned());
        self.principal_ids.insert(name.to_owned(), id);
        Ok(id)
    }

    /// The per-shard bounds that merging may pass (items, warehouses and
    /// principals are checked as they are added).
    fn check_bounds(&self, limits: &Limits) -> Result<(), ReshardError> {
        let bounds = [
            (
                "customer usages",
                "customer_usage_per_shard_max",
                self.customers.usage.len(),
                limits.customer_usage_per_shard_max,
            ),
            ("bundles", "bundles_per_shard_max", self.bundles.by_sku.len(), limits.bundles_per_shard_max),
            ("products", "products_per_shard_max", self.products.len(), limits.products_per_shard_max),
        ];
        match bounds.into_iter().find(|&(_, _, count, max)| count > max as usize) {
            Some((what, limit, count, max)) => Err(over(self.shard, what, limit, count, u64::from(max))),
            None => Ok(()),
        }
    }
}

fn over(shard: u32, what: &'static str, limit: &'static str, count: usize, max: u64) -> ReshardError {
    ReshardError::OverBound { shard, what, limit, count: count as u64, max }
}

/// What every new shard starts from, whatever it holds.
struct Common {
    limits: Limits,
    now_ms: u64,
    holds_made: u64,
    last_applied: Option<LogId>,
    membership: Option<StoredMembership>,
}

/// Rebuilds `old` (shards 0 to S-1 of S, each at its backup index) as
/// `shards` new shards. See the module docs for what moves where.
pub fn reshard(old: &[ShardState], shards: u32, lookup: &dyn ReservationLookup) -> Result<Resharded, ReshardError> {
    let limits = check_request(old, shards)?;
    check_no_live_holds(old)?;
    let last_applied = old
        .iter()
        .filter_map(ShardState::last_applied)
        .reduce(|a, b| LogId { term: a.term.max(b.term), index: a.index.max(b.index) });
    let membership_config = old.iter().find_map(|state| state.persisted.membership.as_ref()).map(|m| m.config.clone());
    let common = Common {
        limits,
        now_ms: old.iter().map(ShardState::now_ms).max().unwrap_or(0),
        holds_made: old.iter().map(|state| state.persisted.holds_made).max().unwrap_or(0),
        last_applied,
        membership: match (last_applied, membership_config) {
            (Some(log_id), Some(config)) => Some(StoredMembership { log_id, config }),
            _ => None,
        },
    };
    let mut report = ReshardReport {
        old_shards: u32::try_from(old.len()).unwrap_or(u32::MAX),
        new_shards: shards,
        log_time_ms: common.now_ms,
        ..ReshardReport::default()
    };
    let mut builders: Vec<Builder> = (0..shards).map(Builder::new).collect();
    let moved = old
        .iter()
        .map(|state| move_items(state, shards, &limits, &mut builders, &mut report))
        .collect::<Result<Vec<_>, _>>()?;
    place_terminal(old, &moved, lookup, &mut builders, &mut report);
    for state in old {
        move_sku_records(state, &mut builders, &mut report);
        report.request_ids_forgotten += state.persisted.dedup.len() as u64;
    }
    let states = builders.into_iter().map(|b| build(b, shards, &common)).collect::<Result<Vec<_>, _>>()?;
    Ok(Resharded { states, report })
}

/// The old states' common limits, once N and the states are known good.
fn check_request(old: &[ShardState], shards: u32) -> Result<Limits, ReshardError> {
    if shards == 0 || shards > SHARDS_MAX {
        return Err(ReshardError::ShardCount(shards));
    }
    let old_count = u32::try_from(old.len()).unwrap_or(u32::MAX);
    if old.is_empty() || old_count > SHARDS_MAX {
        return Err(ReshardError::NotWhole { expected: 0, expected_count: 0, detail: format!("{} states", old.len()) });
    }
    for (position, state) in old.iter().enumerate() {
        if state.shard() as usize != position || state.shard_count() != old_count {
            return Err(ReshardError::NotWhole {
                expected: old_count - 1,
                expected_count: old_count,
                detail: format!("place {position} holds shard {} of {}", state.shard(), state.shard_count()),
            });
        }
    }
    let limits: Limits = *old[0].limits();
    if let Some(state) = old.iter().find(|state| *state.limits() != limits) {
        return Err(ReshardError::LimitsDiffer { shard: state.shard() });
    }
    Ok(limits)
}

/// Moves one old shard's items (tombstones too) to their SKUs' new
/// shards; returns, per old item id, its new shard and id.
fn move_items(
    state: &ShardState,
    shards: u32,
    limits: &Limits,
    builders: &mut [Builder],
    report: &mut ReshardReport,
) -> Result<Vec<(u32, u32)>, ReshardError> {
    let p = &state.persisted;
    let mut map = Vec::with_capacity(p.items.len());
    for (id, item) in p.items.iter().enumerate() {
        let old_id = ItemId(u32::try_from(id).unwrap_or(u32::MAX));
        let sku = state.item_sku(old_id).map_err(|e| invalid(state.shard(), e.0))?;
        let warehouse = state.item_warehouse(old_id).map_err(|e| invalid(state.shard(), e.0))?;
        let target = shard_of(sku, shards);
        let b = &mut builders[target as usize];
        if b.items.len() >= limits.items_per_shard_max as usize {
            let (count, max) = (b.items.len() + 1, u64::from(limits.items_per_shard_max));
            return Err(over(target, "items", "items_per_shard_max", count, max));
        }
        let mut copy = item.clone();
        copy.warehouse = b.warehouse_id(warehouse, limits)?;
        copy.sku_offset = u32::try_from(b.sku_arena.len()).unwrap_or(u32::MAX);
        b.sku_arena.extend_from_slice(sku.as_bytes());
        for movement in &mut copy.history {
            // A principal is re-interned by name; "other" stays "other".
            if let Who::Principal(principal) = movement.who
                && principal != PRINCIPAL_OTHER
            {
                let name = state.principal_name(principal).map_err(|e| invalid(state.shard(), e.0))?;
                movement.who = Who::Principal(b.principal_id(name, limits)?);
            }
        }
        let new_id = u32::try_from(b.items.len()).unwrap_or(u32::MAX);
        if p.catalog.tombstones.contains(&old_id.0) {
            b.tombstones.insert(new_id);
            report.tombstones += 1;
        }
        b.items.push(copy);
        map.push((target, new_id));
        report.items += 1;
    }
    Ok(map)
}

/// Carries terminal reservations (every reservation left is terminal).
/// A reservation's parts (one per old shard it had lines on) go all or
/// none: a read by id must not find part of one.
fn place_terminal(
    old: &[ShardState],
    moved: &[Vec<(u32, u32)>],
    lookup: &dyn ReservationLookup,
    builders: &mut [Builder],
    report: &mut ReshardReport,
) {
    let shards = u32::try_from(builders.len()).unwrap_or(u32::MAX);
    let mut placed: Vec<(&Reservation, u32, u32, Option<u32>)> = Vec::new();
    let mut whole: HashMap<ReservationId, bool> = HashMap::new();
    let mut taken: hashbrown::HashSet<(ReservationId, u32)> = hashbrown::HashSet::new();
    for (state, map) in old.iter().zip(moved) {
        let p = &state.persisted;
        for &slot in &p.terminal {
            let Some(reservation) = p.reservations.get(slot as usize).and_then(Option::as_ref) else { continue };
            debug_assert!(reservation.state.is_terminal());
            let targets: BTreeSet<u32> =
                reservation.lines.as_slice().iter().map(|line| map[line.item.0 as usize].0).collect();
            let target = match targets.len() {
                1 => targets.first().copied(),
                // A confirm that sold nothing keeps no lines: it goes home.
                0 => Some(u32::from(reservation.id.home_shard())).filter(|&home| home < shards),
                _ => None,
            }
            .filter(|&target| {
                lookup.looks_on(&reservation.id, target, shards) && taken.insert((reservation.id, target))
            });
            *whole.entry(reservation.id).or_insert(true) &= target.is_some();
            placed.push((reservation, state.shard(), slot, target));
        }
    }
    for (reservation, old_shard, slot, target) in placed {
        let Some(target) = target.filter(|_| whole.get(&reservation.id).copied().unwrap_or(false)) else {
            report.terminal_forgotten += 1;
            continue;
        };
        let map = &moved[old_shard as usize];
        let mut copy = reservation.clone();
        for line in copy.lines.as_mut_slice() {
            line.item = ItemId(map[line.item.0 as usize].1);
        }
        builders[target as usize].terminal.push((copy.ended_at_ms, old_shard, slot, copy));
        report.terminal_carried += 1;
    }
}

/// Moves one old shard's per-SKU maps to their SKUs' new shards.
fn move_sku_records(state: &ShardState, builders: &mut [Builder], report: &mut ReshardReport) {
    let shards = u32::try_from(builders.len()).unwrap_or(u32::MAX);
    let p = &state.persisted;
    let owner = |sku: &str| shard_of(sku, shards) as usize;
    for (sku, limit) in &p.customers.limits {
        builders[owner(sku)].customers.limits.insert(sku.clone(), *limit);
        report.customer_limits += 1;
    }
    for ((sku, customer), usage) in &p.customers.usage {
        builders[owner(sku)].customers.usage.insert((sku.clone(), customer.clone()), usage.clone());
        report.customer_usages += 1;
    }
    for (sku, components) in &p.bundles.by_sku {
        builders[owner(sku)].bundles.by_sku.insert(sku.clone(), components.clone());
        report.bundles += 1;
    }
    for (sku, product) in &p.catalog.products {
        builders[owner(sku)].products.insert(sku.clone(), product.clone());
        report.products += 1;
    }
    for (sku, list) in &p.warehouse_priority {
        builders[owner(sku)].warehouse_priority.insert(sku.clone(), list.clone());
        report.warehouse_priorities += 1;
    }
}

/// The new shard as a state, through the full load check of a snapshot
/// (references, then every rule).
fn build(mut b: Builder, shards: u32, common: &Common) -> Result<ShardState, ReshardError> {
    b.check_bounds(&common.limits)?;
    // Oldest end first, as the queue that forgets them wants.
    b.terminal.sort_by_key(|(ended_at_ms, old_shard, slot, _)| (*ended_at_ms, *old_shard, *slot));
    let reservations: Vec<Option<Reservation>> = b.terminal.into_iter().map(|(.., r)| Some(r)).collect();
    debug_assert!(reservations.iter().flatten().all(|r| r.state != ReservationState::Held));
    let terminal: VecDeque<u32> = (0..u32::try_from(reservations.len()).unwrap_or(u32::MAX)).collect();
    let shard = b.shard;
    let persisted = Persisted {
        format: STATE_FORMAT,
        shard,
        shard_count: shards,
        limits: common.limits,
        last_applied: common.last_applied,
        membership: common.membership.clone(),
        now_ms: common.now_ms,
        holds_made: common.holds_made,
        items: b.items,
        sku_arena: b.sku_arena,
        warehouses: b.warehouses,
        principals: b.principals,
        reservations,
        free_slots: Vec::new(),
        terminal,
        dedup: DedupWindow::default(),
        customers: b.customers,
        bundles: b.bundles,
        catalog: crate::product::Catalog { products: b.products, tombstones: b.tombstones },
        warehouse_priority: b.warehouse_priority,
    };
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&persisted).map_err(|e| invalid(shard, e.to_string()))?;
    let state = ShardState::from_snapshot_bytes(&bytes).map_err(|detail| invalid(shard, detail))?;
    debug_assert!(state.check_invariants().is_ok());
    Ok(state)
}

fn invalid(shard: u32, detail: impl Into<String>) -> ReshardError {
    ReshardError::Invalid { shard, detail: detail.into() }
}

fn check_no_live_holds(old: &[ShardState]) -> Result<(), ReshardError> {
    let per_shard: Vec<(u32, u64)> = old
        .iter()
        .map(|state| (state.shard(), u64::from(state.live_holds())))
        .filter(|&(_, count)| count > 0)
        .collect();
    if per_shard.is_empty() {
        return Ok(());
    }
    let latest_deadline_ms = old
        .iter()
        .flat_map(|state| state.persisted.reservations.iter().flatten())
        .filter(|r| r.state == ReservationState::Held)
        .map(|r| r.deadline_ms)
        .max()
        .unwrap_or(0);
    let total = per_shard.iter().map(|(_, count)| count).sum();
    Err(ReshardError::LiveHolds { total, per_shard, latest_deadline_ms })
}
