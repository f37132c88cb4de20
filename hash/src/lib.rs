//! A 64-bit hash that is the same on every platform, build and run.
//!
//! Invariant: [`stable_hash`]'s values never change. Segment files store
//! bloom filters built with it, and query nodes compute segment and tail
//! assignment with it independently. A change would misread every stored
//! filter and split the cluster's view of who serves what.

/// A 64-bit hash that is the same on every platform, build and run — what
/// a file format (bloom filters) and independently computing processes
/// (partition assignment) need, and what std's hasher does not promise.
/// FNV-1a over the bytes, then a splitmix64 finaliser for avalanche.
pub fn stable_hash(bytes: &[u8], seed: u64) -> u64 {
    finish_stable_hash(bytes.iter().fold(stable_hash_start(seed), |h, &byte| fnv1a_step(h, byte)))
}

/// The state [`stable_hash`] starts from with `seed` (FNV-1a's offset basis,
/// seeded).
pub fn stable_hash_start(seed: u64) -> u64 {
    0xcbf2_9ce4_8422_2325 ^ seed
}

/// One byte of FNV-1a.
#[inline]
pub fn fnv1a_step(h: u64, byte: u8) -> u64 {
    (h ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3)
}

/// The final mix of [`stable_hash`] (splitmix64's), after its FNV-1a pass.
pub fn finish_stable_hash(mut h: u64) -> u64 {
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}
