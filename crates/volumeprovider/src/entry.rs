//! The `cephvol` command line: the daemon (`cephvol serve …`, or `cephvol` with daemon flags only,
//! as the poollet deployment runs it) and the client commands of the `cli` crate
//! (`cephvol get volumes`, …). Owns only the parsing; the daemon is [`crate::daemon`], the client
//! commands are `cli::run`.

use clap::{Parser, Subcommand};

use crate::flags::DaemonArgs;

/// `cephvol --version`: the version and the backends this build offers (the `ceph` feature adds
/// `ceph`), so an operator, a deployment check or the benchmarks can tell the builds apart.
#[cfg(feature = "ceph")]
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (backends: local, ceph)");
/// `cephvol --version`: the version and the backends this build offers (the `ceph` feature adds
/// `ceph`), so an operator, a deployment check or the benchmarks can tell the builds apart.
#[cfg(not(feature = "ceph"))]
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (backends: local)");

/// `cephvol`: Ceph RBD volume provider for ironcore (IRI VolumeRuntime) and its CLI.
#[derive(Debug, Parser)]
#[command(
    name = "cephvol",
    version = VERSION,
    about = "Ceph RBD volume provider for ironcore (IRI VolumeRuntime) and its CLI",
    long_about = "Without a subcommand cephvol runs the daemon with the given flags (see `cephvol serve --help`).\n\
                  With no flags at all it serves on /var/run/iri-volumeprovider.sock using the embedded local backend.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Daemon flags (when no subcommand is given).
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// Subcommand.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (the default when only flags are given).
    Serve(Box<DaemonArgs>),
    /// A client command.
    #[command(flatten)]
    Client(Box<cli::Command>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let mut v = vec!["cephvol"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).expect("parses")
    }

    #[test]
    fn flags_without_a_subcommand_run_the_daemon() {
        let c = parse(&["--ceph-pool=p", "--address=/tmp/x.sock"]);
        assert!(c.command.is_none());
        assert_eq!(c.daemon.ceph_pool, "p");
        let c = parse(&[]);
        assert!(c.command.is_none());
    }

    #[test]
    fn serve_takes_daemon_flags() {
        let c = parse(&["serve", "--worker-size=3"]);
        assert!(matches!(c.command, Some(Command::Serve(d)) if d.worker_size == 3));
        let c = parse(&["serve"]);
        assert!(
            matches!(c.command, Some(Command::Serve(d)) if d.address == "/var/run/iri-volumeprovider.sock")
        );
    }

    #[test]
    fn client_commands_are_subcommands_and_exclude_daemon_flags() {
        let c = parse(&["get", "vols", "--address", "unix:///x.sock"]);
        assert!(matches!(
            c.command,
            Some(Command::Client(c)) if matches!(*c, cli::Command::Get(_))
        ));
        assert!(Cli::try_parse_from(["cephvol", "--ceph-pool=p", "get", "volume"]).is_err());
    }

    #[test]
    fn the_version_names_the_backends_of_this_build() {
        let version = Cli::try_parse_from(["cephvol", "--version"])
            .expect_err("--version ends the parse")
            .to_string();
        assert!(version.starts_with("cephvol 0."), "{version}");
        assert!(version.contains("(backends: local"), "{version}");
        assert_eq!(
            version.contains(", ceph)"),
            cfg!(feature = "ceph"),
            "{version}"
        );
    }
}
