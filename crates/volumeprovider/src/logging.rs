//! Structured logs with `tracing`: human-readable text or one JSON object per line, on stderr.
//!
//! The level comes from `--log-level` (a level or a full filter such as `volumeprovider=debug,controllers=debug,info`);
//! `RUST_LOG` wins when set. Dependencies (`h2`, `hyper`, `tower`, `reqwest`, …) are capped at
//! `info` unless the filter names them explicitly, so a debug run shows cephvol's own decisions
//! and not HTTP/2 frame dumps.
//!
//! Secrets are never logged: request bodies are not logged, keys and passphrases are held in types
//! whose `Debug` output is redacted (`SecretString`, `Kek`, `Passphrase`, the store's
//! `EncryptionSpec`/`ImageAccess`), and log lines carry ids, sizes and states only.

use tracing_subscriber::EnvFilter;

use crate::flags::LogFormat;

const NOISY: &[&str] = &[
    "h2",
    "loona_hpack",
    "hyper",
    "hyper_util",
    "tower",
    "tonic",
    "reqwest",
    "rustls",
    "mio",
];

/// Builds the filter for `level` (see the module docs).
pub fn filter(level: &str) -> EnvFilter {
    if let Ok(env) = std::env::var("RUST_LOG") {
        if !env.trim().is_empty() {
            if let Ok(f) = EnvFilter::try_new(env) {
                return f;
            }
        }
    }
    let mut spec = level.trim().to_string();
    if spec.is_empty() {
        spec = "info".to_string();
    }
    for crate_name in NOISY {
        if !spec.contains(crate_name) {
            spec.push_str(&format!(",{crate_name}=info"));
        }
    }
    EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global subscriber (a second call is a no-op).
pub fn init(format: LogFormat, level: &str) {
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_are_capped_at_info() {
        if std::env::var_os("RUST_LOG").is_some() {
            return; // RUST_LOG wins by design
        }
        let f = filter("debug").to_string();
        assert!(f.contains("h2=info"), "{f}");
        assert!(f.contains("debug"), "{f}");
        let f = filter("debug,h2=trace").to_string();
        assert!(f.contains("h2=trace") && !f.contains("h2=info"), "{f}");
    }
}
