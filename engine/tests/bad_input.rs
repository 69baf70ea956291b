//! Bad input at the crate's API gives typed errors, never a panic — also when
//! it arrives as bytes (from the log or a peer) that bypassed the
//! constructors.

use engine::cmd::{AdjustReason, Command, Confirm};
use engine::ids::{IdempotencyKey, Quantity, ReservationId, Sku, Warehouse};
use engine::outcome::{Outcome, Refusal};
use engine::testing::{adjust, hold, rid, upsert};
use engine::{ApplyError, Field, InputError, Limits, LogEntry, LogId, ShardState};

fn apply_bytes(state: &mut ShardState, bytes: &[u8]) -> Outcome {
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(bytes);
    let entry = rkyv::from_bytes::<LogEntry, rkyv::rancor::Error>(&aligned).unwrap_or_else(|e| panic!("{e}"));
    state.apply(&entry).unwrap_or_else(|e| panic!("{e}")).outcomes.remove(0)
}

/// Encodes `entry` and replaces the first occurrence of `from` with `to`.
fn patched(entry: &LogEntry, from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut bytes = rkyv::to_bytes::<rkyv::rancor::Error>(entry).unwrap_or_else(|e| panic!("{e}")).to_vec();
    let at = bytes.windows(from.len()).position(|w| w == from).unwrap_or_else(|| panic!("pattern not found"));
    bytes[at..at + to.len()].copy_from_slice(to);
    bytes
}

#[test]
fn constructors_refuse_bad_ids_and_quantities_with_typed_errors() {
    assert_eq!(Sku::new("bad sku"), Err(InputError::BadCharacter { field: Field::Sku, position: 3 }));
    assert_eq!(Warehouse::new(""), Err(InputError::Empty { field: Field::Warehouse }));
    assert!(matches!(Quantity::new(0), Err(InputError::Zero { .. })));
    assert!(matches!(Quantity::new(u64::MAX), Err(InputError::TooLarge { .. })));
    assert!(matches!(IdempotencyKey::new("x".repeat(500)), Err(InputError::TooLong { .. })));
    assert!("not-hex-at-all-not-hex-at-all-xx".parse::<ReservationId>().is_err());
    assert_eq!(InputError::Zero { field: Field::Quantity }.code(), "quantity_zero");
}

#[test]
fn a_bad_sku_read_from_the_log_is_refused_at_apply() {
    let mut state = ShardState::new(0, 1, Limits::default());
    let entry = LogEntry::batch(LogId::new(1, 1), 1, vec![upsert("SKUXGOOD", "berlin", 5, 0)]);
    let bytes = patched(&entry, b"SKUXGOOD", b"SKU/GOOD");
    let outcome = apply_bytes(&mut state, &bytes);
    assert_eq!(
        outcome,
        Outcome::Refused(Refusal::Invalid(InputError::BadCharacter { field: Field::Sku, position: 3 }))
    );
    assert_eq!(state.stats().items, 0, "nothing written");
}

#[test]
fn zero_and_huge_quantities_read_from_the_log_are_refused_at_apply() {
    let mut state = ShardState::new(0, 1, Limits::default());
    let seed = LogEntry::batch(LogId::new(1, 1), 1, vec![upsert("SKU-1", "berlin", 5, 0)]);
    state.apply(&seed).unwrap_or_else(|e| panic!("{e}"));
    let marker: u64 = 0x0A0B_0C0D_0E0F;
    let entry = LogEntry::batch(LogId::new(1, 2), 2, vec![hold(rid(1), &[("SKU-1", "berlin", marker)], 1_000, None)]);
    for (bad, code) in [(0u64, "quantity_zero"), (u64::MAX, "quantity_too_large")] {
        let bytes = patched(&entry, &marker.to_le_bytes(), &bad.to_le_bytes());
        let mut copy = ShardState::from_snapshot_bytes(&state.to_snapshot_bytes().unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
        let outcome = apply_bytes(&mut copy, &bytes);
        assert_eq!(outcome.refusal().map(Refusal::code), Some(code));
        assert_eq!(copy.get_item("SKU-1", "berlin").ok().flatten().map(|i| i.reserved), Some(0));
    }
}

#[test]
fn unknown_reservations_and_items_are_refusals_not_errors() {
    let mut state = ShardState::new(0, 1, Limits::default());
    let entry = LogEntry::batch(
        LogId::new(1, 1),
        1,
        vec![
            Command::Confirm(Confirm { principal: None, id: rid(404) }),
            adjust("SKU-404", "berlin", 1, AdjustReason::Receive),
        ],
    );
    let outcomes = state.apply(&entry).unwrap_or_else(|e| panic!("{e}")).outcomes;
    assert_eq!(outcomes, vec![Outcome::Refused(Refusal::ReservationNotFound), Outcome::Refused(Refusal::ItemNotFound)]);
}

#[test]
fn an_entry_out_of_order_is_an_apply_error() {
    let mut state = ShardState::new(0, 1, Limits::default());
    state.apply(&LogEntry::blank(LogId::new(1, 1))).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        state.apply(&LogEntry::blank(LogId::new(1, 1))),
        Err(ApplyError::OutOfOrder { last_applied: Some(1), got: 1 })
    );
}

#[test]
fn garbage_snapshot_bytes_are_an_error() {
    assert!(ShardState::from_snapshot_bytes(&[]).is_err());
    assert!(ShardState::from_snapshot_bytes(&[0xFF; 256]).is_err());
}
