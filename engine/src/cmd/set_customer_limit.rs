//! `SetCustomerLimit`: set, change or (with `None`) remove a SKU's limit per
//! customer (`customer.rs`). The SKU must be stocked on the shard (some
//! warehouse has it), which bounds the limits a shard keeps by its items.
//! A new limit counts holds and sales from this entry on; a changed one
//! keeps what customers have; a removed one forgets the SKU's sales.

use rkyv::{Archive, Deserialize, Serialize};

use crate::customer::CustomerLimit;
use crate::error::InputError;
use crate::ids::Sku;
use crate::outcome::{Outcome, Refusal};
use crate::state::ShardState;

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct SetCustomerLimit {
    pub sku: Sku,
    pub limit: Option<CustomerLimit>,
}

impl SetCustomerLimit {
    pub fn validate(&self) -> Result<(), InputError> {
        self.sku.check()?;
        match &self.limit {
            Some(limit) => limit.validate(),
            None => Ok(()),
        }
    }
}

pub(super) fn apply(state: &mut ShardState, command: &SetCustomerLimit) -> Outcome {
    let sku = command.sku.as_str();
    if state.items_of_sku(sku).next().is_none() {
        return Refusal::ItemNotFound.into();
    }
    let now_ms = state.now_ms();
    state.persisted.customers.set(sku, command.limit, now_ms);
    Outcome::CustomerLimitSet {
        sku: sku.to_owned(),
        limit: state.customer_limit(sku),
        customers: state.customers_tracked(sku),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::{Command, Confirm, Release};
    use crate::ids::CustomerId;
    use crate::outcome::Bound;
    use crate::testing::{Fixture, hold, rid, sku, wh};

    fn set(sku: &str, units: u64, window_ms: Option<u64>) -> Command {
        Command::SetCustomerLimit(SetCustomerLimit {
            sku: crate::testing::sku(sku),
            limit: Some(CustomerLimit { units, window_ms }),
        })
    }

    fn hold_for(n: u64, customer: Option<&str>, lines: &[(&str, &str, u64)]) -> Command {
        let Command::Hold(mut hold) = hold(rid(n), lines, 60_000, None) else { panic!("not a hold") };
        hold.customer = customer.map(|c| CustomerId::new(c).unwrap_or_else(|e| panic!("{e}")));
        Command::Hold(hold)
    }

    #[test]
    fn a_limit_needs_a_stocked_sku() {
        let mut f = Fixture::new();
        assert_eq!(f.one(set("SKU-1", 2, None)), Outcome::Refused(Refusal::ItemNotFound));
        f.stock("SKU-1", "berlin", 10, 0);
        assert!(matches!(f.one(set("SKU-1", 2, None)), Outcome::CustomerLimitSet { customers: 0, .. }));
    }

    #[test]
    fn a_customer_holds_up_to_the_limit_across_warehouses_and_no_further() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 10, 0);
        f.stock("SKU-1", "paris", 10, 0);
        f.one(set("SKU-1", 3, None));
        assert!(matches!(f.one(hold_for(1, Some("alice"), &[("SKU-1", "berlin", 2)])), Outcome::Held { .. }));
        let refused = f.one(hold_for(2, Some("alice"), &[("SKU-1", "paris", 2)]));
        let Outcome::Refused(Refusal::CustomerLimit { skus }) = refused else { panic!("{refused:?}") };
        assert_eq!((skus[0].limit, skus[0].used, skus[0].requested, skus[0].remaining()), (3, 2, 2, 1));
        assert_eq!(f.levels("SKU-1", "paris"), (10, 0), "a refused hold holds nothing");
        assert!(matches!(f.one(hold_for(3, Some("alice"), &[("SKU-1", "paris", 1)])), Outcome::Held { .. }));
        // Another customer has a limit of their own.
        assert!(matches!(f.one(hold_for(4, Some("bob"), &[("SKU-1", "paris", 3)])), Outcome::Held { .. }));
        // No customer: refused by name.
        assert_eq!(
            f.one(hold_for(5, None, &[("SKU-1", "paris", 1)])),
            Outcome::Refused(Refusal::CustomerRequired { sku: "SKU-1".into() })
        );
        f.state.check_invariants().unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn releases_and_expiries_give_units_back_and_confirms_keep_them_until_the_window_passes() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 100, 0);
        f.one(set("SKU-1", 2, Some(10_000)));
        f.one(hold_for(1, Some("alice"), &[("SKU-1", "berlin", 2)]));
        f.one(Command::Release(Release { id: rid(1), principal: None }));
        f.one(hold_for(2, Some("alice"), &[("SKU-1", "berlin", 2)]));
        f.one(Command::Confirm(Confirm { id: rid(2), principal: None }));
        assert_eq!(f.state.customer_usage("SKU-1", "alice").remaining(), Some(0));
        assert!(matches!(
            f.one(hold_for(3, Some("alice"), &[("SKU-1", "berlin", 1)])),
            Outcome::Refused(Refusal::CustomerLimit { .. })
        ));
        f.now_ms += 10_000;
        assert!(matches!(f.one(hold_for(4, Some("alice"), &[("SKU-1", "berlin", 1)])), Outcome::Held { .. }));
        // The hold expires (TTL 60 s in the fixture): its unit comes back.
        f.now_ms += 60_000;
        f.one(Command::Tick);
        assert_eq!(f.state.customer_usage("SKU-1", "alice").held, 0);
        f.state.check_invariants().unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn removing_a_limit_forgets_sales_and_live_holds_still_give_back() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 100, 0);
        f.one(set("SKU-1", 5, None));
        f.one(hold_for(1, Some("alice"), &[("SKU-1", "berlin", 2)]));
        f.one(hold_for(2, Some("alice"), &[("SKU-1", "berlin", 1)]));
        f.one(Command::Confirm(Confirm { id: rid(2), principal: None }));
        let remove = Command::SetCustomerLimit(SetCustomerLimit { sku: sku("SKU-1"), limit: None });
        assert!(matches!(f.one(remove), Outcome::CustomerLimitSet { limit: None, customers: 1, .. }));
        assert!(matches!(f.one(hold_for(3, None, &[("SKU-1", "berlin", 50)])), Outcome::Held { .. }));
        f.one(Command::Release(Release { id: rid(1), principal: None }));
        assert_eq!(f.state.customers_tracked("SKU-1"), 0);
        f.state.check_invariants().unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn a_full_usage_table_refuses_new_customers_with_its_bound() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 100, 0);
        let limits = crate::Limits { customer_usage_per_shard_max: 2, ..crate::Limits::default() };
        f.one(Command::SetLimits(crate::cmd::SetLimits { limits }));
        f.one(set("SKU-1", 5, None));
        f.one(hold_for(1, Some("a"), &[("SKU-1", "berlin", 1)]));
        f.one(hold_for(2, Some("b"), &[("SKU-1", "berlin", 1)]));
        assert_eq!(
            f.one(hold_for(3, Some("c"), &[("SKU-1", "berlin", 1)])),
            Outcome::Refused(Refusal::ShardFull { bound: Bound::CustomerUsagePerShard, max: 2 })
        );
        // A customer already counted still holds.
        assert!(matches!(f.one(hold_for(4, Some("a"), &[("SKU-1", "berlin", 1)])), Outcome::Held { .. }));
    }

    #[test]
    fn a_partial_confirm_counts_only_the_units_sold() {
        let mut f = Fixture::new();
        f.stock("SKU-1", "berlin", 100, 0);
        f.one(set("SKU-1", 3, None));
        f.one(hold_for(1, Some("alice"), &[("SKU-1", "berlin", 3)]));
        let partial = Command::ConfirmPart(crate::cmd::ConfirmPart {
            id: rid(1),
            principal: None,
            lines: vec![crate::cmd::ConfirmLine { sku: sku("SKU-1"), warehouse: wh("berlin"), quantity: 1 }],
        });
        assert!(matches!(f.one(partial), Outcome::Confirmed { .. }));
        let usage = f.state.customer_usage("SKU-1", "alice");
        assert_eq!((usage.held, usage.sold, usage.remaining()), (0, 1, Some(2)));
        f.state.check_invariants().unwrap_or_else(|e| panic!("{e}"));
    }
}
