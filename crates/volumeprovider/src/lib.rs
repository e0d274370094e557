//! The cephvol daemon: the IRI `volume.v1alpha1.VolumeRuntime` gRPC server on a unix socket, wired
//! to the store, the block backend, the runner and the controllers. The binary `cephvol` also
//! runs the operator commands of the `cli` crate.
//!
//! Modules (each says what it owns):
//! * [`server`]: the ten RPCs and the progress service; [`convert`]: store ⇄ IRI;
//!   [`validate`]: request checks with field-naming errors;
//! * [`events`]: the bounded, expiring event store behind ListEvents;
//! * [`flags`]: daemon flags; [`classes`]: the volume class file; [`keyring`]: the Ceph key;
//! * [`daemon`]: start-up order, serving and graceful shutdown; [`leader`]: the leader lease (one
//!   writer per pool); [`socket`]: the unix socket;
//!   [`metrics`]: Prometheus metrics and their endpoint; [`logging`]: tracing set-up;
//! * [`entry`]: the command line of the binary; [`image_source`]: OS images from OCI registries
//!   (the `oci` crate) as the controllers' `ImageSource`.
//!
//! The binary `cephvol` is [`run_main`].

pub mod classes;
pub mod convert;
pub mod daemon;
pub mod entry;
pub mod error;
pub mod events;
pub mod flags;
pub mod image_source;
pub mod keyring;
pub mod leader;
pub mod logging;
pub mod metrics;
pub mod server;
pub mod socket;
pub mod validate;

use std::process::ExitCode;

use clap::Parser;

pub use error::{Error, Result};

/// How long an idle blocking thread of the daemon's runtime lives (tokio's default is 10 s).
/// Store and local-backend file I/O run on these threads: a burst of requests starts dozens of
/// them, and each keeps its stack and its allocator cache while it lives.
const BLOCKING_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(1);

/// The `cephvol` binary: parses the command line and runs the daemon or a client command.
pub fn run_main() -> ExitCode {
    let cli = entry::Cli::parse();
    match cli.command {
        None => run_daemon(cli.daemon),
        Some(entry::Command::Serve(args)) => run_daemon(*args),
        Some(entry::Command::Client(cmd)) => run_client(*cmd),
    }
}

fn run_daemon(args: flags::DaemonArgs) -> ExitCode {
    logging::init(args.effective_log_format(), &args.effective_log_level());
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(daemon::serve(args));
    // Librados calls stuck on an unreachable cluster must not keep the process alive: `serve`
    // has already spent `--shutdown-timeout` waiting for what it could; a blocking call still
    // running is abandoned as a crash would abandon it (every long operation resumes from the
    // store).
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ Error::LostLeadership(_)) => {
            tracing::error!("cephvol: {e}");
            ExitCode::from(leader::EXIT_LOST_LEADERSHIP)
        }
        Err(e) => {
            tracing::error!("cephvol: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_client(cmd: cli::Command) -> ExitCode {
    logging::init(flags::LogFormat::Text, "warn");
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(cli::run(cmd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
