//! `Confirm`: the sale. Every line of a held reservation leaves the shelf:
//! `on_hand -= q`, `reserved -= q`.
//!
//! Idempotent: confirming a confirmed reservation answers the same
//! (`replayed`). A released or expired reservation cannot be confirmed; each
//! refusal has its own code, so the caller can tell the shopper why.

use rkyv::{Archive, Deserialize, Serialize};

use crate::error::Corrupt;
use crate::ids::{Principal, ReservationId};
use crate::outcome::Outcome;
use crate::reservation::ReservationState;
use crate::state::{Emitter, ShardState};

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Confirm {
    pub id: ReservationId,
    /// Who confirmed (the API key's name): recorded in the ledger.
    pub principal: Option<Principal>,
}

pub(super) fn apply(state: &mut ShardState, command: &Confirm, emitter: &mut Emitter) -> Result<Outcome, Corrupt> {
    super::end_held(state, &command.id, ReservationState::Confirmed, emitter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::Command;
    use crate::ids::IdempotencyKey;
    use crate::item::MovementReason;
    use crate::outcome::Refusal;
    use crate::state::tests_support::{Fixture, hold_command, rid};

    fn confirm(n: u8) -> Command {
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
        f.one(hold_command(1, &[("SKU-1", "berlin", 4)], key.clone()));
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
}
