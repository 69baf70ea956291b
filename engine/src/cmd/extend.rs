//! `Extend`: move a held reservation's deadline later (a shopper still in
//! checkout). Idempotent: extending to the deadline it already has answers the
//! same. A deadline is never moved earlier (release instead), never past the
//! longest hold allowed from now, and a terminal reservation cannot be
//! extended.

use rkyv::{Archive, Deserialize, Serialize};

use crate::cmd::Deadline;
use crate::error::{Corrupt, InputError};
use crate::event::{EventKind, LevelChange};
use crate::ids::{Principal, ReservationId};
use crate::outcome::{Outcome, Refusal};
use crate::reservation::ReservationState;
use crate::state::{Emitter, ShardState};

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Extend {
    pub id: ReservationId,
    pub deadline: Deadline,
    /// Who extended (the API key's name): carried for the record.
    pub principal: Option<Principal>,
}

impl Extend {
    pub fn validate(&self) -> Result<(), InputError> {
        self.deadline.validate()?;
        if let Some(principal) = &self.principal {
            principal.check()?;
        }
        Ok(())
    }
}

pub(super) fn apply(state: &mut ShardState, command: &Extend, emitter: &mut Emitter) -> Result<Outcome, Corrupt> {
    let Some(slot) = state.find_reservation(&command.id) else {
        return Ok(Refusal::ReservationNotFound.into());
    };
    let Some(current) = state.summary(slot) else {
        return Ok(Refusal::ReservationNotFound.into());
    };
    if current.state != ReservationState::Held {
        return Ok(super::not_held(current.state).into());
    }
    let deadline_ms = match command.deadline.resolve(state.now_ms(), state.limits().hold_ttl_max_ms) {
        Ok(deadline_ms) => deadline_ms,
        Err(refusal) => return Ok(refusal.into()),
    };
    if deadline_ms < current.deadline_ms {
        return Ok(Refusal::DeadlineEarlier { current_ms: current.deadline_ms, requested_ms: deadline_ms }.into());
    }
    if deadline_ms > current.deadline_ms {
        state.move_deadline(slot, deadline_ms);
        // One event per line, so the ledger records each item it touches.
        if let Some(reservation) = state.reservation_at(slot) {
            for line in reservation.lines.as_slice() {
                let item = state.item(line.item);
                let levels = LevelChange {
                    on_hand_before: item.on_hand,
                    on_hand_after: item.on_hand,
                    reserved_before: item.reserved,
                    reserved_after: item.reserved,
                    unsellable_before: item.levels().unsellable(),
                    unsellable_after: item.levels().unsellable(),
                };
                emitter.emit(EventKind::HoldExtended { item: line.item, reservation: command.id, deadline_ms, levels });
            }
        }
    }
    Ok(match (state.summary(slot), state.reservation_lines(slot)?) {
        (Some(reservation), Some(lines)) => {
            Outcome::Extended { reservation, lines, idempotency_key: state.reservation_key(slot) }
        }
        _ => Refusal::ReservationNotFound.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::{Command, Release};
    use crate::ids::IdempotencyKey;
    use crate::testing::{Fixture, hold, rid};

    fn extend(n: u64, deadline: Deadline) -> Command {
        Command::Extend(Extend { principal: None, id: rid(n), deadline })
    }

    #[test]
    fn extend_moves_the_deadline_and_the_hold_lives_until_it() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.hold(1, &[("SKU-1", "berlin", 4)]);
        f.now_ms += 30_000;
        let outcome = f.one(extend(1, Deadline::AfterMs(60_000)));
        assert!(matches!(outcome, Outcome::Extended { ref reservation, .. } if reservation.deadline_ms == 91_000));
        f.now_ms = 90_999;
        f.run(vec![Command::Tick]);
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 4), "still held before the new deadline");
        f.now_ms = 91_000;
        f.run(vec![Command::Tick]);
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 0), "expired at the new deadline");
    }

    #[test]
    fn extend_to_the_same_deadline_answers_the_same() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.hold(1, &[("SKU-1", "berlin", 4)]);
        let first = f.one(extend(1, Deadline::AtMs(61_000)));
        assert_eq!(first, f.one(extend(1, Deadline::AtMs(61_000))));
    }

    #[test]
    fn extend_answers_the_idempotency_key_of_the_hold() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        let key = IdempotencyKey::new("cart-1").ok();
        f.one(hold(rid(1), &[("SKU-1", "berlin", 4)], 60_000, key.clone()));
        let extended = f.one(extend(1, Deadline::AfterMs(90_000)));
        assert!(
            matches!(extended, Outcome::Extended { ref idempotency_key, .. } if *idempotency_key == key),
            "{extended:?}"
        );
    }

    #[test]
    fn extend_never_moves_a_deadline_earlier() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.hold(1, &[("SKU-1", "berlin", 4)]);
        assert_eq!(
            f.one(extend(1, Deadline::AfterMs(10))),
            Outcome::Refused(Refusal::DeadlineEarlier { current_ms: 61_000, requested_ms: 1_010 })
        );
    }

    #[test]
    fn extend_of_a_terminal_or_unknown_reservation_is_refused() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.hold(1, &[("SKU-1", "berlin", 4)]);
        f.one(Command::Release(Release { principal: None, id: rid(1) }));
        assert_eq!(f.one(extend(1, Deadline::AfterMs(90_000))), Outcome::Refused(Refusal::AlreadyReleased));
        assert_eq!(f.one(extend(2, Deadline::AfterMs(90_000))), Outcome::Refused(Refusal::ReservationNotFound));
    }
}
