//! Per-customer purchase limits: a SKU may allow each customer at most
//! `units` of it, counting the customer's live holds and confirmed sales
//! (within `window_ms` of log time, or ever).
//!
//! The limit is per SKU: every warehouse of a SKU lives on the SKU's shard,
//! so one shard sees all of a customer's units of it and the check and the
//! hold are one atomic step in `apply`, however many requests of one
//! customer race. What a customer has of a SKU is a `Usage`: units held by
//! live reservations, and sales as `(log time, units)`. A reservation made
//! under a limit remembers which SKUs it counted (`CustomerHold`), so ending
//! it gives back exactly what it took, even if the limit changed since.
//!
//! Rules, all on log time and therefore the same on every replica:
//! * A hold of a limited SKU must name its customer (`customer_id_required`).
//! * It is granted only if, for every limited SKU in it, held + sold in the
//!   window + the hold's units of the SKU ≤ the limit; else `customer_limit`
//!   lists every SKU over, with what is left to the customer.
//! * Releases and expiries give units back; a confirm moves them from held
//!   to sold, dated at the confirm.
//! * A limit counts what is held and sold while it is set. Changing it
//!   keeps the sales still inside the old window (a sale that left the
//!   window never comes back, even if the window is widened); removing it
//!   forgets its sales; holds made under it still give their units back.
//! * Usage is bounded: at most `Limits::customer_usage_per_shard_max`
//!   (SKU, customer) pairs per shard. A pair is dropped once it holds
//!   nothing and its sales left the window; when the table is full a sweep
//!   drops every such pair first, and a hold that would still need a new
//!   pair is refused `shard_full` (bound `customer_usage_per_shard`).
//!   Without a window, sales count for as long as the limit is set.
//! * A pair keeps at most `SALES_KEPT_MAX` dated sales; beyond that the two
//!   oldest merge under the later date, which can only count units longer,
//!   never shorter.

use std::collections::BTreeMap;

use rkyv::{Archive, Deserialize, Serialize};

use crate::error::{Field, InputError};
use crate::ids::{CustomerId, QUANTITY_MAX, Sku};

/// Dated sales kept per (SKU, customer) before the oldest merge.
pub(crate) const SALES_KEPT_MAX: usize = 16;

/// A SKU's limit per customer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct CustomerLimit {
    /// Most units one customer may hold and buy; at least 1.
    pub units: u64,
    /// Sales older than this (log time) no longer count; `None`: they
    /// count while the limit is set.
    pub window_ms: Option<u64>,
}

impl CustomerLimit {
    pub fn validate(&self) -> Result<(), InputError> {
        if self.units == 0 {
            return Err(InputError::Zero { field: Field::LimitPerCustomer });
        }
        if self.units > QUANTITY_MAX {
            return Err(InputError::TooLarge { field: Field::LimitPerCustomer, value: self.units, max: QUANTITY_MAX });
        }
        match self.window_ms {
            Some(0) => Err(InputError::Zero { field: Field::LimitWindowMs }),
            Some(window) if window > WINDOW_MS_MAX => {
                Err(InputError::TooLarge { field: Field::LimitWindowMs, value: window, max: WINDOW_MS_MAX })
            }
            _ => Ok(()),
        }
    }
}

/// Longest window: ten years.
pub const WINDOW_MS_MAX: u64 = 10 * 366 * 24 * 60 * 60 * 1000;

/// What one customer has of one SKU.
#[derive(Clone, Debug, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub(crate) struct Usage {
    /// Units in live holds.
    pub held: u64,
    /// Confirmed units as `(log time, units)`, oldest first.
    pub sold: Vec<(u64, u64)>,
}

impl Usage {
    /// Units sold that still count at `now_ms`.
    pub fn sold_in_window(&self, limit: Option<&CustomerLimit>, now_ms: u64) -> u64 {
        let window = limit.and_then(|limit| limit.window_ms);
        self.sold
            .iter()
            .filter(|(at_ms, _)| window.is_none_or(|window| at_ms.saturating_add(window) > now_ms))
            .map(|(_, units)| *units)
            .fold(0u64, u64::saturating_add)
    }

    /// Drops sales that left the window.
    fn prune(&mut self, limit: Option<&CustomerLimit>, now_ms: u64) {
        match limit.and_then(|limit| limit.window_ms) {
            Some(window) => self.sold.retain(|(at_ms, _)| at_ms.saturating_add(window) > now_ms),
            // No limit any more: its sales no longer count.
            None if limit.is_none() => self.sold.clear(),
            None => {}
        }
    }

    fn is_empty(&self) -> bool {
        self.held == 0 && self.sold.is_empty()
    }
}

/// The SKUs a reservation counted against its customer's limits, and how
/// many units of each.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub(crate) struct CustomerHold {
    pub customer: CustomerId,
    pub skus: Vec<(Sku, u64)>,
}

/// A limited SKU a hold would take the customer over.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct OverLimit {
    pub sku: String,
    pub limit: u64,
    /// What the customer has now: held plus sold in the window.
    pub used: u64,
    /// What this hold asks of the SKU.
    pub requested: u64,
}

impl OverLimit {
    /// Units the customer may still hold.
    pub fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }
}

/// What a read shows of one customer and one SKU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct CustomerUsage {
    pub limit: Option<CustomerLimit>,
    pub held: u64,
    pub sold: u64,
}

impl CustomerUsage {
    pub fn remaining(&self) -> Option<u64> {
        self.limit.map(|limit| limit.units.saturating_sub(self.held.saturating_add(self.sold)))
    }
}

/// The limits and usage of a shard (part of `Persisted`). Ordered maps: a
/// snapshot's bytes, and so the digest, depend on content only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub(crate) struct CustomerLimits {
    pub limits: BTreeMap<String, CustomerLimit>,
    /// `(SKU, customer)` → usage.
    pub usage: BTreeMap<(String, String), Usage>,
}

/// Why a hold may not go ahead under the customer limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Denied {
    CustomerRequired { sku: String },
    Over(Vec<OverLimit>),
    TableFull,
}

impl CustomerLimits {
    pub fn limit(&self, sku: &str) -> Option<&CustomerLimit> {
        self.limits.get(sku)
    }

    /// Pairs tracked for `sku`.
    pub fn customers_of(&self, sku: &str) -> usize {
        self.usage.range((sku.to_owned(), String::new())..).take_while(|((s, _), _)| s == sku).count()
    }

    pub fn usage_of(&self, sku: &str, customer: &str, now_ms: u64) -> CustomerUsage {
        let limit = self.limits.get(sku).copied();
        let usage = self.usage.get(&(sku.to_owned(), customer.to_owned()));
        CustomerUsage {
            limit,
            held: usage.map_or(0, |usage| usage.held),
            sold: usage.map_or(0, |usage| usage.sold_in_window(limit.as_ref(), now_ms)),
        }
    }

    /// Sets or (with `None`) removes `sku`'s limit. Removing forgets the
    /// SKU's sales; pairs with live holds stay until the holds end.
    pub fn set(&mut self, sku: &str, limit: Option<CustomerLimit>, now_ms: u64) {
        // Sales that left the window as it was are gone for good: widening
        // the window later does not bring them back, whether or not a
        // lookup had already dropped them.
        let old = self.limits.get(sku).copied();
        self.prune_sku(sku, old.as_ref(), now_ms);
        match limit {
            Some(limit) => {
                self.limits.insert(sku.to_owned(), limit);
            }
            None => {
                self.limits.remove(sku);
            }
        }
        let limit = self.limits.get(sku).copied();
        self.prune_sku(sku, limit.as_ref(), now_ms);
    }

    /// Prunes every pair of `sku` under `limit`, dropping the empty ones.
    fn prune_sku(&mut self, sku: &str, limit: Option<&CustomerLimit>, now_ms: u64) {
        let keys: Vec<(String, String)> = self
            .usage
            .range((sku.to_owned(), String::new())..)
            .take_while(|((s, _), _)| s == sku)
            .map(|(key, _)| key.clone())
            .collect();
        for key in keys {
            if let Some(usage) = self.usage.get_mut(&key) {
                usage.prune(limit, now_ms);
                if usage.is_empty() {
                    self.usage.remove(&key);
                }
            }
        }
    }

    /// Checks a hold of `units` per SKU (each SKU once) for `customer`.
    /// Changes nothing. `Ok` with the SKUs to count (the limited ones).
    pub fn check(
        &self,
        customer: Option<&CustomerId>,
        units: &[(&Sku, u64)],
        now_ms: u64,
        pairs_max: u32,
    ) -> Result<Vec<(Sku, u64)>, Denied> {
        let mut counted = Vec::new();
        let mut over = Vec::new();
        let mut new_pairs = 0usize;
        for (sku, requested) in units {
            let Some(limit) = self.limits.get(sku.as_str()) else { continue };
            let Some(customer) = customer else {
                return Err(Denied::CustomerRequired { sku: sku.as_str().to_owned() });
            };
            let usage = self.usage.get(&(sku.as_str().to_owned(), customer.as_str().to_owned()));
            if usage.is_none() {
                new_pairs += 1;
            }
            let used = usage.map_or(0, |usage| usage.held.saturating_add(usage.sold_in_window(Some(limit), now_ms)));
            if used.saturating_add(*requested) > limit.units {
                over.push(OverLimit { sku: sku.as_str().to_owned(), limit: limit.units, used, requested: *requested });
            } else {
                counted.push(((*sku).clone(), *requested));
            }
        }
        if !over.is_empty() {
            return Err(Denied::Over(over));
        }
        if new_pairs > 0
            && self.usage.len() + new_pairs > pairs_max as usize
            && self.after_sweep(now_ms) + new_pairs > pairs_max as usize
        {
            return Err(Denied::TableFull);
        }
        Ok(counted)
    }

    /// Pairs left after a sweep at `now_ms`.
    fn after_sweep(&self, now_ms: u64) -> usize {
        self.usage
            .iter()
            .filter(|((sku, _), usage)| {
                usage.held > 0 || usage.sold_in_window(self.limits.get(sku.as_str()), now_ms) > 0
            })
            .count()
    }

    /// Counts a granted hold: sweeps if the table needs room, then adds the
    /// units to each pair.
    pub fn hold(&mut self, customer: &CustomerId, counted: &[(Sku, u64)], now_ms: u64, pairs_max: u32) {
        let new_pairs = counted
            .iter()
            .filter(|(sku, _)| !self.usage.contains_key(&(sku.as_str().to_owned(), customer.as_str().to_owned())))
            .count();
        if self.usage.len() + new_pairs > pairs_max as usize {
            self.sweep(now_ms);
        }
        for (sku, units) in counted {
            let limit = self.limits.get(sku.as_str()).copied();
            let usage = self.usage.entry((sku.as_str().to_owned(), customer.as_str().to_owned())).or_default();
            usage.prune(limit.as_ref(), now_ms);
            usage.held = usage.held.saturating_add(*units);
        }
        debug_assert!(self.usage.len() <= pairs_max as usize, "customer usage over its bound");
    }

    /// Gives back what a reservation counted; `sold` (a confirm) names the
    /// units sold per SKU, recorded as sales at `now_ms` (while the SKU is
    /// still limited). A partial confirm sells fewer than it counted.
    pub fn end(&mut self, hold: &CustomerHold, sold: &[(String, u64)], now_ms: u64) {
        for (sku, units) in &hold.skus {
            let sold_units =
                sold.iter().filter(|(name, _)| name == sku.as_str()).map(|(_, units)| *units).sum::<u64>().min(*units);
            let key = (sku.as_str().to_owned(), hold.customer.as_str().to_owned());
            let limit = self.limits.get(sku.as_str()).copied();
            let Some(usage) = self.usage.get_mut(&key) else {
                debug_assert!(false, "a counted hold of {sku} has no usage");
                continue;
            };
            debug_assert!(usage.held >= *units, "usage holds fewer units than a hold counted");
            usage.held = usage.held.saturating_sub(*units);
            usage.prune(limit.as_ref(), now_ms);
            // Dated even without a window: a window set later counts them
            // from their own time.
            if sold_units > 0 && limit.is_some() {
                usage.sold.push((now_ms, sold_units));
                if usage.sold.len() > SALES_KEPT_MAX {
                    let (_, oldest) = usage.sold.remove(0);
                    usage.sold[0].1 = usage.sold[0].1.saturating_add(oldest);
                }
            }
            if usage.is_empty() {
                self.usage.remove(&key);
            }
        }
    }

    /// Drops every pair that holds nothing and has no sale in its window.
    fn sweep(&mut self, now_ms: u64) {
        let limits = &self.limits;
        self.usage.retain(|(sku, _), usage| {
            usage.prune(limits.get(sku.as_str()), now_ms);
            !usage.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::sku;

    fn customer(name: &str) -> CustomerId {
        CustomerId::new(name).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn limits_validate_their_bounds() {
        assert!(CustomerLimit { units: 1, window_ms: None }.validate().is_ok());
        assert!(CustomerLimit { units: 0, window_ms: None }.validate().is_err());
        assert!(CustomerLimit { units: 2, window_ms: Some(0) }.validate().is_err());
        assert!(CustomerLimit { units: QUANTITY_MAX + 1, window_ms: None }.validate().is_err());
    }

    #[test]
    fn sales_leave_the_window_and_the_oldest_merge_later() {
        let mut limits = CustomerLimits::default();
        let tee = sku("tee");
        let alice = customer("alice@example.com");
        limits.set("tee", Some(CustomerLimit { units: 100, window_ms: Some(1_000) }), 0);
        for at in 0..20u64 {
            let counted = limits.check(Some(&alice), &[(&tee, 1)], at, 10).unwrap_or_else(|e| panic!("{e:?}"));
            limits.hold(&alice, &counted, at, 10);
            let sold: Vec<(String, u64)> =
                counted.iter().map(|(sku, units)| (sku.as_str().to_owned(), *units)).collect();
            limits.end(&CustomerHold { customer: alice.clone(), skus: counted }, &sold, at);
        }
        let usage = limits.usage_of("tee", "alice@example.com", 19);
        assert_eq!((usage.held, usage.sold), (0, 20), "merged sales still count");
        let kept = limits.usage.values().next().map_or(0, |usage| usage.sold.len());
        assert_eq!(kept, SALES_KEPT_MAX);
        // The merged ones carry the later date, so they count at least as long.
        assert_eq!(limits.usage_of("tee", "alice@example.com", 1_004).sold, 15, "sales at 5 and later");
        assert_eq!(limits.usage_of("tee", "alice@example.com", 2_000).sold, 0);
    }

    #[test]
    fn a_full_table_sweeps_before_it_refuses() {
        let mut limits = CustomerLimits::default();
        let tee = sku("tee");
        limits.set("tee", Some(CustomerLimit { units: 5, window_ms: Some(100) }), 0);
        for name in ["a", "b"] {
            let who = customer(name);
            let counted = limits.check(Some(&who), &[(&tee, 1)], 0, 2).unwrap_or_else(|e| panic!("{e:?}"));
            limits.hold(&who, &counted, 0, 2);
            let sold: Vec<(String, u64)> =
                counted.iter().map(|(sku, units)| (sku.as_str().to_owned(), *units)).collect();
            limits.end(&CustomerHold { customer: who, skus: counted }, &sold, 0);
        }
        assert_eq!(limits.check(Some(&customer("c")), &[(&tee, 1)], 50, 2), Err(Denied::TableFull));
        // At 100 both sales left the window: the sweep makes room.
        let counted = limits.check(Some(&customer("c")), &[(&tee, 1)], 100, 2).unwrap_or_else(|e| panic!("{e:?}"));
        limits.hold(&customer("c"), &counted, 100, 2);
        assert_eq!(limits.usage.len(), 1);
    }
}
