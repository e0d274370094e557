//! The conformance rules (`rbd_testkit::conformance::rules`, the same ones the fake and the local
//! backend pass) against `CephBackend` on a real cluster: one libtest-mimic trial per rule
//! (`ceph::…`), ignored unless `--ignored` is given. `cargo xtask integration` runs them with
//! `CEPHVOL_INTEGRATION=1`; without the cluster's environment a trial fails, it never skips.
//!
//! The rules read `client.admin`'s key, which only an admin may do, so the trials connect as
//! `client.admin` (`CEPH_ADMIN_KEYRING`); the other Ceph tests use the rbd-profile user. They share
//! one connection (made by the first trial that runs) and one pool: each rule only touches images
//! named after itself.

mod ceph_support;

use std::sync::Arc;

use ceph::CephBackend;
use rbd::BlockBackend;
use rbd_testkit::conformance::{Fixture, Suite};
use tokio::sync::OnceCell;

/// The connection as `client.admin`, shared by the trials.
static ADMIN: OnceCell<Arc<CephBackend>> = OnceCell::const_new();

async fn admin_backend() -> Arc<CephBackend> {
    Arc::new(ceph_support::admin_backend().await)
}

/// The shared admin connection.
struct Admin(Arc<CephBackend>);

impl Fixture for Admin {
    fn backend(&self) -> &dyn BlockBackend {
        &*self.0
    }
}

fn main() {
    let args = libtest_mimic::Arguments::from_args();
    let ceph = Suite::new("ceph", || async {
        Admin(ADMIN.get_or_init(admin_backend).await.clone())
    })
    .ignored(true)
    .multi_thread(2)
    .timeout(ceph_support::TEST_TIMEOUT);
    libtest_mimic::run(&args, ceph.trials()).exit();
}
