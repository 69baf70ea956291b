//! Which shard owns a SKU.
//!
//! `shard = XXH3-64(sku bytes, seed 0) mod shard_count`. XXH3 has a fixed,
//! published specification, so the same SKU lands on the same shard after a
//! restart, on another machine, and with another build; the test below pins
//! known values so a change of hash would fail loudly instead of silently
//! moving every SKU. All warehouses of a SKU share its shard, so transfers and
//! per-SKU totals never cross shards.

/// The most shards a cluster may have (`cluster.shards`): a reservation id
/// names its home shard in 16 bits (`ReservationId::home_shard`).
pub const SHARDS_MAX: u32 = u16::MAX as u32;

/// The shard that owns `sku` among `shard_count` shards (at least 1).
pub fn shard_of(sku: &str, shard_count: u32) -> u32 {
    debug_assert!(shard_count > 0);
    let hash = xxhash_rust::xxh3::xxh3_64(sku.as_bytes());
    // The remainder is below shard_count, a u32, so it fits.
    u32::try_from(hash % u64::from(shard_count.max(1))).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_pinned_to_xxh3_with_seed_zero() {
        // Reference values of XXH3-64 (seed 0); if these change, every
        // deployed SKU would move shards.
        assert_eq!(xxhash_rust::xxh3::xxh3_64(b""), 0x2D06_8005_38D3_94C2);
        assert_eq!(xxhash_rust::xxh3::xxh3_64(b"a"), 0xE6C6_32B6_1E96_4E1F);
        assert_eq!(shard_of("a", 16), (0xE6C6_32B6_1E96_4E1Fu64 % 16) as u32);
    }

    #[test]
    fn placement_spreads_skus_over_shards() {
        let shards = 8u32;
        let mut counts = vec![0u32; shards as usize];
        for n in 0..80_000 {
            counts[shard_of(&format!("SKU-{n}"), shards) as usize] += 1;
        }
        for count in counts {
            assert!((9_000..11_000).contains(&count), "uneven placement: {count}");
        }
    }

    #[test]
    fn one_shard_owns_everything() {
        assert_eq!(shard_of("anything", 1), 0);
    }
}
