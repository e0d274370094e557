//! The crate's error type: why a client command failed.

/// Errors of the client commands.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A client-side failure: no socket, bad input file or flag, an RPC error, a timeout.
    #[error("{0}")]
    Cli(String),
    /// An I/O failure (reading an input file).
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
