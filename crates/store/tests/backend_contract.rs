//! Both local backends honour the `Backend` contract (the same check the omap backend runs).

use store::backend::check_backend_contract;
use store::{Backend, HostDirBackend, MemoryBackend, Precondition};

#[tokio::test]
async fn the_memory_backend_honours_the_backend_contract() {
    let b = MemoryBackend::new();
    check_backend_contract(&b, "scratch")
        .await
        .expect("contract");
}

#[tokio::test]
async fn the_hostdir_backend_honours_the_backend_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = HostDirBackend::open(dir.path()).expect("open");
    check_backend_contract(&b, "scratch")
        .await
        .expect("contract");
    check_backend_contract(&b, "ironcore.csi.volumes")
        .await
        .expect("contract");
}

#[tokio::test]
async fn collections_are_independent_namespaces() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hostdir = HostDirBackend::open(dir.path()).expect("open");
    let memory = MemoryBackend::new();
    for b in [&hostdir as &dyn Backend, &memory] {
        b.put("one", "k", b"1".to_vec(), Precondition::Absent)
            .await
            .expect("put");
        b.put("two", "k", b"2".to_vec(), Precondition::Absent)
            .await
            .expect("put");
        assert_eq!(b.get("one", "k").await.expect("get"), Some(b"1".to_vec()));
        assert_eq!(b.get("two", "k").await.expect("get"), Some(b"2".to_vec()));
        assert_eq!(b.list("three").await.expect("list"), vec![]);
    }
}

#[tokio::test]
async fn a_broken_backend_is_caught_by_the_contract_check() {
    /// Ignores preconditions: must be rejected.
    struct Sloppy(MemoryBackend);
    #[async_trait::async_trait]
    impl Backend for Sloppy {
        async fn get(&self, c: &str, k: &str) -> store::Result<Option<Vec<u8>>> {
            self.0.get(c, k).await
        }
        async fn put(&self, c: &str, k: &str, v: Vec<u8>, _: Precondition) -> store::Result<()> {
            self.0.put(c, k, v, Precondition::None).await
        }
        async fn remove(&self, c: &str, k: &str, _: Precondition) -> store::Result<()> {
            self.0.remove(c, k, Precondition::None).await
        }
        async fn list(&self, c: &str) -> store::Result<Vec<(String, Vec<u8>)>> {
            self.0.list(c).await
        }
    }
    let err = check_backend_contract(&Sloppy(MemoryBackend::new()), "scratch")
        .await
        .expect_err("sloppy");
    assert!(err.contains("put Absent of a present key"), "{err}");
}
