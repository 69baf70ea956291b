//! Limits that shape a shard's state, and the WAL's settings.
//!
//! `Limits` decide outcomes (a hold with too many lines is refused, a full
//! shard refuses new items), so every replica must use the same values at the
//! same log position. They are therefore part of the replicated state: a new
//! shard starts with `Limits::default()`, a `SetLimits` command changes them,
//! and snapshots carry them. A node's config file proposes limits; it never
//! applies them behind the log's back.

use rkyv::{Archive, Deserialize, Serialize};

/// The longest hold any setting allows, in ms. The timer wheel spans 2^36
/// ms (about 2.2 years) without cascading past its top level; longer holds
/// would still work but no flash sale needs them, and a bound keeps
/// deadline arithmetic far from overflow.
pub const HOLD_TTL_MS_LIMIT: u64 = 1 << 36;

/// Bounds on a shard's state. Every one is a named upper bound (STYLE.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
#[rkyv(derive(Debug))]
pub struct Limits {
    /// Most lines in one hold (before summing duplicates).
    pub lines_per_hold_max: u32,
    /// Longest a hold may last, from the log time it is made or extended.
    /// Not a setting of its own: the server sets it from
    /// `api.ttl_seconds_max`, so hold TTLs are seconds in every setting.
    #[serde(skip)]
    pub hold_ttl_max_ms: u64,
    /// Most items (SKU × warehouse) one shard stores.
    pub items_per_shard_max: u32,
    /// Most reservations one shard holds at once.
    pub live_holds_per_shard_max: u32,
    /// Most distinct warehouses one shard knows.
    pub warehouses_per_shard_max: u16,
    /// Most distinct principals one shard names in histories; later ones are
    /// recorded as "other".
    pub principals_per_shard_max: u16,
    /// Movements kept per item (at most 255).
    pub history_len_max: u8,
    /// How long a confirmed, released or expired reservation is remembered, so
    /// a retried confirm or release answers the same.
    pub terminal_retention_ms: u64,
    /// Most terminal reservations remembered per shard; the oldest go first.
    pub terminal_retained_max: u32,
    /// Most request ids (with their outcomes) remembered per shard, so a
    /// retried command applies once; the oldest go first. At least 1: the
    /// cluster's exactly-once delivery rests on this window, so no limit
    /// can switch it off (a proposer that wants no dedup sends no ids).
    /// Each id costs a 136-byte record and an index entry, plus the heap of
    /// an outcome's reservation lines (and key): ~257 bytes measured for a
    /// one-line hold (the default: up to ~61 MB per shard). Under load this
    /// bound, not the retention, says how long an id is kept:
    /// 262 144 ids last under 0.1 s at 3 M commands/s, so size it for the
    /// peak rate times the longest a proposer may retry.
    pub dedup_window_max: u32,
    /// How long, in log time, a request id is remembered after its command
    /// applied. A retry later than this (or after `dedup_window_max` newer
    /// ids) is applied afresh.
    pub dedup_retention_ms: u64,
    /// Most (SKU, customer) pairs a shard tracks for per-customer limits
    /// (`customer.rs`); about 150 bytes each. A hold that needs a new pair
    /// past it, after dropping every pair that no longer counts, is refused
    /// `shard_full`.
    pub customer_usage_per_shard_max: u32,
    /// Most bundle definitions one shard keeps (`bundle.rs`); a definition
    /// costs about 64 bytes plus 40 per component.
    pub bundles_per_shard_max: u32,
    /// Most components in one bundle. A bundle line of a hold becomes one
    /// line per component, so this times a hold's bundle lines counts
    /// against `lines_per_hold_max`.
    pub bundle_components_max: u32,
    /// Most SKU product records one shard keeps (`product.rs`); each costs
    /// at most about 6.7 KB of text. Past it, a new product is refused
    /// `shard_full` (bound `products_per_shard`).
    pub products_per_shard_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            lines_per_hold_max: 64,
            hold_ttl_max_ms: 24 * 60 * 60 * 1000,
            items_per_shard_max: 4_000_000,
            live_holds_per_shard_max: 4_000_000,
            warehouses_per_shard_max: 4096,
            principals_per_shard_max: 4096,
            history_len_max: 32,
            terminal_retention_ms: 60 * 60 * 1000,
            terminal_retained_max: 1_000_000,
            dedup_window_max: 262_144,
            dedup_retention_ms: 5 * 60 * 1000,
            customer_usage_per_shard_max: 1_000_000,
            bundles_per_shard_max: 100_000,
            bundle_components_max: 16,
            products_per_shard_max: 100_000,
        }
    }
}

impl Limits {
    /// Checks that the limits make sense together; says which one does not.
    pub fn validate(&self) -> Result<(), String> {
        if self.lines_per_hold_max == 0 {
            return Err("lines_per_hold_max must be at least 1".into());
        }
        if self.hold_ttl_max_ms == 0 {
            return Err("hold_ttl_max_ms must be at least 1".into());
        }
        if self.hold_ttl_max_ms > HOLD_TTL_MS_LIMIT {
            return Err(format!("hold_ttl_max_ms must be at most {HOLD_TTL_MS_LIMIT}"));
        }
        if self.items_per_shard_max == 0 || self.live_holds_per_shard_max == 0 {
            return Err("items_per_shard_max and live_holds_per_shard_max must be at least 1".into());
        }
        if self.warehouses_per_shard_max == 0 {
            return Err("warehouses_per_shard_max must be at least 1".into());
        }
        if self.customer_usage_per_shard_max == 0 {
            return Err("customer_usage_per_shard_max must be at least 1".into());
        }
        if self.bundle_components_max == 0 {
            return Err("bundle_components_max must be at least 1".into());
        }
        if self.products_per_shard_max == 0 {
            return Err("products_per_shard_max must be at least 1".into());
        }
        if self.dedup_window_max == 0 {
            return Err("dedup_window_max must be at least 1".into());
        }
        Ok(())
    }
}

/// WAL settings. These do not shape state, so nodes may differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WalConfig {
    /// A segment is closed and a new one started once it passes this size.
    #[serde(alias = "segment_size_max")]
    pub segment_bytes_max: u64,
    /// Largest single record (one log entry); bigger appends are refused.
    #[serde(alias = "record_size_max")]
    pub record_bytes_max: u32,
    /// Frame bytes of the newest entries kept in memory, so applying and
    /// replicating them neither reads the disk nor decodes (`wal/tail.rs`).
    /// The decoded entries take about as much again.
    pub tail_bytes_max: u64,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self { segment_bytes_max: 64 << 20, record_bytes_max: 32 << 20, tail_bytes_max: 8 << 20 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limits_are_valid() {
        assert_eq!(Limits::default().validate(), Ok(()));
    }

    #[test]
    fn a_dedup_window_of_zero_is_refused_because_retries_would_apply_twice() {
        let limits = Limits { dedup_window_max: 0, ..Limits::default() };
        assert_eq!(limits.validate(), Err("dedup_window_max must be at least 1".to_string()));
    }
}
