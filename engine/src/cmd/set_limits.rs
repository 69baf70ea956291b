//! `SetLimits`: change the shard's limits through the log, so every replica
//! changes them at the same position. Lowered bounds take effect for new
//! work: a shard over a new item bound keeps its items and refuses new ones.

use rkyv::{Archive, Deserialize, Serialize};

use crate::config::Limits;
use crate::error::InputError;
use crate::outcome::Outcome;
use crate::state::ShardState;

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct SetLimits {
    pub limits: Limits,
}

impl SetLimits {
    pub fn validate(&self) -> Result<(), InputError> {
        self.limits.validate().map_err(|reason| InputError::BadLimits { reason })
    }
}

pub(super) fn apply(state: &mut ShardState, command: &SetLimits) -> Outcome {
    state.set_limits(command.limits);
    Outcome::LimitsSet
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::Command;
    use crate::outcome::{Bound, Refusal};
    use crate::testing::{Fixture, upsert_item};

    #[test]
    fn set_limits_applies_new_bounds_from_that_entry_on() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        let limits = Limits { items_per_shard_max: 1, ..Limits::default() };
        assert_eq!(f.one(Command::SetLimits(SetLimits { limits })), Outcome::LimitsSet);
        assert_eq!(*f.state.limits(), limits);
        let mut g = Fixture { state: f.state, index: f.index, now_ms: f.now_ms };
        let refused =
            g.one(Command::UpsertItem(crate::cmd::UpsertItem { on_hand: Some(1), ..upsert_item("SKU-2", "berlin") }));
        assert_eq!(refused, Outcome::Refused(Refusal::ShardFull { bound: Bound::ItemsPerShard, max: 1 }));
    }

    #[test]
    fn set_limits_refuses_nonsense() {
        let mut f = Fixture::new();
        let limits = Limits { lines_per_hold_max: 0, ..Limits::default() };
        let outcome = f.one(Command::SetLimits(SetLimits { limits }));
        assert_eq!(outcome.refusal().map(Refusal::code), Some("bad_limits"));
        assert_eq!(*f.state.limits(), Limits::default());
    }
}
