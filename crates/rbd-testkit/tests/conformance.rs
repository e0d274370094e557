//! The conformance suite (`rbd::conformance`) against the in-memory fake (default and small
//! objects) and the local directory backend: one test per rule and backend.
#![allow(clippy::unwrap_used)]

use rbd::local::LocalBackend;
use rbd::BlockBackend;
use rbd_testkit::conformance::Fixture;
use rbd_testkit::fake::MemoryBackend;

async fn memory() -> MemoryBackend {
    MemoryBackend::new("pool")
}

/// Objects of 64 KiB: many chunk boundaries inside the suite's writes.
async fn memory_small_objects() -> MemoryBackend {
    MemoryBackend::builder("pool").chunk_size(64 * 1024).build()
}

struct Local {
    _dir: tempfile::TempDir,
    backend: LocalBackend,
}

impl Fixture for Local {
    fn backend(&self) -> &dyn BlockBackend {
        &self.backend
    }
}

async fn local() -> Local {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = LocalBackend::open(dir.path(), "pool").expect("open local backend");
    Local { _dir: dir, backend }
}

mod memory {
    rbd_testkit::conformance_tests!(super::memory());
}

mod memory_small_objects {
    rbd_testkit::conformance_tests!(super::memory_small_objects());
}

mod local {
    rbd_testkit::conformance_tests!(super::local());
}

#[tokio::test]
async fn run_all_passes_on_one_shared_memory_pool() {
    let backend = MemoryBackend::new("pool");
    rbd_testkit::conformance::run_all(&backend, "shared-").await;
    assert!(
        backend.list_images().await.unwrap().is_empty(),
        "rules clean up after themselves"
    );
}

#[tokio::test]
async fn run_all_passes_on_one_shared_local_directory() {
    let fixture = local().await;
    rbd_testkit::conformance::run_all(&fixture.backend, "shared-").await;
    assert!(fixture.backend.list_images().await.unwrap().is_empty());
}
