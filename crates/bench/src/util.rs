//! Helpers shared by the figures: temporary directories, the median, an image source without
//! images.

use std::path::Path;

use anyhow::{Context, Result};

/// A fresh directory `cephvol-bench-<what>-*` under `base` (else the system temp directory),
/// removed with its contents on drop.
pub fn temp_dir(what: &str, base: Option<&Path>) -> Result<tempfile::TempDir> {
    let mut b = tempfile::Builder::new();
    let prefix = format!("cephvol-bench-{what}-");
    b.prefix(&prefix);
    match base {
        Some(base) => b.tempdir_in(base),
        None => b.tempdir(),
    }
    .with_context(|| format!("creating a temporary directory for {what}"))
}

/// Runs `fut` on a fresh tokio runtime with 2 worker threads (as the daemon on the 2-core
/// machine the figures are measured on); what the scenario leaves running in the background
/// (formats, resolves, flattens still waiting) is dropped with the runtime.
pub fn on_fresh_runtime<F: std::future::Future>(fut: F) -> Result<F::Output> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let out = rt.block_on(fut);
    rt.shutdown_background();
    Ok(out)
}

/// Median of samples (upper median for an even count); 0 when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// An image source without images (the figures create no OS volumes).
#[cfg(feature = "ceph")]
pub struct NoImages;

#[cfg(feature = "ceph")]
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
