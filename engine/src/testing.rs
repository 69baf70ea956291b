//! Builders for tests and benchmarks: the one copy of the ids, items and
//! commands that the engine's, the cluster's and the benchmarks' tests make,
//! and `Fixture`, a shard that applies them.
//!
//! Compiled only for the engine's own unit tests and with the `testing`
//! feature, which only dev-dependencies turn on: production code never
//! depends on it. Test input is trusted, so a bad one panics saying what.

use crate::cmd::{
    Adjust, AdjustReason, Allocation, AttrUpdate, Command, Confirm, Deadline, Expect, Hold, HoldLine, MoveQuantity,
    Release, UpsertItem,
};
use crate::ids::{IdempotencyKey, Quantity, RequestId, ReservationId, Sku, Warehouse};
use crate::item::ItemId;
use crate::placement::shard_of;
use crate::states::QuantityState;
use crate::{Applied, Limits, LogEntry, LogId, Outcome, ShardState};

pub fn sku(text: &str) -> Sku {
    Sku::new(text).unwrap_or_else(|error| panic!("bad test SKU {text}: {error}"))
}

pub fn wh(text: &str) -> Warehouse {
    Warehouse::new(text).unwrap_or_else(|error| panic!("bad test warehouse {text}: {error}"))
}

pub fn qty(units: u64) -> Quantity {
    Quantity::new(units).unwrap_or_else(|error| panic!("bad test quantity {units}: {error}"))
}

/// The first SKU name `{prefix}-{n}` that lives on `shard` of `shards`.
pub fn sku_on(shard: u32, shards: u32, prefix: &str) -> String {
    (0..1_000_000)
        .map(|n| format!("{prefix}-{n}"))
        .find(|name| shard_of(name, shards) == shard)
        .unwrap_or_else(|| panic!("no SKU {prefix}-n on shard {shard} of {shards}"))
}

pub fn key(text: &str) -> IdempotencyKey {
    IdempotencyKey::new(text).unwrap_or_else(|error| panic!("bad test idempotency key {text}: {error}"))
}

/// Reservation id number `n`, homed on shard 0.
pub fn rid(n: u64) -> ReservationId {
    rid_on(0, n)
}

/// Reservation id number `n`, homed on shard `home`: `n` big-endian in the
/// first 8 unique bytes, so ids order as their numbers do.
pub fn rid_on(home: u16, n: u64) -> ReservationId {
    let mut unique = [0u8; 14];
    unique[..8].copy_from_slice(&n.to_be_bytes());
    ReservationId::from_parts(home, unique)
}

/// Reservation id number `n`, homed on the shard that owns `sku` among `shards`.
pub fn rid_for(n: u64, sku: &str, shards: u32) -> ReservationId {
    let home = u16::try_from(shard_of(sku, shards)).unwrap_or_else(|error| panic!("shard of {sku}: {error}"));
    rid_on(home, n)
}

/// Reservation id on shard 0 whose 14 unique bytes are all `n`. Only for
/// the committed snapshot images (`engine/tests/fuzz_regressions/*.snap`),
/// whose bytes hold these ids: any other test uses `rid`.
pub fn rid_filled(n: u8) -> ReservationId {
    ReservationId::from_parts(0, [n; 14])
}

/// An upsert of (`sku`, `warehouse`) that sets nothing: callers fill in
/// what they change with struct update syntax.
pub fn upsert_item(sku_text: &str, warehouse: &str) -> UpsertItem {
    UpsertItem {
        sku: sku(sku_text),
        warehouse: wh(warehouse),
        on_hand: None,
        low_stock_threshold: None,
        name: AttrUpdate::Keep,
        unit_price_minor: AttrUpdate::Keep,
        expect: Expect::Any,
        principal: None,
    }
}

/// Sets the item's on hand and low-stock threshold, creating it if need be.
pub fn upsert(sku_text: &str, warehouse: &str, on_hand: u64, threshold: u64) -> Command {
    Command::UpsertItem(UpsertItem {
        on_hand: Some(on_hand),
        low_stock_threshold: Some(threshold),
        ..upsert_item(sku_text, warehouse)
    })
}

pub fn adjust(sku_text: &str, warehouse: &str, delta: i64, reason: AdjustReason) -> Command {
    Command::Adjust(Adjust {
        sku: sku(sku_text),
        warehouse: wh(warehouse),
        delta,
        reason,
        principal: None,
        note: None,
        reference: None,
    })
}

/// Confirms (`confirm`) or releases the whole of reservation `id`.
pub fn end_hold(id: ReservationId, confirm: bool) -> Command {
    if confirm {
        Command::Confirm(Confirm { id, principal: None })
    } else {
        Command::Release(Release { id, principal: None })
    }
}

/// Moves `quantity` units of an item from one quantity state to another.
pub fn move_quantity(
    sku_text: &str,
    warehouse: &str,
    from: QuantityState,
    to: QuantityState,
    quantity: u64,
) -> Command {
    Command::MoveQuantity(MoveQuantity {
        sku: sku(sku_text),
        warehouse: wh(warehouse),
        from,
        to,
        quantity: qty(quantity),
        principal: None,
        note: None,
        reference: None,
    })
}

/// A hold of `lines` (SKU, warehouse, units) for `ttl_ms` under `id`.
pub fn hold(id: ReservationId, lines: &[(&str, &str, u64)], ttl_ms: u64, key: Option<IdempotencyKey>) -> Command {
    let lines: Vec<_> = lines.iter().map(|&(sku, warehouse, units)| (sku, Some(warehouse), units)).collect();
    hold_any(id, &lines, ttl_ms, key)
}

/// A hold whose lines without a warehouse are allocated, most available first.
pub fn hold_any(
    id: ReservationId,
    lines: &[(&str, Option<&str>, u64)],
    ttl_ms: u64,
    key: Option<IdempotencyKey>,
) -> Command {
    Command::Hold(Hold {
        id,
        lines: lines
            .iter()
            .map(|&(sku_text, warehouse, units)| HoldLine {
                sku: sku(sku_text),
                warehouse: warehouse.map(wh),
                quantity: qty(units),
            })
            .collect(),
        deadline: Deadline::AfterMs(ttl_ms),
        idempotency_key: key,
        confirm: false,
        allocation: Allocation::MostAvailable,
        customer: None,
        principal: None,
    })
}

/// One shard that applies commands as log entries at a log time the test
/// moves (`now_ms`), checking every invariant after each entry.
pub struct Fixture {
    pub state: ShardState,
    pub index: u64,
    pub now_ms: u64,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    /// A one-shard state at log time 1000.
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    pub fn with_limits(limits: Limits) -> Self {
        Self { state: ShardState::new(0, 1, limits), index: 0, now_ms: 1_000 }
    }

    /// Applies `commands` as the next entry.
    pub fn run(&mut self, commands: Vec<Command>) -> Applied {
        self.run_with_ids(commands, Vec::new())
    }

    /// Applies one entry whose commands carry `request_ids`.
    pub fn run_with_ids(&mut self, commands: Vec<Command>, request_ids: Vec<RequestId>) -> Applied {
        self.index += 1;
        let entry = LogEntry::batch_with_ids(LogId::new(1, self.index), self.now_ms, commands, request_ids);
        match self.state.apply(&entry) {
            Ok(applied) => {
                if let Err(error) = self.state.check_invariants() {
                    panic!("invariant broken after entry {}: {error}", self.index);
                }
                applied
            }
            Err(error) => panic!("apply failed: {error}"),
        }
    }

    /// Applies `command` as an entry of its own: its outcome.
    pub fn one(&mut self, command: Command) -> Outcome {
        self.run(vec![command]).outcomes.remove(0)
    }

    pub fn stock(&mut self, sku: &str, warehouse: &str, on_hand: u64, threshold: u64) {
        let outcome = self.one(upsert(sku, warehouse, on_hand, threshold));
        assert!(!outcome.is_refused(), "stocking failed: {outcome:?}");
    }

    /// The item's (on hand, reserved).
    pub fn levels(&self, sku: &str, warehouse: &str) -> (u64, u64) {
        let id = self.state.find_item(sku, warehouse).unwrap_or(ItemId(u32::MAX));
        let item = self.state.item(id);
        (item.on_hand, item.reserved)
    }

    /// Holds `lines` under reservation id `rid(n)` for 60 s.
    pub fn hold(&mut self, n: u64, lines: &[(&str, &str, u64)]) -> Outcome {
        self.one(hold(rid(n), lines, 60_000, None))
    }

    /// Holds `lines` under reservation id `rid(n)` for 60 s; a line
    /// without a warehouse is allocated.
    pub fn hold_any(&mut self, n: u64, lines: &[(&str, Option<&str>, u64)]) -> Outcome {
        self.one(hold_any(rid(n), lines, 60_000, None))
    }
}
