//! Builders for tests and benchmarks: the one copy of the ids, items and
//! commands that the engine's, the cluster's and the benchmarks' tests make.
//!
//! Compiled only for the engine's own unit tests and with the `testing`
//! feature, which only dev-dependencies turn on: production code never
//! depends on it. Test input is trusted, so a bad one panics saying what.

use crate::cmd::{Adjust, AdjustReason, Allocation, AttrUpdate, Command, Deadline, Expect, Hold, HoldLine, UpsertItem};
use crate::ids::{IdempotencyKey, Quantity, ReservationId, Sku, Warehouse};
use crate::placement::shard_of;

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
