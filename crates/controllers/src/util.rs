//! Small pure helpers shared by the reconcilers and the gRPC server: size rounding (SPEC §3.5),
//! QoS limits of a volume class (SPEC §3.6) and the key-encryption key for passphrases (SPEC §3.4).
//! Owns no state and does no I/O except reading the KEK file.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Rounds a requested size up the way the provider provisions it: below 1 GiB to whole MiB, from
/// 1 GiB on to whole GiB. 0 stays 0.
pub fn round_size(bytes: u64) -> u64 {
    let unit = if bytes < GIB { MIB } else { GIB };
    bytes.div_ceil(unit).saturating_mul(unit)
}

/// The librbd QoS limits of a volume class with `iops` and `tps` (bytes/s), burst `factor` and
/// burst `duration` seconds. Keys are librbd option names (written as `conf_<key>` metadata).
pub fn limits_for_class(iops: i64, tps: i64, factor: i64, duration: i64) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for kind in ["iops", "bps"] {
        let value = if kind == "iops" { iops } else { tps };
        for dir in ["", "read_", "write_"] {
            m.insert(format!("rbd_qos_{dir}{kind}_limit"), value);
            m.insert(
                format!("rbd_qos_{dir}{kind}_burst"),
                factor.saturating_mul(value),
            );
        }
        m.insert(format!("rbd_qos_{kind}_burst_seconds"), duration);
    }
    m
}

/// Errors of the key-encryption key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KekError {
    /// The KEK file could not be read.
    #[error("reading KEK file {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The KEK is not exactly 32 bytes.
    #[error("KEK must be exactly 32 bytes, got {0}")]
    Length(usize),
    /// A stored passphrase could not be decrypted (too short, wrong KEK or corrupted).
    #[error("cannot decrypt passphrase: {0}")]
    Decrypt(String),
}

/// The AES-256-GCM key-encryption key that protects volume passphrases at rest. Stored values are
/// `nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes)`, no associated data (compatible with the Go
/// provider). `Debug` never shows the key.
#[derive(Clone)]
pub struct Kek {
    cipher: Aes256Gcm,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek(***)")
    }
}

impl Kek {
    /// A KEK from exactly 32 raw bytes.
    pub fn from_bytes(key: &[u8]) -> Result<Kek, KekError> {
        if key.len() != 32 {
            return Err(KekError::Length(key.len()));
        }
        let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| KekError::Length(key.len()))?;
        Ok(Kek { cipher })
    }

    /// Reads a KEK file whose raw content must be exactly 32 bytes.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Kek, KekError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| KekError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Kek::from_bytes(&bytes)
    }

    /// Encrypts a passphrase with a fresh random nonce.
    pub fn encrypt(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), plaintext)
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(12 + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Decrypts a stored `nonce ‖ ciphertext ‖ tag` value.
    pub fn decrypt(&self, stored: &[u8]) -> Result<Vec<u8>, KekError> {
        if stored.len() < 12 {
            return Err(KekError::Decrypt(format!(
                "value of {} bytes is shorter than a nonce",
                stored.len()
            )));
        }
        let (nonce, ct) = stored.split_at(12);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), ct)
            .map_err(|_| {
                KekError::Decrypt("authentication failed (wrong KEK or corrupted value)".into())
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_to_mib_below_a_gib_and_to_gib_above() {
        assert_eq!(round_size(0), 0);
        assert_eq!(round_size(1024), MIB);
        assert_eq!(round_size(MIB + MIB / 10), 2 * MIB);
        assert_eq!(round_size(GIB), GIB);
        assert_eq!(round_size(GIB + 1), 2 * GIB);
        assert_eq!(round_size(GIB - 1), GIB);
    }

    #[test]
    fn class_limits_fill_fourteen_keys_with_factor_and_duration() {
        let l = limits_for_class(15000, 262_144_000, 10, 15);
        assert_eq!(l.len(), 14);
        assert_eq!(l["rbd_qos_iops_limit"], 15000);
        assert_eq!(l["rbd_qos_write_iops_burst"], 150_000);
        assert_eq!(l["rbd_qos_read_bps_limit"], 262_144_000);
        assert_eq!(l["rbd_qos_bps_burst"], 2_621_440_000);
        assert_eq!(l["rbd_qos_iops_burst_seconds"], 15);
        assert_eq!(l["rbd_qos_bps_burst_seconds"], 15);
        assert!(!l.contains_key("rbd_qos_read_iops_burst_seconds"));
    }

    #[test]
    fn kek_round_trips_and_rejects_tampering() {
        let kek = Kek::from_bytes(b"abcjdkekakakakakakakkadfkkasfdks").expect("32 bytes");
        let stored = kek.encrypt(b"secret");
        assert_eq!(stored.len(), 12 + 6 + 16);
        assert_eq!(kek.decrypt(&stored).expect("decrypts"), b"secret");
        let mut bad = stored.clone();
        bad[20] ^= 1;
        assert!(kek.decrypt(&bad).is_err());
        assert!(kek.decrypt(&stored[..5]).is_err());
        assert_eq!(Kek::from_bytes(b"short").unwrap_err(), KekError::Length(5));
    }
}
