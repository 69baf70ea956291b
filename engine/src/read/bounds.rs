//! What one query may ask for at most: the check a node runs on a query a
//! peer sent it, before it reads anything.
//!
//! The HTTP layer bounds every query it builds (listing limits and scan
//! budgets, lines of an availability question, the lines of one hold, the
//! components of one bundle). A query from a peer crossed the network, so
//! the node that answers it checks the same bounds again: a peer may run
//! other settings, an older build, or be broken. The frame size bounds the
//! bytes; these bound the work.

use super::Query;

/// Bounds of one query from a peer. The server sets them from its `[api]`
/// and engine settings (`cluster::ClusterConfig::query_bounds`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryBounds {
    /// SKUs or lines one query names (availability lines, the lines of one
    /// hold, the components of one bundle).
    pub names_max: u32,
    /// The largest `limit` of a page (items, history, bundles).
    pub limit_max: u32,
    /// The largest scan budget of an item page.
    pub scan_max: u32,
}

impl Default for QueryBounds {
    /// The defaults of the settings they come from.
    fn default() -> Self {
        QueryBounds { names_max: 1000, limit_max: 1001, scan_max: 100_000 }
    }
}

impl Query {
    /// Whether this query stays within `bounds`; why not, if it does not.
    pub fn check(&self, bounds: &QueryBounds) -> Result<(), String> {
        let names = |count: usize, what: &str| {
            if count as u64 > u64::from(bounds.names_max) {
                Err(format!("{what}: {count} names, at most {} allowed", bounds.names_max))
            } else {
                Ok(())
            }
        };
        let limit = |limit: u32, what: &str| {
            if limit > bounds.limit_max {
                Err(format!("{what}: limit {limit}, at most {} allowed", bounds.limit_max))
            } else {
                Ok(())
            }
        };
        match self {
            Query::Skus(skus) => names(skus.len(), "skus"),
            Query::BundlesOf(skus) => names(skus.len(), "bundles of"),
            Query::Availability(lines) => names(lines.len(), "availability"),
            Query::History { limit: asked, .. } => limit(*asked, "history"),
            Query::Bundles { limit: asked, .. } => limit(*asked, "bundles"),
            Query::Items(filter) => {
                limit(filter.limit, "items")?;
                if filter.scan_max > bounds.scan_max {
                    return Err(format!("items: scan {}, at most {} allowed", filter.scan_max, bounds.scan_max));
                }
                Ok(())
            }
            Query::Limits
            | Query::Item { .. }
            | Query::Sku { .. }
            | Query::Reservation(_)
            | Query::ReservationByKey(_)
            | Query::BundlesContaining(_)
            | Query::Stats
            | Query::Digest
            | Query::Applied => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::ItemFilter;

    const BOUNDS: QueryBounds = QueryBounds { names_max: 2, limit_max: 10, scan_max: 100 };

    fn items(limit: u32, scan_max: u32) -> Query {
        Query::Items(ItemFilter { status: None, warehouse: None, cursor: 0, limit, scan_max })
    }

    #[test]
    fn queries_at_their_bounds_pass_and_one_more_is_refused() {
        let two = vec!["A".to_owned(), "B".to_owned()];
        let three = vec!["A".to_owned(), "B".to_owned(), "C".to_owned()];
        assert_eq!(Query::Skus(two.clone()).check(&BOUNDS), Ok(()));
        assert!(Query::Skus(three.clone()).check(&BOUNDS).is_err());
        assert_eq!(Query::BundlesOf(two).check(&BOUNDS), Ok(()));
        assert!(Query::BundlesOf(three).check(&BOUNDS).is_err());
        let history = |limit| Query::History { sku: "A".into(), warehouse: "w".into(), limit };
        assert_eq!(history(10).check(&BOUNDS), Ok(()));
        assert!(history(11).check(&BOUNDS).is_err());
        assert_eq!(Query::Bundles { after: None, limit: 10 }.check(&BOUNDS), Ok(()));
        assert!(Query::Bundles { after: None, limit: 11 }.check(&BOUNDS).is_err());
        assert_eq!(items(10, 100).check(&BOUNDS), Ok(()));
        assert!(items(11, 100).check(&BOUNDS).is_err());
        assert!(items(10, 101).check(&BOUNDS).is_err());
    }

    #[test]
    fn availability_counts_its_lines() {
        let line = super::super::AvailabilityAsk { sku: "A".into(), warehouse: None, quantity: 1 };
        assert_eq!(Query::Availability(vec![line.clone(); 2]).check(&BOUNDS), Ok(()));
        let refused = Query::Availability(vec![line; 3]).check(&BOUNDS);
        assert_eq!(refused, Err("availability: 3 names, at most 2 allowed".to_owned()));
    }

    #[test]
    fn queries_without_lists_always_pass() {
        assert_eq!(Query::Stats.check(&BOUNDS), Ok(()));
        assert_eq!(Query::Item { sku: "A".into(), warehouse: "w".into() }.check(&BOUNDS), Ok(()));
    }
}
