//! `cargo xtask codegen`: regenerates `crates/ceph/src/sys.rs` from Debian's librbd/librados
//! headers with bindgen (libclang is loaded at run time, so building xtask does not need it).
//!
//! Only the functions named in [`FUNCTIONS`] (and the types they use, plus the constants of
//! [`VARS`]) are generated. The functions come out as a table of pointers resolved when the
//! library is loaded (bindgen's dynamic loading, every symbol required), not as `extern` items a
//! link would resolve: the `ceph` crate loads librbd when it first connects. bindgen's layout assertions are kept: they fail the build of the `ceph`
//! feature if the headers' structs ever change size or alignment.

use std::fs;

use anyhow::{anyhow, Context, Result};

use super::cluster::ensure_packages;
use crate::util;

/// Where the committed bindings live, relative to the workspace root.
const OUTPUT: &str = "crates/ceph/src/sys.rs";

/// Every C function the safe layer calls.
const FUNCTIONS: &[&str] = &[
    // librados: cluster handle and configuration
    "rados_create2",
    "rados_conf_read_file",
    "rados_conf_set",
    "rados_connect",
    "rados_shutdown",
    "rados_pool_lookup",
    "rados_mon_command",
    "rados_buffer_free",
    // librados: I/O contexts
    "rados_ioctx_create",
    "rados_ioctx_destroy",
    "rados_ioctx_get_id",
    // librados: compound write operations (omap store)
    "rados_create_write_op",
    "rados_release_write_op",
    "rados_write_op_create",
    "rados_write_op_assert_exists",
    "rados_write_op_omap_cmp2",
    "rados_write_op_omap_set2",
    "rados_write_op_omap_rm_keys2",
    "rados_write_op_operate2",
    // librados: compound read operations and omap iteration
    "rados_create_read_op",
    "rados_release_read_op",
    "rados_read_op_omap_get_vals2",
    "rados_read_op_omap_get_vals_by_keys2",
    "rados_read_op_operate",
    "rados_omap_get_next2",
    "rados_omap_iter_size",
    "rados_omap_get_end",
    "rados_remove",
    // librados: identity of this client and fencing of others (leadership)
    "rados_get_instance_id",
    "rados_getaddrs",
    "rados_blocklist_add",
    // librados: advisory locks (cls_lock) and class calls inside write ops (leadership)
    "rados_lock_exclusive",
    "rados_unlock",
    "rados_list_lockers",
    "rados_break_lock",
    "rados_write_op_exec",
    // librados: watch/notify (cross-daemon store change notifications)
    "rados_watch2",
    "rados_unwatch2",
    "rados_watch_check",
    "rados_watch_flush",
    "rados_notify2",
    "rados_notify_ack",
    // librbd: images
    "rbd_version",
    "rbd_image_options_create",
    "rbd_image_options_destroy",
    "rbd_image_options_set_string",
    "rbd_image_options_set_uint64",
    "rbd_create4",
    "rbd_clone3",
    "rbd_remove",
    "rbd_rename",
    "rbd_list2",
    "rbd_image_spec_list_cleanup",
    "rbd_open",
    "rbd_open_read_only",
    "rbd_close",
    "rbd_get_size",
    "rbd_resize",
    "rbd_get_parent",
    "rbd_linked_image_spec_cleanup",
    "rbd_snap_spec_cleanup",
    "rbd_flatten_with_progress",
    // librbd: snapshots
    "rbd_snap_create",
    "rbd_snap_remove",
    "rbd_snap_remove_by_id",
    "rbd_snap_get_namespace_type",
    "rbd_snap_get_trash_namespace",
    "rbd_snap_protect",
    "rbd_snap_unprotect",
    "rbd_snap_is_protected",
    "rbd_snap_list",
    "rbd_snap_list_end",
    "rbd_snap_exists",
    "rbd_snap_set",
    // librbd: children
    "rbd_list_children3",
    "rbd_list_descendants",
    "rbd_linked_image_spec_list_cleanup",
    // librbd: data
    "rbd_read",
    "rbd_write",
    "rbd_flush",
    "rbd_aio_create_completion",
    "rbd_aio_write",
    "rbd_aio_wait_for_complete",
    "rbd_aio_get_return_value",
    "rbd_aio_release",
    // librbd: encryption
    "rbd_encryption_format",
    "rbd_encryption_load",
    // librbd: metadata
    "rbd_metadata_get",
    "rbd_metadata_set",
    "rbd_metadata_remove",
    "rbd_metadata_list",
];

/// Constants (regexes).
const VARS: &[&str] = &[
    "RBD_IMAGE_OPTION_.*",
    "RBD_ENCRYPTION_.*",
    "LIBRBD_VER_.*",
    "LIBRADOS_CMPXATTR_OP_.*",
    "LIBRADOS_CREATE_.*",
    "LIBRADOS_OPERATION_NOFLAG",
    "LIBRADOS_LOCK_FLAG_.*",
];

/// Types whose definitions the safe layer needs although no allowlisted function names them directly.
const TYPES: &[&str] = &[
    "rbd_encryption_luks2_format_options_t",
    "rbd_encryption_luks1_format_options_t",
];

/// `cargo xtask codegen`: regenerates the bindings (needs libclang-dev and the Ceph dev headers).
pub fn run(_args: &[String]) -> Result<()> {
    ensure_packages(&["libclang-dev", "librbd-dev", "librados-dev"])?;
    let mut builder = bindgen::Builder::default()
        .header_contents("cephvol_ceph.h", "#include <rados/librados.h>\n#include <rbd/librbd.h>\n")
        .rust_target(bindgen::RustTarget::stable(85, 0).map_err(|e| anyhow!("rust target: {e}"))?)
        .layout_tests(true)
        .generate_comments(false)
        .disable_header_comment()
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .merge_extern_blocks(true)
        .dynamic_library_name("Libraries")
        .dynamic_link_require_all(true)
        .raw_line("//! Raw librbd/librados bindings (Ceph Pacific 16.2 headers), generated by `cargo xtask codegen`.")
        .raw_line("//! The functions are the table `Libraries`, which `libs.rs` fills from librbd.so.1 at run time.")
        .raw_line("//! Do not edit: change the allowlist in xtask/src/ceph/codegen.rs and regenerate.")
        .raw_line("")
        .raw_line("// size: generated; each function is a field, a lookup when loading and a wrapper method.");
    for f in FUNCTIONS {
        builder = builder.allowlist_function(f);
    }
    for v in VARS {
        builder = builder.allowlist_var(v);
    }
    for t in TYPES {
        builder = builder.allowlist_type(t);
    }
    let bindings = builder.generate().map_err(|e| anyhow!("bindgen: {e}"))?;
    let text = bindings.to_string();
    for f in FUNCTIONS {
        if !text.contains(&format!("fn {f}(")) {
            return Err(anyhow!(
                "bindgen produced no binding for {f}: is it in the headers?"
            ));
        }
    }
    let out = util::root().join(OUTPUT);
    fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
    // Keep `cargo fmt --check` quiet about the generated file.
    util::run(
        std::process::Command::new("rustfmt")
            .args(["--edition", "2021"])
            .arg(&out),
    )?;
    eprintln!(
        "codegen: wrote {} ({} functions)",
        out.display(),
        FUNCTIONS.len()
    );
    Ok(())
}
