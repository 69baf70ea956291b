//! `Release`: give a hold back. Every line's units return to `available`.
//!
//! Idempotent: releasing a released reservation answers the same
//! (`replayed`). A confirmed reservation is sold and cannot be released; an
//! expired one already gave its units back. Each has its own refusal.

use rkyv::{Archive, Deserialize, Serialize};

use crate::error::Corrupt;
use crate::ids::{Principal, ReservationId};
use crate::outcome::Outcome;
use crate::reservation::ReservationState;
use crate::state::{Emitter, ShardState};

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Release {
    pub id: ReservationId,
    /// Who released (the API key's name): recorded in the ledger.
    pub principal: Option<Principal>,
}

pub(super) fn apply(state: &mut ShardState, command: &Release, emitter: &mut Emitter) -> Result<Outcome, Corrupt> {
    super::end_held(state, &command.id, ReservationState::Released, None, emitter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::{Command, Confirm};
    use crate::config::Limits;
    use crate::event::{Cause, EventKind};
    use crate::ids::IdempotencyKey;
    use crate::outcome::Refusal;
    use crate::testing::{Fixture, hold, rid};

    fn release(n: u64) -> Command {
        Command::Release(Release { principal: None, id: rid(n) })
    }

    #[test]
    fn release_gives_the_units_back() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.hold(1, &[("SKU-1", "berlin", 4)]);
        let applied = f.run(vec![release(1)]);
        assert!(matches!(applied.outcomes[0], Outcome::Released { replayed: false, .. }));
        assert!(matches!(applied.events[0].kind, EventKind::StockChanged { cause: Cause::Release(_), .. }));
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 0));
        assert!(
            f.state.history("SKU-1", "berlin", 10).ok().flatten().unwrap_or_default().len() == 1,
            "a release is not a movement"
        );
    }

    #[test]
    fn releasing_twice_answers_the_same() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.hold(1, &[("SKU-1", "berlin", 4)]);
        let Outcome::Released { reservation, lines, idempotency_key, .. } = f.one(release(1)) else {
            panic!("not released")
        };
        assert_eq!(f.one(release(1)), Outcome::Released { reservation, replayed: true, lines, idempotency_key });
        assert_eq!(f.levels("SKU-1", "berlin"), (10, 0));
    }

    #[test]
    fn release_answers_the_idempotency_key_of_the_hold_even_when_forgotten_at_once() {
        let limits = Limits { terminal_retention_ms: 0, terminal_retained_max: 0, ..Limits::default() };
        let mut f = Fixture::with_limits(limits);
        f.stock("SKU-1", "berlin", 10, 0);
        let key = IdempotencyKey::new("cart-1").ok();
        f.one(hold(rid(1), &[("SKU-1", "berlin", 4)], 60_000, key.clone()));
        let released = f.one(release(1));
        assert!(
            matches!(released, Outcome::Released { ref idempotency_key, .. } if *idempotency_key == key),
            "{released:?}"
        );
        assert!(f.state.reservation(&rid(1)).ok().flatten().is_none(), "forgotten at once");
    }

    #[test]
    fn release_after_confirm_is_refused() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.hold(1, &[("SKU-1", "berlin", 4)]);
        f.one(Command::Confirm(Confirm { principal: None, id: rid(1) }));
        assert_eq!(f.one(release(1)), Outcome::Refused(Refusal::AlreadyConfirmed));
        assert_eq!(f.levels("SKU-1", "berlin"), (6, 0));
    }

    #[test]
    fn release_after_expiry_is_refused_with_its_own_code() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.hold(1, &[("SKU-1", "berlin", 4)]);
        f.now_ms += 60_000;
        assert_eq!(f.one(release(1)), Outcome::Refused(Refusal::AlreadyExpired));
    }

    #[test]
    fn a_terminal_reservation_is_forgotten_after_its_retention() {
        let mut f = Fixture::with_limits(Limits { terminal_retention_ms: 5_000, ..Limits::default() });
        f.stock("SKU-1", "berlin", 10, 0);
        f.hold(1, &[("SKU-1", "berlin", 4)]);
        f.one(release(1));
        f.now_ms += 4_999;
        assert!(matches!(f.one(release(1)), Outcome::Released { replayed: true, .. }));
        f.now_ms += 1;
        assert_eq!(f.one(release(1)), Outcome::Refused(Refusal::ReservationNotFound));
    }

    #[test]
    fn terminal_reservations_beyond_the_count_bound_are_forgotten_oldest_first() {
        let mut f = Fixture::with_limits(Limits { terminal_retained_max: 2, ..Limits::default() });
        f.stock("SKU-1", "berlin", 10, 0);
        for n in 1..=3 {
            f.hold(n, &[("SKU-1", "berlin", 1)]);
            f.one(release(n));
        }
        assert_eq!(f.one(release(1)), Outcome::Refused(Refusal::ReservationNotFound));
        assert!(matches!(f.one(release(2)), Outcome::Released { replayed: true, .. }));
        assert!(matches!(f.one(release(3)), Outcome::Released { replayed: true, .. }));
    }
}
