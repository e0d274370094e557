//! Helpers shared by the figures of issue 8.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A fresh directory, removed with its contents on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<base>/cephvol-bench-<what>-<pid>-<nanos>`.
    pub fn new_in(base: &Path, what: &str) -> Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = base.join(format!(
            "cephvol-bench-{what}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path })
    }

    /// Under the system temp directory.
    pub fn new(what: &str) -> Result<TempDir> {
        TempDir::new_in(&std::env::temp_dir(), what)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Median of samples (upper median for an even count); 0 when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Deterministic pseudo-random bytes (xorshift64): data no chunk of which is all zeroes.
#[cfg_attr(not(feature = "ceph"), allow(dead_code))]
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
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

/// An image source without images (the figures create no OS volumes).
pub struct NoImages;

#[async_trait::async_trait]
impl controllers::ImageSource for NoImages {
    async fn resolve(
        &self,
        reference: &str,
        _architecture: Option<&str>,
    ) -> Result<controllers::ResolvedImage, controllers::SourceError> {
        Err(controllers::SourceError::NotFound(reference.into()))
    }

    async fn open_rootfs(
        &self,
        reference: &str,
        _architecture: Option<&str>,
    ) -> Result<controllers::Rootfs, controllers::SourceError> {
        Err(controllers::SourceError::NotFound(reference.into()))
    }
}
