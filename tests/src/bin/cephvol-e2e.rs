//! The `cephvol` binary for the end-to-end tests: exactly `volumeprovider::run_main`, the entry
//! point of `cephvol` (see `tests/Cargo.toml`).

fn main() -> std::process::ExitCode {
    volumeprovider::run_main()
}
