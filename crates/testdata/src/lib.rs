//! Deterministic test data: the one source of "pattern" bytes for every test and benchmark of the
//! workspace, and the checksum they are compared by. Owns no I/O.
//!
//! [`pattern`] is a xorshift64 sequence: reproducible from its seed, different for every seed, not
//! compressible and, in practice, never zero over a whole write request (so no chunk is skipped
//! by zero detection). It is cheap enough for multi-GiB benchmark data.

use sha2::{Digest as _, Sha256};

/// `len` deterministic pseudo-random bytes for `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `sha256:<hex>` of `data` (the OCI digest form).
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// Lowercase hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_bytes_and_another_seed_other_bytes() {
        assert_eq!(pattern(1000, 7), pattern(1000, 7));
        assert_ne!(pattern(1000, 7), pattern(1000, 8));
        assert_eq!(pattern(1000, 7)[..10], pattern(10, 7)[..]);
        assert_eq!(pattern(13, 1).len(), 13);
    }

    #[test]
    fn no_4k_block_of_a_pattern_is_all_zero() {
        let data = pattern(8 << 20, 3);
        assert!(data.chunks(4096).all(|c| c.iter().any(|b| *b != 0)));
    }

    #[test]
    fn digests_are_lowercase_hex_sha256() {
        assert_eq!(
            sha256(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
