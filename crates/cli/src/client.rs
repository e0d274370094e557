//! Connecting to a provider as a client (the CLI, tests): address resolution as irictl-volume
//! does it and a tonic channel over a unix socket.
//!
//! Order: the explicit `--address` (`unix:///abs/path`, `unix:path` or a bare path), then env
//! `IRI_VOLUME_RUNTIME_ENDPOINT`, then the well-known sockets `/var/run/iri-volumebroker.sock` and
//! `/var/run/iri-volumeprovider.sock`, polled for up to 3 s.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::{Error, Result};
use iri::cephvol::v1alpha1::progress_client::ProgressClient;
use iri::volume_v1::volume_runtime_client::VolumeRuntimeClient;

/// Env var naming the runtime endpoint.
pub const ENDPOINT_ENV: &str = "IRI_VOLUME_RUNTIME_ENDPOINT";
/// Well-known sockets, in discovery order.
pub const WELL_KNOWN: [&str; 2] = [
    "/var/run/iri-volumebroker.sock",
    "/var/run/iri-volumeprovider.sock",
];

/// Turns an address into a socket path; only unix sockets are supported.
pub fn socket_path(address: &str) -> Result<PathBuf> {
    let a = address.trim();
    if a.is_empty() {
        return Err(Error::Cli("empty address".into()));
    }
    if a.contains("://") && !a.starts_with("unix://") {
        return Err(Error::Cli(format!(
            "unsupported address {a:?}: only unix sockets (unix:///path) are supported"
        )));
    }
    Ok(PathBuf::from(strip_unix_scheme(a)))
}

/// Resolves the socket to use (see the module docs).
pub async fn resolve(explicit: Option<&str>) -> Result<PathBuf> {
    resolve_with(
        explicit,
        std::env::var(ENDPOINT_ENV).ok().as_deref(),
        &WELL_KNOWN,
        Duration::from_secs(3),
    )
    .await
}

/// [`resolve`] with its inputs spelled out (tests).
pub async fn resolve_with(
    explicit: Option<&str>,
    env: Option<&str>,
    well_known: &[&str],
    wait: Duration,
) -> Result<PathBuf> {
    if let Some(a) = explicit.filter(|a| !a.is_empty()) {
        return socket_path(a);
    }
    if let Some(a) = env.filter(|a| !a.is_empty()) {
        return socket_path(a);
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(p) = well_known.iter().map(Path::new).find(|p| p.exists()) {
            return Ok(p.to_path_buf());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Cli(format!(
                "no provider socket found at {}; pass --address unix:///path or set {ENDPOINT_ENV}",
                well_known.join(" or ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(200).min(wait)).await;
    }
}

/// A gRPC channel to the provider listening on `path`.
pub async fn connect(path: &Path) -> Result<Channel> {
    let path = path.to_path_buf();
    let shown = path.display().to_string();
    // The URI is required by tonic but unused: the connector dials the socket.
    Endpoint::try_from("http://[::]:50051")
        .map_err(|e| Error::Cli(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(&path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| Error::Cli(format!("cannot connect to {shown}: {}", source_chain(&e))))
}

/// Both clients on one channel.
#[derive(Clone)]
pub struct Clients {
    /// The IRI runtime.
    pub runtime: VolumeRuntimeClient<Channel>,
    /// cephvol's progress extension.
    pub progress: ProgressClient<Channel>,
}

impl Clients {
    /// Connects to `path`.
    pub async fn connect(path: &Path) -> Result<Clients> {
        let ch = connect(path).await?;
        Ok(Clients {
            runtime: VolumeRuntimeClient::new(ch.clone()),
            progress: ProgressClient::new(ch),
        })
    }
}

/// The error and its causes joined with `: `.
pub fn source_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Removes a leading `unix://` (so `unix:///run/x.sock` → `/run/x.sock`) or `unix:`.
pub fn strip_unix_scheme(address: &str) -> &str {
    address
        .strip_prefix("unix://")
        .or_else(|| address.strip_prefix("unix:"))
        .unwrap_or(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_accept_unix_urls_and_bare_paths() {
        assert_eq!(
            socket_path("unix:///run/x.sock").expect("ok"),
            PathBuf::from("/run/x.sock")
        );
        assert_eq!(
            socket_path("/run/x.sock").expect("ok"),
            PathBuf::from("/run/x.sock")
        );
        assert_eq!(
            socket_path("unix:rel.sock").expect("ok"),
            PathBuf::from("rel.sock")
        );
        assert!(socket_path("tcp://1.2.3.4:5").is_err());
        assert!(socket_path(" ").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_flag_wins_then_the_env_then_well_known_sockets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let known = dir.path().join("provider.sock");
        let known_s = known.to_str().expect("utf8").to_string();
        let wk = [known_s.as_str()];
        let w = Duration::from_secs(3);
        assert_eq!(
            resolve_with(Some("unix:///a"), Some("/b"), &wk, w)
                .await
                .expect("ok"),
            PathBuf::from("/a")
        );
        assert_eq!(
            resolve_with(None, Some("unix:///b"), &wk, w)
                .await
                .expect("ok"),
            PathBuf::from("/b")
        );
        assert!(
            resolve_with(None, None, &wk, w).await.is_err(),
            "nothing there after 3 s"
        );
        std::fs::write(&known, "").expect("touch");
        assert_eq!(resolve_with(None, None, &wk, w).await.expect("ok"), known);
    }
}
