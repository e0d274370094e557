//! The crate's error type: everything that stops the daemon from starting or a CLI command from
//! running. RPC errors are `tonic::Status` values built in `server`/`validate`, not this type.

use std::path::PathBuf;

/// Errors of the daemon's start-up, configuration and CLI.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag value is invalid or a required flag is missing.
    #[error("invalid flag {flag}: {reason}")]
    Flag {
        /// The flag, e.g. `--worker-size`.
        flag: &'static str,
        /// Why.
        reason: String,
    },
    /// The volume class file is unreadable or invalid.
    #[error("volume classes {path}: {reason}")]
    Classes {
        /// The file (or `<built-in>`).
        path: String,
        /// Why.
        reason: String,
    },
    /// The Ceph key or keyring could not be read.
    #[error("ceph key: {0}")]
    Key(String),
    /// The KEK could not be loaded or created.
    #[error("KEK: {0}")]
    Kek(String),
    /// The unix socket could not be prepared or bound.
    #[error("socket {path}: {reason}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The data directory could not be prepared or is used by another process.
    #[error("data dir {path}: {reason}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Opening the store or block backend failed.
    #[error("backend: {0}")]
    Backend(String),
    /// This daemon led the pool and lost the leader lease (or was fenced): it stopped acting and
    /// exits with `leader::EXIT_LOST_LEADERSHIP` for its supervisor to restart it as a standby.
    #[error("lost the leadership of the pool: {0}")]
    LostLeadership(String),
    /// The binary was built without a requested feature.
    #[error("{0}")]
    Unsupported(String),
    /// Any other I/O failure.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
