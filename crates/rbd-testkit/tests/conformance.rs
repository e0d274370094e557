//! The conformance rules (`rbd_testkit::conformance::rules`) against the in-memory fake (default
//! and 64 KiB objects) and the local directory backend: one libtest-mimic trial per rule and
//! backend (`memory::…`, `memory_small_objects::…`, `local::…`), plus one trial per backend that
//! runs every rule in turn on one shared pool.

use rbd::local::LocalBackend;
use rbd::BlockBackend;
use rbd_testkit::conformance::{Fixture, Suite};
use rbd_testkit::fake::MemoryBackend;

/// A local directory backend in a temp dir that lives as long as it.
struct Local {
    _dir: tempfile::TempDir,
    backend: LocalBackend,
}

impl Fixture for Local {
    fn backend(&self) -> &dyn BlockBackend {
        &self.backend
    }
}

fn local() -> Local {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = LocalBackend::open(dir.path(), "pool").expect("open local backend");
    Local { _dir: dir, backend }
}

fn main() {
    let args = libtest_mimic::Arguments::from_args();
    let memory = Suite::new("memory", || async { MemoryBackend::new("pool") });
    // Objects of 64 KiB: many chunk boundaries inside the rules' writes.
    let memory_small_objects = Suite::new("memory_small_objects", || async {
        MemoryBackend::builder("pool").chunk_size(64 * 1024).build()
    });
    let local = Suite::new("local", || async { local() });

    let mut trials = Vec::new();
    trials.extend(memory.trials());
    trials.extend(memory_small_objects.trials());
    trials.extend(local.trials());
    trials.push(memory.in_sequence("every_rule_passes_in_turn_on_one_shared_pool"));
    trials.push(local.in_sequence("every_rule_passes_in_turn_on_one_shared_directory"));
    libtest_mimic::run(&args, trials).exit();
}
