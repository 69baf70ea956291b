//! Builders shared by the integration tests.
#![allow(dead_code)]

use engine::cmd::{
    Adjust, AdjustReason, Allocation, AttrUpdate, Command, Deadline, Expect, Hold, HoldLine, UpsertItem,
};
use engine::ids::{IdempotencyKey, Quantity, ReservationId, Sku, Warehouse};

pub fn sku(text: &str) -> Sku {
    Sku::new(text).unwrap_or_else(|error| panic!("bad test SKU {text}: {error}"))
}

pub fn wh(text: &str) -> Warehouse {
    Warehouse::new(text).unwrap_or_else(|error| panic!("bad test warehouse {text}: {error}"))
}

pub fn qty(units: u64) -> Quantity {
    Quantity::new(units).unwrap_or_else(|error| panic!("bad test quantity {units}: {error}"))
}

pub fn rid(n: u64) -> ReservationId {
    let mut unique = [0u8; 14];
    unique[..8].copy_from_slice(&n.to_be_bytes());
    ReservationId::from_parts(0, unique)
}

pub fn upsert_command(sku_text: &str, warehouse: &str, on_hand: u64, threshold: u64) -> Command {
    Command::UpsertItem(UpsertItem {
        sku: sku(sku_text),
        warehouse: wh(warehouse),
        on_hand: Some(on_hand),
        low_stock_threshold: Some(threshold),
        name: AttrUpdate::Keep,
        unit_price_minor: AttrUpdate::Keep,
        expect: Expect::Any,
        principal: None,
    })
}

pub fn adjust_command(sku_text: &str, warehouse: &str, delta: i64, reason: AdjustReason) -> Command {
    Command::Adjust(Adjust {
        note: None,
        reference: None,
        sku: sku(sku_text),
        warehouse: wh(warehouse),
        delta,
        reason,
        principal: None,
    })
}

pub fn hold_command(n: u64, lines: &[(&str, &str, u64)], ttl_ms: u64, key: Option<&str>) -> Command {
    let lines: Vec<_> = lines.iter().map(|&(s, w, q)| (s, Some(w), q)).collect();
    hold_any_command(n, &lines, ttl_ms, key)
}

/// A hold whose lines without a warehouse are allocated, most available first.
pub fn hold_any_command(n: u64, lines: &[(&str, Option<&str>, u64)], ttl_ms: u64, key: Option<&str>) -> Command {
    Command::Hold(Hold {
        principal: None,
        id: rid(n),
        lines: lines
            .iter()
            .map(|&(s, w, q)| HoldLine { sku: sku(s), warehouse: w.map(wh), quantity: qty(q) })
            .collect(),
        deadline: Deadline::AfterMs(ttl_ms),
        idempotency_key: key.map(|k| IdempotencyKey::new(k).unwrap_or_else(|error| panic!("bad key: {error}"))),
        confirm: false,
        allocation: Allocation::MostAvailable,
        customer: None,
    })
}
