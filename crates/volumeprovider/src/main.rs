//! `cephvol`: the IRI volume provider daemon and its CLI (see the `volumeprovider` crate docs).
//!
//! This file also owns the binary's global allocator: jemalloc (`tikv-jemallocator`), set up so
//! that memory freed after a peak (a full ListVolumes, a burst of creations) goes back to the
//! system within about a second of quiet. glibc malloc keeps such memory in its per-thread
//! arenas (the store's and the local backend's file I/O run on tokio's blocking threads, each of
//! which gets an arena): 2 s after creating and listing 10k volumes the daemon still held about
//! 125 MiB, against about 71 MiB with jemalloc (`cephvol-bench rss`, Ceph build; BENCHMARKS.md).
//! jemalloc with its default settings is no better than glibc there: it returns pages over 10 s,
//! and only from within later allocator calls. Only Rust allocations go through jemalloc; librbd and
//! librados keep glibc malloc. Library users of the `volumeprovider` crate (tests, benches) keep
//! the system allocator: the setting is the binary's. In the Ceph build the binary also sets up
//! the C libraries' glibc heap (`configure_c_heap`).

use std::process::ExitCode;

use tikv_jemalloc_ctl::{Access, AsName};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The variable jemalloc reads its settings from when it starts (before `main`; the name is
/// prefixed, as the allocator's symbols are). When an operator sets it, their settings stand.
const MALLOC_CONF_VAR: &str = "_RJEM_MALLOC_CONF";

/// Unused pages go back to the system within about this long (jemalloc's default: 10 s).
const DIRTY_DECAY_MS: isize = 1000;

fn main() -> ExitCode {
    if std::env::var_os(MALLOC_CONF_VAR).is_none() {
        if let Err(e) = configure_allocator() {
            eprintln!(
                "cephvol: cannot configure the allocator ({e}); continuing with its defaults"
            );
        }
    }
    #[cfg(feature = "ceph")]
    configure_c_heap();
    volumeprovider::run_main()
}

/// The C heap of librbd and librados (glibc `malloc`; see `ceph::bound_c_heap_arenas`): one
/// arena per CPU unless the operator set `MALLOC_ARENA_MAX`, and free memory given back once a
/// second by a thread of its own (glibc keeps it otherwise), like jemalloc's decay above.
#[cfg(feature = "ceph")]
fn configure_c_heap() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        ceph::bound_c_heap_arenas(cpus);
    }
    let trim = std::thread::Builder::new()
        .name("c-heap-trim".into())
        .spawn(|| loop {
            std::thread::sleep(std::time::Duration::from_millis(
                DIRTY_DECAY_MS.unsigned_abs() as u64,
            ));
            ceph::trim_c_heap();
        });
    if let Err(e) = trim {
        eprintln!("cephvol: cannot start the C heap trim thread ({e}); continuing without it");
    }
}

/// Sets jemalloc up at run time (through its `mallctl` interface):
/// * dirty pages decay in [`DIRTY_DECAY_MS`], in every arena and in those created later;
/// * muzzy decay 0: pages are given back for real (`MADV_DONTNEED`); pages given back lazily
///   (`MADV_FREE`) still count as resident until the kernel runs short of memory;
/// * one background thread does the purging, so it also happens while the daemon is idle
///   (otherwise pages are only returned from within later allocator calls, and the memory
///   freed by the last request stays resident until the next one).
fn configure_allocator() -> Result<(), tikv_jemalloc_ctl::Error> {
    b"arenas.dirty_decay_ms\0".name().write(DIRTY_DECAY_MS)?;
    b"arenas.muzzy_decay_ms\0".name().write(0_isize)?;
    for i in 0..tikv_jemalloc_ctl::arenas::narenas::read()? {
        // Arenas not initialised yet fail here; they take the defaults set above.
        let _ = format!("arena.{i}.dirty_decay_ms\0")
            .as_bytes()
            .name()
            .write(DIRTY_DECAY_MS);
        let _ = format!("arena.{i}.muzzy_decay_ms\0")
            .as_bytes()
            .name()
            .write(0_isize);
    }
    tikv_jemalloc_ctl::max_background_threads::write(1)?;
    tikv_jemalloc_ctl::background_thread::write(true)
}
