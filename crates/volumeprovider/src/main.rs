//! `cephvol`: the daemon and its CLI.

fn main() -> anyhow::Result<()> {
    Ok(())
}
