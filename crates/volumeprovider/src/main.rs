//! `cephvol`: the IRI volume provider daemon and its CLI (see the `volumeprovider` crate docs).

fn main() -> std::process::ExitCode {
    volumeprovider::run_main()
}
