//! Loads librbd, and with it librados, at run time: the first [`Rados::connect`] (or
//! [`ImageOptions::new`]) opens `librbd.so.1` and resolves every function of [`sys::Libraries`].
//!
//! Why not link them: a binary built with the `ceph` feature then maps no Ceph library while it
//! runs on another backend (the embedded default). The libraries' code and static initialisers
//! were 17–18 MiB of such a daemon's resident memory, idle or not (BENCHMARKS.md, *rss*). And a host
//! without them gets an error that names the Debian package when it asks for Ceph, not a loader
//! failure before `main`.
//!
//! Owns the one process-wide table of C entry points. The other modules call through [`libs`],
//! which is valid because every handle they hold (cluster, I/O context, image, options,
//! completion, watch) was made through the table, after [`load`] succeeded. This module never
//! calls a Ceph function itself. The libraries stay loaded until the process ends: handles and
//! callbacks may outlive any scope that could unload them.
//!
//! [`Rados::connect`]: crate::Rados::connect
//! [`ImageOptions::new`]: crate::ImageOptions::new

use std::sync::OnceLock;

use libloading::os::unix;
use rbd::RbdError;

use crate::sys;

/// The soname Debian's `librbd1` installs (it depends on `librados2`, whose `librados.so.2` the
/// loader brings in with it; a lookup through librbd's handle finds librados' functions too).
pub const LIBRBD: &str = "librbd.so.1";

static LOADED: OnceLock<Result<sys::Libraries, String>> = OnceLock::new();

/// Opens the libraries once per process; later calls return the same table (or the same error).
pub(crate) fn load() -> Result<&'static sys::Libraries, RbdError> {
    LOADED
        .get_or_init(|| open(LIBRBD))
        .as_ref()
        .map_err(|e| RbdError::Other(e.clone()))
}

/// Opens `soname` and resolves every function of the table, or says what to install.
fn open(soname: &str) -> Result<sys::Libraries, String> {
    let failed = |e: libloading::Error| {
        format!(
            "loading {soname} for the Ceph backend (install Debian's librbd1 and librados2): {e}"
        )
    };
    // SAFETY: loading runs librbd's and librados' static initialisers, which only set up their own
    // globals and are made to run in any process that loads them. Bound at once and into the
    // global scope, as if linked: the plugins librados loads later (compressors, crypto) resolve
    // against them.
    let library = unsafe { unix::Library::open(Some(soname), unix::RTLD_NOW | unix::RTLD_GLOBAL) }
        .map_err(failed)?;
    // SAFETY: every symbol is given the signature of the Pacific 16.2 headers the table was
    // generated from (`cargo xtask codegen`), and librbd.so.1 is that ABI. The table keeps the
    // library open for as long as it lives, and the loaded table lives in a static until the
    // process ends.
    unsafe { sys::Libraries::from_library(library) }.map_err(failed)
}

/// The loaded table.
pub(crate) fn libs() -> &'static sys::Libraries {
    match LOADED.get() {
        Some(Ok(libraries)) => libraries,
        _ => unreachable!(
            "a Ceph function was called before the libraries were loaded: every handle of this \
             crate is made after `libs::load` succeeded"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_installed_libraries_load_and_every_function_of_the_table_resolves() {
        // `sys::Libraries::new` fails unless every symbol resolves (bindgen's `require_all`),
        // librados' ones through librbd's dependency on it.
        let table = load().expect("librbd1 is installed for the tests (xtask TEST_PACKAGES)");
        assert!(std::ptr::eq(table, libs()), "one table per process");
        assert!(std::ptr::eq(table, load().expect("loaded")), "loaded once");
    }

    #[test]
    fn a_missing_library_is_an_error_that_names_the_packages_to_install() {
        let err = open("libcephvol-missing.so.0")
            .err()
            .expect("nothing by that name");
        assert!(err.contains("libcephvol-missing.so.0"), "{err}");
        assert!(err.contains("librbd1 and librados2"), "{err}");
    }
}
