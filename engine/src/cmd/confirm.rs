//! `Confirm`: the sale. Every line of a held reservation leaves the shelf:
//! `on_hand -= q`, `reserved -= q`.
//!
//! A partial confirm (`lines` not empty) sells fewer units than held: each
//! listed (SKU, warehouse) of the reservation sells the quantity given (0
//! sells none of it), lines not listed sell all they hold, and whatever is
//! not sold goes back to the shelf in the same step. The reservation then
//! keeps the lines as sold. A listed line the reservation does not hold, or
//! a quantity over what it holds, is refused `confirm_over_held` (with the
//! request line's index); a confirm that would sell nothing is refused
//! `quantity_zero` (release it instead).
//!
//! Idempotent: confirming a confirmed reservation answers the same
//! (`replayed`). A released or expired reservation cannot be confirmed; each
//! refusal has its own code, so the caller can tell the shopper why.

use rkyv::{Archive, Deserialize, Serialize};

use crate::error::{Corrupt, Field, InputError};
use crate::ids::{Principal, QUANTITY_MAX, ReservationId, Sku, Warehouse};
use crate::outcome::{Outcome, Refusal};
use crate::reservation::ReservationState;
use crate::state::{Emitter, ShardState};

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Confirm {
    pub id: ReservationId,
    /// Who confirmed (the API key's name): recorded in the ledger.
    pub principal: Option<Principal>,
}

/// A partial confirm (module docs): the units to sell of these held lines.
/// A command of its own rather than a field of `Confirm`, so the archived
/// shape of the log's other commands stays as it was.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ConfirmPart {
    pub id: ReservationId,
    pub principal: Option<Principal>,
    pub lines: Vec<ConfirmLine>,
}

/// Units to sell of one held (SKU, warehouse).
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct ConfirmLine {
    pub sku: Sku,
    pub warehouse: Warehouse,
    pub quantity: u64,
}

impl ConfirmPart {
    pub fn validate(&self) -> Result<(), InputError> {
        if let Some(principal) = &self.principal {
            principal.check()?;
        }
        for line in &self.lines {
            line.sku.check()?;
            line.warehouse.check()?;
            if line.quantity > QUANTITY_MAX {
                return Err(InputError::TooLarge { field: Field::Quantity, value: line.quantity, max: QUANTITY_MAX });
            }
        }
        Ok(())
    }
}

pub(super) fn apply(state: &mut ShardState, command: &Confirm, emitter: &mut Emitter) -> Result<Outcome, Corrupt> {
    super::end_held(state, &command.id, ReservationState::Confirmed, None, emitter)
}

pub(super) fn apply_part(
    state: &mut ShardState,
    command: &ConfirmPart,
    emitter: &mut Emitter,
) -> Result<Outcome, Corrupt> {
    if command.lines.is_empty() {
        return super::end_held(state, &command.id, ReservationState::Confirmed, None, emitter);
    }
    let Some(slot) = state.find_reservation(&command.id) else {
        return Ok(Refusal::ReservationNotFound.into());
    };
    let Some(held) = state.reservation_held_lines(slot) else {
        return Ok(Refusal::ReservationNotFound.into());
    };
    if state.summary(slot).is_some_and(|summary| summary.state != ReservationState::Held) {
        // Ended already: answered (or refused) as any confirm.
        return super::end_held(state, &command.id, ReservationState::Confirmed, None, emitter);
    }
    let units: Vec<u64> = held.iter().map(|line| line.quantity).collect();
    let sold = units_sold(&units, &command.lines, |line| {
        let item = state.find_item(line.sku.as_str(), line.warehouse.as_str())?;
        held.iter().position(|h| h.item == item)
    });
    match sold {
        Ok(sold) => super::end_held(state, &command.id, ReservationState::Confirmed, Some(&sold), emitter),
        Err(refusal) => Ok(refusal.into()),
    }
}

/// What each held line sells under a partial confirm's `lines` (module
/// docs): `held` is each held line's units, `find` the held line a request
/// line names. One rule for the shard that applies it and for a server
/// that checks a reservation across shards before any part sells.
pub fn units_sold(
    held: &[u64],
    lines: &[ConfirmLine],
    find: impl Fn(&ConfirmLine) -> Option<usize>,
) -> Result<Vec<u64>, Refusal> {
    let mut sold = held.to_vec();
    let mut listed = vec![false; held.len()];
    for (index, line) in lines.iter().enumerate() {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        match find(line).filter(|at| *at < held.len()) {
            Some(at) if !listed[at] && line.quantity <= held[at] => {
                listed[at] = true;
                sold[at] = line.quantity;
            }
            Some(at) => return Err(Refusal::ConfirmOverHeld { line: index, held: held[at] }),
            None => return Err(Refusal::ConfirmOverHeld { line: index, held: 0 }),
        }
    }
    if sold.iter().all(|units| *units == 0) {
        return Err(Refusal::Invalid(InputError::Zero { field: Field::Quantity }));
    }
    Ok(sold)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::Command;
    use crate::ids::IdempotencyKey;
    use crate::item::MovementReason;
    use crate::outcome::Refusal;
    use crate::testing::{Fixture, hold, rid, wh};

    fn confirm(n: u64) -> Command {
        Command::Confirm(Confirm { principal: None, id: rid(n) })
    }

    #[test]
    fn confirm_sells_the_held_units() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.hold(1, &[("SKU-1", "berlin", 4)]);
        let outcome = f.one(confirm(1));
        assert!(matches!(outcome, Outcome::Confirmed { ref reservation, replayed: false, .. }
            if reservation.state == ReservationState::Confirmed && reservation.ended_at_ms == Some(1_000)));
        assert_eq!(f.levels("SKU-1", "berlin"), (6, 0));
        let history = f.state.history("SKU-1", "berlin", 1).ok().flatten().unwrap_or_default();
        assert_eq!(history[0].reason, MovementReason::Confirmed);
        assert_eq!(history[0].who, rid(1).to_string());
    }

    #[test]
    fn confirming_twice_answers_the_same_and_sells_once() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.hold(1, &[("SKU-1", "berlin", 4)]);
        let Outcome::Confirmed { reservation: first, lines, idempotency_key, .. } = f.one(confirm(1)) else {
            panic!("not confirmed")
        };
        let again = f.one(confirm(1));
        assert_eq!(again, Outcome::Confirmed { reservation: first, replayed: true, lines, idempotency_key });
        assert_eq!(f.levels("SKU-1", "berlin"), (6, 0));
    }

    #[test]
    fn confirm_answers_the_idempotency_key_of_the_hold_and_so_does_its_replay() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        let key = IdempotencyKey::new("order:77").ok();
        f.one(hold(rid(1), &[("SKU-1", "berlin", 4)], 60_000, key.clone()));
        let first = f.one(confirm(1));
        assert!(
            matches!(first, Outcome::Confirmed { replayed: false, ref idempotency_key, .. } if *idempotency_key == key),
            "{first:?}"
        );
        let again = f.one(confirm(1));
        assert!(
            matches!(again, Outcome::Confirmed { replayed: true, ref idempotency_key, .. } if *idempotency_key == key),
            "{again:?}"
        );
        f.hold(2, &[("SKU-1", "berlin", 1)]);
        assert!(matches!(f.one(confirm(2)), Outcome::Confirmed { idempotency_key: None, .. }), "a hold without a key");
    }

    #[test]
    fn confirm_after_release_is_refused() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.hold(1, &[("SKU-1", "berlin", 4)]);
        f.one(Command::Release(crate::cmd::Release { principal: None, id: rid(1) }));
        assert_eq!(f.one(confirm(1)), Outcome::Refused(Refusal::AlreadyReleased));
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 0));
    }

    #[test]
    fn confirm_after_expiry_is_refused() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.hold(1, &[("SKU-1", "berlin", 4)]);
        f.now_ms += 60_000;
        assert_eq!(f.one(confirm(1)), Outcome::Refused(Refusal::AlreadyExpired));
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 0));
    }

    #[test]
    fn confirm_of_an_unknown_reservation_is_refused() {
        let mut f = Fixture::new();
        assert_eq!(f.one(confirm(9)), Outcome::Refused(Refusal::ReservationNotFound));
    }

    fn partial(n: u64, lines: &[(&str, &str, u64)]) -> Command {
        Command::ConfirmPart(ConfirmPart {
            principal: None,
            id: rid(n),
            lines: lines
                .iter()
                .map(|&(sku, warehouse, quantity)| ConfirmLine {
                    sku: crate::testing::sku(sku),
                    warehouse: wh(warehouse),
                    quantity,
                })
                .collect(),
        })
    }

    #[test]
    fn a_partial_confirm_sells_what_it_names_and_releases_the_rest_in_one_step() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.stock("SKU-2", "berlin", 10, 0);
        f.hold(1, &[("SKU-1", "berlin", 4), ("SKU-2", "berlin", 3)]);
        let outcome = f.one(partial(1, &[("SKU-1", "berlin", 1)]));
        let Outcome::Confirmed { replayed: false, lines, .. } = &outcome else { panic!("{outcome:?}") };
        // SKU-1 sells 1 of 4; SKU-2, not listed, sells all 3.
        let sold: Vec<(String, u64)> = lines.iter().map(|line| (line.sku.clone(), line.quantity)).collect();
        assert_eq!(sold, [("SKU-1".to_owned(), 1), ("SKU-2".to_owned(), 3)]);
        assert_eq!(f.levels("SKU-1", "berlin"), (9, 0));
        assert_eq!(f.levels("SKU-2", "berlin"), (7, 0));
        // A retry answers the same, and sells nothing more.
        let again = f.one(partial(1, &[("SKU-1", "berlin", 1)]));
        assert!(matches!(&again, Outcome::Confirmed { replayed: true, lines: l, .. } if l == lines), "{again:?}");
        assert_eq!(f.levels("SKU-1", "berlin"), (9, 0));
        f.state.check_invariants().unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn a_line_of_zero_releases_it_and_confirming_nothing_is_refused() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.stock("SKU-2", "berlin", 10, 0);
        f.hold(1, &[("SKU-1", "berlin", 4), ("SKU-2", "berlin", 3)]);
        assert_eq!(
            f.one(partial(1, &[("SKU-1", "berlin", 0), ("SKU-2", "berlin", 0)])),
            Outcome::Refused(Refusal::Invalid(InputError::Zero { field: Field::Quantity }))
        );
        let outcome = f.one(partial(1, &[("SKU-1", "berlin", 0)]));
        assert!(matches!(&outcome, Outcome::Confirmed { lines, .. } if lines.len() == 1 && lines[0].sku == "SKU-2"));
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 0));
        assert_eq!(f.levels("SKU-2", "berlin"), (7, 0));
    }

    #[test]
    fn a_partial_confirm_over_what_is_held_changes_nothing() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.stock("SKU-1", "paris", 10, 0);
        f.hold(1, &[("SKU-1", "berlin", 4)]);
        let over = [
            (partial(1, &[("SKU-1", "berlin", 5)]), Refusal::ConfirmOverHeld { line: 0, held: 4 }),
            (partial(1, &[("SKU-1", "paris", 1)]), Refusal::ConfirmOverHeld { line: 0, held: 0 }),
            (
                partial(1, &[("SKU-1", "berlin", 1), ("SKU-1", "berlin", 1)]),
                Refusal::ConfirmOverHeld { line: 1, held: 4 },
            ),
        ];
        for (command, refusal) in over {
            assert_eq!(f.one(command), Outcome::Refused(refusal));
            assert_eq!(f.levels("SKU-1", "berlin"), (10, 4));
        }
    }
}
