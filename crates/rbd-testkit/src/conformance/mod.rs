//! The backend **conformance rules**: one async function per rule of the [`BlockBackend`]
//! contract (`crates/rbd/src/backend.rs`), runnable against any backend (the fake, the local
//! directory backend, librbd).
//!
//! Owns the executable form of the contract and the libtest-mimic [`Suite`] that turns it into
//! one test per rule and backend. It is compiled into the library (not `cfg(test)`) so that every
//! backend's tests, including the Ceph ones, can reuse it; nothing here runs in the daemon, and it
//! must not reach into a backend's internals (the rules see only the trait). The rules **panic** on
//! a violation, like test assertions.
//!
//! [`rules`] is the one list of rules. Every rule takes a name prefix `ns` and only touches images
//! named `<ns>-…`; it removes leftovers of an earlier run under that prefix first ([`cleanup`])
//! and cleans up after itself on success, so the rules can share one pool (also concurrently).
//! Images are [`SIZE`] (8 MiB, two 4 MiB objects) so a real cluster runs the rules quickly.
//!
//! A test target with `harness = false` runs them:
//! ```ignore
//! use rbd_testkit::conformance::Suite;
//! use rbd_testkit::fake::MemoryBackend;
//!
//! fn main() {
//!     let args = libtest_mimic::Arguments::from_args();
//!     let memory = Suite::new("memory", || async { MemoryBackend::new("pool") });
//!     libtest_mimic::run(&args, memory.trials()).exit();
//! }
//! ```
//!
//! The rules live in one file per topic: `images` (create, stat, list, resize), `snapshots`,
//! `clones` (with flatten), `data` (reads, writes and streams) and `metadata` (with encryption,
//! pool figures and client keys); `support` holds the helpers they share.

use std::fmt::Debug;

use futures::future::BoxFuture;

use rbd::BlockBackend;

/// Asserts that a result is an error of the given [`rbd::RbdError`] variant.
macro_rules! assert_err {
    ($res:expr, $variant:ident, $what:expr) => {
        match $res {
            Err(::rbd::RbdError::$variant { .. }) => {}
            other => panic!(
                "{}: expected {} error, got {:?}",
                $what,
                stringify!($variant),
                other.map(|_| ())
            ),
        }
    };
}

mod clones;
mod data;
mod harness;
mod images;
mod metadata;
mod snapshots;
mod support;

pub use harness::Suite;
pub use support::{checksum, cleanup, read_all, stream_of};

/// Size of the images the rules create: 8 MiB.
pub const SIZE: u64 = 8 * 1024 * 1024;

/// librbd's default object size; the rules write across object boundaries.
pub const OBJECT: u64 = 4 * 1024 * 1024;

/// A backend under test, possibly with resources that must live as long as it (a temp dir, a
/// cluster connection). Every [`BlockBackend`] is a fixture of itself.
pub trait Fixture: Send + Sync {
    /// The backend to test.
    fn backend(&self) -> &dyn BlockBackend;
}

impl<B: BlockBackend> Fixture for B {
    fn backend(&self) -> &dyn BlockBackend {
        self
    }
}

/// One rule of the contract.
#[derive(Clone, Copy)]
pub struct Rule {
    /// The rule, as a sentence in snake case (also the test name).
    pub name: &'static str,
    /// Checks the rule against a backend, touching only images named `<ns>-…`.
    pub run: for<'a> fn(&'a dyn BlockBackend, &'a str) -> BoxFuture<'a, ()>,
}

impl Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// A [`Rule`] named after its function.
macro_rules! rule {
    ($topic:ident :: $rule:ident) => {
        Rule {
            name: stringify!($rule),
            run: |b, ns| Box::pin($topic::$rule(b, ns)),
        }
    };
}

/// Every rule of the contract, in a sensible order (simple ones first).
pub fn rules() -> Vec<Rule> {
    vec![
        rule!(images::create_then_stat_reports_size_without_parent_or_snapshots),
        rule!(images::creating_an_existing_image_fails_with_exists),
        rule!(images::operations_on_a_missing_image_are_not_found),
        rule!(images::list_images_is_sorted),
        rule!(images::image_names_may_contain_colons),
        rule!(data::written_data_reads_back_and_reads_stop_at_the_image_size),
        rule!(data::writing_beyond_the_image_size_is_invalid),
        rule!(images::resize_grows_with_zeroes_and_shrinking_discards_data),
        rule!(snapshots::snapshot_keeps_the_content_it_was_taken_with),
        rule!(snapshots::creating_an_existing_snapshot_fails_with_exists),
        rule!(snapshots::snapshots_are_listed_in_creation_order_with_their_size),
        rule!(snapshots::operations_on_a_missing_snapshot_are_not_found),
        rule!(snapshots::protect_and_unprotect_are_idempotent),
        rule!(snapshots::removing_protected_snapshot_is_busy),
        rule!(snapshots::image_with_snapshots_cannot_be_removed),
        rule!(clones::clone_requires_protected_snapshot),
        rule!(clones::clone_of_a_missing_snapshot_is_not_found),
        rule!(clones::cloning_onto_an_existing_image_fails_with_exists),
        rule!(clones::clone_starts_with_the_snapshot_size_and_reports_its_parent),
        rule!(clones::clone_reads_through_to_parent_until_written),
        rule!(clones::clone_copies_the_parent_image_metadata),
        rule!(clones::unprotect_fails_while_clones_exist),
        rule!(clones::snapshot_with_clones_cannot_be_removed),
        rule!(clones::removing_the_clone_releases_the_parent_snapshot),
        rule!(clones::list_children_of_a_snapshot_or_the_whole_image_is_sorted),
        rule!(clones::flatten_detaches_the_clone_and_keeps_its_content),
        rule!(clones::flattened_clone_keeps_data_after_parent_removed),
        rule!(clones::flatten_of_an_image_without_parent_succeeds),
        rule!(clones::flattening_a_clone_with_snapshots_detaches_it_at_once),
        rule!(clones::snapshot_of_a_clone_reads_like_the_clone),
        rule!(clones::shrinking_a_clone_hides_parent_data_beyond_the_new_size),
        rule!(clones::cancelled_flatten_leaves_clone_intact),
        rule!(clones::flatten_child_flattens_a_listed_child_where_it_lives),
        rule!(clones::flatten_child_of_another_pool_leaves_this_pool_alone),
        rule!(metadata::metadata_is_set_listed_and_read_back),
        rule!(metadata::metadata_set_all_sets_every_value_in_order),
        rule!(data::read_stream_returns_the_whole_image_or_snapshot),
        rule!(data::write_stream_writes_from_offset_zero_and_reports_progress_in_bytes),
        rule!(data::write_stream_with_skip_zeroes_gives_the_same_content),
        rule!(data::write_stream_resumes_at_its_start_and_rewrites_zeroes_below_dirty_until),
        rule!(data::write_stream_beyond_the_image_size_is_invalid),
        rule!(data::cancelled_write_stream_returns_cancelled),
        rule!(metadata::encryption_format_of_clone_is_unsupported),
        rule!(metadata::pool_usage_capacity_is_max_avail_plus_stored),
        rule!(metadata::client_key_is_stable),
    ]
}
