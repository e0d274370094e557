//! `cargo xtask`: test, ceph up/down, integration, bench, codegen.

fn main() -> anyhow::Result<()> {
    Ok(())
}
