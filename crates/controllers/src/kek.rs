//! The key-encryption key (KEK) that protects the passphrases of encrypted volumes at rest:
//! AES-256-GCM over each passphrase, with the key read from a 32-byte file. Owns the key and its
//! errors; does no I/O except reading the key file. The cipher itself is the maintained `aes-gcm`
//! crate; only the stored layout (`nonce ‖ ciphertext ‖ tag`) is written here.

use std::fmt;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;

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
