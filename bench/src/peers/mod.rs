//! The peers Tally is compared with, each started by the bench from Debian's
//! packages on a loopback port of its own, with its data in a folder of the
//! run: Redis 7 with Lua check-and-hold scripts, and PostgreSQL with a
//! conditional `UPDATE` and synchronous commit.

pub mod postgres;
pub mod redis;

/// Builders the peers' tests share: everything in warehouse "w1".
#[cfg(test)]
mod tests_support {
    use crate::target::{HoldRequest, ItemSpec};

    pub fn hold(id: &str, sku: &str, qty: u64) -> HoldRequest {
        HoldRequest { sku: sku.to_owned(), warehouse: "w1".to_owned(), qty, id: id.to_owned(), ttl_ms: 600_000 }
    }

    pub fn item(sku: &str, on_hand: u64) -> ItemSpec {
        ItemSpec { sku: sku.to_owned(), warehouse: "w1".to_owned(), on_hand }
    }

    pub fn key(sku: &str) -> (String, String) {
        (sku.to_owned(), "w1".to_owned())
    }
}
