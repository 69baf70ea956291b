//! `Hold`: reserve units of one or more items of this shard until a deadline.
//!
//! All lines or none: the same item named twice is summed first, every line is
//! checked, and if any is short the answer lists every short line and nothing
//! changes. A retry is safe: the same reservation id with the same lines, or
//! the same idempotency key, answers the existing reservation (`replayed`)
//! and never holds twice. With `confirm` set the hold is confirmed in the
//! same step (a direct sale).

use rkyv::{Archive, Deserialize, Serialize};

use crate::error::{Field, InputError};
use crate::event::Cause;
use crate::ids::{IdempotencyKey, QUANTITY_MAX, Quantity, ReservationId, Sku, Warehouse};
use crate::item::ItemId;
use crate::outcome::{Bound, Outcome, Refusal, ShortLine};
use crate::reservation::{HeldLine, Lines, Reservation, ReservationState};
use crate::state::{Change, Emitter, ShardState};

/// When a hold ends, if nobody confirms or releases it first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum Deadline {
    /// At this log time. Used by multi-shard reservations, whose parts must
    /// share one deadline.
    AtMs(u64),
    /// This long after the log time the command is applied at.
    AfterMs(u64),
}

impl Deadline {
    pub(crate) fn validate(self) -> Result<(), InputError> {
        match self {
            Deadline::AfterMs(0) => Err(InputError::Zero { field: Field::TtlMs }),
            Deadline::AtMs(0) => Err(InputError::Zero { field: Field::DeadlineMs }),
            Deadline::AfterMs(_) | Deadline::AtMs(_) => Ok(()),
        }
    }

    /// The absolute deadline, if it lies after now and within the longest
    /// hold allowed.
    pub(crate) fn resolve(self, now_ms: u64, ttl_max_ms: u64) -> Result<u64, Refusal> {
        let latest_ms = now_ms.saturating_add(ttl_max_ms);
        let deadline_ms = match self {
            Deadline::AtMs(at) => at,
            Deadline::AfterMs(ttl) => now_ms.saturating_add(ttl),
        };
        if deadline_ms <= now_ms {
            return Err(Refusal::DeadlineInPast { now_ms, deadline_ms });
        }
        if deadline_ms > latest_ms {
            return Err(Refusal::DeadlineTooFar { deadline_ms, latest_ms });
        }
        Ok(deadline_ms)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct HoldLine {
    pub sku: Sku,
    pub warehouse: Warehouse,
    pub quantity: Quantity,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Hold {
    pub id: ReservationId,
    pub lines: Vec<HoldLine>,
    pub deadline: Deadline,
    pub idempotency_key: Option<IdempotencyKey>,
    /// Confirm at once: hold and sell in one step.
    pub confirm: bool,
}

impl Hold {
    pub fn validate(&self, lines_per_hold_max: u32) -> Result<(), InputError> {
        if self.lines.is_empty() {
            return Err(InputError::NoLines);
        }
        if self.lines.len() > lines_per_hold_max as usize {
            return Err(InputError::TooManyLines { count: self.lines.len(), max: lines_per_hold_max as usize });
        }
        for line in &self.lines {
            line.sku.check()?;
            line.warehouse.check()?;
            line.quantity.check(Field::Quantity)?;
        }
        self.deadline.validate()?;
        if let Some(key) = &self.idempotency_key {
            key.check()?;
        }
        Ok(())
    }
}

/// A request line after summing: the first line that named the item, the
/// total asked, and the item if it exists.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Summed {
    first_line: u32,
    quantity: u64,
    item: Option<ItemId>,
}

pub(super) fn apply(state: &mut ShardState, command: &Hold, emitter: &mut Emitter) -> Outcome {
    // The summing buffer is the shard's, reused, so a hold allocates nothing
    // it does not keep.
    let mut summed = std::mem::take(&mut state.summed_scratch);
    summed.clear();
    let outcome = apply_with(state, command, emitter, &mut summed);
    state.summed_scratch = summed;
    outcome
}

fn apply_with(state: &mut ShardState, command: &Hold, emitter: &mut Emitter, summed: &mut Vec<Summed>) -> Outcome {
    if let Some(slot) = command.idempotency_key.as_ref().and_then(|key| state.find_by_key(key)) {
        return replay(state, slot);
    }
    if let Err(error) = sum_lines(state, &command.lines, summed) {
        return error.into();
    }
    if let Some(slot) = state.find_reservation(&command.id) {
        return if same_request(state, slot, summed, command) {
            replay(state, slot)
        } else {
            Refusal::ReservationIdInUse.into()
        };
    }
    let now_ms = state.now_ms();
    let deadline_ms = match command.deadline.resolve(now_ms, state.limits().hold_ttl_max_ms) {
        Ok(deadline_ms) => deadline_ms,
        Err(refusal) => return refusal.into(),
    };
    let live_max = state.limits().live_holds_per_shard_max;
    if state.live_holds() >= live_max {
        return Refusal::ShardFull { bound: Bound::LiveHoldsPerShard, max: u64::from(live_max) }.into();
    }
    let short: Vec<ShortLine> = summed
        .iter()
        .filter_map(|line| {
            let available = line.item.map_or(0, |id| state.item(id).available());
            (available < line.quantity).then_some(ShortLine {
                line: line.first_line,
                requested: line.quantity,
                available,
                exists: line.item.is_some(),
            })
        })
        .collect();
    if !short.is_empty() {
        return Refusal::InsufficientStock { lines: short }.into();
    }

    // Every check passed: from here on nothing refuses. Every summed line
    // has an item (a missing one is short).
    let held = |line: &Summed| line.item.map(|item| HeldLine { item, quantity: line.quantity });
    let lines = match summed.as_slice() {
        [one] => held(one).map(Lines::One),
        many => Some(Lines::Many(many.iter().filter_map(held).collect())),
    };
    let Some(lines) = lines else {
        return Refusal::ItemNotFound.into();
    };
    for line in lines.as_slice() {
        let before = state.before(line.item);
        state.item_mut(line.item).reserved += line.quantity;
        let change = Change { cause: Cause::Hold(command.id), movement: None, created: false };
        state.finish_change(line.item, before, change, emitter);
    }
    let seq = state.next_hold_seq();
    let (slot, summary) = state.insert_reservation(Reservation {
        id: command.id,
        state: ReservationState::Held,
        seq,
        created_at_ms: now_ms,
        deadline_ms,
        ended_at_ms: 0,
        lines,
        idempotency_key: command.idempotency_key.clone(),
    });
    if command.confirm {
        return match state.end_reservation(slot, ReservationState::Confirmed, emitter) {
            Some(reservation) => Outcome::Confirmed { reservation, replayed: false },
            None => Refusal::ReservationNotFound.into(),
        };
    }
    Outcome::Held { reservation: summary, replayed: false }
}

fn replay(state: &ShardState, slot: u32) -> Outcome {
    match state.summary(slot) {
        Some(reservation) => Outcome::Held { reservation, replayed: true },
        None => Refusal::ReservationNotFound.into(),
    }
}

/// Sums lines that name the same item, keeping the order of first mention.
/// Lines are few (bounded by `lines_per_hold_max`), so a quadratic scan beats
/// a hash map and allocates nothing for the one-line flash-sale hold.
fn sum_lines(state: &ShardState, lines: &[HoldLine], summed: &mut Vec<Summed>) -> Result<(), InputError> {
    for (index, line) in lines.iter().enumerate() {
        let first =
            lines[..index].iter().position(|earlier| earlier.sku == line.sku && earlier.warehouse == line.warehouse);
        match first {
            Some(first) => {
                let first = u32::try_from(first).unwrap_or(u32::MAX);
                if let Some(total) = summed.iter_mut().find(|s| s.first_line == first) {
                    total.quantity = total.quantity.saturating_add(line.quantity.get());
                    if total.quantity > QUANTITY_MAX {
                        return Err(InputError::TooLarge {
                            field: Field::Quantity,
                            value: total.quantity,
                            max: QUANTITY_MAX,
                        });
                    }
                }
            }
            None => summed.push(Summed {
                first_line: u32::try_from(index).unwrap_or(u32::MAX),
                quantity: line.quantity.get(),
                item: state.find_item(line.sku.as_str(), line.warehouse.as_str()),
            }),
        }
    }
    Ok(())
}

/// Whether a hold with an existing id is a retry of the one stored: same
/// summed lines and same key.
fn same_request(state: &ShardState, slot: u32, summed: &[Summed], command: &Hold) -> bool {
    let Some(stored) = state.reservation_at(slot) else {
        return false;
    };
    stored.idempotency_key == command.idempotency_key
        && stored.lines.as_slice().len() == summed.len()
        && stored
            .lines
            .as_slice()
            .iter()
            .zip(summed)
            .all(|(held, asked)| asked.item == Some(held.item) && asked.quantity == held.quantity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::Command;
    use crate::config::Limits;
    use crate::event::EventKind;
    use crate::item::Status;
    use crate::state::tests_support::{Fixture, hold_command, rid};

    #[test]
    fn hold_reserves_every_line_and_reports_the_deadline() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.stock("SKU-2", "berlin", 5, 0);
        let outcome = f.hold(1, &[("SKU-1", "berlin", 3), ("SKU-2", "berlin", 5)]);
        let Outcome::Held { reservation, replayed: false } = outcome else {
            panic!("not held: {outcome:?}");
        };
        assert_eq!(reservation.state, ReservationState::Held);
        assert_eq!(reservation.deadline_ms, 1_000 + 60_000);
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 3));
        assert_eq!(f.levels("SKU-2", "berlin"), (5, 5));
    }

    #[test]
    fn hold_is_all_or_nothing_and_lists_every_short_line() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.stock("SKU-2", "berlin", 1, 0);
        let outcome = f.hold(1, &[("SKU-1", "berlin", 3), ("SKU-2", "berlin", 2), ("SKU-3", "berlin", 1)]);
        assert_eq!(
            outcome,
            Outcome::Refused(Refusal::InsufficientStock {
                lines: vec![
                    ShortLine { line: 1, requested: 2, available: 1, exists: true },
                    ShortLine { line: 2, requested: 1, available: 0, exists: false },
                ]
            })
        );
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 0), "no line was held");
        assert_eq!(f.state.live_holds(), 0);
    }

    #[test]
    fn the_same_item_twice_in_one_hold_is_summed_before_checking() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 5, 0);
        let outcome = f.hold(1, &[("SKU-1", "berlin", 3), ("SKU-1", "berlin", 3)]);
        assert_eq!(
            outcome,
            Outcome::Refused(Refusal::InsufficientStock {
                lines: vec![ShortLine { line: 0, requested: 6, available: 5, exists: true }]
            })
        );
        assert!(matches!(f.hold(2, &[("SKU-1", "berlin", 2), ("SKU-1", "berlin", 3)]), Outcome::Held { .. }));
        assert_eq!(f.levels("SKU-1", "berlin"), (5, 5));
        let view = f.state.reservation(&rid(2)).unwrap_or_else(|| panic!("missing"));
        assert_eq!(view.lines.len(), 1);
        assert_eq!(view.lines[0].quantity, 5);
    }

    #[test]
    fn the_last_unit_goes_to_exactly_one_of_two_racing_holds() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 1, 0);
        let applied = f.run(vec![
            hold_command(1, &[("SKU-1", "berlin", 1)], None),
            hold_command(2, &[("SKU-1", "berlin", 1)], None),
        ]);
        assert!(matches!(applied.outcomes[0], Outcome::Held { .. }));
        assert_eq!(applied.outcomes[1].refusal().map(Refusal::code), Some("insufficient_stock"));
        assert_eq!(f.levels("SKU-1", "berlin"), (1, 1));
    }

    #[test]
    fn a_retried_hold_answers_the_first_and_never_holds_twice() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        let first = f.hold(1, &[("SKU-1", "berlin", 3)]);
        let again = f.hold(1, &[("SKU-1", "berlin", 3)]);
        let (Outcome::Held { reservation: a, replayed: false }, Outcome::Held { reservation: b, replayed: true }) =
            (first, again)
        else {
            panic!("retry did not replay");
        };
        assert_eq!(a, b);
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 3));
    }

    #[test]
    fn a_hold_with_a_known_idempotency_key_replays_the_first_reservation() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        let key = IdempotencyKey::new("order-77").ok();
        f.one(hold_command(1, &[("SKU-1", "berlin", 3)], key.clone()));
        let retry = f.one(hold_command(2, &[("SKU-1", "berlin", 3)], key));
        assert!(matches!(retry, Outcome::Held { ref reservation, replayed: true } if reservation.id == rid(1)));
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 3));
        assert!(f.state.find_reservation(&rid(2)).is_none());
    }

    #[test]
    fn a_reused_id_with_other_lines_is_refused() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.hold(1, &[("SKU-1", "berlin", 3)]);
        assert_eq!(f.hold(1, &[("SKU-1", "berlin", 4)]), Outcome::Refused(Refusal::ReservationIdInUse));
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 3));
    }

    #[test]
    fn hold_refuses_deadlines_in_the_past_or_too_far() {
        let mut f = Fixture::with_limits(Limits { hold_ttl_max_ms: 10_000, ..Limits::default() });
        f.stock("SKU-1", "berlin", 10, 0);
        let mut past = hold_command(1, &[("SKU-1", "berlin", 1)], None);
        let mut far = past.clone();
        if let Command::Hold(hold) = &mut past {
            hold.deadline = Deadline::AtMs(1_000);
        }
        if let (Command::Hold(hold), Command::Hold(far)) = (&past, &mut far) {
            far.id = rid(2);
            far.deadline = Deadline::AfterMs(10_001);
            assert_eq!(hold.deadline, Deadline::AtMs(1_000));
        }
        assert_eq!(f.one(past), Outcome::Refused(Refusal::DeadlineInPast { now_ms: 1_000, deadline_ms: 1_000 }));
        assert_eq!(f.one(far), Outcome::Refused(Refusal::DeadlineTooFar { deadline_ms: 11_001, latest_ms: 11_000 }));
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 0));
    }

    #[test]
    fn hold_refuses_bad_input_without_touching_stock() {
        let mut f = Fixture::with_limits(Limits { lines_per_hold_max: 2, ..Limits::default() });
        f.stock("SKU-1", "berlin", 10, 0);
        let none = Command::Hold(Hold {
            id: rid(1),
            lines: vec![],
            deadline: Deadline::AfterMs(1),
            idempotency_key: None,
            confirm: false,
        });
        assert_eq!(f.one(none).refusal().map(Refusal::code), Some("no_lines"));
        let many = hold_command(1, &[("SKU-1", "berlin", 1); 3], None);
        assert_eq!(f.one(many).refusal().map(Refusal::code), Some("too_many_lines"));
        let mut zero_ttl = hold_command(1, &[("SKU-1", "berlin", 1)], None);
        if let Command::Hold(hold) = &mut zero_ttl {
            hold.deadline = Deadline::AfterMs(0);
        }
        assert_eq!(f.one(zero_ttl).refusal().map(Refusal::code), Some("quantity_zero"));
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 0));
    }

    #[test]
    fn a_full_shard_refuses_new_holds() {
        let mut f = Fixture::with_limits(Limits { live_holds_per_shard_max: 1, ..Limits::default() });
        f.stock("SKU-1", "berlin", 10, 0);
        f.hold(1, &[("SKU-1", "berlin", 1)]);
        assert_eq!(
            f.hold(2, &[("SKU-1", "berlin", 1)]),
            Outcome::Refused(Refusal::ShardFull { bound: Bound::LiveHoldsPerShard, max: 1 })
        );
    }

    #[test]
    fn hold_with_confirm_sells_at_once() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        let mut command = hold_command(1, &[("SKU-1", "berlin", 4)], None);
        if let Command::Hold(hold) = &mut command {
            hold.confirm = true;
        }
        let outcome = f.one(command);
        assert!(
            matches!(outcome, Outcome::Confirmed { ref reservation, replayed: false } if reservation.state == ReservationState::Confirmed)
        );
        assert_eq!(f.levels("SKU-1", "berlin"), (6, 0));
    }

    #[test]
    fn holding_the_last_units_crosses_to_out_of_stock() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 3, 1);
        let applied = f.run(vec![hold_command(1, &[("SKU-1", "berlin", 3)], None)]);
        let kinds: Vec<_> = applied.events.iter().map(|e| e.kind).collect();
        assert!(matches!(kinds[0], EventKind::StockChanged { cause: Cause::Hold(_), .. }));
        assert!(matches!(
            kinds[1],
            EventKind::ThresholdCrossed { from: Status::InStock, to: Status::OutOfStock, available: 0, .. }
        ));
        assert_eq!(kinds.len(), 2);
    }
}
