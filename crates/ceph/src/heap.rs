//! The C heap of librbd and librados: [`bound_c_heap_arenas`] and [`trim_c_heap`].
//!
//! Owns process-wide calls into glibc's `malloc` and nothing else. librbd and librados
//! allocate with glibc's `malloc` (the daemon's Rust code uses its own allocator), and glibc
//! gives a thread that finds the arenas busy a new arena, up to eight per CPU. Freed memory stays
//! in the arena that held it, so after a burst of image calls from many threads (the blocking
//! pool's, the libraries' own) most of it is retained and fragmented across many arenas.
//! Measured with 2000 provisioned volumes on the Ceph backend (BENCHMARKS.md, *rss*): 15 arenas
//! held 25 MiB resident while `malloc_stats` counted 4.2 MB in use; with two arenas the daemon held
//! 60 MiB instead of 77. At most as many threads run at once as there are CPUs, so one arena per
//! CPU costs the libraries little contention.

use std::os::raw::c_int;

/// Bounds glibc's `malloc` to `arenas` arenas (at least one) for the rest of the process, as the
/// environment variable `MALLOC_ARENA_MAX` would. Returns whether glibc took the setting. Arenas
/// that exist already stay, so call it before the first connection. When it returns `false`,
/// glibc's default stands.
pub fn bound_c_heap_arenas(arenas: usize) -> bool {
    let arenas = c_int::try_from(arenas.max(1)).unwrap_or(c_int::MAX);
    // SAFETY: `mallopt` only changes a tunable of glibc's allocator; `M_ARENA_MAX` accepts any
    // positive value, and the call takes glibc's own lock, so it is safe from any thread at any
    // time. No pointer is passed.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) == 1 }
}

/// Gives the free memory of glibc's arenas back to the system (`malloc_trim(0)`): every free page
/// inside an arena, not only the top of the main one as `free` does by itself. It walks the arenas
/// under their locks, about a millisecond for tens of MiB. Returns whether anything was returned.
/// The daemon calls it once a second, the pace at which its own allocator returns memory.
pub fn trim_c_heap() -> bool {
    // SAFETY: `malloc_trim` takes no pointer and only releases memory glibc holds free; it takes
    // each arena's lock, so it is safe from any thread at any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_takes_an_arena_bound() {
        assert!(bound_c_heap_arenas(64));
    }

    #[test]
    fn trimming_gives_back_free_pages_between_live_blocks() {
        // 64 KiB blocks (below the mmap threshold, so they come from an arena); every other one is
        // freed, so the free pages lie between live blocks, where `free` alone never returns them.
        let mut blocks: Vec<Option<Vec<u8>>> =
            (0..1024).map(|i| Some(vec![i as u8; 64 << 10])).collect();
        for block in blocks.iter_mut().step_by(2) {
            *block = None;
        }
        assert!(trim_c_heap());
        drop(blocks);
    }
}
